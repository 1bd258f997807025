import numpy as np
import pytest

from glass_ad.synthesis.spectrum import _grid_points_within, choose_hypothesis, mean_image, spectrogram_stats

YY, XX = np.mgrid[0:288, 0:288]


def _disk(radius=90, value=220):
    """A bright centred object on black: a dense blob of strong low frequencies."""
    img = np.zeros((288, 288, 3), np.float32)
    img[(YY - 144) ** 2 + (XX - 144) ** 2 < radius**2] = value
    return img


def test_object_on_plain_background_is_hypersphere():
    hypothesis, stats = choose_hypothesis(_disk())
    assert hypothesis == "hypersphere", stats
    assert stats["n"] > 60 and stats["radius"] > 12 and max(stats["density1"], stats["density2"]) > 0.21


def test_flat_image_is_manifold():
    # Only the zero frequency survives the threshold: n = 1.
    hypothesis, stats = choose_hypothesis(np.full((288, 288, 3), 128, np.float32))
    assert hypothesis == "manifold" and stats["n"] == 1 and stats["radius"] == 0


def test_many_sparse_points_are_manifold():
    # A bright square: its sinc-shaped spectrum puts > 60 points far out (R > 12) but spread thinly.
    img = np.zeros((288, 288, 3), np.float32)
    img[60:228, 60:228] = 200
    hypothesis, stats = choose_hypothesis(img)
    assert hypothesis == "manifold", stats
    assert stats["n"] > 60 and stats["radius"] > 12 and stats["density1"] < 0.21 and stats["density2"] < 0.21


def test_dense_but_small_blob_is_manifold():
    # A wide Gaussian: a compact dense spectrum, but R ≤ 12 and n ≤ 60.
    blob = 250 * np.exp(-((YY - 144) ** 2 + (XX - 144) ** 2) / (2 * 60.0**2))
    hypothesis, stats = choose_hypothesis(blob)
    assert hypothesis == "manifold", stats
    assert stats["density1"] > 0.21 and stats["radius"] <= 12


def test_black_image_has_no_points_and_no_division_by_zero():
    with np.errstate(all="raise"):
        hypothesis, stats = choose_hypothesis(np.zeros((100, 100, 3), np.float32))
    assert hypothesis == "manifold"
    assert stats["n"] == 0 and stats["density1"] == 0 and stats["density2"] == 0


def test_input_types_agree():
    disk = _disk()
    as_uint8 = spectrogram_stats(disk.astype(np.uint8))
    assert spectrogram_stats(disk) == as_uint8
    assert choose_hypothesis(disk[..., 0])[0] == "hypersphere"  # grey input
    with pytest.raises(ValueError, match="image"):
        spectrogram_stats(np.zeros(10))


def test_disc_count_matches_brute_force():
    ys, xs = np.indices((578, 578))
    squared = (ys - 144) ** 2 + (xs - 144) ** 2
    for r2 in (0, 1, 2, 144, 145, 20736, 20737, 40000, 300000):
        assert _grid_points_within(r2) == int((squared <= r2).sum())


def test_mean_image_streams():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(5)]
    mean = mean_image(iter(images))
    np.testing.assert_allclose(mean, np.mean(np.stack(images).astype(np.float64), axis=0))
    with pytest.raises(ValueError, match="at least one"):
        mean_image([])
    with pytest.raises(ValueError, match="same shape"):
        mean_image([images[0], np.zeros((8, 8, 3), np.uint8)])


def test_magnetic_tiles_are_manifold(mtd_root):
    import cv2

    from glass_ad.data.io import read_image

    files = sorted((mtd_root / "train" / "good").iterdir())[::8]
    mean = mean_image(cv2.resize(read_image(p), (288, 288), interpolation=cv2.INTER_AREA) for p in files)
    hypothesis, stats = choose_hypothesis(mean)
    assert hypothesis == "manifold", stats


# ------------------------------------------------------------------------- rectangular mean images


def test_square_result_keeps_its_numbers():
    # Pinned before rectangles existed: a square mean image gives exactly these statistics.
    img = np.zeros((288, 288, 3), np.uint8)
    img[100:190, 90:200] = 200
    assert spectrogram_stats(img) == {
        "n": 283,
        "side_x": 25,
        "side_y": 27,
        "radius": 27.0,
        "density1": 283 / (4 * 25 * 27),
        "density2": pytest.approx(0.1236347750109218, abs=1e-15),
    }


def test_rectangular_mean_image_is_stretched_to_the_reference_square():
    import cv2

    # An object on a plain background, in a landscape input (288×704, the 500×1260 steel case).
    yy, xx = np.mgrid[0:288, 0:704]
    img = np.zeros((288, 704, 3), np.uint8)
    img[((yy - 144) / 90.0) ** 2 + ((xx - 352) / 220.0) ** 2 < 1] = 220
    stats = spectrogram_stats(img)
    # The same steps as for the image squeezed to 289×289 first (what the rule always sees).
    squeezed = cv2.resize(img, (289, 289), interpolation=cv2.INTER_LINEAR)
    assert stats == spectrogram_stats(squeezed)
    assert choose_hypothesis(img)[0] == "hypersphere"
    portrait = np.ascontiguousarray(img.transpose(1, 0, 2))
    assert choose_hypothesis(portrait)[0] == "hypersphere"
    assert choose_hypothesis(np.full((288, 704, 3), 128, np.uint8))[0] == "manifold"


def test_mean_image_of_rectangles():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (24, 64, 3), dtype=np.uint8) for _ in range(3)]
    mean = mean_image(images)
    assert mean.shape == (24, 64, 3)
    np.testing.assert_allclose(mean, np.mean(np.stack(images).astype(np.float64), axis=0))
    assert choose_hypothesis(mean)[0] in ("hypersphere", "manifold")

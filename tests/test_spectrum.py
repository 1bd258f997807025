import numpy as np

from glass_ad.spectrum import choose_hypothesis, spectrogram_stats


def _object_image():
    """A bright, centred object on a dark background: a strong, dense low-frequency spectrum."""
    yy, xx = np.mgrid[0:288, 0:288]
    img = np.zeros((288, 288, 3), np.float32)
    img[(yy - 144) ** 2 + (xx - 144) ** 2 < 90**2] = 220
    return img


def test_object_image_is_hypersphere():
    hypothesis, stats = choose_hypothesis(_object_image())
    assert hypothesis == "hypersphere", stats
    assert stats["n"] > 60 and stats["radius"] > 12


def test_uniform_texture_is_manifold():
    # A flat grey image: only the DC term survives the threshold.
    hypothesis, stats = choose_hypothesis(np.full((288, 288, 3), 128, np.float32))
    assert hypothesis == "manifold", stats
    assert stats["n"] < 60


def test_black_image_does_not_divide_by_zero():
    stats = spectrogram_stats(np.zeros((100, 100, 3), np.float32))
    assert stats["n"] == 0 and stats["density1"] == 0


def test_grayscale_input_accepted():
    assert choose_hypothesis(_object_image()[..., 0])[0] == "hypersphere"

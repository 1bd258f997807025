import dataclasses
import logging
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from glass_ad.config import GlassConfig
from glass_ad.research.weak_defects import FolderTextures
from glass_ad.synthesis.foreground import analyse_foreground, foreground_mask, is_object_category
from glass_ad.synthesis.las import IGNORED, LocalAnomalySynthesizer, ignore_near_mask
from glass_ad.synthesis.perlin import perlin_noise
from glass_ad.synthesis.textures import (
    AUGMENTATIONS,
    GreyTextures,
    ProceduralTextures,
    TextureError,
    TexturePool,
    augment,
    fit_shape,
    fit_square,
    load_textures,
    textures_from_config,
)

SIZE = 64


class FixedTextures:
    """A texture source whose output the test knows."""

    def __init__(self, size: int):
        self.texture = np.random.default_rng(99).integers(0, 256, (size, size, 3), dtype=np.uint8)

    def sample(self, rng, size=None):
        return self.texture


def _images(batch=4, size=SIZE):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------ LAS


def test_outside_mask_untouched_inside_overlay_formula():
    source = FixedTextures(SIZE)
    las = LocalAnomalySynthesizer(SIZE, source)
    images = _images()
    out = las(images, None, np.random.default_rng(1))
    assert out.images.shape == images.shape and out.masks.shape == (4, 1, SIZE, SIZE)
    inside = out.masks.bool().expand_as(images)
    assert torch.equal(out.images[~inside], images[~inside])  # bit for bit
    texture = torch.from_numpy(source.texture).permute(2, 0, 1).float().div(255).expand_as(images)
    beta = out.betas.view(-1, 1, 1, 1).expand_as(images)
    expected = (1 - beta) * texture + beta * images
    torch.testing.assert_close(out.images[inside], expected[inside], atol=1e-6, rtol=0)
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert set(out.masks.unique().tolist()) <= {0.0, 1.0}


def test_masks_non_empty_and_patch_labels_are_max_pooled():
    las = LocalAnomalySynthesizer(SIZE, ProceduralTextures(SIZE))
    rng = np.random.default_rng(2)
    for _ in range(10):
        out = las(_images(), None, rng)
        assert (out.masks.flatten(1).sum(1) > 0).all()
        assert out.patch_labels.shape == (4, (SIZE // 8) ** 2)
        assert torch.equal(out.patch_labels, F.max_pool2d(out.masks, 8).flatten(1))
        # Row-major: label (r, c) is patch rows 8r..8r+7, cols 8c..8c+7.
        grid = out.patch_labels.view(4, SIZE // 8, SIZE // 8)
        assert torch.equal(grid[:, 1, 2].bool(), out.masks[:, 0, 8:16, 16:24].flatten(1).amax(1).bool())


def test_masks_stay_inside_the_foreground():
    las = LocalAnomalySynthesizer(SIZE, ProceduralTextures(SIZE))
    fg = torch.zeros(4, 1, SIZE, SIZE, dtype=torch.bool)
    fg[:, :, 16:48, 16:48] = True
    rng = np.random.default_rng(3)
    for _ in range(10):
        out = las(_images(), fg, rng)
        assert not (out.masks.bool() & ~fg).any()
        assert (out.masks.flatten(1).sum(1) > 0).all()


def test_tiny_foreground_falls_back_to_the_perlin_mask():
    las = LocalAnomalySynthesizer(SIZE, ProceduralTextures(SIZE))
    fg = torch.zeros(4, 1, SIZE, SIZE, dtype=torch.bool)
    fg[:, :, 0, 0] = True  # one pixel: treated as no foreground
    out = las(_images(), fg, np.random.default_rng(4))
    assert (out.masks.flatten(1).sum(1) > 1).all()


def test_beta_is_a_clipped_normal():
    las = LocalAnomalySynthesizer(SIZE, ProceduralTextures(SIZE))
    betas = las.draw_beta(np.random.default_rng(0), 20000)
    assert betas.min() >= 0.2 and betas.max() <= 0.8
    assert abs(betas.mean() - 0.5) < 0.005 and abs(betas.std() - 0.1) < 0.005
    narrow = LocalAnomalySynthesizer(SIZE, ProceduralTextures(SIZE), beta_mean=0.5, beta_std=1.0)
    wide = narrow.draw_beta(np.random.default_rng(0), 1000)
    assert wide.min() == 0.2 and wide.max() == 0.8  # clipping really happens
    out = las(_images(8), None, np.random.default_rng(5))
    assert out.betas.shape == (8,) and ((out.betas >= 0.2) & (out.betas <= 0.8)).all()


def test_rules_are_reported_and_all_occur():
    las = LocalAnomalySynthesizer(SIZE, FixedTextures(SIZE))
    rng = np.random.default_rng(6)
    modes = Counter(m for _ in range(30) for m in las(_images(), None, rng).modes)
    assert set(modes) == {"and", "or", "single"} and sum(modes.values()) == 120


def test_same_seed_same_batch():
    las = LocalAnomalySynthesizer(SIZE, ProceduralTextures(SIZE))
    a = las(_images(), None, np.random.default_rng(7))
    b = las(_images(), None, np.random.default_rng(7))
    assert torch.equal(a.images, b.images) and a.modes == b.modes


def test_bad_shapes_are_rejected():
    las = LocalAnomalySynthesizer(SIZE, ProceduralTextures(SIZE))
    with pytest.raises(ValueError, match="expected"):
        las(torch.rand(2, 3, 32, 32), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="multiple of the feature stride"):
        LocalAnomalySynthesizer(60, ProceduralTextures(60))


# ------------------------------------------------------------------------------------------- textures


def _write_textures(folder, count=3, shape=(80, 100, 3)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"t{i}.png")


def test_texture_pool_decodes_once_and_applies_three_distinct_augmentations(tmp_path, caplog):
    _write_textures(tmp_path / "a")
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        pool = TexturePool.from_folder(tmp_path, SIZE)
    assert len(pool) == 3 and pool.textures.shape == (3, SIZE, SIZE, 3)  # found recursively, decoded once
    assert sum("broken.jpg" in r.getMessage() for r in caplog.records) == 1  # one warning, run goes on
    rng, replay = np.random.default_rng(0), np.random.default_rng(0)
    seen = Counter()
    for _ in range(60):
        texture = pool.sample(rng)
        # The same draws by hand: one stored texture, then `augment` (3 of the 9, distinct).
        expected, ops = augment(pool.textures[int(replay.integers(len(pool)))], replay)
        assert np.array_equal(texture, expected)
        assert texture.shape == (SIZE, SIZE, 3) and texture.dtype == np.uint8
        assert len(ops) == 3 and len(set(ops)) == 3 and set(ops) <= set(AUGMENTATIONS)
        seen.update(ops)
    assert set(seen) == set(AUGMENTATIONS)  # all 9 get used
    assert pool.sample(rng, 32).shape == (32, 32, 3)


def test_each_augmentation_keeps_shape_and_does_its_job():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).integers(30, 200, (48, 48, 3), dtype=np.uint8)
    for name, op in AUGMENTATIONS.items():
        out = op(image, rng)
        assert out.shape == image.shape and out.dtype == np.uint8, name
    assert np.array_equal(AUGMENTATIONS["hflip"](image, rng), image[:, ::-1])
    assert np.array_equal(AUGMENTATIONS["vflip"](image, rng), image[::-1])
    grey = AUGMENTATIONS["grayscale"](image, rng)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    stretched = AUGMENTATIONS["autocontrast"](image, rng)
    pixels = stretched.reshape(-1, 3)
    assert pixels.min(0).tolist() == [0, 0, 0] and pixels.max(0).tolist() == [255, 255, 255]
    equalized = AUGMENTATIONS["equalize"](image, rng)
    assert equalized.std() > image.std()
    rotated = AUGMENTATIONS["rotate"](np.full((48, 48, 3), 200, np.uint8), np.random.default_rng(3))
    assert (rotated == 0).any() and (rotated == 200).any()  # corners rotate in as black (|angle| > 0)


def test_texture_folder_errors_are_one_clear_line(tmp_path):
    with pytest.raises(TextureError, match="texture folder not found") as missing:
        load_textures(tmp_path / "missing", SIZE)
    assert "missing" in str(missing.value) and "\n" not in str(missing.value)
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(TextureError, match="no texture images in") as empty:
        load_textures(tmp_path, SIZE)
    assert str(tmp_path) in str(empty.value) and ".jpg" in str(empty.value) and ".png" in str(empty.value)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(TextureError, match="could be read"):
        load_textures(tmp_path, SIZE)
    assert isinstance(TextureError("x"), ValueError)  # the CLI reports ValueErrors as one line


def test_max_images_spreads_over_subfolders(tmp_path):
    _write_textures(tmp_path / "a", 4)
    _write_textures(tmp_path / "b", 4, shape=(60, 60, 3))
    pool = TexturePool.from_folder(tmp_path, SIZE, max_images=2)
    assert len(pool) == 2
    assert not np.array_equal(pool.textures[0], pool.textures[1])


def test_fit_square_resizes_shorter_side_and_crops_centre():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255  # the centre square
    out = fit_square(image, 50)
    assert out.shape == (50, 50, 3) and out.min() == 255


def test_procedural_textures_are_patterned_and_varied():
    source = load_textures(None, SIZE)
    assert isinstance(source, ProceduralTextures)
    rng = np.random.default_rng(0)
    kinds = Counter()
    for _ in range(30):
        state = rng.bit_generator.state  # the kind is the first draw of every sample: peek at it
        kind = ProceduralTextures.KINDS[int(rng.integers(len(ProceduralTextures.KINDS)))]
        rng.bit_generator.state = state
        texture = source.sample(rng)
        assert texture.shape == (SIZE, SIZE, 3) and texture.dtype == np.uint8
        assert texture.astype(np.float32).std() > 5  # not flat
        kinds[kind] += 1
    assert set(kinds) == set(ProceduralTextures.KINDS)
    assert source.sample(rng, 40).shape == (40, 40, 3)


def test_real_dtd_textures(dtd_root):
    pool = TexturePool.from_folder(dtd_root / "banded", SIZE, max_images=5)
    assert len(pool) == 5 and pool.sample(np.random.default_rng(0)).shape == (SIZE, SIZE, 3)


# ----------------------------------------------------------------------------------------- foreground


def _disk_images(count=6, size=96):
    yy, xx = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        cy, cx, r = size // 2 + rng.integers(-5, 6), size // 2 + rng.integers(-5, 6), size // 4 + rng.integers(-2, 3)
        img = (np.full((size, size, 3), 40) + rng.integers(0, 10, (size, size, 3))).astype(np.uint8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = (200, 180, 160)
        images.append(img)
    return images


def test_disk_on_background_is_an_object():
    images = _disk_images()
    assert is_object_category(images)
    yy, xx = np.mgrid[0:96, 0:96]
    mask = foreground_mask(images[0])
    info = analyse_foreground(images[0])
    assert info.is_object and mask.dtype == bool and mask.shape == (96, 96)
    assert mask[48, 48] and not mask[2, 2] and 0.15 < mask.mean() < 0.5
    # Generous: covers the whole disk plus a margin.
    assert mask[(yy - 48) ** 2 + (xx - 48) ** 2 < 18**2].all()
    assert mask.sum() > info.coverage * mask.size


def test_dark_object_on_bright_background_uses_the_inner_region():
    image = 255 - _disk_images(1)[0]
    mask = foreground_mask(image)
    assert mask[48, 48] and not mask[2, 2]


def test_textures_are_not_objects():
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(6)]
    assert not is_object_category(noise)
    assert foreground_mask(noise[0]).all()
    smooth = []
    for _ in range(6):
        field = perlin_noise((96, 96), (4, 4), rng)
        smooth.append(np.repeat(((field + 1) * 127).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
    assert not is_object_category(smooth)
    assert not is_object_category([])


def test_degenerate_masks_fall_back_to_the_whole_image():
    flat = np.full((64, 64, 3), 90, np.uint8)
    assert foreground_mask(flat).all()
    tiny = flat.copy()
    tiny[30:33, 30:33] = 250  # 0.2 % of the image
    assert foreground_mask(tiny).all()


def test_magnetic_tiles_are_a_surface(mtd_root):
    from glass_ad.data.io import read_image

    files = sorted((mtd_root / "train" / "good").iterdir())[::40][:16]
    images = [fit_square(read_image(path), 128) for path in files]
    assert not is_object_category(images)


def test_redraws_are_bounded(monkeypatch):
    import glass_ad.synthesis.perlin as perlin_module

    corner = np.zeros((SIZE, SIZE), bool)
    corner[:8, :8] = True
    monkeypatch.setattr(perlin_module, "combined_perlin_mask", lambda size, rng: (corner.copy(), "single"))
    las = LocalAnomalySynthesizer(SIZE, FixedTextures(SIZE))
    fg = np.zeros((SIZE, SIZE), bool)
    fg[40:, 40:] = True  # never meets the Perlin blobs: after a few misses the foreground is given up
    mask, _ = las.draw_mask(np.random.default_rng(0), fg)
    assert np.array_equal(mask, corner)
    monkeypatch.setattr(perlin_module, "combined_perlin_mask", lambda size, rng: (np.zeros((size, size), bool), "and"))
    mask, _ = las.draw_mask(np.random.default_rng(0), None)  # always empty: one central patch, no endless loop
    assert mask.sum() == 64 and mask[SIZE // 2, SIZE // 2]


# ------------------------------------------------------------------------------- one texture interface


def test_every_texture_source_has_the_same_sample(tmp_path):
    _write_textures(tmp_path / "t")
    sources = {
        "pool": TexturePool.from_folder(tmp_path / "t", SIZE),
        "procedural": ProceduralTextures(SIZE),
        "grey": GreyTextures(ProceduralTextures(SIZE)),
        "files": FolderTextures(tmp_path / "t", SIZE),
    }
    for name, source in sources.items():
        assert source.sample(np.random.default_rng(0)).shape == (SIZE, SIZE, 3), name
        assert source.sample(np.random.default_rng(0), 40).shape == (40, 40, 3), name
    grey = sources["grey"].sample(np.random.default_rng(0), 40)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    with pytest.raises(ValueError, match="needs a size"):
        FolderTextures(tmp_path / "t").sample(np.random.default_rng(0))


def test_texture_colour_rule_and_las_from_config():
    config = GlassConfig(image_size=SIZE, beta_mean=0.3, beta_std=0.05, beta_min=0.25, beta_max=0.35)
    assert isinstance(textures_from_config(config), ProceduralTextures)
    assert isinstance(textures_from_config(config, grey_images=True), GreyTextures)  # "auto"
    assert isinstance(textures_from_config(config.replace(texture_colour="grey")), GreyTextures)
    assert isinstance(textures_from_config(config.replace(texture_colour="colour"), grey_images=True), ProceduralTextures)
    las = LocalAnomalySynthesizer.from_config(config, FixedTextures(SIZE))
    assert (las.image_size, las.beta_mean, las.beta_std, las.beta_min, las.beta_max) == (SIZE, 0.3, 0.05, 0.25, 0.35)
    default = LocalAnomalySynthesizer(SIZE, FixedTextures(SIZE))  # defaults are the config's, not copies
    paper = GlassConfig()
    assert (default.beta_mean, default.beta_std, default.beta_min, default.beta_max) == (
        paper.beta_mean,
        paper.beta_std,
        paper.beta_min,
        paper.beta_max,
    )


# -------------------------------------------------------------------------- rectangular network input

RECTANGLES = [(32, 80), (72, 40)]  # landscape and portrait, multiples of 8


def _rect_images(shape, batch=4):
    return torch.rand(batch, 3, *shape, generator=torch.Generator().manual_seed(0))


def _has_image_shape() -> bool:
    return "image_shape" in {f.name for f in dataclasses.fields(GlassConfig)}


def test_rectangular_las_shapes_and_max_pooled_patch_labels():
    for height, width in RECTANGLES:
        las = LocalAnomalySynthesizer(min(height, width), ProceduralTextures((height, width)), shape=(height, width))
        assert las.shape == (height, width) and las.grid_shape == (height // 8, width // 8)
        assert las.image_size == min(height, width)
        images = _rect_images((height, width))
        rng = np.random.default_rng(11)
        for _ in range(5):
            out = las(images, None, rng)
            assert out.images.shape == (4, 3, height, width) and out.masks.shape == (4, 1, height, width)
            assert out.patch_labels.shape == (4, (height // 8) * (width // 8)) and out.betas.shape == (4,)
            assert (out.masks.flatten(1).sum(1) > 0).all()
            assert torch.equal(out.patch_labels, F.max_pool2d(out.masks, 8).flatten(1))
            # Row-major over the (H/8)×(W/8) grid: label (r, c) is rows 8r..8r+7, cols 8c..8c+7.
            grid = out.patch_labels.view(4, height // 8, width // 8)
            r, c = height // 8 - 1, width // 8 - 2
            expected = out.masks[:, 0, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8].flatten(1).amax(1)
            assert torch.equal(grid[:, r, c], expected)
            inside = out.masks.bool().expand_as(images)
            assert torch.equal(out.images[~inside], images[~inside])  # outside the mask: bit for bit


def test_rectangular_masks_stay_inside_the_foreground():
    height, width = 32, 80
    las = LocalAnomalySynthesizer(32, ProceduralTextures((height, width)), shape=(height, width))
    fg = torch.zeros(4, 1, height, width, dtype=torch.bool)
    fg[:, :, 4:28, 10:70] = True
    rng = np.random.default_rng(12)
    for _ in range(8):
        out = las(_rect_images((height, width)), fg, rng)
        assert not (out.masks.bool() & ~fg).any()
        assert (out.masks.flatten(1).sum(1) > 0).all()


def test_rectangular_overlay_uses_an_h_by_w_texture():
    height, width = 32, 80

    class Recorded:
        def __init__(self):
            self.sizes = []
            self.texture = np.random.default_rng(98).integers(0, 256, (height, width, 3), dtype=np.uint8)

        def sample(self, rng, size=None):
            self.sizes.append(size)
            return self.texture

    source = Recorded()
    las = LocalAnomalySynthesizer(32, source, shape=(height, width))
    images = _rect_images((height, width))
    out = las(images, None, np.random.default_rng(13))
    assert source.sizes == [(height, width)] * 4
    inside = out.masks.bool().expand_as(images)
    texture = torch.from_numpy(source.texture).permute(2, 0, 1).float().div(255).expand_as(images)
    beta = out.betas.view(-1, 1, 1, 1).expand_as(images)
    torch.testing.assert_close(out.images[inside], ((1 - beta) * texture + beta * images)[inside], atol=1e-6, rtol=0)


def test_square_las_draws_the_same_numbers_however_it_is_built():
    images = _images()
    fg = torch.zeros(4, 1, SIZE, SIZE, dtype=torch.bool)
    fg[:, :, 8:56, 4:60] = True
    built = [
        LocalAnomalySynthesizer(SIZE, ProceduralTextures(SIZE)),
        LocalAnomalySynthesizer(SIZE, ProceduralTextures((SIZE, SIZE)), shape=(SIZE, SIZE)),
        LocalAnomalySynthesizer.from_config(GlassConfig(image_size=SIZE), ProceduralTextures(SIZE)),
    ]
    outs = [las(images, fg, np.random.default_rng(3)) for las in built]
    for out in outs[1:]:
        assert torch.equal(out.images, outs[0].images) and torch.equal(out.masks, outs[0].masks)
        assert torch.equal(out.patch_labels, outs[0].patch_labels) and out.modes == outs[0].modes
    # Pinned before rectangles existed (same seed, same masks and rules).
    out = built[0](images, None, np.random.default_rng(3))
    assert out.masks.flatten(1).sum(1).int().tolist() == [180, 275, 178, 6]
    assert out.modes == ["single", "or", "single", "and"]


def test_rectangular_shapes_are_checked():
    las = LocalAnomalySynthesizer(32, ProceduralTextures((32, 80)), shape=(32, 80))
    with pytest.raises(ValueError, match="expected B×3×32×80"):
        las(torch.rand(2, 3, 80, 32), None, np.random.default_rng(0))  # transposed
    with pytest.raises(ValueError, match="foreground"):
        las(torch.rand(2, 3, 32, 80), torch.ones(2, 1, 32, 32, dtype=torch.bool), np.random.default_rng(0))
    with pytest.raises(ValueError, match="multiple of the feature stride"):
        LocalAnomalySynthesizer(32, ProceduralTextures(32), shape=(32, 84))


def test_rectangular_fallback_patch_is_central(monkeypatch):
    import glass_ad.synthesis.perlin as perlin_module

    monkeypatch.setattr(perlin_module, "combined_perlin_mask", lambda size, rng: (np.zeros((size, size), bool), "and"))
    las = LocalAnomalySynthesizer(32, FixedTextures(32), shape=(32, 80))
    mask, _ = las.draw_mask(np.random.default_rng(0), None)
    assert mask.shape == (32, 80) and mask.sum() == 64 and mask[12:20, 36:44].all()


def test_las_from_config_takes_the_input_shape():
    if not _has_image_shape():
        pytest.skip("GlassConfig.image_shape not landed yet")
    config = GlassConfig(image_size=32, image_shape=(32, 80))
    las = LocalAnomalySynthesizer.from_config(config, textures_from_config(config))
    assert las.shape == (32, 80) and las.grid_shape == (4, 10)
    out = las(_rect_images((32, 80), batch=2), None, np.random.default_rng(0))
    assert out.masks.shape == (2, 1, 32, 80) and out.patch_labels.shape == (2, 40)
    assert textures_from_config(config).sample(np.random.default_rng(0)).shape == (32, 80, 3)


# --------------------------------------------------------------------------- rectangular textures


def test_every_texture_source_serves_rectangles_and_squares_as_before(tmp_path):
    _write_textures(tmp_path / "t")
    sources = {
        "pool": lambda size: TexturePool.from_folder(tmp_path / "t", size),
        "procedural": ProceduralTextures,
        "grey": lambda size: GreyTextures(ProceduralTextures(size)),
        "files": lambda size: FolderTextures(tmp_path / "t", size),
    }
    for name, make in sources.items():
        square, rect = make(SIZE), make((32, 80))
        assert rect.sample(np.random.default_rng(0)).shape == (32, 80, 3), name
        for shape in [(32, 80), (72, 40)]:
            texture = square.sample(np.random.default_rng(0), shape)
            assert texture.shape == (*shape, 3) and texture.dtype == np.uint8, name
        # A square as an int or as (S, S): the same numbers.
        for size in [SIZE, 40]:
            a = square.sample(np.random.default_rng(5), size)
            b = square.sample(np.random.default_rng(5), (size, size))
            assert np.array_equal(a, b), (name, size)
        assert np.array_equal(square.sample(np.random.default_rng(6)), make((SIZE, SIZE)).sample(np.random.default_rng(6)))


def test_procedural_rectangles_are_patterned_over_their_whole_width():
    source = ProceduralTextures((32, 128))
    rng = np.random.default_rng(0)
    for _ in range(12):
        texture = source.sample(rng).astype(np.float32)
        assert texture.shape == (32, 128, 3)
        # Both halves vary (no stretched or blank half).
        assert texture[:, :64].std() > 1 and texture[:, 64:].std() > 1


def test_fit_shape_covers_and_crops_the_centre():
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    for size in [32, 60, 100]:
        assert np.array_equal(fit_shape(image, (size, size)), fit_square(image, size))
    out = fit_shape(image, (20, 80))  # needs a wider image: factor 80 / 90, height 53 → rows 16..35
    assert out.shape == (20, 80, 3)
    wide = fit_shape(image, (60, 90))
    assert np.array_equal(wide, image)
    tall = fit_shape(image, (120, 40))  # factor 2: 120×180, centre 40 columns
    assert tall.shape == (120, 40, 3)


def test_texture_pool_stores_the_rectangle():
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    pool = TexturePool([image, image[:, ::-1]], (32, 80))
    assert pool.textures.shape == (2, 32, 80, 3) and pool.shape == (32, 80) and pool.image_size == 32
    assert np.array_equal(pool.textures[0], fit_shape(image, (32, 80)))


def test_foreground_of_a_rectangular_image():
    image = np.full((64, 160, 3), 30, np.uint8)
    image[16:48, 50:110] = 220  # a bright object in the middle of a landscape frame
    mask = foreground_mask(image)
    assert mask.shape == (64, 160) and mask[32, 80] and not mask[2, 2] and not mask[32, 150]


def test_ignore_near_mask_marks_the_ring_of_normal_patches_within_the_margin():
    rng = np.random.default_rng(3)
    for grid_shape in ((7, 7), (5, 11)):
        labels = torch.from_numpy((rng.random((3, grid_shape[0] * grid_shape[1])) > 0.93).astype(np.float32))
        labels[0] = 0.0
        labels[0, grid_shape[1] + 1] = 1.0  # one anomalous patch at (1, 1)
        assert torch.equal(ignore_near_mask(labels, grid_shape, 0), labels)
        for margin in (1, 2):
            marked = ignore_near_mask(labels, grid_shape, margin)
            # Brute force: a normal patch is ignored iff some anomalous patch is within Chebyshev distance margin.
            grid, out = labels.view(3, *grid_shape), marked.view(3, *grid_shape)
            for b in range(3):
                anomalous = torch.nonzero(grid[b] > 0.5).tolist()
                for r in range(grid_shape[0]):
                    for c in range(grid_shape[1]):
                        if grid[b, r, c] > 0.5:
                            assert out[b, r, c] == 1.0
                            continue
                        near = any(max(abs(r - ar), abs(c - ac)) <= margin for ar, ac in anomalous)
                        assert out[b, r, c] == (IGNORED if near else 0.0)
        ring = ignore_near_mask(labels, grid_shape, 1)[0].view(grid_shape)
        assert int((ring == IGNORED).sum()) == 8  # the 3×3 block around (1, 1) minus the patch itself

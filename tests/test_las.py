from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glass_ad.foreground import foreground_mask, is_object_category
from glass_ad.las import LocalAnomalySynthesizer
from glass_ad.perlin import combined_perlin_mask, perlin_mask, perlin_noise
from glass_ad.textures import AUGMENTATIONS, ProceduralTextures, TexturePool, load_textures


def test_perlin_noise_range_and_smoothness():
    noise = perlin_noise((64, 64), (4, 4), np.random.default_rng(0))
    assert noise.shape == (64, 64)
    assert -1.5 < noise.min() < 0 < noise.max() < 1.5
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2  # continuous: neighbours differ little


def test_perlin_rules_each_drawn_a_third_of_the_time():
    rng = np.random.default_rng(0)
    counts = Counter(combined_perlin_mask(32, rng)[1] for _ in range(900))
    for rule in ("and", "or", "single"):
        assert abs(counts[rule] / 900 - 1 / 3) < 0.05


def test_and_or_relations_hold():
    # Same seed → same two masks; the rule decides how they combine.
    for seed in range(30):
        rng = np.random.default_rng(seed)
        first, second = perlin_mask(32, rng), perlin_mask(32, rng)
        p = rng.random()
        mask, rule = combined_perlin_mask(32, np.random.default_rng(seed))
        expected = first if p <= 1 / 3 else (first & second if p <= 2 / 3 else first | second)
        assert np.array_equal(mask, expected) and rule == {True: "single"}.get(p <= 1 / 3, "and" if p <= 2 / 3 else "or")


def _images(batch=4, size=64):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_overlay_formula_and_untouched_outside_mask():
    las = LocalAnomalySynthesizer(64, ProceduralTextures(64))
    images = _images()
    out = las(images, None, np.random.default_rng(1))
    mask = out.masks.bool().expand_as(images)
    assert torch.equal(out.images[~mask], images[~mask])
    # Inside: x+ = (1−β)·t + β·x, so t = (x+ − β·x)/(1−β) must be a valid colour in [0, 1].
    beta = out.betas.view(-1, 1, 1, 1)
    texture = (out.images - beta * images) / (1 - beta)
    assert texture[mask].min() >= -1e-4 and texture[mask].max() <= 1 + 1e-4
    assert (out.masks.flatten(1).sum(1) > 0).all()


def test_patch_labels_are_max_pooled_masks():
    las = LocalAnomalySynthesizer(64, ProceduralTextures(64))
    out = las(_images(), None, np.random.default_rng(2))
    assert out.patch_labels.shape == (4, 64)
    assert torch.equal(out.patch_labels, F.max_pool2d(out.masks, 8).flatten(1))


def test_beta_distribution_is_clipped_normal():
    las = LocalAnomalySynthesizer(64, ProceduralTextures(64))
    betas = las.draw_beta(np.random.default_rng(0), 20000)
    assert betas.min() >= 0.2 and betas.max() <= 0.8
    assert abs(betas.mean() - 0.5) < 0.005 and abs(betas.std() - 0.1) < 0.005


def test_masks_stay_inside_the_foreground():
    las = LocalAnomalySynthesizer(64, ProceduralTextures(64))
    fg = torch.zeros(4, 1, 64, 64, dtype=torch.bool)
    fg[:, :, 16:48, 16:48] = True
    out = las(_images(), fg, np.random.default_rng(3))
    assert (out.masks.bool() & ~fg).sum() == 0
    assert (out.masks.flatten(1).sum(1) > 0).all()


def test_texture_pool_three_distinct_augmentations(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(tmp_path / f"t{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    pool = TexturePool.from_folder(tmp_path, 64)
    assert len(pool) == 3  # the broken file is skipped with a warning
    rng = np.random.default_rng(0)
    for _ in range(20):
        texture, ops = pool.sample(rng, return_ops=True)
        assert texture.shape == (64, 64, 3) and texture.dtype == np.uint8
        assert len(set(ops)) == 3 and set(ops) <= set(AUGMENTATIONS)


def test_texture_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="texture folder not found"):
        load_textures(tmp_path / "missing", 64)
    with pytest.raises(ValueError, match="no texture images in"):
        load_textures(tmp_path, 64)


def test_real_dtd_textures(dtd_root):
    pool = TexturePool.from_folder(dtd_root / "banded", 64, max_images=5)
    assert pool.sample(np.random.default_rng(0)).shape == (64, 64, 3)


def test_foreground_object_versus_texture():
    yy, xx = np.mgrid[0:96, 0:96]
    disk = ((yy - 48) ** 2 + (xx - 48) ** 2 < 25**2)
    objects = []
    rng = np.random.default_rng(0)
    for _ in range(4):
        img = np.full((96, 96, 3), 40, np.uint8) + rng.integers(0, 10, (96, 96, 3)).astype(np.uint8)
        img[disk] = 200
        objects.append(img)
    mask = foreground_mask(objects[0])
    assert mask[48, 48] and not mask[2, 2]
    assert mask[disk].mean() > 0.99 and mask.mean() < 0.5
    assert is_object_category(objects)
    textures = [rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(4)]
    assert not is_object_category(textures)
    assert foreground_mask(textures[0]).all()

"""The validation-only anomaly family, grey textures for grey products, and measured training precision."""

import numpy as np
import torch
import torch.nn.functional as F

from glass_ad.synthesis.textures import GreyTextures, ProceduralTextures
from glass_ad.synthesis.unseen_anomalies import UnseenAnomalySynthesizer
from glass_ad.training.precision import (
    PrecisionChoice,
    bf16_matrix_units,
    bf16_supported,
    choose_precision,
    measure_precision,
)
from glass_ad.training.preparation import is_grey


def _grey_batch(count=6, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    grey = 0.3 + 0.4 * torch.rand(count, 1, size, size, generator=generator)
    return grey.expand(count, 3, size, size).clone()


def test_unseen_family_changes_only_intensity_near_its_mask():
    images = _grey_batch()
    out = UnseenAnomalySynthesizer(64)(images, None, np.random.default_rng(0))
    assert out.images.shape == images.shape and out.images.min() >= 0 and out.images.max() <= 1
    # Intensity-only: a grey image stays grey (same factor on every channel).
    assert torch.allclose(out.images[:, 0], out.images[:, 1]) and torch.allclose(out.images[:, 0], out.images[:, 2])
    for i in range(len(images)):
        assert out.masks[i].sum() > 0  # never empty
        changed = (out.images[i] - images[i]).abs().amax(0) > 1e-4
        # Changes stay near the mask (strokes: edge blur of a pixel or two; blobs: the soft tail).
        near = F.max_pool2d(out.masks[i][None], 15, stride=1, padding=7)[0, 0] > 0
        if out.modes[i] == "stroke":
            assert not (changed & ~near).any()
        assert changed.any()
    # Patch labels are the masks max-pooled by the stride, row-major like the features.
    assert torch.equal(out.patch_labels, F.max_pool2d(out.masks, 8).flatten(1))
    assert set(out.modes) <= {"stroke", "blob"}


def test_unseen_family_is_fixed_by_its_seed_and_draws_both_kinds():
    images = _grey_batch(count=16)
    synth = UnseenAnomalySynthesizer(64)
    a = synth(images, None, np.random.default_rng(7))
    b = synth(images, None, np.random.default_rng(7))
    assert torch.equal(a.images, b.images) and a.modes == b.modes
    assert {"stroke", "blob"} <= set(a.modes)


def test_unseen_family_starts_inside_the_foreground():
    images = _grey_batch(count=8)
    foreground = torch.zeros(8, 1, 64, 64, dtype=torch.bool)
    foreground[..., 20:44, 20:44] = True
    out = UnseenAnomalySynthesizer(64, stroke_share=0.0)(images, foreground, np.random.default_rng(1))
    centres = [torch.nonzero(m[0] > 0).float().mean(0) for m in out.masks]
    assert all(16 <= float(c[0]) <= 48 and 16 <= float(c[1]) <= 48 for c in centres)


def test_grey_textures_and_grey_detection():
    source = ProceduralTextures(32)
    texture = GreyTextures(source).sample(np.random.default_rng(0))
    assert texture.shape == (32, 32, 3) and texture.dtype == np.uint8
    assert np.array_equal(texture[..., 0], texture[..., 1]) and np.array_equal(texture[..., 0], texture[..., 2])
    grey = (torch.rand(4, 1, 16, 16) * 255).to(torch.uint8).expand(4, 3, 16, 16).clone()
    assert is_grey(grey)
    colour = grey.clone()
    colour[:, 0] = 255 - colour[:, 0]
    assert not is_grey(colour)


def test_precision_choice():
    cpu = torch.device("cpu")
    assert choose_precision("fp32", cpu, 16) == PrecisionChoice(False, "float32 (asked for)")
    assert choose_precision("bf16", cpu, 16).bf16
    auto = choose_precision("auto", cpu, 16, hidden=32, rows=256, repeats=1)
    assert auto.reason.startswith("bf16" if auto.bf16 else "float32")
    # By the hardware, never by timing: bf16 exactly where the CPU has bf16 matrix units (AMX).
    assert auto.bf16 == (bf16_supported(cpu) and bf16_matrix_units())
    assert all(choose_precision("auto", cpu, 16) == auto for _ in range(3))
    # The timing report leaves the global random state alone.
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    timed = measure_precision("cpu", 24, hidden=32, rows=128, repeats=1)
    assert torch.equal(torch.rand(3), expected) and timed.fp32_ms > 0 and timed.bf16_ms > 0


# --------------------------------------------------------------------------- rectangular network input


def _grey_rect(count, shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    grey = 0.3 + 0.4 * torch.rand(count, 1, *shape, generator=generator)
    return grey.expand(count, 3, *shape).clone()


def test_unseen_family_on_rectangles():
    for height, width in [(64, 160), (160, 64)]:
        images = _grey_rect(12, (height, width))
        synth = UnseenAnomalySynthesizer(min(height, width), shape=(height, width))
        assert synth.shape == (height, width) and synth.image_size == min(height, width)
        out = synth(images, None, np.random.default_rng(3))
        assert out.images.shape == images.shape and out.masks.shape == (12, 1, height, width)
        assert out.patch_labels.shape == (12, (height // 8) * (width // 8))
        assert torch.equal(out.patch_labels, F.max_pool2d(out.masks, 8).flatten(1))
        assert (out.masks.flatten(1).sum(1) > 0).all() and {"stroke", "blob"} <= set(out.modes)
        # Start points spread along the long axis too (not just over the top-left square).
        long_axis = 3 if width > height else 2
        centres = [torch.nonzero(m[0] > 0).float().mean(0)[long_axis - 2] for m in out.masks]
        assert max(float(c) for c in centres) > 64


def test_unseen_family_on_rectangles_starts_inside_the_foreground():
    images = _grey_rect(8, (64, 160))
    foreground = torch.zeros(8, 1, 64, 160, dtype=torch.bool)
    foreground[..., 20:44, 110:140] = True
    out = UnseenAnomalySynthesizer(64, stroke_share=0.0, shape=(64, 160))(images, foreground, np.random.default_rng(1))
    centres = [torch.nonzero(m[0] > 0).float().mean(0) for m in out.masks]
    assert all(16 <= float(c[0]) <= 48 and 106 <= float(c[1]) <= 144 for c in centres)


def test_unseen_family_square_keeps_its_numbers():
    from glass_ad.config import GlassConfig

    images = _grey_batch(count=8)
    built = [
        UnseenAnomalySynthesizer(64),
        UnseenAnomalySynthesizer(64, shape=(64, 64)),
        UnseenAnomalySynthesizer.from_config(GlassConfig(image_size=64)),
    ]
    outs = [synth(images, None, np.random.default_rng(5)) for synth in built]
    for out in outs[1:]:
        assert torch.equal(out.images, outs[0].images) and torch.equal(out.masks, outs[0].masks)
        assert out.modes == outs[0].modes
    # Pinned before rectangles existed.
    assert outs[0].modes == ["blob", "stroke", "blob", "stroke", "blob", "stroke", "blob", "blob"]
    assert outs[0].masks.flatten(1).sum(1).int().tolist() == [5, 11, 7, 12, 21, 14, 19, 5]


def test_unseen_family_from_config_takes_the_input_shape():
    import dataclasses

    from glass_ad.config import GlassConfig

    if "image_shape" not in {f.name for f in dataclasses.fields(GlassConfig)}:
        import pytest

        pytest.skip("GlassConfig.image_shape not landed yet")
    synth = UnseenAnomalySynthesizer.from_config(GlassConfig(image_size=32, image_shape=(32, 80)))
    assert synth.shape == (32, 80)
    out = synth(_grey_rect(2, (32, 80)), None, np.random.default_rng(0))
    assert out.masks.shape == (2, 1, 32, 80) and out.patch_labels.shape == (2, 40)

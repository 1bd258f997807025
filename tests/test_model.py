import os

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from glass_ad.config import make_config
from glass_ad.model.checkpoint import Checkpoint, read_checkpoint
from glass_ad.model.glass_model import GaussianBlur, ScoreMap, build_model

SIGMA = make_config("fast").smoothing_sigma  # the model's map smoothing (the paper's σ = 4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(make_config("fast", backbone="efficientnet_lite0", image_size=64))
    return m.eval()


def test_blur_matches_scipy_away_from_borders():
    x = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    ours = GaussianBlur(4.0)(torch.from_numpy(x)[None, None])[0, 0].numpy()
    ref = ndimage.gaussian_filter(x, sigma=4, truncate=4.0)
    assert np.allclose(ours[17:-17, 17:-17], ref[17:-17, 17:-17], atol=1e-5)
    assert np.allclose(ours.mean(), x.mean(), atol=1e-2)


@pytest.mark.parametrize("grid,size,sigma", [(36, 288, 4.0), (8, 64, 4.0), (8, 64, 0.0), (5, 40, 1.5)])
def test_score_map_equals_upsample_then_blur(grid, size, sigma):
    scores = torch.rand(3, grid, grid, generator=torch.Generator().manual_seed(grid))
    upsampled = torch.nn.functional.interpolate(scores[:, None], size=(size, size), mode="bilinear", align_corners=False)
    reference = GaussianBlur(sigma)(upsampled)[:, 0]
    assert torch.allclose(ScoreMap(grid, size, sigma)(scores), reference, atol=1e-6)


def _reference_map(patch_scores: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """h×h patch scores → S×S map by other code than the model's: OpenCV's bilinear resize (pixel centres,
    as PyTorch's align_corners=False), then scipy's Gaussian with mirrored borders (PyTorch's "reflect")."""
    upsampled = cv2.resize(patch_scores.astype(np.float64), (size, size), interpolation=cv2.INTER_LINEAR)
    return ndimage.gaussian_filter(upsampled, sigma=sigma, truncate=4.0, mode="mirror")


def test_outputs_shapes_and_image_score_is_max_patch(model):
    with torch.no_grad():
        out = model(torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    assert out.patch_scores.shape == (3, 8, 8)
    assert out.anomaly_maps.shape == (3, 64, 64)
    # The image score is the largest unsmoothed patch score of the same image.
    assert torch.equal(out.image_scores, out.patch_scores.flatten(1).amax(1))
    patches = out.patch_scores.numpy()
    for maps, scores in zip(out.anomaly_maps.numpy(), patches):
        assert np.abs(maps - _reference_map(scores, 64, SIGMA)).max() < 1e-5
        # A smoothed interpolation never leaves the range of its patch scores.
        assert scores.min() - 1e-6 <= maps.min() and maps.max() <= scores.max() + 1e-6


@pytest.mark.parametrize("row,col", [(2, 5), (0, 0), (7, 3)])
def test_a_hot_patch_makes_a_hot_region_where_it_lies(model, row, col):
    patches = torch.full((1, 8, 8), 0.1)
    patches[0, row, col] = 0.9
    out = model.postprocess(patches)
    assert float(out.image_scores[0]) == pytest.approx(0.9)
    maps = out.anomaly_maps[0].numpy()
    peak_y, peak_x = np.unravel_index(maps.argmax(), maps.shape)
    # The peak lies on the hot patch's 8×8 pixels (stride 8), and the map falls off away from it.
    assert 8 * row <= peak_y < 8 * row + 8 and 8 * col <= peak_x < 8 * col + 8
    assert maps.max() > 0.1 + 0.05 and maps[8 * row + 4, 8 * col + 4] > maps[(8 * row + 36) % 64, (8 * col + 36) % 64]
    assert np.abs(maps - _reference_map(patches[0].numpy(), 64, SIGMA)).max() < 1e-5


def test_checkpoint_round_trip_is_exact_and_weights_only(model, tmp_path):
    config = make_config("fast", backbone="efficientnet_lite0", image_size=64)
    model.feature_scale.fill_(0.37)
    ckpt = Checkpoint.from_model(model, config, hypothesis="manifold", calibration={"image_threshold": 0.5})
    path = ckpt.save(tmp_path / "run" / "model.pt")
    assert os.listdir(tmp_path / "run") == ["model.pt"]  # atomic write leaves no temporary file
    torch.load(path, weights_only=True)  # plain tensors and primitives only
    loaded, data = Checkpoint.load(tmp_path / "run").build_model(), read_checkpoint(tmp_path / "run")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps)
    assert data["hypothesis"] == "manifold"
    assert float(loaded.feature_scale) == pytest.approx(0.37)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="glass train"):
        Checkpoint.load(tmp_path)


def test_fused_inference_matches_unfused(model):
    import copy

    trained = copy.deepcopy(model)
    # Non-trivial batch-norm statistics and adaptor, as after training.
    trained.discriminator.body[1].running_mean.normal_()
    trained.discriminator.body[1].running_var.uniform_(0.5, 2.0)
    trained.feature_scale.fill_(0.3)
    fused = copy.deepcopy(trained).fuse_()
    assert isinstance(fused.adaptor, torch.nn.Identity)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = trained(x), fused(x)
    assert torch.allclose(a.patch_scores, b.patch_scores, atol=1e-5)
    assert torch.allclose(a.anomaly_maps, b.anomaly_maps, atol=1e-5)

import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from glass_ad.config import make_config
from glass_ad.model import GaussianBlur, ScoreMap, build_model, load_model, make_checkpoint, save_checkpoint


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


def test_outputs_shapes_and_image_score_is_max_patch(model):
    with torch.no_grad():
        out = model(torch.rand(3, 3, 64, 64))
    assert out.patch_scores.shape == (3, 8, 8)
    assert out.anomaly_maps.shape == (3, 64, 64)
    assert torch.allclose(out.image_scores, out.patch_scores.flatten(1).amax(1))
    assert ((out.anomaly_maps >= 0) & (out.anomaly_maps <= 1)).all()


def test_checkpoint_round_trip_is_exact_and_weights_only(model, tmp_path):
    config = make_config("fast", backbone="efficientnet_lite0", image_size=64)
    model.feature_scale.fill_(0.37)
    ckpt = make_checkpoint(model, config, hypothesis="manifold", calibration={"image_threshold": 0.5})
    path = save_checkpoint(ckpt, tmp_path / "run" / "model.pt")
    assert os.listdir(tmp_path / "run") == ["model.pt"]  # atomic write leaves no temporary file
    torch.load(path, weights_only=True)  # plain tensors and primitives only
    loaded, data = load_model(tmp_path / "run")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps)
    assert data["hypothesis"] == "manifold"
    assert float(loaded.feature_scale) == pytest.approx(0.37)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="glass train"):
        load_model(tmp_path)


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

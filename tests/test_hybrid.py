"""The optional hybrid score: memory bank maths, coreset, fused/unfused and checkpoint/ONNX parity, training."""

import numpy as np
import pytest
import torch

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.model.checkpoint import Checkpoint, read_checkpoint
from glass_ad.model.glass_model import build_model
from glass_ad.model.memory_bank import MemoryBank, greedy_coreset
from glass_ad.training.trainer import train


def test_memory_bank_distance_is_the_nearest_neighbour():
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(200, 12, generator=generator), torch.randn(50, 12, generator=generator)
    expected = torch.cdist(queries, bank).amin(dim=1)
    assert torch.allclose(MemoryBank(bank)(queries), expected, atol=1e-4)
    # A query that is a bank row is at distance 0.
    assert float(MemoryBank(bank)(bank[:5]).max()) < 1e-2


def test_greedy_coreset_covers_the_extremes():
    points = torch.tensor([[0.0], [0.1], [0.2], [5.0], [9.9], [10.0], [4.9]]).repeat(1, 8)
    chosen = set(greedy_coreset(points, 3, projection_dim=8).tolist())
    values = {round(float(points[i, 0])) for i in chosen}
    assert values == {0, 5, 10}  # one point of each cluster, whatever the start


def test_hybrid_is_mean_of_standardised_parts_and_survives_fusing():
    torch.manual_seed(0)
    model = build_model(make_config("fast", backbone="efficientnet_lite0", image_size=64)).eval()
    model.feature_scale.fill_(0.3)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = model.features(images)
        rows = features.reshape(-1, features.shape[-1])
        other = model.features(torch.rand(2, 3, 64, 64))  # a bank of other images: no exact duplicates
        bank = other.reshape(-1, other.shape[-1])[::3].clone()
        model.set_memory_bank(bank, [0.5, 2.0, 1.0, 3.0])
        parts = model.hybrid_parts(rows)
        logits = model.discriminator.logits(model.adaptor(rows)).flatten()
        distances = torch.cdist(rows, bank).amin(dim=1)
        assert torch.allclose(parts[:, 0], (logits - 0.5) / 2.0, atol=1e-4)
        # The expanded form √(‖q‖² − 2q·b + ‖b‖²) loses a little precision near 0 (float32 rounding).
        assert torch.allclose(parts[:, 1], (distances - 1.0) / 3.0, atol=1e-2)
        before = model(images)
        assert torch.allclose(before.patch_scores.flatten(), parts.mean(dim=1), atol=1e-4)
        after = model.fuse_()(images)
    assert torch.allclose(before.image_scores, after.image_scores, atol=1e-3)
    assert torch.allclose(before.anomaly_maps, after.anomaly_maps, atol=1e-3)


@pytest.mark.slow
def test_hybrid_training_checkpoint_and_onnx(tmp_path):
    from glass_ad.inference.export import export_onnx

    torch.set_num_threads(1)
    data = make_demo_dataset(tmp_path / "data", n_train=24, n_test_good=2, n_test_defect=2, size=64)
    config = make_config(
        "fast", epochs=1, image_size=64, backbone="efficientnet_lite0", early_stopping=False, score="hybrid", num_threads=1
    )
    train(data, tmp_path / "run", config, progress=False, echo=lambda _: None)
    model, checkpoint = Checkpoint.load(tmp_path / "run").build_model(), read_checkpoint(tmp_path / "run")
    assert checkpoint["memory_bank"] is not None and model.memory_bank is not None
    mean_logit, std_logit, mean_distance, std_distance = checkpoint["hybrid_norm"]
    assert std_logit > 0 and std_distance > 0 and mean_distance > 0
    # Standardised on the held-out normals: their patch scores average about 0.
    holdout_scores = np.asarray(checkpoint["calibration"]["holdout_image_scores"])
    assert np.isfinite(holdout_scores).all()
    result = export_onnx(tmp_path / "run")
    assert max(result.max_abs_diff.values()) < 1e-3

"""The optional hybrid score: memory bank maths, coreset, fused/unfused and checkpoint/ONNX parity, training."""

import numpy as np
import pytest
import torch

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.model.checkpoint import Checkpoint, read_checkpoint
from glass_ad.model.glass_model import build_model
from glass_ad.model.memory_bank import (
    MemoryBank,
    describe_bank,
    greedy_coreset,
    greedy_coreset_per_image,
    image_descriptors,
    pool_windows,
    upsample_windows,
)
from glass_ad.training.preparation import FeaturesInMemory
from glass_ad.training.trainer import train


def test_memory_bank_distance_is_the_nearest_neighbour():
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(200, 12, generator=generator), torch.randn(2, 25, 12, generator=generator)
    stored = bank.half().float()  # the bank keeps float16 values
    expected = torch.cdist(queries.flatten(0, 1), stored).amin(dim=1).view(2, 25)
    memory = MemoryBank(bank)
    assert not memory.retrieves and memory.rows == 200
    assert torch.allclose(memory(queries), expected, atol=1e-3)
    # A query that is a bank row is at distance 0.
    assert float(memory(stored[None, :5]).max()) < 1e-2


def _images(count: int, patches: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """`count` images of `patches` patch vectors each, every image around its own random offset."""
    offsets = 3.0 * torch.randn(count, 1, dim, generator=generator)
    return offsets + torch.randn(count, patches, dim, generator=generator)


def test_nearest_images_bank_compares_each_image_with_its_nearest_images_only():
    generator = torch.Generator().manual_seed(1)
    stored, queries = _images(10, 30, 8, generator), _images(4, 30, 8, generator)
    memory = MemoryBank(stored, stored.mean(dim=1), neighbours=3)
    assert memory.retrieves and memory.rows == 300
    values = stored.half().float()
    distances = memory(queries)
    for image in range(len(queries)):  # brute force: the 3 nearest descriptors, then every patch of them
        nearest = torch.cdist(queries[image].mean(0, keepdim=True), stored.mean(1))[0].topk(3, largest=False).indices
        assert set(nearest.tolist()) == set(memory.nearest_images(queries[image : image + 1])[0].tolist())
        expected = torch.cdist(queries[image], values[nearest].flatten(0, 1)).amin(dim=1)
        assert torch.allclose(distances[image], expected, atol=1e-3)
    # As many neighbours as images: every stored patch, the global nearest neighbour.
    everything = MemoryBank(stored, stored.mean(dim=1), neighbours=10)
    assert not everything.retrieves
    expected = torch.cdist(queries.flatten(0, 1), values.flatten(0, 1)).amin(dim=1).view(4, 30)
    assert torch.allclose(everything(queries), expected, atol=1e-3)
    assert (everything(queries) <= distances + 1e-4).all()  # fewer candidates: never nearer


def test_retrieval_by_mean_and_spread_tells_textures_of_equal_mean_apart():
    # Two kinds of training image with the same mean patch vector: fine-grained (spread 0.2) and coarse
    # (spread 2). A coarse query must retrieve the coarse images, which the mean alone cannot tell apart.
    generator = torch.Generator().manual_seed(3)
    spreads = torch.tensor([0.2, 2.0] * 4)
    stored = spreads[:, None, None] * torch.randn(8, 50, 6, generator=generator)
    query = 2.0 * torch.randn(1, 50, 6, generator=generator)
    by_spread = MemoryBank(stored, image_descriptors(stored), neighbours=4)
    assert by_spread.descriptor == "mean_spread"
    assert set(by_spread.nearest_images(query)[0].tolist()) == {1, 3, 5, 7}
    by_mean = MemoryBank(stored, image_descriptors(stored, "mean"), neighbours=4)
    assert by_mean.descriptor == "mean"
    assert set(by_mean.nearest_images(query)[0].tolist()) != {1, 3, 5, 7}
    # Brute force of the descriptor: per-channel mean, then per-channel population standard deviation.
    expected = torch.cat([stored.mean(dim=1), stored.std(dim=1, unbiased=False)], dim=1)
    assert torch.allclose(by_spread.descriptors, expected, atol=1e-5)
    with pytest.raises(ValueError, match="unknown bank descriptor"):
        image_descriptors(stored, "median")


def test_windows_are_means_of_grid_cells_and_upsample_back_to_the_grid():
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(2, 6 * 8, 3, generator=generator)  # a 6 × 8 grid
    pooled, shape = pool_windows(features, (6, 8), 4)
    assert shape == (2, 3)  # stride 2
    grid = features.view(2, 6, 8, 3)
    for row in range(2):
        for column in range(3):  # brute force: the mean of the 4 × 4 cells from (2·row, 2·column)
            expected = grid[:, 2 * row : 2 * row + 4, 2 * column : 2 * column + 4].mean(dim=(1, 2))
            assert torch.allclose(pooled[:, row * 3 + column], expected, atol=1e-6)
    flat = torch.full((2, 6), 1.5)
    assert torch.allclose(upsample_windows(flat, shape, (6, 8)), torch.full((2, 48), 1.5))  # constants stay


def test_coarse_distance_is_the_nearest_window_of_the_nearest_images():
    generator = torch.Generator().manual_seed(7)
    grid = (6, 6)
    stored, queries = _images(5, 36, 4, generator), _images(2, 36, 4, generator)
    windows, _ = pool_windows(stored, grid, 4)  # 2 × 2 windows per image
    memory = MemoryBank(stored, image_descriptors(stored), 2, windows, 4)
    assert memory.scales == 2
    both = memory.distances(queries, grid)
    assert both.shape == (2, 36, 2) and torch.allclose(both[..., 0], memory(queries))
    pooled, shape = pool_windows(queries, grid, 4)
    for image in range(2):  # brute force among the windows of the same 2 nearest images
        near = memory.nearest_images(queries[image : image + 1])[0]
        nearest = torch.cdist(pooled[image], windows[near].half().float().flatten(0, 1)).amin(dim=1)
        expected = upsample_windows(nearest[None], shape, grid)[0]
        assert torch.allclose(both[image, :, 1], expected, atol=1e-3)
    again = MemoryBank.from_state(memory.state())
    assert again.window == 4 and torch.equal(again.distances(queries, grid), both)


def test_memory_bank_state_round_trip_and_older_tensor_banks():
    generator = torch.Generator().manual_seed(2)
    stored, queries = _images(6, 20, 8, generator), _images(2, 20, 8, generator)
    memory = MemoryBank(stored, stored.mean(dim=1), neighbours=2)
    again = MemoryBank.from_state(memory.state())
    assert again.neighbours == 2 and torch.equal(again(queries), memory(queries))
    flat = stored.flatten(0, 1)  # a file written before the retrieval held one M×D tensor
    assert torch.equal(MemoryBank.from_state(flat)(queries), MemoryBank(flat)(queries))


def test_greedy_coreset_covers_the_extremes():
    points = torch.tensor([[0.0], [0.1], [0.2], [5.0], [9.9], [10.0], [4.9]]).repeat(1, 8)
    chosen = set(greedy_coreset(points, 3, projection_dim=8).tolist())
    values = {round(float(points[i, 0])) for i in chosen}
    assert values == {0, 5, 10}  # one point of each cluster, whatever the start


def test_per_image_coreset_covers_each_images_extremes():
    first = torch.tensor([[0.0], [0.1], [0.2], [5.0], [9.9], [10.0], [4.9]])
    second = -2.0 * first.flip(0)  # other clusters: 0, -10, -20
    points = torch.stack([first, second]).repeat(1, 1, 8)
    chosen = greedy_coreset_per_image(points, 3, projection_dim=8)
    assert chosen.shape == (2, 3)
    assert {round(float(points[0, i, 0])) for i in chosen[0]} == {0, 5, 10}
    assert {round(float(points[1, i, 0]) / 2) for i in chosen[1]} == {0, -5, -10}
    # The covering radius of a k-centre pick: no point is farther from the chosen ones than 2× the optimum.
    generator = torch.Generator().manual_seed(3)
    cloud = torch.randn(3, 200, 4, generator=generator)
    picks = greedy_coreset_per_image(cloud, 20, projection_dim=4)
    for image in range(3):
        radius = torch.cdist(cloud[image], cloud[image, picks[image]]).amin(dim=1).max()
        random_radius = torch.cdist(cloud[image], cloud[image, :20]).amin(dim=1).max()
        assert radius < random_radius


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
        parts = model.hybrid_parts(features).flatten(0, 1)
        logits = model.discriminator.logits(model.adaptor(rows)).flatten()
        distances = torch.cdist(rows, bank.half().float()).amin(dim=1)
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
        "fast", epochs=1, image_size=64, backbone="efficientnet_lite0", early_stopping=False, score="hybrid", num_threads=1,
        bank_neighbours=4,
    )
    train(data, tmp_path / "run", config, progress=False, echo=lambda _: None)
    model, checkpoint = Checkpoint.load(tmp_path / "run").build_model(), read_checkpoint(tmp_path / "run")
    assert checkpoint["memory_bank"] is not None and model.memory_bank is not None
    assert model.memory_bank.retrieves and model.memory_bank.neighbours == 4
    # [mean, std] of the logit, the distance and the coarse (window) distance.
    _, std_logit, mean_distance, std_distance, mean_coarse, std_coarse = checkpoint["hybrid_norm"]
    assert std_logit > 0 and std_distance > 0 and mean_distance > 0 and std_coarse > 0 and mean_coarse > 0
    assert model.memory_bank.scales == 2 and model.memory_bank.window == 4
    assert checkpoint["memory_bank"]["windows"].shape[:2] == (len(model.memory_bank.patches), 9)  # 3×3 windows
    said = describe_bank(checkpoint["memory_bank"])  # what `glass info` prints
    assert said.startswith("nearest 4 of ") and "(by mean and spread)" in said and said.endswith("+ 9 means of 4×4 windows")
    # Standardised on the held-out normals: their patch scores average about 0.
    holdout_scores = np.asarray(checkpoint["calibration"]["holdout_image_scores"])
    assert np.isfinite(holdout_scores).all()
    result = export_onnx(tmp_path / "run")
    assert max(result.max_abs_diff.values()) < 1e-3


def _small_hybrid():
    """A tiny untrained hybrid model, the features of 6 random training images and 4 held-out uint8 images."""
    torch.manual_seed(0)
    config = make_config("fast", backbone="efficientnet_lite0", image_size=64, score="hybrid", bank_neighbours=2)
    model = build_model(config).eval()
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        train = FeaturesInMemory(model.features(torch.rand(6, 3, 64, 64, generator=generator)))
    holdout = (255 * torch.rand(4, 3, 64, 64, generator=generator)).to(torch.uint8)
    return model, config, train, holdout


def test_hybrid_norm_is_measured_on_raw_parts_whatever_was_set_before():
    from glass_ad.training.hybrid import build_hybrid_score

    model, config, train, holdout = _small_hybrid()
    first = build_hybrid_score(model, train, holdout, config, torch.device("cpu"))
    again = build_hybrid_score(model, train, holdout, config, torch.device("cpu"))  # a norm is set now
    assert np.allclose(first["norm"], again["norm"], rtol=1e-5)
    assert first["bank_images"] == 6 and first["bank_neighbours"] == 2
    # Standardised on the held-out normals: both parts average 0 with std 1 there.
    with torch.no_grad():
        parts = model.hybrid_parts(model.features(holdout.float() / 255)).flatten(0, 1)
    assert parts.shape[1] == 3  # the logit, the distance and the coarse distance
    assert torch.allclose(parts.mean(0), torch.zeros(3), atol=1e-3)
    assert torch.allclose(parts.std(0), torch.ones(3), atol=1e-3)


def test_a_bank_prepared_before_the_epochs_and_cached_holdout_features_give_the_same_norm():
    """The run builds the bank before its epochs (so the time limit counts it) and standardises on the
    validation set's cached features of the held-out normals: the same score as building both at the end."""
    from glass_ad.training.hybrid import build_hybrid_score, prepare_bank

    model, config, train, holdout = _small_hybrid()
    with torch.no_grad():
        holdout_features = model.features(holdout.float() / 255)
    prepared = prepare_bank(train, holdout_features, config, model.grid_shape)
    assert prepared.build_s > 0 and prepared.holdout_distance_s > 0
    at_the_end = build_hybrid_score(model, train, holdout, config, torch.device("cpu"))
    bank_at_the_end = model.memory_bank
    early = build_hybrid_score(
        model, train, holdout, config, torch.device("cpu"), prepared=prepared, holdout_features=holdout_features
    )
    assert model.memory_bank is prepared.bank and torch.equal(prepared.bank.patches, bank_at_the_end.patches)
    assert early["norm"] == pytest.approx(at_the_end["norm"], rel=1e-6)


def test_bank_keeps_fewer_patches_per_image_past_the_row_budget(monkeypatch):
    from glass_ad.training import hybrid

    generator = torch.Generator().manual_seed(5)
    features = FeaturesInMemory(torch.randn(10, 40, 8, generator=generator))
    config = make_config("fast", score="hybrid", bank_neighbours=3, bank_patches=30)
    grid = (5, 8)  # 40 patches; windows of 4 × 4 at stride 2: 1 × 3 of them
    full = hybrid.build_memory_bank(features, config, grid)
    assert full.patches.shape == (10, 30, 8) and full.windows.shape == (10, 3, 8)  # every window: 3 < 144
    monkeypatch.setattr(hybrid, "ROW_BUDGET", 200)  # 10 images × 30 rows would pass it: 20 each, at least 16
    bank = hybrid.build_memory_bank(features, config, grid)
    assert bank.patches.shape == (10, 20, 8) and bank.neighbours == 3 and bank.retrieves
    # The descriptors are the means and spreads of all of an image's patches, not of the kept ones.
    rows = features.features
    assert bank.descriptor == "mean_spread" and bank.descriptors.shape == (10, 16)
    assert torch.allclose(bank.descriptors[:, :8], rows.mean(dim=1), atol=1e-5)
    assert torch.allclose(bank.descriptors[:, 8:], rows.std(dim=1, unbiased=False), atol=1e-5)
    by_mean = hybrid.build_memory_bank(features, config.replace(bank_descriptor="mean", bank_coarse_window=0), grid)
    assert by_mean.windows is None and by_mean.scales == 1
    assert by_mean.descriptor == "mean" and torch.allclose(by_mean.descriptors, rows.mean(dim=1), atol=1e-6)
    # --bank-neighbours 0: one coreset of the share of all patches.
    glob = hybrid.build_memory_bank(features, config.replace(bank_neighbours=0, memory_bank_fraction=0.1), grid)
    assert glob.patches.shape == (1, 40, 8) and not glob.retrieves

import time
from types import SimpleNamespace

import pytest
import torch

from glass_ad.config import make_config
from glass_ad.model import chunking
from glass_ad.model.chunking import choose_batch_chunk, default_chunk
from glass_ad.model.glass_model import build_model


class _TimedModel:
    """Stands in for a GlassModel: `features` takes `cost[chunk]` seconds per image."""

    def __init__(self, name: str, cost: dict[int, float]):
        self.backbone = SimpleNamespace(name=name)
        self.input_shape = (8, 8)
        self.batch_chunk = None
        self.cost = cost
        self.calls: list[int] = []

    def features(self, images):
        chunk = self.batch_chunk or len(images)
        self.calls.append(chunk)
        time.sleep(self.cost[min(chunk, len(images))] * len(images))
        return images


def test_chunked_features_equal_one_pass():
    model = build_model(make_config("fast", backbone="efficientnet_lite0", image_size=64)).eval()
    x = torch.rand(5, 3, 64, 64)
    with torch.no_grad():
        whole = model.features(x)
        for chunk in (1, 2, 4):
            model.batch_chunk = chunk
            assert torch.allclose(model.features(x), whole, atol=1e-5, rtol=1e-4)


def test_the_fastest_chunk_is_chosen_and_set():
    model = _TimedModel("chunk-test-fast-2", {1: 0.004, 2: 0.002, 4: 0.005, 8: 0.006})
    choice = choose_batch_chunk(model, "cpu", batch_size=8, rounds=2, measure=True)
    assert choice.size == 2 and model.batch_chunk == 2
    assert "chunks of 2" in choice.reason and dict(choice.ms).keys() == {1, 2, 4, 8}
    assert set(model.calls) == {1, 2, 4, 8}  # every candidate was timed
    # Measured once per backbone, shape, device and batch: a second model of the same kind is not re-timed.
    again = _TimedModel("chunk-test-fast-2", {1: 0.004, 2: 0.002, 4: 0.005, 8: 0.006})
    assert choose_batch_chunk(again, "cpu", batch_size=8, rounds=2, measure=True).size == 2 and again.calls == []


def test_the_whole_batch_stays_unless_a_chunk_is_clearly_faster():
    model = _TimedModel("chunk-test-whole", {1: 0.006, 2: 0.004, 4: 0.0039, 8: 0.004})
    choice = choose_batch_chunk(model, "cpu", batch_size=8, rounds=2, measure=True)
    assert choice.size is None and model.batch_chunk is None and "whole batch" in choice.reason


def test_no_measurement_off_the_cpu_or_for_single_images():
    model = _TimedModel("chunk-test-cuda", {1: 0.0, 8: 0.0})
    model.batch_chunk = 4
    assert choose_batch_chunk(model, "cuda", batch_size=8).size is None and model.batch_chunk is None
    assert choose_batch_chunk(model, "cpu", batch_size=1).size is None
    assert model.calls == []


def test_a_fixed_chunk_is_not_measured():
    model = _TimedModel("chunk-test-fixed", {1: 0.0, 8: 0.0})
    assert choose_batch_chunk(model, "cpu", batch_size=8, fixed=3).size == 3 and model.batch_chunk == 3
    assert "3 image(s) per pass (asked for)" in choose_batch_chunk(model, "cpu", fixed=3).reason
    assert choose_batch_chunk(model, "cpu", batch_size=8, fixed=0).size is None and model.batch_chunk is None
    assert model.calls == []
    with pytest.raises(ValueError, match="backbone_chunk"):
        make_config("fast", backbone_chunk=-1)


def test_the_default_chunk_is_a_rule_of_the_settings_never_timed():
    """Timing must not pick the chunk: it changes the arithmetic, so a seed would not fix the model."""
    model = _TimedModel("chunk-test-rule", {1: 0.0, 2: 0.0, 4: 0.0, 8: 0.0})
    for shape, batch, expected in (((128, 128), 8, None), ((288, 288), 8, 2), ((288, 720), 8, 1), ((64, 64), 4, None)):
        model.input_shape = shape
        choice = choose_batch_chunk(model, "cpu", batch_size=batch)
        assert choice.size == expected == default_chunk(batch, shape) and model.batch_chunk == expected
        assert "by batch size and input area" in choice.reason
    assert model.calls == []  # nothing was timed
    assert default_chunk(8, (288, 288), "cuda") is None


def test_two_runs_with_the_same_seed_train_bit_identical_weights(tmp_path, monkeypatch):
    """The chunk once came from timing at start-up: two runs whose timings differ (here: chunk 1 fastest, then
    the whole batch fastest) trained different weights from the same seed."""
    from glass_ad.data.demo_data import make_demo_dataset
    from glass_ad.model.checkpoint import read_checkpoint
    from glass_ad.training.trainer import train

    data = make_demo_dataset(tmp_path / "data", n_train=12, n_test_good=1, n_test_defect=1, size=64)
    config = make_config(
        "fast", backbone="efficientnet_lite0", image_size=64, epochs=2, batch_size=4, early_stopping=False,
        precision="fp32", seed=5, num_threads=1,
    )  # fmt: skip
    favoured = iter([1, 4])

    def fake_timing(model, images, sizes, rounds=3):
        best = next(favoured)
        return {size: (1.0 if size == best else 100.0) for size in sizes}

    monkeypatch.setattr(chunking, "time_chunks", fake_timing)
    checkpoints = []
    for name in ("a", "b"):  # as two processes: nothing measured before
        monkeypatch.setattr(chunking, "_MEASURED", {})
        result = train(data, tmp_path / name, config, progress=False, echo=lambda _: None)
        checkpoints.append(read_checkpoint(result.checkpoint))
    a, b = checkpoints
    for part in ("adaptor", "discriminator"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert a["calibration"]["image_threshold"] == b["calibration"]["image_threshold"]

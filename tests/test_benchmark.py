"""`glass benchmark` measures what training does: every branch timed, the trainer's own optimisation step.

If the benchmark's optimisers differed from the trainer's (another optimiser, learning rate or weight decay —
the adaptor's weight decay once went missing this way) its figures would describe a configuration that never
trains. Both sides are observed through PyTorch's global optimiser hook, so the test does not depend on where
either builds its optimisers.
"""

from __future__ import annotations

from typing import Any

import pytest
from torch.optim.optimizer import register_optimizer_step_pre_hook

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.research.benchmark import format_benchmark, run_benchmark

_BRANCHES = ("backbone", "las", "gas", "rest")


def _config(**overrides: Any):
    # fp32: no timing probe for the arithmetic, the same choice on every machine.
    values = dict(backbone="efficientnet_lite0", image_size=64, num_threads=1, precision="fp32", epochs=1, seed=0)
    values.update(overrides)
    return make_config("fast", **values)


def _optimisers_stepped(run) -> dict[tuple, dict[str, Any]]:
    """Every optimiser that takes a step while `run()` runs: (class, parameter shapes) → its hyper-parameters."""
    seen: dict[tuple, dict[str, Any]] = {}

    def record(optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            shapes = tuple(tuple(p.shape) for p in group["params"])
            settings = {k: group[k] for k in ("lr", "betas", "eps", "weight_decay", "amsgrad") if k in group}
            seen[(type(optimizer).__name__, shapes)] = settings

    handle = register_optimizer_step_pre_hook(record)
    try:
        run()
    finally:
        handle.remove()
    return seen


@pytest.fixture(scope="module")
def benchmarked() -> dict[str, Any]:
    state: dict[str, Any] = {}

    def run() -> None:
        state["result"] = run_benchmark(_config(), repeats=1, train_iterations=2)

    state["optimisers"] = _optimisers_stepped(run)
    return state


def test_every_training_branch_is_timed(benchmarked):
    result = benchmarked["result"]
    # A branch the timer misses (e.g. GAS called through a name the benchmark does not wrap) reads 0.
    for branch in _BRANCHES:
        assert result[f"train_s_per_it_{branch}"] > 0, branch
    for key in ("backbone_img_s_b8", "inference_img_s_b8", "backbone_img_s_b1", "inference_img_s_b1",
                "head_ms_aggregation", "head_ms_discriminator", "head_ms_postprocess", "peak_rss_mb"):  # fmt: skip
        assert result[key] > 0, key
    # The full model does the backbone's work and more: it cannot be faster than the backbone alone by much.
    assert result["inference_img_s_b8"] < 1.5 * result["backbone_img_s_b8"]
    assert result["peak_rss_mb"] >= result["inference_peak_rss_mb"]


def test_the_report_prints_the_measured_figures(benchmarked):
    result = benchmarked["result"]
    text = format_benchmark(result)
    assert f"backbone {result['backbone']} @ {result['image_size']} px, D={result['embed_dim']}" in text
    for branch, label in (("backbone", "backbone"), ("gas", "GAS"), ("las", "LAS"), ("rest", "rest")):
        assert f"{label} {result[f'train_s_per_it_{branch}']:.3f}" in text, branch
    assert f"aggregation {result['head_ms_aggregation']:.1f}, adaptor + discriminator {result['head_ms_discriminator']:.1f}" in text
    assert result["backbone_chunk"].startswith("backbone") and result["backbone_chunk"] in text  # the timed choice
    # A rectangular input (`--image-shape`) is named as such.
    assert result["input_shape"] == [64, 64]
    assert f"@ 64×160 px, D={result['embed_dim']}" in format_benchmark({**result, "input_shape": [64, 160]})


@pytest.mark.slow
def test_benchmark_times_the_trainers_optimisers(benchmarked, tmp_path):
    from glass_ad.training.trainer import train

    data = make_demo_dataset(tmp_path / "data", n_train=12, n_test_good=1, n_test_defect=1, size=64)
    trained = _optimisers_stepped(
        lambda: train(data, tmp_path / "run", _config(early_stopping=False), progress=False, echo=lambda _: None)
    )
    timed = benchmarked["optimisers"]
    assert len(timed) == 2  # discriminator and adaptor
    assert timed == {key: trained.get(key) for key in timed}

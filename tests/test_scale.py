"""Beyond one machine: suites on a real local Ray (2 CPUs) and batch prediction with Ray Data.

Skipped when Ray is not installed (``pip install "glass-ad[distributed]"``). Tiny generated categories
(64 px, 1 epoch, EfficientNet-Lite0) keep the module to about a minute on two cores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from glass_ad.cluster import RayOptions, ray_session  # noqa: E402
from glass_ad.config import make_config  # noqa: E402
from glass_ad.demo_data import make_demo_dataset  # noqa: E402
from glass_ad.suite import run_suite  # noqa: E402


def _config(**overrides):
    values = dict(backbone="efficientnet_lite0", image_size=64, epochs=1, seed=0, num_threads=1)
    values.update(overrides)
    return make_config("fast", **values)


def _quiet(_: str) -> None:
    pass


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # wall times differ from run to run
        row.pop("train time (s)")
        row.pop("test time (s)")
    return rows


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, no dashboard) for the module; `ray_session` reuses it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale_data")
    make_demo_dataset(root, n_train=8, n_test_good=3, n_test_defect=3, size=64, seed=0, name="alpha")
    make_demo_dataset(root, n_train=8, n_test_good=3, n_test_defect=3, size=64, seed=1, name="beta")
    # A category that cannot train: its only training "images" are not images.
    broken = root / "broken"
    make_demo_dataset(root, n_train=2, n_test_good=1, n_test_defect=1, size=64, seed=2, name="broken")
    for image in (broken / "train" / "good").iterdir():
        image.write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def suites(data_root, tmp_path_factory, local_ray) -> dict[str, Path]:
    sequential = tmp_path_factory.mktemp("sequential")
    on_ray = tmp_path_factory.mktemp("on_ray")
    first = run_suite(data_root, sequential, _config(), pictures=False, progress=False, echo=_quiet)
    second = run_suite(
        data_root, on_ray, _config(), pictures=False, progress=False, echo=_quiet, ray_options=RayOptions()
    )
    return {"sequential": sequential, "ray": on_ray, "first": first, "second": second}


def test_ray_suite_gives_the_sequential_table(suites):
    assert _rows(suites["ray"]) == _rows(suites["sequential"])
    assert [r.status for r in suites["second"]] == ["done", "done", "failed"]


def test_ray_suite_writes_the_same_files(suites):
    for name in ("alpha", "beta"):
        sequential = sorted(p.name for p in (suites["sequential"] / name).iterdir())
        on_ray = sorted(p.name for p in (suites["ray"] / name).iterdir())
        assert on_ray == sequential and "metrics.json" in on_ray and "model.pt" in on_ray
    assert (suites["ray"] / "results.md").is_file()


def test_a_failing_job_is_reported_and_the_others_finish(suites):
    rows = {row["category"]: row for row in _rows(suites["ray"])}
    assert rows["broken"]["status"].startswith("failed: ")
    assert "\n" not in rows["broken"]["status"]
    assert rows["alpha"]["status"] == rows["beta"]["status"] == "ok"
    assert "Traceback" in (suites["ray"] / "broken" / "error.txt").read_text()
    assert rows["Mean (2 of 3)"]


def test_finished_jobs_are_never_rerun(suites, data_root):
    out = suites["ray"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "alpha").iterdir() if p.is_file()}
    again = run_suite(
        data_root, out, _config(), categories=["alpha", "beta"], pictures=False, progress=False, echo=_quiet,
        ray_options=RayOptions(),
    )  # fmt: skip
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "alpha").iterdir() if p.is_file()}


def test_session_reuses_a_running_ray(local_ray):
    with ray_session() as session:
        assert session.is_initialized()
    assert local_ray.is_initialized()  # the caller's Ray is left running

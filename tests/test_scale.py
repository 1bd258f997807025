"""Beyond one machine: suites on a real local Ray (2 CPUs) and batch prediction with Ray Data.

Skipped when Ray is not installed (``pip install "glass-ad[distributed]"``). Tiny generated categories
(64 px, 1 epoch, EfficientNet-Lite0) keep the module to about a minute on two cores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
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
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    except Exception:  # noqa: BLE001 - Ray gives its node 30 s to start: once more on a loaded machine
        ray.shutdown()
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


# ------------------------------------------------------------------------------------ batch prediction


@pytest.fixture(scope="module")
def archive(suites, data_root, tmp_path_factory) -> dict:
    """A trained tiny model with its ONNX export, and ~30 files of which 4 are bad."""
    import shutil

    from glass_ad.export import export_onnx

    run = suites["sequential"] / "alpha"
    export_onnx(run, run / "model.onnx")
    folder = tmp_path_factory.mktemp("archive") / "images"
    good = sorted((data_root / "alpha" / "test").rglob("*.png")) + sorted((data_root / "beta" / "test").rglob("*.png"))
    for copy in range(3):
        for k, image in enumerate(good[:9]):
            target = folder / f"line{copy}" / f"{k:02d}_{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "line0" / "truncated.png").write_bytes(good[0].read_bytes()[:120])
    from PIL import Image

    Image.new("RGB", (4, 4)).save(folder / "line1" / "tiny.png")  # smaller than any model input
    (folder / "notes.txt").write_text("not an image, not listed")
    bad = {"corrupt.png", "empty.jpg", "truncated.png", "tiny.png"}
    return {"run": run, "folder": folder, "bad": bad, "count": 27 + len(bad)}


def _read(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_batch_rows_match_glass_predict_scores(archive, tmp_path):
    from glass_ad.batch import predict_batch
    from glass_ad.predict import Detector

    summary = predict_batch(archive["run"], archive["folder"], tmp_path / "local.csv", engine="local")
    rows = _read(tmp_path / "local.csv")
    assert len(rows) == archive["count"] == summary["images"] and summary["errors"] == len(archive["bad"])
    failed = {Path(r["path"]).name for r in rows if r["error"]}
    assert failed == archive["bad"]
    assert all("\n" not in r["error"] for r in rows)
    assert all(r["decision"] == "" and r["score"] == "" for r in rows if r["error"])
    detector = Detector.load(archive["run"], engine="onnx")
    for row in (r for r in rows if not r["error"]):
        expected = detector.predict(row["path"])
        assert float(row["score"]) == pytest.approx(expected.score, rel=1e-5, abs=1e-6)
        assert row["decision"] == ("anomalous" if expected.is_anomalous else "normal")


def test_batch_on_ray_gives_the_local_rows(archive, tmp_path, local_ray):
    from glass_ad.batch import predict_batch

    predict_batch(archive["run"], archive["folder"], tmp_path / "local.parquet", engine="local")
    summary = predict_batch(
        archive["run"], archive["folder"], tmp_path / "ray.parquet", engine="ray", batch_size=4,
        maps_dir=tmp_path / "maps",
    )  # fmt: skip
    local, on_ray = _read(tmp_path / "local.parquet"), _read(tmp_path / "ray.parquet")
    assert summary["images"] == archive["count"] and [r["path"] for r in on_ray] == [r["path"] for r in local]
    for a, b in zip(local, on_ray):
        assert a["error"] == b["error"] and a["decision"] == b["decision"]
        if not a["error"]:
            assert b["score"] == pytest.approx(a["score"], rel=1e-5, abs=1e-6)
            saved = np.load(b["map"])
            assert saved.dtype == np.float32 and saved.shape == (64, 64)
            assert Path(b["map"]).is_relative_to(tmp_path / "maps" / "line0") or "line" in b["map"]


def test_batch_from_a_list_reports_missing_files(archive, tmp_path):
    from glass_ad.batch import predict_batch

    listing = tmp_path / "inputs.txt"
    first = sorted((archive["folder"] / "line0").glob("*.png"))[:2]
    listing.write_text(f"{first[0]}\n# a comment\nmissing/absent.png\n{first[1]}\n")
    predict_batch(archive["run"], listing, tmp_path / "out.csv", fmt="torch")
    rows = _read(tmp_path / "out.csv")
    assert [Path(r["path"]).name for r in rows] == [first[0].name, "absent.png", first[1].name]
    assert rows[1]["error"] and not rows[0]["error"] and not rows[2]["error"]
    with pytest.raises(FileExistsError, match="--force"):
        predict_batch(archive["run"], listing, tmp_path / "out.csv")
    with pytest.raises(ValueError, match="parquet or .csv"):
        predict_batch(archive["run"], listing, tmp_path / "out.json")

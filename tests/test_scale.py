"""Beyond one machine: suites on a real local Ray and batch prediction with Ray Data or fsspec URLs.

Tiny generated categories (64 px, 1 epoch, EfficientNet-Lite0: about 4 s a job) keep training cheap; what
costs is Ray itself (a cluster start, workers importing torch, Ray Data's actors), so the module starts as
few as it can: one Ray in this process for every Ray test, one `glass suite --engine ray` subprocess (the
one that is killed), one Ray Data pipeline. Tests marked ``distributed`` need Ray (``glass-ad[distributed]``)
and skip without it; the rules of the job-running core and the fsspec sources are tested without Ray.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.ray_session import ray_session
from glass_ad.research.cluster import RayOptions
from glass_ad.research.jobs import Job, JobResult
from glass_ad.research.suite import run_jobs, run_suite

CONFIG = {"backbone": "efficientnet_lite0", "image_size": 64, "epochs": 1, "seed": 0, "num_threads": 1}
# The same settings as `glass suite` options (the killed run is the CLI, its restart the library).
CLI_CONFIG = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--epochs", "1", "--seed", "0", "--threads", "1"]


def _config():
    return make_config("fast", **CONFIG)


def _quiet(_: str) -> None:
    pass


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # wall times differ from run to run
        row.pop("train time (s)")
        row.pop("test time (s)")
    return rows


# ------------------------------------------------------------------ the job-running core (no Ray, fast)


def _fake_run_job(calls: list[str], fail_first: set[str], always_fail: set[str]):
    """A stand-in for `jobs.run_job` that follows its contract (metrics.json means done) in microseconds."""

    def run_job(data_root, out_dir, job, **kwargs):
        run_dir = Path(out_dir) / job.name
        metrics_path = run_dir / "metrics.json"
        if metrics_path.is_file() and not kwargs.get("redo"):
            return JobResult(job.name, "skipped", run_dir, json.loads(metrics_path.read_text()))
        calls.append(job.name)
        if job.name in always_fail or (job.name in fail_first and calls.count(job.name) == 1):
            return JobResult(job.name, "failed", run_dir, {}, f"RuntimeError: {job.name} attempt {calls.count(job.name)}")
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = {"image_auroc": 0.5, "pixel_auroc": 0.5, "aupro": 0.5}
        metrics_path.write_text(json.dumps(metrics))
        return JobResult(job.name, "done", run_dir, metrics)

    return run_job


@pytest.mark.parametrize("retries", [None, 1])
def test_core_skips_finished_jobs_retries_and_records_failures(tmp_path, monkeypatch, retries):
    from glass_ad.research import jobs

    calls: list[str] = []
    monkeypatch.setattr(jobs, "run_job", _fake_run_job(calls, fail_first={"flaky"}, always_fail={"bad"}))
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / "metrics.json").write_text(json.dumps({"image_auroc": 1.0}))
    jobs = [Job(name, name, _config()) for name in ("finished", "flaky", "bad", "fine")]
    said: list[str] = []
    results = run_jobs(tmp_path, tmp_path, jobs, echo=said.append, retries=retries)
    assert [r.name for r in results] == ["finished", "flaky", "bad", "fine"]  # job order, whatever ran when
    assert not any("finished" in line for line in said if line.startswith("== "))  # never handed to the engine
    statuses = [r.status for r in results]
    if retries is None:  # in process: no retry (rerunning the command retries)
        assert calls == ["flaky", "bad", "fine"] and statuses == ["skipped", "failed", "failed", "done"]
    else:
        assert calls == ["flaky", "bad", "fine", "flaky", "bad"] and statuses == ["skipped", "done", "failed", "done"]
        assert results[2].error == "RuntimeError: bad attempt 2"
    rows = {row["category"]: row["status"] for row in _rows(tmp_path)}
    assert rows["bad"].startswith("failed: RuntimeError: bad attempt") and rows["fine"] == "ok"


# --------------------------------------------------------------------------------------------- fixtures


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
def sequential(data_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sequential")
    results = run_suite(data_root, out, _config(), pictures=False, progress=False, echo=_quiet)
    return {"out": out, "results": results}


@pytest.fixture(scope="module")
def worker_kill_marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("marker") / "killed"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs, no dashboard) for the module; `ray_session` reuses it and leaves it running."""
    ray = pytest.importorskip("ray")
    settings = {"address": "local", "num_cpus": 2, "include_dashboard": False, "logging_level": "WARNING"}
    try:
        ray.init(**settings)
    except Exception:  # noqa: BLE001 - Ray gives its node 30 s to start: once more on a loaded machine
        ray.shutdown()
        ray.init(**settings)
    try:
        yield ray
    finally:
        ray.shutdown()


def _dying_task_body(marker: str):
    """A task body that kills its worker process (``os._exit``, as the out-of-memory killer would) at the
    start of the first alpha or beta job on the cluster, once; then it is `cluster._execute` itself.

    Patched in as `cluster._execute` on the driver, it travels with every task `RayEngine` submits (a
    closure is pickled by value), so the retry of a dead worker is tested without any hook in the library."""
    from glass_ad.research import cluster

    real_execute = cluster._execute

    def execute(context, job):
        if job.category in ("alpha", "beta"):
            try:
                handle = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # once across workers
            except FileExistsError:
                pass
            else:
                os.write(handle, job.category.encode())
                os.close(handle)
                os._exit(1)
        return real_execute(context, job)

    return execute


@pytest.fixture(scope="module")
def killed_and_restarted(data_root, sequential, worker_kill_marker, tmp_path_factory, request) -> dict:
    """`glass suite --engine ray` (a local Ray of 1 CPU: one job at a time) killed with SIGKILL, driver and
    Ray together, as soon as its first job has finished; then the same suite again on Ray, in process."""
    out = tmp_path_factory.mktemp("on_ray")
    log = out.parent / "killed_suite.log"
    command = [sys.executable, "-m", "glass_ad.cli", "suite", str(data_root), "--out", str(out), *CLI_CONFIG,
               "--engine", "ray", "--workers", "1", "--no-pictures", "--quiet"]  # fmt: skip
    with log.open("wb") as sink:
        # Its own session: the kill reaches the driver and the Ray it started, nothing else.
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 400
            while not list(out.glob("*/metrics.json")):
                if process.poll() is not None:
                    pytest.fail(f"the suite ended before it was killed:\n{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no job finished in time:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        finally:
            # The driver's whole process tree: Ray's daemons may leave the session, and a surviving worker
            # would finish its job after the "kill".
            tree = psutil.Process(process.pid).children(recursive=True)
            os.killpg(process.pid, signal.SIGKILL)
            for child in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            psutil.wait_procs(tree, timeout=30)
            process.wait()
    finished = [p.parent.name for p in out.glob("*/metrics.json")]
    stamps = {p: p.stat().st_mtime_ns for name in finished for p in (out / name).iterdir() if p.is_file()}
    request.getfixturevalue("local_ray")  # started only now: never two Ray clusters at once on the CPUs
    said: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("glass_ad.research.cluster._execute", _dying_task_body(str(worker_kill_marker)))
        results = run_suite(
            data_root, out, _config(), pictures=False, progress=False, echo=said.append, ray_options=RayOptions()
        )  # fmt: skip
    return {"out": out, "finished": finished, "stamps": stamps, "results": results, "said": said}


# --------------------------------------------------------------------------------- suites on Ray


@pytest.mark.slow
@pytest.mark.distributed
def test_killed_ray_suite_restarted_gives_the_sequential_table(killed_and_restarted, sequential, worker_kill_marker):
    state = killed_and_restarted
    assert len(state["finished"]) == 1  # killed mid-way: one job done, the others not
    assert _rows(state["out"]) == _rows(sequential["out"])  # same seeds, same table
    statuses = {r.name: r.status for r in state["results"]}
    assert statuses[state["finished"][0]] == "skipped"
    assert [r.status for r in sequential["results"]] == ["done", "done", "failed"]
    # The job finished before the kill was neither retrained nor retested, and had the same settings.
    assert state["stamps"] == {p: p.stat().st_mtime_ns for p in state["stamps"]}
    assert not any("other settings" in line for line in state["said"])
    # The unfinished job's first worker died (`_dying_task_body`): it was retried and finished.
    killed_in = worker_kill_marker.read_text()
    assert killed_in != state["finished"][0] and statuses[killed_in] == "done"
    assert any(line.startswith(f"[{killed_in}] failed (WorkerCrashedError") for line in state["said"])


@pytest.mark.slow
@pytest.mark.distributed
def test_a_failing_job_is_retried_once_reported_and_the_others_finish(killed_and_restarted):
    out, said = killed_and_restarted["out"], killed_and_restarted["said"]
    rows = {row["category"]: row for row in _rows(out)}
    assert rows["broken"]["status"].startswith("failed: ")
    assert "\n" not in rows["broken"]["status"]
    assert rows["alpha"]["status"] == rows["beta"]["status"] == "ok"
    assert "Traceback" in (out / "broken" / "error.txt").read_text()
    assert rows["Mean (2 of 3)"]
    assert sum(line.startswith("[broken] failed (") and "retry 1 of 1" in line for line in said) == 1


@pytest.mark.slow
@pytest.mark.distributed
def test_ray_suite_writes_the_same_files(killed_and_restarted, sequential):
    for name in ("alpha", "beta"):
        in_process = sorted(p.name for p in (sequential["out"] / name).iterdir())
        on_ray = sorted(p.name for p in (killed_and_restarted["out"] / name).iterdir())
        assert on_ray == in_process and "metrics.json" in on_ray and "model.pt" in on_ray
    assert (killed_and_restarted["out"] / "results.md").is_file()


@pytest.mark.slow
@pytest.mark.distributed
def test_finished_jobs_are_never_rerun(killed_and_restarted, data_root):
    out = killed_and_restarted["out"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "alpha").iterdir() if p.is_file()}
    again = run_suite(
        data_root, out, _config(), categories=["alpha", "beta"], pictures=False, progress=False, echo=_quiet,
        ray_options=RayOptions(),
    )  # fmt: skip
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "alpha").iterdir() if p.is_file()}


@pytest.mark.distributed
def test_session_reuses_a_running_ray(local_ray):
    with ray_session() as session:
        assert session.is_initialized()
    assert local_ray.is_initialized()  # the caller's Ray is left running


# ------------------------------------------------------------------------------------ batch prediction


@pytest.fixture(scope="module")
def archive(sequential, data_root, tmp_path_factory) -> dict:
    """A trained tiny model with its ONNX export, and 31 files of which 4 are bad (and one non-image)."""
    from glass_ad.inference.export import export_onnx

    run = sequential["out"] / "alpha"
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


@pytest.fixture(scope="module")
def local_rows(archive, tmp_path_factory) -> list[dict]:
    """The in-process rows of the archive (local paths): the reference of the other engines and sources."""
    from glass_ad.inference.batch import predict_batch

    out = tmp_path_factory.mktemp("local_rows") / "local.parquet"
    summary = predict_batch(archive["run"], archive["folder"], out, engine="local")
    assert summary["images"] == archive["count"]
    return _read(out)


def _read(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _below(path: str, folder: str) -> str:
    """``path`` relative to ``folder`` (a URL or a local folder)."""
    assert path.startswith(folder.rstrip("/") + "/"), (path, folder)
    return path[len(folder.rstrip("/")) + 1 :]


def _same_rows(rows: list[dict], folder: str, reference: list[dict], reference_folder: str) -> None:
    """Rows of the same files (matched by the path below their folders): same errors, decisions, scores."""
    assert [_below(r["path"], folder) for r in rows] == [_below(r["path"], reference_folder) for r in reference]
    for row, expected in zip(rows, reference):
        assert bool(row["error"]) == bool(expected["error"]) and row["decision"] == expected["decision"]
        if expected["error"]:
            assert row["error"].split(": ")[-1] == expected["error"].split(": ")[-1]  # same reason, other name
        else:
            assert row["score"] == pytest.approx(expected["score"], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_batch_rows_match_glass_predict_scores(archive, tmp_path):
    from glass_ad.inference.batch import predict_batch
    from glass_ad.inference.predict import Detector

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


@pytest.mark.slow
@pytest.mark.distributed
def test_batch_on_ray_from_a_file_url_gives_the_local_rows(archive, local_rows, tmp_path, local_ray):
    """Ray Data actors list nothing themselves: the driver lists the URL folder through fsspec, the actors
    read each file's bytes through fsspec and save the maps."""
    from glass_ad.inference.batch import predict_batch

    source = f"file://{archive['folder']}"
    summary = predict_batch(
        archive["run"], source, tmp_path / "ray.parquet", engine="ray", batch_size=4, maps_dir=tmp_path / "maps"
    )  # fmt: skip
    rows = _read(tmp_path / "ray.parquet")
    assert summary["images"] == archive["count"] and summary["errors"] == len(archive["bad"])
    assert all(r["path"].startswith("file://") for r in rows)
    _same_rows(rows, source, local_rows, str(archive["folder"]))
    for row in (r for r in rows if not r["error"]):
        saved = np.load(row["map"])
        assert saved.dtype == np.float32 and saved.shape == (64, 64)
        assert row["map"] == str(tmp_path / "maps" / (_below(row["path"], source) + ".npy"))


@pytest.mark.slow
def test_batch_from_memory_urls_gives_the_local_rows(archive, local_rows):
    """A folder and a list on fsspec's in-memory file system (no network), results written there too."""
    import fsspec
    import pyarrow.parquet as pq

    from glass_ad.inference.batch import predict_batch

    memory = fsspec.filesystem("memory")
    folder = archive["folder"]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        memory.pipe_file(f"/archive/{path.relative_to(folder).as_posix()}", path.read_bytes())
    try:
        summary = predict_batch(archive["run"], "memory://archive", "memory://results/rows.parquet")
        assert summary["images"] == archive["count"] and summary["results"] == "memory://results/rows.parquet"
        with memory.open("/results/rows.parquet", "rb") as handle:
            rows = pq.read_table(handle).to_pylist()
        _same_rows(rows, "memory://archive", local_rows, str(folder))
        assert {Path(r["path"]).name for r in rows if r["error"]} == archive["bad"]
        with pytest.raises(FileExistsError, match="--force"):
            predict_batch(archive["run"], "memory://archive", "memory://results/rows.parquet")

        # A list: relative entries, an absolute path on the list's file system, a URL, a missing file.
        good = next(r for r in local_rows if not r["error"])
        corrupt = next(r for r in local_rows if r["path"].endswith("corrupt.png"))
        names = [_below(good["path"], str(folder)), _below(corrupt["path"], str(folder))]
        memory.pipe_file(
            "/archive/line0/inputs.txt",
            f"../{names[0]}\n# a comment\n/archive/{names[1]}\nmemory://archive/{names[0]}\nabsent.png\n".encode(),
        )
        predict_batch(archive["run"], "memory://archive/line0/inputs.txt", "memory://results/list.csv")
        with memory.open("/results/list.csv", "r") as handle:
            listed = list(csv.DictReader(handle))
        assert [r["path"] for r in listed] == [
            f"memory://archive/{names[0]}", f"memory:///archive/{names[1]}", f"memory://archive/{names[0]}",
            "memory://archive/line0/absent.png",
        ]  # fmt: skip
        assert listed[3]["error"] == "ImageReadError: cannot read image 'memory://archive/line0/absent.png': file not found"
        assert not listed[0]["error"] and not listed[2]["error"] and listed[1]["error"].endswith("cannot identify image file)")
        assert float(listed[0]["score"]) == float(listed[2]["score"]) == pytest.approx(good["score"], rel=1e-5, abs=1e-6)
    finally:
        memory.rm("/archive", recursive=True)
        memory.rm("/results", recursive=True)


@pytest.mark.slow
def test_batch_from_a_list_reports_missing_files(archive, tmp_path):
    from glass_ad.inference.batch import predict_batch

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

"""One job of a suite or ablation: what it is (`Job`), what it gave (`JobResult`), the files of its folder,
and `run_job`, which trains and tests it, resumably (the rules are in suite.py's module docstring).

`suite.py` decides which jobs run and where; `cluster.py` runs them on Ray. Both share this module, which
imports neither.
"""

from __future__ import annotations

import json
import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from glass_ad.config import GlassConfig
from glass_ad.model.checkpoint import CHECKPOINT_NAME
from glass_ad.safety import one_line, write_atomic

__all__ = [
    "ERROR_NAME",
    "EXTRA_METRICS",
    "METRICS_NAME",
    "METRIC_LABELS",
    "PAPER_METRICS",
    "REQUEST_NAME",
    "SCORES_NAME",
    "Job",
    "JobContext",
    "JobResult",
    "percent",
    "read_json",
    "run_job",
    "safe_name",
]

METRICS_NAME = "metrics.json"
REQUEST_NAME = "request.json"
SCORES_NAME = "scores.csv"
ERROR_NAME = "error.txt"

# The paper's table reports these three, in %, one decimal; AP values are extra columns.
PAPER_METRICS = ("image_auroc", "pixel_auroc", "aupro")
EXTRA_METRICS = ("image_ap", "pixel_ap")
METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "image_ap": "image AP",
    "pixel_ap": "pixel AP",
}


@dataclass
class Job:
    """One run: ``name`` is its folder under the output directory and its row label in the table."""

    name: str
    category: str | None
    config: GlassConfig
    model: Path | None = None  # test this trained run instead of training one


@dataclass
class JobResult:
    name: str
    status: str  # "done" (ran now), "skipped" (metrics found), "failed"
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def safe_name(name: str) -> str:
    # Folder names: path separators and spaces would nest or break shell use.
    return "".join(c if c.isalnum() or c in "._+-=" else "_" for c in name) or "run"


# Settings that change where and how fast a job runs, not its result: ignored when resuming.
_RUN_ONLY = ("device", "num_threads")


def _request(job: Job, layout: str) -> dict[str, Any]:
    """What defines a job's result; compared on resume (the data path may move, so it is not part of it)."""
    config = {k: v for k, v in job.config.to_dict().items() if k not in _RUN_ONLY}
    return {
        "category": job.category,
        "layout": layout,
        "config": config,
        "model": str(Path(job.model).resolve()) if job.model is not None else None,
    }


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ jobs


def run_job(
    data_root: str | Path,
    out_dir: str | Path,
    job: Job,
    *,
    layout: str = "auto",
    redo: bool = False,
    pictures: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> JobResult:
    """Train (unless already trained or ``job.model`` is given) and test one job; never raises for a
    failure inside the job — it comes back as ``status="failed"`` with ``error.txt`` in the run folder."""
    from glass_ad import training as trainer  # imported here so that tests can monkeypatch their functions
    from glass_ad.evaluation import tester

    run_dir = Path(out_dir) / safe_name(job.name)
    metrics_path = run_dir / METRICS_NAME
    request = _request(job, layout)
    say = lambda text: echo(f"[{job.name}] {text}")  # noqa: E731 - a tiny prefixing closure

    if metrics_path.is_file() and not redo:
        stored = read_json(metrics_path)
        if stored is not None:
            if stored.get("request") != request:
                say("results exist but were made with other settings; kept (use --redo to recompute)")
            else:
                say("done before; skipped")
            return JobResult(job.name, "skipped", run_dir, stored)
        say(f"unreadable {METRICS_NAME}; running again")

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if redo and metrics_path.exists():
            metrics_path.unlink()
        if job.model is not None:
            model_dir = Path(job.model)
        else:
            model_dir = run_dir
            checkpoint = run_dir / CHECKPOINT_NAME
            previous = read_json(run_dir / REQUEST_NAME)
            if checkpoint.is_file() and previous == request and not redo:
                say("model.pt of an earlier run found; testing only")
            else:
                # A model.pt left by other settings must not be mistaken for this request's result.
                if checkpoint.exists():
                    checkpoint.unlink()
                write_atomic(run_dir / REQUEST_NAME, json.dumps(request, indent=2))
                say("training")
                trainer.train(
                    data_root, run_dir, job.config, category=job.category, layout=layout, progress=progress, echo=say
                )
        say("testing")
        report = tester.test(
            model_dir,
            data_root,
            category=job.category,
            layout=layout,
            report_dir=run_dir / "test_report" if pictures else None,
            pictures=pictures,
            scores_csv=run_dir / SCORES_NAME,
            device=job.config.device,
            progress=progress,
            echo=say,
        )
        metrics = {"name": job.name, "category": job.category, **tester.jsonable(report), "request": request}
        write_atomic(metrics_path, json.dumps(metrics, indent=2))
        (run_dir / ERROR_NAME).unlink(missing_ok=True)
        say(_summary(metrics))
        return JobResult(job.name, "done", run_dir, metrics)
    except Exception as error:  # noqa: BLE001 - one failing job must not stop the suite
        message = one_line(error)
        try:
            write_atomic(run_dir / ERROR_NAME, "".join(traceback.format_exception(error)))
        except OSError:
            pass
        say(f"FAILED: {message}")
        return JobResult(job.name, "failed", run_dir, {}, message)


@dataclass(frozen=True)
class JobContext:
    """What every job of one `run_jobs` call shares; an engine runs a job with `run`."""

    data_root: str
    out_dir: str
    layout: str = "auto"
    redo: bool = False
    pictures: bool = True
    progress: bool = True

    def run(self, job: Job, echo: Callable[[str], None] = print) -> JobResult:
        return run_job(
            self.data_root, self.out_dir, job, layout=self.layout, redo=self.redo, pictures=self.pictures,
            progress=self.progress, echo=echo,
        )  # fmt: skip


def percent(value: Any) -> str:
    """A metric in %, one decimal (the paper's tables); ``n/a`` for a missing or non-finite value."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.1f}"


def _summary(metrics: dict[str, Any]) -> str:
    return " | ".join(f"{METRIC_LABELS[k]} {percent(metrics.get(k))}" for k in PAPER_METRICS + EXTRA_METRICS)

"""Suites and ablations on Ray: every job a Ray task, results in the same resumable tables.

`run_jobs_ray` is the `--engine ray` counterpart of `suite.run_jobs`. Each job that has no ``metrics.json``
yet becomes one Ray task with declared resources (``num_cpus``, ``num_gpus`` when the jobs run on CUDA,
optionally ``memory``); the task calls the very same `suite.run_job` as the sequential suite, so a job's
folder holds the same files and a finished job is never rerun. A job that fails (an exception, or a worker
process that dies) is retried once by Ray (``max_retries=1``); if it fails again it is reported in the table
as ``failed: <one-line error>`` while the other jobs finish.

Workers write into ``OUT/<name>/`` themselves: on a cluster of several machines ``OUT`` (and the data) must
be on storage every node sees at the same path (NFS, a shared volume). Without an address a local Ray is
started for the run and shut down afterwards.

Ray is an optional dependency (``pip install "glass-ad[distributed]"``); nothing here imports it at module
level.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .suite import Job, JobResult

INSTALL_HINT = 'the ray engine needs Ray: pip install "glass-ad[distributed]"'


@dataclass(frozen=True)
class RayOptions:
    """Where and how jobs run on Ray.

    ``address``: ``None`` starts a local Ray with ``num_cpus`` CPUs (default: all of this machine) and stops
    it afterwards; ``"auto"`` joins the cluster this machine belongs to (``ray start``); ``"ray://HOST:PORT"``
    connects through Ray Client. ``cpus_per_job``/``gpus_per_job``/``memory_per_job_gb`` are the resources
    each task declares (``gpus_per_job`` ``None``: 1 when the jobs run on CUDA, else 0).
    """

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_job: float = 1.0
    gpus_per_job: float | None = None
    memory_per_job_gb: float | None = None


def import_ray() -> Any:
    """``ray``, or a one-line `RuntimeError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to ``address`` or start a local Ray (no dashboard); disconnect or shut it down on exit.

    A Ray already initialised in this process (a caller that manages its own session) is used as it is and
    left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # Workers must import glass_ad the way this process does (a source checkout on PYTHONPATH too).
    env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if os.environ.get("PYTHONPATH") else None
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "runtime_env": env}
    if address:
        kwargs.pop("include_dashboard")  # a setting of the cluster, not of a client
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


class JobFailed(RuntimeError):
    """Raised inside a task for a failed job, so that Ray retries it; carries the job's one-line error."""


def _execute(data_root: str, out_dir: str, job: "Job", layout: str, redo: bool, pictures: bool, progress: bool) -> "JobResult":
    """The body of one Ray task: `suite.run_job`, raising `JobFailed` for a failure so Ray retries it."""
    from .suite import run_job

    result = run_job(data_root, out_dir, job, layout=layout, redo=redo, pictures=pictures, progress=progress, echo=print)
    if not result.ok:
        raise JobFailed(result.error or "failed")
    return result


def _task_error(ray: Any, error: BaseException) -> str:
    """One line for a task that failed for good: the job's own error, or what happened to its worker."""
    from .suite import one_line

    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause if getattr(error, "cause", None) is not None else error
        if isinstance(cause, JobFailed):
            return str(cause)
        return one_line(cause)
    if isinstance(error, ray.exceptions.WorkerCrashedError):
        return "WorkerCrashedError: the worker process died (twice)"
    return one_line(error)


def run_jobs_ray(
    data_root: str | Path,
    out_dir: str | Path,
    jobs: Sequence["Job"],
    options: RayOptions,
    *,
    layout: str = "auto",
    title: str = "Results",
    first_column: str = "category",
    redo: bool = False,
    pictures: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list["JobResult"]:
    """Run ``jobs`` as Ray tasks; rewrite ``out_dir/results.{csv,md}`` (job order) whenever one finishes."""
    from .suite import METRICS_NAME, JobResult, _read_json, _safe_name, run_job, write_tables

    out_dir = Path(out_dir).resolve()
    data_root = Path(data_root).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [_safe_name(job.name) for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"two jobs would share a run folder: {names}")
    results: list[JobResult | None] = [None] * len(jobs)
    todo: list[int] = []
    for index, job in enumerate(jobs):
        # Finished jobs are read here, never sent to the cluster.
        if not redo and _read_json(out_dir / names[index] / METRICS_NAME) is not None:
            results[index] = run_job(data_root, out_dir, job, layout=layout, pictures=pictures, progress=False, echo=echo)
        else:
            todo.append(index)

    def tables() -> None:
        write_tables(out_dir, [r for r in results if r is not None], title=title, first_column=first_column)

    if not todo:
        tables()
        return [r for r in results if r is not None]

    with ray_session(options.address, options.num_cpus) as ray:
        pending: dict[Any, int] = {}
        for index in todo:
            job = jobs[index]
            gpus = options.gpus_per_job
            if gpus is None:
                gpus = 1.0 if str(job.config.device).startswith("cuda") else 0.0
            resources: dict[str, Any] = {
                "num_cpus": options.cpus_per_job,
                "num_gpus": gpus,
                "max_retries": 1,
                "retry_exceptions": True,
            }
            if options.memory_per_job_gb:
                resources["memory"] = int(options.memory_per_job_gb * 1024**3)
            task = ray.remote(_execute).options(name=f"glass:{job.name}", **resources)
            ref = task.remote(str(data_root), str(out_dir), job, layout, redo, pictures, progress)
            pending[ref] = index
        echo(f"== {len(pending)} job(s) submitted to Ray ({len(jobs) - len(pending)} done before)")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            job = jobs[index]
            try:
                result = ray.get(ready[0])
            except Exception as error:  # noqa: BLE001 - a job failed twice: reported, the others go on
                message = _task_error(ray, error)
                result = JobResult(job.name, "failed", out_dir / names[index], {}, message)
                echo(f"[{job.name}] FAILED: {message}")
            else:
                echo(f"[{job.name}] {result.status}")
            results[index] = result
            tables()
    return [r for r in results if r is not None]


__all__ = ["INSTALL_HINT", "JobFailed", "RayOptions", "import_ray", "ray_session", "run_jobs_ray"]

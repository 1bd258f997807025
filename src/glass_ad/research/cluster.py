"""Suites and ablations on Ray: every job a Ray task, results in the same resumable tables.

`RayEngine` is the `suite.JobEngine` of ``--engine ray``: `suite.run_jobs` keeps every rule (finished jobs
are read, never rerun; a failed job is retried once, then reported; the tables) and hands the jobs to run to
the engine. Each becomes one Ray task with declared resources (``num_cpus``, ``num_gpus`` when the jobs run
on CUDA, optionally ``memory``) that calls the very same `jobs.run_job` as the sequential suite, so a job's
folder holds the same files. A job that fails (an exception, or a worker process that dies) is submitted
once more; if it fails again it is reported in the table as ``failed: <one-line error>`` while the other
jobs finish.

Workers write into ``OUT/<name>/`` themselves: on a cluster of several machines ``OUT`` (and the data) must
be on storage every node sees at the same path (NFS, a shared volume). Without an address a local Ray is
started for the run and shut down afterwards.

Ray is an optional dependency (``pip install "glass-ad[distributed]"``); nothing here imports it at module
level.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from glass_ad.ray_session import ray_session
from glass_ad.research.jobs import ERROR_NAME, Job, JobContext, JobResult, safe_name
from glass_ad.safety import one_line, write_atomic


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


def _execute(context: JobContext, job: Job) -> JobResult:
    """The body of one Ray task: the very `jobs.run_job` of the sequential suite (a failure inside the job
    comes back as a ``failed`` result; retrying is `suite.run_jobs`' decision)."""
    return context.run(job, print)


def _task_error(ray: Any, error: BaseException) -> str:
    """One line for a task that did not return: the job's own error, or what happened to its worker."""
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause if getattr(error, "cause", None) is not None else error
        return one_line(cause)
    if isinstance(error, ray.exceptions.WorkerCrashedError):
        return "WorkerCrashedError: the worker process died"
    return one_line(error)


class RayEngine:
    """The `suite.JobEngine` of ``--engine ray``: one Ray task per submitted job, with declared resources.

    Ray's own retries are off (``max_retries=0``): `suite.run_jobs` resubmits a failed job once
    (``retries``), whether the job raised or its worker process died, so the rule is the sequential one."""

    retries = 1

    def __init__(self, options: RayOptions, context: JobContext, echo: Callable[[str], None] = print) -> None:
        self.options = options
        # Workers have their own working directory: they get absolute paths.
        self.context = replace(
            context, data_root=str(Path(context.data_root).resolve()), out_dir=str(Path(context.out_dir).resolve())
        )
        self.echo = echo
        self.pending: dict[Any, tuple[int, Job]] = {}
        self._session: Any = None
        self.ray: Any = None

    def __enter__(self) -> "RayEngine":
        self._session = ray_session(self.options.address, self.options.num_cpus)
        self.ray = self._session.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for ref in self.pending:  # an interrupted run: stop what is still running (best effort)
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - a cluster already gone
                pass
        self.pending.clear()
        self._session.__exit__(*exc_info)

    def resources(self, job: Job) -> dict[str, Any]:
        """What the job's task declares: CPUs, GPUs (1 when the job runs on CUDA, unless set), memory."""
        gpus = self.options.gpus_per_job
        if gpus is None:
            gpus = 1.0 if str(job.config.device).startswith("cuda") else 0.0
        resources: dict[str, Any] = {"num_cpus": self.options.cpus_per_job, "num_gpus": gpus}
        if self.options.memory_per_job_gb:
            resources["memory"] = int(self.options.memory_per_job_gb * 1024**3)
        return resources

    def submit(self, index: int, job: Job) -> None:
        task = self.ray.remote(_execute).options(name=f"glass:{job.name}", max_retries=0, **self.resources(job))
        self.pending[task.remote(self.context, job)] = (index, job)

    def next_result(self) -> tuple[int, JobResult]:
        ready, _ = self.ray.wait(list(self.pending), num_returns=1)
        index, job = self.pending.pop(ready[0])
        try:
            result = self.ray.get(ready[0])
        except Exception as error:  # noqa: BLE001 - the task did not return (its worker died): a failed job
            run_dir = Path(self.context.out_dir) / safe_name(job.name)
            message = _task_error(self.ray, error)
            try:
                write_atomic(run_dir / ERROR_NAME, f"{message}\n\n{error}\n")
            except OSError:
                pass
            result = JobResult(job.name, "failed", run_dir, {}, message)
        self.echo(f"[{job.name}] {result.status}" + (f": {result.error}" if not result.ok else ""))
        return index, result


__all__ = ["RayEngine", "RayOptions"]

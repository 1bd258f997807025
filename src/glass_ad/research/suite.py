"""Suites and ablations: train and test many runs, resumable, one results table.

A *job* is one run: train on a category's normal images (`glass_ad.training.train`), then test it
(`glass_ad.evaluation.tester.test`). A suite is one job per category; an ablation is one job per variant of a setting
on a single category. Every job owns the folder ``OUT/<name>``:

* ``model.pt`` — written atomically by the trainer at the very end of training;
* ``request.json`` — what was asked for (config, category), written before training starts;
* ``metrics.json`` — written atomically after the test; its presence means "done";
* ``scores.csv`` (per-image scores), ``test_report/`` (pictures), ``error.txt`` (last failure).

Resuming: a job whose ``metrics.json`` exists is skipped (its stored metrics go into the table); a job with
``model.pt`` and a matching ``request.json`` but no metrics only runs the test (the crash came after
training); anything else trains again. A failing job is reported in the table with its one-line error and
the others go on (on Ray it is first retried once); running the same command again retries only what is
missing. These rules live in `run_jobs` (which jobs run, retries) and `jobs.run_job` (what one job does)
alone; where a job runs is a small pluggable `JobEngine` (`SequentialEngine` here, `cluster.RayEngine` for
``--engine ray``).

The tables ``OUT/results.csv`` and ``OUT/results.md`` (`tables.py`) are rewritten after every job, so partial
results are visible while a long suite runs.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from glass_ad.config import GlassConfig
from glass_ad.data.layouts import BENCHMARK_CATEGORIES, DatasetError, default_resize, list_categories
from glass_ad.research.jobs import METRICS_NAME, Job, JobContext, JobResult, read_json, safe_name
from glass_ad.research.tables import write_tables

if TYPE_CHECKING:  # pragma: no cover
    from glass_ad.research.cluster import RayOptions


# --------------------------------------------------------------------------------------------- engines


class JobEngine(Protocol):
    """Where jobs run. `run_jobs` decides which jobs run, retries failures and keeps the tables; an engine
    only executes what it is given (a context manager: resources are held between enter and exit)."""

    retries: int  # how many times a failed job is submitted again before its failure is recorded

    def __enter__(self) -> "JobEngine": ...

    def __exit__(self, *exc_info: Any) -> None: ...

    def submit(self, index: int, job: Job) -> None:
        """Queue ``job`` (``index``: its position in the job list, handed back with its result)."""

    def next_result(self) -> tuple[int, JobResult]:
        """Block until a submitted job ends; a job that could not run at all (its worker died) comes back
        as a ``failed`` `JobResult`, never as an exception."""
        ...


class SequentialEngine:
    """One job after the other in this process (the default engine). No retries: a failure in process is
    deterministic more often than not, and rerunning the command retries it."""

    retries = 0

    def __init__(self, context: JobContext, total: int, echo: Callable[[str], None] = print) -> None:
        self.context, self.total, self.echo = context, total, echo
        self.queue: deque[tuple[int, Job]] = deque()

    def __enter__(self) -> "SequentialEngine":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.queue.clear()

    def submit(self, index: int, job: Job) -> None:
        self.queue.append((index, job))

    def next_result(self) -> tuple[int, JobResult]:
        index, job = self.queue.popleft()
        self.echo(f"== {index + 1}/{self.total}: {job.name}")
        return index, self.context.run(job, self.echo)


def run_jobs(
    data_root: str | Path,
    out_dir: str | Path,
    jobs: Sequence[Job],
    *,
    layout: str = "auto",
    title: str = "Results",
    first_column: str = "category",
    redo: bool = False,
    pictures: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    ray_options: "RayOptions | None" = None,
    retries: int | None = None,
) -> list[JobResult]:
    """Run the jobs and keep ``out_dir/results.{csv,md}`` (job order) up to date; the one place of the rules.

    * a job whose ``metrics.json`` exists is read here and never handed to an engine (unless ``redo``);
    * the others run on the engine: this process one after the other, or a Ray task each with
      ``ray_options`` (`glass_ad.research.cluster.RayEngine`), same folders and tables;
    * a failed job is submitted again ``retries`` times (default: the engine's — none in process, once on
      Ray, where a worker can die of causes outside the job), then recorded as failed; the others go on;
    * the tables are rewritten whenever a job ends.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [safe_name(job.name) for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"two jobs would share a run folder: {names}")
    context = JobContext(str(data_root), str(out_dir), layout, redo, pictures, progress)
    results: list[JobResult | None] = [None] * len(jobs)

    def tables() -> None:
        write_tables(out_dir, [r for r in results if r is not None], title=title, first_column=first_column)

    todo: list[int] = []
    for index, job in enumerate(jobs):
        if not redo and read_json(out_dir / names[index] / METRICS_NAME) is not None:
            results[index] = context.run(job, echo)  # reads the stored metrics: "skipped"
        else:
            todo.append(index)
    if not todo:
        tables()
        return [r for r in results if r is not None]

    engine: JobEngine
    if ray_options is not None:
        from glass_ad.research.cluster import RayEngine

        engine = RayEngine(ray_options, context, echo)
    else:
        engine = SequentialEngine(context, len(jobs), echo)
    allowed = engine.retries if retries is None else retries
    attempts = dict.fromkeys(todo, 0)
    with engine:
        for index in todo:
            engine.submit(index, jobs[index])
        if len(todo) < len(jobs):
            echo(f"== {len(todo)} of {len(jobs)} job(s) to run ({len(jobs) - len(todo)} done before)")
        left = len(todo)
        while left:
            index, result = engine.next_result()
            attempts[index] += 1
            if not result.ok and attempts[index] <= allowed:
                echo(f"[{jobs[index].name}] failed ({result.error}); retry {attempts[index]} of {allowed}")
                engine.submit(index, jobs[index])
                continue
            results[index] = result
            left -= 1
            tables()
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------- suites


def suite_categories(data_root: str | Path, dataset: str = "auto", only: Sequence[str] | None = None) -> list[str]:
    """The categories under ``data_root`` (MVTec-like subfolders, VisA objects, or the root itself),
    optionally restricted to ``only`` (unknown names are an error that lists the available ones)."""
    found = list_categories(data_root, dataset)
    if not found:
        raise DatasetError(
            f"no categories under '{data_root}': expected subfolders with train/good (MVTec AD, MPDD, WFDD), "
            f"split_csv/1cls.csv (VisA), or a single category folder"
        )
    if only:
        unknown = [name for name in only if name not in found]
        if unknown:
            raise DatasetError(f"unknown categories: {', '.join(unknown)} (found: {', '.join(found)})")
        return [name for name in found if name in only]
    return found


def category_config(config: GlassConfig, category: str | None) -> GlassConfig:
    """The config for one category: the reference's resize override (MVTec toothbrush and wood: 329 → crop
    288, scaled to the image size) unless the user chose ``resize`` explicitly."""
    if config.resize is None:
        resize = default_resize(category, config.image_size)
        if resize is not None:
            return config.replace(resize=resize)
    return config


def run_suite(
    data_root: str | Path,
    out_dir: str | Path,
    config: GlassConfig,
    *,
    dataset: str = "auto",
    categories: Sequence[str] | None = None,
    model: str | Path | None = None,
    redo: bool = False,
    pictures: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    ray_options: "RayOptions | None" = None,
) -> list[JobResult]:
    """Train and test every category of ``data_root`` (or test them all with one trained ``model``)."""
    names = suite_categories(data_root, dataset, categories)
    expected = BENCHMARK_CATEGORIES.get(dataset, ())
    missing = [name for name in expected if name not in names]
    if expected and not categories and missing:
        echo(f"note: {len(missing)} of the {len(expected)} {dataset} categories are missing ({', '.join(missing)}); "
             f"the Mean row is not comparable with the paper's")  # fmt: skip
    jobs = [Job(name, name, category_config(config, name), Path(model) if model else None) for name in names]
    title = f"Suite: {Path(data_root).name}" + (f" (model {model})" if model else "")
    return run_jobs(
        data_root, out_dir, jobs, layout=dataset, title=title, redo=redo, pictures=pictures, progress=progress,
        echo=echo, ray_options=ray_options,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- ablations


def _on_off(value: str) -> bool:
    key = value.strip().lower()
    if key in ("on", "true", "yes", "1"):
        return True
    if key in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"expected on or off, got '{value}'")


def _r1(config: GlassConfig, value: str) -> GlassConfig:
    r1 = float(value)
    return config.replace(r1=r1, r2=2 * r1)  # the paper's r2 = 2·r1


# study → (default values, how a value changes the base config). The paper's Table 4 (LAS, GAS parts,
# adaptor) and Fig. 8 (r1), plus the backbone/layer choice of Table 5.
STUDIES: dict[str, tuple[tuple[str, ...], Callable[[GlassConfig, str], GlassConfig]]] = {
    "las": (("on", "off"), lambda c, v: c.replace(las=_on_off(v))),
    "gas": (("off", "noise", "ascent", "full"), lambda c, v: c.replace(gas=v)),
    "r1": (("0.25", "0.5", "1", "2"), _r1),
    "adaptor": (("on", "off"), lambda c, v: c.replace(adaptor=_on_off(v))),
    "backbone": (
        ("efficientnet_lite0", "efficientnet_lite2"),
        lambda c, v: c.replace(backbone=v, layers=None, embed_dim=None, weights=None),
    ),
    # A variant's layers are joined with "+" (variants are separated by commas): "blocks.2+blocks.4". The
    # first must be the stride-8 stage: it defines the patch grid.
    "layers": ((), lambda c, v: c.replace(layers=tuple(p for p in v.split("+") if p))),
}


def ablation_jobs(config: GlassConfig, study: str, values: Sequence[str] | None, category: str | None) -> list[Job]:
    """One job per value of ``study``, each the base config with that one setting changed."""
    if study not in STUDIES:
        raise ValueError(f"unknown study '{study}' (choose one of {', '.join(STUDIES)})")
    defaults, apply = STUDIES[study]
    values = [v.strip() for v in (values or defaults) if v.strip()]
    if not values:
        raise ValueError(f"the {study} study needs --values (e.g. blocks.2+blocks.4,blocks.2)")
    if study == "gas":
        bad = [v for v in values if v not in ("off", "noise", "ascent", "full")]
        if bad:
            raise ValueError(f"gas values must be off, noise, ascent or full (got {', '.join(bad)})")
    jobs = []
    for value in values:
        varied = apply(config, value).validate()
        jobs.append(Job(f"{study}={value}", category, varied))
    return jobs


def run_ablation(
    data_root: str | Path,
    out_dir: str | Path,
    config: GlassConfig,
    study: str,
    *,
    values: Sequence[str] | None = None,
    category: str | None = None,
    dataset: str = "auto",
    redo: bool = False,
    pictures: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    ray_options: "RayOptions | None" = None,
) -> list[JobResult]:
    """Run the variants of one study on one category; one table in ``out_dir/results.{csv,md}``."""
    found = suite_categories(data_root, dataset, [category] if category else None)
    if len(found) != 1:
        raise DatasetError(f"'{data_root}' holds {len(found)} categories; choose one with --category: {', '.join(found)}")
    category = found[0]
    config = category_config(config, category)
    if study == "r1" and config.hypothesis == "auto":
        # r1 only acts on the manifold projection; GLASS-j could pick the hypersphere and hide the sweep.
        echo("r1 study: hypothesis forced to manifold (r1 has no effect on the hypersphere projection)")
        config = config.replace(hypothesis="manifold")
    elif study == "r1" and config.hypothesis == "hypersphere":
        echo("warning: r1 has no effect with --hypothesis hypersphere")
    jobs = ablation_jobs(config, study, values, category)
    title = f"Ablation: {study} on {category}"
    return run_jobs(
        data_root, out_dir, jobs, layout=dataset, title=title, first_column="variant",
        redo=redo, pictures=pictures, progress=progress, echo=echo, ray_options=ray_options,
    )  # fmt: skip


__all__ = [
    "STUDIES",
    "JobEngine",
    "SequentialEngine",
    "ablation_jobs",
    "category_config",
    "run_ablation",
    "run_jobs",
    "run_suite",
    "suite_categories",
]

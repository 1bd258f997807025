"""Training: normal images only. `train` reads top to bottom:

1. set-up (run_setup.py): seeded random streams, the resume check, the normal images (a seeded holdout for
   validation and calibration, decoded once), the synthesis set-up (GLASS-j hypothesis, foreground masks,
   textures, LAS), the model, the cached features and their measured geometry (scale-aware GAS), the
   validation set, the arithmetic and GLASS-j's branch check;
2. the optimisers, the schedule and the weights' moving average (loop.py);
3. on resume, the interrupted run's progress and state, restored whole (resume.py, progress.py);
4. epochs of: normal + GAS + LAS branches → one loss (loop.py, step.py), then validation on the holdout
   normals and fixed synthetic anomalies — of the weights' moving average when `ema_epochs` is set — to keep
   the best state (validation.py), the state write, and the stopping rules (early stopping, time limit);
5. finishing (finishing.py): the kept weights, thresholds from the holdout normals, one checkpoint.

No test image is read here. Under `torchrun` the same function trains one model data-parallel
(distributed.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from glass_ad.config import GlassConfig
from glass_ad.model.decision import Calibration
from glass_ad.synthesis import gas as gas_module
from glass_ad.training.averaging import WeightAverage
from glass_ad.training.distributed import Distributed
from glass_ad.training.finishing import finish
from glass_ad.training.loop import Optimisation, TimeLimit, make_optimisation, train_one_epoch
from glass_ad.training.progress import Progress
from glass_ad.training.run_setup import RunSetup, prepare_run
from glass_ad.training.validation import EarlyStopping, validate

Echo = Callable[[str], None]


@dataclass
class TrainResult:
    checkpoint: Path
    hypothesis: str
    epochs_run: int
    best_epoch: int
    wall_time_s: float
    stopped_by: str = "epochs"  # or "early stopping", "time limit"
    history: list[dict[str, float]] = field(default_factory=list)
    calibration: Calibration = field(default_factory=Calibration.fallback)


def train(
    data_root: str | Path,
    out_dir: str | Path,
    config: GlassConfig,
    *,
    category: str | None = None,
    layout: str = "auto",
    progress: bool = True,
    echo: Echo = print,
    resume: bool = False,
) -> TrainResult:
    """Train GLASS on `data_root`'s normal training images and write `out_dir/model.pt`; `resume` continues an
    interrupted run in `out_dir` from its last completed epoch (resume.py). Started by torchrun, every rank
    calls this and one model is trained data-parallel."""
    start_time = time.perf_counter()
    config = config.validate()
    group = Distributed.from_environment(config.device)
    if group.active and resume:
        group.close()
        raise ValueError("--resume is not supported in multi-process training; restart the run")
    if not group.is_main:  # one voice: rank 0 reports
        echo, progress = (lambda _: None), False
    try:
        with cpu_threads(config.num_threads):
            return _train(data_root, Path(out_dir), config, group, category, layout, progress, echo, resume, start_time)
    finally:
        group.close()


def _train(
    data_root: str | Path,
    out_dir: Path,
    config: GlassConfig,
    group: Distributed,
    category: str | None,
    layout: str,
    bars: bool,
    echo: Echo,
    resume: bool,
    start_time: float,
) -> TrainResult:
    run = prepare_run(
        data_root, out_dir, config, group, category=category, layout=layout, resume=resume, progress=bars, echo=echo
    )
    config = run.config
    optimisation = make_optimisation(run.model, config, images=len(run.features.features))
    stopper = EarlyStopping(config.patience, config.stop_window)
    progress = Progress(stopper, start_time, run.arithmetic.bf16, run.model.batch_chunk or 0, run.branch_check)
    _say_plan(config, optimisation, run.finishing_reserve_s, group, echo)
    if run.state is not None and run.state.resuming:  # every state as at the end of the last epoch
        run.state.restore(progress, run.model, optimisation, run.streams)
        echo(f"resuming after epoch {progress.epochs_done} of {config.epochs}")
    _epochs(run, optimisation, progress, group, bars, echo)
    path, calibration = finish(run, progress, optimisation.average, group, bars=bars, echo=echo)
    return TrainResult(
        path, run.synthesis.hypothesis, progress.epochs_done, progress.best_epoch, progress.elapsed_s(),
        progress.stopped_by, progress.history, calibration,
    )  # fmt: skip


def _epochs(
    run: RunSetup, optimisation: Optimisation, progress: Progress, group: Distributed, bars: bool, echo: Echo
) -> None:
    """Epochs, each followed by validation and model selection, the state write and the stopping rules."""
    config, model = run.config, run.model
    # A resumed run's epochs count; the finishing's expected seconds are kept free.
    limit = TimeLimit.from_history(config.time_limit_min, progress.history, run.finishing_reserve_s)
    stop = _stop(run, progress, limit, group) if progress.history else None  # a resume may have none left
    first = progress.epochs_done
    last = first if stop is not None else config.epochs
    model.discriminator.train()
    model.adaptor.train()
    bar = tqdm(range(first, last), desc="training", unit="epoch", disable=not bars, initial=first, total=config.epochs)
    for epoch in bar:
        epoch_start = time.perf_counter()
        record, settings, centre = _train_epoch(run, optimisation, progress.bf16, epoch, group, bar)
        if run.validating:
            record |= _validate_and_select(run, progress, optimisation.average, epoch + 1, settings, centre, group)
        now = time.perf_counter()
        record["elapsed_s"], record["epoch_s"] = progress.elapsed_s(now), now - epoch_start
        limit.record(record["epoch_s"])
        progress.history.append(record)
        (bar.write if bars else echo)(epoch_line(record))
        if run.state is not None:
            run.state.save(epoch + 1, progress, model, optimisation, run.streams)
        stop = _stop(run, progress, limit, group)
        if stop is not None:
            echo(stop[1])
            break
    bar.close()
    if stop is not None:
        progress.stopped_by = stop[0]


def _train_epoch(
    run: RunSetup, optimisation: Optimisation, bf16: bool, epoch: int, group: Distributed, bar: tqdm
) -> tuple[dict[str, float], gas_module.GASSettings, torch.Tensor]:
    """One epoch of training: its record, and the GAS settings and centre it trained with (validated with)."""
    config, model, setup = run.config, run.model, run.features
    with torch.no_grad():
        centre = model.adaptor(setup.mean_feature)
    # GAS lengths in units of the current normal spacing in adaptor space (A is trained, so it moves).
    unit = setup.spacing_probe.spacing(model.adaptor) if config.feature_spacing is not None else 1.0
    settings = gas_module.GASSettings.from_config(config, run.synthesis.hypothesis, unit)
    record: dict[str, float] = {"epoch": epoch + 1}
    record |= train_one_epoch(
        model,
        optimisation,
        setup.features,
        run.synthesis,
        config,
        settings,
        centre,
        order_rng=run.streams.order,
        las_rng=run.streams.las,
        generator=run.streams.generator,
        bf16=bf16,
        group=group,
        average=optimisation.average,
        on_step=lambda it, total, stats: bar.set_postfix(it=f"{it}/{total}", loss=f"{stats['loss']:.3f}"),
    )
    record["lr"] = optimisation.lr
    record["spacing"] = unit
    optimisation.end_epoch()
    return record, settings, centre


def _validate_and_select(
    run: RunSetup,
    progress: Progress,
    average: WeightAverage | None,
    epoch: int,
    settings: gas_module.GASSettings,
    centre: torch.Tensor,
    group: Distributed,
) -> dict[str, float]:
    """Epoch `epoch`'s validation scores (rank 0 measures, every rank gets them) and the model selection, both
    of the weights' moving average when one is kept."""
    config, scores = run.config, {}
    with average.applied() if average is not None else contextlib.nullcontext():
        if run.val is not None:
            scores = validate(run.model, run.val, settings, centre, config.radius_quantile, config.selection)
        scores = group.broadcast(scores)
        progress.select(epoch, scores, run.model)
    return scores


def _stop(run: RunSetup, progress: Progress, limit: TimeLimit, group: Distributed) -> tuple[str, str] | None:
    """Why no further epoch may run ("early stopping" or "time limit") and what to say, or None."""
    config, done = run.config, progress.epochs_done
    # Early stopping waits until some epoch's GAS has trained (progress.gas_trained): a slowly separating
    # branch (the hypersphere on an object: 0.55 → 0.9 over 8 epochs) must not be cut off by a flat score.
    if config.early_stopping and run.validating and progress.stopper.should_stop and progress.gas_trained:
        return "early stopping", (
            f"early stop after epoch {done}: the {config.stop_window}-epoch mean validation score has not "
            f"risen for {config.patience} epochs (best: epoch {progress.best_epoch})"
        )
    elapsed = progress.history[-1]["elapsed_s"]
    if done < config.epochs and not group.broadcast(limit.allows_another(elapsed)):
        return "time limit", (
            f"time limit: stopped after epoch {done} ({elapsed:.0f} s so far; another epoch of up to "
            f"{limit.longest_epoch_s:.0f} s and the finishing's {limit.reserve_s:.0f} s would pass "
            f"{config.time_limit_min:g} min)"
        )
    return None


def _say_plan(
    config: GlassConfig, optimisation: Optimisation, reserve_s: float, group: Distributed, echo: Echo
) -> None:
    """What the epochs will do beyond the settings already said: the moving average, the time limit, the
    processes."""
    if optimisation.average is not None:
        span = f"about {config.ema_epochs:g} epoch(s); decay {optimisation.average.decay:.4f} per step"
        echo(f"validating and keeping the weights' moving average ({span})")
    if config.time_limit_min:
        kept = f", {reserve_s:.0f} s of it kept for the finishing" if reserve_s >= 0.5 else ""
        echo(
            f"time limit: {config.time_limit_min:g} min{kept}; no epoch starts that would end past it "
            "(--time-limit 0: none)"
        )
    if group.active:
        echo(f"data-parallel over {group.world_size} processes: {config.batch_size} images per step in all")


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """PyTorch's CPU thread count set to `count` for the duration of the block, then restored (a library
    call must not change a process-wide setting behind its caller's back)."""
    if not count:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def epoch_line(record: dict[str, float]) -> str:
    """One printed line per epoch: losses per branch, validation per family, the GAS separation, time."""
    parts = [f"epoch {record['epoch']:>3}", f"loss {record['loss']:.4f}"]
    parts += [f"{k[5:]} {record[k]:.4f}" for k in ("loss_normal", "loss_gas", "loss_las") if k in record]
    if "val_score" in record:
        parts.append(f"val LAS image AUROC {record['val_image_auroc']:.3f} AP {record['val_patch_ap']:.3f}")
        parts.append(f"unseen {record['val_unseen_image_auroc']:.3f} AP {record['val_unseen_patch_ap']:.3f}")
        if "val_gas_separation" in record:
            parts.append(f"GAS sep {record['val_gas_separation']:.3f}")
        if "val_nn_agreement" in record:
            parts.append(f"NN agreement {record['val_nn_agreement']:.3f}")
    parts.append(f"{record['elapsed_s']:.0f} s")
    return " | ".join(parts)

"""Training: normal images only. `train` reads top to bottom:

1. preparation: the normal images (seeded holdout for validation and calibration, decoded once), the
   synthesis set-up (GLASS-j hypothesis, foreground masks, textures, LAS), the model, the cached features and
   their measured geometry (scale-aware GAS);
2. the optimisers and the schedule;
3. epochs of: normal + GAS + LAS branches → one loss (loop.py, step.py);
4. after each epoch, validation on the holdout normals and fixed synthetic anomalies — of the weights'
   moving average when `ema_epochs` is set (averaging.py): keep the best state, stop early when the trend no
   longer rises (validation.py);
5. finishing: calibrate thresholds on the holdout normals, write one self-contained checkpoint.

No test image is read here. Under `torchrun` the same function trains one model data-parallel
(distributed.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from glass_ad.config import GlassConfig
from glass_ad.evaluation.calibration import calibrate_holdout
from glass_ad.model.checkpoint import CHECKPOINT_NAME, Checkpoint
from glass_ad.model.chunking import choose_batch_chunk
from glass_ad.model.decision import Calibration
from glass_ad.model.glass_model import build_model, resolve_device
from glass_ad.model.training_record import TrainingRecord
from glass_ad.provenance import provenance
from glass_ad.synthesis import gas as gas_module
from glass_ad.training import resume as resume_module
from glass_ad.training.averaging import WeightAverage, trainable_state
from glass_ad.training.branch_check import BranchCheck, check_branch
from glass_ad.training.distributed import Distributed
from glass_ad.training.hybrid import build_hybrid_score
from glass_ad.training.las_pool import LASPool
from glass_ad.training.loop import TimeLimit, iterations_per_epoch, make_optimisation, train_one_epoch
from glass_ad.training.precision import choose_precision
from glass_ad.training.preparation import prepare_features, prepare_images, prepare_synthesis
from glass_ad.training.validation import (
    EarlyStopping,
    build_validation_set,
    dead_branch_warning,
    nn_agreement_probe,
    validate,
)


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
    echo: Callable[[str], None] = print,
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
    progress: bool,
    echo: Callable[[str], None],
    resume: bool,
    start_time: float,
) -> TrainResult:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)  # image order (the same on every rank), probes
    generator = torch.Generator().manual_seed(config.seed)
    las_rng = rng
    if group.active:  # each rank draws its own LAS anomalies, patch subsets and GAS noise
        las_rng = np.random.default_rng([config.seed, group.rank])
        generator = torch.Generator().manual_seed(config.seed * 1000 + group.rank)
    device = group.device(resolve_device(config.device))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_state = None
    if group.is_main:
        run_state = resume_module.TrainState(out_dir, config, data_root, category, layout, device, resume=resume)

    # 1. Preparation.
    data = prepare_images(data_root, config, category=category, layout=layout, progress=progress, echo=echo)
    config = data.config
    synthesis = prepare_synthesis(data.images, config, echo)
    model = build_model(config).to(device)
    # Images per backbone pass: as asked, as the interrupted run had them, or timed (the same on every rank).
    fixed, why = config.backbone_chunk, "asked for"
    if run_state is not None and run_state.loaded is not None and "backbone_chunk" in run_state.loaded:
        fixed, why = int(run_state.loaded["backbone_chunk"]), "as in the interrupted run"
    chunk = group.broadcast(choose_batch_chunk(model, device, config.batch_size, fixed=fixed, why=why))
    model.batch_chunk = chunk.size
    echo(chunk.reason)
    setup = prepare_features(model, data.images, config, device, rng, spill_dir=out_dir, progress=progress, echo=echo)
    group.broadcast_module(model)
    if config.las and config.las_variants:
        synthesis.las_pool = LASPool(
            model, data.images, synthesis.foreground, synthesis.las, config, device, rank=group.rank, spill_dir=out_dir
        )
        echo(f"LAS: {config.las_variants} copies per image, each one's features computed at its first use and re-used")
    val = None
    if data.holdout is not None and group.is_main:
        val = build_validation_set(model, data.holdout, synthesis.las, config, device, synthesis.foreground is not None)
        # The nearest-neighbour view of the held-out normal patches, once (the features are frozen); its own
        # random stream, so the training's draws do not change.
        picked = np.random.default_rng(config.seed + 30_011).choice(len(data.images), min(64, len(data.images)), replace=False)
        bank = setup.features.batch(np.sort(picked))
        val.probe_rows, val.probe_distances = nn_agreement_probe(val.normal, bank.reshape(-1, bank.shape[-1]), config.seed)
        del bank
    validating = group.broadcast(val is not None)

    # 2. Optimisers, schedule, arithmetic.
    optimisation = make_optimisation(model, config)
    average = None
    if config.ema_epochs:  # the average spans about `ema_epochs` epochs of steps
        steps = config.ema_epochs * iterations_per_epoch(config, len(setup.features))
        average = WeightAverage(model, decay=max(0.0, 1.0 - 1.0 / steps))
    arithmetic = group.broadcast(choose_precision(config.precision, device, model.embed_dim, config.dsc_hidden))
    bf16 = arithmetic.bf16
    echo(f"training arithmetic: {arithmetic.reason}")
    branch_check = group.broadcast(check_hypothesis(model, setup, val, config, synthesis, run_state, bf16, echo))
    if branch_check is not None:
        synthesis.hypothesis = branch_check.chosen
    if average is not None:
        span = f"about {config.ema_epochs:g} epoch(s); decay {average.decay:.4f} per step"
        echo(f"validating and keeping the weights' moving average ({span})")
    if config.time_limit_min:
        echo(f"time limit: {config.time_limit_min:g} min; no epoch starts that would end past it (--time-limit 0: none)")
    if group.active:
        echo(f"data-parallel over {group.world_size} processes: {config.batch_size} images per step in all")

    history: list[dict[str, float]] = []
    stopper = EarlyStopping(config.patience, config.stop_window)
    best_state, best_epoch = None, 0
    start_epoch, end_epoch = 0, config.epochs
    stopped_by = "epochs"
    if run_state is not None and run_state.loaded is not None:  # every state as at the end of the last epoch
        start_epoch, best_state, best_epoch, history, bf16 = run_state.restore(
            model, optimisation.optimizers, optimisation.schedulers, stopper, rng, generator, average
        )
        start_time -= run_state.elapsed_s
        if config.early_stopping and validating and stopper.should_stop:
            end_epoch, stopped_by = start_epoch, "early stopping"
        echo(f"resuming after epoch {start_epoch} of {config.epochs}")
    limit = TimeLimit.from_history(config.time_limit_min, history)  # a resumed run's epochs count
    if history and start_epoch < end_epoch and not limit.allows_another(history[-1]["elapsed_s"]):
        end_epoch, stopped_by = start_epoch, "time limit"

    # 3-4. Epochs, each followed by validation, model selection and the stopping rule.
    model.discriminator.train()
    model.adaptor.train()
    bar = tqdm(
        range(start_epoch, end_epoch),
        desc="training",
        unit="epoch",
        disable=not progress,
        initial=start_epoch,
        total=config.epochs,
    )
    epoch = max(0, start_epoch - 1)
    for epoch in bar:
        epoch_start = time.perf_counter()
        with torch.no_grad():
            centre = model.adaptor(setup.mean_feature)
        # GAS lengths in units of the current normal spacing in adaptor space (A is trained, so it moves).
        unit = setup.spacing_probe.spacing(model.adaptor) if config.feature_spacing is not None else 1.0
        settings = gas_module.GASSettings.from_config(config, synthesis.hypothesis, unit)
        record: dict[str, float] = {"epoch": epoch + 1}
        record |= train_one_epoch(
            model,
            optimisation,
            setup.features,
            synthesis,
            config,
            settings,
            centre,
            order_rng=rng,
            las_rng=las_rng,
            generator=generator,
            bf16=bf16,
            group=group,
            average=average,
            on_step=lambda it, total, stats: bar.set_postfix(it=f"{it}/{total}", loss=f"{stats['loss']:.3f}"),
        )
        record["lr"] = optimisation.lr
        record["spacing"] = unit
        optimisation.end_epoch()

        if validating:
            with average.applied() if average is not None else contextlib.nullcontext():
                scores = validate(model, val, settings, centre, config.radius_quantile, config.selection) if val else {}
                record.update(group.broadcast(scores))
                if stopper.update(record["val_score"]):
                    best_epoch, best_state = epoch + 1, trainable_state(model)
        now = time.perf_counter()
        record["elapsed_s"], record["epoch_s"] = now - start_time, now - epoch_start
        limit.record(record["epoch_s"])
        history.append(record)
        (bar.write if progress else echo)(epoch_line(record))
        if run_state is not None:
            run_state.save(
                epoch + 1,
                model,
                optimisation.optimizers,
                optimisation.schedulers,
                stopper,
                rng,
                generator,
                best_state,
                best_epoch,
                history,
                bf16,
                record["elapsed_s"],
                average,
                backbone_chunk=model.batch_chunk or 0,
                branch_check=branch_check.as_dict() if branch_check is not None else None,
            )
        if config.early_stopping and validating and stopper.should_stop:
            echo(
                f"early stop after epoch {epoch + 1}: the {config.stop_window}-epoch mean validation score has not "
                f"risen for {config.patience} epochs (best: epoch {best_epoch})"
            )
            stopped_by = "early stopping"
            break
        if epoch + 1 < end_epoch and not group.broadcast(limit.allows_another(record["elapsed_s"])):
            echo(
                f"time limit: stopped after epoch {epoch + 1} ({record['elapsed_s']:.0f} s so far; another epoch "
                f"of up to {limit.longest_epoch_s:.0f} s would pass {config.time_limit_min:g} min)"
            )
            stopped_by = "time limit"
            break
    bar.close()
    epochs_run = epoch + 1
    warning = dead_branch_warning(history)
    if warning and group.is_main:  # said once: through `echo` (the CLI's terminal), not also through logging
        echo(f"WARNING: {warning}")
    if config.early_stopping and best_state is not None:
        model.load_state_dict(best_state, strict=False)
    else:
        best_epoch = epochs_run
        if average is not None:
            model.load_state_dict(average.state(), strict=False)

    # 5. Finishing (rank 0): the hybrid score's bank, thresholds from held-out normals, one checkpoint.
    path = out_dir / CHECKPOINT_NAME
    calibration = Calibration.fallback()
    if group.is_main:
        if config.score == "hybrid" and data.holdout is None:  # nothing to standardise its two parts on
            config = config.replace(score="glass")
            echo("score: the discriminator alone (the hybrid score needs held-out normal images; --holdout 0 gave none)")
        if config.score == "hybrid":
            hybrid = build_hybrid_score(model, setup.features, data.holdout, config, device, progress=progress)
            echo(f"hybrid score: memory bank of {hybrid['bank_size']} patch vectors")
        setup.features.close()
        if synthesis.las_pool is not None:
            synthesis.las_pool.close()
        model.eval()
        calibration = Calibration.fallback()
        if data.holdout is not None:
            calibration = calibrate_holdout(model, data.holdout, config, device)
        with torch.no_grad():
            centre = model.adaptor(setup.mean_feature).cpu()
        record = TrainingRecord(
            data_root=str(data_root),
            category=category,
            train_images=len(data.images),
            holdout_images=0 if data.holdout is None else len(data.holdout),
            holdout_paths=tuple(str(s.path) for s in data.holdout_samples),
            epochs_run=epochs_run,
            best_epoch=best_epoch,
            stopped_by=stopped_by,
            wall_time_s=time.perf_counter() - start_time,
            precision=arithmetic.reason,
            processes=group.world_size,
            history=tuple(history),
            extra={"branch_check": branch_check.as_dict()} if branch_check is not None else {},
        )
        Checkpoint.from_model(
            model,
            config,
            calibration=calibration,
            training=record,
            hypothesis=synthesis.hypothesis,
            spectrum=synthesis.spectrum,
            foreground=synthesis.foreground is not None,
            centre=centre,
            geometry=setup.geometry,
            provenance=provenance([sample.path for sample in data.dataset.train], data.dataset.root),
        ).save(path)
        run_state.remove()
    else:
        setup.features.close()
        if synthesis.las_pool is not None:
            synthesis.las_pool.close()
    group.barrier()  # the checkpoint exists when any rank returns
    wall = time.perf_counter() - start_time
    return TrainResult(path, synthesis.hypothesis, epochs_run, best_epoch, wall, stopped_by, history, calibration)


def check_hypothesis(
    model,
    setup,
    val,
    config: GlassConfig,
    synthesis,
    run_state: resume_module.TrainState | None,
    bf16: bool,
    echo: Callable[[str], None],
) -> BranchCheck | None:
    """GLASS-j's branch check (branch_check.py) when the spectrogram rule picked the branch: as decided by the
    interrupted run when resuming, else measured now on the held-out normals (rank 0; None: not checked)."""
    if config.hypothesis != "auto" or not config.branch_check_steps or config.gas == "off":
        return None
    if run_state is not None and run_state.loaded is not None and run_state.loaded.get("branch_check"):
        decision = BranchCheck(**run_state.loaded["branch_check"])
        echo(f"hypothesis: {decision.chosen} (as decided by the interrupted run's check)")
        return decision
    if val is None:
        return None
    held_out = val.normal.to(setup.mean_feature.device)
    return check_branch(model, setup, held_out, config, synthesis.hypothesis, synthesis=synthesis, bf16=bf16, echo=echo)


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

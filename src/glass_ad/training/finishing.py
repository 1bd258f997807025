"""Finishing a run after its last epoch: the weights it keeps, then on rank 0 the hybrid score's memory bank,
thresholds from the held-out normals, the training record and the one checkpoint; every feature store closed
(the normal features' and the LAS pool's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from glass_ad.config import GlassConfig
from glass_ad.evaluation.calibration import calibrate_holdout
from glass_ad.model.checkpoint import CHECKPOINT_NAME, Checkpoint
from glass_ad.model.decision import Calibration
from glass_ad.model.training_record import TrainingRecord
from glass_ad.model.glass_model import GlassModel
from glass_ad.provenance import provenance
from glass_ad.training.averaging import WeightAverage
from glass_ad.training.distributed import Distributed
from glass_ad.training.hybrid import build_hybrid_score
from glass_ad.training.progress import Progress
from glass_ad.training.run_setup import RunSetup
from glass_ad.training.validation import dead_branch_warning

Echo = Callable[[str], None]


def finish(
    run: RunSetup,
    progress: Progress,
    average: WeightAverage | None,
    group: Distributed,
    *,
    bars: bool = False,
    echo: Echo = print,
) -> tuple[Path, Calibration]:
    """Keep the final weights and write the checkpoint (rank 0); returns its path and the calibration. Every
    rank returns once the checkpoint exists."""
    warning = dead_branch_warning(progress.history)
    if warning and group.is_main:  # said once: through `echo` (the CLI's terminal), not also through logging
        echo(f"WARNING: {warning}")
    keep_final_weights(run.model, progress, run.config, average)
    path = run.out_dir / CHECKPOINT_NAME
    calibration = Calibration.fallback()
    if group.is_main:
        calibration = write_checkpoint(run, progress, path, group, bars=bars, echo=echo)
    else:
        close_stores(run)
    group.barrier()  # the checkpoint exists when any rank returns
    return path, calibration


def keep_final_weights(
    model: GlassModel, progress: Progress, config: GlassConfig, average: WeightAverage | None
) -> None:
    """The best validated epoch's weights under early stopping; else the last epoch's (their moving average
    when one is kept), which then counts as the best epoch."""
    if config.early_stopping and progress.best_state is not None:
        model.load_state_dict(progress.best_state, strict=False)
        return
    progress.best_epoch = progress.epochs_done
    if average is not None:
        model.load_state_dict(average.state(), strict=False)


def write_checkpoint(
    run: RunSetup, progress: Progress, path: Path, group: Distributed, *, bars: bool = False, echo: Echo = print
) -> Calibration:
    """Rank 0: the hybrid score's bank, thresholds from the held-out normals, the record and the checkpoint at
    `path`; the resume state is removed once the checkpoint is written."""
    config, model, data, synthesis, setup = run.config, run.model, run.data, run.synthesis, run.features
    if config.score == "hybrid" and data.holdout is None:  # nothing to standardise its parts on
        config = config.replace(score="glass")
        echo("score: the discriminator alone (the hybrid score needs held-out normal images; --holdout 0 gave none)")
    if config.score == "hybrid":
        hybrid = build_hybrid_score(
            model, setup.features, data.holdout, config, run.device, progress=bars,
            prepared=run.bank,
            holdout_features=run.val.normal if run.val is not None else None,
        )  # fmt: skip
        where = (
            f", each image against its {hybrid['bank_neighbours']} nearest" if hybrid["bank_neighbours"] else ", one coreset"
        )
        echo(f"hybrid score: memory bank of {hybrid['bank_size']} patch vectors of {hybrid['bank_images']} images{where}")
    close_stores(run)
    model.eval()
    calibration = Calibration.fallback()
    if data.holdout is not None:
        calibration = calibrate_holdout(model, data.holdout, config, run.device)
    with torch.no_grad():
        centre = model.adaptor(setup.mean_feature).cpu()
    record = TrainingRecord(
        data_root=str(run.data_root),
        category=run.category,
        train_images=len(data.images),
        holdout_images=0 if data.holdout is None else len(data.holdout),
        holdout_paths=tuple(str(s.path) for s in data.holdout_samples),
        epochs_run=progress.epochs_done,
        best_epoch=progress.best_epoch,
        stopped_by=progress.stopped_by,
        wall_time_s=progress.elapsed_s(),
        precision=run.arithmetic.reason,
        processes=group.world_size,
        history=tuple(progress.history),
        extra={"branch_check": progress.branch_check.as_dict()} if progress.branch_check is not None else {},
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
    run.state.remove()
    return calibration


def close_stores(run: RunSetup) -> None:
    """The normal features' store and the LAS pool's (memory-mapped files beside the run are removed)."""
    run.features.features.close()
    if run.synthesis.las_pool is not None:
        run.synthesis.las_pool.close()

"""Everything a run sets up before its first epoch, in order, as one typed bundle.

Seeding, the resume check, the normal images, the synthesis set-up, the model and its images per backbone
pass, the cached features and their geometry, the LAS pool, the validation set and its nearest-neighbour
probe, the hybrid score's memory bank and the time kept for the finishing, the training arithmetic and
GLASS-j's branch check. The order matters: the seeded streams are drawn
from in exactly this sequence, so a run (or its resume) draws the same numbers every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from glass_ad.config import GlassConfig
from glass_ad.model.glass_model import GlassModel, build_model, resolve_device
from glass_ad.training.branch_check import BranchCheck, decide_branch
from glass_ad.training.distributed import Distributed
from glass_ad.training.hybrid import PreparedBank, prepare_bank
from glass_ad.training.precision import PrecisionChoice, choose_precision
from glass_ad.training.preparation import (
    FeatureSetup,
    SynthesisSetup,
    TrainingImages,
    choose_chunk,
    prepare_features,
    prepare_images,
    prepare_las_pool,
    prepare_synthesis,
)
from glass_ad.training.progress import RandomStreams
from glass_ad.training.resume import TrainState
from glass_ad.training.validation import ValidationSet, prepare_validation


@dataclass
class RunSetup:
    """One run, set up: what its epochs and its finishing work on."""

    config: GlassConfig  # with the image fit resolved
    data_root: str | Path
    category: str | None
    out_dir: Path
    device: torch.device
    state: TrainState | None  # rank 0: the resume state file (checked, and loaded when resuming)
    streams: RandomStreams
    data: TrainingImages
    synthesis: SynthesisSetup  # its hypothesis as the branch check decided
    model: GlassModel
    features: FeatureSetup
    val: ValidationSet | None  # rank 0, when images are held out
    validating: bool  # every rank: whether epochs are validated
    arithmetic: PrecisionChoice
    branch_check: BranchCheck | None
    bank: PreparedBank | None = None  # rank 0, hybrid score: the memory bank, built before the epochs
    # rank 0: seconds the time limit keeps for the finishing's passes over the held-out normals
    finishing_reserve_s: float = 0.0


def prepare_run(
    data_root: str | Path,
    out_dir: Path,
    config: GlassConfig,
    group: Distributed,
    *,
    category: str | None = None,
    layout: str = "auto",
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> RunSetup:
    """Set up one run (every rank; rank 0 alone checks the resume state and builds the validation set)."""
    streams = RandomStreams.seeded(config.seed, group.rank if group.active else None)
    device = group.device(resolve_device(config.device))
    out_dir.mkdir(parents=True, exist_ok=True)
    state = None
    if group.is_main:  # checked before any image is read: a refused resume costs nothing
        state = TrainState(out_dir, config, data_root, category, layout, device, resume=resume)
    data = prepare_images(data_root, config, category=category, layout=layout, progress=progress, echo=echo)
    config = data.config
    synthesis = prepare_synthesis(data.images, config, echo)
    model = build_model(config).to(device)
    choose_chunk(model, device, config, group, state.kept("backbone_chunk") if state else None, echo)
    features = prepare_features(
        model, data.images, config, device, streams.order, spill_dir=out_dir, progress=progress, echo=echo
    )
    group.broadcast_module(model)
    prepare_las_pool(model, data.images, synthesis, config, device, rank=group.rank, spill_dir=out_dir, echo=echo)
    started = time.perf_counter()
    val = prepare_validation(model, data, synthesis, features, config, device) if group.is_main else None
    bank, reserve_s = None, 0.0
    if val is not None:
        # The finishing runs the backbone over the held-out normals once more (calibration): about a third
        # of building the validation set, which runs it over them and two synthetic copies of them.
        reserve_s = (time.perf_counter() - started) / 3
        if config.score == "hybrid":
            # The bank depends on the frozen features only: built now, the time limit counts it, and the
            # held-out normals' distances to it (the standardisation's) are measured now too. The
            # finishing's calibration scores them against it once more.
            bank = prepare_bank(features.features, val.normal, config, model.grid_shape)
            reserve_s += bank.holdout_distance_s
            echo(f"hybrid score: memory bank built before the epochs ({bank.build_s:.0f} s)")
    validating = group.broadcast(val is not None)
    arithmetic = group.broadcast(choose_precision(config.precision, device, model.embed_dim, config.dsc_hidden))
    echo(f"training arithmetic: {arithmetic.reason}")
    kept = state.kept("branch_check") if state else None
    branch_check = group.broadcast(decide_branch(model, features, val, config, synthesis, kept, arithmetic.bf16, echo))
    if branch_check is not None:
        synthesis.hypothesis = branch_check.chosen
    return RunSetup(
        config, data_root, category, out_dir, device, state, streams, data, synthesis, model, features, val,
        validating, arithmetic, branch_check, bank, reserve_s,
    )  # fmt: skip

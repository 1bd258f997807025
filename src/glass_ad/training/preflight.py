"""Pre-flight of `glass train`: everything checked before the first image is decoded, so that a run that
would end badly after the work (an output among the inputs, a model replaced without --force, a full disk)
is refused up front with one line."""

from __future__ import annotations

import os
from pathlib import Path

from glass_ad.data import layouts
from glass_ad.model.checkpoint import CHECKPOINT_NAME
from glass_ad.safety import OutputError, ensure_writable, refuse_existing, refuse_input_overlap
from glass_ad.training.resume import STATE_NAME

RUN_FILES = ("config.yaml", "history.csv")  # written beside model.pt (provenance.write_run_files)


def _same_file(a: str | os.PathLike, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def train_disk_need(n_images: int, config) -> int:
    """Bytes `glass train` may write into its run folder: the checkpoint (written beside the old one
    before the rename), the resume state and, when it exceeds the RAM budget, the memory-mapped feature
    cache."""
    height, width = getattr(config, "input_shape", (config.image_size, config.image_size))
    grid = (height // 8) * (width // 8)
    dim = getattr(config, "embed_dim", None) or 1536  # the widest default patch vector
    hidden = getattr(config, "dsc_hidden", 1024)
    checkpoint = 4 * (dim * dim + dim * hidden + 4 * hidden + grid * dim) + (1 << 20)
    # The resume state (weights, two Adam moments, best weights), old and new side by side while replaced.
    state = 2 * 4 * 4 * (dim * dim + dim * hidden + 4 * hidden)
    cache = n_images * grid * dim * (2 if getattr(config, "cache_dtype", "float16") == "float16" else 4)
    limit = getattr(config, "cache_ram_limit_gb", 4.0) * 1e9
    spill = cache if getattr(config, "cache_features", False) and cache > limit else 0
    return checkpoint + state + spill


def preflight_train(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    config,
    *,
    force: bool = False,
    category: str | None = None,
    layout: str = "auto",
    textures: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    val: str | os.PathLike | None = None,
    resume: bool = False,
    config_file: str | os.PathLike | None = None,
) -> int:
    """Refuse a training run that would end badly after the work: an output among the inputs, an existing
    model or an interrupted training without ``force``, ``resume`` where nothing was interrupted,
    unreadable inputs, a read-only or full run folder, a ``config.yaml`` or ``history.csv`` of the user's in
    the run folder that would be overwritten (never the ``--config`` file itself; others only with
    ``force``). Returns the number of normal training images found."""
    out = Path(out)
    for folder, what in ((textures, "texture folder"), (val, "validation folder")):
        if folder is not None and not Path(folder).is_dir():
            raise OutputError(f"{what} not found: '{folder}'")
    if weights is not None and not Path(weights).is_file():
        raise OutputError(f"backbone weights file not found: '{weights}'")
    refuse_input_overlap(out, [data_dir, textures, val], what="run folder")
    refuse_input_overlap(out / CHECKPOINT_NAME, [weights], what="checkpoint")
    run_files = [out / name for name in RUN_FILES]
    if config_file is not None and any(_same_file(config_file, path) for path in run_files):
        raise OutputError(
            f"the --config file '{config_file}' is where glass train writes the run's settings in '{out}': it would be "
            f"overwritten; copy it elsewhere, or choose another --out"
        )
    if resume:  # continuing the interrupted run replaces what it was started to replace
        if not (out / STATE_NAME).is_file():
            finished = " (it holds a finished model)" if (out / CHECKPOINT_NAME).exists() else ""
            raise OutputError(f"nothing to resume in '{out}'{finished}: no interrupted training there ({STATE_NAME} not found)")
    else:
        refuse_existing([out / CHECKPOINT_NAME, *run_files], force=force)
        if not force and (out / STATE_NAME).exists():
            raise OutputError(f"'{out}' holds an interrupted training; continue it with --resume, or pass --force to start over")
    try:
        dataset = layouts.load_dataset(data_dir, layout, category=category)
    except PermissionError as error:
        raise OutputError(f"cannot read the data set: permission denied on '{error.filename}'") from None
    ensure_writable(out, need_bytes=train_disk_need(len(dataset.train), config), what="run folder")
    return len(dataset.train)

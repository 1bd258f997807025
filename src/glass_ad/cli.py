"""The `glass` command. Every option maps onto a `GlassConfig` field (see config.py for the defaults)."""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from glass_ad import cli_options as opt
from glass_ad.cli_options import ForegroundChoice, RecipeChoice
from glass_ad.config import make_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="GLASS anomaly detection: train on defect-free images, test, predict, export.",
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from glass_ad import __version__

        typer.echo(f"glass-ad {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """GLASS anomaly detection: train on defect-free images, test, predict, export."""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


_COMMAND_STACKS: list = []  # one ExitStack per running command (see _guarded)


def _guarded(function):
    """Run a command with a stack that `_hold_for_command` fills; closed when the command ends, also on errors."""
    import functools
    from contextlib import ExitStack

    @functools.wraps(function)
    def run(*args, **kwargs):
        with ExitStack() as stack:
            _COMMAND_STACKS.append(stack)
            try:
                return function(*args, **kwargs)
            finally:
                _COMMAND_STACKS.pop()

    return run


def _hold_for_command(*managers) -> None:
    """Enter context managers (output locks, the declared bit depth) for the rest of the running command."""
    stack = _COMMAND_STACKS[-1]
    for manager in managers:
        stack.enter_context(manager)


_FORCE_HELP = "Replace results of an earlier run at the same place (default: refuse and say so)."
_BIT_DEPTH_HELP = "Bits per channel of images deeper than 8 bits (e.g. 12 for 12-bit camera data in 16-bit files); default: the bit depth recorded with the model."


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


@app.command()
@_guarded
def train(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="Data set (MVTec layout: DATA_DIR/train/good), or a data-set root with --category.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory; the checkpoint is OUT/model.pt.")],
    config_file: Annotated[Optional[Path], typer.Option("--config", help="YAML or TOML file of settings (names as in RUN/config.yaml, plus recipe); options given on the command line win.")] = None,
    recipe: opt.Recipe = opt.RecipeChoice.fast,
    backbone: opt.Backbone = opt.BACKBONE,
    weights: opt.Weights = None,
    layers: opt.Layers = None,
    epochs: opt.Epochs = None,
    textures: opt.Textures = None,
    hypothesis: opt.Hypothesis = opt.HypothesisChoice.auto,
    image_size: opt.ImageSize = opt.IMAGE_SIZE,
    resize: opt.Resize = None,
    fit: Annotated[Optional[str], typer.Option(help="crop (reference), stretch (keep the whole image), auto (stretch elongated images; default).")] = None,
    seed: opt.Seed = opt.SEED,
    category: Annotated[Optional[str], typer.Option(help="Category folder inside DATA_DIR.")] = None,
    dataset: Annotated[str, typer.Option("--dataset", help="Layout: auto, mvtec, mpdd, wfdd, visa, folder.")] = "auto",
    foreground: Annotated[opt.ForegroundChoice, typer.Option(help="Keep LAS anomalies on the object (auto: objects yes, textures no).")] = opt.ForegroundChoice.auto,
    las: opt.Las = True,
    gas: opt.Gas = opt.GasChoice.full,
    adaptor: opt.Adaptor = True,
    r1: opt.R1 = None,
    r2: Annotated[Optional[float], typer.Option(help="Hypersphere/manifold outer radius r2 (default 2·r1).")] = None,
    embed_dim: Annotated[Optional[int], typer.Option(help="Patch-vector width (default per backbone).")] = None,
    feature_spacing: Annotated[Optional[float], typer.Option(help="Scale rule: normal spacing (median nearest-neighbour distance) the features are scaled to; GAS lengths are in this unit (default 1); 0 = raw features, absolute lengths.")] = None,
    patch_fraction: Annotated[Optional[float], typer.Option(help="Fraction of the batch's patch vectors each branch trains on per iteration (fast 0.25, paper 1).")] = None,
    las_fraction: Annotated[Optional[float], typer.Option(help="Fraction of each batch's images that get a LAS copy (fast 0.5, paper 1).")] = None,
    gas_patch_fraction: Annotated[Optional[float], typer.Option("--gas-patch-fraction", "--gas-fraction", help="Fraction of those normal patch vectors that go through gradient ascent.")] = None,
    texture_colour: Annotated[Optional[str], typer.Option(help="LAS texture colour: auto (grey for grey products), colour (reference), grey.")] = None,
    selection: Annotated[Optional[str], typer.Option(help="Model selection: worst (worse of LAS and the unseen strokes/blobs family; default) or las.")] = None,
    score: Annotated[Optional[str], typer.Option(help="glass (the discriminator; default) or hybrid (+ distance to the nearest normal training patch, each standardised on held-out normals).")] = None,
    memory_bank_fraction: Annotated[Optional[float], typer.Option(help="Hybrid score: share of the training patch vectors kept in the memory bank (default 0.01).")] = None,
    ascent_steps: Annotated[Optional[int], typer.Option(help="Gradient-ascent steps of GAS (fast 4, paper 20).")] = None,
    ascent_step_size: Annotated[Optional[float], typer.Option(help="Gradient-ascent step size (fast 0.005, paper 0.001).")] = None,
    project_every: Annotated[Optional[int], typer.Option(help="Truncated projection every N ascent steps (fast 2, paper 5).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (all processes together under torchrun).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adaptor learning rate (the discriminator uses 2·lr); fast 1e-3, paper 1e-4.")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="constant (reference) or cosine (decay to 0 over --epochs).")] = None,
    early_stopping: Annotated[Optional[bool], typer.Option("--early-stopping/--no-early-stopping", help="Stop when validation no longer improves (fast default).")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop when the smoothed validation score has not risen for this many epochs.")] = None,
    stop_window: Annotated[Optional[int], typer.Option(help="Epochs averaged by the stopping rule (default 3).")] = None,
    holdout_fraction: Annotated[Optional[float], typer.Option("--holdout-fraction", "--holdout", help="Fraction of normal images held out for validation and thresholds.")] = None,
    target_false_alarm_rate: Annotated[Optional[float], typer.Option("--target-false-alarm-rate", "--far", help="Target false-alarm rate of the stored threshold (default 0.01).")] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="Labelled validation folder (good/ + <defect>/): also store F1-optimal thresholds (as `glass calibrate`).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Training arithmetic: auto (bf16 only where a timed step shows it faster; fast default), fp32 (paper default), bf16.")] = None,
    cache_features: Annotated[Optional[bool], typer.Option("--cache-features/--no-cache-features", "--cache/--no-cache", help="Compute the normal images' backbone features once (fast default) instead of every iteration (paper default).")] = None,
    device: opt.Device = opt.DEVICE,
    num_threads: opt.NumThreads = None,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing OUT/model.pt (only once the new one is complete).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted training in OUT from its last completed epoch (same options; --epochs may change with a constant learning rate).")] = False,
    bit_depth: Annotated[Optional[int], typer.Option("--bit-depth", help="Bits per channel of images deeper than 8 bits (e.g. 12 for 12-bit camera data in 16-bit files); default: the file's own depth. Recorded with the model.")] = None,
) -> None:
    """Train on DATA_DIR/train/good (normal images only). Under `torchrun --nproc-per-node N -m glass_ad train …`
    one model is trained data-parallel over N processes (docs/scale.md)."""
    from glass_ad.training import train as run_training

    overrides = opt.config_values(locals())  # every parameter named like a GlassConfig field
    _setup_logging(verbose)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # torchrun: rank 0 checks, locks and reports
    try:
        config = _train_config(ctx, config_file, recipe.value, overrides)
        if feature_spacing is not None:
            config = config.replace(feature_spacing=feature_spacing if feature_spacing > 0 else None).validate()
        if main_rank:
            _train_preflight(data_dir, out, config, force, bit_depth, category, dataset, textures, weights, val, resume)
        else:
            from glass_ad.data.io import declared_bit_depth

            _hold_for_command(declared_bit_depth(bit_depth))
        result = run_training(data_dir, out, config, category=category, layout=dataset, progress=not quiet, resume=resume)
    except KeyboardInterrupt as interrupt:
        _interrupted(interrupt, data_dir, out)
        return
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    except OSError as error:
        _fail(" ".join(str(error).split()))
        return
    if not main_rank:
        return
    _record_run(data_dir, dataset, category, result.checkpoint)
    typer.echo(
        f"saved {result.checkpoint} (hypothesis {result.hypothesis}, {result.epochs_run} epochs, "
        f"model of epoch {result.best_epoch}, {result.wall_time_s:.0f} s)"
    )
    calibration = _as_calibration(result.calibration)
    if not calibration.is_fallback:
        typer.echo(
            f"image threshold {calibration.image_threshold:.4f} for a "
            f"{100 * (calibration.target_false_alarm_rate or 0.0):.1f} % false-alarm rate "
            f"(from {calibration.holdout_images} held-out normal images)"
        )
    if val is not None:
        from glass_ad.model.calibration import calibrate_run

        try:
            f1 = calibrate_run(result.checkpoint, val, device=device, progress=not quiet)
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            _fail(f"F1 calibration on {val}: {error}")
            return
        typer.echo(f"F1-optimal image threshold {f1['f1_image_threshold']:.4f} (F1 {100 * f1['f1_image_f1']:.1f} on {val})")


def _as_calibration(calibration):
    """The typed calibration of a training result (older trainers return the stored dict)."""
    from glass_ad.model.checkpoint import Calibration

    return calibration if isinstance(calibration, Calibration) else Calibration.from_dict(calibration)


def _torch_threads(threads: Optional[int]) -> None:
    """PyTorch's process-wide thread count: the command's choice, never a library function's."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _interrupted(interrupt: KeyboardInterrupt, data_dir: Path, out: Path) -> None:
    """One line on how to continue an interrupted `glass train`; exit 128 + the signal number."""
    import shlex

    from glass_ad.training.resume import STATE_NAME, TrainingInterrupted, describe_state

    code, name = (interrupt.exit_code, str(interrupt)) if isinstance(interrupt, TrainingInterrupted) else (130, "SIGINT")
    saved = describe_state(out)
    if saved is None:
        message = f"interrupted ({name}) before the first epoch was complete; nothing to resume: run glass train again"
    else:
        if Path(sys.argv[0]).name == "glass" and "train" in sys.argv:  # the command as typed, plus --resume
            args = [a for a in sys.argv[1:] if a not in ("--force", "--resume")]
            command = shlex.join(["glass", *args, "--resume"])
        else:
            command = f"glass train {shlex.quote(str(data_dir))} --out {shlex.quote(str(out))} <the same options> --resume"
        message = f"interrupted ({name}); the state of {saved} is saved in {Path(out) / STATE_NAME}; continue with: {command}"
    typer.secho(message, fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(code=code)


def _train_config(ctx: typer.Context, config_file: Optional[Path], recipe: str, overrides: dict):
    """The settings of `glass train`: the recipe, then the --config file, then options given explicitly."""
    if config_file is None:
        return make_config(recipe, **overrides)
    from glass_ad.provenance import load_config_file

    values = load_config_file(config_file)

    def given(option: str) -> bool:  # typed on the command line (or set through the environment)
        source = ctx.get_parameter_source(option)
        return getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")

    chosen = recipe if given("recipe") else str(values.pop("recipe", recipe))
    values.pop("recipe", None)
    for field_name, value in overrides.items():
        if value is not None and (given(field_name) or (field_name == "r2" and given("r1"))):
            values[field_name] = value
    if values.get("layers") is not None:
        values["layers"] = tuple(values["layers"])
    return make_config(chosen, **values)


def _record_run(data_dir: Path, layout: str, category: Optional[str], checkpoint: Path) -> None:
    """config.yaml and history.csv beside the checkpoint (which the trainer gave its provenance entry:
    package version, git revision, training-data fingerprint)."""
    from glass_ad.provenance import write_run_files

    write_run_files(checkpoint)


def _train_preflight(data_dir, out, config, force, bit_depth, category, layout, textures, weights, val, resume=False) -> None:
    """Everything `glass train` can check before the first image: outputs, inputs, disk; then the run
    folder's lock, the declared bit depth and clean interrupts (resume.py) for the whole command."""
    from glass_ad.data.io import check_bit_depth, declared_bit_depth
    from glass_ad.safety import output_lock, preflight_train
    from glass_ad.training.resume import interruptible

    check_bit_depth(bit_depth)
    onnx_file = Path(out) / "model.onnx"
    stale = force and onnx_file.exists()
    preflight_train(
        data_dir, out, config, force=force, category=category, layout=layout, textures=textures, weights=weights, val=val,
        resume=resume,
    )
    _hold_for_command(output_lock(out), declared_bit_depth(bit_depth), interruptible())
    if stale:

        def warn_stale() -> None:
            if (Path(out) / "model.pt").stat().st_mtime > onnx_file.stat().st_mtime:
                typer.secho(
                    f"warning: {onnx_file} was exported from the replaced model; re-export it: glass export {out} --force",
                    fg=typer.colors.YELLOW, err=True,
                )  # fmt: skip

        _COMMAND_STACKS[-1].callback(warn_stale)


@app.command()
@_guarded
def test(
    run_dir: Path = typer.Argument(..., help="Run directory written by `glass train`."),
    data_dir: Path = typer.Argument(..., help="Data set with test/good and test/<defect> (+ ground_truth masks)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON here."),
    report: Optional[Path] = typer.Option(None, help="Folder for pictures (default: RUN_DIR/test_report)."),
    category: Optional[str] = typer.Option(None),
    dataset: str = typer.Option("auto", "--dataset"),
    batch_size: int = typer.Option(8),
    workers: int = typer.Option(0, help="Data-loading worker processes."),
    device: str = typer.Option("auto"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch."),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Score histogram and worst-case grid."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    force: bool = typer.Option(False, "--force", help=_FORCE_HELP),
    allow_dropped: bool = typer.Option(False, "--allow-dropped", help="Exit 0 even when test images could not be used (they are still listed in the report)."),
    bit_depth: Optional[int] = typer.Option(None, "--bit-depth", help=_BIT_DEPTH_HELP),
) -> None:
    """Evaluate a trained model on DATA_DIR/test (metrics never feed back into the model).

    Every test image that could not be used is listed (JSON: `dropped`); the command then fails unless
    --allow-dropped. Existing results are replaced only with --force.
    """
    from glass_ad.evaluation.tester import test as run_test
    from glass_ad.model.checkpoint import checkpoint_path

    _setup_logging(verbose)
    _torch_threads(threads)
    report = report or checkpoint_path(run_dir).parent / "test_report"
    try:
        _test_preflight(run_dir, data_dir, json_out, report if pictures else None, force, dataset, category)
        result = run_test(
            run_dir,
            data_dir,
            category=category,
            layout=dataset,
            json_path=json_out,
            report_dir=report,
            batch_size=batch_size,
            workers=workers,
            device=device,
            progress=not quiet,
            pictures=pictures,
            bit_depth=bit_depth,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    except OSError as error:
        _fail(" ".join(str(error).split()))
        return
    _print_report(result)
    _check_dropped(result, json_out, allow_dropped)


def _test_preflight(run_dir, data_dir, json_out, report_dir, force, layout="auto", category=None) -> None:
    """Outputs of `glass test`: not an input, not silently replaced, writable, locked for the command; the
    model and the data set are read first, so a refusal leaves nothing behind."""
    from glass_ad.data.datasets import load_dataset
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import ensure_writable, output_locks, refuse_existing, refuse_input_overlap

    inputs = [checkpoint_path(run_dir), data_dir]
    targets = []
    if json_out is not None:
        refuse_input_overlap(json_out, inputs, what="JSON report")
        targets.append(json_out)
    if report_dir is not None:
        refuse_input_overlap(report_dir, inputs, what="picture folder")
        targets += [Path(report_dir) / "score_histogram.png", Path(report_dir) / "worst_cases.png"]
    Checkpoint.load(run_dir)  # a damaged or foreign checkpoint fails here, before any folder is made
    load_dataset(data_dir, layout, category=category)  # so does a missing or empty data set
    refuse_existing(targets, force=force, option="--json / --report")
    folders = [Path(json_out).parent if json_out is not None else None, report_dir]
    for folder in folders:
        if folder is not None:
            ensure_writable(folder)
    _hold_for_command(output_locks(folders))


def _check_dropped(result: dict, json_out, allow_dropped: bool) -> None:
    """One line per test image that could not be used; a non-zero exit unless --allow-dropped."""
    dropped, empty = result.get("dropped") or [], result.get("empty_test_folders") or []
    for entry in dropped:
        typer.secho(f"dropped: {entry['file']}: {entry['reason']}", fg=typer.colors.YELLOW, err=True)
    for folder in empty:
        typer.secho(f"empty: test folder {folder} has no images", fg=typer.colors.YELLOW, err=True)
    if (dropped or empty) and not allow_dropped:
        where = f"listed under 'dropped' in {json_out}" if json_out else "listed above"
        parts = []
        if dropped:
            parts.append(f"{len(dropped)} of {result.get('n_listed', '?')} test images could not be used and are not in these metrics")
        if empty:
            parts.append(f"{len(empty)} test folder(s) have no images")
        _fail(f"{'; '.join(parts)} ({where}); fix them, or pass --allow-dropped to accept the smaller test set")


def _print_report(result: dict) -> None:
    def pct(value):
        return "n/a" if value is None or value != value else f"{100 * value:.1f}"

    typer.echo(
        f"image AUROC {pct(result['image_auroc'])} | pixel AUROC {pct(result['pixel_auroc'])} | "
        f"AUPRO {pct(result['aupro'])} | image AP {pct(result['image_ap'])} | pixel AP {pct(result['pixel_ap'])}"
    )
    for name, entry in sorted(result.get("per_defect_type", {}).items()):
        typer.echo(f"  {name:<16} image AUROC {pct(entry['image_auroc'])} (n={entry['n']})")
    stored = result.get("stored_threshold")
    if stored:
        typer.echo(
            f"stored threshold {stored['image_threshold']:.4f}: precision {pct(stored['precision'])}, recall "
            f"{pct(stored['recall'])}, F1 {pct(stored['f1'])}, false alarms {pct(stored['false_alarm_rate'])} % "
            f"(target {pct(stored['target_false_alarm_rate'])} %)"
        )
    f1_point = result.get("f1_threshold")
    if f1_point:
        typer.echo(
            f"F1 threshold {f1_point['image_threshold']:.4f} (from {f1_point['validation_images']} validation images): "
            f"precision {pct(f1_point['precision'])}, recall {pct(f1_point['recall'])}, F1 {pct(f1_point['f1'])}, "
            f"false alarms {pct(f1_point['false_alarm_rate'])} %"
        )


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the data, the model and the report."),
    epochs: int = typer.Option(8, help="Training epochs on the demo data."),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """The embedded default: generate a small surface-inspection data set, train, test, draw heatmaps."""
    from glass_ad.data.demo_data import make_demo_dataset
    from glass_ad.evaluation.tester import test as run_test
    from glass_ad.training.trainer import train as run_training

    try:
        config = make_config("fast", epochs=epochs, image_size=128, seed=seed, early_stopping=False).validate()
    except ValueError as error:
        _fail(str(error))
        return
    data = make_demo_dataset(out / "data", seed=seed)
    typer.echo(f"demo data: {data}")
    result = run_training(data, out / "run", config, progress=not quiet)
    typer.echo(f"trained in {result.wall_time_s:.0f} s → {result.checkpoint}")
    report = run_test(out / "run", data, json_path=out / "metrics.json", report_dir=out / "report", progress=not quiet)
    _print_report(report)
    from glass_ad.research.previews import heatmap_grid

    heatmaps = heatmap_grid(out / "run", data, out / "report" / "heatmaps.png", count=8, columns=2)
    typer.echo(f"metrics: {out / 'metrics.json'}; pictures: {out / 'report'} (heatmaps: {heatmaps})")


@app.command()
def benchmark(
    backbone: str = typer.Option("efficientnet_lite2"),
    image_size: int = typer.Option(288),
    recipe: RecipeChoice = typer.Option(RecipeChoice.fast),
    repeats: int = typer.Option(5, help="Timed batches per throughput figure."),
    iterations: int = typer.Option(4, help="Timed training iterations."),
    precision: Optional[str] = typer.Option(None, help="Training arithmetic (default by recipe): auto, fp32, bf16."),
    threads: Optional[int] = typer.Option(None),
    device: str = typer.Option("auto"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Throughput (backbone only vs full inference, batch 8 and 1), training s/iteration by branch, peak RAM."""
    from glass_ad.research.benchmark import format_benchmark, run_benchmark

    config = make_config(
        recipe.value, backbone=backbone, image_size=image_size, precision=precision, num_threads=threads, device=device
    )
    result = run_benchmark(config, repeats=repeats, train_iterations=iterations)
    typer.echo(format_benchmark(result))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))


@app.command()
def backbones() -> None:
    """List the registered backbones (any timm model name also works)."""
    from glass_ad.model.backbones import BACKBONES

    for name, spec in sorted(BACKBONES.items()):
        typer.echo(f"{name:<20} layers {','.join(spec.default_layers):<18} {spec.description}")


@app.command()
def info(run_dir: Path = typer.Argument(...)) -> None:
    """Show what a checkpoint holds: config, hypothesis, thresholds, feature geometry, and per epoch the
    losses and separations of each branch (a warning when GAS stayed near chance)."""
    from glass_ad.model.checkpoint import Checkpoint
    from glass_ad.training.validation import branch_summary

    try:
        checkpoint = Checkpoint.load(run_dir)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
        return
    calibration = checkpoint.calibration
    geometry = checkpoint.geometry.to_dict() if checkpoint.geometry is not None else checkpoint.extra.get("geometry")
    summary = {
        "format": checkpoint.format,
        "package_version": checkpoint.package_version or "unknown (written before 0.1.0 recorded it)",
        "provenance": checkpoint.provenance or "not recorded (trained through the library, or before it was recorded)",
        "input_bit_depth": checkpoint.bit_depth or "the file's own depth",
        "backbone": checkpoint.backbone.to_dict(),
        "hypothesis": checkpoint.hypothesis,
        "spectrum": checkpoint.spectrum,
        "calibration": {k: v for k, v in calibration.to_dict().items() if k != "holdout_image_scores"},
        "thresholds_in_use": {
            "image": calibration.image_threshold,
            "pixel": calibration.pixel_threshold,
            "source": calibration.method,
        },
        "training": checkpoint.training.summary() if checkpoint.training.recorded else {},
        "geometry": geometry,
        "branches": branch_summary(list(checkpoint.training.history)),
        "config": checkpoint.stored_config if checkpoint.stored_config is not None else checkpoint.config.to_dict(),
    }
    typer.echo(json.dumps(summary, indent=2, default=str))


class PredictFormat(str, Enum):
    json = "json"
    csv = "csv"


class EngineChoice(str, Enum):
    torch = "torch"
    onnx = "onnx"
    openvino = "openvino"


@app.command()
@_guarded
def predict(
    run_dir: Path = typer.Argument(..., help="Run directory written by `glass train` (or its model.pt)."),
    paths: list[Path] = typer.Argument(..., help="Images and/or folders (searched recursively); any size, RGB or grey, 8/16-bit."),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Folder for predictions.json|csv and overlays/."),
    fmt: PredictFormat = typer.Option(PredictFormat.json, "--format", help="Results file format."),
    engine: EngineChoice = typer.Option(EngineChoice.torch, help="torch, onnx (ONNX Runtime; see `glass export`) or openvino (OpenVINO IR from `glass export --format openvino`)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Exported model for --engine onnx/openvino (default: RUN_DIR/model.onnx, RUN_DIR/model.xml)."),
    batch_size: int = typer.Option(8, min=1),
    threshold: str = typer.Option("far", help="far (false-alarm threshold from training), f1 (from `glass calibrate`), or a raw score."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write original | heatmap | region PNGs."),
    device: str = typer.Option("auto", help="Device of the torch engine."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (PyTorch or ONNX Runtime)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    force: bool = typer.Option(False, "--force", help="Replace predictions.* and overlays of an earlier run in OUT (default: refuse)."),
    bit_depth: Optional[int] = typer.Option(None, "--bit-depth", help=_BIT_DEPTH_HELP),
    providers: str = typer.Option("cpu", help="ONNX Runtime execution provider for --engine onnx: cpu, cuda, openvino, tensorrt, directml, coreml, auto."),
    save_maps: Optional[str] = typer.Option(None, "--save-maps", help="Also write raw maps at the original size into OUT/maps: npy (float32) or png (16-bit, the colour scale onto 0..65535)."),
    save_masks: bool = typer.Option(False, "--save-masks", help="Also write the predicted regions as 0/255 PNGs into OUT/masks."),
    outlines: str = typer.Option("anomalous", help="Red region outlines on the overlays: anomalous (only images decided anomalous), all, none."),
    min_area: int = typer.Option(0, "--min-area", min=0, help="Smallest region (pixels) outlined and listed in the JSON boxes."),
) -> None:
    """Score images: raw and normalized score, decision, heatmap overlay; one line per unreadable file."""
    from glass_ad.inference.predict import predict_files, summary_line

    if engine.value == "torch":
        _torch_threads(threads)
    try:
        _predict_preflight(run_dir, paths, out, fmt.value, overlays, onnx, force, bool(save_maps), save_masks)
        summary = predict_files(
            run_dir,
            paths,
            out,
            fmt=fmt.value,
            engine=engine.value,
            onnx_path=onnx,
            batch_size=batch_size,
            device=device,
            threshold=threshold,
            overlays=overlays,
            progress=not quiet,
            threads=threads,
            bit_depth=bit_depth,
            providers=providers,
            save_maps=save_maps,
            save_masks=save_masks,
            outlines=outlines,
            min_area=min_area,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    except OSError as error:
        _fail(" ".join(str(error).split()))
        return
    if summary["n_images"] == 0:
        _fail(f"no image could be processed ({summary['n_failed']} input(s) skipped, see above)")
    typer.echo(summary_line(summary))


def _predict_preflight(run_dir, paths, out, fmt, overlays, onnx, force, maps=False, masks=False) -> None:
    from glass_ad.inference.predict import check_outputs, output_paths
    from glass_ad.model.checkpoint import Checkpoint
    from glass_ad.safety import ensure_writable, output_lock, refuse_existing

    check_outputs(run_dir, paths, out, fmt=fmt, overlays=overlays, onnx_path=onnx)
    Checkpoint.load(run_dir)
    refuse_existing(output_paths(out, fmt, overlays, maps, masks), force=force)
    ensure_writable(out)
    _hold_for_command(output_lock(out))


@app.command()
@_guarded
def export(
    run_dir: Path = typer.Argument(..., help="Run directory written by `glass train` (or its model.pt)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format: onnx, or openvino (IR; pip install \"glass-ad[openvino]\")."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: RUN_DIR/model.onnx, RUN_DIR/model.xml, RUN_DIR/model_<precision>.xml)."),
    opset: int = typer.Option(17, help="ONNX opset (>= 17)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare ONNX Runtime with PyTorch on a random batch."),
    force: bool = typer.Option(False, "--force", help="Replace an existing ONNX file at the target (default: refuse)."),
    preprocessing: bool = typer.Option(True, "--preprocessing/--no-preprocessing", help="Resize and crop inside the graph (frames of any size in, map on the frame out); --no-preprocessing: S×S crops in."),
    precision: str = typer.Option("fp32", help="OpenVINO: fp32, fp16 (half-size weights) or int8 (needs --calibration)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="OpenVINO int8: the training data set (its train/good) or a folder of normal images."),
) -> None:
    """Export the whole inference graph (uint8 pixels → scores and map) as one ONNX model or OpenVINO IR."""
    from glass_ad.inference.export import ONNX_NAME, export_onnx
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import ensure_writable, output_lock, refuse_existing, refuse_input_overlap

    kind = fmt.lower()
    if kind not in ("onnx", "openvino"):
        _fail(f"unknown export format {fmt!r} (supported: onnx, openvino)")
    if kind == "openvino":
        _export_openvino(run_dir, out, precision, calibration, force)
        return
    target = out if out is not None else checkpoint_path(run_dir).parent / ONNX_NAME
    try:
        refuse_input_overlap(target, [checkpoint_path(run_dir)], what="export target")
        Checkpoint.load(run_dir)
        refuse_existing([target], force=force)
        _hold_for_command(output_lock(ensure_writable(target.parent, what="export folder")))
        result = export_onnx(run_dir, target, opset=opset, verify=verify, preprocessing=preprocessing)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    except OSError as error:
        _fail(" ".join(str(error).split()))
        return
    typer.echo(f"saved {result.path} (opset {result.opset}, {result.exporter} exporter)")
    if result.max_abs_diff:
        diffs = ", ".join(f"{name} {value:.1e}" for name, value in result.max_abs_diff.items())
        typer.echo(f"ONNX Runtime vs PyTorch, max |difference|: {diffs}")


def _export_openvino(run_dir: Path, out: Optional[Path], precision: str, calibration: Optional[Path], force: bool) -> None:
    from glass_ad.inference.openvino_export import XML_NAME, export_openvino
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import ensure_writable, output_lock, refuse_existing, refuse_input_overlap

    default = XML_NAME if precision == "fp32" else f"model_{precision}.xml"
    target = out if out is not None else checkpoint_path(run_dir).parent / default
    try:
        refuse_input_overlap(target, [checkpoint_path(run_dir)], what="export target")
        Checkpoint.load(run_dir)
        refuse_existing([target, target.with_suffix(".bin")], force=force)
        _hold_for_command(output_lock(ensure_writable(target.parent, what="export folder")))
        result = export_openvino(run_dir, target, precision=precision, calibration=calibration)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    except OSError as error:
        _fail(" ".join(str(error).split()))
        return
    extra = f", calibrated on {result.calibration_images} normal images" if result.calibration_images else ""
    typer.echo(f"saved {result.path} (OpenVINO IR, {result.precision}{extra}; run it with INFERENCE_PRECISION_HINT=f32)")
    if result.max_abs_diff:
        diffs = ", ".join(f"{name} {value:.1e}" for name, value in result.max_abs_diff.items())
        typer.echo(f"OpenVINO vs ONNX Runtime fp32, max |difference|: {diffs}")


@app.command()
@_guarded
def calibrate(
    run_dir: Path = typer.Argument(..., help="Run directory written by `glass train` (or its model.pt)."),
    val: Path = typer.Option(..., "--val", help="Labelled validation folder: good/ and <defect>/ subfolders (+ optional masks), not the test set."),
    batch_size: int = typer.Option(8, min=1),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    force: bool = typer.Option(False, "--force", help="Replace F1 thresholds stored by an earlier `glass calibrate` (default: refuse)."),
) -> None:
    """Add F1-optimal image/pixel thresholds from a labelled validation set (the false-alarm threshold stays)."""
    from glass_ad.model.calibration import calibrate_run
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import OutputError, ensure_writable, output_lock

    _setup_logging(verbose)
    try:
        f1 = Checkpoint.load(run_dir).calibration.f1
        if f1 is not None and not force:
            raise OutputError(
                f"{checkpoint_path(run_dir)} already holds F1 thresholds (from {f1.val_dir}); pass --force to replace them"
            )
        _hold_for_command(output_lock(ensure_writable(checkpoint_path(run_dir).parent, what="run folder")))
        result = calibrate_run(run_dir, val, device=device, batch_size=batch_size, progress=not quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    except OSError as error:
        _fail(" ".join(str(error).split()))
        return
    if Path(result["f1_val_dir"]).name == "test":
        typer.secho(
            "warning: the validation images are a test split; `glass test` on them would be optimistic for the F1 threshold",
            fg=typer.colors.YELLOW,
            err=True,
        )
    typer.echo(
        f"F1 image threshold {result['f1_image_threshold']:.4f}: F1 {100 * result['f1_image_f1']:.1f}, precision "
        f"{100 * result['f1_image_precision']:.1f}, recall {100 * result['f1_image_recall']:.1f} on "
        f"{result['f1_val_images']} validation images ({result['f1_val_anomalous']} defective)"
    )
    if result["f1_pixel_threshold"] is not None:
        typer.echo(f"F1 pixel threshold {result['f1_pixel_threshold']:.4f} (pixel F1 {100 * result['f1_pixel_f1']:.1f})")
    typer.echo("saved into the checkpoint; the false-alarm threshold is unchanged (use it with --threshold f1)")


# --------------------------------------------------------------------------------------------------
# Research workflows: suites, ablations, weak-defect test sets, previews (see suite.py, weak_defects.py,
# previews.py).


class SuiteDatasetChoice(str, Enum):
    auto = "auto"
    mvtec = "mvtec"
    visa = "visa"
    mpdd = "mpdd"
    wfdd = "wfdd"


class StudyChoice(str, Enum):
    las = "las"
    gas = "gas"
    r1 = "r1"
    adaptor = "adaptor"
    backbone = "backbone"
    layers = "layers"


class ProjectionChoice(str, Enum):
    pca = "pca"
    tsne = "tsne"


class JobEngineChoice(str, Enum):
    local = "local"
    ray = "ray"


_ENGINE_HELP = "local: one job after the other in this process. ray: every job a Ray task (needs the distributed extra; docs/scale.md)."
_ADDRESS_HELP = "With --engine ray: 'auto' (the cluster of `ray start`) or ray://HOST:PORT; default: start a local Ray for the run."
_WORKERS_HELP = "With --engine ray and no --address: CPUs of the local Ray (default: all)."
_CPUS_PER_JOB_HELP = "With --engine ray: CPUs each job declares (GPUs: 1 per job with --device cuda)."


def _ray_options(engine: "JobEngineChoice", address: Optional[str], workers: Optional[int], cpus_per_job: float, device: str):
    """`cluster.RayOptions` for --engine ray, None for local; --address/--workers without ray are an error."""
    if engine is JobEngineChoice.local:
        if address or workers:
            raise ValueError("--address and --workers need --engine ray")
        return None
    from glass_ad.research.cluster import RayOptions

    if cpus_per_job <= 0:
        raise ValueError(f"--cpus-per-job must be positive, got {cpus_per_job}")
    return RayOptions(
        address=address, num_cpus=workers, cpus_per_job=cpus_per_job, gpus_per_job=1.0 if device.startswith("cuda") else 0.0
    )


def _print_results_table(out: Path, results) -> None:
    typer.echo((out / "results.md").read_text())
    failed = [r.name for r in results if not r.ok]
    if failed:
        typer.secho(
            f"{len(failed)} failed ({', '.join(failed)}): see {out}/<name>/error.txt; rerun the same command to retry them",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(code=1)


@app.command()
def suite(
    root: Path = typer.Argument(..., help="Data-set root: category folders with train/good (MVTec AD, MPDD, WFDD; symlinked folders work), a VisA root, or one category folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: OUT/<category>/ runs, OUT/results.csv and OUT/results.md."),
    dataset: SuiteDatasetChoice = typer.Option(SuiteDatasetChoice.auto, "--dataset", help="Layout of ROOT."),
    categories: Optional[str] = typer.Option(None, help="Comma-separated categories (default: all found)."),
    recipe: opt.Recipe = opt.RecipeChoice.fast,
    backbone: opt.Backbone = opt.BACKBONE,
    layers: opt.Layers = None,
    weights: opt.Weights = None,
    epochs: opt.Epochs = None,
    textures: opt.Textures = None,
    image_size: opt.ImageSize = opt.IMAGE_SIZE,
    resize: Annotated[Optional[int], typer.Option(help="Shorter side before the crop for every category (default: image size; MVTec toothbrush/wood: 329/288 of it, as the reference).")] = None,
    hypothesis: opt.Hypothesis = opt.HypothesisChoice.auto,
    las: opt.Las = True,
    gas: opt.Gas = opt.GasChoice.full,
    adaptor: opt.Adaptor = True,
    r1: opt.R1 = None,
    seed: opt.Seed = opt.SEED,
    model: Optional[Path] = typer.Option(None, "--model", help="Test every category with this trained run instead of training one per category (e.g. on weak-defect sets)."),
    redo: bool = typer.Option(False, "--redo", help="Recompute runs that already have metrics.json."),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Score histogram and worst cases per category."),
    device: opt.Device = opt.DEVICE,
    num_threads: opt.NumThreads = None,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    engine: JobEngineChoice = typer.Option(JobEngineChoice.local, "--engine", help=_ENGINE_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    cpus_per_job: float = typer.Option(1.0, "--cpus-per-job", help=_CPUS_PER_JOB_HELP),
) -> None:
    """Train and test every category; resumable (finished categories are skipped), one results table."""
    from glass_ad.research.suite import run_suite

    overrides = opt.config_values(locals())
    _setup_logging(verbose)
    try:
        config = make_config(recipe.value, **overrides)
        only = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
        results = run_suite(
            root, out, config, dataset=dataset.value, categories=only, model=model, redo=redo,
            pictures=pictures, progress=not quiet, echo=typer.echo,
            ray_options=_ray_options(engine, address, workers, cpus_per_job, device),
        )  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    _print_results_table(out, results)


@app.command()
def ablate(
    root: Path = typer.Argument(..., help="One category folder, or a data-set root with --category."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: OUT/<study>=<value>/ runs and OUT/results.{csv,md}."),
    study: StudyChoice = typer.Option(..., help="las (on/off), gas (off,noise,ascent,full), r1, adaptor (on/off), backbone, layers."),
    values: Optional[str] = typer.Option(None, help="Comma-separated variants (defaults per study; layers: join a variant's layers with '+', first the stride-8 stage, e.g. blocks.2+blocks.4,blocks.2)."),
    category: Optional[str] = typer.Option(None),
    dataset: SuiteDatasetChoice = typer.Option(SuiteDatasetChoice.auto, "--dataset"),
    recipe: opt.Recipe = opt.RecipeChoice.fast,
    backbone: opt.Backbone = opt.BACKBONE,
    layers: opt.Layers = None,
    weights: opt.Weights = None,
    epochs: opt.Epochs = None,
    textures: opt.Textures = None,
    image_size: opt.ImageSize = opt.IMAGE_SIZE,
    hypothesis: Annotated[opt.HypothesisChoice, typer.Option(help="The r1 study forces manifold when this is auto.")] = opt.HypothesisChoice.auto,
    seed: opt.Seed = opt.SEED,
    redo: bool = typer.Option(False, "--redo"),
    pictures: bool = typer.Option(False, "--pictures/--no-pictures"),
    device: opt.Device = opt.DEVICE,
    num_threads: opt.NumThreads = None,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    engine: JobEngineChoice = typer.Option(JobEngineChoice.local, "--engine", help=_ENGINE_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    cpus_per_job: float = typer.Option(1.0, "--cpus-per-job", help=_CPUS_PER_JOB_HELP),
) -> None:
    """Run the variants of one ablation (paper Table 4 / Fig. 8) on one category; resumable, one table."""
    from glass_ad.research.suite import run_ablation

    overrides = opt.config_values(locals())
    _setup_logging(verbose)
    try:
        config = make_config(recipe.value, **overrides)
        results = run_ablation(
            root, out, config, study.value, values=values.split(",") if values else None, category=category,
            dataset=dataset.value, redo=redo, pictures=pictures, progress=not quiet, echo=typer.echo,
            ray_options=_ray_options(engine, address, workers, cpus_per_job, device),
        )  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    _print_results_table(out, results)


@app.command("make-weak-defects")
def make_weak_defects_command(
    src: Path = typer.Argument(..., help="An MVTec-layout category (train/good, test/good)."),
    out: Path = typer.Argument(..., help="Output folder: OUT/beta_<β>/ per β (MVTec layout)."),
    beta: str = typer.Option("0.1,0.3,0.5,0.7", help="Comma-separated fixed β; larger β keeps more of the image = weaker defect."),
    textures: Optional[Path] = typer.Option(None, help="Texture folder that differs from the training one (default: procedural textures, disjoint from DTD)."),
    seed: int = typer.Option(0),
    count: Optional[int] = typer.Option(None, help="Use at most N good test images (half stay good, half get a defect)."),
    foreground: bool = typer.Option(False, "--foreground/--no-foreground", help="Keep defects on the object (object categories)."),
    copy: bool = typer.Option(False, "--copy", help="Copy train/good and test/good instead of symlinking them."),
) -> None:
    """Build weak-defect test sets: LAS overlays at fixed β on half of SRC's good test images."""
    from glass_ad.research.weak_defects import make_weak_defects

    try:
        folders = make_weak_defects(
            src, out, beta, textures=textures, seed=seed, count=count, foreground=foreground, link=not copy, echo=typer.echo
        )
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        _fail(str(error))
        return
    typer.echo(f"next: glass train {src} --out RUN && glass suite {out} --model RUN --out RESULTS  ({len(folders)} sets)")


preview_app = typer.Typer(no_args_is_help=True, help="Pictures: LAS previews, feature projections, score histograms, heatmaps.")
app.add_typer(preview_app, name="preview")


@preview_app.command("las")
def preview_las(
    data_dir: Path = typer.Argument(..., help="Data set (its train/good images are used)."),
    out: Path = typer.Option(Path("las_preview.png"), "--out", "-o"),
    textures: Optional[Path] = typer.Option(None, help="Texture folder (default: procedural)."),
    count: int = typer.Option(8, min=1),
    image_size: int = typer.Option(256),
    foreground: ForegroundChoice = typer.Option(ForegroundChoice.auto),
    seed: int = typer.Option(0),
    category: Optional[str] = typer.Option(None),
    dataset: str = typer.Option("auto", "--dataset"),
) -> None:
    """Grid of normal | LAS image | mask, titled with β and the Perlin rule."""
    from glass_ad.research.previews import las_grid

    try:
        _preview_preflight(out, data_dir, textures)
        path = las_grid(
            data_dir, out, textures=textures, count=count, image_size=image_size, foreground=foreground.value,
            seed=seed, category=category, layout=dataset,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    typer.echo(f"saved {path}")


def _model_file(run_dir: Path) -> Path:
    from glass_ad.model.checkpoint import checkpoint_path

    return checkpoint_path(run_dir)


def _preview_preflight(out: Path, *inputs: Optional[Path]) -> None:
    """A preview picture never replaces one of its inputs nor lands inside an input folder."""
    from glass_ad.safety import refuse_input_overlap

    refuse_input_overlap(out, inputs, what="preview picture")


@preview_app.command("features")
def preview_features(
    run_dir: Path = typer.Argument(..., help="Run directory written by `glass train`."),
    data_dir: Path = typer.Argument(..., help="The data set it was trained on (train/good images are used)."),
    out: Path = typer.Option(Path("features.png"), "--out", "-o"),
    images: int = typer.Option(8, min=1, help="Normal images whose patches are projected."),
    method: ProjectionChoice = typer.Option(ProjectionChoice.pca, help="pca, or tsne (slower; on a subsample)."),
    points: int = typer.Option(3000, min=30, help="Points drawn in all (split over normal / GAS / LAS)."),
    textures: Optional[Path] = typer.Option(None, help="Texture folder for LAS (default: the training one when present, else procedural)."),
    seed: int = typer.Option(0),
    category: Optional[str] = typer.Option(None),
    dataset: str = typer.Option("auto", "--dataset"),
) -> None:
    """2-D projection of normal, GAS and LAS patch features of a trained model (the paper's Fig. 1)."""
    from glass_ad.research.previews import feature_projection

    try:
        _preview_preflight(out, _model_file(run_dir), data_dir, textures)
        path = feature_projection(
            run_dir, data_dir, out, images=images, method=method.value, points=points, textures=textures,
            seed=seed, category=category, layout=dataset,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    typer.echo(f"saved {path}")


@preview_app.command("scores")
def preview_scores(
    suite_dir: Path = typer.Argument(..., help="Output folder of `glass suite`/`glass ablate` (or one run folder with scores.csv)."),
    out: Path = typer.Option(Path("score_histograms.png"), "--out", "-o"),
    bins: int = typer.Option(30, min=2),
) -> None:
    """Image-score histograms, one panel per category, with the stored thresholds."""
    from glass_ad.research.previews import score_histograms

    try:
        _preview_preflight(out, suite_dir)
        path = score_histograms(suite_dir, out, bins=bins)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    typer.echo(f"saved {path}")


@preview_app.command("heatmaps")
def preview_heatmaps(
    run_dir: Path = typer.Argument(..., help="Run directory written by `glass train`."),
    data_dir: Path = typer.Argument(..., help="Data set with a test split."),
    out: Path = typer.Option(Path("heatmaps.png"), "--out", "-o"),
    count: int = typer.Option(8, min=1),
    columns: int = typer.Option(1, min=1),
    category: Optional[str] = typer.Option(None),
    dataset: str = typer.Option("auto", "--dataset"),
) -> None:
    """Test images with anomaly maps, the stored pixel threshold (red) and the ground truth (green)."""
    from glass_ad.research.previews import heatmap_grid

    try:
        _preview_preflight(out, _model_file(run_dir), data_dir)
        path = heatmap_grid(run_dir, data_dir, out, count=count, category=category, layout=dataset, columns=columns)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
        return
    typer.echo(f"saved {path}")


# --------------------------------------------------------------------------------------------------
# The inspection service (see serve/ and docs/serve.md; needs the `serve` extra).


def _serve_extra_missing(error: ImportError) -> None:
    _fail(f"{error}: `glass serve` and `glass report` need the serve extra (pip install \"glass-ad[serve]\")")


@app.command()
def serve(
    runs: list[str] = typer.Argument(..., help="Run directories (or model.pt files) to serve; NAME=RUN_DIR names a model (default: the folder name)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; the default accepts local connections only."),
    port: int = typer.Option(8000, min=0, max=65535),
    engine: EngineChoice = typer.Option(EngineChoice.torch, help="torch, or onnx (RUN_DIR/model.onnx from `glass export`)."),
    db: Optional[str] = typer.Option(None, "--db", help="Inspection log: postgresql://user:pw@host/db, any SQLAlchemy URL, or a SQLite file (default DATA_DIR/inspections.db)."),
    data_dir: Path = typer.Option(Path("serve-data"), "--data-dir", help="The service's folder: SQLite log, stored overlays, upload scratch files."),
    token: Optional[str] = typer.Option(None, "--token", envvar="GLASS_SERVE_TOKEN", help="API token required on every route except /healthz and /readyz (env GLASS_SERVE_TOKEN)."),
    threshold: str = typer.Option("far", help="far, f1 (from `glass calibrate`), or a raw score."),
    max_batch: int = typer.Option(8, min=1, help="Largest micro-batch of concurrent requests per network pass (1: no batching)."),
    batch_wait_ms: float = typer.Option(2.0, min=0.0, help="How long a request may wait for others to share its batch."),
    max_upload_mb: float = typer.Option(20.0, min=0.001, help="Largest request body."),
    device: str = typer.Option("auto", help="Device of the torch engine."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (PyTorch or ONNX Runtime)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve models over HTTP: inspection API, web page, inspection log (SQLite or PostgreSQL)."""
    try:
        import uvicorn

        from glass_ad.serve import ServeSettings, create_app
        from glass_ad.serve.store import DatabaseError
    except ImportError as error:
        _serve_extra_missing(error)
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    if engine.value == "torch":
        _torch_threads(threads)
    try:
        settings = ServeSettings(
            runs=list(runs), data_dir=data_dir, db=db, engine=engine.value, device=device, threshold=threshold,
            threads=threads, max_batch=max_batch, max_wait_ms=batch_wait_ms, token=token,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        )  # fmt: skip
        application = create_app(settings)
    except (ValueError, FileNotFoundError, DatabaseError) as error:
        _fail(str(error))
        return
    if host not in ("127.0.0.1", "localhost", "::1") and not (token or settings.token):
        typer.secho(f"warning: serving on {host} without --token: anyone who can reach it can use it", fg=typer.colors.YELLOW, err=True)
    uvicorn.run(application, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)


@app.command()
def report(
    db: str = typer.Argument(..., help="Inspection log: a SQLite file (e.g. serve-data/inspections.db) or a database URL."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    bucket: str = typer.Option("auto", help="Period of the rows: auto, hour, day, week."),
) -> None:
    """Flag, false-alarm and defect rates over time from the inspection log, as one HTML file."""
    try:
        from glass_ad.serve.report import write_report
        from glass_ad.serve.store import DatabaseError
    except ImportError as error:
        _serve_extra_missing(error)
        return
    try:
        path = write_report(db, out, bucket=bucket)
    except (ValueError, FileNotFoundError, DatabaseError) as error:
        _fail(str(error))
        return
    typer.echo(f"saved {path}")


@app.command("predict-batch")
def predict_batch_command(
    run_dir: Path = typer.Argument(..., help="Run directory (model.pt; model.onnx from `glass export` for --format onnx)."),
    source: str = typer.Argument(..., help="Folder of images (searched recursively) or a .txt list of image paths (one per line); local paths or fsspec URLs (file://, s3://… with the matching fsspec package)."),
    out: str = typer.Option(..., "--out", "-o", help="Results file, .parquet or .csv (a path or an fsspec URL): one row per image (path, score, normalized, decision, threshold, error, map)."),
    engine: JobEngineChoice = typer.Option(JobEngineChoice.local, "--engine", help="local: this process. ray: Ray Data, one scoring actor per CPU (or GPU) of the cluster (needs the distributed extra; docs/scale.md)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (RUN_DIR/model.onnx with ONNX Runtime) or torch."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="ONNX file (default: RUN_DIR/model.onnx)."),
    threshold: str = typer.Option("far", help="far (default), f1, or a raw image score."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    maps: Optional[str] = typer.Option(None, "--maps", help="Also save every anomaly map as MAPS/<path below SOURCE>.npy (float32, original size); a path or an fsspec URL."),
    device: str = typer.Option("cpu", help="cpu, or cuda (one GPU per actor with --engine ray)."),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS_HELP),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="With --engine ray: CPUs (and ONNX Runtime threads) of each scoring actor."),
    force: bool = typer.Option(False, "--force", help="Replace an existing results file."),
) -> None:
    """Score an archive of images into one Parquet/CSV table; unreadable files become rows with their error."""
    from glass_ad.inference.batch import predict_batch

    try:
        if engine is JobEngineChoice.local and (address or workers):
            raise ValueError("--address and --workers need --engine ray")
        summary = predict_batch(
            run_dir, source, out, engine=engine.value, fmt=fmt, onnx_path=onnx, threshold=threshold,
            batch_size=batch_size, device=device, maps_dir=maps, address=address, num_cpus=workers,
            cpus_per_worker=cpus_per_worker, force=force,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError) as error:
        _fail(str(error))
        return
    typer.echo(
        f"{summary['images']} images ({summary['errors']} unreadable, {summary['anomalous']} anomalous) in "
        f"{summary['seconds']:.1f} s ({summary['images_per_s']} images/s, {summary['engine']}) -> {summary['results']}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())

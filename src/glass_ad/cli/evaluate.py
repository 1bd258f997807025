"""Commands that evaluate a trained model: `glass test`, `glass info`, `glass calibrate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from glass_ad.cli.common import (
    BIT_DEPTH_HELP,
    FORCE_HELP,
    app,
    fail,
    guarded,
    hold_for_command,
    one_line_errors,
    print_report,
    remove_if_left_empty,
    setup_logging,
    torch_threads,
)
from glass_ad.cli.options import EngineChoice


@app.command()
@guarded
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
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for PyTorch."),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Score histogram and worst-case grid."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    allow_dropped: bool = typer.Option(False, "--allow-dropped", help="Exit 0 even when test images could not be used (they are still listed in the report)."),
    bit_depth: Optional[int] = typer.Option(None, "--bit-depth", help=BIT_DEPTH_HELP),
    engine: EngineChoice = typer.Option(EngineChoice.torch, help="torch, onnx (ONNX Runtime) or openvino: score the test set with the engine that is deployed (same uint8 input as `glass predict`)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Exported model for --engine onnx/openvino (default: RUN_DIR/model.onnx, RUN_DIR/model.xml)."),
    providers: str = typer.Option("cpu", help="ONNX Runtime execution provider for --engine onnx (as `glass predict`)."),
) -> None:
    """Evaluate a trained model on DATA_DIR/test (metrics never feed back into the model).

    Every test image that could not be used is listed (JSON: `dropped`); the command then fails unless
    --allow-dropped. Existing results are replaced only with --force. --engine onnx|openvino scores the
    exported model (`glass export`) instead of PyTorch, on the same rounded uint8 inputs.
    """
    from glass_ad.evaluation.tester import test as run_test
    from glass_ad.model.checkpoint import checkpoint_path

    setup_logging(verbose)
    torch_threads(threads)
    report = report or checkpoint_path(run_dir).parent / "test_report"
    with one_line_errors():
        _test_preflight(run_dir, data_dir, json_out, report if pictures else None, force, dataset, category, onnx)
        runner = _test_engine(run_dir, engine.value, onnx, device, threads, providers)
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
            engine=runner,
        )
    print_report(result)
    _check_dropped(result, json_out, allow_dropped)


def _test_engine(run_dir, name: str, model_file, device: str, threads, providers: str):
    """The engine `glass test` scores with: the `inference.engines` engine of `glass predict` (None for the
    default torch engine: the tester runs the model itself, the same arithmetic)."""
    if name == "torch":
        return None
    from glass_ad.inference.engines import create_engine
    from glass_ad.model.checkpoint import Checkpoint

    return create_engine(
        name, run_dir, Checkpoint.load(run_dir), device=device, model_path=model_file, threads=threads, providers=providers
    )


def _test_preflight(run_dir, data_dir, json_out, report_dir, force, layout="auto", category=None, model_file=None) -> None:
    """Outputs of `glass test`: not an input, not silently replaced, writable, locked for the command; the
    model and the data set are read first, so a refusal leaves nothing behind."""
    from glass_ad.data.layouts import load_dataset
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import ensure_writable, output_locks, refuse_existing, refuse_input_overlap

    inputs = [checkpoint_path(run_dir), data_dir, *([model_file] if model_file is not None else [])]
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
    remove_if_left_empty(*folders)
    for folder in folders:
        if folder is not None:
            ensure_writable(folder)
    hold_for_command(output_locks(folders))


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
        fail(f"{'; '.join(parts)} ({where}); fix them, or pass --allow-dropped to accept the smaller test set")



@app.command()
def info(run_dir: Path = typer.Argument(...)) -> None:
    """Show what a checkpoint holds: the decision (threshold, estimated false-alarm rate with its 95 %
    interval), config, hypothesis, thresholds, feature geometry, and per epoch the losses and separations of
    each branch (a warning when GAS stayed near chance)."""
    from glass_ad.model.checkpoint import Checkpoint
    from glass_ad.model.memory_bank import describe_bank
    from glass_ad.training.validation import branch_summary

    with one_line_errors():
        checkpoint = Checkpoint.load(run_dir)
    calibration = checkpoint.calibration
    geometry = checkpoint.geometry.to_dict() if checkpoint.geometry is not None else checkpoint.extra.get("geometry")
    summary = {
        "decision": calibration.decision_line(),  # first: what the stored decision promises, and how surely
        "format": checkpoint.format,
        "package_version": checkpoint.package_version or "unknown (written before 0.1.0 recorded it)",
        "provenance": checkpoint.provenance or "not recorded (trained through the library, or before it was recorded)",
        "input_bit_depth": checkpoint.bit_depth or "the file's own depth",
        "backbone": checkpoint.backbone.to_dict(),
        "score": (
            "hybrid: the discriminator's logit + the distance to the nearest normal training patch (+ that of "
            "the patch's windows, with a coarse scale); the paper's method, the discriminator alone, is --score glass"
            if checkpoint.config.score == "hybrid"
            else "glass: the discriminator alone (the paper's method)"
        ),
        "memory_bank": describe_bank(checkpoint.memory_bank) or "none (the discriminator alone)",
        "hypothesis": checkpoint.hypothesis,
        "spectrum": checkpoint.spectrum,
        "hypothesis_check": checkpoint.training.extra.get("branch_check") or "not run (hypothesis forced, or trained before the check)",
        "calibration": {
            k: v for k, v in calibration.to_dict().items() if k not in ("holdout_image_scores", "holdout_map_maxima")
        },
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



@app.command()
@guarded
def calibrate(
    run_dir: Path = typer.Argument(..., help="Run directory written by `glass train` (or its model.pt)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Labelled validation folder: good/ and <defect>/ subfolders (+ optional masks), not the test set: adds F1-optimal thresholds."),
    normals: Optional[Path] = typer.Option(None, "--normals", help="Folder of good images the model never trained on (searched recursively): pooled with the held-out normals to re-fit the false-alarm threshold, its estimate and the region threshold."),
    batch_size: int = typer.Option(8, min=1),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    force: bool = typer.Option(False, "--force", help="Replace F1 thresholds stored by an earlier `glass calibrate --val` (default: refuse)."),
) -> None:
    """Tighten the false-alarm operating point with more good images (--normals), and/or add F1-optimal
    image/pixel thresholds from a labelled validation set (--val)."""
    from glass_ad.evaluation.calibration import calibrate_normals, calibrate_run
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import OutputError, ensure_writable, output_lock

    setup_logging(verbose)
    if val is None and normals is None:
        fail("give --normals DIR (good images never trained on) and/or --val DIR (a labelled validation set)")
    result = None
    with one_line_errors():
        f1 = Checkpoint.load(run_dir).calibration.f1
        if val is not None and f1 is not None and not force:
            raise OutputError(
                f"{checkpoint_path(run_dir)} already holds F1 thresholds (from {f1.val_dir}); pass --force to replace them"
            )
        hold_for_command(output_lock(ensure_writable(checkpoint_path(run_dir).parent, what="run folder")))
        if normals is not None:
            pooled = calibrate_normals(run_dir, normals, device=device, batch_size=batch_size, progress=not quiet)
        if val is not None:
            result = calibrate_run(run_dir, val, device=device, batch_size=batch_size, progress=not quiet)
    if normals is not None:
        for entry in pooled["skipped"]:
            typer.secho(f"skipped: {entry}", fg=typer.colors.YELLOW, err=True)
        typer.echo(
            f"pooled {pooled['normal_images']} good images from {normals} with the earlier normal evidence "
            f"({pooled['pooled_images']} images in all)"
        )
        typer.echo(f"before: {pooled['before']}")
        typer.echo(f"now:    {pooled['after']}")
        typer.echo(
            f"pixel (region) threshold {pooled['previous_pixel_threshold']:.4f} -> {pooled['pixel_threshold']:.4f}; "
            f"saved into the checkpoint (export again: `glass export RUN --force`)"
        )
    if result is None:
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

"""Commands that run a trained model: `glass predict`, `glass export`, `glass serve`, `glass report`,
`glass predict-batch`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from glass_ad.cli.common import (
    BIT_DEPTH_HELP,
    app,
    fail,
    guarded,
    hold_for_command,
    literal_help,
    one_line_errors,
    remove_if_left_empty,
    torch_threads,
)
from glass_ad.cli.options import ADDRESS_HELP, WORKERS_HELP, EngineChoice, JobEngineChoice, PredictFormat


@app.command()
@guarded
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
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (PyTorch or ONNX Runtime)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    force: bool = typer.Option(False, "--force", help="Replace predictions.* and overlays of an earlier run in OUT (default: refuse)."),
    bit_depth: Optional[int] = typer.Option(None, "--bit-depth", help=BIT_DEPTH_HELP),
    providers: str = typer.Option("cpu", help="ONNX Runtime execution provider for --engine onnx: cpu, cuda, openvino, tensorrt, directml, coreml, auto."),
    save_maps: Optional[str] = typer.Option(None, "--save-maps", help="Also write raw maps at the original size into OUT/maps: npy (float32) or png (16-bit, the colour scale onto 0..65535)."),
    save_masks: bool = typer.Option(False, "--save-masks", help="Also write the predicted regions as 0/255 PNGs into OUT/masks."),
    outlines: str = typer.Option("anomalous", help="Red region outlines on the overlays: anomalous (only images decided anomalous), all, none."),
    min_area: int = typer.Option(0, "--min-area", min=0, help="Smallest region (pixels) outlined and listed in the JSON boxes."),
) -> None:
    """Score images: raw and normalized score, decision, heatmap overlay; one line per unreadable file."""
    from glass_ad.inference.predict import predict_files, summary_line

    if engine.value == "torch":
        torch_threads(threads)
    with one_line_errors():
        _predict_preflight(run_dir, paths, out, fmt.value, overlays, onnx, force, bool(save_maps), save_masks, threshold)
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
    if summary["n_images"] == 0:
        fail(f"no image could be processed ({summary['n_failed']} input(s) skipped, see above)")
    typer.echo(summary_line(summary))


def _predict_preflight(run_dir, paths, out, fmt, overlays, onnx, force, maps=False, masks=False, threshold="far") -> None:
    from glass_ad.inference.predict import check_outputs, output_paths
    from glass_ad.model.checkpoint import Checkpoint
    from glass_ad.safety import ensure_writable, output_lock, refuse_existing

    check_outputs(run_dir, paths, out, fmt=fmt, overlays=overlays, onnx_path=onnx)
    Checkpoint.load(run_dir).calibration.operating_point(threshold)  # a bad --threshold fails before any folder is made
    refuse_existing(output_paths(out, fmt, overlays, maps, masks), force=force)
    remove_if_left_empty(out)
    ensure_writable(out)
    hold_for_command(output_lock(out))


@app.command()
@guarded
def export(
    run_dir: Path = typer.Argument(..., help="Run directory written by `glass train` (or its model.pt)."),
    fmt: str = typer.Option("onnx", "--format", help=literal_help("Export format: onnx, or openvino (IR; pip install \"glass-ad[openvino]\").")),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: RUN_DIR/model.onnx, RUN_DIR/model.xml, RUN_DIR/model_<precision>.xml)."),
    opset: int = typer.Option(17, help="ONNX opset (>= 17)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare ONNX Runtime with PyTorch on a random batch."),
    force: bool = typer.Option(False, "--force", help="Replace an existing ONNX file at the target (default: refuse)."),
    preprocessing: bool = typer.Option(True, "--preprocessing/--no-preprocessing", help="Resize and crop inside the graph (frames of any size in, map on the frame out); --no-preprocessing: S×S crops in."),
    precision: str = typer.Option("fp32", help="OpenVINO only: fp32, fp16 (half-size weights) or int8 (needs --calibration). ONNX is exported in fp32."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="OpenVINO int8: the training data set (its train/good) or a folder of normal images."),
    bank_product: str = typer.Option("auto", "--bank-product", help=literal_help("OpenVINO int8 of a hybrid model: the memory bank's product q·b in int8, fp32, or auto (int8 where it is timed faster on this CPU: export on the kind of CPU that runs the model).")),
) -> None:
    """Export the whole inference graph (uint8 pixels → scores and map) as one ONNX model or OpenVINO IR."""
    from glass_ad.inference.export import ONNX_NAME, export_onnx
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import ensure_writable, output_lock, refuse_existing, refuse_input_overlap

    kind = fmt.lower()
    if kind not in ("onnx", "openvino"):
        fail(f"unknown export format {fmt!r} (supported: onnx, openvino)")
    if kind == "openvino":
        _export_openvino(run_dir, out, precision, calibration, force, bank_product)
        return
    if precision.lower() != "fp32" or calibration is not None or bank_product != "auto":
        asked = (
            f"--precision {precision}"
            if precision.lower() != "fp32"
            else "--calibration" if calibration is not None else f"--bank-product {bank_product}"
        )
        fail(
            f"{asked} is not supported with --format onnx (the ONNX export is float32 only); for int8 use "
            "--format openvino --precision int8 --calibration DATA"
        )
    target = out if out is not None else checkpoint_path(run_dir).parent / ONNX_NAME
    with one_line_errors():
        refuse_input_overlap(target, [checkpoint_path(run_dir)], what="export target")
        Checkpoint.load(run_dir)
        refuse_existing([target], force=force)
        remove_if_left_empty(target.parent)
        hold_for_command(output_lock(ensure_writable(target.parent, what="export folder")))
        result = export_onnx(run_dir, target, opset=opset, verify=verify, preprocessing=preprocessing)
    typer.echo(f"saved {result.path} (opset {result.opset}, {result.exporter} exporter)")
    if result.max_abs_diff:
        diffs = ", ".join(f"{name} {value:.1e}" for name, value in result.max_abs_diff.items())
        typer.echo(f"ONNX Runtime vs PyTorch, max |difference|: {diffs}")


def _export_openvino(
    run_dir: Path, out: Optional[Path], precision: str, calibration: Optional[Path], force: bool, bank_product: str = "auto"
) -> None:
    from glass_ad.inference.openvino_export import XML_NAME, export_openvino
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import ensure_writable, output_lock, refuse_existing, refuse_input_overlap

    default = XML_NAME if precision == "fp32" else f"model_{precision}.xml"
    target = out if out is not None else checkpoint_path(run_dir).parent / default
    with one_line_errors():
        refuse_input_overlap(target, [checkpoint_path(run_dir)], what="export target")
        Checkpoint.load(run_dir)
        refuse_existing([target, target.with_suffix(".bin")], force=force)
        remove_if_left_empty(target.parent)
        hold_for_command(output_lock(ensure_writable(target.parent, what="export folder")))
        result = export_openvino(run_dir, target, precision=precision, calibration=calibration, bank_product=bank_product)
    extra = f", calibrated on {result.calibration_images} normal images" if result.calibration_images else ""
    extra += f" and {result.synthetic_images} synthetic anomalies" if result.synthetic_images else ""
    typer.echo(f"saved {result.path} (OpenVINO IR, {result.precision}{extra}; run it with INFERENCE_PRECISION_HINT=f32)")
    if result.bank_product is not None:
        typer.echo(result.bank_line())
    if result.check is not None:
        typer.echo(result.check.line())
    if result.speedup is not None:
        typer.echo(result.speed_line())
    if result.max_abs_diff:
        diffs = ", ".join(f"{name} {value:.1e}" for name, value in result.max_abs_diff.items())
        typer.echo(f"OpenVINO vs ONNX Runtime fp32, max |difference|: {diffs}")



def _serve_extra_missing(error: ImportError) -> None:
    fail(f"{error}: `glass serve` and `glass report` need the serve extra (pip install \"glass-ad[serve]\")")


@app.command()
def serve(
    runs: list[str] = typer.Argument(..., help="Run directories (or model.pt files) to serve; NAME=RUN_DIR names a model (default: the folder name)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; the default accepts local connections only."),
    port: int = typer.Option(8000, min=0, max=65535),
    engine: EngineChoice = typer.Option(EngineChoice.torch, help="torch, onnx (RUN_DIR/model.onnx from `glass export`) or openvino (RUN_DIR/model.xml from `glass export --format openvino`)."),
    db: Optional[str] = typer.Option(None, "--db", help="Inspection log: postgresql://user:pw@host/db, any SQLAlchemy URL, or a SQLite file (default DATA_DIR/inspections.db)."),
    data_dir: Path = typer.Option(Path("serve-data"), "--data-dir", help="The service's folder: SQLite log, stored overlays, upload scratch files."),
    token: Optional[str] = typer.Option(None, "--token", envvar="GLASS_SERVE_TOKEN", help="API token required on every route except /healthz and /readyz (env GLASS_SERVE_TOKEN)."),
    threshold: str = typer.Option("far", help="far, f1 (from `glass calibrate`), or a raw score."),
    max_batch: int = typer.Option(8, min=1, help="Largest micro-batch of concurrent requests per network pass (1: no batching)."),
    batch_wait_ms: float = typer.Option(2.0, min=0.0, help="How long a request may wait for others to share its batch."),
    max_upload_mb: float = typer.Option(20.0, min=0.001, help="Largest request body."),
    device: str = typer.Option("auto", help="Device of the torch engine."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (PyTorch or ONNX Runtime)."),
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
        torch_threads(threads)
    with one_line_errors(DatabaseError):
        settings = ServeSettings(
            runs=list(runs), data_dir=data_dir, db=db, engine=engine.value, device=device, threshold=threshold,
            threads=threads, max_batch=max_batch, max_wait_ms=batch_wait_ms, token=token,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        )  # fmt: skip
        application = create_app(settings)
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
    with one_line_errors(DatabaseError):
        path = write_report(db, out, bucket=bucket)
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
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="With --engine ray: CPUs (and ONNX Runtime threads) of each scoring actor."),
    force: bool = typer.Option(False, "--force", help="Replace an existing results file."),
) -> None:
    """Score an archive of images into one Parquet/CSV table; unreadable files become rows with their error."""
    from glass_ad.inference.batch import predict_batch

    with one_line_errors():
        if engine is JobEngineChoice.local and (address or workers):
            raise ValueError("--address and --workers need --engine ray")
        summary = predict_batch(
            run_dir, source, out, engine=engine.value, fmt=fmt, onnx_path=onnx, threshold=threshold,
            batch_size=batch_size, device=device, maps_dir=maps, address=address, num_cpus=workers,
            cpus_per_worker=cpus_per_worker, force=force,
        )  # fmt: skip
    typer.echo(
        f"{summary['images']} images ({summary['errors']} unreadable, {summary['anomalous']} anomalous) in "
        f"{summary['seconds']:.1f} s ({summary['images_per_s']} images/s, {summary['engine']}) -> {summary['results']}"
    )

"""Commands that train: `glass train` (also under torchrun), `glass demo`, `glass suite`, `glass ablate`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from glass_ad.cli import options as opt
from glass_ad.cli.common import (
    app,
    fail,
    guarded,
    hold_for_command,
    on_command_end,
    one_line_errors,
    print_report,
    remove_if_left_empty,
    setup_logging,
)
from glass_ad.cli.options import (
    JobEngineChoice,
    StudyChoice,
    SuiteDatasetChoice,
)
from glass_ad.config import R2_PER_R1, by_recipe, make_config


@app.command()
@guarded
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
    image_shape: opt.ImageShape = None,
    resize: opt.Resize = None,
    fit: Annotated[Optional[str], typer.Option(help=f"crop (reference), stretch (keep the whole image), auto (stretch elongated images); {by_recipe('fit')}.")] = None,
    seed: opt.Seed = opt.SEED,
    category: Annotated[Optional[str], typer.Option(help="Category folder inside DATA_DIR.")] = None,
    dataset: Annotated[str, typer.Option("--dataset", help="Layout: auto, mvtec, mpdd, wfdd, visa, folder.")] = "auto",
    foreground: Annotated[opt.ForegroundChoice, typer.Option(help="Keep LAS anomalies on the object (auto: objects yes, textures no).")] = opt.ForegroundChoice.auto,
    las: opt.Las = True,
    gas: opt.Gas = opt.GasChoice.full,
    adaptor: opt.Adaptor = True,
    r1: opt.R1 = None,
    r2: Annotated[Optional[float], typer.Option(help=f"Hypersphere/manifold outer radius r2 (default {R2_PER_R1:g}·r1; {by_recipe('r2')}).")] = None,
    hypersphere_shell: Annotated[Optional[str], typer.Option(help=f"Hypersphere GAS shell: relative (every copy at least r1 spacings further from the centre than its own patch) or paper ([r'1, 2r'1] only); {by_recipe('hypersphere_shell')}.")] = None,
    branch_check_steps: Annotated[Optional[int], typer.Option(help=f"GLASS-j's branch check: with --hypothesis auto, train the picked branch on a copy for this many steps first (and the other when the pick's GAS stays near chance or the pick is the hypersphere); the pick gives way if its GAS stays near chance, or if it is the hypersphere and the manifold's GAS trains and scores clearly higher on validation ({by_recipe('branch_check_steps')}; 0: the spectrogram rule alone).")] = None,
    embed_dim: Annotated[Optional[int], typer.Option(help="Patch-vector width (default per backbone).")] = None,
    feature_spacing: Annotated[Optional[float], typer.Option(help=f"Scale rule: normal spacing (median nearest-neighbour distance) the features are scaled to; GAS lengths are in this unit ({by_recipe('feature_spacing')}); 0 = raw features, absolute lengths.")] = None,
    patch_fraction: Annotated[Optional[float], typer.Option(help=f"Fraction of the batch's patch vectors each branch trains on per iteration ({by_recipe('patch_fraction')}).")] = None,
    max_patches_per_image: Annotated[Optional[int], typer.Option(help=f"At most this many patch vectors per image for each branch per iteration, so larger inputs cost about as much per step ({by_recipe('max_patches_per_image')}; 0 = no cap).")] = None,
    las_weight: Annotated[Optional[float], typer.Option(help=f"Weight of the LAS term in the loss ({by_recipe('las_weight')}; the reference: 1).")] = None,
    las_ignore_margin: Annotated[Optional[int], typer.Option(help=f"Leave out of the LAS loss the patches within this many patches of a mask but outside it ({by_recipe('las_ignore_margin')}; 0: labelled normal, as the reference).")] = None,
    las_fraction: Annotated[Optional[float], typer.Option(help=f"Fraction of each batch's images that get a LAS copy ({by_recipe('las_fraction')}; 1: every image, as the reference; less is cheaper).")] = None,
    las_variants: Annotated[Optional[int], typer.Option(help=f"LAS copies per image whose backbone features are computed once and re-used ({by_recipe('las_variants')}; 0: a fresh copy at every visit, as the reference).")] = None,
    gas_patch_fraction: Annotated[Optional[float], typer.Option("--gas-patch-fraction", "--gas-fraction", help=f"Fraction of those normal patch vectors that go through gradient ascent ({by_recipe('gas_patch_fraction')}).")] = None,
    texture_colour: Annotated[Optional[str], typer.Option(help=f"LAS texture colour: auto (grey for grey products), colour (reference), grey; {by_recipe('texture_colour')}.")] = None,
    selection: Annotated[Optional[str], typer.Option(help=f"Model selection: worst (worse of LAS and the unseen strokes/blobs family), las, or agreement (D ranks held-out normal patches like their nearest-neighbour distance; experimental); {by_recipe('selection')}.")] = None,
    score: Annotated[Optional[str], typer.Option(help=f"hybrid (the discriminator's logit + distances to the nearest normal training patch and window, each standardised on held-out normals) or glass (the discriminator alone: the paper's method); {by_recipe('score')}.")] = None,
    bank_neighbours: Annotated[Optional[int], typer.Option(help=f"Hybrid score: compare each image with the stored patches of its N nearest training images ({by_recipe('bank_neighbours')}; 0: with one coreset of all training patches, --memory-bank-fraction).")] = None,
    bank_patches: Annotated[Optional[int], typer.Option(help=f"Hybrid score: patch vectors kept per training image, a k-centre coreset of its patches ({by_recipe('bank_patches')}).")] = None,
    bank_descriptor: Annotated[Optional[str], typer.Option(help=f"Hybrid score: how the nearest training images are found: mean_spread (the mean and per-channel spread of an image's patch vectors) or mean ({by_recipe('bank_descriptor')}).")] = None,
    bank_coarse_window: Annotated[Optional[int], typer.Option(help=f"Hybrid score: a coarse third part, the distance of the means of W×W windows of the patch grid (stride W/2) to those of the same nearest training images ({by_recipe('bank_coarse_window')}; 0: none; needs --bank-neighbours > 0).")] = None,
    bank_coarse_rows: Annotated[Optional[int], typer.Option(help=f"Hybrid score: window means kept per training image, a k-centre coreset ({by_recipe('bank_coarse_rows')}).")] = None,
    memory_bank_fraction: Annotated[Optional[float], typer.Option(help=f"Hybrid score with --bank-neighbours 0: share of the training patch vectors kept in the memory bank ({by_recipe('memory_bank_fraction')}).")] = None,
    ascent_steps: Annotated[Optional[int], typer.Option(help=f"Gradient-ascent steps of GAS ({by_recipe('ascent_steps')}).")] = None,
    ascent_step_size: Annotated[Optional[float], typer.Option(help=f"Gradient-ascent step size ({by_recipe('ascent_step_size')}).")] = None,
    project_every: Annotated[Optional[int], typer.Option(help=f"Truncated projection every N ascent steps ({by_recipe('project_every')}).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Images per step (all processes together under torchrun; {by_recipe('batch_size')}).")] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"Adaptor learning rate (the discriminator uses 2·lr; {by_recipe('lr')}).")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help=f"constant (reference) or cosine (decay to 0 over --epochs; {by_recipe('lr_schedule')}).")] = None,
    ema_epochs: Annotated[Optional[float], typer.Option(help=f"Validate, select and save a moving average of the adaptor's and discriminator's weights spanning about this many epochs ({by_recipe('ema_epochs')}; 0 = the live weights, as the reference).")] = None,
    early_stopping: Annotated[Optional[bool], typer.Option("--early-stopping/--no-early-stopping", help=f"Stop when validation no longer improves ({by_recipe('early_stopping')}).")] = None,
    patience: Annotated[Optional[int], typer.Option(help=f"Stop when the smoothed validation score has not risen for this many epochs, once some epoch's GAS has trained ({by_recipe('patience')}).")] = None,
    stop_window: Annotated[Optional[int], typer.Option(help=f"Epochs averaged by the stopping rule ({by_recipe('stop_window')}).")] = None,
    time_limit_min: Annotated[Optional[float], typer.Option("--time-limit", help=f"Training wall-clock limit in minutes: no epoch starts that would end past it, with the seconds the finishing is expected to take kept free ({by_recipe('time_limit_min')}; 0: none).")] = None,
    holdout_fraction: Annotated[Optional[float], typer.Option("--holdout-fraction", "--holdout", help=f"Fraction of normal images held out for validation and thresholds ({by_recipe('holdout_fraction')}).")] = None,
    target_false_alarm_rate: Annotated[Optional[float], typer.Option("--target-false-alarm-rate", "--far", help=f"Target false-alarm rate of the stored threshold ({by_recipe('target_false_alarm_rate')}).")] = None,
    val: Annotated[Optional[Path], typer.Option("--val", help="Labelled validation folder (good/ + <defect>/): also store F1-optimal thresholds (as `glass calibrate`).")] = None,
    precision: Annotated[Optional[str], typer.Option(help=f"Training arithmetic: auto (bf16 where the CPU has AMX bf16 units or the GPU bf16), fp32, bf16 ({by_recipe('precision')}).")] = None,
    backbone_chunk: Annotated[Optional[int], typer.Option(help="Images per backbone pass (0: the whole batch); default: by batch size and input area (the same on every run).")] = None,
    cache_features: Annotated[Optional[bool], typer.Option("--cache-features/--no-cache-features", "--cache/--no-cache", help=f"Compute the normal images' backbone features once instead of every iteration ({by_recipe('cache_features')}).")] = None,
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
    from glass_ad.training.distributed import is_main_process

    overrides = opt.config_values(locals())  # every parameter named like a GlassConfig field
    if overrides.get("max_patches_per_image") == 0:  # 0: no cap (None in the config)
        del overrides["max_patches_per_image"]
    setup_logging(verbose)
    main_rank = is_main_process()  # torchrun: rank 0 checks, locks and reports
    try:
        with one_line_errors():
            config = _train_config(ctx, config_file, recipe.value, overrides)
            if feature_spacing is not None:  # 0: raw features, absolute GAS lengths
                config = config.replace(feature_spacing=feature_spacing if feature_spacing > 0 else None).validate()
            if max_patches_per_image == 0:
                config = config.replace(max_patches_per_image=None).validate()
            if main_rank:
                _train_preflight(
                    data_dir, out, config, force, bit_depth, category, dataset, textures, weights, val, resume, config_file
                )
            else:
                from glass_ad.data.io import declared_bit_depth

                hold_for_command(declared_bit_depth(bit_depth))
            result = run_training(data_dir, out, config, category=category, layout=dataset, progress=not quiet, resume=resume)
    except KeyboardInterrupt as interrupt:
        _interrupted(interrupt, data_dir, out)
        return
    if not main_rank:
        return
    _record_run(data_dir, dataset, category, result.checkpoint)
    typer.echo(
        f"saved {result.checkpoint} (hypothesis {result.hypothesis}, {result.epochs_run} epochs, "
        f"stopped by {result.stopped_by}, model of epoch {result.best_epoch}, {result.wall_time_s:.0f} s)"
    )
    calibration = result.calibration
    if not calibration.is_fallback:
        typer.echo(
            f"image threshold {calibration.image_threshold:.4f} for a "
            f"{100 * (calibration.target_false_alarm_rate or 0.0):.1f} % false-alarm rate "
            f"(from {calibration.holdout_images} held-out normal images)"
        )
        typer.echo(calibration.decision_line())
    if val is not None:
        from glass_ad.evaluation.calibration import calibrate_run

        try:
            f1 = calibrate_run(result.checkpoint, val, device=device, progress=not quiet)
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            fail(f"F1 calibration on {val}: {error}")
        typer.echo(f"F1-optimal image threshold {f1['f1_image_threshold']:.4f} (F1 {100 * f1['f1_image_f1']:.1f} on {val})")


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


def _train_preflight(
    data_dir, out, config, force, bit_depth, category, layout, textures, weights, val, resume=False, config_file=None
) -> None:
    """Everything `glass train` can check before the first image: outputs, inputs, disk; then the run
    folder's lock, the declared bit depth and clean interrupts (resume.py) for the whole command."""
    from glass_ad.data.io import check_bit_depth, declared_bit_depth
    from glass_ad.safety import output_lock
    from glass_ad.training.preflight import preflight_train
    from glass_ad.training.resume import interruptible

    check_bit_depth(bit_depth)
    onnx_file = Path(out) / "model.onnx"
    stale = force and onnx_file.exists()
    remove_if_left_empty(out)  # a refusal after the folder was made leaves no empty run folder
    preflight_train(
        data_dir, out, config, force=force, category=category, layout=layout, textures=textures, weights=weights, val=val,
        resume=resume, config_file=config_file,
    )
    hold_for_command(output_lock(out), declared_bit_depth(bit_depth), interruptible())
    if stale:

        def warn_stale() -> None:
            if (Path(out) / "model.pt").stat().st_mtime > onnx_file.stat().st_mtime:
                typer.secho(
                    f"warning: {onnx_file} was exported from the replaced model; re-export it: glass export {out} --force",
                    fg=typer.colors.YELLOW, err=True,
                )  # fmt: skip

        on_command_end(warn_stale)



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
        fail(str(error))
        return
    data = make_demo_dataset(out / "data", seed=seed)
    typer.echo(f"demo data: {data}")
    result = run_training(data, out / "run", config, progress=not quiet)
    typer.echo(f"trained in {result.wall_time_s:.0f} s → {result.checkpoint}")
    report = run_test(out / "run", data, json_path=out / "metrics.json", report_dir=out / "report", progress=not quiet)
    print_report(report)
    from glass_ad.research.previews import heatmap_grid

    heatmaps = heatmap_grid(out / "run", data, out / "report" / "heatmaps.png", count=8, columns=2)
    typer.echo(f"metrics: {out / 'metrics.json'}; pictures: {out / 'report'} (heatmaps: {heatmaps})")





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
    redo: opt.Redo = False,
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Score histogram and worst cases per category."),
    device: opt.Device = opt.DEVICE,
    num_threads: opt.NumThreads = None,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    engine: opt.JobEngine = JobEngineChoice.local,
    address: opt.Address = None,
    workers: opt.Workers = None,
    cpus_per_job: opt.CpusPerJob = 1.0,
) -> None:
    """Train and test every category; resumable (finished categories are skipped), one results table."""
    from glass_ad.research.suite import run_suite

    overrides = opt.config_values(locals())
    setup_logging(verbose)
    with one_line_errors():
        config = make_config(recipe.value, **overrides)
        only = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
        results = run_suite(
            root, out, config, dataset=dataset.value, categories=only, model=model, redo=redo,
            pictures=pictures, progress=not quiet, echo=typer.echo,
            ray_options=_ray_options(engine, address, workers, cpus_per_job, device),
        )  # fmt: skip
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
    redo: opt.Redo = False,
    pictures: bool = typer.Option(False, "--pictures/--no-pictures"),
    device: opt.Device = opt.DEVICE,
    num_threads: opt.NumThreads = None,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    engine: opt.JobEngine = JobEngineChoice.local,
    address: opt.Address = None,
    workers: opt.Workers = None,
    cpus_per_job: opt.CpusPerJob = 1.0,
) -> None:
    """Run the variants of one ablation (paper Table 4 / Fig. 8) on one category; resumable, one table."""
    from glass_ad.research.suite import run_ablation

    overrides = opt.config_values(locals())
    setup_logging(verbose)
    with one_line_errors():
        config = make_config(recipe.value, **overrides)
        results = run_ablation(
            root, out, config, study.value, values=values.split(",") if values else None, category=category,
            dataset=dataset.value, redo=redo, pictures=pictures, progress=not quiet, echo=typer.echo,
            ray_options=_ray_options(engine, address, workers, cpus_per_job, device),
        )  # fmt: skip
    _print_results_table(out, results)

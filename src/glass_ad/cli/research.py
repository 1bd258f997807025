"""Research tools: `glass benchmark`, `glass backbones`, `glass make-weak-defects`, `glass preview …`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from glass_ad.cli.common import (
    app,
    one_line_errors,
)
from glass_ad.cli import options as opt
from glass_ad.cli.options import ForegroundChoice, ProjectionChoice, RecipeChoice
from glass_ad.config import by_recipe, make_config


@app.command()
def benchmark(
    backbone: str = typer.Option(opt.BACKBONE),
    image_size: int = typer.Option(opt.IMAGE_SIZE),
    image_shape: opt.ImageShape = None,
    recipe: RecipeChoice = typer.Option(RecipeChoice.fast),
    repeats: int = typer.Option(5, help="Timed batches per throughput figure."),
    iterations: int = typer.Option(4, help="Timed training iterations."),
    precision: Optional[str] = typer.Option(None, help=f"Training arithmetic: auto, fp32, bf16 ({by_recipe('precision')})."),
    max_patches_per_image: Optional[int] = typer.Option(None, help=f"Patch-vector cap per image and branch ({by_recipe('max_patches_per_image')}; 0 = none)."),
    las_fraction: Optional[float] = typer.Option(None, help=f"Share of each batch's images that get a LAS copy ({by_recipe('las_fraction')})."),
    threads: Optional[int] = typer.Option(None, min=1),
    device: str = typer.Option("auto"),
    json_out: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Throughput (backbone only vs full inference, batch 8 and 1), training s/iteration by branch, peak RAM."""
    from glass_ad.research.benchmark import format_benchmark, run_benchmark

    shape = opt.config_values({"image_shape": image_shape, "image_size": image_size})  # "288x720" → (288, 720)
    config = make_config(recipe.value, backbone=backbone, precision=precision, num_threads=threads, device=device, **shape)
    if max_patches_per_image is not None:
        config = config.replace(max_patches_per_image=max_patches_per_image or None).validate()
    if las_fraction is not None:
        config = config.replace(las_fraction=las_fraction).validate()
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

    with one_line_errors():
        folders = make_weak_defects(
            src, out, beta, textures=textures, seed=seed, count=count, foreground=foreground, link=not copy, echo=typer.echo
        )
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

    with one_line_errors():
        _preview_preflight(out, data_dir, textures)
        path = las_grid(
            data_dir, out, textures=textures, count=count, image_size=image_size, foreground=foreground.value,
            seed=seed, category=category, layout=dataset,
        )  # fmt: skip
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

    with one_line_errors():
        _preview_preflight(out, _model_file(run_dir), data_dir, textures)
        path = feature_projection(
            run_dir, data_dir, out, images=images, method=method.value, points=points, textures=textures,
            seed=seed, category=category, layout=dataset,
        )  # fmt: skip
    typer.echo(f"saved {path}")


@preview_app.command("scores")
def preview_scores(
    suite_dir: Path = typer.Argument(..., help="Output folder of `glass suite`/`glass ablate` (or one run folder with scores.csv)."),
    out: Path = typer.Option(Path("score_histograms.png"), "--out", "-o"),
    bins: int = typer.Option(30, min=2),
) -> None:
    """Image-score histograms, one panel per category, with the stored thresholds."""
    from glass_ad.research.previews import score_histograms

    with one_line_errors():
        _preview_preflight(out, suite_dir)
        path = score_histograms(suite_dir, out, bins=bins)
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

    with one_line_errors():
        _preview_preflight(out, _model_file(run_dir), data_dir)
        path = heatmap_grid(run_dir, data_dir, out, count=count, category=category, layout=dataset, columns=columns)
    typer.echo(f"saved {path}")


# --------------------------------------------------------------------------------------------------
# The inspection service (see serve/ and docs/serve.md; needs the `serve` extra).

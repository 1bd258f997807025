"""Option definitions shared by the commands (above all those that train: `glass train`, `glass suite`,
`glass ablate`), and the choices of the others.

Every option that sets a `GlassConfig` field is named like the field (`--gas-patch-fraction` sets
`gas_patch_fraction`); a few older, shorter spellings stay as aliases (`--far`, `--holdout`, `--cache`,
`--threads`, `--gas-fraction`). Defaults come from config.py; None means "the recipe's value".
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from glass_ad.config import GAS_MODES, R2_PER_R1, GlassConfig, by_recipe, field_default, paired_r2, recipe_value

CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(GlassConfig)) - {"recipe"}  # the recipe picks defaults


class HypothesisChoice(str, Enum):
    auto = "auto"
    manifold = "manifold"
    hypersphere = "hypersphere"


class RecipeChoice(str, Enum):
    fast = "fast"
    paper = "paper"


GasChoice = Enum("GasChoice", [(mode, mode) for mode in GAS_MODES], type=str)  # config.GAS_MODES, in order


class ForegroundChoice(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


# --- what to train on and with -----------------------------------------------------------------------
Recipe = Annotated[
    RecipeChoice,
    typer.Option(help=f"fast: cached features, cheaper GAS, early stopping. paper: the reference schedule ({recipe_value('paper', 'epochs')} epochs)."),
]
Backbone = Annotated[str, typer.Option(help="Registered backbone or any timm name (see `glass backbones`).")]
Weights = Annotated[Optional[Path], typer.Option(help="State-dict file with the backbone's pretrained weights.")]
Layers = Annotated[
    Optional[str],
    typer.Option(help="Comma-separated backbone layers (default: the stride-8 and stride-16 stages)."),
]
Textures = Annotated[
    Optional[Path],
    typer.Option(help="Folder of texture images for LAS (e.g. DTD); default: procedural textures."),
]
ImageSize = Annotated[int, typer.Option(help="Network input size (square), or the short side of --image-shape.")]
ImageShape = Annotated[
    Optional[str],
    typer.Option(
        help="Rectangular network input HEIGHTxWIDTH (multiples of 8), e.g. 288x704 for 500×1260 images; "
        "default: chosen by --fit auto for elongated images of one aspect ratio, else square."
    ),
]
Resize = Annotated[Optional[int], typer.Option(help="Shorter side before the crop (default: image size).")]
Seed = Annotated[int, typer.Option(help="Seed of every random choice (holdout split, synthesis, initialisation).")]

# --- the method and its ablations --------------------------------------------------------------------
Hypothesis = Annotated[
    HypothesisChoice, typer.Option(help="auto = GLASS-j spectrogram rule; or force GLASS-m / GLASS-h.")
]
Las = Annotated[bool, typer.Option("--las/--no-las", help="Local anomaly synthesis (ablation: off).")]
Gas = Annotated[
    GasChoice, typer.Option(help="GAS ablation: off, noise only, + ascent, full (+ truncated projection).")
]
Adaptor = Annotated[bool, typer.Option("--adaptor/--no-adaptor", help="Linear adaptor (ablation: off).")]
R1 = Annotated[
    Optional[float],
    typer.Option(help=f"Manifold truncation radius r1, in units of the normal spacing (r2 = {R2_PER_R1:g}·r1 unless --r2; {by_recipe('r1')})."),
]
Epochs = Annotated[
    Optional[int], typer.Option(help=f"Maximum epochs ({by_recipe('epochs')}; early stopping: {by_recipe('early_stopping')}).")
]

# --- where it runs -----------------------------------------------------------------------------------
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 …")]
NumThreads = Annotated[Optional[int], typer.Option("--num-threads", "--threads", min=1, help="CPU threads for PyTorch.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")]

# defaults taken from config.py (the one source)
BACKBONE = field_default("backbone")
IMAGE_SIZE = field_default("image_size")
SEED = field_default("seed")
DEVICE = field_default("device")


def config_values(options: dict[str, Any]) -> dict[str, Any]:
    """The `GlassConfig` overrides of a command's options (its parameters named like config fields):
    choices to their values, paths to strings, layers to a tuple, r2 paired with r1. None = not given."""
    values: dict[str, Any] = {}
    for name, value in options.items():
        if name not in CONFIG_FIELDS or value is None:
            continue
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        values[name] = value
    if isinstance(values.get("image_shape"), str):  # "288x704": the short side is the image size
        try:
            height, width = (int(part) for part in values["image_shape"].lower().split("x"))
        except ValueError:
            raise typer.BadParameter(f"must be HEIGHTxWIDTH, e.g. 288x704 (got {values['image_shape']!r})", param_hint="--image-shape") from None
        values["image_shape"] = (height, width)
        values["image_size"] = min(height, width)
    if "layers" in values:
        values["layers"] = tuple(layer.strip() for layer in values["layers"].split(",") if layer.strip())
    r2 = paired_r2(values.get("r1"), values.get("r2"))
    if r2 is not None:
        values["r2"] = r2
    return values


# --- choices and help texts of the other commands ---------------------------------------------------
class PredictFormat(str, Enum):
    json = "json"
    csv = "csv"


class EngineChoice(str, Enum):
    torch = "torch"
    onnx = "onnx"
    openvino = "openvino"



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


ENGINE_HELP = "local: one job after the other in this process. ray: every job a Ray task (needs the distributed extra; docs/scale.md)."
ADDRESS_HELP = "With --engine ray: 'auto' (the cluster of `ray start`) or ray://HOST:PORT; default: start a local Ray for the run."
WORKERS_HELP = "With --engine ray and no --address: CPUs of the local Ray (default: all)."
CPUS_PER_JOB_HELP = "With --engine ray: CPUs each job declares (GPUs: 1 per job with --device cuda)."

# --- where the jobs of a suite or an ablation run ----------------------------------------------------
JobEngine = Annotated[JobEngineChoice, typer.Option("--engine", help=ENGINE_HELP)]
Address = Annotated[Optional[str], typer.Option("--address", help=ADDRESS_HELP)]
Workers = Annotated[Optional[int], typer.Option("--workers", help=WORKERS_HELP)]
CpusPerJob = Annotated[float, typer.Option("--cpus-per-job", help=CPUS_PER_JOB_HELP)]
Redo = Annotated[bool, typer.Option("--redo", help="Recompute runs that already have metrics.json.")]

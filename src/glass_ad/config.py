"""All settings in one typed place, with the paper's defaults.

`GlassConfig` is what a checkpoint stores and what every CLI option overrides. Two recipes exist:

* ``fast`` (default of `make_config` and the CLI) — the same method with a cheaper schedule: cached
  backbone features, gradient ascent on a subset of patches with fewer, longer steps, bf16 arithmetic
  where the hardware has it, 10× learning rates, a moving average of the trained weights as the model
  that is validated and kept, and early stopping on a validation split of normal images plus synthetic
  anomalies. Compared with the reference schedule in docs/benchmarks.md.
* ``paper`` (the dataclass defaults) — the reference schedule: 640 epochs of at most 392 images, 20 ascent steps of η = 0.001 on
  every patch, projections every 5 steps, fresh LAS images every iteration, no early stopping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

Hypothesis = Literal["auto", "manifold", "hypersphere"]
Recipe = Literal["fast", "paper"]
Foreground = Literal["auto", "on", "off"]
# GAS ablation modes, each adding one step to the previous: off (no GAS branch), noise (u + ε),
# ascent (+ gradient ascent), full (+ truncated projection: the method). The one list of them: config
# validation, gas.py, the CLI and the ablation grid all read it.
GasMode = Literal["off", "noise", "ascent", "full"]
GAS_MODES: tuple[str, ...] = get_args(GasMode)
# Hypersphere GAS shell: "relative" raises the paper's [r'1, 2r'1] per vector to at least r1..r2 beyond the
# vector's own distance to the centre (docs/method.md, deviation 18); "paper" keeps [r'1, 2r'1] only.
HypersphereShell = Literal["relative", "paper"]
HYPERSPHERE_SHELLS: tuple[str, ...] = get_args(HypersphereShell)
Fit = Literal["auto", "crop", "stretch"]
FITS: tuple[str, ...] = get_args(Fit)

# The paper's manifold truncation: r2 = 2·r1 (whenever r1 is set and r2 is not).
R2_PER_R1 = 2.0


def paired_r2(r1: float | None, r2: float | None = None) -> float | None:
    """r2 as given, else the paper's 2·r1 (None when neither is given)."""
    if r2 is not None:
        return r2
    return None if r1 is None else R2_PER_R1 * r1


@dataclass
class GlassConfig:
    # --- input & features -------------------------------------------------------------------------
    backbone: str = "efficientnet_lite2"
    layers: tuple[str, ...] | None = None  # None: the backbone's registered default (stride 8 + 16)
    weights: str | None = None  # path to a state dict; None: the backbone's default source
    image_size: int = 288  # center-crop size fed to the network (the short side of a rectangular input)
    # (height, width) of a rectangular network input (multiples of 8), e.g. (288, 704) for 500×1260 images:
    # elongated parts keep their aspect ratio instead of being squashed. None: image_size × image_size.
    # fit "auto" sets it for elongated training images of one aspect ratio (training/preparation.py).
    image_shape: tuple[int, int] | None = None
    resize: int | None = None  # shorter side before the crop; None: same as image_size
    # crop: resize the shorter side, centre-crop (the reference). stretch: resize both sides (keeps the
    # whole image). auto: stretch when >= 10 % of the training images are elongated (long/short > 1.5), where
    # a centre crop would cut away whole regions — and their defects.
    fit: Fit = "auto"  # resolved by preprocessing.resolve_fit
    patch_size: int = 3  # neighbourhood aggregation p
    embed_dim: int | None = None  # target width of the pooled patch vector; None: per-backbone default
    adaptor: bool = True  # the linear adaptor A (ablation: off)

    # --- discriminator & optimisation ---------------------------------------------------------------
    dsc_hidden: int = 1024
    dsc_layers: int = 2
    lr: float = 1e-4  # adaptor (Adam); discriminator uses 2 * lr (AdamW)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decay to 0 over `epochs` (per epoch)
    # Validate, select and save an exponential moving average of A's and D's weights spanning about this many
    # epochs of steps (decay 1 - 1/steps per step); 0: the live weights, as the reference.
    ema_epochs: float = 0.0
    adaptor_weight_decay: float = 1e-5
    batch_size: int = 8
    epochs: int = 640
    images_per_epoch: int = 392  # the reference's `limit`: an epoch stops once it has seen more than this
    focal_gamma: float = 2.0
    ohem_quantile: float = 0.5  # keep patches whose squared error is >= this quantile (hardest half)

    # --- GAS (global anomaly synthesis, feature level) ----------------------------------------------
    hypothesis: Hypothesis = "auto"  # GLASS-j: spectrogram rule chooses manifold (m) or hypersphere (h)
    gas: GasMode = "full"  # ablation (GAS_MODES): off / noise only / + ascent / + projection
    noise_std: float = 0.015
    ascent_steps: int = 20
    ascent_step_size: float = 0.001
    project_every: int = 5
    # Manifold truncation [r1, r2], in units of the normal spacing (see feature_spacing): r1 = 1, r2 = 2r1 as
    # in the paper's text, where held-out normal patches typically sit (their nearest-neighbour distance is
    # about one spacing). The fast recipe starts GAS beyond them, at 1.5 (docs/method.md, deviation 1).
    r1: float = 1.0
    r2: float = 2.0  # = paired_r2(r1)
    radius_quantile: float = 0.75  # hypersphere r'1: this quantile of normal distances to the centre
    hypersphere_shell: HypersphereShell = "relative"  # see HYPERSPHERE_SHELLS
    # GLASS-j's branch check (training/branch_check.py): with hypothesis "auto", the picked branch is first
    # trained for this many of training's steps on a copy (and the other too when the pick is dead or the
    # hypersphere); the pick gives way when its GAS stays near chance, or when it is the hypersphere and the
    # manifold trains and validates clearly better. 0: the rule alone.
    branch_check_steps: int = 0
    gas_patch_fraction: float = 1.0  # fraction of the (sampled) normal patch vectors that go through GAS
    # Scale rule: features are multiplied by one scalar measured on the training features so that the
    # normal spacing — the median distance from a normal patch to its nearest neighbour in other normal
    # images — equals `feature_spacing`; GAS lengths (noise_std, ascent_step_size, r1, r2) are then in units
    # of that spacing, re-measured in adaptor space every epoch (geometry.py, docs/method.md). None: raw
    # features and absolute lengths, as the reference code.
    feature_spacing: float | None = 1.0
    # Patch vectors per iteration: the discriminator is patch-wise, so each branch may train on a random
    # subset of the batch's B·P patch vectors (1.0: all of them, as the reference).
    patch_fraction: float = 1.0
    # ... and at most this many per image of the batch (None: no cap). The fast recipe's 324 is a quarter
    # of a 288² input's 36×36 grid, so a larger or elongated input (e.g. 288×720: 3,240 patches) costs
    # about as much discriminator and GAS work per step as a square one instead of 2.5–3.5× more.
    max_patches_per_image: int | None = None
    # Images of each batch that get a LAS copy. The backbone pass over the LAS images is, after GAS, the
    # largest cost of a fast-recipe iteration; with fewer LAS images the LAS branch still sees as many
    # patch vectors per step as the normal branch (up to all of the LAS images' patches).
    las_fraction: float = 1.0
    # LAS copies per training image whose backbone features are computed once and re-used at later visits
    # (training/las_pool.py); 0: a fresh copy at every visit, as the reference.
    las_variants: int = 0

    # --- LAS (local anomaly synthesis, image level) -------------------------------------------------
    las: bool = True
    las_weight: float = 1.0  # weight of the LAS term in the loss (the reference: 1, like the other two)
    # Patches within this many patches of a LAS mask but outside it are left out of the LAS loss (their
    # features see the texture through the receptive field; the reference labels them normal: 0).
    las_ignore_margin: int = 0
    textures: str | None = None  # folder of texture images (DTD); None: procedural textures
    foreground: Foreground = "auto"  # auto: on for object-like images, off for textures
    beta_mean: float = 0.5
    beta_std: float = 0.1
    beta_min: float = 0.2
    beta_max: float = 0.8
    # Texture colour: "auto" turns the textures grey when every training image is grey (a coloured texture
    # on a grey product is an anomaly no real defect looks like); "colour" keeps them as drawn (reference).
    texture_colour: Literal["auto", "colour", "grey"] = "auto"

    # Training arithmetic of A and D: "auto" is bf16 autocast where the hardware has bf16 matrix units (AMX, a
    # GPU with bf16), float32 elsewhere (precision.py). GAS geometry and inference are always float32.
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    # Images per pass of the frozen backbone: None is a fixed rule of batch size and input area
    # (model/chunking.py `default_chunk`; never timing, so a seed fixes the model), 0 is the whole batch, N is
    # N images. The choice is kept for --resume.
    backbone_chunk: int | None = None

    # --- inference ----------------------------------------------------------------------------------
    smoothing_sigma: float = 4.0
    # "glass": the discriminator's score (the method). "hybrid": the discriminator's logit plus the distance
    # to the nearest normal training patch, each standardised on the held-out normal images, averaged
    # (model/memory_bank.py). The bank keeps a k-centre coreset of `bank_patches` patch vectors of every
    # training image; each image is compared with those of its `bank_neighbours` nearest training images,
    # nearest by `bank_descriptor` ("mean_spread": the mean and per-channel spread of its patch vectors;
    # "mean": the mean alone) (0 neighbours: one coreset of `memory_bank_fraction` of all training patches).
    score: Literal["glass", "hybrid"] = "glass"
    bank_neighbours: int = 16
    bank_patches: int = 324
    bank_descriptor: Literal["mean", "mean_spread"] = "mean_spread"
    # The bank's coarse scale: means of W×W windows of the patch grid (stride W/2), `bank_coarse_rows` kept
    # per training image (a k-centre coreset), compared among the same nearest images; a third part of the
    # hybrid score (0: none; none with bank_neighbours 0 either).
    bank_coarse_window: int = 4
    bank_coarse_rows: int = 144
    memory_bank_fraction: float = 0.01

    # --- schedule, validation & calibration (no test data is ever used) ------------------------------
    recipe: Recipe = "paper"
    holdout_fraction: float = 0.1  # normal images kept out of training: validation + threshold calibration
    min_holdout: int = 4
    early_stopping: bool = False
    # Model selection score: "worst" = the worse of the two synthetic validation families (LAS, which
    # training draws, and the unseen strokes/blobs family, which it never draws); "las" = LAS only;
    # "agreement" = how well D ranks held-out normal patches like their distance to the nearest training
    # patch (val_nn_agreement, docs/method.md), an experimental signal logged in every run.
    selection: Literal["worst", "las", "agreement"] = "worst"
    patience: int = 5  # epochs without a rise of the smoothed validation score before stopping
    stop_window: int = 3  # epochs averaged for the stopping rule (the best single epoch is still kept)
    # Wall-clock limit of a training run in minutes (preparation included; 0: none). No epoch starts that
    # would end past it, judged by the slowest epoch so far; the best validated epoch is still the one kept.
    time_limit_min: float = 0.0
    target_false_alarm_rate: float = 0.01
    cache_features: bool = False  # compute backbone features of the normal images once per run
    cache_dtype: Literal["float16", "float32"] = "float16"
    cache_ram_limit_gb: float = 4.0  # larger caches go to a memory-mapped file in the run directory

    # --- run ----------------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("layers", "image_shape"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GlassConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("layers", "image_shape"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def replace(self, **changes: Any) -> "GlassConfig":
        return dataclasses.replace(self, **changes)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        if self.image_shape is None:
            return (self.image_size, self.image_size)
        return (int(self.image_shape[0]), int(self.image_shape[1]))

    def validate(self) -> "GlassConfig":
        problems = []
        if self.image_size < 32 or self.image_size % 8:
            problems.append(f"image_size must be a multiple of 8 and >= 32 (got {self.image_size})")
        if self.image_shape is not None:
            if len(self.image_shape) != 2 or any(int(n) < 32 or int(n) % 8 for n in self.image_shape):
                problems.append(f"image_shape must be (height, width), multiples of 8 and >= 32 (got {self.image_shape})")
            elif min(self.image_shape) != self.image_size:
                problems.append(
                    f"image_size must equal the short side of image_shape (got {self.image_size} and {self.image_shape})"
                )
        if self.gas not in GAS_MODES:
            problems.append(f"gas must be one of {', '.join(GAS_MODES)} (got {self.gas!r})")
        if self.fit not in FITS:
            problems.append(f"fit must be one of {', '.join(FITS)} (got {self.fit!r})")
        if not 0 < self.r1 <= self.r2:
            problems.append(f"need 0 < r1 <= r2 (got r1={self.r1}, r2={self.r2})")
        if self.hypersphere_shell not in HYPERSPHERE_SHELLS:
            problems.append(f"hypersphere_shell must be one of {', '.join(HYPERSPHERE_SHELLS)} (got {self.hypersphere_shell!r})")
        if self.branch_check_steps < 0:
            problems.append(f"branch_check_steps must be >= 0 (got {self.branch_check_steps})")
        if not 0 < self.radius_quantile < 1:
            problems.append("radius_quantile must lie in (0, 1)")
        if self.las_ignore_margin < 0:
            problems.append(f"las_ignore_margin must be >= 0 (got {self.las_ignore_margin})")
        if self.las_weight < 0:
            problems.append(f"las_weight must be >= 0 (got {self.las_weight})")
        if self.ema_epochs < 0:
            problems.append(f"ema_epochs must be >= 0 (got {self.ema_epochs})")
        if not 0 < self.gas_patch_fraction <= 1:
            problems.append("gas_patch_fraction must lie in (0, 1]")
        if not 0 < self.patch_fraction <= 1:
            problems.append("patch_fraction must lie in (0, 1]")
        if self.max_patches_per_image is not None and self.max_patches_per_image < 1:
            problems.append(f"max_patches_per_image must be >= 1 or None (got {self.max_patches_per_image})")
        if self.selection not in ("worst", "las", "agreement"):
            problems.append(f"selection must be 'worst', 'las' or 'agreement' (got {self.selection!r})")
        if self.score not in ("glass", "hybrid"):
            problems.append(f"score must be 'glass' or 'hybrid' (got {self.score!r})")
        if not 0 < self.memory_bank_fraction <= 1:
            problems.append("memory_bank_fraction must lie in (0, 1]")
        if self.bank_neighbours < 0 or self.bank_patches < 1:
            problems.append("need bank_neighbours >= 0 and bank_patches >= 1")
        if self.bank_coarse_window < 0 or self.bank_coarse_window == 1 or self.bank_coarse_rows < 1:
            problems.append("need bank_coarse_window 0 (none) or >= 2, and bank_coarse_rows >= 1")
        if self.backbone_chunk is not None and self.backbone_chunk < 0:
            problems.append("backbone_chunk must be >= 0 (0: the whole batch) or None (by batch size and input area)")
        if self.las_variants < 0:
            problems.append(f"las_variants must be >= 0 (0: a fresh LAS copy at every visit; got {self.las_variants})")
        if not 0 < self.las_fraction <= 1:
            problems.append("las_fraction must lie in (0, 1]")
        if self.feature_spacing is not None and self.feature_spacing <= 0:
            problems.append("feature_spacing must be > 0 (or None for raw features)")
        if not 0 <= self.holdout_fraction < 1:
            problems.append("holdout_fraction must lie in [0, 1)")
        if not 0 < self.target_false_alarm_rate < 1:
            problems.append("target_false_alarm_rate must lie in (0, 1)")
        if self.batch_size < 2:
            problems.append("batch_size must be >= 2 (the discriminator uses batch normalisation)")
        if self.ascent_steps < 0 or self.project_every < 1:
            problems.append("need ascent_steps >= 0 and project_every >= 1")
        if self.time_limit_min < 0:
            problems.append(f"time_limit_min must be >= 0 (0: no limit; got {self.time_limit_min})")
        if self.patience < 1 or self.stop_window < 1:
            problems.append("need patience >= 1 and stop_window >= 1")
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append(f"lr_schedule must be 'constant' or 'cosine' (got {self.lr_schedule!r})")
        if self.epochs < 1:
            problems.append("epochs must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# The fast recipe: every field that differs from the reference schedule. Chosen by the measurements
# recorded in docs/benchmarks.md; each entry is also an option of its own.
FAST_RECIPE: dict[str, Any] = dict(
    recipe="fast",
    epochs=20,
    lr=1e-3,  # 10x the reference: the short schedule converges in a few epochs (validation split, benchmarks.md)
    images_per_epoch=392,
    ascent_steps=4,
    ascent_step_size=0.005,  # same total ascent distance as 20 x 0.001
    project_every=2,
    # Each branch trains on a random quarter of the batch's patch vectors (all of them go through GAS);
    # with GAS alive, half of them validated worse within the same time limit (docs/benchmarks.md).
    patch_fraction=0.25,
    max_patches_per_image=324,  # a quarter of 36×36: larger inputs train on as many vectors per step
    # Every image gets a LAS copy, as in the reference (las_fraction 1): half of them validated no better
    # within the same time limit (docs/benchmarks.md), and the backbone pass they save is now cheap.
    gas_patch_fraction=1.0,
    # Four LAS copies per image, each encoded by the backbone once (training/las_pool.py): the LAS backbone
    # pass was about half of a step on an AVX2-only CPU (docs/benchmarks.md).
    las_variants=4,
    early_stopping=True,
    ema_epochs=1.0,  # the selected model is the weights' moving average over ~1 epoch (benchmarks.md)
    # GAS starts beyond the held-out normal patches (their nearest-neighbour distances reach ~1.2 spacings
    # at the 90th percentile) instead of among them; chosen on validation with two seeds (docs/method.md).
    r1=1.5,
    r2=3.0,
    patience=6,  # on the 3-epoch mean validation score (stop_window); val noise ~0.01/epoch on MTD
    time_limit_min=9.5,  # `glass train` within 10 minutes: calibrating and saving take seconds
    # GLASS-j's pick is checked for 50 of training's own steps on a copy (about one MTD epoch) before training:
    # a relative-shell branch separates held-out GAS at 0.96-0.99 by then on MTD and MPDD (docs/benchmarks.md).
    branch_check_steps=50,
    # The discriminator's logit plus the distance to the nearest normal training patch: on MTD and MPDD
    # metal_plate it scored above pure GLASS in image AUROC, pixel AUROC and AUPRO with both seeds
    # (docs/benchmarks.md). `--score glass` is the paper's method (and the paper recipe's default).
    score="hybrid",
    cache_features=True,
    precision="auto",
)

PAPER_RECIPE: dict[str, Any] = dict(
    recipe="paper",
    epochs=640,
    images_per_epoch=392,
    ascent_steps=20,
    ascent_step_size=0.001,
    project_every=5,
    gas_patch_fraction=1.0,
    patch_fraction=1.0,
    las_fraction=1.0,
    early_stopping=False,
    cache_features=False,
    precision="fp32",
)

RECIPES: dict[str, dict[str, Any]] = {"fast": FAST_RECIPE, "paper": PAPER_RECIPE}


def make_config(recipe: Recipe = "fast", **overrides: Any) -> GlassConfig:
    """The config of a recipe, with explicit overrides (``None`` values are ignored)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    values = dict(RECIPES[recipe])
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("layers", "image_shape"):  # lists from YAML/TOML files
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return GlassConfig(**values).validate()


def field_default(name: str) -> Any:
    """The default of one `GlassConfig` field, for code that needs it without copying the number."""
    for item in fields(GlassConfig):
        if item.name == name:
            if item.default is dataclasses.MISSING:
                raise KeyError(f"GlassConfig.{name} has no plain default")
            return item.default
    raise KeyError(f"GlassConfig has no field {name!r}")


def recipe_value(recipe: str, name: str) -> Any:
    """One field's value under a recipe: the recipe's entry, else the dataclass default."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[recipe][name] if name in RECIPES[recipe] else field_default(name)


def show_value(value: Any) -> str:
    """A setting as help texts and docs print it: 0.25, 1e-3 → 0.001, None → none, True → on."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def by_recipe(name: str) -> str:
    """One field's values by recipe for help texts and docs ("fast 4, paper 20"; one value when they agree),
    so no recipe number is typed twice."""
    values = {recipe: show_value(recipe_value(recipe, name)) for recipe in RECIPES}
    if len(set(values.values())) == 1:
        return f"default {values['fast']}"
    return ", ".join(f"{recipe} {value}" for recipe, value in values.items())


# Per-backbone notes on input normalisation. Kept here so export and training agree.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "GlassConfig",
    "GasMode",
    "GAS_MODES",
    "Fit",
    "FITS",
    "R2_PER_R1",
    "paired_r2",
    "field_default",
    "recipe_value",
    "show_value",
    "by_recipe",
    "FAST_RECIPE",
    "PAPER_RECIPE",
    "RECIPES",
    "make_config",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

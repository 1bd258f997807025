"""Training: normal images only. Reads top to bottom:

1. load `train/good`, keep a seeded holdout of normal images (validation + threshold calibration);
2. decode every image once (resized + cropped, uint8 in RAM);
3. choose the hypothesis (GLASS-j spectrogram rule unless forced), the foreground masks and textures;
4. build the model; cache the frozen backbone's patch features of the normal images (fast recipe);
5. measure the feature scale (scale-aware GAS);
6. epochs of: normal branch + GAS branch + LAS branch → one loss, Adam(A) + AdamW(D);
7. after each epoch, score the holdout normals and fixed synthetic anomalies; keep the best state,
   stop early when it no longer improves (fast recipe);
8. calibrate thresholds on the holdout normals and write one self-contained checkpoint.

No test image is read here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from . import gas as gas_module
from . import resume as resume_module
from .cache import FeatureStore
from .calibration import calibrate
from .config import GlassConfig
from .datasets import Preprocessor, Sample, load_dataset
from .foreground import foreground_mask, is_object_category
from .geometry import SpacingProbe, measure_geometry
from .io import ImageReadError, read_image
from .las import LocalAnomalySynthesizer
from .memory_bank import greedy_coreset
from .losses import bce, las_loss
from .metrics import image_auroc, pixel_ap, pixel_auroc
from .model import GlassModel, build_model, make_checkpoint, resolve_device, save_checkpoint, CHECKPOINT_NAME
from .precision import choose_precision
from .provenance import provenance
from .spectrum import choose_hypothesis, mean_image
from .textures import GreyTextures, load_textures
from .unseen_anomalies import UnseenAnomalySynthesizer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Path
    hypothesis: str
    epochs_run: int
    best_epoch: int
    wall_time_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Data preparation


def split_holdout(samples: list[Sample], config: GlassConfig) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of the normal training images into (train, holdout)."""
    if config.holdout_fraction <= 0:
        return list(samples), []
    count = max(config.min_holdout, int(round(len(samples) * config.holdout_fraction)))
    if len(samples) - count < config.batch_size:
        count = max(0, len(samples) - config.batch_size)
    order = np.random.default_rng(config.seed).permutation(len(samples))
    holdout = sorted(order[:count].tolist())
    chosen = set(holdout)
    return [s for i, s in enumerate(samples) if i not in chosen], [samples[i] for i in holdout]


ELONGATED = 1.5  # long/short side: a centre crop would drop over a third of such an image
ELONGATED_SHARE = 0.1


def choose_fit(samples: list[Sample], probe: int = 64) -> str:
    """'stretch' when at least 10 % of the images are elongated (a centre crop would drop whole regions,
    and with them defects), else 'crop' (the reference)."""
    from PIL import Image

    ratios = []
    for sample in samples[:: max(1, len(samples) // probe)][:probe]:
        try:
            with Image.open(sample.path) as image:
                width, height = image.size
        except Exception:  # unreadable files are reported when decoded
            continue
        ratios.append(max(width, height) / max(1, min(width, height)))
    share = float(np.mean(np.asarray(ratios) > ELONGATED)) if ratios else 0.0
    return "stretch" if share >= ELONGATED_SHARE else "crop"


def decode_images(
    samples: list[Sample], preprocessor: Preprocessor, *, progress: bool = True, desc: str = "decoding"
) -> tuple[torch.Tensor, list[Sample]]:
    """All images resized and cropped once, as an N×3×S×S uint8 tensor; unreadable files are skipped."""
    images, kept = [], []
    for sample in tqdm(samples, desc=desc, unit="img", disable=not progress, leave=False):
        try:
            pixels = read_image(sample.path)
        except ImageReadError as error:
            log.warning("skipped: %s", error)
            continue
        images.append((preprocessor.image(pixels) * 255.0).round().to(torch.uint8))
        kept.append(sample)
    if not images:
        raise ValueError("no readable training images")
    return torch.stack(images), kept


def compute_foreground(images: torch.Tensor, mode: str) -> torch.Tensor | None:
    """N×1×S×S bool foreground masks, or None when LAS may use the whole image."""
    as_hwc = [img.permute(1, 2, 0).numpy() for img in images]
    if mode == "off":
        return None
    if mode == "auto":
        probe = as_hwc[:: max(1, len(as_hwc) // 16)][:16]
        if not is_object_category(probe):
            return None
    masks = [torch.from_numpy(np.ascontiguousarray(foreground_mask(img))) for img in as_hwc]
    return torch.stack(masks).unsqueeze(1)


# ---------------------------------------------------------------------------------------------------
# Features


@torch.no_grad()
def extract_features(
    model: GlassModel,
    images: torch.Tensor,
    device: torch.device,
    *,
    batch_size: int = 16,
    store: FeatureStore | None = None,
    progress: bool = True,
    desc: str = "caching features",
) -> FeatureStore:
    """Patch features (scaled) of uint8 images, computed once and kept in a FeatureStore."""
    if store is None:
        store = FeatureStore(len(images), model.grid**2, model.embed_dim)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        batch = images[start : start + batch_size].to(device).float() / 255.0
        store.write(start, model.features(batch))
    return store


# ---------------------------------------------------------------------------------------------------
# One training step


def gas_settings(config: GlassConfig, hypothesis: str, unit: float = 1.0) -> gas_module.GASSettings:
    """GAS settings of `config`; `unit` is the current normal spacing when the scale rule is on."""
    return gas_module.GASSettings(
        hypothesis=hypothesis,
        mode=config.gas,
        noise_std=config.noise_std,
        steps=config.ascent_steps,
        step_size=config.ascent_step_size,
        project_every=config.project_every,
        r1=config.r1,
        r2=config.r2,
        unit=unit if config.feature_spacing is not None else 1.0,
    )


def use_bf16(precision: str, device: torch.device, dim: int = 432, hidden: int = 1024) -> bool:
    """Whether training arithmetic runs under bf16 autocast ("auto": measured, see precision.py)."""
    return choose_precision(precision, device, dim, hidden).bf16


def training_step(
    model: GlassModel,
    optimizers: list[torch.optim.Optimizer],
    normal: torch.Tensor,
    las_features: torch.Tensor | None,
    las_labels: torch.Tensor | None,
    centre: torch.Tensor,
    config: GlassConfig,
    settings: gas_module.GASSettings,
    generator: torch.Generator,
    bf16: bool = False,
) -> dict[str, float]:
    """One optimisation step on B×P×D normal features and (optionally) B×P×D LAS features."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    with torch.autocast(normal.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, stats = _step_loss(model, normal, las_features, las_labels, centre, config, settings, generator)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    return stats


def _sample_rows(count: int, keep: int, generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """Indices of `keep` random rows out of `count` (None: keep all of them)."""
    if keep >= count:
        return None
    return torch.randperm(count, generator=generator)[: max(2, keep)].to(device)


def _step_loss(model, normal, las_features, las_labels, centre, config, settings, generator):
    batch, patches, dim = normal.shape
    centres = centre.repeat(batch, 1)
    rows = normal.reshape(-1, dim)
    # Each branch trains on the same number of patch vectors: `patch_fraction` of the batch's B·P.
    keep = max(2, int(len(rows) * config.patch_fraction))
    pick = _sample_rows(len(rows), keep, generator, rows.device)
    if pick is not None:
        rows, centres_u = rows[pick], centres[pick]
    else:
        centres_u = centres
    # Feature geometry (distances, projections, ascent steps) stays float32 even under autocast.
    u = model.adaptor(rows).float()
    fake = labels = centres_fake = None
    if las_features is not None:
        las_rows, labels = las_features.reshape(-1, dim), las_labels.reshape(-1)
        centres_fake = centre.repeat(las_features.shape[0], 1)
        pick = _sample_rows(len(las_rows), keep, generator, las_rows.device)
        if pick is not None:
            las_rows, labels, centres_fake = las_rows[pick], labels[pick], centres_fake[pick]
        fake = model.adaptor(las_rows).float()

    # r'1: 75 % quantile of normal distances to the centre (normal LAS patches count as normal).
    radius = None
    if settings.hypothesis == "hypersphere":
        normal_points = u if fake is None else torch.cat([fake[labels < 0.5], u])
        normal_centres = centres_u if fake is None else torch.cat([centres_fake[labels < 0.5], centres_u])
        radius = gas_module.hypersphere_radius(normal_points, normal_centres, config.radius_quantile)

    loss_terms: dict[str, torch.Tensor] = {}
    stats: dict[str, float] = {}
    count = len(u)
    if config.gas != "off":
        subset = _sample_rows(count, int(count * config.gas_patch_fraction), generator, u.device)
        if subset is None:
            subset = torch.arange(count, device=u.device)
        v = gas_module.synthesize(
            model.discriminator, u[subset], settings, centres=centres_u[subset], radius=radius, generator=generator
        )
        scores = model.discriminator(torch.cat([u, v])).float()
        true_scores, gas_scores = scores[:count], scores[count:]
        loss_terms["normal"] = bce(true_scores, 0.0)
        loss_terms["gas"] = bce(gas_scores, 1.0)
        stats["p_gas"] = float((gas_scores.detach() >= 0.5).float().mean())  # GAS vectors called anomalous
    else:
        true_scores = model.discriminator(u).float()
        loss_terms["normal"] = bce(true_scores, 0.0)

    if fake is not None:
        if settings.hypothesis == "hypersphere":
            fake = gas_module.project_las_features(fake, labels, centres_fake, radius)
        fake_scores = model.discriminator(fake).float().squeeze(1)
        loss_terms["las"] = las_loss(fake_scores, labels, config.focal_gamma, config.ohem_quantile)

    loss = sum(loss_terms.values())
    stats.update({f"loss_{k}": float(v.detach()) for k, v in loss_terms.items()})
    stats["loss"] = float(loss.detach())
    stats["p_true"] = float((true_scores.detach() < 0.5).float().mean())  # normal vectors called normal
    if radius is not None:
        stats["radius"] = float(radius)
    return loss, stats


# ---------------------------------------------------------------------------------------------------
# Validation on held-out normal images plus fixed synthetic anomalies (never test data)


@dataclass
class ValidationSet:
    normal: torch.Tensor  # Nv×P×D scaled features of held-out normal images
    anomalous: torch.Tensor  # Nv×P×D features of the same images with LAS anomalies
    labels: torch.Tensor  # Nv×P patch labels of the anomalies
    unseen: torch.Tensor  # Nv×P×D features of the same images with the unseen family (strokes, blobs)
    unseen_labels: torch.Tensor  # Nv×P


@torch.no_grad()
def score_features(model: GlassModel, features: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Patch scores N×P for stored features, in eval mode (batch norm running statistics)."""
    out = []
    for start in range(0, len(features), batch_size):
        out.append(model.patch_scores(features[start : start + batch_size]).flatten(1))
    return torch.cat(out)


GAS_PROBE_PATCHES = 4096  # held-out normal patch vectors used to measure the GAS separation
GAS_DEAD_AUROC = 0.6  # below this the discriminator does not tell GAS from normal: the branch is dead


def _family_scores(normal: torch.Tensor, anomalous: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Image AUROC, patch AP and patch AUROC (normal patches vs anomalous ones) of one synthetic family."""
    image_scores = torch.cat([normal.amax(1), anomalous.amax(1)]).numpy()
    image_labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    patch_scores = torch.cat([normal.flatten(), anomalous.flatten()]).numpy()
    patch_labels = torch.cat([torch.zeros(normal.numel()), labels.flatten()]).numpy().astype(bool)
    auroc, ap = image_auroc(image_scores, image_labels), pixel_ap(patch_scores, patch_labels)
    separation = pixel_auroc(patch_scores, patch_labels)
    return {"image_auroc": auroc, "patch_ap": ap, "patch_auroc": separation, "score": 0.5 * (auroc + ap)}


def gas_separation(
    model: GlassModel,
    features: torch.Tensor,
    settings: gas_module.GASSettings,
    centre: torch.Tensor,
    radius_quantile: float,
    seed: int = 0,
) -> float:
    """AUROC of D on held-out normal patch vectors vs their GAS copies (0.5: GAS is invisible to D)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    rows = features.reshape(-1, features.shape[-1])
    positions = torch.arange(len(rows)) % centre.shape[0]
    if len(rows) > GAS_PROBE_PATCHES:
        pick = torch.randperm(len(rows), generator=generator)[:GAS_PROBE_PATCHES]
        rows, positions = rows[pick], positions[pick]
    positions = positions.to(rows.device)
    with torch.no_grad():
        u = model.adaptor(rows).float()
        centres = centre[positions]
    radius = None
    if settings.hypothesis == "hypersphere":
        radius = gas_module.hypersphere_radius(u, centres, radius_quantile)
    v = gas_module.synthesize(model.discriminator, u, settings, centres=centres, radius=radius, generator=generator)
    with torch.no_grad():
        normal_scores = model.discriminator(u).float().flatten().cpu().numpy()
        gas_scores = model.discriminator(v).float().flatten().cpu().numpy()
    model.train(was_training)
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(gas_scores))].astype(bool)
    return pixel_auroc(np.r_[normal_scores, gas_scores], labels)


def validate(
    model: GlassModel,
    val: ValidationSet,
    settings: gas_module.GASSettings | None = None,
    centre: torch.Tensor | None = None,
    radius_quantile: float = 0.75,
    selection: str = "worst",
) -> dict[str, float]:
    """Scores of both synthetic families on the held-out normal images, the GAS separation, and the
    selection score (the worse family's mean of image AUROC and patch AP, or LAS's alone)."""
    model.eval()
    normal = score_features(model, val.normal)
    las = _family_scores(normal, score_features(model, val.anomalous), val.labels)
    unseen = _family_scores(normal, score_features(model, val.unseen), val.unseen_labels)
    record = {
        "val_image_auroc": las["image_auroc"],
        "val_patch_ap": las["patch_ap"],
        "val_las_separation": las["patch_auroc"],
        "val_unseen_image_auroc": unseen["image_auroc"],
        "val_unseen_patch_ap": unseen["patch_ap"],
        "val_unseen_separation": unseen["patch_auroc"],
    }
    if settings is not None and centre is not None and settings.mode != "off":
        record["val_gas_separation"] = gas_separation(model, val.normal, settings, centre, radius_quantile)
    record["val_score"] = min(las["score"], unseen["score"]) if selection == "worst" else las["score"]
    model.discriminator.train()
    model.adaptor.train()
    return record


class EarlyStopping:
    """Best-epoch tracking and a stopping rule on the validation score.

    The best single epoch is kept, but stopping follows the trend: the mean of the last `window` scores
    must rise (by more than `min_delta`) at least once every `patience` epochs. On MTD the score moves by
    about 0.01 between neighbouring epochs, enough to stop a still-improving run on raw scores
    (docs/benchmarks.md).
    """

    def __init__(self, patience: int, window: int = 3, min_delta: float = 1e-4):
        self.patience, self.window, self.min_delta = patience, window, min_delta
        self.scores: list[float] = []
        self.best_score = self.best_trend = -math.inf
        self.stale = 0

    def update(self, score: float) -> bool:
        """Record one epoch's score; True when it is the best single score so far."""
        self.scores.append(score)
        # The trend is compared only once the window is full: a one-epoch "mean" of a lucky first epoch
        # would otherwise set a bar that the averaged scores need many epochs to clear.
        if len(self.scores) >= self.window:
            trend = float(np.mean(self.scores[-self.window :]))
            if trend > self.best_trend + self.min_delta:
                self.best_trend, self.stale = trend, 0
            else:
                self.stale += 1
        if score > self.best_score + self.min_delta:
            self.best_score = score
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience


# ---------------------------------------------------------------------------------------------------
# The loop


def train(
    data_root: str | Path,
    out_dir: str | Path,
    config: GlassConfig,
    *,
    category: str | None = None,
    layout: str = "auto",
    progress: bool = True,
    echo: Callable[[str], None] = print,
    resume: bool = False,
) -> TrainResult:
    """Train GLASS on `data_root`'s normal training images and write `out_dir/model.pt`; `resume` continues an
    interrupted run in `out_dir` from its last completed epoch (resume.py)."""
    start_time = time.perf_counter()
    config = config.validate()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_state = resume_module.TrainState(out_dir, config, data_root, category, layout, device, resume=resume)

    # 1-2. Normal images only, decoded once.
    dataset = load_dataset(data_root, layout, category=category)
    train_samples, holdout_samples = split_holdout(dataset.train, config)
    if config.fit == "auto":
        config = config.replace(fit=choose_fit(dataset.train))
        echo(f"image fit: {config.fit}")
    preprocessor = Preprocessor(config.image_size, config.resize, config.fit)
    images, train_samples = decode_images(train_samples, preprocessor, progress=progress)
    holdout = decode_images(holdout_samples, preprocessor, progress=progress, desc="decoding holdout")[0] if holdout_samples else None
    if len(images) < config.batch_size:
        raise ValueError(f"need at least {config.batch_size} readable training images, found {len(images)}")
    echo(f"training images: {len(images)}, held out for validation/calibration: {0 if holdout is None else len(holdout)}")

    # 3. Hypothesis (GLASS-j), foreground, textures.
    spectrum_stats: dict[str, Any] = {}
    hypothesis = config.hypothesis
    if hypothesis == "auto":
        hypothesis, spectrum_stats = choose_hypothesis(mean_image(img.permute(1, 2, 0).numpy() for img in images))
        echo(f"hypothesis: {hypothesis} (chosen by the spectrogram rule: {_format_stats(spectrum_stats)})")
    else:
        echo(f"hypothesis: {hypothesis} (forced)")
    # The LAS synthesizer is also built with --no-las: the validation split uses it (it never trains then).
    foreground = compute_foreground(images, config.foreground)
    echo(f"foreground masks: {'on' if foreground is not None else 'off (whole image)'}")
    textures = load_textures(config.textures, config.image_size)
    grey = config.texture_colour == "grey" or (config.texture_colour == "auto" and is_grey(images))
    if grey:
        textures = GreyTextures(textures)
    echo(f"LAS textures: {'grey (the training images are grey)' if grey else 'colour'}" + ("" if config.las else " (validation only: --no-las)"))
    las_synthesizer = LocalAnomalySynthesizer(
        config.image_size,
        textures,
        beta_mean=config.beta_mean,
        beta_std=config.beta_std,
        beta_min=config.beta_min,
        beta_max=config.beta_max,
    )
    synthesizer = las_synthesizer if config.las else None

    # 4. Model and (optionally) the feature cache.
    model = build_model(config).to(device)
    model.feature_scale.fill_(1.0)
    store = None
    if config.cache_features:
        store = FeatureStore(
            len(images),
            model.grid**2,
            model.embed_dim,
            dtype=config.cache_dtype,
            ram_limit_gb=config.cache_ram_limit_gb,
            spill_dir=out_dir,
        )
        extract_features(model, images, device, store=store, progress=progress)

    # 5. The scale rule: measure the spacing of the normal features once (median distance to the nearest
    # patch of another image) and scale the features so that it equals `feature_spacing`.
    probe_index = np.sort(rng.choice(len(images), size=min(len(images), 64), replace=False))
    if store is not None:
        probe_features = store.read(probe_index)
    else:
        with torch.no_grad():
            probe_features = torch.cat(
                [model.features(images[i : i + 1].to(device).float() / 255) for i in probe_index]
            ).cpu()
    spacing_probe = SpacingProbe.from_features(probe_features.cpu(), rng)
    del probe_features
    geometry = measure_geometry(spacing_probe, config.feature_spacing)
    echo(f"feature geometry: {geometry.describe()}")
    scale = geometry.scale
    model.feature_scale.fill_(scale)
    spacing_probe = SpacingProbe(spacing_probe.queries.mul_(scale).to(device), spacing_probe.bank.mul_(scale).to(device))
    if store is not None:
        store.array *= np.asarray(scale, dtype=store.array.dtype)

    # The per-position mean of the (frozen, scaled) features: the hypersphere centre is A(mean), since A
    # is linear — no pass over the data per epoch.
    mean_feature = _mean_feature(model, images, store, device)

    val = None
    if holdout is not None:
        val = _validation_set(model, holdout, las_synthesizer, config, device, foreground is not None)

    # 6. Optimisers as in the reference.
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(model.discriminator.parameters(), lr=config.lr * 2)
    ]
    if config.adaptor:
        optimizers.append(torch.optim.Adam(model.adaptor.parameters(), lr=config.lr, weight_decay=config.adaptor_weight_decay))
    schedulers = [
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
        for optimizer in optimizers
        if config.lr_schedule == "cosine"
    ]
    arithmetic = choose_precision(config.precision, device, model.embed_dim, config.dsc_hidden)
    bf16 = arithmetic.bf16
    echo(f"training arithmetic: {arithmetic.reason}")
    iterations = math.ceil((config.images_per_epoch + 1) / config.batch_size)
    iterations = min(iterations, math.ceil(len(images) / config.batch_size))

    history: list[dict[str, float]] = []
    stopper = EarlyStopping(config.patience, config.stop_window)
    best_state, best_epoch = None, 0
    start_epoch, end_epoch = 0, config.epochs
    if run_state.loaded is not None:  # every state as it was at the end of the last completed epoch
        start_epoch, best_state, best_epoch, history, bf16 = run_state.restore(model, optimizers, schedulers, stopper, rng, generator)
        start_time -= run_state.elapsed_s
        if config.early_stopping and val is not None and stopper.should_stop:
            end_epoch = start_epoch
        echo(f"resuming after epoch {start_epoch} of {config.epochs}")
    model.discriminator.train()
    model.adaptor.train()
    bar = tqdm(range(start_epoch, end_epoch), desc="training", unit="epoch", disable=not progress, initial=start_epoch, total=config.epochs)
    epoch = max(0, start_epoch - 1)
    for epoch in bar:
        with torch.no_grad():
            centre = model.adaptor(mean_feature)
        # GAS lengths in units of the current normal spacing in adaptor space (A is trained, so it moves).
        unit = spacing_probe.spacing(model.adaptor) if config.feature_spacing is not None else 1.0
        settings = gas_settings(config, hypothesis, unit)
        order = rng.permutation(len(images))
        epoch_stats: list[dict[str, float]] = []
        for it in range(iterations):
            index = np.sort(order[it * config.batch_size : (it + 1) * config.batch_size])
            if len(index) < 2:
                break
            normal = _normal_features(model, images, store, index, device)
            las_features = las_labels = None
            if synthesizer is not None:
                las_index = index[: max(2, round(len(index) * config.las_fraction))]
                batch = images[las_index].float() / 255.0
                fg = foreground[las_index] if foreground is not None else None
                synthetic = synthesizer(batch, fg, rng)
                with torch.no_grad():
                    las_features = model.features(synthetic.images.to(device))
                las_labels = synthetic.patch_labels.to(device)
            stats = training_step(
                model, optimizers, normal, las_features, las_labels, centre, config, settings, generator, bf16
            )
            epoch_stats.append(stats)
            bar.set_postfix(it=f"{it + 1}/{iterations}", loss=f"{stats['loss']:.3f}")
        record = {"epoch": epoch + 1, **{k: float(np.mean([s[k] for s in epoch_stats if k in s])) for k in epoch_stats[0]}}
        record["lr"] = optimizers[0].param_groups[0]["lr"] / 2  # this epoch's rate in --lr terms (D runs at 2x)
        record["spacing"] = unit
        for scheduler in schedulers:
            scheduler.step()

        # 7. Validation on held-out normals + fixed synthetic anomalies; model selection and stopping.
        if val is not None:
            record.update(validate(model, val, settings, centre, config.radius_quantile, config.selection))
            if stopper.update(record["val_score"]):
                best_epoch, best_state = epoch + 1, _trainable_state(model)
        record["elapsed_s"] = time.perf_counter() - start_time
        history.append(record)
        (bar.write if progress else echo)(_epoch_line(record))
        run_state.save(epoch + 1, model, optimizers, schedulers, stopper, rng, generator, best_state, best_epoch, history, bf16, record["elapsed_s"])
        if config.early_stopping and val is not None and stopper.should_stop:
            echo(
                f"early stop after epoch {epoch + 1}: the {config.stop_window}-epoch mean validation score has not "
                f"risen for {config.patience} epochs (best: epoch {best_epoch})"
            )
            break
    bar.close()
    epochs_run = epoch + 1
    warning = dead_branch_warning(history)
    if warning:
        log.warning(warning)
        echo(f"WARNING: {warning}")
    if config.early_stopping and best_state is not None:
        model.load_state_dict(best_state, strict=False)
    else:
        best_epoch = epochs_run
    if config.score == "hybrid":
        hybrid = build_hybrid_score(model, images, store, holdout, config, device, progress=progress)
        echo(f"hybrid score: memory bank of {hybrid['bank_size']} patch vectors")
    if store is not None:
        store.close()

    # 8. Thresholds from held-out normal images, then one self-contained checkpoint.
    model.eval()
    calibration = calibrate(model, holdout, config, device) if holdout is not None else {}
    with torch.no_grad():
        centre = model.adaptor(mean_feature).cpu()
    wall = time.perf_counter() - start_time
    checkpoint = make_checkpoint(
        model,
        config,
        hypothesis=hypothesis,
        spectrum=spectrum_stats,
        foreground=foreground is not None,
        centre=centre,
        geometry=geometry.to_dict(),
        provenance=provenance([sample.path for sample in dataset.train], dataset.root),
        calibration=calibration,
        training={
            "data_root": str(data_root),
            "category": category,
            "train_images": len(images),
            "holdout_images": 0 if holdout is None else len(holdout),
            "holdout_paths": [str(s.path) for s in holdout_samples],
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "wall_time_s": wall,
            "precision": arithmetic.reason,
            "history": history,
        },
    )
    path = save_checkpoint(checkpoint, out_dir / CHECKPOINT_NAME)
    run_state.remove()
    return TrainResult(path, hypothesis, epochs_run, best_epoch, wall, history, calibration)


# ---------------------------------------------------------------------------------------------------
# Helpers of the loop


def _normal_features(model, images, store, index, device) -> torch.Tensor:
    if store is not None:
        return store.read(index, device)
    with torch.no_grad():
        return model.features(images[index].to(device).float() / 255.0)


@torch.no_grad()
def _mean_feature(model, images, store, device) -> torch.Tensor:
    total = torch.zeros(model.grid**2, model.embed_dim, dtype=torch.float64, device=device)
    for start in range(0, len(images), 16):
        index = np.arange(start, min(start + 16, len(images)))
        total += _normal_features(model, images, store, index, device).double().sum(0)
    return (total / len(images)).float()


@torch.no_grad()
def _validation_set(model, holdout, synthesizer, config, device, use_foreground: bool) -> ValidationSet:
    # A fixed seed: the same synthetic anomalies every epoch and every run with this seed.
    val_rng = np.random.default_rng(config.seed + 10_007)
    batch = holdout.float() / 255.0
    # The same foreground decision as for the training images (not a new "auto" vote on the holdout).
    fg = compute_foreground(holdout, "on") if use_foreground else None
    unseen_rng = np.random.default_rng(config.seed + 20_011)
    unseen_synthesizer = UnseenAnomalySynthesizer(config.image_size)
    normal, anomalous, labels, unseen, unseen_labels = [], [], [], [], []
    for start in range(0, len(batch), 16):
        part = batch[start : start + 16]
        part_fg = fg[start : start + 16] if fg is not None else None
        synthetic = synthesizer(part, part_fg, val_rng)
        other = unseen_synthesizer(part, part_fg, unseen_rng)
        normal.append(model.features(part.to(device)).cpu())
        anomalous.append(model.features(synthetic.images.to(device)).cpu())
        labels.append(synthetic.patch_labels.cpu())
        unseen.append(model.features(other.images.to(device)).cpu())
        unseen_labels.append(other.patch_labels.cpu())
    return ValidationSet(
        torch.cat(normal).to(device),
        torch.cat(anomalous).to(device),
        torch.cat(labels),
        torch.cat(unseen).to(device),
        torch.cat(unseen_labels),
    )


@torch.no_grad()
def build_hybrid_score(
    model: GlassModel,
    images: torch.Tensor,
    store: FeatureStore | None,
    holdout: torch.Tensor | None,
    config: GlassConfig,
    device: torch.device,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Set the model's memory bank (a coreset of the training patch vectors) and standardise the logit and the
    nearest-neighbour distance on the held-out normal images (their mean and std over all patches)."""
    if holdout is None or len(holdout) == 0:
        raise ValueError("the hybrid score needs held-out normal images to standardise its parts (--holdout > 0)")
    model.eval()
    rows_per_image = model.grid**2
    count = max(1, int(round(len(images) * rows_per_image * config.memory_bank_fraction)))
    # A random pool of at most 64 patch vectors per image keeps the greedy selection's cost bounded.
    per_image = min(rows_per_image, 64)
    generator = torch.Generator().manual_seed(config.seed)
    pool = []
    for start in range(0, len(images), 16):
        index = np.arange(start, min(start + 16, len(images)))
        features = _normal_features(model, images, store, index, device).float().cpu()
        pick = torch.stack([torch.randperm(rows_per_image, generator=generator)[:per_image] for _ in index])
        pool.append(torch.gather(features, 1, pick.unsqueeze(-1).expand(-1, -1, features.shape[-1])).flatten(0, 1))
    pool_rows = torch.cat(pool)
    bank = pool_rows[greedy_coreset(pool_rows, min(count, len(pool_rows)), seed=config.seed)]
    model.set_memory_bank(bank.to(device))
    parts = []
    for start in range(0, len(holdout), 16):
        batch = holdout[start : start + 16].to(device).float() / 255.0
        features = model.features(batch)
        parts.append(model.hybrid_parts(features.reshape(-1, features.shape[-1])).cpu())
    raw = torch.cat(parts)  # standardised with the neutral norm (0, 1, 0, 1): raw values
    mean, std = raw.mean(0), raw.std(0).clamp_min(1e-6)
    model.set_memory_bank(bank.to(device), [mean[0], std[0], mean[1], std[1]])
    return {"bank_size": len(bank), "norm": [float(mean[0]), float(std[0]), float(mean[1]), float(std[1])]}


def is_grey(images: torch.Tensor, probe: int = 32) -> bool:
    """True when the (probed) N×3×S×S uint8 images have equal channels: a grey product."""
    sample = images[:: max(1, len(images) // probe)][:probe].to(torch.int16)
    return bool(((sample[:, 0] - sample[:, 1]).abs().max() <= 2) and ((sample[:, 0] - sample[:, 2]).abs().max() <= 2))


def dead_branch_warning(history: list[dict[str, float]], last: int = 3) -> str | None:
    """A message when GAS stayed near chance over the last epochs (the discriminator cannot see it)."""
    values = [r["val_gas_separation"] for r in history[-last:] if "val_gas_separation" in r]
    if not values or float(np.mean(values)) >= GAS_DEAD_AUROC:
        return None
    return (
        f"GAS is near chance: the discriminator separates held-out normal patches from their GAS copies at "
        f"AUROC {np.mean(values):.2f} over the last {len(values)} epochs; the GAS branch does not train it "
        f"(check --feature-spacing, --r1/--r2)"
    )


BRANCH_KEYS = (
    "loss_normal",
    "loss_gas",
    "loss_las",
    "p_gas",
    "spacing",
    "val_gas_separation",
    "val_las_separation",
    "val_unseen_separation",
    "val_score",
)


def branch_summary(history: list[dict[str, float]]) -> dict[str, Any]:
    """Per-epoch losses and separations of each branch, and the dead-branch warning (for `glass info`)."""
    rows = [{"epoch": r["epoch"], **{k: round(r[k], 4) for k in BRANCH_KEYS if k in r}} for r in history]
    return {"epochs": rows, "warning": dead_branch_warning(history)}


def _trainable_state(model: GlassModel) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.startswith("discriminator.") or k.startswith("adaptor.")
    }


def _epoch_line(record: dict[str, float]) -> str:
    parts = [f"epoch {record['epoch']:>3}", f"loss {record['loss']:.4f}"]
    parts += [f"{k[5:]} {record[k]:.4f}" for k in ("loss_normal", "loss_gas", "loss_las") if k in record]
    if "val_score" in record:
        parts.append(f"val LAS image AUROC {record['val_image_auroc']:.3f} AP {record['val_patch_ap']:.3f}")
        parts.append(f"unseen {record['val_unseen_image_auroc']:.3f} AP {record['val_unseen_patch_ap']:.3f}")
        if "val_gas_separation" in record:
            parts.append(f"GAS sep {record['val_gas_separation']:.3f}")
    parts.append(f"{record['elapsed_s']:.0f} s")
    return " | ".join(parts)


def _format_stats(stats: dict[str, Any]) -> str:
    keys = ("n", "radius", "density1", "density2")
    return ", ".join(f"{k}={stats[k]:.3g}" for k in keys if k in stats and isinstance(stats[k], (int, float)))


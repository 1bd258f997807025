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
from .cache import FeatureStore
from .calibration import calibrate
from .config import GlassConfig
from .datasets import Preprocessor, Sample, load_dataset
from .foreground import foreground_mask, is_object_category
from .io import ImageReadError, read_image
from .las import LocalAnomalySynthesizer
from .losses import bce, las_loss
from .metrics import image_auroc, pixel_ap
from .model import GlassModel, build_model, make_checkpoint, resolve_device, save_checkpoint, CHECKPOINT_NAME
from .spectrum import choose_hypothesis, mean_image
from .textures import load_textures

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


def measure_feature_scale(features: torch.Tensor, target_std: float | None) -> float:
    """Scale-aware GAS: factor that brings the mean per-component std of the features to `target_std`."""
    if target_std is None:
        return 1.0
    flat = features.reshape(-1, features.shape[-1]).float()
    std = flat.std(dim=0).mean().item()
    return target_std / max(std, 1e-8)


# ---------------------------------------------------------------------------------------------------
# One training step


def gas_settings(config: GlassConfig, hypothesis: str) -> gas_module.GASSettings:
    return gas_module.GASSettings(
        hypothesis=hypothesis,
        mode=config.gas,
        noise_std=config.noise_std,
        steps=config.ascent_steps,
        step_size=config.ascent_step_size,
        project_every=config.project_every,
        r1=config.r1,
        r2=config.r2,
    )


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training arithmetic runs under bf16 autocast."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


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


def _step_loss(model, normal, las_features, las_labels, centre, config, settings, generator):
    batch, patches, dim = normal.shape
    # Feature geometry (distances, projections, ascent steps) stays float32 even under autocast.
    u = model.adaptor(normal.reshape(-1, dim)).float()
    centres = centre.repeat(batch, 1)
    fake = labels = None
    if las_features is not None:
        fake = model.adaptor(las_features.reshape(-1, dim)).float()
        labels = las_labels.reshape(-1)

    # r'1: 75 % quantile of normal distances to the centre (normal LAS patches count as normal).
    radius = None
    if settings.hypothesis == "hypersphere":
        normal_points = u if fake is None else torch.cat([fake[labels < 0.5], u])
        normal_centres = centres if fake is None else torch.cat([centres[: len(fake)][labels < 0.5], centres])
        radius = gas_module.hypersphere_radius(normal_points, normal_centres, config.radius_quantile)

    loss_terms: dict[str, torch.Tensor] = {}
    true_scores = None
    if config.gas != "off":
        count = len(u)
        if config.gas_patch_fraction < 1.0:
            keep = max(1, int(count * config.gas_patch_fraction))
            subset = torch.randperm(count, generator=generator)[:keep].to(u.device)
        else:
            subset = torch.arange(count, device=u.device)
        v = gas_module.synthesize(
            model.discriminator, u[subset], settings, centres=centres[subset], radius=radius, generator=generator
        )
        scores = model.discriminator(torch.cat([u, v])).float()
        true_scores, gas_scores = scores[:count], scores[count:]
        loss_terms["normal"] = bce(true_scores, 0.0)
        loss_terms["gas"] = bce(gas_scores, 1.0)
    else:
        true_scores = model.discriminator(u).float()
        loss_terms["normal"] = bce(true_scores, 0.0)

    if fake is not None:
        if settings.hypothesis == "hypersphere":
            fake = gas_module.project_las_features(fake, labels, centres[: len(fake)], radius)
        fake_scores = model.discriminator(fake).float().squeeze(1)
        loss_terms["las"] = las_loss(fake_scores, labels, config.focal_gamma, config.ohem_quantile)

    loss = sum(loss_terms.values())
    stats = {f"loss_{k}": float(v.detach()) for k, v in loss_terms.items()}
    stats["loss"] = float(loss.detach())
    stats["p_true"] = float((true_scores.detach() < 0.5).float().mean())
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


@torch.no_grad()
def score_features(model: GlassModel, features: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Patch scores N×P for stored features, in eval mode (batch norm running statistics)."""
    out = []
    for start in range(0, len(features), batch_size):
        out.append(model.patch_scores(features[start : start + batch_size]).flatten(1))
    return torch.cat(out)


def validate(model: GlassModel, val: ValidationSet) -> dict[str, float]:
    model.eval()
    normal = score_features(model, val.normal)
    anomalous = score_features(model, val.anomalous)
    model.discriminator.train()
    model.adaptor.train()
    image_scores = torch.cat([normal.amax(1), anomalous.amax(1)]).numpy()
    image_labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    patch_scores = torch.cat([normal.flatten(), anomalous.flatten()]).numpy()
    patch_labels = torch.cat([torch.zeros(normal.numel()), val.labels.flatten()]).numpy()
    auroc = image_auroc(image_scores, image_labels)
    ap = pixel_ap(patch_scores, patch_labels.astype(bool))
    return {"val_image_auroc": auroc, "val_patch_ap": ap, "val_score": 0.5 * (auroc + ap)}


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
) -> TrainResult:
    """Train GLASS on `data_root`'s normal training images and write `out_dir/model.pt`."""
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
    foreground = compute_foreground(images, config.foreground) if config.las else None
    echo(f"foreground masks: {'on' if foreground is not None else 'off (whole image)'}")
    synthesizer = None
    if config.las:
        textures = load_textures(config.textures, config.image_size)
        synthesizer = LocalAnomalySynthesizer(
            config.image_size,
            textures,
            beta_mean=config.beta_mean,
            beta_std=config.beta_std,
            beta_min=config.beta_min,
            beta_max=config.beta_max,
        )

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

    # 5. Feature scale, measured once on (a subset of) the normal features.
    probe_index = np.sort(rng.choice(len(images), size=min(len(images), 64), replace=False))
    if store is not None:
        probe = store.read(probe_index)
    else:
        with torch.no_grad():
            probe = torch.cat([model.features(images[i : i + 1].to(device).float() / 255) for i in probe_index]).cpu()
    scale = measure_feature_scale(probe, config.feature_std)
    model.feature_scale.fill_(scale)
    if store is not None:
        store.array *= np.asarray(scale, dtype=store.array.dtype)

    # The per-position mean of the (frozen, scaled) features: the hypersphere centre is A(mean), since A
    # is linear — no pass over the data per epoch.
    mean_feature = _mean_feature(model, images, store, device)

    val = None
    if holdout is not None and synthesizer is not None:
        val = _validation_set(model, holdout, synthesizer, config, device, foreground is not None)

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
    settings = gas_settings(config, hypothesis)
    bf16 = use_bf16(config.precision, device)
    echo(f"training arithmetic: {'bf16 autocast' if bf16 else 'float32'}")
    iterations = math.ceil((config.images_per_epoch + 1) / config.batch_size)
    iterations = min(iterations, math.ceil(len(images) / config.batch_size))

    history: list[dict[str, float]] = []
    stopper = EarlyStopping(config.patience, config.stop_window)
    best_state, best_epoch = None, 0
    model.discriminator.train()
    model.adaptor.train()
    bar = tqdm(range(config.epochs), desc="training", unit="epoch", disable=not progress)
    epoch = 0
    for epoch in bar:
        with torch.no_grad():
            centre = model.adaptor(mean_feature)
        order = rng.permutation(len(images))
        epoch_stats: list[dict[str, float]] = []
        for it in range(iterations):
            index = np.sort(order[it * config.batch_size : (it + 1) * config.batch_size])
            if len(index) < 2:
                break
            normal = _normal_features(model, images, store, index, device)
            las_features = las_labels = None
            if synthesizer is not None:
                batch = images[index].float() / 255.0
                fg = foreground[index] if foreground is not None else None
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
        for scheduler in schedulers:
            scheduler.step()

        # 7. Validation on held-out normals + fixed synthetic anomalies; model selection and stopping.
        if val is not None:
            record.update(validate(model, val))
            if stopper.update(record["val_score"]):
                best_epoch, best_state = epoch + 1, _trainable_state(model)
        record["elapsed_s"] = time.perf_counter() - start_time
        history.append(record)
        (bar.write if progress else echo)(_epoch_line(record))
        if config.early_stopping and val is not None and stopper.should_stop:
            echo(
                f"early stop after epoch {epoch + 1}: the {config.stop_window}-epoch mean validation score has not "
                f"risen for {config.patience} epochs (best: epoch {best_epoch})"
            )
            break
    bar.close()
    epochs_run = epoch + 1
    if config.early_stopping and best_state is not None:
        model.load_state_dict(best_state, strict=False)
    else:
        best_epoch = epochs_run
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
            "history": history,
        },
    )
    path = save_checkpoint(checkpoint, out_dir / CHECKPOINT_NAME)
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
    normal, anomalous, labels = [], [], []
    for start in range(0, len(batch), 16):
        part = batch[start : start + 16]
        part_fg = fg[start : start + 16] if fg is not None else None
        synthetic = synthesizer(part, part_fg, val_rng)
        normal.append(model.features(part.to(device)).cpu())
        anomalous.append(model.features(synthetic.images.to(device)).cpu())
        labels.append(synthetic.patch_labels.cpu())
    return ValidationSet(torch.cat(normal).to(device), torch.cat(anomalous).to(device), torch.cat(labels))


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
        parts.append(f"val image AUROC {record['val_image_auroc']:.4f} patch AP {record['val_patch_ap']:.4f}")
    parts.append(f"{record['elapsed_s']:.0f} s")
    return " | ".join(parts)


def _format_stats(stats: dict[str, Any]) -> str:
    keys = ("n", "radius", "density1", "density2")
    return ", ".join(f"{k}={stats[k]:.3g}" for k in keys if k in stats and isinstance(stats[k], (int, float)))


"""Preparation, before the first epoch: the normal images (split, decoded once), the synthesis set-up
(hypothesis, foreground, textures, LAS), the backbone's images per pass, the normal features (cache, measured
geometry, scale) and the pool of LAS copies."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from glass_ad.config import GlassConfig
from glass_ad.data.io import ImageReadError, read_image
from glass_ad.data.layouts import DatasetSplit, Sample, load_dataset
from glass_ad.data.preprocessing import Preprocessor, choose_input_shape, resolve_fit
from glass_ad.model.chunking import choose_batch_chunk
from glass_ad.model.geometry import FeatureGeometry, SpacingProbe, measure_geometry
from glass_ad.model.glass_model import GlassModel
from glass_ad.synthesis.foreground import foreground_mask, is_object_category
from glass_ad.synthesis.las import LocalAnomalySynthesizer
from glass_ad.synthesis.spectrum import choose_hypothesis, mean_image
from glass_ad.synthesis.textures import textures_from_config, wants_grey_textures
from glass_ad.training.cache import FeatureStore
from glass_ad.training.distributed import Distributed
from glass_ad.training.las_pool import LASPool

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------
# The normal images


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


@dataclass
class TrainingImages:
    """The normal images of one run, decoded once (uint8 N×3×S×S), and where they came from."""

    config: GlassConfig  # with the image fit resolved
    dataset: DatasetSplit
    train_samples: list[Sample]
    holdout_samples: list[Sample]
    images: torch.Tensor
    holdout: torch.Tensor | None  # held-out normal images: validation and threshold calibration


def prepare_images(
    data_root: str | Path,
    config: GlassConfig,
    *,
    category: str | None = None,
    layout: str = "auto",
    progress: bool = True,
    echo: Echo = print,
) -> TrainingImages:
    """Normal training images only (`train/good`), split into train and holdout, decoded once."""
    dataset = load_dataset(data_root, layout, category=category)
    train_samples, holdout_samples = split_holdout(dataset.train, config)
    if config.fit == "auto":  # decided once from the training images; the checkpoint stores the decision
        config = config.replace(fit=resolve_fit(config.fit, dataset.train))
        shape = choose_input_shape(dataset.train, config.image_size) if config.image_shape is None else None
        if config.fit == "stretch" and shape is not None:  # elongated parts keep their aspect ratio
            config = config.replace(image_shape=shape).validate()
        height, width = config.input_shape
        echo(f"image fit: {config.fit}" + (f", network input {height}×{width} (the images' aspect ratio)" if shape else ""))
    preprocessor = Preprocessor.from_config(config)
    images, train_samples = decode_images(train_samples, preprocessor, progress=progress)
    holdout = None
    if holdout_samples:
        holdout = decode_images(holdout_samples, preprocessor, progress=progress, desc="decoding holdout")[0]
    if len(images) < config.batch_size:
        raise ValueError(f"need at least {config.batch_size} readable training images, found {len(images)}")
    held = 0 if holdout is None else len(holdout)
    echo(f"training images: {len(images)}, held out for validation/calibration: {held}")
    return TrainingImages(config, dataset, train_samples, holdout_samples, images, holdout)


# ---------------------------------------------------------------------------------------------------
# Synthesis set-up


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


def is_grey(images: torch.Tensor, probe: int = 32) -> bool:
    """True when the (probed) N×3×S×S uint8 images have equal channels: a grey product."""
    sample = images[:: max(1, len(images) // probe)][:probe].to(torch.int16)
    return bool(((sample[:, 0] - sample[:, 1]).abs().max() <= 2) and ((sample[:, 0] - sample[:, 2]).abs().max() <= 2))


@dataclass
class SynthesisSetup:
    """What the two synthesis strategies need, decided once from the training images."""

    hypothesis: str  # "manifold" or "hypersphere" (GLASS-j's rule unless forced)
    spectrum: dict[str, Any]  # the spectrogram statistics behind an automatic choice
    foreground: torch.Tensor | None  # N×1×S×S masks that keep LAS on the object, or None
    las: LocalAnomalySynthesizer  # built even with --no-las: validation draws from it
    # Training's LAS copies when they come from a pool of re-used copies (las_pool.py, set by the trainer
    # once the model exists); None: a fresh copy at every visit.
    las_pool: Any = None


def prepare_synthesis(images: torch.Tensor, config: GlassConfig, echo: Echo = print) -> SynthesisSetup:
    """Hypothesis (GLASS-j), foreground masks, textures (grey for grey products) and the LAS synthesizer."""
    spectrum: dict[str, Any] = {}
    hypothesis = config.hypothesis
    if hypothesis == "auto":
        hypothesis, spectrum = choose_hypothesis(mean_image(img.permute(1, 2, 0).numpy() for img in images))
        echo(f"hypothesis: {hypothesis} (chosen by the spectrogram rule: {_format_stats(spectrum)})")
    else:
        echo(f"hypothesis: {hypothesis} (forced)")
    foreground = compute_foreground(images, config.foreground)
    echo(f"foreground masks: {'on' if foreground is not None else 'off (whole image)'}")
    grey_images = is_grey(images)
    textures = textures_from_config(config, grey_images=grey_images)
    grey = wants_grey_textures(config.texture_colour, grey_images)
    echo(
        f"LAS textures: {'grey (the training images are grey)' if grey else 'colour'}"
        + ("" if config.las else " (validation only: --no-las)")
    )
    return SynthesisSetup(hypothesis, spectrum, foreground, LocalAnomalySynthesizer.from_config(config, textures))


def _format_stats(stats: dict[str, Any]) -> str:
    keys = ("n", "radius", "density1", "density2")
    return ", ".join(f"{k}={stats[k]:.3g}" for k in keys if k in stats and isinstance(stats[k], (int, float)))


# ---------------------------------------------------------------------------------------------------
# The normal features


def choose_chunk(
    model: GlassModel,
    device: torch.device,
    config: GlassConfig,
    group: Distributed,
    kept: int | None = None,
    echo: Echo = print,
) -> None:
    """Set the images per backbone pass: as the interrupted run had them (`kept`), as asked, or by the rule
    of batch size and input area; rank 0's choice on every rank."""
    fixed, why = config.backbone_chunk, "asked for"
    if kept is not None:
        fixed, why = int(kept), "as in the interrupted run"
    chunk = group.broadcast(choose_batch_chunk(model, device, config.batch_size, fixed=fixed, why=why))
    model.batch_chunk = chunk.size
    echo(chunk.reason)


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
        store = FeatureStore(len(images), model.num_patches, model.embed_dim)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        batch = images[start : start + batch_size].to(device).float() / 255.0
        store.write(start, model.features(batch))
    return store


class NormalFeatures:
    """The normal training images' patch features (B×P×D, scaled): read from the cache, or computed by the
    frozen backbone on demand when the cache is off."""

    def __init__(self, model: GlassModel, images: torch.Tensor, store: FeatureStore | None, device: torch.device):
        self.model, self.images, self.store, self.device = model, images, store, device

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: np.ndarray) -> torch.Tensor:
        if self.store is not None:
            return self.store.read(index, self.device)
        with torch.no_grad():
            return self.model.features(self.images[index].to(self.device).float() / 255.0)

    @torch.no_grad()
    def mean(self) -> torch.Tensor:
        """The per-position mean P×D. The hypersphere centre is A(mean): A is linear, so no pass over the data
        is needed per epoch."""
        total = torch.zeros(self.model.num_patches, self.model.embed_dim, dtype=torch.float64, device=self.device)
        for start in range(0, len(self), 16):
            total += self.batch(np.arange(start, min(start + 16, len(self)))).double().sum(0)
        return (total / len(self)).float()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


class FeaturesInMemory:
    """Patch features computed already (N×P×D, scaled), read like `NormalFeatures` (`batch`, `len`): for
    building a bank or probing a branch from features at hand (benchmarks, tests)."""

    def __init__(self, features: torch.Tensor):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, index: np.ndarray) -> torch.Tensor:
        return self.features[torch.as_tensor(index)]


@dataclass
class FeatureSetup:
    features: NormalFeatures
    geometry: FeatureGeometry  # the measured normal spacing and the scale applied to the features
    spacing_probe: SpacingProbe  # re-measures the spacing in adaptor space every epoch (GAS's length unit)
    mean_feature: torch.Tensor  # P×D


def prepare_features(
    model: GlassModel,
    images: torch.Tensor,
    config: GlassConfig,
    device: torch.device,
    rng: np.random.Generator,
    *,
    spill_dir: str | Path | None = None,
    progress: bool = True,
    echo: Echo = print,
) -> FeatureSetup:
    """Cache the frozen backbone's features (when on), then the scale rule: measure the spacing of the normal
    features once (median distance to the nearest patch of another image) and scale the features so that it
    equals `feature_spacing` (docs/method.md)."""
    model.feature_scale.fill_(1.0)
    store = None
    if config.cache_features:
        store = FeatureStore(
            len(images),
            model.num_patches,
            model.embed_dim,
            dtype=config.cache_dtype,
            ram_limit_gb=config.cache_ram_limit_gb,
            spill_dir=spill_dir,
        )
        extract_features(model, images, device, store=store, progress=progress)
    features = NormalFeatures(model, images, store, device)

    probe_index = np.sort(rng.choice(len(images), size=min(len(images), 64), replace=False))
    probe_features = features.batch(probe_index).cpu()
    spacing_probe = SpacingProbe.from_features(probe_features, rng)
    del probe_features
    geometry = measure_geometry(spacing_probe, config.feature_spacing)
    echo(f"feature geometry: {geometry.describe()}")
    scale = geometry.scale
    model.feature_scale.fill_(scale)
    spacing_probe = SpacingProbe(spacing_probe.queries.mul_(scale).to(device), spacing_probe.bank.mul_(scale).to(device))
    if store is not None:
        store.array *= np.asarray(scale, dtype=store.array.dtype)
    return FeatureSetup(features, geometry, spacing_probe, features.mean())


def prepare_las_pool(
    model: GlassModel,
    images: torch.Tensor,
    synthesis: SynthesisSetup,
    config: GlassConfig,
    device: torch.device,
    *,
    rank: int = 0,
    spill_dir: str | Path | None = None,
    echo: Echo = print,
) -> None:
    """Give `synthesis` its pool of re-used LAS copies when the recipe asks for one (las_pool.py)."""
    if not (config.las and config.las_variants):
        return
    synthesis.las_pool = LASPool(
        model, images, synthesis.foreground, synthesis.las, config, device, rank=rank, spill_dir=spill_dir
    )
    echo(f"LAS: {config.las_variants} copies per image, each one's features computed at its first use and re-used")

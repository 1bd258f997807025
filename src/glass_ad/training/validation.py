"""Validation on held-out normal images plus fixed synthetic anomalies (never test data): each branch's own
effect (GAS, LAS and unseen-family separations), the selection score, and the stopping rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.evaluation.metrics import PixelRanking, image_auroc, pixel_auroc
from glass_ad.model.glass_model import GlassModel
from glass_ad.synthesis import gas as gas_module
from glass_ad.synthesis.las import LocalAnomalySynthesizer
from glass_ad.synthesis.unseen_anomalies import UnseenAnomalySynthesizer
from glass_ad.training.preparation import (
    FeatureSetup,
    SynthesisSetup,
    TrainingImages,
    compute_foreground,
    prepare_images,
    prepare_synthesis,
)


@dataclass
class ValidationSet:
    normal: torch.Tensor  # Nv×P×D scaled features of held-out normal images
    anomalous: torch.Tensor  # Nv×P×D features of the same images with LAS anomalies
    labels: torch.Tensor  # Nv×P patch labels of the anomalies
    unseen: torch.Tensor  # Nv×P×D features of the same images with the unseen family (strokes, blobs)
    unseen_labels: torch.Tensor  # Nv×P
    # A fixed sample of held-out normal patch vectors and their distance to the nearest training patch: the
    # nearest-neighbour view of "how unusual" each patch is, against which D's ranking is compared.
    probe_rows: torch.Tensor | None = None  # M×D
    probe_distances: torch.Tensor | None = None  # M
    # Pixel masks of the two families (Nv×H×W bool), kept only on request (measurements of the maps).
    masks: torch.Tensor | None = None
    unseen_masks: torch.Tensor | None = None


AGREEMENT_QUERIES = 8192  # held-out normal patch vectors in the agreement probe
AGREEMENT_BANK = 16384  # training patch vectors they are compared with


@torch.no_grad()
def nn_agreement_probe(
    normal: torch.Tensor, bank: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random sample of the held-out normal patches (``normal``: Nv×P×D) and each one's distance to the
    nearest of ``bank`` (training patch vectors, M×D). Features are frozen, so this is computed once."""
    generator = torch.Generator().manual_seed(seed)
    rows = normal.reshape(-1, normal.shape[-1])
    rows = rows[torch.randperm(len(rows), generator=generator)[:AGREEMENT_QUERIES].to(rows.device)]
    bank = bank[torch.randperm(len(bank), generator=generator)[:AGREEMENT_BANK].to(bank.device)].to(rows.device)
    distances = torch.cat([torch.cdist(rows[i : i + 1024].float(), bank.float()).amin(1) for i in range(0, len(rows), 1024)])
    return rows, distances


@torch.no_grad()
def nn_agreement(model: GlassModel, rows: torch.Tensor, distances: torch.Tensor) -> float:
    """Spearman correlation between D's logit and the nearest-neighbour distance over the probe patches:
    1 when D ranks held-out normal patches exactly as "distance from the normal training data" does."""
    from scipy.stats import spearmanr

    logits = model.discriminator.logits(model.adaptor(rows)).flatten().float().cpu().numpy()
    value = spearmanr(logits, distances.cpu().numpy()).correlation
    return float(value) if np.isfinite(value) else 0.0


@torch.no_grad()
def score_features(model: GlassModel, features: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Patch scores N×P for stored features, in eval mode (batch norm running statistics)."""
    out = []
    for start in range(0, len(features), batch_size):
        out.append(model.patch_scores(features[start : start + batch_size]).flatten(1))
    return torch.cat(out)


GAS_PROBE_PATCHES = 4096  # held-out normal patch vectors used to measure the GAS separation
GAS_DEAD_AUROC = 0.6  # below this the discriminator does not tell GAS from normal: the branch is dead
# At or above this GAS has trained the discriminator: model selection prefers such epochs, and early
# stopping waits for one (training/progress.py, trainer.py; docs/method.md, deviation 6).
GAS_TRAINED_AUROC = 0.9


def _family_scores(normal: torch.Tensor, anomalous: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Image AUROC, patch AP and patch AUROC (normal patches vs anomalous ones) of one synthetic family."""
    image_scores = torch.cat([normal.amax(1), anomalous.amax(1)]).numpy()
    image_labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    patch_scores = torch.cat([normal.flatten(), anomalous.flatten()]).numpy()
    patch_labels = torch.cat([torch.zeros(normal.numel()), labels.flatten()]).numpy().astype(bool)
    patches = PixelRanking(patch_scores, patch_labels)  # one sort for patch AP and AUROC
    auroc, ap, separation = image_auroc(image_scores, image_labels), patches.ap(), patches.auroc()
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
    if val.probe_rows is not None and val.probe_distances is not None:
        record["val_nn_agreement"] = nn_agreement(model, val.probe_rows, val.probe_distances)
    if selection == "agreement" and "val_nn_agreement" in record:
        record["val_score"] = record["val_nn_agreement"]
    elif selection == "las":
        record["val_score"] = las["score"]
    else:
        record["val_score"] = min(las["score"], unseen["score"])
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


@torch.no_grad()
def build_validation_set(
    model: GlassModel,
    holdout: torch.Tensor,
    synthesizer: LocalAnomalySynthesizer,
    config: GlassConfig,
    device: torch.device,
    use_foreground: bool,
    keep_masks: bool = False,
) -> ValidationSet:
    """Features of the held-out normal images and of fixed synthetic anomalies on them: the LAS family that
    training draws from and the unseen family (strokes, blobs) that it never draws (and, with `keep_masks`,
    their pixel masks)."""
    # A fixed seed: the same synthetic anomalies every epoch and every run with this seed.
    val_rng = np.random.default_rng(config.seed + 10_007)
    batch = holdout.float() / 255.0
    # The same foreground decision as for the training images (not a new "auto" vote on the holdout).
    fg = compute_foreground(holdout, "on") if use_foreground else None
    unseen_rng = np.random.default_rng(config.seed + 20_011)
    unseen_synthesizer = UnseenAnomalySynthesizer.from_config(config)
    normal, anomalous, labels, unseen, unseen_labels, masks, unseen_masks = [], [], [], [], [], [], []
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
        if keep_masks:
            masks.append(synthetic.masks[:, 0].cpu() > 0.5)
            unseen_masks.append(other.masks[:, 0].cpu() > 0.5)
    return ValidationSet(
        torch.cat(normal).to(device),
        torch.cat(anomalous).to(device),
        torch.cat(labels),
        torch.cat(unseen).to(device),
        torch.cat(unseen_labels),
        masks=torch.cat(masks) if keep_masks else None,
        unseen_masks=torch.cat(unseen_masks) if keep_masks else None,
    )


def prepare_validation(
    model: GlassModel,
    data: TrainingImages,
    synthesis: SynthesisSetup,
    setup: FeatureSetup,
    config: GlassConfig,
    device: torch.device,
) -> ValidationSet | None:
    """The validation set of the run's held-out normals (None: no holdout) with its nearest-neighbour probe."""
    if data.holdout is None:
        return None
    val = build_validation_set(model, data.holdout, synthesis.las, config, device, synthesis.foreground is not None)
    # The nearest-neighbour view of the held-out normal patches, once (the features are frozen); its own
    # random stream, so the training's draws do not change.
    count = len(data.images)
    picked = np.random.default_rng(config.seed + 30_011).choice(count, min(64, count), replace=False)
    bank = setup.features.batch(np.sort(picked))
    val.probe_rows, val.probe_distances = nn_agreement_probe(val.normal, bank.reshape(-1, bank.shape[-1]), config.seed)
    return val


@dataclass
class RunValidation:
    """A trained run's own validation split, rebuilt after training (for measurements on it)."""

    checkpoint: Any  # glass_ad.model.checkpoint.Checkpoint
    model: GlassModel  # the run's model, in eval mode
    images: TrainingImages  # the run's training images and holdout (same seed and settings)
    synthesis: SynthesisSetup  # its LAS synthesizer, hypothesis and foreground decision
    val: ValidationSet  # the held-out normals, their LAS copies and their unseen-family copies


def rebuild_run_validation(
    run: str | Path, data_root: str | Path, device: torch.device | None = None, keep_masks: bool = False
) -> RunValidation:
    """What model selection of `run` saw: its holdout of `data_root`'s normal training images and the fixed
    synthetic anomalies on them (with their pixel masks if `keep_masks`), from the run's stored settings
    and seed. No test image is read."""
    from glass_ad.model.checkpoint import Checkpoint  # the checkpoint module is not needed for training

    device = device or torch.device("cpu")
    checkpoint = Checkpoint.load(run)
    model = checkpoint.build_model(device).eval()
    model.set_memory_bank(None)  # selection saw the discriminator alone: the hybrid's bank is built afterwards
    images = prepare_images(data_root, checkpoint.config, progress=False, echo=lambda _: None)
    if images.holdout is None:
        raise ValueError(f"{run} was trained without a holdout: there is no validation split to rebuild")
    synthesis = prepare_synthesis(images.images, images.config, echo=lambda _: None)
    use_foreground = synthesis.foreground is not None
    val = build_validation_set(model, images.holdout, synthesis.las, images.config, device, use_foreground, keep_masks)
    return RunValidation(checkpoint, model, images, synthesis, val)


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
    "val_nn_agreement",
    "val_score",
)


def branch_summary(history: list[dict[str, float]]) -> dict[str, Any]:
    """Per-epoch losses and separations of each branch, and the dead-branch warning (for `glass info`)."""
    rows = [{"epoch": r["epoch"], **{k: round(r[k], 4) for k in BRANCH_KEYS if k in r}} for r in history]
    return {"epochs": rows, "warning": dead_branch_warning(history)}

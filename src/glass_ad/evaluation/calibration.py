"""Decision thresholds and a normalised score, fixed at training time from held-out normal images.

One concept at some length (over 400 lines): computing a `Calibration` from normal evidence, held-out,
pooled (``--normals``) or labelled (``--val``); the rule itself is `model/decision.py`.

No defect image is needed. The image threshold is the predictive threshold of a stated tail model fitted
to the held-out normal images' scores (model/operating_point.py: the logit of the image score is Gumbel
distributed; the threshold's expected realised false-alarm rate is the target; it comes with an estimate,
a 95 % interval and a model-free bound, stored in the `Calibration` and shown by every command that shows
the decision). The pixel threshold is the same construction on the normal images' map maxima, and an
image's region is where its map rises at least half-way from it to the map's peak. The normalised score is
a logistic curve fixed by two numbers of the same distribution:

    normalized(s) = 1 / (1 + exp(−(s − t) / τ)),  τ = (t − m) / ln 9

with t the threshold and m the median normal score, so that the median normal image maps to 0.1 and
the threshold to 0.5. It is monotone, lies in (0, 1), and is the same formula in PyTorch and ONNX.

`glass calibrate RUN_DIR --normals DIR` pools more good images the model never trained on with the held-out
ones and re-fits all of this (`calibrate_normals`): the way to tighten the operating point.

Optionally (`glass calibrate RUN_DIR --val DIR`), a labelled validation set that is not the test set
adds a second operating point, the F1-optimal image (and pixel) threshold, stored next to the
false-alarm one under ``f1_*`` keys; the false-alarm threshold and the normalisation never change.

This module computes; the result is a `decision.Calibration`, stored in and read from the model's
`checkpoint.Checkpoint` (`decision.py` also defines the behaviour of a checkpoint without calibration).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.data.datasets import ImageDataset
from glass_ad.data.io import ImageReadError, list_images
from glass_ad.data.layouts import MaskIndex, Sample, mask_folders
from glass_ad.data.preprocessing import Preprocessor
from glass_ad.evaluation.metrics import f1_optimal_threshold, threshold_stats
from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
from glass_ad.model.decision import LN9, Calibration, F1Thresholds, Normalization
from glass_ad.model.operating_point import REGION_HEIGHT, OperatingEstimate, estimate_threshold, fit_threshold

# The region's base level: the (1 − target) quantile of normal map values. Tried and dropped: a tail model of the
# normal maps' maxima, whose extrapolated level on MPDD metal_plate (saturated maps, 5 held-out images) gave the
# region an IoU of 0–5 % with the defects against 69–76 % here (docs/benchmarks.md, "The OK/NG decision on two
# products").
PIXEL_RULE = "normal-pixel-quantile"
PIXEL_SAMPLE = 8192  # normal map values kept in the checkpoint, so that `--normals` can pool them

log = logging.getLogger(__name__)


def readable_batches(dataset, batch_size: int, skipped: list[str], *, progress: bool = False, desc: str = "scoring"):
    """The dataset's items in lists of `batch_size`; a file that cannot be read is logged, appended to
    `skipped` (its one-line reason) and left out."""
    from tqdm.auto import tqdm

    pending: list[dict[str, Any]] = []
    for index in tqdm(range(len(dataset)), desc=desc, unit="img", disable=not progress):
        try:
            pending.append(dataset[index])
        except ImageReadError as error:
            log.warning("skipped: %s", error)
            skipped.append(str(error))
            continue
        if len(pending) == batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


@torch.no_grad()
def holdout_evidence(model, images: torch.Tensor, device, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image scores (N,), a random sample of pixel-map values, and each map's largest value (N,) of uint8
    N×3×S×S images."""
    model.eval()
    image_scores, pixel_values, maxima = [], [], []
    rng = np.random.default_rng(0)
    for start in range(0, len(images), batch_size):
        out = model(images[start : start + batch_size].to(device).float() / 255.0)
        image_scores.append(out.image_scores.cpu().numpy())
        maps = out.anomaly_maps.cpu().numpy().reshape(len(out.anomaly_maps), -1)
        maxima.append(maps.max(axis=1))
        take = min(maps.shape[1], 20_000)  # a sample per image keeps memory flat for large sets
        pixel_values.append(np.take_along_axis(maps, rng.integers(0, maps.shape[1], (len(maps), take)), 1).ravel())
    return np.concatenate(image_scores), np.concatenate(pixel_values), np.concatenate(maxima)


def holdout_scores(model, images: torch.Tensor, device, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and a random sample of pixel-map values of uint8 N×3×S×S images."""
    image_scores, pixel_values, _ = holdout_evidence(model, images, device, batch_size)
    return image_scores, pixel_values


def logistic_normalization(normal_scores: np.ndarray, threshold: float) -> Normalization:
    """The curve that maps the median normal score to 0.1 and the threshold to 0.5."""
    median = float(np.median(np.asarray(normal_scores, dtype=np.float64)))  # float32 would round the mid-point
    return normalization_from_median(median, threshold)


def normalization_from_median(median: float, threshold: float) -> Normalization:
    spread = (threshold - median) / LN9
    if not spread > 1e-6:  # degenerate holdout (all scores equal): a narrow but valid curve
        spread = max(abs(threshold) * 1e-3, 1e-6)
    return Normalization(float(threshold), float(spread))


def holdout_warning(estimate: OperatingEstimate) -> str | None:
    """A warning when the held-out evidence does not hold the realised rate within 2× of the target (the
    95 % interval of `operating_point.py` ends above it, or there are too few images for a model)."""
    if estimate.supported:
        return None
    reach = f"the realised rate may reach {100 * estimate.high:.1f} %" if estimate.high is not None else "its realised rate is unknown"
    return (
        f"the {100 * estimate.target:g} % false-alarm threshold comes from only {estimate.images} held-out normal images: "
        f"{reach} (95 %); add good images never trained on with `glass calibrate RUN --normals DIR`"
    )


def fit_calibration(
    image_scores,
    map_maxima,
    pixel_values,
    rate: float,
    *,
    sources: tuple[dict[str, Any], ...],
) -> Calibration:
    """The false-alarm operating point from normal evidence the model never trained on (operating_point.py):
    the image threshold from the image scores (the predictive threshold of the Gumbel tail model for the target
    ``rate``, with its estimate); the pixel threshold, the region's base level, the (1 − rate) quantile of the
    normal map values, with the estimated share of normal images whose map reaches it."""
    image_scores = np.asarray(image_scores, dtype=np.float64)
    map_maxima = np.asarray(map_maxima, dtype=np.float64)
    pixel_values = np.asarray(pixel_values, dtype=np.float64)
    image = fit_threshold(image_scores, rate)
    pixel_threshold = float(np.quantile(pixel_values, 1.0 - rate))
    pixel = estimate_threshold(pixel_threshold, map_maxima, rate)
    sample = pixel_values[:: max(1, len(pixel_values) // PIXEL_SAMPLE)][:PIXEL_SAMPLE]
    warning = holdout_warning(image)
    return Calibration(
        method="holdout-normal-tail-model",
        target_false_alarm_rate=rate,
        holdout_images=int(len(image_scores)),
        image_threshold=image.threshold,
        pixel_threshold=pixel.threshold,
        image_normalization=logistic_normalization(image_scores, image.threshold),
        pixel_normalization=normalization_from_median(float(np.median(pixel_values)), pixel.threshold),
        holdout_image_scores=tuple(float(s) for s in image_scores),
        warning=warning,
        image_estimate=image,
        pixel_estimate=pixel,
        holdout_map_maxima=tuple(float(s) for s in map_maxima),
        pixel_rule=PIXEL_RULE,
        holdout_pixel_sample=tuple(float(v) for v in sample),
        normal_sources=sources,
        region_height=REGION_HEIGHT,
    )


def calibrate_holdout(model, holdout: torch.Tensor, config: GlassConfig, device) -> Calibration:
    """Thresholds for the target false-alarm rate from held-out normal uint8 images N×3×S×S.

    Evidence that does not hold the rate within 2× of the target (see `holdout_warning`) is logged as a
    warning and stored as ``warning``; the decision line says so wherever it is shown.
    """
    image_scores, pixel_values, maxima = holdout_evidence(model, holdout, device)
    calibration = fit_calibration(
        image_scores, maxima, pixel_values, config.target_false_alarm_rate,
        sources=({"kind": "held-out", "images": int(len(image_scores))},),
    )  # fmt: skip
    if calibration.warning:
        log.warning(calibration.warning)
    return calibration


# ---------------------------------------------------------------------------------------------------
# F1-optimal thresholds on a labelled validation set (optional, `glass calibrate`).
#
# The stored false-alarm threshold needs no defect image. When the user does have labelled images that
# are *not* the test set, the F1-optimal threshold is a second, separately stored operating point; it
# never replaces the false-alarm one.

_PIXEL_BINS = 20_000  # a 5e-5 threshold resolution over [0, 1] with memory flat in the set size
# The histogram's span: discriminator maps are probabilities; hybrid maps are standardised scores (normal
# pixels about 0 ± 1), binned over a fixed wide span instead (a 0.002 resolution).
_PIXEL_SPANS = {"glass": (0.0, 1.0), "hybrid": (-10.0, 30.0)}
_RESERVED_FOLDERS = ("ground_truth", "masks")


def load_validation_set(folder: str | os.PathLike) -> tuple[list[Sample], Path]:
    """Labelled samples of a validation folder, and the folder the images come from.

    ``FOLDER/good/*`` are normal, every other subfolder ``FOLDER/<type>/*`` anomalous. Masks (optional)
    are ``<stem>_mask.<ext>`` or ``<stem>.<ext>`` in ``FOLDER/<type>/masks``, ``FOLDER/ground_truth/<type>``
    or ``FOLDER/../ground_truth/<type>``. An MVTec-style root (``FOLDER/test`` without ``FOLDER/good``)
    means ``FOLDER/test``. A defect image without a mask gets ``mask_path=None``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"validation folder not found: '{root}'")
    if not (root / "good").is_dir() and (root / "test").is_dir():
        root = root / "test"
    samples: list[Sample] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name.lower() in _RESERVED_FOLDERS:
            continue
        if sub.name == "good":
            samples.extend(Sample(path, 0, "good", None) for path in list_images(sub))
            continue
        masks = MaskIndex(mask_folders(root, sub.name))
        for path in list_images(sub):
            samples.append(Sample(path, 1, sub.name, masks.find(path.stem)))
    if not any(s.label == 0 for s in samples) or not any(s.label == 1 for s in samples):
        raise ValueError(
            f"validation folder '{root}' needs normal images in good/ and defect images in other subfolders "
            f"(found {sum(s.label == 0 for s in samples)} normal, {sum(s.label == 1 for s in samples)} defect)"
        )
    return samples, root


def _midpoint_threshold(scores: np.ndarray, threshold: float) -> float:
    """Move a threshold that sits exactly on a score halfway down to the next lower score.

    Same F1 on the validation set, but a margin on both sides instead of none below.
    """
    below = scores[scores < threshold]
    return float((threshold + below.max()) / 2.0) if below.size else float(threshold)


def _pixel_f1_threshold(positive: np.ndarray, negative: np.ndarray, span: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """F1-optimal pixel threshold from histograms of map values (bin lower edges over `span`)."""
    # Pixels with bin index >= k are "anomalous" at threshold k / bins (suffix sums).
    tp = np.cumsum(positive[::-1])[::-1].astype(np.float64)
    fp = np.cumsum(negative[::-1])[::-1].astype(np.float64)
    total_pos = float(positive.sum())
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = tp / total_pos if total_pos else np.zeros_like(tp)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    k = int(np.argmax(f1))
    low, high = span
    return low + (high - low) * k / (len(positive) - 1), float(f1[k])


@torch.no_grad()
def f1_calibration(
    model,
    samples: list[Sample],
    config: GlassConfig,
    device,
    *,
    batch_size: int = 8,
    progress: bool = False,
    bit_depth: int | None = None,
) -> dict[str, Any]:
    """F1-optimal image threshold (and pixel threshold, when every defect image has a mask) on labelled
    validation samples. Images go through the same uint8 preprocessing as training and `Detector`
    (``bit_depth``: the model's input bit depth for images deeper than 8 bits).

    Unreadable files are skipped (logged, and listed in ``f1_val_skipped_files``); returns the ``f1_*``
    fields `glass calibrate` stores.
    """

    dataset = ImageDataset(samples, Preprocessor.from_config(config), bit_depth=bit_depth)
    span = _PIXEL_SPANS[config.score]
    with_pixels = all(s.mask_path is not None for s in samples if s.label == 1)
    positive = np.zeros(_PIXEL_BINS + 1, dtype=np.int64)
    negative = np.zeros(_PIXEL_BINS + 1, dtype=np.int64)
    scores: list[float] = []
    labels: list[int] = []
    skipped: list[str] = []
    model.eval()

    def run(batch: list[dict[str, Any]]) -> None:
        # uint8 round trip: the exact input the deployed model (and the false-alarm calibration) sees.
        images = torch.stack([(item["image"] * 255.0).round().to(torch.uint8) for item in batch])
        out = model(images.to(device).float() / 255.0)
        scores.extend(out.image_scores.cpu().double().tolist())
        labels.extend(int(item["label"]) for item in batch)
        if with_pixels:
            scaled = (out.anomaly_maps.cpu().float() - span[0]) / (span[1] - span[0])
            bins = (scaled.clamp(0.0, 1.0) * _PIXEL_BINS).long().numpy()
            masks = torch.stack([item["mask"][0] for item in batch]).numpy() > 0.5
            positive[:] += np.bincount(bins[masks], minlength=_PIXEL_BINS + 1)
            negative[:] += np.bincount(bins[~masks], minlength=_PIXEL_BINS + 1)

    for batch in readable_batches(dataset, batch_size, skipped, progress=progress, desc="calibrating"):
        run(batch)

    score_array, label_array = np.asarray(scores), np.asarray(labels)
    if not ((label_array == 0).any() and (label_array == 1).any()):
        raise ValueError("F1 calibration needs readable normal and defect images")
    threshold, _ = f1_optimal_threshold(score_array, label_array)
    threshold = _midpoint_threshold(score_array, threshold)
    stats = threshold_stats(score_array, label_array, threshold)
    result: dict[str, Any] = {
        "f1_method": "validation-f1-optimal",
        "f1_image_threshold": threshold,
        "f1_image_f1": stats["f1"],
        "f1_image_precision": stats["precision"],
        "f1_image_recall": stats["recall"],
        "f1_image_false_alarm_rate": stats["false_alarm_rate"],
        "f1_val_images": int(len(score_array)),
        "f1_val_anomalous": int(label_array.sum()),
        "f1_val_skipped": len(skipped),
        "f1_val_skipped_files": skipped,
        "f1_pixel_threshold": None,
        "f1_pixel_f1": None,
    }
    if with_pixels and positive.sum() and negative.sum():
        result["f1_pixel_threshold"], result["f1_pixel_f1"] = _pixel_f1_threshold(positive, negative, span)
    return result


def calibrate_run(
    run: str | os.PathLike,
    val_dir: str | os.PathLike,
    *,
    device: str = "auto",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Add the F1-optimal thresholds of `val_dir` to the checkpoint of `run` (atomic rewrite).

    Only the F1 operating point changes; the false-alarm threshold and the normalisation stay as they are.
    Returns the new ``f1_*`` fields (plus ``f1_val_dir``).
    """
    from glass_ad.model.glass_model import resolve_device

    samples, root = load_validation_set(val_dir)
    checkpoint = Checkpoint.load(run)
    torch_device = resolve_device(device)
    model = checkpoint.build_model(torch_device)
    result = f1_calibration(
        model, samples, checkpoint.config, torch_device, batch_size=batch_size, progress=progress,
        bit_depth=checkpoint.bit_depth,
    )  # fmt: skip
    result["f1_val_dir"] = str(root)
    checkpoint.calibration = checkpoint.calibration.with_f1(F1Thresholds.from_fields(result))
    checkpoint.save(checkpoint_path(run))
    return result


# ---------------------------------------------------------------------------------------------------
# More normal evidence (`glass calibrate RUN --normals DIR`): good images the model never trained on are
# pooled with the held-out ones and the false-alarm operating point is re-fitted. No defect image needed.


def _training_folder(checkpoint: Checkpoint) -> Path | None:
    root = checkpoint.training.data_root
    return Path(root).resolve() / "train" if root else None


@torch.no_grad()
def normal_evidence(
    model, paths: list[Path], config: GlassConfig, device, *, batch_size: int = 8, progress: bool = False,
    bit_depth: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Image scores, a pixel sample and map maxima of normal image files (the uint8 input of training and
    `Detector`), and the files that could not be read."""

    dataset = ImageDataset([Sample(path, 0, "good", None) for path in paths], Preprocessor.from_config(config), bit_depth=bit_depth)
    scores, pixels, maxima, skipped = [], [], [], []
    for batch in readable_batches(dataset, batch_size, skipped, progress=progress, desc="scoring normals"):
        images = torch.stack([(item["image"] * 255.0).round().to(torch.uint8) for item in batch])
        image_scores, pixel_values, map_maxima = holdout_evidence(model, images, device, batch_size=len(batch))
        scores.append(image_scores)
        pixels.append(pixel_values[:: max(1, len(pixel_values) // 50_000)])
        maxima.append(map_maxima)
    if not scores:
        raise ValueError("no normal image could be read")
    return np.concatenate(scores), np.concatenate(pixels), np.concatenate(maxima), skipped


def calibrate_normals(
    run: str | os.PathLike,
    normals_dir: str | os.PathLike,
    *,
    device: str = "auto",
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Pool the good images of ``normals_dir`` (never trained on) with the checkpoint's held-out normal
    evidence and re-fit the false-alarm operating point (image and pixel threshold, estimates, the
    normalised score); the checkpoint is rewritten atomically. F1 thresholds are kept.

    Images inside the training data set's ``train`` folder are refused: the model trained on most of them,
    so their scores are lower than new normal images' and would make the threshold optimistic.
    Returns the old and new decision lines and counts.
    """
    from glass_ad.model.glass_model import resolve_device

    folder = Path(normals_dir)
    paths = list_images(folder, recursive=True)
    if not paths:
        raise ValueError(f"no images in '{folder}'")
    checkpoint = Checkpoint.load(run)
    train_folder = _training_folder(checkpoint)
    if train_folder is not None:
        inside = [p for p in paths if p.resolve().is_relative_to(train_folder)]
        if inside:
            raise ValueError(
                f"{len(inside)} of the images in '{folder}' lie in the training data's '{train_folder}' (e.g. {inside[0]}); "
                f"the model trained on those: give good images it never saw"
            )
    old = checkpoint.calibration
    resolved = str(folder.resolve())
    if any(source.get("folder") == resolved for source in old.normal_sources):
        raise ValueError(f"the normal images of '{folder}' are already part of this checkpoint's evidence (pooling them twice would count them twice)")
    torch_device = resolve_device(device)
    model = checkpoint.build_model(torch_device)
    scores, pixels, maxima, skipped = normal_evidence(
        model, paths, checkpoint.config, torch_device, batch_size=batch_size, progress=progress, bit_depth=checkpoint.bit_depth
    )
    rate = old.target_false_alarm_rate or checkpoint.config.target_false_alarm_rate
    pooled_scores = np.concatenate([np.asarray(old.holdout_image_scores, dtype=np.float64), scores])
    # Map maxima of an older checkpoint's held-out images were not stored: the pixel threshold then rests
    # on the new normals alone (still never trained on).
    pooled_maxima = np.concatenate([np.asarray(old.holdout_map_maxima, dtype=np.float64), maxima])
    # Likewise map values: those of the older held-out images only where the checkpoint kept a sample.
    pooled_pixels = np.concatenate([np.asarray(old.holdout_pixel_sample, dtype=np.float64), pixels.astype(np.float64)])
    sources = tuple(old.normal_sources) or (
        ({"kind": "held-out", "images": len(old.holdout_image_scores)},) if old.holdout_image_scores else ()
    )
    sources = sources + ({"kind": "normals", "folder": resolved, "images": int(len(scores)), "skipped": len(skipped)},)
    new = fit_calibration(pooled_scores, pooled_maxima, pooled_pixels, float(rate), sources=sources)
    new = dataclasses.replace(new, f1=old.f1, extra=old.extra)
    checkpoint.calibration = new
    checkpoint.save(checkpoint_path(run))
    return {
        "before": old.decision_line(),
        "after": new.decision_line(),
        "normal_images": int(len(scores)),
        "pooled_images": int(len(pooled_scores)),
        "skipped": skipped,
        "image_threshold": new.image_threshold,
        "pixel_threshold": new.pixel_threshold,
        "previous_image_threshold": old.image_threshold,
        "previous_pixel_threshold": old.pixel_threshold,
    }

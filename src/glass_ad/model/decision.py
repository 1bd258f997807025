"""The decision rule stored with a model (what anomalib calls a post-processor): `Calibration`.

A model's raw image score and anomaly map become a decision here: the image and pixel thresholds of the
false-alarm operating point, the optional F1 one (`F1Thresholds`), a custom number (`OperatingPoint`), the
logistic `Normalization` of raw scores onto (0, 1), the region rule and the one colour scale of maps.
`evaluation/calibration.py` computes a calibration; `checkpoint.py` stores it in ``model.pt``; every command
reads it through `Calibration.operating_point`, so each decides the same way.

A checkpoint without calibration (trained without held-out images) has one documented behaviour,
`Calibration.fallback()`: the discriminator's own decision boundary, image and pixel threshold 0.5 (its
output is a probability of "anomalous"), and a normalised score that maps 0 to 0.1 and 0.5 to 0.5 — the
same numbers for `glass test`, `Detector`, the exported models and their metadata.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch

from glass_ad.model.operating_point import OperatingEstimate, estimate_threshold, region_threshold

__all__ = [
    "FALLBACK_METHOD",
    "FALLBACK_THRESHOLD",
    "LN9",
    "Calibration",
    "F1Thresholds",
    "Normalization",
    "OperatingPoint",
]

LN9 = math.log(9.0)
# Without held-out images the only neutral choice is the discriminator's own decision boundary: its output
# is a probability of "anomalous", so 0.5. The scale puts a score of 0 at 0.1, like a median normal image
# of a calibrated model.
FALLBACK_THRESHOLD = 0.5
FALLBACK_METHOD = "fallback-discriminator-probability"


@dataclass(frozen=True)
class Normalization:
    """The logistic map of raw scores onto (0, 1): ``1 / (1 + exp(−(s − centre) / scale))``."""

    centre: float
    scale: float

    def __call__(self, scores):
        """Monotone raw → (0, 1) with ``centre`` ↦ 0.5 (numpy arrays, floats or torch tensors)."""
        z = (scores - self.centre) / self.scale
        if isinstance(scores, torch.Tensor):
            return torch.sigmoid(z)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    @classmethod
    def around(cls, threshold: float) -> "Normalization":
        """The fallback curve for a threshold without held-out scores: 0 ↦ 0.1, threshold ↦ 0.5."""
        return cls(float(threshold), float(threshold) / LN9)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Normalization":
        # The stored key is "center" (model.pt, glass-ad/1): the file keeps its spelling.
        return cls(float(data["center"]), float(data["scale"]))

    def to_dict(self) -> dict[str, float]:
        return {"center": self.centre, "scale": self.scale}


@dataclass(frozen=True)
class F1Thresholds:
    """The second operating point from `glass calibrate --val` (stored flat under ``f1_*`` keys)."""

    image_threshold: float
    pixel_threshold: float | None = None
    method: str | None = None  # "validation-f1-optimal"
    image_f1: float | None = None
    image_precision: float | None = None
    image_recall: float | None = None
    image_false_alarm_rate: float | None = None
    val_images: int | None = None
    val_anomalous: int | None = None
    val_skipped: int | None = None
    val_skipped_files: tuple[str, ...] = ()
    pixel_f1: float | None = None
    val_dir: str | None = None

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> "F1Thresholds | None":
        """From the ``f1_*`` keys of a stored calibration; None when it has no F1 image threshold."""
        if data.get("f1_image_threshold") is None:
            return None
        values = {f.name: data[f"f1_{f.name}"] for f in dataclasses.fields(cls) if f"f1_{f.name}" in data}
        values["val_skipped_files"] = tuple(values.get("val_skipped_files") or ())
        return cls(**values)

    def to_fields(self) -> dict[str, Any]:
        out = {f"f1_{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}
        out["f1_val_skipped_files"] = list(self.val_skipped_files)
        if self.val_dir is None:
            del out["f1_val_dir"]
        return out


class OperatingPoint(NamedTuple):
    """A decision rule: ``kind`` (``far``, ``f1`` or ``custom``), image threshold, pixel threshold."""

    kind: str
    image_threshold: float
    pixel_threshold: float


_CALIBRATION_KEYS = (
    "method", "target_false_alarm_rate", "holdout_images", "image_threshold", "pixel_threshold",
    "image_normalization", "pixel_normalization", "holdout_image_scores", "warning",
    "holdout_map_maxima", "pixel_rule", "normal_sources", "region_height", "holdout_pixel_sample",
)  # fmt: skip
_IMAGE_ESTIMATE_KEYS = tuple(OperatingEstimate(0.0, 0.0, 0, None, "raw", None, None, None, 0, 1.0).to_fields())
_PIXEL_PREFIX = "pixel_"
_PIXEL_ESTIMATE_KEYS = tuple(_PIXEL_PREFIX + key for key in _IMAGE_ESTIMATE_KEYS)


@dataclass(frozen=True)
class Calibration:
    """The model's thresholds and normalised score (see calibration.py for how they are computed).

    Always complete: a checkpoint without calibration gets `Calibration.fallback()` (``is_fallback``), a
    partial one is completed field by field the same way. ``f1``: the optional F1 operating point.
    """

    image_threshold: float
    pixel_threshold: float
    image_normalization: Normalization
    pixel_normalization: Normalization
    method: str | None = None
    target_false_alarm_rate: float | None = None
    holdout_images: int | None = None
    holdout_image_scores: tuple[float, ...] = ()
    warning: str | None = None
    f1: F1Thresholds | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as stored
    # The operating point's honest statement (operating_point.py); None in checkpoints written before it.
    image_estimate: OperatingEstimate | None = None
    pixel_estimate: OperatingEstimate | None = None  # the pixel threshold as a threshold on normal map maxima
    holdout_map_maxima: tuple[float, ...] = ()  # the largest map value of each normal image the fit used
    # "normal-pixel-quantile": the (1 − target) quantile of normal map values, the region's base level;
    # "normal-map-maximum" (a tail model of normal maps' maxima); None: the older pixel-value quantile.
    pixel_rule: str | None = None
    normal_sources: tuple[Mapping[str, Any], ...] = ()  # where the normal evidence came from (held-out, --normals)
    region_height: float | None = None  # region: map ≥ pixel threshold + height·(peak − it); None: ≥ pixel threshold
    holdout_pixel_sample: tuple[float, ...] = ()  # a sample of normal map values (pooled by `glass calibrate --normals`)

    @classmethod
    def fallback(cls) -> "Calibration":
        """The documented behaviour of a checkpoint without calibration (module docstring)."""
        return cls.from_dict(None)

    @property
    def is_fallback(self) -> bool:
        return self.method == FALLBACK_METHOD

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any] | None) -> "Calibration":
        """A stored calibration (``{}`` or None: none), completed with the fallback where a field is missing."""
        data = dict(stored or {})
        method = data.get("method")
        if data.get("image_threshold") is None:
            method = FALLBACK_METHOD
            image_threshold = FALLBACK_THRESHOLD
        else:
            image_threshold = float(data["image_threshold"])
        pixel = data.get("pixel_threshold")
        pixel_threshold = float(pixel) if pixel is not None else FALLBACK_THRESHOLD
        image_norm, pixel_norm = data.get("image_normalization"), data.get("pixel_normalization")
        rate, count = data.get("target_false_alarm_rate"), data.get("holdout_images")
        target = float(rate) if rate is not None else 0.0
        known = set(_CALIBRATION_KEYS) | set(_IMAGE_ESTIMATE_KEYS) | set(_PIXEL_ESTIMATE_KEYS)
        return cls(
            image_threshold=image_threshold,
            pixel_threshold=pixel_threshold,
            image_normalization=Normalization.from_dict(image_norm) if image_norm else Normalization.around(image_threshold),
            pixel_normalization=Normalization.from_dict(pixel_norm) if pixel_norm else Normalization.around(pixel_threshold),
            method=method,
            target_false_alarm_rate=float(rate) if rate is not None else None,
            holdout_images=int(count) if count is not None else None,
            holdout_image_scores=tuple(float(s) for s in data.get("holdout_image_scores") or ()),
            warning=data.get("warning"),
            f1=F1Thresholds.from_fields(data),
            extra={k: v for k, v in data.items() if k not in known and not k.startswith("f1_")},
            image_estimate=OperatingEstimate.from_fields(data, image_threshold, target),
            pixel_estimate=OperatingEstimate.from_fields(data, pixel_threshold, target, prefix=_PIXEL_PREFIX),
            holdout_map_maxima=tuple(float(s) for s in data.get("holdout_map_maxima") or ()),
            pixel_rule=data.get("pixel_rule"),
            holdout_pixel_sample=tuple(float(s) for s in data.get("holdout_pixel_sample") or ()),
            normal_sources=tuple(dict(source) for source in data.get("normal_sources") or ()),
            region_height=float(data["region_height"]) if data.get("region_height") is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored form: plain numbers, strings and lists; a fallback stores no false-alarm fields."""
        out: dict[str, Any] = {}
        if not self.is_fallback:
            out = {
                "method": self.method,
                "target_false_alarm_rate": self.target_false_alarm_rate,
                "holdout_images": self.holdout_images,
                "image_threshold": self.image_threshold,
                "pixel_threshold": self.pixel_threshold,
                "image_normalization": self.image_normalization.to_dict(),
                "pixel_normalization": self.pixel_normalization.to_dict(),
                "holdout_image_scores": list(self.holdout_image_scores) if self.holdout_image_scores else None,
            }
            if self.image_estimate is not None:
                out.update(self.image_estimate.to_fields())
            if self.pixel_estimate is not None:
                out.update(self.pixel_estimate.to_fields(_PIXEL_PREFIX))
            out["holdout_map_maxima"] = list(self.holdout_map_maxima) if self.holdout_map_maxima else None
            out["pixel_rule"] = self.pixel_rule
            out["holdout_pixel_sample"] = list(self.holdout_pixel_sample) if self.holdout_pixel_sample else None
            out["normal_sources"] = [dict(source) for source in self.normal_sources] if self.normal_sources else None
            out["region_height"] = self.region_height
            out = {k: v for k, v in out.items() if v is not None}
            if self.warning:
                out["warning"] = self.warning
        if self.f1 is not None:
            out.update(self.f1.to_fields())
        out.update(self.extra)
        return out

    def false_alarm_estimate(self) -> OperatingEstimate | None:
        """What the false-alarm image threshold is expected to realise (operating_point.py): as stored, or,
        for a checkpoint written before estimates were stored, computed from its held-out image scores
        (None without them)."""
        if self.image_estimate is not None:
            return self.image_estimate
        if self.is_fallback or not self.holdout_image_scores or not self.target_false_alarm_rate:
            return None
        return estimate_threshold(self.image_threshold, self.holdout_image_scores, self.target_false_alarm_rate)

    def region_level(self, anomaly_map, pixel_threshold: float | None = None, kind: str = "far") -> float:
        """The map level at and above which pixels form the predicted region of this map (`region_threshold`:
        the pixel threshold raised half-way to the map's peak; the plain pixel threshold for the F1 operating
        point, whose pixel threshold was chosen as a plain one, and for checkpoints without ``region_height``)."""
        threshold = float(self.pixel_threshold if pixel_threshold is None else pixel_threshold)
        height = None if kind == "f1" else self.region_height
        if height is None:
            return threshold
        if isinstance(anomaly_map, torch.Tensor):
            peak = float(anomaly_map.max()) if anomaly_map.numel() else threshold
        else:
            values = np.asarray(anomaly_map)
            peak = float(values.max()) if values.size else threshold
        return region_threshold(peak, threshold, height)

    def estimate_at(self, threshold: float) -> OperatingEstimate | None:
        """What any image threshold (the F1 one, a custom one) is expected to realise on normal images,
        judged by the same normal evidence and model as the stored one; None without held-out scores."""
        if self.is_fallback or not self.holdout_image_scores or not self.target_false_alarm_rate:
            return None
        return estimate_threshold(float(threshold), self.holdout_image_scores, self.target_false_alarm_rate)

    def evidence(self) -> str | None:
        """What the normal images behind the threshold were, in words (None: the held-out ones only)."""
        extra = [source for source in self.normal_sources if source.get("kind") != "held-out"]
        if not extra:
            return None
        held = sum(int(source.get("images") or 0) for source in self.normal_sources if source.get("kind") == "held-out")
        added = sum(int(source.get("images") or 0) for source in extra)
        return f"normal images never trained on ({held} held-out + {added} from `glass calibrate --normals`)"

    def decision_line(self) -> str:
        """The one line that says what the stored decision is and how far it keeps its promise
        (`glass train`, `glass info`, `glass calibrate`; the service's model page)."""
        if self.is_fallback:
            return (
                f"threshold {self.image_threshold:.4f}: the discriminator's own boundary (no held-out normal images); "
                f"false-alarm rate unknown — add good images never trained on with `glass calibrate RUN --normals DIR`"
            )
        estimate = self.false_alarm_estimate()
        if estimate is None:
            return f"threshold {self.image_threshold:.4f}: false-alarm rate unknown (no held-out scores stored)"
        line = estimate.line(evidence=self.evidence())
        if self.pixel_estimate is None and self.pixel_rule is None:
            line += "; region rule: older pixel-value quantile (re-fit with `glass calibrate RUN --normals DIR`)"
        return line

    def with_f1(self, f1: F1Thresholds | None) -> "Calibration":
        """The same calibration with another F1 operating point (the false-alarm one never changes)."""
        return dataclasses.replace(self, f1=f1)

    def operating_point(self, threshold: str | float = "far") -> OperatingPoint:
        """``"far"``: the false-alarm thresholds (the fallback's 0.5 without calibration); ``"f1"``: the F1
        thresholds of `glass calibrate` (pixel: the false-alarm one when no mask was given); a number: that
        raw image score with the false-alarm pixel threshold. ValueError for anything else."""
        if isinstance(threshold, str) and threshold.lower() == "far":
            return OperatingPoint("far", self.image_threshold, self.pixel_threshold)
        if isinstance(threshold, str) and threshold.lower() == "f1":
            if self.f1 is None:
                raise ValueError("this checkpoint has no F1 threshold; add one with `glass calibrate RUN_DIR --val DIR`")
            pixel = self.f1.pixel_threshold
            return OperatingPoint("f1", float(self.f1.image_threshold), float(pixel if pixel is not None else self.pixel_threshold))
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be 'far', 'f1' or a number, got {threshold!r}") from None
        if not math.isfinite(value):  # NaN is below no score: every part would pass
            raise ValueError(f"threshold must be 'far', 'f1' or a finite number, got {threshold!r}")
        return OperatingPoint("custom", value, self.pixel_threshold)

    def heat_range(self, pixel_threshold: float | None = None) -> tuple[float, float]:
        """The model's one colour scale of maps (`glass predict`, `glass test` and `glass preview` pictures all
        use it): a typical normal pixel (the median of held-out normal pixels) at the bottom, the pixel
        threshold (default: the false-alarm one) in the middle, as far above it as the median is below."""
        threshold = float(self.pixel_threshold if pixel_threshold is None else pixel_threshold)
        spread = float(self.pixel_normalization.scale) * LN9  # threshold − median normal pixel
        spread = spread if spread > 1e-6 else max(abs(threshold), 1e-3)
        return threshold - spread, threshold + spread

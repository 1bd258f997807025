"""The false-alarm operating point as a stated statistical model, with its honest uncertainty.

The image score is the largest patch probability of the discriminator, so its logit is the largest of
some thousand patch logits. The maximum of many weakly dependent values with an exponential-type tail is
Gumbel distributed (extreme-value type I), so the stated model is:

    logit(image score of a normal image) ~ Gumbel(μ, β)

fitted to the held-out normal images by L-moments (β = l₂ / ln 2, μ = l₁ − γβ; robust for a handful of
values). Scores that are not probabilities (the hybrid score) are modelled on their own scale.

The threshold is T = μ̂ + c·β̂. Because the Gumbel is a location–scale family, the false-alarm rate that T
realises on new normal images, R = 1 − G((T − μ)/β), depends on the data only through the pivots
u = (μ̂ − μ)/β and v = β̂/β, whose distribution for n images is known and simulated once per n (a fixed
seed). Hence:

* the **predictive threshold** is the c for which the *expected* realised rate over draws of n held-out
  images is the target (with few images c is larger than the plug-in quantile: small evidence is paid
  for with a higher threshold), never at or below the empirical (1 − target) quantile of the scores (the
  largest of them while n < 1 / target);
* for any threshold the **estimate** is that expected rate and the **95 % interval** holds the realised
  rate with 95 % probability under the model (2.5 % and 97.5 % points of R);
* besides the model, a **model-free upper bound**: with k of the n held-out scores at or above T, the
  one-sided 95 % Clopper–Pearson bound of k/n (for a threshold at the largest of n exchangeable scores
  the realised rate is Beta(1, n) distributed, whatever the scores' distribution).

`glass calibrate RUN --normals DIR` pools more normal images (never trained on) with the held-out ones
and re-fits: the interval narrows roughly as 1/√n.

The pixel threshold T uses the same model on the normal images' *map maxima* (the level the most anomalous
pixel of all but the target share of normal images stays below), and an image's region is where its map
rises at least half-way from T to its own peak (`region_threshold`): a normal image has a region about as
rarely as the target says, and a defective image's region is the part of its map that stands out, not the
whole plateau the smoothing raises around a defect.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EULER_GAMMA = 0.5772156649015329
MODEL = "gumbel-logit"  # the stored name of the model above
MIN_MODEL_IMAGES = 3  # below this no scale can be fitted: the threshold is the largest score, model-free only
_SIMULATIONS = 20_000
_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------
# Exact binomial intervals


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided exact (Clopper–Pearson) interval of a binomial rate from k events in n trials."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k <= 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k >= n else float(beta.ppf(1.0 - tail, k + 1, n - k))
    return low, high


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact upper bound of a binomial rate (k events in n trials)."""
    from scipy.stats import beta

    if n <= 0 or k >= n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


# ---------------------------------------------------------------------------------------------------
# The tail model


def score_scale(scores: Sequence[float]) -> str:
    """``logit`` for probabilities strictly inside (0, 1) (the discriminator's scores), else ``raw``."""
    values = np.asarray(scores, dtype=np.float64)
    return "logit" if values.size and np.all(values > 0.0) and np.all(values < 1.0) else "raw"


def to_tail(scores, scale: str) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    if scale == "logit":
        values = np.clip(values, 1e-12, 1.0 - 1e-12)
        return np.log(values) - np.log1p(-values)
    return values


def from_tail(value: float, scale: str) -> float:
    if scale == "logit":
        return float(1.0 / (1.0 + math.exp(-max(min(value, 700.0), -700.0))))
    return float(value)


def fit_gumbel(values) -> tuple[float, float]:
    """L-moment estimates (μ, β) of a Gumbel sample (n ≥ 2); β is kept above a tiny floor."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    l1 = float(x.mean())
    b1 = float(np.sum(np.arange(n) / (n - 1) * x) / n)
    l2 = 2.0 * b1 - l1
    scale = max(l2 / math.log(2.0), _EPS * max(1.0, abs(l1)))
    return l1 - EULER_GAMMA * scale, scale


def _survival(x: np.ndarray) -> np.ndarray:
    """1 − G(x) of the standard Gumbel, accurate in the far tail."""
    return -np.expm1(-np.exp(-np.clip(x, -50.0, 700.0)))


@functools.lru_cache(maxsize=64)
def _pivots(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) = fitted (μ̂, β̂) of many standard Gumbel samples of size n (fixed seed: reproducible)."""
    rng = np.random.default_rng(20_240_928 + n)
    simulations = int(min(_SIMULATIONS, max(1_000, 4_000_000 // n)))  # memory flat for large pooled sets
    samples = np.sort(-np.log(-np.log(rng.random((simulations, n)))), axis=1)
    l1 = samples.mean(axis=1)
    b1 = (samples * (np.arange(n) / (n - 1))).sum(axis=1) / n
    scale = np.maximum((2.0 * b1 - l1) / math.log(2.0), 1e-9)
    return l1 - EULER_GAMMA * scale, scale


def realised_rate_distribution(n: int, factor: float) -> np.ndarray:
    """Simulated realised false-alarm rates of the threshold μ̂ + factor·β̂ fitted on n images."""
    u, v = _pivots(n)
    return _survival(u + factor * v)


@functools.lru_cache(maxsize=256)
def predictive_factor(n: int, rate: float) -> float:
    """The c for which μ̂ + c·β̂ (n images) has an expected realised false-alarm rate of ``rate``."""
    low, high = -5.0, 200.0
    for _ in range(80):
        middle = (low + high) / 2.0
        if realised_rate_distribution(n, middle).mean() > rate:
            low = middle
        else:
            high = middle
    return high


# ---------------------------------------------------------------------------------------------------
# The operating point


@dataclass(frozen=True)
class OperatingEstimate:
    """A threshold with what it is expected to realise on new normal images (all rates as fractions)."""

    threshold: float
    target: float
    images: int
    model: str | None  # MODEL, or None when too few images for a model
    scale: str  # "logit" or "raw"
    estimate: float | None  # expected realised false-alarm rate under the model
    low: float | None  # 95 % interval of the realised rate under the model
    high: float | None
    exceeding: int  # held-out scores at or above the threshold
    model_free_upper: float  # one-sided 95 % Clopper–Pearson bound from the held-out count
    location: float | None = None
    spread: float | None = None
    raised_to_max: bool = field(default=False, compare=False)  # the model's threshold lay below the empirical quantile (not stored)

    @property
    def supported(self) -> bool:
        """Does the evidence keep the promise: the interval's upper end within twice the target?"""
        return self.high is not None and self.high <= 2.0 * self.target

    def to_fields(self, prefix: str = "") -> dict[str, Any]:
        return {
            f"{prefix}false_alarm_model": self.model,
            f"{prefix}false_alarm_scale": self.scale,
            f"{prefix}false_alarm_estimate": self.estimate,
            f"{prefix}false_alarm_low": self.low,
            f"{prefix}false_alarm_high": self.high,
            f"{prefix}false_alarm_exceeding": self.exceeding,
            f"{prefix}false_alarm_model_free_upper": self.model_free_upper,
            f"{prefix}false_alarm_images": self.images,
            f"{prefix}tail_location": self.location,
            f"{prefix}tail_spread": self.spread,
        }

    @classmethod
    def from_fields(cls, data: Mapping[str, Any], threshold: float, target: float, prefix: str = "") -> OperatingEstimate | None:
        if data.get(f"{prefix}false_alarm_images") is None:
            return None

        def num(key):
            value = data.get(f"{prefix}{key}")
            return None if value is None else float(value)

        return cls(
            threshold=float(threshold),
            target=float(target),
            images=int(data[f"{prefix}false_alarm_images"]),
            model=data.get(f"{prefix}false_alarm_model"),
            scale=str(data.get(f"{prefix}false_alarm_scale") or "raw"),
            estimate=num("false_alarm_estimate"),
            low=num("false_alarm_low"),
            high=num("false_alarm_high"),
            exceeding=int(data.get(f"{prefix}false_alarm_exceeding") or 0),
            model_free_upper=float(data.get(f"{prefix}false_alarm_model_free_upper") or 1.0),
            location=num("tail_location"),
            spread=num("tail_spread"),
        )

    def line(self, what: str = "threshold", evidence: str | None = None) -> str:
        """The one honest line every place that shows the decision prints. ``evidence``: what the n normal
        images were (default: held-out normal images)."""
        n = self.images
        evidence = evidence or f"held-out normal image{'s' * (n != 1)}"
        if self.estimate is None:
            return (
                f"{what} {self.threshold:.4f}: false-alarm rate unknown from {n} {evidence} "
                f"(too few for a model; model-free 95 % upper bound {_pct(self.model_free_upper)}) — target "
                f"{_pct(self.target)} NOT supported; add good images with `glass calibrate RUN --normals DIR`"
            )
        text = (
            f"{what} {self.threshold:.4f}: estimated false-alarm rate {_pct(self.estimate)} "
            f"[{_pct(self.low, bare=True)}–{_pct(self.high)}, 95 %] from {n} {evidence} "
            f"(model: Gumbel tail of the {'logit of the ' if self.scale == 'logit' else ''}image score; model-free "
            f"upper bound {_pct(self.model_free_upper)}); target {_pct(self.target)}"
        )
        if not self.supported:
            needed = images_needed(self.target)
            more = f" (about {needed - n} more would bring it within 2×)" if needed and needed > n else ""
            text += (
                f" — the evidence does not hold the rate within 2× of the target (it may reach {_pct(self.high)}); "
                f"add good images never trained on with `glass calibrate RUN --normals DIR`{more}"
            )
        return text


@functools.lru_cache(maxsize=16)
def images_needed(target: float) -> int | None:
    """The fewest normal images (on a coarse grid) whose predictive threshold's 95 % interval ends within
    twice the target; None beyond 2,000."""
    for n in (10, 20, 30, 50, 75, 100, 125, 150, 200, 300, 500, 750, 1000, 1500, 2000):
        if np.quantile(realised_rate_distribution(n, predictive_factor(n, float(target))), 0.975) <= 2.0 * target:
            return n
    return None


def _pct(value: float | None, bare: bool = False) -> str:
    if value is None:
        return "?"
    number = 100.0 * value
    digits = 2 if number < 1 else 1
    return f"{number:.{digits}f}" + ("" if bare else " %")


def estimate_threshold(threshold: float, scores, target: float, scale: str | None = None) -> OperatingEstimate:
    """What ``threshold`` is expected to realise, judged by the normal ``scores`` it did not train on."""
    values = np.asarray(scores, dtype=np.float64)
    n = int(values.size)
    scale = scale or score_scale(values)
    exceeding = int(np.sum(values >= threshold))
    model_free = clopper_pearson_upper(exceeding, n)
    if n < MIN_MODEL_IMAGES:
        return OperatingEstimate(float(threshold), target, n, None, scale, None, None, None, exceeding, model_free)
    location, spread = fit_gumbel(to_tail(values, scale))
    factor = (float(to_tail([threshold], scale)[0]) - location) / spread
    rates = realised_rate_distribution(n, factor)
    low, high = np.quantile(rates, [0.025, 0.975])
    return OperatingEstimate(
        float(threshold), target, n, MODEL, scale, float(rates.mean()), float(low), float(high), exceeding, model_free,
        location, spread,
    )  # fmt: skip


# Below n·target = 0.5 the predictive threshold lies far beyond every normal score (for 5 images and a 1 %
# target, 7.5 Gumbel spreads above the centre): on MPDD metal_plate it kept 6-18 % of the defective parts. There
# the threshold stays just above the largest held-out score, and the estimate says what that realises.
MIN_EXPECTED_EXCEEDANCES = 0.5


def fit_threshold(scores, target: float) -> OperatingEstimate:
    """The predictive threshold for ``target`` from normal scores, never at or below their empirical
    (1 − target) quantile (their largest score while n < 1 / target). With too little evidence for the target
    (n·target < MIN_EXPECTED_EXCEEDANCES) the threshold is just above the largest score instead: no
    extrapolation, an honest estimate of what it realises."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no normal scores to set a threshold from")
    scale = score_scale(values)
    floor = float(np.quantile(values, 1.0 - target, method="higher"))
    if values.size < MIN_MODEL_IMAGES or values.size * target < MIN_EXPECTED_EXCEEDANCES:
        return estimate_threshold(_just_above(float(values.max())), values, target, scale)
    location, spread = fit_gumbel(to_tail(values, scale))
    threshold = from_tail(location + predictive_factor(int(values.size), float(target)) * spread, scale)
    raised = threshold <= floor
    if raised:
        threshold = _just_above(floor)
    estimate = estimate_threshold(threshold, values, target, scale)
    return OperatingEstimate(**{**estimate.__dict__, "raised_to_max": raised})


REGION_HEIGHT = 0.5  # the region: where the map rises at least half-way from the normal ceiling to its peak


def region_threshold(peak: float, pixel_threshold: float, height: float | None) -> float:
    """The map level above which a pixel is in an image's region: the pixel threshold (the normal images'
    ceiling), raised to ``height`` of the way to the image's own peak (None: the pixel threshold as it is).
    A map whose peak stays below the pixel threshold has no region."""
    if height is None or not peak > pixel_threshold:
        return float(pixel_threshold)
    return float(pixel_threshold + height * (peak - pixel_threshold))


def _just_above(value: float) -> float:
    """The next float above ``value`` (a threshold strictly above every held-out score: none is a false alarm)."""
    return float(np.nextafter(value, np.inf))

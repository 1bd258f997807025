"""The false-alarm operating point (model/operating_point.py, calibration.fit_calibration): exact binomial
intervals, the Gumbel tail model's threshold realising its target, honest behaviour with few images, and
checkpoints written before the estimates were stored."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from glass_ad.evaluation.calibration import fit_calibration
from glass_ad.model.decision import Calibration
from glass_ad.model.operating_point import (
    MODEL,
    clopper_pearson,
    clopper_pearson_upper,
    estimate_threshold,
    fit_threshold,
    predictive_factor,
    realised_rate_distribution,
)

TARGET = 0.01


def _gumbel_survival(x):
    return -np.expm1(-np.exp(-x))


def _logit(p):
    return math.log(p) - math.log1p(-p)


# ------------------------------------------------------------------------------ exact binomial intervals


@pytest.mark.parametrize("n", [5, 20, 76])
def test_clopper_pearson_matches_the_binomial_tails_and_covers(n):
    for k in range(n + 1):
        low, high = clopper_pearson(k, n)
        # The defining tails, by brute force: P(X ≥ k | low) = 2.5 %, P(X ≤ k | high) = 2.5 %.
        if k > 0:
            assert binom.sf(k - 1, n, low) == pytest.approx(0.025, abs=1e-6)
        else:
            assert low == 0.0
        if k < n:
            assert binom.cdf(k, n, high) == pytest.approx(0.025, abs=1e-6)
        else:
            assert high == 1.0
    # Coverage: for every true rate, the intervals of all outcomes cover it with probability ≥ 95 %.
    bounds = [clopper_pearson(k, n) for k in range(n + 1)]
    for p in np.linspace(0.001, 0.999, 97):
        coverage = sum(binom.pmf(k, n, p) for k, (low, high) in enumerate(bounds) if low <= p <= high)
        assert coverage >= 0.95 - 1e-9, (n, p, coverage)


def test_one_sided_bound_of_a_threshold_above_n_scores():
    # The rate realised by the largest of n exchangeable scores is Beta(1, n): P(R > u) = (1 − u)^n.
    for n in (5, 6, 76):
        assert clopper_pearson_upper(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-6)


# ------------------------------------------------------------------------------------- the tail model


def test_pivotal_simulation_realises_the_target_on_average():
    for n in (5, 21, 76):
        rates = realised_rate_distribution(n, predictive_factor(n, TARGET))
        assert rates.mean() == pytest.approx(TARGET, rel=0.02)
    # with more images the factor falls towards the Gumbel's own 99 % point
    assert predictive_factor(5, TARGET) > predictive_factor(76, TARGET) > -math.log(-math.log(0.99))


def _realised(threshold: float, true_survival) -> float:
    return float(true_survival(_logit(threshold)))


def test_threshold_realises_the_target_on_gumbel_logit_scores():
    """Scores whose logit is Gumbel(1, 0.5): the mean realised rate over many held-out draws is the target,
    and the stored 95 % interval covers the realised rate about 95 % of the time."""
    rng = np.random.default_rng(1)
    for n in (50, 76):
        realised, covered = [], []
        for _ in range(300):
            logits = 1.0 + 0.5 * -np.log(-np.log(rng.random(n)))
            estimate = fit_threshold(1 / (1 + np.exp(-logits)), TARGET)
            rate = _realised(estimate.threshold, lambda t: _gumbel_survival((t - 1.0) / 0.5))
            realised.append(rate)
            covered.append(estimate.low <= rate <= estimate.high)
            assert estimate.model == MODEL and estimate.scale == "logit"
        assert np.mean(realised) == pytest.approx(TARGET, rel=0.25), n
        assert np.mean(covered) >= 0.9, n


def test_threshold_on_gaussian_scores_keeps_the_promise():
    """Gaussian logits (a lighter tail than the model's Gumbel): the model errs on the safe side — the
    realised rate stays within the target on average and within 2× in nearly every draw."""
    from scipy.stats import norm

    rng = np.random.default_rng(2)
    realised = []
    for _ in range(300):
        logits = rng.normal(-2.0, 0.7, 76)
        threshold = fit_threshold(1 / (1 + np.exp(-logits)), TARGET).threshold
        realised.append(float(norm.sf((_logit(threshold) + 2.0) / 0.7)))
    realised = np.asarray(realised)
    assert realised.mean() <= TARGET and (realised <= 2 * TARGET).mean() >= 0.95


def test_max_of_many_patches_is_modelled_within_twice_the_target():
    """Image score = the largest of 400 Gaussian patch logits (the model's premise, not its exact form)."""
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    realised = []
    for _ in range(100):
        logits = rng.normal(0.0, 1.0, (76, 400)).max(axis=1)
        threshold = fit_threshold(1 / (1 + np.exp(-logits)), TARGET).threshold
        realised.append(1.0 - norm.cdf(_logit(threshold)) ** 400)
    assert TARGET / 3 <= np.mean(realised) <= 2 * TARGET


def test_five_images_keep_the_largest_score_and_say_what_it_realises():
    """Too little evidence for a 1 % target (n·target < 0.5): no extrapolation far beyond the scores (it kept
    6-18 % of MPDD's defective parts); the threshold stays just above the largest score and the line says that
    its rate is about 1 / (n + 1), far from the target, and how to tighten it."""
    scores = np.array([0.20, 0.22, 0.25, 0.27, 0.31])
    estimate = fit_threshold(scores, TARGET)
    assert estimate.threshold == np.nextafter(scores.max(), np.inf)
    assert estimate.exceeding == 0 and estimate.model_free_upper == pytest.approx(1 - 0.05 ** 0.2)
    assert 0.05 < estimate.estimate < 0.4 and estimate.high > 2 * TARGET and not estimate.supported
    line = estimate.line()
    assert "from 5 held-out normal images" in line and "does not hold" in line and "--normals" in line


def test_the_largest_of_ten_scores_is_judged_honestly():
    """Gumbel-logit scores, 10 held out: the threshold is the largest score and the stored 95 % interval covers
    the rate it realises in about 95 % of draws."""
    rng = np.random.default_rng(4)
    covered = []
    for _ in range(300):
        scores = 1 / (1 + np.exp(-(1.0 + 0.5 * -np.log(-np.log(rng.random(10))))))
        estimate = fit_threshold(scores, TARGET)
        assert estimate.threshold == np.nextafter(scores.max(), np.inf)
        rate = _realised(estimate.threshold, lambda t: _gumbel_survival((t - 1.0) / 0.5))
        covered.append(estimate.low <= rate <= estimate.high)
    assert np.mean(covered) >= 0.9


def test_two_images_are_too_few_for_a_model():
    estimate = fit_threshold([0.3, 0.4], TARGET)
    assert estimate.model is None and estimate.estimate is None and estimate.threshold > 0.4
    assert "unknown" in estimate.line() and not estimate.supported


def test_raw_scores_are_modelled_on_their_own_scale():
    """Hybrid scores are not probabilities: Gumbel on the raw scale. With 200 images the threshold is also
    kept above the empirical 99 % quantile, so the realised rate is at most the target on average."""
    rng = np.random.default_rng(4)
    realised = []
    for _ in range(200):
        estimate = fit_threshold(rng.gumbel(3.0, 1.0, 200), TARGET)
        assert estimate.scale == "raw"
        realised.append(_gumbel_survival(estimate.threshold - 3.0))
    assert 0.5 * TARGET <= np.mean(realised) <= TARGET * 1.05 and np.quantile(realised, 0.95) <= 2 * TARGET


def test_estimate_of_a_given_threshold_grows_as_it_falls():
    scores = np.random.default_rng(5).uniform(0.1, 0.3, 50)
    high, low = estimate_threshold(0.5, scores, TARGET), estimate_threshold(0.25, scores, TARGET)
    assert high.estimate < low.estimate and low.exceeding > 0 and high.exceeding == 0


# ------------------------------------------------------------------------------- stored calibration


OLD_CALIBRATION = {  # as written before estimates were stored
    "method": "holdout-normal-quantile",
    "target_false_alarm_rate": 0.01,
    "holdout_images": 5,
    "image_threshold": 0.31,
    "pixel_threshold": 0.2,
    "image_normalization": {"center": 0.31, "scale": 0.02},
    "pixel_normalization": {"center": 0.2, "scale": 0.03},
    "holdout_image_scores": [0.2, 0.22, 0.25, 0.27, 0.31],
    "warning": "the 1 % false-alarm threshold comes from only 5 held-out normal images",
}


def test_an_older_calibration_loads_and_is_judged_by_its_held_out_scores():
    calibration = Calibration.from_dict(OLD_CALIBRATION)
    assert calibration.to_dict() == OLD_CALIBRATION  # stored form unchanged
    assert calibration.image_estimate is None and calibration.operating_point("far") == ("far", 0.31, 0.2)
    estimate = calibration.false_alarm_estimate()
    assert estimate is not None and estimate.exceeding == 1  # the old threshold is the largest held-out score
    line = calibration.decision_line()
    assert line.startswith("threshold 0.3100: estimated false-alarm rate") and "older pixel-value quantile" in line
    assert estimate.estimate > 0.05  # the largest of 5 scores: about 1 / 6 of new normal images exceed it
    assert "unknown" in Calibration.fallback().decision_line()


def test_fitted_calibration_round_trips_and_names_its_evidence():
    rng = np.random.default_rng(6)
    scores, maxima = 1 / (1 + np.exp(-rng.gumbel(-1, 0.3, 60))), 1 / (1 + np.exp(-rng.gumbel(-1.5, 0.3, 60)))
    pixels = np.r_[np.full(500, 0.05), rng.uniform(0.0, 0.1, 9000), rng.uniform(0.1, 0.2, 499)]
    calibration = fit_calibration(scores, maxima, pixels, TARGET, sources=({"kind": "held-out", "images": 60},))
    again = Calibration.from_dict(calibration.to_dict())
    assert again == calibration and again.image_estimate.images == 60 and again.pixel_rule == "normal-pixel-quantile"
    assert calibration.image_threshold > np.quantile(scores, 0.99, method="higher")
    # the region's base: the 99 % point of normal map values, with the share of normal maps reaching it
    assert calibration.pixel_threshold == pytest.approx(np.quantile(pixels, 0.99))
    assert calibration.pixel_estimate.exceeding == int((maxima >= calibration.pixel_threshold).sum())
    assert 0 < len(calibration.holdout_pixel_sample) <= len(pixels)
    assert calibration.pixel_normalization(float(np.median(pixels))) == pytest.approx(0.1)  # the median pixel ↦ 0.1
    assert "from 60 held-out normal images" in calibration.decision_line()
    pooled = fit_calibration(
        scores, maxima, pixels, TARGET,
        sources=({"kind": "held-out", "images": 10}, {"kind": "normals", "folder": "/x", "images": 20}),
    )  # fmt: skip
    assert "(10 held-out + 20 from `glass calibrate --normals`)" in pooled.decision_line()


def test_any_threshold_in_use_can_be_judged():
    calibration = Calibration.from_dict(OLD_CALIBRATION)
    lower, higher = calibration.estimate_at(0.25), calibration.estimate_at(0.5)
    assert lower.estimate > higher.estimate and lower.exceeding == 3
    assert Calibration.fallback().estimate_at(0.5) is None

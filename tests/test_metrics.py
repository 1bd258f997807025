import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from glass_ad.evaluation import metrics


def _brute_aupro(maps, masks, limit=0.3):
    regions = []
    for i in range(maps.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            regions.append((i, lab == r))
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        above = maps >= t
        pro = np.mean([above[i][reg].mean() for i, reg in regions])
        fpr = above[normal].sum() / normal.sum()
        points.append((fpr, pro))
    area = 0.0
    for (f0, p0), (f1, p1) in zip(points[:-1], points[1:]):
        if f0 >= limit:
            break
        if f1 > limit:
            p1 = p0 + (p1 - p0) * (limit - f0) / (f1 - f0)
            f1 = limit
        area += (f1 - f0) * (p0 + p1) / 2
    return area / limit


def _random_case(rng, n=3, h=12, w=12, quantize=None):
    maps = rng.random((n, h, w))
    if quantize:
        maps = np.round(maps * quantize) / quantize
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
        maps[i][masks[i]] += rng.random() * 0.5
    return maps, masks


def _brute_auroc(scores, labels):
    """Mann-Whitney: the share of (anomalous, normal) pairs ranked right, ties counting one half."""
    s, y = np.ravel(scores), np.ravel(labels).astype(bool)
    difference = s[y][:, None] - s[~y][None, :]
    return float(np.mean((difference > 0) + 0.5 * (difference == 0)))


def _brute_ap(scores, labels):
    """Step-wise average precision: sum over distinct thresholds of (recall gained) × precision there."""
    s, y = np.ravel(scores), np.ravel(labels).astype(bool)
    area, previous_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        flagged = s >= t
        recall = (flagged & y).sum() / y.sum()
        area += (recall - previous_recall) * (flagged & y).sum() / flagged.sum()
        previous_recall = recall
    return float(area)


def _brute_best_f1(scores, labels):
    """Every distinct score tried as the threshold: the best F1 and the thresholds that reach it."""
    s, y = np.ravel(scores), np.ravel(labels).astype(bool)
    results = {}
    for t in sorted(set(s.tolist())):
        flagged = s >= t
        tp = (flagged & y).sum()
        results[t] = 0.0 if tp == 0 else 2 * tp / (flagged.sum() + y.sum())
    best = max(results.values())
    return best, [t for t, f1 in results.items() if f1 == best]


def test_image_metrics_hand_case():
    # Ranked: 0.8 (anomalous), 0.4 (normal), 0.35 (anomalous), 0.1 (normal).
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert metrics.image_auroc(scores, labels) == pytest.approx(3 / 4)  # 3 of 4 pairs in order
    assert metrics.image_ap(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # A tie between a normal and an anomalous image counts one half.
    assert metrics.image_auroc([0.5, 0.5, 0.9], [0, 1, 1]) == pytest.approx((0.5 + 1) / 2)


@pytest.mark.parametrize("seed", range(3))
def test_image_and_pixel_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.random(50), 1)  # ties across the classes
    y = rng.integers(0, 2, 50)
    assert metrics.image_auroc(s, y) == pytest.approx(_brute_auroc(s, y), abs=1e-12)
    assert metrics.image_ap(s, y) == pytest.approx(_brute_ap(s, y), abs=1e-12)
    maps, masks = _random_case(rng, quantize=20)
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(_brute_auroc(maps, masks), abs=1e-12)
    assert metrics.pixel_ap(maps, masks) == pytest.approx(_brute_ap(maps, masks), abs=1e-12)
    # Pixel metrics pool every pixel of every image: not the mean of per-image values.
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert metrics.pixel_ap(maps, masks) == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))


def test_single_class_is_nan():
    s = np.array([0.1, 0.2])
    assert math.isnan(metrics.image_auroc(s, [0, 0]))
    assert math.isnan(metrics.image_ap(s, [1, 1]))
    assert math.isnan(metrics.pixel_auroc(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), bool)))
    assert math.isnan(metrics.aupro(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), bool)))
    assert math.isnan(metrics.aupro(np.zeros((1, 2, 2)), np.ones((1, 2, 2), bool)))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantize", [None, 5])
def test_aupro_matches_brute_force(seed, quantize):
    rng = np.random.default_rng(seed)
    maps, masks = _random_case(rng, quantize=quantize)
    assert metrics.aupro(maps, masks) == pytest.approx(_brute_aupro(maps, masks), abs=1e-6)
    assert metrics.aupro(maps, masks, 0.05) == pytest.approx(_brute_aupro(maps, masks, 0.05), abs=1e-6)
    assert metrics.aupro(maps, masks, 1.0) == pytest.approx(_brute_aupro(maps, masks, 1.0), abs=1e-6)


def test_aupro_perfect_and_ties():
    rng = np.random.default_rng(1)
    _, masks = _random_case(rng)
    assert metrics.aupro(masks.astype(float), masks) == pytest.approx(1.0)
    # Constant map: a single threshold, so the curve goes straight from (0, 0) to (1, 1).
    # Interpolated at FPR 0.3 that is the chance diagonal: 0.3 * 0.3 / 2 / 0.3 = 0.15, the
    # same value a random map converges to (the standard definition, no free area).
    const = np.ones(masks.shape)
    assert metrics.aupro(const, masks) == pytest.approx(_brute_aupro(const, masks))
    assert metrics.aupro(const, masks) == pytest.approx(0.15)


def test_aupro_weights_regions_equally():
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 0:2, 0:2] = True  # small region, detected
    masks[0, 5:10, 5:10] = True  # large region, missed
    maps = np.zeros((1, 10, 10))
    maps[0, 0:2, 0:2] = 1.0
    # at FPR 0 PRO is 0.5; then everything jumps to (1,1)
    expected = (0.3 * (0.5 + 0.5 + 0.5 * 0.3 / 1.0)) / 2 / 0.3
    assert metrics.aupro(maps, masks) == pytest.approx(expected)
    assert metrics.aupro(maps, masks) == pytest.approx(_brute_aupro(maps, masks))


def test_threshold_stats_hand_case():
    s = np.array([0.9, 0.8, 0.4, 0.3, 0.2, 0.6])
    y = np.array([1, 1, 1, 0, 0, 0])
    st = metrics.threshold_stats(s, y, 0.5)
    assert (st["tp"], st["fp"], st["tn"], st["fn"]) == (2, 1, 2, 1)
    assert st["precision"] == pytest.approx(2 / 3)
    assert st["recall"] == pytest.approx(2 / 3)
    assert st["f1"] == pytest.approx(2 / 3)
    assert st["false_alarm_rate"] == pytest.approx(1 / 3)
    assert st["accuracy"] == pytest.approx(4 / 6)
    # threshold equal to a score counts as anomalous
    assert metrics.threshold_stats(s, y, 0.4)["tp"] == 3
    # nothing predicted -> precision 0.0; no normals -> false alarm nan
    st = metrics.threshold_stats(np.array([0.1]), np.array([1]), 0.5)
    assert st["precision"] == 0.0 and st["recall"] == 0.0 and st["f1"] == 0.0
    assert math.isnan(st["false_alarm_rate"])


def test_f1_optimal_threshold_hand_case():
    # Ranked high to low: 0.9 a, 0.8 a, 0.7 n, 0.6 a, 0.5 n, 0.4 n, 0.3 a, 0.2 n (a = anomalous, 4 of them).
    # F1 at each threshold: 0.40, 0.67, 0.57, 0.75, 0.67, 0.60, 0.73, 0.67 — only 0.6 gives 0.75
    # (precision 3/4, recall 3/4); the runner-up 0.3 (8/11) is what "flag more" rules would pick.
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(s))  # the input order must not matter
    t, f1 = metrics.f1_optimal_threshold(s[order], y[order])
    assert t == 0.6 and f1 == pytest.approx(0.75)
    assert _brute_best_f1(s, y) == (pytest.approx(0.75), [0.6])
    stats = metrics.threshold_stats(s, y, t)
    assert (stats["tp"], stats["fp"], stats["fn"], stats["f1"]) == (3, 1, 1, pytest.approx(0.75))
    t, f1 = metrics.f1_optimal_threshold(s, np.zeros(8))
    assert math.isnan(t) and math.isnan(f1)


@pytest.mark.parametrize("seed", range(4))
def test_f1_optimal_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40) + 0.4 * y, 2)  # overlapping classes, ties
    t, f1 = metrics.f1_optimal_threshold(s, y)
    best, thresholds = _brute_best_f1(s, y)
    assert f1 == pytest.approx(best, abs=1e-12) and t in thresholds
    assert metrics.threshold_stats(s, y, t)["f1"] == pytest.approx(best, abs=1e-12)


def test_aupro_float32_and_larger_case_match_brute_force():
    rng = np.random.default_rng(7)
    maps, masks = _random_case(rng, n=4, h=16, w=16, quantize=50)  # many ties across images
    maps32 = maps.astype(np.float32)
    for limit in (0.3, 0.1, 0.5):
        assert metrics.aupro(maps32, masks, limit) == pytest.approx(_brute_aupro(maps32, masks, limit), abs=1e-9)


def test_aupro_limit_hits_a_curve_point_exactly():
    # 10 normal pixels with distinct scores: FPR steps by 0.1, so 0.3 is a curve point.
    maps = np.array([[[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.85, 0.05]]])
    masks = np.zeros_like(maps, dtype=bool)
    masks[0, 0, 10:] = True  # one region of two pixels
    for limit in (0.3, 0.25, 1.0):
        assert metrics.aupro(maps, masks, limit) == pytest.approx(_brute_aupro(maps, masks, limit), abs=1e-12)


def test_aupro_rejects_nan():
    with pytest.raises(ValueError):
        metrics.aupro(np.full((1, 2, 2), np.nan), np.eye(2, dtype=bool)[None])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_ranking_matches_scikit_learn_on_a_larger_tied_case(dtype):
    # 20 maps of 48×64 quantised to 300 levels: ties within and across the classes, many regions.
    rng = np.random.default_rng(11)
    maps, masks = _random_case(rng, n=20, h=48, w=64, quantize=300)
    maps = maps.astype(dtype)
    ranking = metrics.PixelRanking(maps, masks)
    assert (ranking.n_normal, ranking.n_anomalous) == ((~masks).sum(), masks.sum())
    assert ranking.auroc() == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert ranking.ap() == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    # One ranking serves every metric and limit; the module functions build their own.
    assert ranking.auroc() == metrics.pixel_auroc(maps, masks)
    assert ranking.aupro(0.3) == metrics.aupro(maps, masks, 0.3)
    assert ranking.aupro(1.0) == metrics.aupro(maps, masks, 1.0)


def test_aupro_of_a_larger_case_matches_brute_force():
    rng = np.random.default_rng(3)
    maps, masks = _random_case(rng, n=6, h=20, w=20, quantize=40)
    for limit in (0.3, 0.02, 1.0):
        assert metrics.aupro(maps, masks, limit) == pytest.approx(_brute_aupro(maps, masks, limit), abs=1e-12)


def test_pixel_ranking_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.PixelRanking(np.zeros((1, 2, 2)), np.zeros((1, 2, 3), bool))
    with pytest.raises(ValueError, match="NaN"):
        metrics.pixel_auroc(np.full((1, 2, 2), np.inf), np.eye(2, dtype=bool)[None])
    with pytest.raises(ValueError, match="fpr_limit"):
        metrics.PixelRanking(np.zeros((1, 2, 2)), np.eye(2, dtype=bool)[None]).aupro(0.0)

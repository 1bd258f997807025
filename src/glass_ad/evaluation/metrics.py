"""Evaluation metrics: AUROC / AP (scikit-learn), AUPRO, threshold statistics.

All functions take numpy arrays and return plain Python floats (or dicts of them).
Metrics that are undefined because only one class is present return ``float('nan')``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

__all__ = [
    "image_auroc",
    "image_ap",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "threshold_stats",
    "f1_optimal_threshold",
]


def _flat(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten to 1-D float scores and bool labels.

    float32 input stays float32: pixel maps of a whole test set are large and a float64 copy
    would double the memory for no gain in ranking accuracy.
    """
    s = np.asarray(scores)
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    s = s.ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in size: {s.shape} vs {y.shape}")
    return s, y


def _two_classes(y: np.ndarray) -> bool:
    return y.size > 0 and bool(y.any()) and not bool(y.all())


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image-level ROC AUC (nan if only one class is present)."""
    s, y = _flat(scores, labels)
    return float(roc_auc_score(y, s)) if _two_classes(y) else float("nan")


def image_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image-level average precision (nan if only one class is present)."""
    s, y = _flat(scores, labels)
    # scikit-learn can return 1 + 2e-16 for a perfect ranking: clip the rounding away.
    return float(min(1.0, average_precision_score(y, s))) if _two_classes(y) else float("nan")


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel-level ROC AUC over all pixels of all images (nan if only one class is present)."""
    return image_auroc(maps, masks)


def pixel_ap(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel-level average precision over all pixels of all images (nan if one class only)."""
    return image_ap(maps, masks)


def _region_ids(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 8-connected regions per image with ids unique across images (0 = normal)."""
    ids = np.zeros(masks.shape, dtype=np.int32)
    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity
    offset = 0
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=structure)
        if n:
            ids[i] = np.where(lab > 0, lab + offset, 0)
            offset += n
    return ids, offset


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``.

    Ground-truth regions are 8-connected components of each mask. For a threshold ``t``,
    PRO is the mean over all regions of the fraction of region pixels scoring ``>= t`` and
    FPR is the fraction of normal pixels (over all images) scoring ``>= t``. The curve is
    evaluated exactly at every distinct score, starts at (0, 0), is integrated with the
    trapezoid rule up to ``fpr_limit`` (linear interpolation at the limit) and divided by
    ``fpr_limit``. Returns nan when there are no regions or no normal pixels.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError("fpr_limit must be in (0, 1]")
    m = np.asarray(maps)
    if m.dtype not in (np.float32, np.float64):
        m = m.astype(np.float64)
    g = np.asarray(masks).astype(bool, copy=False)
    if m.shape != g.shape:
        raise ValueError(f"maps and masks differ in shape: {m.shape} vs {g.shape}")
    if m.ndim == 2:
        m, g = m[None], g[None]
    if m.ndim != 3:
        raise ValueError("maps must be (N, H, W)")
    if not np.isfinite(m).all():
        raise ValueError("maps contain NaN or infinite values")

    ids, n_regions = _region_ids(g)
    n_normal = int(g.size - np.count_nonzero(g))
    if n_regions == 0 or n_normal == 0:
        return float("nan")

    # An anomalous pixel above the threshold adds 1 / (region size * number of regions) to PRO.
    sizes = np.bincount(ids.ravel(), minlength=n_regions + 1)
    weight = np.zeros(n_regions + 1, dtype=np.float64)
    weight[1:] = 1.0 / (sizes[1:] * float(n_regions))

    # Sort once, highest score first; the order inside a tie group does not matter because
    # only the last pixel of each group (all equal scores included) becomes a curve point.
    order = np.argsort(m.ravel())
    ascending = m.ravel()[order]
    s_sorted = ascending[::-1]
    ids_sorted = ids.ravel()[order][::-1]
    del order
    fp = np.cumsum(ids_sorted == 0, dtype=np.int64)  # integer count: exact, no round-off

    # Only the curve up to the first point past fpr_limit is needed: cut the sorted arrays
    # after the tie group in which FPR first exceeds the limit (saves memory and time).
    n = s_sorted.size
    # Largest false-positive count whose FPR is still <= limit, found with the same float
    # division used for the curve below, so the cut and the integration agree exactly.
    max_fp = int(np.floor(fpr_limit * n_normal))
    while (max_fp + 1) / n_normal <= fpr_limit:
        max_fp += 1
    while max_fp > 0 and max_fp / n_normal > fpr_limit:
        max_fp -= 1
    j = int(np.searchsorted(fp, max_fp, side="right"))  # first pixel whose FPR exceeds the limit
    if j < n:
        # Every pixel scoring >= s_sorted[j] belongs before the cut (its whole tie group).
        end = n - int(np.searchsorted(ascending, s_sorted[j], side="left"))
        s_sorted, ids_sorted, fp = s_sorted[:end], ids_sorted[:end], fp[:end]

    pro = np.cumsum(weight[ids_sorted])
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    fpr = np.r_[0.0, fp[last] / n_normal]
    pro = np.r_[0.0, pro[last]]
    if s_sorted.size == n:
        # The lowest threshold takes every pixel: pin the end to (1, 1) despite cumsum round-off.
        fpr[-1] = 1.0
        pro[-1] = 1.0
    np.clip(pro, 0.0, 1.0, out=pro)

    # Integrate up to fpr_limit with linear interpolation at the limit.
    k = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr[:k] <= limit
    f = fpr[:k]
    p = pro[:k]
    if f[-1] < fpr_limit:  # the curve was cut just past the limit, so fpr[k] exists
        f0, f1, p0, p1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        p_lim = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)
        f = np.r_[f, fpr_limit]
        p = np.r_[p, p_lim]
    area = float(np.sum((f[1:] - f[:-1]) * (p[1:] + p[:-1]) * 0.5))
    return float(min(1.0, max(0.0, area / fpr_limit)))  # clip float rounding


def _div(a: float, b: float, empty: float) -> float:
    return float(a) / float(b) if b else empty


def threshold_stats(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Confusion counts and rates when ``score >= threshold`` means anomalous.

    Zero-denominator conventions: precision, recall and f1 become 0.0; false_alarm_rate
    (fp / normals) is nan without normal samples; accuracy is nan for an empty input.
    """
    s, y = _flat(scores, labels)
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    tn = int(np.sum(~pred & ~y))
    fn = int(np.sum(~pred & y))
    precision = _div(tp, tp + fp, 0.0)
    recall = _div(tp, tp + fn, 0.0)
    f1 = _div(2 * precision * recall, precision + recall, 0.0)
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": _div(fp, fp + tn, float("nan")),
        "accuracy": _div(tp + tn, s.size, float("nan")),
    }


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Return ``(threshold, f1)`` maximising F1 (``score >= threshold`` is anomalous).

    Returns ``(nan, nan)`` when only one class is present.
    """
    s, y = _flat(scores, labels)
    if not _two_classes(y):
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    i = int(np.argmax(f1))
    return float(thresholds[i]), float(f1[i])

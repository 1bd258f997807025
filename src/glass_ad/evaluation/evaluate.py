"""Streaming evaluator over a test set with bounded, preallocated storage."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from glass_ad.evaluation import metrics

__all__ = ["StreamingEvaluator"]

PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "aupro")


def _pixel_metrics(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    ranking = metrics.PixelRanking(maps, masks)  # one sort serves all three
    return dict(zip(PIXEL_KEYS, (ranking.auroc(), ranking.ap(), ranking.aupro())))


class StreamingEvaluator:
    """Accumulates scores, maps and masks batch by batch, then computes all metrics.

    Maps (float32) and masks (bool) live in preallocated arrays that double in capacity
    when full; only the path and defect type strings are kept per image besides them.
    """

    def __init__(self, image_size: int | tuple[int, int], expected: int | None = None) -> None:
        shape = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if min(shape) <= 0:
            raise ValueError("image_size must be positive")
        self.shape = (int(shape[0]), int(shape[1]))  # (H, W) of the maps
        cap = max(1, int(expected) if expected else 16)
        self._scores = np.zeros(cap, dtype=np.float64)
        self._labels = np.zeros(cap, dtype=np.int64)
        self._maps = np.zeros((cap, *self.shape), dtype=np.float32)
        self._masks = np.zeros((cap, *self.shape), dtype=bool)
        self._paths: list[str] = []
        self._types: list[str] = []
        self._n = 0

    # ------------------------------------------------------------------ storage
    @property
    def capacity(self) -> int:
        """Number of images the current buffers can hold."""
        return int(self._scores.shape[0])

    def _grow(self, needed: int) -> None:
        cap = self.capacity
        if needed <= cap:
            return
        while cap < needed:
            cap *= 2
        n = self._n

        def grow(a: np.ndarray) -> np.ndarray:
            b = np.zeros((cap,) + a.shape[1:], dtype=a.dtype)
            b[:n] = a[:n]
            return b

        self._scores = grow(self._scores)
        self._labels = grow(self._labels)
        self._maps = grow(self._maps)
        self._masks = grow(self._masks)

    def __len__(self) -> int:
        return self._n

    def add(
        self,
        image_scores: np.ndarray,
        maps: np.ndarray,
        labels: np.ndarray,
        masks: np.ndarray | None,
        defect_types: Sequence[str],
        paths: Sequence[str],
    ) -> None:
        """Append one batch. ``masks=None`` stores all-normal masks for the batch."""
        scores = np.asarray(image_scores, dtype=np.float64).reshape(-1)
        b = scores.shape[0]
        maps = np.asarray(maps, dtype=np.float32)
        if maps.shape != (b, *self.shape):
            raise ValueError(f"maps must have shape {(b, *self.shape)}, got {maps.shape}")
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != b or len(defect_types) != b or len(paths) != b:
            raise ValueError("labels, defect_types and paths must match the batch size")
        if masks is not None:
            masks = np.asarray(masks)
            if masks.shape != (b, *self.shape):
                raise ValueError(f"masks must have shape {(b, *self.shape)}, got {masks.shape}")
        self._grow(self._n + b)
        sl = slice(self._n, self._n + b)
        self._scores[sl] = scores
        self._labels[sl] = labels.astype(np.int64)
        self._maps[sl] = maps
        self._masks[sl] = masks.astype(bool) if masks is not None else False
        self._types.extend(str(t) for t in defect_types)
        self._paths.extend(str(p) for p in paths)
        self._n += b

    # --------------------------------------------------------------- accessors
    @property
    def image_scores(self) -> np.ndarray:
        """Image scores of the images added so far, shape (n,)."""
        return self._scores[: self._n]

    @property
    def labels(self) -> np.ndarray:
        """Image labels (0 normal, 1 anomalous), shape (n,)."""
        return self._labels[: self._n]

    @property
    def maps(self) -> np.ndarray:
        """View of the stored anomaly maps, shape (n, S, S)."""
        return self._maps[: self._n]

    @property
    def masks(self) -> np.ndarray:
        """View of the stored ground-truth masks, shape (n, S, S) bool."""
        return self._masks[: self._n]

    @property
    def paths(self) -> list[str]:
        """Image paths in insertion order."""
        return list(self._paths)

    @property
    def defect_types(self) -> list[str]:
        """Defect type names in insertion order ("good" for normal images)."""
        return list(self._types)

    # ----------------------------------------------------------------- metrics
    def compute(self, pixel_metrics: bool = True) -> dict:
        """Compute image/pixel AUROC and AP, AUPRO, counts, and the same per defect type.

        A defect type is scored on its own images and every normal image. ``pixel_metrics=False``
        (a data set without ground-truth masks) reports the pixel metrics as nan without ranking
        the pixels.
        """
        scores, labels = self.image_scores, self.labels
        y = labels > 0
        pixel_metrics = bool(pixel_metrics and self._n)
        per_type: dict[str, dict] = {}
        types = np.asarray(self._types, dtype=object)
        good = ~y
        for t in sorted(set(self._types)):
            if t == "good":
                continue
            sel = (types == t) & y
            keep = sel | good
            per_type[t] = {"image_auroc": metrics.image_auroc(scores[keep], sel[keep]), "n": int(sel.sum())}
            if pixel_metrics:
                per_type[t].update(_pixel_metrics(self.maps[keep], self.masks[keep]))
                # How much of the set-wide pixel AUROC this type weighs: its share of the anomalous pixels.
                per_type[t]["anomalous_pixels"] = int(np.count_nonzero(self.masks[sel]))
        pixel = _pixel_metrics(self.maps, self.masks) if pixel_metrics else dict.fromkeys(PIXEL_KEYS, float("nan"))
        return {
            "image_auroc": metrics.image_auroc(scores, y),
            "image_ap": metrics.image_ap(scores, y),
            **pixel,
            "n_images": int(self._n),
            "n_anomalous": int(y.sum()),
            "n_normal": int(good.sum()),
            "per_defect_type": per_type,
        }

    def worst_cases(self, threshold: float, k: int = 8) -> tuple[list[int], list[int]]:
        """Indices of the worst false positives and false negatives at ``threshold``.

        False positives are normal images scoring ``>= threshold``, highest score first;
        false negatives are anomalous images scoring ``< threshold``, lowest score first.
        """
        scores, y = self.image_scores, self.labels > 0
        fp = np.flatnonzero(~y & (scores >= threshold))
        fn = np.flatnonzero(y & (scores < threshold))
        fp = fp[np.argsort(-scores[fp], kind="stable")][:k]
        fn = fn[np.argsort(scores[fn], kind="stable")][:k]
        return [int(i) for i in fp], [int(i) for i in fn]

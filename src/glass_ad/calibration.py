"""Decision thresholds and a normalised score, fixed at training time from held-out normal images.

No defect image is needed: the image threshold is the (1 − target false-alarm rate) quantile of the
held-out normal images' scores, the pixel threshold the same quantile of their map values. The
normalised score is a logistic curve fixed by two numbers of the same distribution:

    normalized(s) = 1 / (1 + exp(−(s − t) / τ)),  τ = (t − m) / ln 9

with t the threshold and m the median normal score, so that the median normal image maps to 0.1 and
the threshold to 0.5. It is monotone, lies in (0, 1), and is the same formula in PyTorch and ONNX.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .config import GlassConfig

LN9 = math.log(9.0)


@torch.no_grad()
def holdout_scores(model, images: torch.Tensor, device, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and a random sample of pixel-map values of uint8 N×3×S×S images."""
    model.eval()
    image_scores, pixel_values = [], []
    rng = np.random.default_rng(0)
    for start in range(0, len(images), batch_size):
        out = model(images[start : start + batch_size].to(device).float() / 255.0)
        image_scores.append(out.image_scores.cpu().numpy())
        maps = out.anomaly_maps.cpu().numpy().reshape(len(out.anomaly_maps), -1)
        take = min(maps.shape[1], 20_000)  # a sample per image keeps memory flat for large sets
        pixel_values.append(np.take_along_axis(maps, rng.integers(0, maps.shape[1], (len(maps), take)), 1).ravel())
    return np.concatenate(image_scores), np.concatenate(pixel_values)


def logistic_params(normal_scores: np.ndarray, threshold: float) -> dict[str, float]:
    median = float(np.median(normal_scores))
    spread = (threshold - median) / LN9
    if not spread > 1e-6:  # degenerate holdout (all scores equal): a narrow but valid curve
        spread = max(abs(threshold) * 1e-3, 1e-6)
    return {"center": float(threshold), "scale": float(spread)}


def normalize_scores(scores, params: dict[str, float]):
    """Monotone map raw → (0, 1) with threshold ↦ 0.5 (numpy arrays or torch tensors)."""
    z = (scores - params["center"]) / params["scale"]
    if isinstance(scores, torch.Tensor):
        return torch.sigmoid(z)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def calibrate(model, holdout: torch.Tensor, config: GlassConfig, device) -> dict[str, Any]:
    """Thresholds for the target false-alarm rate from held-out normal images."""
    image_scores, pixel_values = holdout_scores(model, holdout, device)
    rate = config.target_false_alarm_rate
    image_threshold = float(np.quantile(image_scores, 1.0 - rate, method="higher"))
    pixel_threshold = float(np.quantile(pixel_values, 1.0 - rate, method="higher"))
    return {
        "method": "holdout-normal-quantile",
        "target_false_alarm_rate": rate,
        "holdout_images": int(len(image_scores)),
        "image_threshold": image_threshold,
        "pixel_threshold": pixel_threshold,
        "image_normalization": logistic_params(image_scores, image_threshold),
        "pixel_normalization": logistic_params(pixel_values, pixel_threshold),
        "holdout_image_scores": [float(s) for s in image_scores],
    }

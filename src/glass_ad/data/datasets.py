"""The PyTorch dataset of a data set's samples: `ImageDataset` decodes each image (and its mask) and
preprocesses it for the network (layouts: `layouts.py`; resize and crop: `preprocessing.py`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from glass_ad.data.io import ImageReadError, read_image, read_mask
from glass_ad.data.layouts import Sample
from glass_ad.data.preprocessing import Preprocessor

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Samples → dicts of ``image`` ``(3, S, S)``, ``mask`` ``(1, S, S)`` (zeros without a mask),
    ``label``, ``defect_type``, ``path`` (str) and ``index``.

    An unreadable image or mask raises :class:`~glass_ad.data.io.ImageReadError` naming the file (the caller
    decides whether to skip it). A mask saved at another resolution than its image is resized (nearest)
    when the aspect ratios agree within 2 %; otherwise that is an ImageReadError naming the mask.
    ``bit_depth`` is the model's input bit depth for images deeper than 8 bits (None: by container).
    """

    def __init__(self, samples: list[Sample], preprocessor: Preprocessor, bit_depth: int | None = None):
        self.samples = list(samples)
        self.preprocessor = preprocessor
        self.bit_depth = bit_depth

    def __len__(self) -> int:
        return len(self.samples)

    def _mask(self, sample: Sample, image_hw: tuple[int, int]) -> torch.Tensor:
        if sample.mask_path is None:
            return torch.zeros((1, *self.preprocessor.shape), dtype=torch.float32)
        raw = read_mask(sample.mask_path)
        if raw.shape != tuple(image_hw):
            (mh, mw), (h, w) = raw.shape, image_hw
            if abs((mh / mw) / (h / w) - 1.0) > 0.02:
                raise ImageReadError(
                    sample.mask_path, f"mask is {mw}x{mh} pixels but its image '{sample.path}' is {w}x{h}"
                )
            rows = np.minimum(((np.arange(h) + 0.5) * mh / h).astype(np.int64), mh - 1)
            cols = np.minimum(((np.arange(w) + 0.5) * mw / w).astype(np.int64), mw - 1)
            raw = raw[rows][:, cols]
        return self.preprocessor.mask(raw)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        pixels = read_image(sample.path, bit_depth=self.bit_depth)
        return {
            "image": self.preprocessor.image(pixels),
            "mask": self._mask(sample, pixels.shape[:2]),
            "label": int(sample.label),
            "defect_type": sample.defect_type,
            "path": str(sample.path),
            "index": int(index),
        }

"""Memory-bounded store of per-image patch features (the frozen backbone's output never changes).

Features are kept as float16 (or float32) in RAM, or in a memory-mapped file when they would exceed the
RAM budget, so even large data sets or wide backbones (WRN50: 1296×1536 per image) fit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch


class FeatureStore:
    """N×P×D array of features, filled batch by batch, read back by index as float32 tensors."""

    def __init__(
        self,
        count: int,
        patches: int,
        dim: int,
        *,
        dtype: str = "float16",
        ram_limit_gb: float = 4.0,
        spill_dir: str | os.PathLike | None = None,
    ):
        self.shape = (count, patches, dim)
        np_dtype = np.float16 if dtype == "float16" else np.float32
        size_gb = count * patches * dim * np.dtype(np_dtype).itemsize / 1e9
        self.path: Path | None = None
        if size_gb > ram_limit_gb:
            folder = Path(spill_dir) if spill_dir else Path(tempfile.gettempdir())
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=folder, prefix="features-", suffix=".bin")
            os.close(fd)
            self.path = Path(name)
            self.array = np.memmap(self.path, dtype=np_dtype, mode="w+", shape=self.shape)
        else:
            self.array = np.empty(self.shape, dtype=np_dtype)
        self.size_gb = size_gb

    def __len__(self) -> int:
        return self.shape[0]

    def write(self, start: int, features: torch.Tensor) -> None:
        self.array[start : start + len(features)] = features.detach().cpu().numpy().astype(self.array.dtype)

    def read(self, indices, device: torch.device | str = "cpu") -> torch.Tensor:
        index = np.sort(np.asarray(indices)) if self.path is not None else np.asarray(indices)
        batch = torch.from_numpy(np.ascontiguousarray(self.array[index])).float()
        if self.path is not None:  # restore the requested order after the sorted (sequential) disk read
            order = np.argsort(np.argsort(np.asarray(indices)))
            batch = batch[torch.from_numpy(order)]
        return batch.to(device)

    def close(self) -> None:
        if self.path is not None:
            del self.array
            self.path.unlink(missing_ok=True)
            self.path = None

    def __del__(self):  # best effort: never leave a spill file behind
        try:
            self.close()
        except Exception:
            pass

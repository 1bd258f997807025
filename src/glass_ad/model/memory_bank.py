"""A memory bank of normal patch vectors and the nearest-neighbour distance to it.

Used by the hybrid score (`--score hybrid`): the discriminator's logit plus the distance from each patch
vector to the nearest normal training patch, each standardised on the held-out normal images.

The bank keeps, for each of N training images, R of its patch vectors (a k-centre coreset of that image:
the farthest point first, so that its rare patterns stay) and its descriptor: the mean and the spread
(per-channel standard deviation) of all its patch vectors, a texture's first two moments (`--bank-descriptor
mean` keeps the mean alone, the bank of earlier files). A query image is compared with the patches of the
`neighbours` training images whose descriptors are nearest to its own (the nearest-images retrieval of
SPADE, Cohen & Hoshen 2020, there with the mean of a pooled feature), not with one coreset
of all images: a small global coreset drops exactly the rarer normal patterns that its nearest images
still hold (docs/benchmarks.md, "The hybrid's bank"). `neighbours` ≥ N compares every query with every
stored patch; a bank of one "image" (N = 1) is the global coreset (`--bank-neighbours 0`, and files
written before the retrieval).

A second, coarse scale (`--bank-coarse-window W`, 4 by default; 0: off): the means of W×W windows of the
patch grid (stride W/2, a 17×17 grid of 32-pixel regions on a 36×36 grid) of every training image are
stored too, and each query window is compared with the windows of the same nearest images; its distance,
upsampled bilinearly to the patch grid, is a third part of the hybrid score. A patch vector sees about a
3×3 neighbourhood of the stride-8 grid: a large, low-contrast defect (MTD's "uneven" tiles) has interiors
whose patches each look normal, while the mean over a 32-pixel region does not (docs/method.md,
deviation 15).

The distance is computed as √(‖q‖² − 2 q·b + ‖b‖²) with one (batched) matrix product: TopK, Gather and
MatMul nodes in ONNX. Stored patches are float16 (half the file; the distance error is ~1e-3 of the
spacing), cast to float32 after the gather.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "greedy_coreset",
    "greedy_coreset_per_image",
    "image_descriptors",
    "MemoryBank",
    "nearest_distance",
    "pool_windows",
    "ROW_BUDGET",
    "upsample_windows",
    "describe_bank",
]

# At most this many stored patch vectors (226 MB in float16 at 432 channels): past it each image keeps fewer.
ROW_BUDGET = 2**18


def image_descriptors(features: torch.Tensor, kind: str = "mean_spread") -> torch.Tensor:
    """B×P×D patch vectors → each image's retrieval descriptor: B×D means ("mean"), or B×2D means and
    per-channel standard deviations ("mean_spread")."""
    features = features.float()
    mean = features.mean(dim=1)
    if kind == "mean":
        return mean
    if kind != "mean_spread":
        raise ValueError(f"unknown bank descriptor {kind!r} (mean, mean_spread)")
    spread = (features - mean[:, None, :]).square().mean(dim=1).sqrt()
    return torch.cat([mean, spread], dim=1)


def pool_windows(features: torch.Tensor, grid: tuple[int, int], window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """B×P×D patch vectors on a `grid` → B×P'×D means of window×window cells (stride window // 2) and the
    (rows, columns) of those windows."""
    maps = features.unflatten(1, grid).permute(0, 3, 1, 2)  # batch size left symbolic for exported graphs
    pooled = F.avg_pool2d(maps, window, stride=max(1, window // 2))
    return pooled.flatten(2).transpose(1, 2), (pooled.shape[2], pooled.shape[3])


def upsample_windows(values: torch.Tensor, windows: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """B×P' values of the windows → B×P on the patch grid (bilinear)."""
    maps = values.unflatten(1, windows).unsqueeze(1)
    return F.interpolate(maps, size=grid, mode="bilinear", align_corners=False).flatten(1)


def _k_centre(reduced: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """B×count indices into the P rows of each of B point sets (B×P×d), picked by k-centre greedy selection
    (each pick is the row farthest from those picked so far), all sets at once."""
    sets, rows, _ = reduced.shape
    squared_norms = (reduced * reduced).sum(dim=2)  # B×P
    chosen = torch.empty(sets, count, dtype=torch.long)
    index = torch.randint(rows, (sets,), generator=generator)
    every = torch.arange(sets)
    distance = None
    for i in range(count):
        chosen[:, i] = index
        centre = reduced[every, index]  # B×d
        new = squared_norms - 2 * torch.bmm(reduced, centre[:, :, None])[:, :, 0] + squared_norms[every, index][:, None]
        distance = new if distance is None else torch.minimum(distance, new)
        index = distance.argmax(dim=1)
    return chosen


def _random_projection(dim: int, projection_dim: int, generator: torch.Generator) -> torch.Tensor:
    """A random Gaussian D×d projection (k-centre distances kept up to a small distortion)."""
    width = min(projection_dim, dim)
    return torch.randn(dim, width, generator=generator) / width**0.5


@torch.no_grad()
def greedy_coreset(
    features: torch.Tensor, count: int, *, seed: int = 0, projection_dim: int = 128, pool: int | None = 200_000
) -> torch.Tensor:
    """Indices of `count` rows of `features` (N×D) picked by k-centre greedy selection.

    Selection runs on a random projection to `projection_dim` dimensions over a random pool of at most
    `pool` rows (None: all rows, PatchCore's setting), which bounds the cost to O(count·pool).
    """
    total = len(features)
    count = max(1, min(int(count), total))
    generator = torch.Generator().manual_seed(seed)
    size = total if pool is None else max(count, min(total, pool))
    candidates = torch.randperm(total, generator=generator)[:size]
    projection = _random_projection(features.shape[1], projection_dim, generator)
    reduced = torch.cat([features[candidates[i : i + 65536]].float() @ projection for i in range(0, size, 65536)])
    return candidates[_k_centre(reduced[None], count, generator)[0]]


@torch.no_grad()
def greedy_coreset_per_image(
    features: torch.Tensor, count: int, *, seed: int = 0, projection_dim: int = 128
) -> torch.Tensor:
    """B×count indices: a k-centre coreset of each image's P patch vectors (B×P×D), all images at once."""
    count = max(1, min(int(count), features.shape[1]))
    generator = torch.Generator().manual_seed(seed)
    projection = _random_projection(features.shape[2], projection_dim, generator)
    return _k_centre(features.float() @ projection, count, generator)


class MemoryBank(nn.Module):
    """Nearest-neighbour distance of B×P×D query patches to the stored patches of each query's nearest
    training images (buffers only, no parameters; module docstring)."""

    def __init__(
        self,
        patches: torch.Tensor,
        descriptors: torch.Tensor | None = None,
        neighbours: int = 1,
        windows: torch.Tensor | None = None,
        window: int = 0,
    ):
        super().__init__()
        patches = patches.detach()
        if patches.dim() == 2:  # one global bank (M×D)
            patches = patches[None]
        if descriptors is None:
            descriptors = image_descriptors(patches, "mean")
        self.register_buffer("patches", patches.half())  # N×R×D
        self.register_buffer("patches_sq", (self.patches.float() ** 2).sum(dim=2))  # N×R, of the stored values
        self.register_buffer("descriptors", descriptors.detach().float())  # N×D
        self.neighbours = max(1, min(int(neighbours), len(patches)))
        # The coarse scale: N×W×D window means of the same N images (None: none).
        self.window = int(window) if windows is not None else 0
        self.windows: torch.Tensor | None
        self.windows_sq: torch.Tensor | None
        if windows is not None:
            self.register_buffer("windows", windows.detach().half())
            self.register_buffer("windows_sq", (self.windows.float() ** 2).sum(dim=2))
        else:
            self.windows = self.windows_sq = None

    @property
    def scales(self) -> int:
        """Distances per patch: 1, or 2 with the coarse scale."""
        return 2 if self.windows is not None else 1

    @property
    def retrieves(self) -> bool:
        """Whether each query image is compared with some of the stored images only."""
        return self.neighbours < len(self.patches)

    @property
    def rows(self) -> int:
        return int(self.patches.shape[0] * self.patches.shape[1])

    @property
    def descriptor(self) -> str:
        """How images are described for retrieval: "mean_spread" when the stored descriptors are twice as
        wide as a patch vector, else "mean"."""
        return "mean_spread" if self.descriptors.shape[1] == 2 * self.patches.shape[2] else "mean"

    def nearest_images(self, features: torch.Tensor) -> torch.Tensor:
        """B×K indices of the stored images whose descriptors are nearest to those of B×P×D queries."""
        descriptor = image_descriptors(features, self.descriptor)  # B×D or B×2D
        squared = (descriptor * descriptor).sum(dim=1, keepdim=True) - 2.0 * descriptor @ self.descriptors.T
        squared = squared + (self.descriptors * self.descriptors).sum(dim=1)
        return squared.topk(self.neighbours, dim=1, largest=False).indices

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """B×P×D query patches → B×P distances to their nearest stored patch."""
        queries = features.float()
        index = self.nearest_images(queries) if self.retrieves else None
        return nearest_distance(queries, self.patches, self.patches_sq, index)

    def distances(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """B×P×D query patches on a `grid` → B×P×`scales`: the distance to the nearest stored patch and, with
        the coarse scale, that of the patch's windows to the nearest stored window, upsampled to the grid;
        both among the same nearest images."""
        queries = features.float()
        index = self.nearest_images(queries) if self.retrieves else None
        fine = nearest_distance(queries, self.patches, self.patches_sq, index)
        if self.windows is None:
            return fine[..., None]
        pooled, shape = pool_windows(queries, grid, self.window)
        coarse = nearest_distance(pooled, self.windows, self.windows_sq, index)
        return torch.stack([fine, upsample_windows(coarse, shape, grid)], dim=-1)

    def rescale_(self, factor: float) -> "MemoryBank":
        """Multiply the bank by `factor` (used when a feature scale is folded into other layers)."""
        self.patches.copy_((self.patches.float() * factor).half())
        self.patches_sq.copy_((self.patches.float() ** 2).sum(dim=2))
        self.descriptors.mul_(factor)
        if self.windows is not None:
            self.windows.copy_((self.windows.float() * factor).half())
            self.windows_sq.copy_((self.windows.float() ** 2).sum(dim=2))
        return self

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores."""
        state = {
            "patches": self.patches.detach().cpu(),
            "descriptors": self.descriptors.detach().cpu(),
            "neighbours": int(self.neighbours),
        }
        if self.windows is not None:
            state.update(windows=self.windows.detach().cpu(), window=self.window)
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | torch.Tensor) -> "MemoryBank":
        """The bank of a checkpoint: a `state()` dict, or an M×D tensor (a global bank, older files)."""
        if isinstance(state, torch.Tensor):
            return cls(state)
        return cls(
            state["patches"],
            state.get("descriptors"),
            int(state.get("neighbours", 1)),
            state.get("windows"),
            int(state.get("window", 0)),
        )


def nearest_distance(
    queries: torch.Tensor,
    stored: torch.Tensor,
    stored_sq: torch.Tensor,
    index: torch.Tensor | None,
    product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.matmul,
) -> torch.Tensor:
    """B×Q×D float queries → B×Q distances to the nearest of the N×R×D `stored` rows (`stored_sq`: their
    squared norms, N×R) of the images in B×K `index` (None: of all N images). No size is read from the
    queries' shape, so a traced graph keeps its batch size symbolic also for pooled windows. ``product``
    multiplies the queries by the bank rows transposed (B×D×M or D×M); the exported head passes a named
    module there, whose one MatMul the int8 export quantises (`inference.head.BankProduct`)."""
    if index is not None:
        bank = stored[index].flatten(1, 2).float()  # B×(K·R)×D
        bank_sq = stored_sq[index].flatten(1, 2).unsqueeze(1)
    else:
        bank = stored.reshape(-1, stored.shape[-1]).float()
        bank_sq = stored_sq.reshape(1, 1, -1)
    # ‖q‖² is the same for every row: added after the minimum, not to every entry of the product.
    nearest = (bank_sq - 2.0 * product(queries, bank.transpose(-1, -2))).amin(dim=2)
    return (nearest + (queries * queries).sum(dim=2)).clamp_min(0.0).sqrt()


def describe_bank(state: Mapping[str, Any] | torch.Tensor | None) -> str:
    """A stored bank in words: "nearest 16 of 686 images (by mean and spread) × 324 patch vectors + 144 means
    of 4×4 windows", "coreset of 8891 patch vectors", or "" without one."""
    if state is None:
        return ""
    if isinstance(state, torch.Tensor):
        return f"coreset of {len(state)} patch vectors"
    images, rows, width = state["patches"].shape
    neighbours = int(state.get("neighbours", 1))
    windows, side = state.get("windows"), state.get("window")
    coarse = "" if windows is None else f" + {windows.shape[1]} means of {side}×{side} windows"
    if neighbours < images:
        descriptors = state.get("descriptors")
        by = "mean and spread" if descriptors is not None and descriptors.shape[1] == 2 * width else "mean"
        return f"nearest {neighbours} of {images} images (by {by}) × {rows} patch vectors{coarse}"
    if images == 1:
        return f"coreset of {rows} patch vectors"
    return f"all {images} images × {rows} patch vectors{coarse}"

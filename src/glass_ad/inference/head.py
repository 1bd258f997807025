"""The scoring head as deployed: backbone maps → patch scores with as little arithmetic as the model allows.

`GlassModel` scores a patch as ``rest(W · F + b)``: F = Σ_l up(K_l ⊛ f_l) are the aggregated features
(a fixed 3×3 pooling kernel K_l per backbone level f_l, the coarser levels upsampled bilinearly to the
finest grid), ``W · F + b`` the discriminator's first Linear (adaptor and feature scale folded in by
`GlassModel.fuse_`), ``rest`` the remaining layers (LeakyReLU → Linear → Sigmoid). `ScoringHead` computes
the same numbers with exact rewrites:

1. **Zero rows dropped.** The pooling puts each level into its own part of F: a level's kernel K_l has
   non-zero rows only for the channels S_l it feeds (Lite2's two levels: 216 of the 432 each). Each
   level's convolution computes those rows only (to 224: whole blocks of 16, the extra rows zero), and
   the levels are concatenated instead of summed into a D-channel map; W's columns are reordered to match
   (zero for the extra rows). Half the aggregation's arithmetic, and no D-channel sum per level.
2. **Pixels stay pixels.** Every Linear is a 1×1 convolution on the B×C×h×w map, so ONNX Runtime and
   OpenVINO keep the backbone's blocked channel layout through the head (the first layer fused with its
   LeakyReLU): no B×P×D transpose or reshape of the features or of the hidden activations. The last
   layer (hidden → 1) is computed as 16 channels, 15 of them zero, for the same reason (`OUTPUT_BLOCK`).
3. **The map on the frame** (`frame_graph.wrap_frames` with ``score_map``) is one product of small
   matrices with the patch grid instead of an H×W map smoothed, padded and resized.

Measured (benchmarks/engine_speed.py, docs/deploy.md): what is left is the first layer, a
(h·w × 448) · (448 × 1024) product per image: in float32 it is the floor of this head.

With a memory bank (hybrid score) the features F are also needed for the nearest-neighbour distance: the
concatenated channels are F's channels in another order (the bank is read in that order), and the squared
distance ``min_j ‖q − b_j‖²`` is one matrix product of ``[q, 1]`` with ``[−2 b_j, ‖b_j‖²]`` followed by
the row minimum and ``+ ‖q‖²``: two passes over the N×M product instead of four.

For the int8 export (``bank_product=True``) the fine distance is instead ``min_j(‖b_j‖² − 2 q·b_j) + ‖q‖²``
with q·b computed by `BankProduct`, a module of its own so that its MatMul has a name: the export quantises
that product (both inputs in int8, the bulk of the hybrid's arithmetic) and keeps the norms, the sum and
the minimum in float32. The coarse part's window distance is computed the same way (``window_product``).

`ScoringHead.supports(model)` says whether a model's layers are of the kinds converted here (Linear,
BatchNorm1d, LeakyReLU, ReLU, Sigmoid, Identity); `engines.InferenceGraph` falls back to the model's own
forward otherwise. Parity with the model: tests/test_engine_parity.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glass_ad.model.discriminator import Adaptor
from glass_ad.model.glass_model import GlassModel, standardise
from glass_ad.model.memory_bank import MemoryBank, nearest_distance, pool_windows, upsample_windows

_ELEMENTWISE = (nn.LeakyReLU, nn.ReLU, nn.Sigmoid, nn.Identity)
# The last layer (hidden → 1 score) is computed as OUTPUT_BLOCK channels, all but the first with zero
# weights: a single output channel makes ONNX Runtime convert the whole hidden map out of its blocked
# layout (a copy of B×1024×h×w floats); 16 channels (one AVX-512 block) keep it there, at 16× a tiny cost.
OUTPUT_BLOCK = 16


def _after_first(model: GlassModel) -> list[nn.Module]:
    body, tail = model.discriminator.body, model.discriminator.tail
    return [*list(body)[1:], *tail] if len(body) else list(tail)[1:]


def _first_linear(model: GlassModel) -> nn.Linear:
    body, tail = model.discriminator.body, model.discriminator.tail
    return body[0] if len(body) else tail[0]


def _pixelwise(module: nn.Module) -> nn.Module:
    """A per-patch layer of D as the same layer on a B×C×h×w map."""
    if isinstance(module, nn.Linear):
        conv = nn.Conv2d(module.in_features, module.out_features, 1, bias=module.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(module.weight[:, :, None, None])
            if module.bias is not None:
                conv.bias.copy_(module.bias)
        return conv.to(module.weight.device)
    if isinstance(module, nn.BatchNorm1d):
        gain = module.weight / torch.sqrt(module.running_var + module.eps)
        conv = nn.Conv2d(module.num_features, module.num_features, 1, groups=module.num_features)
        with torch.no_grad():
            conv.weight.copy_(gain[:, None, None, None])
            conv.bias.copy_(module.bias - module.running_mean * gain)
        return conv.to(gain.device)
    if isinstance(module, _ELEMENTWISE):
        return module
    raise TypeError(f"no pixel-wise form for {type(module).__name__}")


def _upsample(level: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear upsampling to (height, width), as `PatchAggregator`. An exact integer factor is passed as a
    scale (the same sampling positions: PyTorch uses in/out either way), which ONNX Runtime runs in its
    blocked layout."""
    h, w = level.shape[-2:]
    if (h, w) == (height, width):
        return level
    if height % h == 0 and width % w == 0 and height // h == width // w:
        return F.interpolate(level, scale_factor=float(height // h), mode="bilinear", align_corners=False)
    return F.interpolate(level, size=(height, width), mode="bilinear", align_corners=False)


def _widen(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """`conv` (one output channel) with ``channels`` outputs, the extra ones zero: channel 0 is unchanged."""
    wide = nn.Conv2d(conv.in_channels, channels, 1, bias=conv.bias is not None).to(conv.weight.device)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:1].copy_(conv.weight)
        if conv.bias is not None:
            wide.bias.zero_()
            wide.bias[:1].copy_(conv.bias)
    return wide


class LevelPooling(nn.Module):
    """One level's fixed 3×3 pooling kernel (a convolution). Its own module only to name its convolutions in
    the exported graph (``/head/pool/...``), which the int8 export keeps in float32."""

    def __init__(self, padding: int):
        super().__init__()
        self.padding = padding

    def forward(self, fmap: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return F.conv2d(fmap, kernel, padding=self.padding)


class BankProduct(nn.Module):
    """queries · bankᵀ of the fine distance (B×P×D by B×D×M or D×M). Its own module only to name its MatMul
    in the exported graph (``/head/bank_product/MatMul``), which the int8 export quantises."""

    def forward(self, queries: torch.Tensor, bank_t: torch.Tensor) -> torch.Tensor:
        return torch.matmul(queries, bank_t)


class ScoringHead(nn.Module):
    """Backbone maps (list of B×C_l×H_l×W_l) → patch scores B×h×w: what ``model.patch_scores(
    model.aggregator(maps) · feature_scale)`` computes, in fewer operations (module docstring)."""

    @staticmethod
    def supports(model: GlassModel) -> bool:
        layers = [model.adaptor, *_after_first(model)]
        return all(isinstance(m, (nn.Linear, nn.BatchNorm1d, Adaptor, *_ELEMENTWISE)) for m in layers)

    def __init__(self, model: GlassModel, bank_product: bool = False):
        super().__init__()
        aggregator = model.aggregator
        first = _first_linear(model)
        weight = first.weight.detach()
        bias = first.bias.detach() if first.bias is not None else torch.zeros(weight.shape[0], device=weight.device)
        if isinstance(model.adaptor, Adaptor):  # an unfused model: fold it here (as GlassModel.fuse_ does)
            bias = weight @ model.adaptor.linear.bias.detach() + bias
            weight = weight @ model.adaptor.linear.weight.detach()
        scale = model.feature_scale.detach()
        self.pool = LevelPooling((aggregator.patch_size - 1) // 2)
        self.levels = len(aggregator.channels)
        order = []  # the feature channel of each compact channel (-1: a zero channel added for the block)
        for i in range(self.levels):
            kernel = getattr(aggregator, f"kernel_{i}")
            rows = torch.nonzero(kernel.flatten(1).abs().sum(dim=1) > 0).flatten()
            compact = kernel[rows]
            extra = -len(rows) % OUTPUT_BLOCK  # zero channels up to a whole block (see OUTPUT_BLOCK)
            if extra:
                compact = torch.cat([compact, compact.new_zeros(extra, *compact.shape[1:])])
            self.register_buffer(f"kernel_{i}", compact.contiguous(), persistent=False)
            order += rows.tolist() + [-1] * extra
        index = torch.tensor(order, device=weight.device)
        present = (index >= 0).to(weight.dtype)
        # The first layer on the concatenated compact channels: W's columns in that order, zero for the pads.
        columns = weight[:, index.clamp_min(0)] * present * scale
        # Its own module so that its convolution has a name in the exported graph (``/head/first/Conv``).
        self.first = nn.Conv2d(columns.shape[1], columns.shape[0], 1).to(columns.device).requires_grad_(False)
        with torch.no_grad():
            self.first.weight.copy_(columns[:, :, None, None])
            self.first.bias.copy_(bias)
        rest = [_pixelwise(m) for m in _after_first(model)]
        self.hybrid = model.memory_bank is not None
        if not self.hybrid:
            last = max((i for i, m in enumerate(rest) if isinstance(m, nn.Conv2d)), default=None)
            if last is not None and rest[last].out_channels == 1 and rest[last].groups == 1:
                rest[last] = _widen(rest[last], OUTPUT_BLOCK)
            self.rest = nn.Sequential(*rest)
            return
        # Hybrid: the logit (no sigmoid) and the distances to the bank (fine, coarse), each standardised.
        self.rest = nn.Sequential(*(rest[:-1] if isinstance(rest[-1], nn.Sigmoid) else rest))
        used = index[index >= 0]
        # The concatenated channels hold every feature once when the levels split the features among
        # them (they do for the pooling of `PatchAggregator`): the bank is read in that order, a zero
        # column for each added channel. Otherwise the features are aggregated again for it.
        self.compact_bank = bool(len(used) == aggregator.embed_dim and len(set(used.tolist())) == len(used))
        if not self.compact_bank:
            self.aggregator = aggregator
        memory = model.memory_bank
        patches = memory.patches.detach().float()  # N×R×D, the stored (float16) values
        windows = memory.windows.detach().float() if memory.windows is not None else None
        descriptors = memory.descriptors.detach()
        if self.compact_bank:  # the bank in the head's channel order
            patches = patches[:, :, index.clamp_min(0)] * present
            windows = windows[:, :, index.clamp_min(0)] * present if windows is not None else None
            parts = descriptors.split(memory.patches.shape[-1], dim=1)  # mean (and spread)
            descriptors = torch.cat([part[:, index.clamp_min(0)] * present for part in parts], dim=1)
        self.retrieves = memory.retrieves
        # Its retrieval picks the images, the products below read their rows.
        self.memory = MemoryBank(patches, descriptors, memory.neighbours, windows, memory.window)
        # The int8 export's form of the fine distance (module docstring); the fp32 one folds the norms in.
        # The coarse part's windows are compared the same way, by a product of their own.
        self.bank_product = BankProduct() if bank_product else None
        self.window_product = BankProduct() if bank_product else torch.matmul
        if not self.retrieves and self.bank_product is None:
            bank = patches.reshape(-1, patches.shape[-1])
            augmented = torch.cat([-2.0 * bank, memory.patches_sq.detach().reshape(-1, 1)], dim=1)  # M × (D+1)
            self.register_buffer("augmented_bank", augmented.T.contiguous(), persistent=False)  # (D+1) × M
        self.register_buffer("feature_scale", scale.clone(), persistent=False)
        self.register_buffer("hybrid_norm", model.hybrid_norm.detach().clone(), persistent=False)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        height, width = maps[0].shape[-2:]
        levels = [
            _upsample(self.pool(fmap, getattr(self, f"kernel_{i}")), height, width)
            for i, fmap in enumerate(maps)
        ]
        features = levels[0] if len(levels) == 1 else torch.cat(levels, dim=1)  # B×D'×h×w, unscaled
        scores = self.rest(self.first(features))[:, 0]  # B×h×w
        if not self.hybrid:
            return scores
        if self.compact_bank:
            rows = (features * self.feature_scale).flatten(2).transpose(1, 2)  # B×P×D'
        else:
            rows = self.aggregator(maps) * self.feature_scale
        distances = self.distances(rows, (height, width))  # B×P×scales
        parts = torch.cat([scores.flatten(1)[..., None], distances], dim=-1)
        return standardise(parts, self.hybrid_norm).mean(dim=-1).view_as(scores)

    def distances(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """B×P×D patch vectors on a `grid` → B×P×scales distances (`MemoryBank.distances`' formulas): to the
        nearest bank vector and, with the coarse scale, of the patch's windows to the nearest stored window."""
        near = self.memory.nearest_images(features) if self.retrieves else None  # B×K
        if self.bank_product is not None:
            fine = nearest_distance(features, self.memory.patches, self.memory.patches_sq, near, self.bank_product)
        elif near is not None:
            fine = _distance(features, self.memory.patches, self.memory.patches_sq, near)
        else:
            fine = _distance(features, augmented=self.augmented_bank)
        if self.memory.windows is None:
            return fine[..., None]
        pooled, shape = pool_windows(features, grid, self.memory.window)
        coarse = nearest_distance(pooled, self.memory.windows, self.memory.windows_sq, near, self.window_product)
        return torch.stack([fine, upsample_windows(coarse, shape, grid)], dim=-1)


def _distance(
    features: torch.Tensor,
    stored: torch.Tensor | None = None,
    stored_sq: torch.Tensor | None = None,
    near: torch.Tensor | None = None,
    *,
    augmented: torch.Tensor | None = None,
) -> torch.Tensor:
    """B×P×D patch vectors → B×P distances to the nearest N×R×D `stored` row of the images in B×K `near`,
    or to the columns of an `augmented` (D+1)×M bank: one product with the squared norms folded in."""
    ones = torch.ones(*features.shape[:-1], 1, dtype=features.dtype, device=features.device)
    if augmented is not None:
        squared = (torch.cat([features, ones], dim=-1) @ augmented).amin(dim=-1)
    else:
        b, _, d = features.shape
        bank = stored[near].reshape(b, -1, d).float()  # B×(K·R)×D
        rows = torch.cat([-2.0 * bank, stored_sq[near].reshape(b, -1, 1)], dim=2)
        squared = torch.bmm(torch.cat([features, ones], dim=-1), rows.transpose(1, 2)).amin(dim=-1)
    squared = squared + (features * features).sum(dim=-1)
    return squared.clamp_min(0.0).sqrt()

"""Patch features: the parameter-free part of E between the backbone maps and the adaptor.

For every backbone level (the reference's PatchCore-style pipeline, reproduced exactly):
1. unfold each map into 3×3 neighbourhoods (stride 1, padding 1) → a (C·9)-vector per position;
2. upsample the coarser levels' (C·9)-channel maps bilinearly to the finest (stride-8) grid;
3. average-pool each level's vector over the channel axis to `embed_dim`, stack the levels and pool the
   stacked vector again to `embed_dim`.

Step 3 is linear and fixed, so it is precomputed once as one (C·9 × D) matrix per level. Unfolding and
then multiplying by that matrix is exactly a 3×3 convolution with the matrix as its kernel, and because
the bilinear upsampling is linear too it commutes with the pooling: each level is one fixed convolution
to D channels at its own resolution, then upsampled. Same numbers as the step-by-step pipeline (checked
in tests/test_features.py), a fraction of the work, and an ONNX-friendly graph.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MAX_EMBED_DIM = 1536  # the reference's pretrain/target embedding width


def default_embed_dim(channels: Sequence[int], patch_size: int = 3) -> int:
    """Per-backbone default width: the reference's 1536, but never wider than any level's raw vector."""
    return min(MAX_EMBED_DIM, min(c * patch_size * patch_size for c in channels))


def adaptive_pool_matrix(in_features: int, out_features: int) -> torch.Tensor:
    """The (in × out) matrix M with x @ M == adaptive_avg_pool1d(x, out) for every x."""
    eye = torch.eye(in_features).unsqueeze(1)  # in × 1 × in
    return F.adaptive_avg_pool1d(eye, out_features).squeeze(1)  # in × out


class PatchAggregator(nn.Module):
    """Backbone maps (list of B×C_l×H_l×W_l) → patch features B×P×D on the finest grid."""

    def __init__(self, channels: Sequence[int], embed_dim: int, patch_size: int = 3):
        super().__init__()
        self.channels = list(channels)
        self.embed_dim = int(embed_dim)
        self.patch_size = int(patch_size)
        k = patch_size * patch_size
        widths = [c * k for c in channels]
        levels = len(channels)
        # Final pooling over the stacked levels (levels·D → D), split per level.
        stacked = adaptive_pool_matrix(levels * embed_dim, embed_dim)
        for i, (channel, width) in enumerate(zip(channels, widths)):
            per_level = adaptive_pool_matrix(width, embed_dim)
            combined = per_level @ stacked[i * embed_dim : (i + 1) * embed_dim]  # (C·9) × D
            # unfold's (C·9) order is (channel, ky, kx): the layout of a D×C×3×3 convolution kernel.
            kernel = combined.t().reshape(embed_dim, channel, patch_size, patch_size).contiguous()
            self.register_buffer(f"kernel_{i}", kernel, persistent=False)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        height, width = maps[0].shape[-2:]
        pad = (self.patch_size - 1) // 2
        out = None
        for i, fmap in enumerate(maps):
            level = F.conv2d(fmap, getattr(self, f"kernel_{i}"), padding=pad)  # B × D × h × w
            if level.shape[-2:] != (height, width):
                level = F.interpolate(level, size=(height, width), mode="bilinear", align_corners=False)
            out = level if out is None else out + level
        assert out is not None
        return out.flatten(2).transpose(1, 2)  # B × P × D, row-major over the grid

"""`GlassModel`: the network from image to anomaly map and image score (its file: checkpoint.py).

image (B×3×S×S, floats in [0, 1]) → frozen backbone → patch aggregation → feature scale → adaptor A →
discriminator D → patch scores (B×h×w) → bilinear upsample to S×S → Gaussian smoothing (σ = 4) = anomaly
map; image score = max of the unsmoothed patch scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from glass_ad.config import GlassConfig
from glass_ad.model.backbones import FrozenBackbone, create_backbone
from glass_ad.model.discriminator import Adaptor, Discriminator
from glass_ad.model.features import PatchAggregator, default_embed_dim
from glass_ad.model.memory_bank import MemoryBank

FEATURE_STRIDE = 8


class GaussianBlur(nn.Module):
    """Separable Gaussian smoothing with a fixed kernel (truncated at 4σ like scipy.ndimage)."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = float(sigma)
        radius = max(1, int(4.0 * sigma + 0.5))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        self.radius = radius
        self.register_buffer("kernel", (kernel / kernel.sum()), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:  # B×1×H×W
        return self.along_height(self.along_width(maps))

    def along_width(self, maps: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return maps
        r = self.radius
        return F.conv2d(F.pad(maps, (r, r, 0, 0), mode="reflect"), self.kernel.to(maps.dtype).view(1, 1, 1, -1))

    def along_height(self, maps: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return maps
        r = self.radius
        return F.conv2d(F.pad(maps, (0, 0, r, r), mode="reflect"), self.kernel.to(maps.dtype).view(1, 1, -1, 1))


def _axis_matrix(grid: int, size: int, sigma: float) -> torch.Tensor:
    """The size×grid matrix of bilinear upsampling followed by Gaussian smoothing along one axis."""
    basis = torch.eye(grid).view(grid, 1, grid, 1)  # one patch row per sample, width 1
    columns = F.interpolate(basis, size=(size, 1), mode="bilinear", align_corners=False)
    columns = GaussianBlur(sigma).along_height(columns)  # grid×1×size×1
    return columns.view(grid, size).T.contiguous()


class ScoreMap(nn.Module):
    """h×w patch scores → H×W anomaly map: bilinear upsampling, then Gaussian smoothing.

    Both steps are separable linear maps, so along each axis together they are one fixed matrix (H×h
    for rows, W×w for columns), and the map is K_h·P·K_wᵀ: the same numbers as interpolate + two 1-D
    convolutions (tests/test_model.py), two small matrix products instead of a 33-tap single-channel
    convolution over every pixel.
    """

    def __init__(self, grid: int | tuple[int, int], size: int | tuple[int, int], sigma: float):
        super().__init__()
        grid_h, grid_w = (grid, grid) if isinstance(grid, int) else grid
        size_h, size_w = (size, size) if isinstance(size, int) else size
        rows = _axis_matrix(grid_h, size_h, sigma)
        self.register_buffer("matrix", rows, persistent=False)
        columns = rows if (grid_w, size_w) == (grid_h, size_h) else _axis_matrix(grid_w, size_w, sigma)
        self.register_buffer("column_matrix", columns, persistent=False)

    def forward(self, patch_scores: torch.Tensor) -> torch.Tensor:  # B×h×w → B×H×W
        return self.matrix @ patch_scores @ self.column_matrix.T


class GlassOutput(NamedTuple):
    image_scores: torch.Tensor  # B
    anomaly_maps: torch.Tensor  # B×H×W (smoothed)
    patch_scores: torch.Tensor  # B×h×w


def standardise(parts: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """B×P×S raw hybrid parts → standardised by `norm`, [mean, std] of each part in turn."""
    mean, std = norm[: 2 * parts.shape[-1]].view(-1, 2).unbind(1)
    return (parts - mean) / std


class GlassModel(nn.Module):
    """Backbone + aggregation + adaptor + discriminator + map post-processing."""

    def __init__(
        self,
        backbone: FrozenBackbone,
        aggregator: PatchAggregator,
        discriminator: Discriminator,
        adaptor: Adaptor | None,
        *,
        image_size: int,
        input_shape: tuple[int, int] | None = None,
        feature_scale: float = 1.0,
        smoothing_sigma: float = 4.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator
        self.adaptor = adaptor if adaptor is not None else nn.Identity()
        self.discriminator = discriminator
        self.input_shape = (int(input_shape[0]), int(input_shape[1])) if input_shape else (int(image_size),) * 2
        self.image_size = min(self.input_shape)
        self.register_buffer("feature_scale", torch.tensor(float(feature_scale)))
        self.score_map = ScoreMap(self.grid_shape, self.input_shape, smoothing_sigma)
        # Optional hybrid score (`score="hybrid"`): a bank of normal patch vectors, and the mean and std
        # of the discriminator logit and of each nearest-neighbour distance (fine, and coarse when the bank
        # has windows) on held-out normal patches: [mean, std] per part.
        self.memory_bank: MemoryBank | None = None
        self.register_buffer("hybrid_norm", torch.tensor([0.0, 1.0, 0.0, 1.0]))
        # Images per backbone pass (None: the whole batch). Small chunks can be faster on a CPU (their
        # buffers are smaller); `chunking.choose_batch_chunk` measures and sets it. Exported graphs are
        # built from fresh models and never loop.
        self.batch_chunk: int | None = None

    def set_memory_bank(
        self, bank: MemoryBank | Mapping[str, Any] | torch.Tensor | None, norm: Sequence[float] | None = None
    ) -> None:
        """Turn the hybrid score on or off (None). `bank`: a `MemoryBank`, its stored state, or an M×D tensor
        of scaled normal patch vectors (one global bank)."""
        if bank is not None and not isinstance(bank, MemoryBank):
            bank = MemoryBank.from_state(bank)
        self.memory_bank = bank.to(self.feature_scale.device) if bank is not None else None
        if norm is not None:
            self.hybrid_norm = torch.tensor([float(v) for v in norm], device=self.feature_scale.device)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, columns) of the stride-8 patch grid."""
        return (self.input_shape[0] // FEATURE_STRIDE, self.input_shape[1] // FEATURE_STRIDE)

    @property
    def num_patches(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def grid(self) -> int:
        """The side of a square model's patch grid."""
        rows, columns = self.grid_shape
        if rows != columns:
            raise ValueError(f"the patch grid is {rows}×{columns}, not square: use grid_shape")
        return rows

    @property
    def embed_dim(self) -> int:
        return self.aggregator.embed_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled patch features before the adaptor: B×P×D (the part that never changes in training)."""
        if self.batch_chunk and len(images) > self.batch_chunk:
            return torch.cat([self.features_of(part) for part in images.split(self.batch_chunk)])
        return self.features_of(images)

    def features_of(self, images: torch.Tensor) -> torch.Tensor:
        """`features` in one backbone pass, whatever the batch size."""
        return self.aggregator(self.backbone(images)) * self.feature_scale

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """B×P×D features → B×h×w discriminator scores (hybrid scores when a memory bank is set)."""
        b, p, d = features.shape
        rows = features.reshape(b * p, d)
        if self.memory_bank is None:
            scores = self.discriminator(self.adaptor(rows))
        else:
            scores = self.hybrid_parts(features).mean(dim=-1)
        return scores.view(b, *self.grid_shape)

    def patch_logits(self, features: torch.Tensor) -> torch.Tensor:
        """B×P discriminator logits (before the sigmoid) of B×P×D patch vectors."""
        b, p, d = features.shape
        return self.discriminator.logits(self.adaptor(features.reshape(b * p, d))).view(b, p)

    def hybrid_parts(self, features: torch.Tensor) -> torch.Tensor:
        """B×P×S standardised parts of B×P×D patch vectors: the discriminator logit, the nearest-neighbour
        distance and, with a coarse scale in the bank, its windows' distance (the hybrid score is their mean)."""
        return standardise(self.raw_hybrid_parts(features), self.hybrid_norm)

    def raw_hybrid_parts(self, features: torch.Tensor) -> torch.Tensor:
        """`hybrid_parts` before the standardisation."""
        logits = self.patch_logits(features)
        if self.memory_bank is None:
            return torch.stack([logits, torch.zeros_like(logits)], dim=-1)
        return torch.cat([logits[..., None], self.memory_bank.distances(features, self.grid_shape)], dim=-1)

    def postprocess(self, patch_scores: torch.Tensor) -> GlassOutput:
        maps = self.score_map(patch_scores)
        image_scores = patch_scores.flatten(1).amax(dim=1)
        return GlassOutput(image_scores, maps, patch_scores)

    def forward(self, images: torch.Tensor) -> GlassOutput:
        return self.postprocess(self.patch_scores(self.features(images)))

    @torch.no_grad()
    def fuse_(self) -> "GlassModel":
        """Inference only: fold feature scale, adaptor and D's first batch norm into D's first Linear, and
        the backbone's batch norms into its convolutions.

        All are affine maps in eval mode, so the folded model computes the same scores (up to float
        rounding) without the adaptor's D×D product per patch or a pass over every backbone activation per
        batch norm. Training must use an unfused model.
        """
        if isinstance(self.backbone, FrozenBackbone):
            self.backbone.fold_batch_norm_()  # build_model has usually done it already: then nothing is left
        body = self.discriminator.body
        if len(body) < 2 or not isinstance(body[1], nn.BatchNorm1d):
            return self
        first, norm = body[0], body[1]
        weight, bias = first.weight.clone(), first.bias.clone()
        if isinstance(self.adaptor, Adaptor):
            bias = weight @ self.adaptor.linear.bias + bias
            weight = weight @ self.adaptor.linear.weight
        weight = weight * self.feature_scale
        if self.memory_bank is not None:  # distances of unscaled features: bank and its statistics / scale
            scale = float(self.feature_scale)
            self.memory_bank.rescale_(1.0 / scale)
            self.hybrid_norm[2:] /= scale
        gain = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        fused = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.device)
        fused.weight.copy_(weight * gain[:, None])
        fused.bias.copy_((bias - norm.running_mean) * gain + norm.bias)
        self.discriminator.body = nn.Sequential(fused, *list(body)[2:])
        self.adaptor = nn.Identity()
        self.feature_scale.fill_(1.0)
        return self.eval()


def build_model(config: GlassConfig, *, channels: list[int] | None = None, fold_batch_norm: bool = True) -> GlassModel:
    """A fresh (untrained) model for `config`; loads the backbone's pretrained weights.

    The backbone is frozen and always in eval mode, so its batch norms are folded into its convolutions
    (`FrozenBackbone.fold_batch_norm_`): the same features up to float rounding for a fraction of the work,
    in training (feature caching, the LAS images of every step, validation) as in inference.
    """
    backbone = create_backbone(config.backbone, config.layers, config.weights)
    if fold_batch_norm:
        backbone.fold_batch_norm_()
    channels = channels or backbone.channels()
    embed_dim = config.embed_dim or default_embed_dim(channels, config.patch_size)
    aggregator = PatchAggregator(channels, embed_dim, config.patch_size)
    adaptor = Adaptor(embed_dim) if config.adaptor else None
    discriminator = Discriminator(embed_dim, config.dsc_hidden, config.dsc_layers)
    return GlassModel(
        backbone,
        aggregator,
        discriminator,
        adaptor,
        image_size=config.image_size,
        input_shape=config.input_shape,
        smoothing_sigma=config.smoothing_sigma,
    )


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

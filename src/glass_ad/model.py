"""`GlassModel`: the inference graph, and the checkpoint that holds everything it needs.

image (B×3×S×S, floats in [0, 1]) → frozen backbone → patch aggregation → feature scale → adaptor A →
discriminator D → patch scores (B×h×w) → bilinear upsample to S×S → Gaussian smoothing (σ = 4) = anomaly
map; image score = max of the unsmoothed patch scores.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import FrozenBackbone, create_backbone
from .config import GlassConfig
from .discriminator import Adaptor, Discriminator
from .features import PatchAggregator, default_embed_dim
from .memory_bank import MemoryBank
from .io import current_bit_depth

CHECKPOINT_FORMAT = "glass-ad/1"
FORMAT_VERSION = 1  # the number in CHECKPOINT_FORMAT; a newer file says which package wrote it
CHECKPOINT_NAME = "model.pt"
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


class ScoreMap(nn.Module):
    """h×h patch scores → S×S anomaly map: bilinear upsampling, then Gaussian smoothing.

    Both steps are separable linear maps, so along each axis together they are one fixed S×h matrix K,
    and the map is K·P·Kᵀ: the same numbers as interpolate + two 1-D convolutions (tests/test_model.py),
    two small matrix products instead of a 33-tap single-channel convolution over every pixel.
    """

    def __init__(self, grid: int, size: int, sigma: float):
        super().__init__()
        basis = torch.eye(grid).view(grid, 1, grid, 1)  # one patch row per sample, width 1
        columns = F.interpolate(basis, size=(size, 1), mode="bilinear", align_corners=False)
        columns = GaussianBlur(sigma).along_height(columns)  # grid×1×S×1
        self.register_buffer("matrix", columns.view(grid, size).T.contiguous(), persistent=False)

    def forward(self, patch_scores: torch.Tensor) -> torch.Tensor:  # B×h×h → B×S×S
        return self.matrix @ patch_scores @ self.matrix.T


class GlassOutput(NamedTuple):
    image_scores: torch.Tensor  # B
    anomaly_maps: torch.Tensor  # B×S×S (smoothed)
    patch_scores: torch.Tensor  # B×h×w


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
        feature_scale: float = 1.0,
        smoothing_sigma: float = 4.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator
        self.adaptor = adaptor if adaptor is not None else nn.Identity()
        self.discriminator = discriminator
        self.image_size = int(image_size)
        self.register_buffer("feature_scale", torch.tensor(float(feature_scale)))
        self.score_map = ScoreMap(self.grid, self.image_size, smoothing_sigma)
        # Optional hybrid score (`score="hybrid"`): a bank of normal patch vectors, and the mean and std
        # of the discriminator logit and of the nearest-neighbour distance on held-out normal patches.
        self.memory_bank: MemoryBank | None = None
        self.register_buffer("hybrid_norm", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    def set_memory_bank(self, bank: torch.Tensor | None, norm: Sequence[float] | None = None) -> None:
        """Turn the hybrid score on (`bank` = M×D scaled normal patch vectors) or off (None)."""
        self.memory_bank = MemoryBank(bank).to(self.feature_scale.device) if bank is not None else None
        if norm is not None:
            self.hybrid_norm.copy_(torch.tensor([float(v) for v in norm]))

    @property
    def grid(self) -> int:
        return self.image_size // FEATURE_STRIDE

    @property
    def embed_dim(self) -> int:
        return self.aggregator.embed_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled patch features before the adaptor: B×P×D (the part that never changes in training)."""
        return self.aggregator(self.backbone(images)) * self.feature_scale

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """B×P×D features → B×h×w discriminator scores (hybrid scores when a memory bank is set)."""
        b, p, d = features.shape
        rows = features.reshape(b * p, d)
        if self.memory_bank is None:
            scores = self.discriminator(self.adaptor(rows))
        else:
            scores = self.hybrid_parts(rows).sum(dim=1) * 0.5
        side = int(math.isqrt(p))
        return scores.view(b, side, side)

    def hybrid_parts(self, rows: torch.Tensor) -> torch.Tensor:
        """N×2: standardised discriminator logit and nearest-neighbour distance of N patch vectors."""
        logits = self.discriminator.logits(self.adaptor(rows)).flatten()
        distances = self.memory_bank(rows) if self.memory_bank is not None else torch.zeros_like(logits)
        mean_logit, std_logit, mean_distance, std_distance = self.hybrid_norm.unbind(0)
        return torch.stack([(logits - mean_logit) / std_logit, (distances - mean_distance) / std_distance], dim=1)

    def postprocess(self, patch_scores: torch.Tensor) -> GlassOutput:
        maps = self.score_map(patch_scores)
        image_scores = patch_scores.flatten(1).amax(dim=1)
        return GlassOutput(image_scores, maps, patch_scores)

    def forward(self, images: torch.Tensor) -> GlassOutput:
        return self.postprocess(self.patch_scores(self.features(images)))

    @torch.no_grad()
    def fuse_(self) -> "GlassModel":
        """Inference only: fold feature scale, adaptor and D's first batch norm into D's first Linear.

        All four are affine maps in eval mode, so one Linear computes the same scores (up to float
        rounding) without the adaptor's D×D product per patch. Training must use an unfused model.
        """
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


def build_model(config: GlassConfig, *, channels: list[int] | None = None) -> GlassModel:
    """A fresh (untrained) model for `config`; loads the backbone's pretrained weights."""
    backbone = create_backbone(config.backbone, config.layers, config.weights)
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
        smoothing_sigma=config.smoothing_sigma,
    )


# ---------------------------------------------------------------------------------------------------
# Checkpoints: one file, plain tensors and primitives only (loadable with weights_only=True).
#
# Besides the weights a checkpoint records its format ("glass-ad/1"), the package version that wrote it,
# the input bit depth rule (`io.declared_bit_depth`; None: by container) and a digest of its settings, so
# that a damaged, foreign, newer or hand-edited file is refused with one line instead of a traceback or a
# silently different model.


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, foreign, unsafe, newer, edited or inconsistent (one line)."""


_REQUIRED = ("config", "backbone", "embed_dim", "feature_scale", "adaptor", "discriminator")


def _package_version() -> str:
    from . import __version__

    return __version__


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of the settings as stored, to notice a checkpoint whose settings were edited by hand."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def checkpoint_path(run: str | os.PathLike) -> Path:
    path = Path(run)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def make_checkpoint(model: GlassModel, config: GlassConfig, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict; ``input.bit_depth`` is the bit depth declared around training (see io.py)."""
    adaptor = model.adaptor.state_dict() if isinstance(model.adaptor, Adaptor) else None
    config_dict = config.to_dict()
    return {
        "format": CHECKPOINT_FORMAT,
        "package_version": _package_version(),
        "config": config_dict,
        "config_digest": config_digest(config_dict),
        "input": {"bit_depth": current_bit_depth()},
        "backbone": {
            "name": model.backbone.name,
            "layers": list(model.backbone.layers),
            "channels": list(model.aggregator.channels),
        },
        "embed_dim": model.embed_dim,
        "feature_scale": float(model.feature_scale),
        "adaptor": {k: v.detach().cpu() for k, v in adaptor.items()} if adaptor else None,
        "discriminator": {k: v.detach().cpu() for k, v in model.discriminator.state_dict().items()},
        "memory_bank": model.memory_bank.bank.detach().cpu() if model.memory_bank is not None else None,
        "hybrid_norm": [float(v) for v in model.hybrid_norm],
        **extra,
    }


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _load_plain(path: Path) -> Any:
    """torch.load with weights_only=True, every failure turned into one CheckpointError line."""
    restore = "retrain, or restore the file from a copy"
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from error
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write was cut off; {restore}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" in str(error):
            raise CheckpointError(
                f"refused to load {path}: it contains Python objects, not only tensors and numbers, and loading "
                f"them could run code; glass-ad checkpoints never do — use one written by `glass train`"
            ) from None
        raise CheckpointError(
            f"{path} is not a glass-ad checkpoint (not a PyTorch tensor file; an ONNX model, JSON or other file?)"
        ) from None
    except PermissionError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied") from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({type(error).__name__}); {restore}") from None


def _check_structure(checkpoint: Any, path: Path) -> dict[str, Any]:
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a glass-ad checkpoint (it holds a {type(checkpoint).__name__}, not a checkpoint)")
    fmt = checkpoint.get("format")
    if not isinstance(fmt, str) or not fmt.startswith("glass-ad/"):
        hint = " (a bare state dict?)" if fmt is None else ""
        raise CheckpointError(f"{path} is not a glass-ad checkpoint: no '{CHECKPOINT_FORMAT}' format entry{hint}")
    written_by = checkpoint.get("package_version", "unknown")
    try:
        version = int(fmt.split("/", 1)[1])
    except ValueError:
        raise CheckpointError(f"{path} has an unknown checkpoint format '{fmt}'") from None
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise CheckpointError(
            f"{path} is in checkpoint format {fmt} (written by glass-ad {written_by}); glass-ad {_package_version()} "
            f"reads {CHECKPOINT_FORMAT}: "
            + ("upgrade glass-ad (pip install -U glass-ad)" if newer else f"retrain with glass-ad {_package_version()}")
        )
    missing = [key for key in _REQUIRED if key not in checkpoint]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}; retrain, or restore it from a copy")
    backbone = checkpoint["backbone"]
    if not isinstance(backbone, dict) or not {"name", "layers", "channels"} <= set(backbone):
        raise CheckpointError(f"checkpoint {path} is incomplete: the backbone entry lacks name, layers or channels")
    if not isinstance(checkpoint["config"], dict) or not isinstance(checkpoint["discriminator"], dict):
        raise CheckpointError(f"checkpoint {path} is damaged: config and discriminator must be tables")
    return checkpoint


def _check_consistency(checkpoint: dict[str, Any], path: Path) -> None:
    """Settings that disagree with the stored weights (an edited file) are refused, not used silently."""
    stored = checkpoint.get("config_digest")
    if stored is not None and stored != config_digest(checkpoint["config"]):
        raise CheckpointError(
            f"the settings in {path} were changed after training (they no longer match the digest written with "
            f"the weights); restore the original file, or retrain with the settings you want"
        )
    try:
        config = GlassConfig.from_dict(checkpoint["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} has unreadable settings ({error})") from None
    centre = checkpoint.get("centre")
    if isinstance(centre, torch.Tensor) and centre.ndim == 2:
        grid = int(math.isqrt(centre.shape[0]))
        if grid * FEATURE_STRIDE != config.image_size:
            raise CheckpointError(
                f"{path} says image_size {config.image_size}, but its weights were trained at {grid * FEATURE_STRIDE} px; "
                f"the file was edited — restore it or retrain"
            )
    dim = int(checkpoint["embed_dim"])
    first = checkpoint["discriminator"].get("body.0.weight", checkpoint["discriminator"].get("tail.0.weight"))
    if isinstance(first, torch.Tensor) and first.ndim == 2 and first.shape[1] != dim:
        raise CheckpointError(
            f"{path} says patch width (embed_dim) {dim}, but its discriminator takes {first.shape[1]}; "
            f"the file was edited or damaged — restore it or retrain"
        )


def read_checkpoint(run: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint of a run folder (or file), checked: CheckpointError (one line) when it cannot be used."""
    path = checkpoint_path(run)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (train one with `glass train DATA --out RUN_DIR`)")
    checkpoint = _check_structure(_load_plain(path), path)
    _check_consistency(checkpoint, path)
    return checkpoint


def checkpoint_bit_depth(checkpoint: dict[str, Any]) -> int | None:
    """The input bit depth recorded at training (None: each file's container depth)."""
    value = (checkpoint.get("input") or {}).get("bit_depth")
    return int(value) if value is not None else None


def model_from_checkpoint(
    checkpoint: dict[str, Any], device: str | torch.device = "cpu", *, fuse: bool = False
) -> GlassModel:
    """The trained model; `fuse=True` folds the affine layers for faster inference (see `fuse_`).

    Raises CheckpointError (one line) when the checkpoint's backbone cannot be built or does not give the
    channels its weights were trained on, or when the weights do not fit the described model.
    """
    config = GlassConfig.from_dict(checkpoint["config"])
    config = config.replace(layers=tuple(checkpoint["backbone"]["layers"]), embed_dim=checkpoint["embed_dim"])
    stored = [int(c) for c in checkpoint["backbone"]["channels"]]
    name = checkpoint["backbone"]["name"]
    try:
        model = build_model(config, channels=stored)
    except CheckpointError:
        raise
    except Exception as error:  # unknown backbone, missing weights package, bad layer names …
        detail = " ".join(str(error).split()) or type(error).__name__
        raise CheckpointError(f"cannot build the checkpoint's backbone '{name}': {detail}") from None
    actual = model.backbone.channels()
    if actual != stored:
        raise CheckpointError(
            f"the checkpoint's weights were trained on {stored} channels of backbone '{name}' (layers "
            f"{', '.join(config.layers)}), but its settings' backbone '{config.backbone}' gives {actual}; use the "
            f"backbone and weights it was trained with, or retrain"
        )
    model.feature_scale.fill_(checkpoint["feature_scale"])
    try:
        if checkpoint["adaptor"] is not None:
            model.adaptor.load_state_dict(checkpoint["adaptor"])
        model.discriminator.load_state_dict(checkpoint["discriminator"])
        if checkpoint.get("memory_bank") is not None:  # hybrid score
            model.set_memory_bank(checkpoint["memory_bank"], checkpoint["hybrid_norm"])
    except (RuntimeError, KeyError, AttributeError, TypeError) as error:
        first = " ".join(str(error).split())[:200]
        raise CheckpointError(
            f"the checkpoint's weights do not fit the model its settings describe (backbone '{name}', patch width "
            f"{checkpoint['embed_dim']}): {first}"
        ) from None
    model = model.to(device).eval()
    return model.fuse_() if fuse else model


def load_model(
    run: str | os.PathLike, device: str | torch.device = "cpu", *, fuse: bool = False
) -> tuple[GlassModel, dict[str, Any]]:
    """Load a trained model from a run directory or checkpoint file."""
    checkpoint = read_checkpoint(run)
    return model_from_checkpoint(checkpoint, device, fuse=fuse), checkpoint


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)

"""The trained model's file, ``model.pt``: `Checkpoint` and the safe loader that refuses a bad one.

One concept, one file: the typed contents of ``model.pt``, the digests that notice an edited file and the
checks that turn a damaged, foreign, newer or unsafe one into a one-line `CheckpointError`; the decision
rule it stores lives in `decision.py`, the training record in `training_record.py`.

This is the only module that reads or writes ``model.pt``. Every command and library entry point (test,
predict, export, calibrate, info, serve, previews) loads a `Checkpoint` and uses its typed fields:

    checkpoint = Checkpoint.load("runs/mtd")            # every one-line CheckpointError check
    model = checkpoint.build_model("cpu", fuse=True)    # the trained GlassModel
    checkpoint.config.image_size                        # GlassConfig, not a dict
    checkpoint.calibration.operating_point("far")       # thresholds: the same for every command (decision.py)
    checkpoint.save(path)                               # atomic

On disk a checkpoint is one file of plain tensors, numbers, strings, lists and dicts, loadable with
``torch.load(weights_only=True)``: `Checkpoint.to_dict` / `Checkpoint.from_dict` convert, no Python object
is ever pickled (so no module path is stored, and moving a class between modules never breaks a file).
Besides the weights it records its format (``glass-ad/1``), the package version that wrote it, the input
bit depth rule (`io.declared_bit_depth`; None: by container), a digest of its settings and one of
everything else that decides (`integrity_digest`: thresholds and normalisations, weights, scoring
entries), so that a damaged, foreign, newer or hand-edited file is refused with one line instead of a
traceback or a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from glass_ad.config import GlassConfig
from glass_ad.data.io import current_bit_depth
from glass_ad.model.decision import Calibration
from glass_ad.model.discriminator import Adaptor
from glass_ad.model.geometry import FeatureGeometry
from glass_ad.model.glass_model import FEATURE_STRIDE, GlassModel, build_model
from glass_ad.model.training_record import TrainingRecord
from glass_ad.safety import atomic_path

if TYPE_CHECKING:
    from glass_ad.data.preprocessing import Preprocessor

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "FORMAT_VERSION",
    "BackboneRecord",
    "Checkpoint",
    "CheckpointError",
    "as_checkpoint",
    "checkpoint_path",
    "config_digest",
    "integrity_digest",
    "read_checkpoint",
]

CHECKPOINT_FORMAT = "glass-ad/1"
FORMAT_VERSION = 1  # the number in CHECKPOINT_FORMAT; a newer file says which package wrote it
CHECKPOINT_NAME = "model.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, foreign, unsafe, newer, edited or inconsistent (one line)."""


def _package_version() -> str:
    from glass_ad import __version__

    return __version__


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of the settings as stored, to notice a checkpoint whose settings were edited by hand."""
    text = json.dumps(dict(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# What decides, besides the settings: covered by `integrity_digest` so that an edited threshold or weight is
# refused instead of used. Calibration keys outside this list (notes, the hold-out scores) may be edited.
DECIDING_CALIBRATION = (
    "method", "image_threshold", "pixel_threshold", "image_normalization", "pixel_normalization",
    "f1_image_threshold", "f1_pixel_threshold",
)  # fmt: skip
_INTEGRITY_PARTS = {
    "calibration": lambda c: {k: (c.get("calibration") or {}).get(k) for k in DECIDING_CALIBRATION},
    "weights": lambda c: {k: c.get(k) for k in ("adaptor", "discriminator", "memory_bank")},
    "scoring": lambda c: {k: c.get(k) for k in ("embed_dim", "feature_scale", "hybrid_norm", "input", "backbone")},
    # The region rule (operating_point.py); a part of its own, so that files digested before it still load.
    "region": lambda c: {"region_height": (c.get("calibration") or {}).get("region_height")},
}


def _feed(digest: Any, value: Any) -> None:
    """Feed a plain value (dicts, lists, numbers, strings, tensors) into a hash, canonically."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(json.dumps(str(key)).encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(json.dumps(value, default=str).encode())


def integrity_digest(checkpoint: Mapping[str, Any]) -> dict[str, str]:
    """SHA-256 per part of a stored checkpoint that decides (``calibration``: thresholds and normalisations;
    ``weights``: adaptor, discriminator, memory bank; ``scoring``: feature scale, hybrid norms, input rule,
    backbone), to notice a file edited after it was written."""
    out = {}
    for part, select in _INTEGRITY_PARTS.items():
        digest = hashlib.sha256()
        _feed(digest, select(checkpoint))
        out[part] = digest.hexdigest()
    return out


def checkpoint_path(run: str | os.PathLike) -> Path:
    """``RUN_DIR/model.pt`` for a run folder; a file path as it is."""
    path = Path(run)
    return path / CHECKPOINT_NAME if path.is_dir() else path


# ---------------------------------------------------------------------------------------------------
# The backbone the weights belong to


@dataclass(frozen=True)
class BackboneRecord:
    """The frozen backbone the weights were trained on: name, stages, and the channels they gave."""

    name: str
    layers: tuple[str, ...]
    channels: tuple[int, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BackboneRecord":
        return cls(str(data["name"]), tuple(str(v) for v in data["layers"]), tuple(int(c) for c in data["channels"]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layers": list(self.layers), "channels": list(self.channels)}


# ---------------------------------------------------------------------------------------------------
# Checkpoint


_REQUIRED = ("config", "backbone", "embed_dim", "feature_scale", "adaptor", "discriminator")
# Top-level keys with a typed field; anything else is kept in `Checkpoint.extra` and written back.
_KNOWN = (
    *_REQUIRED, "format", "package_version", "config_digest", "integrity_digest", "input", "memory_bank", "hybrid_norm", "calibration",
    "training", "hypothesis", "spectrum", "foreground", "centre", "geometry", "provenance",
)  # fmt: skip


def _tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


@dataclass
class Checkpoint:
    """Everything a trained model is: settings, weights, calibration, training record, provenance.

    Build one with `from_model` (training) or `load` (a file); `build_model` gives the `GlassModel`.
    """

    config: GlassConfig
    backbone: BackboneRecord
    embed_dim: int
    feature_scale: float
    discriminator: dict[str, torch.Tensor]
    adaptor: dict[str, torch.Tensor] | None = None
    memory_bank: dict[str, Any] | torch.Tensor | None = None  # the hybrid's bank (`MemoryBank.state`; a tensor: older files)
    hybrid_norm: tuple[float, ...] = (0.0, 1.0, 0.0, 1.0)
    calibration: Calibration = field(default_factory=Calibration.fallback)
    training: TrainingRecord = field(default_factory=TrainingRecord)
    hypothesis: str | None = None  # "manifold" or "hypersphere"
    spectrum: dict[str, Any] | None = None  # the GLASS-j spectrogram statistics
    foreground: bool | None = None  # whether LAS used foreground masks
    centre: torch.Tensor | None = None  # P×D mean adapted normal feature (hypersphere GAS)
    geometry: FeatureGeometry | None = None
    provenance: dict[str, Any] | None = None  # provenance.provenance(): versions, data fingerprint
    bit_depth: int | None = None  # input bit depth declared at training (None: each file's own depth)
    format: str = CHECKPOINT_FORMAT
    package_version: str | None = None
    config_digest: str | None = None
    stored_config: dict[str, Any] | None = None  # the settings exactly as stored (their digest is of these)
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------ construction

    @classmethod
    def from_model(
        cls,
        model: GlassModel,
        config: GlassConfig,
        *,
        calibration: Calibration | Mapping[str, Any] | None = None,
        training: TrainingRecord | Mapping[str, Any] | None = None,
        hypothesis: str | None = None,
        spectrum: Mapping[str, Any] | None = None,
        foreground: bool | None = None,
        centre: torch.Tensor | None = None,
        geometry: FeatureGeometry | Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        bit_depth: int | None = None,
        **extra: Any,
    ) -> "Checkpoint":
        """The checkpoint of a trained model; ``bit_depth`` defaults to the depth declared around training
        (`io.current_bit_depth`), ``calibration`` to `Calibration.fallback()`."""
        if not isinstance(calibration, Calibration):
            calibration = Calibration.from_dict(calibration)
        if not isinstance(training, TrainingRecord):
            training = TrainingRecord.from_dict(training)
        if geometry is not None and not isinstance(geometry, FeatureGeometry):
            geometry = FeatureGeometry.from_dict(geometry)
        adaptor = model.adaptor.state_dict() if isinstance(model.adaptor, Adaptor) else None
        return cls(
            config=config,
            backbone=BackboneRecord(model.backbone.name, tuple(model.backbone.layers), tuple(model.aggregator.channels)),
            embed_dim=int(model.embed_dim),
            feature_scale=float(model.feature_scale),
            discriminator=_tensors(model.discriminator.state_dict()),
            adaptor=_tensors(adaptor) if adaptor else None,
            memory_bank=model.memory_bank.state() if model.memory_bank is not None else None,
            hybrid_norm=tuple(float(v) for v in model.hybrid_norm),
            calibration=calibration,
            training=training,
            hypothesis=hypothesis,
            spectrum=dict(spectrum) if spectrum is not None else None,
            foreground=foreground,
            centre=centre.detach().cpu() if centre is not None else None,
            geometry=geometry,
            provenance=dict(provenance) if provenance is not None else None,
            bit_depth=current_bit_depth() if bit_depth is None else int(bit_depth),
            package_version=_package_version(),
            extra=dict(extra),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Checkpoint":
        """The typed checkpoint of a stored (already checked) plain dict."""
        geometry, extra = data.get("geometry"), {k: v for k, v in data.items() if k not in _KNOWN}
        typed_geometry = None
        if isinstance(geometry, FeatureGeometry):
            typed_geometry = geometry
        elif geometry is not None:
            try:
                typed_geometry = FeatureGeometry.from_dict(geometry)
            except (KeyError, TypeError, ValueError):  # an older record: kept as stored
                extra["geometry"] = geometry
        depth = (data.get("input") or {}).get("bit_depth")
        stored_config = dict(data["config"])
        return cls(
            config=GlassConfig.from_dict(stored_config),
            backbone=BackboneRecord.from_dict(data["backbone"]),
            embed_dim=int(data["embed_dim"]),
            feature_scale=float(data["feature_scale"]),
            discriminator=dict(data["discriminator"]),
            adaptor=dict(data["adaptor"]) if data.get("adaptor") is not None else None,
            memory_bank=data.get("memory_bank"),
            hybrid_norm=tuple(float(v) for v in data.get("hybrid_norm") or (0.0, 1.0, 0.0, 1.0)),
            calibration=Calibration.from_dict(data.get("calibration")),
            training=TrainingRecord.from_dict(data.get("training")),
            hypothesis=data.get("hypothesis"),
            spectrum=data.get("spectrum"),
            foreground=data.get("foreground"),
            centre=data.get("centre"),
            geometry=typed_geometry,
            provenance=data.get("provenance"),
            bit_depth=int(depth) if depth is not None else None,
            format=str(data.get("format", CHECKPOINT_FORMAT)),
            package_version=data.get("package_version"),
            config_digest=data.get("config_digest"),
            stored_config=stored_config,
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        """The plain dict written to disk (tensors, numbers, strings, lists, dicts only)."""
        if self.stored_config is not None and GlassConfig.from_dict(self.stored_config) == self.config:
            config, digest = dict(self.stored_config), self.config_digest  # as stored: the digest still holds
        else:
            config = self.config.to_dict()
            digest = config_digest(config)
        out: dict[str, Any] = {"format": self.format}
        if self.package_version is not None:
            out["package_version"] = self.package_version
        out["config"] = config
        if digest is not None:
            out["config_digest"] = digest
        out.update(
            {
                "input": {"bit_depth": self.bit_depth},
                "backbone": self.backbone.to_dict(),
                "embed_dim": self.embed_dim,
                "feature_scale": self.feature_scale,
                "adaptor": self.adaptor,
                "discriminator": self.discriminator,
                "memory_bank": self.memory_bank,
                "hybrid_norm": [float(v) for v in self.hybrid_norm],
                "hypothesis": self.hypothesis,
                "spectrum": self.spectrum,
                "foreground": self.foreground,
                "centre": self.centre,
                "geometry": self.geometry.to_dict() if self.geometry is not None else None,
                "provenance": self.provenance,
                "calibration": self.calibration.to_dict(),
            }
        )
        if self.training.recorded:
            out["training"] = self.training.to_dict()
        out.update(self.extra)
        out["integrity_digest"] = integrity_digest(out)  # of what is written now (a new threshold: a new digest)
        return out

    # ---------------------------------------------------------------------------------------- file

    @classmethod
    def load(cls, run: str | os.PathLike) -> "Checkpoint":
        """The checkpoint of a run folder (or file), checked: CheckpointError (one line) when it cannot be
        used; FileNotFoundError when there is none."""
        path = checkpoint_path(run)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path} (train one with `glass train DATA --out RUN_DIR`)")
        data = _check_structure(_load_plain(path), path)
        _check_consistency(data, path)
        try:
            loaded = cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            detail = " ".join(str(error).split())[:200] or type(error).__name__
            raise CheckpointError(f"checkpoint {path} is damaged: an entry has the wrong type ({detail}); retrain, or restore it from a copy") from None
        _check_integrity(data, path)
        return loaded

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a unique temporary file, then a rename): a crash mid-write never leaves a
        truncated checkpoint behind. ``path``: a run folder or a file."""
        path = Path(path)
        path = path / CHECKPOINT_NAME if path.is_dir() else path
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)
        return path

    # -------------------------------------------------------------------------------------- model

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def fit(self) -> str:
        """The fit chosen at training time (preprocessing.resolve_fit: "auto" only remains in hand-made configs)."""
        from glass_ad.data.preprocessing import resolve_fit

        return resolve_fit(self.config.fit)

    def preprocessor(self) -> "Preprocessor":
        """The resize + crop of training, for images of any size."""
        from glass_ad.data.preprocessing import Preprocessor

        return Preprocessor.from_config(self.config)

    def build_model(self, device: str | torch.device = "cpu", *, fuse: bool = False) -> GlassModel:
        """The trained model in eval mode; ``fuse=True`` folds the affine layers for faster inference.

        Raises CheckpointError (one line) when the backbone cannot be built or does not give the channels the
        weights were trained on, or when the weights do not fit the described model.
        """
        config = self.config.replace(layers=tuple(self.backbone.layers), embed_dim=self.embed_dim)
        stored, name = list(self.backbone.channels), self.backbone.name
        try:
            model = build_model(config, channels=stored)
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
        model.feature_scale.fill_(self.feature_scale)
        try:
            if self.adaptor is not None:
                model.adaptor.load_state_dict(self.adaptor)
            model.discriminator.load_state_dict(self.discriminator)
            if self.memory_bank is not None:  # hybrid score
                model.set_memory_bank(self.memory_bank, self.hybrid_norm)
        except (RuntimeError, KeyError, AttributeError, TypeError) as error:
            first = " ".join(str(error).split())[:200]
            raise CheckpointError(
                f"the checkpoint's weights do not fit the model its settings describe (backbone '{name}', patch width "
                f"{self.embed_dim}): {first}"
            ) from None
        model = model.to(device).eval()
        return model.fuse_() if fuse else model


def as_checkpoint(value: Checkpoint | Mapping[str, Any]) -> Checkpoint:
    """A `Checkpoint` from a typed one (as it is) or a plain checkpoint dict (the older API)."""
    return value if isinstance(value, Checkpoint) else Checkpoint.from_dict(value)


# ---------------------------------------------------------------------------------------------------
# The checks of a stored file (each failure: one CheckpointError line)


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (or, in old versions, a pickle starting with its protocol byte)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return True  # let torch.load report the read error
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _load_plain(path: Path) -> Any:
    """torch.load with weights_only=True, every failure turned into one CheckpointError line."""
    restore = "retrain, or restore the file from a copy"
    try:
        size = path.stat().st_size
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from error
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write was cut off; {restore}")
    if not _looks_like_torch_file(path):
        raise CheckpointError(
            f"{path} is not a glass-ad checkpoint (not a PyTorch tensor file; an ONNX model, text, image or other file?)"
        )
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
        height, width = config.input_shape
        if centre.shape[0] != (height // FEATURE_STRIDE) * (width // FEATURE_STRIDE):
            side = int(math.isqrt(centre.shape[0])) * FEATURE_STRIDE
            raise CheckpointError(
                f"{path} says image_size {config.image_size}"
                + (f" (input {height}×{width})" if height != width else "")
                + f", but its weights were trained at {side} px; the file was edited — restore it or retrain"
            )
    dim = int(checkpoint["embed_dim"])
    first = checkpoint["discriminator"].get("body.0.weight", checkpoint["discriminator"].get("tail.0.weight"))
    if isinstance(first, torch.Tensor) and first.ndim == 2 and first.shape[1] != dim:
        raise CheckpointError(
            f"{path} says patch width (embed_dim) {dim}, but its discriminator takes {first.shape[1]}; "
            f"the file was edited or damaged — restore it or retrain"
        )


def _check_integrity(checkpoint: dict[str, Any], path: Path) -> None:
    """Thresholds, weights or scoring entries edited after the file was written are refused."""
    stored_parts = checkpoint.get("integrity_digest")
    if isinstance(stored_parts, Mapping):  # older files have none
        now = integrity_digest(checkpoint)
        changed = [part for part in _INTEGRITY_PARTS if part in stored_parts and stored_parts[part] != now[part]]
        if changed:
            what = {
                "calibration": "thresholds (calibration)", "weights": "weights", "scoring": "scoring entries",
                "region": "region rule (calibration)",
            }  # fmt: skip
            raise CheckpointError(
                f"the {' and '.join(what[part] for part in changed)} in {path} were changed after the file was written "
                f"(they no longer match its digest); restore the original file, retrain, or set thresholds with "
                f"`glass calibrate` / --threshold"
            )


# ---------------------------------------------------------------------------------------------------
# The stored dict, for callers that compare or edit the plain form (tests, benchmarks)


def read_checkpoint(run: str | os.PathLike) -> dict[str, Any]:
    """`Checkpoint.load`, as the plain dict that is stored."""
    return Checkpoint.load(run).to_dict()



"""Inference engines: one interface, several runtimes.

An `Engine` takes prepared uint8 images B×H×W×3 (the network input, ``config.input_shape``: a square
S×S or a rectangle; or whole frames when ``in_graph``: the exported graph
resizes and crops itself) and returns numpy (raw image scores B, normalised scores B, anomaly maps). The
torch engine runs the `InferenceGraph` defined here; the ONNX and OpenVINO engines run its export
(`export.py`, `openvino_export.py`), so all agree. `create_engine` picks one by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from glass_ad.inference.exported import INPUT_NAME, ONNX_NAME, OUTPUT_NAMES, XML_NAME, read_metadata
from glass_ad.inference.head import ScoringHead
from glass_ad.inference.runtime import OpenVinoSession, session
from glass_ad.model.checkpoint import Checkpoint, as_checkpoint, checkpoint_path
from glass_ad.model.decision import Normalization
from glass_ad.model.chunking import ChunkChoice, choose_batch_chunk
from glass_ad.model.glass_model import GlassModel, resolve_device

ENGINES = ("torch", "onnx", "openvino")


class Engine(Protocol):
    name: str
    precision: str  # weights/arithmetic of the model run: "fp32" (torch, ONNX), or the IR's "fp32" / "fp16" / "int8"
    in_graph: bool  # True: takes whole frames (preprocessing inside the graph); False: H×W network inputs

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


# ---------------------------------------------------------------------------------------------------
# The inference graph: what the torch engine runs, and what `export.py` writes as ONNX


class InferenceGraph(nn.Module):
    """uint8 images B×H×W×3 → (raw image score B, normalised score B, anomaly map B×H×W), (H, W) the
    model's input shape (square or rectangular: the network is convolutional).

    The torch engine of `Detector` runs this module and `export.export_onnx` exports it, so the two agree.
    After the backbone it runs `head.ScoringHead` (the model's aggregation and discriminator in fewer
    operations; the model's own forward for layers the head does not convert). ``patch_output``: return
    the B×h×w patch scores instead of the map (the exported frame graph builds the map on the frame from
    them, `frame_graph.wrap_frames`). ``bank_product``: the hybrid's fine distance in the form the int8
    export quantises (`head.BankProduct`).
    """

    def __init__(
        self,
        model: GlassModel,
        normalization: Normalization | dict[str, float],
        patch_output: bool = False,
        bank_product: bool = False,
    ):
        super().__init__()
        self.model = model
        # Plain floats: they become constants of the graph, like the thresholds they come from.
        if not isinstance(normalization, Normalization):
            normalization = Normalization.from_dict(normalization)
        self.normalization = Normalization(float(normalization.centre), float(normalization.scale))
        self.head = ScoringHead(model, bank_product) if ScoringHead.supports(model) else None
        self.patch_output = bool(patch_output)

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Float images B×3×H×W in [0, 1] → patch scores B×h×w (backbone chunks as the model sets them)."""
        chunk = self.model.batch_chunk
        if chunk and len(x) > chunk:
            return torch.cat([self.patch_scores_of(part) for part in x.split(chunk)])
        return self.patch_scores_of(x)

    def patch_scores_of(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.model.patch_scores(self.model.features_of(x))
        return self.head(self.model.backbone(x))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        patches = self.patch_scores(x)
        scores = patches.flatten(1).amax(dim=1)
        maps = patches if self.patch_output else self.model.score_map(patches)
        return scores, self.normalization(scores), maps


def inference_graph(
    checkpoint: Checkpoint | dict[str, Any],
    device: str | torch.device = "cpu",
    patch_output: bool = False,
    bank_product: bool = False,
) -> InferenceGraph:
    """The evaluation-mode `InferenceGraph` of a checkpoint (fused model, its image normalisation)."""
    checkpoint = as_checkpoint(checkpoint)
    model = checkpoint.build_model(device, fuse=True)
    return InferenceGraph(model, checkpoint.calibration.image_normalization, patch_output, bank_product).eval()


# ---------------------------------------------------------------------------------------------------
# Engines: uint8 B×H×W×3 numpy → (scores B, normalised B, maps B×H×W) numpy


class TorchEngine:
    """The `InferenceGraph` in PyTorch."""

    name = "torch"
    precision = "fp32"  # the InferenceGraph computes in float32 on every device
    in_graph = False  # takes H×W network inputs; Detector resizes and crops

    def __init__(self, checkpoint: Checkpoint, device: torch.device):
        self.device = device
        self.graph = inference_graph(checkpoint, device)
        self.chunk: ChunkChoice | None = None  # measured on the first batch of several images

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.chunk is None and len(images) > 1:
            self.chunk = choose_batch_chunk(self.graph.model, self.device, len(images), measure=True)
        if not images.flags.writeable:  # torch.from_numpy warns on read-only arrays (it cannot honour the flag)
            images = images.copy()
        with torch.inference_mode():
            out = self.graph(torch.from_numpy(images).to(self.device))
        return tuple(t.float().cpu().numpy() for t in out)  # type: ignore[return-value]


class OnnxEngine:
    """The exported graph in ONNX Runtime, or its OpenVINO IR (``openvino=True``)."""

    name = "onnx"
    precision = "fp32"  # `glass export` writes fp32 ONNX; an OpenVINO IR records its own (below)

    def __init__(
        self,
        onnx_path: Path,
        checkpoint: Checkpoint,
        threads: int | None = None,
        providers: str | Sequence[str] | None = "cpu",
        openvino: bool = False,
    ):
        kind = "openvino" if openvino else "onnx"
        if not onnx_path.is_file():
            raise FileNotFoundError(
                f"no {'OpenVINO' if openvino else 'ONNX'} model at {onnx_path} "
                f"(create it with `glass export RUN_DIR --format {kind} --out {onnx_path}`)"
            )
        if openvino:  # OpenVINO IR, compiled with the f32 precision hint (see openvino_export)
            self.name = "openvino"
            device = providers if isinstance(providers, str) and providers.upper() in ("CPU", "GPU", "NPU", "AUTO") else "CPU"
            self.session = OpenVinoSession(onnx_path, device.upper(), threads)
            meta = self.session.metadata()
            self.precision = meta.get("precision") or "fp32"  # fp32 / fp16 / int8, written by export_openvino
        else:
            meta = read_metadata(onnx_path)
        check_metadata(meta, checkpoint, onnx_path)
        # In-graph preprocessing (the default of `glass export`): frames of any size in, maps on the frame out.
        self.in_graph = meta.get("preprocessing") == "in-graph"
        self.path = onnx_path
        if not openvino:
            self.session = session(onnx_path, providers, threads)
        self.input_name, self.output_names = INPUT_NAME, list(OUTPUT_NAMES)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.session.run(self.output_names, {self.input_name: images})
        return tuple(np.asarray(o, dtype=np.float32) for o in out)  # type: ignore[return-value]


def check_metadata(meta: dict[str, str], checkpoint: Checkpoint, path: Path) -> None:
    """The ONNX file must come from this checkpoint's input shape and normalisation (else: re-export).

    Files exported before rectangular inputs carry only ``image_size``: they describe a square."""
    config = checkpoint.config
    normalization = checkpoint.calibration.image_normalization
    problems = []
    if not meta:
        problems.append("it has no glass_ad metadata (not written by `glass export`)")
    else:
        size = int(meta.get("image_size", -1))
        shape = (int(meta["image_height"]), int(meta["image_width"])) if meta.get("image_height") and meta.get("image_width") else (size, size)
        want_shape = tuple(config.input_shape)
        if shape != want_shape:
            problems.append(
                f"image size {meta.get('image_size')} ≠ {config.image_size}"
                if want_shape[0] == want_shape[1] and shape[0] == shape[1]
                else f"input shape {shape[0]}x{shape[1]} ≠ {want_shape[0]}x{want_shape[1]}"
            )
        for key, want in (
            ("normalization_center", normalization.centre),
            ("normalization_scale", normalization.scale),
        ):
            have = float(meta.get(key, "nan"))
            if not abs(have - want) <= 1e-9 * max(1.0, abs(want)):
                problems.append(f"{key} {have} ≠ {want}")
    if problems:
        raise ValueError(f"ONNX model {path} does not match the checkpoint ({'; '.join(problems)}); re-export it")


def create_engine(
    name: str,
    run: str | os.PathLike,
    checkpoint: Checkpoint,
    *,
    device: str = "auto",
    model_path: str | os.PathLike | None = None,
    threads: int | None = None,
    providers: str | Sequence[str] | None = "cpu",
) -> Engine:
    """The engine `name` for a checkpoint; ONNX/OpenVINO read ``model_path`` (default: the file `glass export`
    writes beside the checkpoint). ``threads``: intra-op threads of an ONNX Runtime / OpenVINO session (the
    torch engine's threads are process-wide: the caller's choice)."""
    if name == "torch":
        return TorchEngine(checkpoint, resolve_device(device))
    if name == "onnx":
        path = Path(model_path) if model_path is not None else checkpoint_path(run).parent / ONNX_NAME
        return OnnxEngine(path, checkpoint, threads, providers)
    if name == "openvino":
        path = Path(model_path) if model_path is not None else checkpoint_path(run).parent / XML_NAME
        return OnnxEngine(path, checkpoint, threads, providers, openvino=True)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}")

"""ONNX export of the whole inference graph.

One ONNX model holds everything between raw pixels and the outputs:

    images (uint8, B×H×W×3, RGB) → float / 255 → backbone (ImageNet-style normalisation inside)
    → 3×3 aggregation → feature scale → adaptor → discriminator → bilinear upsample → Gaussian smoothing
    → image_score (B), normalized_score (B), anomaly_map (B×H×W)

(H, W) is the checkpoint's network input (``config.input_shape``: the ``image_size`` square, or a
rectangle); the batch axis is dynamic. By default the resize and crop are added to the graph
(`frame_graph.wrap_frames`, plain ONNX operators computing PyTorch's antialiased resize — library resizers
differ and would break the parity with training), which then takes frames of any size. Without it
(``preprocessing=False``), resizing and cropping images of any size to H×W stays in Python
(`glass_ad.data.datasets.Preprocessor`, used by `glass_ad.inference.predict.Detector`). The
graph is `engines.InferenceGraph`, the module `Detector`'s torch engine runs, so both engines compute the
same formula, including the normalised score (`checkpoint.Normalization`).

The model's metadata (``glass_ad.*`` properties, read with `exported.read_metadata`) records the input shape (``image_height``,
``image_width``; ``image_size`` is their shorter side, the square's side), the thresholds and the
normalisation it was exported with; `Detector` refuses an ONNX file that does not match its checkpoint.

Images deeper than 8 bits are converted to the graph's uint8 input by one fixed rule per model, recorded
as the ``glass_ad.bit_depth`` metadata (``B``; ``container`` when none was declared, i.e. ``B`` is the
file's own depth): ``uint8 = round(v · 255 / (2^B − 1))``, values above ``2^B − 1`` saturating at 255 —
the rule of `glass_ad.data.io.to_uint8`, never a per-image maximum.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glass_ad.inference.engines import InferenceGraph, inference_graph
from glass_ad.inference.exported import INPUT_NAME, META_PREFIX, ONNX_NAME, OUTPUT_NAMES
from glass_ad.inference.runtime import session
from glass_ad.model.checkpoint import Checkpoint, as_checkpoint, checkpoint_path
from glass_ad.safety import atomic_path, ensure_writable, refuse_input_overlap

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def _or_empty(value: Any) -> Any:
    return "" if value is None else value


def export_metadata(checkpoint: Checkpoint | dict[str, Any], in_graph: bool = True) -> dict[str, str]:
    """The ``glass_ad.*`` metadata an exported model carries (strings, as ONNX requires).

    Everything a program needs to use the model without the checkpoint: the network input's shape
    (``image_height`` × ``image_width``; ``image_size`` stays, the shorter side), resize and fit, both
    thresholds (false-alarm and, after `glass calibrate`, F1), the image and pixel normalisations, the
    input bit depth and the package versions.
    """
    from glass_ad import __version__

    checkpoint = as_checkpoint(checkpoint)
    config, calibration = checkpoint.config, checkpoint.calibration
    provenance = checkpoint.provenance or {}
    f1 = calibration.f1
    values = {
        "format": "glass-ad-onnx/1",
        "image_size": config.image_size,
        "image_height": config.input_shape[0],
        "image_width": config.input_shape[1],
        "resize": config.resize if config.resize is not None else "",
        "fit": checkpoint.fit,
        "preprocessing": "in-graph" if in_graph else "external",
        "backbone": checkpoint.backbone.name,
        "image_threshold": calibration.image_threshold,
        "pixel_threshold": calibration.pixel_threshold,
        "decision": calibration.decision_line(),
        "false_alarm_estimate": _or_empty(_estimate(calibration, "estimate")),
        "false_alarm_low": _or_empty(_estimate(calibration, "low")),
        "false_alarm_high": _or_empty(_estimate(calibration, "high")),
        "region_height": _or_empty(calibration.region_height),
        "f1_image_threshold": _or_empty(f1.image_threshold if f1 is not None else None),
        "f1_pixel_threshold": _or_empty(f1.pixel_threshold if f1 is not None else None),
        "normalization_center": calibration.image_normalization.centre,
        "normalization_scale": calibration.image_normalization.scale,
        "pixel_normalization_center": calibration.pixel_normalization.centre,
        "pixel_normalization_scale": calibration.pixel_normalization.scale,
        "normalized_score": "1 / (1 + exp(-(score - normalization_center) / normalization_scale))",
        "input": (
            "uint8 BxHxWx3 RGB frames of any size (one size per batch); resize and crop are in the graph"
            if in_graph
            else "uint8 BxHxWx3 RGB, already resized/cropped to image_height x image_width"
        ),
        "outputs": "image_score (B), normalized_score (B), anomaly_map (" + ("BxHxW, the input frame" if in_graph else "B x image_height x image_width") + ")",
        "bit_depth": checkpoint.bit_depth or "container",
        "input_scaling": "deeper than 8 bits: uint8 = round(v * 255 / (2^bit_depth - 1)), saturating at 255",
        "package_version": checkpoint.package_version or "",
        "export_package_version": __version__,
        "data_fingerprint": provenance.get("data_fingerprint") or "",
        "git_describe": provenance.get("git_describe") or "",
    }
    return {
        META_PREFIX + key: repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)
        for key, value in values.items()
    }


def _estimate(calibration, name: str) -> float | None:
    """A field of the false-alarm estimate (operating_point.py); None without one."""
    estimate = calibration.false_alarm_estimate()
    return None if estimate is None else getattr(estimate, name)


@dataclass
class ExportResult:
    path: Path
    exporter: str  # "torchscript" (dynamo=False) or "dynamo"
    opset: int
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # ONNX Runtime vs PyTorch, random batch


def _export_torchscript(graph: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # Tracer and legacy-exporter notices: the graph has no data-dependent control flow.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _export_dynamo(graph: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch},),
            # The dynamo exporter builds opset 18 graphs; converting them down fails for Pad.
            opset_version=max(opset, 18),
            dynamo=True,
            verbose=False,
        )
        program.save(str(path))


def onnx_session(onnx_path: str | os.PathLike, threads: int | None = None, providers: Any = "cpu"):
    """An ONNX Runtime session (CPU provider by default; see `runtime.resolve_providers`)."""
    return session(onnx_path, providers, threads)


def compare(graph: InferenceGraph, onnx_path: str | os.PathLike, images: np.ndarray) -> dict[str, float]:
    """Max |ONNX Runtime − PyTorch| per output on uint8 network inputs B×H×W×3."""
    session = onnx_session(onnx_path)
    onnx_out = session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images, dtype=np.uint8)})
    with torch.inference_mode():
        torch_out = graph(torch.from_numpy(np.ascontiguousarray(images)))
    return {
        name: float(np.abs(a.astype(np.float64) - b.numpy().astype(np.float64)).max())
        for name, a, b in zip(OUTPUT_NAMES, onnx_out, torch_out)
    }


def compare_frames(
    checkpoint: Checkpoint | dict[str, Any], graph: InferenceGraph, onnx_path: str | os.PathLike, frames: np.ndarray
) -> dict[str, float]:
    """Max |ONNX Runtime − PyTorch| per output for a model with the preprocessing in the graph, on uint8
    frames B×H×W×3: PyTorch runs `Preprocessor` (resize + crop, rounding), the graph and `map_to_original`."""
    preprocessor = as_checkpoint(checkpoint).preprocessor()
    prepared = np.stack([
        (preprocessor.image(frame) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy() for frame in frames
    ])  # fmt: skip
    with torch.inference_mode():
        scores, normalized, maps = (t.numpy() for t in graph(torch.from_numpy(prepared)))
    full = np.stack([preprocessor.map_to_original(m, frames.shape[1:3]) for m in maps])
    onnx_out = onnx_session(onnx_path).run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(frames, dtype=np.uint8)})
    return {
        name: float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
        for name, a, b in zip(OUTPUT_NAMES, onnx_out, (scores, normalized, full))
    }


def check_verified(max_abs_diff: dict[str, float], path: str | os.PathLike, done: str = "was not written") -> None:
    """A verification whose outputs are not finite (NaN or inf: damaged weights) fails (ValueError, one line)."""
    bad = [name for name, value in max_abs_diff.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(
            f"verification failed: the model's outputs are not finite ({', '.join(bad)}: NaN or inf) — its weights are "
            f"damaged; {path} {done} (retrain, or restore model.pt)"
        )


def export_onnx(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    exporter: str = "auto",
    preprocessing: bool = True,
    bank_product: bool = False,
) -> ExportResult:
    """Export the model of `run` (run directory or checkpoint) to ONNX; default ``RUN_DIR/model.onnx``.

    ``exporter``: ``torchscript`` (``dynamo=False``, robust for this graph), ``dynamo``, or ``auto`` (the
    first, then the second if it fails). With ``preprocessing`` (default) the graph takes frames of any
    size and returns the map on the frame (`frame_graph.wrap_frames`); without, it takes H×W network inputs
    (``config.input_shape``). The file is checked with ``onnx.checker``; with ``verify`` a random batch of 2
    is run through ONNX Runtime and PyTorch (frames of another size than H×W when the preprocessing is in
    the graph) and the
    differences are returned. ``bank_product``: the hybrid's fine distance in the form the int8 OpenVINO
    export quantises (`head.BankProduct`; the same numbers, one more pass over its product in float32).
    """
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be >= 17 (got {opset})")
    path = Path(out) if out is not None else checkpoint_path(run).parent / ONNX_NAME
    if path.is_dir():
        raise ValueError(f"export target '{path}' is a folder; give a file name such as {path / ONNX_NAME}")
    refuse_input_overlap(path, [checkpoint_path(run)], what="export target")
    checkpoint = Checkpoint.load(run)
    height, width = checkpoint.config.input_shape
    graph = inference_graph(checkpoint, "cpu", bank_product=bank_product)
    weights = sum(t.numel() * t.element_size() for t in graph.state_dict().values())
    ensure_writable(path.parent, need_bytes=2 * weights, what="export folder")
    example = torch.randint(0, 256, (2, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    # Written to a unique file next to the target and renamed at the end (safety.atomic_path): a failed
    # export never leaves a half-written file, and two exports at once never share a temporary name.
    with atomic_path(path) as tmp:
        chosen = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
        used, errors = None, []
        # With the preprocessing in the graph, the network's output is its patch-score grid and the map is
        # built on the frame in one step (`frame_graph.wrap_frames` with the score-map matrices).
        graph.patch_output = preprocessing
        for name in chosen:
            try:
                (_export_torchscript if name == "torchscript" else _export_dynamo)(graph, example, tmp, opset)
                used = name
                break
            except Exception as error:  # one exporter failing is reason to try the other, not to stop
                errors.append(f"{name}: {type(error).__name__}: {error}")
                log.warning("ONNX export with the %s exporter failed: %s", name, error)
        graph.patch_output = False
        if used is None:
            raise RuntimeError("ONNX export failed: " + " | ".join(errors))
        model = onnx.load(str(tmp))
        if preprocessing:
            from glass_ad.inference.frame_graph import wrap_frames

            score_map = graph.model.score_map
            matrices = (score_map.matrix.cpu().numpy(), score_map.column_matrix.cpu().numpy())
            model = wrap_frames(model, checkpoint.image_size, checkpoint.config.resize, checkpoint.fit, (height, width), matrices)
        for key, value in export_metadata(checkpoint, in_graph=preprocessing).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp))
        written_opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=opset)
        result = ExportResult(path, used, int(written_opset))
        if verify:  # before the rename: a model that fails it is not written
            rng = np.random.default_rng(0)
            if preprocessing:
                frames = rng.integers(0, 256, (2, height + 13, 2 * width + 5, 3), dtype=np.uint8)
                result.max_abs_diff = compare_frames(checkpoint, graph, tmp, frames)
            else:
                result.max_abs_diff = compare(graph, tmp, rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8))
            check_verified(result.max_abs_diff, path)
    return result


# ---------------------------------------------------------------------------------------------------
# Throughput (random inputs: these numbers measure compute, not accuracy)

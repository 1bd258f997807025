"""OpenVINO export: the ONNX graph (preprocessing included) converted to OpenVINO IR, in fp32, fp16
(weights stored in half precision) or int8 (post-training quantisation with NNCF, calibrated on normal
training images).

    glass export RUN --format openvino [--precision fp32|fp16|int8] [--calibration DIR] [--out model.xml]

The IR takes the same input as the ONNX model (uint8 frames B×H×W×3 of any size) and has the same outputs.
The ``glass_ad.*`` metadata is stored in the IR's runtime info (section ``glass_ad``), with
``inference_precision_hint = f32``: OpenVINO's CPU plugin otherwise runs float models in bf16 on
processors that have it, which moves scores by ~1e-2 — enough to flip decisions near the threshold.
`compile` (and `runtime.Runtime` for ``.xml`` files) always passes ``INFERENCE_PRECISION_HINT=f32``.

int8 quantises the network's convolutions only: the preprocessing (``glass_frame/*`` nodes) and the
MatMuls of the adaptor/discriminator head stay in float (the head is small, and quantising it breaks
OpenVINO's CPU post-op fusion). Needs ``pip install "glass-ad[openvino]"`` (``openvino``, ``nncf``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")
XML_NAME = "model.xml"
PRECISION_HINT = "f32"


def _openvino():
    try:
        import openvino
    except ImportError as error:
        raise RuntimeError(f'OpenVINO export needs the openvino package: pip install "glass-ad[openvino]" ({error})') from None
    return openvino


@dataclass
class OpenVinoExport:
    path: Path  # the .xml file (weights in the .bin beside it)
    precision: str
    calibration_images: int = 0
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # vs ONNX Runtime fp32, on calibration/random frames


def compile(path: str | os.PathLike, device: str = "CPU", threads: int | None = None):  # noqa: A001 (OpenVINO's word)
    """A compiled OpenVINO model with the fp32 precision hint (see the module docstring)."""
    ov = _openvino()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINT}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), device, config)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``glass_ad`` runtime info of an IR file (prefix-free keys, string values)."""
    ov = _openvino()
    model = ov.Core().read_model(str(path))
    info = model.get_rt_info()
    if "glass_ad" not in info:
        return {}
    section = info["glass_ad"]
    keys = section.keys() if isinstance(section, dict) else section.astype(dict).keys()
    return {key: model.get_rt_info(["glass_ad", key]).astype(str) for key in keys}


def calibration_frames(folder: str | os.PathLike, limit: int = 64, bit_depth: int | None = None) -> list[np.ndarray]:
    """Up to ``limit`` normal images of ``folder`` (an MVTec-layout data set: its ``train/good``; or a
    plain folder), spread over the sorted list, as uint8 H×W×3 frames."""
    from glass_ad.data.io import list_images, read_image

    root = Path(folder)
    good = root / "train" / "good"
    images = list_images(good if good.is_dir() else root, recursive=True)
    if not images:
        raise ValueError(f"no calibration images in '{folder}' (give the training data set or a folder of normal images)")
    step = max(1, len(images) // max(1, limit))
    return [read_image(path, bit_depth=bit_depth) for path in images[::step][:limit]]


def export_openvino(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    precision: str = "fp32",
    calibration: str | os.PathLike | None = None,
    calibration_limit: int = 64,
    fast: bool = False,
    verify: bool = True,
) -> OpenVinoExport:
    """Export the model of ``run`` as OpenVINO IR (default ``RUN_DIR/model.xml``; ``model_int8.xml`` etc.
    for the other precisions). int8 needs ``calibration``: the training data set or a folder of normal
    images (never test images). ``fast`` skips NNCF's bias correction (for tests)."""
    from glass_ad.inference.export import INPUT_NAME, OUTPUT_NAMES, check_verified, export_metadata, export_onnx
    from glass_ad.inference.runtime import session
    from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
    from glass_ad.safety import refuse_input_overlap

    ov = _openvino()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs --calibration DIR: the training data set or a folder of normal images")
    default_name = XML_NAME if precision == "fp32" else f"model_{precision}.xml"
    path = Path(out) if out is not None else checkpoint_path(run).parent / default_name
    if path.suffix != ".xml":
        raise ValueError(f"OpenVINO IR is an .xml file (weights in the .bin beside it), got '{path}'")
    refuse_input_overlap(path, [checkpoint_path(run)], what="export target")
    checkpoint = Checkpoint.load(run)
    frames = calibration_frames(calibration, calibration_limit, checkpoint.bit_depth) if calibration else []

    with tempfile.TemporaryDirectory(prefix="glass-ov-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        export_onnx(run, onnx_path, verify=False)
        model = ov.convert_model(str(onnx_path))
        if precision == "int8":
            model = _quantize(model, frames, fast)
        for key, value in export_metadata(checkpoint).items():
            model.set_rt_info(value, ["glass_ad", key.split(".", 1)[1]])
        model.set_rt_info(precision, ["glass_ad", "precision"])
        model.set_rt_info(PRECISION_HINT, ["glass_ad", "inference_precision_hint"])
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written into a unique folder beside the target, then renamed: never a half-written pair.
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.stem}."))
        try:
            staged = staging / path.name
            # fp32 keeps fp32 weights (save_model would halve them by default); fp16 stores them in half.
            ov.save_model(model, str(staged), compress_to_fp16=precision == "fp16")
            os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(staged, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        result = OpenVinoExport(path, precision, len(frames))
        if verify:
            height, width = checkpoint.config.input_shape
            sample = frames[:4] if frames else None
            batch = (
                np.stack([f for f in sample if f.shape == sample[0].shape])
                if sample
                else np.random.default_rng(0).integers(0, 256, (2, height + 13, 2 * width + 5, 3), dtype=np.uint8)
            )
            reference = session(onnx_path).run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
            compiled = compile(path)
            got = compiled(batch)
            result.max_abs_diff = {
                name: float(np.abs(np.asarray(got[compiled.output(name)]) - ref).max()) for name, ref in zip(OUTPUT_NAMES, reference)
            }
            if not all(np.isfinite(list(result.max_abs_diff.values()))):  # NaN weights: never leave such a model
                path.unlink(missing_ok=True)
                path.with_suffix(".bin").unlink(missing_ok=True)
                check_verified(result.max_abs_diff, path, done="was removed")
    return result


def _quantize(model, frames: Sequence[np.ndarray], fast: bool):
    try:
        import nncf
    except ImportError as error:
        raise RuntimeError(f'int8 export needs NNCF: pip install "glass-ad[openvino]" ({error})') from None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    dataset = nncf.Dataset(list(frames), lambda frame: frame[None])
    return nncf.quantize(
        model,
        dataset,
        subset_size=len(frames),
        ignored_scope=nncf.IgnoredScope(patterns=["glass_frame/.*"], types=["MatMul"], validate=False),
        advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=fast),
    )

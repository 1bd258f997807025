"""OpenVINO export: the ONNX graph (preprocessing included) converted to OpenVINO IR, in fp32, fp16
(weights stored in half precision) or int8 (post-training quantisation with NNCF, calibrated on normal
training images).

    glass export RUN --format openvino [--precision fp32|fp16|int8] [--calibration DIR] [--out model.xml]

The IR takes the same input as the ONNX model (uint8 frames B×H×W×3 of any size) and has the same outputs.
The ``glass_ad.*`` metadata is stored in the IR's runtime info (section ``glass_ad``), with
``inference_precision_hint = f32``: OpenVINO's CPU plugin otherwise runs float models in bf16 on
processors that have it, which moves scores by ~1e-2 — enough to flip decisions near the threshold.
`compile` (and `runtime.Runtime` for ``.xml`` files) always passes ``INFERENCE_PRECISION_HINT=f32``.

int8 quantises the discriminator's first layer, for the paper's score the backbone's pointwise
convolutions after the stem and the head's level pooling, and for the hybrid score the memory bank's
products q·b (fine and coarse) where int8 is timed faster on the export's CPU (`time_bank_product`); the
preprocessing (``glass_frame/*`` nodes), the stem, the depthwise convolutions, the hybrid's backbone and
level pooling, the head's last layer, every other MatMul and the head's other non-convolution nodes (the
bank's norms, sums and minima) stay in float32 (`ignored_patterns`, `IGNORED_TYPES`: where the error came
from when measured). It is calibrated on normal images of ``--calibration`` plus LAS anomalies made from a quarter of
them, and **gated on decisions**: other normal images of the folder and LAS anomalies made from them are
scored by the int8 IR and the fp32 ONNX model; when more than 1 % of their decisions change, an image
score moves by more than half the model's score scale (`MAX_SCORE_ERROR`) or the scores move by more than
0.08 of it on average (`MAX_MEAN_SCORE_ERROR`), the export is refused in one line and nothing is written
(`DecisionCheck`). A passing export says how much faster than float32 it runs on this CPU
(`measure_speedup`). Needs ``pip install "glass-ad[openvino]"`` (``openvino``, ``nncf``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from glass_ad.inference.export import check_verified, export_metadata, export_onnx
from glass_ad.inference.exported import INPUT_NAME, IR_SECTION, OUTPUT_NAMES, PRECISION_HINT, XML_NAME, read_ir_metadata
from glass_ad.inference.runtime import session
from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
from glass_ad.model.glass_model import FEATURE_STRIDE
from glass_ad.safety import refuse_input_overlap

PRECISIONS = ("fp32", "fp16", "int8")
# Kept in float32 by the int8 export: the preprocessing (exact integer geometry and rounding, and the map
# on the frame), the stem convolution (the pixels), the depthwise convolutions, the scoring head's last
# layer (hidden → score), every MatMul but one (below), and every head node that is not a convolution (the
# hybrid score's distances and standardisation). Measured on MTD (docs/deploy.md, "int8"): quantising the
# depthwise convolutions or the stem too changed 7-9 of 578 test decisions against fp32, this choice 3.
# The squared distance ‖q‖² − 2 q·b + ‖b‖² is a small difference of large terms: NNCF quantises the Add,
# Multiply and ReduceSum nodes that form it unless told not to, which moved the hybrid model's image
# scores by up to 11 (58 of 192 held-out decisions changed); with them in float32, 0 changed.
IGNORED_PATTERNS = ["glass_frame/.*", ".*/head/rest/.*", ".*stem.*"]
IGNORED_TYPES = ["GroupConvolution"]
# What of the head is quantised: the discriminator's first layer (most of the head's arithmetic), the level
# pooling (not the hybrid's, below), and the hybrid's products q·b (`head.BankProduct`: the patch vectors',
# most of the bank's arithmetic, and the coarse part's windows'), whose terms are not subtracted in int8:
# the norms, the sum and the minimum stay float32.
# The product pays only where the CPU multiplies int8 fast (VNNI/AMX: a third of its float32 time; AVX2
# alone: slower than float32), so `bank_product="auto"` times it first.
QUANTISED_PRODUCTS = ("/head/bank_product/MatMul", "/head/window_product/MatMul")  # fine and coarse
QUANTISED_HEAD = ["first/", "pool", *(f"{name[len('/head/'):]}$" for name in QUANTISED_PRODUCTS)]
# The hybrid score keeps its backbone and its level pooling in float32 (measured on the default MTD model,
# benchmarks/int8_scope.py, docs/deploy.md): its features enter the bank's distances directly, and with
# the backbone quantised the held-out image scores moved 4.4× as much (mean 0.063 against 0.014) for a
# speed-up of 1.78× instead of 1.69× over float32 (VNNI/AMX), the bank's product being most of its time;
# with the pooling quantised, its input range (set on normal images) clipped what anomalies add, and the
# held-out anomalies' scores fell by 0.07 on average. The paper's score, whose time is the backbone and
# the head's layers, quantises both (pooling: 1.68× instead of 1.38×, the same held-out error).
HYBRID_IGNORED_PATTERNS = [".*/backbone/.*", ".*/head/pool.*"]


def ignored_patterns(hybrid: bool = False) -> list[str]:
    """NNCF's ignored-scope patterns: `IGNORED_PATTERNS` (and `HYBRID_IGNORED_PATTERNS` for a model with
    a memory bank) and every head node but `QUANTISED_HEAD`'s."""
    head = f".*/head/(?!{'|'.join(QUANTISED_HEAD)}).*"
    return [*IGNORED_PATTERNS, *(HYBRID_IGNORED_PATTERNS if hybrid else []), head]


BANK_PRODUCT_CHOICES = ("auto", "int8", "fp32")
# `auto` quantises the bank's product when int8 takes at most this fraction of its float32 time.
BANK_PRODUCT_GAIN = 0.8
# Below this measured speed-up over the same graph in float32 the export says that int8 does not pay on
# this CPU (measured: 1.03-1.08× for the default MTD model with AVX2 alone, 1.6× with VNNI/AMX).
INT8_WORTH = 1.2
# The largest image-score change the int8 check allows, in units of the model's score scale (the
# normalisation's `scale`: (threshold − median held-out normal score) / ln 9): scores of pure GLASS (a
# sigmoid) and of the hybrid (standardised, unbounded) are then held to the same bar; the normalised score
# (0.5 at the threshold) moves by at most an eighth of this there.
MAX_SCORE_ERROR = 0.5
# The largest mean |image-score change| the check allows, in the same units. The check's own images rarely
# sit near the threshold (none of its 192 decisions changed in any scope measured), so the mean change
# stands in for the images that do: on MTD's test set (many real defects near the threshold) the default
# model's int8 with its backbone quantised changed 4-6 of 578 decisions at a held-out mean of 0.045 of the
# scale (VNNI/AMX) and 12 at 0.117 (the same export on AVX2 alone, whose int8 kernels differ) — the bar
# sits between them; the shipped scope: 0 changed at 0.010 (docs/deploy.md).
MAX_MEAN_SCORE_ERROR = 0.08


def _openvino():
    try:
        import openvino
    except ImportError as error:
        raise RuntimeError(f'OpenVINO export needs the openvino package: pip install "glass-ad[openvino]" ({error})') from None
    return openvino


@dataclass
class DecisionCheck:
    """int8 against fp32 (ONNX Runtime) on held-out images: normal images the calibration did not see and
    synthetic (LAS) anomalies made from them. The export is refused unless at most ``allowed`` of the
    decisions change, the largest score difference stays under ``max_score_error`` and the mean one under
    ``max_mean_error`` (both in units of ``score_scale``)."""

    normals: int
    anomalies: int
    changed: int  # images whose decision (score >= the false-alarm threshold) differs from fp32
    max_abs_diff: float  # image score
    mean_abs_diff: float
    allowed: float  # fraction of the held-out images
    max_score_error: float  # in units of `score_scale`
    score_scale: float = 1.0  # the model's normalisation scale (MAX_SCORE_ERROR)
    shift_normals: float = 0.0  # mean of (int8 − fp32) image score over the normal images: a shift, not noise
    shift_anomalies: float = 0.0  # the same over the synthetic anomalies
    max_mean_error: float = float("inf")  # in units of `score_scale`

    @property
    def images(self) -> int:
        return self.normals + self.anomalies

    @property
    def passed(self) -> bool:
        within = self.max_abs_diff <= self.max_score_error * self.score_scale
        on_average = self.mean_abs_diff <= self.max_mean_error * self.score_scale
        return self.changed <= self.allowed * self.images and within and on_average

    def line(self) -> str:
        return (
            f"int8 vs fp32 on {self.images} held-out images ({self.normals} normal, {self.anomalies} synthetic anomalies): "
            f"{self.changed} decisions changed (allowed {self.allowed:.0%}), image score |difference| max {self.max_abs_diff:.3f} "
            f"= {self.max_abs_diff / self.score_scale:.2f} of the score scale {self.score_scale:.3g} (allowed "
            f"{self.max_score_error:g}), mean {self.mean_abs_diff:.4f} = {self.mean_abs_diff / self.score_scale:.3f} "
            f"of it (allowed {self.max_mean_error:g}); mean shift {self.shift_normals:+.4f} on the normal "
            f"images, {self.shift_anomalies:+.4f} on the anomalies"
        )


@dataclass
class BankProductTiming:
    """Milliseconds per image of the hybrid's q·b on this CPU (`time_bank_product`), float32 and int8."""

    fp32_ms: float
    int8_ms: float

    @property
    def int8_pays(self) -> bool:
        return self.int8_ms <= BANK_PRODUCT_GAIN * self.fp32_ms

    def line(self) -> str:
        return f"{self.int8_ms:.1f} ms per image in int8 against {self.fp32_ms:.1f} ms in float32 on this CPU"


@dataclass
class OpenVinoExport:
    path: Path  # the .xml file (weights in the .bin beside it)
    precision: str
    calibration_images: int = 0  # normal images; int8 adds synthetic anomalies made from a quarter of them
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # vs ONNX Runtime fp32, on calibration/random frames
    synthetic_images: int = 0
    check: DecisionCheck | None = None  # int8: the held-out decision check the export passed
    bank_product: str | None = None  # int8: how the hybrid's q·b is computed ("int8" or "fp32"); None: no bank
    bank_timing: BankProductTiming | None = None  # what `auto` measured
    speedup: float | None = None  # int8: its speed over the same graph in float32, measured on this CPU

    def speed_line(self) -> str:
        if self.speedup is None:
            return ""
        line = (
            f"int8 runs at {self.speedup:.2f}× the speed of the same graph in float32 on this CPU "
            "(held-out frames, one per call)"
        )
        if self.speedup < INT8_WORTH:
            line += ": int8 does not pay here, deploy the fp32 model on such CPUs"
        return line

    def bank_line(self) -> str:
        if self.bank_product is None:
            return ""
        how = "quantised" if self.bank_product == "int8" else "kept in float32"
        measured = f" (measured {self.bank_timing.line()})" if self.bank_timing is not None else " (as asked)"
        return f"the memory bank's product q·b {how}{measured}"


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
    return read_ir_metadata(path, _openvino().Core().read_model(str(path)))


def _normal_images(folder: str | os.PathLike) -> list[Path]:
    from glass_ad.data.io import list_images

    root = Path(folder)
    good = root / "train" / "good"
    images = list_images(good if good.is_dir() else root, recursive=True)
    if not images:
        raise ValueError(f"no calibration images in '{folder}' (give the training data set or a folder of normal images)")
    return images


def _spread(items: Sequence, limit: int) -> list:
    step = max(1, len(items) // max(1, limit))
    return list(items[::step][:limit])


def calibration_frames(folder: str | os.PathLike, limit: int = 64, bit_depth: int | None = None) -> list[np.ndarray]:
    """Up to ``limit`` normal images of ``folder`` (an MVTec-layout data set: its ``train/good``; or a
    plain folder), spread over the sorted list, as uint8 H×W×3 frames."""
    from glass_ad.data.io import read_image

    return [read_image(path, bit_depth=bit_depth) for path in _spread(_normal_images(folder), limit)]


def split_normals(
    folder: str | os.PathLike, calibration: int, holdout: int, bit_depth: int | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Calibration and held-out normal frames of ``folder``: disjoint, each spread over the sorted list
    (held-out images are those the calibration did not take). A folder with fewer images than both limits
    is shared in their proportion, so that a held-out check always has images when one is asked for (54
    normals, 128 + 128 asked: 27 and 27)."""
    from glass_ad.data.io import read_image

    images = _normal_images(folder)
    if holdout and len(images) < calibration + holdout:
        calibration = max(1, min(len(images) - 1, round(len(images) * calibration / (calibration + holdout))))
    chosen = _spread(images, calibration)
    taken = set(chosen)
    rest = [path for path in images if path not in taken]
    held = _spread(rest, holdout) if rest else []
    return [read_image(p, bit_depth=bit_depth) for p in chosen], [read_image(p, bit_depth=bit_depth) for p in held]


def synthetic_anomalies(checkpoint, frames: Sequence[np.ndarray], seed: int) -> list[np.ndarray]:
    """LAS anomalies (the training's synthesis: textures under Perlin masks) made from normal frames, as
    uint8 network inputs H×W×3. Textures from the training's texture folder when it is there, else
    procedural ones."""
    import torch

    from glass_ad.synthesis.las import LocalAnomalySynthesizer
    from glass_ad.synthesis.textures import load_textures

    if not frames:
        return []
    config = checkpoint.config
    folder = config.textures if config.textures and Path(config.textures).is_dir() else None
    synthesizer = LocalAnomalySynthesizer.from_config(config, load_textures(folder, config.input_shape, max_images=64))
    preprocessor = checkpoint.preprocessor()
    images = torch.stack([preprocessor.image(frame) for frame in frames])
    made = synthesizer(images, None, np.random.default_rng(seed)).images
    return [(image * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy() for image in made]


def measure_speedup(fp32, int8, frames: Sequence[np.ndarray], rounds: int = 3) -> float:
    """Compiled int8 against compiled fp32 on ``frames`` (one per call, after one warm-up call each): the
    median over ``rounds`` interleaved rounds of the fp32 round's time over the int8 round's."""
    import time

    def seconds(compiled) -> float:
        start = time.perf_counter()
        for frame in frames:
            compiled(np.ascontiguousarray(frame[None]))
        return time.perf_counter() - start

    if not frames:
        return float("nan")
    for compiled in (fp32, int8):
        compiled(np.ascontiguousarray(frames[0][None]))
    return float(np.median([seconds(fp32) / seconds(int8) for _ in range(rounds)]))


def check_decisions(
    reference, compiled, threshold: float, normals: Sequence[np.ndarray], anomalies: Sequence[np.ndarray],
    allowed: float, max_score_error: float, score_scale: float = 1.0, max_mean_error: float = float("inf"),
) -> DecisionCheck:
    """Score every frame with the fp32 ONNX Runtime session ``reference`` and the compiled IR; compare."""
    ours, theirs = [], []
    for frame in [*normals, *anomalies]:
        batch = np.ascontiguousarray(frame[None], dtype=np.uint8)
        theirs.append(float(reference.run([OUTPUT_NAMES[0]], {INPUT_NAME: batch})[0][0]))
        ours.append(float(np.asarray(compiled(batch)[compiled.output(OUTPUT_NAMES[0])])[0]))
    a, b = np.array(ours), np.array(theirs)
    diff = np.abs(a - b) if len(a) else np.zeros(1)
    shift = a - b
    return DecisionCheck(
        normals=len(normals), anomalies=len(anomalies), changed=int(((a >= threshold) != (b >= threshold)).sum()),
        max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), allowed=allowed, max_score_error=max_score_error,
        score_scale=score_scale, max_mean_error=max_mean_error,
        shift_normals=float(shift[: len(normals)].mean()) if len(normals) else 0.0,
        shift_anomalies=float(shift[len(normals):].mean()) if len(anomalies) else 0.0,
    )  # fmt: skip


def export_openvino(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    precision: str = "fp32",
    calibration: str | os.PathLike | None = None,
    calibration_limit: int = 128,
    holdout_limit: int = 128,
    max_changed: float = 0.01,
    max_score_error: float = MAX_SCORE_ERROR,
    max_mean_error: float = MAX_MEAN_SCORE_ERROR,
    fast: bool = False,
    verify: bool = True,
    bank_product: str = "auto",
) -> OpenVinoExport:
    """Export the model of ``run`` as OpenVINO IR (default ``RUN_DIR/model.xml``; ``model_int8.xml`` etc.
    for the other precisions). int8 needs ``calibration``: the training data set or a folder of normal
    images (never test images). ``fast`` skips NNCF's bias correction (for tests).

    int8 quantises the convolutions outside `ignored_patterns()` / `IGNORED_TYPES` on ``calibration_limit``
    normal images plus LAS anomalies made from a quarter of them; then
    ``holdout_limit`` other normal images of the folder and LAS anomalies made from half of them are scored
    by the int8 IR and by the fp32 ONNX model (`check_decisions`): when more than ``max_changed`` of their
    decisions change, an image score moves by more than ``max_score_error`` times the model's score scale
    (`MAX_SCORE_ERROR`) or the scores by more than ``max_mean_error`` times it on average, the export is
    refused (ValueError, one line) and nothing is written.

    ``bank_product`` (int8 of a hybrid model): ``int8`` quantises the memory bank's product q·b, ``fp32``
    keeps it in float32, ``auto`` quantises it when int8 takes at most `BANK_PRODUCT_GAIN` of its float32
    time on this CPU (`time_bank_product`): export on the kind of CPU that runs the model."""
    ov = _openvino()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs --calibration DIR: the training data set or a folder of normal images")
    if bank_product not in BANK_PRODUCT_CHOICES:
        raise ValueError(f"bank product must be one of {', '.join(BANK_PRODUCT_CHOICES)}, got {bank_product!r}")
    default_name = XML_NAME if precision == "fp32" else f"model_{precision}.xml"
    path = Path(out) if out is not None else checkpoint_path(run).parent / default_name
    if path.suffix != ".xml":
        raise ValueError(f"OpenVINO IR is an .xml file (weights in the .bin beside it), got '{path}'")
    refuse_input_overlap(path, [checkpoint_path(run)], what="export target")
    checkpoint = Checkpoint.load(run)
    frames, held = (split_normals(calibration, calibration_limit, holdout_limit if precision == "int8" else 0, checkpoint.bit_depth)
                    if calibration else ([], []))  # fmt: skip
    if precision == "int8" and not held:
        raise ValueError(
            f"int8 needs at least 2 normal images in '{calibration}' (to calibrate on and to check the decisions "
            f"on), found {len(frames)}"
        )
    synthetic = synthetic_anomalies(checkpoint, frames[: len(frames) // 4], seed=1) if precision == "int8" else []
    hybrid = checkpoint.memory_bank is not None
    timing = None
    if precision == "int8" and hybrid and bank_product == "auto":
        timing = time_bank_product(*_bank_product_shape(checkpoint))
        bank_product = "int8" if timing.int8_pays else "fp32"

    with tempfile.TemporaryDirectory(prefix="glass-ov-") as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        quantised_product = precision == "int8" and hybrid and bank_product == "int8"
        export_onnx(run, onnx_path, verify=False, bank_product=quantised_product)
        model = ov.convert_model(str(onnx_path))
        if precision == "int8":
            model = _quantize(model, [*frames, *synthetic], fast, hybrid)
        for key, value in export_metadata(checkpoint).items():
            model.set_rt_info(value, [IR_SECTION, key.split(".", 1)[1]])
        model.set_rt_info(precision, [IR_SECTION, "precision"])
        if precision == "int8" and hybrid:
            model.set_rt_info(bank_product, [IR_SECTION, "bank_product"])
        model.set_rt_info(PRECISION_HINT, [IR_SECTION, "inference_precision_hint"])
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written into a unique folder beside the target, then renamed: never a half-written pair.
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.stem}."))
        check, speedup = None, None
        try:
            staged = staging / path.name
            # fp32 keeps fp32 weights (save_model would halve them by default); fp16 stores them in half.
            ov.save_model(model, str(staged), compress_to_fp16=precision == "fp16")
            if precision == "int8":  # the decision check, before the IR takes its place
                anomalies = synthetic_anomalies(checkpoint, held[: len(held) // 2], seed=2)
                stored = checkpoint.calibration  # the threshold and score scale of the fp32 model
                quantised = compile(staged)
                check = check_decisions(
                    session(onnx_path), quantised, stored.image_threshold, held, anomalies,
                    max_changed, max_score_error, stored.image_normalization.scale, max_mean_error,
                )  # fmt: skip
                if not check.passed:
                    raise ValueError(f"int8 export refused: {check.line()}; {path} was not written (use fp32)")
                speedup = measure_speedup(compile(onnx_path), quantised, held[:8] or frames[:8])
            os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(staged, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        result = OpenVinoExport(
            path, precision, len(frames), synthetic_images=len(synthetic), check=check, speedup=speedup,
            bank_product=bank_product if precision == "int8" and hybrid else None, bank_timing=timing,
        )  # fmt: skip
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


# What NNCF's import and quantisation say that is not the user's concern: torch's CUDA probe (NNCF imports
# torch.utils.cpp_extension, which logs "No CUDA runtime is found" on CPU machines; torch.cuda may warn
# "CUDA initialization: ..."). Everything else — NNCF's warnings and errors included — stays visible.
_CUDA_PROBE = ("No CUDA runtime is found", "CUDA initialization")


class _DropCudaProbe(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _CUDA_PROBE)


@contextmanager
def quiet_quantization():
    """NNCF at WARNING (its ~30 INFO lines about ignored nodes and quantizers are dropped) and torch's CUDA
    probe silenced, for the duration of an int8 export; the previous log level is restored after."""
    probe = _DropCudaProbe()
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    cpp_logger.addFilter(probe)
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    try:
        with warnings.catch_warnings():
            for text in _CUDA_PROBE:
                warnings.filterwarnings("ignore", message=f".*{text}")
            try:  # NNCF sets its logger to INFO when first imported: import it before lowering it
                import nncf  # noqa: F401
            except ImportError:
                pass
            if nncf_logger.getEffectiveLevel() < logging.WARNING:
                nncf_logger.setLevel(logging.WARNING)
            yield
    finally:
        nncf_logger.setLevel(level)
        cpp_logger.removeFilter(probe)


def _bank_product_shape(checkpoint: Checkpoint) -> tuple[int, int, int]:
    """(patches per image, feature width, bank rows each patch is compared with) of a hybrid checkpoint."""
    state = checkpoint.memory_bank
    height, width = (side // FEATURE_STRIDE for side in checkpoint.config.input_shape)  # `GlassModel.grid_shape`
    if isinstance(state, dict):
        images, rows, channels = state["patches"].shape
        return height * width, channels, min(int(state.get("neighbours", images)), images) * rows
    return height * width, state.shape[1], state.shape[0]  # an older file's one coreset


def time_bank_product(
    queries: int, width: int, rows: int, threads: int | None = None, repeats: int = 5
) -> BankProductTiming:
    """The hybrid's q·b for one image (queries × width by rows × width) timed on this CPU with OpenVINO,
    in float32 and with both inputs quantised to 8 bits as NNCF quantises them (FakeQuantize on each
    input of the MatMul): the best of ``repeats`` calls each, in milliseconds."""
    import time

    ov = _openvino()
    from openvino import opset13 as ops

    def graph(quantised: bool):
        q = ops.parameter([1, queries, width], np.float32, name="q")
        b = ops.parameter([1, rows, width], np.float32, name="b")
        inputs = [q, b]
        if quantised:
            # NNCF's signed 8-bit range: 256 levels from −128 to 127 steps, zero exactly representable
            low, high = np.array(-1.0, np.float32), np.array(127 / 128, np.float32)
            inputs = [ops.fake_quantize(x, low, high, low, high, 256) for x in inputs]
        return ov.Model([ops.matmul(*inputs, False, True)], [q, b], "bank_product")

    rng = np.random.default_rng(0)
    feed = {"q": rng.uniform(-1, 1, (1, queries, width)).astype(np.float32),
            "b": rng.uniform(-1, 1, (1, rows, width)).astype(np.float32)}  # fmt: skip
    config = {"INFERENCE_PRECISION_HINT": PRECISION_HINT, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    best = {}
    for quantised in (False, True):
        compiled = ov.Core().compile_model(graph(quantised), "CPU", config)
        compiled(feed)  # the first call also builds the kernels
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            compiled(feed)
            times.append(time.perf_counter() - start)
        best[quantised] = 1000.0 * min(times)
    return BankProductTiming(fp32_ms=best[False], int8_ms=best[True])


def _quantize(model, frames: Sequence[np.ndarray], fast: bool, hybrid: bool):
    with quiet_quantization():
        try:
            import nncf
        except ImportError as error:
            raise RuntimeError(f'int8 export needs NNCF: pip install "glass-ad[openvino]" ({error})') from None
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        dataset = nncf.Dataset(list(frames), lambda frame: frame[None])
        # Every MatMul but the bank's q·b by name (a MatMul may be named after another node it was fused with).
        products = [
            op.get_friendly_name()
            for op in model.get_ordered_ops()
            if op.get_type_name() == "MatMul" and not op.get_friendly_name().endswith(QUANTISED_PRODUCTS)
        ]
        patterns = ignored_patterns(hybrid)
        ignored = nncf.IgnoredScope(names=products, patterns=patterns, types=IGNORED_TYPES, validate=False)
        return nncf.quantize(
            model,
            dataset,
            subset_size=len(frames),
            ignored_scope=ignored,
            advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=fast),
        )

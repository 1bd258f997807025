"""Torch-free inference: an exported model run with ONNX Runtime, numpy and Pillow only.

    from glass_ad.inference.runtime import Runtime

    runtime = Runtime("runs/mtd/model.onnx")                   # providers="cpu" (default), "cuda", "openvino", "auto"
    p = runtime("part.png")                                    # a path, a PIL image or an array of any size
    p.score, p.normalized, p.is_anomalous, p.anomaly_map       # map at the original frame size

Nothing here imports torch, scipy or scikit-learn, so a plant PC needs ``numpy``, ``onnxruntime`` and
``Pillow`` (``pip install "glass-ad[runtime]"`` pulls no more than that for this module). Everything the
decision needs — the network input's shape (``image_height`` × ``image_width``; files exported before
rectangular inputs carry only the square's ``image_size``), resize and fit, thresholds, normalisations, bit
depth — is read from the model's ``glass_ad.*`` metadata, never from the training checkpoint.

The preprocessing is specified in plain numpy in `framing` (`crop_box`, `resize_weights`, `preprocess`,
`map_to_original`), the reference an integrator can port to any language. Models exported with the
preprocessing in the graph (the default of `glass export`) take frames of any size directly; older
crop-input models are fed through `framing.preprocess` here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np

from glass_ad.data.io import check_bit_depth, read_image, to_uint8
from glass_ad.inference.exported import META_PREFIX, PRECISION_HINT, read_ir_metadata
from glass_ad.inference.framing import map_to_original, preprocess

__all__ = ["OpenVinoSession", "Prediction", "Runtime", "read_batches", "resolve_providers", "session", "to_rgb"]

MIN_SIDE = 8  # as io.read_image: smaller images carry no usable texture at stride 8

ImageInput = Union[np.ndarray, "PIL.Image.Image", str, os.PathLike]  # noqa: F821 (PIL is imported lazily)


# ---------------------------------------------------------------------------------------------------
# Inputs → uint8 H×W×3


def _array_to_rgb(array: np.ndarray, bit_depth: int | None = None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] in (2, 4):  # grey+alpha / RGBA: alpha is dropped, like files
        array = array[:, :, 0] if array.shape[2] == 2 else array[:, :, :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected an H×W or H×W×3 image array, got shape {tuple(array.shape)}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"unsupported image array dtype {array.dtype}")
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image is {width}x{height} pixels, smaller than the minimum {MIN_SIDE}x{MIN_SIDE}")
    # The file reader's rule (one fixed scale per bit depth, floats in [0, 1] × 255), so that an array and
    # the file it came from give the same pixels.
    array = to_uint8(array, bit_depth)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def _pil_to_array(image) -> np.ndarray:
    # Modes numpy reads as they are (16/32-bit integers and floats keep their depth for to_uint8);
    # every other mode (palette, 1-bit, CMYK, …) is converted by Pillow itself.
    if image.mode in ("RGB", "RGBA", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


def to_rgb(item: ImageInput, bit_depth: int | None = None) -> tuple[np.ndarray, str | None]:
    """One input as ``uint8`` H×W×3 RGB, and its path (None for in-memory images).

    ``bit_depth`` scales inputs deeper than 8 bits (None: the container's depth). Raises `ImageReadError`
    (files) or `ValueError` (arrays, PIL images) with a one-line reason.
    """
    if isinstance(item, (str, os.PathLike)):
        return read_image(item, min_size=MIN_SIDE, bit_depth=bit_depth), str(item)
    if isinstance(item, np.ndarray):
        return _array_to_rgb(item, bit_depth), None
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        return _array_to_rgb(_pil_to_array(item), bit_depth), getattr(item, "filename", None) or None
    raise TypeError(f"cannot predict on a {type(item).__name__}: pass a numpy array, a PIL image or a path")


def read_batches(
    items: Iterable[Any],
    read: Callable[[Any], tuple],
    size: int,
    *,
    by_shape: bool = True,
    on_error: Callable[[Any, Exception], None] | None = None,
) -> Iterator[list[tuple]]:
    """Inputs read one at a time (``read(item)``: a tuple whose first element is the uint8 H×W×3 frame) and
    handed on in consecutive batches of at most ``size``, in input order; with ``by_shape`` a batch holds
    frames of one size (a frame of another size starts the next batch). Memory stays flat: one batch is
    held at a time.

    With ``on_error(item, error)``, an input that cannot be read (ValueError, TypeError, OSError —
    `ImageReadError` is a ValueError) is reported there and skipped; without, it raises. The batching
    of `Runtime.iter_predict` and of `predict.Detector.iter_predict`.
    """
    pending: list[tuple] = []
    for item in items:
        try:
            record = read(item)
        except (ValueError, TypeError, OSError) as error:
            if on_error is None:
                raise
            on_error(item, error)
            continue
        if pending and by_shape and pending[0][0].shape != record[0].shape:
            yield pending
            pending = []
        pending.append(record)
        if len(pending) == size:
            yield pending
            pending = []
    if pending:
        yield pending


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass
class Prediction:
    """The result for one image. Maps are at the image's original size."""

    score: float  # raw image score (max patch score of the discriminator)
    normalized: float  # in (0, 1); the false-alarm threshold maps to 0.5
    is_anomalous: bool  # score >= the detector's image threshold
    anomaly_map: np.ndarray  # float32 H×W
    region: np.ndarray  # bool H×W: anomaly_map >= the detector's region level (pixel threshold raised half-way to the peak)
    path: str | None = None  # the file, when the input was one
    threshold: float = float("nan")  # the image threshold the decision used
    image: np.ndarray | None = field(default=None, repr=False)  # uint8 H×W×3, only with keep_image=True

    @property
    def decision(self) -> str:
        return "anomalous" if self.is_anomalous else "normal"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        height, width = self.anomaly_map.shape
        return {
            "path": self.path,
            "score": float(self.score),
            "normalized_score": float(self.normalized),
            "decision": self.decision,
            "threshold": float(self.threshold),
            "width": int(width),
            "height": int(height),
            "region_fraction": float(self.region.mean()) if self.region.size else 0.0,
        }


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime

_PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


def resolve_providers(providers: str | Sequence[str] | None = "cpu") -> list[str]:
    """ONNX Runtime execution providers for a short name or a list.

    ``"cpu"`` (default), ``"cuda"``, ``"tensorrt"``, ``"openvino"``, ``"directml"``, ``"coreml"`` (each
    followed by the CPU as fallback), ``"auto"`` (the first available of CUDA, OpenVINO, DirectML, CoreML,
    then the CPU), or full provider names. A provider this ONNX Runtime build lacks is a ValueError that
    names the available ones (``pip install onnxruntime-gpu`` / ``onnxruntime-openvino`` add them).
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        providers = "cpu"
    if isinstance(providers, str):
        key = providers.lower()
        if key == "auto":
            order = ["CUDAExecutionProvider", "OpenVINOExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"]
            return [p for p in order if p in available][:1] + ["CPUExecutionProvider"]
        if key not in _PROVIDER_NAMES and providers not in available:
            raise ValueError(f"unknown provider {providers!r} (use one of {', '.join(_PROVIDER_NAMES)}, auto)")
        providers = [_PROVIDER_NAMES.get(key, providers)]
    wanted = list(providers)
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ValueError(
            f"ONNX Runtime here has no {', '.join(missing)} (available: {', '.join(available)}); "
            "install the matching build, e.g. onnxruntime-gpu or onnxruntime-openvino"
        )
    return wanted + ([] if "CPUExecutionProvider" in wanted else ["CPUExecutionProvider"])


def session(onnx_path: str | os.PathLike, providers: str | Sequence[str] | None = "cpu", threads: int | None = None):
    """An ONNX Runtime inference session with the chosen execution providers."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # warnings about unused initialisers etc. are noise for users
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=resolve_providers(providers))


class OpenVinoSession:
    """An OpenVINO IR (``.xml``) behind the few ONNX Runtime session methods `Runtime` uses, compiled with
    ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO would otherwise run it in bf16 on CPUs that have it)."""

    def __init__(self, path: Path, device: str = "CPU", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError as error:
            raise ValueError(f'{path} is OpenVINO IR: pip install "glass-ad[openvino]" ({error})') from None
        core = ov.Core()
        self.model = core.read_model(str(path))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINT}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(self.model, device, config)
        self.device = device
        self.path = path

    def metadata(self) -> dict[str, str]:
        return read_ir_metadata(self.path, self.model)

    def get_inputs(self):
        return [_Named(port.get_any_name()) for port in self.compiled.inputs]

    def get_outputs(self):
        return [_Named(port.get_any_name()) for port in self.compiled.outputs]

    def get_providers(self) -> list[str]:
        return [f"OpenVINO:{self.device}"]

    def run(self, output_names, feed):
        result = self.compiled(next(iter(feed.values())))
        return [np.asarray(result[self.compiled.output(name)]) for name in output_names]


@dataclass
class _Named:
    name: str


def _metadata(sess) -> dict[str, str]:
    if isinstance(sess, OpenVinoSession):
        return sess.metadata()
    custom = sess.get_modelmeta().custom_metadata_map
    return {key[len(META_PREFIX) :]: value for key, value in custom.items() if key.startswith(META_PREFIX)}


def _optional_float(value: str | None) -> float | None:
    if value in (None, "", "None"):
        return None
    return float(value)


class Runtime:
    """An exported GLASS model under ONNX Runtime (``.onnx``) or OpenVINO (``.xml``, ``providers`` then
    names the OpenVINO device: ``"cpu"``, ``"gpu"``, ``"npu"``, ``"auto"``): frames of any size in,
    decisions and maps out.

    ``threshold``: ``"far"`` (the false-alarm threshold fixed at training), ``"f1"`` (from ``glass
    calibrate``, when the model was exported after it) or a raw image score. ``bit_depth`` overrides the
    model's recorded input bit depth for images deeper than 8 bits.
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        *,
        providers: str | Sequence[str] | None = "cpu",
        threads: int | None = None,
        threshold: str | float = "far",
        bit_depth: int | None = None,
        batch_size: int = 8,
    ):
        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path} (create it with `glass export RUN_DIR --out {path}`)")
        self.path = path
        if path.suffix.lower() == ".xml":  # OpenVINO IR from `glass export --format openvino`
            device = providers if isinstance(providers, str) and providers.upper() in ("CPU", "GPU", "NPU", "AUTO") else "CPU"
            self.session = OpenVinoSession(path, device.upper(), threads)
        else:
            self.session = session(path, providers, threads)
        meta = _metadata(self.session)
        if "image_size" not in meta:
            raise ValueError(f"{path} has no glass_ad metadata (not written by `glass export`)")
        self.metadata = meta
        self.image_size = int(meta["image_size"])
        # (H, W) of the network input; files exported before rectangular inputs carry only image_size.
        self.input_shape = (
            (int(meta["image_height"]), int(meta["image_width"]))
            if meta.get("image_height") and meta.get("image_width")
            else (self.image_size, self.image_size)
        )
        self.resize = int(meta["resize"]) if meta.get("resize") else None
        self.fit = meta.get("fit", "crop") if meta.get("fit") in ("crop", "stretch") else "crop"
        self.in_graph = meta.get("preprocessing") == "in-graph"
        recorded = meta.get("bit_depth", "container")
        self.bit_depth = check_bit_depth(bit_depth) if bit_depth is not None else (int(recorded) if recorded.isdigit() else None)
        self.batch_size = max(1, int(batch_size))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.threshold_kind, self.image_threshold, self.pixel_threshold = self._thresholds(threshold)
        # The region rule (metadata `region_height`; models exported before it: the plain pixel threshold).
        self.region_height = None if self.threshold_kind == "f1" else _optional_float(meta.get("region_height"))

    def region_level(self, anomaly_map: np.ndarray) -> float:
        """The map level of this map's region: the pixel threshold raised ``region_height`` of the way to the
        map's peak (the same rule as `glass_ad.model.operating_point.region_threshold`)."""
        threshold, peak = self.pixel_threshold, float(np.max(anomaly_map)) if np.size(anomaly_map) else self.pixel_threshold
        if self.region_height is None or not peak > threshold:
            return threshold
        return threshold + self.region_height * (peak - threshold)

    def _thresholds(self, threshold: str | float) -> tuple[str, float, float]:
        meta = self.metadata
        if isinstance(threshold, str) and threshold.lower() == "far":
            return "far", float(meta["image_threshold"]), float(meta["pixel_threshold"])
        if isinstance(threshold, str) and threshold.lower() == "f1":
            image = _optional_float(meta.get("f1_image_threshold"))
            if image is None:
                raise ValueError("this model has no F1 threshold; run `glass calibrate RUN_DIR --val DIR`, then export again")
            pixel = _optional_float(meta.get("f1_pixel_threshold"))
            return "f1", image, pixel if pixel is not None else float(meta["pixel_threshold"])
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be 'far', 'f1' or a number, got {threshold!r}") from None
        return "custom", value, float(meta["pixel_threshold"])

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 ``B×H×W×3`` frames of one size → (raw scores B, normalised scores B, maps B×H×W)."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"expected uint8 B×H×W×3 frames, got shape {tuple(frames.shape)}")
        if self.in_graph:
            out = self.session.run(self.output_names, {self.input_name: frames})
            return tuple(np.asarray(o, dtype=np.float32) for o in out)  # type: ignore[return-value]
        height, width = frames.shape[1:3]
        shape = self.input_shape
        prepared = np.stack([preprocess(f, self.image_size, self.resize, self.fit, shape) for f in frames])
        scores, normalized, maps = (np.asarray(o, dtype=np.float32) for o in self.session.run(self.output_names, {self.input_name: prepared}))
        full = np.stack([map_to_original(m, (height, width), self.image_size, self.resize, self.fit, shape) for m in maps])
        return scores, normalized, full

    def __call__(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None):
        return self.predict(images, batch_size=batch_size)

    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None) -> Prediction | list[Prediction]:
        """One input → one `Prediction`; a list or tuple → a list. An unreadable input raises."""
        if isinstance(images, (list, tuple)):
            return list(self.iter_predict(images, batch_size=batch_size))
        return next(iter(self.iter_predict([images], batch_size=batch_size)))

    def iter_predict(
        self, images: Iterable[ImageInput], *, batch_size: int | None = None, on_error=None, keep_image: bool = False
    ) -> Iterator[Prediction]:
        """Predictions in input order; consecutive frames of one size are batched (up to `batch_size`).

        With `on_error(item, error)`, an unreadable input is reported there and skipped; without, it raises.
        """
        size = max(1, int(batch_size or self.batch_size))
        read = lambda item: to_rgb(item, self.bit_depth)  # noqa: E731
        for batch in read_batches(images, read, size, by_shape=True, on_error=on_error):
            yield from self._finish(batch, keep_image)

    def _finish(self, batch: list[tuple[np.ndarray, str | None]], keep_image: bool) -> Iterator[Prediction]:
        scores, normalized, maps = self.run(np.stack([rgb for rgb, _ in batch]))
        for (rgb, path), score, norm, full in zip(batch, scores, normalized, maps):
            yield Prediction(
                score=float(score),
                normalized=float(norm),
                is_anomalous=bool(score >= self.image_threshold),
                anomaly_map=full,
                region=full >= self.region_level(full),
                path=path,
                threshold=self.image_threshold,
                image=rgb if keep_image else None,
            )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m glass_ad.inference.runtime MODEL.onnx IMAGE...``: one JSON line per image, without torch."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m glass_ad.inference.runtime", description=main.__doc__)
    parser.add_argument("model", help="ONNX model written by `glass export`")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--providers", default="cpu", help="cpu (default), cuda, openvino, tensorrt, directml, coreml, auto")
    parser.add_argument("--threshold", default="far", help="far, f1 or a raw score")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        runtime = Runtime(args.model, providers=args.providers, threshold=args.threshold, threads=args.threads)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}")
        return 2
    failed = 0

    def report(item, error: Exception) -> None:
        nonlocal failed
        failed += 1
        print(json.dumps({"path": str(item), "error": str(error)}))

    for prediction in runtime.iter_predict(args.images, on_error=report):
        print(json.dumps(prediction.to_dict()))
    return 1 if failed and failed == len(args.images) else 0


if __name__ == "__main__":
    raise SystemExit(main())

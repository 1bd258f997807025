"""`Detector`: load a trained model once, then score arrays, PIL images or files of any size.

    from glass_ad.inference.predict import Detector

    detector = Detector.load("runs/mtd")                      # or engine="onnx"
    result = detector("part.png")                             # one input → one Prediction
    results = detector([array, pil_image, "other.tif"])       # a list → a list, batched internally
    result.score, result.normalized, result.is_anomalous      # raw, in [0, 1], decision
    result.anomaly_map, result.region                         # float32 / bool, original H×W

Every input goes through the same steps as training: ``uint8`` RGB (`io.read_image` rules for files and
for non-uint8 arrays, with the bit depth recorded in the checkpoint — or ``bit_depth=`` — for images deeper
than 8 bits, so one rule holds for every image of a model), the checkpoint's `Preprocessor` (resize + crop / stretch to the
network input H×W, ``config.input_shape``: a square or a rectangle), rounding to
``uint8``; then an engine (`engines.py`: the `InferenceGraph` in PyTorch, or its ONNX / OpenVINO export; same
formula for all). Maps are brought back to the original frame with `Preprocessor.map_to_original` (0 where the
crop cut the image).

Decisions use the checkpoint's thresholds (`checkpoint.Calibration.operating_point`, as `glass test`):
``threshold="far"`` (default) the false-alarm threshold fixed at training time, ``"f1"`` the F1-optimal one
added by `glass calibrate`, or a number (raw image score). The normalised score always maps the
false-alarm threshold to 0.5. A checkpoint without calibration uses `Calibration.fallback()`.

`predict_files` is the `glass predict` command without the command line: folders, overlays, a
results file, and one line per unreadable input while the rest are still predicted.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from glass_ad.data.io import IMAGE_EXTENSIONS, ImageReadError, check_bit_depth, list_images
from glass_ad.inference.engines import Engine, create_engine
from glass_ad.inference.framing import crop_in_original
from glass_ad.inference.runtime import ImageInput, Prediction, read_batches, to_rgb
from glass_ad.model.checkpoint import Checkpoint, as_checkpoint, checkpoint_path
from glass_ad.safety import refuse_input_overlap, refuse_output_in_inputs, write_atomic

log = logging.getLogger(__name__)

__all__ = ["Detector", "collect_inputs", "predict_files"]

OVERLAY_MAX_SIDE = 1024  # overlays of huge images are drawn downscaled (3 tiles wide)


# ---------------------------------------------------------------------------------------------------


class Detector:
    """A trained model ready for inference (see the module docstring)."""

    def __init__(
        self,
        checkpoint: Checkpoint | dict[str, Any],
        engine: Engine,
        *,
        batch_size: int = 8,
        threshold: str | float = "far",
        source: str | None = None,
        bit_depth: int | None = None,
    ):
        checkpoint = as_checkpoint(checkpoint)
        # Inputs deeper than 8 bits: the rule fixed at training (checkpoint), unless overridden here.
        self.bit_depth = check_bit_depth(bit_depth) if bit_depth is not None else checkpoint.bit_depth
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.preprocessor = checkpoint.preprocessor()
        self.calibration = checkpoint.calibration
        self.engine = engine
        self.batch_size = max(1, int(batch_size))
        self.source = source
        self.threshold_kind, self.image_threshold, self.pixel_threshold = self.calibration.operating_point(threshold)

    @classmethod
    def load(
        cls,
        run: str | os.PathLike,
        device: str = "auto",
        engine: str = "torch",
        onnx_path: str | os.PathLike | None = None,
        *,
        batch_size: int = 8,
        threshold: str | float = "far",
        threads: int | None = None,
        bit_depth: int | None = None,
        providers: str | Sequence[str] | None = "cpu",
    ) -> "Detector":
        """Load from a run directory or checkpoint file. ``engine="onnx"`` runs ``onnx_path`` (default
        ``RUN_DIR/model.onnx``, written by `glass export`) with ONNX Runtime on ``providers`` (``"cpu"``,
        ``"cuda"``, ``"openvino"``, ``"auto"``…; see `runtime.resolve_providers`). ``threads`` sets the
        intra-op threads of the ONNX Runtime / OpenVINO session; the torch engine's threads are process-wide
        and stay the caller's choice (`torch.set_num_threads`, as `glass predict --threads` does), so
        ``threads`` does not change them. ``bit_depth`` overrides the input bit depth recorded at training
        (for images deeper than 8 bits)."""
        check_bit_depth(bit_depth)
        checkpoint = Checkpoint.load(run)
        runner = create_engine(
            engine, run, checkpoint, device=device, model_path=onnx_path, threads=threads, providers=providers
        )
        return cls(
            checkpoint, runner, batch_size=batch_size, threshold=threshold, source=str(checkpoint_path(run)), bit_depth=bit_depth
        )

    @property
    def engine_name(self) -> str:
        return self.engine.name

    @property
    def engine_precision(self) -> str:
        """``"fp32"``, or the OpenVINO IR's recorded ``"fp16"`` / ``"int8"``: with `engine_name`, which model
        produced a score (an int8 and an fp32 IR are both engine ``"openvino"``)."""
        return getattr(self.engine, "precision", "fp32")

    @property
    def image_size(self) -> int:
        """The square's side; with a rectangular input, its shorter side (see `input_shape`)."""
        return self.config.image_size

    @property
    def input_shape(self) -> tuple[int, int]:
        """(H, W) of the network input: what `prepare` returns and `score_prepared` takes."""
        return tuple(self.config.input_shape)  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------ prediction

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """uint8 h×w×3 → the network input uint8 H×W×3 (resize + crop, rounded like the training images)."""
        tensor = self.preprocessor.image(image)
        return (tensor * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()

    def score_prepared(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the engine on prepared uint8 B×H×W×3 images: (raw scores, normalised scores, H×W maps)."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if self.engine.in_graph and self.config.resize not in (None, min(self.input_shape)):
            # An H×W crop fed to a graph that resizes would be resized again (with no margin, resize is
            # None, the graph's geometry maps an H×W frame onto itself: the identity).
            raise ValueError("this ONNX model resizes frames itself; pass whole frames to predict() instead")
        return self.engine(images)

    def __call__(self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None):
        return self.predict(images, batch_size=batch_size)

    def predict(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int | None = None
    ) -> Prediction | list[Prediction]:
        """One input → one `Prediction`; a list or tuple → a list. An unreadable input raises."""
        if isinstance(images, (list, tuple)):
            return list(self.iter_predict(images, batch_size=batch_size))
        return next(iter(self.iter_predict([images], batch_size=batch_size)))

    def iter_predict(
        self,
        images: Iterable[ImageInput],
        *,
        batch_size: int | None = None,
        on_error: Callable[[ImageInput, Exception], None] | None = None,
        keep_image: bool = False,
    ) -> Iterator[Prediction]:
        """Predictions in input order, decoding and scoring `batch_size` images at a time (memory flat).

        With `on_error`, an input that cannot be read is reported there and skipped; without, it raises.
        """
        size = max(1, int(batch_size or self.batch_size))
        frames = self.engine.in_graph  # the graph resizes: batch whole frames, one size per batch

        def read(item: ImageInput) -> tuple[np.ndarray, str | None, np.ndarray | None]:
            rgb, path = to_rgb(item, self.bit_depth)
            return rgb, path, None if frames else self.prepare(rgb)

        for batch in read_batches(images, read, size, by_shape=frames, on_error=on_error):
            yield from self._finish(batch, keep_image)

    def _finish(self, batch: list[tuple[np.ndarray, str | None, np.ndarray | None]], keep_image: bool) -> Iterator[Prediction]:
        if self.engine.in_graph:
            scores, normalized, maps = self.engine(np.ascontiguousarray(np.stack([rgb for rgb, _, _ in batch])))
        else:
            scores, normalized, maps = self.score_prepared(np.stack([prepared for _, _, prepared in batch]))
        for (rgb, path, _), score, norm, small in zip(batch, scores, normalized, maps):
            if not math.isfinite(float(score)):  # NaN is below no threshold: it would read "normal"
                raise NonFiniteScoreError(
                    f"the model gave a non-finite score ({float(score)}) for {path or 'an image'}: its weights are "
                    f"damaged (NaN or inf); retrain, or restore model.pt"
                )
            full = small if self.engine.in_graph else self.preprocessor.map_to_original(small, rgb.shape[:2])
            yield Prediction(
                score=float(score),
                normalized=float(norm),
                is_anomalous=bool(score >= self.image_threshold),
                anomaly_map=full,
                region=self.region_of(full),
                path=path,
                threshold=self.image_threshold,
                image=rgb if keep_image else None,
            )

    def operating_line(self) -> str:
        """What the image threshold in use promises (`Calibration.decision_line` for the false-alarm one; the
        same estimate of the F1 or a custom threshold, judged by the same normal evidence)."""
        if self.threshold_kind == "far":
            return self.calibration.decision_line()
        estimate = self.calibration.estimate_at(self.image_threshold)
        what = f"{self.threshold_kind} threshold"
        if estimate is None:
            return f"{what} {self.image_threshold:.4f}: false-alarm rate unknown (no held-out normal scores)"
        return estimate.line(what=what, evidence=self.calibration.evidence())

    def operating_summary(self) -> dict[str, Any]:
        """JSON-ready: the decision line of the threshold in use and its numbers (for a model page)."""
        calibration = self.calibration
        if self.threshold_kind == "far":
            estimate = calibration.false_alarm_estimate()
        else:
            estimate = calibration.estimate_at(self.image_threshold)
        return {
            "line": self.operating_line(),
            "kind": self.threshold_kind,
            "image_threshold": self.image_threshold,
            "target_false_alarm_rate": calibration.target_false_alarm_rate,
            "estimated_false_alarm_rate": None if estimate is None else estimate.estimate,
            "interval_95": None if estimate is None or estimate.low is None else [estimate.low, estimate.high],
            "model_free_upper_95": None if estimate is None else estimate.model_free_upper,
            "normal_images": None if estimate is None else estimate.images,
            "model": None if estimate is None else estimate.model,
            "supported": bool(estimate is not None and estimate.supported),
            "pixel_threshold": self.pixel_threshold,
            "region_height": None if self.threshold_kind == "f1" else calibration.region_height,
        }

    def region_level(self, anomaly_map) -> float:
        """The map level at and above which this map's pixels form its region (`Calibration.region_level`:
        the pixel threshold raised half-way to the map's own peak)."""
        return self.calibration.region_level(anomaly_map, self.pixel_threshold, self.threshold_kind)

    def region_of(self, anomaly_map: np.ndarray) -> np.ndarray:
        """The predicted region of a map (bool, same shape)."""
        return np.asarray(anomaly_map) >= self.region_level(anomaly_map)

    # -------------------------------------------------------------------------------------- pictures

    def heat_range(self) -> tuple[float, float]:
        """Fixed colour scale for this model's maps (`visualize.heat_range`: a typical normal pixel at the
        bottom, the pixel threshold in the middle), so heatmaps of different images compare at a glance."""
        return self.calibration.heat_range(self.pixel_threshold)

    def overlay(
        self,
        prediction: Prediction,
        image: np.ndarray | None = None,
        title: str | None = None,
        *,
        outlines: str = "anomalous",
        min_area: int = 0,
        colorbar: bool | None = None,
    ) -> np.ndarray:
        """original | heatmap | predicted-region contour (| colour scale), uint8 RGB, downscaled when large.

        The area the centre crop drops is hatched grey ("not inspected"). ``outlines``: ``"anomalous"``
        (default: red outlines only on images decided anomalous), ``"all"`` or ``"none"``; regions under
        ``min_area`` pixels (of the original image) are not outlined. ``colorbar`` (default: with a title;
        ``title=""`` gives the bare three tiles) appends the colour scale with the pixel threshold marked.
        """
        import cv2

        from glass_ad.evaluation.visualize import overlay_panel

        if outlines not in ("anomalous", "all", "none"):
            raise ValueError(f"outlines must be 'anomalous', 'all' or 'none', got {outlines!r}")
        picture = image if image is not None else prediction.image
        if picture is None:
            raise ValueError("overlay needs the image: predict with keep_image=True or pass image=")
        height, width = picture.shape[:2]
        inspected = crop_in_original(height, width, self.config.image_size, self.config.resize, self.checkpoint.fit, self.input_shape)
        scale = OVERLAY_MAX_SIDE / max(height, width)
        if scale < 1.0:  # overlay_panel resizes the map to the image; contours follow the resized map
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
            inspected = tuple(v * scale for v in inspected)
            min_area = int(round(min_area * scale * scale))
        else:
            scale = 1.0
        vmin, vmax = self.heat_range()
        if title is None:
            title = f"{prediction.decision}: score {prediction.score:.3f} (normalized {prediction.normalized:.2f})"
        outline = outlines == "all" or (outlines == "anomalous" and prediction.is_anomalous)
        return overlay_panel(
            picture, prediction.anomaly_map, vmin=vmin, vmax=vmax, threshold=self.region_level(prediction.anomaly_map), title=title,
            inspected=inspected, outline=outline, min_area=min_area, colorbar=bool(title) if colorbar is None else colorbar,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Files and folders (`glass predict`)


class NonFiniteScoreError(ValueError):
    """The model scored an image NaN or inf (damaged weights): never a decision."""


def collect_inputs(paths: Sequence[str | os.PathLike]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """Expand files and folders (recursively) into ``(file, overlay name)`` pairs, and ``(path, one-line
    problem)`` pairs for inputs that yield nothing.

    A folder's images keep their relative path below ``<folder name>/``; a file given directly is named
    by its file name. Names that would collide get ``_2``, ``_3`` … so that no overlay overwrites another.
    """
    found: list[tuple[Path, Path]] = []
    problems: list[tuple[str, str]] = []
    used: set[str] = set()
    seen: set[Path] = set()  # a file reached twice (given, and inside a given folder) is predicted once

    def add(image: Path, name: Path) -> None:
        key = Path(os.path.realpath(image))  # also for a symlink loop (reported when it is read)
        if key not in seen:
            seen.add(key)
            found.append((image, unique(name)))

    def unique(name: Path) -> Path:
        stem, candidate, k = name.with_suffix(""), name.with_suffix(".png"), 1
        while str(candidate).lower() in used:
            k += 1
            candidate = stem.with_name(f"{stem.name}_{k}").with_suffix(".png")
        used.add(str(candidate).lower())
        return candidate

    for given in paths:
        path = Path(given)
        if path.is_dir():
            images = list_images(path, recursive=True)
            if not images:
                problems.append((str(path), f"'{path}': folder has no images (looked for {', '.join(IMAGE_EXTENSIONS)})"))
            base = Path(path.resolve().name or "images")
            for image in images:
                add(image, base / image.relative_to(path))
        elif path.exists() or path.is_symlink():  # a broken or looping link is read, so its problem is named
            add(path, Path(path.name))
        else:
            problems.append((str(path), f"'{path}': file not found"))
    return found, problems


def predict_files(
    run: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    fmt: str = "json",
    engine: str = "torch",
    onnx_path: str | os.PathLike | None = None,
    batch_size: int = 8,
    device: str = "auto",
    threshold: str | float = "far",
    overlays: bool = True,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
    threads: int | None = None,
    bit_depth: int | None = None,
    providers: str | Sequence[str] | None = "cpu",
    save_maps: str | None = None,
    save_masks: bool = False,
    outlines: str = "anomalous",
    min_area: int = 0,
) -> dict[str, Any]:
    """Predict every image under `paths`; write overlays and ``predictions.{json,csv}`` into `out`.

    ``save_maps``: also write each raw map at the original size, ``"npy"`` (float32) into ``maps/`` or
    ``"png"`` (16-bit: the model's colour scale `Detector.heat_range` mapped linearly onto 0…65535, so the
    pixel threshold is 32768; the scale is in the summary); ``save_masks``: the predicted region as a
    0/255 PNG into ``masks/``. JSON rows always carry ``boxes`` (connected regions of at least
    ``min_area`` pixels, largest first). ``outlines``/``min_area``: see `Detector.overlay`.

    Each unreadable input is reported as one line through `report` (default: stderr) and skipped.
    Returns the summary (also the JSON file's header): counts, thresholds, result file, errors. When no
    image could be predicted, no results file is written (an earlier one is never replaced by an empty
    one; ``results`` is None). Outputs that would overwrite an input or the checkpoint are refused
    (`safety.OutputError`) before anything is computed; replacing earlier results is the caller's
    decision (`glass predict` refuses without ``--force``).
    """
    from tqdm.auto import tqdm

    from glass_ad.evaluation.visualize import region_boxes, save_png

    if fmt not in ("json", "csv"):
        raise ValueError(f"format must be 'json' or 'csv', got {fmt!r}")
    if save_maps not in (None, "npy", "png"):
        raise ValueError(f"save_maps must be 'npy' or 'png', got {save_maps!r}")
    out = Path(out)
    check_outputs(run, paths, out, fmt=fmt, overlays=overlays, onnx_path=onnx_path)
    detector = Detector.load(
        run, device=device, engine=engine, onnx_path=onnx_path, batch_size=batch_size, threshold=threshold,
        threads=threads, bit_depth=bit_depth, providers=providers,
    )  # fmt: skip
    low, high = detector.heat_range()
    files, problems = collect_inputs(paths)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(files), desc="predicting", unit="img", disable=not progress, file=sys.stderr)
    errors: list[dict[str, str]] = []

    def say(line: str) -> None:
        if report is not None:
            report(line)
        else:
            bar.write(line, file=sys.stderr)

    for where, line in problems:
        errors.append({"path": where, "error": line})
        say(f"skipped: {line}")

    def failed(item, error: Exception) -> None:
        errors.append({"path": str(item), "error": str(error)})
        say(f"skipped: {error}" if isinstance(error, ImageReadError) else f"skipped: '{item}': {error}")
        bar.update(1)

    overlay_names = {str(path): name for path, name in files}
    rows: list[dict[str, Any]] = []
    for prediction in detector.iter_predict(
        [path for path, _ in files], on_error=failed, keep_image=overlays, batch_size=batch_size
    ):
        row = prediction.to_dict()
        row["engine"], row["precision"] = detector.engine_name, detector.engine_precision
        name = overlay_names[str(prediction.path)]
        row["boxes"] = region_boxes(prediction.region, prediction.anomaly_map, min_area)
        if save_maps == "npy":
            target = out / "maps" / name.with_suffix(".npy")
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, prediction.anomaly_map.astype(np.float32))
            row["map"] = str(target)
        elif save_maps == "png":
            target = out / "maps" / name
            scaled = np.clip((prediction.anomaly_map - low) / max(high - low, 1e-12), 0.0, 1.0)
            _save_png16(target, np.round(scaled * 65535.0).astype(np.uint16))
            row["map"] = str(target)
        if save_masks:
            target = out / "masks" / name
            save_png(target, prediction.region.astype(np.uint8) * 255)
            row["mask"] = str(target)
        if overlays:
            target = out / "overlays" / name
            title = (
                f"{Path(str(prediction.path)).name}: {prediction.decision}, score {prediction.score:.3f} "
                f"(normalized {prediction.normalized:.2f})"
            )
            save_png(target, detector.overlay(prediction, title=title, outlines=outlines, min_area=min_area))
            row["overlay"] = str(target)
        else:
            row["overlay"] = ""
        rows.append(row)
        bar.update(1)
    bar.close()

    anomalous = sum(1 for r in rows if r["decision"] == "anomalous")
    results = out / f"predictions.{fmt}" if rows else None
    summary: dict[str, Any] = {
        "run": detector.source,
        "engine": detector.engine_name,
        "precision": detector.engine_precision,
        "threshold": {"kind": detector.threshold_kind, "image": detector.image_threshold, "pixel": detector.pixel_threshold},
        "operating_point": detector.operating_line(),
        "n_images": len(rows),
        "n_anomalous": anomalous,
        "n_normal": len(rows) - anomalous,
        "n_failed": len(errors),
        "results": str(results) if results else None,
        "overlays": str(out / "overlays") if overlays and rows else None,
        "maps": ({"folder": str(out / "maps"), "format": save_maps} if save_maps and rows else None),
        "masks": str(out / "masks") if save_masks and rows else None,
        "errors": errors,
    }
    if save_maps == "png" and rows:
        summary["maps"].update(png_low=low, png_high=high, png_rule="map = low + (high - low) * value / 65535")
    if results is None:
        pass  # nothing predicted: an earlier results file stays as it was
    elif fmt == "json":
        write_atomic(results, json.dumps({**summary, "predictions": rows}, indent=2, allow_nan=False))
    else:
        _write_csv(results, rows)
    return summary


def _save_png16(path: Path, values: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path, format="PNG")


def output_paths(
    out: str | os.PathLike, fmt: str = "json", overlays: bool = True, maps: bool = False, masks: bool = False
) -> list[Path]:
    """The files and folders `predict_files` writes into `out`."""
    out = Path(out)
    extra = ([out / "maps"] if maps else []) + ([out / "masks"] if masks else [])
    return [out / f"predictions.{fmt}"] + ([out / "overlays"] if overlays else []) + extra


def check_outputs(
    run: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    fmt: str = "json",
    overlays: bool = True,
    onnx_path: str | os.PathLike | None = None,
) -> None:
    """Refuse (`safety.OutputError`) an `out` whose results would overwrite an input, the checkpoint or
    the ONNX model, that is or lies inside an input folder (or the folder of an input file, or the data set an
    input belongs to), or whose overlay folder holds inputs."""
    model_files = [checkpoint_path(run), onnx_path]
    refuse_input_overlap(out, [*paths, *model_files], what="output folder")
    refuse_output_in_inputs(out, paths)  # overlays would be scored as parts, or join the data set
    for target in output_paths(out, fmt, overlays):
        refuse_input_overlap(target, [*paths, *model_files], what="output", contains=target.name == "overlays")


CSV_COLUMNS = (
    "path", "score", "normalized_score", "decision", "threshold", "width", "height", "region_fraction", "overlay",
    "engine", "precision",
)  # fmt: skip


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io as text_io

    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the terminal."""
    threshold = summary["threshold"]
    line = (
        f"{summary['n_images']} images: {summary['n_anomalous']} anomalous, {summary['n_normal']} normal "
        f"(image threshold {threshold['image']:.4f}, {threshold['kind']}; engine {summary['engine']}"
        f"{'' if summary.get('precision', 'fp32') == 'fp32' else ' ' + summary['precision']})"
    )
    if summary["n_failed"]:
        line += f"; {summary['n_failed']} skipped"
    if summary["results"]:
        line += f" → {summary['results']}"
    if summary.get("overlays"):
        line += f", overlays in {summary['overlays']}"
    return line

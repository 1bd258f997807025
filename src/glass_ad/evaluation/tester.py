"""`glass test`: score a data set's test split with a trained model and report honest metrics.

The model, its thresholds and its score normalisation were all fixed at training time; the test set only
measures them. Memory stays flat in the number of test images apart from the metric inputs (one score
map per image at the model's resolution).

Nothing is dropped silently: every test image that could not be used (unreadable file, mask that does not
fit its image, …) is listed under ``dropped`` in the report with its reason and counted in ``n_dropped``,
and every test folder without images under ``empty_test_folders``; `glass test` then exits non-zero unless
``--allow-dropped``. Images deeper than 8 bits are read with the model's recorded bit depth.

The stored-threshold decisions are the checkpoint's `Calibration.operating_point("far")`, the same rule
`predict.Detector` decides by — for a checkpoint without calibration too (`Calibration.fallback()`).

The scored pixels are the deployed ones: each test image is decoded, resized and cropped by the checkpoint's
`Preprocessor`, then rounded to ``uint8`` exactly as training and `predict.Detector.prepare` do, and the
uint8 B×H×W×3 batch goes to an engine: by default the model in PyTorch (the same arithmetic as the
`InferenceGraph` of the torch engine), or any engine of `inference.engines` passed as ``engine=`` (the
`glass test --engine onnx|openvino` command builds it), so every engine's metrics come from one pipeline.
The report names the engine and its precision.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from glass_ad.data.datasets import ImageDataset
from glass_ad.data.io import ImageReadError, check_bit_depth
from glass_ad.data.layouts import load_dataset
from glass_ad.evaluation.evaluate import StreamingEvaluator
from glass_ad.evaluation.metrics import threshold_stats
from glass_ad.model.checkpoint import Checkpoint, checkpoint_path
from glass_ad.model.chunking import choose_batch_chunk
from glass_ad.model.decision import Calibration
from glass_ad.model.glass_model import resolve_device
from glass_ad.safety import refuse_input_overlap, write_atomic

log = logging.getLogger(__name__)

def _collate(items):
    dropped = [item["dropped"] for item in items if "dropped" in item]
    keep = [item for item in items if "dropped" not in item]
    if not keep:
        return {"dropped": dropped}
    return {
        "dropped": dropped,
        "image": torch.stack([i["image"] for i in keep]),
        "mask": torch.stack([i["mask"] for i in keep]),
        "label": torch.tensor([i["label"] for i in keep]),
        "defect_type": [i["defect_type"] for i in keep],
        "path": [str(i["path"]) for i in keep],
    }


class _SkippingDataset(torch.utils.data.Dataset):
    """Wraps ImageDataset: an unreadable file is logged (one line) and returned as a ``dropped`` record
    (path, defect type, reason) that travels through the loader — also from worker processes."""

    def __init__(self, inner: ImageDataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        try:
            return self.inner[index]
        except ImageReadError as error:
            log.warning("skipped: %s", error)
            sample = self.inner.samples[index]
            return {
                "dropped": {
                    "path": str(sample.path),
                    "defect_type": sample.defect_type,
                    "label": int(sample.label),
                    "reason": error.reason if isinstance(error, ImageReadError) else str(error),
                    "file": str(error.path),
                }
            }


class TorchScorer:
    """The default engine of `test`: the checkpoint's model on uint8 B×H×W×3 batches, ``/255`` in float32 —
    what `inference.engines.InferenceGraph` computes (the torch engine of `glass predict`)."""

    name = "torch"
    precision = "fp32"
    in_graph = False

    def __init__(self, checkpoint: Checkpoint, device: torch.device, batch_size: int):
        self.device = device
        self.normalization = checkpoint.calibration.image_normalization
        self.model = checkpoint.build_model(device, fuse=True)
        choose_batch_chunk(self.model, device, batch_size)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).to(torch.float32) / 255.0
            out = self.model(x)
            scores = out.image_scores.float().cpu().numpy()
            return scores, np.asarray(self.normalization(scores), np.float32), out.anomaly_maps.float().cpu().numpy()


def to_uint8_batch(images: torch.Tensor) -> np.ndarray:
    """Preprocessed float images B×3×H×W in [0, 1] → the network input uint8 B×H×W×3, rounded as training
    (`training.preparation`) and `predict.Detector.prepare` round them."""
    return (images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def test(
    run_dir: str | Path,
    data_root: str | Path,
    *,
    category: str | None = None,
    layout: str = "auto",
    json_path: str | Path | None = None,
    report_dir: str | Path | None = None,
    batch_size: int = 8,
    workers: int = 0,
    device: str = "auto",
    progress: bool = True,
    pictures: bool = True,
    scores_csv: str | Path | None = None,
    echo: Callable[[str], None] = print,
    bit_depth: int | None = None,
    engine: Any = None,
) -> dict[str, Any]:
    """Evaluate the model in `run_dir` on `data_root/test`; returns (and optionally writes) the report.

    ``bit_depth`` overrides the input bit depth recorded in the checkpoint. Output paths that are the
    checkpoint or lie inside the data folder are refused (`safety.OutputError`) before any work.
    ``engine``: an engine of `inference.engines` (``create_engine``; uint8 B×H×W×3 network inputs →
    scores, normalised scores, maps) built for this checkpoint; default: the model in PyTorch. An engine
    whose graph resizes frames itself is given the H×W crops, which it maps onto themselves unless the
    model resizes with a margin (``resize`` > the input's shorter side): that is refused.
    """
    start = time.perf_counter()
    check_bit_depth(bit_depth)
    inputs = [checkpoint_path(run_dir), data_root]
    for output, what in ((json_path, "JSON report"), (report_dir if pictures else None, "picture folder"), (scores_csv, "scores file")):
        if output is not None:
            refuse_input_overlap(output, inputs, what=what)
    checkpoint = Checkpoint.load(run_dir)
    config = checkpoint.config
    if engine is None:
        engine = TorchScorer(checkpoint, resolve_device(device), batch_size)
    elif getattr(engine, "in_graph", False) and config.resize not in (None, min(config.input_shape)):
        raise ValueError(
            f"this {engine.name} model resizes whole frames itself (resize {config.resize} > input "
            f"{min(config.input_shape)}), so its maps are not on the test masks' grid; export it with "
            "`glass export RUN --no-preprocessing --out crops.onnx` and test that file"
        )
    bit_depth = bit_depth if bit_depth is not None else checkpoint.bit_depth
    dataset = load_dataset(data_root, layout, category=category)
    if not dataset.test:
        raise ValueError(f"{dataset.root} has no test images (expected test/good and test/<defect> folders)")
    preprocessor = checkpoint.preprocessor()
    loader = torch.utils.data.DataLoader(
        _SkippingDataset(ImageDataset(dataset.test, preprocessor, bit_depth=bit_depth)),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    evaluator = StreamingEvaluator(config.input_shape, expected=len(dataset.test))
    dropped: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc="testing", unit="batch", disable=not progress):
        dropped.extend(batch["dropped"])
        if "image" not in batch:
            continue
        scores, _, maps = engine(to_uint8_batch(batch["image"]))
        masks = batch["mask"][:, 0].numpy() > 0.5
        evaluator.add(
            np.asarray(scores, dtype=np.float64),
            np.asarray(maps, dtype=np.float32),
            batch["label"].numpy(),
            masks,
            batch["defect_type"],
            batch["path"],
        )
    if not len(evaluator):
        raise ValueError(
            f"none of the {len(dataset.test)} test images could be used (first: {dropped[0]['file']}: {dropped[0]['reason']})"
        )
    report: dict[str, Any] = evaluator.compute(pixel_metrics=dataset.has_masks)
    report["n_listed"] = len(dataset.test)
    report["n_dropped"] = len(dropped)
    report["dropped"] = dropped
    report["empty_test_folders"] = [str(folder) for folder in dataset.empty_test_folders]
    report["bit_depth"] = bit_depth
    if not dataset.has_masks:  # all-zero stand-in masks would make pixel metrics meaningless
        report["note"] = "no ground-truth masks: pixel metrics not computed"
    report["engine"] = engine.name
    report["precision"] = getattr(engine, "precision", "fp32")
    report["hypothesis"] = checkpoint.hypothesis
    report["backbone"] = checkpoint.backbone.name
    report["recipe"] = config.recipe
    report["image_size"] = config.image_size
    if config.image_shape is not None:
        report["input_shape"] = list(config.input_shape)
    report["test_wall_time_s"] = time.perf_counter() - start
    report["train_wall_time_s"] = checkpoint.training.wall_time_s
    report["epochs_run"] = checkpoint.training.epochs_run
    report["stopped_by"] = checkpoint.training.stopped_by
    report.update(threshold_report(checkpoint.calibration, evaluator.image_scores, evaluator.labels))

    if pictures and report_dir is not None:
        _write_pictures(report_dir, evaluator, preprocessor, checkpoint.calibration, bit_depth)
        report["pictures"] = str(report_dir)
    if scores_csv is not None:
        _write_scores_csv(scores_csv, evaluator)
    if json_path is not None:
        write_atomic(json_path, json.dumps(jsonable(report), indent=2))
    return report


def _promise(calibration: Calibration, scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """The stored estimate of the false-alarm rate beside the exact 95 % interval of the rate realised on
    the test set's normal images (model/operating_point.py)."""
    from glass_ad.model.operating_point import clopper_pearson

    normal = labels == 0
    alarms, count = int((scores[normal] >= threshold).sum()), int(normal.sum())
    estimate = calibration.false_alarm_estimate()
    return {
        "decision_line": calibration.decision_line(),
        "estimated_false_alarm_rate": None if estimate is None else estimate.estimate,
        "estimated_false_alarm_interval_95": None if estimate is None or estimate.low is None else [estimate.low, estimate.high],
        "realised_false_alarm_interval_95": list(clopper_pearson(alarms, count)) if count else None,
    }


def threshold_report(calibration: Calibration, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The report entries of the model's thresholds on test scores: ``stored_threshold`` (the false-alarm
    operating point — the fallback's for a checkpoint without calibration, ``source`` says which),
    ``normalized_scores``, and ``f1_threshold`` when `glass calibrate` added one."""
    far = calibration.operating_point("far")
    normal = labels == 0
    report: dict[str, Any] = {
        "stored_threshold": {
            "image_threshold": far.image_threshold,
            "pixel_threshold": far.pixel_threshold,
            "target_false_alarm_rate": calibration.target_false_alarm_rate,
            "source": calibration.method,
            **threshold_stats(scores, labels, far.image_threshold),
            **_promise(calibration, scores, labels, far.image_threshold),
        },
        "normalized_scores": {
            "normal_median": float(np.median(calibration.image_normalization(scores[normal]))) if normal.any() else None,
        },
    }
    if calibration.f1 is not None:
        # Second operating point from `glass calibrate` (labelled validation set), reported beside the first.
        f1 = calibration.operating_point("f1")
        report["f1_threshold"] = {
            "image_threshold": f1.image_threshold,
            "pixel_threshold": calibration.f1.pixel_threshold,
            "validation_images": calibration.f1.val_images,
            "source": calibration.f1.method,
            **threshold_stats(scores, labels, f1.image_threshold),
        }
    return report


def _write_pictures(report_dir, evaluator, preprocessor, calibration: Calibration, bit_depth=None) -> None:
    """Score histogram with the threshold, and a grid of the worst false positives / negatives."""
    from glass_ad.data.io import read_image
    from glass_ad.evaluation import visualize

    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    scores, labels = evaluator.image_scores, evaluator.labels
    threshold, pixel_threshold = calibration.image_threshold, calibration.pixel_threshold
    visualize.score_histogram(
        scores[labels == 0], scores[labels == 1], threshold, folder / "score_histogram.png", title="image scores (test)"
    )
    false_pos, false_neg = evaluator.worst_cases(threshold, k=6)
    panels = []
    maps = evaluator.maps
    vmin, vmax = calibration.heat_range()
    for kind, indices in (("false positive", false_pos), ("false negative", false_neg)):
        for i in indices:
            path = evaluator.paths[i]
            try:
                image = (preprocessor.image(read_image(path, bit_depth=bit_depth)) * 255).byte().permute(1, 2, 0).numpy()
            except ImageReadError:
                continue
            gt = evaluator.masks[i] if labels[i] == 1 else None
            panels.append(
                visualize.overlay_panel(
                    image,
                    maps[i],
                    vmin=vmin,
                    vmax=vmax,
                    threshold=calibration.region_level(maps[i], pixel_threshold),
                    colorbar=True,
                    title=f"{kind}: score {scores[i]:.3f} (thr {threshold:.3f}) {Path(path).name}",
                    gt_mask=gt,
                )
            )
    if panels:
        visualize.case_grid(panels, folder / "worst_cases.png", columns=1)


def _write_scores_csv(path: str | Path, evaluator: StreamingEvaluator) -> None:
    """One row per test image (path, defect_type, label, image score), for histograms across runs."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "defect_type", "label", "score"])
    for row in zip(evaluator.paths, evaluator.defect_types, evaluator.labels, evaluator.image_scores):
        writer.writerow([row[0], row[1], int(row[2]), f"{float(row[3]):.6g}"])
    write_atomic(path, buffer.getvalue())


def jsonable(value: Any) -> Any:
    """A report made JSON-safe: numpy numbers → Python numbers, nan/inf → None, paths → strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value



"""`glass test`: score a data set's test split with a trained model and report honest metrics.

The model, its thresholds and its score normalisation were all fixed at training time; the test set only
measures them. Memory stays flat in the number of test images apart from the metric inputs (one score
map per image at the model's resolution).

Nothing is dropped silently: every test image that could not be used (unreadable file, mask that does not
fit its image, …) is listed under ``dropped`` in the report with its reason and counted in ``n_dropped``,
and every test folder without images under ``empty_test_folders``; `glass test` then exits non-zero unless
``--allow-dropped``. Images deeper than 8 bits are read with the model's recorded bit depth.
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

from .calibration import normalize_scores
from .config import GlassConfig
from .datasets import ImageDataset, Preprocessor, load_dataset
from .evaluate import StreamingEvaluator
from .io import ImageReadError, check_bit_depth
from .metrics import threshold_stats
from .model import checkpoint_bit_depth, checkpoint_path, load_model, resolve_device
from .safety import refuse_input_overlap, write_atomic

log = logging.getLogger(__name__)


def _resolved_fit(config: GlassConfig) -> str:
    # Checkpoints store the fit chosen at training time; "auto" can only remain in hand-made configs.
    return "crop" if config.fit == "auto" else config.fit


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
) -> dict[str, Any]:
    """Evaluate the model in `run_dir` on `data_root/test`; returns (and optionally writes) the report.

    ``bit_depth`` overrides the input bit depth recorded in the checkpoint. Output paths that are the
    checkpoint or lie inside the data folder are refused (`safety.OutputError`) before any work.
    """
    start = time.perf_counter()
    check_bit_depth(bit_depth)
    inputs = [checkpoint_path(run_dir), data_root]
    for output, what in ((json_path, "JSON report"), (report_dir if pictures else None, "picture folder"), (scores_csv, "scores file")):
        if output is not None:
            refuse_input_overlap(output, inputs, what=what)
    torch_device = resolve_device(device)
    model, checkpoint = load_model(run_dir, torch_device, fuse=True)
    config = GlassConfig.from_dict(checkpoint["config"])
    bit_depth = bit_depth if bit_depth is not None else checkpoint_bit_depth(checkpoint)
    dataset = load_dataset(data_root, layout, category=category)
    if not dataset.test:
        raise ValueError(f"{dataset.root} has no test images (expected test/good and test/<defect> folders)")
    preprocessor = Preprocessor(config.image_size, config.resize, _resolved_fit(config))
    loader = torch.utils.data.DataLoader(
        _SkippingDataset(ImageDataset(dataset.test, preprocessor, bit_depth=bit_depth)),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    evaluator = StreamingEvaluator(config.image_size, expected=len(dataset.test))
    dropped: list[dict[str, Any]] = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc="testing", unit="batch", disable=not progress):
            dropped.extend(batch["dropped"])
            if "image" not in batch:
                continue
            out = model(batch["image"].to(torch_device))
            masks = batch["mask"][:, 0].numpy() > 0.5
            evaluator.add(
                out.image_scores.cpu().numpy(),
                out.anomaly_maps.cpu().numpy().astype(np.float32),
                batch["label"].numpy(),
                masks,
                batch["defect_type"],
                batch["path"],
            )
    if not len(evaluator):
        raise ValueError(
            f"none of the {len(dataset.test)} test images could be used (first: {dropped[0]['file']}: {dropped[0]['reason']})"
        )
    report: dict[str, Any] = evaluator.compute()
    report["n_listed"] = len(dataset.test)
    report["n_dropped"] = len(dropped)
    report["dropped"] = dropped
    report["empty_test_folders"] = [str(folder) for folder in dataset.empty_test_folders]
    report["bit_depth"] = bit_depth
    if not dataset.has_masks:  # all-zero stand-in masks would make pixel metrics meaningless
        for key in ("pixel_auroc", "pixel_ap", "aupro"):
            report[key] = float("nan")
        report["note"] = "no ground-truth masks: pixel metrics not computed"
    report["hypothesis"] = checkpoint.get("hypothesis")
    report["backbone"] = checkpoint["backbone"]["name"]
    report["recipe"] = config.recipe
    report["image_size"] = config.image_size
    report["test_wall_time_s"] = time.perf_counter() - start
    report["train_wall_time_s"] = checkpoint.get("training", {}).get("wall_time_s")
    report["epochs_run"] = checkpoint.get("training", {}).get("epochs_run")

    calibration = checkpoint.get("calibration") or {}
    scores = evaluator.image_scores
    labels = evaluator.labels
    if "image_threshold" in calibration:
        threshold = calibration["image_threshold"]
        stats = threshold_stats(scores, labels, threshold)
        report["stored_threshold"] = {
            "image_threshold": threshold,
            "target_false_alarm_rate": calibration.get("target_false_alarm_rate"),
            "source": calibration.get("method"),
            **stats,
        }
        report["normalized_scores"] = {
            "normal_median": float(np.median(normalize_scores(scores[labels == 0], calibration["image_normalization"])))
            if (labels == 0).any()
            else None,
        }
    if calibration.get("f1_image_threshold") is not None:
        # Second operating point from `glass calibrate` (labelled validation set), reported beside the first.
        report["f1_threshold"] = {
            "image_threshold": calibration["f1_image_threshold"],
            "pixel_threshold": calibration.get("f1_pixel_threshold"),
            "validation_images": calibration.get("f1_val_images"),
            "source": calibration.get("f1_method"),
            **threshold_stats(scores, labels, calibration["f1_image_threshold"]),
        }

    if pictures and report_dir is not None:
        _write_pictures(report_dir, evaluator, preprocessor, calibration, model, torch_device, bit_depth)
        report["pictures"] = str(report_dir)
    if scores_csv is not None:
        _write_scores_csv(scores_csv, evaluator)
    if json_path is not None:
        write_atomic(json_path, json.dumps(_jsonable(report), indent=2))
    return report


def _write_pictures(report_dir, evaluator, preprocessor, calibration, model, device, bit_depth=None) -> None:
    """Score histogram with the threshold, and a grid of the worst false positives / negatives."""
    from . import visualize
    from .io import read_image

    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    scores, labels = evaluator.image_scores, evaluator.labels
    threshold = calibration.get("image_threshold")
    visualize.score_histogram(
        scores[labels == 0], scores[labels == 1], threshold, folder / "score_histogram.png", title="image scores (test)"
    )
    if threshold is None:
        return
    false_pos, false_neg = evaluator.worst_cases(threshold, k=6)
    panels = []
    maps = evaluator.maps
    vmin, vmax = _heat_range(calibration, maps[: len(scores)])
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
                    threshold=calibration.get("pixel_threshold"),
                    colorbar=True,
                    title=f"{kind}: score {scores[i]:.3f} (thr {threshold:.3f}) {Path(path).name}",
                    gt_mask=gt,
                )
            )
    if panels:
        visualize.case_grid(panels, folder / "worst_cases.png", columns=1)


def _heat_range(calibration: dict, maps: np.ndarray) -> tuple[float, float]:
    """The model's one colour scale (`visualize.heat_range`, as `glass predict`); without a pixel
    threshold, 0 to the 99.9 % quantile of the maps."""
    from .calibration import resolve_calibration
    from .visualize import heat_range

    if calibration and calibration.get("pixel_threshold") is not None:
        return heat_range(resolve_calibration(calibration))
    return 0.0, max(float(np.quantile(maps, 0.999)) if len(maps) else 1.0, 1e-6)


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


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value

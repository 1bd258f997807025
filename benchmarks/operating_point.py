"""Does the stored OK/NG decision keep its promise, and does its region show where the defect is?

A measurement of a trained run on its test split; nothing here feeds back into the model or its
thresholds. For the run's stored false-alarm operating point (and, for comparison, the older rules
re-computed from the run's own held-out normal images, whose paths the checkpoint records):

* **decision**: the realised false-alarm rate on ``test/good`` with its exact (Clopper–Pearson) 95 %
  interval, the recall on the defective images (per defect type too), against the stored estimate and its
  95 % interval (`glass_ad.model.operating_point`), and whether the promise holds (realised rate within
  2× of the target, or at most the stored interval's upper end);
* **region** (at the model's input resolution, masks resized with the images): for each rule, the mean
  per-region overlap (the share of each ground-truth region's pixels inside the predicted region, PRO-style,
  at this one threshold), the share of ground-truth regions touched at all, the mean IoU and region
  precision on defective images, the share of defective images whose map peak lies in the mask, and the
  mean region area share on good and on defective images (with the share of good images with any region).

Image rules compared: ``stored``, ``order-statistic`` (the older rule: the (1 − target) quantile of the
held-out image scores) and ``tail-model-refit`` (the current rule fitted on the held-out images alone, so
that a run trained before it is measured under it too). Rules compared for the region: ``stored`` (the checkpoint's rule), ``pixel-quantile`` (the older rule: the
(1 − target) quantile of the held-out normal pixels), ``map-maximum`` (one level per model: the Gumbel tail
model's predictive threshold on the held-out normal images' map maxima) and ``half-height`` (the current
rule: that level raised half-way to each image's own peak).

    python benchmarks/operating_point.py runs/mtd ../shared/data/mtd --json op_mtd.json --threads 2

The stored rule's figures also go, one row per run, to `results/operating_point.csv` (`--results`,
`benchmarks/record.py`); the whole measurement to `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from glass_ad.config import GlassConfig
from glass_ad.data.datasets import ImageDataset
from glass_ad.data.layouts import Sample, load_dataset
from glass_ad.evaluation.calibration import readable_batches
from glass_ad.model.checkpoint import Checkpoint
from glass_ad.model.operating_point import (
    REGION_HEIGHT,
    clopper_pearson,
    estimate_threshold,
    fit_threshold,
    region_threshold,
)
from record import add_results_option, record_rows


@torch.no_grad()
def score(model, samples: list[Sample], preprocessor, bit_depth, batch_size: int, with_masks: bool, label: str):
    """Image scores, maps (N×H×W float32) and masks (bool) of samples; unreadable files are listed."""
    dataset = ImageDataset(samples, preprocessor, bit_depth=bit_depth)
    scores, maps, masks, kept, dropped = [], [], [], [], []
    start = time.perf_counter()
    for batch in readable_batches(dataset, batch_size, dropped):
        images = torch.stack([(item["image"] * 255.0).round().to(torch.uint8) for item in batch])
        out = model(images.float() / 255.0)
        scores.extend(out.image_scores.double().tolist())
        maps.append(out.anomaly_maps.float().numpy())
        if with_masks:
            masks.append(torch.stack([item["mask"][0] for item in batch]).numpy() > 0.5)
        kept.extend(item["index"] for item in batch)
    print(f"  scored {len(scores)} {label} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    stacked = np.concatenate(maps) if maps else np.zeros((0, 1, 1), np.float32)
    stacked_masks = np.concatenate(masks) if masks else None
    return np.asarray(scores), stacked, stacked_masks, kept, dropped


def region_quality(maps: np.ndarray, masks: np.ndarray, labels: np.ndarray, threshold: float, height: float | None = None) -> dict:
    """Region measures of ``maps >= region_threshold(peak, threshold, height)`` (per image) against the masks
    (defective images: label 1)."""
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    levels = np.array([region_threshold(float(p), threshold, height) for p in peaks], dtype=np.float64)
    regions = maps >= levels[:, None, None].astype(maps.dtype)
    area = regions.reshape(len(regions), -1).mean(axis=1)
    good, bad = labels == 0, labels == 1
    overlaps, touched, ious, precisions = [], [], [], []
    for region, mask in zip(regions[bad], masks[bad]):
        if not mask.any():
            continue
        components, count = ndimage.label(mask, structure=np.ones((3, 3)))
        for k in range(1, count + 1):
            part = components == k
            covered = float(region[part].mean())
            overlaps.append(covered)
            touched.append(covered > 0)
        union = np.logical_or(region, mask).sum()
        ious.append(float(np.logical_and(region, mask).sum() / union) if union else 0.0)
        if region.any():
            precisions.append(float(mask[region].mean()))
    return {
        "threshold": float(threshold),
        "region_height": height,
        "per_region_overlap": float(np.mean(overlaps)) if overlaps else None,
        "regions_touched": float(np.mean(touched)) if touched else None,
        "ground_truth_regions": len(overlaps),
        "mean_iou_defective": float(np.mean(ious)) if ious else None,
        "region_precision_defective": float(np.mean(precisions)) if precisions else None,
        "defective_with_region": float((area[bad] > 0).mean()) if bad.any() else None,
        "area_share_defective": float(area[bad].mean()) if bad.any() else None,
        "area_share_good": float(area[good].mean()) if good.any() else None,
        "good_with_region": float((area[good] > 0).mean()) if good.any() else None,
    }


def decision(scores: np.ndarray, labels: np.ndarray, types: list[str], threshold: float) -> dict:
    good, bad = labels == 0, labels == 1
    alarms = int((scores[good] >= threshold).sum())
    low, high = clopper_pearson(alarms, int(good.sum()))
    per_type = {}
    for kind in sorted({t for t, label in zip(types, labels) if label == 1}):
        chosen = np.array([t == kind for t in types]) & bad
        per_type[kind] = float((scores[chosen] >= threshold).mean())
    return {
        "threshold": float(threshold),
        "false_alarms": alarms,
        "good_images": int(good.sum()),
        "false_alarm_rate": alarms / max(int(good.sum()), 1),
        "false_alarm_interval_95": [low, high],
        "recall": float((scores[bad] >= threshold).mean()) if bad.any() else None,
        "defective_images": int(bad.sum()),
        "recall_per_type": per_type,
    }


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--category", default=None)
    add_results_option(parser, "operating_point")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from glass_ad.allocator import keep_freed_memory

    keep_freed_memory()
    checkpoint = Checkpoint.load(args.run)
    calibration = checkpoint.calibration
    target = calibration.target_false_alarm_rate or checkpoint.config.target_false_alarm_rate
    model = checkpoint.build_model("cpu", fuse=True)
    preprocessor = checkpoint.preprocessor()
    test = load_dataset(args.data, category=args.category).test

    # The run's own held-out normal images (never trained on): the older rules, re-computed.
    holdout_paths = [Path(p) for p in checkpoint.training.holdout_paths if Path(p).is_file()]
    older: dict = {}
    if holdout_paths:
        h_scores, h_maps, _, _, _ = score(
            model, [Sample(p, 0, "good") for p in holdout_paths], preprocessor, checkpoint.bit_depth, args.batch_size, False, "held-out"
        )
        older = {
            "image_order_statistic": float(np.quantile(h_scores, 1 - target, method="higher")),
            "pixel_quantile": float(np.quantile(h_maps.ravel(), 1 - target, method="higher")),
            "map_maximum_refit": fit_threshold(h_maps.reshape(len(h_maps), -1).max(axis=1), target).threshold,
            "tail_model_refit": fit_threshold(h_scores, target),
        }

    scores, maps, masks, kept, dropped = score(model, test, preprocessor, checkpoint.bit_depth, args.batch_size, True, "test")
    labels = np.array([test[i].label for i in kept])
    types = [test[i].defect_type for i in kept]
    estimate = calibration.false_alarm_estimate()
    stored = decision(scores, labels, types, calibration.image_threshold)
    realised = stored["false_alarm_rate"]
    promise = {
        "within_2x_target": realised <= 2 * target,
        "within_stored_interval": estimate is not None and estimate.high is not None and realised <= estimate.high + 1e-12,
    }
    promise["intervals_overlap"] = (
        estimate is not None and estimate.low is not None
        and stored["false_alarm_interval_95"][0] <= estimate.high and estimate.low <= stored["false_alarm_interval_95"][1]
    )  # fmt: skip
    promise["kept"] = promise["within_2x_target"] or promise["within_stored_interval"]
    result = {
        "run": str(args.run),
        "data": str(args.data),
        "target_false_alarm_rate": target,
        "stored_decision_line": calibration.decision_line(),
        "stored_estimate": None if estimate is None else {
            "estimate": estimate.estimate,
            "interval_95": [estimate.low, estimate.high],
            "images": estimate.images,
            "model": estimate.model,
            "model_free_upper_95": estimate.model_free_upper,
        },
        "decision": {"stored": stored},
        "promise": promise,
        "region": {"stored": region_quality(maps, masks, labels, calibration.pixel_threshold, calibration.region_height)},
        "dropped": dropped,
    }
    result["region_per_type"] = {
        kind: region_quality(
            maps[chosen], masks[chosen], labels[chosen], calibration.pixel_threshold, calibration.region_height
        )
        for kind in sorted({t for t, label in zip(types, labels) if label == 1})
        for chosen in [np.array([t == kind for t in types])]
    }  # fmt: skip
    if older:
        result["decision"]["order-statistic"] = decision(scores, labels, types, older["image_order_statistic"])
        # The current rule re-fitted on the held-out images alone (what `glass train` stores now; for a run
        # trained before it, or one whose evidence `glass calibrate --normals` extended, this shows the difference).
        refit = older["tail_model_refit"]
        result["decision"]["tail-model-refit"] = decision(scores, labels, types, refit.threshold)
        result["decision"]["tail-model-refit"]["estimate"] = [refit.estimate, refit.low, refit.high]
        result["decision"]["tail-model-refit"]["line"] = refit.line()
        realised_refit = result["decision"]["tail-model-refit"]["false_alarm_rate"]
        result["promise_refit"] = {
            "within_2x_target": realised_refit <= 2 * target,
            "within_interval": refit.high is not None and realised_refit <= refit.high + 1e-12,
        }
        result["region"]["pixel-quantile"] = region_quality(maps, masks, labels, older["pixel_quantile"])
        result["region"]["map-maximum"] = region_quality(maps, masks, labels, older["map_maximum_refit"])
        result["region"]["map-max+half"] = region_quality(maps, masks, labels, older["map_maximum_refit"], REGION_HEIGHT)
        result["region"]["pixel-q+half"] = region_quality(maps, masks, labels, older["pixel_quantile"], REGION_HEIGHT)
        if estimate is not None:
            again = estimate_threshold(older["image_order_statistic"], [s for s in calibration.holdout_image_scores], target)
            result["decision"]["order-statistic"]["estimate_under_the_model"] = [again.estimate, again.low, again.high]

    print(calibration.decision_line())
    print(f"\nimage decision (target {pct(target)} % false alarms) on {stored['good_images']} good / {stored['defective_images']} defective test images")
    print(f"{'rule':<17} {'threshold':>9} {'false alarms':>13} {'95 % interval':>16} {'recall':>7}")
    for name, row in result["decision"].items():
        low, high = row["false_alarm_interval_95"]
        print(
            f"{name:<17} {row['threshold']:>9.4f} {pct(row['false_alarm_rate']):>11} % {pct(low):>7}–{pct(high):>5} % "
            f"{pct(row['recall']):>6} %"
        )
    if "tail-model-refit" in result["decision"]:
        print(f"tail-model-refit: {result['decision']['tail-model-refit']['line']}")
        print(f"promise of the refit kept: {result['promise_refit']}")
    print(f"promise kept: {promise['kept']} (within 2× target: {promise['within_2x_target']}, at most the stored interval's upper end: {promise['within_stored_interval']}; "
          f"the realised rate's interval meets it: {promise['intervals_overlap']})")
    print("\nregion (% ; per-region overlap, regions touched, IoU and precision on defective images; area shares)")
    print(f"{'rule':<16} {'threshold':>9} {'overlap':>8} {'touched':>8} {'IoU':>6} {'prec':>6} {'area bad':>9} {'area good':>10} {'good w/ region':>15}")
    for name, row in result["region"].items():
        print(
            f"{name:<16} {row['threshold']:>9.4f} {pct(row['per_region_overlap']):>8} {pct(row['regions_touched']):>8} "
            f"{pct(row['mean_iou_defective']):>6} {pct(row['region_precision_defective']):>6} {pct(row['area_share_defective']):>9} "
            f"{pct(row['area_share_good']):>10} {pct(row['good_with_region']):>15}"
        )
    print("stored rule per defect type: " + "; ".join(
        f"{kind} IoU {pct(row['mean_iou_defective'])} area {pct(row['area_share_defective'])}"
        for kind, row in result["region_per_type"].items()
    ))  # fmt: skip
    bad = labels == 1
    peaks = [bool(m.reshape(-1)[int(np.argmax(a))]) for a, m in zip(maps[bad], masks[bad]) if m.any()]
    result["peak_in_mask_defective"] = float(np.mean(peaks)) if peaks else None
    print(f"map peak inside the mask on {pct(result['peak_in_mask_defective'])} % of defective images")
    if dropped:
        print(f"{len(dropped)} test images could not be read (listed in the JSON)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    record_rows(args.results, [summary_row(result, checkpoint.config)])


def summary_row(result: dict, config: GlassConfig) -> dict:
    """One results row: the stored rule's decision on the test split and its region, in %."""
    stored, region, estimate = result["decision"]["stored"], result["region"]["stored"], result["stored_estimate"] or {}
    low, high = estimate.get("interval_95", [None, None])

    def percent(value: float | None) -> float | str:
        return "" if value is None else round(100 * value, 2)

    return {
        "data": Path(result["data"]).name,
        "recipe": config.recipe,
        "score": config.score,
        "seed": config.seed,
        "run": Path(result["run"]).name,
        "target_false_alarm_rate": percent(result["target_false_alarm_rate"]),
        "estimate": percent(estimate.get("estimate")),
        "estimate_low": percent(low),
        "estimate_high": percent(high),
        "holdout_images": estimate.get("images", ""),
        "good_images": stored["good_images"],
        "false_alarms": stored["false_alarms"],
        "false_alarm_rate": percent(stored["false_alarm_rate"]),
        "false_alarm_low": percent(stored["false_alarm_interval_95"][0]),
        "false_alarm_high": percent(stored["false_alarm_interval_95"][1]),
        "defective_images": stored["defective_images"],
        "recall": percent(stored["recall"]),
        "promise_kept": result["promise"]["kept"],
        "region_iou": percent(region["mean_iou_defective"]),
        "region_overlap": percent(region["per_region_overlap"]),
        "region_precision": percent(region["region_precision_defective"]),
    }


if __name__ == "__main__":
    main()

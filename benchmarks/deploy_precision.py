"""Accuracy and speed of the deployment formats, side by side in one run.

    python benchmarks/deploy_precision.py                       # tiny demo model (trained here, ~1 min)
    python benchmarks/deploy_precision.py RUN DATA [--threads N] [--calibration-images 64] [--json out.json]

One row per engine goes to `results/deploy_precision.csv` (`--results`; `benchmarks/record.py`).

For the model of RUN (or a tiny one trained on generated demo data) and the test split of DATA, each
engine scores every test image: PyTorch (the reference), ONNX Runtime fp32, OpenVINO fp32, fp16 and int8
(NNCF, calibrated on normal training images only). Reported per engine: decision agreement with PyTorch,
max |score difference|, image AUROC, and throughput (images/s, whole frames in, batch 8, after a warm-up;
OpenVINO runs with INFERENCE_PRECISION_HINT=f32). Needs ``pip install "glass-ad[openvino]"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from record import add_results_option, record_rows


def _tiny_run(folder: Path) -> tuple[Path, Path]:
    from glass_ad.config import make_config
    from glass_ad.data.demo_data import make_demo_dataset
    from glass_ad.training.trainer import train

    data = make_demo_dataset(folder / "data", n_train=48, n_test_good=12, n_test_defect=12, size=96)
    config = make_config("fast", epochs=3, image_size=96, backbone="efficientnet_lite0", early_stopping=False, num_threads=1)
    train(data, folder / "run", config, progress=False, echo=lambda _: None)
    return folder / "run", data


def _throughput(runtime, frames: np.ndarray, repeats: int = 3) -> float:
    runtime.run(frames)
    start = time.perf_counter()
    for _ in range(repeats):
        runtime.run(frames)
    return repeats * len(frames) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="run directory (default: train a tiny demo model)")
    parser.add_argument("data", nargs="?", help="data set with a test split (and train/good for int8 calibration)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    add_results_option(parser, "deploy_precision")
    args = parser.parse_args()

    import torch
    from sklearn.metrics import roc_auc_score

    from glass_ad.data.layouts import load_dataset
    from glass_ad.inference.export import export_onnx
    from glass_ad.inference.openvino_export import export_openvino
    from glass_ad.inference.predict import Detector
    from glass_ad.inference.runtime import Runtime

    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="glass-deploy-bench-"))
    if args.run:
        run, data = Path(args.run), Path(args.data)
    else:
        run, data = _tiny_run(scratch)
    test = load_dataset(data).test
    paths, labels = [s.path for s in test], np.array([s.label for s in test])

    reference = Detector.load(run, device="cpu", engine="torch")
    ref = reference(paths)
    ref_scores = np.array([p.score for p in ref])
    engines = {"onnx fp32": Runtime(export_onnx(run, scratch / "model.onnx").path, threads=args.threads)}
    for precision in ("fp32", "fp16", "int8"):
        start = time.perf_counter()
        result = export_openvino(
            run, scratch / f"model_{precision}.xml", precision=precision,
            calibration=data if precision == "int8" else None, calibration_limit=args.calibration_images,
        )  # fmt: skip
        print(f"openvino {precision}: exported in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        engines[f"openvino {precision}"] = Runtime(result.path, threads=args.threads)

    shapes = {}
    for p in ref:
        shapes.setdefault(p.anomaly_map.shape, []).append(p.path)
    frame_paths = max(shapes.values(), key=len)[:8]
    from glass_ad.data.io import read_image

    frames = np.stack([read_image(p) for p in frame_paths])
    rows = [{
        "engine": "torch fp32", "agreement": 1.0, "max_score_diff": 0.0,
        "image_auroc": float(roc_auc_score(labels, ref_scores)) if len(set(labels)) == 2 else None,
        "images_per_s": None,
    }]  # fmt: skip
    for name, engine in engines.items():
        preds = engine(paths)
        scores = np.array([p.score for p in preds])
        rows.append({
            "engine": name,
            "agreement": float(np.mean([a.decision == b.decision for a, b in zip(ref, preds)])),
            "max_score_diff": float(np.abs(scores - ref_scores).max()),
            "image_auroc": float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None,
            "images_per_s": _throughput(engine, frames),
        })  # fmt: skip
    header = f"{'engine':<15} {'decisions = torch':>17} {'max |Δscore|':>13} {'image AUROC':>12} {'img/s':>8}"
    print(f"{len(paths)} test images, frames {frames.shape[1]}x{frames.shape[2]} (batch {len(frames)}) for the speed")
    print(header)
    for row in rows:
        auroc = f"{100 * row['image_auroc']:.1f}" if row["image_auroc"] is not None else "-"
        speed = f"{row['images_per_s']:.1f}" if row["images_per_s"] else "-"
        print(f"{row['engine']:<15} {100 * row['agreement']:>16.1f}% {row['max_score_diff']:>13.2e} {auroc:>12} {speed:>8}")
    if args.json:
        args.json.write_text(json.dumps({"run": str(run), "data": str(data), "rows": rows}, indent=2))
    setting = {"data": data.name, "recipe": reference.checkpoint.config.recipe, "run": run.name, "test_images": len(paths)}
    record_rows(args.results, [
        {
            **setting, "engine": row["engine"], "decisions_equal_torch": round(100 * row["agreement"], 1),
            "max_score_diff": f"{row['max_score_diff']:.2e}",
            "image_auroc": round(100 * row["image_auroc"], 1) if row["image_auroc"] is not None else "",
            "images_per_s": round(row["images_per_s"], 1) if row["images_per_s"] else "",
        }
        for row in rows
    ])  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Elongated products: a square input (the strip squashed) vs the rectangular input that keeps its aspect
ratio, on the demo set turned into 200×500 strips (every image and mask resized; thin scratches stay thin
along the strip). Same seed, EfficientNet-Lite0 at 128 px, 8 epochs.

    python benchmarks/rectangular_input.py [WORK_DIR]

Rows go to `results/rectangular_input.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from record import RESULTS, record_rows

from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset, make_strip_dataset
from glass_ad.evaluation.tester import test
from glass_ad.training import train


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="glass-rect-"))
    square = make_demo_dataset(work / "square", n_train=60, n_test_good=20, n_test_defect=20, size=256)
    data = make_strip_dataset(square, work / "strips" / "strip")
    print("input | train s | image AUROC | pixel AUROC | AUPRO")
    rows = []
    for name, fit in (("128×128 (squashed, --fit stretch)", "stretch"), ("auto: 128×320 (aspect kept)", "auto")):
        config = make_config("fast", backbone="efficientnet_lite0", image_size=128, epochs=8, early_stopping=False,
                             seed=0, fit=fit, num_threads=2)  # fmt: skip
        start = time.perf_counter()
        run = work / f"run-{fit}"
        train(data, run, config, progress=False, echo=lambda _: None)
        seconds = time.perf_counter() - start
        m = test(run, data, json_path=None, report_dir=None, progress=False, pictures=False)
        print(f"{name} | {seconds:.0f} | {100 * m['image_auroc']:.1f} | {100 * m['pixel_auroc']:.1f} | {100 * m['aupro']:.1f}")
        rows.append({
            "data": "generated strips", "recipe": config.recipe, "seed": config.seed, "input": name, "train_s": round(seconds),
            **{metric: round(100 * m[metric], 1) for metric in ("image_auroc", "pixel_auroc", "aupro")},
        })  # fmt: skip
    record_rows(RESULTS / "rectangular_input.csv", rows)


if __name__ == "__main__":
    main()

"""Cost of the pixel metrics over a whole test set: one ranking (``PixelRanking``) vs scikit-learn.

Builds float32 maps and bool masks shaped like a test set (random scores, rectangular defects on two
images in three), then times pixel AUROC and AP computed by scikit-learn over every pixel and by one
``PixelRanking`` (which also gives AUPRO), and prints the extra memory each needs beyond the stored maps
(peak of numpy's allocations, ``tracemalloc``). The values must agree.

    python benchmarks/pixel_metrics_cost.py [--images 578] [--shape 288x720]

Rows go to `results/pixel_metrics_cost.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from record import add_results_option, record_rows
from sklearn.metrics import average_precision_score, roc_auc_score

from glass_ad.evaluation.metrics import PixelRanking


def test_set(images: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    maps = rng.random((images, height, width), dtype=np.float32)
    masks = np.zeros((images, height, width), dtype=bool)
    for i in range(images):
        if i % 3:
            y, x = rng.integers(0, height - 40), rng.integers(0, width - 100)
            masks[i, y : y + rng.integers(4, 40), x : x + rng.integers(4, 100)] = True
    maps[masks] += 0.3
    return maps, masks


def measured(function):
    tracemalloc.start()
    start = time.perf_counter()
    values = function()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return values, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=578)
    parser.add_argument("--shape", default="288x720", help="HxW of each map")
    add_results_option(parser, "pixel_metrics_cost")
    args = parser.parse_args()
    height, width = (int(v) for v in args.shape.lower().split("x"))
    maps, masks = test_set(args.images, height, width)
    pixels = maps.size
    print(f"{args.images} maps of {height}×{width}: {pixels / 1e6:.0f} M pixels, stored maps + masks "
          f"{(maps.nbytes + masks.nbytes) / 1e9:.2f} GB")  # fmt: skip

    def with_sklearn():
        return roc_auc_score(masks.ravel(), maps.ravel()), average_precision_score(masks.ravel(), maps.ravel())

    def with_ranking():
        ranking = PixelRanking(maps, masks)
        return ranking.auroc(), ranking.ap(), ranking.aupro()

    (auroc, ap), seconds, peak = measured(with_sklearn)
    setting = {"data": "synthetic maps", "recipe": "", "images": args.images, "shape": args.shape}
    rows = [{**setting, "method": "scikit-learn (AUROC + AP)", "seconds": round(seconds, 1), "extra_gb": round(peak / 1e9, 2)}]
    print(f"scikit-learn, pixel AUROC + AP:       {seconds:6.1f} s, {peak / 1e9:5.2f} GB extra "
          f"({peak / pixels:.0f} bytes a pixel)  AUROC {auroc:.12f}  AP {ap:.12f}")  # fmt: skip
    (r_auroc, r_ap, r_aupro), seconds, peak = measured(with_ranking)
    rows.append({**setting, "method": "PixelRanking (AUROC + AP + AUPRO)", "seconds": round(seconds, 1), "extra_gb": round(peak / 1e9, 2)})
    print(f"PixelRanking, pixel AUROC + AP + AUPRO: {seconds:4.1f} s, {peak / 1e9:5.2f} GB extra "
          f"({peak / pixels:.0f} bytes a pixel)  AUROC {r_auroc:.12f}  AP {r_ap:.12f}  AUPRO {r_aupro:.4f}")  # fmt: skip
    if abs(auroc - r_auroc) > 1e-9 or abs(ap - r_ap) > 1e-9:
        raise SystemExit("the two disagree")
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

"""How far does a synthetic anomaly move the patch features *around* its mask? Validation images only.

For the held-out normal training images of a run (its own split and settings), each image's features are
compared with those of the same image after LAS (and after the unseen family): the displacement
‖E(x+)ₚ − E(x)ₚ‖ of every patch p, in units of the normal spacing (the unit GAS's r1 = 1, r2 = 2 are in),
grouped by the patch's Chebyshev distance on the patch grid to the nearest anomalous patch (0: inside).
The reference labels every patch outside the mask normal; where that ring moves as far as GAS's
anomalies (1–2 spacings), the two branches teach the discriminator opposite things
(`--las-ignore-margin`, docs/method.md). No test image is read.

    python benchmarks/las_ring_displacement.py RUN DATA_DIR [--max-distance 6]

Rows go to `results/las_ring_displacement.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from record import add_results_option, record_rows

from glass_ad.training.validation import rebuild_run_validation


def distance_to_mask(labels: torch.Tensor, grid_shape: tuple[int, int], max_distance: int) -> torch.Tensor:
    """B×P Chebyshev distance (in patches) of every patch to the nearest label-1 patch; beyond
    `max_distance` (or no anomalous patch): max_distance + 1."""
    grid = labels.view(len(labels), 1, *grid_shape).float()
    distance = torch.full_like(grid, float(max_distance + 1))
    for d in range(max_distance, -1, -1):  # the smallest d whose neighbourhood reaches the mask wins
        near = F.max_pool2d(grid, 2 * d + 1, stride=1, padding=d) > 0.5
        distance[near] = float(d)
    return distance.flatten(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("data_dir")
    parser.add_argument("--max-distance", type=int, default=6)
    add_results_option(parser, "las_ring_displacement")
    args = parser.parse_args()

    rebuilt = rebuild_run_validation(args.run, args.data_dir)
    val, grid_shape = rebuilt.val, rebuilt.synthesis.las.grid_shape
    config = rebuilt.images.config
    setting = {"data": Path(args.data_dir).name, "recipe": config.recipe, "seed": config.seed, "run": Path(args.run).name}
    records = []
    print(f"{args.run}: patch displacement in normal spacings (median / 90 %) by distance to the mask, "
          f"{len(val.normal)} held-out images")  # fmt: skip
    print(f"{'distance':>9} {'LAS':>18} {'unseen family':>18}")
    rows = {}
    for name, features, labels in (("LAS", val.anomalous, val.labels), ("unseen", val.unseen, val.unseen_labels)):
        # The validation features are scaled already (feature_scale), so a norm is in spacings.
        moved = (features.float() - val.normal.float()).norm(dim=-1)
        rows[name] = (moved, distance_to_mask(labels, grid_shape, args.max_distance))
    for d in range(args.max_distance + 2):
        cells = []
        label = f"> {args.max_distance}" if d > args.max_distance else str(d)
        for family, (moved, distance) in rows.items():
            picked = moved[distance == d].numpy()
            cells.append(f"{np.median(picked):.2f} / {np.quantile(picked, 0.9):.2f} ({len(picked)})" if len(picked) else "-")
            if len(picked):
                records.append({**setting, "family": family, "distance_to_mask": label, "patches": len(picked),
                                "displacement_median": round(float(np.median(picked)), 2),
                                "displacement_q90": round(float(np.quantile(picked, 0.9)), 2)})  # fmt: skip
        print(f"{label:>9} {cells[0]:>18} {cells[1]:>18}")
    record_rows(args.results, records)


if __name__ == "__main__":
    main()

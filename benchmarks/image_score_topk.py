"""Is the maximum the best image score? Validation only: the image AUROC of a trained run's model on its own
validation split (held-out normal training images, the same images with LAS anomalies and with the unseen
family), with the image score taken as the mean of the k highest patch logits (k = 1 is the reference's
maximum), and as the maximum of the patch-score grid smoothed by a Gaussian of σ patches (σ = 0: the
reference's unsmoothed maximum). No test image is read.

    python benchmarks/image_score_topk.py RUN DATA_DIR [--k 1 3 5 10 20] [--sigma 0 1 2]

Rows go to `results/image_score_topk.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from record import add_results_option, record_rows
from torchvision.transforms.functional import gaussian_blur

from glass_ad.evaluation.metrics import image_auroc
from glass_ad.training.validation import rebuild_run_validation, score_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("data_dir")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 5, 10, 20])
    parser.add_argument("--sigma", type=float, nargs="+", default=[0, 1, 2])
    add_results_option(parser, "image_score_topk")
    args = parser.parse_args()

    # The run's own holdout (same seed and settings), its LAS and unseen families: what selection saw.
    rebuilt = rebuild_run_validation(args.run, args.data_dir)
    model, synthesis, val = rebuilt.model, rebuilt.synthesis, rebuilt.val

    families = {"normal": val.normal, "las": val.anomalous, "unseen": val.unseen}
    probabilities = {name: score_features(model, features).float() for name, features in families.items()}
    # Logits rank the top-k means without ties at 0 or 1.
    normal, las, unseen = (torch.logit(p.double().clamp(1e-12, 1 - 1e-12)) for p in probabilities.values())
    labels = np.r_[np.zeros(len(normal)), np.ones(len(las))]
    config = rebuilt.images.config
    setting = {"data": Path(args.data_dir).name, "recipe": config.recipe, "seed": config.seed, "run": Path(args.run).name}
    rows = []
    print(f"{args.run}: validation image AUROC with the mean of the top-k patch logits")
    print(f"{'k':>4} {'LAS family':>11} {'unseen family':>14}")
    for k in args.k:
        def top(scores: torch.Tensor) -> np.ndarray:
            return scores.topk(min(k, scores.shape[1]), dim=1).values.mean(1).numpy()

        las_auroc, unseen_auroc = (image_auroc(np.r_[top(normal), top(s)], labels) for s in (las, unseen))
        print(f"{k:>4} {las_auroc:>11.3f} {unseen_auroc:>14.3f}")
        rows.append({**setting, "image_score": f"mean of the top {k} patch logits",
                     "val_image_auroc_las": round(las_auroc, 3), "val_image_auroc_unseen": round(unseen_auroc, 3)})

    grid = synthesis.las.grid_shape
    print("validation image AUROC with the maximum of the smoothed patch-probability grid")
    print(f"{'sigma':>5} {'LAS family':>11} {'unseen family':>14}")

    def smoothed_max(scores: torch.Tensor, sigma: float) -> np.ndarray:
        maps = scores.view(len(scores), 1, *grid)
        if sigma > 0:
            maps = gaussian_blur(maps, [2 * math.ceil(3 * sigma) + 1] * 2, [sigma, sigma])
        return maps.flatten(1).amax(1).numpy()

    for sigma in args.sigma:
        normal_max = smoothed_max(probabilities["normal"], sigma)
        las_max, unseen_max = smoothed_max(probabilities["las"], sigma), smoothed_max(probabilities["unseen"], sigma)
        las_auroc, unseen_auroc = (image_auroc(np.r_[normal_max, m], labels) for m in (las_max, unseen_max))
        print(f"{sigma:>5g} {las_auroc:>11.3f} {unseen_auroc:>14.3f}")
        rows.append({**setting, "image_score": f"maximum of the grid smoothed by sigma {sigma:g}",
                     "val_image_auroc_las": round(las_auroc, 3), "val_image_auroc_unseen": round(unseen_auroc, 3)})
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

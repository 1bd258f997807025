"""The nearest-neighbour scorer on a run's *validation* split: does validation rank it like the test does?

Scores the run's held-out normal images, their LAS copies and their unseen-family copies (what model
selection sees) by the distance of each patch vector to the nearest of a random bank of training patch
vectors (the baseline's score, without its coreset), and prints each family's image AUROC, patch AP and
patch AUROC — the numbers the run's own history holds for D. No test image is read.

    python benchmarks/nn_on_validation.py RUN DATA_DIR [--bank-images 240] [--bank-vectors 30000]

Rows go to `results/nn_on_validation.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from record import add_results_option, record_rows

from glass_ad.evaluation.metrics import image_auroc, pixel_ap, pixel_auroc
from glass_ad.training.validation import rebuild_run_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("data_dir")
    parser.add_argument("--bank-images", type=int, default=240)
    parser.add_argument("--bank-vectors", type=int, default=30000)
    add_results_option(parser, "nn_on_validation")
    args = parser.parse_args()

    rebuilt = rebuild_run_validation(args.run, args.data_dir)
    model, images, val = rebuilt.model, rebuilt.images.images, rebuilt.val

    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(len(images), min(args.bank_images, len(images)), replace=False))
    with torch.no_grad():  # the same scaled patch vectors the validation set holds
        parts = [model.features(images[chosen[i : i + 8]].float() / 255.0) for i in range(0, len(chosen), 8)]
    bank = torch.cat(parts).float().reshape(-1, val.normal.shape[-1])
    bank = bank[torch.from_numpy(rng.choice(len(bank), min(args.bank_vectors, len(bank)), replace=False))]

    def distances(features: torch.Tensor) -> torch.Tensor:
        queries = features.float().reshape(-1, features.shape[-1])
        nearest = [torch.cdist(queries[i : i + 2048], bank).amin(1) for i in range(0, len(queries), 2048)]
        return torch.cat(nearest).view(features.shape[0], -1)

    normal = distances(val.normal)
    image_labels = np.r_[np.zeros(len(normal)), np.ones(len(normal))]
    print(f"{args.run}: nearest-neighbour scorer on the validation split ({len(bank)} bank vectors from "
          f"{len(chosen)} training images)")  # fmt: skip
    scores = {}
    config = rebuilt.images.config
    setting = {"data": Path(args.data_dir).name, "recipe": config.recipe, "seed": config.seed, "run": Path(args.run).name}
    records = []
    for name, features, labels in (("LAS", val.anomalous, val.labels), ("unseen", val.unseen, val.unseen_labels)):
        anomalous = distances(features)
        patch_scores = torch.cat([normal.flatten(), anomalous.flatten()]).numpy()
        patch_labels = torch.cat([torch.zeros(normal.numel()), labels.flatten()]).numpy() > 0.5
        auroc = image_auroc(np.r_[normal.amax(1).numpy(), anomalous.amax(1).numpy()], image_labels)
        ap = pixel_ap(patch_scores, patch_labels)
        scores[name] = 0.5 * (auroc + ap)
        patch_auroc = pixel_auroc(patch_scores, patch_labels)
        print(f"  {name:>6}: image AUROC {auroc:.3f}, patch AP {ap:.3f}, patch AUROC {patch_auroc:.3f}")
        records.append({**setting, "scorer": "nearest neighbour", "family": name, "bank_vectors": len(bank),
                        "val_image_auroc": round(auroc, 3), "val_patch_ap": round(ap, 3),
                        "val_patch_auroc": round(patch_auroc, 3)})  # fmt: skip
    print(f"  selection score (the worse family's mean of image AUROC and patch AP): {min(scores.values()):.3f}")
    for record in records:
        record["selection_score"] = round(min(scores.values()), 3)
    record_rows(args.results, records)


if __name__ == "__main__":
    main()

"""Does a validation signal rank trained models as the real test does? For each trained MTD run given,
compare with its test image AUROC (RUN.json from `glass test --json`):

* `val_score`: the stored selection score of its chosen epoch (synthetic LAS / unseen families);
* NN agreement: the Spearman correlation between D's logit and the distance to the nearest training patch,
  over held-out normal patches — how far D ranks "unusual" like the nearest-neighbour scorer does.

Uses no test image for either signal (the holdout of the first run; a bank of its training images).

    python benchmarks/nn_agreement.py runs/v2 runs/t4_las_only runs/t4_gas_full ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from glass_ad.data.layouts import load_dataset
from glass_ad.model.checkpoint import Checkpoint
from glass_ad.training.preparation import decode_images
from glass_ad.training.validation import nn_agreement, nn_agreement_probe


def main() -> None:
    runs = [Path(p) for p in sys.argv[1:]]
    first = Checkpoint.load(runs[0])
    data = load_dataset(first.training.data_root)
    held = set(first.training.holdout_paths)
    holdout = [s for s in data.train if str(s.path) in held]
    rest = [s for s in data.train if str(s.path) not in held]
    picked = np.random.default_rng(0).choice(len(rest), min(64, len(rest)), replace=False)
    model = first.build_model("cpu")
    model.feature_scale.fill_(1.0)  # raw features; each run's own scale is applied below

    def features(samples):
        images, _ = decode_images(samples, first.preprocessor(), progress=False)
        with torch.no_grad():
            return torch.cat([model.features(images[i : i + 8].float() / 255) for i in range(0, len(images), 8)])

    normal = features(holdout)
    bank = features([rest[i] for i in sorted(picked)])
    rows, distances = nn_agreement_probe(normal, bank.reshape(-1, bank.shape[-1]))
    table = []
    for run in runs:
        checkpoint = Checkpoint.load(run)
        trained = checkpoint.build_model("cpu").eval()
        agreement = nn_agreement(trained, rows * float(checkpoint.feature_scale), distances)
        best = [r for r in checkpoint.training.history if r["epoch"] == checkpoint.training.best_epoch][0]
        test = json.loads(Path(f"{run}.json").read_text())["image_auroc"]
        table.append((run.name, 100 * test, best.get("val_score", float("nan")), agreement))
    print("run | test image AUROC | val_score | NN agreement")
    for name, test, score, agreement in table:
        print(f"{name} | {test:.1f} | {score:.3f} | {agreement:.3f}")
    tests = [t for _, t, _, _ in table]
    for column, label in ((2, "val_score"), (3, "NN agreement")):
        rho = spearmanr(tests, [row[column] for row in table]).correlation
        print(f"rank correlation of {label} with the test image AUROC: {rho:.3f}")


if __name__ == "__main__":
    main()

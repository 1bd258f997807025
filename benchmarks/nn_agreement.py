"""Does a validation signal rank trained models as the real test does? For each trained MTD run given,
compare with its test image AUROC (RUN.json from `glass test --json`):

* `val_score`: the stored selection score of its chosen epoch (synthetic LAS / unseen families);
* NN agreement: the Spearman correlation between D's logit and the distance to the nearest training patch,
  over held-out normal patches — how far D ranks "unusual" like the nearest-neighbour scorer does.

Uses no test image for either signal (the holdout of the first run; a bank of its training images).

    python benchmarks/nn_agreement.py runs/v2 runs/t4_las_only runs/t4_gas_full ...

One row per run goes to `results/nn_agreement.csv` (`benchmarks/record.py`), with both rank correlations.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from glass_ad.data.layouts import load_dataset
from glass_ad.model.checkpoint import Checkpoint
from glass_ad.training.preparation import decode_images
from glass_ad.training.validation import nn_agreement, nn_agreement_probe
from record import add_results_option, record_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="trained runs, each with RUN.json from glass test --json")
    add_results_option(parser, "nn_agreement")
    args = parser.parse_args()
    runs = args.runs
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
        table.append((run.name, 100 * test, best.get("val_score", float("nan")), agreement, checkpoint.config))
    print("run | test image AUROC | val_score | NN agreement")
    for name, test, score, agreement, _ in table:
        print(f"{name} | {test:.1f} | {score:.3f} | {agreement:.3f}")
    tests = [row[1] for row in table]
    correlations = {}
    for column, label in ((2, "val_score"), (3, "NN agreement")):
        correlations[label] = rho = spearmanr(tests, [row[column] for row in table]).correlation
        print(f"rank correlation of {label} with the test image AUROC: {rho:.3f}")
    data = Path(first.training.data_root or "").name
    record_rows(args.results, [
        {
            "data": data, "recipe": config.recipe, "seed": config.seed, "run": name, "image_auroc": round(test, 1),
            "val_score": round(score, 3), "nn_agreement": round(agreement, 3),
            "rank_corr_val_score": round(correlations["val_score"], 3),
            "rank_corr_nn_agreement": round(correlations["NN agreement"], 3),
        }
        for name, test, score, agreement, config in table
    ])  # fmt: skip


if __name__ == "__main__":
    main()

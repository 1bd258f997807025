"""The hybrid score's memory bank, variant by variant, on one trained run: validation first, then test.

Benchmark code, not a product feature. The run's discriminator is kept; only the bank changes. Each variant
is built by the product's own code (`training.hybrid.build_hybrid_score`, standardised on the run's held-out
normals) from the same training features:

* ``coreset:F`` — one k-centre coreset of F of all training patches (`--bank-neighbours 0`, the bank before
  the retrieval; drawn from 64 random patches per image, as `glass train` does);
* ``nearest:K:R[:DESCRIPTOR[:W]]`` — R patch vectors of every training image (its k-centre coreset), each
  image compared with those of its K nearest training images by DESCRIPTOR, ``mean_spread`` (the mean and
  spread of its patch vectors, when left out) or ``mean``; W: the coarse part's window (4 when left out, 0:
  none); the default is 16:324:mean_spread:4.

Validation (no test image): image AUROC of the run's held-out normals against their LAS copies and their
unseen-family copies (strokes, blobs), the fixed synthetic anomalies of model selection. Test: image AUROC,
pixel AUROC and AUPRO of the test split, for the hybrid, for the distance alone ("nn") and for the
discriminator alone ("glass", the paper's score; the same for every variant), and the seconds the test
split's scoring took.

    python benchmarks/bank_study.py RUN ../shared/data/mtd --variants coreset:0.01 nearest:16:324 nearest:4:1296

Rows go to `results/bank_study.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from glass_ad.data.datasets import ImageDataset
from glass_ad.data.layouts import load_dataset
from glass_ad.data.preprocessing import Preprocessor, choose_fit
from glass_ad.evaluation.evaluate import StreamingEvaluator
from glass_ad.model.glass_model import standardise
from glass_ad.training.hybrid import build_hybrid_score
from glass_ad.training.preparation import FeaturesInMemory
from glass_ad.training.validation import rebuild_run_validation
from record import add_results_option, record_rows


def features_of(model, images: torch.Tensor) -> torch.Tensor:
    """uint8 N×3×H×W images → N×P×D float16 features, 16 at a time."""
    with torch.inference_mode():
        return torch.cat([model.features(images[i : i + 16].float() / 255).half() for i in range(0, len(images), 16)])


def image_auroc(normal: torch.Tensor, anomalous: torch.Tensor) -> float:
    """Image AUROC of max patch scores (N×P each)."""
    scores = torch.cat([normal.amax(dim=1), anomalous.amax(dim=1)]).numpy()
    return float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], scores))


def test_metrics(model, patch_scores: torch.Tensor, labels: np.ndarray, masks: np.ndarray) -> list[float]:
    evaluator = StreamingEvaluator(model.input_shape, expected=len(labels))
    for start in range(0, len(labels), 32):
        part = patch_scores[start : start + 32].view(-1, *model.grid_shape)
        with torch.inference_mode():
            out = model.postprocess(part)
        names = [""] * len(part)
        evaluator.add(out.image_scores.numpy(), out.anomaly_maps.numpy(), labels[start : start + 32], masks[start : start + 32], names, names)
    report = evaluator.compute()
    return [round(100 * report[key], 1) for key in ("image_auroc", "pixel_auroc", "aupro")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--variants", nargs="+", default=["coreset:0.01", "nearest:16:324"])
    add_results_option(parser, "bank_study")
    args = parser.parse_args()

    rebuilt = rebuild_run_validation(args.run, args.data)
    model, val, images = rebuilt.model, rebuilt.val, rebuilt.images
    config = images.config
    train = FeaturesInMemory(features_of(model, images.images))
    dataset = load_dataset(args.data)
    preprocessor = Preprocessor(config.image_size, None, choose_fit(dataset.train), shape=config.image_shape)
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.test, preprocessor), batch_size=16)
    test, labels, masks = [], [], []
    with torch.inference_mode():
        for batch in loader:  # rounded to uint8 as `glass test` does
            test.append(model.features((batch["image"] * 255).round() / 255).half())
            labels.append(batch["label"].numpy())
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
    test_features, labels, masks = torch.cat(test), np.concatenate(labels), np.concatenate(masks)
    device = torch.device("cpu")

    def scores(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hybrid patch scores, raw distances and the discriminator's scores (N×P each), 16 at a time."""
        with torch.inference_mode():
            raw = torch.cat([model.raw_hybrid_parts(part) for part in features.float().split(16)])
        # the hybrid, the raw (fine) distance and the paper's score (the sigmoid of the logit, as without a bank)
        hybrid = standardise(raw, model.hybrid_norm).mean(dim=-1)
        return hybrid, raw[..., 1], torch.sigmoid(raw[..., 0])

    rows = []
    for variant in args.variants:
        kind, *values = variant.split(":")
        if kind == "coreset":
            setting = config.replace(score="hybrid", bank_neighbours=0, memory_bank_fraction=float(values[0]))
        else:
            descriptor = values[2] if len(values) > 2 else "mean_spread"
            window = int(values[3]) if len(values) > 3 else 4
            setting = config.replace(
                score="hybrid",
                bank_neighbours=int(values[0]),
                bank_patches=int(values[1]),
                bank_descriptor=descriptor,
                bank_coarse_window=window,
            )
        started = time.perf_counter()
        built = build_hybrid_score(model, train, images.holdout, setting, device)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        test_hybrid, test_distance, test_paper = scores(test_features)
        score_s = time.perf_counter() - started
        normal, las, unseen = (scores(part) for part in (val.normal, val.anomalous, val.unseen))
        row = {
            "data": Path(args.data).name,
            "seed": config.seed,
            "run": Path(args.run).name,
            "variant": variant,
            "bank_rows": built["bank_size"],
            "build_s": round(build_s, 1),
            "test_score_s": round(score_s, 1),
            "val_las_hybrid": round(100 * image_auroc(normal[0], las[0]), 1),
            "val_unseen_hybrid": round(100 * image_auroc(normal[0], unseen[0]), 1),
            "val_las_nn": round(100 * image_auroc(normal[1], las[1]), 1),
            "val_unseen_nn": round(100 * image_auroc(normal[1], unseen[1]), 1),
        }
        for name, values in (("hybrid", test_hybrid), ("nn", test_distance), ("glass", test_paper)):
            image, pixel, aupro = test_metrics(model, values, labels, masks)
            row.update({f"{name}_image_auroc": image, f"{name}_pixel_auroc": pixel, f"{name}_aupro": aupro})
        print(" ".join(f"{key}={value}" for key, value in row.items()), flush=True)
        rows.append(row)
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

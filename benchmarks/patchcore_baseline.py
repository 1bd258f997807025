"""Baseline to beat: PatchCore on the same patch features as GLASS.

Benchmark code, not a product feature. Memory bank = greedy k-centre coreset (PatchCore's selection, on a
random projection to 128 dimensions) of the patch features of exactly the images GLASS trains on with the
same seed (its held-out validation images are left out, as GLASS never trains on them). By default the
coreset keeps 10 % of *all* training patches, PatchCore's MVTec setting; `--coreset 0.01 --pool 0.1` is the
cheaper variant this project used before (1 % of a random 10 % pool), which is weaker on some sets. Patch
score = distance to the nearest bank vector; image score = max patch score, or with `--reweight` PatchCore's
re-weighting of it by how isolated the nearest bank vector is among its 9 bank neighbours; map = bilinear
upsample + Gaussian σ = 4 (the same post-processing as GLASS).

    python benchmarks/patchcore_baseline.py ../shared/data/mpdd_metal_plate --json mpdd_patchcore.json
    python benchmarks/patchcore_baseline.py ../shared/data/mtd --coreset 0.01 --pool 0.1   # the older variant

Each run also appends one row to `results/patchcore_baseline.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from glass_ad.config import GlassConfig, make_config
from glass_ad.data.datasets import ImageDataset
from glass_ad.data.layouts import load_dataset
from glass_ad.data.preprocessing import Preprocessor, choose_fit
from glass_ad.evaluation.evaluate import StreamingEvaluator
from glass_ad.model.glass_model import build_model
from glass_ad.model.memory_bank import greedy_coreset
from glass_ad.training.preparation import decode_images, split_holdout
from record import add_results_option, record_rows

REWEIGHT_NEIGHBOURS = 9  # PatchCore's b


def build_bank(features: torch.Tensor, fraction: float, *, pool: float | None = None, seed: int = 0) -> torch.Tensor:
    """The coreset memory bank: `fraction` of the N×D training patches, chosen by greedy k-centre selection over
    all of them (`pool` None) or over a random `pool` share of them."""
    count = max(1, int(len(features) * fraction))
    pool_rows = None if pool is None else max(count, int(len(features) * pool))
    return features[greedy_coreset(features, count, seed=seed, pool=pool_rows)]


def nearest(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to, and index of, the nearest bank vector of every query row."""
    distances, indices = [], []
    bank_sq = (bank * bank).sum(1)
    for start in range(0, len(queries), chunk):
        part = queries[start : start + chunk]
        squared = (part * part).sum(1, keepdim=True) - 2 * part @ bank.T + bank_sq
        value, index = squared.min(dim=1)
        distances.append(value.clamp_min(0).sqrt())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    return nearest(queries, bank, chunk)[0]


def reweighted_image_scores(
    features: torch.Tensor, patch_scores: torch.Tensor, nearest_index: torch.Tensor, bank: torch.Tensor
) -> torch.Tensor:
    """PatchCore's image score: the max patch score s* times 1 − softmax over the distances from that patch to
    its nearest bank vector m* and m*'s other bank neighbours (an isolated m* keeps more of s*)."""
    worst = patch_scores.argmax(dim=1)  # per image
    rows = torch.arange(len(features))
    query = features[rows, worst]  # B×D
    anchor = bank[nearest_index[rows, worst]]  # m*
    neighbours = torch.cdist(anchor, bank).topk(REWEIGHT_NEIGHBOURS, largest=False).indices  # m* first
    distances = (query[:, None, :] - bank[neighbours]).norm(dim=2)
    weight = 1.0 - torch.softmax(distances, dim=1)[:, 0]
    return weight * patch_scores[rows, worst]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--image-size", type=int, default=288)
    parser.add_argument("--image-shape", help="rectangular input HEIGHTxWIDTH (as glass train --image-shape)")
    parser.add_argument("--embed-dim", type=int, help="patch vector width (as glass train --embed-dim)")
    parser.add_argument("--layers", help="comma-separated backbone layers (as glass train --layers)")
    parser.add_argument("--coreset", type=float, default=0.1, help="share of the training patches kept (PatchCore: 0.1)")
    parser.add_argument("--pool", type=float, default=None, help="select from a random share of the patches (default: all)")
    parser.add_argument("--reweight", action="store_true", help="PatchCore's nearest-neighbour re-weighting of the image score")
    parser.add_argument("--seed", type=int, default=0, help="GLASS's seed: decides the held-out images left out")
    parser.add_argument("--json")
    add_results_option(parser, "patchcore_baseline")
    args = parser.parse_args()

    start = time.perf_counter()
    shape = tuple(int(side) for side in args.image_shape.lower().split("x")) if args.image_shape else None
    size = min(shape) if shape else args.image_size
    config = make_config(
        "fast",
        backbone=args.backbone,
        image_size=size,
        image_shape=shape,
        embed_dim=args.embed_dim,
        layers=tuple(args.layers.split(",")) if args.layers else None,
        seed=args.seed,
    )
    dataset = load_dataset(args.data)
    train_samples, _ = split_holdout(dataset.train, config)
    fit = choose_fit(dataset.train)
    preprocessor = Preprocessor(config.image_size, None, fit, shape=config.image_shape)
    model = build_model(config).eval()
    images, _ = decode_images(train_samples, preprocessor)
    with torch.inference_mode():
        train_features = torch.cat(
            [model.features(images[i : i + 16].float() / 255) for i in range(0, len(images), 16)]
        ).flatten(0, 1)
    train_images = len(images)
    del images
    bank = build_bank(train_features, args.coreset, pool=args.pool)
    fit_time = time.perf_counter() - start

    evaluator = StreamingEvaluator(config.input_shape, expected=len(dataset.test))
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.test, preprocessor), batch_size=8)
    with torch.inference_mode():
        for batch in loader:
            features = model.features(batch["image"])
            b, p, _ = features.shape
            distance, index = nearest(features.flatten(0, 1), bank)
            scores = distance.view(b, *model.grid_shape)
            out = model.postprocess(scores)
            image_scores = out.image_scores
            if args.reweight:
                image_scores = reweighted_image_scores(features, distance.view(b, p), index.view(b, p), bank)
            evaluator.add(
                image_scores.numpy(),
                out.anomaly_maps.numpy(),
                batch["label"].numpy(),
                batch["mask"][:, 0].numpy() > 0.5,
                list(batch["defect_type"]),
                list(batch["path"]),
            )
    report = evaluator.compute()
    report.update(
        method="patchcore-baseline",
        data=str(args.data),
        seed=args.seed,
        backbone=args.backbone,
        fit=fit,
        coreset_fraction=args.coreset,
        coreset_pool=args.pool or 1.0,
        reweight=args.reweight,
        bank_size=len(bank),
        train_images=train_images,
        fit_time_s=fit_time,
        total_time_s=time.perf_counter() - start,
    )
    print(json.dumps({k: v for k, v in report.items() if k != "per_defect_type"}, indent=2, default=float))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2, default=float)
    record_rows(args.results, [result_row(report, config)])


METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap")


def result_row(report: dict, config: GlassConfig) -> dict:
    """One results row: the setting, the bank, the cost and the test metrics (in %)."""
    return {
        "data": Path(report["data"]).name,
        "recipe": "patchcore",
        "seed": report["seed"],
        "backbone": report["backbone"],
        "layers": "+".join(config.layers or ()) or "default",
        "input": "x".join(str(side) for side in config.input_shape),
        "coreset_fraction": report["coreset_fraction"],
        "coreset_pool": report["coreset_pool"],
        "reweight": report["reweight"],
        "bank_size": report["bank_size"],
        "train_images": report["train_images"],
        "fit_s": round(report["fit_time_s"], 1),
        "total_s": round(report["total_time_s"], 1),
        **{metric: round(100 * report[metric], 1) for metric in METRICS if report.get(metric) is not None},
    }


if __name__ == "__main__":
    main()

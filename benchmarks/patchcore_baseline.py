"""Baseline to beat: a PatchCore-style nearest-neighbour scorer on the same patch features as GLASS.

Benchmark code, not a product feature. Memory bank = greedy coreset (on a random projection) of the
patch features of exactly the images GLASS trains on with the same seed (its held-out validation images
are left out, as GLASS never trains on them); patch score = distance to the nearest bank vector; image score = max patch
score; map = bilinear upsample + Gaussian σ = 4 (the same post-processing as GLASS).

    python benchmarks/patchcore_baseline.py ../shared/data/mtd --coreset 0.01 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from glass_ad.config import make_config
from glass_ad.data.datasets import ImageDataset, Preprocessor, choose_fit, load_dataset
from glass_ad.evaluation.evaluate import StreamingEvaluator
from glass_ad.model.glass_model import build_model
from glass_ad.training.preparation import decode_images, split_holdout


def greedy_coreset(features: torch.Tensor, fraction: float, seed: int = 0, projection_dim: int = 64) -> torch.Tensor:
    """Indices of a k-center greedy coreset (computed on a random projection of a random 10 % pool, to fit
    a 2-core CPU's time budget)."""
    count = max(1, int(len(features) * fraction))
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randperm(len(features), generator=generator)[: max(count, len(features) // 10)]
    projection = torch.randn(features.shape[1], projection_dim, generator=generator) / projection_dim**0.5
    reduced = features[pool] @ projection
    chosen = [int(torch.randint(len(reduced), (1,), generator=generator))]
    distance = (reduced - reduced[chosen[0]]).norm(dim=1)
    for _ in range(count - 1):
        index = int(distance.argmax())
        chosen.append(index)
        distance = torch.minimum(distance, (reduced - reduced[index]).norm(dim=1))
    return pool[torch.tensor(chosen)]


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    out = []
    for start in range(0, len(queries), chunk):
        out.append(torch.cdist(queries[start : start + chunk], bank).min(dim=1).values)
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--image-size", type=int, default=288)
    parser.add_argument("--image-shape", help="rectangular input HEIGHTxWIDTH (as glass train --image-shape)")
    parser.add_argument("--embed-dim", type=int, help="patch vector width (as glass train --embed-dim)")
    parser.add_argument("--layers", help="comma-separated backbone layers (as glass train --layers)")
    parser.add_argument("--coreset", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0, help="GLASS's seed: decides the held-out images left out")
    parser.add_argument("--json")
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
    bank = train_features[greedy_coreset(train_features, args.coreset)]
    fit_time = time.perf_counter() - start

    evaluator = StreamingEvaluator(config.input_shape, expected=len(dataset.test))
    loader = torch.utils.data.DataLoader(ImageDataset(dataset.test, preprocessor), batch_size=8)
    with torch.inference_mode():
        for batch in loader:
            features = model.features(batch["image"])
            b, p, _ = features.shape
            scores = nearest_distance(features.flatten(0, 1), bank).view(b, *model.grid_shape)
            out = model.postprocess(scores)
            evaluator.add(
                out.image_scores.numpy(),
                out.anomaly_maps.numpy(),
                batch["label"].numpy(),
                batch["mask"][:, 0].numpy() > 0.5,
                list(batch["defect_type"]),
                list(batch["path"]),
            )
    report = evaluator.compute()
    report.update(
        method="patchcore-baseline",
        backbone=args.backbone,
        fit=fit,
        coreset_fraction=args.coreset,
        bank_size=len(bank),
        train_images=train_images,
        fit_time_s=fit_time,
        total_time_s=time.perf_counter() - start,
    )
    print(json.dumps({k: v for k, v in report.items() if k != "per_defect_type"}, indent=2, default=float))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2, default=float)


if __name__ == "__main__":
    main()

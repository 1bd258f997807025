"""Which smoothing of the anomaly map does the validation split prefer? (no test image is read)

For a trained run, rebuilds its validation split (held-out normal images, their LAS copies and their
unseen-family copies, with their pixel masks; `rebuild_run_validation`) and scores the full-resolution maps —
bilinear upsampling, then a Gaussian of each given sigma in input pixels (`model.ScoreMap`; the reference
uses 4) — by pixel AUROC over the held-out normals plus one family, and by the image AUROC of the map's
maximum.

    python benchmarks/map_sigma_validation.py runs/fast_s0 ../shared/data/mtd --sigma 2 4 8 12 [--space logit]

Rows go to `results/map_sigma_validation.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from record import add_results_option, record_rows

from glass_ad.evaluation.metrics import image_auroc, pixel_auroc
from glass_ad.model.glass_model import ScoreMap
from glass_ad.training.validation import rebuild_run_validation, score_features

PIXEL_SAMPLE = 0.1  # share of the pixels scored (the same pixels for every sigma)


@torch.no_grad()
def score_logits(model, features: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """D's logits N×P for stored features (the scores before the sigmoid)."""
    rows = [
        model.discriminator.logits(model.adaptor(chunk.flatten(0, 1))).view(len(chunk), -1)
        for chunk in features.split(batch_size)
    ]
    return torch.cat(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--sigma", type=float, nargs="+", default=[2.0, 4.0, 8.0, 12.0])
    parser.add_argument(
        "--space",
        choices=["probability", "logit"],
        default="probability",
        help="smooth D's probabilities (the reference) or its logits (before the sigmoid)",
    )
    add_results_option(parser, "map_sigma_validation")
    args = parser.parse_args()
    rows = []

    validation = rebuild_run_validation(args.run, args.data, keep_masks=True)
    model, val = validation.model, validation.val
    grid = model.grid_shape
    masks = {"las": val.masks, "unseen": val.unseen_masks}
    score = score_features if args.space == "probability" else score_logits
    grids = {
        name: score(model, features).reshape(len(features), *grid)
        for name, features in (("normal", val.normal), ("las", val.anomalous), ("unseen", val.unseen))
    }
    pixels = None
    print(
        f"{args.run}: {len(val.normal)} held-out normal images, input {validation.images.config.input_shape}, "
        f"smoothing D's {args.space} scores"
    )
    for sigma in args.sigma:
        to_map = ScoreMap(grid, validation.images.config.input_shape, sigma)
        normal_maps = to_map(grids["normal"])
        parts = []
        for name in ("las", "unseen"):
            maps = to_map(grids[name])
            scores = torch.cat([normal_maps, maps]).numpy().ravel()
            labels = torch.cat([torch.zeros_like(masks[name]), masks[name]]).numpy().ravel()
            if pixels is None:
                pixels = np.random.default_rng(0).random(scores.size) < PIXEL_SAMPLE
            image_scores = np.r_[normal_maps.flatten(1).amax(1).numpy(), maps.flatten(1).amax(1).numpy()]
            image_labels = np.r_[np.zeros(len(normal_maps)), np.ones(len(maps))].astype(bool)
            pixel, image = pixel_auroc(scores[pixels], labels[pixels]), image_auroc(image_scores, image_labels)
            parts.append(f"{name}: pixel AUROC {pixel:.4f}, map-maximum image AUROC {image:.3f}")
            config = validation.images.config
            rows.append({
                "data": Path(args.data).name, "recipe": config.recipe, "seed": config.seed, "run": Path(args.run).name,
                "space": args.space, "sigma": sigma, "family": name, "val_pixel_auroc": round(pixel, 4),
                "val_image_auroc_map_max": round(image, 3),
            })  # fmt: skip
        print(f"sigma {sigma:4.1f} px | " + " | ".join(parts))
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

"""Where does the discriminator rank pixels worse than nearest-neighbour distance? (no test image is read)

For a trained run, rebuilds its validation split (`rebuild_run_validation`) and scores four synthetic
families on the held-out normal images, each by the pixel AUROC of the full-resolution maps (bilinear
upsampling + Gaussian σ = 4, the test's post-processing; held-out normals plus that family) and the image
AUROC of the patch maximum:

* ``las`` — the run's fixed LAS validation anomalies (the family training draws from);
* ``stroke`` / ``blob`` — the unseen family's two shapes on their own (`UnseenAnomalySynthesizer`);
* ``large`` — the same smooth intensity blobs with half-axes of 30–110 px instead of 6–30 px.

Two scorers: the run's discriminator (D) and, with ``--nn``, the distance to the nearest patch of a 1 %
greedy coreset of the run's own training images' features (the baseline's scorer,
`benchmarks/patchcore_baseline.py`). Last column: the AUROC of the held-out normals' patch scores on the
grid's outer ring against the interior's (0.5: the border scores like the rest; above: higher).
`benchmarks/nn_on_validation.py` gives the patch-level figures of the stored families instead.

    python benchmarks/validation_vs_nn.py runs/ref_s0 ../shared/data/mtd [--nn]

Rows go to `results/validation_vs_nn.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from record import add_results_option, record_rows

from glass_ad.evaluation.metrics import image_auroc, pixel_auroc
from glass_ad.model.glass_model import ScoreMap
from glass_ad.synthesis.unseen_anomalies import UnseenAnomalySynthesizer
from glass_ad.training.validation import rebuild_run_validation, score_features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patchcore_baseline import build_bank, nearest_distance

PIXEL_SAMPLE = 0.1  # share of the pixels scored (the same pixels for every family and scorer)


class LargeBlobs(UnseenAnomalySynthesizer):
    """The unseen family's smooth intensity blobs, with half-axes of 30–110 px at 288 px (not 6–30)."""

    blob_half_axes = (30.0, 110.0)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--nn", action="store_true", help="also score by nearest-neighbour distance")
    add_results_option(parser, "validation_vs_nn")
    args = parser.parse_args()

    validation = rebuild_run_validation(args.run, args.data, keep_masks=True)
    model, val, config = validation.model, validation.val, validation.images.config
    grid = model.grid_shape
    holdout = validation.images.holdout.float() / 255.0
    rng = np.random.default_rng(123)
    families = {"las": (val.anomalous, val.masks)}
    for name, synthesizer, strokes in (
        ("stroke", UnseenAnomalySynthesizer.from_config(config), 1.0),
        ("blob", UnseenAnomalySynthesizer.from_config(config), 0.0),
        ("large", LargeBlobs.from_config(config), 0.0),
    ):
        synthesizer.stroke_share = strokes
        features, masks = [], []
        for start in range(0, len(holdout), 16):
            batch = synthesizer(holdout[start : start + 16], None, rng)
            features.append(model.features(batch.images))
            masks.append(batch.masks[:, 0] > 0.5)
        families[name] = (torch.cat(features), torch.cat(masks))

    scorers = {"D": lambda f: score_features(model, f).reshape(len(f), *grid)}
    if args.nn:
        train = validation.images.images
        patches = torch.cat(
            [model.features(train[s : s + 16].float() / 255.0).flatten(0, 1) for s in range(0, len(train), 16)]
        )
        bank = build_bank(patches, 0.01, pool=0.1)  # the variant these measurements used
        del patches
        scorers["NN"] = lambda f: nearest_distance(f.flatten(0, 1), bank).reshape(len(f), *grid)

    to_map = ScoreMap(grid, config.input_shape, 4.0)
    print(f"{args.run}: {len(val.normal)} held-out normal images; pixel AUROC (image AUROC) per family")
    pixels = None
    ring = torch.zeros(grid, dtype=torch.bool)
    ring[0], ring[-1], ring[:, 0], ring[:, -1] = True, True, True, True
    setting = {"data": Path(args.data).name, "recipe": config.recipe, "seed": config.seed, "run": Path(args.run).name}
    records = []
    for scorer_name, scorer in scorers.items():
        normal_grids = scorer(val.normal)
        normal_maps = to_map(normal_grids)
        normal_max = normal_maps.flatten(1).amax(1).numpy()
        cells = []
        for name, (features, masks) in families.items():
            maps = to_map(scorer(features))
            scores = torch.cat([normal_maps, maps]).numpy().ravel()
            labels = torch.cat([torch.zeros_like(masks), masks]).numpy().ravel()
            if pixels is None or pixels.size != scores.size:
                pixels = np.random.default_rng(0).random(scores.size) < PIXEL_SAMPLE
            image = image_auroc(
                np.r_[normal_max, maps.flatten(1).amax(1).numpy()],
                np.r_[np.zeros(len(normal_maps)), np.ones(len(maps))].astype(bool),
            )
            pixel = pixel_auroc(scores[pixels], labels[pixels])
            cells.append(f"{name} {pixel:.3f} ({image:.3f})")
            records.append({**setting, "scorer": scorer_name, "family": name, "val_pixel_auroc": round(pixel, 3),
                            "val_image_auroc": round(image, 3)})  # fmt: skip
        border = pixel_auroc(normal_grids.flatten().double().numpy(), ring.expand_as(normal_grids).flatten().numpy())
        print(f"{scorer_name:>2}: " + " | ".join(cells) + f" | outer ring vs interior {border:.2f}")
    record_rows(args.results, records)


if __name__ == "__main__":
    main()

"""Where in a defect region do the maps fall short: its border or its interior? (reads the test set)

An analysis of trained runs, not a choice: nothing here feeds back into training or selection. For each
run and defect type, every test image of that type and every "good" one are scored by two scorers on the
same patch features, each turned into the test's full-resolution maps (bilinear upsampling + Gaussian
σ = 4):

* ``D`` — the run's discriminator logit (`glass test` smooths its probability instead: the same order of
  patches, slightly different smoothed maps);
* ``NN`` — the distance to the nearest vector of a 1 % greedy coreset of the patch features of exactly
  the images the run trained on (the baseline's scorer, `benchmarks/patchcore_baseline.py`).

Each defect region is split into its *interior* (the mask eroded by ``--border`` pixels) and its *border*
(the rest); each part's pixels are ranked against the pixels of the good images (pixel AUROC on every
4th row and column). Also printed, for the patches wholly inside a region against the good images'
patches: their distance to the nearest coreset vector, in units of the run's measured normal spacing
(the features are scaled so that one spacing is 1, the unit of GAS's radii), D's logit, and each
scorer's patch AUROC.

    python benchmarks/region_interiors.py runs/ref_s0 ../shared/data/mtd --types uneven,fray

One row per run, defect type and map (D, NN) goes to `results/region_interiors.csv` (`--results`;
`benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_erosion

from glass_ad.data.datasets import ImageDataset
from glass_ad.data.layouts import load_dataset
from glass_ad.evaluation.metrics import pixel_auroc
from glass_ad.model.checkpoint import Checkpoint
from glass_ad.training.preparation import decode_images, split_holdout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patchcore_baseline import build_bank, nearest_distance
from record import add_results_option, record_rows


def ranked_against(positives: np.ndarray, negatives: np.ndarray) -> float:
    scores = np.r_[positives, negatives]
    return pixel_auroc(scores, np.r_[np.ones(len(positives)), np.zeros(len(negatives))].astype(bool))


# Runs that share their training images and feature settings share the nearest-neighbour scorer: its
# coreset and its test-set distances are computed once per such group (key: see `analyse`).
_DISTANCES: dict[tuple, list[torch.Tensor]] = {}


@torch.inference_mode()
def analyse(run: str, data: str, types: list[str], border: int) -> list[dict]:
    """Print the comparison for one run; returns its results rows."""
    checkpoint = Checkpoint.load(run)
    model = checkpoint.build_model().eval()
    preprocessor = checkpoint.preprocessor()
    config = checkpoint.config
    dataset = load_dataset(data)
    train_samples, _ = split_holdout(dataset.train, config)
    features_key = (
        tuple(str(sample.path) for sample in train_samples),
        config.backbone,
        tuple(model.backbone.layers),
        tuple(config.input_shape),
        config.fit,
        config.resize,
        int(model.embed_dim),
        float(model.feature_scale),
    )
    bank = None
    if features_key not in _DISTANCES:
        images, _ = decode_images(train_samples, preprocessor, progress=sys.stderr.isatty())
        patches = torch.cat(
            [model.features(images[s : s + 16].float() / 255.0).flatten(0, 1) for s in range(0, len(images), 16)]
        )
        bank = build_bank(patches, 0.01, pool=0.1)  # the variant these measurements used
        del patches, images
    cached = _DISTANCES.setdefault(features_key, [])

    samples = [s for s in dataset.test if s.defect_type in [*types, "good"]]
    loader = torch.utils.data.DataLoader(ImageDataset(samples, preprocessor), batch_size=8)
    maps = {"D": [], "NN": []}
    logits, distances, cover, masks, kinds = [], [], [], [], []
    for index, batch in enumerate(loader):
        features = model.features(batch["image"])
        rows = features.flatten(0, 1)
        logit = model.discriminator.logits(model.adaptor(rows)).float().view(len(features), *model.grid_shape)
        if bank is not None:
            cached.append(nearest_distance(rows, bank).view(len(features), *model.grid_shape))
        distance = cached[index]
        maps["D"].append(model.score_map(logit).numpy())
        maps["NN"].append(model.score_map(distance).numpy())
        logits.append(logit.flatten(1).numpy())
        distances.append(distance.flatten(1).numpy())
        cover.append(F.adaptive_avg_pool2d(batch["mask"].float(), model.grid_shape).flatten(1).numpy())
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
        kinds += list(batch["defect_type"])
    kinds_array = np.array(kinds)
    every = (slice(None), slice(None, None, 4), slice(None, None, 4))
    masks_all = np.concatenate(masks)[every]
    good = kinds_array == "good"
    logits_all, distances_all, cover_all = np.concatenate(logits), np.concatenate(distances), np.concatenate(cover)
    print(f"{run}: {int(good.sum())} good images; pixel AUROC against the good images' pixels")
    rows = []
    setting = {"data": Path(data).name, "recipe": config.recipe, "seed": config.seed, "run": Path(run).name}
    for kind in types:
        chosen = kinds_array == kind
        region = masks_all[chosen]
        inner = np.stack([binary_erosion(m, iterations=max(1, border // 4)) for m in region])
        rim = region & ~inner
        cells = []
        for name, parts in maps.items():
            scores = np.concatenate(parts)[every]
            normal = scores[good].ravel()
            mine = scores[chosen]
            whole, interior_auroc, border_auroc = (ranked_against(mine[part], normal) for part in (region, inner, rim))
            cells.append(f"{name} whole {whole:.3f} interior {interior_auroc:.3f} border {border_auroc:.3f}")
            rows.append({
                **setting, "defect_type": kind, "map": name, "images": int(chosen.sum()),
                "pixel_auroc_whole": round(whole, 3), "pixel_auroc_interior": round(interior_auroc, 3),
                "pixel_auroc_border": round(border_auroc, 3),
            })  # fmt: skip
        interior = cover_all[chosen] >= 0.99
        normal_distance, interior_distance = distances_all[good].ravel(), distances_all[chosen][interior]
        print(
            f"  {kind} ({int(chosen.sum())} images; interior {inner.sum()} / border {rim.sum()} px): "
            + " | ".join(cells)
        )
        if interior.any():
            print(
                f"    patches wholly inside: {int(interior.sum())}; distance to the nearest coreset vector (spacings)"
                f" 10/50/90 %: good {np.percentile(normal_distance, [10, 50, 90]).round(2).tolist()},"
                f" inside {np.percentile(interior_distance, [10, 50, 90]).round(2).tolist()};"
                f" D logit median good {np.median(logits_all[good]):.2f}, inside {np.median(logits_all[chosen][interior]):.2f};"
                f" patch AUROC inside vs good: D {ranked_against(logits_all[chosen][interior], logits_all[good].ravel()):.3f},"
                f" NN {ranked_against(interior_distance, normal_distance):.3f}"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, then the data set (MVTec layout)")
    parser.add_argument("--types", default="uneven", help="comma-separated defect types")
    parser.add_argument("--border", type=int, default=16, help="border width in pixels of the network input")
    add_results_option(parser, "region_interiors")
    args = parser.parse_args()
    *runs, data = args.runs
    torch.set_num_threads(2)
    rows = [row for run in runs for row in analyse(run, data, args.types.split(","), args.border)]
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

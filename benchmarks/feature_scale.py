"""The scale rule, measured: normal-feature geometry of each offline backbone before and after scaling.

For every backbone: the normal spacing (median distance from a patch to its nearest patch in *other*
normal images) before scaling, the scale that brings it to 1, the 10–90 % spread of that distance, the
per-component and principal (PCA) standard deviations after scaling, and the hypersphere radius r'1
(0.75-quantile of distances to the per-position mean) in the same unit. The GAS lengths (noise σ·√D,
manifold band [r1, r2]) are given in this unit by construction.

    python benchmarks/feature_scale.py ../shared/data/mtd --images 32

Rows go to `results/feature_scale.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from record import add_results_option, record_rows

from glass_ad.config import make_config
from glass_ad.data.layouts import load_dataset
from glass_ad.data.preprocessing import Preprocessor, choose_fit
from glass_ad.model.geometry import SpacingProbe, measure_geometry
from glass_ad.model.glass_model import build_model
from glass_ad.training.preparation import decode_images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite2")
    add_results_option(parser, "feature_scale")
    args = parser.parse_args()
    rows = []
    dataset = load_dataset(args.data)
    samples = dataset.train[:: max(1, len(dataset.train) // args.images)][: args.images]
    print("| backbone | D | raw spacing | scale | NN 10–90 % | std/component | principal std min / median / max | r'1 | σ√D | r1–r2 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.backbones.split(","):
        config = make_config("fast", backbone=name)
        model = build_model(config).eval()
        images, _ = decode_images(samples, Preprocessor(config.image_size, None, choose_fit(dataset.train)), progress=False)
        with torch.inference_mode():
            feats = torch.cat([model.features(images[i : i + 8].float() / 255) for i in range(0, len(images), 8)])
        geometry = measure_geometry(SpacingProbe.from_features(feats, np.random.default_rng(0)), config.feature_spacing)
        scaled = feats * geometry.scale
        radius = torch.quantile((scaled - scaled.mean(0, keepdim=True)).norm(dim=2).flatten(), 0.75).item()
        d = feats.shape[-1]
        print(
            f"| {name} | {d} | {geometry.raw_spacing:.2f} | {geometry.scale:.4f} | {geometry.spacing_q10:.2f}–"
            f"{geometry.spacing_q90:.2f} | {geometry.component_std:.3f} | {geometry.principal_std_min:.3f} / "
            f"{geometry.principal_std_median:.3f} / {geometry.principal_std_max:.3f} | {radius:.2f} | "
            f"{config.noise_std * np.sqrt(d):.2f} | {config.r1}–{config.r2} |"
        )
        rows.append({
            "data": Path(args.data).name, "recipe": config.recipe, "backbone": name, "images": len(samples), "dim": d,
            "raw_spacing": round(geometry.raw_spacing, 2), "scale": round(geometry.scale, 4),
            "spacing_q10": round(geometry.spacing_q10, 2), "spacing_q90": round(geometry.spacing_q90, 2),
            "component_std": round(geometry.component_std, 3), "hypersphere_r1": round(radius, 2),
        })  # fmt: skip
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

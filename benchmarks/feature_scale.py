"""Scale-aware GAS, measured: feature statistics of each offline backbone before and after scaling.

For every backbone: mean per-component std of the pooled patch features, the scale factor applied,
the hypersphere radius r'1 (0.75-quantile of distances to the per-position mean) and the median distance
from a patch to the nearest patch of another image at the same position, each compared with the GAS
constants (noise norm σ·√D, manifold band [r1, r2]).

    python benchmarks/feature_scale.py ../shared/data/mtd --images 32
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from glass_ad.config import make_config
from glass_ad.datasets import Preprocessor, load_dataset
from glass_ad.model import build_model
from glass_ad.trainer import choose_fit, decode_images, measure_feature_scale


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite2")
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    samples = dataset.train[:: max(1, len(dataset.train) // args.images)][: args.images]
    print("| backbone | D | raw std/comp | scale | r'1 raw | r'1 scaled | NN dist scaled | σ√D | r1–r2 | r1 / NN dist |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.backbones.split(","):
        config = make_config("fast", backbone=name)
        model = build_model(config).eval()
        images, _ = decode_images(samples, Preprocessor(config.image_size, None, choose_fit(dataset.train)), progress=False)
        with torch.inference_mode():
            feats = torch.cat([model.features(images[i : i + 8].float() / 255) for i in range(0, len(images), 8)])
        raw_std = feats.flatten(0, 1).std(0).mean().item()
        scale = measure_feature_scale(feats, config.feature_std)
        centre = feats.mean(0, keepdim=True)
        r_raw = torch.quantile((feats - centre).norm(dim=2).flatten(), 0.75).item()
        scaled = feats * scale
        # Nearest patch of another image at the same grid position (how far apart normal patches are).
        dist = torch.cdist(scaled.transpose(0, 1), scaled.transpose(0, 1))  # P × N × N
        dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        nn = dist.min(dim=2).values.median().item()
        d = feats.shape[-1]
        print(
            f"| {name} | {d} | {raw_std:.3f} | {scale:.3f} | {r_raw:.1f} | {r_raw * scale:.2f} | {nn:.2f} | "
            f"{config.noise_std * np.sqrt(d):.2f} | {config.r1}–{config.r2} | {config.r1 / nn:.3f} |"
        )


if __name__ == "__main__":
    main()

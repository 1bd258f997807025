"""Does GAS train the discriminator? A GAS-only probe on real patch features, at several GAS lengths.

Adaptor + discriminator are trained on the normal branch and the GAS branch only (no LAS), on the patch
features of a few normal training images scaled by the spacing rule; then GAS is synthesised for the
patches of *held-out* normal images with the trained D, and the AUROC of D on those patches vs their GAS
copies is printed (0.5: D cannot tell GAS from normal, the branch is dead). The lengths are given in units
of the measured normal spacing: the default r1 = 1 (r2 = 2), the previous default's effective length
(r1 ≈ 0.05 spacing: 0.5 at a per-component std of 0.5, where the spacing was about 10), and two between.

    python benchmarks/gas_probe.py ../shared/data/mtd --images 40 --steps 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from glass_ad.config import make_config
from glass_ad.data.datasets import Preprocessor, choose_fit, load_dataset
from glass_ad.model.geometry import SpacingProbe, measure_geometry
from glass_ad.model.glass_model import build_model
from glass_ad.synthesis.gas import GASSettings, synthesize
from glass_ad.training.losses import bce
from glass_ad.training.preparation import decode_images
from glass_ad.training.validation import gas_separation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--images", type=int, default=40, help="normal images: 80 % train the probe, 20 % are held out")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--r1", default="0.05,0.25,0.5,1.0", help="r1 values in spacing units (r2 = 2·r1)")
    args = parser.parse_args()

    start = time.perf_counter()
    config = make_config("fast")
    dataset = load_dataset(args.data)
    samples = dataset.train[:: max(1, len(dataset.train) // args.images)][: args.images]
    images, _ = decode_images(samples, Preprocessor(config.image_size, None, choose_fit(dataset.train)), progress=False)
    base = build_model(config).eval()
    with torch.inference_mode():
        raw = torch.cat([base.features(images[i : i + 8].float() / 255) for i in range(0, len(images), 8)])
    split = int(len(raw) * 0.8)
    geometry = measure_geometry(SpacingProbe.from_features(raw[:split], np.random.default_rng(0)), 1.0)
    train_features, held_out = raw[:split] * geometry.scale, raw[split:] * geometry.scale
    print(f"{len(raw)} images; {geometry.describe()}")
    print("| r1 (spacing units) | GAS loss, first 5 → last 10 steps | held-out normal vs GAS AUROC |")
    print("|---|---|---|")
    for r1 in [float(v) for v in args.r1.split(",")]:
        torch.manual_seed(0)
        model = build_model(config)
        settings = GASSettings("manifold", steps=config.ascent_steps, step_size=config.ascent_step_size,
                               project_every=config.project_every, r1=r1, r2=2 * r1, unit=1.0)
        optimizers = [
            torch.optim.AdamW(model.discriminator.parameters(), lr=config.lr * 2),
            torch.optim.Adam(model.adaptor.parameters(), lr=config.lr, weight_decay=config.adaptor_weight_decay),
        ]
        generator = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(0)
        losses = []
        model.train()
        for _ in range(args.steps):
            batch = train_features[rng.choice(len(train_features), config.batch_size, replace=False)]
            rows = batch.reshape(-1, batch.shape[-1])
            rows = rows[torch.randperm(len(rows), generator=generator)[: int(len(rows) * config.patch_fraction)]]
            u = model.adaptor(rows)
            v = synthesize(model.discriminator, u, settings, generator=generator)
            scores = model.discriminator(torch.cat([u, v]))
            loss_gas = bce(scores[len(u):], 1.0)
            loss = bce(scores[: len(u)], 0.0) + loss_gas
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            losses.append(float(loss_gas.detach()))
        separation = gas_separation(model, held_out, settings, torch.zeros(held_out.shape[1], held_out.shape[2]), 0.75)
        print(f"| {r1:g} | {np.mean(losses[:5]):.3f} → {np.mean(losses[-10:]):.3f} | {separation:.3f} |")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

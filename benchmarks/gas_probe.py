"""Does GAS train the discriminator, and what does it find? A GAS-only probe on real patch features.

Adaptor + discriminator are trained on the normal branch and the GAS branch only (no LAS), on the patch
features of a few normal training images scaled by the spacing rule, once per GAS length r1 (in units of
the measured normal spacing; r2 = 2·r1). Then, on *held-out* normal images:

* GAS separation: GAS is synthesised for their patches with the trained D, and the AUROC of D on those
  patches vs their GAS copies is printed (0.5: D cannot tell GAS from normal, the branch is dead);
* unseen anomalies (``--unseen``): each held-out image gets one anomaly of the model-selection family that
  training never draws (a thin stroke or a smooth shading blob); D's patch AUROC (anomalous patches vs the
  clean images' patches) and image AUROC per kind (maximum patch score) are printed, beside the distance to
  the nearest training patch scored the same way.

``--noise covariance`` draws GAS's noise with the covariance of the batch's normal vectors (same mean
square length) instead of isotropically, so GAS moves along the directions normal patches vary in. No test
image is read.

    python benchmarks/gas_probe.py ../shared/data/mtd --images 40 --steps 60
    python benchmarks/gas_probe.py ../shared/data/mtd --images 80 --steps 150 --r1 0.5,1,1.5,2,3 --unseen

Rows go to `results/gas_probe.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from record import add_results_option, record_rows

from glass_ad.config import make_config
from glass_ad.data.layouts import load_dataset
from glass_ad.data.preprocessing import Preprocessor, choose_fit
from glass_ad.evaluation.metrics import image_auroc, pixel_auroc
from glass_ad.model.geometry import SpacingProbe, measure_geometry, nearest_distances
from glass_ad.model.glass_model import build_model
from glass_ad.synthesis.gas import GASSettings, synthesize
from glass_ad.synthesis.unseen_anomalies import UnseenAnomalySynthesizer
from glass_ad.training.losses import bce
from glass_ad.training.preparation import decode_images
from glass_ad.training.validation import gas_separation

KINDS = ("stroke", "blob")


def covariance_noise(normal: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N(0, Σ) noise for the N×D `normal` rows, Σ their covariance scaled to a mean variance of 1 (so the
    noise has the mean square length of N(0, I))."""
    centred = normal - normal.mean(0)
    variances, directions = torch.linalg.eigh(centred.T @ centred / len(centred))
    variances = variances.clamp(min=0)
    isotropic = torch.randn(normal.shape, generator=generator)
    return isotropic @ (directions * (variances / variances.mean()).sqrt()).T


def unseen_scores(scores: np.ndarray, clean: int, labels: np.ndarray, kinds: np.ndarray) -> list[float]:
    """Patch AUROC and per-kind image AUROC of per-patch `scores` (first `clean` images clean, then their
    anomalous copies with patch `labels` and `kinds`)."""
    normal, anomalous = scores[:clean], scores[clean:]
    out = [pixel_auroc(np.r_[normal.ravel(), anomalous[labels]], np.r_[np.zeros(normal.size), np.ones(labels.sum())])]
    for kind in KINDS:
        chosen = kinds == kind
        truth = np.r_[np.zeros(clean), np.ones(chosen.sum())]
        out.append(image_auroc(np.r_[normal.max(1), anomalous[chosen].max(1)], truth))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--images", type=int, default=40, help="normal images: 80 % train the probe, 20 % are held out")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--r1", default="0.05,0.25,0.5,1.0", help="r1 values in spacing units (r2 = 2·r1)")
    parser.add_argument("--unseen", action="store_true", help="also score unseen-family anomalies on the held-out images")
    parser.add_argument("--noise", choices=("isotropic", "covariance"), default="isotropic")
    add_results_option(parser, "gas_probe")
    args = parser.parse_args()
    records = []

    start = time.perf_counter()
    config = make_config("fast")
    dataset = load_dataset(args.data)
    samples = dataset.train[:: max(1, len(dataset.train) // args.images)][: args.images]
    images, _ = decode_images(samples, Preprocessor(config.image_size, None, choose_fit(dataset.train)), progress=False)
    base = build_model(config).eval()

    def features(batch: torch.Tensor) -> torch.Tensor:  # float images in [0, 1]
        with torch.inference_mode():
            return torch.cat([base.features(batch[i : i + 8]) for i in range(0, len(batch), 8)])

    raw = features(images.float() / 255)
    split = int(len(raw) * 0.8)
    geometry = measure_geometry(SpacingProbe.from_features(raw[:split], np.random.default_rng(0)), 1.0)
    train_features, held_out = raw[:split] * geometry.scale, raw[split:] * geometry.scale
    dim = held_out.shape[-1]
    print(f"{len(raw)} images; {geometry.describe()}; {args.noise} GAS noise")
    columns = "| r1 (spacing units) | GAS loss, first 5 → last 10 steps | held-out normal vs GAS AUROC |"
    if args.unseen:  # the held-out images and, after them, one anomalous copy of each
        synthetic = UnseenAnomalySynthesizer.from_config(config)(images[split:].float() / 255, None, np.random.default_rng(1))
        probe = torch.cat([held_out, features(synthetic.images) * geometry.scale]).reshape(-1, dim)
        labels = synthetic.patch_labels.reshape(len(held_out), -1).numpy() > 0.5
        kinds = np.array(synthetic.modes)
        counts = ", ".join(f"{(kinds == kind).sum()} {kind}s" for kind in KINDS)
        print(f"unseen family on the {len(held_out)} held-out images: {counts}")
        nearest = nearest_distances(probe, train_features.reshape(-1, dim)).reshape(2 * len(held_out), -1).numpy()
        reference = unseen_scores(nearest, len(held_out), labels, kinds)
        columns += " unseen patch AUROC | image AUROC, strokes | image AUROC, blobs |"
    print(columns)
    print("|---" * columns.count(" | ") + "|---|")
    if args.unseen:
        print("| distance to the nearest training patch | – | – | " + " | ".join(f"{v:.3f}" for v in reference) + " |")
    for r1 in [float(v) for v in args.r1.split(",")]:
        torch.manual_seed(0)
        model = build_model(config)
        settings = dataclasses.replace(GASSettings.from_config(config, "manifold"), r1=r1, r2=2 * r1, unit=1.0)
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
            noise = covariance_noise(u.detach(), generator) if args.noise == "covariance" else None
            v = synthesize(model.discriminator, u, settings, generator=generator, noise=noise)
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
        row = f"| {r1:g} | {np.mean(losses[:5]):.3f} → {np.mean(losses[-10:]):.3f} | {separation:.3f} |"
        records.append({
            "data": Path(args.data).name, "recipe": config.recipe, "images": args.images, "steps": args.steps,
            "noise": args.noise, "r1": r1, "gas_loss_first": round(float(np.mean(losses[:5])), 3),
            "gas_loss_last": round(float(np.mean(losses[-10:])), 3), "gas_separation": round(float(separation), 3),
        })  # fmt: skip
        if args.unseen:
            model.eval()
            with torch.no_grad():
                d = torch.cat([model.discriminator(model.adaptor(probe[i : i + 8192])).float() for i in range(0, len(probe), 8192)])
            unseen = unseen_scores(d.reshape(2 * len(held_out), -1).numpy(), len(held_out), labels, kinds)
            row += " " + " | ".join(f"{v:.3f}" for v in unseen) + " |"
            records[-1].update(zip(("unseen_patch_auroc", "unseen_image_auroc_strokes", "unseen_image_auroc_blobs"),
                                   (round(float(v), 3) for v in unseen)))  # fmt: skip
        print(row, flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    record_rows(args.results, records)


if __name__ == "__main__":
    main()

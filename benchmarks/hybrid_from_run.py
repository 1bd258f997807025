"""The hybrid score of an already trained pure-GLASS run, for a same-training comparison of the two scorers.

`glass train --score hybrid` trains exactly as `--score glass` and only adds, after the last epoch, a memory
bank of normal training patches and the standardisation of both parts on the held-out normal images
(training/hybrid.py). This script does that finishing step for an existing run: it rebuilds the run's own
training / held-out split from its stored config, builds the bank, re-calibrates the thresholds on the same
held-out normals and writes OUT/model.pt. So pure GLASS and the hybrid can be compared on one trained
discriminator per seed. No test image is read.

    python benchmarks/hybrid_from_run.py runs/mtd_s0 ../shared/data/mtd --out runs/mtd_s0_hybrid

The bank's size and the seconds it took go to `results/hybrid_from_run.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from glass_ad.evaluation.calibration import calibrate_holdout
from glass_ad.model.checkpoint import CHECKPOINT_NAME, Checkpoint
from glass_ad.training.hybrid import build_hybrid_score
from glass_ad.training.preparation import NormalFeatures, prepare_images
from record import add_results_option, record_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--out", required=True)
    parser.add_argument("--category")
    add_results_option(parser, "hybrid_from_run")
    args = parser.parse_args()

    started = time.perf_counter()
    checkpoint = Checkpoint.load(args.run)
    config = checkpoint.config.replace(score="hybrid")
    device = torch.device("cpu")
    model = checkpoint.build_model(device).eval()
    data = prepare_images(args.data, config, category=args.category, progress=False, echo=lambda _: None)
    features = NormalFeatures(model, data.images, None, device)  # backbone on demand: one pass
    built = build_hybrid_score(model, features, data.holdout, config, device)
    calibration = calibrate_holdout(model, data.holdout, config, device)
    hybrid = dataclasses.replace(
        checkpoint,
        config=config,
        memory_bank=model.memory_bank.state(),
        hybrid_norm=tuple(float(v) for v in model.hybrid_norm),
        calibration=calibration,
        config_digest=None,
        stored_config=None,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hybrid.save(out / CHECKPOINT_NAME)
    seconds = time.perf_counter() - started
    print(f"{out / CHECKPOINT_NAME}: bank of {built['bank_size']} patch vectors of {built['bank_images']} images ({seconds:.0f} s)")
    row = {"data": Path(args.data).name, "recipe": config.recipe, "seed": config.seed, "run": Path(args.run).name}
    bank = {"bank_size": built["bank_size"], "bank_neighbours": built["bank_neighbours"] or 0}
    record_rows(args.results, [{**row, **bank, "seconds": round(seconds, 1)}])


if __name__ == "__main__":
    main()

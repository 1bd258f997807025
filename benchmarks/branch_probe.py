"""Does each GAS branch train on a data set? The held-out GAS separation over normal + GAS steps.

For each hypothesis (manifold, hypersphere) and hypersphere shell (relative: the default; paper: the
reference's [r'1, 2r'1]), a copy of the untrained adaptor and discriminator is trained on the normal and GAS
branches only (`--las`: training's own steps, LAS included), on the cached normal training features of the
fast recipe, and the discriminator's AUROC of
held-out normal patches against their GAS copies is printed every `--every` steps (0.5: GAS is invisible).
With `--las`, two validation figures are printed beside it: model selection's `val_score` (what the check
compares when both branches train) and the worse synthetic family's patch AUROC (`loc`: held-out normal
patches against the anomalous patches of their LAS and unseen-family copies). The steps then draw their LAS
copies from the run's pool (`--las-variants`), as the check inside `glass train` does. This is the probe
GLASS-j's branch check runs (training/branch_check.py), in float32 or, with `--bf16`, in bf16 autocast as
`glass train` runs it on a CPU with bf16 units; with `--las --bf16` and probe stream 0 it measures what the
run's own check measures. `--probe-seeds 0,11,22` repeats each probe with its random streams offset (the
same holdout): how far the figures move from one probe to the next.
No test image is read.

    python benchmarks/branch_probe.py ../shared/data/mtd --steps 300 --every 50
    python benchmarks/branch_probe.py ../shared/data/mpdd_metal_plate --steps 300 --every 50
    python benchmarks/branch_probe.py ../shared/data/mpdd_metal_plate --las --textures ../shared/data/dtd \
        --steps 50 --every 50 --runs manifold,hypersphere --bf16   # the check's own measurement

Every probe point is also a row of `results/branch_probe.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from glass_ad.config import make_config
from glass_ad.model.glass_model import build_model
from glass_ad.training.branch_check import probe_branch
from glass_ad.training.preparation import prepare_features, prepare_images, prepare_las_pool, prepare_synthesis
from glass_ad.training.validation import build_validation_set
from record import add_results_option, record_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--runs", default="manifold,hypersphere:relative,hypersphere:paper")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--textures", default=None)
    parser.add_argument("--las", action="store_true", help="training's own steps (normal + GAS + LAS), as the branch check runs them")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as training on a CPU with bf16 units")
    parser.add_argument("--probe-seeds", default="0", help="offsets of the probes' random streams (comma-separated)")
    add_results_option(parser, "branch_probe")
    args = parser.parse_args()

    started = time.perf_counter()
    config = make_config("fast", seed=args.seed, textures=args.textures)
    torch.manual_seed(config.seed)
    data = prepare_images(args.data, config, progress=False, echo=lambda _: None)
    config = data.config
    model = build_model(config)
    setup = prepare_features(model, data.images, config, torch.device("cpu"), np.random.default_rng(config.seed), progress=False)
    with torch.no_grad():
        held_out = torch.cat([model.features(data.holdout[i : i + 16].float() / 255) for i in range(0, len(data.holdout), 16)])
    print(f"{args.data}: {len(data.images)} training images, {len(held_out)} held out; {setup.geometry.describe()}")
    synthesis = prepare_synthesis(data.images, config, echo=lambda _: None) if args.las else None
    val = None
    if synthesis is not None:
        use_foreground = synthesis.foreground is not None
        val = build_validation_set(model, data.holdout, synthesis.las, config, torch.device("cpu"), use_foreground)
        # The run's pool of LAS copies (fast recipe), so that the probes train on the copies a run's check does.
        prepare_las_pool(model, data.images, synthesis, config, torch.device("cpu"), echo=lambda _: None)
    print(f"({time.perf_counter() - started:.0f} s preparation; {'normal + GAS + LAS' if args.las else 'normal + GAS'} steps)")
    rows = []
    for offset in [int(value) for value in args.probe_seeds.split(",")]:
        for run in args.runs.split(","):
            hypothesis, _, shell = run.partition(":")
            probe_config = config.replace(hypersphere_shell=shell or config.hypersphere_shell)
            t0 = time.perf_counter()
            curve = probe_branch(
                model, setup, held_out, probe_config, hypothesis, args.steps,
                synthesis=synthesis, seed=config.seed + offset, every=args.every, val=val, bf16=args.bf16,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            values = " ".join(
                f"{point.step}:{point.separation:.3f}"
                + (f" (loc {point.localisation:.3f}, val {point.validation:.3f})" if point.validation is not None else "")
                for point in curve
            )
            label = f"{run} +{offset}" if offset else run
            print(f"{label:<26} {values}   ({seconds:.0f} s, {seconds / args.steps * 1000:.0f} ms/step incl. probes)", flush=True)
            rows += [
                {
                    "data": Path(args.data).name,
                    "recipe": config.recipe,
                    "seed": config.seed,
                    "branch": hypothesis,
                    "shell": probe_config.hypersphere_shell if hypothesis == "hypersphere" else "",
                    "steps_with": "normal+GAS+LAS" if args.las else "normal+GAS",
                    "step": point.step,
                    "gas_separation": round(point.separation, 3),
                    "ms_per_step": round(seconds / args.steps * 1000),
                    "val_score": round(point.validation, 3) if point.validation is not None else "",
                    "localisation": round(point.localisation, 3) if point.localisation is not None else "",
                    "probe_seed_offset": offset,
                    "arithmetic": "bf16" if args.bf16 else "fp32",
                }
                for point in curve
            ]
    if synthesis is not None and synthesis.las_pool is not None:
        synthesis.las_pool.close()
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

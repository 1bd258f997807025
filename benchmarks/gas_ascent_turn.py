"""Does GAS's gradient ascent do anything? Validation images only.

GAS draws δ = noise, runs the ascent (normalised steps of η spacings towards "D says normal") and projects
‖δ‖ into [r1, r2]. With a trained run's adaptor and discriminator, on held-out normal patch vectors, this
prints for each step size η: the cosine between the final δ and the noise it started from (1: the ascent
did not turn δ at all; GAS is then a random shell), ‖δ‖ in spacings, and D's median score of the GAS
vectors (how hard they are; D's median on the normal vectors themselves is printed last). No test image is
read.

    python benchmarks/gas_ascent_turn.py RUN DATA_DIR [--eta 0.005 0.02 0.05 0.1] [--vectors 4096]

Rows go to `results/gas_ascent_turn.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
import torch.nn.functional as F
from record import add_results_option, record_rows

from glass_ad.synthesis.gas import GASSettings, synthesize
from glass_ad.training.validation import rebuild_run_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("data_dir")
    parser.add_argument("--eta", type=float, nargs="+", default=[0.005, 0.02, 0.05, 0.1])
    parser.add_argument("--vectors", type=int, default=4096)
    add_results_option(parser, "gas_ascent_turn")
    args = parser.parse_args()

    rebuilt = rebuild_run_validation(args.run, args.data_dir)
    checkpoint, model, val = rebuilt.checkpoint, rebuilt.model, rebuilt.val
    config = checkpoint.config
    with open(Path(args.run) / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    best = checkpoint.training.best_epoch or len(history)
    kept = next(row for row in history if int(row["epoch"]) == best)
    spacing = float(kept["spacing"])  # the adaptor-space spacing GAS used at the kept epoch
    rows = val.normal.float().reshape(-1, val.normal.shape[-1])
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[: args.vectors]
    with torch.no_grad():
        u = model.adaptor(rows[pick])
    print(f"{args.run}: {len(u)} held-out normal vectors, r1 = {config.r1}, "
          f"{config.ascent_steps} steps, manifold projection, spacing {spacing:.3f} (epoch {kept['epoch']})")  # fmt: skip
    print(f"{'eta':>7} {'cos(delta, noise)':>18} {'|delta| / spacing':>18} {'D(GAS) median':>14}")
    setting = {"data": Path(args.data_dir).name, "recipe": config.recipe, "seed": config.seed, "run": Path(args.run).name}
    records = []
    for eta in args.eta:
        deltas = {}
        for mode in ("noise", "full"):
            # The manifold projection (‖δ‖ in [r1, r2]) whatever the run's hypothesis: the question is
            # how far the ascent turns δ, not where the shell lies.
            settings = GASSettings.from_config(config.replace(gas=mode, ascent_step_size=eta), "manifold", spacing)
            v = synthesize(model.discriminator, u, settings, generator=torch.Generator().manual_seed(1))
            deltas[mode] = v - u
        with torch.no_grad():
            scores = model.discriminator(u + deltas["full"]).flatten()
        cosine = F.cosine_similarity(deltas["full"], deltas["noise"], dim=1).median()
        length = (deltas["full"].norm(dim=1) / spacing).median()
        print(f"{eta:>7g} {float(cosine):>18.3f} {float(length):>18.2f} {float(scores.median()):>14.3f}")
        records.append({**setting, "ascent_step_size": eta, "cos_delta_noise": round(float(cosine), 3),
                        "delta_per_spacing": round(float(length), 2), "d_gas_median": round(float(scores.median()), 3)})
    with torch.no_grad():
        print(f"D(normal) median {float(model.discriminator(u).flatten().median()):.4f}")
    record_rows(args.results, records)


if __name__ == "__main__":
    main()

"""Seconds per training epoch with fresh LAS copies vs the LAS pool, on this CPU or an AVX2-only emulation of it.

Runs the default `glass train` command (fast recipe) once per `--las-variants` value, one after the other,
and reads each run's history: the preparation time (everything before the first epoch: decoding, the
feature cache, the geometry, the branch check), every epoch's seconds, and how many epochs ended within the
time limit. `--emulate-avx2` restricts PyTorch's kernels, oneDNN and MKL to AVX2 (no AVX-512, no bf16/AMX)
and trains in float32 — what `--precision auto` picks on such a CPU — to estimate a CPU without AVX-512 on
one that has it (clock and cache still differ: the ratio between settings travels better than the seconds).
One result row per run goes to results/epoch_cost.csv (benchmarks/record.py: CPU, flags, commit, command).

    python benchmarks/epoch_cost.py ../shared/data/mtd --textures ../shared/data/dtd --las-variants 0 4
    python benchmarks/epoch_cost.py ../shared/data/mtd --textures ../shared/data/dtd --emulate-avx2
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from glass_ad.model.checkpoint import Checkpoint
from record import add_results_option, record_rows

AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def read_history(path: Path) -> list[dict[str, float]]:
    with open(path) as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--textures")
    parser.add_argument("--las-variants", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: the recipe's)")
    parser.add_argument("--time-limit", type=float, help="minutes (default: the recipe's)")
    parser.add_argument("--emulate-avx2", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="folder to keep the runs in (default: a temporary one)")
    add_results_option(parser, "epoch_cost")
    args = parser.parse_args()

    env = dict(os.environ)
    precision = "auto"
    if args.emulate_avx2:
        env.update(AVX2_ONLY)
        precision = "fp32"
    folder = Path(args.keep or tempfile.mkdtemp(prefix="epoch-cost-"))
    rows = []
    for variants in args.las_variants:
        run = folder / f"las{variants}"
        command = [sys.executable, "-m", "glass_ad", "train", args.data, "--out", str(run), "--seed", str(args.seed),
                   "--las-variants", str(variants), "--precision", precision, "--score", "glass", "-q", "--force"]  # fmt: skip
        command += ["--textures", args.textures] if args.textures else []
        command += ["--epochs", str(args.epochs)] if args.epochs else []
        command += ["--time-limit", str(args.time_limit)] if args.time_limit is not None else []
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        history = read_history(run / "history.csv")
        epochs = [record["epoch_s"] for record in history]
        stopped_by = Checkpoint.load(run).training.stopped_by
        rows.append({
            "emulated": "avx2-only" if args.emulate_avx2 else "", "data": args.data, "las_variants": variants,
            "precision": precision, "time_limit_min": args.time_limit if args.time_limit is not None else "recipe",
            "epochs_run": len(history), "stopped_by": stopped_by,
            "preparation_s": round(history[0]["elapsed_s"] - history[0]["epoch_s"], 1),
            "first_epoch_s": round(epochs[0], 1), "median_epoch_s": round(sorted(epochs)[len(epochs) // 2], 1),
            "last_epoch_s": round(epochs[-1], 1), "wall_s": round(wall, 1),
        })  # fmt: skip
        print(", ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

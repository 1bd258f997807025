"""The default's quality on the development sets as data: one CSV row per run, and a Markdown table.

For each GLASS run (a run folder and the JSON of `glass test` beside it, RUN.json) it reads the checkpoint's
training record (hypothesis and its check, epochs, what stopped training, wall time, the GAS separation at the
kept epoch) and the test metrics; for each baseline it reads the JSON of `benchmarks/patchcore_baseline.py`.
Rows are appended to `results/quality.csv` (`--results`, `benchmarks/record.py`) with the CPU, its flags
and the commit the table was written at (the runs' own code is recorded in their checkpoints: `glass
info`), so figures stay comparable across machines. README's "Measured" table is generated from that file
(`python scripts/readme_tables.py`).

    python benchmarks/quality_table.py --glass /work/runs/mtd_s0 /work/runs/mtd_s1 --baseline /work/runs/pc_mtd_s0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from glass_ad.model.checkpoint import Checkpoint
from glass_ad.model.memory_bank import describe_bank
from record import add_results_option, record_rows

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap")


def glass_row(run: Path) -> dict:
    checkpoint = Checkpoint.load(run)
    training = checkpoint.training
    report = json.loads(Path(f"{run}.json").read_text())
    kept = next((r for r in training.history if r.get("epoch") == training.best_epoch), {})
    check = training.extra.get("branch_check") or {}
    return {
        "data": Path(training.data_root or "").name,
        "recipe": checkpoint.config.recipe,
        "method": "GLASS (hybrid score)" if checkpoint.config.score == "hybrid" else "GLASS",
        "bank": describe_bank(checkpoint.memory_bank),
        "seed": checkpoint.config.seed,
        "hypothesis": checkpoint.hypothesis
        + (f" ({checkpoint.config.hypersphere_shell} shell)" if checkpoint.hypothesis == "hypersphere" else ""),
        "check": " ".join(f"{k} {v:.2f}" for k, v in check.get("separations", {}).items()),
        "epochs": training.epochs_run,
        "kept_epoch": training.best_epoch,
        "stopped_by": training.stopped_by,
        "train_s": round(training.wall_time_s or 0.0),
        "epoch_s": round(sum(r.get("epoch_s", 0.0) for r in training.history) / max(1, len(training.history)), 1),
        "gas_separation_kept": round(kept.get("val_gas_separation", float("nan")), 3),
        **{m: round(100 * report[m], 1) for m in METRICS if m in report},
    }


def baseline_row(path: Path) -> dict:
    report = json.loads(path.read_text())
    pool = report.get("coreset_pool", 1.0)
    name = f"PatchCore {100 * report['coreset_fraction']:g} %" + (f" of a {100 * pool:g} % pool" if pool < 1 else "")
    return {
        "data": Path(report.get("data", path.stem)).name,
        "method": name + (", re-weighted" if report.get("reweight") else ""),
        "seed": report.get("seed", ""),
        **{m: round(100 * report[m], 1) for m in METRICS if m in report},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glass", nargs="*", default=[], help="run folders, each with RUN.json from glass test")
    parser.add_argument("--baseline", nargs="*", default=[], help="JSON files of patchcore_baseline.py")
    add_results_option(parser, "quality")
    parser.add_argument("--csv", dest="results", type=Path, help="the same as --results (the older spelling)")
    parser.add_argument("--busy", action="store_true", help="other jobs shared the CPU: the runs' times are not comparable")
    args = parser.parse_args()
    rows = [glass_row(Path(r)) for r in args.glass] + [baseline_row(Path(p)) for p in args.baseline]
    for row in rows:
        row["machine"] = "busy" if args.busy else "quiet"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

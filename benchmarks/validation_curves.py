"""Runs compared by their validation curves, read from each run's stored training history (no data read).

Per run: epochs trained and why training stopped, the best validation score and its epoch, the mean score
after epoch 2 and over a window of epochs all runs share, the branch separations at the kept epoch, the
GAS loss of the first and last epochs, and
where a time limit (``--time-limit MIN``) would have stopped it, replayed with `training.loop.TimeLimit`
on the recorded epoch durations (``epoch_s``; histories written before it have only ``elapsed_s``, whose
differences stand in from epoch 2 on, epoch 1 taken as long as epoch 2).

    python benchmarks/validation_curves.py runs/t4_las_only runs/r15 --window 3-14 --time-limit 9.5

One row per run goes to `results/validation_curves.csv` (`--results`; `benchmarks/record.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from glass_ad.model.checkpoint import Checkpoint
from record import add_results_option, record_rows
from glass_ad.training.loop import TimeLimit


def epoch_seconds(history: list[dict[str, float]]) -> list[float]:
    if all("epoch_s" in record for record in history):
        return [record["epoch_s"] for record in history]
    elapsed = [record["elapsed_s"] for record in history]
    gaps = list(np.diff(elapsed))
    return [gaps[0] if gaps else elapsed[0], *gaps]


def replay_limit(history: list[dict[str, float]], minutes: float) -> int:
    """The epoch after which a `minutes` limit would have stopped this run (its last epoch if none)."""
    limit = TimeLimit(minutes * 60.0)
    for index, (record, seconds) in enumerate(zip(history, epoch_seconds(history))):
        limit.record(seconds)
        if index + 1 < len(history) and not limit.allows_another(record["elapsed_s"]):
            return index + 1
    return len(history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--window", default="3-14", help="epochs FIRST-LAST averaged for every run")
    parser.add_argument("--time-limit", type=float, default=None, help="replay this limit (minutes)")
    add_results_option(parser, "validation_curves")
    args = parser.parse_args()
    first, last = (int(v) for v in args.window.split("-"))

    columns = ["run", "epochs (stopped by)", "best val (epoch)", "mean after epoch 2", f"mean, epochs {first}–{last}",
               "GAS / LAS separation at the kept epoch", "GAS loss, epoch 1 → last"]  # fmt: skip
    if args.time_limit is not None:
        columns.append(f"{args.time_limit:g}-min limit: stop after (best then)")
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    rows = []
    for run in args.runs:
        checkpoint = Checkpoint.load(run)
        training = checkpoint.training
        history = list(training.history)
        scores = [record["val_score"] for record in history]
        best = int(np.argmax(scores))
        kept = history[training.best_epoch - 1] if training.best_epoch else history[best]
        window = scores[first - 1 : last]
        cells = [
            run,
            f"{len(history)} ({training.stopped_by or 'not recorded'})",
            f"{scores[best]:.3f} ({best + 1})",
            f"{np.mean(scores[2:]):.3f}" if len(scores) > 2 else "–",
            f"{np.mean(window):.3f}" if len(window) == last - first + 1 else "– (too short)",
            f"{kept.get('val_gas_separation', float('nan')):.2f} / {kept.get('val_las_separation', float('nan')):.2f}",
            f"{history[0].get('loss_gas', float('nan')):.2f} → {history[-1].get('loss_gas', float('nan')):.2f}",
        ]
        if args.time_limit is not None:
            stop = replay_limit(history, args.time_limit)
            best_then = int(np.argmax(scores[:stop]))
            cells.append(f"{stop} ({best_then + 1}: {scores[best_then]:.3f})")
        print("| " + " | ".join(cells) + " |")
        rows.append({
            "data": Path(training.data_root or "").name, "recipe": checkpoint.config.recipe,
            "seed": checkpoint.config.seed, "run": Path(run).name, "epochs": len(history),
            "stopped_by": training.stopped_by or "", "best_val": round(scores[best], 3), "best_epoch": best + 1,
            "mean_val_after_epoch_2": round(float(np.mean(scores[2:])), 3) if len(scores) > 2 else "",
            "window": args.window,
            "mean_val_window": round(float(np.mean(window)), 3) if len(window) == last - first + 1 else "",
            "gas_separation_kept": round(kept.get("val_gas_separation", float("nan")), 3),
            "las_separation_kept": round(kept.get("val_las_separation", float("nan")), 3),
        })  # fmt: skip
    record_rows(args.results, rows)


if __name__ == "__main__":
    main()

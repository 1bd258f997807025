"""The results tables of a suite or ablation: ``results.csv`` and ``results.md``, one row per job and the
Mean row last, rewritten after every job."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from glass_ad.research.jobs import EXTRA_METRICS, METRIC_LABELS, PAPER_METRICS, JobResult, percent
from glass_ad.safety import write_atomic

__all__ = ["table_rows", "write_tables"]


def _seconds(value: Any) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    return f"{value:.1f}"


def _mean(results: Sequence[JobResult], key: str) -> float | None:
    values = [r.metrics.get(key) for r in results if r.ok]
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def _status(result: JobResult) -> str:
    return f"failed: {result.error}" if not result.ok else "ok"


def table_rows(results: Sequence[JobResult]) -> list[dict[str, Any]]:
    """Rows of the table (values already formatted), the Mean row last."""
    rows = []
    for r in results:
        m = r.metrics if r.ok else {}
        row = {"name": r.name}
        row.update({k: percent(m.get(k)) if r.ok else "" for k in PAPER_METRICS + EXTRA_METRICS})
        row["hypothesis"] = m.get("hypothesis") or ""
        row["train_s"] = _seconds(m.get("train_wall_time_s"))
        row["test_s"] = _seconds(m.get("test_wall_time_s"))
        row["status"] = _status(r)
        rows.append(row)
    finished = [r for r in results if r.ok]
    mean = {"name": "Mean" if len(finished) == len(results) else f"Mean ({len(finished)} of {len(results)})"}
    mean.update({k: percent(_mean(results, k)) if finished else "" for k in PAPER_METRICS + EXTRA_METRICS})
    mean["hypothesis"] = ""
    mean["train_s"] = _seconds(_mean(results, "train_wall_time_s"))
    mean["test_s"] = _seconds(_mean(results, "test_wall_time_s"))
    mean["status"] = ""
    rows.append(mean)
    return rows


def write_tables(out_dir: str | Path, results: Sequence[JobResult], *, title: str = "Results", first_column: str = "category") -> tuple[Path, Path]:
    """``results.csv`` (one column per value) and ``results.md`` (the paper's "image AUROC / pixel AUROC /
    AUPRO" cell, in %, one decimal); both end with the Mean row."""
    out_dir = Path(out_dir)
    rows = table_rows(results)
    keys = ["name", *PAPER_METRICS, *EXTRA_METRICS, "hypothesis", "train_s", "test_s", "status"]
    header = [first_column, *(f"{METRIC_LABELS[k]} (%)" for k in PAPER_METRICS + EXTRA_METRICS), "hypothesis", "train time (s)", "test time (s)", "status"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[k] for k in keys])
    csv_path = write_atomic(out_dir / "results.csv", buffer.getvalue())

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        f"# {title}",
        "",
        f"| {first_column} | image AUROC / pixel AUROC / AUPRO | image AP | pixel AP | hypothesis | train (s) | test (s) | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        bold = row is rows[-1]
        triple = " / ".join(row[k] for k in PAPER_METRICS) if any(row[k] for k in PAPER_METRICS) else ""
        name = f"**{row['name']}**" if bold else row["name"]
        lines.append(
            f"| {cell(name)} | {triple} | {row['image_ap']} | {row['pixel_ap']} | {row['hypothesis']} | "
            f"{row['train_s']} | {row['test_s']} | {cell(row['status'])} |"
        )
    lines += ["", _settings_note(results)]
    md_path = write_atomic(out_dir / "results.md", "\n".join(lines) + "\n")
    return csv_path, md_path


def _settings_note(results: Sequence[JobResult]) -> str:
    """One line naming the settings of the first finished row (from its model, so ``--model`` runs are
    described by the model they tested)."""
    failed = sum(1 for r in results if not r.ok)
    text = "Values in %; Mean over the finished rows (n/a values left out)."
    if failed:
        text += f" {failed} failed: rerun the same command to retry them."
    first = next((r.metrics for r in results if r.ok), None)
    if first:
        request = first.get("request") or {}
        parts = [f"{k}={first.get(k)}" for k in ("recipe", "backbone", "image_size", "epochs_run") if k in first]
        if request.get("model"):
            parts.append(f"model={request['model']}")
        else:
            config = request.get("config") or {}
            parts += [f"{k}={config.get(k)}" for k in ("seed", "textures") if k in config]
        text += " Settings of the first row: " + ", ".join(parts) + "."
    return text

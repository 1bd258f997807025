"""Figures as data: every benchmark script records its rows under `results/`, one CSV file per script.

A row holds what was measured (data set, recipe, the figures) and where: the CPU's name and core count, its
SIMD flags (AVX2, AVX-512, bf16, AMX: they decide kernels and precision), the commit (`git describe
--dirty`), the UTC time and the command as typed. A file gains columns when a script adds a figure; older
rows keep theirs empty. Rows copied from prose carry ``source`` naming where they were copied from.

    from record import record_rows   # benchmarks/ is the script's own folder, so first on sys.path
    record_rows("branch_probe", [{"data": "mtd", "recipe": "fast", "steps": 50, "separation": 0.995}])
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
# Where the figures were taken on: after the figures in every file, in this order.
PROVENANCE = ("cpu", "cpu_flags", "commit", "utc", "command", "source")


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def cpu_name() -> str:
    """The CPU's model name and how many cores this process may use, e.g. 'Intel(R) Xeon(R) Processor, 2 cores'."""
    name = _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def cpu_flags() -> str:
    """The SIMD flags that decide kernels and precision here, space-separated."""
    flags = (_cpuinfo_field("flags") or "").split()
    return " ".join(flag for flag in SIMD_FLAGS if flag in flags)


def commit() -> str:
    """`git describe --always --dirty` of the checkout the script runs from ('unknown' outside one)."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def _script_name() -> str:
    """The running script as the repository names it (benchmarks/NAME.py), wherever it was started from."""
    script = Path(sys.argv[0]).resolve()
    return str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]


def provenance() -> dict[str, str]:
    """The columns that say where and when a row was measured, and by which command."""
    return {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "commit": commit(),
        "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": shlex.join(["python", _script_name(), *sys.argv[1:]]),
    }


def cap_isa(isa: str | None) -> None:
    """Emulate a CPU with at most instruction set ``isa`` (e.g. AVX2) where the libraries allow it: set,
    before they load, ``ONEDNN_MAX_CPU_ISA`` and ``OV_CPU_MAX_ISA`` (oneDNN, OpenVINO), ``ATEN_CPU_CAPABILITY``
    and ``MKL_ENABLE_INSTRUCTIONS`` (PyTorch's own kernels, MKL). ONNX Runtime has no such switch."""
    if not isa:
        return
    isa = isa.upper()
    os.environ["ONEDNN_MAX_CPU_ISA"] = isa
    os.environ["OV_CPU_MAX_ISA"] = isa
    os.environ["MKL_ENABLE_INSTRUCTIONS"] = isa
    os.environ["ATEN_CPU_CAPABILITY"] = isa.lower() if isa in ("AVX2", "AVX512") else "default"


def add_results_option(parser: argparse.ArgumentParser, name: str) -> None:
    """`--results FILE` (default results/NAME.csv) and `--no-results` on a script's parser."""
    parser.add_argument("--results", type=Path, default=RESULTS / f"{name}.csv", help="append the rows to this CSV file")
    parser.add_argument("--no-results", dest="results", action="store_const", const=None, help="record nothing")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV file (empty when there is none)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _header(path: Path) -> list[str]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle).fieldnames or [])


def append_rows(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Append rows to a CSV file, figures first and `PROVENANCE` last; a new column rewrites the file with
    the wider header (older rows leave it empty)."""
    new = [dict(row) for row in rows]
    header = _header(path)
    added = [key for row in new for key in row if key not in header]
    if header and not added:
        with path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=header).writerows(new)
        return path
    old = read_rows(path)
    broken = [number for number, row in enumerate(old, start=2) if None in row]
    if broken:  # a value with an unquoted comma: rewriting would drop the spill-over, so refuse first
        raise ValueError(f"{path}: line(s) {broken} have more fields than the header; repair them first")
    names = list(dict.fromkeys([*header, *added]))
    columns = [c for c in names if c not in PROVENANCE] + [c for c in PROVENANCE if c in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # the old rows survive a failed rewrite
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(old + new)
    partial.replace(path)
    return path


def record_rows(target: str | Path | None, rows: Iterable[Mapping[str, Any]]) -> Path | None:
    """Stamp rows with `provenance()` (a row's own value wins, e.g. the command of a shell script) and append
    them to `target` (a path, or NAME for results/NAME.csv); None records nothing. Prints where they went."""
    if target is None:
        return None
    path = Path(target) if isinstance(target, Path) or str(target).endswith(".csv") else RESULTS / f"{target}.csv"
    stamp = provenance()
    stamped = [{**stamp, **row} for row in rows]
    if not stamped:
        return None
    append_rows(path, stamped)
    print(f"recorded {len(stamped)} row(s) in {path}")
    return path


__all__ = ["RESULTS", "add_results_option", "append_rows", "commit", "cpu_flags", "cpu_name", "provenance", "read_rows", "record_rows"]

"""Results as data: every row under results/ says what was measured and where, and the shared recorder of
the benchmark scripts (benchmarks/record.py) keeps older rows when a script adds a column."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import record  # noqa: E402  (benchmarks/record.py: the scripts import it from their own folder)

RESULT_FILES = sorted((ROOT / "results").glob("*.csv"))


def test_there_are_results():
    assert {path.name for path in RESULT_FILES} >= {"quality.csv", "operating_point.csv"}


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda path: path.name)
def test_every_row_names_its_data_cpu_and_origin(path):
    rows = record.read_rows(path)
    assert rows, path
    for number, row in enumerate(rows, start=2):
        where = f"{path.name}:{number}"
        assert None not in row, f"{where}: more fields than the header (a value with an unquoted comma?)"
        assert row.get("data"), f"{where}: no data set"
        assert row.get("cpu") or row.get("cpu_flags"), f"{where}: no CPU"
        assert row.get("commit") or row.get("source"), f"{where}: neither a commit nor a source"
        if row.get("source", "").startswith("transcribed"):
            assert row.get("command"), f"{where}: a transcribed row names the command of its figures"


def test_a_new_column_keeps_the_older_rows(tmp_path):
    path = tmp_path / "probe.csv"
    record.append_rows(path, [{"data": "a", "x": 1, "cpu": "c"}])
    record.append_rows(path, [{"data": "b", "y": 2, "cpu": "c"}])
    record.append_rows(path, [{"data": "c", "x": 3}])
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == ["data", "x", "y", "cpu"]  # figures first, where-measured last
    assert [(r["data"], r["x"], r["y"]) for r in rows] == [("a", "1", ""), ("b", "", "2"), ("c", "3", "")]


def test_a_broken_file_is_refused_before_a_rewrite_and_kept(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("data,cpu\na,c,spill-over\n")
    with pytest.raises(ValueError, match="more fields than the header"):
        record.append_rows(path, [{"data": "b", "cpu": "c", "new": 1}])
    assert path.read_text() == "data,cpu\na,c,spill-over\n"


def test_recorded_rows_carry_the_machine_commit_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "branch_probe.py"), "DATA", "--steps", "4"])
    path = record.record_rows(tmp_path / "rows.csv", [{"data": "mtd", "recipe": "fast", "gas_separation": 0.99}])
    (row,) = record.read_rows(path)
    assert row["command"] == "python benchmarks/branch_probe.py DATA --steps 4"
    assert row["cpu"] and row["commit"] and row["utc"].endswith("Z")
    assert record.record_rows(None, [{"data": "mtd"}]) is None


# Scripts under benchmarks/ that measure nothing: the recorder itself, and a data-set generator.
NO_FIGURES = {"record.py", "aligned_object.py"}


def test_every_benchmark_script_records_its_figures():
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    silent = [path.name for path in scripts if path.name not in NO_FIGURES and "record_rows(" not in path.read_text()]
    assert not silent, f"benchmark scripts that print figures without recording them under results/: {silent}"

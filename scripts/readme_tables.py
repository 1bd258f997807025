"""README's generated tables: the option table (from config.py) and "Measured" (from results/).

Each table stands in README.md between ``<!-- begin generated: NAME … -->`` and ``<!-- end generated: NAME
-->``; the lines between are this script's, not written by hand. `tests/test_readme_tables.py` fails when
README's copy differs from what the script makes now, e.g. after a recipe changed in config.py or a row was
added to results/quality.csv or results/operating_point.csv.

    python scripts/readme_tables.py           # rewrite the tables in README.md
    python scripts/readme_tables.py --check   # exit 1 and name the stale tables
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "results"

# results/quality.csv's data sets and scorers, as the README names them (others keep their own names)
DATA_NAMES = {"mtd": "MTD (grey texture)", "mpdd_metal_plate": "MPDD metal_plate (colour object)"}
SCORERS = {
    "GLASS (hybrid score)": "**default** (hybrid score)",
    "GLASS": "GLASS, the paper's score (`--score glass`)",
    "PatchCore 10 %": "PatchCore on the same features (10 % coreset)",
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _latest(rows: list[dict[str, str]], *keys: str) -> dict[tuple[str, ...], dict[str, str]]:
    """The newest row (the last in the file) of each combination of `keys`."""
    return {tuple(row.get(k, "") for k in keys): row for row in rows}


def _seeds(rows: list[dict[str, str]], column: str, render: Callable[[str], str] = str) -> str:
    return " / ".join(render(row[column]) if row.get(column) else "–" for row in rows)


def measured_table(results: Path = RESULTS) -> str:
    """The default command's quality, the paper's score and the baseline per data set and seed
    (results/quality.csv: GLASS rows of GLASS-j with its branch check, i.e. the default command), with the
    stored threshold's false alarms on good test images (results/operating_point.csv) and the CPU named."""
    quality = [
        row for row in _read(results / "quality.csv")
        if row["method"] in SCORERS and (row["method"] == "PatchCore 10 %" or row.get("check"))
    ]  # fmt: skip
    newest = _latest(quality, "data", "method", "seed")
    points = _latest(_read(results / "operating_point.csv"), "data", "score", "seed")
    lines = [
        "| data | scorer | seed | image AUROC | pixel AUROC | AUPRO | training | false alarms on good test images (1 % target) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    machines: dict[str, set[str]] = {}
    for data in dict.fromkeys(row["data"] for row in quality):
        for method in SCORERS:
            rows = [row for key, row in sorted(newest.items()) if key[:2] == (data, method)]
            if not rows:
                continue
            score = {"GLASS (hybrid score)": "hybrid", "GLASS": "glass"}.get(method)
            decided = [points.get((data, score or "", row["seed"])) for row in rows]
            false_alarms = (
                " / ".join(f"{float(p['false_alarm_rate']):.1f} % of {p['good_images']}" if p else "–" for p in decided)
                if score and any(decided)
                else ""
            )
            training = (
                f"{rows[0]['epochs']} epochs, {_seeds(rows, 'train_s', lambda s: f'{float(s) / 60:.1f}')} min"
                if rows[0].get("epochs")
                else ""
            )
            if training and any(row.get("machine") == "busy" for row in rows):
                training += " (CPU shared with other jobs: not a timing)"
            lines.append(
                f"| {DATA_NAMES.get(data, data)} | {SCORERS[method]} | {_seeds(rows, 'seed')} | "
                + " | ".join(_seeds(rows, metric) for metric in METRICS)
                + f" | {training} | {false_alarms} |"
            )
            for row in rows:
                machines.setdefault(row.get("cpu") or "a CPU", set()).add(row.get("cpu_flags", ""))
    cpus = "; ".join(f"{cpu} ({', '.join(sorted(f for f in flags if f)) or 'flags not recorded'})" for cpu, flags in machines.items())
    lines += [
        "",
        f"Image AUROC / pixel AUROC / AUPRO in %, seeds separated by /. CPU: {cpus}. Rows: `results/quality.csv`"
        " (`benchmarks/quality_table.py`) and `results/operating_point.csv` (`benchmarks/operating_point.py`).",
    ]
    return "\n".join(lines) + "\n"


def option_table() -> str:
    from glass_ad.cli.option_table import markdown

    return markdown()


TABLES: dict[str, Callable[[], str]] = {"options": option_table, "measured": measured_table}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- begin generated: {name}\b[^>]*-->\n)(.*?)(<!-- end generated: {name} -->)", re.DOTALL)


def render(text: str) -> str:
    """README's text with every generated table made anew."""
    for name, make in TABLES.items():
        pattern = _block(name)
        if not pattern.search(text):
            raise ValueError(f"README has no block '<!-- begin generated: {name} … -->' … '<!-- end generated: {name} -->'")
        table = make()
        text = pattern.sub(lambda match, table=table: match.group(1) + table + match.group(3), text)
    return text


def stale_tables(text: str) -> list[str]:
    """The names of the generated tables whose copy in `text` differs from what they are now."""
    fresh = render(text)
    return [name for name in TABLES if _block(name).search(text).group(2) != _block(name).search(fresh).group(2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a table is stale")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    stale = stale_tables(text)
    if args.check:
        if stale:
            print(f"stale in {args.readme}: {', '.join(stale)}; regenerate with python scripts/readme_tables.py")
        return 1 if stale else 0
    if stale:
        args.readme.write_text(render(text), encoding="utf-8")
    print(f"{args.readme}: {', '.join(stale) or 'nothing'} regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())

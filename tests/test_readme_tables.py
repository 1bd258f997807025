"""README's generated tables are current: the option table follows config.py's recipes, and "Measured"
follows the rows under results/ (`scripts/readme_tables.py` writes both; rerun it when this fails)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from glass_ad import config

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_readme_tables_are_current():
    stale = _script().stale_tables((ROOT / "README.md").read_text(encoding="utf-8"))
    assert not stale, f"README's {', '.join(stale)} table is stale: run python scripts/readme_tables.py"


def test_option_table_numbers_come_from_the_recipes(monkeypatch):
    from glass_ad.cli.option_table import markdown

    assert "fast 4 / 0.005 / 2; paper 20 / 0.001 / 5" in markdown()
    monkeypatch.setitem(config.FAST_RECIPE, "ascent_steps", 7)
    assert "fast 7 / 0.005 / 2; paper 20 / 0.001 / 5" in markdown()


def test_by_recipe_names_both_recipes_or_one_default():
    assert config.by_recipe("ascent_steps") == f"fast {config.FAST_RECIPE['ascent_steps']}, paper {config.PAPER_RECIPE['ascent_steps']}"
    assert config.by_recipe("stop_window") == f"default {config.field_default('stop_window')}"
    assert config.by_recipe("max_patches_per_image").endswith("paper none")


def test_every_option_that_differs_by_recipe_shows_both_values():
    """Each `glass train` option whose default the recipe decides states both recipes' values, formatted
    from config.py: none is retyped in a help text."""
    import typer

    from glass_ad.cli import app

    train = typer.main.get_command(app).commands["train"]
    helps = {param.name: param.help or "" for param in train.params}
    differing = [name for name in {**config.FAST_RECIPE, **config.PAPER_RECIPE} if name != "recipe"
                 and config.recipe_value("fast", name) != config.recipe_value("paper", name)]  # fmt: skip
    missing = [name for name in differing if name in helps and config.by_recipe(name) not in helps[name]]
    assert not missing, missing


def test_train_help_shows_the_recipe_values():
    from typer.testing import CliRunner

    from glass_ad.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for name in ("ascent_steps", "ascent_step_size", "project_every", "patch_fraction", "time_limit_min"):
        assert config.by_recipe(name) in result.output, name


def test_measured_table_names_the_cpu_and_takes_the_newest_row(tmp_path):
    script = _script()
    for name in ("quality.csv", "operating_point.csv"):
        (tmp_path / name).write_text((ROOT / "results" / name).read_text())
    with (tmp_path / "quality.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    seed1 = [r for r in rows if (r["data"], r["method"], r["seed"]) == ("mtd", "GLASS (hybrid score)", "1") and r["check"]]
    rerun = dict(data="mtd", recipe="fast", method="GLASS (hybrid score)", seed="0", check="manifold 1.00", epochs="20",
                 train_s="300", image_auroc="90.1", pixel_auroc="75.0", aupro="79.0", cpu="Other CPU", cpu_flags="avx2")
    with (tmp_path / "quality.csv").open("a", newline="") as handle:  # a rerun of the default, seed 0, elsewhere
        csv.DictWriter(handle, fieldnames=header, restval="").writerow(rerun)
    table = script.measured_table(tmp_path)
    assert f"90.1 / {seed1[-1]['image_auroc']}" in table and "Other CPU (avx2)" in table


@pytest.mark.parametrize("broken", ["", "<!-- begin generated: options -->\n"])
def test_readme_without_its_markers_is_refused(broken):
    with pytest.raises(ValueError, match="generated"):
        _script().render(broken)

"""The study's settings as files: every config under benchmarks/configs/ loads as `glass train --config`
reads it and validates as a `GlassConfig`, and every file benchmarks/mtd_study.sh trains with exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from glass_ad.config import make_config
from glass_ad.provenance import load_config_file

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "benchmarks" / "configs").rglob("*.yaml"))
STUDY = ROOT / "benchmarks" / "mtd_study.sh"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(ROOT / "benchmarks" / "configs")))
def test_config_file_loads_and_validates(path):
    values = load_config_file(path)
    recipe = values.pop("recipe", "fast")
    config = make_config(recipe, **values)
    for name, value in values.items():  # every setting the file names arrives as written
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(config, name) == expected, name


def _study_config_paths() -> list[Path]:
    text = STUDY.read_text()
    folder = re.search(r"^CONFIGS=(\S+)$", text, re.M).group(1)
    named = re.findall(r"--config (\S+)", text)
    paths = []
    for name in named:
        name = name.replace("$CONFIGS", folder)
        variants = [name.replace("$mode", mode) for mode in ("noise", "ascent")] if "$mode" in name else [name]
        paths += [ROOT / variant for variant in variants]
    return paths


def test_every_study_training_step_names_a_config_file():
    text = STUDY.read_text()
    trains = [line for line in text.splitlines() if "glass train $DATA" in line]
    assert trains and all("--config " in line for line in trains), [line for line in trains if "--config " not in line]
    missing = [str(path) for path in _study_config_paths() if not path.is_file()]
    assert not missing, missing


def test_the_study_folder_holds_only_used_files():
    used = {path.resolve() for path in _study_config_paths()}
    unused = [path.name for path in CONFIGS if path.resolve() not in used]
    assert not unused, unused

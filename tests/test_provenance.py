"""Reproducible runs: `glass --version`, `glass train --config` (YAML/TOML), config.yaml and history.csv
beside the model, package version and training-data fingerprint in the checkpoint and `glass info`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from glass_ad import __version__
from glass_ad.cli import app
from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.model.checkpoint import read_checkpoint
from glass_ad.provenance import data_fingerprint, load_config_file

runner = CliRunner()

TINY = """\
recipe = "fast"
epochs = 1
image_size = 64
backbone = "efficientnet_lite0"
early_stopping = false
num_threads = 1
seed = 1
"""


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"glass-ad {__version__}"


def test_data_fingerprint_follows_names_and_sizes(tmp_path):
    for name, size in (("a.png", 10), ("b.png", 20)):
        (tmp_path / name).write_bytes(b"x" * size)
    first = data_fingerprint([tmp_path / "b.png", tmp_path / "a.png"], tmp_path)
    assert first == data_fingerprint([tmp_path / "a.png", tmp_path / "b.png"], tmp_path)  # order-free
    assert first["files"] == 2 and first["bytes"] == 30
    (tmp_path / "a.png").write_bytes(b"x" * 11)
    assert data_fingerprint([tmp_path / "a.png", tmp_path / "b.png"], tmp_path)["sha256"] != first["sha256"]


def test_config_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        load_config_file(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = = 1\n")
    with pytest.raises(ValueError, match="cannot be read") as error:
        load_config_file(broken)
    assert "\n" not in str(error.value)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.toml"):
        load_config_file(tmp_path / "x.json")


@pytest.mark.slow
def test_train_from_a_config_file_records_the_run(tmp_path):
    data = make_demo_dataset(tmp_path / "data", n_train=16, n_test_good=2, n_test_defect=2, size=64)
    config_file = tmp_path / "run.toml"
    config_file.write_text(TINY)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), "--out", str(out), "--config", str(config_file), "--seed", "3", "-q"])
    assert result.exit_code == 0, result.output
    checkpoint = read_checkpoint(out)
    config = checkpoint["config"]
    assert config["epochs"] == 1 and config["image_size"] == 64 and config["backbone"] == "efficientnet_lite0"
    assert config["seed"] == 3  # the command line wins over the file
    info = checkpoint["provenance"]
    train_files = sorted((data / "train" / "good").iterdir())
    assert info["package_version"] == __version__
    assert info["data_fingerprint"] == data_fingerprint(train_files, data)["sha256"] and info["train_files"] == 16
    # config.yaml beside the model reloads to the same settings; history.csv has one row per epoch.
    dumped = load_config_file(out / "config.yaml")
    assert make_config(**dumped).to_dict() == config
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "epoch" in history[0]
    shown = json.loads(runner.invoke(app, ["info", str(out)]).output)
    assert shown["provenance"]["data_fingerprint"] == info["data_fingerprint"]

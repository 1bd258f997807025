"""Research workflows: resumable suites, ablations, weak-defect test sets, previews (CPU, well under 90 s).

Two tiny generated categories are trained once for the whole module (1 epoch, 64 px, EfficientNet-Lite0);
the first suite run is made to crash on the second category, the second run must finish it without
retraining the first. Tests that use those trained runs are marked `slow`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import glass_ad.evaluation.tester as tester_module
import glass_ad.training as trainer_module
from glass_ad.cli import app
from glass_ad.config import make_config
from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.data.io import read_image
from glass_ad.data.layouts import load_dataset
from glass_ad.model.checkpoint import read_checkpoint
from glass_ad.research.suite import ablation_jobs, run_ablation, run_suite
from glass_ad.research.weak_defects import beta_folder_name, make_weak_defects, parse_betas


def _config(**overrides):
    values = dict(backbone="efficientnet_lite0", image_size=64, epochs=1, seed=0, num_threads=2)
    values.update(overrides)
    return make_config("fast", **values)


def _quiet(_: str) -> None:
    pass


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def _table(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite_data")
    # "wood" is one of the categories the reference resizes to 329/288 before the crop.
    make_demo_dataset(root, n_train=16, n_test_good=3, n_test_defect=3, size=64, seed=0, name="alpha")
    make_demo_dataset(root, n_train=16, n_test_good=3, n_test_defect=3, size=64, seed=1, name="wood")
    return root


@pytest.fixture(scope="module")
def suite_runs(data_root, tmp_path_factory) -> dict:
    """Run 1 crashes while training 'wood'; run 2 resumes. Returns what the tests check."""
    out = tmp_path_factory.mktemp("suite_out")
    calls: list[tuple[str, str]] = []
    real_train, real_test = trainer_module.train, tester_module.test
    crash = {"on": True}

    def train(data, run_dir, config, *, category=None, **kwargs):
        calls.append(("train", category))
        if crash["on"] and category == "wood":
            raise RuntimeError("simulated crash\nsecond line of the message")
        return real_train(data, run_dir, config, category=category, **kwargs)

    def test(run_dir, data, *, category=None, **kwargs):
        calls.append(("test", category))
        return real_test(run_dir, data, category=category, **kwargs)

    state: dict = {"out": out}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "train", train)
        patch.setattr(tester_module, "test", test)
        state["first"] = run_suite(data_root, out, _config(), progress=False, echo=_quiet)
        state["first_table"] = (out / "results.md").read_text()
        state["first_error"] = (out / "wood" / "error.txt").read_text()
        state["stamps"] = {p.name: p.stat().st_mtime_ns for p in (out / "alpha").iterdir() if p.is_file()}
        state["calls_first"] = list(calls)
        crash["on"] = False
        state["second"] = run_suite(data_root, out, _config(), progress=False, echo=_quiet)
        state["calls_second"] = calls[len(state["calls_first"]) :]
    return state


# ----------------------------------------------------------------------------------------------- suite


@pytest.mark.slow  # uses the suite trained for this module
def test_crashed_category_is_reported_and_the_suite_goes_on(suite_runs):
    first = suite_runs["first"]
    assert [r.status for r in first] == ["done", "failed"]
    assert first[1].error == "RuntimeError: simulated crash"  # one line
    table = suite_runs["first_table"]
    assert "failed: RuntimeError: simulated crash" in table and "Mean (1 of 2)" in table
    assert suite_runs["calls_first"] == [("train", "alpha"), ("test", "alpha"), ("train", "wood")]
    assert "Traceback" in suite_runs["first_error"] and "second line" in suite_runs["first_error"]


@pytest.mark.slow  # uses the suite trained for this module
def test_resume_skips_finished_categories(suite_runs):
    out = suite_runs["out"]
    assert suite_runs["calls_second"] == [("train", "wood"), ("test", "wood")]  # alpha neither retrained nor retested
    assert [r.status for r in suite_runs["second"]] == ["skipped", "done"]
    assert suite_runs["stamps"] == {p.name: p.stat().st_mtime_ns for p in (out / "alpha").iterdir() if p.is_file()}
    assert not (out / "wood" / "error.txt").exists()


@pytest.mark.slow  # uses the suite trained for this module
def test_results_table_layout(suite_runs):
    out = suite_runs["out"]
    rows = _table(out)
    assert [r["category"] for r in rows] == ["alpha", "wood", "Mean"]
    columns = {"image AUROC (%)": "image_auroc", "pixel AUROC (%)": "pixel_auroc", "AUPRO (%)": "aupro",
               "image AP (%)": "image_ap", "pixel AP (%)": "pixel_ap"}  # fmt: skip
    for row in rows[:2]:  # each cell is its run's metrics.json value in %, one decimal
        measured = json.loads((out / row["category"] / "metrics.json").read_text())
        for column, key in columns.items():
            value = row[column]
            assert len(value.split(".")[1]) == 1, value
            assert float(value) == pytest.approx(100 * measured[key], abs=0.05 + 1e-9), (row["category"], column)
    for key in ("image AUROC (%)", "AUPRO (%)"):
        mean = np.mean([float(r[key]) for r in rows[:2]])
        assert abs(float(rows[2][key]) - mean) <= 0.051
    assert rows[0]["hypothesis"] in ("manifold", "hypersphere") and float(rows[0]["train time (s)"]) > 0
    assert rows[0]["status"] == "ok"
    markdown = (out / "results.md").read_text()
    assert "| **Mean** |" in markdown and "image AUROC / pixel AUROC / AUPRO" in markdown
    metrics = json.loads((out / "wood" / "metrics.json").read_text())
    assert metrics["image_auroc"] == pytest.approx(float(rows[1]["image AUROC (%)"]) / 100, abs=5e-4)
    with (out / "wood" / "scores.csv").open() as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == 9 and {s["label"] for s in scores} == {"0", "1"}


@pytest.mark.slow  # uses the suite trained for this module
def test_reference_resize_is_applied_per_category(suite_runs):
    out = suite_runs["out"]
    assert read_checkpoint(out / "wood")["config"]["resize"] == round(329 * 64 / 288)
    assert read_checkpoint(out / "alpha")["config"]["resize"] is None


@pytest.mark.slow  # uses the suite trained for this module
def test_missing_metrics_reuses_the_trained_model(suite_runs, data_root, monkeypatch):
    out = suite_runs["out"]
    (out / "alpha" / "metrics.json").unlink()  # as if the run died during the test
    model_time = (out / "alpha" / "model.pt").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("must not retrain")

    monkeypatch.setattr(trainer_module, "train", no_training)
    results = run_suite(data_root, out, _config(), categories=["alpha"], pictures=False, progress=False, echo=_quiet)
    assert [r.status for r in results] == ["done"] and (out / "alpha" / "metrics.json").is_file()
    assert (out / "alpha" / "model.pt").stat().st_mtime_ns == model_time


def test_unknown_category_is_an_error(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown categories: nope \(found: alpha, wood\)"):
        run_suite(data_root, tmp_path, _config(), categories=["nope"], echo=_quiet)


# -------------------------------------------------------------------------------------------- ablation


def test_ablation_variants_change_one_setting():
    base = _config()
    las = ablation_jobs(base, "las", None, "c")
    assert [j.name for j in las] == ["las=on", "las=off"] and [j.config.las for j in las] == [True, False]
    gas = ablation_jobs(base, "gas", None, "c")
    assert [j.config.gas for j in gas] == ["off", "noise", "ascent", "full"]
    r1 = ablation_jobs(base, "r1", ["0.5", "1"], "c")
    assert [(j.config.r1, j.config.r2) for j in r1] == [(0.5, 1.0), (1.0, 2.0)]
    assert [j.config.adaptor for j in ablation_jobs(base, "adaptor", None, "c")] == [True, False]
    layers = ablation_jobs(base, "layers", ["blocks.2+blocks.3", "blocks.3"], "c")
    assert [j.config.layers for j in layers] == [("blocks.2", "blocks.3"), ("blocks.3",)]
    backbones = ablation_jobs(base, "backbone", ["efficientnet_lite0", "resnet18"], "c")
    assert [j.config.backbone for j in backbones] == ["efficientnet_lite0", "resnet18"]
    for jobs in (las, gas, r1, layers):  # nothing else changes
        for job in jobs:
            changed = {k for k, v in job.config.to_dict().items() if v != base.to_dict()[k]}
            assert changed <= {"las", "gas", "r1", "r2", "layers"}
    with pytest.raises(ValueError, match="unknown study"):
        ablation_jobs(base, "colour", None, "c")
    with pytest.raises(ValueError, match="gas values"):
        ablation_jobs(base, "gas", ["strong"], "c")


def test_ablation_runs_resumably_into_one_table(data_root, tmp_path, monkeypatch):
    seen = []

    def fake_train(data, run_dir, config, *, category=None, **kwargs):
        seen.append((category, config.hypothesis, config.r1))
        Path(run_dir, "model.pt").write_bytes(b"fake")

    def fake_test(run_dir, data, **kwargs):
        r1 = json.loads(Path(run_dir, "request.json").read_text())["config"]["r1"]
        return {"image_auroc": 0.9 + r1 / 100, "pixel_auroc": 0.8, "aupro": 0.7, "image_ap": 0.9, "pixel_ap": 0.5,
                "hypothesis": "manifold", "train_wall_time_s": 1.0, "test_wall_time_s": 0.5}  # fmt: skip

    monkeypatch.setattr(trainer_module, "train", fake_train)
    monkeypatch.setattr(tester_module, "test", fake_test)
    out = tmp_path / "ablate"
    results = run_ablation(data_root, out, _config(), "r1", values=["0.5", "2"], category="alpha", progress=False, echo=_quiet)
    assert [r.status for r in results] == ["done", "done"]
    assert seen == [("alpha", "manifold", 0.5), ("alpha", "manifold", 2.0)]  # r1 forces GLASS-m
    rows = _table(out)
    assert [r["variant"] for r in rows] == ["r1=0.5", "r1=2", "Mean"]
    assert rows[1]["image AUROC (%)"] == "92.0" and float(rows[2]["image AUROC (%)"]) == pytest.approx(91.25, abs=0.051)
    assert "# Ablation: r1 on alpha" in (out / "results.md").read_text()
    run_ablation(data_root, out, _config(), "r1", values=["0.5", "2"], category="alpha", progress=False, echo=_quiet)
    assert len(seen) == 2  # resumed: nothing retrained
    with pytest.raises(ValueError, match="choose one with --category: alpha, wood"):
        run_ablation(data_root, out, _config(), "las", echo=_quiet)


# ------------------------------------------------------------------------------------- weak defects


def _category_with_odd_sizes(root: Path) -> Path:
    """MVTec-layout category with non-square images: RGB and grey test/good images of two sizes."""
    rng = np.random.default_rng(0)
    for i in range(3):
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(root / "train" / "good" / f"{i}.png")
    (root / "test" / "good").mkdir(parents=True)
    for i in range(7):
        shape = (36, 52, 3) if i % 2 else (50, 40)
        Image.fromarray(rng.integers(40, 200, shape, dtype=np.uint8)).save(root / "test" / "good" / f"g{i}.png")
    return root


def test_weak_defect_sets(tmp_path):
    src = _category_with_odd_sizes(tmp_path / "src")
    out = tmp_path / "weak"
    betas = [0.1, 0.7]
    folders = make_weak_defects(src, out, betas, seed=3, echo=_quiet)
    assert [f.name for f in folders] == ["beta_0.1", "beta_0.7"]
    splits = [load_dataset(f) for f in folders]
    for split in splits:
        assert len(split.train) == 3 and split.has_masks
        assert sum(s.label == 0 for s in split.test) == 4 and sum(s.label == 1 for s in split.test) == 3
        assert split.defect_types == ["synthetic"]
    manifest = json.loads((out / "weak_defects.json").read_text())
    sources = {Path(r["source"]).stem: Path(r["source"]) for r in manifest["synthetic"]}
    weak, strong = ({s.path.stem: s for s in split.test if s.label} for split in (splits[1], splits[0]))
    assert set(weak) == set(strong) == set(sources)
    good_names = {s.path.name for s in splits[0].test if s.label == 0}
    assert good_names.isdisjoint({p.name for p in sources.values()})  # each good image used once
    for stem, original_path in sources.items():
        original = read_image(original_path)
        masks = [np.asarray(Image.open(case[stem].mask_path)) > 0 for case in (strong, weak)]
        assert np.array_equal(masks[0], masks[1])  # the same mask for every β
        mask = masks[0]
        assert mask.shape == original.shape[:2] and mask.any()  # aligned, original resolution, non-empty
        images = [read_image(case[stem].path).astype(np.int16) for case in (strong, weak)]
        for image in images:
            assert np.array_equal(image[~mask], original[~mask])  # outside the mask: untouched
        gaps = [np.abs(image[mask] - original[mask]).mean() for image in images]
        assert gaps[1] < gaps[0]  # β = 0.7 keeps more of the original than β = 0.1
        if original_path.name in ("g0.png", "g2.png", "g4.png", "g6.png"):  # grey sources stay grey
            assert Image.open(weak[stem].path).mode == "L"
    for split in splits:
        goods = [s.path for s in split.test if s.label == 0]
        assert all(np.array_equal(read_image(p), read_image(src / "test" / "good" / p.name)) for p in goods)
    # Reproducible, and only a folder made here may be replaced.
    again = make_weak_defects(src, tmp_path / "again", betas, seed=3, echo=_quiet)
    for a, b in zip(folders, again):
        for path in sorted((a / "test" / "synthetic").iterdir()):
            assert path.read_bytes() == (b / "test" / "synthetic" / path.name).read_bytes()
    make_weak_defects(src, out, [0.1], seed=3, echo=_quiet)  # rebuilding over its own output is fine
    (tmp_path / "foreign" / "beta_0.1").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not made by make-weak-defects"):
        make_weak_defects(src, tmp_path / "foreign", [0.1], echo=_quiet)


def test_weak_defects_with_a_texture_folder_and_copies(tmp_path):
    src = _category_with_odd_sizes(tmp_path / "src")
    textures = tmp_path / "textures"
    textures.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(textures / f"t{i}.jpg")
    folders = make_weak_defects(src, tmp_path / "weak", "0.3", textures=textures, count=4, link=False, echo=_quiet)
    split = load_dataset(folders[0])
    assert sum(s.label for s in split.test) == 2 and len(split.test) == 4
    assert not (folders[0] / "train" / "good").is_symlink() and len(split.train) == 3
    with pytest.raises(ValueError, match=r"β must lie in \[0, 1\)"):
        parse_betas("0.5,1.0")
    assert beta_folder_name(0.30) == "beta_0.3"


# ----------------------------------------------------------------------------------- previews and CLI


@pytest.mark.slow  # uses the suite trained for this module
def test_previews_show_what_they_claim(suite_runs, data_root, tmp_path):
    from glass_ad.research import previews

    out = suite_runs["out"]

    # LAS grid: 3 panels (title bar 24 px over normal | LAS | mask, 64 px each), 2 per row. The LAS image
    # equals the normal one outside its (binary, non-empty) mask and differs inside.
    grid = _pixels(previews.las_grid(data_root / "alpha", tmp_path / "las.png", count=3, image_size=64))
    assert grid.shape == (2 * (24 + 64), 2 * 3 * 64, 3)
    for k in range(3):
        row, column = divmod(k, 2)
        tile = grid[row * 88 + 24 : (row + 1) * 88, column * 192 : (column + 1) * 192]
        normal, synthetic, mask = tile[:, :64], tile[:, 64:128], tile[:, 128:]
        assert set(np.unique(mask).tolist()) == {0, 255}
        inside = mask[..., 0] == 255
        assert np.array_equal(synthetic[~inside], normal[~inside])
        assert np.abs(synthetic[inside] - normal[inside]).mean() > 5

    # Feature projection: points of all three groups (normal blue, GAS orange, LAS red).
    scatter = _pixels(previews.feature_projection(out / "alpha", data_root / "alpha", tmp_path / "features.png", images=2, points=300))
    r, g, b = scatter[..., 0], scatter[..., 1], scatter[..., 2]
    assert ((b > r + 40) & (b > g + 10)).sum() > 50  # normal
    assert ((r > b + 80) & (g > b + 30) & (g < r - 20)).sum() > 50  # GAS
    assert ((r > g + 60) & (r > b + 60) & (np.abs(g - b) < 25)).sum() > 50  # LAS anomalies

    # Score histograms: one panel per run with both classes.
    histograms = _pixels(previews.score_histograms(out, tmp_path / "scores.png"))
    assert histograms.shape == (280, 720, 3)  # 2 panels side by side, 3.6 × 2.8 in at 100 dpi
    for half in (histograms[:, :360], histograms[:, 360:]):
        assert (np.abs(half - (120, 173, 210)).max(axis=2) <= 4).sum() > 20  # normal bars
        assert (np.abs(half - (230, 125, 126)).max(axis=2) <= 4).sum() > 20  # anomalous bars

    # Heatmaps: 2 defective test images (ground truth outlined in green), then 1 good one (no green).
    heat = _pixels(previews.heatmap_grid(out / "alpha", data_root / "alpha", tmp_path / "heatmaps.png", count=3))
    assert heat.shape[0] % 3 == 0
    panels = np.split(heat, 3, axis=0)
    green = [int(np.all(panel == (0, 255, 0), axis=-1).sum()) for panel in panels]
    assert green[0] > 0 and green[1] > 0 and green[2] == 0
    with pytest.raises(FileNotFoundError, match="no scores.csv"):
        previews.score_histograms(tmp_path, tmp_path / "none.png")


@pytest.mark.slow  # uses the suite trained for this module
def test_cli_suite_tests_one_model_on_weak_defect_sets(suite_runs, data_root, tmp_path):
    runner = CliRunner()
    weak = tmp_path / "weak"
    result = runner.invoke(app, ["make-weak-defects", str(data_root / "alpha"), str(weak), "--beta", "0.2,0.6", "--count", "4"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "results"
    args = ["suite", str(weak), "--out", str(out), "--model", str(suite_runs["out"] / "alpha"), "-q", "--no-pictures"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [r["category"] for r in _table(out)] == ["beta_0.2", "beta_0.6", "Mean"]
    assert "| **Mean** |" in result.output and not (out / "beta_0.2" / "model.pt").exists()
    result = runner.invoke(app, ["preview", "scores", str(out), "--out", str(tmp_path / "h.png")])
    assert result.exit_code == 0 and result.output.strip() == f"saved {tmp_path / 'h.png'}"
    assert _pixels(tmp_path / "h.png").shape == (280, 720, 3)  # one panel per weak-defect set
    result = runner.invoke(app, ["suite", str(tmp_path / "nowhere"), "--out", str(out)])
    assert result.exit_code == 2 and "error:" in result.output

"""Tests for glass_ad.data.demo_data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glass_ad.data.demo_data import make_demo_dataset
from glass_ad.data.io import read_image, read_mask
from glass_ad.data.layouts import load_dataset


def test_demo_dataset_layout_and_masks(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path, n_train=6, n_test_good=3, n_test_defect=4, size=64)
    assert root == tmp_path / "surface"
    split = load_dataset(root)
    assert split.has_masks and len(split.train) == 6 and len(split.test) == 3 + 2 * 4
    assert {s.defect_type for s in split.test} == {"good", "scratch", "spot"}
    for sample in split.test:
        if sample.label:
            mask = read_mask(sample.mask_path)
            assert mask.shape == (64, 64) and 0 < mask.sum() < 0.3 * mask.size
    images = [read_image(s.path) for s in split.train]
    assert all(img.shape == (64, 64, 3) for img in images)
    assert not np.array_equal(images[0], images[1])


def test_demo_defects_stand_out(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path, n_train=4, n_test_good=1, n_test_defect=6, size=96)
    for sample in load_dataset(root).test:
        if not sample.label:
            continue
        grey = read_image(sample.path)[:, :, 1].astype(float)
        mask = read_mask(sample.mask_path)
        contrast = abs(grey[mask].mean() - grey[~mask].mean())
        assert contrast > 4 * grey[~mask].std(), sample.path


def test_demo_deterministic(tmp_path: Path) -> None:
    a = make_demo_dataset(tmp_path / "a", n_train=3, n_test_good=2, n_test_defect=2, size=48, seed=3)
    b = make_demo_dataset(tmp_path / "b", n_train=3, n_test_good=2, n_test_defect=2, size=48, seed=3)
    c = make_demo_dataset(tmp_path / "c", n_train=3, n_test_good=2, n_test_defect=2, size=48, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    # regenerating in place replaces the previous set
    again = make_demo_dataset(tmp_path / "a", n_train=2, n_test_good=1, n_test_defect=1, size=48, seed=3)
    assert len(load_dataset(again).train) == 2

"""Data-set layouts on small fake trees: VisA counts, labels and mask alignment; broken trees give one-line
errors that name the problem; suite roots (with symlinked categories) and the benchmark category lists."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glass_ad.data.datasets import ImageDataset
from glass_ad.data.layouts import BENCHMARK_CATEGORIES, DatasetError, list_categories, load_dataset
from glass_ad.data.preprocessing import Preprocessor

H, W = 40, 60  # non-square, so the resize + crop geometry matters


def _image(path: Path, box: tuple[int, int, int, int] | None = None) -> Path:
    """A dark image, bright inside ``box`` (y0, y1, x0, x1) so a mask can be checked against it."""
    array = np.full((H, W, 3), 20, np.uint8)
    if box is not None:
        y0, y1, x0, x1 = box
        array[y0:y1, x0:x1] = 240
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _mask(path: Path, box: tuple[int, int, int, int], value: int = 255) -> Path:
    array = np.zeros((H, W), np.uint8)
    y0, y1, x0, x1 = box
    array[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


BOXES = [(10, 22, 25, 40), (5, 15, 30, 50), (20, 35, 20, 45)]


def _visa(root: Path, objects=("candle", "pcb1"), mask_value: int = 255) -> Path:
    """VisA tree: per object 4 train normal, 2 test normal, 3 test anomalies with masks (other paths than
    the images), plus one anomalous train row (dropped)."""
    rows = ["object,split,label,image,mask"]
    for obj in objects:
        base = f"{obj}/Data"
        for i in range(6):
            rel = f"{base}/Images/Normal/{i:04d}.JPG"
            _image(root / rel)
            rows.append(f"{obj},{'train' if i < 4 else 'test'},normal,{rel},")
        for i, box in enumerate(BOXES):
            rel, mrel = f"{base}/Images/Anomaly/{i:03d}.JPG", f"{base}/Masks/Anomaly/{i:03d}.png"
            _image(root / rel, box)
            _mask(root / mrel, box, mask_value)
            rows.append(f"{obj},test,anomaly,{rel},{mrel}")
        rel = f"{base}/Images/Anomaly/900.JPG"
        _image(root / rel, BOXES[0])
        rows.append(f"{obj},train,anomaly,{rel},")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def _rewrite(root: Path, old: str, new: str) -> None:
    path = root / "split_csv" / "1cls.csv"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# ---------------------------------------------------------------------------------------------- VisA


def test_visa_counts_and_labels(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa")
    assert list_categories(root) == ["candle", "pcb1"] == list_categories(root, "visa")
    split = load_dataset(root, "visa", category="pcb1")
    assert (split.layout, split.name, split.root) == ("visa", "pcb1", root)
    assert len(split.train) == 4 and all(s.label == 0 and s.mask_path is None for s in split.train)
    assert all("/pcb1/" in s.path.as_posix() for s in split.train + split.test)
    normal = [s for s in split.test if s.label == 0]
    anomalous = [s for s in split.test if s.label == 1]
    assert len(normal) == 2 and len(anomalous) == 3 and split.has_masks
    assert all(s.defect_type == "good" and s.mask_path is None for s in normal)
    assert all(s.defect_type == "anomaly" and s.mask_path.parent.name == "Anomaly" for s in anomalous)
    # The dropped anomalous train row is not in either split.
    assert not any(s.path.name == "900.JPG" for s in split.train + split.test)
    # Each mask belongs to its own image (same file stem, Masks/ instead of Images/).
    assert all(s.mask_path.stem == s.path.stem for s in anomalous)


@pytest.mark.parametrize("mask_value", [255, 1])
def test_visa_masks_align_with_images(tmp_path: Path, mask_value: int) -> None:
    root = _visa(tmp_path / "visa", objects=("candle",), mask_value=mask_value)
    split = load_dataset(root)
    for preprocessor in (Preprocessor(32), Preprocessor(32, resize=40), Preprocessor(32, fit="stretch")):
        dataset = ImageDataset([s for s in split.test if s.label == 1], preprocessor)
        for index in range(len(dataset)):
            item = dataset[index]
            mask = item["mask"][0] > 0.5
            bright = item["image"][0] > 0.5
            assert mask.any(), "a VisA mask of 1 or 255 must be binarised to a non-empty mask"
            assert (mask == bright).float().mean() > 0.97


def test_visa_header_case_bom_and_whitespace(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa", objects=("candle",))
    path = root / "split_csv" / "1cls.csv"
    lines = path.read_text().splitlines()
    lines[0] = "Object, Split ,LABEL,Image,Mask"
    lines[1] = " " + lines[1].replace(",", " , ")
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    split = load_dataset(root)
    assert len(split.train) == 4 and len(split.test) == 5


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("candle,train,normal,candle/Data/Images/Normal/0000.JPG", "candle,train,normal,candle/Data/Images/Normal/gone.JPG", r"image listed in .*is missing: .*gone\.JPG"),
        ("candle,train,normal", "candle,val,normal", r"line 2: unknown split 'val'"),
        ("candle,test,anomaly", "candle,test,scratched", r"unknown label 'scratched'"),
        (",candle/Data/Masks/Anomaly/000.png", ",", r"000\.JPG' has no mask .*leaves the mask empty"),
        ("Masks/Anomaly/001.png", "Masks/Anomaly/missing.png", r"001\.JPG' has no mask: .*missing\.png' is missing"),
    ],
)
def test_visa_broken_csv_rows(tmp_path: Path, old: str, new: str, message: str) -> None:
    root = _visa(tmp_path / "visa", objects=("candle",))
    _rewrite(root, old, new)
    with pytest.raises(DatasetError, match=message):
        load_dataset(root)


def test_visa_object_errors(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa")
    with pytest.raises(DatasetError, match=r"has 2 objects; choose a category: candle, pcb1"):
        load_dataset(root)
    with pytest.raises(DatasetError, match=r"category 'pipe' is not in .*objects: candle, pcb1"):
        load_dataset(root, category="pipe")
    path = root / "split_csv" / "1cls.csv"
    kept = [line for line in path.read_text().splitlines() if not line.startswith("candle,train,normal")]
    path.write_text("\n".join(kept) + "\n")
    with pytest.raises(DatasetError, match="no normal training images for 'candle'"):
        load_dataset(root, category="candle")
    path.write_text("")
    with pytest.raises(DatasetError, match="lacks column"):
        load_dataset(root, category="candle")


def test_layout_mismatch_messages(tmp_path: Path) -> None:
    visa = _visa(tmp_path / "visa", objects=("candle",))
    with pytest.raises(DatasetError, match=r"train[/\\]good\) folder is missing"):
        load_dataset(visa, "mvtec")
    mvtec = tmp_path / "mv"
    _image(mvtec / "train" / "good" / "0.png")
    with pytest.raises(DatasetError, match=r"VisA split file is missing: .*1cls\.csv"):
        load_dataset(mvtec, "visa")
    with pytest.raises(DatasetError, match="VisA split file is missing"):
        list_categories(mvtec, "visa")


# ------------------------------------------------------------------------------------- MVTec family


def _mvtec(root: Path, defects=("crack",)) -> Path:
    for i in range(3):
        _image(root / "train" / "good" / f"{i:03d}.png")
    _image(root / "test" / "good" / "000.png")
    for defect in defects:
        for i, box in enumerate(BOXES[:2]):
            _image(root / "test" / defect / f"{i:03d}.png", box)
            _mask(root / "ground_truth" / defect / f"{i:03d}_mask.png", box)
    return root


@pytest.mark.parametrize("layout", ["mvtec", "mpdd", "wfdd", "auto"])
def test_mvtec_family_masks_align(tmp_path: Path, layout: str) -> None:
    root = _mvtec(tmp_path / "cat", defects=("crack", "hole"))
    split = load_dataset(root, layout)
    assert split.layout == "mvtec" and split.has_masks and split.defect_types == ["crack", "hole"]
    assert len(split.train) == 3 and sum(s.label for s in split.test) == 4
    dataset = ImageDataset(split.test, Preprocessor(32, resize=36))
    for index in range(len(dataset)):
        item = dataset[index]
        bright = item["image"][0] > 0.5
        assert ((item["mask"][0] > 0.5) == bright).float().mean() > 0.97


def test_mvtec_broken_trees(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "cat", defects=("crack", "hole"))
    # a whole defect type without its ground_truth folder, while ground_truth exists
    for path in (root / "ground_truth" / "hole").iterdir():
        path.unlink()
    (root / "ground_truth" / "hole").rmdir()
    with pytest.raises(DatasetError, match=r"test[/\\]hole[/\\]000\.png' has no mask: expected .*ground_truth[/\\]hole[/\\]000_mask\.png"):
        load_dataset(root)
    # train/good holding no images (only other files)
    other = tmp_path / "other"
    (other / "train" / "good").mkdir(parents=True)
    (other / "train" / "good" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"train/good\) folder has no images: .*\(looked for \.png"):
        load_dataset(other)
    with pytest.raises(DatasetError, match=r"data-set folder is missing"):
        load_dataset(tmp_path / "nowhere", "mvtec")


def test_suite_root_with_symlinked_category(tmp_path: Path) -> None:
    real = _mvtec(tmp_path / "elsewhere" / "tiles")
    root = tmp_path / "suite"
    _mvtec(root / "gears")
    (root / "README.txt").write_text("not a category")
    (root / "half").mkdir()  # a folder without train/good is not a category
    try:
        os.symlink(real, root / "tiles", target_is_directory=True)
    except OSError:
        pytest.skip("symlinks are not available here")
    assert list_categories(root) == ["gears", "tiles"] == list_categories(root, "mpdd")
    split = load_dataset(root, category="tiles")
    assert split.name == "tiles" and split.has_masks and len(split.train) == 3
    with pytest.raises(DatasetError, match="choose one: gears, tiles"):
        load_dataset(root)
    # a category folder on its own lists itself
    assert list_categories(root / "gears") == ["gears"]


def test_benchmark_category_lists() -> None:
    assert len(BENCHMARK_CATEGORIES["mvtec"]) == 15 and len(BENCHMARK_CATEGORIES["visa"]) == 12
    assert len(BENCHMARK_CATEGORIES["mpdd"]) == 6 and len(BENCHMARK_CATEGORIES["wfdd"]) == 4
    assert "pcb4" in BENCHMARK_CATEGORIES["visa"] and "metal_plate" in BENCHMARK_CATEGORIES["mpdd"]

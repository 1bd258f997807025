"""Tests for glass_ad.datasets: layouts, errors, preprocessing geometry, real MTD counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glass_ad.datasets import (
    MVTEC_CATEGORIES,
    MVTEC_TEXTURES,
    DatasetError,
    ImageDataset,
    Preprocessor,
    default_resize,
    list_categories,
    load_dataset,
)


def _img(path: Path, size: tuple[int, int] = (16, 16), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (16, 16), value: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros(size, np.uint8)
    array[4:8, 4:8] = value
    Image.fromarray(array).save(path)
    return path


def _mvtec(root: Path, *, masks: bool = True) -> Path:
    for i in range(3):
        _img(root / "train" / "good" / f"{i:03d}.png")
    _img(root / "test" / "good" / "000.png")
    for defect in ("crack", "hole"):
        for i in range(2):
            _img(root / "test" / defect / f"{i:03d}.png")
            if masks:
                _mask(root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def test_constants() -> None:
    assert len(MVTEC_CATEGORIES) == 15 and set(MVTEC_TEXTURES) <= set(MVTEC_CATEGORIES)
    assert default_resize("wood", 288) == 329 and default_resize("toothbrush", 256) == round(329 * 256 / 288)
    assert default_resize("bottle", 288) is None and default_resize(None, 288) is None


def test_mvtec_with_masks(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "mv" / "widget")
    split = load_dataset(tmp_path / "mv", category="widget")
    assert split.layout == "mvtec" and split.name == "widget" and split.has_masks
    assert len(split.train) == 3 and all(s.label == 0 for s in split.train)
    assert len(split.test) == 5
    defects = [s for s in split.test if s.label == 1]
    assert {s.defect_type for s in defects} == {"crack", "hole"}
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in defects)
    good = [s for s in split.test if s.label == 0]
    assert len(good) == 1 and good[0].mask_path is None and good[0].defect_type == "good"
    # direct root, auto layout and the aliases give the same
    assert len(load_dataset(root).test) == 5
    assert load_dataset(root, "mpdd").has_masks
    assert list_categories(tmp_path / "mv") == ["widget"]


def test_mvtec_mask_named_like_image(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "x", masks=False)
    for defect in ("crack", "hole"):
        for i in range(2):
            _mask(root / "ground_truth" / defect / f"{i:03d}.png")
    assert load_dataset(root).has_masks


def test_mvtec_without_ground_truth(tmp_path: Path) -> None:
    split = load_dataset(_mvtec(tmp_path / "x", masks=False), "mvtec")
    assert not split.has_masks and all(s.mask_path is None for s in split.test)
    assert sum(s.label for s in split.test) == 4


def test_mvtec_missing_mask_names_image(tmp_path: Path) -> None:
    root = _mvtec(tmp_path / "x")
    (root / "ground_truth" / "hole" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"hole[/\\]001\.png.*no mask"):
        load_dataset(root)


def test_mvtec_missing_train_good(tmp_path: Path) -> None:
    root = tmp_path / "x"
    (root / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"train[/\\]good"):
        load_dataset(root, "mvtec")
    (root / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(root, "mvtec")


def _visa(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:03d}.JPG"
            _img(root / rel)
            rows.append(f"{obj},train,normal,{rel},")
        rel = f"{obj}/Data/Images/Normal/100.JPG"
        _img(root / rel)
        rows.append(f"{obj},test,normal,{rel},")
        for i in range(2):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            _img(root / rel)
            _mask(root / mrel, value=255)
            rows.append(f"{obj},test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa")
    assert list_categories(root) == ["candle", "pcb1"]
    split = load_dataset(root, category="pcb1")
    assert split.layout == "visa" and split.name == "pcb1" and split.has_masks
    assert len(split.train) == 3 and len(split.test) == 3
    assert sum(s.label for s in split.test) == 2
    with pytest.raises(DatasetError, match="candle, pcb1"):
        load_dataset(root, "visa")
    dataset = ImageDataset(split.test, Preprocessor(16))
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i]["label"] == 1)
    assert item["mask"].sum() == 16 and set(item["mask"].unique().tolist()) == {0.0, 1.0}


def test_visa_missing_file(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa")
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DatasetError, match=r"Anomaly[/\\]001\.png"):
        load_dataset(root, category="candle")


def test_folder_layout(tmp_path: Path) -> None:
    train = tmp_path / "normal"
    for i in range(4):
        _img(train / f"n{i}.bmp")
    test = tmp_path / "test"
    _img(test / "good" / "a.png")
    _img(test / "dent" / "b.png")
    _img(test / "dent" / "c.png")
    split = load_dataset(train)
    assert split.layout == "folder" and len(split.train) == 4 and split.test == []
    split = load_dataset(train, "folder", test_dir=test)
    assert len(split.test) == 3 and sum(s.label for s in split.test) == 2 and not split.has_masks
    _mask(tmp_path / "ground_truth" / "dent" / "b_mask.png")
    _mask(tmp_path / "ground_truth" / "dent" / "c_mask.png")
    assert load_dataset(train, "folder", test_dir=test).has_masks


def test_auto_detect_failure(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="train/good.*1cls.csv"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="missing"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="unknown layout"):
        load_dataset(tmp_path / "empty", "coco")


def test_preprocessor_alignment(tmp_path: Path) -> None:
    height, width = 90, 120
    image = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), bool)
    mask[30:60, 50:80] = True
    image[mask] = 255
    pre = Preprocessor(32, resize=40)
    img_t = pre.image(image)
    mask_t = pre.mask(mask)
    assert img_t.shape == (3, 32, 32) and img_t.dtype == torch.float32
    assert mask_t.shape == (1, 32, 32) and set(mask_t.unique().tolist()) <= {0.0, 1.0}
    assert 0.0 <= img_t.min() and img_t.max() <= 1.0
    binary = img_t[0] > 0.5
    assert (binary == mask_t[0].bool()).float().mean() > 0.98
    # centre of mass agrees to within a pixel
    ys, xs = torch.nonzero(binary, as_tuple=True)
    ym, xm = torch.nonzero(mask_t[0], as_tuple=True)
    assert abs(ys.float().mean() - ym.float().mean()) < 1 and abs(xs.float().mean() - xm.float().mean()) < 1


def test_map_to_original(tmp_path: Path) -> None:
    pre = Preprocessor(32, resize=40)
    mask = np.zeros((90, 120), bool)
    mask[30:60, 50:80] = True
    small = pre.mask(mask)[0].numpy()
    back = pre.map_to_original(small, (90, 120))
    assert back.shape == (90, 120) and back.dtype == np.float32
    assert ((back > 0.5) == mask).mean() > 0.97
    assert pre.map_to_original(np.ones((32, 32)), (50, 50)).shape == (50, 50)
    assert pre.map_to_original(np.ones((32, 32)), (90, 120))[:, :5].max() == 0  # outside the crop


def test_image_dataset_items(tmp_path: Path) -> None:
    split = load_dataset(_mvtec(tmp_path / "x"))
    dataset = ImageDataset(split.test, Preprocessor(16))
    assert len(dataset) == 5
    items = [dataset[i] for i in range(len(dataset))]
    assert all(item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16) for item in items)
    assert {item["index"] for item in items} == set(range(5))
    good = next(item for item in items if item["label"] == 0)
    assert good["mask"].sum() == 0 and good["defect_type"] == "good" and isinstance(good["path"], str)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert batch["image"].shape == (5, 3, 16, 16) and batch["label"].tolist().count(1) == 4


def test_mtd_counts(mtd_root: Path) -> None:
    split = load_dataset(mtd_root)
    assert split.layout == "mvtec" and split.has_masks
    assert len(split.train) == 762
    assert sum(1 for s in split.test if s.label == 0) == 190
    assert sum(1 for s in split.test if s.label == 1) == 388
    assert {s.defect_type for s in split.test} == {"good", "blowhole", "break", "crack", "fray", "uneven"}


def test_preprocessor_stretch_keeps_whole_image() -> None:
    mask = np.zeros((200, 50), bool)
    mask[180:195, 20:30] = True  # near the end of an elongated image
    assert Preprocessor(32).mask(mask).sum() == 0  # cropped away
    stretch = Preprocessor(32, fit="stretch")
    assert stretch.mask(mask).sum() > 0
    assert stretch.image(np.zeros((200, 50, 3), np.uint8)).shape == (3, 32, 32)
    back = stretch.map_to_original(stretch.mask(mask)[0].numpy(), (200, 50))
    assert back.shape == (200, 50) and (back > 0.5)[mask].mean() > 0.7
    with pytest.raises(ValueError):
        Preprocessor(32, fit="pad")

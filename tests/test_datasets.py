"""Tests for glass_ad.data.datasets: layouts, errors, preprocessing geometry, real MTD counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glass_ad.data.datasets import ImageDataset
from glass_ad.data.layouts import (
    MVTEC_CATEGORIES,
    MVTEC_TEXTURES,
    DatasetError,
    default_resize,
    list_categories,
    load_dataset,
)
from glass_ad.data.preprocessing import Preprocessor


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
    # 0 and 255 become exactly 0 and 1 (scaled by 1/255, no ImageNet normalisation here: the model does it)
    assert float(img_t.min()) == pytest.approx(0.0, abs=1e-6) and float(img_t.max()) == pytest.approx(1.0, abs=1e-6)
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


@pytest.mark.realdata
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


def test_suite_root_and_category_errors(tmp_path: Path) -> None:
    _mvtec(tmp_path / "suite" / "widget")
    _mvtec(tmp_path / "suite" / "gadget")
    assert list_categories(tmp_path / "suite") == ["gadget", "widget"]
    with pytest.raises(DatasetError, match="choose one: gadget, widget"):
        load_dataset(tmp_path / "suite")
    with pytest.raises(DatasetError, match=r"nope.*categories found: gadget, widget"):
        load_dataset(tmp_path / "suite", category="nope")
    assert load_dataset(tmp_path / "suite" / "gadget", category="gadget").name == "gadget"


def test_mvtec_training_only_and_test_dir(tmp_path: Path) -> None:
    root = tmp_path / "x"
    for i in range(2):
        _img(root / "train" / "good" / f"{i}.png")
    _img(root / "train" / "good" / ".hidden.png")
    split = load_dataset(root)
    assert len(split.train) == 2 and split.test == [] and not split.has_masks
    assert "2 train" in split.summary()
    with pytest.raises(DatasetError, match=r"test folder is missing: .*elsewhere"):
        load_dataset(root, test_dir=tmp_path / "elsewhere")
    other = _mvtec(tmp_path / "other")
    split = load_dataset(root, test_dir=other / "test")
    assert len(split.test) == 5 and split.has_masks and split.defect_types == ["crack", "hole"]


def test_visa_rules(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa")
    # an object folder works as root; the CSV one level up is used
    split = load_dataset(root / "candle")
    assert split.layout == "visa" and split.name == "candle" and len(split.train) == 3
    assert list_categories(root / "candle") == ["candle"]
    csv_path = root / "split_csv" / "1cls.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("candle,test,anomaly", "candle,test,broken", 1))
    with pytest.raises(DatasetError, match=r"line \d+: unknown label 'broken'"):
        load_dataset(root, category="candle")
    csv_path.write_text(text.replace("object,split,label,image,mask", "object,split,label,image"))
    with pytest.raises(DatasetError, match="lacks column"):
        load_dataset(root, category="candle")


def test_folder_layout_mask_folders(tmp_path: Path) -> None:
    train = tmp_path / "normal"
    for i in range(3):
        _img(train / f"n{i}.png")
    test = tmp_path / "test"
    _img(test / "good" / "a.png")
    _img(test / "scratch" / "b.png")
    _img(test / "scratch" / "c.png")
    _mask(test / "scratch" / "masks" / "b.png")
    # a mask folder exists for "scratch", so c.png needs a mask too
    with pytest.raises(DatasetError, match=r"scratch[/\\]c\.png.*no mask"):
        load_dataset(train, "folder", test_dir=test)
    _mask(test / "scratch" / "masks" / "c_mask.png")
    split = load_dataset(train, "folder", test_dir=test)
    assert split.has_masks and {s.defect_type for s in split.test} == {"good", "scratch"}
    assert all(s.mask_path.parent.name == "masks" for s in split.test if s.label)
    # another defect type without masks: masks are dropped for all, not used partially
    _img(test / "dent" / "d.png")
    split = load_dataset(train, "folder", test_dir=test)
    assert not split.has_masks and all(s.mask_path is None for s in split.test)


def test_folder_layout_nested_images_hint(tmp_path: Path) -> None:
    _img(tmp_path / "data" / "day1" / "a.png")
    with pytest.raises(DatasetError, match=r"no images directly inside.*day1"):
        load_dataset(tmp_path / "data", "folder")
    (tmp_path / "visa" / "pcb1" / "Data" / "Images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="VisA object folders"):
        load_dataset(tmp_path / "visa")


def test_crop_box_and_edge_padding() -> None:
    pre = Preprocessor(32, resize=40)
    box = pre.crop_box(90, 120)
    assert box.resized_hw == (40, 53) and (box.top, box.left, box.size) == (4, 10, 32)
    assert pre.geometry((90, 120)) == (40, 53, 4, 10)
    y0, x0, y1, x1 = box.in_original()
    assert y0 == pytest.approx(9.0) and y1 == pytest.approx(81.0) and x1 - x0 == pytest.approx(32 * 120 / 53)
    ramp = np.tile(np.linspace(0.2, 0.8, 32, dtype=np.float32), (32, 1))
    edge = pre.map_to_original(ramp, (90, 120), pad="edge")
    assert edge.shape == (90, 120) and edge[:, 0].min() == pytest.approx(0.2, abs=1e-3)
    zero = pre.map_to_original(torch.from_numpy(ramp), (90, 120))
    assert zero[:, 0].max() == 0.0
    back = pre.map_to_original(np.ones((32, 32), bool), (90, 120))
    assert back.dtype == np.bool_ and back[45, 60] and not back[45, 0]


def test_thin_defect_survives_downscaling() -> None:
    mask = np.zeros((512, 512), bool)
    mask[250, 100:400] = True  # one-pixel scratch, shrunk 16x
    out = Preprocessor(32).mask(mask)
    assert 10 < out.sum() <= 2 * 20  # about 19 px long, 1-2 px wide
    assert Preprocessor(32).mask(np.zeros((512, 512), bool)).sum() == 0


def test_image_dataset_mask_size_mismatch(tmp_path: Path) -> None:
    from glass_ad.data.io import ImageReadError
    from glass_ad.data.layouts import Sample

    image = _img(tmp_path / "i.png", size=(32, 32))
    half = tmp_path / "half.png"
    array = np.zeros((16, 16), np.uint8)
    array[:8] = 255
    Image.fromarray(array).save(half)
    item = ImageDataset([Sample(image, 1, "x", half)], Preprocessor(32))[0]
    assert item["mask"][0, :16].min() == 1 and item["mask"][0, 16:].max() == 0
    wide = _mask(tmp_path / "wide.png", size=(16, 40))
    with pytest.raises(ImageReadError, match=r"wide\.png.*mask is 40x16 pixels"):
        ImageDataset([Sample(image, 1, "x", wide)], Preprocessor(32))[0]

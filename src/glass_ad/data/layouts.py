"""Data-set layouts on disk → lists of :class:`Sample` (nothing is decoded here).

One concept at some length (hence over 400 lines): each layout's folder rules, and the one mask lookup rule
they share, with the public benchmarks' category lists. Resizing and cropping is `preprocessing.py`; the
PyTorch dataset that decodes samples is `datasets.py`.

Layouts (``load_dataset(root, layout)``):

``mvtec`` (also MPDD and WFDD, same layout; ``"mpdd"`` and ``"wfdd"`` are aliases)
    ``ROOT/train/good/*`` normal training images (required, non-empty);
    ``ROOT/test/<type>/*`` test images, ``good`` normal and every other folder a defect type. The test
    split is optional: a training-only folder is a valid data set (``test == []``).
    ``ROOT/ground_truth/<type>/<stem>_mask.png`` masks (``<stem>.png`` and other image extensions are
    accepted too). Mask rule: when ``ROOT/ground_truth`` exists, *every* defect image must have a mask —
    a missing one is a :class:`DatasetError` naming the image; when the folder is absent altogether the
    set loads without masks (``mask_path=None`` everywhere, ``has_masks=False``).
    With ``category``, ``ROOT/<category>`` is used when it exists, so ROOT may be the suite root holding
    all categories (without ``category`` such a root is an error that lists them). ``test_dir`` replaces
    ``ROOT/test`` (masks then in ``test_dir/../ground_truth``); given but missing is an error.

``visa``
    ``ROOT/split_csv/1cls.csv`` with columns ``object,split,label,image,mask`` (split ``train``/``test``,
    label ``normal``/``anomaly``, paths relative to ROOT): images in ``ROOT/<object>/Data/Images/
    {Normal,Anomaly}``, masks in ``ROOT/<object>/Data/Masks/Anomaly``. ``category`` picks the object
    (required when the file lists several). ROOT may also be an object folder (the CSV is then one level
    up). Every listed file must exist and every anomalous image must have a mask; an unknown label or
    split is an error; anomalous rows of the train split (none in ``1cls``) are dropped. VisA masks use
    255 or other non-zero values — :func:`~glass_ad.data.io.read_mask` binarises them.

``folder``
    ``ROOT`` holds normal images directly (not in subfolders; ``glass train --good DIR``), all used for
    training. Optional ``test_dir``: ``test_dir/good/*`` normal, every other subfolder anomalous with its
    name as defect type (``ground_truth`` and ``masks`` are never defect types). Optional masks for
    ``test_dir/<type>/<stem>.<ext>``, looked up in ``test_dir/<type>/masks/``,
    ``test_dir/ground_truth/<type>/`` and ``test_dir/../ground_truth/<type>/``, named ``<stem>_mask.<ext>``
    or ``<stem>.<ext>``. When one of those folders exists for a type, each image of that type needs a mask
    (a missing one is an error naming it); masks are used only when every defect image has one, otherwise
    all are dropped (``has_masks=False``) so pixel metrics are never computed against partial ground truth.

``auto``
    ``train/good`` (or ``<category>/train/good``) → mvtec; ``split_csv/1cls.csv`` → visa; subfolders with
    ``train/good`` → mvtec suite (needs ``category``); image files directly inside → folder; anything else
    is a :class:`DatasetError` that lists what was looked for.

``DatasetSplit.has_masks`` is True when the test split has anomalous images and all of them have masks.
"""


from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from glass_ad.data.io import IMAGE_EXTENSIONS, list_images

log = logging.getLogger(__name__)

__all__ = [
    "MVTEC_CATEGORIES",
    "MVTEC_TEXTURES",
    "VISA_CATEGORIES",
    "MPDD_CATEGORIES",
    "WFDD_CATEGORIES",
    "BENCHMARK_CATEGORIES",
    "RESIZE_OVERRIDES",
    "LAYOUTS",
    "MASK_SUFFIX",
    "DatasetError",
    "DatasetSplit",
    "Sample",
    "MaskIndex",
    "default_resize",
    "detect_layout",
    "find_mask",
    "list_categories",
    "load_dataset",
    "mask_folders",
]


MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
MVTEC_TEXTURES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
# Categories the GLASS reference resizes to 329 (instead of 288) before the 288 centre crop.
RESIZE_OVERRIDES: dict[str, int] = {"toothbrush": 329, "wood": 329}
_REFERENCE_SIZE = 288

# The categories of the public benchmarks (folder names as distributed), so that a suite can say when a
# mean would not be comparable with the paper's because categories are missing.
VISA_CATEGORIES: tuple[str, ...] = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip
MPDD_CATEGORIES: tuple[str, ...] = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
WFDD_CATEGORIES: tuple[str, ...] = ("grey_cloth", "grid_cloth", "pink_flower", "yellow_cloth")
BENCHMARK_CATEGORIES: dict[str, tuple[str, ...]] = {
    "mvtec": MVTEC_CATEGORIES,
    "visa": VISA_CATEGORIES,
    "mpdd": MPDD_CATEGORIES,
    "wfdd": WFDD_CATEGORIES,
}

LAYOUTS: tuple[str, ...] = ("auto", "mvtec", "mpdd", "wfdd", "visa", "folder")
_LAYOUT_ALIASES = {"mvtec": "mvtec", "mpdd": "mvtec", "wfdd": "mvtec", "visa": "visa", "folder": "folder"}
_VISA_CSV = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")
_NORMAL_LABELS = ("normal", "good", "ok", "0")
_ANOMALY_LABELS = ("anomaly", "anomalous", "abnormal", "defect", "bad", "1")
_RESERVED_TEST_FOLDERS = ("ground_truth", "masks")


def default_resize(category: str | None, image_size: int) -> int | None:
    """The reference's resize for ``category`` scaled to ``image_size`` (329 at 288), or ``None``
    (= no override: the shorter side goes to ``image_size``)."""
    if category is None or category not in RESIZE_OVERRIDES:
        return None
    return int(round(RESIZE_OVERRIDES[category] * image_size / _REFERENCE_SIZE))


class DatasetError(ValueError):
    """The data-set folder does not match the expected layout (one-line message naming what is wrong)."""


@dataclass(frozen=True)
class Sample:
    """One image: ``label`` 0 = normal (``defect_type`` "good"), 1 = anomalous."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass
class DatasetSplit:
    """Train (normal only) and test samples of one data set / category."""

    name: str
    layout: str  # "mvtec", "visa" or "folder"
    root: Path
    train: list[Sample]
    test: list[Sample]
    has_masks: bool  # the test split has anomalous images and every one of them has a mask
    empty_test_folders: list[Path] = field(default_factory=list)  # test/<type> folders without images

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect types of the test split (without "good")."""
        return sorted({s.defect_type for s in self.test if s.label == 1})

    def summary(self) -> str:
        """One line: name, layout and counts."""
        normal = sum(1 for s in self.test if s.label == 0)
        anomalous = len(self.test) - normal
        text = f"{self.name} ({self.layout}): {len(self.train)} train, {normal} good test, {anomalous} defect test"
        if anomalous:
            text += " with masks" if self.has_masks else " without masks"
        return text


# --------------------------------------------------------------------------------------------- helpers


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{what} folder is missing: '{folder}'")
    images = list_images(folder)
    if not images:
        raise DatasetError(f"{what} folder has no images: '{folder}' (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return images


def _mvtec_categories(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return [p.name for p in _subdirs(root) if (p / "train" / "good").is_dir()]


def _visa_location(root: Path) -> tuple[Path, str | None] | None:
    """(VisA root, implied object) when ``root`` is a VisA root or one of its object folders."""
    if (root / _VISA_CSV).is_file():
        return root, None
    if (root.parent / _VISA_CSV).is_file() and (root / "Data").is_dir():
        return root.parent, root.name
    return None


MASK_SUFFIX = "_mask"  # ground truth of image <stem>.<ext>: <stem>_mask.<ext> (or <stem>.<ext>) in a mask folder


def mask_folders(test_dir: str | os.PathLike[str], defect_type: str) -> list[Path]:
    """Where the masks of ``test_dir/<defect_type>/`` images may lie, in lookup order, for plain folders
    and validation folders: ``test_dir/<type>/masks``, ``test_dir/ground_truth/<type>``,
    ``test_dir/../ground_truth/<type>``."""
    test_dir = Path(test_dir)
    return [test_dir / defect_type / "masks", test_dir / "ground_truth" / defect_type, test_dir.parent / "ground_truth" / defect_type]


class MaskIndex:
    """The ground-truth lookup rule: ``<stem>_mask.<ext>``, else ``<stem>.<ext>``, in a list of folders
    (each listed once; earlier folders win, and ``.png`` over other extensions)."""

    def __init__(self, folders: Sequence[Path]):
        self.folders = [Path(f) for f in folders if Path(f).is_dir()]
        self._index: dict[str, Path] = {}
        for folder in reversed(self.folders):
            for path in sorted(list_images(folder), key=lambda p: p.suffix.lower() == ".png"):
                self._index[path.stem] = path

    def find(self, stem: str) -> Path | None:
        """The mask of image ``stem``, or None."""
        return self._index.get(f"{stem}{MASK_SUFFIX}") or self._index.get(stem)


def find_mask(folders: Sequence[Path], stem: str) -> Path | None:
    """The mask of image ``stem`` in ``folders`` (:class:`MaskIndex`'s rule; build one index instead when
    looking up many images in the same folders)."""
    return MaskIndex(folders).find(stem)


def _test_samples(
    test_dir: Path, mask_folders: Callable[[str], list[Path]], *, strict: bool, empty: list[Path] | None = None
) -> tuple[list[Sample], bool]:
    """Samples of ``test_dir/<type>/*`` (``good`` = normal) and whether every defect image has a mask.
    Type folders without images are appended to ``empty`` (reported by `glass test`, not ignored).

    Masks of a type are looked up in ``mask_folders(type)``. A defect image without a mask is an error
    when ``strict`` or when one of its type's mask folders exists. Masks are kept only when all defect
    images have one.
    """
    samples: list[Sample] = []
    all_masked, any_defect = True, False
    for type_dir in _subdirs(test_dir):
        defect_type = type_dir.name
        if defect_type.lower() in _RESERVED_TEST_FOLDERS:
            continue
        if empty is not None and not list_images(type_dir):
            empty.append(type_dir)
            continue
        if defect_type == "good":
            samples.extend(Sample(image, 0, "good", None) for image in list_images(type_dir))
            continue
        candidates = mask_folders(defect_type)
        index = MaskIndex(candidates)
        for image in list_images(type_dir):
            any_defect = True
            mask = index.find(image.stem)
            if mask is None:
                all_masked = False
                if strict or index.folders:
                    where = (index.folders or candidates)[0] / f"{image.stem}{MASK_SUFFIX}.png"
                    raise DatasetError(f"test image '{image}' has no mask: expected '{where}'")
            samples.append(Sample(image, 1, defect_type, mask))
    has_masks = any_defect and all_masked
    if not has_masks:
        samples = [Sample(s.path, s.label, s.defect_type, None) for s in samples]
    return samples, has_masks


# --------------------------------------------------------------------------------------------- layouts


def _load_mvtec(root: Path, category: str | None, test_dir: Path | None) -> DatasetSplit:
    base = root
    if category is not None:
        if (root / category).is_dir():
            base = root / category
        elif root.name != category and not (root / "train" / "good").is_dir():
            found = _mvtec_categories(root)
            listing = f" (categories found: {', '.join(found)})" if found else ""
            raise DatasetError(f"category folder is missing: '{root / category}'{listing}")
    if not (base / "train" / "good").is_dir():
        found = _mvtec_categories(base)
        if found:
            raise DatasetError(f"'{base}' holds {len(found)} categories; choose one: {', '.join(found)}")
    train_images = _require_images(base / "train" / "good", "training (train/good)")
    train = [Sample(p, 0, "good", None) for p in train_images]
    if test_dir is not None and not Path(test_dir).is_dir():
        raise DatasetError(f"test folder is missing: '{test_dir}'")
    test_root = Path(test_dir) if test_dir is not None else base / "test"
    test: list[Sample] = []
    has_masks = False
    empty: list[Path] = []
    if test_root.is_dir():
        gt_root = test_root.parent / "ground_truth"
        if gt_root.is_dir():
            test, has_masks = _test_samples(test_root, lambda kind: [gt_root / kind], strict=True, empty=empty)
        else:
            test, has_masks = _test_samples(test_root, lambda kind: [], strict=False, empty=empty)
    return DatasetSplit(category or base.name, "mvtec", base, train, test, has_masks, empty)


def _read_visa_csv(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs, keys lower-cased and values stripped."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {(c or "").strip().lower() for c in reader.fieldnames or []}
            missing = [c for c in _VISA_COLUMNS if c not in columns]
            if missing:
                raise DatasetError(
                    f"'{csv_path}' lacks column(s) {', '.join(missing)} (expected {','.join(_VISA_COLUMNS)})"
                )
            return [
                (number, {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k is not None})
                for number, row in enumerate(reader, start=2)
            ]
    except OSError as error:
        raise DatasetError(f"cannot read '{csv_path}': {error}") from error


def _load_visa(root: Path, category: str | None) -> DatasetSplit:
    location = _visa_location(root)
    if location is None:
        raise DatasetError(f"VisA split file is missing: '{root / _VISA_CSV}'")
    root, implied = location
    category = category or implied
    csv_path = root / _VISA_CSV
    rows = _read_visa_csv(csv_path)
    objects = sorted({row["object"] for _, row in rows} - {""})
    if not objects:
        raise DatasetError(f"'{csv_path}' lists no images")
    if category is None:
        if len(objects) != 1:
            raise DatasetError(f"'{csv_path}' has {len(objects)} objects; choose a category: {', '.join(objects)}")
        category = objects[0]
    if category not in objects:
        raise DatasetError(f"category '{category}' is not in '{csv_path}' (objects: {', '.join(objects)})")
    train: list[Sample] = []
    test: list[Sample] = []
    dropped = 0
    for number, row in rows:
        if row["object"] != category:
            continue
        where = f"'{csv_path}' line {number}"
        label = row["label"].lower()
        if label not in _NORMAL_LABELS + _ANOMALY_LABELS:
            raise DatasetError(f"{where}: unknown label '{row['label']}' (expected normal or anomaly)")
        split = row["split"].lower()
        if split not in ("train", "test"):
            raise DatasetError(f"{where}: unknown split '{row['split']}' (expected train or test)")
        anomalous = label in _ANOMALY_LABELS
        image = root / row["image"]
        if not image.is_file():
            raise DatasetError(f"image listed in '{csv_path}' is missing: '{image}'")
        if split == "train":
            if anomalous:
                dropped += 1
            else:
                train.append(Sample(image, 0, "good", None))
            continue
        mask: Path | None = None
        if anomalous:
            if not row["mask"]:
                raise DatasetError(f"anomalous image '{image}' has no mask ({where} leaves the mask empty)")
            mask = root / row["mask"]
            if not mask.is_file():
                raise DatasetError(f"anomalous image '{image}' has no mask: '{mask}' is missing")
        test.append(Sample(image, int(anomalous), "anomaly" if anomalous else "good", mask))
    if dropped:
        log.warning("%s: %d anomalous rows of the train split dropped (training uses normal images only)", category, dropped)
    if not train:
        raise DatasetError(f"'{csv_path}' has no normal training images for '{category}'")
    has_masks = any(s.label for s in test)  # every anomalous test image was checked to have a mask
    return DatasetSplit(category, "visa", root, train, test, has_masks)


def _load_folder(root: Path, test_dir: Path | None) -> DatasetSplit:
    images = list_images(root)
    if not images:
        nested = [p.name for p in _subdirs(root) if list_images(p, recursive=True)]
        if nested:
            raise DatasetError(
                f"training images folder has no images directly inside: '{root}' (its subfolders "
                f"{', '.join(nested[:5])} have some); point to the folder of normal images"
            )
        _require_images(root, "training images")
    train = [Sample(p, 0, "good", None) for p in images]
    test: list[Sample] = []
    has_masks = False
    empty: list[Path] = []
    if test_dir is not None:
        test_dir = Path(test_dir)
        if not test_dir.is_dir():
            raise DatasetError(f"test folder is missing: '{test_dir}'")

        test, has_masks = _test_samples(test_dir, lambda kind: mask_folders(test_dir, kind), strict=False, empty=empty)
    return DatasetSplit(root.name, "folder", root, train, test, has_masks, empty)


def detect_layout(root: str | os.PathLike[str], category: str | None = None) -> str:
    """``"mvtec"``, ``"visa"`` or ``"folder"`` from the folder structure; :class:`DatasetError` otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data-set folder is missing: '{root}'")
    if (root / "train" / "good").is_dir() or (category and (root / category / "train" / "good").is_dir()):
        return "mvtec"
    if _visa_location(root) is not None:
        return "visa"
    if _mvtec_categories(root):
        return "mvtec"
    if list_images(root):
        return "folder"
    where = f"'{root / category}/train/good' or " if category else ""
    hint = ""
    if any((p / "Data" / "Images").is_dir() for p in _subdirs(root)):
        hint = " (VisA object folders are here, but not split_csv/1cls.csv)"
    raise DatasetError(
        f"cannot detect the layout of '{root}'{hint}: looked for {where}'train/good' (MVTec AD, MPDD, WFDD), "
        f"'split_csv/1cls.csv' (VisA), '<category>/train/good' (a suite of categories) and images directly "
        f"in the folder (plain folder of normal images)"
    )


def load_dataset(
    root: str | os.PathLike[str],
    layout: str = "auto",
    *,
    category: str | None = None,
    test_dir: str | os.PathLike[str] | None = None,
) -> DatasetSplit:
    """List a data set's samples (nothing is decoded). ``layout``: ``auto``, ``mvtec`` (``mpdd``,
    ``wfdd``), ``visa`` or ``folder`` — the rules are in the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data-set folder is missing: '{root}'")
    key = (layout or "auto").lower()
    if key == "auto":
        key = detect_layout(root, category)
    elif key not in _LAYOUT_ALIASES:
        raise DatasetError(f"unknown layout '{layout}' (use auto, mvtec, mpdd, wfdd, visa or folder)")
    key = _LAYOUT_ALIASES[key]
    test_path = Path(test_dir) if test_dir is not None else None
    if key == "mvtec":
        return _load_mvtec(root, category, test_path)
    if key == "visa":
        if test_path is not None:
            raise DatasetError("test_dir does not apply to the VisA layout (its split file defines the test set)")
        return _load_visa(root, category)
    return _load_folder(root, test_path)


def list_categories(root: str | os.PathLike[str], layout: str = "auto") -> list[str]:
    """Categories under ``root``: MVTec-like subfolders with ``train/good``, or the objects of a VisA
    split file. A root that is itself one MVTec-like category (or one VisA object folder) gives
    ``[root.name]``; a plain folder gives ``[]``."""
    root = Path(root)
    key = (layout or "auto").lower()
    if key == "folder" or not root.is_dir():
        return []
    location = _visa_location(root)
    if key in ("auto", "visa") and location is not None:
        if location[1] is not None:
            return [location[1]]
        return sorted({row["object"] for _, row in _read_visa_csv(root / _VISA_CSV)} - {""})
    if key == "visa":
        raise DatasetError(f"VisA split file is missing: '{root / _VISA_CSV}'")
    found = _mvtec_categories(root)
    if not found and (root / "train" / "good").is_dir():
        return [root.name]
    return found

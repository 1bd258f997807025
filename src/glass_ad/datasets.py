"""Data-set layouts → lists of :class:`Sample`, and the image/mask :class:`Preprocessor`.

Supported layouts:

* ``mvtec`` (also MPDD, WFDD): ``ROOT/train/good``, ``ROOT/test/<type>``, ``ROOT/ground_truth/<type>``.
* ``visa``: ``ROOT/split_csv/1cls.csv`` with columns ``object,split,label,image,mask``.
* ``folder``: ``ROOT`` holds normal training images; an optional ``test_dir`` holds ``good/`` and one
  folder per defect type, with optional masks in ``test_dir/../ground_truth/<type>/<stem>_mask.png``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .io import IMAGE_EXTENSIONS, list_images, read_image, read_mask

__all__ = [
    "MVTEC_CATEGORIES",
    "MVTEC_TEXTURES",
    "RESIZE_OVERRIDES",
    "DatasetError",
    "DatasetSplit",
    "ImageDataset",
    "Preprocessor",
    "Sample",
    "default_resize",
    "list_categories",
    "load_dataset",
]

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
MVTEC_TEXTURES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
# Categories the GLASS paper resizes to 329 (instead of 288) before the 288 centre crop.
RESIZE_OVERRIDES: dict[str, int] = {"toothbrush": 329, "wood": 329}

_LAYOUT_ALIASES = {"mvtec": "mvtec", "mpdd": "mvtec", "wfdd": "mvtec", "visa": "visa", "folder": "folder"}
_VISA_CSV = Path("split_csv") / "1cls.csv"


def default_resize(category: str | None, image_size: int) -> int | None:
    """The paper's resize for ``category`` scaled to ``image_size`` (329 at 288), or ``None``."""
    if category is None or category not in RESIZE_OVERRIDES:
        return None
    return int(round(RESIZE_OVERRIDES[category] * image_size / 288))


class DatasetError(ValueError):
    """The data-set folder does not match the expected layout (one-line message)."""


@dataclass(frozen=True)
class Sample:
    """One image: ``label`` 0 = normal ("good"), 1 = anomalous."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass
class DatasetSplit:
    """Train (normal only) and test samples of one data set / category."""

    name: str
    layout: str
    root: Path
    train: list[Sample]
    test: list[Sample]
    has_masks: bool


# --------------------------------------------------------------------------------------------- layouts


def _require_images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{what} folder is missing: '{folder}'")
    images = list_images(folder)
    if not images:
        raise DatasetError(f"{what} folder has no images: '{folder}'")
    return images


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem):
        candidate = gt_dir / f"{name}.png"
        if candidate.is_file():
            return candidate
    if gt_dir.is_dir():  # other extensions, any case
        for suffix in sorted(IMAGE_EXTENSIONS):
            for name in (f"{stem}_mask", stem):
                for candidate in (gt_dir / f"{name}{suffix}", gt_dir / f"{name}{suffix.upper()}"):
                    if candidate.is_file():
                        return candidate
    return None


def _test_samples(test_dir: Path, gt_root: Path, *, masks_required: bool) -> tuple[list[Sample], bool]:
    """Samples of ``test_dir/<type>/*`` (``good`` = normal). Returns (samples, has_masks)."""
    samples: list[Sample] = []
    if not test_dir.is_dir():
        return samples, False
    gt_exists = gt_root.is_dir()
    all_masked = True
    any_defect = False
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        defect_type = type_dir.name
        for image in list_images(type_dir):
            if defect_type == "good":
                samples.append(Sample(image, 0, "good", None))
                continue
            any_defect = True
            mask = _find_mask(gt_root / defect_type, image.stem) if gt_exists else None
            if mask is None:
                all_masked = False
                if gt_exists and masks_required:
                    raise DatasetError(
                        f"test image '{image}' has no mask: expected "
                        f"'{gt_root / defect_type / (image.stem + '_mask.png')}'"
                    )
            samples.append(Sample(image, 1, defect_type, mask))
    has_masks = gt_exists and any_defect and all_masked
    if not has_masks:
        samples = [Sample(s.path, s.label, s.defect_type, None) for s in samples]
    return samples, has_masks


def _load_mvtec(root: Path, category: str | None, test_dir: Path | None) -> DatasetSplit:
    base = root
    if category is not None:
        if (root / category).is_dir():
            base = root / category
        elif root.name != category and not (root / "train" / "good").is_dir():
            raise DatasetError(f"category folder is missing: '{root / category}'")
    train_images = _require_images(base / "train" / "good", "training (train/good)")
    train = [Sample(p, 0, "good", None) for p in train_images]
    test_root = Path(test_dir) if test_dir is not None else base / "test"
    test, has_masks = _test_samples(test_root, test_root.parent / "ground_truth", masks_required=True)
    return DatasetSplit(category or base.name, "mvtec", base, train, test, has_masks)


def _read_visa_csv(csv_path: Path) -> list[dict[str, str]]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)]
    except OSError as error:
        raise DatasetError(f"cannot read '{csv_path}': {error}") from error
    needed = {"object", "split", "label", "image", "mask"}
    if rows and not needed <= set(rows[0]):
        raise DatasetError(f"'{csv_path}' must have columns {','.join(sorted(needed))}")
    return rows


def _load_visa(root: Path, category: str | None) -> DatasetSplit:
    csv_path = root / _VISA_CSV
    if not csv_path.is_file():
        raise DatasetError(f"VisA split file is missing: '{csv_path}'")
    rows = _read_visa_csv(csv_path)
    objects = sorted({row["object"] for row in rows})
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
    all_masked = True
    any_defect = False
    for row in rows:
        if row["object"] != category:
            continue
        image = root / row["image"]
        if not image.is_file():
            raise DatasetError(f"image listed in '{csv_path}' is missing: '{image}'")
        anomalous = row["label"].lower() in ("anomaly", "anomalous", "abnormal", "1", "bad", "defect")
        mask: Path | None = None
        if anomalous:
            any_defect = True
            if row["mask"]:
                mask = root / row["mask"]
                if not mask.is_file():
                    raise DatasetError(f"mask listed in '{csv_path}' is missing: '{mask}'")
            else:
                all_masked = False
        sample = Sample(image, int(anomalous), "anomaly" if anomalous else "good", mask)
        if row["split"].lower() == "train":
            if not anomalous:
                train.append(sample)
        else:
            test.append(sample)
    if not train:
        raise DatasetError(f"'{csv_path}' has no normal training images for '{category}'")
    return DatasetSplit(category, "visa", root, train, test, any_defect and all_masked)


def _load_folder(root: Path, test_dir: Path | None) -> DatasetSplit:
    train_images = _require_images(root, "training images")
    train = [Sample(p, 0, "good", None) for p in train_images]
    test: list[Sample] = []
    has_masks = False
    if test_dir is not None:
        test_dir = Path(test_dir)
        if not test_dir.is_dir():
            raise DatasetError(f"test folder is missing: '{test_dir}'")
        test, has_masks = _test_samples(test_dir, test_dir.parent / "ground_truth", masks_required=False)
    return DatasetSplit(root.name, "folder", root, train, test, has_masks)


def _detect_layout(root: Path, category: str | None) -> str:
    if (root / "train" / "good").is_dir() or (category and (root / category / "train" / "good").is_dir()):
        return "mvtec"
    if (root / _VISA_CSV).is_file():
        return "visa"
    if list_images(root):
        return "folder"
    where = f"'{root / category}/train/good' or " if category else ""
    raise DatasetError(
        f"cannot detect the layout of '{root}': looked for {where}'train/good' (MVTec), "
        f"'split_csv/1cls.csv' (VisA) and images directly in the folder"
    )


def load_dataset(
    root: str | os.PathLike[str],
    layout: str = "auto",
    *,
    category: str | None = None,
    test_dir: str | os.PathLike[str] | None = None,
) -> DatasetSplit:
    """Load a data set; ``layout`` is ``auto``, ``mvtec`` (``mpdd``, ``wfdd``), ``visa`` or ``folder``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data-set folder is missing: '{root}'")
    key = layout.lower()
    if key == "auto":
        key = _detect_layout(root, category)
    elif key not in _LAYOUT_ALIASES:
        raise DatasetError(f"unknown layout '{layout}' (use auto, mvtec, mpdd, wfdd, visa or folder)")
    key = _LAYOUT_ALIASES[key]
    test_path = Path(test_dir) if test_dir is not None else None
    if key == "mvtec":
        return _load_mvtec(root, category, test_path)
    if key == "visa":
        return _load_visa(root, category)
    return _load_folder(root, test_path)


def list_categories(root: str | os.PathLike[str], layout: str = "auto") -> list[str]:
    """Categories under ``root``: MVTec-like subfolders with ``train/good``, or VisA objects.

    A root that is itself one MVTec-like category gives ``[root.name]``; a plain folder gives ``[]``.
    """
    root = Path(root)
    key = layout.lower()
    if key == "folder" or not root.is_dir():
        return []
    if key in ("auto", "visa") and (root / _VISA_CSV).is_file():
        return sorted({row["object"] for row in _read_visa_csv(root / _VISA_CSV)})
    if key == "visa":
        raise DatasetError(f"VisA split file is missing: '{root / _VISA_CSV}'")
    found = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "train" / "good").is_dir()
    )
    if not found and (root / "train" / "good").is_dir():
        return [root.name]
    return found


# ---------------------------------------------------------------------------------------- preprocessing


class Preprocessor:
    """Resize the shorter side to ``resize or image_size``, then centre-crop ``image_size``.

    ``fit="crop"`` (default) is the MVTec/GLASS convention; it loses the ends of elongated images (on
    MTD, ~30% of the defects lie wholly outside the crop). ``fit="stretch"`` resizes both sides to
    ``resize or image_size`` (aspect ratio not kept), then centre-crops, so nothing is lost when
    ``resize`` is ``None``.
    """

    def __init__(self, image_size: int, resize: int | None = None, fit: str = "crop"):
        if fit not in ("crop", "stretch"):
            raise ValueError(f"fit must be 'crop' or 'stretch', got {fit!r}")
        self.fit = fit
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        self.image_size = int(image_size)
        self.resize = int(resize) if resize is not None else self.image_size
        if self.resize < self.image_size:
            raise ValueError(f"resize ({self.resize}) must not be smaller than image_size ({self.image_size})")

    def __repr__(self) -> str:
        return f"Preprocessor(image_size={self.image_size}, resize={self.resize}, fit={self.fit!r})"

    def geometry(self, original_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """(resized_h, resized_w, top, left) of the crop for an image of ``original_hw``."""
        height, width = int(original_hw[0]), int(original_hw[1])
        if self.fit == "stretch":
            new_h = new_w = self.resize
        elif height <= width:
            new_h, new_w = self.resize, max(self.resize, int(round(width * self.resize / height)))
        else:
            new_h, new_w = max(self.resize, int(round(height * self.resize / width))), self.resize
        top = int(round((new_h - self.image_size) / 2.0))
        left = int(round((new_w - self.image_size) / 2.0))
        return new_h, new_w, top, left

    def _crop(self, tensor: torch.Tensor, top: int, left: int) -> torch.Tensor:
        size = self.image_size
        return tensor[..., top : top + size, left : left + size].contiguous()

    def image(self, image: np.ndarray) -> torch.Tensor:
        """``uint8`` ``H×W×3`` → ``float32`` ``(3, S, S)`` in ``[0, 1]`` (bilinear, antialiased)."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 image, got shape {tuple(image.shape)}")
        new_h, new_w, top, left = self.geometry(image.shape[:2])
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        if (new_h, new_w) != tuple(image.shape[:2]):
            tensor = F.interpolate(
                tensor[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0.0, 1.0)
        return self._crop(tensor, top, left)

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """``bool`` ``H×W`` → ``float32`` ``(1, S, S)`` in ``{0, 1}`` (nearest, same geometry as images)."""
        if mask.ndim != 2:
            raise ValueError(f"expected an H×W mask, got shape {tuple(mask.shape)}")
        new_h, new_w, top, left = self.geometry(mask.shape)
        tensor = torch.from_numpy(np.ascontiguousarray(mask != 0)).float()[None]
        if (new_h, new_w) != tuple(mask.shape):
            tensor = F.interpolate(tensor[None], size=(new_h, new_w), mode="nearest-exact")[0]
        return self._crop(tensor, top, left)

    def map_to_original(self, anomaly_map: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
        """Map a ``(S, S)`` map back onto the original ``(H, W)`` frame (zeros outside the crop)."""
        values = torch.as_tensor(np.asarray(anomaly_map, dtype=np.float32))
        if values.ndim != 2:
            values = values.reshape(values.shape[-2:])
        size = self.image_size
        if tuple(values.shape) != (size, size):
            values = F.interpolate(values[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        height, width = int(original_hw[0]), int(original_hw[1])
        new_h, new_w, top, left = self.geometry((height, width))
        frame = torch.zeros((new_h, new_w), dtype=torch.float32)
        frame[top : top + size, left : left + size] = values
        if (new_h, new_w) != (height, width):
            downscale = new_h > height or new_w > width
            frame = F.interpolate(
                frame[None, None], size=(height, width), mode="bilinear", align_corners=False, antialias=downscale
            )[0, 0]
        return frame.numpy()


class ImageDataset(Dataset):
    """Reads and preprocesses samples; unreadable files raise :class:`~glass_ad.io.ImageReadError`."""

    def __init__(self, samples: list[Sample], preprocessor: Preprocessor):
        self.samples = list(samples)
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        pixels = read_image(sample.path)
        image = self.preprocessor.image(pixels)
        if sample.mask_path is not None:
            raw = read_mask(sample.mask_path)
            if raw.shape != pixels.shape[:2]:  # align a mask saved at another resolution
                raw = (
                    F.interpolate(
                        torch.from_numpy(raw).float()[None, None], size=pixels.shape[:2], mode="nearest-exact"
                    )[0, 0].numpy()
                    > 0.5
                )
            mask = self.preprocessor.mask(raw)
        else:
            size = self.preprocessor.image_size
            mask = torch.zeros((1, size, size), dtype=torch.float32)
        return {
            "image": image,
            "mask": mask,
            "label": int(sample.label),
            "defect_type": sample.defect_type,
            "path": str(sample.path),
            "index": int(index),
        }

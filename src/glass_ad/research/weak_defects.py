"""Weak-defect test sets: LAS-style overlays at a *fixed* β (the paper's MAD-sys study).

From an MVTec-layout category ``SRC`` this builds, for each β, an MVTec-layout folder ``OUT/beta_<β>``:

* ``train/good`` — a symlink to ``SRC/train/good`` (a copy where symlinks are not possible);
* ``test/good`` — half of SRC's good test images, untouched (symlinked or copied);
* ``test/synthetic`` — the other half with a texture pasted under a Perlin mask at that β, at the images'
  original resolution: x+ = x·(1 − m) + (1 − β)·t·m + β·x·m;
* ``ground_truth/synthetic/<stem>_mask.png`` — the masks (255 inside).

Larger β keeps more of the original image: β = 0.7 is a *weaker* (fainter) defect than β = 0.1.

Reproducible: every image's mask and texture are drawn from a generator seeded by ``(seed, image index)``,
once, and reused for every β, so between the folders only β varies. Pixels outside the mask are the
source pixels exactly (as decoded to 8-bit RGB by :func:`glass_ad.data.io.read_image`). A greyscale source
image gets a greyscale texture, so a synthetic defect cannot be spotted by its colour alone.

Textures must not come from the pool the model trains with, or the test would reward memorising those
textures. Pass ``textures`` (a folder) that differs from the training one; without it the procedural
textures of :class:`glass_ad.synthesis.textures.ProceduralTextures` are used, which are disjoint from DTD — the
pool training uses when given ``--textures``. If you train with procedural textures too (no
``--textures``), pass a texture folder here.

Typical study: train once on SRC, then test the same model on every β folder::

    glass make-weak-defects data/carpet weak/carpet --beta 0.1,0.3,0.5,0.7
    glass train data/carpet --out runs/carpet --textures data/dtd
    glass suite weak/carpet --model runs/carpet --out results/weak_carpet
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from glass_ad.config import field_default
from glass_ad.data.io import ImageReadError, read_image
from glass_ad.data.layouts import DatasetError, load_dataset
from glass_ad.synthesis.perlin import draw_perlin_mask
from glass_ad.synthesis.textures import TEXTURE_EXTENSIONS, ProceduralTextures, TexturePool, TextureSource

MARKER = ".glass_weak_defects"
MANIFEST = "weak_defects.json"
DEFECT_TYPE = "synthetic"
MIN_MASK_FRACTION = 0.002  # redraw masks covering less than 0.2 % of the image (near-invisible defects)
MAX_REDRAWS = 50


def beta_folder_name(beta: float) -> str:
    return f"beta_{beta:g}"


# ------------------------------------------------------------------------------------------- textures


class FolderTextures:
    """Texture files decoded on demand (one per synthetic image), with the 3-of-9 augmentations.

    Unlike :class:`TexturePool` nothing is decoded up front: a weak-defect set needs only a few textures, at
    the test images' full resolution, where decoding a whole DTD would cost gigabytes.
    """

    def __init__(self, folder: str | Path, image_size: int | tuple[int, int] | None = None):
        self.folder = Path(folder)
        self.image_size = image_size  # the side (or (H, W)) of a sample when `sample` is given no size
        if not self.folder.is_dir():
            raise ValueError(f"texture folder not found: {self.folder}")
        self.files = sorted(
            p for p in self.folder.rglob("*") if p.suffix.lower() in TEXTURE_EXTENSIONS and not p.name.startswith(".")
        )
        if not self.files:
            raise ValueError(f"no texture images in {self.folder}")

    def sample(self, rng: np.random.Generator, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """A ``size × size × 3`` (int) or ``H × W × 3`` ((H, W)) uint8 texture (None: ``image_size``);
        unreadable files are passed over."""
        size = size or self.image_size
        if size is None:
            raise ValueError("FolderTextures.sample needs a size (none given, no image_size set)")
        for _ in range(len(self.files)):
            path = self.files[int(rng.integers(len(self.files)))]
            try:
                pixels = read_image(path)
            except ImageReadError:
                continue
            tensor = torch.from_numpy(pixels).permute(2, 0, 1)
            if np.isscalar(size):  # a square: the shorter side to `size` (as always)
                tensor = TF.resize(tensor, size, antialias=True)
            else:  # a rectangle: the smallest aspect-keeping size that covers H × W
                height, width = int(size[0]), int(size[1])
                factor = max(height / pixels.shape[0], width / pixels.shape[1])
                cover = [max(height, round(pixels.shape[0] * factor)), max(width, round(pixels.shape[1] * factor))]
                tensor = TF.resize(tensor, cover, antialias=True)
            return TexturePool([tensor.permute(1, 2, 0).contiguous().numpy()], size).sample(rng)
        raise ValueError(f"no readable texture images in {self.folder}")


def _centre_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left = (array.shape[0] - height) // 2, (array.shape[1] - width) // 2
    return array[top : top + height, left : left + width]


# ------------------------------------------------------------------------------------------- synthesis


@dataclass
class WeakDefect:
    """One synthetic defect, drawn once and applied at every β."""

    source: Path
    image: np.ndarray  # H×W×3 uint8, the decoded source
    mask: np.ndarray  # H×W bool
    texture: np.ndarray  # H×W×3 uint8
    rule: str  # Perlin combination rule

    def at(self, beta: float) -> np.ndarray:
        """x+ at this β; pixels outside the mask are the source pixels exactly."""
        out = self.image.copy()
        inside = self.mask
        blend = (1.0 - beta) * self.texture[inside].astype(np.float32) + beta * self.image[inside].astype(np.float32)
        out[inside] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        return out


def draw_mask(height: int, width: int, rng: np.random.Generator, foreground: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """A Perlin mask (∧/∨/single rule) at the image's resolution: drawn on the enclosing square and
    centre-cropped, so lattice scales mean the same as in training; redrawn while it covers less than
    :data:`MIN_MASK_FRACTION` of the image (of the foreground, when given)."""
    area = float(foreground.sum()) if foreground is not None else float(height * width)
    mask, rule = draw_perlin_mask(
        (height, width), rng, foreground=foreground, min_pixels=MIN_MASK_FRACTION * area, max_draws=MAX_REDRAWS
    )
    if not mask.any():
        raise ValueError("could not draw a non-empty mask (is the foreground empty?)")
    return mask, rule


def draw_defect(
    path: Path, rng: np.random.Generator, textures: TextureSource, *, foreground: bool = False
) -> WeakDefect:
    """Decode ``path`` and draw its mask and texture (β-independent)."""
    from glass_ad.synthesis.foreground import foreground_mask

    image = read_image(path)
    height, width = image.shape[:2]
    fg = foreground_mask(image) if foreground else None
    mask, rule = draw_mask(height, width, rng, fg)
    texture = _centre_crop(textures.sample(rng, max(height, width)), height, width)
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]):
        grey = np.rint(texture.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        texture = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return WeakDefect(path, image, mask, np.ascontiguousarray(texture), rule)


# ----------------------------------------------------------------------------------------------- files


def _link_or_copy(source: Path, target: Path, prefer_link: bool) -> str:
    """Symlink ``target`` → ``source`` (absolute); copy when links are not possible. Returns how."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if prefer_link:
        try:
            os.symlink(source.resolve(), target, target_is_directory=source.is_dir())
            return "symlink"
        except (OSError, NotImplementedError):
            pass
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return "copy"


def _save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])
    Image.fromarray(array[..., 0] if grey else array).save(path, format="PNG")


def _prepare_folder(folder: Path) -> None:
    """Start from an empty folder; only a folder this module made may be replaced."""
    if folder.is_symlink() or folder.is_file():
        raise FileExistsError(f"'{folder}' exists and is not a folder made by make-weak-defects")
    if folder.exists():
        if not (folder / MARKER).is_file():
            raise FileExistsError(f"'{folder}' exists and was not made by make-weak-defects; choose another OUT")
        shutil.rmtree(folder)  # symlinks inside are removed, never followed
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("generated by glass_ad.research.weak_defects.make_weak_defects\n")


def parse_betas(text: str | Sequence[float]) -> list[float]:
    """``"0.1,0.3"`` → ``[0.1, 0.3]``; every β must lie in [0, 1) (β = 1 would leave no defect)."""
    values = [float(v) for v in text.split(",") if v.strip()] if isinstance(text, str) else [float(v) for v in text]
    if not values:
        raise ValueError("give at least one β")
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad:
        raise ValueError(f"β must lie in [0, 1) (got {', '.join(f'{v:g}' for v in bad)})")
    if len({beta_folder_name(v) for v in values}) != len(values):
        raise ValueError("β values repeat")
    return values


def make_weak_defects(
    src: str | Path,
    out: str | Path,
    betas: Sequence[float] | str = (0.1, 0.3, 0.5, 0.7),
    *,
    textures: str | Path | None = None,
    seed: int = 0,
    count: int | None = None,
    foreground: bool = False,
    link: bool = True,
    echo: Callable[[str], None] = print,
) -> list[Path]:
    """Build ``out/beta_<β>`` for every β (see the module docstring); returns those folders.

    ``count`` caps how many of SRC's good test images are used (default: all); half of them (rounded
    down) receive a synthetic defect, the rest stay good. ``foreground`` keeps defects on the object
    (for object categories; MAD-sys uses texture categories, where the whole image is used).
    """
    betas = parse_betas(betas)
    src, out = Path(src), Path(out)
    split = load_dataset(src, "mvtec")
    goods = sorted((s.path for s in split.test if s.label == 0), key=lambda p: p.name)
    if count is not None:
        if count < 2:
            raise ValueError("count must be at least 2 (one good and one synthetic image)")
        goods = [goods[i] for i in sorted(np.random.default_rng(seed).permutation(len(goods))[:count])]
    if len(goods) < 2:
        raise DatasetError(f"'{src / 'test' / 'good'}' needs at least 2 images (found {len(goods)})")
    # Seeded split: which images get a defect does not depend on the file order on disk.
    order = np.random.default_rng([seed, 1]).permutation(len(goods))
    chosen = set(order[: len(goods) // 2].tolist())
    synthetic = [p for i, p in enumerate(goods) if i in chosen]
    kept = [p for i, p in enumerate(goods) if i not in chosen]
    # draw_defect asks every source for the image's own size; the procedural default size is never used.
    source = FolderTextures(textures) if textures is not None else ProceduralTextures(field_default("image_size"))

    folders = [out / beta_folder_name(b) for b in betas]
    for folder in folders:
        _prepare_folder(folder)
    links = set()
    for folder in folders:
        links.add(_link_or_copy(split.root / "train" / "good", folder / "train" / "good", link))
        for path in kept:
            links.add(_link_or_copy(path, folder / "test" / "good" / path.name, link))

    records = []
    for index, path in enumerate(synthetic):
        # Keyed by the image's position: the same mask and texture for every β, and for every rerun.
        rng = np.random.default_rng([seed, 2, index])
        defect = draw_defect(path, rng, source, foreground=foreground)
        mask_png = np.where(defect.mask, 255, 0).astype(np.uint8)
        for beta, folder in zip(betas, folders):
            _save_image(folder / "test" / DEFECT_TYPE / f"{path.stem}.png", defect.at(beta))
            target = folder / "ground_truth" / DEFECT_TYPE / f"{path.stem}_mask.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask_png).save(target, format="PNG")
        records.append({"source": str(path), "stem": path.stem, "rule": defect.rule, "mask_fraction": float(defect.mask.mean())})
        echo(f"synthetic {index + 1}/{len(synthetic)}: {path.name} (mask {100 * defect.mask.mean():.1f} %)")

    manifest = {
        "source": str(src.resolve()),
        "betas": betas,
        "folders": [f.name for f in folders],
        "seed": seed,
        "count": count,
        "textures": str(Path(textures).resolve()) if textures is not None else "procedural",
        "foreground": foreground,
        "files": sorted(links),
        "good": [p.name for p in kept],
        "synthetic": records,
        "formula": "x+ = x(1-m) + (1-beta) t m + beta x m; larger beta = weaker defect",
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    echo(f"{len(folders)} test sets in {out}: {len(kept)} good + {len(synthetic)} synthetic images each ({', '.join(sorted(links))})")
    return folders


__all__ = [
    "FolderTextures",
    "WeakDefect",
    "beta_folder_name",
    "draw_defect",
    "draw_mask",
    "make_weak_defects",
    "parse_betas",
]

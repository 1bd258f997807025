"""Texture sources for Local Anomaly Synthesis.

`TexturePool` reads a folder of texture images (the paper uses DTD), decodes each image once (shorter side
resized to the image size) and serves augmented copies: 3 distinct operations out of 9, then a centre
crop. `ProceduralTextures` is the documented fallback when no folder is given: random two-colour
Perlin patterns, stripes and speckle, generated on the fly, so LAS still pastes textured anomalies.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from .perlin import perlin_noise

log = logging.getLogger(__name__)

TEXTURE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


# The 9 augmentations of the reference, on uint8 C×H×W tensors. Each draws its own parameters.
AUGMENTATIONS: dict[str, Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = {
    "contrast": lambda t, rng: TF.adjust_contrast(t, _uniform(rng, 0.8, 1.2)),
    "brightness": lambda t, rng: TF.adjust_brightness(t, _uniform(rng, 0.8, 1.2)),
    "saturation_hue": lambda t, rng: TF.adjust_hue(TF.adjust_saturation(t, _uniform(rng, 0.8, 1.2)), _uniform(rng, -0.2, 0.2)),
    "hflip": lambda t, rng: TF.horizontal_flip(t),
    "vflip": lambda t, rng: TF.vertical_flip(t),
    "grayscale": lambda t, rng: TF.rgb_to_grayscale(t, num_output_channels=3),
    "autocontrast": lambda t, rng: TF.autocontrast(t),
    "equalize": lambda t, rng: TF.equalize(t),
    "rotate": lambda t, rng: TF.rotate(t, _uniform(rng, -45.0, 45.0)),
}


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[top : top + size, left : left + size]


class TexturePool:
    """Texture images decoded once, served with 3 random distinct augmentations."""

    def __init__(self, textures: list[np.ndarray], image_size: int, source: str = ""):
        if not textures:
            raise ValueError(f"no usable texture images in {source or 'the pool'}")
        self.textures = textures
        self.image_size = image_size
        self.source = source

    @classmethod
    def from_folder(cls, folder: str | Path, image_size: int, *, max_images: int | None = None) -> "TexturePool":
        from .io import ImageReadError, read_image

        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"texture folder not found: {folder}")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in TEXTURE_EXTENSIONS and not p.name.startswith("."))
        if not files:
            raise ValueError(f"no texture images in {folder} (searched recursively for {', '.join(TEXTURE_EXTENSIONS)})")
        if max_images:
            files = files[:max_images]
        textures = []
        for path in files:
            try:
                pixels = read_image(path)
            except ImageReadError as error:
                log.warning("texture skipped: %s", error)
                continue
            tensor = torch.from_numpy(pixels).permute(2, 0, 1)
            tensor = TF.resize(tensor, image_size, antialias=True)  # shorter side → image size
            textures.append(tensor.permute(1, 2, 0).contiguous().numpy())
        return cls(textures, image_size, str(folder))

    def __len__(self) -> int:
        return len(self.textures)

    def sample(self, rng: np.random.Generator, return_ops: bool = False):
        """A random texture (S×S×3 uint8) with 3 distinct augmentations, centre-cropped."""
        base = self.textures[int(rng.integers(len(self.textures)))]
        ops = list(rng.choice(list(AUGMENTATIONS), size=3, replace=False))
        tensor = torch.from_numpy(base).permute(2, 0, 1)
        for name in ops:
            tensor = AUGMENTATIONS[name](tensor, rng)
        out = _center_crop(tensor.permute(1, 2, 0).numpy(), self.image_size)
        if out.shape[0] < self.image_size or out.shape[1] < self.image_size:  # tiny source image
            out = TF.resize(torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1), [self.image_size] * 2, antialias=True)
            out = out.permute(1, 2, 0).numpy()
        out = np.ascontiguousarray(out)
        return (out, ops) if return_ops else out


class ProceduralTextures:
    """Fallback texture source: random two-colour Perlin patterns, stripes or speckle (no files needed)."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def sample(self, rng: np.random.Generator, return_ops: bool = False):
        size = self.image_size
        colors = rng.uniform(0, 255, size=(2, 3))
        kind = ("perlin", "stripes", "speckle")[int(rng.integers(3))]
        if kind == "perlin":
            scale = 2 ** int(rng.integers(1, 5))
            t = perlin_noise((size, size), (scale, scale), rng)
            t = (t - t.min()) / (np.ptp(t) + 1e-8)
        elif kind == "stripes":
            angle = rng.uniform(0, math.pi)
            period = rng.uniform(4, 24)
            y, x = np.mgrid[0:size, 0:size]
            t = 0.5 + 0.5 * np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period)
        else:
            t = rng.random((size, size))
        t = t[..., None]
        image = colors[0] * (1 - t) + colors[1] * t + rng.normal(0, 8, size=(size, size, 3))
        out = np.clip(image, 0, 255).astype(np.uint8)
        return (out, [kind]) if return_ops else out


def load_textures(folder: str | Path | None, image_size: int) -> TexturePool | ProceduralTextures:
    """The texture folder's pool, or procedural textures when no folder is given."""
    if folder is None:
        return ProceduralTextures(image_size)
    return TexturePool.from_folder(folder, image_size)

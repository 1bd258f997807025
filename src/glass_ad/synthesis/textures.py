"""Texture sources for Local Anomaly Synthesis (LAS).

One concept at some length (just over 400 lines): every texture source behind `TextureSource` (folder,
procedural, grey) with the augmentations they share.

:class:`TexturePool` serves images from a folder (the paper uses DTD). Every file is decoded once, resized to
cover the network input (the shorter side to the image size for a square; both sides at least H and W for a
rectangular H×W input) and centre-cropped to it, and kept in memory as one uint8 array, so a training
iteration never touches the disk. :meth:`TexturePool.sample` returns a random texture with 3
distinct augmentations drawn from the reference's 9:

contrast ×U(0.8, 1.2) · brightness ×U(0.8, 1.2) · saturation ×U(0.8, 1.2) with hue ±U(0.2) · horizontal
flip · vertical flip · grayscale · autocontrast · equalize · rotation U(−45°, 45°) (nearest, zero fill).

The operations run on uint8 arrays with OpenCV/NumPy (torchvision's tensor hue shift costs ~5 ms per 288²
image on this CPU, the OpenCV HSV round trip ~0.1 ms). Difference from the reference: it augments the
resized image and crops afterwards, so a rotation of a non-square texture shows slightly smaller black
corners than here, where the crop is stored.

Sizes: every source's ``sample(rng, size)`` takes ``size`` as an int (a square, as before), an ``(H, W)``
tuple (a rectangle), or None (the source's own shape). A square asks for exactly the random numbers it
always did, so a fixed seed gives the same textures as before rectangles existed.

:class:`ProceduralTextures` is the documented fallback when no texture folder is given: random colour
patterns generated on the fly (fractal Perlin noise, stripes, speckle), so LAS still pastes textured
anomalies without DTD.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Protocol, Sequence

import cv2
import numpy as np

from glass_ad.config import GlassConfig
from glass_ad.data.io import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image
from glass_ad.synthesis.perlin import as_hw, perlin_noise

log = logging.getLogger(__name__)

__all__ = [
    "TextureSource",
    "TEXTURE_EXTENSIONS",
    "AUGMENTATIONS",
    "augment",
    "TextureError",
    "TexturePool",
    "ProceduralTextures",
    "fit_square",
    "fit_shape",
    "load_textures",
    "GreyTextures",
    "wants_grey_textures",
    "textures_from_config",
]

TEXTURE_EXTENSIONS: tuple[str, ...] = IMAGE_EXTENSIONS
AUGMENTATIONS_PER_SAMPLE = 3


class TextureSource(Protocol):
    """What LAS and the weak-defect sets draw textures from: :class:`TexturePool` (a folder, decoded once),
    :class:`ProceduralTextures`, :class:`GreyTextures` around either, and
    :class:`glass_ad.research.weak_defects.FolderTextures` (a folder, decoded on demand)."""

    def sample(self, rng: np.random.Generator, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """A random uint8 texture: ``size × size × 3`` for an int, ``H × W × 3`` for ``(H, W)``, the source's own
        shape for None."""
        ...


class TextureError(ValueError):
    """A texture folder is missing, empty or unreadable (one-line message naming the folder)."""


# ----------------------------------------------------------------------------------------- augmentations
# Each takes an H×W×3 uint8 array and the generator (for its own parameters) and returns a new array.


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Blend towards the mean grey level (torchvision's definition); addWeighted saturates to [0, 255].
    factor = float(rng.uniform(0.8, 1.2))
    mean = float(_grey(image).mean())
    return cv2.addWeighted(image, factor, image, 0.0, (1.0 - factor) * mean)


def _brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = float(rng.uniform(0.8, 1.2))
    return cv2.addWeighted(image, factor, image, 0.0, 0.0)


def _saturation_hue(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = float(rng.uniform(0.8, 1.2))
    hue = float(rng.uniform(-0.2, 0.2))  # fraction of the colour circle
    grey = cv2.cvtColor(_grey(image), cv2.COLOR_GRAY2RGB)
    out = cv2.addWeighted(image, factor, grey, 1.0 - factor, 0.0)
    hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)  # H in 0..255 covers the full circle: wraps mod 256
    hsv[..., 0] += np.uint8(int(round(hue * 256.0)) % 256)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def _hflip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.flip(image, 1)


def _vflip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.flip(image, 0)


def _grayscale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.cvtColor(_grey(image), cv2.COLOR_GRAY2RGB)


def _autocontrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Per channel: stretch [min, max] to [0, 255]; a flat channel is left alone (PIL/torchvision).
    # cv2.minMaxLoc per split channel: NumPy's strided min over axis 0 is ~30x slower here.
    extremes = np.array([cv2.minMaxLoc(channel)[:2] for channel in cv2.split(image)], dtype=np.float32)
    low, high = extremes[:, 0], extremes[:, 1]
    span = high - low
    scale = np.where(span > 0, 255.0 / np.maximum(span, 1.0), 1.0)
    offset = np.where(span > 0, low, 0.0)
    values = np.arange(256, dtype=np.float32)[:, None]
    lut = np.clip(np.rint((values - offset) * scale), 0, 255).astype(np.uint8)  # 256 × 3
    return cv2.LUT(image, lut.reshape(256, 1, 3))


def _equalize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # PIL's per-channel equalisation (what torchvision follows), built as one 256×3 lookup table.
    lut = np.empty((256, 3), dtype=np.uint8)
    identity = np.arange(256)
    for c in range(3):
        hist = cv2.calcHist([image], [c], None, [256], [0, 256]).ravel().astype(np.int64)
        nonzero = hist[hist > 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255 if nonzero.size else 0
        if step == 0:
            lut[:, c] = identity
        else:
            cumulative = np.concatenate([[0], np.cumsum(hist)[:-1]])
            lut[:, c] = np.minimum((cumulative + step // 2) // step, 255)
    return cv2.LUT(image, lut.reshape(256, 1, 3))


def _rotate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # torchvision RandomAffine(degrees=(−45, 45)): nearest neighbour, black outside.
    angle = float(rng.uniform(-45.0, 45.0))
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, 1.0)
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


AUGMENTATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "contrast": _contrast,
    "brightness": _brightness,
    "saturation_hue": _saturation_hue,
    "hflip": _hflip,
    "vflip": _vflip,
    "grayscale": _grayscale,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "rotate": _rotate,
}
_AUGMENTATION_NAMES = tuple(AUGMENTATIONS)


def augment(
    image: np.ndarray, rng: np.random.Generator, count: int = AUGMENTATIONS_PER_SAMPLE
) -> tuple[np.ndarray, list[str]]:
    """``count`` distinct augmentations (random order) applied to an H×W×3 uint8 image; returns (image, names)."""
    picks = rng.choice(len(_AUGMENTATION_NAMES), size=count, replace=False)
    names = [_AUGMENTATION_NAMES[int(i)] for i in picks]
    for name in names:
        image = AUGMENTATIONS[name](image, rng)
    return np.ascontiguousarray(image), names


# ----------------------------------------------------------------------------------------------- geometry


def fit_shape(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize (keeping the aspect ratio) so the image covers ``shape`` = (H, W), then centre-crop to H × W
    (uint8 h×w×3). For a square shape this is :func:`fit_square`, integer for integer."""
    out_h, out_w = int(shape[0]), int(shape[1])
    height, width = image.shape[:2]
    if (height, width) != (out_h, out_w):
        # The larger of the two ratios: both sides end up at least as long as asked. For a square this is
        # size / min(height, width), the same float as before rectangles.
        factor = max(out_h / height, out_w / width)
        new_w, new_h = max(out_w, round(width * factor)), max(out_h, round(height * factor))
        # INTER_AREA averages when shrinking (no aliasing); linear when enlarging.
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        image = image[top : top + out_h, left : left + out_w]
    return np.ascontiguousarray(image)


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop to ``size × size`` (uint8 H×W×3)."""
    return fit_shape(image, (int(size), int(size)))


def _resize_to(image: np.ndarray, size: int | tuple[int, int] | None) -> np.ndarray:
    """``image`` fitted to ``size`` (int: square, (H, W): rectangle); None or its own shape: unchanged."""
    if size is None:
        return image
    shape = as_hw(size)
    return image if image.shape[:2] == shape else fit_shape(image, shape)


# ---------------------------------------------------------------------------------------------- sources


class TexturePool:
    """Textures decoded once and kept as one ``N × H × W × 3`` uint8 array; served with 3 of the 9 augmentations.

    ``image_size`` is the stored shape: an int ``S`` (``S × S``, as before) or ``(H, W)`` for a rectangular
    network input (memory: N·H·W·3 bytes). ``image_size`` the attribute is the short side, ``shape`` (H, W).
    """

    def __init__(
        self, textures: Sequence[np.ndarray] | np.ndarray, image_size: int | tuple[int, int], source: str = ""
    ) -> None:
        if len(textures) == 0:
            raise TextureError(f"no usable texture images in {source or 'the pool'}")
        self.shape = as_hw(image_size)
        self.image_size = min(self.shape)
        self.source = source
        self.textures = np.stack([fit_shape(np.asarray(t, dtype=np.uint8), self.shape) for t in textures])

    @classmethod
    def from_folder(
        cls, folder: str | Path, image_size: int | tuple[int, int], *, max_images: int | None = None
    ) -> "TexturePool":
        """Decode every image under ``folder`` (recursively), fitted to ``image_size`` (int or (H, W)).
        Unreadable files are skipped with a warning.

        ``max_images`` keeps an evenly spaced subset of the sorted file list (so every sub-folder, e.g.
        every DTD class, stays represented).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise TextureError(f"texture folder not found: '{folder}'")
        files = list_images(folder, recursive=True)
        if not files:
            searched = " ".join(TEXTURE_EXTENSIONS)
            raise TextureError(f"no texture images in '{folder}' (searched recursively for {searched})")
        if max_images is not None and 0 < max_images < len(files):
            keep = np.unique(np.linspace(0, len(files) - 1, max_images).round().astype(int))
            files = [files[i] for i in keep]
        textures = []
        for path in files:
            try:
                textures.append(fit_shape(read_image(path), as_hw(image_size)))
            except (ImageReadError, OSError, cv2.error) as error:
                log.warning("skipping unreadable texture: %s", " ".join(str(error).split()))
        if not textures:
            raise TextureError(
                f"none of the {len(files)} image files in '{folder}' could be read (see the warnings above)"
            )
        return cls(textures, image_size, str(folder))

    def __len__(self) -> int:
        return len(self.textures)

    def sample(self, rng: np.random.Generator, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """A random texture (the pool's ``H × W × 3`` uint8; ``size × size`` for an int, ``H × W`` for a tuple)
        with 3 distinct augmentations (applied at the stored shape, then fitted)."""
        base = self.textures[int(rng.integers(len(self.textures)))]
        texture, _ = augment(base, rng)
        return _resize_to(texture, size)


class ProceduralTextures:
    """Fallback texture source when no texture folder is given: patterns generated on the fly.

    Each sample is one of three kinds, equally likely, in random colours:

    * ``perlin``  — fractal Perlin noise (2–3 octaves) mapped onto a 2–3 colour ramp (stains, blotches);
    * ``stripes`` — parallel bands at a random angle, period 4–40 px, soft (sine) or hard (square) profile;
    * ``speckle`` — random dots 1–5 px wide on a background colour (grains, dust, pitting).

    Light grain is added so no region is perfectly flat. Using these instead of DTD changes what the
    synthetic anomalies look like, not how LAS works (mask, foreground, β overlay are the same).
    """

    KINDS = ("perlin", "stripes", "speckle")

    def __init__(self, image_size: int | tuple[int, int]) -> None:
        self.shape = as_hw(image_size)  # (H, W) of a sample given no size
        self.image_size = min(self.shape)

    def sample(self, rng: np.random.Generator, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """A random ``H × W × 3`` uint8 pattern (the source's shape; ``size × size`` for an int, ``H × W`` for
        a tuple). Patterns are generated at that shape, not cropped from a square."""
        shape = as_hw(size) if size else self.shape
        kind = self.KINDS[int(rng.integers(len(self.KINDS)))]  # the first draw: tests rely on this order
        if kind == "perlin":
            field = self._fractal(shape, rng)
        elif kind == "stripes":
            field = self._stripes(shape, rng)
        else:
            field = self._speckle(shape, rng)
        return self._colourise(field, rng)

    @staticmethod
    def _fractal(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        height, width = shape
        short = min(height, width)
        base = 2 ** int(rng.integers(1, 4))
        field = np.zeros((height, width), np.float32)
        amplitude = 1.0
        for octave in range(int(rng.integers(2, 4))):
            # Lattice cells stay square: the long side gets proportionally more (a square: cells × cells).
            cells = base * 2**octave
            cells_y = min(round(cells * height / short), max(1, height // 2))
            cells_x = min(round(cells * width / short), max(1, width // 2))
            field += amplitude * perlin_noise((height, width), (cells_y, cells_x), rng)
            amplitude *= 0.5
        # Spread by the standard deviation: min–max scaling alone leaves a smooth field near the middle
        # colour everywhere (looks flat). Half the time sharpen into blobs with soft edges.
        field = field / (float(field.std()) + 1e-6)
        return np.tanh(field * (2.0 if rng.random() < 0.5 else 0.5))

    @staticmethod
    def _stripes(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        angle = rng.uniform(0.0, math.pi)
        period = rng.uniform(4.0, 40.0)
        rows, cols = np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32)
        phase = (cols[None, :] * math.cos(angle) + rows[:, None] * math.sin(angle)) * (2.0 * math.pi / period)
        wave = np.sin(phase + rng.uniform(0.0, 2.0 * math.pi))
        return np.sign(wave) if rng.random() < 0.5 else wave

    @staticmethod
    def _speckle(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        density = rng.uniform(0.01, 0.08)
        dots = (rng.random(tuple(shape), dtype=np.float32) < density).astype(np.float32)
        radius = int(rng.integers(0, 3))
        if radius:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            dots = cv2.dilate(dots, kernel)
        return dots

    @staticmethod
    def _colourise(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Map a scalar field onto a random 2–3 colour ramp, with light grain."""
        low, high = float(field.min()), float(field.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        grain = rng.standard_normal(field.shape, dtype=np.float32) * np.float32(6.0)
        level = np.clip((field - np.float32(low)) * np.float32(scale) + grain, 0, 255).astype(np.uint8)
        count = int(rng.integers(2, 4))
        for _ in range(20):  # neighbouring colours must differ visibly, or the pattern looks flat
            stops = rng.uniform(0.0, 255.0, size=(count, 3))
            if np.linalg.norm(np.diff(stops, axis=0), axis=1).min() >= 80.0:
                break
        # Piecewise-linear colour ramp through the stops as a 256-entry table: one lookup per pixel.
        positions = np.linspace(0.0, 255.0, count)
        levels = np.arange(256.0)
        ramp = np.stack([np.interp(levels, positions, stops[:, c]) for c in range(3)], axis=1)
        table = np.clip(np.rint(ramp), 0, 255).astype(np.uint8).reshape(256, 1, 3)
        return cv2.LUT(cv2.merge([level, level, level]), table)


def load_textures(
    path_or_none: str | Path | None, image_size: int | tuple[int, int], *, max_images: int | None = None
) -> TexturePool | ProceduralTextures:
    """The folder's :class:`TexturePool`, or :class:`ProceduralTextures` when no folder is given, serving
    ``image_size`` textures (an int: square; ``(H, W)``: the rectangular network input)."""
    if path_or_none is None or str(path_or_none) == "":
        log.info("LAS textures: procedural (no texture folder given)")
        return ProceduralTextures(image_size)
    pool = TexturePool.from_folder(path_or_none, image_size, max_images=max_images)
    log.info("LAS textures: %d images from %s", len(pool), path_or_none)
    return pool


class GreyTextures:
    """Wraps a texture source so every sample is grey (for grey products; `texture_colour`)."""

    def __init__(self, source: TextureSource) -> None:
        self.source = source

    def sample(self, rng: np.random.Generator, size: int | tuple[int, int] | None = None) -> np.ndarray:
        """The wrapped source's texture (any ``size`` it takes), converted to grey (still ``× 3`` channels)."""
        texture = self.source.sample(rng, size)
        return np.repeat(_grey(texture)[..., None], 3, axis=2)


def wants_grey_textures(texture_colour: str, grey_images: bool) -> bool:
    """The `texture_colour` rule: "grey" always, "auto" when the training images are grey, "colour" never."""
    return texture_colour == "grey" or (texture_colour == "auto" and grey_images)


def textures_from_config(config: GlassConfig, *, grey_images: bool = False) -> TextureSource:
    """The LAS texture source of `config`: its texture folder (none: procedural textures), made grey by the
    `texture_colour` rule (``grey_images``: the training images are grey). Textures are fitted to the network
    input, ``config.input_shape`` (a rectangle stays a rectangle)."""
    shape = getattr(config, "input_shape", (config.image_size, config.image_size))
    textures = load_textures(config.textures, shape)
    return GreyTextures(textures) if wants_grey_textures(config.texture_colour, grey_images) else textures

"""Reading images and defect masks.

Every image that enters the library goes through :func:`read_image`, which returns a ``uint8`` array
``H×W×3`` in RGB order whatever the file holds:

* 8-bit RGB / RGBA / grey / grey+alpha / palette / CMYK / 1-bit: converted to RGB; alpha is dropped
  (the colour values are kept as they are, no compositing onto a background).
* Integer images deeper than 8 bits (16-bit PNG/TIFF, grey or colour) are scaled by the bit depth the
  data actually uses: the smallest of 8, 10, 12, 14 or 16 bits that holds the image's largest value,
  shifted right to 8 bits (full-range 16-bit: ``>> 8``; 12-bit camera data stored in 16 bits, max ≤ 4095:
  ``>> 4``; 8-bit data stored in 16 bits: unchanged). The choice is made per image, from its maximum, so a
  16-bit image that is almost black (max < 4096) is read as 12-bit data — the usual case for industrial
  cameras. Larger integers (32-bit) are scaled by the image maximum; signed data with negative values is
  min–max scaled.
* Float images: values inside ``[0, 1]`` are multiplied by 255, anything else is min–max scaled.
* The EXIF orientation tag, when present, is applied.

Pillow decodes the files. 16-bit colour PNG/TIFF files (which Pillow would truncate to 8 bits) and TIFF
variants Pillow cannot open (float or 16-bit multi-channel, some compressions) are decoded by OpenCV
(``IMREAD_UNCHANGED``) instead, so that the rule above sees the real pixel values.

Every failure is an :class:`ImageReadError` whose message is one line naming the file and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "list_images", "read_image", "read_mask"]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm",
)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")


class ImageReadError(ValueError):
    """A file could not be read as an image (missing, empty, corrupt, not an image, too small)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"cannot read image '{self.path}': {self.reason}")


# --------------------------------------------------------------------------------------------------
# Decoding to a raw array (any dtype, H×W or H×W×C, RGB(A) channel order)


class _UseOpenCV(Exception):
    """Pillow opened the file but would lose information: decode it with OpenCV instead."""


def _short_error(error: BaseException, path: Path) -> str:
    text = " ".join(str(error).split()).replace(f"'{path}'", "").replace(str(path), "").strip()
    text = text.replace("  ", " ")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _exif_orientation(image) -> int:
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1–8) to an H×W(×C) array, as a viewer would display it."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(array, k=-1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(array, k=1)
    return array


def _decode_pillow(path: Path) -> tuple[np.ndarray, int]:
    """Raw array and EXIF orientation, decoded by Pillow."""
    from PIL import Image

    with Image.open(path) as image:
        rawmodes = [str(tile[3][0] if isinstance(tile[3], tuple) else tile[3]) for tile in image.tile]
        if image.mode in ("RGB", "RGBA") and any(";16" in mode for mode in rawmodes):
            raise _UseOpenCV("16-bit colour")
        orientation = _exif_orientation(image)
        image.load()
        mode = image.mode
        if mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
        elif mode == "1":
            image = image.convert("L")
        elif mode == "RGBX":
            image = image.convert("RGB")
        elif mode == "RGBa":
            image = image.convert("RGBA")
        elif mode == "La":
            image = image.convert("LA")
        elif mode.startswith("I;16"):
            return np.asarray(image).astype(np.uint16), orientation  # native byte order
        elif mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):  # CMYK, YCbCr, LAB, HSV, ...
            image = image.convert("RGB")
        return np.array(image), orientation


def _decode_opencv(path: Path) -> tuple[np.ndarray, int]:
    """Raw array decoded by OpenCV (depth and channels unchanged), channels reordered to RGB(A)."""
    import cv2

    buffer = np.fromfile(str(path), dtype=np.uint8)  # imdecode: works with non-ASCII paths everywhere
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("OpenCV cannot decode it either")
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, [2, 1, 0, 3]]
    orientation = 1
    try:
        from PIL import Image

        with Image.open(path) as image:
            orientation = _exif_orientation(image)
    except Exception:
        pass
    return np.ascontiguousarray(array), orientation


def _decode(path: str | os.PathLike[str]) -> np.ndarray:
    """The file's pixels as a raw array (orientation applied), or :class:`ImageReadError`."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageReadError(path, f"cannot access the file ({_short_error(error, path)})") from error
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        array, orientation = _decode_pillow(path)
    except _UseOpenCV:
        try:
            array, orientation = _decode_opencv(path)
        except Exception as error:
            raise ImageReadError(path, f"corrupt 16-bit colour image ({_short_error(error, path)})") from error
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"image is too large ({_short_error(error, path)})") from error
    except Exception as pil_error:
        # OpenCV only for TIFF files (variants Pillow lacks) and formats Pillow does not know at all;
        # a truncated PNG/JPEG must fail rather than come back half grey.
        if not (_is_tiff(path) or isinstance(pil_error, Image.UnidentifiedImageError)):
            raise ImageReadError(path, f"not an image or corrupt (PIL: {_short_error(pil_error, path)})") from pil_error
        try:
            array, orientation = _decode_opencv(path)
        except Exception:
            raise ImageReadError(
                path, f"not an image or corrupt (PIL: {_short_error(pil_error, path)})"
            ) from pil_error
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or array.size == 0:
        raise ImageReadError(path, f"unsupported pixel layout {tuple(array.shape)}")
    return np.ascontiguousarray(_orient(array, orientation))


# --------------------------------------------------------------------------------------------------
# Conversion to uint8 RGB


def _colour_channels(array: np.ndarray) -> np.ndarray:
    """Drop alpha / extra channels: grey+alpha → grey, RGBA (or more channels) → RGB."""
    if array.ndim == 3:
        if array.shape[2] == 2:
            return array[:, :, 0]
        if array.shape[2] > 3:
            return array[:, :, :3]
    return array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric pixel array to uint8 (rules in the module docstring)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        values = array.astype(np.int64)
        low, high = int(values.min()), int(values.max())
        if low < 0:
            span = max(high - low, 1)
            return ((values - low) * 255 // span).astype(np.uint8)
        if high > 65535:
            return (values * 255 // high).astype(np.uint8)
        bits = next(b for b in (8, 10, 12, 14, 16) if high < (1 << b))
        return np.clip(values >> (bits - 8), 0, 255).astype(np.uint8)
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike[str], min_size: int = 8) -> np.ndarray:
    """Read an image file as a ``uint8`` ``H×W×3`` RGB array.

    Raises :class:`ImageReadError` (one line naming the file) when the file is missing, empty, not
    decodable, or has a side shorter than ``min_size`` pixels.
    """
    array = _decode(path)
    height, width = array.shape[:2]
    if min(height, width) < min_size:
        raise ImageReadError(
            path, f"image is {width}x{height} pixels, smaller than the minimum {min_size}x{min_size}"
        )
    array = _to_uint8(_colour_channels(array))
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a defect mask as ``bool`` ``H×W``.

    Any non-zero pixel (in any colour channel, any bit depth) is defect, so masks stored as 0/1, 0/255
    or with several label values all work. Exception: masks saved in a lossy format (JPEG/WebP) have
    compression noise around the edges, so there a pixel is defect when it exceeds half the range.
    An alpha channel is ignored.
    """
    array = _colour_channels(_decode(path))
    if Path(path).suffix.lower() in _LOSSY_EXTENSIONS:
        array = _to_uint8(array) > 127
    else:
        array = array != 0
    if array.ndim == 3:
        array = array.any(axis=2)
    return np.ascontiguousarray(array)


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in ``folder``, sorted; extensions are matched case-insensitively and hidden files
    (and, when recursive, hidden folders) are skipped.

    Raises ``FileNotFoundError`` when ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: '{folder}'")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = []
    for candidate in candidates:
        if any(part.startswith(".") for part in candidate.relative_to(folder).parts):
            continue
        if candidate.suffix.lower() in IMAGE_EXTENSIONS and candidate.is_file():
            found.append(candidate)
    return sorted(found)

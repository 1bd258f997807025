"""Reading images and defect masks.

One concept at some length (over 400 lines): the one decoding rule every image goes through, with the
header parsers that size a file before it is decoded.

Every image that enters the library goes through :func:`read_image`, which returns a ``uint8`` array
``H×W×3`` in RGB order whatever the file holds:

* 8-bit RGB / RGBA / grey / grey+alpha / palette / CMYK / 1-bit: converted to RGB; alpha is dropped
  (the colour values are kept as they are, no compositing onto a background).
* Images stored with more than 8 bits per channel are scaled by one fixed rule, never by the image's own
  values: ``round(v · 255 / (2^B − 1))`` with ``B`` the *declared bit depth* — by default the container's
  (16-bit PNG/TIFF: ``B = 16``, i.e. ``v / 65535``), or the bit depth the camera really uses, declared once
  per model (``glass train --bit-depth 12``, recorded in the checkpoint and used again by ``glass test``,
  ``glass predict`` and the ``Detector``; see :func:`declared_bit_depth`). Values above ``2^B − 1`` (a hot
  pixel) saturate at 255; they never change how the rest of the image is decoded. Integers wider than 16
  bits have no sensible default and need a declared bit depth; negative values read as 0.
* Float images: values in ``[0, 1]`` are multiplied by 255 (outside: clipped); with a declared bit depth
  ``B`` they are divided by ``2^B − 1`` first. 8-bit images are never rescaled.
* Animated or multi-frame files (GIF, APNG, multi-page TIFF) are refused with a message naming the frame
  count: which frame to inspect is the user's decision, not the reader's.
* The EXIF orientation tag, when present, is applied.

Pillow decodes the files. 16-bit colour PNG/TIFF files (which Pillow would truncate to 8 bits) and TIFF
variants Pillow cannot open (float or 16-bit multi-channel, some compressions) are decoded by OpenCV
(``IMREAD_UNCHANGED``) instead, so that the rule above sees the real pixel values.

Every failure is an :class:`ImageReadError` whose message is one line naming the file and the reason.

``read_image(path, max_pixels=N)`` (the inspection service) refuses an image with more than ``N`` pixels
*before* decoding it (:class:`ImageTooLargeError`): the size comes from Pillow's header parse, or, for the
files OpenCV decodes instead, from the file's own header (:func:`header_size`: PNG, TIFF, Radiance HDR,
PFM, PNM/PAM, Sun raster). A file whose size cannot be read that way is not handed to OpenCV at all.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "ImageTooLargeError",
    "check_bit_depth",
    "current_bit_depth",
    "declared_bit_depth",
    "header_size",
    "list_images",
    "read_image",
    "read_mask",
    "to_uint8",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".gif",
)

# The bit depth declared for the images being read (None: the container's own depth). Set for a block of
# work with `declared_bit_depth`, so that code that only calls `read_image(path)` (training) reads every
# image by the model's rule; `read_image(..., bit_depth=B)` overrides it for one call.
_DECLARED_BIT_DEPTH: ContextVar[int | None] = ContextVar("glass_ad_declared_bit_depth", default=None)
MAX_BIT_DEPTH = 32

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")


class ImageReadError(ValueError):
    """A file could not be read as an image (missing, empty, corrupt, not an image, too small)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"cannot read image '{self.path}': {self.reason}")


class ImageTooLargeError(ImageReadError):
    """The file declares more pixels than the caller's ``max_pixels``; nothing was decoded.

    ``width`` and ``height`` are None when only the pixel count is known."""

    def __init__(self, path, pixels: int, limit: int, width: int | None = None, height: int | None = None) -> None:
        self.pixels, self.limit, self.width, self.height = int(pixels), int(limit), width, height
        size = f"{width}x{height} pixels" if width is not None and height is not None else f"{pixels} pixels"
        super().__init__(path, f"image is {size}, more than the limit of {limit} pixels")


def check_bit_depth(bit_depth: int | None) -> int | None:
    """``bit_depth`` as an int in 1..32, or None; anything else is a one-line ValueError."""
    if bit_depth is None:
        return None
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, (int, np.integer)) or not 1 <= int(bit_depth) <= MAX_BIT_DEPTH:
        raise ValueError(f"bit depth must be a whole number of bits from 1 to {MAX_BIT_DEPTH}, got {bit_depth!r}")
    return int(bit_depth)


@contextmanager
def declared_bit_depth(bit_depth: int | None) -> Iterator[int | None]:
    """Within the block, images deeper than 8 bits are read as ``bit_depth``-bit data (None: by container)."""
    token = _DECLARED_BIT_DEPTH.set(check_bit_depth(bit_depth))
    try:
        yield _DECLARED_BIT_DEPTH.get()
    finally:
        _DECLARED_BIT_DEPTH.reset(token)


def current_bit_depth() -> int | None:
    """The bit depth declared by the enclosing :func:`declared_bit_depth` block (None: by container)."""
    return _DECLARED_BIT_DEPTH.get()


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


_HEADER_BYTES = 1 << 16


def _tokens(text: bytes, count: int) -> list[bytes] | None:
    """The first ``count`` whitespace-separated tokens of a PNM-style header ('#' comments skipped)."""
    words: list[bytes] = []
    for line in text.split(b"\n"):
        words += line.split(b"#", 1)[0].split()
        if len(words) >= count:
            return words[:count]
    return None


def _tiff_size(path: Path) -> tuple[int, int] | None:
    import struct

    with open(path, "rb") as handle:
        head = handle.read(16)
        if len(head) < 8 or head[:4] not in _TIFF_MAGIC:
            return None
        order = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")
        if big:
            if len(head) < 16:
                return None
            offset = struct.unpack(order + "Q", head[8:16])[0]
            count_fmt, entry_size, count_size = "Q", 20, 8
        else:
            offset = struct.unpack(order + "I", head[4:8])[0]
            count_fmt, entry_size, count_size = "H", 12, 2
        handle.seek(offset)
        raw = handle.read(count_size)
        if len(raw) < count_size:
            return None
        entries = struct.unpack(order + count_fmt, raw)[0]
        table = handle.read(min(entries, 4096) * entry_size)
    found: dict[int, int] = {}
    value_fmt = {3: "H", 4: "I", 16: "Q"}
    for start in range(0, len(table) - entry_size + 1, entry_size):
        tag, kind = struct.unpack(order + "HH", table[start:start + 4])
        if tag in (256, 257) and kind in value_fmt:
            value_at = start + (12 if big else 8)
            size = struct.calcsize(value_fmt[kind])
            found[tag] = struct.unpack(order + value_fmt[kind], table[value_at:value_at + size])[0]
    if 256 in found and 257 in found:
        return int(found[256]), int(found[257])
    return None


def header_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) read from the file's header without decoding pixels, for the formats OpenCV may
    decode here (PNG, TIFF, Radiance HDR, PFM, PNM/PAM, Sun raster); None when it cannot be read."""
    import struct

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
            width, height = struct.unpack(">II", head[16:24])
            return int(width), int(height)
        if head[:4] in _TIFF_MAGIC:
            return _tiff_size(path)
        if head.startswith(b"#?"):  # Radiance HDR: header lines, a blank line, then e.g. "-Y 480 +X 640"
            _, blank, rest = head.partition(b"\n\n")
            match = re.match(rb"\s*([-+])([XY])\s+(\d+)\s+([-+])([XY])\s+(\d+)", rest) if blank else None
            if match is None or match.group(2) == match.group(5):
                return None
            first, second = int(match.group(3)), int(match.group(6))
            return (second, first) if match.group(2) == b"Y" else (first, second)
        if head[:2] in (b"PF", b"Pf") and head[2:3].isspace():
            words = _tokens(head[2:], 2)
            return (int(words[0]), int(words[1])) if words and all(w.isdigit() for w in words) else None
        if head[:2] == b"P7":
            width = re.search(rb"^\s*WIDTH\s+(\d+)", head, re.MULTILINE)
            height = re.search(rb"^\s*HEIGHT\s+(\d+)", head, re.MULTILINE)
            return (int(width.group(1)), int(height.group(1))) if width and height else None
        if head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
            words = _tokens(head[2:], 2)
            return (int(words[0]), int(words[1])) if words and all(w.isdigit() for w in words) else None
        if head[:4] == b"\x59\xa6\x6a\x95" and len(head) >= 12:  # Sun raster
            width, height = struct.unpack(">II", head[4:12])
            return int(width), int(height)
    except (OSError, ValueError, struct.error):
        return None
    return None


# Pillow plugins whose pictures can be larger than their header declares (an icon entry holds a PNG of any
# size, and ICO decodes it while opening): not opened at all under a pixel limit.
UNMEASURED_FORMATS = ("ICO", "CUR", "ICNS")
_ICON_MAGIC = (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00", b"icns")


def _measured_formats() -> list[str]:
    from PIL import Image

    Image.init()
    return [name for name in Image.ID if name not in UNMEASURED_FORMATS]


def _check_size(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(path, width * height, max_pixels, width, height)


def _decode_pillow(path: Path, max_pixels: int | None = None) -> tuple[np.ndarray, int]:
    """Raw array and EXIF orientation, decoded by Pillow (its size checked first against ``max_pixels``)."""
    from PIL import Image

    formats = None if max_pixels is None else _measured_formats()
    with Image.open(path, formats=formats) as image:
        _check_size(path, image.width, image.height, max_pixels)
        frames = int(getattr(image, "n_frames", 1) or 1)
        if frames > 1:
            raise ImageReadError(
                path, f"animated or multi-frame image ({frames} frames); save the frame to inspect as a single-frame PNG"
            )
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


def _stat_problem(path: Path, error: OSError) -> str:
    """Why a path cannot be opened, in words (symlink loops and broken links are not "file not found")."""
    if error.errno == errno.ELOOP:
        return "symbolic link loop (the link points back to itself)"
    if error.errno == errno.ENOENT:
        if path.is_symlink():
            return f"broken symbolic link (its target '{os.readlink(path)}' does not exist)"
        return "file not found"
    if error.errno == errno.EACCES:
        return "permission denied (a folder on the path is not readable)"
    return f"cannot access the file ({_short_error(error, path)})"


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "special file"


def _decode(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """The file's pixels as a raw array (orientation applied), or :class:`ImageReadError`.

    ``max_pixels``: refuse (:class:`ImageTooLargeError`) a larger image before decoding it; a file that
    Pillow cannot open is then decoded by OpenCV only when its header gives a size within the limit."""
    from PIL import Image

    path = Path(path)
    try:
        info = path.stat()
    except OSError as error:
        raise ImageReadError(path, _stat_problem(path, error)) from error
    size = info.st_size
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):  # opening a FIFO would wait for a writer forever
        raise ImageReadError(path, f"is a {_special_kind(info.st_mode)}, not a regular image file")
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ImageReadError(path, "permission denied (the file is not readable)")
    try:
        array, orientation = _decode_pillow(path, max_pixels)
    except ImageReadError:
        raise
    except _UseOpenCV:  # Pillow read the header: the size is already checked
        try:
            array, orientation = _decode_opencv(path)
        except Exception as error:
            raise ImageReadError(path, f"corrupt 16-bit colour image ({_short_error(error, path)})") from error
    except Image.DecompressionBombError as error:
        if max_pixels is not None:
            size = header_size(path)
            if size is not None:
                _check_size(path, *size, max_pixels)
            found = re.search(r"\((\d+) pixels\)", str(error))
            if found and int(found.group(1)) > max_pixels:
                raise ImageTooLargeError(path, int(found.group(1)), max_pixels) from error
        raise ImageReadError(path, f"image is too large ({_short_error(error, path)})") from error
    except Exception as pil_error:
        # OpenCV only for TIFF files (variants Pillow lacks) and formats Pillow does not know at all;
        # a truncated PNG/JPEG must fail rather than come back half grey.
        if not (_is_tiff(path) or isinstance(pil_error, Image.UnidentifiedImageError)):
            raise ImageReadError(path, f"not an image or corrupt (PIL: {_short_error(pil_error, path)})") from pil_error
        if max_pixels is not None:
            # OpenCV allocates whatever the header declares: decode only what we have measured.
            with open(path, "rb") as handle:
                if handle.read(4) in _ICON_MAGIC:
                    raise ImageReadError(
                        path, "icon files (ICO, CUR, ICNS) are not accepted here: their pictures can be larger "
                        "than their header declares"
                    ) from pil_error
            size = header_size(path)
            if size is None:
                raise ImageReadError(
                    path, f"not an image or corrupt (PIL: {_short_error(pil_error, path)})"
                ) from pil_error
            _check_size(path, *size, max_pixels)
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


def to_uint8(array: np.ndarray, bit_depth: int | None = None) -> np.ndarray:
    """Scale any numeric pixel array to uint8 by the fixed rule of the module docstring.

    ``bit_depth`` (None: :func:`current_bit_depth`, then the dtype's own depth) applies to arrays deeper
    than 8 bits. Raises ValueError (one line) for integers wider than 16 bits without a bit depth.
    """
    bit_depth = check_bit_depth(bit_depth) if bit_depth is not None else current_bit_depth()
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        bits = bit_depth
        if bits is None:
            if array.dtype.itemsize > 2:
                raise ValueError(
                    f"{8 * array.dtype.itemsize}-bit integer pixels have no standard scale; declare the bit depth "
                    f"the camera uses (--bit-depth N)"
                )
            bits = 8 * array.dtype.itemsize
        top = (1 << bits) - 1
        values = np.clip(array.astype(np.int64), 0, top)
        return ((values * 255 + top // 2) // top).astype(np.uint8)
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if bit_depth is not None:
        values = values / float((1 << bit_depth) - 1)
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def read_image(
    path: str | os.PathLike[str], min_size: int = 8, bit_depth: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Read an image file as a ``uint8`` ``H×W×3`` RGB array.

    ``bit_depth``: how images deeper than 8 bits are scaled (module docstring); None uses the enclosing
    :func:`declared_bit_depth`, else the file's own depth. Raises :class:`ImageReadError` (one line
    naming the file) when the file is missing, empty, not decodable, animated, or has a side shorter than
    ``min_size`` pixels. ``max_pixels``: refuse larger images before decoding them
    (:class:`ImageTooLargeError`, module docstring).
    """
    array = _decode(path, max_pixels)
    height, width = array.shape[:2]
    if min(height, width) < min_size:
        raise ImageReadError(
            path, f"image is {width}x{height} pixels, smaller than the minimum {min_size}x{min_size}"
        )
    try:
        array = to_uint8(_colour_channels(array), bit_depth)
    except ValueError as error:
        raise ImageReadError(path, str(error)) from error
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
        array = to_uint8(array, 8 if array.dtype == np.uint8 else None) > 127
    else:
        array = array != 0
    if array.ndim == 3:
        array = array.any(axis=2)
    return np.ascontiguousarray(array)


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in ``folder``, sorted; extensions are matched case-insensitively and hidden files
    (and, when recursive, hidden folders) are skipped.

    Broken or looping symbolic links and special files (a FIFO, a socket) with an image extension are
    listed, so that reading them reports the problem instead of the file vanishing without notice. Raises ``FileNotFoundError`` when
    ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: '{folder}'")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = []
    for candidate in candidates:
        if any(part.startswith(".") for part in candidate.relative_to(folder).parts):
            continue
        if candidate.suffix.lower() in IMAGE_EXTENSIONS and (candidate.is_symlink() or not candidate.is_dir()):
            found.append(candidate)
    return sorted(found)

"""Uploaded bytes → uint8 RGB with the library's reader; overlay and mask PNGs.

An upload is written to a private file inside the service's data folder (``DATA/incoming/``, a name made
by `tempfile`, never one from the request), read with `io.read_image` — the same decoder, bit-depth rules
and one-line error messages as `glass predict` — and deleted again. Nothing uploaded is ever executed.
The reader gets the service's pixel limit: an image is measured from its header and refused before any
pixel is decoded, whichever decoder (Pillow or OpenCV) would read it; a file whose size cannot be read
from its header is never handed to OpenCV. Scratch files left by a killed process are removed at start
(`clean_scratch`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glass_ad.data.io import ImageReadError, ImageTooLargeError, read_image
from glass_ad.inference.runtime import MIN_SIDE

__all__ = ["BadImage", "ImageTooLarge", "Upload", "clean_scratch", "decode_upload", "png_bytes"]

SCRATCH_PREFIX, SCRATCH_SUFFIX = "upload-", ".bin"


class BadImage(ValueError):
    """The upload is not a readable image; the message is the reader's one-line reason."""


class ImageTooLarge(ValueError):
    """The image has more pixels than the service accepts."""


@dataclass
class Upload:
    data: bytes
    filename: str | None = None
    part: str | None = None  # the multipart field it came in

    @property
    def label(self) -> str:
        # For messages only: the client's name, stripped of any folders and control characters.
        name = Path((self.filename or "").replace("\\", "/")).name
        name = "".join(ch for ch in name if ch.isprintable())[:255]
        return name or "upload"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def clean_scratch(scratch: Path) -> int:
    """Delete upload scratch files left behind (a killed process cannot delete its own); returns how many.

    Called at start-up, before any request: every ``upload-*.bin`` there is then stale."""
    removed = 0
    if not scratch.is_dir():
        return 0
    for path in scratch.glob(f"{SCRATCH_PREFIX}*{SCRATCH_SUFFIX}"):
        try:
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def decode_upload(upload: Upload, scratch: Path, *, max_pixels: int, bit_depth: int | None = None) -> np.ndarray:
    """uint8 H×W×3 RGB, or `BadImage` / `ImageTooLarge` with a one-line reason naming the upload.

    ``bit_depth``: the model's rule for images deeper than 8 bits (`Detector.bit_depth`), so that an
    upload gives the pixels `glass predict` would read from the same file."""
    if not upload.data:
        raise BadImage(f"cannot read image '{upload.label}': file is empty (0 bytes)")
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=scratch, prefix=SCRATCH_PREFIX, suffix=SCRATCH_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(upload.data)
        if bit_depth is None:
            return read_image(name, min_size=MIN_SIDE, max_pixels=max_pixels)
        return read_image(name, min_size=MIN_SIDE, bit_depth=bit_depth, max_pixels=max_pixels)
    except ImageTooLargeError as error:
        size = f"{error.width}x{error.height} pixels" if error.width is not None else f"{error.pixels} pixels"
        raise ImageTooLarge(f"'{upload.label}' is {size}, more than the limit of {error.limit} pixels") from None
    except ImageReadError as error:
        raise BadImage(f"cannot read image '{upload.label}': {error.reason}") from None
    finally:
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 RGB (H×W×3) or grey (H×W) → PNG bytes."""
    import cv2

    array = np.ascontiguousarray(array)
    if array.ndim == 3:
        array = array[:, :, ::-1]  # OpenCV writes BGR
    ok, encoded = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - encoding a valid uint8 array does not fail
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()

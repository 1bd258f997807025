"""The service's pixel limit holds for every format the reader accepts, before any pixel is decoded.

`glass serve` reads uploads with `io.read_image(..., max_pixels=N)`. Pillow decodes most formats, OpenCV the
rest (TIFF variants Pillow lacks, 16-bit colour, and formats Pillow does not know: Radiance HDR, PFM, …).
Every one of them must be measured from its header and refused when too large, without decoding: a 3 MB
Radiance HDR file declaring 7000×7000 pixels once made the service decode 4 GB.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from glass_ad.data.io import UNMEASURED_FORMATS, ImageReadError, ImageTooLargeError, header_size, read_image

HEIGHT, WIDTH = 16, 24


def _pillow_formats() -> list[str]:
    Image.init()
    return sorted(set(Image.SAVE) & set(Image.OPEN))


def _pillow_file(fmt: str, folder: Path) -> Path | None:
    """A small image saved by Pillow in ``fmt`` (None when this Pillow cannot write it)."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    for mode in ("RGB", "P", "L", "1", "F"):
        buffer = io.BytesIO()
        try:
            rgb.convert(mode).save(buffer, format=fmt)
        except Exception:  # noqa: BLE001 - this mode or the whole format cannot be written here
            continue
        path = folder / f"image.{fmt.lower()}"
        path.write_bytes(buffer.getvalue())
        return path
    return None


def _opencv_files(folder: Path) -> dict[str, Path]:
    """Files the reader hands to OpenCV: formats Pillow does not know, and depths Pillow would truncate."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    colour16 = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    floats = rng.random((HEIGHT, WIDTH, 3), dtype=np.float32)
    written = {}
    for name, array in (
        ("radiance.hdr", floats),
        ("float.pfm", floats),
        ("sun.ras", (floats * 255).astype(np.uint8)),
        ("image.pam", (floats * 255).astype(np.uint8)),
        ("deep.pgm", colour16[:, :, 0]),
        ("deep.png", colour16),
        ("deep.tif", colour16),
        ("float.tif", floats),
    ):
        path = folder / name
        assert cv2.imwrite(str(path), array), name
        written[name] = path
    return written


def _all_files(folder: Path) -> dict[str, Path]:
    files = {}
    for fmt in _pillow_formats():
        path = _pillow_file(fmt, folder)
        if path is not None:
            files[f"pillow:{fmt}"] = path
    files.update({f"opencv:{name}": path for name, path in _opencv_files(folder).items()})
    return files


@pytest.fixture
def no_decoding(monkeypatch):
    """Within the block, decoding pixels (Pillow's load, OpenCV's imdecode) fails the test."""
    import cv2

    def forbidden(*_args, **_kwargs):
        raise AssertionError("pixels were decoded")

    def guard():
        monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)
        monkeypatch.setattr(cv2, "imdecode", forbidden)

    return guard


def test_every_format_is_measured_and_refused_before_decoding(tmp_path, no_decoding):
    files = _all_files(tmp_path)
    # The reader's own formats are all here (EPS needs Ghostscript, the rest are Pillow's writers).
    assert {"pillow:PNG", "pillow:JPEG", "pillow:BMP", "pillow:TIFF", "pillow:WEBP", "pillow:GIF", "pillow:PPM"} <= set(files)
    readable = {}
    for name, path in files.items():
        try:
            readable[name] = (path, read_image(path, min_size=1).shape[:2])
        except ImageReadError:
            continue  # not readable here at all (e.g. EPS without Ghostscript): nothing to limit
    assert len(readable) >= 20 and all(name in readable for name in ("opencv:radiance.hdr", "opencv:float.tif", "opencv:deep.png"))
    for name, (path, (height, width)) in readable.items():
        if name.split(":")[1] in UNMEASURED_FORMATS:
            continue
        assert read_image(path, min_size=1, max_pixels=height * width).shape[:2] == (height, width), name
    no_decoding()
    for name, (path, (height, width)) in readable.items():
        if name.split(":")[1] in UNMEASURED_FORMATS:
            # Icons can hold pictures larger than they declare (ICO decodes while opening): never opened.
            with pytest.raises(ImageReadError, match="icon files"):
                read_image(path, min_size=1, max_pixels=10**9)
            continue
        with pytest.raises(ImageTooLargeError, match="more than the limit") as refused:
            read_image(path, min_size=1, max_pixels=height * width - 1)
        assert refused.value.pixels == height * width, name


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def _tiff_header(width: int, height: int, order: str = "<") -> bytes:
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 32), (277, 3, 1, 3), (339, 3, 1, 3)]
    def entry(tag: int, kind: int, count: int, value: int) -> bytes:  # a SHORT sits in the first 2 value bytes
        packed = struct.pack(order + "HH", value, 0) if kind == 3 else struct.pack(order + "I", value)
        return struct.pack(order + "HHI", tag, kind, count) + packed

    ifd = struct.pack(order + "H", len(entries)) + b"".join(entry(*e) for e in entries)
    return magic + struct.pack(order + "I", 8) + ifd + struct.pack(order + "I", 0) + b"\0" * 64


# Small files that declare huge images: only the header is real.
HUGE_HEADERS = {
    "radiance.hdr": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 7000 +X 7000\n" + b"\x02\x02\x1b\x58" * 64,
    "float.pfm": b"PF\n7000 7000\n-1.0\n" + b"\0" * 256,
    "sun.ras": struct.pack(">8I", 0x59A66A95, 7000, 7000, 24, 7000 * 7000 * 3, 1, 0, 0) + b"\0" * 256,
    "image.pam": b"P7\nWIDTH 7000\nHEIGHT 7000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + b"\0" * 256,
    "image.ppm": b"P6\n# comment\n7000 7000\n255\n" + b"\0" * 256,
    "float.tif": _tiff_header(7000, 7000),
    "float-be.tif": _tiff_header(7000, 7000, ">"),
    "bomb.png": _png_header(30000, 30000),  # past Pillow's own decompression-bomb limit
    "big.png": _png_header(7000, 7000),
}


@pytest.mark.parametrize("name", sorted(HUGE_HEADERS))
def test_huge_headers_are_refused_without_decoding(name, tmp_path, no_decoding):
    path = tmp_path / name
    path.write_bytes(HUGE_HEADERS[name])
    side = 30000 if name == "bomb.png" else 7000
    if name not in ("bomb.png",):
        assert header_size(path) in ((side, side), None)
    no_decoding()
    with pytest.raises(ImageTooLargeError) as refused:
        read_image(path, max_pixels=40_000_000)
    assert refused.value.pixels == side * side
    assert f"{side}x{side} pixels, more than the limit of 40000000 pixels" in str(refused.value)


def test_header_sizes_of_the_opencv_formats(tmp_path):
    for name, path in _opencv_files(tmp_path).items():
        assert header_size(path) == (WIDTH, HEIGHT), name
    assert header_size(tmp_path / "missing.png") is None
    (tmp_path / "text.hdr").write_bytes(b"#?RADIANCE\nno resolution line")
    assert header_size(tmp_path / "text.hdr") is None


def test_unmeasurable_files_never_reach_opencv_under_a_limit(tmp_path, no_decoding):
    # Pillow does not know it and no header gives its size: refused as unreadable, OpenCV never called.
    path = tmp_path / "mystery.bin"
    path.write_bytes(b"\x00\x01mystery format" * 10)
    no_decoding()
    with pytest.raises(ImageReadError, match="not an image or corrupt") as refused:
        read_image(path, max_pixels=40_000_000)
    assert not isinstance(refused.value, ImageTooLargeError)

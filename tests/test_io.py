"""Tests for glass_ad.data.io: formats, bit depths, channel layouts and error messages."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from glass_ad.data.io import ImageReadError, list_images, read_image, read_mask


def _gradient(h: int = 20, w: int = 30) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 255 // (h * w - 1)).astype(np.uint8)


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_to_three_channels(tmp_path: Path) -> None:
    grey = _gradient()
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_rgba_alpha_dropped_and_palette(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (16, 16, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()

    palette = Image.fromarray(np.full((16, 16, 3), (10, 200, 30), np.uint8)).convert("P", palette=Image.ADAPTIVE)
    palette.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[0, 0], (10, 200, 30), atol=2)

    grey_alpha = Image.fromarray(np.stack([_gradient(), np.full((20, 30), 99, np.uint8)], -1), "LA")
    grey_alpha.save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[:, :, 1], _gradient())


def test_16bit_png_full_range(tmp_path: Path) -> None:
    values = np.linspace(0, 65535, 20 * 30).reshape(20, 30).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "s.png"), values)
    out = read_image(tmp_path / "s.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    np.testing.assert_allclose(out[:, :, 0].astype(float), values / 257.0, atol=1)


def test_12bit_values_in_16bit_tiff(tmp_path: Path) -> None:
    values = np.linspace(0, 4095, 20 * 30).reshape(20, 30).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "t.tif")
    # Default: the container's depth (16 bits), whatever the values.
    np.testing.assert_allclose(read_image(tmp_path / "t.tif")[:, :, 0].astype(float), values / 257.0, atol=0.51)
    # Declared 12-bit data: / 4095.
    out = read_image(tmp_path / "t.tif", bit_depth=12)
    assert out[-1, -1, 0] == 255 and out[0, 0, 0] == 0
    np.testing.assert_allclose(out[:, :, 0].astype(float), values.astype(float) * 255 / 4095, atol=0.51)


def test_16bit_colour_tiff_falls_back(tmp_path: Path) -> None:
    bgr = np.zeros((12, 14, 3), np.uint16)
    bgr[..., 2] = 65535  # red in OpenCV's BGR order
    bgr[..., 0] = 257 * 50
    assert cv2.imwrite(str(tmp_path / "c.tiff"), bgr)
    out = read_image(tmp_path / "c.tiff")
    assert out.shape == (12, 14, 3)
    assert (out[..., 0] == 255).all() and (out[..., 2] == 50).all() and (out[..., 1] == 0).all()


def test_8bit_tiff_float_tiff_jpeg_bmp(tmp_path: Path) -> None:
    rgb = np.zeros((24, 24, 3), np.uint8)
    rgb[..., 1] = 180
    Image.fromarray(rgb).save(tmp_path / "a.tif")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.bmp"), rgb)
    np.testing.assert_allclose(read_image(tmp_path / "a.jpg").astype(int), rgb.astype(int), atol=4)

    floats = np.linspace(0.0, 1.0, 24 * 24, dtype=np.float32).reshape(24, 24)
    Image.fromarray(floats, "F").save(tmp_path / "f.tif")
    out = read_image(tmp_path / "f.tif")
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_upper_case_extension_and_list_images(tmp_path: Path) -> None:
    Image.fromarray(_gradient()).save(tmp_path / "B.PNG")
    Image.fromarray(_gradient()).save(tmp_path / "a.jpg")
    Image.fromarray(_gradient()).save(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    Image.fromarray(_gradient()).save(tmp_path / "sub" / "c.bmp")
    assert [p.name for p in list_images(tmp_path)] == ["B.PNG", "a.jpg"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["B.PNG", "a.jpg", "c.bmp"]
    assert read_image(tmp_path / "B.PNG").shape == (20, 30, 3)


def test_list_images_empty_and_missing(tmp_path: Path) -> None:
    assert list_images(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "nope")


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert "empty.png" in message and "empty (0 bytes)" in message and "\n" not in message


def test_garbage_bytes(tmp_path: Path) -> None:
    path = tmp_path / "garbage.png"
    path.write_bytes(b"this is not an image\n" * 20)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert "garbage.png" in message and "not an image or corrupt" in message and "\n" not in message
    assert isinstance(info.value, ValueError)


def test_too_small_image(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    with pytest.raises(ImageReadError, match=r"tiny\.png.*1x1 pixels, smaller than (the minimum )?8x8"):
        read_image(path)
    assert read_image(path, min_size=1).shape == (1, 1, 3)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_read_mask(tmp_path: Path) -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:4, 3:6] = 1  # any non-zero counts, not only 255
    mask[8, 9] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.bool_ and out.shape == (10, 12)
    np.testing.assert_array_equal(out, mask > 0)

    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[5, 5, 2] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").sum() == 1


def test_16bit_colour_png_uses_real_bit_depth(tmp_path: Path) -> None:
    # 12-bit camera data in a 16-bit RGB PNG: Pillow alone would truncate it to 8 bits (max 15).
    bgr = np.zeros((10, 12, 3), np.uint16)
    bgr[..., 2] = 4095
    bgr[..., 1] = 2048
    assert cv2.imwrite(str(tmp_path / "c.png"), bgr)
    out = read_image(tmp_path / "c.png", bit_depth=12)
    assert (out[..., 0] == 255).all() and (out[..., 1] == 128).all() and (out[..., 2] == 0).all()
    out = read_image(tmp_path / "c.png")  # default: 16-bit container → / 65535
    assert (out[..., 0] == 16).all() and (out[..., 1] == 8).all() and (out[..., 2] == 0).all()


def test_8bit_values_stored_in_16bit(tmp_path: Path) -> None:
    values = np.arange(0, 240, dtype=np.uint16).reshape(12, 20)
    Image.fromarray(values).save(tmp_path / "v.png")
    np.testing.assert_array_equal(read_image(tmp_path / "v.png", bit_depth=8)[:, :, 0], values.astype(np.uint8))


def test_float_colour_tiff_via_opencv(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.float32)
    rgb[..., 0] = 1.0
    rgb[..., 2] = 0.5
    assert cv2.imwrite(str(tmp_path / "f.tif"), rgb[:, :, ::-1].copy())
    out = read_image(tmp_path / "f.tif")
    assert (out[..., 0] == 255).all() and (out[..., 1] == 0).all() and (np.abs(out[..., 2].astype(int) - 128) <= 1).all()
    # out of [0, 1]: clipped (a fixed rule, never the image's own range)
    assert cv2.imwrite(str(tmp_path / "g.tif"), np.linspace(-5, 5, 256, dtype=np.float32).reshape(16, 16))
    out = read_image(tmp_path / "g.tif")
    assert out.min() == 0 and out.max() == 255
    assert (out[:8, :, 0] == 0).all() and (out[-6:, :, 0] == 255).all()


def test_bilevel_and_cmyk(tmp_path: Path) -> None:
    Image.fromarray(np.eye(16, dtype=bool)).save(tmp_path / "b.png")
    out = read_image(tmp_path / "b.png")
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 0]
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red = read_image(tmp_path / "c.jpg")[0, 0].astype(int)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path: Path, orientation: int) -> None:
    from PIL import ImageOps

    rgb = np.random.default_rng(orientation).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(rgb).save(path, exif=exif)
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    out = read_image(path)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


def test_directory_and_truncated_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "cut.png")
    assert "cut.png" in str(info.value) and "corrupt" in str(info.value) and "\n" not in str(info.value)


def test_read_mask_16bit_and_jpeg(tmp_path: Path) -> None:
    mask = np.zeros((16, 16), np.uint16)
    mask[3:6, 3:6] = 1  # a value that scaling to 8 bits would lose
    Image.fromarray(mask).save(tmp_path / "m16.png")
    assert read_mask(tmp_path / "m16.png").sum() == 9
    binary = np.zeros((32, 32), np.uint8)
    binary[8:20, 8:20] = 255
    Image.fromarray(binary).save(tmp_path / "m.jpg", quality=75)
    out = read_mask(tmp_path / "m.jpg")  # compression noise around the square is not defect
    assert (out == (binary > 0)).mean() > 0.99


def test_one_hot_pixel_does_not_change_the_scale(tmp_path: Path) -> None:
    frame = np.linspace(0, 4000, 32 * 32).reshape(32, 32).astype(np.uint16)  # 12-bit camera data
    hot = frame.copy()
    hot[0, 0] = 4096  # one pixel over 12 bits: the old per-image rule decoded the whole frame 4× darker
    cv2.imwrite(str(tmp_path / "a.png"), frame)
    cv2.imwrite(str(tmp_path / "b.png"), hot)
    for depth in (None, 12):
        a, b = read_image(tmp_path / "a.png", bit_depth=depth), read_image(tmp_path / "b.png", bit_depth=depth)
        np.testing.assert_array_equal(a[1:], b[1:])
    assert read_image(tmp_path / "b.png", bit_depth=12)[0, 0, 0] == 255  # saturates, alone


def test_declared_bit_depth_block_and_validation(tmp_path: Path) -> None:
    from glass_ad.data.io import current_bit_depth, declared_bit_depth

    cv2.imwrite(str(tmp_path / "a.png"), np.full((16, 16), 4095, np.uint16))
    assert read_image(tmp_path / "a.png")[0, 0, 0] == 16
    with declared_bit_depth(12):
        assert current_bit_depth() == 12
        assert read_image(tmp_path / "a.png")[0, 0, 0] == 255
    assert current_bit_depth() is None
    for bad in (0, 33, 2.5, "12"):
        with pytest.raises(ValueError, match="bit depth must be a whole number of bits from 1 to 32"):
            read_image(tmp_path / "a.png", bit_depth=bad)


def test_32bit_integers_need_a_declared_bit_depth(tmp_path: Path) -> None:
    Image.fromarray(np.full((16, 16), 70000, np.int32), "I").save(tmp_path / "i.tif")
    with pytest.raises(ImageReadError, match=r"i\.tif.*32-bit integer pixels.*--bit-depth"):
        read_image(tmp_path / "i.tif")
    assert read_image(tmp_path / "i.tif", bit_depth=17)[0, 0, 0] == round(70000 * 255 / 131071)


def test_animated_gif_is_refused_and_listed(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[1].save(tmp_path / "still.gif")
    assert [p.name for p in list_images(tmp_path)] == ["anim.gif", "still.gif"]
    with pytest.raises(ImageReadError, match=r"anim\.gif.*animated or multi-frame image \(3 frames\)"):
        read_image(tmp_path / "anim.gif")
    assert read_image(tmp_path / "still.gif")[0, 0].tolist() == [60, 60, 60]


def test_symlink_loop_and_broken_link(tmp_path: Path) -> None:
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    broken = tmp_path / "broken.png"
    broken.symlink_to(tmp_path / "gone.png")
    assert [p.name for p in list_images(tmp_path)] == ["broken.png", "loop.png"]  # reported, not vanished
    with pytest.raises(ImageReadError, match=r"loop\.png.*symbolic link loop"):
        read_image(loop)
    with pytest.raises(ImageReadError, match=r"broken\.png.*broken symbolic link.*gone\.png"):
        read_image(broken)


# ------------------------------------------------------------- file rules shared by the whole package


def test_atomic_path_replaces_only_on_success(tmp_path: Path) -> None:
    from glass_ad.safety import atomic_path, write_atomic

    target = tmp_path / "out" / "result.bin"
    write_atomic(target, "old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not replaced before the block ends
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"torn")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["result.bin"]


def test_mask_lookup_rule(tmp_path: Path) -> None:
    from glass_ad.data.layouts import MaskIndex, find_mask, mask_folders

    folders = mask_folders(tmp_path / "test", "scratch")
    assert folders == [
        tmp_path / "test" / "scratch" / "masks",
        tmp_path / "test" / "ground_truth" / "scratch",
        tmp_path / "ground_truth" / "scratch",
    ]
    pixels = np.zeros((8, 8), np.uint8)
    for folder, name in ((folders[1], "a_mask.png"), (folders[1], "b.png"), (folders[2], "b_mask.bmp"), (folders[2], "c.jpg")):
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name)
    assert find_mask(folders, "a") == folders[1] / "a_mask.png"
    assert find_mask(folders, "b") == folders[2] / "b_mask.bmp"  # <stem>_mask wins over <stem>
    assert find_mask(folders, "c") == folders[2] / "c.jpg"
    assert find_mask(folders, "d") is None and MaskIndex(folders).folders == folders[1:]


def test_fit_rule(tmp_path: Path) -> None:
    from glass_ad.config import GlassConfig
    from glass_ad.data.layouts import Sample
    from glass_ad.data.preprocessing import Preprocessor, resolve_fit

    assert resolve_fit("stretch") == "stretch" and resolve_fit("crop") == "crop"
    assert resolve_fit("auto") == "crop"  # a model's config: the reference
    wide = []
    for i in range(5):
        Image.fromarray(np.zeros((10, 30 if i < 1 else 10), np.uint8)).save(tmp_path / f"{i}.png")
        wide.append(Sample(tmp_path / f"{i}.png", 0, "good", None))
    assert resolve_fit("auto", wide) == "stretch"  # 1 of 5 elongated: >= 10 %
    assert resolve_fit("auto", wide[1:]) == "crop"
    assert resolve_fit("crop", wide) == "crop"
    preprocessor = Preprocessor.from_config(GlassConfig(image_size=64, resize=72))
    assert (preprocessor.image_size, preprocessor.resize, preprocessor.fit) == (64, 72, "crop")

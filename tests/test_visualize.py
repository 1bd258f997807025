from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glass_ad.evaluation import visualize as vz


def _red_count(tile):
    return int(np.sum(np.all(tile == [255, 0, 0], axis=-1)))


def _green_count(tile):
    return int(np.sum(np.all(tile == [0, 255, 0], axis=-1)))


def _inputs():
    img = np.full((64, 64, 3), 128, np.uint8)
    amap = np.zeros((16, 16), np.float32)
    amap[4:10, 4:10] = 1.0
    return img, amap


def test_colourize():
    out = vz.colourize(np.linspace(0, 1, 100).reshape(10, 10))
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert out[0, 0, 2] > out[0, 0, 0]  # low values blue
    assert out[-1, -1, 0] > out[-1, -1, 2]  # high values red


def test_overlay_panel_contours():
    img, amap = _inputs()
    panel = vz.overlay_panel(img, amap, vmin=0.0, vmax=1.0, threshold=0.5)
    assert panel.shape == (64, 192, 3) and panel.dtype == np.uint8
    assert np.array_equal(panel[:, :64], img)  # the original, untouched
    # The heatmap (middle) is hot (red, not blue) where the map is 1 (map cells 4:10 = pixels 16:40), cold elsewhere.
    heat = panel[:, 64:128].astype(int)
    hot, cold = heat[20:36, 20:36].reshape(-1, 3), heat[48:, 48:].reshape(-1, 3)
    assert (hot[:, 0] > hot[:, 2] + 40).all() and (cold[:, 2] > cold[:, 0] + 40).all()
    assert _red_count(panel[:, 128:]) > 0
    assert _red_count(panel[:, :64]) == 0
    none = vz.overlay_panel(img, amap, vmin=0.0, vmax=1.0, threshold=2.0)
    assert _red_count(none[:, 128:]) == 0
    gt = np.zeros((64, 64), bool)
    gt[40:60, 40:60] = True
    titled = vz.overlay_panel(img, amap, vmin=0.0, vmax=1.0, threshold=2.0, title="case 1", gt_mask=gt)
    assert titled.shape[1] == 192 and titled.shape[0] > 64
    assert _green_count(titled[-64:, 128:]) > 0


def test_save_png_and_case_grid(tmp_path):
    img, amap = _inputs()
    p = vz.save_png(tmp_path / "a" / "b.png", img)
    assert np.array_equal(np.asarray(Image.open(p)), img)


    panels = [np.zeros((10, 20, 3), np.uint8), np.zeros((12, 15, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)]
    g = tmp_path / "grid.png"
    grid = vz.case_grid(panels, g, columns=2)
    assert grid.shape == (24, 40, 3)
    assert Image.open(g).size == (40, 24)


def test_score_histogram_draws_each_score_and_the_threshold_where_it_lies(tmp_path, read_histogram):
    h = vz.score_histogram([0.1, 0.2, 0.3], [0.7, 0.9], 0.5, tmp_path / "h" / "hist.png", title="t")
    with Image.open(h) as picture:
        assert picture.format == "PNG" and picture.size == (600, 400)
    parts = read_histogram(h)
    # One bar per distinct score (bins are 0.8 / 30 wide), normal ones left of anomalous ones.
    assert len(parts["normal"]) == 3 and len(parts["anomalous"]) == 2
    left, right = parts["normal"][0][0], parts["anomalous"][-1][1]  # x of score 0.1 and of score 0.9
    assert parts["normal"][-1][1] < parts["anomalous"][0][0]
    # Dark vertical lines: the two axes spines and, between the bars, the dashed threshold at x(0.5).
    assert len(parts["dark"]) == 3
    line = sum(parts["dark"][1]) / 2
    assert parts["normal"][-1][1] < line < parts["anomalous"][0][0]
    assert line == pytest.approx(left + (0.5 - 0.1) / 0.8 * (right + 1 - left), abs=2)
    moved = read_histogram(vz.score_histogram([0.1, 0.2, 0.3], [0.7, 0.9], 0.8, tmp_path / "moved.png"))
    assert sum(moved["dark"][1]) / 2 == pytest.approx(left + (0.8 - 0.1) / 0.8 * (right + 1 - left), abs=2)

    # No threshold and no anomalous scores: two normal bars, no red, no line between the spines.
    bare = read_histogram(vz.score_histogram([0.1, 0.2], [], None, tmp_path / "hist2.png"))
    assert len(bare["normal"]) == 2 and bare["anomalous"] == [] and len(bare["dark"]) == 2


def test_case_grid_titles_and_unicode_title(tmp_path):
    img, amap = _inputs()
    panel = vz.overlay_panel(img, amap, vmin=0.0, vmax=1.0, threshold=0.5, title="score 0.83 \u2192 anomalous")
    assert panel.shape == (64 + 28, 192, 3)
    assert (panel[:28] < 128).any()  # some text was drawn in the bar
    grid = vz.case_grid([img, img], tmp_path / "g.png", columns=1, titles=["a", None])
    assert grid.shape == (2 * (64 + 28), 64, 3)


# ------------------------------------------------------------------------ readable pictures (issue 13)

# What a person checks in an overlay, tested as behaviour (issue 28): the tiles and their sizes, the original untouched,
# the outline along the region where the map reaches the threshold and nowhere else, nothing drawn on the area the
# model did not inspect, the colour bar's labels and threshold mark. None of it depends on the rasteriser's pixels.

FRAME_H, FRAME_W, INSPECTED = 80, 120, (0, 20, 80, 100)  # the centre 80×80 of a 80×120 frame was inspected
THRESHOLD, VMIN, VMAX = 0.4, -0.2, 1.0
TITLE = "part_007.png: anomalous, score 0.912"


def _gradient_frame() -> np.ndarray:
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W]
    return np.stack([(xx * 2) % 256, (yy * 3) % 256, np.full_like(xx, 128)], axis=-1).astype(np.uint8)


def _blob(cy: float, cx: float, peak: float = 1.0, sigma: float = 8.0) -> np.ndarray:
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W]
    return (peak * np.exp(-(((xx - cx) / sigma) ** 2 + ((yy - cy) / sigma) ** 2))).astype(np.float32)


def _snapshot_panel(amap: np.ndarray | None = None) -> np.ndarray:
    """A fixed input: a colour gradient frame 80×120 with one bright blob, the centre 80×80 inspected."""
    amap = _blob(40, 60) if amap is None else amap
    return vz.overlay_panel(_gradient_frame(), amap, vmin=VMIN, vmax=VMAX, threshold=THRESHOLD, title=TITLE,
                            inspected=INSPECTED, colorbar=True)  # fmt: skip


def _tiles(panel: np.ndarray) -> dict[str, np.ndarray]:
    top = panel.shape[0] - FRAME_H
    body = panel[top:]
    return {"title": panel[:top], "original": body[:, :FRAME_W], "heat": body[:, FRAME_W : 2 * FRAME_W],
            "outline": body[:, 2 * FRAME_W : 3 * FRAME_W], "colorbar": body[:, 3 * FRAME_W :]}  # fmt: skip


def _record_text(monkeypatch) -> list[tuple[str, tuple[int, int]]]:
    """Every text the pictures write, with its origin (and still drawn)."""
    written, put_text = [], vz._put_text

    def recording(canvas, text, origin, *args, **kwargs):
        written.append((text, tuple(origin)))
        put_text(canvas, text, origin, *args, **kwargs)

    monkeypatch.setattr(vz, "_put_text", recording)
    return written


def _dark_rows(tile: np.ndarray, level: int = 100) -> np.ndarray:
    return np.nonzero((tile.max(axis=2) < level).any(axis=1))[0]


def test_overlay_layout_title_and_original_untouched(monkeypatch):
    written = _record_text(monkeypatch)
    panel = _snapshot_panel()
    strip = vz.colorbar(FRAME_H, VMIN, VMAX, THRESHOLD)
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    assert panel.shape[1] == 3 * FRAME_W + strip.shape[1]  # original | heatmap | outline | colour bar
    tiles = _tiles(panel)
    assert 20 <= tiles["title"].shape[0] <= 60  # a title bar, not a second picture
    assert np.array_equal(tiles["original"], _gradient_frame())
    assert np.array_equal(tiles["colorbar"], strip)
    # The title is written once, whole, in dark ink on the white bar, starting at its left.
    assert [text for text, _ in written].count(TITLE) == 1
    bar = tiles["title"]
    ink = bar.max(axis=2) < 100
    assert ink.any() and (np.ptp(bar, axis=2) == 0).all() and (bar == 255).all(axis=2).mean() > 0.8  # black on white
    columns = np.nonzero(ink.any(axis=0))[0]
    assert columns.min() < 20 and FRAME_W < columns.max() < panel.shape[1] - 10


def test_outline_follows_the_region_above_the_threshold_inside_the_inspected_area():
    from scipy import ndimage

    # A: high, inside; B: below the threshold, inside; C: high, across the left edge of the inspected area.
    amap = np.maximum.reduce([_blob(40, 60), _blob(20, 85, peak=0.3), _blob(62, 16)])
    tile = _tiles(_snapshot_panel(amap))["outline"].astype(int)
    changed = np.any(tile != _gradient_frame(), axis=2)
    seen = np.zeros((FRAME_H, FRAME_W), bool)
    seen[:, INSPECTED[1] : INSPECTED[3]] = True
    region = (amap >= THRESHOLD) & seen
    edge = region & ~ndimage.binary_erosion(region, border_value=0)
    from_edge = ndimage.distance_transform_edt(~edge)

    assert changed.sum() > 40
    red = tile[changed]
    assert (red[:, 0] > 200).all() and (red[:, 1:] < 80).all()  # drawn in red
    assert (from_edge[changed] <= 2.5).all()  # along the region's edge, nowhere else (B, the background)
    assert ndimage.binary_dilation(changed, np.ones((3, 3), bool))[edge].all()  # the whole edge outlined
    assert not changed[region & (from_edge > 2.5)].any()  # an outline, not a filled region
    assert not changed[~seen].any()  # nothing drawn on what the model did not inspect
    assert changed[50:75, 20:30].any() and changed[25:55, 45:75].any()  # C's inspected part and A are outlined
    assert not changed[8:32, 73:97].any()  # B stays below the threshold
    assert not np.any(_tiles(_snapshot_panel(amap * 0.3))["outline"] != _gradient_frame())  # nothing high: no outline


def test_not_inspected_area_is_hatched_grey_whatever_the_map_says():
    panel = _snapshot_panel(np.maximum(_blob(40, 60), _blob(40, 8)))  # a second blob where nothing was inspected
    heat = _tiles(panel)["heat"].astype(int)
    outside = np.concatenate([heat[:, : INSPECTED[1]], heat[:, INSPECTED[3] :]], axis=1)
    spread = outside.max(axis=2) - outside.min(axis=2)
    assert (spread < 8).all()  # grey: no heat colour at all, however high the map is there
    rows = outside[..., 0]
    assert all(len(np.unique(row)) >= 2 for row in rows)  # hatched: light and dark lines in every row
    dark = rows < rows.mean()
    assert 0.1 < dark.mean() < 0.5  # lines, not a dark fill
    inside = heat[:, INSPECTED[1] : INSPECTED[3]]
    assert inside[40, 40, 0] > inside[40, 40, 2] + 40  # hot where the map is high
    assert (inside[70:, :10, 2] > inside[70:, :10, 0] + 40).all()  # cold (blue) where it is low


def test_colour_bar_labels_and_threshold_mark(monkeypatch):
    written = _record_text(monkeypatch)
    strip = vz.colorbar(FRAME_H, VMIN, VMAX, THRESHOLD)
    labels = {text: origin for text, origin in written}
    assert set(labels) == {"1", "-0.2", "thr"}  # vmax on top, vmin at the bottom, the threshold between
    threshold_row = (1 - (THRESHOLD - VMIN) / (VMAX - VMIN)) * (FRAME_H - 1)
    assert labels["1"][1] < 0.25 * FRAME_H and labels["-0.2"][1] > 0.75 * FRAME_H
    assert abs(labels["thr"][1] - threshold_row) < 10

    # Rendered: the ramp runs red (top) to blue (bottom), crossed by one black line at the threshold's row;
    # the labels' ink lies right of the ramp, near the rows they name, within the strip.
    ramp_columns = np.nonzero((np.ptp(strip.astype(int), axis=2) > 100).mean(axis=0) > 0.8)[0]  # coloured top to bottom
    assert 6 <= len(ramp_columns) == ramp_columns.max() - ramp_columns.min() + 1 < strip.shape[1] / 2
    ramp = strip[:, ramp_columns.min() : ramp_columns.max() + 1].astype(int)
    assert ramp[2, :, 0].min() > ramp[2, :, 2].max() and ramp[-3, :, 2].min() > ramp[-3, :, 0].max()
    black = np.nonzero((ramp.max(axis=2) < 40).all(axis=1))[0]
    assert len(black) > 0 and np.abs(black - threshold_row).max() <= 2
    text = strip[:, ramp_columns.max() + 2 :]
    ink_rows = _dark_rows(text)
    assert len(ink_rows) > 0 and ink_rows.min() < 0.25 * FRAME_H and ink_rows.max() > 0.75 * FRAME_H
    assert any(abs(r - threshold_row) < 4 for r in ink_rows)
    between = [r for r in range(FRAME_H) if 0.25 * FRAME_H < r < 0.75 * FRAME_H and abs(r - threshold_row) > 10]
    assert not set(between) & set(ink_rows)  # no ink but the three labels
    (width, _), _ = vz.cv2.getTextSize("-0.2", vz.cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)
    bottom = text[int(0.75 * FRAME_H) :]
    ink_columns = np.nonzero((bottom.min(axis=2) < 250).any(axis=0))[0]
    assert abs((ink_columns.max() - ink_columns.min() + 1) - width) <= 3  # the whole "-0.2", not cut at the edge

    written.clear()
    vz.colorbar(FRAME_H, VMIN, VMAX, None)
    assert {t for t, _ in written} == {"1", "-0.2"}  # no threshold, no mark


# One exact picture, compared only where the locked OpenCV draws it (fonts and line rasterisation change between
# OpenCV releases; the tests above hold on any). Regenerate it with the lock: delete the file and run this test.
SNAPSHOT = Path(__file__).parent / "snapshots" / "overlay_panel.png"
LOCK = Path(__file__).parents[1] / "requirements" / "test.txt"


def _locked_version(package: str) -> str | None:
    if not LOCK.exists():
        return None
    for line in LOCK.read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower().replace("_", "-") == package:
            return version.split(";")[0].strip()
    return None


def test_overlay_snapshot_with_the_locked_opencv():
    """The picture of a fixed input stays what a person checked (tolerance for font anti-aliasing)."""
    from importlib.metadata import PackageNotFoundError, version

    locked = _locked_version("opencv-python-headless")
    try:
        installed = version("opencv-python-headless")
    except PackageNotFoundError:
        installed = None
    if locked is None or installed != locked:
        pytest.skip(f"the reference picture is drawn by the locked opencv-python-headless {locked}, here {installed}")
    panel = _snapshot_panel()
    if not SNAPSHOT.exists():  # a missing reference must not pass: write it, then fail until a person looked
        vz.save_png(SNAPSHOT, panel)
        pytest.fail(f"no reference picture: wrote {SNAPSHOT}; look at it, commit it and run again")
    reference = np.asarray(Image.open(SNAPSHOT).convert("RGB"))
    assert panel.shape == reference.shape
    difference = np.abs(panel.astype(int) - reference.astype(int))
    assert difference.mean() < 1.0 and (difference.max(axis=2) > 40).mean() < 0.005


def test_colorbar_marks_the_threshold_and_titles_fit():
    strip = vz.colorbar(200, vmin=0.0, vmax=1.0, threshold=0.25)
    assert strip.shape[0] == 200 and strip.dtype == np.uint8
    row = int(round((1 - 0.25) * 199))
    assert (strip[row, 2:6] < 30).all()  # the black threshold line across the ramp
    assert strip[5, 4, 0] > strip[5, 4, 2] and strip[195, 4, 2] > strip[195, 4, 0]  # red on top, blue at the bottom
    long_title = "a very long file name that would never fit into a small picture.png: anomalous, score 0.999"
    small = vz._with_title(np.zeros((40, 90, 3), np.uint8), long_title)
    large = vz._with_title(np.zeros((400, 3000, 3), np.uint8), "score 0.9")
    assert small.shape[1] == 90 and (small[: small.shape[0] - 40, -4:] == 255).all()  # text ends before the edge
    assert large.shape[0] - 400 > 40  # the bar (and the font) grows with the picture


def test_outlines_only_when_asked_and_small_regions_dropped():
    img, amap = _inputs()
    assert _red_count(vz.overlay_panel(img, amap, vmin=0.0, vmax=1.0, threshold=0.5, outline=False)[:, 128:]) == 0
    speck = np.zeros((64, 64), np.float32)
    speck[5:7, 5:7] = 1.0
    speck[30:50, 30:50] = 1.0
    boxes = vz.region_boxes(speck > 0.5, speck, min_area=10)
    assert boxes == [{"x": 30, "y": 30, "width": 20, "height": 20, "area": 400, "peak": 1.0}]
    assert len(vz.region_boxes(speck > 0.5)) == 2
    few = vz.overlay_panel(img, speck, vmin=0.0, vmax=1.0, threshold=0.5, min_area=10)
    assert _red_count(few[:12, 128:140]) == 0 and _red_count(few[:, 128:]) > 0


def test_one_colour_scale_from_the_calibration():
    from glass_ad.model.decision import Calibration

    calibration = Calibration.from_dict(
        {"image_threshold": 0.5, "pixel_threshold": 0.6, "pixel_normalization": {"center": 0.6, "scale": 0.1}}
    )
    low, high = calibration.heat_range()
    assert low < 0.6 < high and abs((low + high) / 2 - 0.6) < 1e-12
    assert abs(high - low - 2 * 0.1 * np.log(9)) < 1e-12

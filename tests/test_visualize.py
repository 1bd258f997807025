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


def test_colorize():
    out = vz.colorize(np.linspace(0, 1, 100).reshape(10, 10))
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

SNAPSHOT = Path(__file__).parent / "snapshots" / "overlay_panel.png"


def _snapshot_panel() -> np.ndarray:
    """A fixed input: a grey gradient frame 80×120 with one bright blob, the centre 80×80 inspected."""
    yy, xx = np.mgrid[0:80, 0:120]
    image = np.stack([(xx * 2) % 256, (yy * 3) % 256, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    amap = np.exp(-(((xx - 60) / 8.0) ** 2 + ((yy - 40) / 8.0) ** 2)).astype(np.float32)
    return vz.overlay_panel(image, amap, vmin=-0.2, vmax=1.0, threshold=0.4, title="part_007.png: anomalous, score 0.912",
                            inspected=(0, 20, 80, 100), colorbar=True)  # fmt: skip


def test_overlay_snapshot():
    """The picture of a fixed input stays what a person checked (tolerance for font anti-aliasing)."""
    panel = _snapshot_panel()
    if not SNAPSHOT.exists():  # a missing reference must not pass: write it, then fail until a person looked
        vz.save_png(SNAPSHOT, panel)
        pytest.fail(f"no reference picture: wrote {SNAPSHOT}; look at it, commit it and run again")
    reference = np.asarray(Image.open(SNAPSHOT).convert("RGB"))
    assert panel.shape == reference.shape
    difference = np.abs(panel.astype(int) - reference.astype(int))
    assert difference.mean() < 1.0 and (difference.max(axis=2) > 40).mean() < 0.005


def test_not_inspected_area_is_hatched_grey_not_blue():
    panel = _snapshot_panel()
    bar = panel.shape[0] - 80
    heat = panel[bar:, 120:240]
    outside, inside_low = heat[:, :20].reshape(-1, 3).astype(int), heat[70:, 30:40].reshape(-1, 3).astype(int)
    spread = lambda px: (px.max(axis=1) - px.min(axis=1)).mean()  # noqa: E731 (grey: channels equal)
    assert spread(outside) < 40 < spread(inside_low)  # coloured (blue) inside, grey outside
    assert len(np.unique(outside[:, 0])) >= 2  # hatched: light and dark lines


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
    from glass_ad.model.checkpoint import Calibration

    calibration = Calibration.from_dict(
        {"image_threshold": 0.5, "pixel_threshold": 0.6, "pixel_normalization": {"center": 0.6, "scale": 0.1}}
    )
    low, high = calibration.heat_range()
    assert low < 0.6 < high and abs((low + high) / 2 - 0.6) < 1e-12
    assert abs(high - low - 2 * 0.1 * np.log(9)) < 1e-12

import numpy as np
from PIL import Image

from glass_ad import visualize as vz


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
    assert _red_count(panel[:, 128:]) > 0
    assert _red_count(panel[:, :64]) == 0
    none = vz.overlay_panel(img, amap, vmin=0.0, vmax=1.0, threshold=2.0)
    assert _red_count(none[:, 128:]) == 0
    gt = np.zeros((64, 64), bool)
    gt[40:60, 40:60] = True
    titled = vz.overlay_panel(img, amap, vmin=0.0, vmax=1.0, threshold=2.0, title="case 1", gt_mask=gt)
    assert titled.shape[1] == 192 and titled.shape[0] > 64
    assert _green_count(titled[-64:, 128:]) > 0


def test_save_png_histogram_grid(tmp_path):
    img, amap = _inputs()
    p = vz.save_png(tmp_path / "a" / "b.png", img)
    assert np.array_equal(np.asarray(Image.open(p)), img)

    h = tmp_path / "h" / "hist.png"
    vz.score_histogram([0.1, 0.2, 0.3], [0.7, 0.9], 0.5, h, title="t")
    assert h.stat().st_size > 0
    h2 = tmp_path / "hist2.png"
    vz.score_histogram([0.1, 0.2], [], None, h2)
    assert h2.exists()

    panels = [np.zeros((10, 20, 3), np.uint8), np.zeros((12, 15, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)]
    g = tmp_path / "grid.png"
    grid = vz.case_grid(panels, g, columns=2)
    assert grid.shape == (24, 40, 3)
    assert Image.open(g).size == (40, 24)


def test_case_grid_titles_and_unicode_title(tmp_path):
    img, amap = _inputs()
    panel = vz.overlay_panel(img, amap, vmin=0.0, vmax=1.0, threshold=0.5, title="score 0.83 \u2192 anomalous")
    assert panel.shape == (64 + 28, 192, 3)
    assert (panel[:28] < 128).any()  # some text was drawn in the bar
    grid = vz.case_grid([img, img], tmp_path / "g.png", columns=1, titles=["a", None])
    assert grid.shape == (2 * (64 + 28), 64, 3)

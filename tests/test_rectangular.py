"""Rectangular network inputs (H×W): elongated parts keep their aspect ratio instead of being squashed."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from glass_ad.config import make_config
from glass_ad.data.layouts import Sample
from glass_ad.data.preprocessing import Preprocessor, choose_input_shape
from glass_ad.model.glass_model import GaussianBlur, ScoreMap, build_model


def _general_box(h: int, w: int, shape: tuple[int, int], resize: int | None, fit: str) -> tuple[int, int, int, int]:
    """The documented geometry (docs/method.md), written out independently of the library."""
    out_h, out_w = shape
    margin = Fraction(resize or min(shape), min(shape))
    cover_h, cover_w = round(out_h * margin), round(out_w * margin)
    if fit == "stretch":
        new_h, new_w = cover_h, cover_w
    else:
        factor = max(out_h * margin / h, out_w * margin / w)
        new_h, new_w = max(cover_h, round(h * factor)), max(cover_w, round(w * factor))
    return new_h, new_w, round(Fraction(new_h - out_h, 2)), round(Fraction(new_w - out_w, 2))


@pytest.mark.parametrize("fit", ["crop", "stretch"])
@pytest.mark.parametrize("resize", [None, 72])
@pytest.mark.parametrize("frame", [(100, 260), (260, 100), (64, 128), (33, 47), (500, 1260), (847, 1056)])
def test_crop_geometry_follows_the_documented_formula(frame, resize, fit):
    for shape in [(64, 128), (128, 64), (64, 64)]:
        box = Preprocessor(min(shape), resize, fit, shape=shape).crop_box(*frame)
        assert (*box.resized_hw, box.top, box.left) == _general_box(*frame, shape, resize, fit)
        assert box.crop_hw == shape


def test_rectangular_preprocessing_keeps_the_aspect_ratio():
    frame = np.zeros((250, 630, 3), np.uint8)
    frame[:, :315] = 255  # the left half white
    processed = Preprocessor(64, None, "stretch", shape=(64, 160)).image(frame)
    assert processed.shape == (3, 64, 160)
    assert processed[:, :, :78].min() > 0.99 and processed[:, :, 82:].max() < 0.01  # the edge stays in the middle
    mask = np.zeros((250, 630), bool)
    mask[100:150, 300:330] = True
    resized = Preprocessor(64, None, "stretch", shape=(64, 160)).mask(mask)
    assert resized.shape == (1, 64, 160) and resized.sum() > 0
    back = Preprocessor(64, None, "stretch", shape=(64, 160)).map_to_original(np.ones((64, 160)), (250, 630))
    assert back.shape == (250, 630) and np.allclose(back, 1.0)


def _samples(tmp_path, sizes) -> list[Sample]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (h, w) in enumerate(sizes):
        path = tmp_path / f"{i:03d}.png"
        Image.new("RGB", (w, h)).save(path)
        samples.append(Sample(path, 0, "good", None))
    return samples


def test_the_auto_rule_keeps_one_shared_aspect_ratio(tmp_path):
    assert choose_input_shape(_samples(tmp_path / "a", [(500, 1260)] * 8), 288) == (288, 720)  # 2.52, capped at 2.5
    assert choose_input_shape(_samples(tmp_path / "b", [(1260, 500)] * 8), 288) == (720, 288)  # portrait
    assert choose_input_shape(_samples(tmp_path / "c", [(400, 760)] * 8), 64) == (64, 120)  # 1.9
    assert choose_input_shape(_samples(tmp_path / "d", [(300, 330)] * 8), 288) is None  # nearly square
    mixed = [(500, 1260)] * 4 + [(1260, 500)] * 4  # no one orientation
    assert choose_input_shape(_samples(tmp_path / "e", mixed), 288) is None
    varied = [(500, 1260), (500, 800), (500, 2000), (500, 1000)] * 2  # no one ratio
    assert choose_input_shape(_samples(tmp_path / "f", varied), 288) is None


def test_rectangular_score_map_is_upsampling_then_smoothing():
    scores = torch.rand(2, 8, 20)
    reference = GaussianBlur(4.0)(F.interpolate(scores[:, None], size=(64, 160), mode="bilinear", align_corners=False))
    torch.testing.assert_close(ScoreMap((8, 20), (64, 160), 4.0)(scores), reference[:, 0], rtol=1e-5, atol=1e-6)


def test_a_rectangular_model_scores_its_own_grid():
    config = make_config("fast", backbone="efficientnet_lite0", image_size=64, image_shape=(64, 160))
    model = build_model(config).eval()
    assert model.input_shape == (64, 160) and model.grid_shape == (8, 20) and model.num_patches == 160
    hot = torch.zeros(1, 8, 20)
    hot[0, 2, 17] = 1.0  # one hot patch near the right end
    maps = model.postprocess(hot).anomaly_maps[0]
    row, column = np.unravel_index(int(maps.argmax()), tuple(maps.shape))
    assert 16 <= row < 24 and 136 <= column < 144  # on that patch's 8×8 pixels
    with pytest.raises(ValueError, match="not square"):
        _ = model.grid
    with pytest.raises(ValueError, match="short side"):
        make_config("fast", image_size=288, image_shape=(64, 160))


# ---------------------------------------------------------------------------------------------------
# End to end on an elongated product


@pytest.fixture(scope="module")
def strip_data(tmp_path_factory):
    from glass_ad.data.demo_data import make_demo_dataset, make_strip_dataset

    base = tmp_path_factory.mktemp("square")
    square = make_demo_dataset(base, n_train=40, n_test_good=10, n_test_defect=10, size=128)
    return make_strip_dataset(square, tmp_path_factory.mktemp("strip") / "strip", (100, 250))


@pytest.mark.slow
def test_an_elongated_product_trains_and_predicts_on_a_rectangle(strip_data, tmp_path):
    from glass_ad.evaluation.tester import test as run_test
    from glass_ad.inference.predict import Detector
    from glass_ad.model.checkpoint import Checkpoint
    from glass_ad.training import train

    config = make_config("fast", backbone="efficientnet_lite0", image_size=64, epochs=6, early_stopping=False, seed=0)
    train(strip_data, tmp_path / "run", config, progress=False, echo=lambda _: None)
    checkpoint = Checkpoint.load(tmp_path / "run")
    assert checkpoint.config.fit == "stretch" and checkpoint.config.input_shape == (64, 160)
    assert checkpoint.centre.shape[0] == 8 * 20  # the (H/8)×(W/8) grid
    report = run_test(tmp_path / "run", strip_data, json_path=None, report_dir=None, progress=False, pictures=False)
    assert report["image_auroc"] > 0.85 and report["pixel_auroc"] > 0.8
    frame = next((strip_data / "test" / "scratch").glob("*.png"))
    prediction = Detector.load(tmp_path / "run")(str(frame))
    assert prediction.anomaly_map.shape == (100, 250)  # back on the original frame

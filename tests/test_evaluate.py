import numpy as np
import pytest

from glass_ad.evaluation import metrics
from glass_ad.evaluation.evaluate import StreamingEvaluator


def _data(n=13, s=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 6 + [1] * (n - 6))
    types = ["good"] * 6 + ["scratch", "hole"] * ((n - 6) // 2) + ["scratch"] * ((n - 6) % 2)
    scores = rng.random(n) + labels * 0.3
    maps = rng.random((n, s, s)).astype(np.float32)
    masks = np.zeros((n, s, s), bool)
    for i in np.flatnonzero(labels):
        masks[i, 2:5, 1:4] = True
        maps[i, 2:5, 1:4] += 0.5
    paths = [f"img{i}.png" for i in range(n)]
    return scores, maps, labels, masks, types, paths


def test_streaming_equals_concatenated():
    scores, maps, labels, masks, types, paths = _data()
    ev = StreamingEvaluator(8, expected=2)
    for a in range(0, len(scores), 4):
        b = slice(a, a + 4)
        ev.add(scores[b], maps[b], labels[b], masks[b], types[b], paths[b])
    assert ev.capacity >= 13 and len(ev) == 13
    r = ev.compute()
    assert r["image_auroc"] == pytest.approx(metrics.image_auroc(scores, labels))
    assert r["image_ap"] == pytest.approx(metrics.image_ap(scores, labels))
    assert r["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(maps, masks))
    assert r["pixel_ap"] == pytest.approx(metrics.pixel_ap(maps, masks))
    assert r["aupro"] == pytest.approx(metrics.aupro(maps, masks))
    assert (r["n_images"], r["n_anomalous"], r["n_normal"]) == (13, 7, 6)
    np.testing.assert_array_equal(ev.maps, maps)
    np.testing.assert_array_equal(ev.masks, masks)
    np.testing.assert_allclose(ev.image_scores, scores)
    np.testing.assert_array_equal(ev.labels, labels)
    assert ev.paths == paths and ev.defect_types == types


def test_growth_past_capacity_and_no_masks():
    ev = StreamingEvaluator(4, expected=1)
    for i in range(5):
        ev.add(np.array([float(i)]), np.full((1, 4, 4), i, np.float32), np.array([0]), None, ["good"], [f"p{i}"])
    assert len(ev) == 5 and ev.capacity == 8
    assert ev.maps.shape == (5, 4, 4) and not ev.masks.any()
    np.testing.assert_array_equal(ev.maps[:, 0, 0], np.arange(5))


def test_per_defect_type_hand_case():
    ev = StreamingEvaluator(2)
    z = np.zeros((5, 2, 2), np.float32)
    ev.add(
        np.array([0.1, 0.5, 0.9, 0.3, 0.05]),
        z,
        np.array([0, 0, 1, 1, 1]),
        None,
        ["good", "good", "crack", "crack", "stain"],
        list("abcde"),
    )
    per = ev.compute(pixel_metrics=False)["per_defect_type"]
    assert set(per) == {"crack", "stain"}
    # crack scores {0.9, 0.3} vs good {0.1, 0.5}: pairs won 3 of 4
    assert per["crack"] == {"image_auroc": pytest.approx(0.75), "n": 2}
    assert per["stain"] == {"image_auroc": pytest.approx(0.0), "n": 1}


def test_per_defect_type_pixel_metrics_use_the_type_and_the_normal_images():
    rng = np.random.default_rng(3)
    types = ["good", "good", "crack", "crack", "stain", "good"]
    labels = np.array([t != "good" for t in types], dtype=np.int64)
    maps = rng.random((6, 8, 8)).astype(np.float32)
    masks = np.zeros((6, 8, 8), bool)
    masks[2, 1:3, 1:4] = masks[3, 5:, 5:] = masks[4, 0, :] = True
    maps[masks] += 0.3  # anomalous pixels tend to score higher, not always
    ev = StreamingEvaluator(8)
    ev.add(maps.max(axis=(1, 2)), maps, labels, masks, types, list("abcdef"))
    report = ev.compute()
    assert report["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(maps, masks), abs=1e-12)
    for name in ("crack", "stain"):
        keep = np.array([t in (name, "good") for t in types])
        entry = report["per_defect_type"][name]
        assert entry["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(maps[keep], masks[keep]), abs=1e-12)
        assert entry["pixel_ap"] == pytest.approx(metrics.pixel_ap(maps[keep], masks[keep]), abs=1e-12)
        assert entry["aupro"] == pytest.approx(metrics.aupro(maps[keep], masks[keep]), abs=1e-9)
        assert entry["anomalous_pixels"] == int(masks[[t == name for t in types]].sum())
    # The two types are scored apart: their pixel figures differ from each other and from the whole set.
    assert report["per_defect_type"]["crack"]["pixel_auroc"] != report["per_defect_type"]["stain"]["pixel_auroc"]


def test_worst_cases_ordering():
    ev = StreamingEvaluator(2)
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.95, 0.4])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ev.add(scores, np.zeros((8, 2, 2), np.float32), labels, None, ["good"] * 4 + ["x"] * 4, list("abcdefgh"))
    fp, fn = ev.worst_cases(0.5)
    assert fp == [0, 3, 1]
    assert fn == [4, 5, 7]
    fp, fn = ev.worst_cases(0.5, k=1)
    assert fp == [0] and fn == [4]


def test_add_validates_shapes():
    ev = StreamingEvaluator(4)
    with pytest.raises(ValueError):
        ev.add(np.zeros(2), np.zeros((2, 3, 3)), np.zeros(2), None, ["good"] * 2, ["a", "b"])


def test_growing_past_the_default_capacity_keeps_every_image():
    ev = StreamingEvaluator(2)
    for i in range(20):  # past the default capacity of 16
        kind = "good" if i % 2 == 0 else "dent"
        ev.add(np.array([i / 10]), np.zeros((1, 2, 2), np.float32), np.array([i % 2]), None, [kind], [f"p{i}"])
    assert ev.capacity == 32
    np.testing.assert_allclose(ev.image_scores, np.arange(20) / 10)
    np.testing.assert_array_equal(ev.labels, np.arange(20) % 2)
    assert ev.maps.dtype == np.float32 and ev.masks.dtype == bool


def test_compute_without_pixel_metrics_reports_nan():
    scores, maps, labels, masks, types, paths = _data()
    ev = StreamingEvaluator(8, expected=13)
    ev.add(scores, maps, labels, masks, types, paths)
    r = ev.compute(pixel_metrics=False)
    assert all(np.isnan(r[key]) for key in ("pixel_auroc", "pixel_ap", "aupro"))
    assert r["image_auroc"] == pytest.approx(metrics.image_auroc(scores, labels))

"""The preprocessing specification (numpy), the preprocessing inside the exported graph, and the torch-free
runtime.

The numpy reference (`framing.preprocess`, `framing.map_to_original`) is held to `preprocessing.Preprocessor`
(PyTorch); the in-graph preprocessing (`frame_graph.wrap_frames`) to the numpy reference, on a small
hand-built ONNX "network" whose map is the mean of its input pixels, so every pixel of the preprocessing
shows in the output. No model is trained here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from glass_ad.data.preprocessing import Preprocessor
from glass_ad.inference import framing, runtime
from glass_ad.inference.frame_graph import wrap_frames

GEOMETRIES = [
    # (height, width, image_size, resize, fit)
    (64, 64, 64, None, "crop"),  # identity
    (100, 300, 64, None, "crop"),  # wide, shrink
    (300, 100, 64, 80, "crop"),  # tall, resize > image size
    (37, 50, 64, None, "crop"),  # enlarge
    (40, 200, 64, None, "stretch"),  # one side enlarged, the other shrunk
    (500, 333, 96, None, "stretch"),
    (257, 1023, 96, 112, "crop"),
    (64, 90, 64, None, "crop"),  # one side unchanged
]


def _torch_prepare(image: np.ndarray, size: int, resize: int | None, fit: str) -> np.ndarray:
    tensor = Preprocessor(size, resize, fit).image(image)
    return (tensor * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("height,width,size,resize,fit", GEOMETRIES)
def test_numpy_reference_matches_preprocessor(height, width, size, resize, fit):
    rng = np.random.default_rng(height * 7 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    preprocessor = Preprocessor(size, resize, fit)
    assert framing.crop_box(height, width, size, resize, fit) == preprocessor.geometry((height, width))

    ours, theirs = framing.preprocess(image, size, resize, fit), _torch_prepare(image, size, resize, fit)
    assert ours.shape == theirs.shape == (size, size, 3) and ours.dtype == np.uint8
    difference = np.abs(ours.astype(int) - theirs.astype(int))
    # Float summation order differs from PyTorch's kernels: a value within ~1e-5 of x.5 may round the
    # other way (exact ties are common: two pixels averaged). One grey level, on a tiny fraction.
    assert difference.max() <= 1 and (difference > 0).mean() < 2e-3

    small = rng.random((size, size)).astype(np.float32)
    back = framing.map_to_original(small, (height, width), size, resize, fit)
    assert back.shape == (height, width) and back.dtype == np.float32
    assert np.abs(back - preprocessor.map_to_original(small, (height, width))).max() < 1e-4  # float rounding only


def test_resize_weights_rows_sum_to_one_and_identity_when_same_size():
    for in_size, out_size in ((10, 10), (100, 7), (7, 100), (33, 32)):
        weights = framing.resize_weights(in_size, out_size)
        assert weights.shape == (out_size, in_size)
        assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-6) and (weights >= 0).all()
    assert np.array_equal(framing.resize_weights(9, 9), np.eye(9, dtype=np.float32))
    with pytest.raises(ValueError, match="fit must be"):
        framing.crop_box(10, 10, 8, None, "pad")


def _mean_model(size: int) -> onnx.ModelProto:
    """A stand-in for the exported network: map = mean of the input pixels over channels (B×S×S),
    score = max of the map, normalised score = score / 255."""
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["anomaly_map"], axes=[3], keepdims=0),
        helper.make_node("ReduceMax", ["anomaly_map"], ["image_score"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["image_score", "k255"], ["normalized_score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mean",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", size, size, 3])],
        [
            helper.make_tensor_value_info("image_score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("normalized_score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", size, size]),
        ],
        [helper.make_tensor("k255", TensorProto.FLOAT, [], [255.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _write_frame_model(
    folder: Path, size: int, resize: int | None, fit: str, shape: tuple[int, int] | None = None, **meta: str
) -> Path:
    """The mean model wrapped with in-graph frame preprocessing and glass_ad metadata; `shape` (H×W) makes
    a rectangular input whose short side is `size` (and records image_height/image_width)."""
    model = wrap_frames(_mean_model_hw(shape) if shape else _mean_model(size), size, resize, fit, shape)
    values = {"image_size": str(size), "resize": str(resize or ""), "fit": fit, "preprocessing": "in-graph",
              "image_threshold": "100.0", "pixel_threshold": "120.0", "bit_depth": "container", **meta}  # fmt: skip
    if shape:
        values |= {"image_height": str(shape[0]), "image_width": str(shape[1])}
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = "glass_ad." + key, value
    onnx.checker.check_model(model, full_check=True)
    name = f"{shape[0]}x{shape[1]}" if shape else str(size)
    path = folder / f"frames_{name}_{resize}_{fit}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("height,width,size,resize,fit", GEOMETRIES)
def test_preprocessing_in_the_graph_matches_the_reference(tmp_path, height, width, size, resize, fit):
    path = _write_frame_model(tmp_path, size, resize, fit)
    rng = np.random.default_rng(height + width)
    frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    scores, _, maps = runtime.session(path).run(None, {"images": frames})
    assert maps.shape == (2, height, width)
    for frame, score, frame_map in zip(frames, scores, maps):
        prepared = framing.preprocess(frame, size, resize, fit).astype(np.float32)
        # The graph's network input, seen through the mean: the same pixels as the numpy reference up to a
        # rare one-level rounding difference (see above), i.e. ≤ 1/3 on the channel mean.
        expected = framing.map_to_original(prepared.mean(axis=2), (height, width), size, resize, fit)
        assert np.abs(frame_map - expected).max() <= 1 / 3 + 1e-3
        assert abs(float(score) - float(prepared.mean(axis=2).max())) <= 1 / 3 + 1e-3
        torch_map = Preprocessor(size, resize, fit).map_to_original(
            _torch_prepare(frame, size, resize, fit).astype(np.float32).mean(axis=2), (height, width)
        )
        assert np.abs(frame_map - torch_map).max() <= 1 / 3 + 1e-3


def test_runtime_decides_from_metadata_and_batches_by_frame_size(tmp_path):
    path = _write_frame_model(tmp_path, 32, None, "crop", f1_image_threshold="50.0")
    rt = runtime.Runtime(path, batch_size=4)
    assert rt.in_graph and rt.providers == ["CPUExecutionProvider"]
    bright, dark = np.full((40, 70, 3), 200, np.uint8), np.full((50, 50), 30, np.uint8)
    results = rt([bright, dark, bright[:, :60]])
    assert [r.anomaly_map.shape for r in results] == [(40, 70), (50, 50), (40, 60)]
    assert [r.decision for r in results] == ["anomalous", "normal", "anomalous"]  # threshold 100 (far)
    assert results[0].region.dtype == np.bool_ and results[0].region.any() and not results[1].region.any()
    assert runtime.Runtime(path, threshold="f1").image_threshold == 50.0
    assert runtime.Runtime(path, threshold=250).predict(bright).decision == "normal"
    with pytest.raises(ValueError, match="no F1 threshold"):
        runtime.Runtime(_write_frame_model(tmp_path, 16, None, "crop"), threshold="f1")


def test_providers_are_checked_with_one_line_errors():
    assert runtime.resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert runtime.resolve_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="unknown provider"):
        runtime.resolve_providers("quantum")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ValueError, match="has no CUDAExecutionProvider") as error:
            runtime.resolve_providers("cuda")
        assert "\n" not in str(error.value)


def test_runtime_imports_no_torch_scipy_or_sklearn(tmp_path):
    """The runtime runs in a process where torch, scipy and scikit-learn cannot be imported at all."""
    path = _write_frame_model(tmp_path, 32, None, "crop")
    image = tmp_path / "part.png"
    from PIL import Image

    Image.fromarray(np.full((48, 80, 3), 220, np.uint8)).save(image)
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "scipy", "sklearn", "timm", "matplotlib"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from glass_ad.inference.runtime import Runtime, main
        p = Runtime({str(path)!r})({str(image)!r})
        assert p.anomaly_map.shape == (48, 80) and p.decision == "anomalous", p
        assert main([{str(path)!r}, {str(image)!r}]) == 0
        print("ok", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "scipy", "sklearn")))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "ok []"


# ---------------------------------------------------------------------------------------------------
# Rectangular network inputs (H×W): the same geometry in numpy, PyTorch and the graph

RECT_GEOMETRIES = [
    # (height, width, (H, W), resize, fit)
    (64, 128, (64, 128), None, "crop"),  # identity
    (64, 128, (64, 128), None, "stretch"),  # identity
    (500, 1260, (64, 160), None, "crop"),  # wide frame, wide input: shrink, a little cut at the ends
    (500, 1260, (64, 160), None, "stretch"),
    (300, 100, (64, 128), 80, "crop"),  # tall frame into a wide input, with a margin
    (37, 50, (128, 64), None, "crop"),  # portrait input, enlarge
    (200, 90, (96, 48), None, "stretch"),
    (257, 1023, (48, 96), 56, "stretch"),  # margin: stretched to 56×112, then cropped
    (128, 257, (64, 128), None, "crop"),  # w·f = 128.5: a tie, to even
    (90, 64, (40, 112), None, "crop"),
]

# Frame sizes whose resized side is exactly x.5 (H·m, W·m not integers of the same ratio): the exact
# rational rule of the contract rounds these half to even; a float product can land on either side.
RECT_TIES = [
    (847, 1056, (64, 128), 72, "crop", (116, 144, 26, 8)),
    (2650, 2240, (40, 112), 56, "crop", (186, 157, 73, 22)),
    (3975, 2968, (96, 232), 112, "crop", (362, 271, 133, 20)),
]


def _contract_crop_box(height: int, width: int, shape: tuple[int, int], resize: int | None, fit: str) -> tuple[int, int, int, int]:
    """The contract's formulas, written out literally in exact rationals (an independent reference)."""
    from fractions import Fraction

    big_h, big_w = shape
    margin = Fraction(resize or min(shape), min(shape))
    if fit == "stretch":
        new_h, new_w = round(big_h * margin), round(big_w * margin)
    else:
        f = max(big_h * margin / height, big_w * margin / width)
        new_h, new_w = max(round(big_h * margin), round(height * f)), max(round(big_w * margin), round(width * f))
    return new_h, new_w, round(Fraction(new_h - big_h, 2)), round(Fraction(new_w - big_w, 2))


def _rect_preprocessor(shape: tuple[int, int], resize: int | None, fit: str) -> Preprocessor:
    import inspect

    if "shape" not in inspect.signature(Preprocessor).parameters:
        pytest.skip("Preprocessor has no rectangular shape yet")
    return Preprocessor(min(shape), resize, fit, shape=shape)


def test_rectangular_crop_box_is_the_contract_and_squares_are_unchanged():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        height, width = (int(v) for v in rng.integers(8, 3000, 2))
        shape = [(64, 128), (128, 64), (288, 704), (40, 112), (96, 232)][int(rng.integers(5))]
        resize = [None, min(shape), min(shape) + 8, min(shape) + 3][int(rng.integers(4))]
        fit = ["crop", "stretch"][int(rng.integers(2))]
        assert framing.crop_box(height, width, min(shape), resize, fit, shape) == _contract_crop_box(height, width, shape, resize, fit)
        size = shape[0]
        square = framing.crop_box(height, width, size, resize and resize - min(shape) + size, fit)
        assert square == framing.crop_box(height, width, size, resize and resize - min(shape) + size, fit, (size, size))
        assert square == _contract_crop_box(height, width, (size, size), resize and resize - min(shape) + size, fit)
    for height, width, shape, resize, fit, expected in RECT_TIES:
        assert framing.crop_box(height, width, min(shape), resize, fit, shape) == expected
    # The example of the contract: 500×1260 steel images at 288×704 (short side 288 = the frame's 500).
    assert framing.crop_box(500, 1260, 288, None, "crop", (288, 704)) == (288, 726, 0, 11)
    assert framing.crop_box(500, 1260, 288, None, "stretch", (288, 704)) == (288, 704, 0, 0)


@pytest.mark.parametrize("height,width,shape,resize,fit", RECT_GEOMETRIES)
def test_rectangular_numpy_reference_matches_preprocessor(height, width, shape, resize, fit):
    preprocessor = _rect_preprocessor(shape, resize, fit)
    rng = np.random.default_rng(height * 7 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    size = min(shape)
    assert framing.crop_box(height, width, size, resize, fit, shape) == preprocessor.geometry((height, width))

    ours = framing.preprocess(image, size, resize, fit, shape)
    theirs = (preprocessor.image(image) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert ours.shape == theirs.shape == (*shape, 3) and ours.dtype == np.uint8
    difference = np.abs(ours.astype(int) - theirs.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 2e-3  # float summation order (see above)

    small = rng.random(shape).astype(np.float32)
    back = framing.map_to_original(small, (height, width), size, resize, fit, shape)
    assert back.shape == (height, width) and back.dtype == np.float32
    assert np.abs(back - preprocessor.map_to_original(small, (height, width))).max() < 1e-4
    with pytest.raises(ValueError, match="map"):
        framing.map_to_original(small.T, (height, width), size, resize, fit, shape)


@pytest.mark.parametrize("height,width,shape,resize,fit,expected", RECT_TIES)
def test_rectangular_ties_are_the_same_integers_in_preprocessor(height, width, shape, resize, fit, expected):
    assert _rect_preprocessor(shape, resize, fit).geometry((height, width)) == expected


def _write_rect_frame_model(folder: Path, shape: tuple[int, int], resize: int | None, fit: str, **meta: str) -> Path:
    return _write_frame_model(folder, min(shape), resize, fit, shape, **meta)


def _mean_model_hw(shape: tuple[int, int]) -> onnx.ModelProto:
    """`_mean_model` for an H×W input."""
    model = _mean_model(shape[0])
    for info in (model.graph.input[0], model.graph.output[2]):
        info.type.tensor_type.shape.dim[2].dim_value = shape[1]
    return model


@pytest.mark.parametrize("height,width,shape,resize,fit", RECT_GEOMETRIES)
def test_rectangular_preprocessing_in_the_graph_matches_the_reference(tmp_path, height, width, shape, resize, fit):
    path = _write_rect_frame_model(tmp_path, shape, resize, fit)
    rng = np.random.default_rng(height + width)
    frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    scores, _, maps = runtime.session(path).run(None, {"images": frames})
    assert maps.shape == (2, height, width)
    size = min(shape)
    for frame, score, frame_map in zip(frames, scores, maps):
        prepared = framing.preprocess(frame, size, resize, fit, shape).astype(np.float32)
        expected = framing.map_to_original(prepared.mean(axis=2), (height, width), size, resize, fit, shape)
        assert np.abs(frame_map - expected).max() <= 1 / 3 + 1e-3
        assert abs(float(score) - float(prepared.mean(axis=2).max())) <= 1 / 3 + 1e-3


def _graph_geometry(path: Path, frame_hw: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(resized_h, resized_w, top, left) as the graph computes them: its map padding, read as an output."""
    model = onnx.load(str(path))
    pads = next(n.output[0] for n in model.graph.node if n.output[0].startswith("glass_frame/pads"))
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info(pads, TensorProto.INT64, [6])])
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (values,) = session.run(None, {"images": np.zeros((1, *frame_hw, 3), np.uint8)})
    _, top, left, _, bottom, right = (int(v) for v in values)
    return top + shape[0] + bottom, left + shape[1] + right, top, left


def test_graph_computes_the_contract_integers_on_tie_prone_frames(tmp_path):
    for height, width, shape, resize, fit, expected in RECT_TIES:
        path = _write_rect_frame_model(tmp_path, shape, resize, fit)
        assert _graph_geometry(path, (height, width), shape) == expected
    rng = np.random.default_rng(1)
    for shape, resize, fit in (((64, 128), 72, "crop"), ((128, 64), None, "crop"), ((48, 96), 56, "stretch"), ((64, 64), 80, "crop")):
        path = _write_rect_frame_model(tmp_path, shape, resize, fit)
        for _ in range(12):
            height, width = (int(v) for v in rng.integers(8, 400, 2))
            assert _graph_geometry(path, (height, width), shape) == _contract_crop_box(height, width, shape, resize, fit)


def test_runtime_reads_the_input_shape_and_falls_back_to_the_square(tmp_path):
    path = _write_rect_frame_model(tmp_path, (32, 64), None, "stretch")
    rt = runtime.Runtime(path)
    assert rt.input_shape == (32, 64) and rt.image_size == 32
    results = rt([np.full((40, 70, 3), 200, np.uint8), np.full((90, 50, 3), 30, np.uint8)])
    assert [r.anomaly_map.shape for r in results] == [(40, 70), (90, 50)]
    assert [r.decision for r in results] == ["anomalous", "normal"]
    assert runtime.Runtime(_write_frame_model(tmp_path, 32, None, "crop")).input_shape == (32, 32)  # no image_height


def test_runtime_preprocesses_for_a_rectangular_crop_input_model(tmp_path):
    """A model exported without the preprocessing in the graph takes H×W inputs; the runtime prepares them."""
    shape, resize, fit = (32, 64), 40, "crop"
    model = _mean_model_hw(shape)
    values = {"image_size": "32", "image_height": "32", "image_width": "64", "resize": str(resize), "fit": fit,
              "preprocessing": "external", "image_threshold": "100.0", "pixel_threshold": "120.0"}  # fmt: skip
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = "glass_ad." + key, value
    path = tmp_path / "crops.onnx"
    onnx.save(model, str(path))
    frame = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    rt = runtime.Runtime(path)
    assert not rt.in_graph and rt.input_shape == shape
    prediction = rt(frame)
    prepared = framing.preprocess(frame, 32, resize, fit, shape).astype(np.float32).mean(axis=2)
    assert np.allclose(prediction.anomaly_map, framing.map_to_original(prepared, (50, 70), 32, resize, fit, shape), atol=1e-4)

"""The preprocessing specification (numpy), the preprocessing inside the exported graph, and the torch-free
runtime.

The numpy reference (`runtime.preprocess`, `runtime.map_to_original`) is held to `datasets.Preprocessor`
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

from glass_ad.data.datasets import Preprocessor
from glass_ad.inference import runtime
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
    assert runtime.crop_box(height, width, size, resize, fit) == preprocessor.geometry((height, width))

    ours, theirs = runtime.preprocess(image, size, resize, fit), _torch_prepare(image, size, resize, fit)
    assert ours.shape == theirs.shape == (size, size, 3) and ours.dtype == np.uint8
    difference = np.abs(ours.astype(int) - theirs.astype(int))
    # Float summation order differs from PyTorch's kernels: a value within ~1e-5 of x.5 may round the
    # other way (exact ties are common: two pixels averaged). One grey level, on a tiny fraction.
    assert difference.max() <= 1 and (difference > 0).mean() < 2e-3

    small = rng.random((size, size)).astype(np.float32)
    back = runtime.map_to_original(small, (height, width), size, resize, fit)
    assert back.shape == (height, width) and back.dtype == np.float32
    assert np.abs(back - preprocessor.map_to_original(small, (height, width))).max() < 1e-4  # float rounding only


def test_resize_weights_rows_sum_to_one_and_identity_when_same_size():
    for in_size, out_size in ((10, 10), (100, 7), (7, 100), (33, 32)):
        weights = runtime.resize_weights(in_size, out_size)
        assert weights.shape == (out_size, in_size)
        assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-6) and (weights >= 0).all()
    assert np.array_equal(runtime.resize_weights(9, 9), np.eye(9, dtype=np.float32))
    with pytest.raises(ValueError, match="fit must be"):
        runtime.crop_box(10, 10, 8, None, "pad")


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


def _write_frame_model(folder: Path, size: int, resize: int | None, fit: str, **meta: str) -> Path:
    model = wrap_frames(_mean_model(size), size, resize, fit)
    values = {"image_size": str(size), "resize": str(resize or ""), "fit": fit, "preprocessing": "in-graph",
              "image_threshold": "100.0", "pixel_threshold": "120.0", "bit_depth": "container", **meta}  # fmt: skip
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = "glass_ad." + key, value
    onnx.checker.check_model(model, full_check=True)
    path = folder / f"frames_{size}_{resize}_{fit}.onnx"
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
        prepared = runtime.preprocess(frame, size, resize, fit).astype(np.float32)
        # The graph's network input, seen through the mean: the same pixels as the numpy reference up to a
        # rare one-level rounding difference (see above), i.e. ≤ 1/3 on the channel mean.
        expected = runtime.map_to_original(prepared.mean(axis=2), (height, width), size, resize, fit)
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

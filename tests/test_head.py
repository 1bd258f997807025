"""The deployed scoring head (`inference.head.ScoringHead`) computes the model's patch scores: plain and
hybrid, fused and unfused, deeper discriminators, rectangular inputs; the exported frame graph builds the
same map on the frame from the patch grid as the network map resized back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glass_ad.config import make_config
from glass_ad.inference.engines import InferenceGraph
from glass_ad.inference.head import OUTPUT_BLOCK, ScoringHead
from glass_ad.model.decision import Normalization
from glass_ad.model.glass_model import build_model
from glass_ad.model.memory_bank import MemoryBank, image_descriptors, pool_windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = make_config("fast", backbone="efficientnet_lite0", **{"image_size": 64, **overrides})
    model = build_model(config).eval()
    model.feature_scale.fill_(0.7)
    for module in model.discriminator.modules():  # trained-looking batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _reference(model, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.patch_scores(model.features(images))


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("dsc_layers", [1, 2, 3])
def test_head_is_the_models_patch_scores(fuse, dsc_layers):
    model = _model(dsc_layers=dsc_layers, dsc_hidden=64)
    if fuse:
        model.fuse_()
    assert ScoringHead.supports(model)
    images = torch.rand(3, 3, 64, 64)
    head = ScoringHead(model)
    with torch.inference_mode():
        ours = head(model.backbone(images))
    assert torch.allclose(ours, _reference(model, images), atol=2e-5)


def test_head_is_the_models_patch_scores_on_a_rectangle():
    model = _model(image_size=48, image_shape=(48, 80)).fuse_()
    images = torch.rand(2, 3, 48, 80)
    with torch.inference_mode():
        ours = ScoringHead(model)(model.backbone(images))
    assert ours.shape == (2, 6, 10)
    assert torch.allclose(ours, _reference(model, images), atol=2e-5)


def test_head_keeps_whole_blocks_of_channels():
    head = ScoringHead(_model().fuse_())
    for i in range(head.levels):
        assert getattr(head, f"kernel_{i}").shape[0] % OUTPUT_BLOCK == 0
    assert head.first.in_channels == sum(getattr(head, f"kernel_{i}").shape[0] for i in range(head.levels))


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize(
    "neighbours, descriptor, window", [(0, None, 0), (2, "mean", 0), (2, "mean_spread", 0), (2, "mean_spread", 4), (5, "mean", 2)]
)
@pytest.mark.parametrize("bank_product", [False, True])
def test_hybrid_head_is_the_models_patch_scores(fuse, neighbours, descriptor, window, bank_product):
    """Both forms of the fine distance (norms folded into one product; q·b in its own module for int8)."""
    model = _model()
    with torch.inference_mode():
        other = model.features(torch.rand(5, 3, 64, 64))
    windows = pool_windows(other, model.grid_shape, window)[0] if window else None
    if neighbours:  # each image against the patches of its 2 nearest of 5 stored images (5: of all)
        bank = MemoryBank(other[:, ::3].clone(), image_descriptors(other, descriptor), neighbours, windows, window)
        assert bank.descriptor == descriptor and bank.retrieves == (neighbours < 5)
    else:  # one global bank
        bank = MemoryBank(other.reshape(-1, other.shape[-1])[::3].clone())
    model.set_memory_bank(bank, [0.1, 2.0, 0.5, 0.25, 0.7, 0.5] if window else [0.1, 2.0, 0.5, 0.25])
    if fuse:
        model.fuse_()
    images = torch.rand(3, 3, 64, 64)
    head = ScoringHead(model, bank_product)
    assert (head.bank_product is not None) == bank_product
    assert head.hybrid and head.compact_bank  # the pooling splits the features among the levels
    assert head.retrieves == (0 < neighbours < 5) and head.memory.scales == (2 if window else 1)
    with torch.inference_mode():
        ours = head(model.backbone(images))
    assert torch.allclose(ours, _reference(model, images), atol=1e-4)


def test_inference_graph_patch_output_and_map():
    model = _model().fuse_()
    graph = InferenceGraph(model, Normalization(0.5, 0.1)).eval()
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.inference_mode():
        scores, normalized, maps = graph(images)
        graph.patch_output = True
        _, _, patches = graph(images)
        out = model(images.permute(0, 3, 1, 2).float() / 255.0)
    assert torch.allclose(scores, out.image_scores, atol=2e-5)
    assert torch.allclose(maps, out.anomaly_maps, atol=2e-5)
    assert torch.allclose(patches, out.patch_scores, atol=2e-5)
    assert torch.allclose(normalized, Normalization(0.5, 0.1)(scores))


def test_frame_graph_map_from_the_patch_grid_is_the_resized_map(tmp_path):
    """`wrap_frames` with the score-map matrices gives the map of the network map resized back
    (`framing.map_to_original`), for a frame that is shrunk, enlarged and cut."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from glass_ad.inference import framing, runtime
    from glass_ad.inference.frame_graph import wrap_frames
    from glass_ad.model.glass_model import ScoreMap

    size, grid = 32, 4
    score_map = ScoreMap(grid, size, 4.0)
    # A "network" whose patch grid is the mean of its input over 8×8 blocks.
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["grey"], axes=[3], keepdims=0),
        helper.make_node("Reshape", ["grey", "c_blocks"], ["blocks"]),
        helper.make_node("ReduceMean", ["blocks"], ["patches"], axes=[2, 4], keepdims=0),
        helper.make_node("ReduceMax", ["patches"], ["image_score"], axes=[1, 2], keepdims=0),
        helper.make_node("Identity", ["image_score"], ["normalized_score"]),
    ]
    init = [
        helper.make_tensor("c_blocks", TensorProto.INT64, [5], [-1, grid, size // grid, grid, size // grid]),
    ]
    graph = helper.make_graph(
        nodes, "grid", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["b", size, size, 3])],
        [
            helper.make_tensor_value_info("image_score", TensorProto.FLOAT, ["b"]),
            helper.make_tensor_value_info("normalized_score", TensorProto.FLOAT, ["b"]),
            helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["b", grid, grid]),
        ],
        init,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    matrices = (score_map.matrix.numpy(), score_map.column_matrix.numpy())
    wrapped = wrap_frames(model, size, None, "crop", None, matrices)
    onnx.checker.check_model(wrapped)
    path = tmp_path / "grid.onnx"
    onnx.save(wrapped, str(path))
    session = runtime.session(path)
    rng = np.random.default_rng(0)
    for height, width in ((50, 90), (20, 24), (32, 32)):
        frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        _, _, maps = session.run(None, {"images": frames})
        for frame, frame_map in zip(frames, maps):
            prepared = framing.preprocess(frame, size).astype(np.float32).mean(axis=2)
            patches = prepared.reshape(grid, size // grid, grid, size // grid).mean(axis=(1, 3))
            network_map = score_map(torch.from_numpy(patches)[None].float())[0].numpy()
            expected = framing.map_to_original(network_map, (height, width), size)
            # One grey level of the preprocessing's rounding (in-graph vs numpy) at most, averaged.
            assert np.abs(frame_map - expected).max() <= 1 / 3 + 1e-3

"""`glass benchmark`: where the time goes, for one backbone and image size, on this machine.

Prints backbone-only and full-inference throughput (batch 8 and batch 1), training seconds per
iteration split into backbone / GAS / LAS / rest, and peak RAM. Random inputs: the numbers measure
compute, not accuracy.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np
import torch

from glass_ad.config import GlassConfig
from glass_ad.model.chunking import choose_batch_chunk
from glass_ad.model.glass_model import build_model, resolve_device


def _throughput(fn, batch: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        fn(batch)  # warm-up (allocations, kernel selection)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(batch)
        _sync(batch.device)
        return repeats * len(batch) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MB), on Linux, macOS and Windows (psutil)."""
    import sys

    import psutil

    info = psutil.Process().memory_info()
    peak = getattr(info, "peak_wset", None)  # Windows: peak working set, bytes
    if peak is None:
        try:
            import resource  # POSIX only
        except ImportError:
            return info.rss / 2**20  # no peak available: the current size
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere
    return max(peak, info.rss) / 2**20


def run_benchmark(config: GlassConfig, *, repeats: int = 5, train_iterations: int = 4) -> dict[str, Any]:
    from glass_ad.training.trainer import cpu_threads

    with cpu_threads(config.num_threads):
        return _run_benchmark(config, repeats, train_iterations)


def _run_benchmark(config: GlassConfig, repeats: int, train_iterations: int) -> dict[str, Any]:
    device = resolve_device(config.device)
    model = build_model(config).to(device).eval()
    size = config.image_size
    result: dict[str, Any] = {
        "backbone": config.backbone,
        "image_size": size,
        "input_shape": list(config.input_shape),
        "embed_dim": model.embed_dim,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    # Inference as deployed: affine layers folded (GlassModel.fuse_); training below uses a fresh model.
    import copy

    fused = copy.deepcopy(model).fuse_()
    chunk = choose_batch_chunk(fused, device, 8)  # by the rule `glass train` and `glass test` use
    model.batch_chunk = chunk.size  # and as training does
    result["backbone_chunk"] = chunk.reason

    def backbone_pass(images: torch.Tensor) -> list:  # as deployed: batch norms folded, chunked
        return [fused.backbone(part) for part in images.split(fused.batch_chunk or len(images))]

    for batch_size in (8, 1):
        batch = torch.rand(batch_size, 3, *config.input_shape, device=device)
        backbone = _throughput(backbone_pass, batch, repeats)
        full = _throughput(fused, batch, repeats)
        result[f"backbone_img_s_b{batch_size}"] = backbone
        result[f"inference_img_s_b{batch_size}"] = full
        result[f"inference_vs_backbone_b{batch_size}"] = full / backbone
    result.update(_head_breakdown(fused, config.input_shape, device, repeats))
    result["inference_peak_rss_mb"] = _rss_mb()
    result.update(_training_breakdown(config, model, device, train_iterations))
    result["peak_rss_mb"] = _rss_mb()
    return result


def _head_breakdown(model, shape: tuple[int, int], device, repeats: int, batch_size: int = 8) -> dict[str, float]:
    """Milliseconds per batch of the parts after the backbone: aggregation, A + D, map post-processing."""
    images = torch.rand(batch_size, 3, *shape, device=device)
    with torch.inference_mode():
        maps = model.backbone(images)
        features = model.aggregator(maps)
        scores = model.patch_scores(features)
        parts = {
            "aggregation": lambda _: model.aggregator(maps),
            "discriminator": lambda _: model.patch_scores(features),
            "postprocess": lambda _: model.postprocess(scores),
        }
        # _throughput counts images per second; invert it to milliseconds per batch.
        return {f"head_ms_{name}": 1000 * batch_size / _throughput(fn, images, repeats) for name, fn in parts.items()}


def _training_breakdown(config: GlassConfig, model, device, iterations: int) -> dict[str, float]:
    """Seconds per training iteration, split by branch, with synthetic images and LAS masks: the trainer's
    own optimisers, LAS synthesizer and step (glass_ad.training)."""
    from glass_ad.synthesis.gas import GASSettings
    from glass_ad.synthesis.las import LocalAnomalySynthesizer
    from glass_ad.synthesis.textures import load_textures
    from glass_ad.training.loop import make_optimisation
    from glass_ad.training.step import las_images_per_step, training_step, use_bf16

    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    synthesizer = LocalAnomalySynthesizer.from_config(config, load_textures(config.textures, config.input_shape))
    model.discriminator.train()
    model.adaptor.train()
    optimisation = make_optimisation(model, config)
    settings = GASSettings.from_config(config, "manifold")
    bf16 = use_bf16(config.precision, device, model.embed_dim, config.dsc_hidden)
    centre = torch.zeros(model.num_patches, model.embed_dim, device=device)
    images = torch.rand(config.batch_size, 3, *config.input_shape)
    timings = {"backbone": 0.0, "las": 0.0, "gas": 0.0, "step_total": 0.0}
    for i in range(iterations + 1):
        if i == 1:  # first iteration is warm-up
            timings = {k: 0.0 for k in timings}
        start = time.perf_counter()
        # LAS copies of the batch's first images, as many as the trainer makes.
        synthetic = synthesizer(images[: las_images_per_step(len(images), config)], None, rng)
        timings["las"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            normal = model.features(images.to(device))
        _sync(device)
        if not config.cache_features:  # with the cache (fast recipe) training reads the normal features
            timings["backbone"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            las_features = model.features(synthetic.images.to(device))
        _sync(device)
        timings["backbone"] += time.perf_counter() - start
        start = time.perf_counter()
        training_step(
            model,
            optimisation.optimizers,
            normal,
            las_features,
            synthetic.patch_labels.to(device),
            centre,
            config,
            settings,
            generator,
            bf16,
            timings=timings,
        )
        _sync(device)
        timings["step_total"] += time.perf_counter() - start
    per_it = {k: v / iterations for k, v in timings.items()}
    return {
        "train_s_per_it_backbone": per_it["backbone"],
        "train_s_per_it_las": per_it["las"],
        "train_s_per_it_gas": per_it["gas"],
        "train_s_per_it_rest": per_it["step_total"] - per_it["gas"],
        "train_s_per_it_total": per_it["backbone"] + per_it["las"] + per_it["step_total"],
    }


def _shape_text(result: dict[str, Any]) -> str:
    height, width = result.get("input_shape") or (result["image_size"], result["image_size"])
    return str(height) if height == width else f"{height}×{width}"


def format_benchmark(result: dict[str, Any]) -> str:
    lines = [
        f"backbone {result['backbone']} @ {_shape_text(result)} px, D={result['embed_dim']}, "
        f"{result['device']}, {result['threads']} threads",
    ]
    for b in (8, 1):
        lines.append(
            f"batch {b}: backbone {result[f'backbone_img_s_b{b}']:.1f} img/s, full inference "
            f"{result[f'inference_img_s_b{b}']:.1f} img/s ({100 * result[f'inference_vs_backbone_b{b}']:.0f} % of backbone)"
        )
    if "backbone_chunk" in result:
        lines.append(result["backbone_chunk"])
    lines.append(
        "after the backbone, ms per batch of 8: "
        f"aggregation {result['head_ms_aggregation']:.1f}, adaptor + discriminator {result['head_ms_discriminator']:.1f}, "
        f"upsample + smoothing + max {result['head_ms_postprocess']:.1f}"
    )
    lines.append(
        "training s/iteration: "
        f"backbone {result['train_s_per_it_backbone']:.3f}, GAS {result['train_s_per_it_gas']:.3f}, "
        f"LAS {result['train_s_per_it_las']:.3f}, rest {result['train_s_per_it_rest']:.3f}, "
        f"total {result['train_s_per_it_total']:.3f}"
    )
    lines.append(f"peak RSS: inference {result['inference_peak_rss_mb']:.0f} MB, with training {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# A trained model as deployed: the exported ONNX graph vs the same graph in PyTorch (benchmarks/onnx_vs_torch.py)


def onnx_throughput(
    onnx_path: str | os.PathLike, image_size: int, batch_size: int = 8, repeats: int = 5, threads: int | None = None
) -> float:
    """Images per second of the ONNX model under ONNX Runtime (CPU), after one warm-up batch."""
    from glass_ad.inference.export import INPUT_NAME, onnx_session

    session = onnx_session(onnx_path, threads)
    images = np.random.default_rng(0).integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    feed = {INPUT_NAME: images}
    session.run(None, feed)
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feed)
    return repeats * batch_size / (time.perf_counter() - start)


def torch_throughput(
    run: str | os.PathLike, batch_size: int = 8, repeats: int = 5, device: str | torch.device = "cpu"
) -> float:
    """Images per second of the same graph in PyTorch (uint8 input, as the ONNX model), after a warm-up."""
    from glass_ad.inference.engines import inference_graph
    from glass_ad.model.checkpoint import Checkpoint

    checkpoint = Checkpoint.load(run)
    graph = inference_graph(checkpoint, device)
    images = torch.randint(0, 256, (batch_size, *checkpoint.config.input_shape, 3), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        graph(images)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            graph(images)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    return repeats * batch_size / (time.perf_counter() - start)

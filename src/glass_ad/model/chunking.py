"""How many images the frozen backbone should see per pass on this machine, chosen by measurement.

A pass over a whole batch can cost more than passes over smaller chunks: its large activations are
allocated and freed afresh on every pass, and where the C library returns such buffers to the OS, each pass
page-faults them in again (`python benchmarks/backbone_chunks.py`, Lite2, 8 images: 197 ms at once against
142 ms in chunks of 2 at 288², 669 against 374 ms one at a time at 288×720; the cause measured in
`benchmarks/allocator.py`). The `glass` command keeps freed memory (`glass_ad.allocator`), which removes
most of that; elsewhere, or on another CPU, the balance differs. So the chunk is timed at start-up, as the
training arithmetic is (`training.precision`), and kept only where it clearly beats the whole batch. The
backbone is in eval mode, so images do not interact: the features are the same up to float rounding (a
convolution may round differently for another batch size), and a resumed training keeps its run's choice.
On CUDA the whole batch is always one pass.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

__all__ = ["ChunkChoice", "choose_batch_chunk", "time_chunks", "CANDIDATES"]

CANDIDATES = (1, 2, 4, 8)  # images per backbone pass that are tried, up to the batch size
SPEEDUP_REQUIRED = 1.10  # a chunk must beat the whole batch by this factor (timing noise is a few %)
_MEASURED: dict[tuple, "ChunkChoice"] = {}  # one measurement per backbone, shape, device, threads, batch


@dataclass(frozen=True)
class ChunkChoice:
    size: int | None  # images per backbone pass; None: the whole batch
    reason: str
    ms: tuple[tuple[int, float], ...] = ()  # (chunk, median ms per batch) as measured


def choose_batch_chunk(
    model,
    device: torch.device | str,
    batch_size: int = 8,
    rounds: int = 3,
    fixed: int | None = None,
    why: str = "asked for",
) -> ChunkChoice:
    """Time `model.features` on a random batch in chunks of each candidate size (alternating, `rounds`
    medians) and set `model.batch_chunk` to the fastest; returns the choice and its reason. The
    measurement is cached per backbone, input shape, device and thread count. `fixed` (0: the whole
    batch, N: N images) skips the measurement; `why` says where it came from."""
    device = torch.device(device)
    if fixed is not None:
        size = int(fixed) or None
        choice = ChunkChoice(size, f"backbone: {f'{size} image(s)' if size else 'the whole batch'} per pass ({why})")
    elif device.type != "cpu" or batch_size <= 1:
        choice = ChunkChoice(None, "backbone: the whole batch per pass" + (" (not a CPU)" if device.type != "cpu" else ""))
    else:
        key = (model.backbone.name, model.input_shape, str(device), torch.get_num_threads(), int(batch_size), int(rounds))
        choice = _measure(key, model, device, batch_size, rounds)
    model.batch_chunk = choice.size
    return choice


def time_chunks(model, images: torch.Tensor, sizes, rounds: int = 3) -> dict[int, float]:
    """Median milliseconds of `model.features(images)` in chunks of each size, timed alternately over
    `rounds` rounds after one warm-up round (kernel choice, allocations); `model.batch_chunk` is restored."""
    previous = model.batch_chunk
    times: dict[int, list[float]] = {size: [] for size in sizes}
    try:
        with torch.no_grad():
            for round_ in range(rounds + 1):
                for size in sizes:
                    model.batch_chunk = size
                    start = time.perf_counter()
                    model.features(images)
                    if round_:
                        times[size].append(1000.0 * (time.perf_counter() - start))
    finally:
        model.batch_chunk = previous
    return {size: statistics.median(values) for size, values in times.items()}


def _measure(key: tuple, model, device: torch.device, batch_size: int, rounds: int) -> ChunkChoice:
    if key in _MEASURED:
        return _MEASURED[key]
    sizes = [size for size in CANDIDATES if size < batch_size] + [batch_size]
    with torch.random.fork_rng(devices=[]):  # the training's random stream must not move
        torch.manual_seed(0)
        images = torch.rand(batch_size, 3, *model.input_shape, device=device)
    medians = time_chunks(model, images, sizes, rounds)
    fastest = min(medians, key=medians.get)
    whole = medians[batch_size]
    measured = ", ".join(f"{size}: {medians[size]:.0f}" for size in sizes)
    if fastest < batch_size and whole / medians[fastest] >= SPEEDUP_REQUIRED:
        reason = f"backbone in chunks of {fastest} image(s) (measured ms per {batch_size} images — {measured})"
        size = fastest
    else:
        reason = f"backbone: the whole batch per pass (measured ms per {batch_size} images — {measured})"
        size = None
    _MEASURED[key] = ChunkChoice(size, reason, tuple(medians.items()))
    return _MEASURED[key]

"""How many images the frozen backbone sees per pass: a fixed rule of the settings, or (opt-in) measured.

A pass over a whole batch can cost more than passes over smaller chunks: its large activations are
allocated and freed afresh on every pass, and where the C library returns such buffers to the OS, each pass
page-faults them in again (`python benchmarks/backbone_chunks.py`, Lite2, 8 images: 197 ms at once against
142 ms in chunks of 2 at 288², 669 against 374 ms one at a time at 288×720; the cause measured in
`benchmarks/allocator.py`). The `glass` command keeps freed memory (`glass_ad.allocator`), which removes
most of that; elsewhere, or on another CPU, the balance differs.

A convolution may round differently for another number of images, so the chunk changes the arithmetic:
a choice made by timing would let two runs with the same seed train different models. The default is
therefore a deterministic function of the batch size and the input area (`default_chunk`: at most
`PIXELS_PER_PASS` input pixels per pass, in chunks of 1, 2, 4 or 8 images; 128² and 8 images: the whole
batch; 288²: 2 images; 288×720: 1 image), never of timing. Measuring (`measure=True`) stays available
where only speed matters (the PyTorch inference engine, `glass benchmark`), and a resumed training keeps
its run's choice. On CUDA the whole batch is always one pass.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

__all__ = ["ChunkChoice", "choose_batch_chunk", "default_chunk", "time_chunks", "CANDIDATES", "PIXELS_PER_PASS"]

CANDIDATES = (1, 2, 4, 8)  # images per backbone pass that are tried, up to the batch size
PIXELS_PER_PASS = 2 * 288 * 288  # the default rule's input pixels per backbone pass (benchmarks/backbone_chunks.py)
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
    measure: bool = False,
) -> ChunkChoice:
    """Set `model.batch_chunk` and return the choice with its reason. `fixed` (0: the whole batch, N: N
    images) is taken as given (`why` says where it came from); otherwise the chunk is `default_chunk` of
    the batch size and the model's input shape — the same on every run with the same settings. With
    `measure=True` (speed only: the result then depends on timing) `model.features` is instead timed on a
    random batch in chunks of each candidate size (alternating, `rounds` medians) and the fastest kept;
    the measurement is cached per backbone, input shape, device and thread count."""
    device = torch.device(device)
    if fixed is not None:
        size = int(fixed) or None
        choice = ChunkChoice(size, f"backbone: {f'{size} image(s)' if size else 'the whole batch'} per pass ({why})")
    elif device.type != "cpu" or batch_size <= 1:
        choice = ChunkChoice(None, "backbone: the whole batch per pass" + (" (not a CPU)" if device.type != "cpu" else ""))
    elif not measure:
        size = default_chunk(batch_size, model.input_shape, device)
        what = f"{size} image(s)" if size else "the whole batch"
        choice = ChunkChoice(size, f"backbone: {what} per pass (by batch size and input area)")
    else:
        key = (model.backbone.name, model.input_shape, str(device), torch.get_num_threads(), int(batch_size), int(rounds))
        choice = _measure(key, model, device, batch_size, rounds)
    model.batch_chunk = choice.size
    return choice


def default_chunk(batch_size: int, input_shape, device: torch.device | str = "cpu") -> int | None:
    """Images per backbone pass by rule (None: the whole batch): on a CPU the largest of `CANDIDATES` whose
    pass holds at most `PIXELS_PER_PASS` input pixels (at least one image); elsewhere the whole batch."""
    if torch.device(device).type != "cpu" or batch_size <= 1:
        return None
    height, width = (int(v) for v in input_shape)
    fits = max(1, PIXELS_PER_PASS // max(1, height * width))
    size = max(c for c in CANDIDATES if c <= fits)
    return None if size >= batch_size else size


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

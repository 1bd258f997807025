"""Training arithmetic chosen by measurement on the machine at hand, not by a CPU flag.

bf16 autocast speeds up the adaptor/discriminator work about 3× on CPUs with bf16 matrix units (AMX) and
on recent GPUs, but on a CPU with AVX512-BF16 and no AMX the same step was measured *slower* than float32
(1.18 s vs 0.89 s per iteration). So `precision="auto"` times one discriminator forward + backward pass of
the training's own shape in both precisions and keeps bf16 only when it is clearly faster.

The measurement runs once per process and shape (later runs in the same process reuse it) and leaves the
global random state untouched. The choice is printed and stored with the model; pass `fp32` or `bf16`
explicitly when runs must be bit-for-bit repeatable across processes.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from glass_ad.model.discriminator import Adaptor, Discriminator

__all__ = ["PrecisionChoice", "choose_precision", "bf16_supported"]

SPEEDUP_REQUIRED = 1.15  # bf16 must beat float32 by this factor to be chosen (timing noise is ~±10 %)


@dataclass(frozen=True)
class PrecisionChoice:
    bf16: bool
    reason: str
    fp32_ms: float | None = None
    bf16_ms: float | None = None


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _time_step(adaptor: Adaptor, discriminator: Discriminator, x: torch.Tensor, bf16: bool, repeats: int) -> float:
    def once() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = discriminator(adaptor(x)).float().mean()
        loss.backward()

    once()  # warm-up: kernel selection, weight casts
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


def choose_precision(
    precision: str, device: torch.device, dim: int, hidden: int = 1024, rows: int = 4096, repeats: int = 3
) -> PrecisionChoice:
    """`precision` is "fp32", "bf16" or "auto" (measure: bf16 only where it is supported and faster)."""
    if precision == "fp32":
        return PrecisionChoice(False, "float32 (asked for)")
    if precision == "bf16":
        return PrecisionChoice(True, "bf16 autocast (asked for)")
    if not bf16_supported(device):
        return PrecisionChoice(False, "float32 (no bf16 support on this device)")
    return _measure(str(device), dim, hidden, rows, repeats)


@functools.lru_cache(maxsize=None)
def _measure(device_name: str, dim: int, hidden: int, rows: int, repeats: int) -> PrecisionChoice:
    device = torch.device(device_name)
    with torch.random.fork_rng(devices=[]):  # layer initialisation must not move the training's seed
        torch.manual_seed(0)
        adaptor, discriminator = Adaptor(dim).to(device), Discriminator(dim, hidden).to(device)
        x = torch.randn(rows, dim).to(device)
    fp32 = _time_step(adaptor, discriminator, x, False, repeats)
    bf16 = _time_step(adaptor, discriminator, x, True, repeats)
    chosen = fp32 / bf16 >= SPEEDUP_REQUIRED
    label = "bf16 autocast" if chosen else "float32"
    return PrecisionChoice(chosen, f"{label} (measured: float32 {fp32:.1f} ms, bf16 {bf16:.1f} ms per step)", fp32, bf16)

"""Training arithmetic chosen by the hardware's matrix units, the same on every run of a machine.

bf16 autocast speeds up the adaptor/discriminator work about 3× on CPUs with bf16 matrix units (AMX:
float32 54.9 ms against bf16 19.9 ms per step on MTD) and on GPUs with bf16 support, but on a CPU with
AVX512-BF16 and no AMX the same step was measured *slower* than float32 (1.18 s vs 0.89 s per iteration),
and without either unit bf16 is emulated. So `precision="auto"` uses bf16 exactly where such units exist
(a CUDA device with bf16, or a CPU with AMX tiles) and float32 elsewhere. It used to time one step in both
precisions at start-up, which a busy machine could flip (float32 115 ms against bf16 723 ms in one of two
parallel suite jobs): the same seed then trained a different model. `measure_precision` keeps the timing
for reports. The choice is printed and stored with the model.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

from glass_ad.model.discriminator import Adaptor, Discriminator

__all__ = ["PrecisionChoice", "bf16_matrix_units", "bf16_supported", "choose_precision", "measure_precision"]

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
    """`precision` is "fp32", "bf16" or "auto" (bf16 where the hardware has bf16 matrix units)."""
    if precision == "fp32":
        return PrecisionChoice(False, "float32 (asked for)")
    if precision == "bf16":
        return PrecisionChoice(True, "bf16 autocast (asked for)")
    if not bf16_supported(device):
        return PrecisionChoice(False, "float32 (no bf16 support on this device)")
    if device.type == "cuda":
        return PrecisionChoice(True, "bf16 autocast (a GPU with bf16)")
    if bf16_matrix_units():
        return PrecisionChoice(True, "bf16 autocast (a CPU with AMX bf16 matrix units)")
    return PrecisionChoice(False, "float32 (no bf16 matrix units on this CPU: bf16 is not faster here)")


def bf16_matrix_units() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units), as PyTorch sees them."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


@functools.cache
def measure_precision(device_name: str, dim: int, hidden: int = 1024, rows: int = 4096, repeats: int = 3) -> PrecisionChoice:
    """One adaptor + discriminator step timed in float32 and bf16 (a report: "auto" does not use it)."""
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

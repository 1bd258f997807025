"""Data-parallel training of one model over several processes (`torchrun`, torch.distributed).

Each rank holds the decoded training images and draws the same shuffled order (same seed); every batch is
split across the ranks, each rank runs GAS and LAS on its share with its own random streams, and the
gradients are averaged by `all_reduce` between backward and the update — the arithmetic of
DistributedDataParallel. The wrapper itself is not used: GAS differentiates D with respect to its *inputs*
several times per step, which DDP's per-parameter reduction hooks do not allow. Rank 0 validates and its
record is broadcast, so every rank takes the same model-selection and stopping decisions; rank 0 alone
writes the checkpoint.

`torchrun --nproc-per-node N -m glass_ad train …` starts N ranks; the environment it sets (WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR/PORT) is all this module reads (docs/scale.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def is_main_process() -> bool:
    """Rank 0 of a torchrun group, or a plain single process (read from torchrun's environment before the
    group is joined: the CLI checks, locks and reports only there)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group; `world_size == 1` is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this object created the process group and destroys it in `close`

    @classmethod
    def from_environment(cls, device: str = "auto") -> Distributed:
        """The group described by torchrun's environment variables, joined (gloo on CPU, NCCL on CUDA);
        a single process when WORLD_SIZE is unset or 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            cuda = device != "cpu" and torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl" if cuda else "gloo")
            owns = True
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, owns)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per rank on a node; CPU ranks share the CPU."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, index: np.ndarray) -> np.ndarray:
        """This rank's part of one batch (the ranks' parts differ in size by at most one)."""
        if not self.active:
            return index
        return np.array_split(index, self.world_size)[self.rank]

    def average_gradients(self, module: nn.Module) -> None:
        """Mean of every gradient over the ranks, in one all-reduce of a flat buffer."""
        if not self.active:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def average_buffers(self, module: nn.Module) -> None:
        """Mean of the floating-point buffers (batch-norm running statistics: each rank saw its own share)."""
        if not self.active:
            return
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer /= self.world_size

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (the start of data-parallel training)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def broadcast(self, value: T) -> T:
        """Rank 0's value of any picklable object."""
        if not self.active:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

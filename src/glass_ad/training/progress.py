"""What a run carries from one epoch to the next: its progress record and its random streams.

`Progress` is everything about the run so far that is neither weights nor optimiser state: the history, the
best epoch, the early-stopping state, the arithmetic, the set-up decisions a resume keeps and the run's
clock. The resume state (resume.py) saves and restores it whole. `RandomStreams` are the run's random
streams, seeded in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from glass_ad.model.glass_model import GlassModel
from glass_ad.training.averaging import trainable_state
from glass_ad.training.branch_check import BranchCheck
from glass_ad.training.validation import GAS_TRAINED_AUROC, EarlyStopping


@dataclass
class RandomStreams:
    """The random streams the run draws from, all derived from its seed."""

    order: np.random.Generator  # image order (the same on every rank) and the feature probes
    # LAS anomalies: `order` itself in one process; each rank's own stream in data-parallel training.
    las: np.random.Generator
    generator: torch.Generator  # patch subsets and GAS noise (each rank's own in data-parallel training)

    @classmethod
    def seeded(cls, seed: int, rank: int | None = None) -> RandomStreams:
        """Seed PyTorch's global stream (layer initialisation) and the run's streams; `rank` is given in
        data-parallel training only."""
        torch.manual_seed(seed)
        order = np.random.default_rng(seed)
        if rank is None:
            return cls(order, order, torch.Generator().manual_seed(seed))
        return cls(order, np.random.default_rng([seed, rank]), torch.Generator().manual_seed(seed * 1000 + rank))


@dataclass
class Progress:
    """Where a run stands after its last completed epoch."""

    stopper: EarlyStopping
    started: float  # time.perf_counter() at the run's start; a resume moves it back by the earlier sessions' time
    bf16: bool = False  # the training arithmetic
    backbone_chunk: int = 0  # images per backbone pass (0: the whole batch), kept on resume
    branch_check: BranchCheck | None = None  # GLASS-j's decision, kept on resume
    history: list[dict[str, float]] = field(default_factory=list)  # one record per completed epoch
    best_state: dict[str, torch.Tensor] | None = None  # trainable weights of the best validated epoch
    best_epoch: int = 0
    stopped_by: str = "epochs"  # or "early stopping", "time limit"

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def elapsed_s(self, now: float | None = None) -> float:
        """Seconds of the run at `now` (default: now), earlier sessions of a resumed run included."""
        return (time.perf_counter() if now is None else now) - self.started

    @property
    def gas_trained(self) -> bool:
        """Whether some epoch so far has a trained GAS branch (or GAS is not measured): see `select`."""
        return any(_gas_trained(record) for record in self.history)

    def select(self, epoch: int, scores: dict[str, float], model: GlassModel) -> None:
        """Record epoch `epoch`'s (1-based) validation scores and keep `model`'s weights when it is the best
        epoch so far. An epoch whose GAS is trained (held-out GAS separation at least `GAS_TRAINED_AUROC`)
        beats every epoch whose GAS is not, whatever their scores: the kept model is one whose global branch
        did its job, once any epoch's did (docs/method.md, deviation 6). Among equals the validation
        score decides, as before."""
        score = scores["val_score"]
        self.stopper.update(score)
        kept = self.history[self.best_epoch - 1] if 0 < self.best_epoch <= len(self.history) else None
        trained = _gas_trained(scores)
        if kept is None:
            better = True
        elif trained != _gas_trained(kept):
            better = trained
        else:
            better = score > kept["val_score"] + self.stopper.min_delta
        if better:
            self.best_epoch, self.best_state = epoch, trainable_state(model)


def _gas_trained(record: dict[str, float]) -> bool:
    separation = record.get("val_gas_separation")
    return separation is None or separation >= GAS_TRAINED_AUROC

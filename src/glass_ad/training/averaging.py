"""An exponential moving average of the trained weights (adaptor and discriminator), the model that is
validated, selected and saved when `ema_epochs` > 0.

Why: at the fast recipe's learning rates the discriminator swings from step to step, and so does its
validation score (on MTD the unseen family's patch AP moved between 0.07 and 0.57 from one epoch to the
next), so the epoch kept was partly luck. The average of about the last `ema_epochs` epochs of steps
(decay 1 − 1/steps: 0.98 for MTD's 50 steps per epoch) keeps what the steps agree on. Training itself is
unchanged: the optimisers step the live weights, the average only follows them (torch.optim.swa_utils
does the arithmetic, batch-norm statistics included).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from glass_ad.model.glass_model import GlassModel

TRAINED_PARTS = ("adaptor", "discriminator")


def trainable_state(model: GlassModel) -> dict[str, torch.Tensor]:
    """A copy of what training changes (A and D, batch-norm statistics included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(TRAINED_PARTS)}


class WeightAverage:
    """EMA of `model`'s adaptor and discriminator: ``update()`` after every optimiser step, ``applied()`` to
    evaluate with the averaged weights, ``state()`` for the checkpoint."""

    def __init__(self, model: GlassModel, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"the weight-average decay must lie in [0, 1) (got {decay})")
        self.model = model
        self.decay = float(decay)
        # The parts under the names they have in the model's state dict, so the states are interchangeable.
        self._parts = torch.nn.ModuleDict({name: getattr(model, name) for name in TRAINED_PARTS})
        self._average = AveragedModel(self._parts, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)

    def update(self) -> None:
        """Fold the live weights in (the first call copies them)."""
        self._average.update_parameters(self._parts)

    def state(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like `trainable_state(model)`."""
        return {k: v.detach().clone() for k, v in self._average.module.state_dict().items()}

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model carries the averaged weights inside the block, its live weights again after it."""
        live = trainable_state(self.model)
        self.model.load_state_dict(self.state(), strict=False)
        try:
            yield
        finally:
            self.model.load_state_dict(live, strict=False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """For resuming: the average and how many steps it holds."""
        return {k: v.detach().cpu().clone() for k, v in self._average.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._average.load_state_dict(state)

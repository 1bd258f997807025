"""The trained parts: adaptor A (one linear layer) and discriminator D (patch-wise MLP)."""

from __future__ import annotations

from torch import nn


def _xavier(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)


class Adaptor(nn.Module):
    """A: Linear(D→D) with bias, no activation, Xavier-normal weights."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.apply(_xavier)

    def forward(self, x):
        return self.linear(x)


class Discriminator(nn.Module):
    """D: Linear(D→hidden) → BatchNorm1d → LeakyReLU(0.2) → … → Linear(hidden→1, no bias) → Sigmoid.

    Input: N×D patch vectors (any leading shape is flattened); output: N×1 probabilities of "anomalous".
    """

    def __init__(self, dim: int, hidden: int = 1024, layers: int = 2):
        super().__init__()
        body = []
        width = dim
        for _ in range(layers - 1):
            body += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(nn.Linear(width, 1, bias=False), nn.Sigmoid())
        self.apply(_xavier)

    def forward(self, x):
        return self.tail(self.body(x))

    def first_layer(self, x):
        """The first Linear layer's output: ``D(x) == D.after_first_layer(D.first_layer(x))``. GAS's ascent
        computes it once for the normal vectors, which do not move between its steps."""
        return (self.body[0] if len(self.body) else self.tail[0])(x)

    def after_first_layer(self, h):
        """The rest of D (batch norm, activation, … , sigmoid) applied to the first layer's output `h`."""
        return self.tail(self.body[1:](h)) if len(self.body) else self.tail[1:](h)

    def logits(self, x):
        """The score before the sigmoid (unbounded; no ties at 0 or 1 in float32)."""
        return self.tail[0](self.body(x))

"""Tiny modules written the way model zoos write dropout (no timm/torchvision needed).

Import only after ``require("torch")``. Each module's docstring says which sites it
has; the tests write the expected sites from those definitions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the zoo spelling
from torch import nn
from torch.nn.functional import dropout2d as captured_dropout2d  # bound at import time


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False,
              scale_by_keep: bool = True) -> torch.Tensor:
    """timm's ``drop_path``: one decision per sample, the mask divided before the multiply."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    """timm's ``DropPath`` module."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision's ``stochastic_depth``: "row" (one decision per sample) or "batch" (one)."""
    if not training or p == 0.0:
        return x
    survival_rate = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = torch.empty(size, dtype=x.dtype, device=x.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return x * noise


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth`` module."""

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stochastic_depth(x, self.p, self.mode, self.training)


def legacy_drop_path_class() -> type[nn.Module]:
    """A ``DropPath`` as timm writes it with ``scale_by_keep=False``: ``x * bernoulli(keep)``.

    The kept values are not scaled by 1/keep, so it is not inverted dropout and no
    rewrite rule may take it for SpatialDropout: the export must fall back to eval form.
    (The older ``x / keep * floor(keep + u)`` form converts: rules.floor_mask.)
    """

    class DropPath(nn.Module):
        def __init__(self, drop_prob: float) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1 - self.drop_prob
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            return x * x.new_empty(shape).bernoulli_(keep)

    return DropPath


class Block(nn.Module):
    """Conv + BN; ``F.dropout2d`` bound at import time (p) and ``torch.feature_dropout`` (0.1),
    both gated on the block's flag; the branch goes through ``drop_path`` (a module)."""

    def __init__(self, channels: int, p: float, drop_path_module: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.p = p
        self.drop_path = drop_path_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = captured_dropout2d(y, self.p, self.training)
        y = torch.feature_dropout(y, 0.1, self.training)
        return x + self.drop_path(y)


class ZooNet(nn.Module):
    """A timm-style classifier with every way zoos write dropout.

    Sites, for (N, 3, H, W) input (C = 4 channels):
    - ``blocks.0``: ``F.dropout2d`` 0.2 and ``torch.feature_dropout`` 0.1 (axes 2, 3), timm
      ``DropPath`` 0.2 (axes 1, 2, 3);
    - ``blocks.1``: the same two calls, and a legacy ``DropPath`` 0.25 (left out);
    - ``drop2d``: ``nn.Dropout2d`` 0.15 (axes 2, 3);
    - root: in-place ``F.dropout2d`` 0.05 (axes 2, 3), ``F.dropout1d`` 0.3 on (N, C, L)
      (axis 2), ``torch.dropout`` 0.25, head ``F.dropout(p=self.drop_rate)`` 0.35
      (element-wise), ``F.alpha_dropout`` 0.125 (left out), a dropout under
      ``if self.training:`` (missed);
    - ``alpha``: ``nn.AlphaDropout`` 0.1 (left out).
    """

    def __init__(self, channels: int = 4, classes: int = 5, drop_rate: float = 0.35) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.blocks = nn.ModuleList([
            Block(channels, 0.2, DropPath(0.2)),
            Block(channels, 0.2, legacy_drop_path_class()(0.25)),
        ])
        self.drop2d = nn.Dropout2d(0.15)
        self.alpha = nn.AlphaDropout(0.1)
        self.fc = nn.Linear(channels, classes)
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.drop2d(x)
        x = F.dropout2d(x, 0.05, self.training, inplace=True)
        if self.training:
            x = F.dropout(x, 0.5)
        x = F.dropout1d(x.flatten(2), 0.3, training=self.training).mean(-1)
        x = torch.dropout(x, 0.25, self.training)
        x = F.alpha_dropout(x, 0.125, training=self.training)
        x = self.alpha(x)
        return self.fc(F.dropout(x, p=self.drop_rate, training=self.training))


class Heads(nn.Module):
    """One dropout per output, applied straight to an input, so each mask is visible.

    Inputs: ``x3`` (N, C, L), ``x4`` (N, C, H, W), ``x5`` (N, C, D, H, W), ``cl`` (C, L)
    and ``cdhw`` (C, D, H, W) unbatched, ``tokens`` (N, L, C). The last two outputs
    repeat two earlier calls exactly: each must keep a mask of its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self.d1 = nn.Dropout1d(0.3)
        self.d1_unbatched = nn.Dropout1d(0.35)
        self.d2 = nn.Dropout2d(0.4)
        self.d3 = nn.Dropout3d(0.25)
        self.d3_unbatched = nn.Dropout3d(0.3)
        self.drop_path = DropPath(0.3)
        self.row = StochasticDepth(0.3, "row")
        self.batch = StochasticDepth(0.4, "batch")

    def forward(self, x3: torch.Tensor, x4: torch.Tensor, x5: torch.Tensor, cl: torch.Tensor,
                cdhw: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            self.d1(x3),
            self.d1_unbatched(cl),
            self.d2(x4),
            self.d3(x5),
            self.d3_unbatched(cdhw),
            F.dropout1d(cl, 0.2, self.training),
            F.dropout2d(x4, 0.5, self.training),
            F.dropout3d(x5, 0.4, self.training),
            torch.feature_dropout(x3, 0.2, self.training),
            self.drop_path(tokens),
            self.row(x4),
            self.batch(x4),
            F.dropout(x3, 0.3, self.training),
            F.dropout2d(x4, 0.5, self.training),
            F.dropout(x3, 0.3, self.training),
        )

"""Small building blocks whose parameter names follow MMDetection's (``conv``, ``gn``, ``scale``)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvModule", "Scale", "group_norm_groups"]


def group_norm_groups(channels: int, preferred: int = 32) -> int:
    """MMDetection uses 32 groups; narrower CPU heads fall back to the largest divisor that keeps
    at least two channels per group (one channel per group fails on a 1x1 P7 map)."""
    for g in range(min(preferred, max(channels // 2, 1)), 0, -1):
        if channels % g == 0:
            return g
    return 1


class ConvModule(nn.Module):
    """3x3 (or kxk) conv -> optional GroupNorm -> ReLU; ``activate=False`` stops before the ReLU.

    ``activate=False`` lets a tower be tapped before the ReLU (CrossKD's ``tap='pre_relu'`` option,
    docs/crosskd.md).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, norm: str | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm is None)
        self.norm_name = norm
        if norm == "gn":
            self.gn = nn.GroupNorm(group_norm_groups(out_channels), out_channels)
        elif norm is not None:
            raise ValueError(f"norm must be 'gn' or None, got {norm!r}")

    def forward(self, x: torch.Tensor, activate: bool = True) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_name == "gn":
            x = self.gn(x)
        # In place: conv and GroupNorm backward do not need their outputs, and with activate=True the
        # pre-activation tensor is not returned (the CrossKD tap uses activate=False).
        return F.relu(x, inplace=True) if activate else x


class Scale(nn.Module):
    """A learnable scalar per FPN level (FCOS/ATSS/GFL regression)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

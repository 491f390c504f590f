"""Anchor and point priors laid out as MMDetection lays them (location-major, anchor-minor)."""
from __future__ import annotations

import math

import torch

__all__ = ["AnchorGenerator", "PointGenerator", "anchor_centers", "valid_flags"]


class AnchorGenerator:
    """MMDetection's ``AnchorGenerator`` with ``octave_base_scale``/``scales_per_octave`` or explicit ``scales``.

    Base anchors are centred on (0, 0) and shifted by ``stride * (x, y)``; for each location
    the anchors run ratio-major, scale-minor, matching the head's channel layout.
    """

    def __init__(
        self,
        strides: tuple[int, ...],
        ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        *,
        octave_base_scale: float | None = 4,
        scales_per_octave: int = 3,
        scales: tuple[float, ...] | None = None,
    ) -> None:
        self.strides = tuple(strides)
        if scales is None:
            scales = tuple(octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave))
        self.scales = tuple(scales)
        self.ratios = tuple(ratios)
        self.num_anchors = len(self.scales) * len(self.ratios)

    def base_anchors(self, stride: int) -> torch.Tensor:
        h_ratios = torch.tensor(self.ratios).sqrt()
        w_ratios = 1 / h_ratios
        scales = torch.tensor(self.scales)
        ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], -1)

    def __call__(self, sizes: list[tuple[int, int]], device: torch.device | str = "cpu") -> list[torch.Tensor]:
        out = []
        for (h, w), stride in zip(sizes, self.strides):
            base = self.base_anchors(stride).to(device)
            ys, xs = torch.meshgrid(torch.arange(h, device=device) * stride, torch.arange(w, device=device) * stride, indexing="ij")
            shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float()
            out.append((shifts + base[None]).reshape(-1, 4))
        return out


class PointGenerator:
    """Points at cell centres ``(x + 0.5) * stride`` (MMDetection 3's ``MlvlPointGenerator``)."""

    def __init__(self, strides: tuple[int, ...], offset: float = 0.5) -> None:
        self.strides = tuple(strides)
        self.offset = offset
        self.num_anchors = 1

    def __call__(self, sizes: list[tuple[int, int]], device: torch.device | str = "cpu") -> list[torch.Tensor]:
        out = []
        for (h, w), stride in zip(sizes, self.strides):
            ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            out.append((torch.stack([xs, ys], -1).reshape(-1, 2).float() + self.offset) * stride)
        return out


def anchor_centers(anchors: torch.Tensor) -> torch.Tensor:
    return (anchors[:, :2] + anchors[:, 2:]) * 0.5


def valid_flags(level_sizes: list[tuple[int, int]], strides: tuple[int, ...], num_anchors: int,
                image_size: tuple[int, int], size_divisor: int = 32,
                device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Per level, which priors lie over the image's own extent: MMDetection's ``valid_flags`` with
    the image's ``pad_shape`` (its resized size rounded up to ``size_divisor``). Priors over the
    padding a batch of mixed sizes adds carry no weight in assignment or in any loss
    (docs/crosskd.md, "Padded priors")."""
    pad_h, pad_w = (-(-s // size_divisor) * size_divisor for s in image_size)
    flags = []
    for (h, w), stride in zip(level_sizes, strides):
        vy = torch.arange(h, device=device) < min(math.ceil(pad_h / stride), h)
        vx = torch.arange(w, device=device) < min(math.ceil(pad_w / stride), w)
        flags.append((vy[:, None] & vx[None, :]).reshape(-1, 1).expand(-1, num_anchors).reshape(-1))
    return flags

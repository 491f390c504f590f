"""FPN neck: torchvision's ``FeaturePyramidNetwork`` plus MMDetection's extra-level options.

MMDetection builds P6/P7 with 3x3 stride-2 convs taken either from C5 (``on_input``,
RetinaNet) or from P5 (``on_output``, FCOS/ATSS/GFL), optionally with a ReLU before every
extra conv but the first (``relu_before_extra_convs``, FCOS), or by max-pooling
(``add_extra_convs=False``, Faster R-CNN's P6). The layout maps one to one onto
MMDetection's ``neck.lateral_convs.*`` / ``neck.fpn_convs.*`` (see ``kdzoo.convert``).

Built from the backbone's ``output_shape()`` (``{'c3': ShapeSpec(channels, stride), ...}``), it
gives its own: ``{'p3': ShapeSpec(out_channels, 8), ..., 'p7': ShapeSpec(out_channels, 128)}``,
from which the heads take their strides (detectron2's contract).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from .backbone import ShapeSpec

__all__ = ["FPN", "MMDetExtraLevels"]


class MMDetExtraLevels(ExtraFPNBlock):
    def __init__(self, names: list[str], in_channels: int, out_channels: int, *, source: str | bool, relu_before: bool) -> None:
        super().__init__()
        if source not in ("on_input", "on_output", False):
            raise ValueError(f"add_extra_convs must be 'on_input', 'on_output' or False, got {source!r}")
        self.source = source
        self.relu_before = relu_before
        self.names = list(names)
        num_extra = len(self.names)
        if source:
            chans = [in_channels if source == "on_input" else out_channels] + [out_channels] * (num_extra - 1)
            self.convs = nn.ModuleList(nn.Conv2d(c, out_channels, 3, stride=2, padding=1) for c in chans)

    def forward(self, results: list[torch.Tensor], x: list[torch.Tensor], names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        for i, name in enumerate(self.names):
            if not self.source:
                out = F.max_pool2d(results[-1], 1, stride=2)
            elif i == 0:
                out = self.convs[0](x[-1] if self.source == "on_input" else results[-1])
            else:
                out = self.convs[i](F.relu(results[-1]) if self.relu_before else results[-1])
            results.append(out)
            names.append(name)
        return results, names


class FPN(nn.Module):
    """Top-down FPN on the backbone levels of ``input_shape`` producing ``len(input_shape) + num_extra``
    maps, each extra level at twice the previous stride."""

    def __init__(
        self,
        input_shape: Mapping[str, ShapeSpec],
        out_channels: int = 256,
        *,
        num_extra: int = 2,
        add_extra_convs: str | bool = "on_output",
        relu_before_extra_convs: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.in_features = tuple(input_shape)
        in_channels = [s.channels for s in input_shape.values()]
        strides = [s.stride for s in input_shape.values()]
        strides += [strides[-1] * 2 ** (i + 1) for i in range(num_extra)]
        self._output_shape = OrderedDict((f"p{s.bit_length() - 1}", ShapeSpec(out_channels, s)) for s in strides)
        extra_names = list(self._output_shape)[len(in_channels):]
        extra = MMDetExtraLevels(extra_names, in_channels[-1], out_channels, source=add_extra_convs,
                                 relu_before=relu_before_extra_convs) if num_extra else None
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        # MMDetection initialises every FPN conv with Xavier-uniform and zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def output_shape(self) -> OrderedDict[str, ShapeSpec]:
        """``{'p3': ShapeSpec(out_channels, 8), ...}``: every output level's width and stride."""
        return OrderedDict(self._output_shape)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(s.stride for s in self._output_shape.values())

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.fpn(OrderedDict(zip(self.in_features, feats))).values())

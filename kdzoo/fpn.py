"""FPN neck: torchvision's ``FeaturePyramidNetwork`` plus MMDetection's extra-level options.

MMDetection builds P6/P7 with 3x3 stride-2 convs taken either from C5 (``on_input``,
RetinaNet) or from P5 (``on_output``, FCOS/ATSS/GFL), optionally with a ReLU before every
extra conv but the first (``relu_before_extra_convs``, FCOS), or by max-pooling
(``add_extra_convs=False``, Faster R-CNN's P6). The layout maps one to one onto
MMDetection's ``neck.lateral_convs.*`` / ``neck.fpn_convs.*`` (see ``kdzoo.convert``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

__all__ = ["FPN", "MMDetExtraLevels"]


class MMDetExtraLevels(ExtraFPNBlock):
    def __init__(self, num_extra: int, in_channels: int, out_channels: int, *, source: str | bool, relu_before: bool) -> None:
        super().__init__()
        if source not in ("on_input", "on_output", False):
            raise ValueError(f"add_extra_convs must be 'on_input', 'on_output' or False, got {source!r}")
        self.source = source
        self.relu_before = relu_before
        self.num_extra = num_extra
        if source:
            chans = [in_channels if source == "on_input" else out_channels] + [out_channels] * (num_extra - 1)
            self.convs = nn.ModuleList(nn.Conv2d(c, out_channels, 3, stride=2, padding=1) for c in chans)

    def forward(self, results: list[torch.Tensor], x: list[torch.Tensor], names: list[str]) -> tuple[list[torch.Tensor], list[str]]:
        level = len(names) + 2 if names[0] == "c3" else len(names) + 1
        for i in range(self.num_extra):
            if not self.source:
                out = F.max_pool2d(results[-1], 1, stride=2)
            elif i == 0:
                out = self.convs[0](x[-1] if self.source == "on_input" else results[-1])
            else:
                out = self.convs[i](F.relu(results[-1]) if self.relu_before else results[-1])
            results.append(out)
            names.append(f"p{level + i + 1}")
        return results, names


class FPN(nn.Module):
    """Top-down FPN on backbone levels ``in_channels`` producing ``len(in_channels) + num_extra`` maps."""

    def __init__(
        self,
        in_channels: list[int] | tuple[int, ...],
        out_channels: int = 256,
        *,
        num_extra: int = 2,
        add_extra_convs: str | bool = "on_output",
        relu_before_extra_convs: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        extra = MMDetExtraLevels(num_extra, in_channels[-1], out_channels, source=add_extra_convs,
                                 relu_before=relu_before_extra_convs) if num_extra else None
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra)
        # MMDetection initialises every FPN conv with Xavier-uniform and zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        first = 6 - len(feats)  # C3..C5 -> names c3..c5; C2..C5 -> c2..c5
        named = OrderedDict((f"c{first + i}", f) for i, f in enumerate(feats))
        return list(self.fpn(named).values())

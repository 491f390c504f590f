"""Any timm ``features_only`` model as a detection backbone (C3-C5, or C2-C5 for two-stage)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn

__all__ = ["TimmBackbone", "ShapeSpec"]


@dataclass(frozen=True)
class ShapeSpec:
    channels: int
    stride: int


class TimmBackbone(nn.Module):
    """Wraps ``timm.create_model(name, features_only=True)``.

    * ``strides`` picks the output levels by their reduction (8/16/32 -> C3..C5), read from
      timm's ``feature_info`` so every family (ResNet, ConvNeXt, Swin, EfficientNet ...) fits.
    * NHWC outputs (Swin) are permuted to NCHW.
    * ``frozen_stages``/``norm_eval``/``freeze_norm`` follow MMDetection's ResNet options:
      -1 freezes nothing, 0 the stem, k the stem and the first k stages; ``norm_eval`` keeps
      BatchNorm layers in eval mode while training; ``freeze_norm`` also stops their gradients.
    * ``style='caffe'`` moves the stride-2 of ResNet bottlenecks from the 3x3 to the first 1x1
      conv, as MMDetection's caffe-style ResNets (used by the FCOS checkpoints) do.
    """

    def __init__(
        self,
        name: str,
        *,
        strides: tuple[int, ...] = (8, 16, 32),
        pretrained: bool = False,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        freeze_norm: bool = False,
        style: str = "pytorch",
        **timm_kwargs,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise ValueError(f"Unknown timm backbone {name!r}." + (f" Similar: {', '.join(close)}" if close else ""))
        out_indices = tuple(range(-len(strides), 0))
        try:
            self.body = timm.create_model(name, features_only=True, out_indices=out_indices, pretrained=pretrained, **timm_kwargs)
        except RuntimeError as e:
            if pretrained and ("hub" in str(e).lower() or "connect" in str(e).lower()):
                raise RuntimeError(f"Could not download ImageNet weights for backbone {name!r}: {e}. "
                                   "Set backbone_pretrained=False or make the Hugging Face Hub reachable.") from e
            raise
        info = self.body.feature_info
        got = tuple(info.reduction())
        if got != tuple(strides):
            raise ValueError(f"backbone {name!r} gives feature strides {got}, expected {tuple(strides)}")
        self.name = name
        self.channels = tuple(info.channels())
        self.strides = tuple(strides)
        self.nhwc = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        if style == "caffe":
            self._to_caffe_style()
        elif style != "pytorch":
            raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
        self._freeze(frozen_stages, freeze_norm)

    def output_shape(self) -> OrderedDict[str, ShapeSpec]:
        return OrderedDict((f"c{s.bit_length() - 1}", ShapeSpec(c, s)) for c, s in zip(self.channels, self.strides))

    def _to_caffe_style(self) -> None:
        for block in self.body.modules():
            conv1, conv2 = getattr(block, "conv1", None), getattr(block, "conv2", None)
            if isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d) and hasattr(block, "conv3"):
                if conv2.stride != (1, 1):
                    conv1.stride, conv2.stride = conv2.stride, (1, 1)

    def _units(self) -> list[tuple[str, nn.Module]]:
        """The feature net's modules in execution order, expanded one level where a stage lives
        inside a container (EfficientNet/MobileNet ``blocks.2``)."""
        feature_names = set(self.body.feature_info.module_name())
        units = []
        for name, child in self.body.named_children():
            if any(f.startswith(name + ".") for f in feature_names) and name not in feature_names:
                units += [(f"{name}.{i}", c) for i, c in child.named_children()]
            else:
                units.append((name, child))
        return units

    def _freeze(self, frozen_stages: int, freeze_norm: bool) -> None:
        if frozen_stages >= 0:
            units = self._units()
            names = [n for n, _ in units]

            def unit_index(module_name: str) -> int:
                for candidate in (module_name, module_name.replace(".", "_")):
                    if candidate in names:
                        return names.index(candidate)
                raise ValueError(f"cannot locate stage {module_name!r} in backbone {self.name!r}")

            # Index of the unit ending each stage, keyed by reduction; the stride-4 stage ends right
            # before the first stride-8 unit (true for ResNet, ConvNeXt, Swin, EfficientNet, MobileNet).
            ends = {r: unit_index(m) for r, m in zip(self.body.feature_info.reduction(), self.body.feature_info.module_name())}
            ends.setdefault(4, ends[min(ends)] - 1)
            if frozen_stages == 0:
                stop = ends[4]
            else:
                if 2 ** (frozen_stages + 1) not in ends:
                    raise ValueError(f"frozen_stages={frozen_stages} is deeper than backbone {self.name!r} "
                                     f"(stages end at strides {sorted(ends)})")
                stop = ends[2 ** (frozen_stages + 1)] + 1
            for _, module in units[:stop]:
                for p in module.parameters():
                    p.requires_grad_(False)
        if freeze_norm:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> "TimmBackbone":
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if mode and self.frozen_stages >= 0:
            # Frozen stages also keep their statistics, as MMDetection does.
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return list(feats)

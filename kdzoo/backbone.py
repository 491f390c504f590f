"""Any timm ``features_only`` model as a detection backbone (C3-C5, or C2-C5 for two-stage)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse

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
    * ``out_norms=True`` adds a LayerNorm (over channels) on every output feature, named
      ``norm{i}`` after the feature's stage index ``i`` (``norm1..norm3`` for Swin C3-C5), as
      MMDetection's ``SwinTransformer`` does; timm's ``features_only`` applies no such norm.
    * ``mmdet_windows=True`` (timm Swin only) gives MMDetection's Swin semantics for any input
      size: see :class:`_PadThenShiftSwinBlock`; it also pads the image to the patch size
      (bottom/right, MMDetection's ``AdaptivePadding('corner')``) and builds timm's Swin with
      ``strict_img_size=False`` (masks made per input) and ``always_partition=True`` (window 7 and
      shift 3 in every stage, even where a feature map is no larger than the window).
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
        out_norms: bool = False,
        mmdet_windows: bool = False,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        if mmdet_windows:
            for option, value in (("strict_img_size", False), ("always_partition", True)):
                if timm_kwargs.setdefault(option, value) != value:
                    raise ValueError(f"mmdet_windows=True needs {option}={value}, got {timm_kwargs[option]!r}")
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
        self.mmdet_windows = mmdet_windows
        if mmdet_windows:
            self._to_mmdet_windows()
        # Output norms, named by stage index (MMDetection's ``norm{i}``).
        stages = [int(i) % len(info.info) for i in info.out_indices]
        self.out_norm_names = tuple(f"norm{i}" for i in stages) if out_norms else ()
        for norm_name, c in zip(self.out_norm_names, self.channels):
            self.add_module(norm_name, nn.LayerNorm(c))
        self._freeze(frozen_stages, freeze_norm)

    def output_shape(self) -> OrderedDict[str, ShapeSpec]:
        return OrderedDict((f"c{s.bit_length() - 1}", ShapeSpec(c, s)) for c, s in zip(self.channels, self.strides))

    def _to_mmdet_windows(self) -> None:
        blocks = [m for m in self.body.modules() if isinstance(m, SwinTransformerBlock)]
        if not blocks:
            raise ValueError(f"mmdet_windows=True applies to timm Swin backbones; {self.name!r} has no SwinTransformerBlock")
        for block in blocks:
            if not (block.always_partition and block.dynamic_mask):
                raise ValueError("mmdet_windows=True needs timm's always_partition=True and strict_img_size=False")
            block.__class__ = _PadThenShiftSwinBlock  # same parameters, MMDetection's order of pad and shift
        for m in self.body.modules():
            if isinstance(m, PatchEmbed):
                m.dynamic_img_pad = True  # pad the image bottom/right to the patch size

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
            # An output norm belongs to its stage (MMDetection freezes ``norm{i}`` with stage i).
            for norm_name in self.out_norm_names:
                if int(norm_name[4:]) < frozen_stages:
                    for p in getattr(self, norm_name).parameters():
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
        feats = list(self.body(x))
        if self.out_norm_names:
            norms = [getattr(self, n) for n in self.out_norm_names]
            if self.nhwc:
                feats = [norm(f) for norm, f in zip(norms, feats)]
            else:
                feats = [norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for norm, f in zip(norms, feats)]
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return feats


class _PadThenShiftSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the window attention of MMDetection's ``ShiftWindowMSA`` (and of the
    original Swin detection code): the map is padded (zeros, bottom/right) to a window multiple
    *before* the cyclic shift, and the shifted-window mask is built on the padded size. timm rolls
    the unpadded map and pads afterwards, which moves the wrap-around seam whenever H or W is not a
    window multiple (nearly every detection input, e.g. 200x304 at stride 4 for 800x1216).
    Parameters and state dict are timm's; the window and shift are used as given (no clamping)."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, C = x.shape
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        x = F.pad(x, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        Hp, Wp = x.shape[1], x.shape[2]
        shifted = bool(sh or sw)
        if shifted:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        mask = self.get_attn_mask(x) if shifted else None  # regions of the padded, shifted map
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=mask).view(-1, wh, ww, C)
        x = window_reverse(windows, self.window_size, Hp, Wp)
        if shifted:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x[:, :H, :W, :].contiguous()

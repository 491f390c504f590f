"""The one place where images are normalised, resized (keep ratio) and padded, and where
detections are mapped back to each input image's own coordinates."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DetectionTransform", "ImageBatch", "as_size", "check_images"]

# How far outside 0..1 an image may go (resampling overshoot, noise augmentation) before it is taken
# for a 0..255 or an already normalised image, which would give meaningless detections.
VALUE_TOLERANCE = 0.25


@dataclass
class ImageBatch:
    tensors: torch.Tensor  # [N, 3, H, W], normalised and padded
    image_sizes: list[tuple[int, int]]  # (h, w) after resizing, before padding
    original_sizes: list[tuple[int, int]]
    scale_factors: list[tuple[float, float]]  # (sx, sy) = resized / original


def check_images(images: object) -> None:
    if isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a list of [3, H, W] tensors, got a single tensor of shape "
                        f"{tuple(images.shape)}; pass list(batch) for a batch")
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError(f"images must be a non-empty list of [3, H, W] tensors, got {type(images).__name__}")
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"images[{i}] is a {type(img).__name__}, expected a torch.Tensor [3, H, W]")
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"images[{i}] has shape {tuple(img.shape)}; expected [3, H, W] (3 RGB channels first)")
        if not img.is_floating_point():
            raise TypeError(f"images[{i}] has dtype {img.dtype}; expected a float tensor with values in 0..1")
        if min(img.shape[1:]) < 1:
            raise ValueError(f"images[{i}] is empty: shape {tuple(img.shape)}")
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return  # a value check would be data-dependent control flow in a traced graph
    # every image's (min, max) in one transfer: one device sync per batch, not one per image
    per_image = [torch.stack(torch.aminmax(img.detach())).float() for img in images]
    ranges = torch.stack([r.to(per_image[0].device) for r in per_image]).tolist()
    for i, (lo, hi) in enumerate(ranges):
        if lo < -VALUE_TOLERANCE or hi > 1 + VALUE_TOLERANCE:
            hint = ("already normalised? pass raw RGB in 0..1; the model applies its own mean and std" if lo < -VALUE_TOLERANCE
                    else "read on the 0..255 scale? divide by 255")
            raise ValueError(f"images[{i}] has values in [{lo:.3g}, {hi:.3g}]; expected RGB in 0..1 ({hint})")


def as_size(size: object, name: str = "input_size") -> tuple[int, int]:
    """``(long, short)`` from a pair of positive ints, or ``n`` for ``(n, n)``."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"{name} must be (long, short): two positive ints (or one int for a square), got {size!r}")
    return int(size[0]), int(size[1])


def keep_ratio_size(h: int, w: int, long_side: int, short_side: int) -> tuple[int, int]:
    """MMDetection's ``Resize(keep_ratio=True)``: the largest size within (long, short)."""
    scale = min(long_side / max(h, w), short_side / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


class DetectionTransform(nn.Module):
    """Normalise with mean/std given on the 0..255 scale (as MMDetection's configs give them),
    resize keeping the aspect ratio into ``size = (long, short)`` (a random choice among
    ``train_sizes`` while training: multi-scale), and pad to a multiple of ``size_divisor``."""

    def __init__(
        self,
        *,
        size: tuple[int, int] = (1333, 800),
        train_sizes: list[tuple[int, int]] | None = None,
        mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        std: tuple[float, float, float] = (58.395, 57.12, 57.375),
        bgr: bool = False,
        size_divisor: int = 32,
    ) -> None:
        super().__init__()
        self.size = as_size(size)
        self.train_sizes = [as_size(s, "train_sizes[]") for s in train_sizes] if train_sizes else None
        self.bgr = bgr
        self.size_divisor = size_divisor
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1) / 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1) / 255.0, persistent=False)

    def _target_size(self) -> tuple[int, int]:
        if self.training and self.train_sizes:
            return random.choice(self.train_sizes)
        return self.size

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> tuple[ImageBatch, list[dict] | None]:
        check_images(images)
        resized, sizes, scales = [], [], []
        new_targets = [] if targets is not None else None
        for i, img in enumerate(images):
            img = img.to(self.mean.dtype)  # float64 (numpy) or float16 input to the model's dtype
            h, w = img.shape[-2:]
            long_side, short_side = self._target_size()
            nh, nw = keep_ratio_size(h, w, long_side, short_side)
            if (nh, nw) != (h, w):
                img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            if self.bgr:
                img = img.flip(0)
            resized.append((img - self.mean.to(img)) / self.std.to(img))
            sx, sy = nw / w, nh / h
            sizes.append((nh, nw))
            scales.append((sx, sy))
            if targets is not None:
                t = dict(targets[i])
                t["boxes"] = targets[i]["boxes"] * torch.tensor([sx, sy, sx, sy], device=img.device)
                new_targets.append(t)
        d = self.size_divisor
        max_h = -(-max(s[0] for s in sizes) // d) * d
        max_w = -(-max(s[1] for s in sizes) // d) * d
        batch = resized[0].new_zeros(len(resized), 3, max_h, max_w)
        for b, img in zip(batch, resized):
            b[:, : img.shape[1], : img.shape[2]].copy_(img)
        original = [tuple(img.shape[-2:]) for img in images]
        return ImageBatch(batch, sizes, original, scales), new_targets

    @staticmethod
    def postprocess(detections: list[dict[str, torch.Tensor]], batch: ImageBatch) -> list[dict[str, torch.Tensor]]:
        """Boxes from the resized frame back to each original image, clipped to it."""
        out = []
        for det, (sx, sy), (h, w) in zip(detections, batch.scale_factors, batch.original_sizes):
            boxes = det["boxes"] / det["boxes"].new_tensor([sx, sy, sx, sy])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            out.append({**det, "boxes": boxes})
        return out

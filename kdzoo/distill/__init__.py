"""Distillers: a student detector trained against a frozen teacher (docs/architecture.md, "Distillers").

``build_distiller(method, student, teacher, **options)`` returns an ``nn.Module`` whose
``forward(images, targets)`` gives the student's detection losses plus the weighted
distillation losses (every key prefixed ``loss_``). Methods live one per file and register
themselves with :func:`register_distiller`.

The teacher is deliberately *not* a submodule: it stays out of ``state_dict()``,
``parameters()``, ``train()`` and DDP's parameter broadcast, yet follows ``.to()`` /
``.cuda()`` / ``.half()`` so it always sits on the student's device.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, TypeVar

import torch
import torch.nn as nn

from ..transform import DetectionTransform, ImageBatch

__all__ = ["Distiller", "register_distiller", "build_distiller", "list_distillers", "teacher_inputs"]

_DISTILLERS: dict[str, type["Distiller"]] = {}
D = TypeVar("D", bound=type["Distiller"])


def check_weight(name: str, value: object) -> float:
    """A loss weight (or any scale that must not flip a loss's sign): a finite number >= 0."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (a negative weight maximises its loss), got {value!r}")
    return v


class Distiller(nn.Module):
    """Base class: holds ``student`` (a submodule) and a frozen ``teacher`` (not a submodule).

    Subclasses implement :meth:`forward`. ``state_dict()`` holds the student and any learned
    adapters (what a resume needs); :meth:`student_state_dict` holds the plain student only.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
            raise TypeError(f"student and teacher must be nn.Modules, got {type(student).__name__} "
                            f"and {type(teacher).__name__}")
        if student is teacher:
            raise ValueError("student and teacher are the same object; pass a separate (e.g. deep-copied) teacher")
        t_tensors = {id(t) for t in (*teacher.parameters(), *teacher.buffers())}
        shared = [n for n, t in (*student.named_parameters(), *student.named_buffers()) if id(t) in t_tensors]
        if shared:  # freezing the teacher would freeze these parts of the student too
            raise ValueError(f"student and teacher share {len(shared)} parameter(s)/buffer(s), e.g. {shared[:3]} (a "
                             "module assigned to both, or a shallow copy); the teacher is frozen, so these would stop "
                             "training: give the teacher its own copy (copy.deepcopy)")
        self.student = student
        teacher.eval()
        teacher.requires_grad_(False)
        # A tuple hides the teacher from nn.Module's registration (and so from state_dict,
        # parameters, named_modules, train/eval and DDP).
        self._teacher: tuple[nn.Module] = (teacher,)
        self.progress = 0.0

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm always uses its running statistics
        return self

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> "Distiller":
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def set_progress(self, t: float) -> None:
        """Training progress in [0, 1] for methods with decay schedules; stored, unused by default."""
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {t}")
        self.progress = float(t)

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The plain student's weights (adapters and teacher excluded): loads into a fresh student."""
        return self.student.state_dict()

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def teacher_inputs(batch: ImageBatch, student_transform: DetectionTransform,
                   teacher_transform: DetectionTransform) -> torch.Tensor:
    """The student's padded batch re-normalised for the teacher when their pixel statistics or
    channel order differ (e.g. a caffe-style BGR teacher), so both see the same resized frame
    (priors, RoIs and masks live in it); the padding stays zero as the teacher's transform pads."""
    s, t, x = student_transform, teacher_transform, batch.tensors
    if s.bgr == t.bgr and torch.equal(s.mean, t.mean.to(s.mean)) and torch.equal(s.std, t.std.to(s.std)):
        return x
    raw = x * s.std + s.mean
    if s.bgr != t.bgr:
        raw = raw.flip(1)
    x = (raw - t.mean.to(raw)) / t.std.to(raw)
    mask = torch.zeros_like(x[:, :1])
    for m, (h, w) in zip(mask, batch.image_sizes):
        m[:, :h, :w] = 1
    return x * mask


def register_distiller(name: str) -> Callable[[D], D]:
    """Class decorator: ``@register_distiller('crosskd')``."""
    def wrap(cls: D) -> D:
        if name in _DISTILLERS:
            raise ValueError(f"distiller {name!r} is registered twice")
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"{cls!r} registered as distiller {name!r} must subclass Distiller")
        _DISTILLERS[name] = cls
        return cls
    return wrap


def list_distillers() -> list[str]:
    return sorted(_DISTILLERS)


def build_distiller(method: str, student: nn.Module, teacher: nn.Module, **options: Any) -> Distiller:
    """Wrap ``student`` and a frozen ``teacher`` with the distillation ``method``; ``options``
    are the method's keyword arguments (e.g. CrossKD's ``mode``, ``layer``, loss weights)."""
    if method not in _DISTILLERS:
        close = difflib.get_close_matches(str(method), _DISTILLERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown distillation method {method!r}{hint}; available: {list_distillers()}")
    return _DISTILLERS[method](student, teacher, **options)


# Importing the method modules registers them.
from . import crosskd, tadf  # noqa: E402,F401

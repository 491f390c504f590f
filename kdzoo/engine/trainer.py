"""The training loop (detectron2's ``TrainerBase`` / ``SimpleTrainer``): the loop runs steps, hooks
do everything else (lr schedule, logging, checkpoints, evaluation, final save)."""
from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from ..distributed import is_distributed

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN/inf; the run stops before the bad update."""


class HookBase:
    """Called by :class:`TrainerBase` in the order registered. ``self.trainer`` is set on
    registration; during a step ``trainer.iter`` is the 0-based index of that step."""

    trainer: "TrainerBase"

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class TrainerBase:
    """``train(start_iter, max_iter)``: ``before_train``, then for every iteration ``before_step``,
    :meth:`run_step`, ``after_step``, then ``after_train`` (only when every step succeeded: a run
    that fails writes no final weights).

    A hook may end the run early with :meth:`request_stop` (early stopping): the request is checked
    before each step, so the step in progress finishes with all its hooks, no further step runs, and
    ``after_train`` is called as for a finished run, with ``trainer.iter`` the number of iterations
    done (``max_iter`` when the run was not stopped)."""

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = self.start_iter = self.max_iter = 0
        self.stop_requested = False
        # (path, iteration) of the newest checkpoint, set by the checkpoint hook; named when a run stops.
        self.last_checkpoint: tuple[Path, int] | None = None

    @property
    def hooks(self) -> tuple[HookBase, ...]:
        """The registered hooks, in the order they are called."""
        return tuple(self._hooks)

    def request_stop(self) -> None:
        """End the run after the current step (or before the first one, from ``before_train``)."""
        self.stop_requested = True

    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        for h in hooks:
            if h is not None:
                h.trainer = weakref.proxy(self)  # hooks are owned by the trainer: no reference cycle
                self._hooks.append(h)

    def train(self, start_iter: int, max_iter: int) -> None:
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.stop_requested = False
        self._call("before_train")
        while self.iter < max_iter and not self.stop_requested:
            self._call("before_step")
            self.run_step()
            self._call("after_step")
            self.iter += 1
        self._call("after_train")

    def _call(self, stage: str) -> None:
        for h in self._hooks:
            getattr(h, stage)()

    def run_step(self) -> None:
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """One optimisation step per iteration on ``model(images, targets) -> dict of losses`` (a
    detector, or a distiller giving the student's and the distillation losses). ``scaler`` is a
    GradScaler, disabled when not training fp16 on CUDA (then it passes calls straight through)."""

    def __init__(self, model: nn.Module, data: Iterator[tuple[list[torch.Tensor], list[dict]]],
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *, grad_clip: float | None = None,
                 autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> None:
        super().__init__()
        self.model, self.data, self.optimizer, self.scaler = model, data, optimizer, scaler
        self.grad_clip, self.autocast = grad_clip, autocast
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.losses: dict[str, float] = {}  # the last step's loss terms and their sum ("loss")
        # The last step's diagnostics that are not losses (a distiller's ``step_stats``, e.g. the share of
        # regions TADF's teacher-wins rule keeps): logged beside the losses, never summed into them.
        self.stats: dict[str, float] = {}

    def run_step(self) -> None:
        images, targets = next(self.data)
        with self.autocast():
            losses = self.model(images, targets)
        loss = sum(losses.values())
        self._check_finite(loss, losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            if not self.scaler.is_enabled():  # with a scaler, inf gradients skip the step and lower the scale
                self._check_finite(grad_norm, {"grad_norm": grad_norm})
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.losses = {k: float(v.detach()) for k, v in losses.items()}
        self.losses["loss"] = float(loss.detach())
        source = getattr(self.model, "module", self.model)  # DDP wraps the model
        self.stats = {k: float(v) for k, v in (getattr(source, "step_stats", None) or {}).items()}

    def _check_finite(self, value: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        ok = torch.isfinite(value.detach()).float().reshape(1)
        if is_distributed():  # every rank must stop together
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item() == 1.0:
            return
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())
        where = (f"the last good checkpoint is {self.last_checkpoint[0]} (iteration {self.last_checkpoint[1]}); "
                 "continue from it with --resume" if self.last_checkpoint else "no checkpoint had been written yet")
        raise NonFiniteLossError(f"non-finite value at iteration {self.iter + 1} ({detail}); training stopped before the "
                                 f"update, {where}. Lower schedule.lr, lengthen schedule.warmup_iters or set schedule.grad_clip.")

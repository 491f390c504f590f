"""The hooks of a training run, in the order :func:`kdzoo.engine.default_hooks` registers them:
lr schedule, distillation progress, metrics writer, periodic checkpoint, rank checksum, final
weights, evaluation. Collective operations run on every rank; only rank 0 writes files."""
from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from ..checkpoint import atomic_write, rng_state, save_checkpoint
from ..distributed import is_distributed, rank, world_size
from ..recipe import ScheduleCfg
from .trainer import HookBase

__all__ = ["lr_factor", "MetricsLog", "LRScheduler", "DistillProgress", "MetricsWriter", "PeriodicCheckpointer",
           "RankChecksum", "FinalWeights", "EvalHook"]


def lr_factor(it: int, s: ScheduleCfg, max_iters: int, iters_per_epoch: int) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based): warm-up x (step | cosine)."""
    if s.policy == "step":
        unit = iters_per_epoch if s.epochs is not None else 1
        factor = s.gamma ** sum(it >= m * unit for m in s.steps)
    else:
        factor = s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * it / max_iters))
    if it < s.warmup_iters and s.warmup != "none":
        # MMDetection: LinearLR(start_factor=ratio) ramps to 1 over warmup_iters; ConstantLR holds ratio.
        warm = s.warmup_ratio + (1 - s.warmup_ratio) * it / s.warmup_iters if s.warmup == "linear" else s.warmup_ratio
        factor *= warm
    return factor


class MetricsLog:
    """``metrics.jsonl``, written by rank 0 alone; on resume, records after the checkpoint are
    dropped so the log reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_iter: int | None) -> None:
        self.path = path
        self.enabled = rank() == 0
        if not self.enabled:
            return
        if resume_iter is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("iter", 0) <= resume_iter]
            atomic_write(path, lambda p: p.write_text("".join(f"{line}\n" for line in kept)))
        elif path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(json_safe(record)) + "\n")


def json_safe(obj: Any) -> Any:
    """NaN (pycocotools' "undefined", e.g. APl without large objects) as null: strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class LRScheduler(HookBase):
    """Sets every group's lr to ``initial_lr x lr_factor`` before each step."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: ScheduleCfg, base_lr: float,
                 iters_per_epoch: int) -> None:
        self.optimizer, self.schedule, self.base_lr, self.ipe = optimizer, schedule, base_lr, iters_per_epoch
        self.lr = base_lr  # the base lr of the last step

    def factor(self, it: int) -> float:
        return lr_factor(it, self.schedule, self.trainer.max_iter, self.ipe)

    def before_step(self) -> None:
        factor = self.factor(self.trainer.iter)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor
        self.lr = self.base_lr * factor

    def state_dict(self, it: int) -> dict[str, Any]:
        return {"iteration": it, "base_lr": self.base_lr, "factor": self.factor(it)}


class DistillProgress(HookBase):
    """Training progress in [0, 1] for distillers with decay schedules."""

    def __init__(self, distiller: nn.Module) -> None:
        self.distiller = distiller

    def before_step(self) -> None:
        self.distiller.set_progress(self.trainer.iter / self.trainer.max_iter)


class MetricsWriter(HookBase):
    """Every ``period`` iterations (and at the last): the window's mean losses over ranks, lr and
    throughput to ``metrics.jsonl`` and the progress bar. Time is the steps' own (data, forward,
    backward, update), not checkpoints or evaluations."""

    def __init__(self, log: MetricsLog, lr: LRScheduler, period: int, iters_per_epoch: int, total_batch: int,
                 name: str) -> None:
        self.log, self.lr, self.period, self.ipe, self.total_batch, self.name = log, lr, period, iters_per_epoch, total_batch, name
        self.sums: dict[str, float] = defaultdict(float)
        self.window_iters, self.window_time, self.step_start = 0, 0.0, 0.0

    def before_train(self) -> None:
        from tqdm import tqdm

        t = self.trainer
        self.pbar = tqdm(total=t.max_iter, initial=t.start_iter, disable=not self.log.enabled, dynamic_ncols=True,
                         desc=self.name, mininterval=1.0 if sys.stderr.isatty() else 30.0)

    def before_step(self) -> None:
        self.step_start = time.perf_counter()

    def after_step(self) -> None:
        self.window_time += time.perf_counter() - self.step_start
        self.window_iters += 1
        for k, v in self.trainer.losses.items():
            self.sums[k] += v
        self.pbar.update(1)
        it, max_iter = self.trainer.iter + 1, self.trainer.max_iter
        if it % self.period and it != max_iter:
            return
        means = _mean_across_ranks({k: v / self.window_iters for k, v in self.sums.items()})
        per_iter = self.window_time / self.window_iters
        self.log.write({"iter": it, "epoch": it / self.ipe, "lr": self.lr.lr, **{k: round(v, 5) for k, v in means.items()},
                        "time_per_iter": round(per_iter, 4), "images_per_s": round(self.total_batch / per_iter, 3),
                        "eta_s": round(per_iter * (max_iter - it))})
        self.pbar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{self.lr.lr:.2e}", refresh=False)
        self.sums.clear()
        self.window_iters, self.window_time = 0, 0.0

    def after_train(self) -> None:
        self.pbar.close()


class PeriodicCheckpointer(HookBase):
    """``checkpoint.pt`` every ``period`` iterations and at the end (unless the last one is already
    at the end); every rank's RNG state is gathered, rank 0 writes."""

    def __init__(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 lr: LRScheduler, recipe: dict[str, Any], period: int, resumed_at: int | None) -> None:
        self.path, self.model, self.optimizer, self.scaler, self.lr = path, model, optimizer, scaler, lr
        self.recipe, self.period, self.last = recipe, period, resumed_at

    def before_train(self) -> None:
        if self.last is not None:
            self.trainer.last_checkpoint = (self.path, self.last)

    def after_step(self) -> None:
        it = self.trainer.iter + 1
        if self.period and it % self.period == 0 and it < self.trainer.max_iter:
            self.save(it)

    def after_train(self) -> None:
        if self.last != self.trainer.max_iter:
            self.save(self.trainer.max_iter)

    def save(self, it: int) -> None:
        rngs: list[Any] = [None] * world_size()
        if is_distributed():
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if rank() == 0:
            save_checkpoint(self.path, iteration=it, model=self.model, optimizer=self.optimizer,
                            scheduler=self.lr.state_dict(it), scaler=self.scaler, rngs=rngs, recipe=self.recipe)
        self.last = it
        self.trainer.last_checkpoint = (self.path, it)


class RankChecksum(HookBase):
    """DDP must keep every rank's weights identical; one checksum per rank is recorded as evidence."""

    def __init__(self, model: nn.Module, log: MetricsLog) -> None:
        self.model, self.log = model, log

    def after_train(self) -> None:
        with torch.no_grad():
            local = float(sum(p.double().sum() + p.double().abs().sum() for p in self.model.parameters() if p.requires_grad))
        sums: list[Any] = [None] * world_size()
        dist.all_gather_object(sums, local)
        self.log.write({"iter": self.trainer.max_iter, "rank_weight_checksums": sums})
        if self.log.enabled and len(set(sums)) != 1:
            print(f"warning: ranks ended with different weights (checksums {sums})", file=sys.stderr)


class FinalWeights(HookBase):
    """The plain student's model folder (``model.safetensors``, ``config.json``, ``README.md``) in the
    run directory, written by :func:`kdzoo.hub.save_pretrained` (rank 0)."""

    def __init__(self, state_dict: Callable[[], dict[str, torch.Tensor]], student: nn.Module, run_dir: Path) -> None:
        self.state_dict, self.student, self.run_dir = state_dict, student, run_dir

    def after_train(self) -> None:
        if rank() == 0:
            from ..hub import save_pretrained

            save_pretrained(self.student, self.run_dir, state_dict=self.state_dict())


class EvalHook(HookBase):
    """COCO evaluation every ``period`` iterations (a shard per rank) and at the end, where rank 0
    also writes ``eval.json`` and ``results.json``; :attr:`final` holds the final metrics on rank 0."""

    def __init__(self, evaluate: Callable[[], tuple[dict[str, Any], Any]], log: MetricsLog, period: int,
                 run_dir: Path) -> None:
        self.evaluate, self.log, self.period, self.run_dir = evaluate, log, period, run_dir
        self.final: dict[str, Any] | None = None

    def after_step(self) -> None:
        it = self.trainer.iter + 1
        if self.period and it % self.period == 0 and it < self.trainer.max_iter:
            self._run(it, final=False)

    def after_train(self) -> None:
        self.final = self._run(self.trainer.max_iter, final=True)

    def _run(self, it: int, final: bool) -> dict[str, Any] | None:
        from ..evaluation import format_table, save_results_json

        metrics, results = self.evaluate()
        if not self.log.enabled:
            return None
        headline = {k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        self.log.write({"iter": it, **headline, "per_class": metrics["per_class"]})
        print(f"\n[{self.run_dir}] evaluation at iteration {it}:\n{format_table(metrics)}", file=sys.stderr, flush=True)
        if final:
            save_results_json(self.run_dir / "results.json", results)
            out = {"iter": it, **{k: v for k, v in metrics.items() if k != "summary"}}
            atomic_write(self.run_dir / "eval.json", lambda p: p.write_text(json.dumps(json_safe(out), indent=2)))
        return metrics


def _mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t)}

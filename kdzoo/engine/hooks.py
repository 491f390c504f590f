"""The hooks of a training run, in the order :func:`kdzoo.engine.default_hooks` registers them:
lr schedule, distillation progress, metrics writer, EMA, final weights, evaluation, best
checkpoint, early stopping, periodic checkpoint, rank checksum, TensorBoard. Collective operations
run on every rank; only rank 0 writes files.

Hooks with state that a resume needs (:class:`EMAHook`, :class:`BestCheckpoint`,
:class:`EarlyStopping`) have a ``state_key`` and ``state_dict()`` / ``load_state_dict()``;
:class:`PeriodicCheckpointer` stores their states in ``checkpoint.pt`` under ``"hooks"``."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from ..checkpoint import atomic_write, kept_checkpoint_name, rng_state, save_checkpoint
from ..distributed import is_distributed, rank, world_size
from ..recipe import BestCfg, EarlyStopCfg, EmaCfg, ScheduleCfg
from .trainer import HookBase

__all__ = ["lr_factor", "MetricsLog", "LRScheduler", "DistillProgress", "MetricsWriter", "PeriodicCheckpointer",
           "RankChecksum", "FinalWeights", "EvalHook", "EMAHook", "BestCheckpoint", "EarlyStopping",
           "TensorBoardWriter", "require_tensorboard", "hook_states", "load_hook_states", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"


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
        self.sinks: list[Callable[[dict[str, Any]], None]] = []  # also given every record (TensorBoard)
        if not self.enabled:
            return
        if resume_iter is not None and path.is_file():
            kept = [line for line, record in _read_records(path) if record.get("iter", 0) <= resume_iter]
            atomic_write(path, lambda p: p.write_text("".join(f"{line}\n" for line in kept)))
        elif path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(json_safe(record)) + "\n")
            for sink in self.sinks:
                sink(record)


def _read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of every line of a metrics log. The last line may have been cut off by a kill or a
    full disk mid-append: it is dropped with a warning (it is past the checkpoint anyway); an unreadable
    line before it is an error naming the file and the line."""
    lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    out = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a {type(record).__name__}, not an object")
        except ValueError as e:
            if i == len(lines) - 1:
                print(f"warning: {path}:{n}: dropped an unreadable last record (cut off when the run stopped?): "
                      f"{line[:80]!r}", file=sys.stderr)
                break
            raise RuntimeError(f"{path}:{n}: not a JSON record ({e}); expected one JSON object per line, as "
                               "kdzoo writes them: fix or remove that line to resume") from e
        out.append((line, record))
    return out


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
        self.stat_sums: dict[str, float] = defaultdict(float)
        self.stat_counts: dict[str, int] = defaultdict(int)
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
        for k, v in self.trainer.stats.items():  # window means over the steps that report the stat
            if math.isfinite(v):
                self.stat_sums[k] += v
                self.stat_counts[k] += 1
        self.pbar.update(1)
        it, max_iter = self.trainer.iter + 1, self.trainer.max_iter
        if it % self.period and it != max_iter:
            return
        self._write(it)

    def _write(self, it: int) -> None:
        means = _mean_across_ranks({k: v / self.window_iters for k, v in self.sums.items()})
        means.update(_mean_across_ranks({k: v / self.stat_counts[k] for k, v in self.stat_sums.items()}))
        per_iter = self.window_time / self.window_iters
        self.log.write({"iter": it, "epoch": it / self.ipe, "lr": self.lr.lr, **{k: round(v, 5) for k, v in means.items()},
                        "time_per_iter": round(per_iter, 4), "images_per_s": round(self.total_batch / per_iter, 3),
                        "eta_s": round(per_iter * (self.trainer.max_iter - it))})
        self.pbar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{self.lr.lr:.2e}", refresh=False)
        self.sums.clear()
        self.stat_sums.clear()
        self.stat_counts.clear()
        self.window_iters, self.window_time = 0, 0.0

    def after_train(self) -> None:
        if self.window_iters:  # a run stopped early between two records: its last window
            self._write(self.trainer.iter)
        self.pbar.close()


class PeriodicCheckpointer(HookBase):
    """``checkpoint.pt`` every ``period`` iterations and at the end (unless the last one is already
    at the end, or at the iteration an early-stopped run ended); every rank's RNG state is gathered,
    rank 0 writes, with the states of the stateful hooks (:func:`hook_states`). It runs after the
    evaluation of the same iteration, so the checkpoint holds what that evaluation changed (best
    metric, early-stopping count, the RNG its data loader drew from): a resumed run, which does not
    repeat that evaluation, continues exactly.

    At the iterations in ``keep`` a checkpoint is written whatever the period, and a copy of it is kept
    as :func:`~kdzoo.checkpoint.kept_checkpoint_name` beside ``path``; later checkpoints do not replace it."""

    def __init__(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 lr: LRScheduler, recipe: dict[str, Any], period: int, resumed_at: int | None,
                 keep: Sequence[int] = ()) -> None:
        self.path, self.model, self.optimizer, self.scaler, self.lr = path, model, optimizer, scaler, lr
        self.recipe, self.period, self.last, self.keep = recipe, period, resumed_at, frozenset(keep)

    def before_train(self) -> None:
        if self.last is not None:
            self.trainer.last_checkpoint = (self.path, self.last)
            if self.last in self.keep and not self._kept(self.last).is_file():
                self._keep(self.last)  # resumed from that checkpoint: killed between its save and the copy

    def after_step(self) -> None:
        it = self.trainer.iter + 1
        if ((self.period and it % self.period == 0) or it in self.keep) and it < self.trainer.max_iter:
            self.save(it)

    def after_train(self) -> None:
        if self.last != self.trainer.iter:
            self.save(self.trainer.iter)

    def _kept(self, it: int) -> Path:
        return self.path.with_name(kept_checkpoint_name(it))

    def _keep(self, it: int) -> None:
        if rank() == 0:
            atomic_write(self._kept(it), lambda tmp: shutil.copyfile(self.path, tmp))

    def save(self, it: int) -> None:
        rngs: list[Any] = [None] * world_size()
        if is_distributed():
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if rank() == 0:
            save_checkpoint(self.path, iteration=it, model=self.model, optimizer=self.optimizer,
                            scheduler=self.lr.state_dict(it), scaler=self.scaler, rngs=rngs, recipe=self.recipe,
                            hooks=hook_states(self.trainer.hooks))
        if it in self.keep:
            self._keep(it)
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
        self.log.write({"iter": self.trainer.iter, "rank_weight_checksums": sums})
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
    also writes ``eval.json`` and ``results.json``; :attr:`final` holds the final metrics on rank 0.

    :attr:`latest` is the newest evaluation, ``(iteration, metrics)`` (metrics ``None`` off rank 0),
    and :attr:`count` the number run so far: the hooks after this one (best checkpoint, early
    stopping) read them. When a run stops right after an evaluation (early stopping) that evaluation
    is the final one, the weights being the same: it is not run again. ``keep_results`` keeps the
    detections of the latest evaluation for that (only worth their memory when a run can stop)."""

    def __init__(self, evaluate: Callable[[], tuple[dict[str, Any], Any]], log: MetricsLog, period: int,
                 run_dir: Path, *, keep_results: bool = False,
                 report: Callable[[dict[str, Any], Any], Any] | None = None) -> None:
        self.evaluate, self.log, self.period, self.run_dir = evaluate, log, period, run_dir
        self.keep_results = keep_results
        self.report = report  # called with the final metrics and results (rank 0): the run's report/
        self.final: dict[str, Any] | None = None
        self.latest: tuple[int, dict[str, Any] | None] | None = None
        self.count = 0
        self._results: Any = None

    def after_step(self) -> None:
        it = self.trainer.iter + 1
        if self.period and it % self.period == 0 and it < self.trainer.max_iter:
            self._run(it, final=False)

    def after_train(self) -> None:
        it = self.trainer.iter
        if self.latest is not None and self.latest[0] == it and self.keep_results:
            self.final = self._final_files(it, self.latest[1], self._results)
            if self.log.enabled:
                print(f"[{self.run_dir}] the final evaluation is the one at iteration {it}", file=sys.stderr, flush=True)
        else:
            self.final = self._run(it, final=True)

    def _run(self, it: int, final: bool) -> dict[str, Any] | None:
        from ..evaluation import format_table

        metrics, results = self.evaluate()
        self.count += 1
        self.latest = (it, metrics if self.log.enabled else None)
        self._results = results if self.keep_results and not final else None
        if not self.log.enabled:
            return None
        headline = {k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        self.log.write({"iter": it, **headline, "per_class": metrics["per_class"]})
        print(f"\n[{self.run_dir}] evaluation at iteration {it}:\n{format_table(metrics)}", file=sys.stderr, flush=True)
        return self._final_files(it, metrics, results) if final else metrics

    def _final_files(self, it: int, metrics: dict[str, Any] | None, results: Any) -> dict[str, Any] | None:
        from ..evaluation import save_results_json

        if not self.log.enabled or metrics is None:
            return None
        save_results_json(self.run_dir / "results.json", results)
        out = {"iter": it, **{k: v for k, v in metrics.items() if k != "summary"}}
        atomic_write(self.run_dir / "eval.json", lambda p: p.write_text(json.dumps(json_safe(out), indent=2)))
        if self.report is not None:
            try:
                self.report(metrics, results)
            except (OSError, ValueError, RuntimeError) as e:  # the run's weights and metrics are already safe
                print(f"warning: the evaluation report of {self.run_dir} was not written: {e}", file=sys.stderr)
        return metrics


# --------------------------------------------------------------------------- EMA, best, early stop, TensorBoard
class EMAHook(HookBase):
    """Exponential moving average of the plain student's weights (timm's ``ModelEmaV3``, parameters
    and, unless ``ema.buffers`` is false, buffers), updated after every optimiser step with the
    number of steps so far (the step the decay warm-up reads). :attr:`module` is the averaged
    student; the evaluations and the final weights use it (docs/training.md, "Training hooks").

    Under DDP every rank's student is the same after each step (identical gradients, broadcast
    buffers), so each rank keeps its own EMA, identical too, without communication; rank 0's is
    checkpointed and every rank loads it on resume."""

    state_key = "ema"

    def __init__(self, student: nn.Module, cfg: EmaCfg) -> None:
        from timm.utils import ModelEmaV3

        self.student = student
        self.ema = ModelEmaV3(student, decay=cfg.decay, min_decay=cfg.min_decay, use_warmup=cfg.warmup,
                              warmup_gamma=cfg.warmup_gamma, warmup_power=cfg.warmup_power,
                              exclude_buffers=not cfg.buffers)
        self.ema.module.requires_grad_(False)
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def after_step(self) -> None:
        self.updates += 1
        self.ema.update(self.student, step=self.updates)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.ema.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def _better(value: Any, best: float | None, mode: str, delta: float = 0.0) -> bool:
    """``value`` beats ``best`` by more than ``delta`` (a non-finite value never does)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best + delta if mode == "max" else value < best - delta


class _EvalListener(HookBase):
    """A hook that acts on each new evaluation of an :class:`EvalHook` registered before it."""

    def __init__(self, evals: EvalHook) -> None:
        self.evals = evals
        self._seen = 0

    def _new_eval(self) -> tuple[int, dict[str, Any] | None] | None:
        if self.evals.count == self._seen or self.evals.latest is None:
            return None
        self._seen = self.evals.count
        return self.evals.latest


class BestCheckpoint(_EvalListener):
    """``best.safetensors`` (the plain student's weights, the EMA's when on) and ``best.json``
    ``{iter, metric, value}`` in the run directory, rewritten atomically whenever an evaluation
    (periodic or final) improves ``best.metric``; rank 0. The best value and its iteration are
    checkpointed."""

    state_key = "best"

    def __init__(self, evals: EvalHook, cfg: BestCfg, weights: Callable[[], dict[str, torch.Tensor]],
                 run_dir: Path) -> None:
        super().__init__(evals)
        self.cfg, self.weights, self.run_dir = cfg, weights, run_dir
        self.value: float | None = None
        self.iter: int | None = None

    def before_train(self) -> None:
        if rank() != 0:
            return
        record = self.run_dir / "best.json"
        if self.trainer.start_iter == 0:  # a new run: best files of an attempt killed before its first checkpoint
            for name in ("best.json", "best.safetensors"):
                (self.run_dir / name).unlink(missing_ok=True)
        elif record.is_file():
            try:
                on_disk = int(json.loads(record.read_text())["iter"])
            except (OSError, ValueError, KeyError, TypeError):
                return
            if on_disk > self.trainer.start_iter:
                print(f"warning: {record} is from iteration {on_disk}, after the checkpoint (iteration "
                      f"{self.trainer.start_iter}); it stays until an evaluation of the resumed run beats the "
                      f"checkpoint's best {self.cfg.metric} ({self.value} at iteration {self.iter})", file=sys.stderr)

    def after_step(self) -> None:
        self._check()

    def after_train(self) -> None:
        self._check()

    def _check(self) -> None:
        new = self._new_eval()
        if new is None or new[1] is None:
            return
        it, metrics = new
        value = metrics.get(self.cfg.metric)
        if not _better(value, self.value, self.cfg.mode):
            return
        self.value, self.iter = float(value), it
        self._write(it)

    def _write(self, it: int) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.weights().items()}
        record = {"iter": it, "metric": self.cfg.metric, "value": self.value}
        meta = {"format": "pt", **{k: str(v) for k, v in record.items()}}
        # The weights first, then the record that names them: best.json never points at older weights.
        atomic_write(self.run_dir / "best.safetensors", lambda p: save_file(tensors, str(p), metadata=meta))
        atomic_write(self.run_dir / "best.json", lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
        print(f"[{self.run_dir}] best {self.cfg.metric} so far: {self.value:.2f} at iteration {it} "
              "(best.safetensors)", file=sys.stderr, flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.cfg.metric, "mode": self.cfg.mode, "value": self.value, "iter": self.iter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state.get("metric"), state.get("mode")) != (self.cfg.metric, self.cfg.mode):
            if rank() == 0:
                print(f"note: best.metric/mode changed on resume ({state.get('metric')}/{state.get('mode')} -> "
                      f"{self.cfg.metric}/{self.cfg.mode}): the best is tracked anew from here", file=sys.stderr)
            return
        self.value, self.iter = state.get("value"), state.get("iter")


class EarlyStopping(_EvalListener):
    """Stops the run when ``early_stop.patience`` periodic evaluations in a row have not improved
    ``early_stop.metric`` by more than ``min_delta`` over the best so far. Rank 0 decides (it holds
    the metrics) and tells the others; the stop is recorded in ``metrics.jsonl``
    (``{"iter", "early_stop"}``), printed, and checkpointed, so that ``--resume`` of a stopped run
    reports it complete. The final evaluation of a run that ends on schedule is not counted."""

    state_key = "early_stop"

    def __init__(self, evals: EvalHook, cfg: EarlyStopCfg, log: MetricsLog) -> None:
        super().__init__(evals)
        self.cfg, self.log = cfg, log
        self.best: float | None = None
        self.best_iter: int | None = None
        self.bad = 0  # evaluations since the last improvement
        self.stopped_at: int | None = None

    def before_train(self) -> None:
        if self.stopped_at is not None:  # resumed after the stop, before the run's final files were written
            self.trainer.request_stop()

    def after_step(self) -> None:
        new = self._new_eval()
        if new is None:
            return
        it, metrics = new
        stop = False
        if metrics is not None:
            value = metrics.get(self.cfg.metric)
            if _better(value, self.best, self.cfg.mode, self.cfg.min_delta):
                self.best, self.best_iter, self.bad = float(value), it, 0
            else:
                self.bad += 1
            stop = self.bad >= self.cfg.patience
        if is_distributed():
            flag = [stop]
            dist.broadcast_object_list(flag, src=0)
            stop = bool(flag[0])
        if not stop:
            return
        self.stopped_at = it
        c = self.cfg
        self.log.write({"iter": it, "early_stop": {"metric": c.metric, "best": self.best, "best_iter": self.best_iter,
                                                   "evaluations_without_improvement": self.bad,
                                                   "patience": c.patience, "min_delta": c.min_delta}})
        if self.log.enabled:
            best = "none yet" if self.best is None else f"{self.best:.2f} at iteration {self.best_iter}"
            print(f"early stopping at iteration {it}/{self.trainer.max_iter}: {c.metric} has not improved by more than "
                  f"{c.min_delta} in {self.bad} evaluations (early_stop.patience={c.patience}; best {best})",
                  file=sys.stderr, flush=True)
        self.trainer.request_stop()

    def after_train(self) -> None:
        self._new_eval()  # the final evaluation is not counted

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.cfg.metric, "mode": self.cfg.mode, "best": self.best, "best_iter": self.best_iter,
                "bad": self.bad, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopped_at = state.get("stopped_at")
        if (state.get("metric"), state.get("mode")) != (self.cfg.metric, self.cfg.mode):
            if rank() == 0:
                print(f"note: early_stop.metric/mode changed on resume ({state.get('metric')}/{state.get('mode')} -> "
                      f"{self.cfg.metric}/{self.cfg.mode}): evaluations are counted anew from here", file=sys.stderr)
            return
        self.best, self.best_iter, self.bad = state.get("best"), state.get("best_iter"), int(state.get("bad", 0))


def require_tensorboard() -> None:
    """An ImportError naming the extra to install when ``tensorboard: true`` cannot be honoured."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise ImportError(f"tensorboard: true needs the tensorboard package, which cannot be imported ({e}); "
                          "pip install kdzoo[tensorboard] (or pip install tensorboard), or set tensorboard: false") from None


class TensorBoardWriter(HookBase):
    """Every ``metrics.jsonl`` record as TensorBoard scalars in ``<run_dir>/tensorboard/`` (rank 0):
    ``train/<loss term>`` (each term, a distiller's too), ``train/loss``, ``train/lr``,
    ``train/images_per_s``, ``train/time_per_iter``; ``eval/<metric>`` and
    ``AP_per_class/<class>`` after each evaluation. The step is the iteration. Events after the
    iteration the run starts at are purged (``SummaryWriter``'s ``purge_step``): a resumed run's
    curves read as one run, as its metrics.jsonl does."""

    _TRAIN_KEYS = ("lr", "images_per_s", "time_per_iter")

    def __init__(self, log: MetricsLog, run_dir: Path) -> None:
        self.log, self.dir = log, run_dir / TENSORBOARD_DIR
        self.writer: Any = None

    def before_train(self) -> None:
        if not self.log.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.dir), purge_step=self.trainer.start_iter + 1)
        self.log.sinks.append(self.write)

    def write(self, record: dict[str, Any]) -> None:
        it = record.get("iter")
        if self.writer is None or not isinstance(it, int):
            return
        scalars: dict[str, Any] = {}
        if "loss" in record:
            scalars = {f"train/{k}": v for k, v in record.items() if k.startswith("loss") or k in self._TRAIN_KEYS}
        elif "per_class" in record:
            scalars = {f"eval/{k}": v for k, v in record.items() if k not in ("iter", "per_class")}
            scalars.update({f"AP_per_class/{name}": v for name, v in (record["per_class"] or {}).items()})
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, it)
        if scalars:
            self.writer.flush()

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def hook_states(hooks: Sequence[HookBase]) -> dict[str, Any]:
    """``{state_key: state_dict()}`` of the stateful hooks, for ``checkpoint.pt``."""
    return {h.state_key: h.state_dict() for h in hooks if getattr(h, "state_key", None)}


def load_hook_states(hooks: Sequence[HookBase | None], states: dict[str, Any], source: Path) -> None:
    """Give each stateful hook its state from a checkpoint (``source``, named in warnings)."""
    for h in hooks:
        key = getattr(h, "state_key", None)
        if h is None or not key:
            continue
        if key in states:
            h.load_state_dict(states[key])
        elif key == "ema" and rank() == 0:
            print(f"warning: {source} holds no EMA state; the EMA restarts from the resumed weights", file=sys.stderr)


def _mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t)}

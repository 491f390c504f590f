"""``train(recipe, resume=...)``: build a run from its recipe, then let a :class:`SimpleTrainer` with the
default hooks train it. Nothing is written to the run directory before a checkpoint to resume from
has been read, matched against the recipe and loaded: a refused resume leaves the run as it was."""
from __future__ import annotations

import contextlib
import json
import random
import sys
from pathlib import Path
from typing import Any, ContextManager

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import CHECKPOINT_FILE, kept_checkpoint_name, load_checkpoint, read_checkpoint
from ..distributed import is_distributed, rank, world_size
from ..recipe import Recipe, RecipeError, save_recipe
from . import build as B
from .hooks import (TENSORBOARD_DIR, BestCheckpoint, DistillProgress, EarlyStopping, EMAHook, EvalHook, FinalWeights,
                    LRScheduler, MetricsLog, MetricsWriter, PeriodicCheckpointer, RankChecksum, TensorBoardWriter,
                    load_hook_states, require_tensorboard)
from .trainer import HookBase, SimpleTrainer

__all__ = ["train", "default_hooks", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"


def check_fresh_run_dir(run_dir: Path) -> None:
    """A run that starts at iteration 0 writes model.safetensors, config.json, README.md, results.json ...
    into ``run_dir``: refuse a folder that holds anything but what a run writes before its first
    checkpoint (a run killed that early is restarted), so that a finished run whose checkpoint was
    deleted, or a folder of the user's, is never overwritten."""
    if not run_dir.is_dir():
        return
    restartable = {"recipe.yaml", METRICS_FILE, TENSORBOARD_DIR}
    held = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".") and p.name not in restartable)
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise RecipeError(f"output_dir {str(run_dir)!r} already holds {shown} but no {CHECKPOINT_FILE} to resume "
                          "from; a run starting there would overwrite them: choose another output_dir, or empty it")


def train(recipe: Recipe, *, resume: bool = False) -> dict[str, Any] | None:
    """Train (or continue) the run described by ``recipe``; returns the final metrics on rank 0."""
    if recipe.tensorboard:
        require_tensorboard()
    device = B.device(recipe)
    B.init_distributed(device)
    main_proc = rank() == 0
    run_dir = Path(recipe.output_dir)
    ckpt_path = run_dir / CHECKPOINT_FILE
    if ckpt_path.exists() and not resume:  # checked on every rank so that all of them stop
        raise RecipeError(f"output_dir {str(run_dir)!r} already holds a run ({CHECKPOINT_FILE}); pass --resume "
                          "to continue it, or choose another output_dir")
    state = read_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if state is not None:
        B.check_resume(recipe, state, ckpt_path)
    else:
        check_fresh_run_dir(run_dir)
    B.ensure_data(recipe)
    parts = B.build_run(recipe, device)

    s = recipe.schedule
    ipe = B.iters_per_epoch(len(parts.train_ds), recipe.batch_size)
    max_iters = s.iters if s.iters is not None else s.epochs * ipe
    if recipe.keep_checkpoints and recipe.keep_checkpoints[-1] > max_iters:
        raise RecipeError(f"keep_checkpoints: iteration {recipe.keep_checkpoints[-1]} is past the end of the "
                          f"schedule ({s.epochs} epochs of {ipe} iterations = {max_iters})")
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.amp and device.type == "cuda")
    start_iter, resumed_at = 0, None
    hook_state: dict[str, Any] = {}
    if state is not None:
        start_iter = resumed_at = load_checkpoint(state, ckpt_path, parts.model, parts.optimizer, scaler,
                                                  rank(), world_size())
        hook_state = state.get("hooks") or {}
        del state  # the weights now live in the model and the optimizer (the EMA's, in hook_state)
        if main_proc:
            print(f"resuming {run_dir} from iteration {start_iter}/{max_iters}", file=sys.stderr)
            missed = [k for k in recipe.keep_checkpoints
                      if k < start_iter and not (run_dir / kept_checkpoint_name(k)).is_file()]
            if missed:
                print(f"warning: keep_checkpoints {missed}: the run is already at iteration {start_iter}, "
                      "past them; their checkpoints were not kept and cannot be any more", file=sys.stderr)
    else:
        random.seed(recipe.seed + rank())
        np.random.seed(recipe.seed + rank())
        torch.manual_seed(recipe.seed + rank())
        if resume and main_proc:
            print(f"--resume: no checkpoint in {run_dir} yet, starting from iteration 0", file=sys.stderr)
    if main_proc:  # the resume (if any) is accepted: from here on the run directory is written
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.tmp"):  # left by a kill during an atomic write
            stale.unlink(missing_ok=True)
        save_recipe(recipe, run_dir / "recipe.yaml")
        files = [METRICS_FILE, CHECKPOINT_FILE] + [f"{TENSORBOARD_DIR}/"] * recipe.tensorboard
        print(f"run directory: {run_dir.resolve()} ({', '.join(files)})", file=sys.stderr)
    log = MetricsLog(run_dir / METRICS_FILE, start_iter if resume else None)

    # A run that stopped early is complete while early stopping is on; with early_stop: null it trains on.
    stopped_at = (hook_state.get("early_stop") or {}).get("stopped_at") if recipe.early_stop is not None else None
    final_eval = run_dir / "eval.json"
    if (start_iter == max_iters or stopped_at == start_iter) and final_eval.is_file() \
            and (run_dir / "model.safetensors").is_file():
        # --resume of a finished run (e.g. `make run` again): nothing to train or to evaluate.
        if not main_proc:
            return None
        from ..evaluation import format_table

        metrics = json.loads(final_eval.read_text())
        how = f"{max_iters} iterations" if start_iter == max_iters else \
            f"stopped early at iteration {start_iter} of {max_iters} (early_stop)"
        print(f"{run_dir} is complete ({how}):\n{format_table(metrics)}", file=sys.stderr)
        return metrics

    # Built before the DDP wrapper, so that the EMA copies the plain student.
    hooks = default_hooks(recipe, parts, scaler, log, device, resumed_at)
    if resumed_at is not None:
        load_hook_states(hooks, hook_state, ckpt_path)
    del hook_state
    model = parts.model
    if is_distributed():
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=parts.distiller is not None)
    def autocast() -> ContextManager[Any]:
        if not recipe.amp:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)

    trainer = SimpleTrainer(model, B.train_batches(parts.train_ds, recipe, start_iter, device), parts.optimizer, scaler,
                            grad_clip=s.grad_clip, autocast=autocast)
    trainer.register_hooks(hooks)
    trainer.train(start_iter, max_iters)
    if is_distributed():
        dist.barrier()
    return next(h for h in hooks if isinstance(h, EvalHook)).final


def default_hooks(recipe: Recipe, parts: B.RunParts, scaler: torch.amp.GradScaler, log: MetricsLog,
                  device: torch.device, resumed_at: int | None) -> list[HookBase | None]:
    """lr schedule, distillation progress (distillers only), metrics writer, EMA (``ema``), final
    weights, evaluation (its ``final`` is the run's result), best checkpoint (``best``), early
    stopping (``early_stop``), periodic checkpoint, rank checksum (DDP only), TensorBoard
    (``tensorboard``); None where a hook does not apply.

    The order matters: the EMA is updated before anything reads it; the hooks that act on an
    evaluation come right after it; the checkpoint follows them, so it holds their state; the
    TensorBoard writer closes last, after the final records."""
    from .. import evaluation

    run_dir = Path(recipe.output_dir)
    ipe = B.iters_per_epoch(len(parts.train_ds), recipe.batch_size)
    lr = LRScheduler(parts.optimizer, recipe.schedule, parts.base_lr, ipe)
    ema = EMAHook(parts.student, recipe.ema) if recipe.ema is not None else None
    # With EMA on, the run's result is the averaged student: evaluations, best and final weights use it.
    evaluated = ema.module if ema is not None else parts.student
    weights = ema.module.state_dict if ema is not None else parts.student_state_dict

    def run_eval() -> tuple[dict[str, Any], Any]:
        return evaluation.evaluate(evaluated, parts.val_ds, batch_size=recipe.eval_batch_size, workers=recipe.workers,
                                   device=device, progress=rank() == 0)

    def report(metrics: dict[str, Any], results: Any) -> None:
        from ..report import write_run_report

        info = write_run_report(run_dir, parts.val_ds, results, metrics)
        print(f"[{run_dir}] evaluation report in {Path(info['out_dir'])}"
              + (f" ({info['note']})" if info.get("note") else ""), file=sys.stderr)

    evals = EvalHook(run_eval, log, recipe.eval_interval, run_dir, keep_results=recipe.early_stop is not None,
                     report=report if recipe.report else None)
    return [
        lr,
        DistillProgress(parts.distiller) if parts.distiller is not None else None,
        MetricsWriter(log, lr, recipe.log_interval, ipe, recipe.batch_size * world_size(), run_dir.name),
        ema,
        FinalWeights(weights, parts.student, run_dir),
        evals,
        BestCheckpoint(evals, recipe.best, weights, run_dir) if recipe.best is not None else None,
        EarlyStopping(evals, recipe.early_stop, log) if recipe.early_stop is not None else None,
        PeriodicCheckpointer(run_dir / CHECKPOINT_FILE, parts.model, parts.optimizer, scaler, lr, recipe.to_dict(),
                             recipe.checkpoint_interval, resumed_at, keep=recipe.keep_checkpoints),
        RankChecksum(parts.model, log) if is_distributed() else None,
        TensorBoardWriter(log, run_dir) if recipe.tensorboard else None,
    ]

"""The training engine: ``python -m kdzoo.train RECIPE [key.sub=value ...] [--resume]``.

One process, or data-parallel under ``torchrun`` (DDP: NCCL on GPUs, gloo on CPU). A run
directory (``output_dir``) receives:

- ``recipe.yaml``: the resolved recipe (overrides applied);
- ``metrics.jsonl``: one JSON object per logged iteration / evaluation;
- ``checkpoint.pt``: the latest checkpoint (model, optimizer, schedule, scaler, iteration,
  every rank's RNG state), written atomically every ``checkpoint_interval`` iterations and at
  the end, so ``--resume`` after a kill -9 continues at the checkpoint's iteration;
- ``model.safetensors`` + ``config.json``: the final weights and how to rebuild the model
  (``kdzoo.eval.load_run_dir``); for a distillation run, the plain student;
- ``eval.json`` (metrics, per-class AP) and ``results.json`` (COCO detections).

Every file is written with the mode the user's umask gives (``0644`` under umask ``022``).

``--resume`` continues only the run the checkpoint belongs to: the resolved recipe is compared with
the one stored in the checkpoint (or, for an older checkpoint, the run's ``recipe.yaml``), and a
change to a key that alters the run (model, data, schedule, batch size, seed, amp, teacher, distill)
is refused with the changed keys, before anything in the run directory is written. Keys in
:data:`kdzoo.recipe.RESUME_SAFE_KEYS` (``log_interval``, ``workers``, ``output_dir`` ...) may change.

Learning rate: the recipe's ``schedule.lr`` is used as given, unless ``schedule.base_batch_size``
is set; then it is scaled linearly to the total batch ``batch_size x processes`` (Goyal et al.,
MMDetection's ``auto_scale_lr``): lr 0.01 for base 16 on 2 processes x batch 4 gives 0.005.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import random
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .data.coco import CocoDetection, check_images, collate_fn
from .dist import is_distributed, rank, world_size
from .eval import CONFIG_FILE, WEIGHTS_FILE, evaluate
from .evaluation import format_table, save_results_json
from .pretrained import load_state_dict_checked, read_weights_file
from .recipe import (RESUME_SAFE_KEYS, Recipe, RecipeError, ScheduleCfg, current_umask, format_value, load_recipe,
                     resume_changes, save_recipe)
from .registry import create_detector

__all__ = ["train", "lr_factor", "build_optimizer", "NonFiniteLossError", "WeightsUnavailableError",
           "CheckpointError", "main", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN/inf; the run stops before the bad update."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights the recipe asks for cannot be loaded (no network, no cache)."""


class CheckpointError(RuntimeError):
    """A checkpoint (the run's own, or the teacher's) cannot be read or does not fit the model."""


# --------------------------------------------------------------------------- schedule
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


def build_optimizer(model: nn.Module, s: ScheduleCfg, lr: float) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; biases get MMDetection's ``bias_lr_mult`` /
    ``bias_decay_mult`` (FCOS trains biases at 2x lr without decay)."""
    groups: dict[bool, list[nn.Parameter]] = defaultdict(list)
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[name.endswith(".bias")].append(p)
    params = [
        {"params": ps, "lr": lr * (s.bias_lr_mult if is_bias else 1.0),
         "weight_decay": s.weight_decay * (s.bias_decay_mult if is_bias else 1.0)}
        for is_bias, ps in sorted(groups.items())
    ]
    if not params:
        raise ValueError("the model has no trainable parameters (check frozen_stages / freeze_norm)")
    if s.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, betas=(s.momentum, 0.999), weight_decay=s.weight_decay)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


# --------------------------------------------------------------------------- files
def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same directory, fsync, then rename over ``path``:
    a kill at any moment leaves either the old or the new file, never a truncated one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(state_dict: dict[str, torch.Tensor], model: nn.Module, run_dir: Path) -> None:
    """``model.safetensors`` + ``config.json`` {architecture, kwargs, pretrained_cfg}."""
    from safetensors.torch import save_file

    from .hub import run_config

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    _atomic_write(run_dir / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    # The run's own weights: no published AP or input size of the architecture's default tag.
    text = json.dumps(run_config(model), indent=2, default=list)

    def write(p: str) -> None:
        Path(p).write_text(text)

    _atomic_write(run_dir / CONFIG_FILE, write)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        # Kept as tensors/ints so the checkpoint loads with weights_only=True.
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class MetricsLog:
    """JSON lines, appended by rank 0; on resume, records after the checkpoint are dropped so
    the log reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_iter: int | None) -> None:
        self.path = path
        if resume_iter is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("iter", 0) <= resume_iter]
            _atomic_write(path, lambda p: Path(p).write_text("".join(f"{line}\n" for line in kept)))
        elif path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_json_safe(record)) + "\n")


def _json_safe(obj: Any) -> Any:
    """NaN (pycocotools' "undefined", e.g. APl without large objects) as null: strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- building
def _device(recipe: Recipe) -> torch.device:
    if recipe.device == "cuda" or (recipe.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RecipeError("device: 'cuda' was asked for but CUDA is not available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _build_student(recipe: Recipe, train_ds: CocoDetection) -> nn.Module:
    m, d = recipe.model, recipe.data
    kwargs = dict(m.kwargs)
    given = kwargs.setdefault("num_classes", train_ds.num_classes)
    if given != train_ds.num_classes:
        raise RecipeError(f"model.kwargs.num_classes is {given} but the training annotations have "
                          f"{train_ds.num_classes} categories ({', '.join(train_ds.categories[:10])} ...)")
    if d.input_size is not None:
        kwargs["input_size"] = tuple(d.input_size)
    if d.train_sizes is not None:
        kwargs["train_sizes"] = [tuple(s) for s in d.train_sizes]
    overlay = {"num_classes": train_ds.num_classes, "categories": tuple(train_ds.categories),
               "category_ids": tuple(train_ds.label_to_cat_id)}
    try:
        return create_detector(m.name, pretrained=m.pretrained, pretrained_cfg_overlay=overlay, **kwargs)
    except (OSError, RuntimeError) as e:
        if kwargs.get("backbone_pretrained") or m.pretrained:
            raise WeightsUnavailableError(
                f"model {m.name!r}: could not load pretrained weights ({type(e).__name__}: {e}). "
                "The Hugging Face Hub is probably unreachable and the weights are not in the local cache; "
                "download them where there is network (they are cached under HF_HOME), or train from scratch "
                "with model.kwargs.backbone_pretrained=false. Set HF_HUB_OFFLINE=1 to fail at once instead of retrying."
            ) from e
        raise


def _build_teacher(recipe: Recipe, num_classes: int) -> nn.Module:
    t = recipe.teacher
    assert t is not None
    ckpt = Path(t.checkpoint) if t.checkpoint else None
    if ckpt is not None and ckpt.is_dir():
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (ckpt / name).is_file():
                raise FileNotFoundError(f"teacher.checkpoint: {ckpt} is not a finished kdzoo run directory: {name} "
                                        f"is missing (expected {CONFIG_FILE} + {WEIGHTS_FILE}, written at the end of kdzoo.train)")
        teacher = create_detector(f"local-dir:{ckpt}", pretrained=False, **t.kwargs)
        if t.name and teacher.arch_name != t.name.partition(".")[0]:
            raise RecipeError(f"teacher.name is {t.name!r} but the run directory {ckpt} holds a {teacher.arch_name!r}")
        weights = ckpt / WEIGHTS_FILE
        try:
            state = read_weights_file(weights)
        except ValueError as e:
            raise CheckpointError(f"teacher checkpoint {weights} (teacher.checkpoint) cannot be read: {e}. "
                                  "Retrain or restore the teacher run.") from e
        if not _fits(teacher, state):
            _mismatch(teacher, state, f"the teacher checkpoint {weights} (teacher.checkpoint)",
                      f"the teacher is built from {ckpt / CONFIG_FILE}, a {teacher.arch_name!r}")
        teacher.load_state_dict(state)
    elif ckpt is not None:  # a bare weights file: its head is assumed to be the dataset's size unless told
        kwargs = dict(t.kwargs)
        kwargs.setdefault("num_classes", num_classes)
        try:
            teacher = create_detector(t.name, pretrained=True, pretrained_cfg_overlay={"file": str(ckpt)}, **kwargs)
        except (RuntimeError, ValueError) as e:
            # load_pretrained's message names the architecture but neither the file nor its role.
            raise CheckpointError(f"the teacher checkpoint {ckpt} (teacher.checkpoint) does not load into "
                                  f"teacher.name {t.name!r}: {e}") from e
    else:
        teacher = create_detector(t.name, pretrained=True, **t.kwargs)
    if teacher.num_classes != num_classes:
        raise RecipeError(f"the teacher predicts {teacher.num_classes} classes but the dataset has {num_classes}")
    return teacher


def _fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return set(own) == set(state) and all(tuple(own[k].shape) == tuple(state[k].shape) for k in own)


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor], source: str, built_from: str) -> None:
    """Raise a CheckpointError with ``source`` (the file and whose checkpoint it is) and
    load_state_dict_checked's summary of the missing, unexpected and mis-shaped keys."""
    try:
        load_state_dict_checked(model, state, source=source)
    except RuntimeError as e:
        raise CheckpointError(f"{e}\n  ({built_from}; was the file written by another architecture or width?)") from None
    raise AssertionError("unreachable: the state was checked not to fit")


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The run's checkpoint, or a CheckpointError naming the file and what to do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # readable, but it holds objects a weights-only load refuses
        raise CheckpointError(
            f"{path} is not a checkpoint kdzoo.train can resume from: a weights-only load refuses it "
            f"({_first_sentence(e)}). Restore the run's own checkpoint, or delete it to restart the run "
            "from iteration 0.") from None
    except Exception as e:  # zip, pickle and EOF errors come in many types
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be resumed from ({type(e).__name__}: {_first_sentence(e)}). "
            f"Restore it from a copy, or delete it to restart the run from iteration 0 (run again with --resume).") from e
    missing = [k for k in ("model", "optimizer", "iteration", "rng") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a kdzoo.train checkpoint (no {', '.join(missing)}); restore the run's "
                              "checkpoint or delete it to restart the run from iteration 0")
    return state


def _first_sentence(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return text.split(". ")[0].rstrip(".") or type(error).__name__


def _check_resume_recipe(recipe: Recipe, state: dict[str, Any], ckpt_path: Path) -> None:
    """Refuse to resume ``ckpt_path`` with a recipe that changes the run it belongs to."""
    stored, origin = state.get("recipe"), ""
    if not isinstance(stored, dict):  # written before checkpoints carried their recipe
        saved = ckpt_path.parent / "recipe.yaml"
        try:
            stored, origin = yaml.safe_load(saved.read_text()), f" (as recorded in {saved})"
        except (OSError, yaml.YAMLError):
            stored = None
    if not isinstance(stored, dict):
        if rank() == 0:
            print(f"warning: neither {ckpt_path} nor recipe.yaml next to it records the run's recipe; "
                  "the resumed recipe cannot be checked against it", file=sys.stderr)
        return
    changes = resume_changes(stored, recipe)
    if changes:
        lines = "\n".join(f"  {key}: {format_value(old)} -> {format_value(new)}" for key, old, new in changes)
        raise RecipeError(
            f"--resume: the recipe changes the run that {ckpt_path} belongs to{origin}:\n{lines}\n"
            f"Resume with the recorded values, or start a new run in another output_dir. Only "
            f"{', '.join(sorted(RESUME_SAFE_KEYS))} may change on resume.")


def _init_distributed(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))


def _epoch_batches(n: int, recipe: Recipe, epoch: int, skip: int) -> list[list[int]]:
    """This rank's batches for ``epoch`` (DistributedSampler's shuffle, seeded by the recipe's
    seed and the epoch), minus the first ``skip`` that were trained before a resume."""
    sampler = DistributedSampler(range(n), num_replicas=world_size(), rank=rank(), shuffle=True, seed=recipe.seed)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    bs = recipe.batch_size
    return [idx[i:i + bs] for i in range(0, len(idx), bs)][skip:]


def _iters_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(math.ceil(n / world_size()) / batch_size)


def _ensure_data(recipe: Recipe) -> None:
    if recipe.data.shapes is not None:
        if rank() == 0:
            from .data.shapes import ensure_shapes

            ensure_shapes(recipe.data.root, **dataclasses.asdict(recipe.data.shapes))
        if is_distributed():
            dist.barrier()
    recipe.check_paths()


# --------------------------------------------------------------------------- the loop
def train(recipe: Recipe, *, resume: bool = False) -> dict[str, Any] | None:
    """Train (or continue) the run described by ``recipe``; returns the final metrics on rank 0."""
    device = _device(recipe)
    _init_distributed(device)
    main_proc = rank() == 0
    run_dir = Path(recipe.output_dir)
    ckpt_path = run_dir / CHECKPOINT_FILE
    if ckpt_path.exists() and not resume:  # checked on every rank so that all of them stop
        raise RecipeError(f"output_dir {str(run_dir)!r} already holds a run ({CHECKPOINT_FILE}); pass --resume "
                          "to continue it, or choose another output_dir")
    # Nothing is written to the run directory before the checkpoint has been read, matched against
    # the recipe and loaded: a refused resume leaves the run exactly as it was.
    state = _read_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if state is not None:
        _check_resume_recipe(recipe, state, ckpt_path)
    _ensure_data(recipe)

    d = recipe.data
    train_ds = CocoDetection(d.path("train_images"), d.path("train_ann"), train=True, flip_prob=d.flip,
                             filter_empty=d.filter_empty)
    val_ds = CocoDetection(d.path("val_images"), d.path("val_ann"), train=False)
    if len(train_ds) == 0:
        raise RecipeError(f"data.train_ann: {d.path('train_ann')} has no training image with a usable box")
    if val_ds.categories != train_ds.categories:
        raise RecipeError(f"data.val_ann: categories {val_ds.categories} differ from the training ones {train_ds.categories}")
    check_images(train_ds, val_ds)  # every image file reads: a bad one stops the run here, not midway

    torch.manual_seed(recipe.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    student = _build_student(recipe, train_ds)
    model: nn.Module = student
    if recipe.distill is not None:
        from .distill import build_distiller  # written by the distillation issues; only needed here

        teacher = _build_teacher(recipe, train_ds.num_classes)
        model = build_distiller(recipe.distill.method, student, teacher, **recipe.distill.options)
    model.to(device).train()

    s = recipe.schedule
    ipe = _iters_per_epoch(len(train_ds), recipe.batch_size)
    max_iters = s.iters if s.iters is not None else s.epochs * ipe
    total_batch = recipe.batch_size * world_size()
    base_lr = s.lr * (total_batch / s.base_batch_size if s.base_batch_size else 1.0)
    optimizer = build_optimizer(model, s, base_lr)
    amp = recipe.amp
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    autocast = (lambda: torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)) \
        if amp else contextlib.nullcontext

    start_iter, last_ckpt_iter = 0, None
    if state is not None:
        _load_model_state(model, state["model"], ckpt_path)
        try:
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"the optimizer state in the student checkpoint {ckpt_path} does not fit the model's "
                                  f"parameters ({e}); restore the run's checkpoint or delete it to restart") from e
        start_iter = last_ckpt_iter = int(state["iteration"])
        rngs = state["rng"]
        _set_rng_state(rngs[rank()] if len(rngs) == world_size() else rngs[0])
        del state  # the weights now live in the model and the optimizer
        if main_proc:
            print(f"resuming {run_dir} from iteration {start_iter}/{max_iters}", file=sys.stderr)
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
    log = MetricsLog(run_dir / METRICS_FILE, start_iter if resume else None) if main_proc else None

    wrapped = model
    if is_distributed():
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=recipe.distill is not None)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def save_checkpoint(it: int) -> None:
        nonlocal last_ckpt_iter
        rngs: list[Any] = [None] * world_size()
        if is_distributed():
            dist.all_gather_object(rngs, _rng_state())
        else:
            rngs = [_rng_state()]
        if main_proc:
            state = {"iteration": it, "model": _model_state(model), "optimizer": optimizer.state_dict(),
                     "scheduler": {"iteration": it, "base_lr": base_lr, "factor": lr_factor(it, s, max_iters, ipe)},
                     "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs,
                     "world_size": world_size(), "recipe": recipe.to_dict()}
            _atomic_write(ckpt_path, lambda p: torch.save(state, p))
        last_ckpt_iter = it

    def run_eval(it: int, final: bool) -> dict[str, Any] | None:
        eval_model = model.student if recipe.distill is not None else model
        metrics, results = evaluate(eval_model, val_ds, batch_size=recipe.eval_batch_size, workers=recipe.workers,
                                    device=device, progress=main_proc)
        if not main_proc:
            return None
        headline = {k: metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
        log.write({"iter": it, **headline, "per_class": metrics["per_class"]})
        print(f"\n[{recipe.output_dir}] evaluation at iteration {it}:\n{format_table(metrics)}", file=sys.stderr, flush=True)
        if final:
            # Through _atomic_write for the umask's mode (save_results_json's temp file is 0600).
            _atomic_write(run_dir / "results.json", lambda p: save_results_json(p, results))
            out = {"iter": it, **{k: v for k, v in metrics.items() if k != "summary"}}
            _atomic_write(run_dir / "eval.json", lambda p: Path(p).write_text(json.dumps(_json_safe(out), indent=2)))
        return metrics

    from tqdm import tqdm

    pbar = tqdm(total=max_iters, initial=start_iter, disable=not main_proc, dynamic_ncols=True, desc=run_dir.name,
                mininterval=1.0 if sys.stderr.isatty() else 30.0)
    it = start_iter
    sums: dict[str, float] = defaultdict(float)
    window_start, window_iters = time.perf_counter(), 0
    while it < max_iters:
        epoch, skip = divmod(it, ipe)
        loader = DataLoader(train_ds, batch_sampler=_epoch_batches(len(train_ds), recipe, epoch, skip),
                            num_workers=recipe.workers, collate_fn=collate_fn,
                            generator=torch.Generator().manual_seed(recipe.seed * 100_003 + epoch * 101 + rank()))
        for images, targets in loader:
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
            factor = lr_factor(it, s, max_iters, ipe)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            if recipe.distill is not None:
                model.set_progress(it / max_iters)
            with autocast():
                losses = wrapped(images, targets)
            loss = sum(losses.values())
            _check_finite(loss, losses, it, ckpt_path, last_ckpt_iter)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if s.grad_clip is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
                if scaler is None:  # with a scaler, inf gradients just skip the step and lower the scale
                    _check_finite(grad_norm, {"grad_norm": grad_norm}, it, ckpt_path, last_ckpt_iter)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            it += 1
            window_iters += 1
            for k, v in losses.items():
                sums[k] += float(v.detach())
            sums["loss"] += float(loss.detach())
            pbar.update(1)
            if it % recipe.log_interval == 0 or it == max_iters:
                means = _mean_across_ranks({k: v / window_iters for k, v in sums.items()})
                elapsed = time.perf_counter() - window_start
                rec = {"iter": it, "epoch": it / ipe, "lr": base_lr * factor, **{k: round(v, 5) for k, v in means.items()},
                       "time_per_iter": round(elapsed / window_iters, 4),
                       "images_per_s": round(total_batch * window_iters / elapsed, 3),
                       "eta_s": round(elapsed / window_iters * (max_iters - it))}
                if main_proc:
                    log.write(rec)
                    pbar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{base_lr * factor:.2e}", refresh=False)
                sums.clear()
                window_start, window_iters = time.perf_counter(), 0
            if recipe.checkpoint_interval and it % recipe.checkpoint_interval == 0 and it < max_iters:
                save_checkpoint(it)
            if recipe.eval_interval and it % recipe.eval_interval == 0 and it < max_iters:
                run_eval(it, final=False)
                window_start = time.perf_counter()  # evaluation time is not training throughput
            if it >= max_iters:
                break
    pbar.close()

    final_eval = run_dir / "eval.json"
    if start_iter == max_iters and final_eval.is_file() and (run_dir / WEIGHTS_FILE).is_file():
        # --resume of a finished run (e.g. `make run` again): nothing to train or to evaluate.
        metrics = json.loads(final_eval.read_text()) if main_proc else None
        if main_proc:
            print(f"{run_dir} is complete ({max_iters} iterations):\n{format_table(metrics)}", file=sys.stderr)
        return metrics
    if last_ckpt_iter != max_iters:
        save_checkpoint(max_iters)
    if is_distributed():
        _log_rank_checksums(model, log, max_iters)
    if main_proc:
        plain = model.student_state_dict() if recipe.distill is not None else model.state_dict()
        save_weights(plain, student, run_dir)
    metrics = run_eval(max_iters, final=True)
    if is_distributed():
        dist.barrier()
    return metrics


def _log_rank_checksums(model: nn.Module, log: MetricsLog | None, it: int) -> None:
    """DDP must keep every rank's weights identical; record one checksum per rank as evidence."""
    with torch.no_grad():
        local = float(sum(p.double().sum() + p.double().abs().sum() for p in model.parameters() if p.requires_grad))
    sums: list[Any] = [None] * world_size()
    dist.all_gather_object(sums, local)
    if log is not None:
        log.write({"iter": it, "rank_weight_checksums": sums})
        if len(set(sums)) != 1:
            print(f"warning: ranks ended with different weights (checksums {sums})", file=sys.stderr)


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable side's weights: a distiller's frozen teacher is rebuilt from its own source."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}


def _load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    state = {k: v for k, v in state.items() if not k.startswith("teacher.")}
    if not _fits(model, state):
        _mismatch(model, state, f"the student checkpoint {path}", "the model is built from model.name and model.kwargs")
    model.load_state_dict(state, strict=True)


def _check_finite(value: torch.Tensor, parts: dict[str, torch.Tensor], it: int, ckpt: Path, last: int | None) -> None:
    ok = torch.isfinite(value.detach()).float().reshape(1)
    if is_distributed():  # every rank must stop together
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() == 1.0:
        return
    detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())
    where = (f"the last good checkpoint is {ckpt} (iteration {last}); continue from it with --resume"
             if last is not None else "no checkpoint had been written yet")
    raise NonFiniteLossError(f"non-finite value at iteration {it + 1} ({detail}); training stopped before the "
                             f"update, {where}. Lower schedule.lr, lengthen schedule.warmup_iters or set schedule.grad_clip.")


def _mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdzoo.train", description="Train a detector from a recipe.")
    p.add_argument("recipe", help="recipe YAML (recipes/...)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, values parsed as YAML")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint.pt if present")
    args = p.parse_intermixed_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        train(recipe, resume=args.resume)
        return 0
    except (RecipeError, NonFiniteLossError, WeightsUnavailableError, CheckpointError, FileNotFoundError,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if is_distributed():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

"""Train a recipe: ``kdzoo train RECIPE [key.sub=value ...] [--resume]`` (the engine is :mod:`kdzoo.engine`).

One process, or data-parallel under ``torchrun`` (DDP: NCCL on GPUs, gloo on CPU). A run
directory (``output_dir``) receives:

- ``recipe.yaml``: the resolved recipe (overrides applied);
- ``metrics.jsonl``: one JSON object per logged iteration / evaluation;
- ``checkpoint.pt``: the latest checkpoint (model, optimizer, schedule, scaler, iteration,
  every rank's RNG state), written atomically every ``checkpoint_interval`` iterations and at
  the end, so ``--resume`` after a kill -9 continues at the checkpoint's iteration;
- ``model.safetensors`` + ``config.json``: the final weights and how to rebuild the model
  (``kdzoo.create_detector(RUN_DIR, pretrained=True)``); for a distillation run, the plain student;
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
import sys

INTERMIXED = True  # overrides may come before or after --resume


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (recipes/...)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, values parsed as YAML")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint.pt if present")


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from ..distributed import is_distributed
    from ..engine import NonFiniteLossError, train
    from ..recipe import load_recipe

    try:
        train(load_recipe(args.recipe, args.overrides), resume=args.resume)
    except NonFiniteLossError as e:  # the run started and stopped part way (its last checkpoint is kept)
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if is_distributed():
            dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("train", argv)

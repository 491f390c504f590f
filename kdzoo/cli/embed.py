"""Embed a training run in the package as an offline pretrained tag ``arch.tag`` (fp16 weights,
config, model card with the run's measured AP and lineage), within the package's size budget.

    kdzoo embed runs/shapes/gfl_crosskd --name gfl_mnv3s.shapes_crosskd --teacher gfl_r10t.shapes [--out kdzoo/weights]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..embedded import WEIGHTS_DIR, embed_run, embedded_cfg, tree_bytes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="training run directory (config.json + model.safetensors [+ metrics.jsonl, recipe.yaml])")
    p.add_argument("--name", required=True, help="registry name arch.tag, e.g. gfl_r18.shapes")
    p.add_argument("--out", default=str(WEIGHTS_DIR), help="weights folder (default: the package's kdzoo/weights)")
    p.add_argument("--teacher", help="teacher name for the lineage (default: the recipe's teacher)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder of the same name")


def run(args: argparse.Namespace) -> int:
    target = embed_run(args.run_dir, args.name, args.out, teacher=args.teacher, overwrite=args.overwrite)
    cfg = embedded_cfg(target)[1]
    ap = f"box AP {cfg.box_ap} on {cfg.ap_dataset}" if cfg.box_ap is not None else "no measured AP"
    print(f"wrote {target} ({tree_bytes(target) / 1e6:.2f} MB, {ap}); "
          f"{Path(args.out)} now holds {tree_bytes(Path(args.out)) / 1e6:.2f} MB")
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("embed", argv)

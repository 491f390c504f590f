"""Convert an official MMDetection (2.x/3.x) or CrossKD checkpoint into a kdzoo model folder
(model.safetensors, config.json, README.md) that loads with ``create_detector('local-dir:DIR')``.

    kdzoo convert mmdet gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth --arch gfl_r101 --out gfl_r101/
"""
from __future__ import annotations

import argparse

from ..convert import convert_mmdet_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="format", required=True)
    p = sub.add_parser("mmdet", help="MMDetection 2.x/3.x or CrossKD .pth checkpoint")
    p.add_argument("checkpoint", help="path of the .pth file")
    p.add_argument("--arch", required=True, help="kdzoo architecture, e.g. gfl_r50 (see kdzoo.list_detectors())")
    p.add_argument("--out", required=True, help="output directory (model.safetensors, config.json, README.md)")
    p.add_argument("--num-classes", type=int, default=None, help="class count if not the architecture's default (80)")


def run(args: argparse.Namespace) -> int:
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    convert_mmdet_checkpoint(args.checkpoint, args.arch, args.out, **kwargs)
    print(f"wrote {args.out} (load it with kdzoo.create_detector('local-dir:{args.out}', pretrained=True))")
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("convert", argv)

"""Convert a detection dataset between COCO JSON, YOLO and Pascal VOC (docs/datasets.md).

    kdzoo convert-data yolo data/mine --to coco --out data/mine/instances_train.json [--split train]
    kdzoo convert-data voc VOCdevkit/VOC2012 --to coco --out voc_val.json --split val [--classes a,b,c]
    kdzoo convert-data coco instances_train.json --images train/ --to yolo --out data/mine_yolo --split train
    kdzoo convert-data coco instances_val.json --images val/ --to voc --out data/mine_voc --split val

SRC is a YOLO data.yaml (or the folder holding it), a VOC year folder, or a COCO JSON file (with
--images, the folder its file_name entries are relative to). A COCO output is one JSON file; a YOLO
or VOC output is a dataset folder, to which the other splits can be added by running again with
another --split. An existing output is never replaced without --overwrite; the source is only read.
"""
from __future__ import annotations

import argparse
import sys

from . import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=("yolo", "voc", "coco"), help="the source format")
    p.add_argument("src", help="YOLO data.yaml (or its folder), VOC year folder, or COCO JSON file")
    p.add_argument("--to", required=True, choices=("coco", "yolo", "voc"), help="the target format")
    p.add_argument("--out", required=True, help="a .json file (--to coco) or a dataset folder (--to yolo/voc)")
    p.add_argument("--split", default="train",
                   help="the split: a data.yaml key (YOLO), an ImageSets/Main name (VOC), the split to write (default train)")
    p.add_argument("--images", default=None, help="COCO source: the images folder (file_name is relative to it)")
    p.add_argument("--classes", default=None,
                   help="VOC source: the class order, comma-separated (default: the 20 VOC classes when every name is "
                        "one of them, else the sorted names found)")
    p.add_argument("--image-mode", choices=("symlink", "copy", "hardlink"), default="symlink",
                   help="how images are put in a YOLO/VOC output (default symlink; a refused link falls back to a copy)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args: argparse.Namespace) -> int:
    from ..data.convert import convert

    if args.format == args.to:
        raise UsageError(f"the source and --to formats are both {args.format!r}; expected two different formats")
    if args.format == "coco" and not args.images:
        raise UsageError("a coco source needs --images (the folder its file_name entries are relative to)")
    if args.format != "coco" and args.images:
        raise UsageError(f"--images is for a coco source; a {args.format} source names its own images")
    if args.classes is not None and args.format != "voc":
        raise UsageError("--classes is for a voc source; YOLO and COCO datasets name their classes")
    classes = None
    if args.classes is not None:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise UsageError("--classes is empty; expected comma-separated class names")
    print(convert(args.format, args.src, args.to, args.out, split=args.split, images_dir=args.images, classes=classes,
                  image_mode=args.image_mode, overwrite=args.overwrite), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("convert-data", argv)

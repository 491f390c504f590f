"""Generate the synthetic shapes detection dataset (COCO format), or print its statistics.

    kdzoo shapes --out data/shapes [--seed 0] [--train 800] [--val 200] [--size 320] [--workers N] [--background photo]
    kdzoo shapes --out data/shapes --stats
"""
from __future__ import annotations

import argparse
import sys
import time

from ..data.shapes import dataset_stats, format_stats, generate_shapes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory, e.g. data/shapes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=800, help="number of training images")
    p.add_argument("--val", type=int, default=200, help="number of validation images")
    p.add_argument("--size", type=int, default=320, help="image side in pixels")
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, max 8)")
    p.add_argument("--background", default="synthetic", choices=("synthetic", "photo"),
                   help="synthetic gradients and blotches (default), or crops of scikit-image's photographs")
    p.add_argument("--stats", action="store_true", help="only print statistics of an existing dataset")


def run(args: argparse.Namespace) -> int:
    if not args.stats:
        t0 = time.perf_counter()
        generate_shapes(args.out, num_train=args.train, num_val=args.val, image_size=args.size, seed=args.seed,
                        workers=args.workers, background=args.background)
        print(f"wrote {args.train}+{args.val} images to {args.out} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(format_stats(dataset_stats(args.out)))
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("shapes", argv)

"""COCO box evaluation (pycocotools) of a detector, or of a results file, on a COCO-format dataset;
or the final metrics of finished runs side by side.

    kdzoo eval --model runs/shapes/gfl_teacher --data data/shapes --ann annotations/instances_val.json --images-dir val
    kdzoo eval --model gfl_r50.mmdet_coco --data /coco --ann annotations/instances_val2017.json --images-dir val2017
    kdzoo eval --results my_detections.json --data data/shapes --ann annotations/instances_val.json
    kdzoo eval --summary runs/shapes/gfl_teacher recipes/shapes/gfl_student.yaml

``--model`` is anything ``kdzoo.create_detector`` reads (a registry name with its weights,
``hf-hub:``, a run or model directory). Under ``torchrun`` every rank evaluates a shard and the
results are gathered on rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from . import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registry name (arch.tag), hf-hub:/local-dir: source, or a training run directory")
    src.add_argument("--results", help="evaluate an existing COCO results JSON instead of running a model")
    src.add_argument("--summary", nargs="+", metavar="RUN_DIR_OR_RECIPE",
                     help="print the final metrics of finished training runs (run directories or their recipes) "
                          "side by side, from their eval.json")
    p.add_argument("--data", help="dataset root")
    p.add_argument("--ann", help="COCO annotation JSON (absolute, or relative to --data)")
    p.add_argument("--images-dir", default=None, help="image directory relative to --data (default: --data itself)")
    p.add_argument("--out", default=None, help="write the detections as a COCO results JSON here")
    p.add_argument("--metrics-out", default=None, help="write the metrics (AP, AP50, ..., per class) as JSON here")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per step (default 1, as MMDetection tests: padding in a batch of mixed sizes changes edge features)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="inference autocast dtype")


def _resolve(root: Path, p: str | None) -> Path:
    if p is None:
        return root
    q = Path(p)
    return q if q.is_absolute() or q.exists() else root / q


def run(args: argparse.Namespace) -> int:
    from ..data.coco import CocoDetection, load_coco
    from ..evaluation import evaluate, evaluate_results, format_table, save_results_json, summary_table
    from ..factory import create_detector

    if args.summary:
        print(summary_table(args.summary))
        return 0
    if not args.data or not args.ann:
        raise UsageError("--data and --ann are required with --model / --results")
    root = Path(args.data)
    if not root.is_dir():
        raise UsageError(f"--data: dataset directory {str(root)!r} does not exist")
    ann = _resolve(root, args.ann)
    if args.results:
        coco = load_coco(ann)
        try:
            results = json.loads(Path(args.results).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--results: cannot read {args.results!r} as JSON: {e}") from e
        if not isinstance(results, list):
            raise ValueError(f"--results: expected a JSON list of {{image_id, category_id, bbox, score}}, "
                             f"got {type(results).__name__}")
        metrics = evaluate_results(coco, results)
    else:
        import torch.distributed as dist

        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if distributed:
            dist.init_process_group("nccl" if str(args.device).startswith("cuda") else "gloo")
        dataset = CocoDetection(_resolve(root, args.images_dir), ann, train=False)
        model = create_detector(args.model, pretrained=True).to(args.device)
        if model.num_classes != dataset.num_classes:
            raise ValueError(f"model {args.model!r} predicts {model.num_classes} classes but {ann} has "
                             f"{dataset.num_classes} categories")
        model.set_inference_precision(None if args.precision == "fp32" else args.precision)
        t0 = time.perf_counter()
        metrics, results = evaluate(model, dataset, batch_size=args.batch_size, workers=args.workers,
                                    device=args.device, progress=True)
        if distributed:
            dist.destroy_process_group()
        if metrics is None:
            return 0
        print(f"evaluated {len(dataset)} images in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        if args.out:
            save_results_json(args.out, results)
    if args.metrics_out:
        from ..checkpoint import atomic_write

        text = json.dumps(metrics, indent=2, allow_nan=True)
        atomic_write(Path(args.metrics_out), lambda tmp: tmp.write_text(text + "\n"))
    print(format_table(metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("eval", argv)

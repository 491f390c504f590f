"""COCO bbox evaluation of a detector (or of a results file) on a COCO-format dataset.

    python -m kdzoo.eval --model runs/shapes/gfl_teacher --data data/shapes --ann annotations/instances_val.json --images-dir val
    python -m kdzoo.eval --model gfl_r50.mmdet_coco --data /coco --ann annotations/instances_val2017.json --images-dir val2017
    python -m kdzoo.eval --results my_detections.json --data data/shapes --ann annotations/instances_val.json
    python -m kdzoo.eval --summary runs/shapes/gfl_r18_teacher recipes/shapes/gfl_r18_student.yaml

``--model`` is a registry name (its tag's weights are loaded), ``hf-hub:``/``local-dir:``, or a
run directory written by ``kdzoo.train`` (rebuilt from its ``config.json`` + ``model.safetensors``).
Under ``torchrun`` every rank evaluates a shard and the results are gathered on rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from .data.coco import CocoDetection, collate_fn, load_coco
from .dist import is_distributed, rank, world_size
from .evaluation import CocoEvaluator, evaluate_results, format_table, save_results_json
from .registry import create_detector

__all__ = ["evaluate", "load_detector", "load_run_dir", "summary_table", "main", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def load_run_dir(run_dir: str | Path, **kwargs: Any) -> nn.Module:
    """Rebuild the detector of a training run from ``config.json`` and load ``model.safetensors``
    (the ``local-dir:`` format of :mod:`kdzoo.hub`); ``kwargs`` override stored build kwargs."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished kdzoo run directory: {name} is missing "
                                    f"(expected {CONFIG_FILE} + {WEIGHTS_FILE}, written at the end of kdzoo.train)")
    return create_detector(f"local-dir:{run_dir}", pretrained=True, **kwargs)


def load_detector(source: str | Path, **kwargs: Any) -> nn.Module:
    """A run directory, a registry name (with its weights), or ``hf-hub:`` / ``local-dir:``."""
    if Path(source).is_dir() and (Path(source) / CONFIG_FILE).is_file():
        return load_run_dir(source, **kwargs)
    if Path(source).exists():
        raise FileNotFoundError(f"{source} exists but is not a run directory with {CONFIG_FILE} + {WEIGHTS_FILE}")
    return create_detector(str(source), pretrained=True, **kwargs)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: CocoDetection,
    *,
    batch_size: int = 1,
    workers: int = 2,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """COCO metrics and results of ``model`` on ``dataset``.

    In a process group each rank runs a shard (``DistributedSampler``); the per-rank results are
    gathered with ``all_gather_object`` and evaluated once. Returns ``(metrics, results)`` on
    rank 0 and ``(None, None)`` on the other ranks.
    """
    was_training = model.training
    model.eval()
    sampler = DistributedSampler(dataset, shuffle=False) if is_distributed() else None
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn)
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id)
    it = loader
    if progress and rank() == 0:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    try:
        for images, targets in it:
            outputs = model([im.to(device) for im in images])
            evaluator.update([t["image_id"] for t in targets], outputs)
    finally:
        model.train(was_training)
    if is_distributed():
        states: list[Any] = [None] * world_size()
        dist.all_gather_object(states, evaluator.state_dict())
        if rank() != 0:
            return None, None
        evaluator.merge(states)
    # all_images: an image without any detection still counts (its objects are misses).
    metrics = evaluator.summarize(dataset.categories, all_images=True)
    metrics["images"] = len(evaluator.image_ids)  # evidence that the gathered shards cover the dataset
    return metrics, evaluator.results()


def summary_table(run_dirs: list[str]) -> str:
    """Headline AP of several runs (from each run's ``eval.json``) and their per-class AP."""
    runs = {}
    for d in run_dirs:
        if Path(d).suffix in (".yaml", ".yml"):  # a recipe stands for its run directory
            from .recipe import load_recipe

            d = load_recipe(d).output_dir
        path = Path(d) / "eval.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist; is {d} a finished kdzoo.train run?")
        runs[Path(d).name] = json.loads(path.read_text())
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    width = max(12, *(len(n) for n in runs))

    def fmt(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.1f}"

    lines = [f"{'run':<{width}}  {'iters':>6}  " + "  ".join(f"{k:>5}" for k in keys)]
    lines += [f"{n:<{width}}  {m.get('iter', 0):>6}  " + "  ".join(f"{fmt(m.get(k)):>5}" for k in keys) for n, m in runs.items()]
    classes = list(next(iter(runs.values())).get("per_class", {}))
    if classes:
        lines += ["", f"{'class AP':<12}" + "".join(f"  {n[-14:]:>14}" for n in runs)]
        lines += [f"{c:<12}" + "".join(f"  {fmt(m.get('per_class', {}).get(c)):>14}" for m in runs.values()) for c in classes]
    return "\n".join(lines)


def _resolve(root: Path, p: str | None) -> Path:
    if p is None:
        return root
    q = Path(p)
    return q if q.is_absolute() or q.exists() else root / q


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(prog="python -m kdzoo.eval", description="COCO bbox evaluation (pycocotools).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="registry name (arch.tag), hf-hub:/local-dir: source, or a kdzoo.train run directory")
    src.add_argument("--results", help="evaluate an existing COCO results JSON instead of running a model")
    src.add_argument("--summary", nargs="+", metavar="RUN_DIR_OR_RECIPE",
                     help="print the final metrics of finished kdzoo.train runs (run directories or their recipes) "
                          "side by side, from their eval.json")
    p.add_argument("--data", help="dataset root")
    p.add_argument("--ann", help="COCO annotation JSON (absolute, or relative to --data)")
    p.add_argument("--images-dir", default=None, help="image directory relative to --data (default: --data itself)")
    p.add_argument("--out", default=None, help="write the detections as a COCO results JSON here")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per step (default 1, as MMDetection tests: padding in a batch of mixed sizes changes edge features)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="inference autocast dtype")
    args = p.parse_args(argv)
    if args.summary:
        print(summary_table(args.summary))
        return None
    if not args.data or not args.ann:
        p.error("--data and --ann are required with --model / --results")
    root = Path(args.data)
    if not root.is_dir():
        p.error(f"--data: dataset directory {str(root)!r} does not exist")
    ann = _resolve(root, args.ann)
    if args.results:
        coco = load_coco(ann)
        try:
            results = json.loads(Path(args.results).read_text())
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"--results: cannot read {args.results!r} as JSON: {e}")
        if not isinstance(results, list):
            p.error(f"--results: expected a JSON list of {{image_id, category_id, bbox, score}}, got {type(results).__name__}")
        metrics = evaluate_results(coco, results)
    else:
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if distributed:
            dist.init_process_group("nccl" if str(args.device).startswith("cuda") else "gloo")
        dataset = CocoDetection(_resolve(root, args.images_dir), ann, train=False)
        model = load_detector(args.model).to(args.device)
        if model.num_classes != dataset.num_classes:
            raise SystemExit(f"error: model {args.model!r} predicts {model.num_classes} classes but {ann} has "
                             f"{dataset.num_classes} categories")
        model.set_inference_precision(None if args.precision == "fp32" else args.precision)
        t0 = time.perf_counter()
        metrics, results = evaluate(model, dataset, batch_size=args.batch_size, workers=args.workers,
                                    device=args.device, progress=True)
        if distributed:
            dist.destroy_process_group()
        if metrics is None:
            return None
        print(f"evaluated {len(dataset)} images in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        if args.out:
            save_results_json(args.out, results)
    print(format_table(metrics))
    return metrics


if __name__ == "__main__":
    main()

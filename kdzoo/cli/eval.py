"""COCO box evaluation (pycocotools) of a detector, or of a results file, on a COCO-format dataset;
or the final metrics of finished runs side by side.

    kdzoo eval --model runs/shapes/gfl_teacher --data data/shapes --ann annotations/instances_val.json --images-dir val
    kdzoo eval --model gfl_r50.mmdet_coco --data /coco --ann annotations/instances_val2017.json --images-dir val2017
    kdzoo eval --results my_detections.json --data data/shapes --ann annotations/instances_val.json
    kdzoo eval --summary runs/shapes/gfl_teacher recipes/shapes/gfl_student.yaml
    kdzoo eval --model runs/shapes/gfl_crosskd --data data/shapes --ann annotations/instances_val.json --images-dir val --report out/crosskd --compare-teacher

``--report DIR`` writes per-class AP, precision-recall curves and a confusion matrix (JSON, markdown,
PNG with ``pip install 'kdzoo[report]'``); ``--compare-teacher`` also evaluates the teacher of a
distillation run directory and writes both side by side (docs/evaluation.md).

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

from ..evaluation import BACKENDS
from ..report import DEFAULT_IOU_THRESHOLD, DEFAULT_SCORE_THRESHOLD
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
    p.add_argument("--backend", choices=BACKENDS, default="pycocotools",
                   help="COCOeval implementation: pycocotools (default) or faster_coco_eval (same AP, faster; "
                        "pip install 'kdzoo[fast-eval]')")
    r = p.add_argument_group("report (docs/evaluation.md)")
    r.add_argument("--report", metavar="DIR", default=None,
                   help="write the evaluation report here: per-class AP, PR curves, confusion matrix")
    r.add_argument("--compare-teacher", action="store_true",
                   help="with --model a distillation run directory: evaluate its teacher (teacher.checkpoint, a "
                        "run directory) too and write both side by side in the --report")
    r.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD, metavar="S",
                   help=f"confusion matrix: minimum detection score (default {DEFAULT_SCORE_THRESHOLD})")
    r.add_argument("--iou-threshold", type=float, default=DEFAULT_IOU_THRESHOLD, metavar="T",
                   help=f"confusion matrix: minimum IoU of a match (default {DEFAULT_IOU_THRESHOLD})")


def _resolve(root: Path, p: str | None) -> Path:
    if p is None:
        return root
    q = Path(p)
    return q if q.is_absolute() or q.exists() else root / q


def _teacher_source(run_dir: str) -> tuple[Path, dict]:
    """The teacher run directory and build kwargs named by a distillation run's recipe.yaml."""
    import yaml

    run = Path(run_dir)
    recipe = run / "recipe.yaml"
    if not run.is_dir() or not recipe.is_file():
        raise UsageError(f"--compare-teacher: --model {run_dir!r} is not a training run directory (no recipe.yaml); "
                         "expected the run directory of a distillation recipe")
    try:
        data = yaml.safe_load(recipe.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"--compare-teacher: {recipe} is not valid YAML: {e}") from e
    teacher = data.get("teacher") if isinstance(data, dict) else None
    if not teacher:
        raise UsageError(f"--compare-teacher: {recipe} has no teacher section; expected a distillation run")
    ckpt = teacher.get("checkpoint")
    if not ckpt or not Path(ckpt).is_dir():
        named = f"teacher.checkpoint {ckpt!r}" if ckpt else f"teacher.name {teacher.get('name')!r} without a checkpoint"
        raise ValueError(f"--compare-teacher: {recipe} names the teacher by {named}, not by a run directory; only a "
                         "teacher run directory can be evaluated here (evaluate the teacher with --model and --out, "
                         "then compare with kdzoo.report.write_report(..., compare=teacher_results))")
    return Path(ckpt), dict(teacher.get("kwargs") or {})


def _check_thresholds(args: argparse.Namespace) -> None:
    for flag, v in (("--score-threshold", args.score_threshold), ("--iou-threshold", args.iou_threshold)):
        if not 0.0 <= v <= 1.0:
            raise UsageError(f"{flag} must be in [0, 1], got {v}")


def _check_outputs(args: argparse.Namespace, ann: Path) -> None:
    """--out and --metrics-out are written over: never onto an input (the annotations, --results, the
    model's files), and not both onto one file."""
    inputs = {os.path.realpath(ann): f"--ann {str(ann)!r}"}
    if args.results:
        inputs[os.path.realpath(args.results)] = f"--results {args.results!r}"
    if args.model and Path(args.model).exists():
        m = Path(args.model)
        for f in (m.iterdir() if m.is_dir() else [m]):
            inputs.setdefault(os.path.realpath(f), f"a file of --model {args.model!r}")
    written: dict[str, str] = {}
    for flag, value in (("--out", args.out), ("--metrics-out", args.metrics_out)):
        if not value:
            continue
        real = os.path.realpath(value)
        if real in inputs or real in written:
            raise UsageError(f"{flag} {value!r} is {inputs.get(real) or written[real]}; refusing to write over it: "
                             "choose another file")
        written[real] = flag


def run(args: argparse.Namespace) -> int:
    from ..data.classes import check_class_order
    from ..data.coco import CocoDetection, load_coco
    from ..evaluation import evaluate, evaluate_results, format_table, save_results_json, summary_table
    from ..factory import create_detector
    from ..report import format_compare, write_report

    if args.summary:
        print(summary_table(args.summary))
        return 0
    if not args.data or not args.ann:
        raise UsageError("--data and --ann are required with --model / --results")
    _check_thresholds(args)
    if args.compare_teacher and not args.report:
        raise UsageError("--compare-teacher writes its comparison into the report: give --report DIR too")
    if args.compare_teacher and not args.model:
        raise UsageError("--compare-teacher needs --model (a distillation run directory), not --results")
    teacher = _teacher_source(args.model) if args.compare_teacher else None
    if args.backend == "faster_coco_eval":
        from ..evaluation import _faster_coco_eval

        _faster_coco_eval()  # fail before any model runs
    root = Path(args.data)
    if not root.is_dir():
        raise UsageError(f"--data: dataset directory {str(root)!r} does not exist")
    ann = _resolve(root, args.ann)
    _check_outputs(args, ann)
    if args.results:
        coco = load_coco(ann)
        try:
            results = json.loads(Path(args.results).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--results: cannot read {args.results!r} as JSON: {e}") from e
        if not isinstance(results, list):
            raise ValueError(f"--results: expected a JSON list of {{image_id, category_id, bbox, score}}, "
                             f"got {type(results).__name__}")
        metrics = evaluate_results(coco, results, backend=args.backend)
        categories, label_to_cat_id, teacher_results = None, None, None
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
        check_class_order(model.pretrained_cfg.categories, dataset.categories, f"model {args.model!r}", str(ann))
        model.set_inference_precision(None if args.precision == "fp32" else args.precision)
        t0 = time.perf_counter()
        metrics, results = evaluate(model, dataset, batch_size=args.batch_size, workers=args.workers,
                                    device=args.device, progress=True, backend=args.backend)
        teacher_results = None
        if teacher is not None:
            t_dir, t_kwargs = teacher
            t_model = create_detector(str(t_dir), pretrained=True, **t_kwargs).to(args.device)
            if t_model.num_classes != dataset.num_classes:
                raise ValueError(f"the teacher {str(t_dir)!r} predicts {t_model.num_classes} classes but {ann} has "
                                 f"{dataset.num_classes} categories")
            check_class_order(t_model.pretrained_cfg.categories, dataset.categories, f"the teacher {str(t_dir)!r}",
                              str(ann))
            t_model.set_inference_precision(None if args.precision == "fp32" else args.precision)
            _, teacher_results = evaluate(t_model, dataset, batch_size=args.batch_size,
                                                        workers=args.workers, device=args.device, progress=True,
                                                        backend=args.backend)
        if distributed:
            dist.destroy_process_group()
        if metrics is None:
            return 0
        print(f"evaluated {len(dataset)} images in {time.perf_counter() - t0:.1f}s"
              + (" (model and teacher)" if teacher is not None else ""), file=sys.stderr)
        if args.out:
            save_results_json(args.out, results)
        categories, label_to_cat_id = dataset.categories, dataset.label_to_cat_id
    if args.metrics_out:
        from ..checkpoint import atomic_write

        text = json.dumps(metrics, indent=2, allow_nan=True)
        atomic_write(Path(args.metrics_out), lambda tmp: tmp.write_text(text + "\n"))
    print(format_table(metrics))
    if args.report:
        name = (Path(args.model).name if args.model else Path(args.results).stem) or "model"
        if teacher_results is not None and name == "teacher":
            name = "student"
        report = write_report(args.report, coco if args.results else dataset.coco, results, categories,
                              label_to_cat_id=label_to_cat_id, name=name,
                              iou_threshold=args.iou_threshold, score_threshold=args.score_threshold,
                              compare=teacher_results, compare_name="teacher", backend=args.backend)
        if report["compare"] is not None:
            print(f"\nper-class AP, {report['compare']['difference']}:\n{format_compare(report['compare'])}")
        print(f"report written to {report['out_dir']} ({report['seconds']:.1f}s)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("eval", argv)

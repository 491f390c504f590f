"""Detect objects in image files and write drawn copies plus a COCO results.json.

    kdzoo predict images/ 'more/*.jpg' --model gfl_mnv3s.shapes_crosskd --out predictions --score-thr 0.3
    kdzoo predict images/ --model exported/gfl_mnv3s/model.onnx --backend onnxruntime

``--model``: a registry name with weights, ``hf-hub:org/name``, a training run directory, or an
exported file (.onnx, .pt2, OpenVINO .xml). The output folder is never an input's folder, and a file
already there is replaced only if an earlier ``kdzoo predict`` wrote it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..predict import (BACKENDS, PredictError, check_device, check_output_folder, describe_model, expand_inputs,
                       load_model_for_backend, predict_files)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (quote them)")
    p.add_argument("--model", required=True, help="registry name (arch.tag), hf-hub:org/name, a run directory, "
                                                  "or an exported file (.onnx, .pt2, OpenVINO .xml)")
    p.add_argument("--out", default="predictions",
                   help="output folder (default: predictions); never an input's folder, and a file already "
                        "there is overwritten only if an earlier kdzoo predict run wrote it, else nothing is written")
    p.add_argument("--score-thr", type=float, default=0.3, help="keep detections scoring at least this (default 0.3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="torch: eager PyTorch (default; an exported --model file runs on its own runtime), "
                        "onnxruntime or openvino: an exported file (kdzoo export) or a model exported on the fly")


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.score_thr <= 1.0:
        raise PredictError(f"--score-thr must be in [0, 1], got {args.score_thr}")
    device = check_device(args.device)
    files = expand_inputs(args.inputs)
    check_output_folder(files, args.out)  # before the model loads: a refusal comes at once
    loaded = load_model_for_backend(args.model, args.backend, device)
    print(f"model {describe_model(loaded)}", file=sys.stderr)
    if hasattr(loaded.model, "graph_limits"):  # an exported graph: its thresholds are fixed
        graph_thr, cap = loaded.model.graph_limits
        if graph_thr is not None and args.score_thr < graph_thr:
            print(f"note: the exported graph keeps only scores >= {graph_thr:g} and at most {cap} boxes an image "
                  f"(set at export: kdzoo export --score-thr/--max-per-img); --score-thr {args.score_thr:g} cannot "
                  "go below it", file=sys.stderr)
    result = predict_files(files, loaded, args.out, score_thr=args.score_thr, device=device, batch_size=args.batch_size)
    for notice in result["notices"]:
        print(f"note: {notice}", file=sys.stderr)
    for s in result["skipped"]:
        print(f"skipped: {s['error']}", file=sys.stderr)
    print(f"{len(result['images'])} image(s), {len(result['annotations'])} detection(s) >= {args.score_thr} "
          f"-> {Path(args.out) / 'results.json'}")
    if result["skipped"] and not result["images"]:
        return 2
    return 1 if result["skipped"] else 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("predict", argv)

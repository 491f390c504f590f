"""Export a kdzoo detector, post-processing included, to ONNX, torch.export (.pt2) or OpenVINO IR,
then run the exported file on sample images and compare it with the eager model (a mismatch fails
the export, exit status 1).

    kdzoo export gfl_mnv3s.shapes --format onnx --out exported/gfl_mnv3s --dynamic-batch
    kdzoo predict photos/ --model exported/gfl_mnv3s/model.onnx --backend onnxruntime

The graph's inputs and outputs are described in kdzoo/export.py and docs/architecture.md.
"""
from __future__ import annotations

import argparse
import sys

from ..export import DEFAULT_OPSET, FORMATS, ParityError, export
from ..predict import load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registry name with weights (arch.tag), hf-hub:org/name, local-dir:path or a run directory")
    p.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)} (default onnx)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dynamic-batch", action="store_true", help="accept any batch size (default: batch 1)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("LONG", "SHORT"),
                   help="keep-ratio resize target (default: the model's)")
    p.add_argument("--fixed-size", action="store_true",
                   help="one fixed input canvas (the input size padded to 32) instead of dynamic height/width")
    p.add_argument("--fp16", action="store_true", help="half-precision network (OpenVINO: fp16-compressed weights)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--max-per-img", type=int, default=None, help="detections per image (default: the model's, 100)")
    p.add_argument("--score-thr", type=float, default=None, help="score threshold in the graph (default: the model's)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against the eager model")
    p.add_argument("--allow-random", action="store_true", help="export a registry architecture without weights (random init)")
    p.add_argument("--verbose", action="store_true", help="show the exporters' own messages")


def run(args: argparse.Namespace) -> int:
    from ..export import check_format

    check_format(args.format)
    loaded = load_model(args.model, "cpu", allow_random=args.allow_random)
    print(f"exporting {args.model} ({loaded.num_params / 1e6:.2f} M parameters) to {args.format} ...", file=sys.stderr)
    try:
        result = export(loaded.model, args.out, args.format, dynamic_batch=args.dynamic_batch,
                        fixed_size=args.fixed_size, input_size=tuple(args.input_size) if args.input_size else None,
                        fp16=args.fp16, opset=args.opset, check=not args.no_check, max_per_img=args.max_per_img,
                        score_thr=args.score_thr, name=args.model, verbose=args.verbose)
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for f in result.files:
        print(f"wrote {f} ({f.stat().st_size / 1e6:.1f} MB)")
    if result.parity is not None:
        print(f"parity ({result.parity.backend}): {result.parity.message}")
    print(f"done in {result.seconds:.0f} s; run it with: kdzoo predict IMAGES --model {result.path}"
          + (" --backend openvino" if result.format == "openvino" else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import run_command

    return run_command("export", argv)

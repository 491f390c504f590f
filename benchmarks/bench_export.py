"""Latency of exported detectors next to eager PyTorch, side by side in one run.

    python benchmarks/bench_export.py [--families gfl retinanet faster_rcnn shapes] [--size 800 1216]
                                      [--reps 5] [--threads N] [--fixed-size]

Per family, the same image through four paths, each called as ``model([image])`` (so the keep-ratio
resize, padding and mapping back to image pixels are timed on every path):

  * eager fp32 (``model.eval()``) - the reference;
  * eager fast path (``model.set_inference_precision('bf16')``: channels-last + bf16 autocast on CPU);
  * onnxruntime on the ONNX export (``kdzoo.export(model, dir, 'onnx')``);
  * OpenVINO on the IR converted from it (``kdzoo.export(model, dir, 'openvino')``).

Families ``gfl``, ``retinanet``, ``faster_rcnn``, ``atss``, ``fcos`` are the R50 detectors with random
weights (latency only) on a ``--size`` image; ``shapes`` is the trained ``gfl_mnv3s.shapes`` student on
a 320 px shapes scene. Repetitions are interleaved (A, B, C, D, A, B ...) and medians reported, as
ratios to eager fp32, with whether each path's detections match eager fp32: exported graphs exactly
(every detection, boxes within 1e-3 px, scores within 1e-4: the export command's check), the bf16
path loosely (``bench_inference.matches``: boxes above 0.3 within 1 px, scores within 0.01).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import matches  # noqa: E402

import kdzoo  # noqa: E402
from kdzoo.export import ExportError, compare_detections, load_exported, sample_images  # noqa: E402

R50 = {"gfl": "gfl_r50", "retinanet": "retinanet_r50", "faster_rcnn": "faster_rcnn_r50", "atss": "atss_r50",
       "fcos": "fcos_r50"}
SHAPES = "gfl_mnv3s.shapes"


def _image(size: tuple[int, int]) -> torch.Tensor:
    """A shapes scene (real edges and colours rather than noise) resized to ``size`` (h, w)."""
    img = sample_images()[0]
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)


def _build(family: str) -> tuple[str, torch.nn.Module]:
    if family == "shapes":
        return SHAPES, kdzoo.create_detector(SHAPES, pretrained=True).eval()
    if family not in R50:
        raise SystemExit(f"unknown family {family!r}; choose from {', '.join([*R50, 'shapes'])}")
    torch.manual_seed(0)
    return R50[family], kdzoo.create_detector(R50[family]).eval()


def bench_family(family: str, args: argparse.Namespace, workdir: Path) -> list[dict]:
    name, model = _build(family)
    size = (320, 320) if family == "shapes" else tuple(args.size)
    image = _image(size)
    fast = copy.deepcopy(model).set_inference_precision("bf16")
    paths: dict[str, object] = {"eager fp32": model, "eager bf16": fast}
    out = workdir / family
    t = time.perf_counter()
    try:
        kdzoo.export(model, out, "openvino", fixed_size=args.fixed_size, check=False, name=name)  # writes model.onnx too
        export_s = time.perf_counter() - t
        paths["onnxruntime"] = load_exported(out / "model.onnx", "onnxruntime", threads=args.threads)
        paths["openvino"] = load_exported(out / "model.xml", "openvino", threads=args.threads)
    except ExportError as e:
        print(f"{family}: export failed: {e}", file=sys.stderr)
        export_s = float("nan")
    times: dict[str, list[float]] = {k: [] for k in paths}
    results: dict[str, dict] = {}
    with torch.inference_mode():
        for k, m in paths.items():  # warm-up (OpenVINO compiles shapes lazily, oneDNN picks kernels)
            results[k] = m([image])[0]
        for _ in range(args.reps):
            for k, m in paths.items():
                s = time.perf_counter()
                m([image])
                times[k].append(time.perf_counter() - s)
    base = statistics.median(times["eager fp32"])
    rows = []
    for k in paths:
        med = statistics.median(times[k])
        if k == "eager fp32":
            ok, msg = True, "reference"
        elif k == "eager bf16":
            ok, msg = matches(results["eager fp32"], results[k])
        else:  # exported graphs: the export check's exact comparison (every detection, 1e-3 px, 1e-4)
            report = compare_detections([results["eager fp32"]], [results[k]])
            ok, msg = report.ok, report.message
        rows.append({"family": family, "model": name, "size": f"{size[0]}x{size[1]}", "path": k, "ms": med * 1000,
                     "ratio": med / base, "match": ok, "detail": msg, "dets": len(results[k]["scores"]),
                     "export_s": export_s})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=["gfl", "retinanet", "faster_rcnn", "shapes"],
                   help=f"any of {', '.join([*R50, 'shapes'])}")
    p.add_argument("--size", type=int, nargs="+", default=[800, 1216], metavar="H [W]",
                   help="image size of the R50 rows (one value: square; default 800 1216)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: torch's)")
    p.add_argument("--fixed-size", action="store_true", help="export one fixed input canvas instead of dynamic H/W")
    args = p.parse_args(argv)
    if len(args.size) not in (1, 2):
        p.error("--size takes H or H W")
    args.size = (args.size * 2)[:2]
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {args.threads} thread(s), reps {args.reps}, "
          f"{'fixed' if args.fixed_size else 'dynamic'} input size", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdzoo-bench-export-") as tmp:
        for family in args.families:
            got = bench_family(family, args, Path(tmp))
            rows += got
            for r in got:
                print(f"{r['model']:>18} {r['size']:>9}  {r['path']:<12} {r['ms']:9.1f} ms  {r['ratio']:5.2f}x  "
                      f"{'match' if r['match'] else 'MISMATCH'} ({r['detail']}; {r['dets']} dets)", flush=True)
    print("\nratios to eager fp32 (lower is faster); target: onnxruntime or OpenVINO <= 0.60x for the R50 detectors")
    for family in args.families:
        fam = {r["path"]: r for r in rows if r["family"] == family}
        best = min((fam[k]["ratio"] for k in ("onnxruntime", "openvino") if k in fam), default=float("nan"))
        cells = "  ".join(f"{k} {fam[k]['ratio']:.2f}x" for k in fam)
        print(f"  {fam['eager fp32']['model']:>18}: {cells}  | best exported {best:.2f}x"
              + ("  (meets 0.60x)" if best <= 0.6 else ""))
    if not all(r["match"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

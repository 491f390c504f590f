"""Inference latency of kdzoo detectors, measured side by side with torchvision in one run.

    python benchmarks/bench_inference.py [--size 800 1216] [--reps 5] [--threads N]

Rows (random weights, the same image, the same score threshold and thread count):
  * torchvision ``retinanet_resnet50_fpn`` (its default fp32 path) - the reference;
  * kdzoo ``retinanet_r50`` default fp32 path, ratio to torchvision;
  * kdzoo ``retinanet_r50`` fast path (channels-last + bf16 autocast on CPU, fp16 on GPU),
    ratio to torchvision, and whether its detections match fp32 (same boxes above 0.3 score
    within 1 px, scores within 0.01);
  * params and fp32 latency of every registered R50 detector.
Repetitions are interleaved (A, B, C, A, B, C ...) and the median is reported, so a busy machine
slows every row alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import kdzoo


def _time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def matches(ref: dict, fast: dict, score_min: float = 0.3, px: float = 1.0, score_tol: float = 0.01) -> tuple[bool, str]:
    """Every fp32 detection above ``score_min`` has a same-class fast detection within ``px`` on
    every coordinate and ``score_tol`` in score, and vice versa (a detection within ``score_tol``
    of the threshold may fall on either side of it)."""
    def one_way(a: dict, b: dict, threshold: float) -> tuple[bool, str]:
        keep = a["scores"] > threshold
        for box, score, label in zip(a["boxes"][keep], a["scores"][keep], a["labels"][keep]):
            same = b["labels"] == label
            if not same.any():
                return False, f"no box of class {int(label)}"
            err = (b["boxes"][same] - box).abs().amax(1)
            j = int(err.argmin())
            score_err = abs(float(b["scores"][same][j] - score))
            if err[j] > px or score_err > score_tol:
                return False, f"class {int(label)} score {float(score):.3f}: box err {float(err[j]):.2f}px, score err {score_err:.4f}"
        return True, f"{int(keep.sum())} boxes"

    ok, msg = one_way(ref, fast, score_min)
    if not ok:
        return ok, msg
    ok, back = one_way(fast, ref, score_min + score_tol)
    return ok, msg if ok else f"reverse: {back}"


def parity(source: str, image_dir: str, count: int, device: torch.device) -> None:
    """Fast path vs fp32 on a trained detector and real images: the acceptance check of the fast path (docs/architecture.md)."""
    from pathlib import Path

    from kdzoo.data.coco import decode_image

    def load() -> torch.nn.Module:
        name = f"local-dir:{source}" if Path(source).is_dir() else source
        return kdzoo.create_detector(name, pretrained=True).to(device).eval()

    ref, fast = load(), load()
    fast.set_inference_precision("fp16" if device.type == "cuda" else "bf16")
    paths = sorted(Path(image_dir).glob("*.png"))[:count]
    if not paths:
        raise SystemExit(f"--parity-images {image_dir!r} holds no .png images")
    failures, boxes = [], 0
    with torch.inference_mode():
        for path in paths:
            img = decode_image(path).to(device)
            expected = ref([img])[0]
            ok, msg = matches(expected, fast([img])[0])
            boxes += int((expected["scores"] > 0.3).sum())
            if not ok:
                failures.append(f"{path.name}: {msg}")
    print(f"  fast path vs fp32 on trained {source}, {len(paths)} images, {boxes} detections above 0.3: "
          f"{len(paths) - len(failures)}/{len(paths)} images match" + (f"; {failures[:3]}" if failures else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--score-thr", type=float, default=0.05)
    ap.add_argument("--skip-zoo", action="store_true", help="only the torchvision comparison")
    ap.add_argument("--parity-model", default=None, help="trained detector (arch.tag or run dir) for the fast-path check")
    ap.add_argument("--parity-images", default="data/shapes/val")
    ap.add_argument("--parity-count", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    h, w = args.size
    # A structured image (not noise) so random-weight detectors still produce varied scores.
    img = torch.rand(3, h // 16, w // 16).repeat_interleave(16, 1).repeat_interleave(16, 2).to(device)

    tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                                             score_thresh=args.score_thr, min_size=h, max_size=max(w, 1333))
    tv = tv.to(device).eval()
    kd = kdzoo.create_detector("retinanet_r50", input_size=(max(w, 1333), h), score_thr=args.score_thr).to(device).eval()
    # The detection heads start at prior 0.01 with near-constant logits; give the classifier
    # image-dependent logits around the threshold so that both models post-process a realistic
    # number of candidates and the fast-path check compares real detections above 0.3.
    with torch.no_grad():
        for tower in (tv.head.classification_head, kd.bbox_head.cls_convs):
            for conv in (m for m in tower.modules() if isinstance(m, torch.nn.Conv2d)):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        for conv in (tv.head.classification_head.cls_logits, kd.bbox_head.retina_cls):
            torch.nn.init.normal_(conv.weight, std=0.02)
            conv.bias.fill_(-2.0)
    fast = kdzoo.create_detector("retinanet_r50", input_size=(max(w, 1333), h), score_thr=args.score_thr).to(device).eval()
    fast.load_state_dict(kd.state_dict())
    fast_dtype = "fp16" if device.type == "cuda" else "bf16"
    fast.set_inference_precision(fast_dtype)

    runs = {"torchvision fp32": lambda: tv([img]), "kdzoo fp32": lambda: kd([img]), f"kdzoo {fast_dtype} fast": lambda: fast([img])}
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.reps):
            for k, fn in runs.items():
                times[k] += _time(fn, 1)
        ref_out, fast_out = kd([img])[0], fast([img])[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["torchvision fp32"]
    print(f"device={device} threads={args.threads} image={h}x{w} reps={args.reps} (median, interleaved)")
    for k, v in med.items():
        print(f"  {k:22s} {v * 1000:8.1f} ms   ratio to torchvision {v / base:5.2f}x")
    ok, msg = matches(ref_out, fast_out)
    print(f"  fast path vs fp32 on the random-weight R50 (score>0.3, 1px, 0.01): {ok} ({msg}); random heads "
          "give near-tied scores, so NMS may keep different boxes: the trained-model check below is the criterion")
    if args.parity_model:
        parity(args.parity_model, args.parity_images, args.parity_count, device)

    if args.skip_zoo:
        return
    print("\nRegistered R50 detectors (fp32, random weights):")
    for name in kdzoo.list_detectors("*_r50"):
        m = kdzoo.create_detector(name, input_size=(max(w, 1333), h)).to(device).eval()
        params = sum(p.numel() for p in m.parameters()) / 1e6
        with torch.inference_mode():
            m([img])
            t = statistics.median(_time(lambda: m([img]), max(2, args.reps // 2)))
        print(f"  {name:18s} {params:6.1f} M params  {t * 1000:8.1f} ms")


if __name__ == "__main__":
    main()

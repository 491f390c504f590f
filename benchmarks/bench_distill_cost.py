"""Training-step cost of CrossKD: CrossKD step time / (student step + teacher forward),
target <= 1.10, and peak memory of a CrossKD step vs a plain student step.

The three measurements are interleaved (the order rotates every repetition) so that load from
other processes hits all of them alike; times are medians. Peak memory is the high-water mark
of live tensor memory during one step above what was live before it (gradients are zeroed in
place, so weights, gradients and momentum are not counted: activations and temporaries are):
on CUDA ``max_memory_allocated``, on the CPU the running
sum of the per-op allocations and frees recorded by ``torch.profiler`` (profile_memory=True).
It also counts the floating-point operations of one step of each kind (forward and backward,
``torch.utils.flop_counter``): the FLOP ratio is the machine-independent part of the cost, the
floor the time ratio approaches when the step is compute-bound. CrossKD's own work is the
teacher's tower layers ``layer..`` and predictors run on the student's tap feature, forward and
backward (input gradients only). Heads and backbones both scale with the pixel count, so the
FLOP ratio depends on the pair (head widths against backbone depths: 1.075 for GFL R101 -> R50 at
512 and at 800 px), not on the image size; the time ratio comes down to it as larger inputs make
the convolutions efficient (measured: 1.116 at 512 px, 1.096 at 800 px, batch 2, on 2 CPU cores).

    python benchmarks/bench_distill_cost.py                       # gfl_r18 -> gfl_r18, 320 px
    python benchmarks/bench_distill_cost.py --student gfl_r50 --teacher gfl_r101 --size 800   # the published pair
    python benchmarks/bench_distill_cost.py --teacher gfl_r50 --size 800 --device cuda
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdzoo import create_detector
from kdzoo.distill import build_distiller


def make_batch(n: int, size: int, num_classes: int, device: torch.device) -> tuple[list, list]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(4, 2, generator=g) * size * 0.6
        wh = torch.rand(4, 2, generator=g) * size * 0.3 + size * 0.08
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=size - 1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(num_classes, (4,), generator=g).to(device)})
    return images, targets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(fn: Callable[[], None], device: torch.device) -> int:
    """Bytes of live tensor memory at the step's high-water mark, above what was live before it."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each op's own allocations minus frees (children excluded), and free events outside ops
    # ('[memory]'), in time order: a trajectory of live bytes at op granularity.
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def count_flops(fn: Callable[[], None]) -> int:
    """Floating-point operations of one call (convolutions and matrix products, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="gfl_r18")
    ap.add_argument("--teacher", default="gfl_r18")
    ap.add_argument("--mode", default="crosskd")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--num-classes", type=int, default=80)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--flops-only", action="store_true", help="count FLOPs only (no timing, no memory)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    common = dict(num_classes=args.num_classes, input_size=(args.size, args.size))
    student = create_detector(args.student, **common).to(device).train()
    teacher = create_detector(args.teacher, **common).to(device).eval()
    # Separate copies: the baseline and the distiller must not share optimizer state.
    distiller = build_distiller("crosskd", copy.deepcopy(student), copy.deepcopy(teacher), mode=args.mode).to(device).train()
    opt_base = torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9)
    opt_kd = torch.optim.SGD(distiller.parameters(), lr=1e-4, momentum=0.9)
    images, targets = make_batch(args.batch, args.size, args.num_classes, device)

    def student_step() -> None:
        loss = sum(student(images, targets).values())
        opt_base.zero_grad(set_to_none=False)
        loss.backward()
        opt_base.step()

    def teacher_forward() -> None:
        with torch.no_grad():
            x = teacher.preprocess(images)[0].tensors
            teacher.bbox_head(teacher.extract_feats(x))

    def crosskd_step() -> None:
        loss = sum(distiller(images, targets).values())
        opt_kd.zero_grad(set_to_none=False)
        loss.backward()
        opt_kd.step()

    steps = {"student step": student_step, "teacher forward": teacher_forward, f"{args.mode} step": crosskd_step}
    names = list(steps)
    header = (f"{args.student} <- {args.teacher}, {args.mode}, batch {args.batch} x {args.size} px, device {device}"
              f"{'' if device.type == 'cuda' else f', {torch.get_num_threads()} threads'}")
    flops = {name: count_flops(steps[name]) for name in names}
    flop_line = ("  FLOPs            " + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in flops.items())
                 + f"; ratio {flops[names[2]] / (flops[names[0]] + flops[names[1]]):.3f}")
    if args.flops_only:
        print(header)
        print(flop_line)
        return
    times: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(args.warmup + args.reps):
        order = names[rep % 3:] + names[:rep % 3]
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            steps[name]()
            sync(device)
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_rep = [c / (s + t) for s, t, c in zip(*(times[k] for k in names))]

    mem = {name: peak_memory(steps[name], device) for name in (names[0], names[2])}

    print(f"{header}, {args.reps} interleaved reps")
    for k in names:
        print(f"  {k:18s} median {med[k] * 1000:8.1f} ms   (min {min(times[k]) * 1000:.1f}, max {max(times[k]) * 1000:.1f})")
    ratio = med[names[2]] / (med[names[0]] + med[names[1]])
    print(f"  step-time ratio  {names[2]} / (student step + teacher forward) = {ratio:.3f} "
          f"(median of per-rep ratios {statistics.median(per_rep):.3f}); target <= 1.10")
    print(flop_line)
    print(f"  peak memory      student step {mem[names[0]] / 2**20:.2f} MiB, {names[2]} {mem[names[2]] / 2**20:.2f} MiB, "
          f"ratio {mem[names[2]] / max(mem[names[0]], 1):.3f}")


if __name__ == "__main__":
    main()

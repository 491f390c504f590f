#!/usr/bin/env bash
# The converged-regime benchmark on one GPU machine, as it was run for docs/distill_results.md:
#   OUT=/some/dir bash benchmarks/run_converged_gpu.sh [BUDGET_S]
# Generates the shapes data, starts CUDA MPS when it is there (many small processes share the GPU
# better through one context), sizes the schedules to BUDGET_S seconds (default 480) with a
# calibration run, trains every row, and leaves in $OUT: results.tar.gz (metrics, evaluations,
# recipes, logs of every run) and weights.tar.part-* (the GFL teacher, baseline and CrossKD
# seed-0 runs' weights, for kdzoo embed; join with cat).
#   GFL_ITERS=480 FRCNN_ITERS=240 OUT=... bash benchmarks/run_converged_gpu.sh 400
# skips the calibration and trains the core rows (teachers, baselines, CrossKD, TADF all) with those
# schedules. Measured on an H200 with 16 cores (CUDA MPS on, 18 runs side by side, batch 32): s/it
# GFL teacher 0.38, student 0.42, CrossKD 0.48; Faster R-CNN teacher 0.76, student 0.77, TADF 0.86;
# about 40 s of start-up per run (imports, CUDA, caching the images) under that load: the 16 CPUs,
# not the GPU, bound these small detectors. A run directory that exists with another schedule stops
# the driver (benchmarks/bench_converged.py): give a fresh --runs, or remove it, on a reused machine.
set -u
BUDGET=${1:-480}
T0=$(date +%s)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/driver.log") 2>&1
nvidia-smi -L; nproc; free -g | head -2
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch, torchvision, timm, pycocotools; print('torch', torch.__version__, 'tv', torchvision.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" || exit 1
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
  if timeout 60 python3 -c "import torch; torch.zeros(1).cuda(); print('MPS client ok')"; then echo "MPS on"
  else echo quit | nvidia-cuda-mps-control; echo "MPS off (client failed)"; fi
else echo "MPS not available"; fi
python3 -m kdzoo shapes --out data/shapes --workers 8 | tail -1
(cd data/shapes && find . -type f | sort | xargs md5sum | md5sum)   # 1b3604e3... on the CPU machines
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
if [ -n "${GFL_ITERS:-}" ]; then  # fixed schedules, the core rows only: each family in its own driver
  B="python3 benchmarks/bench_converged.py train --teacher-ratio 1 --evals 6 --deadline $((LEFT - 20))"
  $B --student-iters $GFL_ITERS --pack "$OUT" --only gfl_teacher gfl_student_s{0,1,2} gfl_crosskd_s{0,1,2} &
  P1=$!
  $B --student-iters $FRCNN_ITERS --only faster_rcnn_teacher faster_rcnn_student_s{0,1,2} faster_rcnn_tadf_s{0,1,2} &
  P2=$!
  wait $P1 $P2   # not a bare `wait`: it would also wait for the tee above, which never ends
  python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from bench_converged import *; pack_results(Path('runs/shapes_converged').resolve(), Path('$OUT'))"
else
  python3 benchmarks/bench_converged.py train --calibrate --budget $((LEFT - 40)) --deadline $((LEFT - 25)) \
    --safety 0.7 --jobs 28 --pack "$OUT"
fi
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
R=runs/shapes_converged
tar cf /tmp/weights.tar $(for r in gfl_teacher gfl_student_s0 gfl_crosskd_s0; do
  for f in model.safetensors config.json metrics.jsonl recipe.yaml eval.json; do [ -f $R/$r/$f ] && echo $R/$r/$f; done; done)
split -b 15M /tmp/weights.tar "$OUT/weights.tar.part-"
ls -la "$OUT"
echo "total $(( $(date +%s) - T0 )) s"

#!/usr/bin/env bash
# The GPU benchmark, in one call: make the 40x slides on the machine, then
#  1. slides/h for a cohort of 40x pyramids (benchmarks/cohort.py): in one process serial and
#     streamed, with both JPEG decodes (pillow: libjpeg's scaled IDCT on the CPU; torch: nvjpeg
#     batches + the box reduction on the GPU), and on Dask with one worker per GPU;
#  2. benchmarks/run.py --device cuda (float16) on one 40x slide with each decode, and a
#     reader-thread sweep on the slide without a 4 µm/px level (is the GPU path bound by
#     decoding?), GPU utilisation from nvidia-smi;
#  3. QC's cost on the GPU (benchmarks/qc_timing.py: whole processes and in-process);
#  4. tests/test_cuda.py (the nvjpeg path against the CPU decode included).
# Everything it prints goes to $OUT/gpu.log (and the JSON files beside it).
#
# On the lent GPU machine (device tool), from the repo root, carrying the wheels and the mosaic:
#   mkdir -p benchmarks/_work/gpu-in && cp ../shared/data/idc/slides/8975.tiff benchmarks/_work/gpu-in/
#   run(command="bash benchmarks/gpu.sh", carry=[".whl", "benchmarks/_work/gpu-in"], timeout_s=600)
# (estimated, not yet timed: 8-10 min on 16 cores; the slides ~3, the cohort ~3, run.py and
# the sweep ~3, tests ~1; COHORT_REPEAT, ROUNDS, MODES, DECODES trim it.)
# The cohort is the mosaic's 40x pyramid COHORT_REPEAT times over (symlinks: cohort.py --repeat)
# plus the 40x pyramids of COHORT_MOSAICS (ids whose mosaics are in gpu-in/, made there too).
# Here, without CUDA, the CUDA parts are skipped and a short CPU smoke run checks the script:
#   PY=.venv/bin/python DATA=/tmp/small SLIDE_ID=9035 MOSAIC=../shared/data/idc/slides/9035.tiff \
#     bash benchmarks/gpu.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/_work/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
PY=${PY:-python3}
SLIDE_ID=${SLIDE_ID:-8975}
MOSAIC=${MOSAIC:-benchmarks/_work/gpu-in/$SLIDE_ID.tiff}
DATA=${DATA:-/tmp/idcmap-bench}
COHORT_REPEAT=${COHORT_REPEAT:-8}
COHORT_MOSAICS=${COHORT_MOSAICS:-}
ROUNDS=${ROUNDS:-2}
export PYTHONUNBUFFERED=1

if ! $PY -c "import openslide, shapely" 2>/dev/null; then
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
  else
    echo "openslide/shapely missing and no .whl folder"; exit 1
  fi
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}

echo "== machine: $(date -u +%FT%TZ)"
grep -m1 "model name" /proc/cpuinfo; echo "cores: $(nproc)"; uptime
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
  --format=csv 2>/dev/null || echo "nvidia-smi: none"
CUDA=${CUDA_BRANCH:-$($PY -c "import torch; print(int(torch.cuda.is_available()))")}
DEV=${DEV:-cuda}  # CUDA_BRANCH=1 DEV=cpu runs the CUDA branch's steps on the CPU (a script check)
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
  'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
if $PY -c "import torchvision" 2>/dev/null; then
  DECODES=${DECODES:-pillow,torch}
  $PY -c "import torchvision; print('torchvision', torchvision.__version__)"
else
  DECODES=pillow
  echo "torchvision missing: the torch (nvjpeg) decode is not measured"
fi
if $PY -c "import distributed" 2>/dev/null; then MODES=${MODES:-serial,stream,dask}
else MODES=${MODES:-serial,stream}; echo "dask.distributed missing: no Dask case"; fi

echo "== slides"
t0=$(date +%s)
$PY benchmarks/make_slides.py --mosaic "$MOSAIC" --out "$DATA" --which mosaic,40x,l1l4 \
  --jobs "$(nproc)" || exit 1
for id in $COHORT_MOSAICS; do
  $PY benchmarks/make_slides.py --mosaic "$(dirname "$MOSAIC")/$id.tiff" --out "$DATA" \
    --which 40x --jobs "$(nproc)" || exit 1
done
echo "slides made in $(( $(date +%s) - t0 )) s"

if [ "$CUDA" = "1" ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used \
    --format=csv,noheader -lms 100 > "$OUT/nvsmi.csv" 2>/dev/null &
  SMI=$!
  echo "== cohort of 40x pyramids, --device $DEV: slides/h (modes $MODES, decodes $DECODES)"
  timeout 330 $PY benchmarks/cohort.py --cohort "40x:$DATA/*-40x.tiff" --repeat "$COHORT_REPEAT" \
    --device "$DEV" --workers 8 --modes "$MODES" --decodes "$DECODES" --rounds "$ROUNDS" \
    --json "$OUT/cohort-$DEV.json"
  kill $SMI 2>/dev/null
  $PY - "$OUT/nvsmi.csv" <<'EOF'
import sys
u = [float(l.split(",")[1].split()[0]) for l in open(sys.argv[1]) if l.count(",") >= 3]
busy = [v for v in u if v > 0]
print(f"nvidia-smi GPU utilisation over the cohort: {len(u)} samples, mean {sum(u)/max(len(u),1):.1f} %,"
      f" {len(busy)} samples > 0 %, max {max(u, default=0):.0f} %")
EOF
  for dec in ${DECODES//,/ }; do
    cases=e2e; [ "$dec" = pillow ] && cases=e2e,floors  # the floors do not depend on it
    echo "== one 40x slide, $cases, --device $DEV --decode $dec"
    timeout 120 $PY benchmarks/run.py --device $DEV --data "$DATA" --slide-id "$SLIDE_ID" \
      --slides 40x,l1l4 --strides 50 --cases $cases --floors-on 40x --workers 8 \
      --batch-size 2048 --wsinfer no --decode "$dec" --json "$OUT/results-$DEV-$dec.json" \
      | grep -E "^\| (40x|l1l4) |e2e|floor"
  done
  echo "== reader threads sweep (e2e, $DEV): is the GPU path bound by decoding?"
  for dec in ${DECODES//,/ }; do
    for w in 4 16; do
      echo "-- --decode $dec --workers $w"
      timeout 60 $PY benchmarks/run.py --device $DEV --data "$DATA" --slide-id "$SLIDE_ID" \
        --slides l1l4,40x --strides 50 --cases e2e --workers $w --batch-size 2048 --wsinfer no \
        --decode "$dec" --json "$OUT/sweep-$dec-w$w.json" | grep -E "^\| (l1l4|40x) "
    done
  done
  echo "== QC's cost on $DEV (QC on against --qc none): whole idcmap run processes, in-process"
  timeout 100 $PY benchmarks/qc_timing.py --process --device $DEV --repeats 3 \
    --paths "$DATA/$SLIDE_ID-40x.tiff" | tail -1
  timeout 60 $PY benchmarks/qc_timing.py --device $DEV --save --repeats 5 \
    --paths "$DATA/$SLIDE_ID-40x.tiff" | tail -1
  if [ -f tests/test_cuda.py ]; then
    echo "== tests/test_cuda.py"
    timeout 120 $PY -m pytest -q -s -p no:cacheprovider tests/test_cuda.py 2>&1 \
      | grep -E "nvjpeg vs|passed|failed|error|skipped" | tail -20
  else
    echo "== tests/test_cuda.py: absent"
  fi
else
  echo "== no CUDA here: CPU smoke run of the same script path (CUDA parts skipped)"
  $PY benchmarks/run.py --device cpu --data "$DATA" --slide-id "$SLIDE_ID" --slides mosaic \
    --strides 50 --cases e2e --wsinfer no --decode "${DECODES##*,}" \
    --json "$OUT/results-smoke.json" | tail -8
  $PY benchmarks/cohort.py --cohort "smoke:$DATA/$SLIDE_ID.tiff" --repeat 2 --device cpu \
    --modes "$MODES" --decodes "$DECODES" --rounds 1 --json "$OUT/cohort-smoke.json" | tail -12
  $PY benchmarks/qc_timing.py --process --device cpu --repeats 1 --paths "$DATA/$SLIDE_ID.tiff" \
    | tail -1
fi
echo "== done $(date -u +%FT%TZ)"

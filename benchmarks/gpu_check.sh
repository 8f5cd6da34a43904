#!/usr/bin/env bash
# Every GPU figure of issue 8 in one run (~8 minutes on one H100 or H200):
#   bash benchmarks/gpu_check.sh OUTDIR
# Writes into OUTDIR (at most 8 files):
#   gpu.txt        card, driver, jax, and what was skipped for lack of time
#   step_cost.txt  benchmarks/bench_step_cost.py: VGG16 at 224, 16 images,
#                  K=1: step / bare forward (float32, bfloat16) and the
#                  step's XLA memory with and without search.remat
#   e2e.md         benchmarks/bench_e2e.py rows (markdown) per network:
#                  bfloat16 and float32, device and host data pipelines,
#                  concepts_per_step=auto planned for an 80 GB card
#                  (--memory_limit_gb=80): image-steps/s, device step, MFU
#                  against the bf16 matmul peak measured on this card, data
#                  wait, host cores busy, peak memory, K, and the projected
#                  1000-class x 1700-step wall time
#   log_<network>.txt  the tail of each network's log
#   depthwise_bench.md  benchmarks/bench_depthwise.py (EfficientNet-Lite0's
#                  depthwise forms; another issue's figure, run in the last
#                  DEPTHWISE_S=60 seconds)
# Data: an ImageNet-shaped folder of 500x375 JPEGs (quality 90), made by
# benchmarks/make_synthetic_imagenet.py where present, else by
# bench_e2e.py --generate_classes. Networks have random weights.
# Order: data; every network's bfloat16 device-pipeline run with auto K
# (the issue's targets); the step cost; the other runs (host pipeline,
# float32) as time allows; the depthwise bench. Not yet run on a GPU: if a
# part runs out of time, gpu.txt says which, and the budgets below are
# the knobs. Environment: BUDGET_S (default 480) caps the whole run;
# NETWORKS (default "vgg16 resnet50 densenet121 darts_v2"); STEPS (20 per
# chunk); FIRST_RUN (bfloat16:device:auto) and RUNS (the later ones,
# default bfloat16:host:auto,float32:device:auto); STEP_COST=0 skips the
# step cost; GEN_CLASSES, GEN_PER_CLASS (256, 48) size the
# generated data.
set -uo pipefail
OUT=${1:-/tmp/gpu_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# Let JAX's pool use most of the card (auto K plans for 80 GB anyway).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
START=$(date +%s)
DEADLINE=$((START + ${BUDGET_S:-480}))
NETWORKS=${NETWORKS:-"vgg16 resnet50 densenet121 darts_v2"}
STEPS=${STEPS:-20}
DATA=${DATA:-/tmp/nad_synthetic_imagenet}
left() { echo $((DEADLINE - $(date +%s))); }
note() { echo "$*" | tee -a "$OUT/gpu.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  | tee "$OUT/gpu.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" \
  2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
note "cores: $(nproc), commit $(git rev-parse --short HEAD 2>/dev/null), $(date -u)"

# 1. Data: 256 classes x 48 images (K up to 128 x 2 chunks).
CLASSES=${GEN_CLASSES:-256}
PER_CLASS=${GEN_PER_CLASS:-48}
if [ ! -d "$DATA/train" ]; then
  if [ -f benchmarks/make_synthetic_imagenet.py ]; then
    PYTHONPATH=. python3 benchmarks/make_synthetic_imagenet.py \
      --out "$DATA" --classes "$CLASSES" --train_per_class "$PER_CLASS" \
      --workers "$(nproc)" > /dev/null 2>&1 || rm -rf "$DATA"
  fi
  if [ ! -d "$DATA/train" ]; then  # fallback: bench_e2e's own JPEGs
    python3 benchmarks/bench_e2e.py --generate_classes="$CLASSES" \
      --generate_per_class="$PER_CLASS" --data_root="$DATA" > /dev/null 2>&1
  fi
fi
note "data: $(find "$DATA/train" -type f | wc -l) train JPEGs in" \
  "$(ls "$DATA/train" | wc -l) classes, $(du -sh "$DATA" | cut -f1)" \
  "($(( $(date +%s) - START )) s)"

# The figures that matter most come first: every network's bfloat16 run on
# the device pipeline with auto K (the issue's targets); then the step cost;
# then the other runs (bfloat16 host pipeline, float32) as time allows.
e2e() {  # e2e NETWORK RUNS BUDGET_S
  timeout "$3" python3 benchmarks/bench_e2e.py --model="$1" \
    --data_root="$DATA" --memory_limit_gb=80 --runs="$2" \
    --chunks=2 --steps="$STEPS" --log_every=10 --num_workers="$(nproc)" \
    --results="$OUT/e2e.md" >> "$OUT/log_$1.full" 2>&1
  code=$?
  [ $code -ne 0 ] && note "$1 $2: exit $code after $3 s budget" \
    "(rows written before the limit are in e2e.md)"
  grep -v '^[WI][0-9]' "$OUT/log_$1.full" | tail -60 > "$OUT/log_$1.txt"
}
# share LEFT_FOR_REST COUNT: seconds for one of COUNT runs, keeping a rest.
share() { echo $(( ($(left) - $1) / $2 )); }
FIRST_RUN=${FIRST_RUN:-bfloat16:device:auto}
OTHER_RUNS=${RUNS:-bfloat16:host:auto,float32:device:auto}

# 2. Main figures: bfloat16, device pipeline, auto K, every network.
set -- $NETWORKS
while [ $# -gt 0 ]; do
  budget=$(share 180 $#)
  if [ "$budget" -lt 45 ]; then note "skipped $1 $FIRST_RUN: out of time"
  else e2e "$1" "$FIRST_RUN" "$budget"; fi
  shift
done

# 3. Step cost in bare forwards, and remat's memory effect (VGG16).
for args in "--compute_dtype=bfloat16" "--compute_dtype=float32" \
            "--compute_dtype=bfloat16 --remat"; do
  [ "${STEP_COST:-1}" = 0 ] && break
  [ "$(left)" -lt 150 ] && { note "skipped step cost $args"; continue; }
  timeout 60 python3 benchmarks/bench_step_cost.py --model=vgg16 \
    --batch_size=16 --repeats=5 $args 2>&1 | grep -v '^[WI][0-9]' \
    | tail -5 >> "$OUT/step_cost.txt"
done

# 4. The other runs per network (host pipeline, float32), time allowing.
RESERVE=${DEPTHWISE_S:-60}
set -- $NETWORKS
while [ $# -gt 0 ]; do
  budget=$(share "$RESERVE" $#)
  if [ "$budget" -lt 45 ]; then note "skipped $1 $OTHER_RUNS: out of time"
  else e2e "$1" "$OTHER_RUNS" "$budget"; fi
  shift
done
rm -f "$OUT"/log_*.full
# 5. EfficientNet-Lite0's depthwise convolution forms (grouped conv vs
#    shifted taps; 'auto' picks the grouped conv off CPU), in the reserve.
if [ "$(left)" -gt 20 ]; then
  timeout "$(left)" python3 benchmarks/bench_depthwise.py --batch=64 \
    --repeats=5 2>&1 | grep -v '^W\|^I' | tee "$OUT/depthwise_bench.md"
else
  note "skipped bench_depthwise.py: out of time"
fi
note "total $(( $(date +%s) - START )) s"
cat "$OUT/e2e.md" 2>/dev/null

#!/usr/bin/env bash
# One-shot GPU checks (run on the lent GPU machine from the repo root):
#   bash benchmarks/gpu_check.sh OUTDIR
# 1. the search-step benchmark (vmapped vs sequential) on the demo networks
#    and on VGG16 / ResNet50 / DenseNet121 / DARTS-V2 with random weights at
#    224x224, and 2. the whole demo run, timed. Results go to OUTDIR.
set -uo pipefail
OUT=${1:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
R="$OUT/search_bench.md"
for mk in demo_vgg:16 demo_vgg:64 demo_resnet:64 demo_densenet:64; do
  timeout 100 python3 benchmarks/bench_search.py --model=${mk%:*} \
    --concepts=${mk#*:} --results="$R" 2>&1 | grep -v '^W\|^I' | tail -1
done
start=$(date +%s)
timeout 240 python3 -m nad_jax.main --config=configs/demo.py \
  --workdir=/tmp/demo_gpu > "$OUT/demo_log.txt" 2>&1
echo "demo exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
cp /tmp/demo_gpu/report.md "$OUT/demo_report.md" 2>/dev/null
tail -5 "$OUT/demo_log.txt"
for m in vgg16 resnet50 densenet121 darts_v2; do
  timeout 150 python3 benchmarks/bench_search.py --model=$m --random_weights \
    --num_classes=1000 --image_size=224 --concepts=8 --batch_size=16 \
    --repeats=3 --results="$R" 2>&1 | grep -v '^W\|^I' | tail -2
done
# 3. EfficientNet-Lite0's depthwise convolution forms (grouped conv vs
#    shifted taps; 'auto' picks the grouped conv off CPU).
timeout 200 python3 benchmarks/bench_depthwise.py --batch=64 --repeats=5 \
  2>&1 | grep -v '^W\|^I' | tee "$OUT/depthwise_bench.md"

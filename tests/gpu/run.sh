#!/usr/bin/env bash
# One prepared run on a GPU machine (see docs/scale.md): the CUDA tests, then the CUDA rows
# of benchmarks.scale (sampling throughput and memory, fit steps/s). Logs and results go to
# $OUT (default runs/gpu). mlflow and MiniLM's package are not assumed there.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee "$OUT/gpu-tests.log"
timeout 180 python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | tee -a "$OUT/gpu-tests.log"
work=$(mktemp -d)
timeout 300 python3 -m benchmarks.scale --device cuda --sections throughput,fit --no-mlflow --out "$work" 2>&1 | tee "$OUT/scale-cuda-log.txt"
cp "$work/results.json" "$OUT/scale-cuda.json" 2>/dev/null
cp "$work/scale.png" "$OUT/scale-cuda.png" 2>/dev/null
true

#!/usr/bin/env bash
# The device check, one command, under 10 minutes on a CUDA GPU (run from the repository root):
#   bash benchmarks/gpu_check.sh [OUTPUT_FOLDER]
# Measures on the GPU what benchmarks/ measures on a CPU -- one FREE epoch at the paper's
# settings, the meta-test at 1 and 5 shots, a Conv4 step -- and the paper's Time column
# (recovery time per method at the paper's settings, extrapolated to the paper budgets).
# Everything lands in OUTPUT_FOLDER (default: $OUT if set, else reports/gpu-check) with the
# device named, ready to commit under reports/.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-reports/gpu-check}}"
mkdir -p "$out"
export DFMLBENCH_CACHE="${DFMLBENCH_CACHE:-$(mktemp -d)}"
python - <<'PY' | tee "$out/device.txt"
import platform, torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}; python {platform.python_version()}")
PY
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (run it on a GPU machine)')"
BENCH_EPISODES=600 BENCH_ROUNDS=2 timeout 420 python -m pytest benchmarks -q -s -p no:cacheprovider \
    -k "free_epoch or meta_test or throughput" --benchmark-json "$out/benchmarks.json" 2>&1 | tee "$out/benchmarks.txt" || true
timeout 150 python -m dfmlbench.recovery_time --sizes 32 84 --span 2 --device cuda --out "$out/recovery-time.md" \
    2>&1 | tee "$out/recovery-time.txt" || true
echo "gpu_check: results in $out"

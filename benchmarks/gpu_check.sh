#!/usr/bin/env bash
# Run the example suite and the protocol benchmark on CUDA, for a machine with an NVIDIA GPU.
# Uses the active Python environment when it already has the project's dependencies, else
# installs them into .venv. Writes its outputs to ${OUT:-gpu-check}/. Expected: under ten minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"

if ! python3 -c "import torch, timm, faiss, sklearn, rich, elpv_dataset" 2>/dev/null; then
  python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
  pip install -q -e '.[test]'
elif ! python3 -c "import pytest_adrobust" 2>/dev/null; then
  pip install -q --no-deps -e .
fi

export HF_HUB_OFFLINE=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))" | tee "$out/device.txt"

# The example suite on CUDA, with the cache off so that every pass runs.
start=$(date +%s)
python3 -m pytest examples -p no:cacheprovider --adrobust-device=cuda --adrobust-cache=off \
  --adrobust-report="$out/example-report.json" 2>&1 | tee "$out/example.txt"
echo "example suite wall time: $(( $(date +%s) - start )) s" | tee -a "$out/example.txt"

# The benchmark at the example's settings, then at AnomalyDINO's 448 px.
python3 benchmarks/bench_protocol.py --device cuda --batch-size 32 --json | tee "$out/bench-224.json"
python3 benchmarks/bench_protocol.py --device cuda --batch-size 16 --resolution 448 --attack score --json \
  | tee "$out/bench-448.json"

#!/usr/bin/env bash
# The GPU check, prepared to run in one call on a lent GPU machine (or any CUDA box):
#   1. the reference path's CUDA parity tests (fp32 and bf16 against the CPU), then
#   2. python -m benchmarks.bench_cuda on the full-size random preset,
# with logs and results written to OUT_DIR. Extra arguments go to bench_cuda.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [bench_cuda args...]
#
# The machine's own python3 must hold torch with CUDA. Wheels in .whl/ (e.g. the transformers
# that constraints.txt pins, when the machine's is older) are installed to /tmp/site first.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [bench_cuda args...]}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
rc=0
python3 -m pytest -q -p no:cacheprovider tests/test_reference.py -k cuda 2>&1 | tee "$out/pytest_cuda.log" || rc=1
python3 -m benchmarks.bench_cuda --out-dir "$out" "$@" 2>&1 | tee "$out/bench_cuda.log" || rc=1
exit $rc

#!/usr/bin/env bash
# GPU checks in one go, for a machine with a CUDA GPU, CuPy and torch: the GPU-marked tests, the
# torch tests, then bench/bench_gpu.py. Run from the repository root (the tree's fastpq is
# imported: it needs fastpq/kernels -> ../kernels, or an install with pip install -e .).
#   bash bench/gpu_checks.sh [LOG_DIR [bench_gpu.py options]]
# Each step has its own time limit so that one hang does not hide the other's output; the exit
# status is that of the first failed step.
set -u
log_dir=${1:-.}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import fastpq.kernels.gpu_layout, fastpq.gpu.cupy_kernels" 2>/dev/null; then
    echo "fastpq cannot be imported from $root: link fastpq/kernels -> ../kernels" \
         "(ln -s ../kernels fastpq/kernels) or pip install -e ." >&2
    exit 2
fi
status=0
step() {  # step LOG COMMAND...: run, tee to LOG, remember the first failure
    "${@:2}" 2>&1 | tee "$log_dir/$1"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv || true
step versions.log python3 -c '
import platform, numpy, numba, cupy, torch
print("python", platform.python_version(), "numpy", numpy.__version__, "numba", numba.__version__,
      "cupy", cupy.__version__, "torch", torch.__version__, "cuda", torch.version.cuda)'
step gpu_tests.log timeout 200 python3 -m pytest -q -rs -p no:cacheprovider -m gpu \
    tests/test_gpu_kernel.py tests/test_device_state.py tests/test_device_encoded.py \
    tests/test_metric.py
step torch_tests.log timeout 60 python3 -m pytest -q -rs -p no:cacheprovider tests/test_torch.py
step bench_gpu.log timeout 200 python3 bench/bench_gpu.py --runs 20 "${@:2}"
exit "$status"

#!/usr/bin/env bash
# GPU checks in one go, for a machine with a CUDA GPU, CuPy and torch (fastpq installed, or run
# from the repository root): the GPU-marked tests, then bench/bench_gpu.py.
#   bash bench/gpu_checks.sh [LOG_DIR [bench_gpu.py options]]
# Each step has its own time limit so that one hang does not hide the other's output.
set -u
log_dir=${1:-.}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv || true
python3 - <<'PY'
import platform, numpy, numba, cupy, torch
print("python", platform.python_version(), "numpy", numpy.__version__, "numba", numba.__version__,
      "cupy", cupy.__version__, "torch", torch.__version__, "cuda", torch.version.cuda)
PY
timeout 200 python3 -m pytest -q -rs -p no:cacheprovider -m gpu \
    tests/test_gpu_kernel.py tests/test_device_state.py tests/test_device_encoded.py \
    tests/test_metric.py 2>&1 \
    | tee "$log_dir/gpu_tests.log"
timeout 60 python3 -m pytest -q -rs -p no:cacheprovider tests/test_torch.py 2>&1 \
    | tee "$log_dir/torch_tests.log"
timeout 200 python3 bench/bench_gpu.py --runs 20 "${@:2}" 2>&1 | tee "$log_dir/bench_gpu.log"

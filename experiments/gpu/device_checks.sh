#!/usr/bin/env bash
# Every GPU check of the engine and the kernels in ONE call (a GPU session has 15 minutes of device
# time, start-up included, so this is sized to finish in about 9 minutes on one H200).
#
# On the machine with the GPU, from the repository root:
#     OUT=/some/folder bash experiments/gpu/device_checks.sh
# Wheels the machine lacks (mlxtend for the quickstart; the device has torch, CuPy, hypothesis,
# pytest, pytest-xdist) go in ./.whl and are installed first when present.
#
# Writes 8 files to $OUT (what a device call can bring back): env.txt, t_gpu.txt (the GPU tests),
# t_cuda.txt (the conformance suite on device cuda), thorough.txt (the CUDA registry entries under
# HYPOTHESIS_PROFILE=thorough), sanitizer.txt (compute-sanitizer memcheck and racecheck on the
# kernel tests), bench.txt (its console output) and bench/<device>.log + bench/<device>.json.
# Commit them under experiments/results/ with the device name (see accel/kernels/NOTES.md).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/twinsparse_device}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi

step() {   # step NAME SECONDS COMMAND...: the command's output and its exit status / wall time in $OUT/NAME.txt
    local name=$1 limit=$2 t0
    shift 2
    t0=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "rc=$? wall=$(( $(date +%s) - t0 ))s: $*" | tee -a "$OUT/$name.txt" >> "$OUT/env.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -c "import torch, numpy, hypothesis; print('torch', torch.__version__, 'numpy', numpy.__version__, 'hypothesis', hypothesis.__version__)"
    python3 -c "import cupy; print('cupy', cupy.__version__)"
    python3 -c "from twinsparse.accel import kernels; print('kernels available:', kernels.available(), kernels.unavailable_reason())"
    command -v compute-sanitizer nvcc
} > "$OUT/env.txt" 2>&1

PYTEST="python3 -m pytest -q -p no:cacheprovider"
step t_gpu 170 $PYTEST -n 4 -m "gpu and not slow" tests/test_kernels_gpu.py tests/test_kernels_gpu_bandwidth.py
step t_cuda 110 $PYTEST -n 8 conformance -k "cuda"
step thorough 80 env HYPOTHESIS_PROFILE=thorough $PYTEST -n 8 conformance/test_registry.py -k "cuda and kernel"
step sanitizer 100 bash -c "compute-sanitizer --tool memcheck --error-exitcode 1 $PYTEST -m 'gpu and not slow' \
    -k 'topk or nm_ or masked or dst_ee or guard' tests/test_kernels_gpu.py; \
    compute-sanitizer --tool racecheck --error-exitcode 1 $PYTEST -m 'gpu and not slow' -k 'topk' tests/test_kernels_gpu.py"
step bench 170 python3 -m twinsparse bench --device cuda --out "$OUT/bench"
ls -la "$OUT" "$OUT/bench" >> "$OUT/env.txt" 2>&1

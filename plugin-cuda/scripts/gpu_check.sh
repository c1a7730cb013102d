#!/bin/bash
# One call on the lent GPU: install, kernel tests, conformance suite, benchmarks.
#   bash plugin-cuda/scripts/gpu_check.sh [--quick]      (from the repository root)
# --quick times the default tile shapes only (no sweeps). The GPU image has torch,
# triton and pytest but not importlib_metadata (nor its lazy_importer): they travel as
# wheels in .whl/ (python3 -m pip download --no-deps -d .whl importlib_metadata lazy_importer).
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/importlib_metadata-*.whl .whl/lazy_importer-*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
echo "== kernel tests"
python3 -m pytest -q -n 8 -p no:cacheprovider triton-kernels/tests/test_triton_kernels.py triton-kernels/tests/test_triton_tuning.py plugin-cuda/tests 2>&1 | tee "$OUT/test_gpu.log" | tail -4
echo "== conformance suite"
timeout 240 python3 -m pytest -q -n 4 --octavo-platform cuda 2>&1 | tee "$OUT/conformance.log" | tail -14
echo "== benchmarks"
python3 plugin-cuda/scripts/bench_kernels.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log"
python3 plugin-cuda/scripts/bench_kernels.py --part small-decode --json "$OUT/small.json" "$@" 2>&1 | tee "$OUT/small.log"

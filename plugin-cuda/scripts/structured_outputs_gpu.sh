#!/bin/bash
# Structured outputs on the lent GPU (issue 18), one call, about 3 minutes on an H200:
#   1. the bitmask op (FusedOps.apply_token_bitmask) of octavo-cuda against the kit's reference: the
#      conformance suite's test_apply_token_bitmask with --octavo-platform cuda;
#   2. G3 (64 x 1024 prompt / 128 output, Llama-3.1-8B shape, dummy bf16 weights) unconstrained, then in
#      the same run with every request constrained by a JSON schema (`octavo bench throughput
#      --structured-output-ratio 1.0`, whose default schema outlasts the 128 output tokens): the
#      throughput ratio, target >= 0.9x; once with async scheduling (the GPU default) and once without.
# Carry .whl (importlib_metadata, lazy_importer and gguf wheels as e2e_gpu.sh, plus xgrammar and
# apache_tvm_ffi: `pip download --no-deps --only-binary=:all: --python-version 3.12 ... xgrammar
# apache-tvm-ffi`) and .gpu/tok (SmolLM2's tokenizer, saved with save_pretrained). Logs and JSON in $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/structured_outputs.log"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
python3 -c "import xgrammar, torch; print('xgrammar ok, torch', torch.__version__)" 2>&1 | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader | tee -a "$LOG"
step() { echo "== $1 ($(date -u +%T))" | tee -a "$LOG"; shift; timeout 240 "$@" 2>&1 | grep -v "it/s\]" | tee -a "$LOG"; }
# from outside the repository: its testpaths' conftests are not this run's
(cd "$OUT" && step bitmask-conformance python3 -m pytest -q -p no:cacheprovider --octavo-platform cuda -k apply_token_bitmask)
python3 plugin-cuda/scripts/make_llama8b_dir.py .gpu/tok /tmp/llama8b
M="--model /tmp/llama8b --load-format dummy --dtype bfloat16 --max-model-len 4096 --device cuda"
B="python3 -m octavo.entrypoints.cli bench throughput $M --num-prompts 64 --input-len 1024 --output-len 128"
step G3-json $B --structured-output-ratio 1.0 --gpu-memory-utilization 0.5 --json "$OUT/g3_json.json"
step G3-json-no-async $B --structured-output-ratio 1.0 --no-async-scheduling --gpu-memory-utilization 0.5 \
  --json "$OUT/g3_json_sync.json"
grep -h '"structured_ratio"' "$OUT"/g3_json*.json | tee -a "$LOG"

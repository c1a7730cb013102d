#!/bin/bash
# Issue 25 (multi-LoRA) on the lent GPU, one call of under 3 minutes, from the repository root:
#   bash plugin-cuda/scripts/lora_gpu.sh
# 1. octavo_triton.lora's shrink / expand kernels against the kit's token-by-token reference at
#    Llama-3.1-8B sizes (triton-kernels/tests/test_lora_kernels.py), and the conformance suite's
#    `lora` check through octavo-cuda's FusedOps.
# 2. G3 (64 x 1024 prompt / 128 output, Llama-3.1-8B shape, dummy bf16 weights) without adapters and
#    with 8 distinct random rank-16 adapters on every projection spread round-robin over the 64
#    requests, in one engine, alternating twice after a warm-up (benchmarks/lora_throughput.py):
#    the LoRA pass's time over the base pass's, target <= 1.3x.
# 3. plugin-cuda/scripts/lora_gpu_check.py: a small random Llama in float32 with two adapters and a
#    base request in the same steps: greedy tokens with decode graphs (LoRA kernels captured) equal
#    the eager run's, and each adapter's equal the base model's with the adapter merged into its weights.
# Carry .whl (as e2e_gpu.sh) and .gpu/tok (SmolLM2's tokenizer). Results: $OUT/lora_gpu.log, $OUT/g3_lora.json.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/lora_gpu.log"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader | tee "$LOG"
step() { echo "== $1 ($(date -u +%T))" | tee -a "$LOG"; shift; "$@" 2>&1 | grep -v "it/s\]" | tail -25 | tee -a "$LOG"; }
step kernels timeout 45 python3 -m pytest -q -x -p no:cacheprovider triton-kernels/tests/test_lora_kernels.py
# from outside the repository: its testpaths' conftests are not this run's
(cd "$OUT" && step conformance timeout 30 python3 -m pytest -q -p no:cacheprovider --octavo-platform cuda -k lora)
python3 plugin-cuda/scripts/make_llama8b_dir.py .gpu/tok /tmp/llama8b
step G3-lora timeout 110 python3 benchmarks/lora_throughput.py --model /tmp/llama8b --load-format dummy \
  --device cuda --dtype bfloat16 --max-model-len 4096 --num-prompts 64 --input-len 1024 --output-len 128 \
  --num-adapters 8 --rank 16 --rounds 2 --json "$OUT/g3_lora.json"
mkdir -p /tmp/lora_check
step check timeout 75 python3 plugin-cuda/scripts/lora_gpu_check.py .gpu/tok /tmp/lora_check

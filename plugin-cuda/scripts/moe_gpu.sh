#!/bin/bash
# Issue 24a (mixture of experts) on the lent GPU, one call of under 3 minutes, from the repository root:
#   bash plugin-cuda/scripts/moe_gpu.sh
# 1. Correctness: a tiny random Qwen3-MoE on octavo-cuda (fp32) against transformers' greedy tokens;
#    the Triton fused_moe at Qwen3-30B-A3B and Mixtral-8x7B widths (bf16, 1 and 64 tokens) against
#    core's definition, with its time against the bytes of the experts it reads.
# 2. Qwen3-30B-A3B- and Mixtral-8x7B-shaped models, dummy bf16 weights: batch 1 (time per output token
#    against the weight-bytes floor at 4.25e12 B/s; target >= 75%) and 64 x 1024/128 against its floor;
#    transformers beside at batch 1 while the budget lasts (parts past it are skipped, the JSON says so).
# Carry .whl (as e2e_gpu.sh) and .gpu/tok (SmolLM2's tokenizer). Results: $OUT/moe_gpu.json and .log.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/moe_gpu.log"
timeout 145 python3 plugin-cuda/scripts/moe_gpu.py .gpu/tok "$OUT/moe_gpu.json" --budget 135 2>&1 \
  | grep -v "it/s\]" | tail -30 | tee -a "$OUT/moe_gpu.log"

#!/bin/bash
# Issue 27 (multimodal) on the lent GPU, one call of under 3 minutes, from the repository root:
#   bash plugin-cuda/scripts/multimodal_gpu.sh
# 1. Correctness: greedy tokens of a tiny random Qwen2.5-VL (fp32; one image, two images of other
#    sizes, and text only in one batch) on octavo-cuda equal transformers' on the GPU: tiny_greedy_equal.
# 2. Throughput: a Qwen2.5-VL-7B-shaped model (dummy weights, bf16), 64 requests of one 448x448 image
#    (256 image tokens, 273 prompt tokens) and 128 output tokens each, Octavo's LLM.generate against
#    transformers' generate of the same 64 requests in one batch (equal lengths: no padding), in the
#    same call: ratio_output_tok_per_s (Octavo's output tokens/s over transformers').
# Carry .whl (as e2e_gpu.sh) and .gpu/tok (SmolLM2's tokenizer, given Qwen's image tokens).
# Results: $OUT/multimodal_gpu.json (written after each part) and .log.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/multimodal_gpu.log"
timeout 165 python3 plugin-cuda/scripts/multimodal_gpu.py .gpu/tok "$OUT/multimodal_gpu.json" 2>&1 \
  | grep -v "it/s\]\|torchvision" | tail -25 | tee -a "$OUT/multimodal_gpu.log"

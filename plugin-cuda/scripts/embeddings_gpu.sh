#!/bin/bash
# Issue 26 (embeddings) on the lent GPU, one call of under 3 minutes, from the repository root:
#   bash plugin-cuda/scripts/embeddings_gpu.sh
# 1. Correctness: a tiny random Llama body as an embedder on octavo-cuda (fp32, last token,
#    normalized) against transformers' hidden states: tiny_fp32_min_cosine (want >= 0.9999).
# 2. Throughput: an E5-Mistral-shaped embedder (MistralModel 32 x 4096, GQA 32/8, dummy weights, bf16),
#    1,000 inputs of 16-512 tokens: Octavo's LLM.embed against transformers run as sentence-transformers
#    runs it (length-sorted, padded batches of 32, last real token, L2); the GPU image has no
#    sentence-transformers. Target: ratio >= 2.
# Carry .whl (as e2e_gpu.sh) and .gpu/tok (SmolLM2's tokenizer). Results: $OUT/embeddings_gpu.json and .log.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/embeddings_gpu.log"
timeout 160 python3 plugin-cuda/scripts/embeddings_gpu.py .gpu/tok "$OUT/embeddings_gpu.json" 2>&1 \
  | grep -v "it/s\]" | tail -20 | tee -a "$OUT/embeddings_gpu.log"

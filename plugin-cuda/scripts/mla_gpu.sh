#!/bin/bash
# Issue 24b (DeepSeek's multi-head latent attention) on the lent GPU, one call of under 3 minutes,
# from the repository root:
#   bash plugin-cuda/scripts/mla_gpu.sh
# 1. The Triton MLA kernel and its cache write against the kit's reference at DeepSeek's sizes
#    (latent 512 + rotary 64, 16 and 128 heads, fp32 and bf16, decode splits and mixed steps):
#    triton-kernels/tests/test_mla_attention.py.
# 2. The conformance suite's latent-attention cases on octavo-cuda (attend_latent).
# 3. plugin-cuda/scripts/mla_gpu.py: a tiny DeepSeek-V3 on octavo-cuda against transformers (fp32
#    greedy, chunked prefill, prefix hits), then a DeepSeek-V2-Lite-shaped dummy-weight model at
#    batch 1 and 64 x 1024/128 against its bandwidth floor.
# Carry .whl (as e2e_gpu.sh) and .gpu/tok (SmolLM2's tokenizer). Results: $OUT/mla_gpu.log and .json.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/mla_gpu.log"
[ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
ROOT=$PWD
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  echo "== 1. Triton MLA kernel vs the kit's reference"
  timeout 60 python3 -m pytest -q -p no:cacheprovider triton-kernels/tests/test_mla_attention.py 2>&1 | tail -5
  echo "== 2. conformance: attend_latent on cuda"
  (cd /tmp && timeout 40 python3 -m pytest -q -p no:cacheprovider --octavo-platform cuda -k latent 2>&1 | tail -8)
  echo "== 3. tiny DeepSeek-V3 vs transformers; V2-Lite shape against its floor"
  timeout 150 python3 "$ROOT/plugin-cuda/scripts/mla_gpu.py" "$ROOT/.gpu/tok" "$OUT/mla_gpu.json" 2>&1 \
    | grep -v "it/s\]" | tail -12
} 2>&1 | tee "$LOG"

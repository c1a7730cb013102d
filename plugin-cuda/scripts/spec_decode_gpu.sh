#!/bin/bash
# Speculative decoding on the lent GPU (issue 23), about 3 minutes on an H200, G2's shape (Llama-3.1-8B,
# dummy bf16 weights, 1 x 128 random tokens in, 512 greedy tokens out), each beside plain decoding
# in the same call (benchmarks/spec_decode.py, which also says where greedy outputs differ):
#   1. the target as its own draft ("draft_model", same dummy weights: acceptance 1, the ceiling of the
#      mechanism): decode tok/s and the verification step rate; the target, (k+1) tokens per verification at
#      >= 0.9x of (k+1) x the plain step rate, is a verification step rate >= 0.9x the plain one;
#   2. n-gram lookup on the same shape (dummy weights copy nothing: this is its overhead when proposals
#      fail, not a speed-up);
#   3. n-gram on SmolLM2 with the input-grounded prompts (repeat / edit a text), if its GGUF is at
#      /tmp/smol (assembled as e2e_gpu.sh does: /tmp/smol/a from an earlier call + .smolB/part).
# Carry .whl (importlib_metadata, lazy_importer, gguf wheels) and .gpu/tok (SmolLM2's tokenizer, saved
# with save_pretrained). Logs and JSON in $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/spec_decode.log"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader | tee -a "$LOG"
python3 plugin-cuda/scripts/make_llama8b_dir.py .gpu/tok /tmp/llama8b
step() { echo "== $1 ($(date -u +%T))" | tee -a "$LOG"; shift; timeout 170 "$@" 2>&1 | grep -v "it/s\]" | tee -a "$LOG"; }
G2="--model /tmp/llama8b --load-format dummy --dtype bfloat16 --max-model-len 4096 --device cuda"
G2="$G2 --random-prompt 128 --max-tokens 512 --gpu-memory-utilization 0.3 --sequential"
step self-draft-k4 python3 benchmarks/spec_decode.py $G2 --method draft_model --draft /tmp/llama8b --k 4 \
  --json "$OUT/g2_self_draft_k4.json"
step ngram-k4 python3 benchmarks/spec_decode.py $G2 --method ngram --k 4 --json "$OUT/g2_ngram_k4.json"
SMOL=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f /tmp/smol/a ] && [ -f .smolB/part ] && cat /tmp/smol/a .smolB/part > $SMOL
if [ -f $SMOL ]; then
  step smollm2-ngram python3 benchmarks/spec_decode.py --model $SMOL --device cuda --max-tokens 200 \
    --json "$OUT/smollm2_ngram.json"
else
  echo "== smollm2-ngram skipped: no $SMOL" | tee -a "$LOG"
fi

#!/bin/bash
# Issue 29 on the lent H200, one device call per mode, from the root of a snapshot of the tree:
#   bash plugin-cuda/scripts/h200_gpu.sh profile  # GEMV sweep, prefill attention vs torch's back ends, the
#                                                 # batch-1 step profiled with and without PDL
#   bash plugin-cuda/scripts/h200_gpu.sh final    # kernel tests, conformance, G2 and G3 each beside transformers
#                                                 # with a static cache and its compiled forward (hf_static_peer.py), G1
# Carry .whl (importlib_metadata, lazy_importer, gguf) and .gpu/tok (SmolLM2's tokenizer), as e2e_gpu.sh.
# Logs and JSON land in $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/h200_$1.log"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader | tee -a "$LOG"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$LOG"
python3 plugin-cuda/scripts/make_llama8b_dir.py .gpu/tok /tmp/llama8b > /dev/null
M="--model /tmp/llama8b --load-format dummy --dtype bfloat16 --max-model-len 4096 --device cuda"
B="python3 -m octavo.entrypoints.cli bench throughput $M"
step() { echo "== $1 ($(date -u +%T))" | tee -a "$LOG"; shift; timeout "${T:-400}" "$@" 2>&1 | grep -v "it/s\]" | tee -a "$LOG"; }
if [ "$1" = profile ]; then
  step gemv python3 plugin-cuda/scripts/gemv_bench.py --rows 1 --sweep
  step prefill python3 plugin-cuda/scripts/bench_kernels.py --part prefill --json "$OUT/prefill.json"
  P="python3 plugin-cuda/scripts/step_profile.py $M --gpu-memory-utilization 0.6"
  step "step, PDL on" $P --profile /tmp/trace_pdl.json
  step "step, PDL off" env OCTAVO_TRITON_PDL=0 $P --profile /tmp/trace_nopdl.json
  gzip -c /tmp/trace_pdl.json > "$OUT/trace_pdl.json.gz"
fi
G2="--num-prompts 1 --input-len 128 --output-len 512 --gpu-memory-utilization 0.6"
G3="--num-prompts 64 --input-len 1024 --output-len 128 --gpu-memory-utilization 0.5"
if [ "$1" = final ]; then  # by priority: what a cut-short call loses comes last; one engine on the GPU at a time
  T=100 step kernel-tests python3 -m pytest -q -x -n 8 -p no:cacheprovider triton-kernels/tests/test_triton_kernels.py \
    plugin-cuda/tests
  T=100 step conformance sh -c "cd $OUT && python3 -m pytest -q -n 8 -p no:cacheprovider --octavo-platform cuda | tail -4"
  step G2 $B $G2 --json "$OUT/g2.json"
  T=170 step "HF G2" python3 plugin-cuda/scripts/hf_static_peer.py /tmp/llama8b g2 --json "$OUT/hf_g2.json"
  step G3 $B $G3 --json "$OUT/g3.json"
  step G1 $B --num-prompts 1000 --dataset uniform:128-2048:32-512 --output-len 512 --json "$OUT/g1.json"
  T=200 step "HF G3" python3 plugin-cuda/scripts/hf_static_peer.py /tmp/llama8b g3 --json "$OUT/hf_g3.json"
fi
echo "== done $(date -u +%T)" | tee -a "$LOG"

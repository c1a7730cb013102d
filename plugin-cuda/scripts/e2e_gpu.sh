#!/bin/bash
# End-to-end on the lent GPU (issue 7): decode graphs correctness + benchmarks G1-G3.
#   bash plugin-cuda/scripts/e2e_gpu.sh check   # install, SmolLM2 + graph checks, start-up, G2 (+eager), G3
#   bash plugin-cuda/scripts/e2e_gpu.sh bench   # install, graph checks, start-up, G2 and G3 beside HF and without async scheduling, G3 with 2048-token steps
#   bash plugin-cuda/scripts/e2e_gpu.sh g1      # install, G1's first 128 requests beside HF, G1 (1000 requests)
#   bash plugin-cuda/scripts/e2e_gpu.sh g3g1    # install, G3, G1
#   bash plugin-cuda/scripts/e2e_gpu.sh g4      # install, G4: `octavo serve` + `octavo bench serve` at Poisson rates
# Carry .whl (importlib_metadata, lazy_importer, gguf wheels; for g4 also fastapi, starlette, uvicorn,
# pydantic, pydantic_core, annotated_types, annotated_doc, typing_inspection, typing_extensions,
# opentelemetry_api, zipp, at the versions the dev venv has) and .gpu/tok (SmolLM2 tokenizer,
# saved with save_pretrained). SmolLM2's GGUF (98 MB) is over one call's 64 MiB transfer: an
# earlier call leaves its first half in /tmp/smol/a (`cp .smolA/part /tmp/smol/a`), this one
# carries the second half in .smolB. Logs and JSON land in $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/e2e_$1.log"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader | tee -a "$LOG"
python3 plugin-cuda/scripts/make_llama8b_dir.py .gpu/tok /tmp/llama8b
M="--model /tmp/llama8b --load-format dummy --dtype bfloat16 --max-model-len 4096 --device cuda"
B="python3 -m octavo.entrypoints.cli bench throughput $M"  # `octavo bench throughput`
step() { echo "== $1 ($(date -u +%T))" | tee -a "$LOG"; shift; timeout 420 "$@" 2>&1 | grep -v "it/s\]" | tee -a "$LOG"; }
if [ "$1" = check ]; then
  SMOL=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
  [ -f /tmp/smol/a ] && [ -f .smolB/part ] && cat /tmp/smol/a .smolB/part > $SMOL && sha256sum $SMOL | tee -a "$LOG"
  [ -f $SMOL ] && step smollm2 python3 plugin-cuda/scripts/smollm2_check.py $SMOL "$OUT/smollm2.json"
  step graph_check python3 plugin-cuda/scripts/graph_check.py .gpu/tok "$OUT/graph_check.json"
  export T0=$(date +%s.%N); step startup python3 plugin-cuda/scripts/startup_time.py $M
  step G2 $B --num-prompts 1 --input-len 128 --output-len 512 --compare hf --gpu-memory-utilization 0.6 --json "$OUT/g2.json"
  step G2-eager $B --num-prompts 1 --input-len 128 --output-len 512 --enforce-eager --gpu-memory-utilization 0.6 --json "$OUT/g2_eager.json"
  step G3 $B --num-prompts 64 --input-len 1024 --output-len 128 --compare hf --gpu-memory-utilization 0.5 --json "$OUT/g3.json"
fi
if [ "$1" = g3g1 ]; then
  step G3 $B --num-prompts 64 --input-len 1024 --output-len 128 --compare hf --gpu-memory-utilization 0.5 --json "$OUT/g3.json"
fi
if [ "$1" = bench ]; then  # the results table: G2 and G3 beside HF, G3 with 8192-token chunks
  step graph_check python3 plugin-cuda/scripts/graph_check.py .gpu/tok "$OUT/graph_check.json"
  export T0=$(date +%s.%N); step startup python3 plugin-cuda/scripts/startup_time.py $M
  step G2 $B --num-prompts 1 --input-len 128 --output-len 512 --compare hf --gpu-memory-utilization 0.6 --json "$OUT/g2.json"
  step G2-no-async $B --num-prompts 1 --input-len 128 --output-len 512 --no-async-scheduling --gpu-memory-utilization 0.6 --json "$OUT/g2_sync.json"
  step G3 $B --num-prompts 64 --input-len 1024 --output-len 128 --compare hf --gpu-memory-utilization 0.5 --json "$OUT/g3.json"
  step G3-no-async $B --num-prompts 64 --input-len 1024 --output-len 128 --no-async-scheduling --gpu-memory-utilization 0.5 --json "$OUT/g3_sync.json"
  step G3-2048 $B --num-prompts 64 --input-len 1024 --output-len 128 --max-num-batched-tokens 2048 --gpu-memory-utilization 0.5 --json "$OUT/g3_2048.json"
fi
if [ "$1" = g1 ]; then
  # HF on all of G1 would outlast a call: G1's distribution, first 128 requests, both engines
  step G1-128 $B --num-prompts 128 --dataset uniform:128-2048:32-512 --output-len 512 --compare hf --json "$OUT/g1_128.json"
fi
if [ "$1" = g1 ] || [ "$1" = g3g1 ]; then
  step G1 $B --num-prompts 1000 --dataset uniform:128-2048:32-512 --output-len 512 --json "$OUT/g1.json"
fi
if [ "$1" = g4 ]; then  # serving percentiles: G1's lengths, Poisson arrivals at several rates
  python3 -m octavo.entrypoints.cli serve /tmp/llama8b --load-format dummy --dtype bfloat16 --max-model-len 4096 \
    --device cuda --port 8011 > "$OUT/g4_server.log" 2>&1 &
  SPID=$!
  for i in $(seq 150); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8011/v1/models')" 2> /dev/null && break; sleep 2; done
  echo "server ready after ~$((i * 2)) s" | tee -a "$LOG"
  S="python3 -m octavo.entrypoints.cli bench serve --port 8011 --dataset uniform:128-2048:32-512 --output-len 512"
  for rn in 2:100 4:200 8:300 12:300; do
    step "G4-rate${rn%%:*}" $S --request-rate ${rn%%:*} --num-prompts ${rn##*:} --json "$OUT/g4_r${rn%%:*}.json"
  done
  kill $SPID; wait $SPID 2> /dev/null
fi
echo "== done $(date -u +%T)" | tee -a "$LOG"

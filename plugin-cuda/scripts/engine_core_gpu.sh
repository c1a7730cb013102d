#!/bin/bash
# Issue 28 part A on the lent GPU, in one call of under 3 minutes, from the repository root:
#   bash plugin-cuda/scripts/engine_core_gpu.sh
# G4 at 12 req/s (Llama-3.1-8B-shaped, dummy bf16 weights, G1's lengths uniform:128-2048:32-512, 512
# output tokens, Poisson arrivals, 200 requests) against `octavo serve` twice in the same call:
#   before: the engine in a thread of the API server's process (the default)
#   after:  the engine in an engine core process of its own (--engine-core-process)
# Carry .whl (as e2e_gpu.sh g4: fastapi, starlette, uvicorn, pydantic..., plus pyzmq and msgspec for
# cp312) and .gpu/tok (SmolLM2's tokenizer, saved with save_pretrained). Results: $OUT/engine_core.log,
# $OUT/g4_inproc.json, $OUT/g4_core_proc.json and each server's log.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/engine_core.log"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
python3 -m pip install -q --no-deps --no-build-isolation -e ./core -e ./plugins -e ./triton-kernels -e ./plugin-cuda 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
python3 -c "import zmq, msgspec; print('pyzmq', zmq.__version__, 'msgspec', msgspec.__version__)" 2>&1 | tee -a "$LOG"
python3 plugin-cuda/scripts/make_llama8b_dir.py .gpu/tok /tmp/llama8b
M="/tmp/llama8b --load-format dummy --dtype bfloat16 --max-model-len 4096 --device cuda --disable-access-log"
S="python3 -m octavo.entrypoints.cli bench serve --dataset uniform:128-2048:32-512 --output-len 512"
S="$S --request-rate 12 --num-prompts 200"
run() {  # run NAME PORT [serve flags]: start the server, G4 at 12 req/s, stop it
  local name=$1 port=$2
  shift 2
  echo "== $name ($(date -u +%T))" | tee -a "$LOG"
  python3 -m octavo.entrypoints.cli serve $M --port "$port" "$@" > "$OUT/server_$name.log" 2>&1 &
  local spid=$!
  for i in $(seq 60); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health')" 2> /dev/null && break
    sleep 1
  done
  echo "ready after ~${i} s" | tee -a "$LOG"
  timeout 75 $S --port "$port" --json "$OUT/g4_$name.json" 2>&1 | grep -v "it/s\]" | tee -a "$LOG"
  kill -TERM $spid
  wait $spid
  echo "server exit status $?" | tee -a "$LOG"
}
run inproc 8021
run core_proc 8022 --engine-core-process
echo "== done $(date -u +%T)" | tee -a "$LOG"

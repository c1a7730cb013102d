#!/bin/bash
# The CPU workloads of ../shared/BENCHMARKS.md (C1-C3) on SmolLM2, in one dtype, with peak RSS and
# start-up: bash benchmarks/cpu_workloads.sh bfloat16|float32 OUTDIR
# Run it on a quiet machine (check `uptime`): on 2 shared cores only ratios from one run mean much.
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
echo "== startup"; T0=$(date +%s.%N) $PY "$(dirname "$0")/../plugin-cuda/scripts/startup_time.py" --model smollm2 --device cpu --dtype $DTYPE 2>&1 | grep STARTUP

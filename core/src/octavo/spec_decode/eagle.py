"""EAGLE and EAGLE-3 proposals: a one-layer head over the target's own hidden states.

The head at position p reads the token at p + 1 and the target's feature at p, and predicts the
token at p + 2; its next k - 1 proposals feed its own output back as the feature. The features:

- EAGLE-1/2 (`method: "eagle"`): the target's last hidden state (after its final norm);
  `fc` maps cat(embedding, feature) to the hidden size, one Llama decoder layer without its
  first input norm follows, and the target's lm_head reads the result.
- EAGLE-3 (`method: "eagle3"`): the residual stream entering three target layers
  (`eagle_aux_hidden_state_layer_ids` in the head's config, else layers 2, L/2 and L - 3, as
  vLLM picks them), concatenated and mapped by `fc`; the `midlayer` normalizes the embedding
  and the feature apart and attends over their concatenation (2 x hidden); a final `norm` and the
  head's own lm_head over a draft vocabulary, whose token i is the target's i + d2t[i].

Checkpoints load in their published layouts (the EAGLE repositories' names; a `model.` prefix
is dropped); the embedding (and EAGLE-1's lm_head) are the target's unless the checkpoint has
its own. The target's runner hands the hidden states of each step over through its
`hidden_tap`; the features of a request's accepted tokens stay, those of rejected ones go.

The head runs in plain torch with a contiguous KV cache per request (one small layer; it does
not use the platform's paged attention), one request at a time. Proposals are drawn like a
draft model's (`draft_model.draw_proposals`): q after the request's own processing, the head's
own seeded stream.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from octavo.layers.rotary import build_cos_sin_cache
from octavo.request import Request
from octavo.sampling import Sampler
from octavo.scheduler import SchedulerOutput
from octavo.spec_decode.draft_model import draw_proposals


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # as Llama normalizes: in float32, back to the input's dtype, then the weight
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _load_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if files:
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            tensors.update(load_file(os.path.join(path, f)))
    elif os.path.exists(os.path.join(path, "pytorch_model.bin")):  # the EAGLE repositories' first heads
        tensors = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"speculative_config model {path!r}: no *.safetensors or pytorch_model.bin in it")
    return {name.removeprefix("model."): t for name, t in tensors.items()}


class EagleHead(nn.Module):
    """The head's forward over one request's positions, with that request's cached keys/values."""

    def __init__(self, path: str, eagle3: bool, target: Any, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        from transformers import AutoConfig

        self.config = cfg = AutoConfig.from_pretrained(path)
        self.eagle3 = eagle3
        self.target = target  # the target's model: its embedding and (EAGLE-1) its lm_head
        w = _load_tensors(path)
        layer = "midlayer." if eagle3 else "layers.0."
        if f"{layer}self_attn.q_proj.weight" not in w:
            method = "eagle" if eagle3 else "eagle3"
            raise ValueError(
                f"speculative_config model {path!r} has no {layer}self_attn.q_proj.weight: not an "
                f"{'EAGLE-3' if eagle3 else 'EAGLE-1/2'} head (method {method!r} may be the one it needs)"
            )
        self.w = {n: t.to(device=device, dtype=dtype) for n, t in w.items() if n not in ("d2t", "t2d")}
        self.prefix = layer
        self.hidden = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // self.heads
        self.eps = cfg.rms_norm_eps
        max_pos = getattr(cfg, "max_position_embeddings", 4096)
        self.register_buffer("cos_sin", build_cos_sin_cache(cfg, self.head_dim, max_pos).to(device), persistent=False)
        # EAGLE-3's draft vocabulary: draft token i is the target's i + d2t[i]
        self.draft_to_target = None
        if eagle3 and "d2t" in w:
            d2t = w["d2t"].to(device=device, dtype=torch.long)
            self.draft_to_target = torch.arange(d2t.shape[0], device=device) + d2t

    cos_sin: torch.Tensor  # a buffer (register_buffer in __init__)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos_sin.index_select(0, positions).chunk(2, dim=-1)
        rot = cos.shape[-1] * 2
        x_rot, x_pass = x[..., :rot].float(), x[..., rot:]
        a, b = x_rot.chunk(2, dim=-1)
        cos, sin = cos[:, None, :], sin[:, None, :]
        out = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).to(x.dtype)
        return torch.cat([out, x_pass], dim=-1)

    def _attention(self, x, positions, past_k, past_v):
        w, p, n = self.w, self.prefix + "self_attn.", x.shape[0]
        q = (x @ w[p + "q_proj.weight"].T).view(n, self.heads, self.head_dim)
        k = (x @ w[p + "k_proj.weight"].T).view(n, self.kv_heads, self.head_dim)
        v = (x @ w[p + "v_proj.weight"].T).view(n, self.kv_heads, self.head_dim)
        q, k = self._rope(q, positions), self._rope(k, positions)
        keys, values = torch.cat([past_k, k]), torch.cat([past_v, v])
        rep = self.heads // self.kv_heads
        kk = keys.repeat_interleave(rep, dim=1).transpose(0, 1)  # [heads, m, d]
        vv = values.repeat_interleave(rep, dim=1).transpose(0, 1)
        scores = (q.transpose(0, 1).float() @ kk.float().transpose(1, 2)) * self.head_dim**-0.5
        m = keys.shape[0]
        # query i (at cache index m - n + i) sees the cache and the new positions up to itself
        causal = torch.arange(m, device=x.device)[None, :] > (torch.arange(n, device=x.device)[:, None] + m - n)
        scores = scores.masked_fill(causal, float("-inf"))
        out = (scores.softmax(-1) @ vv.float()).to(x.dtype).transpose(0, 1).reshape(n, -1)
        return out @ w[p + "o_proj.weight"].T, k, v

    def _mlp(self, x):
        w, p = self.w, self.prefix + "mlp."
        gate = torch.nn.functional.silu(x @ w[p + "gate_proj.weight"].T)
        return (gate * (x @ w[p + "up_proj.weight"].T)) @ w[p + "down_proj.weight"].T

    def empty_cache(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        empty = torch.empty(0, self.kv_heads, self.head_dim, device=device, dtype=dtype)
        return empty, empty

    def forward(self, tokens, features, positions, past_k, past_v):
        """tokens [n] (those at positions + 1), features [n, F], positions [n] -> (the feature
        for the next proposal [n, hidden], logits over the target's vocabulary [n, V] float32,
        the new positions' keys and values)."""
        w = self.w
        embeds = w["embed_tokens.weight"].index_select(0, tokens) if "embed_tokens.weight" in w else None
        if embeds is None:
            embeds = self.target.embed(tokens)
        if self.eagle3:
            # the target's fused layers on the first step; the head's own output after it
            h = features @ w["fc.weight"].T if features.shape[-1] != self.hidden else features
            residual = h
            e = _rms_norm(embeds, w["midlayer.input_layernorm.weight"], self.eps)
            x = torch.cat([e, _rms_norm(h, w["midlayer.hidden_norm.weight"], self.eps)], dim=-1)
        else:
            x = torch.nn.functional.linear(torch.cat([embeds, features], dim=-1), w["fc.weight"], w.get("fc.bias"))
            residual = x  # the first layer has no input norm
        attn, k, v = self._attention(x, positions, past_k, past_v)
        x = residual + attn
        x = x + self._mlp(_rms_norm(x, w[self.prefix + "post_attention_layernorm.weight"], self.eps))
        if not self.eagle3:
            logits = self.target.compute_logits(x) if "lm_head.weight" not in w else (x @ w["lm_head.weight"].T)
            return x, logits.float(), k, v
        draft_logits = (_rms_norm(x, w["norm.weight"], self.eps) @ w["lm_head.weight"].T).float()
        if self.draft_to_target is None:
            return x, draft_logits, k, v
        logits = torch.full((x.shape[0], self.target_vocab), float("-inf"), device=x.device)
        logits[:, self.draft_to_target] = draft_logits
        return x, logits, k, v

    target_vocab = 0  # set by the proposer: the width of the target's logits


@dataclasses.dataclass
class _HeadState:
    base: int  # the position of features[0]
    features: torch.Tensor  # [n, F]: the target's features of positions base .. base + n - 1
    keys: torch.Tensor  # the head's cache for positions base .. base + fed - 1
    values: torch.Tensor

    @property
    def fed(self) -> int:
        return self.keys.shape[0]


def aux_layer_ids(head_config: Any, num_layers: int) -> list[int]:
    """The target layers whose input residual streams EAGLE-3 fuses."""
    ids = getattr(head_config, "eagle_aux_hidden_state_layer_ids", None)
    if ids is None:
        ids = [2, num_layers // 2, num_layers - 3]  # vLLM's choice for heads that do not say
    bad = [i for i in ids if not 0 <= i < num_layers]
    if bad:
        raise ValueError(
            f"EAGLE-3 head: aux hidden state layers {bad} are outside the target's {num_layers} layers; set "
            "eagle_aux_hidden_state_layer_ids in the head's config.json"
        )
    return list(ids)


class EagleProposer:
    def __init__(self, num_speculative_tokens: int, method: str, path: str, runner: Any, vocab_size: int) -> None:
        """The head of `path` over the target `runner`'s model (core's ModelRunner, in process)."""
        model = getattr(runner, "model", None)
        if model is None or not hasattr(runner, "hidden_tap") or runner.workers is not None:
            raise ValueError(
                f"speculative_config method {method!r} reads the target's hidden states in this process: "
                "it needs core's ModelRunner without tensor or pipeline parallel workers"
            )
        self.k = num_speculative_tokens
        self.vocab_size = vocab_size
        self.head = EagleHead(path, method == "eagle3", model, runner.dtype, runner.device)
        self.head.target_vocab = vocab_size
        self.device, self.dtype = runner.device, runner.dtype
        self.sampler = Sampler(runner.device, runner.sampler.draw)
        self.sampler.stream = "eagle"  # its own seeded draws, never the target's uniforms (see draft_model)
        self.states: dict[str, _HeadState] = {}
        # the last step's features per request: (first position, rows), until `observe` keeps them
        self._step: dict[str, tuple[int, torch.Tensor]] = {}
        self._aux: dict[int, torch.Tensor] = {}
        self._hooks = []
        if method == "eagle3":
            layers = model.layers
            self.aux_ids = aux_layer_ids(self.head.config, len(layers))
            for i in sorted(set(self.aux_ids)):
                self._hooks.append(layers[i].register_forward_pre_hook(self._capture(i)))
        runner.hidden_tap = self._tap

    def _capture(self, index: int):
        def hook(_module, args):
            x, residual = args[0], args[1]
            self._aux[index] = x if residual is None else x + residual  # the residual stream entering the layer

        return hook

    def _tap(self, out: SchedulerOutput, hidden: torch.Tensor, qsl: list[int]) -> None:
        """The runner's hook after each forward: the step's features per request."""
        if self.head.eagle3:
            if len(self._aux) < len(set(self.aux_ids)):
                self._step = {}  # a replayed graph skips the hooks: no features this step
                return
            hidden = torch.cat([self._aux[i] for i in self.aux_ids], dim=-1)
            self._aux = {}
        self._step = {s.request_id: (s.start_pos, hidden[qsl[i] : qsl[i + 1]]) for i, s in enumerate(out.scheduled)}

    def observe(self, out: SchedulerOutput, num_accepted: dict[str, int]) -> None:
        """Keep the features of a finished step's computed tokens: all of a prompt chunk's or a
        decode's, of a verification only the last known token's and the accepted proposals'."""
        step, self._step = self._step, {}
        for s in out.scheduled:
            if s.request_id not in step:
                continue
            start, rows = step[s.request_id]
            if s.spec_token_ids:
                if s.request_id not in num_accepted:
                    continue  # its verification failed
                rows = rows[: len(s.token_ids) - len(s.spec_token_ids) + num_accepted[s.request_id]]
            st = self.states.get(s.request_id)
            if st is None or not st.base <= start <= st.base + st.features.shape[0]:
                # new, or a gap (a prefix-cache hit computes no features): start over from here
                empty = self.head.empty_cache(self.device, self.dtype)
                st = self.states[s.request_id] = _HeadState(start, rows[:0], *empty)
            keep = start - st.base  # a preempted request recomputes from an earlier position
            st.features = torch.cat([st.features[:keep], rows])
            st.keys, st.values = st.keys[:keep], st.values[:keep]

    @torch.inference_mode()
    def propose_batch(self, reqs: list[Request]) -> None:
        live, logits, outs, positions = [], [], [], []
        for req in reqs:
            req.spec_token_ids, req.spec_probs = [], None
            st = self.states.get(req.request_id)
            n = 0 if st is None else st.features.shape[0]
            if st is None or n == 0 or st.base + n != req.num_tokens - 1:
                continue  # the features of some context token are missing
            # feed what the cache lacks, at least the last position (its output proposes)
            fed = min(st.fed, n - 1)
            pos = torch.arange(st.base + fed, st.base + n, device=self.device)
            ids = torch.tensor(req.token_ids[st.base + fed + 1 : st.base + n + 1], device=self.device)
            keys, values = st.keys[:fed], st.values[:fed]
            out, lg, k, v = self.head(ids, st.features[fed:], pos, keys, values)
            st.keys, st.values = torch.cat([keys, k]), torch.cat([values, v])
            live.append(req)
            logits.append(lg[-1])
            outs.append(out[-1:])
            positions.append(st.base + n)
        if not live:
            return
        drafts: dict[str, list[int]] = {req.request_id: [] for req in live}
        q_rows: dict[str, list[torch.Tensor]] = {req.request_id: [] for req in live}
        extra = {req.request_id: self.head.empty_cache(self.device, self.dtype) for req in live}
        for j in range(self.k):
            q, tokens = draw_proposals(self.sampler, torch.stack(logits), live, drafts, j, self.vocab_size)
            # a draft vocabulary may miss every allowed token: q is NaN then, and no proposal is made
            usable = (q.sum(-1) > 0).tolist()
            nxt = []
            for i, req in enumerate(live):
                if not usable[i]:
                    continue
                drafts[req.request_id].append(tokens[i])
                q_rows[req.request_id].append(q[i])
                nxt.append(i)
            if j == self.k - 1:
                break
            logits_next, outs_next, live_next, pos_next = [], [], [], []
            for i in nxt:
                req, st = live[i], self.states[live[i].request_id]
                k0, v0 = extra[req.request_id]
                pos = torch.tensor([positions[i]], device=self.device)
                token = torch.tensor([tokens[i]], device=self.device)
                out, lg, k, v = self.head(token, outs[i], pos, torch.cat([st.keys, k0]), torch.cat([st.values, v0]))
                extra[req.request_id] = (torch.cat([k0, k]), torch.cat([v0, v]))
                logits_next.append(lg[-1])
                outs_next.append(out)
                live_next.append(req)
                pos_next.append(positions[i] + 1)
            if not live_next:
                break
            live, logits, outs, positions = live_next, logits_next, outs_next, pos_next
        for rid, d in drafts.items():
            if d:
                req = next(r for r in reqs if r.request_id == rid)
                req.spec_token_ids = d
                req.spec_probs = None if req.sampling_params.greedy else torch.stack(q_rows[rid])

    def forget(self, request_id: str) -> None:
        self.states.pop(request_id, None)
        self.sampler.forget(request_id)

    def shutdown(self) -> None:
        for h in self._hooks:
            h.remove()

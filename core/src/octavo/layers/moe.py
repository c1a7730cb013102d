"""Mixture-of-experts layers: routing, the routed experts (the platform's `fused_moe`), shared experts.

Routing is written as transformers computes it, op for op (the same torch.topk calls, so ties
between equal scores go the same way): `TopKRouting` is softmax top-k with or without
renormalization (Mixtral, Qwen2-MoE's `norm_topk_prob`, Qwen3-MoE), `GroupedTopKRouting`
DeepSeek's: experts in `num_groups` groups, the best `topk_groups` groups first, softmax or
sigmoid scores, V3's score correction bias (noaux_tc) and `routed_scaling_factor`.

Parallelism. Without expert parallelism the experts are tensor parallel like a dense MLP:
every rank holds every expert's slice of the intermediate features and returns partial sums.
With it (`expert_parallel`, `--enable-expert-parallel`), each rank holds E / world_size whole
experts; the tokens, which every rank holds (attention stays tensor parallel), are cut into
one slice per rank, and each rank sends each (token, expert) pair of its slice to the rank
holding that expert with the communicator's `all_to_all`, which runs the expert and sends the
result back the same way (dispatch and combine). Either way `FusedMoE.forward` returns this
rank's part of the output, and the block sums the parts with one all_reduce, together with
the shared experts' partial sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from octavo.layers.attention import even_split
from octavo.layers.linear import Linear
from octavo.platform import Platform
from octavo.platform.ops import MOE_ACTIVATIONS


@dataclass(frozen=True)
class TopKRouting:
    """softmax(logits) in float32, its top_k, renormalized to sum 1 when `renormalize`;
    `round_weights` rounds the weights to the logits' dtype as Qwen's MoE blocks do
    (Mixtral's stay float32)."""

    top_k: int
    renormalize: bool
    round_weights: bool = False

    def __call__(self, logits: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [T, E] -> (weights [T, top_k] float32, expert ids [T, top_k] int64)."""
        assert bias is None, "softmax top-k routing has no correction bias"
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            weights /= weights.sum(dim=-1, keepdim=True)
        if self.round_weights:
            weights = weights.to(logits.dtype).float()
        return weights, ids


@dataclass(frozen=True)
class GroupedTopKRouting:
    """DeepSeek's routing. scores = softmax(logits) (V2) or sigmoid(logits) (V3). With a
    correction bias (V3's noaux_tc) the choice ranks scores + bias, a group by the sum of its
    two best, and groups left out are -inf; without one (V2's group_limited_greedy) a group
    ranks by its best score and the groups left out are 0. The weights are the chosen
    experts' scores (never the bias), renormalized when `renormalize`, times `scaling`.
    num_groups 1 (or topk_groups == num_groups) is plain top-k: V2's `greedy`."""

    top_k: int
    num_groups: int = 1
    topk_groups: int = 1
    scoring: str = "softmax"
    renormalize: bool = False
    scaling: float = 1.0

    def __call__(self, logits: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [T, E] (float32 in DeepSeek) -> (weights [T, top_k] float32, ids [T, top_k] int64)."""
        if self.scoring == "softmax":
            scores = logits.softmax(dim=-1, dtype=torch.float32)
        elif self.scoring == "sigmoid":
            scores = logits.float().sigmoid()
        else:
            raise ValueError(f"scoring function {self.scoring!r} is not supported; supported: softmax, sigmoid")
        choice = scores if bias is None else scores + bias
        t, e = choice.shape
        if self.topk_groups < self.num_groups:
            grouped = choice.view(t, self.num_groups, e // self.num_groups)
            if bias is None:
                group_scores = grouped.max(dim=-1).values
            else:
                group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
            group_idx = torch.topk(group_scores, k=self.topk_groups, dim=-1, sorted=False)[1]
            group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
            score_mask = group_mask.unsqueeze(-1).expand(t, self.num_groups, e // self.num_groups).reshape(t, e)
            choice = choice.masked_fill(~score_mask.bool(), 0.0 if bias is None else float("-inf"))
        ids = torch.topk(choice, k=self.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, ids)
        if self.renormalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.scaling, ids


Routing = TopKRouting | GroupedTopKRouting


class FusedMoE(nn.Module):
    """The routed experts of one layer: a router (`gate`, E logits per token), the routing
    rule, and the experts' weights stacked for the platform's `fused_moe`: w13 [E_local,
    2 * I_local, H] (gate rows, then up rows) and w2 [E_local, H, I_local].

    The stacks are stored flat ([E_local * 2 * I_local, H] and [E_local * H, I_local]) so
    that a checkpoint's per-expert tensors load as row ranges of one parameter, as q, k and v
    load into qkv_proj (`expert_target`); forward views them 3-d (a free view)."""

    def __init__(
        self,
        platform: Platform,
        hidden: int,
        intermediate: int,
        num_experts: int,
        routing: Routing,
        hidden_act: str = "silu",
        expert_parallel: bool = False,
        correction_bias: bool = False,
    ) -> None:
        super().__init__()
        if hidden_act not in MOE_ACTIVATIONS:
            raise ValueError(
                f"expert activation {hidden_act!r} is not supported; supported: {', '.join(sorted(MOE_ACTIVATIONS))}"
            )
        comm = platform.communicator
        self.platform, self.routing, self.activation = platform, routing, hidden_act
        self.hidden, self.num_experts = hidden, num_experts
        self.world, self.rank = comm.world_size, comm.rank
        self.expert_parallel = expert_parallel and self.world > 1
        if self.expert_parallel:
            if num_experts % self.world:
                raise ValueError(
                    f"expert parallelism over {self.world} ranks cannot split {num_experts} experts evenly; "
                    "use a tensor_parallel_size that divides the expert count, or leave out --enable-expert-parallel"
                )
            self.num_local = num_experts // self.world
            self.expert_start = self.rank * self.num_local
            self.inter_start, self.intermediate = 0, intermediate
        else:
            self.num_local, self.expert_start = num_experts, 0
            self.inter_start, self.intermediate = even_split(intermediate, self.world, self.rank)
        self.total_intermediate = intermediate
        self.gate = Linear(hidden, num_experts, platform.linear)  # the router: whole on every rank
        self.w13 = nn.Parameter(torch.empty(self.num_local * 2 * self.intermediate, hidden), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(self.num_local * hidden, self.intermediate), requires_grad=False)
        # V3's per-expert correction of the scores that choose (not of the weights); float32 as in transformers
        self.correction_bias = (
            nn.Parameter(torch.zeros(num_experts, dtype=torch.float32), requires_grad=False)
            if correction_bias
            else None
        )

    def experts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13 [E_local, 2 I_local, H], w2 [E_local, H, I_local]): views of the stored stacks."""
        return (
            self.w13.view(self.num_local, 2 * self.intermediate, self.hidden),
            self.w2.view(self.num_local, self.hidden, self.intermediate),
        )

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] -> (weights [T, K] float32, global expert ids [T, K])."""
        bias = None if self.correction_bias is None else self.correction_bias.float()
        return self.routing(self.gate(x), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, H] -> this rank's part of the experts' output [T, H] (the block all-reduces)."""
        w13, w2 = self.experts()
        if not self.expert_parallel:
            weights, ids = self.route(x)
            return self.platform.ops.fused_moe(x, w13, w2, weights, ids, self.activation)
        start, n = even_split(x.shape[0], self.world, self.rank)
        out = torch.zeros_like(x)
        out[start : start + n] = self._dispatch_and_combine(x[start : start + n], w13, w2)
        return out

    def _dispatch_and_combine(self, xs: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        """This rank's token slice xs [n, H] through the experts, wherever they are held.

        Each (token, k) pair goes to the rank holding its expert. all_to_all moves equal
        chunks, so every rank pads its chunk for each peer to `cap`, the most pairs any rank
        sends any other (from an all_gather of the per-rank counts); padding rows carry
        expert -1, which fused_moe skips. The routing weights stay here: the holder returns
        each pair's unweighted expert output and the weighted sum is taken on this rank."""
        comm, world, local = self.platform.communicator, self.world, self.num_local
        weights, ids = self.route(xs)
        k = ids.shape[1]
        flat = ids.reshape(-1)
        owner = flat // local
        order = torch.argsort(owner, stable=True)  # pairs grouped by the rank holding their expert
        counts = torch.bincount(owner, minlength=world)
        cap = int(comm.all_gather(counts.unsqueeze(0), dim=0).max())
        if cap == 0:  # no rank has a token this step (fewer tokens than ranks hold nothing to send)
            return torch.zeros_like(xs)
        first = torch.cumsum(counts, 0) - counts  # where each owner's pairs start in `order`
        owners = owner[order]
        slot = owners * cap + torch.arange(order.numel(), device=xs.device) - first[owners]
        send = xs.new_zeros(world * cap, xs.shape[1])
        send[slot] = xs[order // k]
        send_ids = torch.full((world * cap,), -1, dtype=torch.int64, device=xs.device)
        send_ids[slot] = flat[order] - owners * local
        recv, recv_ids = comm.all_to_all(send), comm.all_to_all(send_ids)
        ones = torch.ones(world * cap, 1, dtype=torch.float32, device=xs.device)
        done = self.platform.ops.fused_moe(recv, w13, w2, ones, recv_ids.unsqueeze(1), self.activation)
        back = comm.all_to_all(done)
        out = torch.zeros(xs.shape, dtype=torch.float32, device=xs.device)
        out.index_add_(0, order // k, back[slot].float() * weights.reshape(-1)[order, None])
        return out.to(xs.dtype)

    def expert_target(
        self, expert: int, kind: str
    ) -> tuple[nn.Parameter | None, tuple[int, int], tuple[int, int, int]]:
        """Where checkpoint tensor `kind` ("gate", "up" or "down") of expert `expert` loads:
        (parameter, rows in it, this rank's slice of the tensor) as the models' `_target`
        returns them; parameter None for an expert another rank holds."""
        local = expert - self.expert_start
        if not 0 <= local < self.num_local:
            if 0 <= expert < self.num_experts:
                return None, (0, 0), (0, 0, 0)
            raise KeyError(f"expert {expert}")
        inter, src = self.intermediate, (self.inter_start, self.total_intermediate)
        if kind == "gate":
            return self.w13, (local * 2 * inter, inter), (0, *src)
        if kind == "up":
            return self.w13, (local * 2 * inter + inter, inter), (0, *src)
        if kind == "down":
            return self.w2, (local * self.hidden, self.hidden), (1, *src)
        raise KeyError(kind)


class SharedExpert(nn.Module):
    """An expert every token goes through (Qwen2-MoE's, DeepSeek's n_shared_experts as one
    wider MLP), tensor parallel like a dense MLP; returns this rank's partial sums, which the
    block all-reduces with the routed experts'. With `gated`, scaled per token by
    sigmoid(shared_expert_gate(x)) (Qwen2-MoE): one number per token, the same on every
    rank, so it scales the partial sums as it would their total."""

    def __init__(self, platform: Platform, hidden: int, intermediate: int, gated: bool, hidden_act: str = "silu"):
        super().__init__()
        comm = platform.communicator
        self.platform, self.activation = platform, hidden_act
        self.total_intermediate = intermediate
        self.inter_start, self.intermediate = even_split(intermediate, comm.world_size, comm.rank)
        self.gate_up_proj = Linear(hidden, 2 * self.intermediate, platform.linear)
        self.down_proj = Linear(self.intermediate, hidden, platform.linear)
        self.expert_gate = Linear(hidden, 1, platform.linear) if gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(MOE_ACTIVATIONS[self.activation](self.gate_up_proj(x)))
        if self.expert_gate is not None:
            out = torch.sigmoid(self.expert_gate(x)) * out
        return out

    def linear_entries(self, prefix: str) -> dict[str, tuple[Linear, tuple[int, int] | None, tuple[int, int, int]]]:
        """The checkpoint's linear layers under `prefix` (`mlp.shared_expert`), as `_linear_entry` maps them."""
        inter, src = self.intermediate, (0, self.inter_start, self.total_intermediate)
        return {
            f"{prefix}.gate_proj": (self.gate_up_proj, (0, inter), src),
            f"{prefix}.up_proj": (self.gate_up_proj, (inter, inter), src),
            f"{prefix}.down_proj": (self.down_proj, None, (1, *src[1:])),
        }


class MoEBlock(nn.Module):
    """A layer's MLP made of experts: routed experts plus optional shared ones, the ranks'
    parts summed by one all_reduce."""

    def __init__(self, platform: Platform, experts: FusedMoE, shared: SharedExpert | None = None) -> None:
        super().__init__()
        self.platform = platform
        self.experts = experts
        self.shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x)
        if self.shared is not None:
            out = out + self.shared(x)
        return self.platform.communicator.all_reduce(out)

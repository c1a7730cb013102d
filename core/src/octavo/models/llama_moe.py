"""The Llama graph with mixture-of-experts MLPs (octavo.layers.moe): what Mixtral, Qwen2-MoE and
Qwen3-MoE share. A subclass says which layers are sparse, how they route and whether they
have a shared expert (`make_moe`), and where the checkpoint keeps the experts (`moe_prefix`,
`EXPERT_KINDS`).

Checkpoints store each expert's projections apart (`experts.3.w1.weight`, Qwen's
`experts.3.gate_proj.weight`); transformers 5 models hold them fused ([E, 2I, H]
`experts.gate_up_proj`, [E, H, I] `experts.down_proj`), which load too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from octavo.layers.linear import Linear
from octavo.layers.moe import FusedMoE, MoEBlock
from octavo.models.llama import DecoderLayer, LlamaForCausalLM
from octavo.models.structure import DecoderStructure
from octavo.platform import Platform
from octavo.quantization.scheme import QuantizationError

#: a checkpoint's name of an expert's projection -> its place in the stacked weights
EXPERT_KINDS = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


class MoELlamaForCausalLM(LlamaForCausalLM):
    #: where a sparse layer's weights sit in the checkpoint (`layers.N.<moe_prefix>.experts...`)
    moe_prefix = "mlp"
    #: which layer `make_mlp` builds (DecoderLayer asks for its MLP without saying)
    _building: int = 0

    def __init__(self, platform: Platform, hf_config, max_positions: int, enable_expert_parallel: bool = False) -> None:
        self.expert_parallel = enable_expert_parallel
        self._moe_blocks: dict[int, MoEBlock] = {}  # by layer index, for loading (the modules sit in self.layers)
        super().__init__(platform, hf_config, max_positions)

    # ---- what the MoE architectures change --------------------------------------------
    def is_sparse(self, index: int) -> bool:
        """Whether layer `index`'s MLP is made of experts (every layer's, unless a subclass says)."""
        return True

    def make_moe(self) -> MoEBlock:
        raise NotImplementedError

    def routed_experts(self, intermediate: int, num_experts: int, routing) -> FusedMoE:
        """The routed experts as the config describes them, split as this run's parallelism asks."""
        return FusedMoE(
            self.platform,
            self.config.hidden_size,
            intermediate,
            num_experts,
            routing,
            getattr(self.config, "hidden_act", None) or "silu",
            self.expert_parallel,
        )

    # ---- the Llama graph's hooks ----------------------------------------------------------
    def make_layer(self, index: int) -> DecoderLayer:
        self._building = index
        return DecoderLayer(self, index)

    def make_mlp(self):
        if not self.is_sparse(self._building):
            return super().make_mlp()
        block = self.make_moe()
        self._moe_blocks[self._building] = block
        return block

    def structure(self) -> DecoderStructure | None:
        return None  # DecoderStructure describes dense MLPs only

    def _mlp_entries(self, mlp) -> dict[str, tuple[Linear, tuple[int, int] | None, tuple[int, int, int] | None]]:
        if not isinstance(mlp, MoEBlock):
            return super()._mlp_entries(mlp)
        prefix = self.moe_prefix
        entries: dict[str, tuple[Linear, tuple[int, int] | None, tuple[int, int, int] | None]] = {
            f"{prefix}.gate": (mlp.experts.gate, None, None)  # the router: whole on every rank
        }
        if mlp.shared is not None:
            entries.update(mlp.shared.linear_entries(f"{prefix}.shared_expert"))
            if mlp.shared.expert_gate is not None:
                entries[f"{prefix}.shared_expert_gate"] = (mlp.shared.expert_gate, None, None)
        return entries

    def _target(self, name: str):
        parts = name.removeprefix("model.").split(".")
        # layers.N.<prefix>.experts.E.<kind>.weight
        if len(parts) == 7 and parts[0] == "layers" and parts[3] == "experts" and parts[2] == self.moe_prefix:
            if parts[6] != "weight" or parts[5] not in EXPERT_KINDS:
                raise KeyError(name)
            index = int(parts[1])
            if not self.is_sparse(index):
                raise KeyError(name)
            if index not in self._moe_blocks:  # a layer another pipeline stage holds
                return None, None, None
            return self._moe_blocks[index].experts.expert_target(int(parts[4]), EXPERT_KINDS[parts[5]])
        return super()._target(name)

    def linear_for(self, stem: str) -> Linear | None:
        parts = stem.removeprefix("model.").split(".")
        if len(parts) > 3 and parts[2] == self.moe_prefix and parts[3] == "experts":
            raise QuantizationError(
                f"quantized experts ({stem}) are not supported: octavo's fused_moe runs dense float32/bfloat16/"
                "float16 experts; serve the unquantized checkpoint (attention and shared experts may be quantized "
                "only in a checkpoint whose experts are not)"
            )
        return super().linear_for(stem)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(self._split_fused_experts(weights))

    def _split_fused_experts(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """transformers 5's fused expert tensors (and names) as the per-expert tensors checkpoints store."""
        names = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
        if self.moe_prefix == "block_sparse_moe":
            names = {"gate": "w1", "up": "w3", "down": "w2"}
        for name, tensor in weights:
            if self.moe_prefix != "mlp" and (".mlp.gate." in name or ".mlp.experts." in name):
                name = name.replace(".mlp.", f".{self.moe_prefix}.", 1)  # transformers 5 calls Mixtral's block `mlp`
            stem, _, last = name.rpartition(".")
            if not stem.endswith(f"{self.moe_prefix}.experts") or last not in ("gate_up_proj", "down_proj"):
                yield name, tensor
                continue
            for e in range(tensor.shape[0]):
                if last == "down_proj":
                    yield f"{stem}.{e}.{names['down']}.weight", tensor[e]
                else:
                    gate, up = tensor[e].chunk(2, dim=0)
                    yield f"{stem}.{e}.{names['gate']}.weight", gate
                    yield f"{stem}.{e}.{names['up']}.weight", up

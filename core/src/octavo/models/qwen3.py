"""Qwen3: the Llama graph with a per-head RMSNorm on q and k before rotary."""

from octavo.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    qk_norm = True

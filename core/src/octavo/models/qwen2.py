"""Qwen2: the Llama graph with bias on the q/k/v projections."""

from octavo.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True

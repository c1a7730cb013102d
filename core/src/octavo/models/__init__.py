"""Model registry: architecture name (config.architectures[0]) -> model class, one level, lazy."""

from __future__ import annotations

import importlib

_REGISTRY = {
    "DeepseekV2ForCausalLM": ("octavo.models.deepseek_v2", "DeepseekV2ForCausalLM"),
    "DeepseekV3ForCausalLM": ("octavo.models.deepseek_v2", "DeepseekV3ForCausalLM"),
    "Gemma2ForCausalLM": ("octavo.models.gemma2", "Gemma2ForCausalLM"),
    "Gemma3ForCausalLM": ("octavo.models.gemma3", "Gemma3ForCausalLM"),
    "GraniteForCausalLM": ("octavo.models.granite", "GraniteForCausalLM"),
    "LlamaForCausalLM": ("octavo.models.llama", "LlamaForCausalLM"),
    "LlavaForConditionalGeneration": ("octavo.models.llava", "LlavaForConditionalGeneration"),
    "LlavaNextForConditionalGeneration": ("octavo.models.llava", "LlavaNextForConditionalGeneration"),
    "MistralForCausalLM": ("octavo.models.llama", "LlamaForCausalLM"),
    "MixtralForCausalLM": ("octavo.models.mixtral", "MixtralForCausalLM"),
    "Olmo2ForCausalLM": ("octavo.models.olmo2", "Olmo2ForCausalLM"),
    "Phi3ForCausalLM": ("octavo.models.phi3", "Phi3ForCausalLM"),
    "Qwen2ForCausalLM": ("octavo.models.qwen2", "Qwen2ForCausalLM"),
    "Qwen2MoeForCausalLM": ("octavo.models.qwen2_moe", "Qwen2MoeForCausalLM"),
    "Qwen3ForCausalLM": ("octavo.models.qwen3", "Qwen3ForCausalLM"),
    "Qwen2VLForConditionalGeneration": ("octavo.models.qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "Qwen2_5_VLForConditionalGeneration": ("octavo.models.qwen2_vl", "Qwen2_5_VLForConditionalGeneration"),
    "Qwen3MoeForCausalLM": ("octavo.models.qwen3_moe", "Qwen3MoeForCausalLM"),
    # pooling models (LLM(..., runner="pooling")): bodies without the LM head, classifiers
    "LlamaModel": ("octavo.models.pooling_heads", "LlamaModel"),
    "MistralModel": ("octavo.models.pooling_heads", "LlamaModel"),
    "Qwen2Model": ("octavo.models.pooling_heads", "Qwen2Model"),
    "Qwen3Model": ("octavo.models.pooling_heads", "Qwen3Model"),
    "LlamaForSequenceClassification": ("octavo.models.pooling_heads", "LlamaForSequenceClassification"),
    "MistralForSequenceClassification": ("octavo.models.pooling_heads", "LlamaForSequenceClassification"),
    "Qwen2ForSequenceClassification": ("octavo.models.pooling_heads", "Qwen2ForSequenceClassification"),
    "Qwen3ForSequenceClassification": ("octavo.models.pooling_heads", "Qwen3ForSequenceClassification"),
    "BertModel": ("octavo.models.bert", "BertModel"),
    "BertForSequenceClassification": ("octavo.models.bert", "BertForSequenceClassification"),
    "XLMRobertaModel": ("octavo.models.bert", "XLMRobertaModel"),
    "XLMRobertaForSequenceClassification": ("octavo.models.bert", "XLMRobertaForSequenceClassification"),
}
_MODEL_TYPES = {
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "granite": "GraniteForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "bert": "BertModel",
    "xlm-roberta": "XLMRobertaModel",
}


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def get_model_class(hf_config):
    archs = list(getattr(hf_config, "architectures", None) or [])
    model_type = getattr(hf_config, "model_type", None)
    if not archs and model_type in _MODEL_TYPES:
        archs = [_MODEL_TYPES[model_type]]
    for arch in archs:
        if arch in _REGISTRY:
            module, name = _REGISTRY[arch]
            return getattr(importlib.import_module(module), name)
    raise ValueError(
        f"model architecture {archs or model_type or '?'} is not supported; "
        f"supported: {', '.join(supported_architectures())}"
    )

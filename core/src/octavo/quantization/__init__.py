"""Quantized checkpoints: which formats a checkpoint's layers are stored in (`checkpoint`),
the canonical layout each format is loaded into (`scheme`, `layouts`), core's dequantization
of it (`dequant`) and core's quantized linear method (`linear`), and the swap of a built
model's linear methods before loading (`apply`)."""

from octavo.quantization.scheme import GGUF_TYPES, QuantizationError, QuantScheme

__all__ = ["GGUF_TYPES", "QuantScheme", "QuantizationError"]

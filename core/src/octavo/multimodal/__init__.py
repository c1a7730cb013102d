"""Images beside text: input checks, hashes, the checkpoint's processor, and the vision
encoder's schedule (encoder_budget, no torch) and outputs (encoder_cache). See docs/multimodal.md."""

from octavo.multimodal.inputs import MultiModalInputError, MultiModalInputs, MultiModalItem

__all__ = ["MultiModalInputError", "MultiModalInputs", "MultiModalItem"]

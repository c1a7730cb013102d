"""The Neuron platform: TorchNeuron's device, core's model compiled per static shape by
neuronx-cc (`torch.compile(backend="neuron")`), on-device sampling.

What it declares to core, and why:

- **Buckets** (`SHAPES`): a Neuron program has fixed shapes, so every step is padded to one of
  these and all of them compile at start-up. Decode steps are as many tokens as requests, so
  the token buckets start small; prompts run whole, so they reach the budget.
- **No chunked prefill, no mixed steps**: a prompt runs in one step, and prefill and decode
  steps alternate, as vLLM's Neuron scheduler and NxD Inference's separate context-encoding and
  token-generation programs do.
- **Block size 32** (`BLOCK_SIZE`), with paged (block) KV. vLLM's Neuron plugin sets the block
  size to max_model_len unless prefix caching is on, because NxD Inference's default KV layout is
  one contiguous cache per sequence slot; with prefix caching it takes the block-KV layout and a
  user-chosen block size (NxD Inference's example: 32). This platform's attention always reads
  through block tables, so it takes the block-KV choice: prefix caching works, and block tables
  are bucketed by context length (a short context reads 4 blocks, not max_model_len).
- **Attention**: octavo-static's `StaticAttention` in torch ops. No NKI kernel: none could be
  checked here (NKI has no simulator on PyPI), so none is shipped.
- **Tensor parallelism**: not implemented (it would be SPMD over NeuronCores in one process);
  tensor_parallel_size must be 1.
"""

from __future__ import annotations

from typing import ClassVar

from octavo.platform import Availability, Platform, SchedulingPolicy, StaticShapes
from octavo_neuron import sdk
from octavo_neuron.device import NeuronDevice
from octavo_neuron.runner import NeuronRunner
from octavo_static.attention import StaticAttention

#: 5 x 3 x 3 shapes at most (fewer when max_model_len, the token budget or max_num_seqs cut them)
SHAPES = StaticShapes(token_buckets=(8, 32, 128, 512, 2048), request_buckets=(1, 8, 32), block_buckets=(4, 16, 64))
BLOCK_SIZE = 32


class NeuronPlatform(Platform):
    name = "neuron"
    api_version = "2.0"
    package = "octavo-neuron"
    device_cls = NeuronDevice
    attention_cls = StaticAttention
    runner_cls = NeuronRunner
    scheduling = SchedulingPolicy(
        default_max_num_batched_tokens=SHAPES.token_buckets[-1],
        chunked_prefill=False,
        mixed_steps=False,
        block_size=BLOCK_SIZE,
        static_shapes=SHAPES,
    )
    #: the torch.compile back end of every program (TorchNeuron's, which runs neuronx-cc)
    _compile_backend: ClassVar[str] = "neuron"

    @classmethod
    def availability(cls) -> Availability:
        status = sdk.probe()
        return Availability(100 if status.usable else 0, status.reason)

    def check_and_update_config(self, config) -> None:
        tp = config.parallel.tensor_parallel_size
        if tp != 1:
            raise ValueError(
                f"device {self.name!r} does not run tensor parallelism yet (tensor_parallel_size={tp}): "
                "use tensor_parallel_size=1"
            )

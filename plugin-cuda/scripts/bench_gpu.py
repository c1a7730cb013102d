"""`octavo bench throughput` with one change for load_format=dummy on CUDA: the transformers
model for --compare hf is built directly on the GPU (`with torch.device("cuda")`) instead of
randomly initialised on the CPU and copied over, which took over 5 minutes for 8B shapes on
the lent machine's 16 cores. The timed part (generate) is unchanged.

    python3 plugin-cuda/scripts/bench_gpu.py bench throughput ARGS...   (same arguments as `octavo`)
"""

import sys

import torch

import octavo.entrypoints.bench_throughput as bt

_load = bt.load_hf_model


def load_hf_model(engine):  # an octavo.entrypoints.bench_throughput.HfTarget
    cfg = engine.model_config
    if cfg.load_format != "dummy" or engine.platform.device_type != "cuda":
        return _load(engine)
    from transformers import AutoModelForCausalLM

    with torch.device(engine.platform.torch_device()):
        model = AutoModelForCausalLM.from_config(cfg.hf_config, dtype=cfg.dtype)
    return model.eval(), torch


bt.load_hf_model = load_hf_model

if __name__ == "__main__":
    from octavo.entrypoints.cli import main

    sys.exit(main(sys.argv[1:]))

"""Write a Llama-3.1-8B-shaped model folder (config.json + a tokenizer) for load_format=dummy.

    python3 plugin-cuda/scripts/make_llama8b_dir.py TOKENIZER_DIR OUT_DIR

The tokenizer (e.g. SmolLM2's, saved with save_pretrained) only has to produce ids below
the model's vocab (128256); the benchmarks draw random token ids from it.
"""

import json
import os
import shutil
import sys

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16",
}

if __name__ == "__main__":
    tok, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    for name in os.listdir(tok):
        shutil.copy(os.path.join(tok, name), out)
    print("wrote", out)

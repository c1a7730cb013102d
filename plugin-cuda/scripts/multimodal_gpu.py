"""Issue 27 on the GPU: a Qwen2.5-VL-7B-shaped model (dummy weights, bf16), 64 requests of one
448x448 image (256 image tokens) and a short question each, 128 output tokens, through
Octavo's LLM.generate against transformers' generate on the same inputs in one batch (its
own random weights: the work per token is the same); first a correctness check, greedy
tokens of a tiny random Qwen2.5-VL (fp32) on the device against transformers.

    python3 plugin-cuda/scripts/multimodal_gpu.py TOKENIZER_DIR OUT.json [--device cuda] [--tiny]
        [--requests 64] [--hf-requests 64]

`--tiny` shrinks the big model to 2 layers of 256 (a dry run on the CPU).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2_5_VLConfig, Qwen2VLImageProcessor

from octavo import LLM, SamplingParams

QWEN_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def picture(size: int, seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8"))


def model_dir(root: str, name: str, tok, text: dict, vision: dict, processor, model=None) -> tuple[str, object]:
    """A Qwen2.5-VL directory (config, tokenizer, image processor; weights when `model` is given)."""
    start, pad, end, video = tok.convert_tokens_to_ids(QWEN_TOKENS)
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=pad,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
    )
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    cfg.save_pretrained(path)
    processor.save_pretrained(path)
    tok.save_pretrained(path)
    return path, cfg


def hf_inputs(path: str, tok, prompts: list[str], images: list[list], device: str) -> list[dict]:
    """transformers' inputs of each prompt: the image token expanded to the image's merged
    patches (what its processor does to the text), pixel values and grids."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(path)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    out = []
    for prompt, imgs in zip(prompts, images):
        if not imgs:
            out.append(dict(input_ids=torch.tensor([tok.encode(prompt)])))
            continue
        x = processor(images=imgs, return_tensors="pt")
        sizes = iter(int(g.prod()) // 4 for g in x["image_grid_thw"])
        ids = [t for tid in tok.encode(prompt) for t in ([pad] * next(sizes) if tid == pad else [tid])]
        out.append(
            dict(
                input_ids=torch.tensor([ids]),
                pixel_values=x["pixel_values"],
                image_grid_thw=x["image_grid_thw"],
            )
        )
    return out


def hf_generate(model, batch: dict, new_tokens: int, device: str) -> torch.Tensor:
    kw = {k: v.to(device) for k, v in batch.items()}
    kw["attention_mask"] = torch.ones_like(kw["input_ids"])
    if "mm_token_type_ids" in inspect.signature(model.model.get_rope_index).parameters:  # transformers >= 5.2x
        kw["mm_token_type_ids"] = (kw["input_ids"] == model.config.image_token_id).int()
    return model.generate(
        **kw, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )


def check(tok, device: str, root: str) -> bool:
    """Greedy tokens of a tiny random Qwen2.5-VL on the device equal transformers'."""
    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=1024,
        initializer_range=0.3,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
    )
    vision = dict(depth=3, hidden_size=32, intermediate_size=48, out_hidden_size=64, num_heads=4, window_size=56)
    vision.update(fullatt_block_indexes=[1], hidden_act="silu")
    processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    path, cfg = model_dir(root, "tiny", tok, text, vision, processor)
    torch.manual_seed(0)
    hf = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "visual" in name and p.dim() > 1:
                p.normal_(0, p[0].numel() ** -0.5)
    hf.save_pretrained(path)
    hf = hf.to(device).eval()
    prompts = [f"Describe {PLACEHOLDER} now", f"Compare {PLACEHOLDER} and {PLACEHOLDER}", "no image here"]
    images = [[picture(100, 1)], [picture(60, 2), picture(150, 3)], []]
    llm = LLM(path, device=device, dtype="float32", max_model_len=512, gpu_memory_utilization=0.1)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    reqs = [{"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images)]
    got = [o.outputs[0].token_ids for o in llm.generate(reqs, params, use_tqdm=False)]
    llm.shutdown()
    want = []
    with torch.inference_mode():
        for batch in hf_inputs(path, tok, prompts, images, device):
            n = batch["input_ids"].shape[1]
            want.append(hf_generate(hf, batch, 8, device)[0, n:].tolist())
    print({"octavo": got, "transformers": want}, flush=True)
    return got == want


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--hf-requests", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": QWEN_TOKENS})
    result: dict = {"requests": args.requests, "hf_requests": args.hf_requests, "new_tokens": args.new_tokens}
    with tempfile.TemporaryDirectory() as root:
        result["tiny_greedy_equal"] = check(tok, args.device, root)
        save(result, args.out)
        # Qwen2.5-VL-7B's shapes (config.json of Qwen/Qwen2.5-VL-7B-Instruct)
        text = dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        )
        vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, out_hidden_size=3584, num_heads=16)
        vision.update(window_size=112, fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
        if args.tiny:
            text.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
            text.update(
                num_key_value_heads=2, rope_parameters={**text["rope_parameters"], "mrope_section": [8, 12, 12]}
            )
            vision.update(
                depth=2, hidden_size=64, intermediate_size=128, out_hidden_size=256, fullatt_block_indexes=[1]
            )
        # Qwen's limits, given explicitly: transformers 5.17 carried the tiny check's max_pixels over to a
        # processor built with defaults (the first run processed 448x448 images at 224x224: 64 tokens each)
        processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
        path, cfg = model_dir(root, "big", tok, text, vision, processor)
        prompt = f"<|im_start|>user\n{PLACEHOLDER}Describe this image in detail.<|im_end|>\n<|im_start|>assistant\n"
        images = [picture(448, 100 + i) for i in range(args.requests)]  # all different: no prefix-cache hits
        reqs = [{"prompt": prompt, "multi_modal_data": {"image": [im]}} for im in images]
        params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
        llm = LLM(
            path,
            device=args.device,
            dtype="bfloat16",
            load_format="dummy",
            max_model_len=4096,
            max_num_seqs=max(64, args.requests),
            gpu_memory_utilization=0.5,
        )
        llm.generate([{"prompt": prompt, "multi_modal_data": {"image": [picture(448, 1)]}}], params, use_tqdm=False)
        t0 = time.perf_counter()
        outs = llm.generate(reqs, params, use_tqdm=False)
        octavo_s = time.perf_counter() - t0
        result["prompt_tokens"] = len(outs[0].prompt_token_ids)
        result["image_tokens"] = outs[0].prompt_token_ids.count(cfg.image_token_id)  # 256 for 448x448
        result["octavo_s"] = octavo_s
        result["octavo_output_tok_per_s"] = sum(len(o.outputs[0].token_ids) for o in outs) / octavo_s
        result["octavo_req_per_s"] = args.requests / octavo_s
        save(result, args.out)  # kept if transformers' half runs out of time
        llm.shutdown()
        del llm
        if args.device == "cuda":
            torch.cuda.empty_cache()
        torch.set_default_dtype(torch.bfloat16)  # 8B random weights built on the device, in bf16
        with torch.device(args.device):
            hf = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
        torch.set_default_dtype(torch.float32)
        hf.eval()
        one = hf_inputs(path, tok, [prompt] * args.hf_requests, [[im] for im in images[: args.hf_requests]], "cpu")
        # every prompt has the same length (same text, same image size): one batch, no padding
        batch = {
            "input_ids": torch.cat([b["input_ids"] for b in one]),
            "pixel_values": torch.cat([b["pixel_values"] for b in one]),
            "image_grid_thw": torch.cat([b["image_grid_thw"] for b in one]),
        }
        with torch.inference_mode():
            hf_generate(hf, {k: v[: 1 if k == "input_ids" else None] for k, v in one[0].items()}, 2, args.device)
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = hf_generate(hf, batch, args.new_tokens, args.device)
            if args.device == "cuda":
                torch.cuda.synchronize()
            hf_s = time.perf_counter() - t0
        result["hf_s"] = hf_s
        result["hf_output_tok_per_s"] = (out.shape[1] - batch["input_ids"].shape[1]) * args.hf_requests / hf_s
        result["ratio_output_tok_per_s"] = result["octavo_output_tok_per_s"] / result["hf_output_tok_per_s"]
    save(result, args.out)


def save(result: dict, out: str) -> None:
    print(result, flush=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

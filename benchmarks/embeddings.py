"""Embeddings per second: Octavo's pooling engine against sentence-transformers' `encode`,
same random-weight model, same inputs, same run (issue 26).

    python benchmarks/embeddings.py [--num 1000] [--shape bert|decoder|both] [--dtype auto|float32|bfloat16]
                                    [--threads N] [--rounds 2]

Inputs: `--num` texts of 16-512 tokens (uniform), made by decoding random token ids.
Shapes: a small BERT (MiniLM-L6's: 6 layers, 384 wide, CLS pooling) and a small decoder
(Llama, 4 layers, 512 wide, GQA, last-token pooling); both normalized. Prints one line per
shape: inputs/s of each and the ratio, and the lowest cosine between the two's embeddings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch


def _tokenizer():
    from octavo.loader.source import load_tokenizer, resolve_model_source

    return load_tokenizer(resolve_model_source("smollm2"))


def _model(shape: str, path: str, vocab: int) -> None:
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    if shape == "bert":
        cfg = BertConfig(
            vocab_size=vocab,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=1024,
        )
        model, mode = BertModel(cfg, add_pooling_layer=False), "pooling_mode_cls_token"
    else:
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=512,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            intermediate_size=1536,
            max_position_embeddings=1024,
        )
        model, mode = LlamaModel(cfg), "pooling_mode_lasttoken"
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump(modules, f)
    with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 1024, "do_lower_case": False}, f)
    for sub in ("1_Pooling", "2_Normalize"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": cfg.hidden_size, mode: True}, f)


def _texts(num: int, seed: int = 0) -> list[str]:
    tok = _tokenizer()
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 513, (num,), generator=g).tolist()
    texts = []
    for n in lengths:
        ids = torch.randint(1000, len(tok), (n,), generator=g).tolist()
        texts.append(tok.decode(tok.encode(tok.decode(ids))[: n - 2]))  # fits 512 with specials
    return texts


def _encode_st(st, texts: list[str], batch_size: int) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = st.encode(texts, batch_size=batch_size, convert_to_tensor=True)
    return time.perf_counter() - t0, out.float().cpu()


def _encode_octavo(llm, texts: list[str]) -> tuple[float, torch.Tensor, int]:
    t0 = time.perf_counter()
    outs = llm.embed(texts, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    return elapsed, torch.tensor([o.outputs.embedding for o in outs]), sum(len(o.prompt_token_ids) for o in outs)


def run(shape: str, num: int, dtype: str, batch_size: int, rounds: int) -> None:
    """Both engines loaded side by side and timed alternately (`rounds` each, medians), so
    a busy machine slows both alike. sentence-transformers runs in its default float32;
    Octavo in `dtype` ("auto": the platform's default, what a user gets)."""
    from sentence_transformers import SentenceTransformer

    from octavo import LLM

    texts = _texts(num)
    with tempfile.TemporaryDirectory() as path:
        _model(shape, path, len(_tokenizer()))
        st = SentenceTransformer(path, device="cpu")
        st.encode(texts[:8], batch_size=batch_size)  # warm-up
        llm = LLM(
            path,
            runner="pooling",
            device="cpu",
            dtype=dtype,
            max_model_len=1024,
            max_num_batched_tokens=8192,
            kv_cache_memory="1GiB",
        )
        llm.embed(texts[:64], use_tqdm=False)  # warm-up: every packed weight and step shape once
        t_st, t_oc = [], []
        for _ in range(rounds):
            t, want = _encode_st(st, texts, batch_size)
            t_st.append(t)
            t, got, tokens = _encode_octavo(llm, texts)
            t_oc.append(t)
        cos = float(torch.nn.functional.cosine_similarity(got, want, dim=-1).min())
        ran = str(llm.llm_engine.model_config.dtype).removeprefix("torch.")
        llm.shutdown()
    st_s, oc_s = statistics.median(t_st), statistics.median(t_oc)
    print(
        f"{shape}: {num} inputs, {tokens} tokens, {torch.get_num_threads()} threads, {rounds} alternating rounds: "
        f"octavo ({ran}) {num / oc_s:.1f}/s, sentence-transformers (float32, batch {batch_size}) {num / st_s:.1f}/s, "
        f"ratio {st_s / oc_s:.2f}x; min cosine against sentence-transformers {cos:.6f}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--shape", choices=["bert", "decoder", "both"], default="both")
    ap.add_argument(
        "--dtype", default="auto", help="Octavo's dtype (default: the platform's); sentence-transformers: float32"
    )
    ap.add_argument("--batch-size", type=int, default=32, help="sentence-transformers' encode batch size")
    ap.add_argument("--rounds", type=int, default=2, help="timed passes of each, alternating")
    ap.add_argument("--threads", type=int, default=None, help="threads for both (default: all usable cores)")
    args = ap.parse_args()
    if args.threads is not None:
        # octavo-cpu sizes its pools from OMP_NUM_THREADS when it configures the engine: set
        # both, or Octavo would run on every core while sentence-transformers runs on N
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    for shape in ("bert", "decoder") if args.shape == "both" else (args.shape,):
        run(shape, args.num, args.dtype, args.batch_size, args.rounds)


if __name__ == "__main__":
    main()

"""LoRA adapters through `octavo serve` (issue 25): --lora-modules, /v1/models, the `model`
field choosing the adapter, and runtime loading and unloading, against PEFT's tokens."""

from __future__ import annotations

import os

import httpx
import pytest
from lora_adapters import ALL_TARGETS, make_adapter, peft_greedy
from served import octavo_serve
from tiny_models import make_tiny_model, random_prompts, smollm2_tokenizer

PROMPT = random_prompts(1, [21], 40000, seed=3)[0]  # ids inside the tiny models' vocabulary
N = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-server")
    base = make_tiny_model("llama", str(root / "base"))
    sql = make_adapter(base, str(root / "sql"), 1, ALL_TARGETS, r=8, lora_alpha=16)
    chat = make_adapter(base, str(root / "chat"), 2, ["q_proj", "v_proj", "down_proj"], r=4, lora_alpha=8)
    return base, sql, chat


def _argv(base: str, *extra: str) -> list[str]:
    return [
        "serve", base, "--device", "cpu", "--dtype", "float32", "--kv-cache-memory", "16MiB",
        "--max-model-len", "128", "--served-model-name", "tiny", *extra,
    ]  # fmt: skip


def _complete(base_url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": N, "temperature": 0, "ignore_eos": True}
    return httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)


def test_adapters_served_loaded_and_unloaded(models):
    base, sql, chat = models
    want = {
        name: smollm2_tokenizer().decode(peft_greedy(base, path, [PROMPT], N)[0])
        for name, path in (("tiny", None), ("sql", sql), ("chat", chat))
    }
    assert len(set(want.values())) == 3, "the adapters must change the text, else this test cannot fail"
    env = {**os.environ, "OCTAVO_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    argv = _argv(base, "--enable-lora", "--max-loras", "1", "--max-lora-rank", "8", "--lora-modules", f"sql={sql}")
    with octavo_serve(argv, env=env, timeout=180) as s:
        cards = {c["id"]: c for c in httpx.get(f"{s.base}/v1/models").json()["data"]}
        assert set(cards) == {"tiny", "sql"} and cards["sql"]["parent"] == "tiny" and cards["sql"]["root"] == sql
        assert _complete(s.base, "sql").json()["choices"][0]["text"] == want["sql"]
        assert _complete(s.base, "tiny").json()["choices"][0]["text"] == want["tiny"]
        missing = _complete(s.base, "chat")
        assert missing.status_code == 404 and "`chat` does not exist" in missing.json()["error"]["message"]

        load = httpx.post(f"{s.base}/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": chat})
        assert load.status_code == 200, load.text
        assert "chat" in {c["id"] for c in httpx.get(f"{s.base}/v1/models").json()["data"]}
        # one slot: the adapters take turns in it
        assert _complete(s.base, "chat").json()["choices"][0]["text"] == want["chat"]
        assert _complete(s.base, "sql").json()["choices"][0]["text"] == want["sql"]
        again = httpx.post(f"{s.base}/v1/load_lora_adapter", json={"lora_name": "chat", "lora_path": chat})
        assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
        bad = httpx.post(f"{s.base}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": base})
        assert bad.status_code == 400 and "no adapter_config.json" in bad.json()["error"]["message"]

        gone = httpx.post(f"{s.base}/v1/unload_lora_adapter", json={"lora_name": "chat"})
        assert gone.status_code == 200, gone.text
        assert _complete(s.base, "chat").status_code == 404
        unknown = httpx.post(f"{s.base}/v1/unload_lora_adapter", json={"lora_name": "chat"})
        assert unknown.status_code == 404 and "cannot be found" in unknown.json()["error"]["message"]


def test_runtime_loading_needs_the_env_var(monkeypatch):
    """Without OCTAVO_ALLOW_RUNTIME_LORA_UPDATING (or vLLM's name) the routes do not exist."""
    from fastapi import FastAPI

    from octavo.entrypoints.openai.serving_lora import add_lora_routes

    def routes(env: dict[str, str]) -> set[str]:
        for name in ("OCTAVO_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        app = FastAPI()
        add_lora_routes(app, None, None, {})
        return {r.path for r in app.routes} & {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"}

    assert routes({}) == set()
    assert routes({"OCTAVO_ALLOW_RUNTIME_LORA_UPDATING": "false"}) == set()
    assert len(routes({"OCTAVO_ALLOW_RUNTIME_LORA_UPDATING": "1"})) == 2
    assert len(routes({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})) == 2

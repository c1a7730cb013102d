"""vLLM's command lines and constructor calls, with `vllm` replaced by `octavo`, work unchanged or
fail with the error that names the vLLM option Octavo does not implement.

The command lines are copied from vLLM's documentation (vllm-project/vllm, the files named beside
them). All are parsed and checked as `octavo serve` does before it loads a model; one starts a
server from a Hugging Face cache populated here, which the `octavo chat` / `octavo complete`
clients then talk to.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import httpx
import pytest
from hf_cache import put_in_cache
from served import octavo_serve

from octavo import LLM, SamplingParams
from octavo.entrypoints.cli import build_parser
from octavo.entrypoints.openai.api_server import serve_options
from octavo.vllm_options import UnsupportedOptionError

QUICKSTART = "docs/getting_started/quickstart.md"  # at commit 00bd1493
OPENAI_SERVER = "docs/serving/openai_compatible_server.md"  # at commit 04454610
DISTRIBUTED = "docs/serving/distributed_serving.md"  # at commit 06824165
GGUF = "docs/features/quantization/gguf.md"  # at commit 06fed1cf

# (command line, where it is from, the option refused or None)
COMMAND_LINES = [
    ("vllm serve Qwen/Qwen2.5-1.5B-Instruct", QUICKSTART, None),
    ("vllm serve Qwen/Qwen2.5-1.5B-Instruct --attention-backend FLASH_ATTN", QUICKSTART, None),
    ("vllm serve NousResearch/Meta-Llama-3-8B-Instruct --dtype auto --api-key token-abc123", OPENAI_SERVER, None),
    ("vllm serve <model> --chat-template ./path-to-chat-template.jinja", OPENAI_SERVER, None),
    (
        "vllm serve TIGER-Lab/VLM2Vec-Full --task embed --trust-remote-code --max-model-len 4096 "
        "--chat-template examples/template_vlm2vec.jinja",
        OPENAI_SERVER,
        "--task",
    ),
    (
        "vllm serve MrLight/dse-qwen2-2b-mrl-v1 --task embed --trust-remote-code --max-model-len 8192 "
        "--chat-template examples/template_dse_qwen2_vl.jinja",
        OPENAI_SERVER,
        "--task",
    ),
    ("vllm serve facebook/opt-13b --tensor-parallel-size 4", DISTRIBUTED, None),
    # pipeline parallelism (issue 28b): these parse now, as tensor parallelism's lines do
    ("vllm serve gpt2 --tensor-parallel-size 4 --pipeline-parallel-size 2", DISTRIBUTED, None),
    (
        "vllm serve /path/to/the/model/in/the/container --tensor-parallel-size 8 --pipeline-parallel-size 2",
        DISTRIBUTED,
        None,
    ),
    ("vllm serve /path/to/the/model/in/the/container --tensor-parallel-size 16", DISTRIBUTED, None),
    ("vllm serve unsloth/Qwen3-0.6B-GGUF:Q4_K_M --tokenizer Qwen/Qwen3-0.6B --dtype float16", GGUF, None),
    (
        "vllm serve unsloth/Qwen3-0.6B-GGUF:Q4_K_M --tokenizer Qwen/Qwen3-0.6B --dtype float16 "
        "--tensor-parallel-size 2",
        GGUF,
        None,
    ),
    ("vllm serve ./Qwen3-0.6B-Q4_K_M.gguf --tokenizer Qwen/Qwen3-0.6B --dtype float16", GGUF, None),
    (
        "vllm serve unsloth/Qwen3-0.6B-GGUF:Q4_K_M --tokenizer Qwen/Qwen3-0.6B --dtype float16 "
        "--hf-config-path Qwen/Qwen3-0.6B",
        GGUF,
        "--hf-config-path",
    ),
]


def octavo_argv(line: str) -> list[str]:
    argv = shlex.split(line)
    assert argv[0] == "vllm"
    return argv[1:]


@pytest.mark.parametrize("line,source,refused", COMMAND_LINES, ids=[c[0][11:60] for c in COMMAND_LINES])
def test_documented_command_lines_parse(line, source, refused, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "path-to-chat-template.jinja").write_text("{{ messages[0]['content'] }}")
    args = build_parser().parse_args(octavo_argv(line))
    if refused is None:
        engine_args, settings = serve_options(args)
        assert engine_args.model == shlex.split(line)[2]
        assert settings.served_model_names == [engine_args.model]
    else:
        with pytest.raises(UnsupportedOptionError, match=f"vLLM's option {refused} "):
            serve_options(args)


def test_vllm_spellings_mean_what_they_mean_in_vllm():
    parse = build_parser().parse_args
    args = parse(["serve", "--model", "m", "--dtype", "half", "--api-key", "k1", "k2", "--disable-log-requests"])
    engine_args, settings = serve_options(args)
    assert (engine_args.model, engine_args.dtype, settings.api_keys) == ("m", "half", ["k1", "k2"])
    assert not engine_args.enable_log_requests
    args = parse(["serve", "m", "--enable-log-requests", "--max-log-len", "10", "--disable-uvicorn-access-log"])
    engine_args, _ = serve_options(args)
    assert engine_args.enable_log_requests and engine_args.max_log_len == 10 and args.disable_access_log
    with pytest.raises(ValueError, match="two models"):
        serve_options(parse(["serve", "a", "--model", "b"]))
    with pytest.raises(UnsupportedOptionError, match="--kv-cache-dtype"):
        serve_options(parse(["serve", "m", "--kv-cache-dtype", "fp8"]))
    # --quantization is Octavo's own now (tests/test_quantization.py), under vLLM's short flag too
    assert serve_options(parse(["serve", "m", "-q", "awq"]))[0].quantization == "awq"
    # a refused option at vLLM's default asks for nothing
    serve_options(parse(["serve", "m", "--kv-cache-dtype", "auto", "--no-enable-chunked-prefill", "--swap-space", "8"]))


def test_api_server_module_runs_serve():
    r = subprocess.run(
        [sys.executable, "-m", "octavo.entrypoints.openai.api_server", "--help"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "--model" in r.stdout and "--api-key" in r.stdout and "--generation-config" in r.stdout


# ---- LLM(...) with vLLM's keywords --------------------------------------------------------------
def test_llm_takes_vllms_keywords(tiny_model_dirs, hf_reference):
    llm = LLM(
        tiny_model_dirs["llama"],
        dtype="float",
        trust_remote_code=True,
        seed=None,
        swap_space=8,
        disable_log_stats=True,
        enforce_eager=True,
        gpu_memory_utilization=0.5,
        max_model_len=64,
        tensor_parallel_size=1,
        quantization=None,
        device="cpu",
        kv_cache_memory="16MiB",
    )
    prompt = [5, 17, 300, 42]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    (out,) = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
    assert list(out.outputs[0].token_ids) == hf_reference(tiny_model_dirs["llama"], [prompt], 5)[0]


@pytest.mark.parametrize(
    "kwargs,name",
    [({"kv_cache_memory_bytes": 2**30}, "kv_cache_memory_bytes")]
    + [({"cpu_offload_gb": 4}, "cpu_offload_gb"), ({"kv_cache_dtype": "fp8"}, "kv_cache_dtype")],
)
def test_llm_refuses_what_octavo_lacks_by_name(kwargs, name):
    with pytest.raises(UnsupportedOptionError, match=name):
        LLM("smollm2", **kwargs)


def test_llm_refuses_unknown_keywords():
    with pytest.raises(TypeError, match="unknown LLM arguments \\['no_such_option'\\]"):
        LLM("smollm2", no_such_option=1)


def test_vllms_async_engine_snippet_imports():
    from octavo.engine.arg_utils import AsyncEngineArgs
    from octavo.engine.async_llm_engine import AsyncLLMEngine
    from octavo.engine.llm_engine import LLMEngine

    args = AsyncEngineArgs(model="facebook/opt-125m", enable_log_requests=True)
    assert args.model == "facebook/opt-125m" and callable(AsyncLLMEngine.from_engine_args)
    assert callable(LLMEngine.from_engine_args)


# ---- a documented command line, started, and the interactive clients against it ------------------
MODEL = "NousResearch/Meta-Llama-3-8B-Instruct"
KEY = "token-abc123"


@pytest.fixture(scope="module")
def server(tiny_model_dirs, tmp_path_factory):
    """`octavo serve NousResearch/Meta-Llama-3-8B-Instruct --dtype auto --api-key token-abc123`
    (the OpenAI-compatible server page), on a free port, the model a tiny llama in a local
    Hugging Face cache whose generation_config.json asks for greedy decoding."""
    root = tmp_path_factory.mktemp("served")
    model = root / "model"
    shutil.copytree(tiny_model_dirs["llama"], model)
    (model / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 8}))
    put_in_cache(str(root / "hf" / "hub"), MODEL, str(model))
    env = {**os.environ, "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    argv = octavo_argv(f"vllm serve {MODEL} --dtype auto --api-key {KEY}")
    with octavo_serve(argv, env=env) as s:
        yield s.base


def api(base: str, path: str, body: dict) -> dict:
    r = httpx.post(f"{base}/v1{path}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_started_server_serves_the_hub_model(server):
    r = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert [m["id"] for m in r.json()["data"]] == [MODEL]
    assert httpx.get(f"{server}/v1/models").status_code == 401
    out = api(server, "/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 20})
    assert out["usage"]["completion_tokens"] == 8  # the generation config's max_new_tokens


def client(server: str, command: str, stdin: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "octavo.entrypoints.cli", command, "--url", f"{server}/v1", "--api-key", KEY, *extra]
    # bytes, decoded here: text=True would turn a generated "\r\n" into "\n" (universal newlines)
    r = subprocess.run(cmd, input=stdin.encode(), capture_output=True, timeout=300)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def test_octavo_complete_reads_prompts_from_stdin(server):
    r = client(server, "complete", "The capital of\nOnce upon\n")
    assert r.returncode == 0, r.stderr
    assert f"Using model: {MODEL}" in r.stderr
    answers = [
        api(server, "/completions", {"prompt": p})["choices"][0]["text"] for p in ("The capital of", "Once upon")
    ]
    assert r.stdout == "> " + answers[0] + "\n> " + answers[1] + "\n> \n"


def test_octavo_chat_keeps_the_conversation(server):
    r = client(server, "chat", "Hi\nAnd then?\n", "--system-prompt", "Be brief.")
    assert r.returncode == 0, r.stderr
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    first = api(server, "/chat/completions", {"messages": conversation})["choices"][0]["message"]["content"]
    conversation += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    second = api(server, "/chat/completions", {"messages": conversation})["choices"][0]["message"]["content"]
    assert r.stdout == "> " + first + "\n> " + second + "\n> \n"
    quick = client(server, "chat", "", "--quick", "Hi")
    assert (
        quick.stdout
        == api(server, "/chat/completions", {"messages": conversation[1:2]})["choices"][0]["message"]["content"] + "\n"
    )


# ---- octavo bench latency ----------------------------------------------------------------------------
def test_bench_latency_writes_vllms_json(tiny_model_dirs, tmp_path):
    out = tmp_path / "latency.json"
    argv = ["bench", "latency", "--model", tiny_model_dirs["qwen3"], "--device", "cpu", "--dtype", "float32"]
    argv += ["--input-len", "8", "--output-len", "4", "--batch-size", "2", "--num-iters-warmup", "1"]
    argv += ["--num-iters", "3", "--max-model-len", "64", "--kv-cache-memory", "16MiB", "--output-json", str(out)]
    r = subprocess.run([sys.executable, "-m", "octavo.entrypoints.cli", *argv], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert len(data["latencies"]) == 3 and all(x > 0 for x in data["latencies"])
    assert abs(data["avg_latency"] - sum(data["latencies"]) / 3) < 1e-9
    assert set(data["percentiles"]) == {"10", "25", "50", "75", "90", "99"}
    assert f"Avg latency: {data['avg_latency']} seconds" in r.stdout

"""Hostile input the request bounds of tests/test_request_isolation.py do not cover (issue 19, part 3):
chat templates run in a sandbox, no file or URL read because a request named it, API keys
(several, compared in constant time), CORS off unless configured. A tiny model on a real socket."""

from __future__ import annotations

import asyncio
import hmac

import httpx
import pytest
from live_server import MODEL, LiveServer

from octavo.entrypoints.cli import build_parser
from octavo.entrypoints.openai.api_server import APIKeyMiddleware, serve_options
from octavo.entrypoints.openai.limits import RequestLimits

SECRET = "octavo-secret-file-contents"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def live(tiny_model_dirs):
    path = tiny_model_dirs["llama"]
    # requests may bring templates here, so that the sandbox, not the refusal, is what is tested
    with LiveServer(path, limits=RequestLimits(trust_request_chat_template=True)) as server:
        yield server


def post(live, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{live.base_url}{path}", json=body, timeout=60)


def assert_400(r: httpx.Response, param: str | None = None) -> str:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param, err
    return err["message"]


ESCAPES = {
    "class walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "function globals": "{{ cycler.__init__.__globals__.os.environ }}",
    "format string": "{{ '{0.__class__}'.format(messages) }}",
    "mutation": "{{ messages.append(1) }}{{ messages }}",
    "include a file": "{% include '/etc/passwd' %}",
    "import": "{% import 'os' as os %}{{ os }}",
}


#: what a template that got past the sandbox would show
LEAKS = ("class", "subclasses", "environ", "root:", "module", "[1]")


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_request_chat_templates_run_in_a_sandbox(live, case):
    """The sandbox refuses (a 400 naming the messages) or renders the unsafe part as nothing."""
    body = {"model": MODEL, "messages": HI, "chat_template": ESCAPES[case]}
    r = post(live, "/tokenize", body)
    if r.status_code == 200:
        text = httpx.post(f"{live.base_url}/detokenize", json={"tokens": r.json()["tokens"]}).json()["prompt"]
        assert not any(leak in text for leak in LEAKS), text
    else:
        assert_400(r, "messages")
    r = post(live, "/v1/chat/completions", {**body, "max_tokens": 2})
    assert_400(r, "messages")  # a template error, or an empty prompt


def test_a_plain_request_template_renders(live):
    r = post(live, "/tokenize", {"model": MODEL, "messages": HI, "chat_template": "<{{ messages[0]['content'] }}>"})
    assert r.status_code == 200, r.text
    ids = r.json()["tokens"]
    assert httpx.post(f"{live.base_url}/detokenize", json={"tokens": ids}).json()["prompt"] == "<hi>"


@pytest.mark.parametrize(
    "kwargs",
    [{"tokenize": True, "padding": "max_length", "max_length": 10**8}, {"tokenizer_kwargs": {}}, {"return_dict": True}],
)
def test_template_kwargs_cannot_set_the_servers_parameters(live, kwargs):
    body = {"model": MODEL, "messages": HI, "chat_template_kwargs": kwargs, "max_tokens": 2}
    message = assert_400(post(live, "/v1/chat/completions", body), "chat_template_kwargs")
    assert sorted(kwargs)[0] in message


def test_no_file_or_url_is_read_because_a_request_named_it(live, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    # a template named by path is a template (the path's text), never the file
    r = post(live, "/tokenize", {"model": MODEL, "messages": HI, "chat_template": str(secret)})
    assert r.status_code == 200, r.text
    text = httpx.post(f"{live.base_url}/detokenize", json={"tokens": r.json()["tokens"]}).json()["prompt"]
    assert text == str(secret) and SECRET not in text
    # content parts that point at files or URLs are refused, not fetched
    for part in (
        {"type": "image_url", "image_url": {"url": f"file://{secret}"}},
        {"type": "input_audio", "input_audio": {"data": str(secret), "format": "wav"}},
        {"type": "file", "file": {"file_data": str(secret)}},
        {"type": "text", "text": "hi", "url": "http://169.254.169.254/latest/meta-data"},
    ):
        body = {"model": MODEL, "messages": [{"role": "user", "content": [part]}], "max_tokens": 2}
        assert SECRET not in assert_400(post(live, "/v1/chat/completions", body))
    # a model named by path is an unknown model
    r = post(live, "/v1/completions", {"model": str(secret), "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 404 and SECRET not in r.text
    live.wait_idle()


def test_api_keys_repeated_listed_or_comma_separated():
    args = build_parser().parse_args(["serve", "m", "--api-key", "a", "b,c", "--api-key", "d"])
    _, settings = serve_options(args)
    assert settings.api_keys == ["a", "b", "c", "d"]
    _, settings = serve_options(build_parser().parse_args(["serve", "m"]))
    assert settings.api_keys == [] and settings.allowed_origins == []  # no key, no CORS unless asked


def test_api_keys_are_compared_in_constant_time(monkeypatch):
    """Every key is compared, each as a digest of one length: neither which key nearly matched nor
    how long the keys are shows in the time taken."""
    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: seen.append((len(a), len(b))) or real(a, b))
    let_in = []

    async def app(scope, receive, send):
        let_in.append(scope["headers"])

    async def send(message):
        pass

    mw = APIKeyMiddleware(app, api_keys=["short", "a-much-longer-key-" * 4, "k3"])
    for auth in (b"Bearer short", b"Bearer x", b"B" * 1000, b""):
        seen.clear()
        scope = {"type": "http", "path": "/v1/models", "method": "GET", "headers": [(b"authorization", auth)]}
        asyncio.run(mw(scope, None, send))
        assert seen == [(32, 32)] * 3, seen
    assert let_in == [[(b"authorization", b"Bearer short")]]

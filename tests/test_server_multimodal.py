"""`octavo serve` with a tiny vision-language model, driven by the official `openai` client: an
image sent as a data: URL in a chat completion gets transformers' greedy answer, and images
that are undecodable, too many, or at an http URL the server may not fetch get a 400 that
says which."""

from __future__ import annotations

import base64
import io
import json

import pytest
from served import octavo_serve
from tiny_vlm import PLACEHOLDER, hf_generate, image, make_tiny_vlm
from transformers import AutoTokenizer

openai = pytest.importorskip("openai")

ARCH = "qwen2_vl"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = make_tiny_vlm(ARCH, str(tmp_path_factory.mktemp("vlm")))
    argv = ["serve", path, "--device", "cpu", "--dtype", "float32", "--max-model-len", "512"]
    argv += ["--kv-cache-memory", "64MiB", "--limit-mm-per-prompt", json.dumps({"image": 2}), "--disable-access-log"]
    argv += ["--trust-request-chat-template"]
    with octavo_serve(argv) as s:
        yield path, openai.OpenAI(base_url=f"{s.base}/v1", api_key="none", max_retries=0, timeout=120)


def _data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _message(*urls: str, text: str = "What is it?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def test_openai_client_sends_an_image_and_gets_transformers_answer(served):
    path, client = served
    img = image(70, 42, 21)
    out = client.chat.completions.create(
        model=path, messages=_message(_data_url(img)), max_tokens=5, temperature=0.0, extra_body={"ignore_eos": True}
    )
    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": PLACEHOLDER[ARCH] + "\nWhat is it?"}], add_generation_prompt=True, tokenize=False
    )
    want = tok.decode(hf_generate(path, text, [img], 5), skip_special_tokens=True)
    assert out.choices[0].message.content == want
    assert out.usage.prompt_tokens > 10  # the image's tokens count as prompt tokens


def test_a_template_that_loops_over_content_parts_writes_the_images(served):
    """Transformers' processors' templates (LLaVA-1.5-hf's) take image parts, not text."""
    path, client = served
    img = image(44, 70, 22)
    template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}"
        "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{{ '<|im_start|>assistant\n' }}"
    )
    out = client.chat.completions.create(
        model=path,
        messages=_message(_data_url(img), text="Describe it."),
        max_tokens=5,
        temperature=0.0,
        extra_body={"ignore_eos": True, "chat_template": template},
    )
    text = f"<|im_start|>user\n{PLACEHOLDER[ARCH]}Describe it.<|im_end|>\n<|im_start|>assistant\n"
    tok = AutoTokenizer.from_pretrained(path)
    assert out.choices[0].message.content == tok.decode(hf_generate(path, text, [img], 5), skip_special_tokens=True)


@pytest.mark.parametrize(
    ("urls", "says"),
    [
        (["data:image/png;base64," + base64.b64encode(b"no picture here").decode()], "image 0 could not be decoded"),
        (["data:image/png;base64,@@@"], "not valid base64"),
        (["http://127.0.0.1:9/cat.png"], "does not fetch image URLs"),
        (["data:image/png;base64,AAAA"] * 3, "3 images, more than the 2"),
    ],
)
def test_bad_images_get_a_400_that_says_which(served, urls, says):
    path, client = served
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=path, messages=_message(*urls), max_tokens=2)
    assert e.value.status_code == 400 and says in str(e.value)

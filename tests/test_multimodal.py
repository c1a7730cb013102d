"""Vision-language models (issue 27): greedy tokens equal transformers' on tiny random-weight
LLaVA, Qwen2-VL and Qwen2.5-VL with images of several sizes, one and two per prompt, batched
with text-only prompts and chunked through the images; the encoder runs once per image under
its budget; the prefix cache keys image tokens by the image's content; chat image parts and
the errors bad images get."""

from __future__ import annotations

import base64
import io

import pytest
from tiny_vlm import PLACEHOLDER, VLM_ARCHS, hf_generate, image, make_tiny_vlm

from octavo.multimodal.encoder_budget import EncoderBudget

MAX_TOKENS = 6


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("vlm"))


def _llm(path: str, **kw):
    from octavo import LLM

    kw.setdefault("max_num_batched_tokens", 24)  # chunks end inside images
    return LLM(path, device="cpu", dtype="float32", max_model_len=512, kv_cache_memory="64MiB", **kw)


def _greedy(n: int = MAX_TOKENS):
    from octavo import SamplingParams

    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def _data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ---- the encoder's schedule (no torch) ---------------------------------------------------------
class _Item:
    def __init__(self, offset: int, length: int) -> None:
        self.offset, self.length = offset, length

    @property
    def end(self) -> int:
        return self.offset + self.length


def test_encoder_budget_stops_chunks_before_images_past_it_and_encodes_each_once():
    items = (_Item(2, 4), _Item(8, 4), _Item(14, 10))
    enc = EncoderBudget(6)
    enc.new_step()
    assert enc.fit("r", items, 0, 20) == (8, (0,))  # the second image does not fit: stop before it
    enc.commit("r", items, (0,), 8)
    assert "r" not in enc.encoded  # image 0 finished in that chunk: its output is dropped
    enc.new_step()
    assert enc.fit("r", items, 8, 3) == (3, (1,))  # a chunk ending inside image 1
    enc.commit("r", items, (1,), 11)
    assert enc.encoded["r"] == {1}
    enc.new_step()
    # image 1's output is kept: not encoded again; image 2 (10 tokens) is past the budget of
    # 6 but nothing else is encoded this step, so it runs alone rather than never
    assert enc.fit("r", items, 11, 20) == (20, (2,))
    enc.commit("r", items, (2,), 31)
    assert "r" not in enc.encoded
    enc.new_step()
    enc.left = 0  # the step's budget spent by other requests: a chunk starting inside an image waits
    enc.encoded.pop("r", None)
    assert enc.fit("r", items, 16, 4) == (0, ())


def test_scheduler_runs_a_prompt_through_its_images_under_the_encoder_budget():
    from octavo.block_manager import BlockManager
    from octavo.request import Request
    from octavo.sampling_params import SamplingParams
    from octavo.scheduler import Scheduler

    s = Scheduler(BlockManager(64, 4), max_num_seqs=4, max_num_batched_tokens=8, max_model_len=128)
    req = Request("a", list(range(3, 33)), SamplingParams(max_tokens=1))
    req.mm_items = (_Item(1, 3), _Item(5, 6), _Item(12, 4))
    s.add_request(req)
    encoded, chunks = [], []
    while req.num_computed_tokens < req.num_prompt_tokens:
        (r,) = s.schedule().scheduled
        chunks.append((r.start_pos, len(r.token_ids)))
        encoded += r.encode
    assert encoded == [0, 1, 2]  # each image once, in order
    # 8 tokens and 8 image tokens a step: each chunk stops before the image its budget cannot encode
    assert chunks == [(0, 5), (5, 7), (12, 8), (20, 8), (28, 2)]


# ---- equivalence with transformers ---------------------------------------------------------------
@pytest.mark.parametrize("arch", VLM_ARCHS)
def test_greedy_matches_transformers_with_images_batched_and_chunked(root, arch, monkeypatch):
    path = make_tiny_vlm(arch, root)
    p = PLACEHOLDER[arch]
    imgs = [image(40, 20, 1), image(28, 60, 2), image(90, 50, 3), image(120, 84, 4)]
    cases = [
        (f"USER: {p}\nWhat is in the picture? ASSISTANT:", imgs[:1]),
        (f"Compare {p} with {p} in one word", imgs[1:3]),
        ("A text-only prompt beside them", []),
        (f"{p} large", imgs[3:]),
    ]
    llm = _llm(path)
    runner = llm.llm_engine.runner
    calls = []
    encode = runner.model.encode_images
    monkeypatch.setattr(runner.model, "encode_images", lambda items: calls.extend(items) or encode(items))
    prompts = [{"prompt": t, "multi_modal_data": {"image": im}} if im else t for t, im in cases]
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, _greedy(), use_tqdm=False)]
    want = [hf_generate(path, t, im, MAX_TOKENS) for t, im in cases]
    assert got == want
    assert len(calls) == len(imgs)  # every image encoded once, though chunks cut through them
    assert not runner.encoder_cache.outputs  # nothing kept once the prompts are computed


def test_preempted_requests_encode_their_images_again_and_keep_nothing(root):
    path = make_tiny_vlm("llava_next", root)  # 16 to 88 tokens per image
    cases = [
        (f"<image> one {i} " * (1 + i % 2) + "end", [image(30 + 17 * i, 60 - 7 * i, 50 + i)] * (1 + i % 2))
        for i in range(4)
    ]
    llm = _llm(path, num_gpu_blocks_override=16, block_size=16, max_num_batched_tokens=40)
    prompts = [{"prompt": t, "multi_modal_data": {"image": im}} for t, im in cases]
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, _greedy(), use_tqdm=False)]
    engine = llm.llm_engine
    assert engine.scheduler.num_preemptions > 0  # the cache holds 192 tokens: requests take turns
    assert got == [hf_generate(path, t, im, MAX_TOKENS) for t, im in cases]
    assert not engine.runner.encoder_cache.outputs and not engine.scheduler.encoder.encoded


# ---- prefix caching ------------------------------------------------------------------------------
def test_prefix_cache_keys_image_tokens_by_the_image(root):
    path = make_tiny_vlm("llava", root)
    text = "<image> and a long enough question about this image, which fills some blocks of text too"
    a, b = image(40, 30, 11), image(40, 30, 12)
    llm = _llm(path, max_num_batched_tokens=256, block_size=16)

    def run(img):
        (out,) = llm.generate([{"prompt": text, "multi_modal_data": {"image": img}}], _greedy(), use_tqdm=False)
        return out.outputs[0].token_ids, out.num_cached_tokens

    first, cached = run(a)
    assert cached == 0
    again, cached = run(a)  # the same picture (the same pixels) hits its image blocks and the text after
    assert cached >= 16 and again == first
    other, cached = run(b)  # another picture with the same text: its first block holds the image
    assert cached == 0
    assert other == hf_generate(path, text, [b], MAX_TOKENS) != first


# ---- chat -------------------------------------------------------------------------------------------
def test_chat_image_url_part_matches_transformers(root):
    path = make_tiny_vlm("qwen2_vl", root)
    img = image(64, 48, 5)
    llm = _llm(path)
    content = [{"type": "image_url", "image_url": {"url": _data_url(img)}}, {"type": "text", "text": "What is it?"}]
    (out,) = llm.chat([{"role": "user", "content": content}], _greedy(), use_tqdm=False)
    tok = llm.get_tokenizer()
    text = tok.apply_chat_template(
        [{"role": "user", "content": PLACEHOLDER["qwen2_vl"] + "\nWhat is it?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert out.outputs[0].token_ids == hf_generate(path, text, [img], MAX_TOKENS)


def test_chat_template_that_loops_over_content_parts_gets_image_parts(root):
    path = make_tiny_vlm("llava", root)
    img = image(50, 40, 6)
    # a processor's template (LLaVA-1.5's style): images first, as {"type": "image"} parts it renders
    template = (
        "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
        "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
        "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] }}{% endfor %}"
        "{% endfor %} ASSISTANT:"
    )
    content = [{"type": "text", "text": "What is it?"}, {"type": "image_pil", "image_pil": img}]
    (out,) = _llm(path).chat([{"role": "user", "content": content}], _greedy(), use_tqdm=False, chat_template=template)
    want = hf_generate(path, "USER: <image>\nWhat is it? ASSISTANT:", [img], MAX_TOKENS)
    assert out.outputs[0].token_ids == want


def test_bad_images_are_refused_with_what_is_wrong(root, monkeypatch):
    from octavo.multimodal import MultiModalInputError, media

    path = make_tiny_vlm("llava", root)
    llm = _llm(path, limit_mm_per_prompt={"image": 1})
    img = image(30, 30, 7)

    def gen(prompt, images):
        llm.generate([{"prompt": prompt, "multi_modal_data": {"image": images}}], _greedy(), use_tqdm=False)

    with pytest.raises(MultiModalInputError, match="2 images, more than the 1"):
        gen("<image> <image>", [img, img])
    with pytest.raises(MultiModalInputError, match="1 image placeholders .* for 0 images"):
        gen("<image> where is it", [])
    with pytest.raises(MultiModalInputError, match="not a PIL image"):
        gen("<image>", ["picture.png"])

    def chat(url):
        part = {"type": "image_url", "image_url": {"url": url}}
        llm.chat([{"role": "user", "content": [part]}], _greedy(), use_tqdm=False)

    with pytest.raises(MultiModalInputError, match="could not be decoded"):
        chat("data:image/png;base64," + base64.b64encode(b"not an image").decode())
    with pytest.raises(MultiModalInputError, match="not valid base64"):
        chat("data:image/png;base64,%%%")
    with pytest.raises(MultiModalInputError, match="does not fetch image URLs"):
        chat("http://127.0.0.1:9/cat.png")
    with pytest.raises(MultiModalInputError, match="must be a data: URL or http"):
        chat("file:///etc/passwd")
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 800)  # limits scaled down to a small image
    with pytest.raises(MultiModalInputError, match="image 0 is 30x30 pixels, more than the 800 allowed"):
        chat(_data_url(img))
    monkeypatch.setattr(media, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(MultiModalInputError, match="image 0 is larger than 100 bytes"):
        chat(_data_url(img))
    assert not llm.llm_engine.has_unfinished_requests()


# ---- image embeddings as input -------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl"])
def test_image_embeddings_give_the_images_tokens_without_the_encoder(root, arch, monkeypatch):
    from tiny_vlm import hf_generate_from_embeds, hf_image_embeds

    path = make_tiny_vlm(arch, root)
    p = PLACEHOLDER[arch]
    imgs = [image(40, 20, 21), image(56, 84, 22)]
    text = f"Compare {p} with {p} now"
    embeds = hf_image_embeds(path, imgs)
    llm = _llm(path, max_num_batched_tokens=256)
    with monkeypatch.context() as m:
        m.setattr(llm.llm_engine.runner.model, "encode_images", lambda items: pytest.fail("the encoder ran"))
        (out,) = llm.generate([{"prompt": text, "multi_modal_data": {"image": embeds}}], _greedy(), use_tqdm=False)
    got = out.outputs[0].token_ids
    assert got == hf_generate(path, text, imgs, MAX_TOKENS)  # the same prompt given the images
    if arch == "llava":  # and transformers given those embeddings on the placeholders
        assert got == hf_generate_from_embeds(path, text, embeds, MAX_TOKENS)
        # the same embeddings again hit the prefix cache; changed ones do not, and change the answer
        (again,) = llm.generate([{"prompt": text, "multi_modal_data": {"image": embeds}}], _greedy(), use_tqdm=False)
        assert again.num_cached_tokens >= 16 and again.outputs[0].token_ids == got
        other = embeds.flip(0)
        (swapped,) = llm.generate([{"prompt": text, "multi_modal_data": {"image": other}}], _greedy(), use_tqdm=False)
        assert swapped.num_cached_tokens < 16
        assert swapped.outputs[0].token_ids == hf_generate_from_embeds(path, text, other, MAX_TOKENS) != got
    else:  # the first image as embeddings beside the second as a picture, in one prompt
        grid = embeds["image_grid_thw"][:1]
        one = {"image_embeds": embeds["image_embeds"][: int(grid.prod()) // 4], "image_grid_thw": grid}
        (mixed,) = llm.generate(
            [{"prompt": text, "multi_modal_data": {"image": [one, imgs[1]]}}], _greedy(), use_tqdm=False
        )
        assert mixed.outputs[0].token_ids == got


def test_image_embeddings_of_the_wrong_shape_are_refused_naming_the_expected_one(root):
    import torch

    from octavo.multimodal import MultiModalInputError

    llava, qwen = _llm(make_tiny_vlm("llava", root)), _llm(make_tiny_vlm("qwen2_vl", root))

    def gen(llm, prompt, value):
        llm.generate([{"prompt": prompt, "multi_modal_data": {"image": value}}], _greedy(), use_tqdm=False)

    with pytest.raises(MultiModalInputError, match=r"shape \[num_images, 16, 64\], got \(1, 15, 64\)"):
        gen(llava, "<image>", torch.zeros(1, 15, 64))
    with pytest.raises(MultiModalInputError, match=r"shape \[num_images, 16, 64\], got \(1, 16, 32\)"):
        gen(llava, "<image>", torch.zeros(1, 16, 32))
    with pytest.raises(MultiModalInputError, match=r"floating-point .* got \(1, 16, 64\) torch.int64"):
        gen(llava, "<image>", torch.zeros(1, 16, 64, dtype=torch.long))
    with pytest.raises(MultiModalInputError, match="2 image placeholders .* for 3 images"):
        gen(llava, "<image> <image>", torch.zeros(3, 16, 64))
    q = PLACEHOLDER["qwen2_vl"]
    grid = torch.tensor([[1, 4, 6]])  # 6 tokens
    with pytest.raises(MultiModalInputError, match=r"image_embeds must have shape \[6, 64\] for these grids"):
        gen(qwen, q, {"image_embeds": torch.zeros(5, 64), "image_grid_thw": grid})
    with pytest.raises(MultiModalInputError, match=r'a dict \{"image_embeds"'):
        gen(qwen, q, torch.zeros(6, 64))


# ---- videos (Qwen2-VL, Qwen2.5-VL) ---------------------------------------------------------------
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_video_greedy_matches_transformers_alone_and_beside_an_image(root, arch):
    from tiny_vlm import video

    path = make_tiny_vlm(arch, root)
    # 4 frames: 2 temporal patches of 2x3 merged tokens; 5 frames: 3 of 2x2, more temporal
    # patches than rows or columns (the text after it starts past its rows, not its patches)
    clip, other, img = video(4, 40, 30, 31), video(5, 30, 30, 32), image(40, 20, 33)
    cases = [  # (prompt, multi_modal_data, the videos' frames per second)
        (f"Describe {VIDEO} briefly", {"video": clip}, [2.0]),
        # beside an image, before and after it; an odd frame count (the last repeated) and a frame
        # rate whose temporal ids (Qwen2.5-VL: 4 tokens a second x 2/3 s a patch) are rounded down
        (f"{PLACEHOLDER[arch]} then {VIDEO} and", {"image": img, "video": (other, {"fps": 3.0})}, [3.0]),
        (f"First {VIDEO} second {PLACEHOLDER[arch]}", {"video": [clip], "image": [img]}, [2.0]),
        ("and text alone", None, []),
    ]
    llm = _llm(path)
    prompts = [{"prompt": t, "multi_modal_data": d} if d else t for t, d, _ in cases]
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, _greedy(), use_tqdm=False)]
    proc = llm.llm_engine.mm_processor

    def encoder_inputs(data, rates):
        frames = data.get("video") if data else None
        frames = frames[0] if isinstance(frames, (list, tuple)) else frames
        if frames is None:
            return []
        return [proc.model_cls.process_video(proc.image_processor, list(map(_frame, frames)), rates[0], proc.hf_config)]

    want = []
    for text, data, rates in cases:
        images = [img] if data and "image" in data else []
        want.append(hf_generate(path, text, images, MAX_TOKENS, videos=encoder_inputs(data, rates)))
    assert got == want
    assert not llm.llm_engine.runner.encoder_cache.outputs


def _frame(array):
    from PIL import Image

    return Image.fromarray(array)


def test_video_frames_are_patched_as_qwens_video_processor_lays_them_out(root):
    """The frames, each resized and normalized as transformers' image processor does, padded
    to an even count with the last, laid out as Qwen's video processor lays out its patches
    ([t, 2, C, h/2, 2, 14, w/2, 2, 14] -> t, h/2, w/2, 2, 2, C, 2, 14, 14), here in numpy."""
    import numpy as np
    import torch
    from tiny_vlm import video
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from octavo.models.qwen2_vl import Qwen2VLForConditionalGeneration
    from octavo.multimodal.processor import MultiModalProcessor

    path = make_tiny_vlm("qwen2_vl", root)
    proc = MultiModalProcessor(path, AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path))
    clip = [_frame(f) for f in video(3, 70, 44, 41)]
    data = Qwen2VLForConditionalGeneration.process_video(proc.image_processor, clip, 2.0, proc.hf_config)
    ip = AutoImageProcessor.from_pretrained(path)
    frames = []
    for f in clip + clip[-1:]:
        h, w = (int(v) * 14 for v in ip(images=[f], return_tensors="pt")["image_grid_thw"][0][1:])
        x = np.asarray(f.resize((w, h), resample=3), dtype=np.float32) / 255  # PIL bicubic, as the processor
        frames.append(((x - np.array(ip.image_mean)) / np.array(ip.image_std)).transpose(2, 0, 1))
    v = np.stack(frames).reshape(2, 2, 3, h // 28, 2, 14, w // 28, 2, 14)
    want = v.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(2 * (h // 14) * (w // 14), -1)
    assert data["image_grid_thw"].tolist() == [[2, h // 14, w // 14]] and data["second_per_grid_t"] == 1.0
    torch.testing.assert_close(data["pixel_values"], torch.from_numpy(want).float(), atol=2e-2, rtol=0)


def test_bad_videos_are_refused_with_what_is_wrong(root):
    import numpy as np
    from tiny_vlm import video

    from octavo.multimodal import MultiModalInputError

    qwen = _llm(make_tiny_vlm("qwen2_vl", root), limit_mm_per_prompt={"image": 1, "video": 1})

    def gen(llm, prompt, data):
        llm.generate([{"prompt": prompt, "multi_modal_data": data}], _greedy(), use_tqdm=False)

    clip = video(2, 28, 28, 1)
    with pytest.raises(MultiModalInputError, match="2 videos, more than the 1"):
        gen(qwen, VIDEO * 2, {"video": [clip, clip]})
    with pytest.raises(MultiModalInputError, match="1 video placeholders .* for 0 videos"):
        gen(qwen, VIDEO, {"video": []})
    with pytest.raises(MultiModalInputError, match=r"uint8 array of shape \[frames, height, width, 3\]"):
        gen(qwen, VIDEO, {"video": np.zeros((2, 28, 28), dtype=np.uint8)})
    with pytest.raises(MultiModalInputError, match="takes no videos"):
        gen(_llm(make_tiny_vlm("llava", root)), "<image>", {"video": clip})

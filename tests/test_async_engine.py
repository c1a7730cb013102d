"""AsyncLLMEngine over a fake LLMEngine (no torch, no model): streams, batching, abort, limits."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from octavo.async_engine import AsyncLLMEngine, EngineDeadError, QueueFullError
from octavo.outputs import CompletionOutput, RequestOutput
from octavo.sampling_params import RequestOutputKind, SamplingParams


# ---- a fake engine with LLMEngine's interface ------------------------------------------------
class FakeTokenizer:
    """One character = one token (ids are code points mod 128); id 0 is end-of-sequence."""

    eos_token_id = 0
    chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )

    def __len__(self) -> int:
        return 128

    def get_vocab(self) -> dict[str, int]:
        return {chr(i): i for i in range(128)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 128 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [chr(i) for i in ids]

    def apply_chat_template(
        self,
        conversation,
        chat_template=None,
        tokenize=False,
        add_generation_prompt=True,
        continue_final_message=False,
        **kw,
    ):
        import jinja2

        return jinja2.Template(chat_template or self.chat_template).render(
            messages=conversation, add_generation_prompt=add_generation_prompt, **kw
        )


class _FakeReq:
    def __init__(self, rid: str, prompt_ids: list[int], params: SamplingParams) -> None:
        self.rid, self.prompt_ids, self.params = rid, prompt_ids, params
        self.outs = [[] for _ in range(params.n)]
        self.sent = [0] * params.n
        self.finish: list[str | None] = [None] * params.n


class FakeEngine:
    """Each step gives every running request one token per sample: 'a', 'b', 'c', ... cycling.

    Token id 0 (eos) comes after `eos_after` tokens if set. KV usage counts the tokens held.
    """

    def __init__(
        self,
        max_num_seqs: int = 8,
        step_delay: float = 0.002,
        max_model_len: int = 64,
        capacity_tokens: int = 4096,
        eos_after: int | None = None,
    ) -> None:
        self.tokenizer = FakeTokenizer()
        self.model_config = SimpleNamespace(max_model_len=max_model_len, model="fake")
        self.vocab_size = 128
        self.max_num_seqs = max_num_seqs
        self.step_delay = step_delay
        self.capacity = capacity_tokens
        self.eos_after = eos_after
        self.waiting: list[_FakeReq] = []
        self.running: list[_FakeReq] = []
        self.prompt_tokens = self.generation_tokens = 0
        self.fail_next_step = False
        self.thread_ids: set[int] = set()

    def _touch(self) -> None:
        self.thread_ids.add(threading.get_ident())

    def add_request(self, request_id, prompt, params, arrival_time=None) -> None:
        self._touch()
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt["prompt_token_ids"])
        if any(r.rid == request_id for r in self.waiting + self.running):
            raise ValueError(f"request id {request_id!r} is already in use")
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) + (params.max_tokens or 0) > self.model_config.max_model_len:
            raise ValueError(f"{len(ids)} + {params.max_tokens} tokens exceed {self.model_config.max_model_len}")
        self.waiting.append(_FakeReq(request_id, ids, params))

    def shutdown(self) -> None:
        self._touch()

    def abort_request(self, request_ids) -> None:
        self._touch()
        ids = set([request_ids] if isinstance(request_ids, str) else request_ids)
        self.waiting = [r for r in self.waiting if r.rid not in ids]
        self.running = [r for r in self.running if r.rid not in ids]

    def has_unfinished_requests(self) -> bool:
        self._touch()
        return bool(self.waiting or self.running)

    def step(self) -> list[RequestOutput]:
        self._touch()
        if self.fail_next_step:
            raise RuntimeError("simulated device failure")
        while self.waiting and len(self.running) < self.max_num_seqs:
            r = self.waiting.pop(0)
            self.prompt_tokens += len(r.prompt_ids)
            self.running.append(r)
        time.sleep(self.step_delay)
        outputs = []
        for r in list(self.running):
            for i in range(r.params.n):
                if r.finish[i]:
                    continue
                k = len(r.outs[i])
                tok = 0 if self.eos_after is not None and k == self.eos_after else 97 + (k + i) % 26
                r.outs[i].append(tok)
                self.generation_tokens += 1
                if tok == 0 and not r.params.ignore_eos:
                    r.finish[i] = "stop"
                elif len(r.outs[i]) >= r.params.max_tokens:
                    r.finish[i] = "length"
            done = all(r.finish)
            if done:
                self.running.remove(r)
            out = self._output(r, done)
            if out is not None:
                outputs.append(out)
        return outputs

    def _output(self, r: _FakeReq, done: bool) -> RequestOutput | None:
        kind = r.params.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not done:
            return None
        comps = []
        for i, toks in enumerate(r.outs):
            new = toks[r.sent[i] :] if kind == RequestOutputKind.DELTA else list(toks)
            r.sent[i] = len(toks)
            text = "".join(chr(t) for t in new if t != 0)
            comps.append(CompletionOutput(index=i, text=text, token_ids=new, finish_reason=r.finish[i]))
        return RequestOutput(request_id=r.rid, prompt=None, prompt_token_ids=r.prompt_ids, outputs=comps, finished=done)

    def get_stats(self, with_utilization: bool = False):
        self._touch()
        held = sum(len(r.prompt_ids) + len(o) for r in self.running for o in r.outs)
        return SimpleNamespace(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            kv_cache_usage=held / self.capacity,
            prompt_tokens_total=self.prompt_tokens,
            generation_tokens_total=self.generation_tokens,
            num_preemptions_total=0,
            prefix_cache_queries=0,
            prefix_cache_hits=0,
            kv_slot_utilization=1.0 if with_utilization else None,
        )


def delta(max_tokens: int = 8, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, output_kind=RequestOutputKind.DELTA, **kw)


async def collect(engine: AsyncLLMEngine, rid: str, params: SamplingParams, prompt="hi") -> list[RequestOutput]:
    return [o async for o in engine.generate(prompt, params, rid)]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


# ---- tests -------------------------------------------------------------------------------------
def test_generate_streams_deltas_and_only_the_engine_thread_touches_the_engine():
    fake = FakeEngine()

    async def main():
        engine = AsyncLLMEngine(fake)
        outs = await collect(engine, "r1", delta(5))
        await engine.shutdown()
        return outs

    outs = run(main())
    assert "".join(o.outputs[0].text for o in outs) == "abcde"
    assert [o.finished for o in outs] == [False] * 4 + [True]
    assert outs[-1].outputs[0].finish_reason == "length"
    assert len(fake.thread_ids) == 1 and threading.get_ident() not in fake.thread_ids


def test_output_kinds_cumulative_and_final_only():
    async def main():
        engine = AsyncLLMEngine(FakeEngine())
        cum = await collect(engine, "c", SamplingParams(max_tokens=3))
        final = await collect(engine, "f", SamplingParams(max_tokens=3, output_kind=RequestOutputKind.FINAL_ONLY))
        await engine.shutdown()
        return cum, final

    cum, final = run(main())
    assert [o.outputs[0].text for o in cum] == ["a", "ab", "abc"]
    assert len(final) == 1 and final[0].outputs[0].text == "abc" and final[0].finished


def test_concurrent_requests_batch_together():
    fake = FakeEngine(max_num_seqs=64, step_delay=0.01)

    async def main():
        engine = AsyncLLMEngine(fake)
        t = time.monotonic()
        results = await asyncio.gather(*(collect(engine, f"r{i}", delta(10)) for i in range(32)))
        elapsed = time.monotonic() - t
        stats = engine.stats
        await engine.shutdown()
        return results, elapsed, stats

    results, elapsed, stats = run(main())
    assert all("".join(o.outputs[0].text for o in r) == "abcdefghij" for r in results)
    assert stats.max_num_running_seen > 1
    # 32 x 10 tokens one after another would take >= 320 steps of 10 ms
    assert elapsed < 2.0, elapsed


def test_breaking_out_of_a_stream_aborts_and_frees_kv():
    fake = FakeEngine(step_delay=0.005)

    async def main():
        engine = AsyncLLMEngine(fake)
        other = asyncio.ensure_future(collect(engine, "keep", delta(20)))
        n = 0
        async for _ in engine.generate("hello", delta(50), "drop"):
            n += 1
            if n == 3:
                break
        done = await other
        for _ in range(100):
            if not fake.has_unfinished_requests() and engine.stats.kv_cache_usage == 0:
                break
            await asyncio.sleep(0.01)
        stats = engine.stats
        await engine.shutdown()
        return done, stats

    done, stats = run(main())
    assert done[-1].finished and len("".join(o.outputs[0].text for o in done)) == 20
    assert stats.kv_cache_usage == 0 and stats.num_running == 0 and not fake.running


def test_cancelling_the_consumer_task_aborts():
    fake = FakeEngine(step_delay=0.005)

    async def main():
        engine = AsyncLLMEngine(fake)
        task = asyncio.ensure_future(collect(engine, "x", delta(60)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if not fake.running:
                break
            await asyncio.sleep(0.01)
        running = list(fake.running)
        await engine.shutdown()
        return running

    assert run(main()) == []


def test_explicit_abort_ends_the_stream_with_abort():
    async def main():
        engine = AsyncLLMEngine(FakeEngine(step_delay=0.005))
        outs = []
        async for o in engine.generate("hi", delta(60), "a"):
            outs.append(o)
            if len(outs) == 2:
                engine.abort("a")
        await engine.shutdown()
        return outs

    outs = run(main())
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"


def test_bad_request_raises_before_streaming_and_others_continue():
    async def main():
        engine = AsyncLLMEngine(FakeEngine())
        good = asyncio.ensure_future(collect(engine, "good", delta(10)))
        with pytest.raises(ValueError, match="exceed"):
            await collect(engine, "bad", delta(60), prompt="x" * 10)
        with pytest.raises(ValueError, match="empty"):
            await collect(engine, "empty", delta(3), prompt="")
        outs = await good
        await engine.shutdown()
        return outs

    outs = run(main())
    assert outs[-1].outputs[0].finish_reason == "length"


def test_duplicate_request_id_is_refused():
    async def main():
        engine = AsyncLLMEngine(FakeEngine(step_delay=0.005))
        first = asyncio.ensure_future(collect(engine, "same", delta(20)))
        await asyncio.sleep(0.02)
        with pytest.raises(ValueError, match="already in use"):
            await collect(engine, "same", delta(2))
        await first
        await engine.shutdown()

    run(main())


def test_waiting_queue_is_bounded():
    fake = FakeEngine(max_num_seqs=1, step_delay=0.01)

    async def main():
        engine = AsyncLLMEngine(fake, max_waiting_requests=3)
        tasks = [asyncio.ensure_future(collect(engine, f"r{i}", delta(30))) for i in range(10)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await engine.shutdown()
        return results

    results = run(main())
    refused = [r for r in results if isinstance(r, QueueFullError)]
    served = [r for r in results if isinstance(r, list)]
    assert refused and served and len(refused) + len(served) == 10
    assert len(served) <= 1 + 3 + 1  # running + waiting (+1 admitted while the others queued)
    assert "max-waiting-requests" in str(refused[0])


def test_engine_failure_reaches_every_stream_and_later_calls():
    fake = FakeEngine(step_delay=0.005)

    async def main():
        engine = AsyncLLMEngine(fake)
        outs = []
        with pytest.raises(EngineDeadError):
            async for o in engine.generate("hi", delta(50), "a"):
                outs.append(o)
                fake.fail_next_step = True
        assert engine.errored
        with pytest.raises(EngineDeadError):
            await collect(engine, "b", delta(2))

    run(main())


def test_shutdown_aborts_requests_in_flight():
    async def main():
        engine = AsyncLLMEngine(FakeEngine(step_delay=0.005))
        task = asyncio.ensure_future(collect(engine, "long", delta(60)))
        await asyncio.sleep(0.05)
        await engine.shutdown()
        outs = await task
        with pytest.raises(EngineDeadError):
            await collect(engine, "late", delta(2))
        return outs

    outs = run(main())
    assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"


def test_n_samples_come_back_in_one_request():
    async def main():
        engine = AsyncLLMEngine(FakeEngine())
        outs = await collect(engine, "n", SamplingParams(n=2, max_tokens=3, output_kind=RequestOutputKind.FINAL_ONLY))
        await engine.shutdown()
        return outs

    (out,) = run(main())
    assert [c.index for c in out.outputs] == [0, 1]
    assert [c.text for c in out.outputs] == ["abc", "bcd"]


def test_finished_requests_reach_the_stat_loggers():
    seen = []

    class Logger:
        def on_request_finished(self, output, timing):
            seen.append((output.outputs[0].finish_reason, timing.num_output_tokens, timing.first_token is not None))

    async def main():
        engine = AsyncLLMEngine(FakeEngine(), stat_loggers=[Logger()])
        await collect(engine, "a", delta(4))
        await collect(engine, "b", SamplingParams(max_tokens=4))
        await engine.shutdown()

    run(main())
    assert seen == [("length", 4, True), ("length", 4, True)]

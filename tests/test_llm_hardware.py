"""The hardware-model backend: what the scripted responder says, and when the simulated
engine says it (on a virtual clock, so every time below is exact)."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from aios.clock import VirtualClock
from aios.config import HardwareBackendSettings, Settings
from aios.errors import BackendBusy, ConfigError
from aios.kernel import Kernel
from aios.llm import Chunk, Request, Resume, count_tokens
from aios.llm.hardware import HardwareBackend, SavedKV, ScriptedResponder
from tests.conftest import llm

MODEL = "sim-llama-3-8b"


def request(prompt: str = "hello", max_tokens: int | None = 8, **extra: Any) -> Request:
    return Request(MODEL, [{"role": "user", "content": prompt}], max_tokens=max_tokens, **extra)


@asynccontextmanager
async def running(clock: VirtualClock) -> AsyncIterator[VirtualClock]:
    """Drives the virtual clock while the body runs."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        yield clock
        tg.cancel_scope.cancel()


async def timed(backend: HardwareBackend, clock: VirtualClock, req: Request,
                resume: Resume | None = None) -> list[tuple[float, Chunk]]:
    """Every chunk of a stream with the virtual time it arrived at."""
    out = []
    async for chunk in backend.stream(req, resume):
        out.append((clock.now(), chunk))
    return out


# ---- the scripted responder

def test_scripted_reply_is_deterministic() -> None:
    req = request("what is a kernel?", max_tokens=12)
    first = ScriptedResponder(64).reply(req)
    again = ScriptedResponder(64).reply(request("what is a kernel?", max_tokens=12))
    assert first == again
    assert len(first.tokens) == 12
    assert first.tool_calls is None
    assert first.tokens[0] == first.tokens[0].strip() and all(t.startswith(" ") for t in first.tokens[1:])


def test_scripted_reply_depends_on_the_request() -> None:
    responder = ScriptedResponder(64)
    assert responder.reply(request("alpha", 16)).tokens != responder.reply(request("omega", 16)).tokens
    # a longer budget gives a longer reply of the same request, not a different one
    short, long = responder.reply(request("alpha", 4)), responder.reply(request("alpha", 16))
    assert long.tokens[:4] == short.tokens


def test_scripted_reply_length_defaults_without_max_tokens() -> None:
    assert len(ScriptedResponder(5).reply(request(max_tokens=None)).tokens) == 5


@pytest.mark.anyio
async def test_kernel_gives_the_same_text_for_the_same_call(make_settings: Callable[..., Settings]) -> None:
    async with Kernel(make_settings()) as k:
        a = await k.call(llm("same prompt", max_tokens=10))
        b = await k.call(llm("same prompt", max_tokens=10))
        c = await k.call(llm("other prompt", max_tokens=10))
    assert a["message"]["content"] == b["message"]["content"]
    assert a["message"]["content"] != c["message"]["content"]
    assert a["usage"]["completion_tokens"] == 10


# ---- canned replies

def write_replies(tmp_path: Path, *entries: Any, raw: str | None = None) -> Path:
    path = tmp_path / "replies.jsonl"
    path.write_text(raw if raw is not None else "\n".join(json.dumps(e) for e in entries) + "\n")
    return path


WEATHER_CALL = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_canned_reply_matches_the_last_user_message(tmp_path: Path) -> None:
    path = write_replies(tmp_path, {"match": "weather", "reply": "", "tool_calls": [WEATHER_CALL]},
                         {"match": "capital", "reply": "Paris is the capital."})
    responder = ScriptedResponder(64, path)
    capital = responder.reply(request("What is the capital of France?"))
    assert "".join(capital.tokens) == "Paris is the capital."
    assert len(capital.tokens) == 4
    weather = responder.reply(request("How is the weather in Paris?"))
    assert weather.tool_calls == [WEATHER_CALL]
    # only the last user message is matched
    earlier = Request(MODEL, [{"role": "user", "content": "the weather?"},
                              {"role": "assistant", "content": "sunny"},
                              {"role": "user", "content": "thanks"}], max_tokens=3)
    assert responder.reply(earlier).tool_calls is None and len(responder.reply(earlier).tokens) == 3


def test_replies_file_skips_blank_lines(tmp_path: Path) -> None:
    path = write_replies(tmp_path, raw='\n{"match": "hi", "reply": "hello"}\n\n')
    assert "".join(ScriptedResponder(8, path).reply(request("hi there")).tokens) == "hello"


@pytest.mark.anyio
async def test_canned_tool_call_through_the_kernel(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    path = write_replies(tmp_path, {"match": "weather", "reply": "Let me check.", "tool_calls": [WEATHER_CALL]})
    settings = make_settings(backends=[{"kind": "hardware", "replies_file": str(path)}])
    async with Kernel(settings) as k:
        result = await k.call(llm("What's the weather in Paris?"))
    assert result["finish_reason"] == "tool_calls"
    assert result["message"]["tool_calls"] == [WEATHER_CALL]
    assert result["message"]["content"] == "Let me check."


@pytest.mark.parametrize(("raw", "words"), [
    ('{"match": "a", "reply": "b"}\n{not json}\n', "replies.jsonl:2 is not JSON"),
    ('{"reply": "no match"}\n', "replies.jsonl:1 needs a string 'match'"),
    ('{"match": 3, "reply": "x"}\n', "replies.jsonl:1 needs a string 'match'"),
    ('["match", "reply"]\n', "replies.jsonl:1 needs a string 'match'"),
])
def test_bad_replies_file(tmp_path: Path, raw: str, words: str) -> None:
    path = write_replies(tmp_path, raw=raw)
    with pytest.raises(ConfigError) as info:
        ScriptedResponder(8, path)
    assert info.value.field == "replies_file"
    assert words in info.value.message


def test_missing_replies_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    with pytest.raises(ConfigError) as info:
        HardwareBackend(HardwareBackendSettings(replies_file=path), VirtualClock())
    assert info.value.field == "replies_file"
    assert str(path) in info.value.message


def test_bad_replies_file_refuses_the_kernel(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    path = write_replies(tmp_path, raw="oops\n")
    with pytest.raises(ConfigError) as info:
        Kernel(make_settings(backends=[{"kind": "hardware", "replies_file": str(path)}]))
    assert info.value.field == "replies_file"


# ---- timing on a virtual clock

TIMING = {"ttft_base_s": 0.5, "prefill_tokens_per_s": 100.0, "decode_s_per_token": 0.25}


@pytest.mark.anyio
async def test_time_to_first_token_and_decode_time() -> None:
    clock = VirtualClock()
    backend = HardwareBackend(HardwareBackendSettings(**TIMING), clock)
    req = request("x" * 400, max_tokens=6)
    num_prompt = count_tokens(req.messages)
    assert num_prompt == 104
    async with running(clock):
        chunks = await timed(backend, clock, req)
    tokens = [(t, c) for t, c in chunks if c.num_tokens]
    assert len(tokens) == 6
    ttft = tokens[0][0]
    assert ttft == pytest.approx(0.5 + 104 / 100.0)
    assert ttft == pytest.approx(backend.prefill_s(num_prompt))
    gaps = [b[0] - a[0] for a, b in zip(tokens, tokens[1:])]
    assert gaps == pytest.approx([0.25] * 5)
    end, last = chunks[-1]
    assert end == pytest.approx(backend.service_s(num_prompt, 6))
    # the scripted reply uses every token allowed: it ended for "length", as a server says
    assert last.finish_reason == "length" and last.usage is not None
    assert (last.usage.tokens_in, last.usage.tokens_out) == (104, 6)


@pytest.mark.anyio
async def test_complete_takes_the_service_time_and_frees_its_slot() -> None:
    clock = VirtualClock(start=100.0)
    backend = HardwareBackend(HardwareBackendSettings(**TIMING), clock)
    req = request("y" * 40, max_tokens=20)
    async with running(clock):
        response = await backend.complete(req)
    assert clock.now() - 100.0 == pytest.approx(backend.service_s(req.num_prompt_tokens, 20))
    assert response.usage.tokens_out == 20
    assert response.text == "".join(backend.responder.reply(req).tokens)
    assert backend.num_running == 0


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["swap", "recompute"])
async def test_resume_continues_the_same_tokens_and_charges_the_restore(mode: str) -> None:
    clock = VirtualClock()
    backend = HardwareBackend(HardwareBackendSettings(**TIMING, preemption_mode=mode), clock)
    req = request("resume me", max_tokens=10)
    whole = backend.responder.reply(req).tokens
    resume = Resume("".join(whole[:4]), 4)
    saved = backend.save(req, resume)
    assert saved == SavedKV(req.num_prompt_tokens + 4, mode)
    assert backend.num_swapped_kv_tokens == (saved.num_tokens if mode == "swap" else 0)
    async with running(clock):
        chunks = await timed(backend, clock, req, Resume(resume.text, 4, state=saved))
    assert tuple(c.text for _, c in chunks if c.num_tokens) == whole[4:]
    expected_restore = (2 * saved.num_tokens * backend.settings.kv_bytes_per_token / backend.settings.swap_bytes_per_s
                        if mode == "swap" else backend.prefill_s(saved.num_tokens))
    assert backend.restore_s(saved) == pytest.approx(expected_restore)
    assert chunks[-1][0] == pytest.approx(expected_restore + 6 * 0.25)
    assert chunks[-1][1].usage.tokens_out == 10
    assert backend.num_swapped_kv_tokens == 0


@pytest.mark.anyio
async def test_kernel_charges_the_backend_service_time(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(backends=[{"kind": "hardware", "engine": "fixed", **TIMING}])
    async with Kernel(settings) as k:
        ticket = await k.submit(llm("z" * 80, max_tokens=12))
        call = await ticket.wait()
        backend = k.router.route(MODEL)
    assert call.state == "done"
    expected = backend.service_s(count_tokens(call.messages), 12)   # type: ignore[attr-defined]
    assert call.usage.service_s == pytest.approx(expected)
    assert call.finished - call.started == pytest.approx(expected)


# ---- slots

@pytest.mark.anyio
async def test_busy_beyond_num_slots() -> None:
    clock = VirtualClock()
    backend = HardwareBackend(HardwareBackendSettings(num_slots=2, **TIMING), clock)
    async with running(clock):
        streams = [backend.stream(request(f"call {i}")) for i in range(3)]
        for s in streams[:2]:
            assert (await s.__anext__()).num_tokens == 1   # holds a slot mid-generation
        assert backend.num_running == 2
        with pytest.raises(BackendBusy) as info:
            await streams[2].__anext__()
        assert info.value.code == "backend_busy"
        assert "2 slots" in info.value.message
        for s in streams[:2]:
            await s.aclose()
        assert backend.num_running == 0
        response = await backend.complete(request("after"))   # the slots are free again
    assert response.usage.tokens_out == 8


@pytest.mark.anyio
async def test_a_reply_is_cut_at_max_tokens_and_says_why_it_ended() -> None:
    """As a serving engine does: a reply never outruns max_tokens, and one that reached it
    ends for "length"; a shorter one for "stop"; one with tool calls for "tool_calls"."""
    from aios.llm.hardware import FunctionResponder
    clock = VirtualClock()
    backend = HardwareBackend(HardwareBackendSettings(**TIMING), clock,
                              FunctionResponder(lambda r: "one two three four five"))
    async with running(clock):
        cut = [c for _, c in await timed(backend, clock, request("hi", max_tokens=3))]
        whole = [c for _, c in await timed(backend, clock, request("hi", max_tokens=50))]
    assert "".join(c.text for c in cut) == "one two three" and cut[-1].finish_reason == "length"
    assert cut[-1].usage.tokens_out == 3
    assert "".join(c.text for c in whole) == "one two three four five" and whole[-1].finish_reason == "stop"

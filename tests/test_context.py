"""aios.context: a preempted generation resumes at exactly the token where it stopped, on a
test backend that checks every resume against what it produced, and on the hardware model
(swap and recompute costs, swapped KV freed when a preempted call is cancelled)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from aios.clock import Clock, VirtualClock
from aios.config import HardwareBackendSettings
from aios.events import EventKind
from aios.kernel import Kernel
from aios.llm import Chunk, Request, Response, Resume, collect, count_tokens
from aios.llm.hardware import HardwareBackend, SavedKV
from aios.syscall import CallState, Usage
from tests.conftest import llm

MODEL = "script-model"


def script(prompt: str, num_tokens: int) -> list[str]:
    """The uninterrupted reply of the test backend: a pure function of the request."""
    return [f" {prompt}.{i}" for i in range(num_tokens)]


class ResumeMismatch(AssertionError):
    pass


class ScriptBackend:
    """Generates `script(...)` one token per `token_s` on the kernel clock. It records what
    it produced for each call id, and refuses (raises) a resume that does not match it."""
    name = "script"
    models = (MODEL,)
    is_continuable = True

    def __init__(self, clock: Clock, *, num_slots: int = 1, token_s: float = 0.01, timeout_s: float = 60.0):
        self.clock = clock
        self.num_slots = num_slots
        self.token_s = token_s
        self.timeout_s = timeout_s
        self.produced: defaultdict[str, list[str]] = defaultdict(list)
        self.saved: dict[str, int] = {}        # call id -> tokens at its last save
        self.mismatches: list[str] = []
        self.num_resumes = 0
        self.num_running = 0
        self.max_running = 0
        self.token_events: dict[tuple[str, int], anyio.Event] = {}

    def reached(self, call_id: str, num_tokens: int) -> anyio.Event:
        """Set once the call has produced `num_tokens` tokens."""
        return self.token_events.setdefault((call_id, num_tokens), anyio.Event())

    def _fail(self, message: str) -> None:
        self.mismatches.append(message)
        raise ResumeMismatch(message)

    async def stream(self, request: Request, resume: Resume | None = None) -> AsyncIterator[Chunk]:
        produced = self.produced[request.call_id]
        if resume is None:
            if produced:
                self._fail(f"{request.call_id} restarted from scratch after {len(produced)} tokens")
        else:
            self.num_resumes += 1
            if resume.num_tokens != len(produced) or resume.text != "".join(produced):
                self._fail(f"{request.call_id} resumed at {resume.num_tokens} tokens {resume.text!r}, "
                           f"but it had produced {len(produced)} tokens {''.join(produced)!r}")
            if resume.state != ("saved", request.call_id, len(produced)):
                self._fail(f"{request.call_id} resumed with state {resume.state!r}")
        self.num_running += 1
        self.max_running = max(self.max_running, self.num_running)
        try:
            tokens = script(request.messages[-1]["content"], request.max_tokens or 16)
            for tok in tokens[len(produced):]:
                await self.clock.sleep(self.token_s)
                produced.append(tok)
                self.reached(request.call_id, len(produced)).set()
                yield Chunk(tok, 1)
            yield Chunk(finish_reason="stop", usage=Usage(count_tokens(request.messages), len(tokens)))
        finally:
            self.num_running -= 1

    async def complete(self, request: Request) -> Response:
        return await collect(self.stream(request), request.model)

    def save(self, request: Request, resume: Resume) -> Any:
        self.saved[request.call_id] = resume.num_tokens
        return ("saved", request.call_id, resume.num_tokens)

    def discard(self, resume: Resume) -> None:
        self.saved.pop(resume.state[1], None)

    async def aclose(self) -> None:
        return None


def call(prompt: str, num_tokens: int, **extra: Any) -> dict[str, Any]:
    return {**llm(prompt, num_tokens, **extra), "model": MODEL}


def text(call_record: Any) -> str:
    return call_record.result["message"]["content"]


def received(sub: Any) -> list[Any]:
    """The events a bus subscription holds now."""
    events = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except anyio.WouldBlock:
            return events


# ---- the script backend: every resume is checked by the backend itself

@pytest.mark.anyio
async def test_round_robin_preempts_and_resumes_exactly(make_settings):
    clock = VirtualClock()
    backend = ScriptBackend(clock, num_slots=2)
    settings = make_settings(**{"scheduler.policy": "rr", "scheduler.rr_slice_tokens": 3})
    async with Kernel(settings, clock=clock, backends=[backend]) as k:
        sub = k.bus.subscribe({EventKind.CALL_STATE})
        with anyio.fail_after(30):
            tickets = [await k.submit(call(f"p{i}", 10 + i)) for i in range(5)]
            calls = [await t.wait() for t in tickets]
        assert k.context.num_snapshots == k.context.num_restores > 0
        assert k.context.switch_us > 0
        transitions = await k.journal.transitions(calls[0].id)
        events = received(sub)
    assert backend.mismatches == []
    assert all(c.state is CallState.DONE for c in calls)
    assert all(c.num_preemptions > 0 for c in calls)
    assert sum(c.num_preemptions for c in calls) == backend.num_resumes
    assert backend.max_running == 2
    for i, c in enumerate(calls):
        assert text(c) == "".join(script(f"p{i}", 10 + i))
        assert c.usage.tokens_out == 10 + i
    states = [s for s, _, _ in transitions]
    assert states[:4] == ["queued", "running", "preempted", "queued"] and states[-1] == "done"
    # every move is an event too, preemptions included
    assert [e.data["state"] for e in events if e.call_id == calls[0].id] == states
    first_run = next(at for s, at, _ in transitions if s == "running")
    assert calls[0].started == first_run   # `started` is the first time it got a slot


@pytest.mark.anyio
async def test_streamed_text_of_a_preempted_call_is_exact(make_settings):
    clock = VirtualClock()
    backend = ScriptBackend(clock, num_slots=1)
    settings = make_settings(**{"scheduler.policy": "rr", "scheduler.rr_slice_tokens": 2})
    async with Kernel(settings, clock=clock, backends=[backend]) as k:
        with anyio.fail_after(30):
            tickets = [await k.submit(call(f"s{i}", 7)) for i in range(3)]
            streamed = [[c.text async for c in k.stream(t)] for t in tickets]
    assert backend.mismatches == []
    for i, (t, parts) in enumerate(zip(tickets, streamed)):
        assert t.call.num_preemptions > 0
        assert "".join(parts) == text(t.call) == "".join(script(f"s{i}", 7))


@pytest.mark.anyio
async def test_the_backend_check_catches_a_wrong_resume():
    """The checks above mean something: a resume that lost a token fails loudly."""
    clock = VirtualClock()
    backend = ScriptBackend(clock)
    request = Request(MODEL, [{"role": "user", "content": "x"}], max_tokens=4, call_id="c1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        with anyio.fail_after(10):
            chunks = backend.stream(request)
            first = await chunks.__anext__()
            second = await chunks.__anext__()
            await chunks.aclose()
            state = backend.save(request, Resume(first.text + second.text, 2))
            with pytest.raises(ResumeMismatch):
                async for _ in backend.stream(request, Resume(first.text, 1, state=state)):
                    pass
        tg.cancel_scope.cancel()
    assert backend.mismatches and "resumed at 1 tokens" in backend.mismatches[0]


@pytest.mark.anyio
async def test_priority_arrival_preempts_a_running_generation(make_settings):
    clock = VirtualClock()
    backend = ScriptBackend(clock, num_slots=1)
    settings = make_settings(**{"scheduler.policy": "priority", "scheduler.aging_per_s": 0.0})
    async with Kernel(settings, clock=clock, backends=[backend]) as k:
        with anyio.fail_after(30):
            low = await k.submit(call("low", 40, priority=1))
            await backend.reached(low.id, 5).wait()
            high = await k.submit(call("high", 5, priority=50))
            high_call = await high.wait()
            assert not low.done.is_set()          # the low one waits while the high one runs
            low_call = await low.wait()
        transitions = [s for s, _, _ in await k.journal.transitions(low.id)]
    assert backend.mismatches == []
    assert low_call.num_preemptions == 1 and high_call.num_preemptions == 0
    assert "preempted" in transitions
    assert high_call.started < high_call.finished <= low_call.finished
    assert backend.saved[low.id] >= 5          # it was cut mid-generation
    assert text(low_call) == "".join(script("low", 40))
    assert text(high_call) == "".join(script("high", 5))


@pytest.mark.anyio
async def test_non_preemptive_priority_lets_the_running_call_finish(make_settings):
    clock = VirtualClock()
    backend = ScriptBackend(clock, num_slots=1)
    settings = make_settings(**{"scheduler.policy": "priority", "scheduler.is_preemptive": False})
    async with Kernel(settings, clock=clock, backends=[backend]) as k:
        with anyio.fail_after(30):
            low = await k.submit(call("low", 20, priority=1))
            await backend.reached(low.id, 5).wait()
            high = await k.submit(call("high", 5, priority=50))
            low_call, high_call = await low.wait(), await high.wait()
    assert low_call.num_preemptions == 0 and low_call.finished <= high_call.started


# ---- the hardware model

def hw_settings(make_settings, home, mode: str = "swap", **extra: Any):
    return make_settings(home=str(home), **{
        "scheduler.policy": "rr", "scheduler.rr_slice_tokens": 4,
        "backends": [{"kind": "hardware", "engine": "fixed", "num_slots": 1, "preemption_mode": mode}], **extra})


async def _texts(settings, prompts: list[str], num_tokens: int) -> tuple[list[Any], Kernel]:
    async with Kernel(settings) as k:
        with anyio.fail_after(30):
            tickets = [await k.submit(llm(p, num_tokens)) for p in prompts]
            calls = [await t.wait() for t in tickets]
    return calls, k


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["swap", "recompute"])
async def test_hardware_resumed_text_equals_uninterrupted(make_settings, tmp_path, mode):
    prompts = [f"prompt number {i}" for i in range(4)]
    whole, _ = await _texts(make_settings(home=str(tmp_path / "fifo")), prompts, 13)
    cut, k = await _texts(hw_settings(make_settings, tmp_path / "rr", mode), prompts, 13)
    assert all(c.num_preemptions == 0 for c in whole)
    assert all(c.num_preemptions >= 2 for c in cut)
    assert [text(c) for c in cut] == [text(c) for c in whole]
    assert all(len(text(c).split()) == 13 for c in cut)
    assert k.context.switch_us > 0
    assert k.router.backends[0].num_swapped_kv_tokens == 0


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["swap", "recompute"])
async def test_hardware_charges_the_switch_on_resume(make_settings, tmp_path, mode):
    """Two 10-token calls, one slot, a slice of 4: each is preempted after 4 and 8 tokens.
    Its slot time is an uninterrupted run plus one restore per resume."""
    settings = hw_settings(make_settings, tmp_path, mode)
    (a, b), _ = await _texts(settings, ["first", "second"], 10)
    hw = settings.backends[0]
    num_prompt = count_tokens(a.messages)
    uninterrupted = hw.ttft_base_s + num_prompt / hw.prefill_tokens_per_s + 9 * hw.decode_s_per_token
    if mode == "swap":   # out at preemption, back at resume, over the host link
        restores = [2 * hw.kv_bytes_per_token * (num_prompt + n) / hw.swap_bytes_per_s for n in (4, 8)]
    else:                # a prefill over the prompt and the tokens so far
        restores = [hw.ttft_base_s + (num_prompt + n) / hw.prefill_tokens_per_s for n in (4, 8)]
    assert a.num_preemptions == b.num_preemptions == 2
    assert a.usage.service_s == pytest.approx(uninterrupted + sum(restores), rel=1e-9)
    assert b.usage.service_s == pytest.approx(uninterrupted + sum(restores), rel=1e-9)


@pytest.mark.anyio
async def test_hardware_restore_cost_unit():
    """The engine itself: time from resume to the first token is the restore plus one decode."""
    clock = VirtualClock()
    hw = HardwareBackend(HardwareBackendSettings(num_slots=1), clock)
    request = Request("sim-llama-3-8b", [{"role": "user", "content": "hello there"}], max_tokens=6, call_id="c")
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        with anyio.fail_after(10):
            whole = await hw.complete(request)
            chunks = hw.stream(request)
            got = [(await chunks.__anext__()).text for _ in range(3)]
            await chunks.aclose()
            saved = hw.save(request, Resume("".join(got), 3))
            assert saved == SavedKV(request.num_prompt_tokens + 3, "swap")
            assert hw.num_swapped_kv_tokens == saved.num_tokens
            t0 = clock.now()
            rest = hw.stream(request, Resume("".join(got), 3, state=saved))
            got.append((await rest.__anext__()).text)
            waited = clock.now() - t0
            got += [c.text async for c in rest]
        tg.cancel_scope.cancel()
    s = hw.settings
    assert waited == pytest.approx(2 * saved.num_tokens * s.kv_bytes_per_token / s.swap_bytes_per_s
                                   + s.decode_s_per_token, rel=1e-9)
    assert "".join(got) == whole.text
    assert hw.num_swapped_kv_tokens == 0


@pytest.mark.anyio
async def test_cancelled_preempted_call_frees_its_swapped_kv(make_settings):
    settings = make_settings(**{"scheduler.policy": "rr", "scheduler.rr_slice_tokens": 2,
                                "backends": [{"kind": "hardware", "engine": "fixed", "num_slots": 1, "preemption_mode": "swap"}]})
    async with Kernel(settings) as k:
        hw = k.router.backends[0]
        sub = k.bus.subscribe({EventKind.CALL_STATE})
        with anyio.fail_after(30):
            a = await k.submit(llm("first", 30))
            b = await k.submit(llm("second", 30))
            async for event in sub:
                if event.call_id == a.id and event.data["state"] == "preempted":
                    break
            assert hw.num_swapped_kv_tokens == count_tokens(a.call.messages) + 2
            cancelled = await k.cancel(a.id)
            assert hw.num_swapped_kv_tokens == 0
            b_call = await b.wait()
        sub.close()
    assert cancelled.state is CallState.CANCELLED and cancelled.error["code"] == "cancelled"
    assert b_call.state is CallState.DONE and b_call.num_preemptions == 0
    assert hw.num_swapped_kv_tokens == 0

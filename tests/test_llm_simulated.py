"""The hardware-model backend on the live discrete-event engine (aios.llm.simulated): token
times are the cost model's iteration times, concurrent calls share iterations, the
kernel's context switch is the engine's preemption with its swap cost, and a cancelled or
discarded call frees its KV. Everything runs on a virtual clock, so every time is exact."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from itertools import pairwise
from typing import Any

import anyio
import pytest

from aios.clock import VirtualClock
from aios.config import HardwareBackendSettings, Settings
from aios.errors import BackendBusy, BackendUnavailable, ConfigError, InternalError, InvalidSyscall
from aios.kernel import Kernel
from aios.llm import Chunk, Request, Resume
from aios.llm.hardware import FunctionResponder, LiteLLMResponder, ScriptedResponder
from aios.llm.simulated import SavedRequest, SimulatedBackend
from tests.conftest import llm

MODEL = "sim-llama-3-8b"


def request(prompt: str = "hello", max_tokens: int | None = 8, **extra: Any) -> Request:
    return Request(MODEL, [{"role": "user", "content": prompt}], max_tokens=max_tokens, **extra)


def simulated(clock: VirtualClock, responder: Any = None, **settings: Any) -> SimulatedBackend:
    return SimulatedBackend(HardwareBackendSettings(engine="simulated", **settings), clock, responder)


@asynccontextmanager
async def running(clock: VirtualClock) -> AsyncIterator[VirtualClock]:
    """Drives the virtual clock while the body runs."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        with anyio.fail_after(10):
            yield clock
        tg.cancel_scope.cancel()


async def timed(backend: SimulatedBackend, clock: VirtualClock, req: Request,
                resume: Resume | None = None) -> list[tuple[float, Chunk]]:
    """Every chunk of a stream with the virtual time it arrived at."""
    return [(clock.now(), chunk) async for chunk in backend.stream(req, resume)]


def token_times(chunks: list[tuple[float, Chunk]]) -> list[float]:
    return [t for t, c in chunks if c.num_tokens]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in pairwise(times)]


def is_empty(backend: SimulatedBackend) -> bool:
    inst = backend.instance
    return (inst.free == inst.num_blocks and not inst.has_work() and not inst.held
            and backend.num_calls == 0 and backend.num_running == 0)


# ---- timing

@pytest.mark.anyio
async def test_first_token_is_a_prefill_iteration_and_the_rest_decode_iterations() -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    req = request("x" * 400, max_tokens=6)
    n = req.num_prompt_tokens
    async with running(clock):
        chunks = await timed(backend, clock, req)
    times = token_times(chunks)
    cost = backend.cost
    assert times[0] == pytest.approx(cost.step_time([n], [0], 0, 0), rel=1e-12)
    # a decode iteration reads the prompt and the tokens so far
    assert gaps(times) == pytest.approx([cost.step_time([], [], 1, n + i) for i in range(1, 6)], rel=1e-12)
    assert "".join(c.text for _, c in chunks) == "".join(ScriptedResponder(64).reply(req).tokens)
    end, last = chunks[-1]
    assert end == times[-1] and last.finish_reason == "length"   # it used all 6 tokens it was allowed
    assert last.usage is not None and (last.usage.tokens_in, last.usage.tokens_out) == (n, 6)
    assert is_empty(backend)


@pytest.mark.anyio
async def test_concurrent_calls_share_iterations() -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    reqs = [request(f"call {i} " + "y" * 200, max_tokens=12) for i in range(2)]
    n = reqs[0].num_prompt_tokens
    assert reqs[1].num_prompt_tokens == n
    out: dict[int, list[float]] = {}

    async def run(i: int) -> None:
        out[i] = token_times(await timed(backend, clock, reqs[i]))

    async with running(clock):
        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(run, i)
        solo = token_times(await timed(backend, clock, request("solo " + "y" * 200, max_tokens=12)))
    cost = backend.cost
    # both prompts in one prefill iteration, then every decode iteration carries both
    assert out[0][0] == out[1][0] == pytest.approx(cost.step_time([n, n], [0, 0], 0, 0), rel=1e-12)
    assert out[0] == out[1]
    batched = gaps(out[0])
    assert batched == pytest.approx([cost.step_time([], [], 2, 2 * (n + i)) for i in range(1, 12)], rel=1e-12)
    solo_gaps = gaps(solo)
    for two, one in zip(batched, solo_gaps, strict=True):
        assert one < two < 2 * one   # a batch of two costs far less than two iterations
    assert backend.instance.iterations == 12 + 12   # shared: one prefill and 11 decodes; then the solo call's


@pytest.mark.anyio
async def test_a_call_arriving_mid_iteration_joins_at_the_next_boundary() -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    first, second = request("first", max_tokens=6), request("second", max_tokens=3)
    out: dict[str, list[float]] = {}

    async def late() -> None:
        await clock.sleep(0.001)   # inside the first call's prefill iteration
        out["second"] = token_times(await timed(backend, clock, second))

    async with running(clock):
        async with anyio.create_task_group() as tg:
            tg.start_soon(late)
            out["first"] = token_times(await timed(backend, clock, first))
    prefill_end = backend.cost.step_time([first.num_prompt_tokens], [0], 0, 0)
    assert out["first"][0] == pytest.approx(prefill_end)
    # vLLM: the next iteration is the newcomer's prefill (the running decode waits a step)
    assert out["second"][0] == pytest.approx(prefill_end + backend.cost.step_time([second.num_prompt_tokens], [0], 0, 0))
    assert out["first"][1] > out["second"][0]


@pytest.mark.anyio
async def test_runs_are_deterministic() -> None:
    async def run() -> list[tuple[float, str]]:
        clock = VirtualClock()
        backend = simulated(clock, scheduler="sarathi", token_budget=64)
        got: list[tuple[float, str]] = []

        async def call(i: int) -> None:
            await clock.sleep(0.01 * i)
            got.extend((t, c.text) for t, c in await timed(backend, clock, request(f"call {i} " * 30, 5 + i)))

        async with running(clock):
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(call, i)
        return sorted(got)

    assert await run() == await run()


# ---- admission and failures

@pytest.mark.anyio
async def test_a_call_that_can_never_fit_fails_naming_its_tokens_and_the_capacity() -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    capacity = backend.kv_capacity_tokens
    huge = request("big", max_tokens=4, num_prompt_tokens=capacity + 1)
    async with running(clock):
        with pytest.raises(InvalidSyscall) as info:
            await backend.complete(huge)
    assert f"{capacity + 1} prompt + 4 output tokens" in info.value.message
    assert f"({capacity} tokens)" in info.value.message and "llama-3-8b" in info.value.message
    assert info.value.field == "messages"
    assert is_empty(backend)


@pytest.mark.anyio
async def test_busy_beyond_num_slots() -> None:
    clock = VirtualClock()
    backend = simulated(clock, num_slots=1)
    async with running(clock):
        first = backend.stream(request("one"))
        assert (await first.__anext__()).num_tokens == 1
        with pytest.raises(BackendBusy):
            await backend.stream(request("two")).__anext__()
        await first.aclose()
        assert (await backend.complete(request("three"))).usage.tokens_out == 8


def test_unknown_model_or_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        simulated(VirtualClock(), model_spec="llama-9")
    assert info.value.field == "model_spec"
    with pytest.raises(ConfigError) as info:
        simulated(VirtualClock(), device="a200")
    assert info.value.field == "device"
    with pytest.raises(ConfigError) as info:   # 70B of fp16 weights on one 80 GB GPU
        simulated(VirtualClock(), model_spec="llama-2-70b")
    assert info.value.field == "tp" and "tp=" in (info.value.hint or "")


# ---- cancel, and the kernel's context switch

@pytest.mark.anyio
async def test_a_closed_stream_frees_its_kv() -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    async with running(clock):
        chunks = backend.stream(request("cancel me", max_tokens=50))
        for _ in range(3):
            await chunks.__anext__()
        rid = backend.ledger.n - 1
        assert backend.instance.free < backend.instance.num_blocks
        await chunks.aclose()
        assert is_empty(backend)
        assert backend.ledger.done[rid] < 50


@pytest.mark.anyio
async def test_a_cancelled_caller_frees_its_kv() -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    got: list[float] = []

    async def consume() -> None:
        async for _ in backend.stream(request("cancel me", max_tokens=500)):
            got.append(clock.now())

    async with running(clock):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await clock.sleep(0.05)
            tg.cancel_scope.cancel()
        assert 0 < len(got) < 10
        assert is_empty(backend)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["swap", "recompute"])
async def test_save_preempts_in_the_engine_and_resume_pays_the_restore(mode: str) -> None:
    clock = VirtualClock()
    backend = simulated(clock, preemption_mode=mode)
    req = request("a long generation " * 20, max_tokens=20)
    whole = ScriptedResponder(64).reply(req).tokens
    n = req.num_prompt_tokens
    async with running(clock):
        chunks = backend.stream(req)
        seen = [(await chunks.__anext__()).text for _ in range(5)]
        saved = backend.save(req, Resume("".join(seen), 5))
        await chunks.aclose()
        assert isinstance(saved, SavedRequest)
        L, inst = backend.ledger, backend.instance
        assert L.preempts[saved.rid] == 1 and L.swaps[saved.rid] == (mode == "swap")
        assert saved.rid in inst.held and inst.free == inst.num_blocks   # held: its KV is off the GPU
        # the iteration in flight at the switch produced the 6th token: the engine had it
        assert L.done[saved.rid] == 6
        await clock.sleep(1.0)
        resumed_at = clock.now()
        rest = await timed(backend, clock, req, Resume("".join(seen), 5, state=saved))
    assert "".join(seen) + "".join(c.text for _, c in rest) == "".join(whole)
    times = token_times(rest)
    assert times[0] == resumed_at   # the 6th token: out before the switch, handed over now
    ctx = n + 6
    cost = backend.cost
    if mode == "swap":   # KV out (charged to the next iteration), back in, then a decode
        restore = 2 * cost.kv_transfer_s(ctx, "pcie", copy_tokens=16) + cost.step_time([], [], 1, ctx)
    else:                # a prefill of the prompt and the tokens so far gives the next token
        restore = cost.step_time([ctx], [0], 0, 0)
    assert times[1] - resumed_at == pytest.approx(restore, rel=1e-12)
    assert is_empty(backend)


@pytest.mark.anyio
async def test_discard_frees_a_saved_call() -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    req = request("discard me", max_tokens=30)
    async with running(clock):
        chunks = backend.stream(req)
        seen = [(await chunks.__anext__()).text for _ in range(2)]
        saved = backend.save(req, Resume("".join(seen), 2))
        await chunks.aclose()
        assert backend.num_calls == 1 and backend.instance.held
        backend.discard(Resume("".join(seen), 2, state=saved))
    assert is_empty(backend)


@pytest.mark.anyio
async def test_a_resume_whose_request_is_gone_recomputes() -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    req = request("no state", max_tokens=8)
    whole = ScriptedResponder(64).reply(req).tokens
    async with running(clock):
        rest = await timed(backend, clock, req, Resume("".join(whole[:3]), 3))
    times = token_times(rest)
    assert [c.text for _, c in rest if c.num_tokens] == list(whole[3:])
    assert times[0] == pytest.approx(backend.cost.step_time([req.num_prompt_tokens + 3], [0], 0, 0))


@pytest.mark.anyio
async def test_close_fails_waiting_streams_and_later_calls() -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    async with running(clock):
        chunks = backend.stream(request("closed", max_tokens=50))
        await chunks.__anext__()
        await backend.aclose()
        with pytest.raises(BackendUnavailable):
            await chunks.__anext__()
        with pytest.raises(BackendUnavailable):
            await backend.complete(request("after"))


@pytest.mark.anyio
async def test_an_engine_failure_fails_every_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualClock()
    backend = simulated(clock)
    async with running(clock):
        chunks = backend.stream(request("doomed", max_tokens=50))
        await chunks.__anext__()

        def broken(horizon: float) -> None:
            raise ValueError("a bug in the engine")
        monkeypatch.setattr(backend.instance, "step", broken)
        with pytest.raises(InternalError) as info:
            await chunks.__anext__()
        assert "a bug in the engine" in info.value.message
        with pytest.raises(InternalError):
            await backend.complete(request("after"))
        assert backend.num_running == 0 and backend.num_calls == 0


@pytest.mark.anyio
async def test_an_empty_ledger_is_renewed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aios.llm.simulated.MAX_LIVE_LEDGER", 2)
    clock = VirtualClock()
    backend = simulated(clock)
    async with running(clock):
        for i in range(3):
            await backend.complete(request(f"call {i}", 4))
        now = backend.instance.now
        assert backend.ledger.n == 1 and now == clock.now()
        await backend.complete(request("after", 4))
    assert clock.now() > now


# ---- responders

@pytest.mark.anyio
async def test_a_real_model_through_litellm_writes_the_reply_and_the_engine_paces_it() -> None:
    text = "Hello from a real model, paced by the simulator."
    clock = VirtualClock()
    backend = simulated(clock, LiteLLMResponder("openai/gpt-4o-mini", mock_response=text))
    req = request("hi", max_tokens=None)
    async with running(clock):
        chunks = await timed(backend, clock, req)
    assert "".join(c.text for _, c in chunks) == text
    times = token_times(chunks)
    assert len(times) == len(text.split()) == 9 and times[0] == pytest.approx(backend.cost.step_time([req.num_prompt_tokens], [0], 0, 0))
    assert chunks[-1][1].usage.tokens_out == 9   # type: ignore[union-attr]


@pytest.mark.anyio
async def test_litellm_responder_tool_calls_and_errors() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
    responder = LiteLLMResponder("openai/gpt-4o-mini", mock_response="", mock_tool_calls=[call])
    reply = await responder.reply(request("use a tool"))
    assert reply.tokens == () and reply.tool_calls == [call]
    failing = LiteLLMResponder("openai/gpt-4o-mini", mock_response=Exception("provider down"))
    with pytest.raises(BackendUnavailable) as info:
        await failing.reply(request())
    assert "provider down" in info.value.message


def test_responder_model_setting_picks_litellm() -> None:
    backend = simulated(VirtualClock(), responder_model="ollama/llama3", responder_api_base="http://127.0.0.1:11434")
    assert isinstance(backend.responder, LiteLLMResponder)
    assert backend.responder.model == "ollama/llama3"
    assert backend.responder.completion_kwargs["api_base"] == "http://127.0.0.1:11434"


@pytest.mark.anyio
async def test_an_empty_reply_takes_one_prefill() -> None:
    clock = VirtualClock()
    backend = simulated(clock, FunctionResponder(lambda r: ""))
    async with running(clock):
        chunks = await timed(backend, clock, request())
    assert [c for _, c in chunks if c.num_tokens] == []
    assert chunks[-1][0] == pytest.approx(backend.cost.step_time([request().num_prompt_tokens], [0], 0, 0))


# ---- the kernel on the simulated engine

def kernel_settings(make_settings: Callable[..., Settings], **backend: Any) -> Settings:
    return make_settings(backends=[{"kind": "hardware", "engine": "simulated", **backend}])


@pytest.mark.anyio
async def test_kernel_call_on_the_simulated_engine(make_settings: Callable[..., Settings]) -> None:
    async with Kernel(kernel_settings(make_settings)) as k:
        backend = k.router.route(MODEL)
        assert isinstance(backend, SimulatedBackend)
        result = await k.call(llm("hello kernel", max_tokens=10))
        ticket = await k.submit(llm("timed", max_tokens=10))
        call = await ticket.wait()
    req = request("hello kernel", 10)
    assert result["message"]["content"] == "".join(ScriptedResponder(64).reply(req).tokens)
    assert result["usage"]["prompt_tokens"] == req.num_prompt_tokens
    assert result["usage"]["completion_tokens"] == 10
    cost, n = backend.cost, call.usage.tokens_in
    service = cost.step_time([n], [0], 0, 0) + sum(cost.step_time([], [], 1, n + i) for i in range(1, 10))
    assert call.finished - call.started == pytest.approx(service, rel=1e-9)
    assert is_empty(backend)


@pytest.mark.anyio
async def test_kernel_round_robin_preempts_by_engine_swap(make_settings: Callable[..., Settings]) -> None:
    settings = kernel_settings(make_settings, num_slots=1, **{"preemption_mode": "swap"})
    settings = settings.model_copy(update={"scheduler": settings.scheduler.model_copy(
        update={"policy": "rr", "rr_slice_tokens": 4})})
    async with Kernel(settings) as k:
        backend = k.router.route(MODEL)
        a = await k.submit(llm("first", max_tokens=12))
        b = await k.submit(llm("second", max_tokens=12))
        calls = [await a.wait(), await b.wait()]
    assert all(c.state == "done" for c in calls)
    for c, prompt in zip(calls, ("first", "second"), strict=True):
        assert c.result["message"]["content"] == "".join(ScriptedResponder(64).reply(request(prompt, 12)).tokens)
    # every kernel preemption of a call with tokens left to make is an engine swap (one
    # after a call's last token finds it finished in the engine: nothing to swap)
    L = backend.ledger
    assert (L.swaps[:L.n] == L.preempts[:L.n]).all() and L.swaps[:L.n].tolist() == [2, 2]
    assert [c.num_preemptions for c in calls] == [3, 3]
    assert is_empty(backend)

"""The hardware-model backend on the discrete-event engine of aios.hardware, live: agents'
LLM calls are requests of one simulated serving instance (a paged KV cache, batching by
`scheduler`, iteration times from the cost model), and each token reaches its caller when
the simulated iteration that produced it ends on the kernel clock. A responder decides
what the tokens say (aios.llm.hardware).

One driver task steps the instance: it runs one iteration at the instance's time, sleeps
until the iteration ends, then hands out the tokens it produced. Calls that arrive
meanwhile join at the next iteration boundary, as in a real engine. The kernel's context
switch of a call is the engine's preemption: `save` suspends the request (its KV swapped
to host memory or dropped for recompute, per `preemption_mode`; a swap-out is charged to
the next iteration), `stream(resume=...)` puts it back in its queue (a swap-in is charged
when it is admitted again), and `discard`, or a stream closed before its end, drops it and
frees its KV.

Invariant: a call's tokens are handed out only once the iteration that produced them has
ended on the clock: `_Call.num_ready` trails the ledger by the iteration in flight, and
only the driver writes it. The driver runs while the instance has work; the call that
gives it work starts it, and `aclose` stops it."""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio

from aios.clock import Clock
from aios.config import HardwareBackendSettings
from aios.errors import AiosError, BackendBusy, BackendUnavailable, ConfigError, InternalError, InvalidSyscall, NotFound
from aios.hardware.cost import CostModel
from aios.hardware.engine import EngineConfig, Instance, Ledger
from aios.hardware.specs import get_device, get_model
from aios.llm import Backend, Chunk, Request, Response, Resume, collect
from aios.llm.hardware import HardwareBackend, HardwareBase, Reply, Responder, ask
from aios.param import MAX_LIVE_LEDGER
from aios.syscall import Usage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SavedRequest:
    """A preempted call: its engine request, held out of the queues (KV swapped to host
    memory, or dropped for recompute), and the reply it is producing."""
    rid: int
    reply: Reply


class _Call:
    """One engine request and the reply it produces. The driver writes `num_ready` (reply
    tokens whose iteration has ended) and `is_finished`, then sets `wake`; the stream that
    owns the call (or, while it is saved, nobody) reads them."""
    __slots__ = ("rid", "reply", "offset", "num_ready", "is_finished", "is_saved", "wake")

    def __init__(self, rid: int, reply: Reply, offset: int):
        self.rid = rid
        self.reply = reply
        self.offset = offset           # reply tokens out before the request entered the engine
        self.num_ready = offset
        self.is_finished = False
        self.is_saved = False          # suspended by the kernel; a later stream resumes it
        self.wake = anyio.Event()

    def notify(self) -> None:
        self.wake.set()
        self.wake = anyio.Event()


class SimulatedBackend(HardwareBase):
    """The simulated engine: one serving instance; `num_slots` bounds the calls the kernel
    runs on it at once, while the engine's own `max_num_seqs` and KV room decide batching."""

    def __init__(self, settings: HardwareBackendSettings, clock: Clock, responder: Responder | None = None):
        super().__init__(settings, clock, responder)
        try:
            model, device = get_model(settings.model_spec), get_device(settings.device)
        except NotFound as e:
            raise ConfigError(e.message, field="model_spec" if e.field == "model" else "device",
                              hint=e.hint) from None
        self.cost = CostModel(model, device, tp=settings.tp, pp=settings.pp)
        self.config = EngineConfig(scheduler=settings.scheduler, max_num_seqs=settings.max_num_seqs,
                                   max_batched_tokens=settings.max_batched_tokens,
                                   token_budget=settings.token_budget, preemption=settings.preemption_mode,
                                   record=False)   # a daemon's instance lives long: keep no history
        self.ledger = Ledger()
        self.instance = Instance(self.cost, self.config, self.ledger, self.name)
        self.num_running = 0
        self._calls: dict[int, _Call] = {}      # rid -> call, streaming or saved
        self._live: dict[int, _Call] = {}       # id(request) -> the call it is streaming (for save)
        self._not_before = -math.inf            # the latest arrival: no iteration starts before it
        self._driver: asyncio.Task[None] | None = None
        self._failure: AiosError | None = None  # why the engine stopped (closed, or a bug)

    @property
    def num_calls(self) -> int:
        """Calls the engine holds: streaming, or saved by the kernel until resumed."""
        return len(self._calls)

    @property
    def kv_capacity_tokens(self) -> int:
        """The most KV tokens one request can ever hold here."""
        return (self.instance.num_blocks - self.instance.watermark) * self.config.block_size

    # ---- calls

    async def stream(self, request: Request, resume: Resume | None = None) -> AsyncIterator[Chunk]:
        if self.num_running >= self.num_slots:
            raise BackendBusy(f"backend {self.name} has all {self.num_slots} slots busy",
                              hint="retry later, or submit through the kernel, which queues")
        self.num_running += 1
        call: _Call | None = None
        try:
            call = await self._admit(request, resume)
            self._live[id(request)] = call
            tokens = call.reply.tokens
            for i in range(resume.num_tokens if resume is not None else 0, len(tokens)):
                while call.num_ready <= i:
                    await self._wait(call)
                yield Chunk(tokens[i], 1)
            while not call.is_finished:
                await self._wait(call)
            yield Chunk(tool_calls=call.reply.tool_calls, finish_reason=call.reply.finish_reason,
                        usage=Usage(request.num_prompt_tokens, len(tokens)))
        finally:
            self.num_running -= 1
            if call is not None:
                self._live.pop(id(request), None)
                if not call.is_saved:
                    self._drop(call)

    async def complete(self, request: Request) -> Response:
        return await collect(self.stream(request), request.model)

    async def _admit(self, request: Request, resume: Resume | None) -> _Call:
        """The call's engine request: a saved one back in its queue, else a new one (a
        resume whose request is gone recomputes its context: prompt and tokens so far)."""
        self._check_open()
        state = resume.state if resume is not None else None
        if isinstance(state, SavedRequest):
            call = self._calls.get(state.rid)
            if call is not None and call.is_saved and call.reply is state.reply:
                call.is_saved = False
                if math.isnan(self.ledger.finish[call.rid]):
                    self._not_before = max(self._not_before, self.clock.now())
                    self.instance.resume(call.rid)
                    self._start_driver()
                return call
            reply = state.reply
        else:
            reply = await ask(self.responder, request, self.clock)
            self._check_open()
        done = resume.num_tokens if resume is not None else 0
        num_prompt = request.num_prompt_tokens + done
        num_output = max(1, len(reply.tokens) - done)   # an empty reply still takes a prefill
        now = self.clock.now()
        rid = self.ledger.add(now, num_prompt, num_output)
        if not self.instance.add(rid):
            s = self.settings
            raise InvalidSyscall(
                f"a call of {num_prompt} prompt + {num_output} output tokens needs more KV cache than "
                f"{s.model_spec} on {s.tp * s.pp} x {s.device} holds for one request "
                f"({self.kv_capacity_tokens} tokens)", field="messages",
                hint="shorten the conversation or max_tokens, or give the backend more GPUs (tp) "
                     "or a device with more memory")
        call = _Call(rid, reply, done)
        self._calls[rid] = call
        self._not_before = max(self._not_before, now)
        self._start_driver()
        return call

    async def _wait(self, call: _Call) -> None:
        """Until the driver next hands `call` something (tokens, its end, or a failure)."""
        self._check_open()
        await call.wake.wait()
        self._check_open()

    def _check_open(self) -> None:
        if (err := self._failure) is not None:
            raise type(err)(err.message, hint=err.hint)

    def _drop(self, call: _Call) -> None:
        """Takes a call out for good (done, cancelled, failed or discarded), freeing its KV."""
        del self._calls[call.rid]
        if math.isnan(self.ledger.finish[call.rid]):
            self.instance.cancel(call.rid)
        if not self._calls and self.ledger.n >= MAX_LIVE_LEDGER and not self.instance.has_work():
            self._renew()

    def _renew(self) -> None:
        """A fresh ledger and instance for an empty engine, so that a long-lived backend does
        not grow without bound; the engine's time and a swap-out still owed carry over."""
        old = self.instance
        self.ledger = Ledger()
        self.instance = Instance(self.cost, self.config, self.ledger, self.name)
        self.instance.now, self.instance.pending_swap_s = old.now, old.pending_swap_s

    # ---- the kernel's context switch

    def save(self, request: Request, resume: Resume) -> SavedRequest | None:
        """Preempts the call streaming `request` as the engine would (its KV swapped out or
        dropped), holding it out of the queues until it is resumed or discarded. A request
        not streaming here has nothing in the engine: None, and its resume recomputes."""
        call = self._live.get(id(request))
        if call is None:
            return None
        call.is_saved = True
        if math.isnan(self.ledger.finish[call.rid]):
            self.instance.suspend(call.rid)
        return SavedRequest(call.rid, call.reply)

    def discard(self, resume: Resume) -> None:
        state = resume.state
        if isinstance(state, SavedRequest):
            call = self._calls.get(state.rid)
            if call is not None and call.is_saved and call.reply is state.reply:
                self._drop(call)

    # ---- the driver

    def _start_driver(self) -> None:
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive(), name=f"aios engine {self.name}")

    async def _drive(self) -> None:
        """Runs the instance's iterations one at a time on the clock while it has work."""
        try:
            while self.instance.has_work():
                inst = self.instance
                inst.now = max(inst.now, self._not_before)
                before = inst.iterations, inst.now
                inst.step(horizon=inst.now)   # exactly one iteration
                if (inst.iterations, inst.now) == before:
                    raise InternalError("its queued requests can never be scheduled")
                await self.clock.sleep(inst.now - self.clock.now())
                self._publish()
        except Exception as e:
            log.exception("the simulated engine of backend %s failed", self.name)
            self._fail(InternalError(f"the simulated engine of backend {self.name} failed: {e}"))

    def _publish(self) -> None:
        """Hands out what the iteration that just ended produced."""
        L = self.ledger
        for call in self._calls.values():
            num_ready = min(call.offset + int(L.done[call.rid]), len(call.reply.tokens))
            is_finished = not math.isnan(L.finish[call.rid])
            if num_ready != call.num_ready or is_finished != call.is_finished:
                call.num_ready, call.is_finished = num_ready, is_finished
                call.notify()

    def _fail(self, err: AiosError) -> None:
        self._failure = err
        for call in self._calls.values():
            call.notify()

    async def aclose(self) -> None:
        """Stops the driver; calls still streaming fail with BackendUnavailable."""
        driver, self._driver = self._driver, None
        self._fail(BackendUnavailable(f"backend {self.name} is closed"))
        if driver is not None and not driver.done():
            driver.cancel()
            await asyncio.wait([driver])


ENGINES: dict[str, Callable[[HardwareBackendSettings, Clock], Backend]] = {
    "fixed": HardwareBackend, "simulated": SimulatedBackend}
"""The hardware-model backend's class for each `engine` setting."""

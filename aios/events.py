"""The one event bus. Every state change in the kernel is an Event published here; the
SSE streams, `aios ps`, metrics and the audit log subscribe.

Invariant: publishing never blocks. A subscriber whose bounded buffer is full misses the
event and is marked lagging, so a slow reader never stalls the kernel."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from aios.param import EVENT_QUEUE_DEPTH


class EventKind(StrEnum):
    CALL_STATE = "syscall.state"     # data: {"state", "kind", "resource"}, and when terminal
                                     # {"latency_s", "tokens_in", "tokens_out", "cost_usd", "service_s"}
    CALL_TOKEN = "syscall.token"     # data: {"text"}
    PROCESS = "process.state"        # data: {"state"}
    STEP = "process.step"            # data: a step of an agent (aios.process.steps): {"seq", "at", "kind", "text", "data"}
    POLICY = "scheduler.policy"      # data: {"resource", "policy"}
    KERNEL = "kernel"                # data: {"state"}


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    at: float
    pid: int | None = None
    call_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "at": self.at, "pid": self.pid, "call_id": self.call_id,
                "data": self.data}


class Subscription:
    """A bounded view of the bus; iterate it, and close it (or use `with`) when done."""

    def __init__(self, bus: EventBus, kinds: frozenset[EventKind] | None, max_buffer: int):
        self._bus = bus
        self.kinds = kinds
        self._send: MemoryObjectSendStream[Event]
        self._receive: MemoryObjectReceiveStream[Event]
        self._send, self._receive = anyio.create_memory_object_stream[Event](max_buffer)
        self.is_lagging = False
        self.num_dropped = 0

    def offer(self, event: Event) -> None:
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.is_lagging = True
            self.num_dropped += 1

    async def receive(self) -> Event:
        return await self._receive.receive()

    def receive_nowait(self) -> Event:
        return self._receive.receive_nowait()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._receive.__aiter__()

    def close(self) -> None:
        self._bus._subscriptions.discard(self)
        self._send.close()
        self._receive.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, kinds: set[EventKind] | None = None,
                  max_buffer: int = EVENT_QUEUE_DEPTH) -> Subscription:
        sub = Subscription(self, frozenset(kinds) if kinds else None, max_buffer)
        self._subscriptions.add(sub)
        return sub

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscriptions)

    def publish(self, event: Event) -> None:
        for sub in self._subscriptions:
            if sub.kinds is None or event.kind in sub.kinds:
                sub.offer(event)

    def close(self) -> None:
        for sub in list(self._subscriptions):
            sub.close()

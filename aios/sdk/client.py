"""Client and AsyncClient: the same verbs (from the core), driven with blocking I/O or with
awaits, over a transport (httpx's design): HTTP by default, or the one given. They differ
only in how a verb's requests are carried.

A transport has `target` (where and as whom), `handle(request) -> answer` (the REST API's
JSON for it), `events(call_id)` (a call's server-sent events), `process_events(pid, calls,
follow)` (a process's: its steps, and its calls' states if `calls`) and `close()` (blocking) or
`aclose()` (async). aios.sdk has the HTTP ones; the in-process ones, which call a Kernel
object directly, live with the runners that hand them to agents (aios.process.inproc)."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, Protocol, Self

import anyio

from aios.errors import AiosError, ConfigError
from aios.sdk._core import BaseClient, Event, Request, Target, TextStream, Verb, target
from aios.sdk._http import AsyncHTTPTransport, HTTPTransport
from aios.sdk.types import SyscallInfo
from aios.syscall import Step


class Transport(Protocol):
    """What a blocking Client speaks through."""
    target: Target

    def handle(self, request: Request) -> Any: ...
    def events(self, call_id: str) -> Iterator[Event]: ...
    def process_events(self, pid: int, calls: bool, follow: bool) -> Iterator[Event]: ...
    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """What an AsyncClient speaks through."""
    target: Target

    async def handle(self, request: Request) -> Any: ...
    def events(self, call_id: str) -> AsyncIterator[Event]: ...
    def process_events(self, pid: int, calls: bool, follow: bool) -> AsyncIterator[Event]: ...
    async def aclose(self) -> None: ...


def _given(url: str | None, token: str | None, pid: int | None, transport: Any) -> Target:
    if transport is None:
        return target(url, token, pid)
    if url is not None or token is not None or pid is not None:
        raise ConfigError("a client takes a url (with token and pid) or a transport, not both", field="transport",
                          hint="the transport already knows where it goes and as whom")
    return transport.target


class Client(BaseClient):
    """The blocking client. Over HTTP it works anywhere; in-process (transport=
    ThreadKernelTransport(kernel)) it must run in a worker thread of the kernel's event
    loop, as anyio.to_thread.run_sync starts one.

        with Client("http://127.0.0.1:8642", token=...) as os:
            print(os.llm.chat("hello").text)
    """

    def __init__(self, url: str | None = None, *, token: str | None = None, pid: int | None = None,
                 transport: Transport | None = None, model: str | None = None):
        super().__init__(_given(url, token, pid, transport), model)
        self._transport: Transport = transport if transport is not None else HTTPTransport(self.target)

    def _run(self, verb: Verb[Any]) -> Any:
        try:
            request = next(verb)
            while True:
                request = verb.send(self._transport.handle(request))
        except StopIteration as stop:
            return stop.value
        finally:
            verb.close()

    def _stream(self, verb: Verb[SyscallInfo], cancel_on_exit: bool = False) -> Iterator[str]:
        call = self._run(verb)
        reader = TextStream(call.id)
        finished = False
        try:
            for event, data in self._transport.events(call.id):
                if piece := reader.feed(event, data):
                    yield piece
            finished = True
        finally:
            if cancel_on_exit and not finished:   # the reader left early: stop the generation
                with contextlib.suppress(AiosError):
                    self.cancel(call.id)
        if rest := reader.finish():
            yield rest

    def _steps(self, pid: int, follow: bool) -> Iterator[Step]:
        for event, data in self._transport.process_events(pid, False, follow):
            if event == "step":
                yield Step.from_json(data)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(BaseClient):
    """The async client: every verb is awaited, and llm.stream is an async iterator.

        async with AsyncClient("http://127.0.0.1:8642") as os:   # or transport=KernelTransport(k)
            print((await os.llm.chat("hello")).text)
    """

    def __init__(self, url: str | None = None, *, token: str | None = None, pid: int | None = None,
                 transport: AsyncTransport | None = None, model: str | None = None):
        super().__init__(_given(url, token, pid, transport), model)
        self._transport: AsyncTransport = transport if transport is not None else AsyncHTTPTransport(self.target)

    async def _run(self, verb: Verb[Any]) -> Any:
        try:
            request = next(verb)
            while True:
                request = verb.send(await self._transport.handle(request))
        except StopIteration as stop:
            return stop.value
        finally:
            verb.close()

    async def _stream(self, verb: Verb[SyscallInfo], cancel_on_exit: bool = False) -> AsyncIterator[str]:
        call = await self._run(verb)
        reader = TextStream(call.id)
        finished = False
        try:
            async for event, data in self._transport.events(call.id):
                if piece := reader.feed(event, data):
                    yield piece
            finished = True
        finally:
            if cancel_on_exit and not finished:   # the reader left early: stop the generation
                with anyio.CancelScope(shield=True), contextlib.suppress(AiosError):
                    await self.cancel(call.id)
        if rest := reader.finish():
            yield rest

    async def _steps(self, pid: int, follow: bool) -> AsyncIterator[Step]:
        async for event, data in self._transport.process_events(pid, False, follow):
            if event == "step":
                yield Step.from_json(data)

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

"""Client and AsyncClient: the same verbs (from the core), driven with blocking I/O or with
awaits, over HTTP or in-process. They differ only in how a verb's requests are carried."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from aios.errors import AiosError
from aios.sdk._core import BaseClient, TextStream, Verb, target
from aios.sdk._http import AsyncHTTPTransport, HTTPTransport
from aios.sdk._inproc import KernelTransport, ThreadKernelTransport
from aios.sdk.types import SyscallInfo

if TYPE_CHECKING:
    from aios.kernel import Kernel


class Client(BaseClient):
    """The blocking client. Over HTTP it works anywhere; in-process (kernel=) it must run in a
    worker thread of the kernel's event loop, as anyio.to_thread.run_sync starts one.

        with Client("http://127.0.0.1:8642", token=...) as os:
            print(os.llm.chat("hello").text)
    """

    def __init__(self, url: str | None = None, *, token: str | None = None, pid: int | None = None,
                 kernel: Kernel | None = None, principal: str = "local"):
        super().__init__(target(url, token, pid, principal, kernel is not None))
        self._transport = (HTTPTransport(self.target) if kernel is None
                           else ThreadKernelTransport(kernel, self.target))

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

    def close(self) -> None:
        if isinstance(self._transport, HTTPTransport):
            self._transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(BaseClient):
    """The async client: every verb is awaited, and llm.stream is an async iterator.

        async with AsyncClient(kernel=k) as os:          # or AsyncClient("http://...")
            print((await os.llm.chat("hello")).text)
    """

    def __init__(self, url: str | None = None, *, token: str | None = None, pid: int | None = None,
                 kernel: Kernel | None = None, principal: str = "local"):
        super().__init__(target(url, token, pid, principal, kernel is not None))
        self._transport = (AsyncHTTPTransport(self.target) if kernel is None
                           else KernelTransport(kernel, self.target))

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

    async def aclose(self) -> None:
        if isinstance(self._transport, AsyncHTTPTransport):
            await self._transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

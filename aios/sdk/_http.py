"""The HTTP transports: each request of the core becomes one call of the REST API, and each
answer its JSON body; error bodies become the AiosError their code names. Blocking and
async versions differ only in I/O."""
from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from aios import owner
from aios.errors import AiosError, BackendUnavailable
from aios.sdk._core import (Cancel, Event, GetProcess, ListModels, ListProcesses, ListSyscalls, ListTools, ReportStep,
                            Request, Signal, Spawn, Submit, Target)

TIMEOUT = httpx.Timeout(None, connect=5.0)   # a waited call takes as long as it takes; the kernel has deadlines


def http_request(request: Request) -> tuple[str, str, dict[str, str] | None, Any]:
    """-> (method, path, query, JSON body)"""
    match request:
        case Submit(body, wait):
            return "POST", "/v1/syscalls", {"wait": "true"} if wait else None, body
        case Cancel(call_id):
            return "DELETE", f"/v1/syscalls/{quote(call_id, safe='')}", None, None
        case Spawn(name, priority, parent_pid, program, task, runner, manifest, model):
            return "POST", "/v1/processes", None, {"name": name, "priority": priority, "parent_pid": parent_pid,
                                                   "program": program, "task": task, "runner": runner,
                                                   **({"manifest": manifest} if manifest is not None else {}),
                                                   **({"model": model} if model is not None else {})}
        case ListProcesses(include_exited):
            return "GET", "/v1/processes", {"all": "true"} if include_exited else None, None
        case GetProcess(pid):
            return "GET", f"/v1/processes/{pid}", None, None
        case Signal(pid, signal):
            return "POST", f"/v1/processes/{pid}/signal", None, {"signal": signal}
        case ReportStep(pid, kind, text, data):
            return "POST", f"/v1/processes/{pid}/steps", None, {"kind": kind, "text": text, "data": data}
        case ListSyscalls(pid, state, since, before, limit):
            query = {"pid": pid, "state": state, "since": since, "before": before, "limit": limit}
            return "GET", "/v1/syscalls", {k: str(v) for k, v in query.items() if v is not None}, None
        case ListModels():
            return "GET", "/v1/models", None, None
        case ListTools():
            return "GET", "/v1/tools", None, None
    raise TypeError(f"not a request: {request!r}")


def events_path(call_id: str) -> str:
    return f"/v1/syscalls/{quote(call_id, safe='')}/events"


def process_events_query(pid: int, calls: bool, follow: bool) -> tuple[str, dict[str, str]]:
    return f"/v1/processes/{pid}/events", {"stream": "all" if calls else "steps", "follow": str(follow).lower()}


def headers(target: Target) -> dict[str, str]:
    out = {"Accept": "application/json"}
    token = target.token or owner.token_from_env(target.url, os.environ)   # as the daemon's owner, if it is
    if token:
        out["Authorization"] = f"Bearer {token}"
    if target.pid is not None:
        out["X-Aios-Pid"] = str(target.pid)
    return out


def read_response(url: str, status: int, content: bytes) -> Any:
    """The answer's JSON; raises the error an error body describes."""
    try:
        data = json.loads(content) if content else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if status < 400 and data is not None:
        return data
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        raise AiosError.from_dict(error)
    raise AiosError.from_dict({"code": "http_error", "message": f"{url} answered HTTP {status} without an aios body",
                               "hint": "check that AIOS_URL points at an aios kernel"})


def unreachable(url: str, error: httpx.TransportError) -> BackendUnavailable:
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return BackendUnavailable(f"no aios kernel answers at {url}", hint="start it with `aios kernel start`")
    return BackendUnavailable(f"lost the aios kernel at {url}: {type(error).__name__} {error}".rstrip(),
                              hint="check that it still runs: `aios kernel status`")


class SSEDecoder:
    """Server-sent events, fed line by line; an event is complete at a blank line."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self.event = value
            elif name == "data":
                self.data.append(value)
            return None
        if not self.data:
            return None
        event = (self.event, json.loads("\n".join(self.data)))
        self.event, self.data = "message", []
        return event


class HTTPTransport:
    def __init__(self, target: Target):
        self.target, self.url = target, target.url
        self._http = httpx.Client(base_url=target.url, headers=headers(target), timeout=TIMEOUT)

    def handle(self, request: Request) -> Any:
        method, path, params, body = http_request(request)
        try:
            resp = self._http.request(method, path, params=params, json=body)
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from None
        return read_response(self.url, resp.status_code, resp.content)

    def events(self, call_id: str) -> Iterator[Event]:
        return self._sse(events_path(call_id), None)

    def process_events(self, pid: int, calls: bool, follow: bool) -> Iterator[Event]:
        return self._sse(*process_events_query(pid, calls, follow))

    def _sse(self, path: str, params: dict[str, str] | None) -> Iterator[Event]:
        try:
            with self._http.stream("GET", path, params=params, headers={"Accept": "text/event-stream"}) as resp:
                if resp.status_code != 200:
                    read_response(self.url, resp.status_code, resp.read())
                decoder = SSEDecoder()
                for line in resp.iter_lines():
                    if (event := decoder.feed(line)) is not None:
                        yield event
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from None

    def close(self) -> None:
        self._http.close()


class AsyncHTTPTransport:
    def __init__(self, target: Target):
        self.target, self.url = target, target.url
        self._http = httpx.AsyncClient(base_url=target.url, headers=headers(target), timeout=TIMEOUT)

    async def handle(self, request: Request) -> Any:
        method, path, params, body = http_request(request)
        try:
            resp = await self._http.request(method, path, params=params, json=body)
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from None
        return read_response(self.url, resp.status_code, resp.content)

    def events(self, call_id: str) -> AsyncIterator[Event]:
        return self._sse(events_path(call_id), None)

    def process_events(self, pid: int, calls: bool, follow: bool) -> AsyncIterator[Event]:
        return self._sse(*process_events_query(pid, calls, follow))

    async def _sse(self, path: str, params: dict[str, str] | None) -> AsyncIterator[Event]:
        try:
            async with self._http.stream("GET", path, params=params,
                                         headers={"Accept": "text/event-stream"}) as resp:
                if resp.status_code != 200:
                    read_response(self.url, resp.status_code, await resp.aread())
                decoder = SSEDecoder()
                async for line in resp.aiter_lines():
                    if (event := decoder.feed(line)) is not None:
                        yield event
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from None

    async def aclose(self) -> None:
        await self._http.aclose()

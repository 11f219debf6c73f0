"""The sans-I/O core of both clients (httpx's BaseClient): what each verb asks the kernel
and how it reads the answers, written once.

A verb is a generator: it yields requests (the small dataclasses below, one per thing the
kernel answers), receives each answer in the wire's JSON shape, and returns the typed
result. `Client` drives verbs with blocking I/O and `AsyncClient` with awaits; a transport
(HTTP or in-process) turns one request into one answer. A verb may take several round
trips (chat asks for the default model first), and still has one body.

Invariant: no I/O here; transports do no parsing beyond JSON."""
from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aios.errors import BackendUnavailable, ConfigError, InvalidSyscall, NotFound
from aios.sdk.types import ChatResult, MemoryEntry, ProcessInfo, SyscallInfo, ToolInfo
from aios.syscall import CallState, Step

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_URL = "http://127.0.0.1:8642"
HTTP_SCHEMES = ("http://", "https://")
INPROC_URL = "inproc://"


# ---- requests: each one round trip to the kernel; transports map them to HTTP or kernel calls

@dataclass(frozen=True, slots=True)
class Submit:
    body: dict[str, Any]
    wait: bool


@dataclass(frozen=True, slots=True)
class Cancel:
    call_id: str


@dataclass(frozen=True, slots=True)
class Spawn:
    name: str
    priority: int
    parent_pid: int | None
    program: str | None
    task: str
    runner: str
    manifest: dict[str, Any] | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class ListProcesses:
    include_exited: bool


@dataclass(frozen=True, slots=True)
class GetProcess:
    pid: int


@dataclass(frozen=True, slots=True)
class Signal:
    pid: int
    signal: str   # suspend | resume | kill


@dataclass(frozen=True, slots=True)
class ReportStep:
    pid: int
    kind: str
    text: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ListSyscalls:
    pid: int | None
    state: str | None
    since: float | None
    before: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class ListModels:
    pass


@dataclass(frozen=True, slots=True)
class ListTools:
    pass


Request = (Submit | Cancel | Spawn | ListProcesses | GetProcess | Signal | ReportStep | ListSyscalls | ListModels
           | ListTools)
Event = tuple[str, dict[str, Any]]   # a server-sent event of a call: ("token" | "state", its data)
Verb = Generator[Request, Any, T]


def ask(request: Request, parse: Callable[[Any], T]) -> Verb[T]:
    """A verb of one round trip."""
    return parse((yield request))


def then(verb: Verb[T], fn: Callable[[T], U]) -> Verb[U]:
    return fn((yield from verb))


def syscall(body: Mapping[str, Any], wait: bool = True) -> Verb[SyscallInfo]:
    """Submits a syscall; fields set to None are left out (the kernel's defaults apply)."""
    data = yield Submit({k: v for k, v in body.items() if v is not None}, wait)
    return SyscallInfo.from_json(data)


def result(body: Mapping[str, Any]) -> Verb[Any]:
    """Submits, waits, and returns the result, or raises the call's error."""
    call = yield from syscall(body)
    return call.raise_for_error().result


def _state(state: CallState | str | None) -> str | None:
    try:
        return CallState(state).value if state is not None else None
    except ValueError:
        raise InvalidSyscall(f"no call state {state!r}", field="state",
                             hint=f"one of {', '.join(s.value for s in CallState)}") from None


# ---- the client state both clients share

@dataclass(frozen=True, slots=True)
class Target:
    """Where a client sends its requests, and as whom."""
    url: str
    token: str | None
    pid: int | None           # the calling process, sent as X-Aios-Pid; None: the principal's own account
    principal: str            # in-process only; over HTTP the token names the principal


def target(url: str | None, token: str | None, pid: int | None, principal: str = "local") -> Target:
    """Checks where a client over HTTP is to go, and as whom."""
    url = url if url is not None else DEFAULT_URL
    if url.startswith(INPROC_URL):
        raise ConfigError("an in-process client is given its transport, not a url", field="url",
                          hint="Client(transport=ThreadKernelTransport(kernel)) or AsyncClient(transport="
                               "KernelTransport(kernel)), from aios.process.inproc")
    if not url.startswith(HTTP_SCHEMES):
        raise ConfigError(f"unknown kind of aios url {url!r}", field="url", hint="http://host:port or https://host:port")
    check_pid(pid)
    return Target(url.rstrip("/"), token, pid or None, principal)


def check_pid(pid: Any) -> None:
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
        raise ConfigError(f"pid must be a process id, got {pid!r}", field="pid")


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The client settings a spawned agent finds in its environment."""
    raw_pid = environ.get("AIOS_PID", "").strip()
    if raw_pid and not raw_pid.isdigit():
        raise ConfigError(f"AIOS_PID must be a process id, got {raw_pid!r}", field="AIOS_PID")
    return {"url": environ.get("AIOS_URL") or DEFAULT_URL, "token": environ.get("AIOS_TOKEN") or None,
            "pid": int(raw_pid) if raw_pid else None}


def default_model_from_env(environ: Mapping[str, str]) -> str | None:
    """AIOS_MODEL: the model a spawned agent's LLM calls use when they name none."""
    return environ.get("AIOS_MODEL") or None


class BaseClient:
    """The state and verbs shared by Client and AsyncClient. Subclasses supply `_run`,
    which drives a verb over their transport (returning the value, or an awaitable of it)."""

    def __init__(self, target: Target, model: str | None = None):
        self.target = target
        # what LLM calls use when they name no model: the one given, else the first the kernel serves
        self._default_model: str | None = model
        self.llm = LLM(self)
        self.tools = Tools(self)
        self.memory = Memory(self)
        self.storage = Storage(self)
        self.processes = Processes(self)

    @property
    def url(self) -> str:
        return self.target.url

    @property
    def pid(self) -> int | None:
        return self.target.pid

    def _run(self, verb: Verb[Any]) -> Any:
        raise NotImplementedError

    def _stream(self, verb: Verb[SyscallInfo]) -> Any:
        """Submits with `verb`, then yields the call's text as it comes (see TextStream)."""
        raise NotImplementedError

    def syscall(self, call: Mapping[str, Any], wait: bool = True):
        """Submits any syscall dict (see aios.syscall); -> SyscallInfo, once the call is over
        if `wait`, else once it is queued. A failed call is returned, not raised."""
        return self._run(syscall(call, wait))

    def cancel(self, call_id: str):
        """Cancels a call that is not over; -> SyscallInfo (a finished call as it ended)."""
        return self._run(ask(Cancel(call_id), SyscallInfo.from_json))

    def step(self, kind: str, text: str, **data: Any):
        """Says what this agent is doing now (kind: plan, thought, action, observation,
        answer, ...; `data`: anything more, as JSON): whoever follows its process sees it at
        once (`aios run`, processes.steps), and its trace keeps it (`aios logs PID
        --trace`). Only a client of an agent process may; -> Step, as numbered."""
        if self.pid is None:
            raise InvalidSyscall("only an agent process reports steps: this client speaks for the account",
                                 field="pid", hint="give the client pid=N, or run the agent with `aios run`")
        return self._run(ask(ReportStep(self.pid, kind, text, data), Step.from_json))

    def _steps(self, pid: int, follow: bool) -> Any:
        """The process's steps (see Processes.steps); each client streams them its way."""
        raise NotImplementedError

    def history(self, pid: int | None = None, state: CallState | str | None = None, since: float | None = None,
                before: str | None = None, limit: int = 50):
        """-> list[SyscallInfo]: the calls this client may see, newest first, one page of
        `limit` (what `aios history` shows): of process `pid` (0: the account's own), in
        `state`, made at or after `since` (Unix seconds). The next page: before=page[-1].id."""
        return self._run(ask(ListSyscalls(pid, _state(state), since, before, limit),
                             lambda data: [SyscallInfo.from_json(c) for c in data["data"]]))

    def models(self):
        """-> list[str], the models the kernel serves; the first is the default."""
        return self._run(self._models())

    def _models(self) -> Verb[list[str]]:
        return (yield from ask(ListModels(), lambda data: [m["id"] for m in data["data"]]))

    def _model(self, model: str | None) -> Verb[str]:
        if model is not None:
            return model
        if self._default_model is None:
            models = yield from self._models()
            if not models:
                raise NotFound("the kernel serves no model", field="model",
                               hint="configure a backend in the kernel's settings")
            self._default_model = models[0]
        return self._default_model


class _Namespace:
    def __init__(self, client: BaseClient):
        self._client = client

    def _run(self, verb: Verb[Any]) -> Any:
        return self._client._run(verb)


class LLM(_Namespace):
    def chat(self, messages: str | list[dict[str, Any]], model: str | None = None, max_tokens: int | None = None,
             tools: list[dict[str, Any]] | None = None, temperature: float | None = None, priority: int = 0,
             timeout_s: float | None = None):
        """One completion; -> ChatResult. `messages` are OpenAI-shaped (a string is one
        user message); `model` defaults to the first the kernel serves; `timeout_s` fails the
        call with DeadlineExceeded if it is not over by then."""
        return self._run(then(self._submit(messages, model, True, max_tokens=max_tokens, tools=tools,
                                           temperature=temperature, priority=priority, timeout_s=timeout_s),
                              ChatResult.from_call))

    def stream(self, messages: str | list[dict[str, Any]], model: str | None = None, max_tokens: int | None = None,
               tools: list[dict[str, Any]] | None = None, temperature: float | None = None, priority: int = 0,
               timeout_s: float | None = None, cancel_on_exit: bool = False):
        """The reply as pieces of text, as they are generated: an iterator (Client) or an
        async iterator (AsyncClient); the pieces join to the reply's text. The call's error
        is raised at the end if it failed. Leaving early does not cancel the call, unless
        `cancel_on_exit` (then close the iterator: `with closing(...)`/`aclosing(...)`)."""
        return self._client._stream(self._submit(messages, model, False, max_tokens=max_tokens, tools=tools,
                                                 temperature=temperature, priority=priority, timeout_s=timeout_s),
                                    cancel_on_exit)

    def _submit(self, messages: str | list[dict[str, Any]], model: str | None, wait: bool,
                **fields: Any) -> Verb[SyscallInfo]:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        model = yield from self._client._model(model)
        return (yield from syscall({"kind": "llm", "model": model, "messages": messages, **fields}, wait))


class Tools(_Namespace):
    def call(self, tool: str, /, idempotency_key: str | None = None, **arguments: Any):
        """Runs a tool the kernel has registered; -> its JSON result. `idempotency_key`:
        yours, given again when you resubmit a call that failed as `interrupted`, so a tool
        that passes it on acts once (the call's id if left out)."""
        return self._run(result({"kind": "tool", "tool": tool, "arguments": arguments,
                                 "idempotency_key": idempotency_key}))

    def list(self):
        """-> list[ToolInfo]"""
        return self._run(ask(ListTools(), lambda data: [ToolInfo.from_json(t) for t in data["tools"]]))


def _entries(data: dict[str, Any]) -> list[MemoryEntry]:
    return [MemoryEntry(e["key"], e["content"], e.get("score")) for e in data["entries"]]


class Memory(_Namespace):
    """The calling process's own memory entries."""

    def add(self, content: str, key: str | None = None):
        """-> str, the entry's key (the one given, else a new one)."""
        return self._run(then(result({"kind": "memory", "op": "add", "content": content, "key": key}),
                              lambda r: r["key"]))

    def get(self, key: str):
        """-> MemoryEntry; NotFound if there is none."""
        return self._run(then(result({"kind": "memory", "op": "get", "key": key}),
                              lambda r: MemoryEntry(r["key"], r["content"])))

    def search(self, query: str, k: int = 5, owner: int | None = None):
        """-> list[MemoryEntry], at most k, nearest to the query's meaning first (embedding
        search; BM25 where no model loads). `owner`: another agent's memory it shares."""
        return self._run(then(result({"kind": "memory", "op": "search", "query": query, "k": k, "owner": owner}),
                              _entries))

    def stats(self):
        """-> dict: the working memory's policy, budget and use in tokens, the entries in it,
        hits, faults, evictions and hit rate."""
        return self._run(result({"kind": "memory", "op": "stats"}))

    def list(self):
        """-> list[MemoryEntry], oldest first."""
        return self._run(then(result({"kind": "memory", "op": "list"}), _entries))

    def delete(self, key: str):
        """-> None; NotFound if there is no such entry."""
        return self._run(then(result({"kind": "memory", "op": "delete", "key": key}), lambda r: None))


class Storage(_Namespace):
    """The calling process's own files (relative paths)."""

    def read(self, path: str):
        """-> str; NotFound if there is no such file."""
        return self._run(then(result({"kind": "storage", "op": "read", "path": path}), lambda r: r["data"]))

    def write(self, path: str, data: str):
        """-> int, the number of bytes written (UTF-8)."""
        return self._run(then(result({"kind": "storage", "op": "write", "path": path, "data": data}),
                              lambda r: r["bytes"]))

    def list(self, prefix: str = ""):
        """-> list[str], the paths under `prefix`, sorted."""
        return self._run(then(result({"kind": "storage", "op": "list", "path": prefix}), lambda r: r["paths"]))

    def delete(self, path: str):
        """-> None; NotFound if there is no such file. (An agent's delete waits for its
        principal's confirmation; the file stays in its versions.)"""
        return self._run(then(result({"kind": "storage", "op": "delete", "path": path}), lambda r: None))

    def move(self, path: str, to: str):
        """-> int, the new version at `to`; `path` gets a deletion version (it stays in its
        versions). NotFound if `path` is missing, Conflict if `to` exists."""
        return self._run(then(result({"kind": "storage", "op": "move", "path": path, "to": to}),
                              lambda r: r["version"]))

    def versions(self, path: str):
        """-> list[dict]: each version's number, bytes, sha256, time, and whether it is a deletion."""
        return self._run(then(result({"kind": "storage", "op": "versions", "path": path}), lambda r: r["versions"]))

    def read_version(self, path: str, version: int):
        """-> str, the content of an older version."""
        return self._run(then(result({"kind": "storage", "op": "read", "path": path, "version": version}),
                              lambda r: r["data"]))

    def diff(self, path: str, version: int | None = None, other: int | None = None):
        """-> str, a unified diff from `version` (default: the one before) to `other` (default: the newest)."""
        return self._run(then(result({"kind": "storage", "op": "diff", "path": path, "version": version,
                                      "other": other}), lambda r: r["diff"]))

    def rollback(self, path: str, version: int | None = None, at: float | None = None):
        """-> int, the new version that restores `version` (or the one current at time `at`)."""
        return self._run(then(result({"kind": "storage", "op": "rollback", "path": path, "version": version,
                                      "at": at}), lambda r: r["version"]))


def _processes(data: list[dict[str, Any]]) -> list[ProcessInfo]:
    return [ProcessInfo.from_json(p) for p in data]


class Processes(_Namespace):
    """The principal's processes. A process a client spawns is a child of the client's pid."""

    def spawn(self, name: str, priority: int = 0, program: str | None = None, task: str = "",
              runner: str = "inproc", manifest: dict[str, Any] | None = None, model: str | None = None):
        """-> ProcessInfo of the new process. With a `program` (a .py file, a module or a
        registered agent name, as the kernel sees it) the process runs its `main(task, os)`
        under the runner ("inproc" or "subprocess"); without one it is an account to charge
        calls to. `manifest`: its permission manifest (aios.access.manifest), within this
        principal's rights and this client's process's own manifest. `model`: the model its
        LLM calls use when they name none (one the kernel serves), instead of the first."""
        return self._run(ask(Spawn(name, priority, self._client.pid, program, task, runner, manifest, model),
                             ProcessInfo.from_json))

    def list(self, include_exited: bool = False):
        """-> list[ProcessInfo]"""
        return self._run(ask(ListProcesses(include_exited), _processes))

    def get(self, pid: int):
        """-> ProcessInfo; NotFound for a pid of another principal, or none."""
        return self._run(ask(GetProcess(pid), ProcessInfo.from_json))

    def suspend(self, pid: int):
        """Its calls stop being scheduled until resumed; -> ProcessInfo."""
        return self._run(ask(Signal(pid, "suspend"), ProcessInfo.from_json))

    def resume(self, pid: int):
        """-> ProcessInfo"""
        return self._run(ask(Signal(pid, "resume"), ProcessInfo.from_json))

    def kill(self, pid: int):
        """Cancels its calls in flight and marks it exited; -> ProcessInfo."""
        return self._run(ask(Signal(pid, "kill"), ProcessInfo.from_json))

    def steps(self, pid: int, follow: bool = False):
        """The steps the process reported (Client.step), oldest first: an iterator of Step
        (an async one on AsyncClient). With `follow`, it goes on as new ones come, until
        the process exits. Its exit reason says why it ended (processes.get)."""
        return self._client._steps(pid, follow)


# ---- streams

class TextStream:
    """Reads a call's events (`state`, `token`, `lagged`, as the SSE endpoint sends them)
    into pieces of text. `finish` returns what the events did not carry (all of it, if the
    call was over before the stream opened) and raises the call's error."""

    def __init__(self, call_id: str):
        self.call_id = call_id
        self.parts: list[str] = []
        self.is_lagged = False   # events were dropped: the rest of the text comes from the result
        self.final: SyscallInfo | None = None

    def feed(self, event: str, data: dict[str, Any]) -> str:
        match event:
            case "token" if not self.is_lagged:
                self.parts.append(data["text"])
                return data["text"]
            case "lagged":
                self.is_lagged = True
            case "state" if CallState(data["state"]) in (CallState.DONE, CallState.FAILED, CallState.CANCELLED):
                self.final = SyscallInfo.from_json(data)
        return ""

    def finish(self) -> str:
        if self.final is None:
            raise BackendUnavailable(f"the events of syscall {self.call_id} ended before the call did",
                                     hint="the kernel may have stopped; see client.syscall and client.cancel")
        text = ChatResult.from_call(self.final).text
        received = "".join(self.parts)
        return text[len(received):] if text.startswith(received) else ""

"""aios.server.schemas: the REST document describes exactly what the server writes. Real
records of every kind, op and state, serialised by syscall_json and process_json (the
functions the routes answer with), validate against the document the server serves; so do
the bodies `encode` makes of real calls, and the error bodies of every error class at the
status its class names. A new state, kind, op, field or error class that the document
does not follow fails here."""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from aios.config import Settings
from aios.errors import ERRORS_BY_CODE, AiosError, Cancelled, DeadlineExceeded
from aios.process import Process, ProcState, process_json
from aios.server import create_app
from aios.server.errors import STATUS, error_response
from aios.storage.journal import Interrupted
from aios.syscall import (MOVES, SYSCALL_TYPES, CallState, Kind, MemoryOp, ProcessOp, StorageOp, Syscall, Usage,
                          advance, decode, encode, evolve, syscall_json)

OPS = {Kind.MEMORY: MemoryOp, Kind.STORAGE: StorageOp, Kind.PROCESS: ProcessOp}
# one body a caller may submit of each kind; the fields every op of its kind may need
BODIES: dict[Kind, dict[str, Any]] = {
    Kind.LLM: {"model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
               "stop": ["\n"], "temperature": 0.5},
    Kind.TOOL: {"tool": "calculator", "arguments": {"expression": "1 + 1"}, "idempotency_key": "k-1"},
    Kind.MEMORY: {"key": "k", "content": "a note", "query": "note", "k": 3},
    Kind.STORAGE: {"path": "notes/a.md", "data": "text", "version": 1, "to": "notes/b.md"},
    Kind.PROCESS: {"target_pid": 2},
}
RESULTS = {Kind.LLM: {"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop",
                      "model": "sim-llama-3-8b", "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                                           "cost_usd": 0.0}},
           Kind.TOOL: 2, Kind.MEMORY: {"id": 1}, Kind.STORAGE: {"version": 2}, Kind.PROCESS: [{"pid": 2}]}


@pytest.fixture
def spec(make_settings: Callable[..., Settings]) -> dict[str, Any]:
    """The document the server serves at /openapi.json."""
    return create_app(make_settings()).openapi()


def validator(spec: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of the document's component `name`, its references resolved in the document."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                            "components": spec["components"]})


def check(spec: dict[str, Any], name: str, value: Any) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(spec, name).iter_errors(value)]
    assert errors == [], (name, value)


def wire(value: Any) -> Any:
    """What a client reads: the value through JSON, as the routes send it."""
    return json.loads(json.dumps(value))


def calls() -> list[Syscall]:
    """A real call of every kind, and of every op of the kinds that have ops, as decode makes them."""
    made = []
    for kind, body in BODIES.items():
        for op in OPS.get(kind, [None]):
            data = {"kind": kind.value, **body, **({"op": op.value} if op is not None else {})}
            made.append(decode(data, pid=1, principal="alice", created=100.0))
    return made


def in_state(call: Syscall, to: CallState, error: AiosError) -> Syscall:
    """The call (queued, as decode makes it) moved to `to` through legal moves only, filled
    as the kernel fills it on the way: a start, a preemption, an end with its result or
    error. A call held for a confirmation is held at submit, as the kernel holds it."""
    if to is CallState.WAITING_CONFIRMATION:
        return evolve(call, state=to)
    record = call
    for state in _path(call.state, to)[1:]:
        changes: dict[str, Any] = {}
        if state is CallState.RUNNING:
            changes = {"started": record.started or 101.0}
        elif state is CallState.PREEMPTED:
            changes = {"num_preemptions": record.num_preemptions + 1}
        elif state is CallState.DONE:
            changes = {"finished": 103.0, "result": RESULTS[call.kind],
                       "usage": Usage(tokens_in=3, tokens_out=1, cost_usd=0.001, service_s=1.5)}
        elif state in (CallState.FAILED, CallState.CANCELLED):
            changes = {"finished": 103.0, "error": error.to_dict()}
        record = advance(record, state, **changes)
    assert record.state is to
    return record


def _path(start: CallState, to: CallState) -> list[CallState]:
    """The shortest run of legal moves (MOVES) from `start` to `to`."""
    seen = {start: [start]}
    todo = deque([start])
    while todo:
        here = todo.popleft()
        for there in sorted(MOVES[here]):
            if there not in seen:
                seen[there] = [*seen[here], there]
                todo.append(there)
    return seen[to]


def component_of(call: Syscall, suffix: str) -> str:
    return type(call).__name__.removesuffix("Syscall") + suffix


def test_every_call_of_every_kind_op_and_state_is_written_as_the_document_says(spec) -> None:
    made = calls()
    assert {c.kind for c in made} == set(Kind)
    for call in made:
        for state in CallState:
            error = Cancelled("cancelled by its caller") if state is CallState.CANCELLED else \
                DeadlineExceeded("not done within 2 s", hint="give it a longer timeout_s", field="timeout_s")
            check(spec, "SyscallOut", wire(syscall_json(in_state(call, state, error))))
    enums = spec["components"]["schemas"]
    assert enums["CallState"]["enum"] == [s.value for s in CallState]
    assert enums["Kind"]["enum"] == [k.value for k in Kind]
    for op in OPS.values():
        assert enums[op.__name__]["enum"] == [o.value for o in op]


def test_a_record_with_a_key_or_value_the_document_lacks_is_refused(spec) -> None:
    """The check above can fail: the document is exact, not merely permissive."""
    record = wire(syscall_json(in_state(calls()[0], CallState.DONE, Cancelled("x"))))
    assert not validator(spec, "SyscallOut").is_valid({**record, "extra": 1})
    assert not validator(spec, "SyscallOut").is_valid({**record, "state": "paused"})
    assert not validator(spec, "SyscallOut").is_valid({k: v for k, v in record.items() if k != "num_preemptions"})
    assert not validator(spec, "SyscallOut").is_valid({**record, "payload": {**record["payload"], "extra": 1}})


def test_every_process_state_is_written_as_the_document_says(spec) -> None:
    bare = Process(pid=3, name="account", principal="alice", parent_pid=None, priority=0, state=ProcState.RUNNING,
                   created=100.0)
    agent = Process(pid=4, name="agent", principal="alice", parent_pid=3, priority=5, state=ProcState.RUNNING,
                    created=100.0, usage=Usage(tokens_in=10, tokens_out=4, cost_usd=0.01, service_s=2.0),
                    program="agents/hello.py", runner="subprocess")
    for proc in (bare, agent):
        for state in ProcState:
            ended = {"exited": 105.0, "exit_reason": "killed", "exit_code": -9, "cpu_s": 0.25,
                     "max_rss_kib": 20480} if state is ProcState.EXITED else {}
            check(spec, "ProcessOut", wire(process_json(evolve(proc, state=state, **ended))))
    assert spec["components"]["schemas"]["ProcState"]["enum"] == [s.value for s in ProcState]
    assert not validator(spec, "ProcessOut").is_valid({**wire(process_json(bare)), "extra": 1})


def test_the_syscall_bodies_are_what_decode_takes(spec) -> None:
    body = spec["paths"]["/v1/syscalls"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    named = [ref["$ref"].rsplit("/", 1)[1] for ref in body["oneOf"]]
    assert named == [cls.__name__.removesuffix("Syscall") + "Call" for cls in SYSCALL_TYPES.values()]
    for call in calls():
        sent = wire(encode(call))
        check(spec, component_of(call, "Call"), sent)
        assert decode(sent, pid=1, principal="alice", created=1.0).payload() == call.payload()
        # what decode refuses, the document refuses too
        assert not validator(spec, component_of(call, "Call")).is_valid({**sent, "unknown_field": 1})
        with pytest.raises(AiosError, match="unknown field"):
            decode({**sent, "unknown_field": 1}, pid=1, principal="alice", created=1.0)


def test_each_error_class_names_its_status_and_answers_with_the_documents_body(spec) -> None:
    for cls in (*ERRORS_BY_CODE.values(), Interrupted):
        assert "status" in vars(cls), f"{cls.__name__} names no status of its own"
        assert STATUS[cls.code] == cls.status
        rebuilt = AiosError.from_dict({"code": cls.code, "message": "what went wrong", "hint": "what to do",
                                       "field": "name"})
        check(spec, "ErrorOut", wire(rebuilt.to_dict()))   # a failed call's `error`
        response = error_response(rebuilt)
        assert response.status_code == cls.status, cls
        check(spec, "ErrorBody", json.loads(response.body))


def test_every_route_documents_the_statuses_of_what_it_meets(spec) -> None:
    """Every route but /healthz names its caller (a token, X-Aios-Pid: both documented),
    so it may answer 400, 401, 403, 404 and 503; one that reads a body, 400, 413 and 422;
    one with a typed path or query parameter, 422. No route documents a status that no
    error class has."""
    known = {cls.status for cls in (*ERRORS_BY_CODE.values(), Interrupted)}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            documented = {int(s) for s in operation["responses"]}
            ok = {s for s in documented if s < 300}
            assert len(ok) == 1, (method, path)
            assert documented - ok <= known, (method, path)
            if path == "/healthz":
                assert documented == {200}
                continue
            assert {400, 401, 403, 404, 503} <= documented, (method, path)
            if "requestBody" in operation:
                assert {400, 413, 422} <= documented, (method, path)
            if any(p["in"] in ("path", "query") and p["schema"].get("type") in ("integer", "boolean")
                   for p in operation.get("parameters", [])):
                assert 422 in documented, (method, path)
            assert "X-Aios-Pid" in {p["name"] for p in operation["parameters"] if p["in"] == "header"}
            assert operation["security"] == [{"bearer": []}, {}]
            for status in documented - ok:
                answer = operation["responses"][str(status)]["content"]
                assert answer == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def test_the_documents_examples_are_bodies_decode_takes(spec) -> None:
    examples = spec["paths"]["/v1/syscalls"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert set(examples) == {k.value for k in Kind}
    for name, example in examples.items():
        call = decode(example["value"], pid=0, principal="local", created=1.0)
        assert call.kind == name
        check(spec, component_of(call, "Call"), example["value"])


def test_every_reference_in_the_document_names_one_of_its_components(spec) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    names = {ref.removeprefix("#/components/schemas/") for ref in refs}
    assert all(ref.startswith("#/components/schemas/") for ref in refs), refs
    assert names <= spec["components"]["schemas"].keys()
    assert "$defs" not in json.dumps(spec)

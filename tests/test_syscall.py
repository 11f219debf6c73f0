"""aios.syscall: decoding untrusted syscall dicts (every refusal names its field) and the
state machine every syscall follows."""
from __future__ import annotations

from typing import Any

import pytest

from aios.errors import InvalidSyscall, InvalidTransition
from aios.param import MAX_PRIORITY, MAX_TOKENS
from aios.syscall import (MOVES, TERMINAL, CallState, LLMSyscall, MemoryOp, MemorySyscall, ProcessOp,
                          ProcessSyscall, StorageOp, StorageSyscall, ToolSyscall, advance, decode, encode)
from tests.conftest import llm


def dec(data: Any, created: float = 100.0):
    return decode(data, pid=7, principal="alice", created=created)


def refused(data: Any) -> InvalidSyscall:
    with pytest.raises(InvalidSyscall) as info:
        dec(data)
    return info.value


# ---- decoding each kind

def test_decode_llm():
    call = dec(llm("hi", 16, temperature=0, stop=["\n"], priority=3, timeout_s=2.5))
    assert isinstance(call, LLMSyscall)
    assert (call.model, call.max_tokens, call.stop) == ("sim-llama-3-8b", 16, ["\n"])
    assert call.messages == [{"role": "user", "content": "hi"}]
    assert call.temperature == 0.0 and isinstance(call.temperature, float)   # JSON int to float
    assert (call.pid, call.principal, call.priority, call.created) == (7, "alice", 3, 100.0)
    assert call.deadline == 102.5
    assert call.state is CallState.QUEUED and call.resource == "llm:sim-llama-3-8b"


def test_decode_tool():
    call = dec({"kind": "tool", "tool": "search", "arguments": {"q": "x"}})
    assert isinstance(call, ToolSyscall)
    assert (call.tool, call.arguments, call.resource) == ("search", {"q": "x"}, "tool:search")
    assert dec({"kind": "tool", "tool": "now"}).arguments == {}


def test_decode_memory():
    call = dec({"kind": "memory", "op": "search", "query": "kernel", "k": 2})
    assert isinstance(call, MemorySyscall)
    assert (call.op, call.query, call.k, call.resource) == (MemoryOp.SEARCH, "kernel", 2, "memory")


def test_decode_storage():
    call = dec({"kind": "storage", "op": "write", "path": "notes/a.txt", "data": "x"})
    assert isinstance(call, StorageSyscall)
    assert (call.op, call.path, call.data) == (StorageOp.WRITE, "notes/a.txt", "x")
    assert dec({"kind": "storage", "op": "list"}).path == ""


def test_decode_process():
    call = dec({"kind": "process", "op": "kill", "target_pid": 3})
    assert isinstance(call, ProcessSyscall)
    assert (call.op, call.target_pid) == (ProcessOp.KILL, 3)
    assert dec({"kind": "process", "op": "list"}).target_pid is None


def test_defaults_no_priority_no_deadline():
    call = dec(llm())
    assert call.priority == 0 and call.deadline is None and call.max_tokens == 8
    assert dec(llm(timeout_s=None)).deadline is None


def test_each_decode_gets_a_fresh_id():
    assert dec(llm()).id != dec(llm()).id


def test_encode_round_trips():
    call = dec({"kind": "memory", "op": "add", "key": "k1", "content": "c", "priority": 4})
    again = dec(encode(call))
    assert again.payload() == call.payload() and again.priority == 4 and type(again) is type(call)


# ---- refusals, each naming the field at fault

def test_non_dict_refused():
    for data in (None, [], "llm", 3):
        err = refused(data)
        assert "JSON object" in err.message and err.code == "invalid_syscall"


@pytest.mark.parametrize("kind", ["nope", None, 3, "LLM"])
def test_unknown_kind(kind):
    data = llm()
    data["kind"] = kind
    err = refused(data)
    assert err.field == "kind" and "llm" in err.hint


def test_missing_kind():
    data = llm()
    del data["kind"]
    assert refused(data).field == "kind"


@pytest.mark.parametrize("name", ["colour", "id", "state", "pid", "deadline", "result"])
def test_unknown_or_kernel_owned_field(name):
    err = refused({**llm(), name: 1})
    assert err.field == name and name in err.message


@pytest.mark.parametrize("data,field", [
    ({"kind": "llm", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"kind": "llm", "model": "m"}, "messages"),
    ({"kind": "tool"}, "tool"),
    ({"kind": "memory"}, "op"),
    ({"kind": "storage", "path": "a"}, "op"),
    ({"kind": "process"}, "op"),
])
def test_missing_required_field(data, field):
    err = refused(data)
    assert err.field == field and field in err.message


@pytest.mark.parametrize("change,field", [
    ({"messages": {"role": "user"}}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": ["hello"]}, "messages[0]"),
    ({"messages": [{"content": "no role"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": 3}]}, "messages[1].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": ""}, "model"),
    ({"model": 3}, "model"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": MAX_TOKENS + 1}, "max_tokens"),
    ({"max_tokens": "8"}, "max_tokens"),
    ({"max_tokens": 8.0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"stop": "\n"}, "stop"),
    ({"stop": ["ok", 3]}, "stop[1]"),
    ({"tools": {"name": "x"}}, "tools"),
    ({"stream": "yes"}, "stream"),
])
def test_llm_wrong_types(change, field):
    err = refused({**llm(), **change})
    assert err.field == field


@pytest.mark.parametrize("data,field", [
    ({"kind": "tool", "tool": ""}, "tool"),
    ({"kind": "tool", "tool": "t", "arguments": [1, 2]}, "arguments"),
    ({"kind": "memory", "op": "forget"}, "op"),
    ({"kind": "memory", "op": "add"}, "content"),
    ({"kind": "memory", "op": "search"}, "query"),
    ({"kind": "memory", "op": "get"}, "key"),
    ({"kind": "memory", "op": "delete"}, "key"),
    ({"kind": "memory", "op": "list", "k": True}, "k"),
    ({"kind": "storage", "op": "write", "path": "a"}, "data"),
    ({"kind": "storage", "op": "read"}, "path"),
    ({"kind": "storage", "op": "read", "path": 3}, "path"),
    ({"kind": "process", "op": "kill"}, "target_pid"),
    ({"kind": "process", "op": "status", "target_pid": "3"}, "target_pid"),
])
def test_other_kinds_wrong_payload(data, field):
    assert refused(data).field == field


@pytest.mark.parametrize("priority", [-1, -100, 1.5, "3", True, False, None, [1], MAX_PRIORITY + 1, 10**9])
def test_bad_priority(priority):
    err = refused(llm(priority=priority))
    assert err.field == "priority"


def test_priority_bounds_accepted():
    assert dec(llm(priority=0)).priority == 0
    assert dec(llm(priority=MAX_PRIORITY)).priority == MAX_PRIORITY


@pytest.mark.parametrize("timeout_s", [0, -1, -0.5, "5", True, [5], float("nan")])
def test_bad_timeout(timeout_s):
    assert refused(llm(timeout_s=timeout_s)).field == "timeout_s"


def test_int_timeout_becomes_deadline():
    assert dec(llm(timeout_s=3), created=10.0).deadline == 13.0


# ---- the state machine

def test_legal_path_with_preemption():
    call = dec(llm())
    path = [CallState.RUNNING, CallState.PREEMPTED, CallState.QUEUED, CallState.RUNNING, CallState.DONE]
    for state in path:
        call = advance(call, state)
        assert call.state is state
    assert call.is_terminal


def test_advance_applies_changes_and_keeps_the_original():
    queued = dec(llm())
    running = advance(queued, CallState.RUNNING, started=5.0)
    assert running.started == 5.0 and running.id == queued.id
    assert queued.state is CallState.QUEUED and queued.started is None


@pytest.mark.parametrize("path", [
    [CallState.RUNNING, CallState.DONE, CallState.RUNNING],
    [CallState.DONE],
    [CallState.PREEMPTED],
    [CallState.RUNNING, CallState.QUEUED],
    [CallState.RUNNING, CallState.PREEMPTED, CallState.RUNNING],
    [CallState.RUNNING, CallState.PREEMPTED, CallState.DONE],
    [CallState.CANCELLED, CallState.QUEUED],
    [CallState.RUNNING, CallState.FAILED, CallState.CANCELLED],
])
def test_illegal_moves(path):
    call = dec(llm())
    *legal, illegal = path
    for state in legal:
        call = advance(call, state)
    before = call.state
    with pytest.raises(InvalidTransition) as info:
        advance(call, illegal)
    assert (info.value.call_id, info.value.state, info.value.to) == (call.id, before, illegal)
    assert call.state is before   # refused moves change nothing


def test_terminal_states_have_no_moves():
    assert {s for s in CallState if not MOVES[s]} == set(TERMINAL)
    for state in TERMINAL:
        for to in CallState:
            with pytest.raises(InvalidTransition):
                advance(LLMSyscall(model="m", messages=[{"role": "user"}], state=state), to)

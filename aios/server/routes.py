"""The /v1 syscall and process endpoints, /v1/models, /v1/tools and /healthz. Each route
decodes, calls the kernel and encodes; the kernel decides."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from aios.errors import NotFound
from aios.events import EventKind
from aios.process import ProcState, process_json
import aios.server.schemas as schemas
import aios.server.statuses as statuses
from aios.server.errors import HttpError
from aios import access
from aios.kernel import MAX_PAGE
from aios.server.http import caller_pid, kernel_of, principal_of, read_json, read_model, visible_process
from aios.syscall import CallState, Syscall, syscall_json
import aios.tools.entries as python_tools

router = APIRouter()


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """The documented body of a route that reads its own (bounded, once the caller is known)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def owned_call(request: Request, call_id: str, principal: str) -> Syscall:
    """A call of the principal that the caller may see (an agent: its own and its
    descendants'), by its id or a unique prefix of it; any other does not exist for it."""
    return await kernel_of(request).lookup(call_id, principal=principal, viewer=caller_pid(request, principal))


# ---- syscalls

@router.post("/v1/syscalls", status_code=201, tags=["syscalls"], openapi_extra=schemas.SYSCALL_BODY,
             responses=statuses.answers(statuses.CALLER, statuses.PARAMS, statuses.BODY, statuses.SUBMIT,
                                       ok=schemas.SyscallOut, status=201))
async def submit(request: Request, wait: bool = Query(False, description="answer once the call is over")):
    """Submits any syscall. The answer comes once its record is durable; with
    `wait=true`, once the call is over."""
    principal = await principal_of(request)
    pid = caller_pid(request, principal)
    body = await read_json(request)
    ticket = await kernel_of(request).submit(body, pid=pid, principal=principal)
    call = await ticket.wait() if wait else ticket.call
    return JSONResponse(syscall_json(call), status_code=201)


@router.get("/v1/syscalls", tags=["syscalls"],
            responses=statuses.answers(statuses.CALLER, statuses.PARAMS, ok=schemas.SyscallPage))
async def list_syscalls(request: Request,
                        pid: int | None = Query(None, ge=0, description="of this process (0: your own account)"),
                        state: CallState | None = Query(None, description="in this state"),
                        since: float | None = Query(None, description="made at or after this time (Unix seconds)"),
                        before: str | None = Query(None, max_length=32, description="the page older than this call "
                                                   "(the `next` of the page before)"),
                        limit: int = Query(50, ge=1, le=MAX_PAGE, description="calls per page")):
    """The calls you may see, newest first, a page at a time."""
    principal = await principal_of(request)
    calls = await kernel_of(request).history(principal, caller_pid(request, principal), pid=pid, state=state,
                                             since=since, before=before, limit=limit)
    return {"data": [syscall_json(c) for c in calls], "next": calls[-1].id if len(calls) == limit else None}


@router.get("/v1/syscalls/{call_id}", tags=["syscalls"],
            responses=statuses.answers(statuses.CALLER, statuses.LOOKUP, ok=schemas.SyscallOut))
async def get_syscall(request: Request, call_id: str):
    return syscall_json(await owned_call(request, call_id, await principal_of(request)))


@router.delete("/v1/syscalls/{call_id}", tags=["syscalls"],
               responses=statuses.answers(statuses.CALLER, statuses.LOOKUP, ok=schemas.SyscallOut))
async def cancel_syscall(request: Request, call_id: str):
    """Cancels a call that is not over; a finished call is returned as it is."""
    call = await owned_call(request, call_id, await principal_of(request))
    return syscall_json(await kernel_of(request).cancel(call.id))


@router.get("/v1/syscalls/{call_id}/events", tags=["syscalls"], response_class=StreamingResponse,
            responses=statuses.answers(statuses.CALLER, statuses.LOOKUP, stream="text/event-stream",
                                      events=schemas.CALL_EVENTS))
async def syscall_events(request: Request, call_id: str):
    """Server-sent events: `state` (each state change, the last one terminal), `token`
    (each piece of generated text), `lagged` (this client read too slowly and missed some)."""
    call_id = (await owned_call(request, call_id, await principal_of(request))).id   # a prefix, resolved
    k = kernel_of(request)

    async def events() -> AsyncIterator[str]:
        # subscribed here, not in the handler, so a stream that never starts leaves no
        # subscription behind; and with what came before it read at once (no await between),
        # so each token is sent once: in the catch-up text or as its event
        with k.bus.subscribe({EventKind.CALL_STATE, EventKind.CALL_TOKEN}, max_buffer=1024) as sub:
            ticket = k.tickets.get(call_id)
            text_so_far = "".join(ticket.text_parts) if ticket is not None else ""
            current = ticket.call if ticket is not None else await k.lookup(call_id)   # over, if not in flight
            yield _sse("state", syscall_json(current))
            if current.is_terminal:
                return
            if text_so_far:
                yield _sse("token", {"text": text_so_far})
            num_dropped = 0
            async for ev in sub:
                if sub.num_dropped > num_dropped:
                    num_dropped = sub.num_dropped
                    yield _sse("lagged", {"num_dropped": num_dropped})
                    if ticket is None or ticket.done.is_set():   # its last event may be one of those missed
                        yield _sse("state", syscall_json(await k.lookup(call_id)))
                        return
                if ev.call_id != call_id:
                    continue
                if ev.kind is EventKind.CALL_TOKEN:
                    yield _sse("token", ev.data)
                elif ev.data["state"] in ("done", "failed", "cancelled"):
                    yield _sse("state", syscall_json(await k.lookup(call_id)))
                    return
                else:
                    yield _sse("state", {"id": call_id, "state": ev.data["state"], "at": ev.at})

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


# ---- processes

@router.post("/v1/processes", status_code=201, openapi_extra=_body(schemas.ProcessIn), tags=["processes"],
             responses=statuses.answers(statuses.CALLER, statuses.BODY, statuses.SPAWN, ok=schemas.ProcessOut,
                                       status=201))
async def spawn(request: Request):
    """Starts a process; an agent's (X-Aios-Pid, or its process token) is its child or
    its descendant's, never a process of the principal's own."""
    principal = await principal_of(request)
    body = await read_model(request, schemas.ProcessIn)
    parent_pid = body.parent_pid if body.parent_pid is not None else caller_pid(request, principal) or None
    if parent_pid is not None:
        visible_process(request, parent_pid, principal)
    proc = await kernel_of(request).spawn(body.name, principal=principal, parent_pid=parent_pid,
                                          priority=body.priority, program=body.program, task=body.task,
                                          runner=body.runner, manifest=body.manifest, model=body.model)
    return JSONResponse(process_json(proc), status_code=201)


@router.get("/v1/processes/{pid}/logs", tags=["processes"], response_class=StreamingResponse,
            responses=statuses.answers(statuses.CALLER, statuses.PARAMS, stream="text/plain"))
async def process_logs(request: Request, pid: int, follow: bool = Query(False, description="keep streaming "
                       "until the process exits")):
    """The process's output (its program's stdout and stderr, or an in-process agent's
    result and traceback), as plain text."""
    visible_process(request, pid, await principal_of(request))
    k = kernel_of(request)
    path = k.supervisor.log_path(pid)

    async def lines() -> AsyncIterator[bytes]:
        offset = 0
        while True:
            running = pid in k.supervisor.runs
            chunk = await anyio.to_thread.run_sync(_read_from, path, offset)
            if chunk:
                offset += len(chunk)
                yield chunk
            elif not (follow and running):
                return
            else:
                with anyio.move_on_after(0.25):   # wake when it exits, else look again
                    await k.supervisor.wait(pid)

    return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")


@router.post("/v1/processes/{pid}/steps", status_code=201, openapi_extra=_body(schemas.StepIn), tags=["processes"],
             responses=statuses.answers(statuses.CALLER, statuses.PARAMS, statuses.BODY, statuses.STEP,
                                       ok=schemas.StepOut, status=201))
async def report_step(request: Request, pid: int):
    """An agent says what it is doing now (a plan line, a thought, an action, an
    observation, the answer): followers of the process see it at once, and its trace keeps
    it. Only the process itself may, while it runs (X-Aios-Pid, or its process token)."""
    principal = await principal_of(request)
    if caller_pid(request, principal) != pid:
        raise HttpError("permission_denied", f"only process {pid} itself may report its steps",
                        field="X-Aios-Pid", hint="send X-Aios-Pid: PID (an agent finds its own in AIOS_PID)")
    body = await read_model(request, schemas.StepIn)
    step = kernel_of(request).lifecycle.step(pid, body.kind, body.text, body.data)
    return JSONResponse(step.to_json(), status_code=201)


@router.get("/v1/processes/{pid}/events", tags=["processes"], response_class=StreamingResponse,
            responses=statuses.answers(statuses.CALLER, statuses.PARAMS, stream="text/event-stream",
                                      events=schemas.PROCESS_EVENTS))
async def process_events(request: Request, pid: int,
                         stream: Literal["steps", "all"] = Query("steps", description="steps: the steps it "
                                                                 "reports; all: its calls' state changes too"),
                         follow: bool = Query(True, description="until it exits (else what it reported so far)")):
    """Server-sent events of a process: `step` (each step it reports, those so far
    first), with stream=all `state` (its calls' state changes), `lagged` (this reader was
    too slow), and last `process` (its record, once it has exited, or at once unless
    follow)."""
    visible_process(request, pid, await principal_of(request))
    events = kernel_of(request).lifecycle.events(pid, calls=stream == "all", follow=follow)

    async def sse() -> AsyncIterator[str]:
        async for name, data in events:
            yield _sse(name, data)

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except FileNotFoundError:
        return b""


@router.get("/v1/processes", tags=["processes"],
            responses=statuses.answers(statuses.CALLER, statuses.PARAMS, ok=list[schemas.ProcessOut]))
async def list_processes(request: Request,
                         include_exited: bool = Query(False, alias="all", description="exited ones too")):
    principal = await principal_of(request)
    viewer = caller_pid(request, principal)
    return [process_json(p) for p in kernel_of(request).processes.visible(principal, viewer, include_exited)]


@router.get("/v1/processes/{pid}", tags=["processes"],
            responses=statuses.answers(statuses.CALLER, statuses.PARAMS, ok=schemas.ProcessOut))
async def get_process(request: Request, pid: int):
    return process_json(visible_process(request, pid, await principal_of(request)))


@router.post("/v1/processes/{pid}/signal", openapi_extra=_body(schemas.SignalIn), tags=["processes"],
             responses=statuses.answers(statuses.CALLER, statuses.PARAMS, statuses.BODY, statuses.SIGNAL,
                                       ok=schemas.ProcessOut))
async def signal(request: Request, pid: int):
    """suspend: its calls stop being scheduled; resume; terminate and kill: its calls in
    flight are cancelled and it exits."""
    principal = await principal_of(request)
    body = await read_model(request, schemas.SignalIn)
    proc = visible_process(request, pid, principal)
    if proc.state is ProcState.EXITED:
        raise HttpError("conflict", f"process {pid} has already exited", field="pid")
    k = kernel_of(request)
    match body.signal:
        case "suspend":
            proc = await k.suspend(pid)
        case "resume":
            proc = await k.resume(pid)
        case "terminate" | "kill":
            proc = await k.kill(pid, "terminated" if body.signal == "terminate" else "killed")
    return process_json(proc)


# ---- what the kernel serves

@router.get("/v1/models", tags=["models"], responses=statuses.answers(statuses.CALLER, ok=schemas.ModelList))
async def models(request: Request):
    await principal_of(request)
    k = kernel_of(request)
    return {"object": "list", "data": [
        {"id": m, "object": "model", "created": 0, "owned_by": k.router.route(m).name} for m in k.router.models]}


@router.get("/v1/tools", tags=["tools"], responses=statuses.answers(statuses.CALLER, ok=schemas.ToolList))
async def tools(request: Request):
    await principal_of(request)
    return {"tools": kernel_of(request).tool_listing()}


@router.post("/v1/tools", status_code=201, openapi_extra=_body(schemas.PythonToolIn), tags=["tools"],
             responses=statuses.answers(statuses.CALLER, statuses.ADMIN, statuses.BODY, statuses.TOOL_ADD,
                                       ok=schemas.ToolOut, status=201))
async def add_tool(request: Request):
    """Imports a Python tool (`entry`: package.module:function, or /path/to/file.py:function)
    and registers it with the schema checks of every tool; the kernel keeps it, so that it
    is registered again at every boot. Only the local principal or an admin may, and not
    from an agent process."""
    principal = await principal_of(request)
    await _kernel_admin(request, principal, "add tools")
    body = await read_model(request, schemas.PythonToolIn)
    k = kernel_of(request)
    spec = await python_tools.add(k, python_tools.PythonTool(**body.model_dump()), principal)
    return JSONResponse(next(t for t in k.tool_listing() if t["name"] == spec.name), status_code=201)


@router.delete("/v1/tools/{name}", tags=["tools"],
               responses=statuses.answers(statuses.CALLER, statuses.ADMIN, statuses.TOOL_REMOVE,
                                         ok=schemas.PythonToolOut))
async def remove_tool(request: Request, name: str):
    """Removes a tool added with POST /v1/tools, for now and for later boots (a built-in,
    [tools.python] or MCP tool stays: 409). Only the local principal or an admin may, and
    not from an agent process."""
    principal = await principal_of(request)
    await _kernel_admin(request, principal, "remove tools")
    return asdict(await python_tools.remove(kernel_of(request), name, principal))


@router.post("/v1/kernel/stop", status_code=202, openapi_extra=_body(schemas.StopIn), tags=["kernel"],
             responses=statuses.answers(statuses.CALLER, statuses.ADMIN, statuses.BODY, statuses.STOP,
                                       ok=schemas.StopOut, status=202))
async def stop_kernel(request: Request):
    """Stops the daemon: calls in flight are drained (finished) or cancelled, as asked.
    Only the local principal or an admin may, and not from an agent process."""
    principal = await principal_of(request)
    await _kernel_admin(request, principal, "stop the kernel")
    body = await read_model(request, schemas.StopIn)
    server = request.app.state.server
    if server is None:
        raise HttpError("conflict", "this server does not own its kernel, so it cannot stop it")
    request.app.state.drain = body.drain
    server.should_exit = True
    return {"stopping": True, "drain": body.drain}


@router.post("/v1/kernel/gc", openapi_extra=_body(schemas.GcIn), tags=["kernel"],
             responses=statuses.answers(statuses.CALLER, statuses.ADMIN, statuses.BODY, ok=schemas.GcOut))
async def collect_history(request: Request):
    """Applies retention now: the history of ended calls and exited processes older than
    the cutoff goes (their files and memory stay). Only the local principal or an admin may,
    and not from an agent process."""
    principal = await principal_of(request)
    await _kernel_admin(request, principal, "collect the kernel's history")
    body = await read_model(request, schemas.GcIn)
    return (await kernel_of(request).collect(body.older_than_s, dry_run=body.dry_run)).to_dict()


async def _kernel_admin(request: Request, principal: str, what: str) -> None:
    """Refuses to `what` unless the caller is the local principal or an admin, not as an agent."""
    if caller_pid(request, principal):
        raise HttpError("permission_denied", f"an agent process may not {what}", field="X-Aios-Pid")
    if principal != access.LOCAL and not await _is_admin(request, principal):
        raise HttpError("permission_denied", f"principal {principal!r} may not {what}: missing permission "
                        "admin", hint="aios user add NAME --admin makes an admin")


@router.get("/v1/kernel/stats", tags=["kernel"], responses=statuses.answers(statuses.CALLER, ok=schemas.StatsOut))
async def kernel_stats(request: Request):
    """A snapshot for `aios top`: each resource's policy, queue and slots, calls in
    flight, tokens so far, and the caller's live processes."""
    principal = await principal_of(request)
    k = kernel_of(request)
    metrics = request.app.state.metrics
    return {"now": k.clock.now(), "policy": k.scheduler.policy_name, "num_in_flight": len(k.tickets),
            "tokens_in": metrics.num_tokens["in"], "tokens_out": metrics.num_tokens["out"],
            "resources": [res.stats._asdict() for res in k.scheduler],
            "processes": [process_json(p) for p in k.processes.visible(principal, caller_pid(request, principal))]}


@router.get("/healthz", tags=["health"], responses=statuses.answers(ok=schemas.HealthOut))
async def healthz(request: Request):
    k = kernel_of(request)
    return {"status": "ok" if k.is_accepting else "stopping", "models": k.router.models,
            "num_in_flight": len(k.tickets)}


async def _is_admin(request: Request, principal: str) -> bool:
    try:
        return (await kernel_of(request).db.run(lambda e: access.get_principal(e, principal))).admin
    except NotFound:
        return False



# ---- confirmation of irreversible actions

@router.get("/v1/confirmations", tags=["access"],
            responses=statuses.answers(statuses.CALLER, statuses.ADMIN, ok=list[schemas.SyscallOut]))
async def list_confirmations(request: Request):
    """The caller's calls held for a confirmation (an admin sees everyone's). Agent
    processes cannot list or confirm: a principal decides."""
    principal = await principal_of(request)
    _not_an_agent(request, principal)
    everyone = principal == access.LOCAL or await _is_admin(request, principal)
    return [syscall_json(c) for c in kernel_of(request).pending_confirmations(None if everyone else principal)]


@router.post("/v1/confirmations/{call_id}", openapi_extra=_body(schemas.ConfirmIn), tags=["access"],
             responses=statuses.answers(statuses.CALLER, statuses.ADMIN, statuses.BODY, statuses.LOOKUP,
                                       ok=schemas.SyscallOut))
async def confirm(request: Request, call_id: str):
    """Approves (the call is queued) or denies (it fails) a held call."""
    principal = await principal_of(request)
    _not_an_agent(request, principal)
    body = await read_model(request, schemas.ConfirmIn)
    admin = principal == access.LOCAL or await _is_admin(request, principal)
    call = await kernel_of(request).confirm(call_id, approve=body.approve, by=principal, is_admin=admin)
    return syscall_json(call)


def _not_an_agent(request: Request, principal: str) -> None:
    if caller_pid(request, principal):
        raise HttpError("permission_denied", "an agent process may not confirm actions: a principal decides",
                        field="X-Aios-Pid")

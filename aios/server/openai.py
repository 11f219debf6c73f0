"""POST /v1/chat/completions, OpenAI-compatible (plain and streaming, tool calls, usage).
Each request is an LLM syscall of the caller's principal, so scheduling, accounting and
(later) access control apply to it exactly as to any other call."""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from aios.errors import AiosError
import aios.server.schemas as schemas
import aios.server.statuses as statuses
from aios.server.errors import HttpError, error_body, error_response
from aios.server.http import caller_pid, kernel_of, principal_of, read_json
from aios.syscall import CallState

router = APIRouter()
_PASSED = ("model", "messages", "tools", "temperature")
_IGNORED = ("tool_choice", "top_p", "user", "seed", "stream_options", "n", "presence_penalty",
            "frequency_penalty", "logprobs", "response_format", "parallel_tool_calls", "metadata", "store")


def to_syscall(body: Any) -> dict[str, Any]:
    """The LLM syscall for an OpenAI chat request; unknown fields are refused by name."""
    if not isinstance(body, dict):
        raise HttpError("malformed_request", "the body must be a JSON object")
    if body.get("n", 1) != 1:
        raise HttpError("invalid_syscall", "only n=1 is supported", field="n")
    if not isinstance(body.get("stream", False), bool):
        raise HttpError("invalid_syscall", "stream must be true or false", field="stream")
    if not isinstance(body.get("stream_options") or {}, dict):
        raise HttpError("invalid_syscall", "stream_options must be an object", field="stream_options")
    call: dict[str, Any] = {"kind": "llm", **{k: body[k] for k in _PASSED if k in body}}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        call["max_tokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        call["stop"] = [stop] if isinstance(stop, str) else stop
    unknown = set(body) - set(_PASSED) - set(_IGNORED) - {"max_tokens", "max_completion_tokens", "stop", "stream"}
    if unknown:
        name = sorted(unknown)[0]
        raise HttpError("invalid_syscall", f"unsupported field {name!r}", field=name)
    return call


@router.post("/v1/chat/completions", tags=["openai"], openapi_extra=schemas.chat_body(_PASSED, _IGNORED),
             responses=statuses.answers(statuses.CALLER, statuses.BODY, statuses.SUBMIT, statuses.LLM_ENDED,
                                       ok=schemas.ChatCompletionOut, stream="text/event-stream",
                                       events=schemas.CHAT_EVENTS))
async def chat_completions(request: Request):
    principal = await principal_of(request)
    pid = caller_pid(request, principal)
    body = await read_json(request)
    k = kernel_of(request)
    ticket = await k.submit(to_syscall(body), pid=pid, principal=principal)
    created = int(time.time())
    completion_id = f"chatcmpl-{ticket.id}"
    if not body.get("stream"):
        call = await ticket.wait()
        if call.state is not CallState.DONE:
            return error_response(AiosError.from_dict(call.error or {"code": "internal_error"}))
        result = call.result
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": call.model,
            "choices": [{"index": 0, "message": _message(result), "finish_reason": result["finish_reason"],
                         "logprobs": None}],
            "usage": _usage(result)})
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    async def chunks() -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            return "data: " + json.dumps({
                "id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                     "logprobs": None}], **extra}) + "\n\n"
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for part in k.stream(ticket):
                if part.text:
                    yield chunk({"content": part.text})
        except AiosError as e:   # the stream has begun: the error goes in-band, as OpenAI does
            yield "data: " + json.dumps(error_body(e.code, e.message, e.field, e.hint)) + "\n\n"
            return
        result = ticket.call.result
        tool_calls = result["message"].get("tool_calls")
        if tool_calls:
            yield chunk({"tool_calls": [{"index": i, **tc} for i, tc in enumerate(tool_calls)]})
        yield chunk({}, result["finish_reason"])
        if include_usage:
            yield "data: " + json.dumps({"id": completion_id, "object": "chat.completion.chunk",
                                         "created": created, "model": body["model"], "choices": [],
                                         "usage": _usage(result)}) + "\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _message(result: dict[str, Any]) -> dict[str, Any]:
    message = dict(result["message"])
    if message.get("tool_calls") and not message.get("content"):
        message["content"] = None
    return message


def _usage(result: dict[str, Any]) -> dict[str, int]:
    u = result["usage"]
    return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
            "total_tokens": u["prompt_tokens"] + u["completion_tokens"]}

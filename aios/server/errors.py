"""Errors over HTTP: each error's status, the one its class names (aios.errors), and the
one JSON shape, `{"error": {"code", "message", "field", "hint", "type"}}` (OpenAI clients
read `error.message` and `error.type`). No request, however malformed, gets a 500 from a
handler's own mistake about input."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from aios.errors import ERRORS_BY_CODE, AiosError, InvalidSyscall
from aios.storage.journal import Interrupted

log = logging.getLogger(__name__)

# code -> status, from each error class's own `status` (aios.errors): also for an error
# raised here by its code (HttpError) or rebuilt from a call's record (AiosError.from_dict)
STATUS: dict[str, int] = {cls.code: cls.status for cls in (*ERRORS_BY_CODE.values(), Interrupted)}


def status_of(err: AiosError) -> int:
    return STATUS.get(err.code, err.status)


class HttpError(AiosError):
    """An error the HTTP layer itself raises (a bad body, a missing token)."""

    def __init__(self, code: str, message: str, *, hint: str | None = None, field: str | None = None):
        super().__init__(message, hint=hint, field=field)
        self.code = code


def error_body(code: str, message: str, field: str | None = None, hint: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field, "hint": hint, "type": code}}


def error_response(err: AiosError) -> JSONResponse:
    status = status_of(err)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(err.code, err.message, err.field, err.hint), status_code=status,
                        headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(AiosError)
    async def aios_error(request: Request, err: AiosError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path", "header"))
        return JSONResponse(error_body(InvalidSyscall.code, f"{field or 'request'}: {first['msg']}", field or None),
                            status_code=InvalidSyscall.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(err.status_code, "http_error")
        return JSONResponse(error_body(code, str(err.detail)), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def crash(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", f"the server failed: {type(err).__name__}"),
                            status_code=500)

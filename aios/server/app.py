"""The app of the REST syscall endpoint: /v1 syscalls, processes, models, tools, the
OpenAI-compatible chat endpoint, /healthz and /metrics, over one kernel.

Invariant: the server decodes and encodes; every decision is the kernel's. An app
either boots its own kernel (the daemon) or serves one it is given (tests, embedding)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse

from aios import owner
from aios.config import Settings
from aios.kernel import Kernel
import aios.server.errors as errors
import aios.server.openai as openai
import aios.server.routes as routes
import aios.server.schemas as schemas
import aios.server.statuses as statuses
from aios.server.http import principal_of
from aios.server.metrics import Metrics
from aios.tools import builtin_tools

__all__ = ["create_app"]


def create_app(settings: Settings, kernel: Kernel | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            owned = kernel is None
            if kernel is None:   # the daemon offers the built-in tools; an embedder chooses its own
                k = Kernel(settings)
                k.endpoint = app.state.endpoint   # before boot: its lease names where it serves
                for spec in builtin_tools(settings):   # before boot, so recovered tool calls find them
                    k.register_tool(spec)
                if settings.tools.mcp:   # imported only when configured: `mcp` costs ~0.5 s of start time
                    from aios.tools.mcp import mcp_imports
                    await stack.enter_async_context(mcp_imports(k, settings.tools.mcp))
                await stack.enter_async_context(k)
                # the owner's token, written once this kernel holds the database, so a refused
                # second start leaves the running daemon's alone (aios.owner)
                app.state.owner_token = owner.issue(settings.home)
                stack.callback(owner.retire, settings.home, app.state.owner_token)
            else:
                k = kernel
                k.endpoint = app.state.endpoint
            app.state.kernel = k
            metrics = app.state.metrics = Metrics(k)
            with metrics.subscribe() as sub:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(metrics.run, sub)
                    try:
                        yield
                    finally:
                        tg.cancel_scope.cancel()
            if owned:   # drain or cancel as POST /v1/kernel/stop asked, else as configured
                with anyio.CancelScope(shield=True):
                    await k.shutdown(drain=app.state.drain)

    app = FastAPI(title="aios", version="1", lifespan=lifespan,
                  description="The aios kernel's syscall endpoint. Errors are "
                              '`{"error": {"code", "message", "field", "hint"}}`.')
    app.state.settings = settings
    app.state.drain = settings.shutdown == "drain"
    app.state.server = None   # the uvicorn server, when the daemon runs one
    app.state.endpoint = None  # its URL, which agents in subprocesses call back
    app.state.owner_token = None   # the daemon's owner token, when this app owns its kernel
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(openai.router)

    def openapi() -> dict:
        """The generated document, made whole (aios.server.schemas.complete)."""
        if app.openapi_schema is None:
            app.openapi_schema = schemas.complete(get_openapi(title=app.title, version=app.version,
                                                              description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"],
             responses=statuses.answers(statuses.CALLER))
    async def metrics(request: Request) -> PlainTextResponse:
        """Needs a token when tokens are configured: it names every principal's processes."""
        await principal_of(request)
        return PlainTextResponse(request.app.state.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app

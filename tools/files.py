"""The file tools: `read_file`, `write_file` and `list_files`, in the calling agent's own
file space.

Invariant: a file tool can do nothing the caller's own storage syscall could not. Each one
makes the storage syscall the calling process would make through its context
(`ctx.syscall`, aios.kernel.gate), which checks it as `submit` does (the caller's
manifest, `storage_read` and `storage_write`; the path rules of `check_path`: no `..`, no
absolute path, no NUL) and runs it in the caller's own space.

The storage operation runs inside the tool call rather than as a second syscall: the tool
call is already journaled with its path and content, and a nested syscall could outlive
its tool call (held while the process is suspended, re-queued after a crash that failed
the tool call as interrupted) and act after the agent was told it failed."""
from __future__ import annotations

from typing import Any

from aios.errors import AiosError, InvalidSyscall
from aios.param import MAX_PAYLOAD_BYTES
from aios.syscall import StorageOp, StorageSyscall
from aios.tools.registry import ToolContext, ToolSpec, tool

TIMEOUT_S = 30.0


async def _storage(ctx: ToolContext, op: StorageOp, path: str, data: str | None = None,
                   path_argument: str = "path") -> Any:
    """Makes the storage syscall the calling process would make, and returns its result.
    Its errors name the tool's argument (`path_argument`, `content`), not the syscall's field."""
    try:
        return await ctx.syscall(StorageSyscall(op=op, path=path, data=data))
    except AiosError as e:
        argument = {"path": path_argument, "data": "content"}.get(e.field or "")
        if argument is None:
            raise
        raise type(e)(e.message, field=f"arguments.{argument}", hint=e.hint) from None


async def read_file(path: str, ctx: ToolContext) -> dict[str, str]:
    """Reads a file from your own file space and returns its content.

    Args:
        path: the file's path in your file space, relative, e.g. "notes/plan.md"
    """
    result = await _storage(ctx, StorageOp.READ, path)
    return {"path": result["path"], "content": result["data"]}


async def write_file(path: str, content: str, ctx: ToolContext) -> dict[str, Any]:
    """Writes text to a file in your own file space, creating it or replacing what it held
    (the earlier content stays as an older version).

    Args:
        path: the file's path in your file space, relative, e.g. "notes/plan.md"
        content: the whole new content of the file, as text
    """
    num_bytes = len(content.encode())
    if num_bytes > MAX_PAYLOAD_BYTES:
        raise InvalidSyscall(f"the content is {num_bytes} bytes, over the {MAX_PAYLOAD_BYTES} a file may hold",
                             field="arguments.content", hint="split it across several files")
    return await _storage(ctx, StorageOp.WRITE, path, content)


async def list_files(ctx: ToolContext, prefix: str = "") -> dict[str, list[str]]:
    """Lists the paths of the files in your own file space, in order.

    Args:
        prefix: only paths that start with this, e.g. "notes/"; empty lists every file
    """
    return await _storage(ctx, StorageOp.LIST, prefix, path_argument="prefix")


def file_tools() -> list[ToolSpec]:
    """The three file tools. write_file is not marked irreversible: creating a file loses
    nothing. Overwriting does; the access checks are to ask for confirmation of overwrites."""
    return [tool(read_file, timeout_s=TIMEOUT_S),
            tool(write_file, timeout_s=TIMEOUT_S, irreversible=False),
            tool(list_files, timeout_s=TIMEOUT_S)]

"""The `http_fetch` tool: GET a web page over http or https, from hosts the configuration
allows (`[tools] http_allow`), with the response bounded in bytes and time.

Invariant: no request leaves for a host outside the allow-list: the first URL and every
redirect hop are checked before they are sent. With an empty allow-list the tool is off.
Hosts are matched by name (`example.com` exactly, `*.example.com` its subdomains, not
itself), on any port; a name's DNS answer is not checked, so allow only hosts you trust
to resolve where you mean.

It only GETs, which is idempotent, so it sends no `Idempotency-Key`: a tool that makes
non-GET requests sends `ctx.idempotency_key` as that header (aios.tools.registry)."""
from __future__ import annotations

import codecs
from typing import Any

import anyio
import httpx

from aios.config import ToolsSettings
from aios.errors import InvalidSyscall, PermissionDenied, ToolError
from aios.tools.registry import ToolSpec, tool

MAX_REDIRECTS = 5
_HOW_TO_ALLOW = ('list hosts in config.toml, `[tools] http_allow = ["example.com"]`, '
                 'or in the environment, AIOS_TOOLS__HTTP_ALLOW=\'["example.com"]\'')


def is_allowed(host: str, allow: list[str]) -> bool:
    """Whether `host` matches an entry of `allow`: `example.com` matches that host only,
    `*.example.com` any of its subdomains (not example.com itself)."""
    host = host.lower().rstrip(".")
    for entry in allow:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry:
            return True
    return False


def check_url(url: httpx.URL, allow: list[str], *, via: str | None = None) -> None:
    """Refuses a URL that is not http(s) or whose host is not allowed; `via` is the URL
    that redirected here, if any, for the message."""
    where = f" (a redirect from {via})" if via else ""
    if url.scheme not in ("http", "https"):
        raise InvalidSyscall(f"http_fetch only fetches http and https URLs, not {url.scheme or 'this'}: "
                             f"{str(url)!r}{where}", field="arguments.url")
    if not url.host:
        raise InvalidSyscall(f"the URL {str(url)!r} has no host{where}", field="arguments.url")
    if not is_allowed(url.host, allow):
        raise PermissionDenied(f"http_fetch may not reach {url.host}{where}", field="arguments.url",
                               hint=f"allowed hosts: {', '.join(allow)}; {_HOW_TO_ALLOW}")


def http_fetch_tool(settings: ToolsSettings) -> ToolSpec:
    """The http_fetch tool, bound to the allow-list and limits of `settings`."""
    allow = list(settings.http_allow)
    limit = settings.http_max_bytes
    timeout_s = settings.http_timeout_s

    async def http_fetch(url: str, max_bytes: int = limit) -> dict[str, Any]:
        """Fetches a web page (HTTP GET) and returns its status, content type and text. Only
        hosts the kernel's configuration allows can be reached; redirects are followed to
        allowed hosts only. The raw body is returned (HTML is not converted), cut at
        max_bytes.

        Args:
            url: the page's address, starting with http:// or https://
            max_bytes: the most bytes of the body to read; the text is cut there and
                truncated is true. Values over the configured limit are lowered to it.
        """
        if not allow:
            raise PermissionDenied("http_fetch is off: no host is allowed", hint=_HOW_TO_ALLOW)
        if max_bytes < 1:
            raise InvalidSyscall(f"max_bytes must be at least 1, got {max_bytes}", field="arguments.max_bytes")
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise InvalidSyscall(f"not a URL: {url!r} ({e})", field="arguments.url") from None
        check_url(target, allow)
        try:
            with anyio.fail_after(timeout_s):
                return await _fetch(target, allow, min(max_bytes, limit), timeout_s)
        except TimeoutError:
            raise ToolError(f"{url} did not answer within {timeout_s:g} s",
                            hint="raise [tools] http_timeout_s, or try again later") from None
        except httpx.HTTPError as e:
            raise ToolError(f"fetching {url} failed: {type(e).__name__}: {e}") from None

    # the tool's own timeout is a backstop: the fetch's own bound fires first, with its message
    return tool(http_fetch, timeout_s=timeout_s + 5.0, needs_network=True)


async def _fetch(url: httpx.URL, allow: list[str], max_bytes: int, timeout_s: float) -> dict[str, Any]:
    # trust_env=False: the daemon's proxies, .netrc credentials and certificates settings
    # are not lent to agents' requests; identity encoding keeps max_bytes a bound on memory
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False,
                                 headers={"Accept-Encoding": "identity"}) as client:
        request = client.build_request("GET", url)
        for _ in range(MAX_REDIRECTS + 1):
            response = await client.send(request, stream=True)
            try:
                if response.next_request is not None:
                    check_url(response.next_request.url, allow, via=str(request.url))
                    request = response.next_request
                    continue
                body, is_truncated = await _read(response, max_bytes)
            finally:
                await response.aclose()
            return {"url": str(response.url), "status": response.status_code,
                    "content_type": response.headers.get("content-type", ""),
                    "text": body.decode(_encoding(response), errors="replace"), "truncated": is_truncated}
    raise ToolError(f"{url} redirected more than {MAX_REDIRECTS} times")


async def _read(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """At most max_bytes of the body; stops reading there. True if there was more."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return b"".join(parts)[:max_bytes], True
    return b"".join(parts), False


def _encoding(response: httpx.Response) -> str:
    name = response.charset_encoding or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"

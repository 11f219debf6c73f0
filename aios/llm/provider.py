"""The litellm backend: any provider litellm knows (OpenAI, Anthropic, Ollama, a vLLM or
SGLang server, ...), chosen by model name, with keys from the provider's usual
environment variables. Timeouts, retries with capped exponential backoff and jitter on
transient errors, and provider errors mapped to syscall failures that keep the
provider's own message.

litellm is imported on first use: it takes seconds to import, and a kernel that serves
only the hardware model never pays for it."""
from __future__ import annotations

import concurrent.futures
import os
import random
import re
import socket
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio

from aios.config import LiteLLMBackendSettings
from aios.errors import (AiosError, BackendError, BackendUnavailable, ConfigError, InvalidSyscall, NotFound,
                         PermissionDenied)
from aios.llm import Chunk, Request, Response, Resume, collect, count_tokens
from aios.syscall import Usage

# litellm exception class name -> (our error class, is it worth retrying)
_ERRORS: dict[str, tuple[type[AiosError], bool]] = {
    "AuthenticationError": (PermissionDenied, False),
    "PermissionDeniedError": (PermissionDenied, False),
    "NotFoundError": (NotFound, False),
    "BadRequestError": (InvalidSyscall, False),
    "UnprocessableEntityError": (InvalidSyscall, False),
    "ContextWindowExceededError": (InvalidSyscall, False),
    "ContentPolicyViolationError": (BackendError, False),
    "UnsupportedParamsError": (InvalidSyscall, False),
    "RateLimitError": (BackendUnavailable, True),
    "Timeout": (BackendUnavailable, True),
    "APIConnectionError": (BackendUnavailable, True),
    "ServiceUnavailableError": (BackendUnavailable, True),
    "InternalServerError": (BackendUnavailable, True),
    "BadGatewayError": (BackendUnavailable, True),
    "APIError": (BackendError, True),
}


_MISSING_KEY = re.compile(r"missing credentials|api_key client option must be set|no api key", re.I)


def import_litellm() -> Any:
    """litellm, imported on first use (it takes seconds), without fetching its cost map."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")   # no network fetch at import
    import litellm
    litellm.suppress_debug_info = True
    return litellm


def check_model(model: str) -> str:
    """The provider litellm routes `model` to; ConfigError naming the fix if it routes it
    nowhere (a name with no provider, as "gpt4-mini" or "mistral/" is)."""
    litellm = import_litellm()
    try:
        _, provider, _, _ = litellm.get_llm_provider(model)
    except Exception:   # noqa: BLE001 (litellm says "not provided" with several exception types)
        raise ConfigError(f"litellm knows no provider for the model {model!r}", field="model",
                          hint="name it as litellm does, provider/model: openai/gpt-4o-mini, "
                               "anthropic/claude-3-5-haiku-latest, ollama/llama3 (docs.litellm.ai/docs/providers)") \
            from None
    return provider


def missing_credentials(settings: LiteLLMBackendSettings) -> list[str]:
    """What each model of the backend lacks to be called, as warnings to print at start
    (the environment variables its provider reads); nothing is refused: the other
    backends and models still serve."""
    litellm = import_litellm()
    warnings = []
    for model in settings.models:
        if settings.api_base:   # a server of one's own (a vLLM, an Ollama): its address is given
            continue
        missing = litellm.validate_environment(model).get("missing_keys") or []
        if missing:
            warnings.append(f"{model}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; "
                            f"its calls will fail until the daemon is started with "
                            f"{'it' if len(missing) == 1 else 'them'} in its environment")
    return warnings


# where the providers whose address litellm leaves to their SDK answer
_KNOWN_BASES = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com",
                "gemini": "https://generativelanguage.googleapis.com", "cohere": "https://api.cohere.com"}


def unreachable(settings: LiteLLMBackendSettings, timeout_s: float = 3.0) -> list[str]:
    """Which of the backend's endpoints do not answer (a TCP connection within `timeout_s`,
    all tried at once), as warnings to print at start: its api_base, else the address
    litellm or the provider's SDK uses. Nothing is refused: an endpoint may come up later."""
    litellm = import_litellm()
    bases: dict[str, list[str]] = {}
    for model in settings.models:
        try:
            _, provider, _, default = litellm.get_llm_provider(model)
        except Exception:   # noqa: BLE001 (refused by check_model already, when named on the command line)
            continue
        base = settings.api_base or default or _KNOWN_BASES.get(provider)
        if base:
            bases.setdefault(base, []).append(model)
    if not bases:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(len(bases))   # not waited for: a name lookup may hang on
    tries = {base: pool.submit(_connect, base, timeout_s) for base in bases}
    done, _ = concurrent.futures.wait(tries.values(), timeout=timeout_s + 0.5)
    pool.shutdown(wait=False, cancel_futures=True)
    warnings = []
    for base, attempt in tries.items():
        error = attempt.result() if attempt in done else f"no answer within {timeout_s:g} s"
        if error is not None:
            warnings.append(f"{', '.join(bases[base])}: {base} does not answer ({error}); its calls will fail "
                            "until it does (check the network, or the backend's api_base)")
    return warnings


def _connect(base: str, timeout_s: float) -> str | None:
    """None if a TCP connection to the URL's host and port opens, else why not."""
    url = urllib.parse.urlsplit(base)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def map_error(e: Exception, model: str, *, api_base: str | None = None) -> tuple[AiosError, bool]:
    """The AiosError for a provider exception (with a hint naming the variable or the
    address to check), and whether a retry may help."""
    message = getattr(e, "message", None) or str(e)
    if _MISSING_KEY.search(message):
        # litellm reports a key that is not set as a server error; no retry will fix it
        return PermissionDenied(f"{model}: {message}", hint=_key_hint(model)), False
    for cls in type(e).__mro__:
        if cls.__name__ in _ERRORS:
            kind, is_transient = _ERRORS[cls.__name__]
            hint = None
            if cls.__name__ in ("AuthenticationError", "PermissionDeniedError"):
                hint = _key_hint(model)
            elif cls.__name__ in ("APIConnectionError", "Timeout"):
                hint = (f"{api_base or 'the provider of ' + model} did not answer: check the network, and the "
                        "backend's api_base if it has one")
            return kind(f"{model}: {message}", field="model" if kind is NotFound else None, hint=hint), is_transient
    return BackendError(f"{model}: {type(e).__name__}: {e}"), False


def _key_hint(model: str) -> str:
    """Which variable holds the key of the model's provider (provider/model names it)."""
    provider = model.split("/", 1)[0] if "/" in model else None
    where = f"{provider.upper()}_API_KEY" if provider else "the provider's key variable (OPENAI_API_KEY, ...)"
    return f"set or check {where} in the environment the daemon was started with"


class LiteLLMBackend:
    def __init__(self, settings: LiteLLMBackendSettings):
        self.settings = settings
        self.name = settings.name
        self.models: Sequence[str] = settings.models
        self.num_slots = settings.num_slots
        self.timeout_s = settings.timeout_s
        self.is_continuable = settings.is_continuable
        self._rng = random.Random()

    def _kwargs(self, request: Request, messages: list[dict[str, Any]]) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": request.model, "messages": messages, "timeout": self.timeout_s}
        for name in ("tools", "max_tokens", "temperature", "stop"):
            value = getattr(request, name)
            if value is not None:
                kw[name] = value
        if self.settings.api_base:
            kw["api_base"] = self.settings.api_base
        return kw

    async def _retrying(self, attempt_fn: Any, model: str) -> Any:
        """Calls `attempt_fn` until it succeeds, a non-transient error, or max_retries."""
        attempt = 0
        while True:
            try:
                return await attempt_fn()
            except AiosError:
                raise
            except Exception as e:
                err, is_transient = map_error(e, model, api_base=self.settings.api_base)
                if not is_transient or attempt >= self.settings.max_retries:
                    raise err from None
                cap = min(self.settings.retry_cap_s, self.settings.retry_base_s * 2 ** attempt)
                attempt += 1
                await anyio.sleep(self._rng.uniform(0, cap))

    async def stream(self, request: Request, resume: Resume | None = None) -> AsyncIterator[Chunk]:
        litellm = import_litellm()
        messages = list(request.messages)
        if resume is not None and resume.text:
            # text-level continuation: the provider continues an assistant turn it is given
            messages.append({"role": "assistant", "content": resume.text})
        kwargs = self._kwargs(request, messages)
        stream = await self._retrying(lambda: litellm.acompletion(
            **kwargs, stream=True, stream_options={"include_usage": True}), request.model)
        num_out = resume.num_tokens if resume else 0
        usage: Usage | None = None
        tool_calls: dict[int, dict[str, Any]] = {}
        finish = None
        try:
            async for part in stream:
                if getattr(part, "usage", None):
                    u = part.usage
                    usage = Usage(u.prompt_tokens or 0, (u.completion_tokens or 0) + (resume.num_tokens if resume else 0))
                if not part.choices:
                    continue
                choice = part.choices[0]
                delta = choice.delta
                for tc in getattr(delta, "tool_calls", None) or []:
                    slot = tool_calls.setdefault(tc.index or 0, {"id": None, "type": "function",
                                                                 "function": {"name": "", "arguments": ""}})
                    slot["id"] = tc.id or slot["id"]
                    if tc.function is not None:
                        slot["function"]["name"] += tc.function.name or ""
                        slot["function"]["arguments"] += tc.function.arguments or ""
                if delta.content:
                    num_out += 1
                    yield Chunk(delta.content, 1)
                if choice.finish_reason:
                    finish = choice.finish_reason
        except Exception as e:
            raise map_error(e, request.model, api_base=self.settings.api_base)[0] from None
        if usage is None:
            usage = Usage(count_tokens(messages), num_out)
        cost = self._cost(request.model, usage)
        yield Chunk(tool_calls=[tool_calls[i] for i in sorted(tool_calls)] or None,
                    finish_reason=finish or "stop", usage=Usage(usage.tokens_in, usage.tokens_out, cost))

    async def complete(self, request: Request) -> Response:
        return await collect(self.stream(request), request.model)

    def _cost(self, model: str, usage: Usage) -> float:
        try:
            prompt, completion = import_litellm().cost_per_token(model=model, prompt_tokens=usage.tokens_in,
                                                           completion_tokens=usage.tokens_out)
            return float(prompt + completion)
        except Exception:   # a model litellm has no price for costs what we cannot know
            return 0.0

    def save(self, request: Request, resume: Resume) -> None:
        return None

    def discard(self, resume: Resume) -> None:
        return None

    async def aclose(self) -> None:
        return None

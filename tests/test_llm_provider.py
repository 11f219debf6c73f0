"""The litellm backend, without network: litellm's own mock machinery (`mock_response`)
produces the replies and the provider errors, through a thin wrapper around
`litellm.acompletion` that scripts one reply per attempt and counts attempts."""
from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")   # no network fetch at import

from collections.abc import Callable
from typing import Any

import anyio
import litellm
import pytest

from aios.config import LiteLLMBackendSettings, Settings
from aios.errors import (AiosError, BackendError, BackendUnavailable, InvalidSyscall, NotFound,
                         PermissionDenied)
from aios.kernel import Kernel
from aios.llm import Request
from aios.llm.provider import LiteLLMBackend, map_error
from tests.conftest import llm as sim_llm

MODEL = "openai/gpt-4o-mini"
HANG = object()   # a reply that never comes
REAL_ACOMPLETION = litellm.acompletion
# litellm's own TypedDicts make pydantic warn when its schemas are first built
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydantic")


def llm(prompt: str = "hi", max_tokens: int = 16) -> dict[str, Any]:
    return sim_llm(prompt, max_tokens, model=MODEL)


def provider_error(cls: type[Exception], message: str) -> Exception:
    return cls(message=message, llm_provider="openai", model="gpt-4o-mini")   # type: ignore[call-arg]


class FakeProvider:
    """Answers attempt i with replies[i] (the last one repeats), through litellm's mock."""

    def __init__(self, *replies: Any):
        self.replies = list(replies)
        self.calls: list[dict[str, Any]] = []

    async def acompletion(self, **kwargs: Any) -> Any:
        reply = self.replies[min(len(self.calls), len(self.replies) - 1)]
        self.calls.append(kwargs)
        if reply is HANG:
            await anyio.sleep_forever()
        return await REAL_ACOMPLETION(**kwargs, mock_response=reply)


class Jitter:
    """Stands in for the backend's random source: records each backoff cap, waits 0 s."""

    def __init__(self) -> None:
        self.caps: list[float] = []

    def uniform(self, low: float, high: float) -> float:
        assert low == 0
        self.caps.append(high)
        return 0.0


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeProvider]:
    def install(*replies: Any) -> FakeProvider:
        fake = FakeProvider(*replies)
        monkeypatch.setattr(litellm, "acompletion", fake.acompletion)
        return fake
    return install


def litellm_settings(make_settings: Callable[..., Settings], **backend: Any) -> Settings:
    return make_settings(backends=[{"kind": "litellm", "models": [MODEL], "retry_base_s": 0.5,
                                    "retry_cap_s": 20.0, **backend}])


def jitter_of(k: Kernel) -> Jitter:
    backend = k.router.route(MODEL)
    assert isinstance(backend, LiteLLMBackend)
    backend._rng = jitter = Jitter()   # type: ignore[assignment]
    return jitter


async def failed_call(k: Kernel) -> tuple[AiosError, Any]:
    ticket = await k.submit(llm())
    with anyio.fail_after(10):
        with pytest.raises(AiosError) as info:
            await ticket.result()
    return info.value, await k.journal.load(ticket.id)


# ---- replies

@pytest.mark.anyio
async def test_complete_reply_through_the_kernel(make_settings: Callable[..., Settings],
                                                 provider: Callable[..., FakeProvider]) -> None:
    fake = provider("Hello there, friend.")
    async with Kernel(litellm_settings(make_settings, timeout_s=30)) as k:
        ticket = await k.submit(llm("Say hello", max_tokens=20))
        with anyio.fail_after(10):
            result = await ticket.result()
        row = await k.journal.load(ticket.id)
    assert result["message"] == {"role": "assistant", "content": "Hello there, friend."}
    assert result["finish_reason"] == "stop"
    assert result["model"] == MODEL
    (sent,) = fake.calls
    assert sent["model"] == MODEL and sent["max_tokens"] == 20 and sent["timeout"] == 30
    assert sent["messages"] == [{"role": "user", "content": "Say hello"}]
    assert sent["stream"] is True
    # usage as the provider reported it, priced from litellm's cost map, and journaled
    usage = result["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    expected_cost = sum(litellm.cost_per_token(model=MODEL, prompt_tokens=usage["prompt_tokens"],
                                               completion_tokens=usage["completion_tokens"]))
    assert usage["cost_usd"] == pytest.approx(expected_cost) and usage["cost_usd"] > 0
    assert row is not None and row.state == "done"
    assert (row.usage.tokens_in, row.usage.tokens_out) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row.usage.cost_usd == pytest.approx(usage["cost_usd"])
    assert row.result == result


@pytest.mark.anyio
async def test_streamed_reply_through_the_kernel(make_settings: Callable[..., Settings],
                                                 provider: Callable[..., FakeProvider]) -> None:
    text = "A streamed reply arrives in several pieces."
    provider(text)
    async with Kernel(litellm_settings(make_settings)) as k:
        ticket = await k.submit({**llm(), "stream": True})
        with anyio.fail_after(10):
            pieces = [chunk.text async for chunk in k.stream(ticket)]
            result = await ticket.result()
    assert len(pieces) > 1
    assert "".join(pieces) == text
    assert result["message"]["content"] == text


@pytest.mark.anyio
async def test_backend_alone(provider: Callable[..., FakeProvider]) -> None:
    provider("Direct.")
    backend = LiteLLMBackend(LiteLLMBackendSettings(models=[MODEL]))
    response = await backend.complete(Request(MODEL, [{"role": "user", "content": "hi"}]))
    assert response.text == "Direct."
    assert response.finish_reason == "stop"
    assert response.usage.tokens_out > 0 and response.usage.cost_usd > 0


# ---- provider errors

@pytest.mark.anyio
async def test_authentication_error_is_permission_denied(make_settings: Callable[..., Settings],
                                                         provider: Callable[..., FakeProvider]) -> None:
    fake = provider(provider_error(litellm.AuthenticationError, "Incorrect API key provided: sk-bad***"))
    async with Kernel(litellm_settings(make_settings)) as k:
        jitter = jitter_of(k)
        err, row = await failed_call(k)
    assert isinstance(err, PermissionDenied) and err.code == "permission_denied"
    assert "Incorrect API key provided: sk-bad***" in err.message   # the provider's own words
    assert len(fake.calls) == 1 and jitter.caps == []                # not retried
    assert row.state == "failed" and row.error["code"] == "permission_denied"


@pytest.mark.anyio
async def test_rate_limit_is_retried_with_backoff(make_settings: Callable[..., Settings],
                                                  provider: Callable[..., FakeProvider]) -> None:
    limited = provider_error(litellm.RateLimitError, "Rate limit reached for gpt-4o-mini")
    fake = provider(limited, limited, limited, "Finally.")
    async with Kernel(litellm_settings(make_settings, max_retries=3)) as k:
        jitter = jitter_of(k)
        with anyio.fail_after(10):
            result = await k.call(llm())
    assert result["message"]["content"] == "Finally."
    assert len(fake.calls) == 4
    assert jitter.caps == [0.5, 1.0, 2.0]   # retry_base_s * 2**attempt


@pytest.mark.anyio
async def test_backoff_is_capped(make_settings: Callable[..., Settings],
                                 provider: Callable[..., FakeProvider]) -> None:
    overloaded = provider_error(litellm.InternalServerError, "overloaded")
    provider(overloaded, overloaded, overloaded, overloaded, "ok")
    async with Kernel(litellm_settings(make_settings, max_retries=5, retry_base_s=1.0,
                                       retry_cap_s=1.5)) as k:
        jitter = jitter_of(k)
        with anyio.fail_after(10):
            result = await k.call(llm())
    assert result["message"]["content"] == "ok"
    assert jitter.caps == [1.0, 1.5, 1.5, 1.5]


@pytest.mark.anyio
async def test_bad_request_is_not_retried(make_settings: Callable[..., Settings],
                                          provider: Callable[..., FakeProvider]) -> None:
    fake = provider(provider_error(litellm.BadRequestError, "Invalid value for 'temperature'"), "never")
    async with Kernel(litellm_settings(make_settings, max_retries=3)) as k:
        jitter = jitter_of(k)
        err, row = await failed_call(k)
    assert isinstance(err, InvalidSyscall)
    assert "Invalid value for 'temperature'" in err.message
    assert len(fake.calls) == 1 and jitter.caps == []
    assert row.error["code"] == "invalid_syscall"


@pytest.mark.anyio
async def test_retries_exhausted_is_backend_unavailable(make_settings: Callable[..., Settings],
                                                        provider: Callable[..., FakeProvider]) -> None:
    fake = provider(provider_error(litellm.RateLimitError, "Rate limit reached"))
    async with Kernel(litellm_settings(make_settings, max_retries=2)) as k:
        jitter = jitter_of(k)
        err, row = await failed_call(k)
    assert isinstance(err, BackendUnavailable) and err.code == "backend_unavailable"
    assert "Rate limit reached" in err.message
    assert len(fake.calls) == 3 and len(jitter.caps) == 2
    assert row.state == "failed" and row.error["code"] == "backend_unavailable"


@pytest.mark.anyio
async def test_provider_timeout_is_retried_then_fails(make_settings: Callable[..., Settings],
                                                      provider: Callable[..., FakeProvider]) -> None:
    fake = provider(provider_error(litellm.Timeout, "Request timed out after 600 s"))
    async with Kernel(litellm_settings(make_settings, max_retries=1)) as k:
        jitter_of(k)
        err, row = await failed_call(k)
    assert isinstance(err, BackendUnavailable)
    assert "timed out" in err.message
    assert len(fake.calls) == 2


@pytest.mark.anyio
async def test_provider_that_never_answers_times_out(make_settings: Callable[..., Settings],
                                                     provider: Callable[..., FakeProvider]) -> None:
    fake = provider(HANG)
    async with Kernel(litellm_settings(make_settings, timeout_s=0.05)) as k:
        err, row = await failed_call(k)
        assert not k.tickets   # the slot and the ticket are released
    assert isinstance(err, BackendUnavailable)
    assert "did not answer within 0.05 s" in err.message and "timeout_s" in (err.hint or "")
    assert len(fake.calls) == 1
    assert row.state == "failed" and row.error["code"] == "backend_unavailable"


@pytest.mark.anyio
async def test_error_in_mid_stream_is_mapped(make_settings: Callable[..., Settings],
                                             provider: Callable[..., FakeProvider]) -> None:
    fake = provider("Exception: mock_streaming_error")
    async with Kernel(litellm_settings(make_settings)) as k:
        err, row = await failed_call(k)
    # litellm classes it as a service error; it is mapped, keeps its words, and is not
    # retried, because part of the reply may already have reached the caller
    assert isinstance(err, (BackendError, BackendUnavailable))
    assert "mid-stream" in err.message
    assert len(fake.calls) == 1
    assert row.state == "failed" and row.error["code"] == err.code


@pytest.mark.parametrize(("exc", "kind", "is_transient"), [
    (provider_error(litellm.AuthenticationError, "bad key"), PermissionDenied, False),
    (provider_error(litellm.NotFoundError, "no such model"), NotFound, False),
    (provider_error(litellm.BadRequestError, "bad"), InvalidSyscall, False),
    (provider_error(litellm.ContextWindowExceededError, "too long"), InvalidSyscall, False),
    (provider_error(litellm.RateLimitError, "slow down"), BackendUnavailable, True),
    (provider_error(litellm.Timeout, "timed out"), BackendUnavailable, True),
    (provider_error(litellm.ServiceUnavailableError, "down"), BackendUnavailable, True),
    (provider_error(litellm.InternalServerError, "oops"), BackendUnavailable, True),
    (provider_error(litellm.InternalServerError, "OpenAIException - Missing credentials. Please pass an "
                    "`api_key`"), PermissionDenied, False),
    (litellm.APIConnectionError(message="refused", llm_provider="openai", model="m"), BackendUnavailable, True),
    (ValueError("something else"), BackendError, False),
])
def test_map_error(exc: Exception, kind: type[AiosError], is_transient: bool) -> None:
    err, transient = map_error(exc, "litellm")
    assert type(err) is kind
    assert transient is is_transient
    assert err.message.startswith("litellm: ")
    assert (getattr(exc, "message", None) or str(exc)) in err.message
    if kind is NotFound:
        assert err.field == "model"


def test_map_error_names_an_unknown_exception_type() -> None:
    err, _ = map_error(KeyError("boom"), "litellm")
    assert "KeyError" in err.message


def test_provider_errors_say_which_variable_or_address_to_check() -> None:
    """A wrong key names the provider's variable; a provider that does not answer names
    the address (before: `Connection error.` with no hint)."""
    err, _ = map_error(provider_error(litellm.AuthenticationError, "bad key"), "openai/gpt-4o-mini")
    assert err.message.startswith("openai/gpt-4o-mini: ") and "OPENAI_API_KEY" in (err.hint or "")
    refused = litellm.APIConnectionError(message="Connection error.", llm_provider="openai", model="m")
    err, _ = map_error(refused, "ollama/llama3", api_base="http://127.0.0.1:11434")
    assert "http://127.0.0.1:11434 did not answer" in (err.hint or "")
    err, _ = map_error(refused, "openai/gpt-4o-mini")
    assert "the provider of openai/gpt-4o-mini did not answer" in (err.hint or "")


def test_a_model_litellm_cannot_route_is_refused_and_missing_keys_are_named(monkeypatch) -> None:
    from aios.config import LiteLLMBackendSettings
    from aios.errors import ConfigError
    from aios.llm.provider import check_model, missing_credentials
    assert check_model("openai/gpt-4o-mini") == "openai"
    with pytest.raises(ConfigError) as err:
        check_model("nonsense-model-xyz")
    assert err.value.field == "model" and "provider/model" in (err.value.hint or "")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    warned = missing_credentials(LiteLLMBackendSettings(models=["openai/gpt-4o-mini"]))
    assert len(warned) == 1 and "OPENAI_API_KEY is not set" in warned[0]
    assert missing_credentials(LiteLLMBackendSettings(models=["openai/gpt-4o-mini"], api_base="http://x")) == []
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert missing_credentials(LiteLLMBackendSettings(models=["openai/gpt-4o-mini"])) == []


def test_kernel_start_with_a_model_in_one_line(tmp_path, monkeypatch) -> None:
    """`aios kernel start --model NAME` serves the real model beside the simulated ones,
    warns of a missing key without refusing it, and refuses a name litellm cannot route."""
    import subprocess
    import sys

    from aios.cli.kernel import with_models
    from aios.config import HardwareBackendSettings, LiteLLMBackendSettings, load_settings
    settings = with_models(load_settings(env={}, overrides={"home": str(tmp_path)}), ["openai/gpt-4o-mini"])
    assert isinstance(settings.backends[0], LiteLLMBackendSettings) and settings.backends[0].models == [
        "openai/gpt-4o-mini"]
    assert any(isinstance(b, HardwareBackendSettings) for b in settings.backends[1:])
    env = {"PATH": "/usr/bin:/bin", "AIOS_HOME": str(tmp_path)}
    bad = subprocess.run([sys.executable, "-m", "aios.cli.main", "kernel", "start", "--model", "nonsense-xyz"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.splitlines()[0] == (
        "error: litellm knows no provider for the model 'nonsense-xyz'")
    assert not (tmp_path / "daemon.json").exists()   # nothing started


def test_unreachable_endpoints_are_named_at_start_and_reachable_ones_are_not():
    """aios kernel start warns of each real backend's endpoint that does not answer (its
    api_base, or the provider's own address), without refusing it."""
    import socket

    from aios.llm.provider import unreachable
    listening = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        up = LiteLLMBackendSettings(models=["openai/served"], api_base=f"http://127.0.0.1:{listening.getsockname()[1]}/v1")
        assert unreachable(up) == []
        down = LiteLLMBackendSettings(models=["openai/a", "openai/b"], api_base=f"http://127.0.0.1:{closed_port}/v1")
        (warning,) = unreachable(down)   # one address, named once, with the models behind it
        assert warning.startswith(f"openai/a, openai/b: http://127.0.0.1:{closed_port}/v1 does not answer (")
        assert "api_base" in warning
        assert unreachable(LiteLLMBackendSettings(models=["hosted_vllm/x"])) == []   # no address known: not checked
    finally:
        listening.close()


def test_a_daemon_pointed_at_a_server_that_is_down_says_so_and_starts(tmp_path) -> None:
    """aios kernel start --model ollama/llama3 with no Ollama listening: one warning naming
    the address, and the daemon still starts, serving the model beside the simulated ones."""
    import socket
    import subprocess
    import sys
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 11434)) == 0:
            pytest.fail("something listens on Ollama's port 11434 here: the test needs it free")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {"PATH": "/usr/bin:/bin", "AIOS_HOME": str(tmp_path), "NO_COLOR": "1"}

    def aios(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aios.cli.main", *args], capture_output=True, text=True,
                              env=env, timeout=120)
    started = aios("kernel", "start", "--detach", "--port", port, "--model", "ollama/llama3")
    try:
        assert started.returncode == 0, started.stderr
        assert "warning: ollama/llama3: http://localhost:11434 does not answer (" in started.stderr
        models = aios("models", "--json")
        assert models.returncode == 0 and "ollama/llama3" in models.stdout and "sim-llama-3-8b" in models.stdout
    finally:
        aios("kernel", "stop", "--cancel")

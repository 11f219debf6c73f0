"""The `aios` command's last word on a failure: one `error:` line and one `hint:` line and
a non-zero exit, never a Python traceback unless asked for (--debug, AIOS_DEBUG=1); and
the usual flags of a command (--version, -h on every level)."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import aios.cli.main as cli_main
from aios.errors import NotFound

AIOS = [sys.executable, "-m", "aios.cli.main"]


def aios(*args: str, env: dict[str, str] | None = None, home: Path) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "AIOS_HOME": str(home), "AIOS_URL": "http://127.0.0.1:9"}   # nothing listens
    return subprocess.run([*AIOS, *args], capture_output=True, text=True, timeout=60, env={**base, **(env or {})})


def test_version_and_short_help_on_every_level(tmp_path: Path) -> None:
    version = aios("--version", home=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"aios {importlib.metadata.version('aios')}"
    for args in (["-h"], ["kernel", "-h"], ["fs", "-h"], ["bench", "kernel", "-h"]):
        shown = aios(*args, home=tmp_path)
        assert shown.returncode == 0 and "Usage: " in shown.stdout, (args, shown.stderr)


def test_a_failure_is_two_lines_and_its_traceback_only_when_asked(tmp_path: Path) -> None:
    down = aios("ps", home=tmp_path)
    assert down.returncode == 2
    assert down.stderr.startswith("error: ") and "\nhint: " in down.stderr and "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 2
    for debug in (["--debug", "ps"], ["ps"]):
        shown = aios(*debug, home=tmp_path, env={"AIOS_DEBUG": "1"} if debug == ["ps"] else None)
        assert shown.returncode == 2 and "Traceback (most recent call last)" in shown.stderr
        assert shown.stderr.rstrip().splitlines()[-2].startswith("error: ")


def failing_app(error: BaseException) -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def boom() -> None:
        raise error

    return app


@pytest.mark.parametrize("error, code, first_line", [
    (RuntimeError("the bookkeeping broke"), 1, "error: RuntimeError: the bookkeeping broke"),
    (ExceptionGroup("unhandled errors in a TaskGroup", [NotFound("no process 7", hint="aios ps --all")]), 2,
     "error: no process 7"),
    (ExceptionGroup("outer", [ExceptionGroup("inner", [ValueError("x"), NotFound("no file 'a'", hint="aios fs ls")])]), 2,
     "error: no file 'a'"),
])
def test_every_exception_becomes_error_and_hint(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                error: BaseException, code: int, first_line: str) -> None:
    """A bug (any exception that is not an AiosError) is said in one line, with a hint
    naming --debug; an AiosError inside anyio's ExceptionGroup is said as itself."""
    monkeypatch.delenv("AIOS_DEBUG", raising=False)
    monkeypatch.setattr(cli_main, "app", failing_app(error))
    monkeypatch.setattr(sys, "argv", ["aios"])
    with pytest.raises(SystemExit) as exit_:
        cli_main.main()
    assert exit_.value.code == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == first_line and lines[1].startswith("hint: ") and len(lines) == 2 and "Traceback" not in err
    if code == 1:
        assert "--debug" in lines[1] and "AIOS_DEBUG=1" in lines[1]


def test_ctrl_c_exits_130_quietly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_main, "app", failing_app(KeyboardInterrupt()))
    monkeypatch.setattr(sys, "argv", ["aios"])
    with pytest.raises(SystemExit) as exit_:
        cli_main.main()
    assert exit_.value.code == 130 and capsys.readouterr().err == ""

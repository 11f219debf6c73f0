"""`aios trace export`: the journal's LLM calls become a simulator trace that loads back."""
from __future__ import annotations

import anyio
import numpy as np
import pytest
from typer.testing import CliRunner

from aios.cli.main import app
from aios.errors import ConfigError
from aios.storage.trace import export_journal
from aios.hardware.workload import load_trace
from aios.kernel import Kernel
from tests.conftest import llm


@pytest.mark.anyio
async def test_export_the_journal_as_a_trace(make_settings, tmp_path):
    settings = make_settings()
    async with Kernel(settings) as k:
        a, b = await k.spawn("a"), await k.spawn("b", priority=2)
        with anyio.fail_after(30):
            for pid, max_tokens in ((a.pid, 5), (b.pid, 7), (a.pid, 3)):
                await k.call(llm("word " * 40, max_tokens, priority=2 if pid == b.pid else 0), pid=pid)
            queued = await k.submit(llm("never finished", 9), pid=b.pid)
            await k.cancel(queued.id)
    w = export_journal(settings.db_url)
    assert len(w) == 3 and w.arrival_s[0] == 0.0 and np.all(np.diff(w.arrival_s) >= 0)
    assert list(w.output_tokens) == [5, 7, 3] and np.all(w.prompt_tokens > 40)
    assert list(w.session) == [a.pid, b.pid, a.pid] and list(w.turn) == [0, 0, 1]
    assert list(w.priority) == [0, 2, 0]
    everything = export_journal(settings.db_url, include_unfinished=True)
    assert len(everything) == 4 and everything.output_tokens[-1] == 9

    out = tmp_path / "trace.csv"
    result = CliRunner().invoke(app, ["trace", "export", "--out", str(out), "--db", settings.db_url])
    assert result.exit_code == 0, result.output
    assert "wrote 3 requests" in result.output
    back = load_trace(out)
    assert list(back.output_tokens) == [5, 7, 3] and list(back.session) == list(w.session)


@pytest.mark.anyio
async def test_an_empty_journal_is_a_clear_error(make_settings):
    settings = make_settings()
    async with Kernel(settings):
        pass
    with pytest.raises(ConfigError, match="no LLM calls to export"):
        export_journal(settings.db_url)

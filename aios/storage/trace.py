"""`aios trace export`: the kernel's own LLM syscalls, from its journal, as a workload
trace for the simulator, so that a day of real agent traffic can be replayed against
serving policies and hardware. It lives with the journal it reads: the simulator
(aios.hardware) stands alone and knows nothing of the kernel.

Each LLM call becomes a request: its arrival is when it was submitted (seconds from the
first call exported), its prompt and output tokens are what the kernel metered, its
session is its process and its turn its order there, its priority its priority. A call
that did not finish has no metered output: it is left out unless `include_unfinished`,
which then takes its prompt from the messages (4 characters a token) and its output from
its max_tokens (or `default_output`)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from sqlalchemy import create_engine, select
from sqlalchemy.exc import SQLAlchemyError

from aios.errors import ConfigError
from aios.hardware.workload import Workload
from aios.llm import count_tokens
from aios.storage.db import describe
from aios.storage.models import SyscallRow


def export_journal(db_url: str, *, since: float | None = None, until: float | None = None,
                   include_unfinished: bool = False, default_output: int = 256) -> Workload:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            query = select(SyscallRow.created, SyscallRow.pid, SyscallRow.priority, SyscallRow.state,
                           SyscallRow.tokens_in, SyscallRow.tokens_out, SyscallRow.payload) \
                .where(SyscallRow.kind == "llm").order_by(SyscallRow.created, SyscallRow.id)
            if since is not None:
                query = query.where(SyscallRow.created >= since)
            if until is not None:
                query = query.where(SyscallRow.created < until)
            rows = conn.execute(query).all()
    except SQLAlchemyError as e:
        raise describe(e, db_url) from None
    finally:
        engine.dispose()
    arrival, prompt, output, priority, session, turn = [], [], [], [], [], []
    turns: dict[int, int] = defaultdict(int)
    for created, pid, prio, state, tokens_in, tokens_out, payload in rows:
        if state != "done" or tokens_out < 1:
            if not include_unfinished:
                continue
            messages = (payload or {}).get("messages") or []
            tokens_in = tokens_in or count_tokens(messages)
            tokens_out = tokens_out or (payload or {}).get("max_tokens") or default_output
        arrival.append(created)
        prompt.append(max(1, int(tokens_in)))
        output.append(max(1, int(tokens_out)))
        priority.append(int(prio))
        session.append(int(pid))
        turn.append(turns[pid])
        turns[pid] += 1
    if not arrival:
        raise ConfigError("the journal has no LLM calls to export" +
                          ("" if include_unfinished else " that finished"),
                          hint="run some agents first, or pass --all to include unfinished calls")
    start = arrival[0]
    return Workload(np.array(arrival, float) - start, np.array(prompt, np.int64), np.array(output, np.int64),
                    np.array(priority, np.int64), np.array(session, np.int64), np.array(turn, np.int64),
                    source=f"kernel journal {db_url}")

"""Context switching: the snapshot of an interrupted LLM generation and its restore.

For remote providers a snapshot is text-level (the reply so far); for the hardware model
it also names where the KV cache went (swapped to host memory, or dropped to recompute),
and the engine charges that cost when the call resumes.

Invariant: a restored call continues from exactly the token where its snapshot stopped,
so the final text equals an uninterrupted generation on a continuable backend."""
from __future__ import annotations

import time

from aios.llm import Backend, Request, Resume
from aios.scheduler.ticket import Snapshot, Ticket


class ContextManager:
    """Takes and restores snapshots, and measures their kernel-side cost (not the backend's
    simulated swap time, which the engine charges on its own clock)."""

    def __init__(self) -> None:
        self.num_snapshots = 0
        self.num_restores = 0
        self.total_switch_s = 0.0   # wall time spent in snapshot + restore

    def snapshot(self, ticket: Ticket, backend: Backend, request: Request, now: float) -> Snapshot:
        t0 = time.perf_counter()
        resume = Resume("".join(ticket.text_parts), ticket.num_tokens)
        snap = Snapshot(ticket.id, resume.text, resume.num_tokens, backend.name,
                        backend.save(request, resume), now)
        ticket.snapshot = snap
        self.num_snapshots += 1
        self.total_switch_s += time.perf_counter() - t0
        return snap

    def restore(self, ticket: Ticket) -> Resume | None:
        """The Resume to pass to `backend.stream`, or None for a call never preempted."""
        snap = ticket.snapshot
        if snap is None:
            return None
        t0 = time.perf_counter()
        ticket.snapshot = None
        ticket.text_parts = [snap.text] if snap.text else []
        ticket.num_tokens = snap.num_tokens
        resume = Resume(snap.text, snap.num_tokens, state=snap.state)
        self.num_restores += 1
        self.total_switch_s += time.perf_counter() - t0
        return resume

    def discard(self, ticket: Ticket, backend: Backend) -> None:
        """A preempted call ends without resuming (cancelled, failed): free its saved state."""
        snap, ticket.snapshot = ticket.snapshot, None
        if snap is not None:
            backend.discard(Resume(snap.text, snap.num_tokens, state=snap.state))

    @property
    def switch_us(self) -> float:
        """Mean kernel cost of one context switch (a snapshot and its restore), in µs."""
        if not self.num_snapshots:
            return 0.0
        return 1e6 * self.total_switch_s / self.num_snapshots

"""Progress events of jobs: a typed event per change a listener sees, kept per job in memory so
SSE and WebSocket listeners can wait for the next one (a long poll) and resume after an id."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from jobs.model import JobError, JobStatus, JobView, Phase

EventKind = Literal["queued", "phase", "step", "terminal"]

#: Event logs kept in memory; the oldest logs of ended jobs go first beyond this many.
MAX_EVENT_LOGS = 1000

#: The fields whose change makes a new event; anything else (an ETA that moved) does not.
_STATE_FIELDS = ("status", "phase", "step", "queue_position")


class JobEvent(BaseModel):
    """One progress event of a job (SSE ``data``, a WebSocket message, a webhook's ``data``)."""

    id: int = Field(default=0, description="1, 2, ... within the job's log (SSE id, for Last-Event-ID).")
    event: EventKind = Field(description="queued (waiting or moved up), phase, step (a denoising step), terminal.")
    status: JobStatus
    phase: Phase | None = Field(description="Where a running job is; None otherwise.")
    step: int = Field(description="Denoising steps completed.")
    total_steps: int
    progress: float = Field(description="0..1.")
    eta_seconds: float | None
    queue_position: int | None
    error: JobError | None = Field(default=None, description="Terminal events only: why it failed or was canceled.")
    filename: str | None = Field(default=None, description="Terminal events only: the result file of a success.")

    @classmethod
    def of(cls, view: JobView) -> JobEvent:
        """The event of ``view``'s current state (id 0 until a log numbers it)."""
        if view.status.terminal:
            kind: EventKind = "terminal"
        elif view.status == JobStatus.queued:
            kind = "queued"
        elif view.phase == Phase.denoising and view.step:
            kind = "step"
        else:
            kind = "phase"
        terminal = view.status.terminal
        return cls(
            event=kind,
            status=view.status,
            phase=view.phase,
            step=view.step,
            total_steps=view.total_steps,
            progress=view.progress,
            eta_seconds=view.eta_seconds,
            queue_position=view.queue_position,
            error=view.error if terminal else None,
            filename=view.filename if view.status == JobStatus.success else None,
        )

    def same_state(self, other: JobEvent) -> bool:
        """Whether a listener would see nothing new in ``other``."""
        return all(getattr(self, f) == getattr(other, f) for f in _STATE_FIELDS)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; ``error`` and ``filename`` only on the terminal event."""
        data = self.model_dump(mode="json")
        if self.event != "terminal":
            del data["error"], data["filename"]
        return data


class EventBatch(BaseModel):
    """What one long poll returns."""

    events: list[JobEvent] = Field(description="Events after the id asked for, oldest first.")
    done: bool = Field(description="True once the terminal event has been returned: the stream ends.")


class EventLog:
    """One job's events, in order; ``changed`` is set (and replaced) on every append."""

    def __init__(self) -> None:
        self.items: list[JobEvent] = []
        self.changed = asyncio.Event()
        self.done = False

    def append(self, event: JobEvent) -> bool:
        """Append ``event`` numbered, unless nothing a listener sees changed. Returns whether it was appended."""
        if self.items and self.items[-1].same_state(event):
            return False
        self.items.append(event.model_copy(update={"id": len(self.items) + 1}))
        self.done = event.event == "terminal"
        self.changed.set()
        self.changed = asyncio.Event()
        return True

    def after(self, event_id: int) -> list[JobEvent]:
        return [e for e in self.items if e.id > event_id]


class EventLogs:
    """Event logs of the jobs someone asked about (or that were submitted to this process).

    Not thread-safe: the router's event loop is its only user.
    """

    def __init__(self, max_logs: int = MAX_EVENT_LOGS) -> None:
        self.max_logs = max_logs
        self._logs: OrderedDict[str, EventLog] = OrderedDict()

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._logs

    def open(self, job_id: str, first: JobEvent) -> EventLog:
        """A new log for ``job_id`` starting with ``first``; evicts the oldest ended logs beyond ``max_logs``."""
        log = self._logs[job_id] = EventLog()
        log.append(first)
        while len(self._logs) > self.max_logs:
            oldest = next((k for k, v in self._logs.items() if v.done), None)
            if oldest is None:
                break
            del self._logs[oldest]
        return log

    def record(self, job_id: str, event: JobEvent) -> None:
        """Append to the job's log, if it has one."""
        log = self._logs.get(job_id)
        if log is not None:
            log.append(event)

    def drop(self, job_id: str) -> None:
        self._logs.pop(job_id, None)

    async def wait_after(
        self, job_id: str, after: int, timeout_s: float, snapshot: Callable[[], JobEvent | None]
    ) -> EventBatch:
        """Events of ``job_id`` with ids above ``after``, waiting up to ``timeout_s`` seconds for one.

        ``snapshot()`` gives the job's current event (None once it is gone): it starts a log that
        is not in memory (a restarted router, or an evicted log), and refreshes a queued job after
        an empty wait (queue positions move without an update of the job itself).

        Raises:
            KeyError: the job has no log and ``snapshot()`` found no job.
        """
        log = self._logs.get(job_id)
        if log is None:
            first = snapshot()
            if first is None:
                raise KeyError(job_id)
            log = self.open(job_id, first)
        new = log.after(after)
        if not new and not log.done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.changed.wait(), timeout_s)
            new = log.after(after)
            if not new and log.items and log.items[-1].event == "queued":
                current = snapshot()
                if current is not None:
                    log.append(current)
                    new = log.after(after)
        seen_up_to = new[-1].id if new else after
        return EventBatch(events=new, done=log.done and seen_up_to >= log.items[-1].id)

"""Progress events of jobs: a typed event per change a listener sees.

The router stores each job's events in the job store (jobs/store.py), numbered n = 1, 2, ... in
the transaction of the change they report, so any ingress replica can replay them and a listener
can resume after an id (jobs/reader.py). An event's id is ``n * EVENT_ID_SPAN``. Queue moves are
not stored (each dispatch would write one per waiting job): a reader sees them as the places a
queued job moved up since its stored ``queued`` event n, with id ``n * EVENT_ID_SPAN + places``,
so ids only grow and every replica gives a move the same id."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from jobs.config import MAX_QUEUED_JOBS
from jobs.model import JobError, JobStatus, JobView, Phase

EventKind = Literal["queued", "phase", "step", "terminal"]

#: Ids of a job's stored event n run from n * EVENT_ID_SPAN (the event itself) to
#: (n + 1) * EVENT_ID_SPAN - 1 (queue moves after it): room for a move over the longest queue.
EVENT_ID_SPAN = MAX_QUEUED_JOBS + 1

#: The fields whose change makes a new event; anything else (an ETA that moved) does not.
_STATE_FIELDS = ("status", "phase", "step", "queue_position")


class JobEvent(BaseModel):
    """One progress event of a job (SSE ``data``, a WebSocket message, a webhook's ``data``)."""

    id: int = Field(
        default=0,
        description="Grows with each event of the job (SSE id, for Last-Event-ID): n x 1,000,000 for its "
        "n-th stored event, plus the places moved up for a queue move after it.",
    )
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

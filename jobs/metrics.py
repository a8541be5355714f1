"""What the service measures about its jobs, in plain Python: the series (one home for their names,
help texts, labels and buckets), and ``JobMetrics``, which turns the job engine's committed changes
into observations. deployments/metrics.py sends them to Ray's metrics export (``ray.serve.metrics``);
serve_app/metrics_text.py renders the service-level ones at ``GET /metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from jobs.events import JobEvent
from jobs.model import JobRecord, JobStatus, Phase

#: Prefix of every series (Ray's export adds its own ``ray_`` in front).
PREFIX = "wan_serve_"

#: Histogram buckets for durations, seconds: from a tiny twin's 0.1 s steps to an A14B job's hour.
SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 2400, 3600]
#: Histogram buckets for device memory, bytes: 1 GiB to 160 GiB (an H200 has about 141 GiB).
BYTES_BUCKETS = [float(g * 2**30) for g in (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 128, 160)]


@dataclass(frozen=True)
class Series:
    """One metric: its kind, help text, label names, and buckets for a histogram."""

    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


SERIES: dict[str, Series] = {
    "jobs_submitted_total": Series("counter", "Jobs accepted (stored before the 202 answer).", ("variant",)),
    "jobs_ended_total": Series(
        "counter",
        "Jobs that reached their terminal status; error_code is empty unless status is error or canceled.",
        ("variant", "status", "error_code"),
    ),
    "queue_depth": Series("gauge", "Jobs waiting in the router's queue.", ("variant",)),
    "running_jobs": Series("gauge", "Jobs dispatched to a generator and not yet ended.", ("variant",)),
    "replicas": Series("gauge", "Generator replicas: kind target (configured) or live (running).", ("variant", "kind")),
    "queue_wait_seconds": Series(
        "histogram", "Seconds from submission to the job's first start.", ("variant",), tuple(SECONDS_BUCKETS)
    ),
    "job_seconds": Series(
        "histogram",
        "Seconds from the job's (last) start to its terminal status.",
        ("variant", "status"),
        tuple(SECONDS_BUCKETS),
    ),
    "phase_seconds": Series(
        "histogram", "Seconds a running job spent in each phase.", ("variant", "phase"), tuple(SECONDS_BUCKETS)
    ),
    "denoising_step_seconds": Series(
        "histogram",
        "Mean seconds per denoising step of a job, by speed profile.",
        ("variant", "speed"),
        tuple(SECONDS_BUCKETS),
    ),
    "job_peak_device_memory_bytes": Series(
        "histogram",
        "Peak GPU memory a job allocated (torch.cuda.max_memory_allocated).",
        ("variant",),
        tuple(BYTES_BUCKETS),
    ),
    "webhook_deliveries_total": Series(
        "counter",
        "Webhook delivery attempts by outcome: delivered (2xx), retryable (connection error, timeout, 408, 429 "
        "or 5xx: tried again while its retry window lasts) or refused (any other answer, or the address guard).",
        ("outcome",),
    ),
}


class MetricsSink(Protocol):
    """Where observations go (deployments/metrics.py: Ray's metrics). ``series`` is a key of SERIES;
    ``labels`` give every one of its label names."""

    def inc(self, series: str, labels: dict[str, str], value: float = 1.0) -> None: ...

    def observe(self, series: str, labels: dict[str, str], value: float) -> None: ...

    def set(self, series: str, labels: dict[str, str], value: float) -> None: ...


class NoSink:
    """A sink that drops everything (tests of the engine without metrics)."""

    def inc(self, series: str, labels: dict[str, str], value: float = 1.0) -> None:
        pass

    def observe(self, series: str, labels: dict[str, str], value: float) -> None:
        pass

    def set(self, series: str, labels: dict[str, str], value: float) -> None:
        pass


class JobMetrics:
    """Observes jobs through the engine's committed changes and keeps the totals that ``GET /metrics``
    serves (counters since this router started: Prometheus treats a restart as a counter reset).

    ``submitted(rec)`` once per stored job; ``recorded(rec, event)`` after every committed change.
    A job's phase time is measured here, on ``monotonic`` (seconds), between the changes that move
    it from one phase to the next.
    """

    def __init__(self, sink: MetricsSink, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.monotonic = monotonic
        self.submitted_total: dict[str, int] = {}
        self.ended_total: dict[tuple[str, str, str], int] = {}
        self._phase: dict[str, tuple[Phase, float]] = {}  # job id -> (phase, entered at)
        self._started: set[str] = set()  # jobs whose queue wait was observed

    def submitted(self, rec: JobRecord) -> None:
        self.submitted_total[rec.variant] = self.submitted_total.get(rec.variant, 0) + 1
        self.sink.inc("jobs_submitted_total", {"variant": rec.variant})

    def recorded(self, rec: JobRecord, event: JobEvent) -> None:
        """One committed change of ``rec`` (``event`` is what its watchers were told)."""
        variant, now = rec.variant, self.monotonic()
        if rec.status == JobStatus.running and rec.id not in self._started and rec.started_at is not None:
            self._started.add(rec.id)
            self.sink.observe("queue_wait_seconds", {"variant": variant}, max(rec.started_at - rec.created_at, 0.0))
        last = self._phase.get(rec.id)
        phase = rec.phase if rec.status == JobStatus.running else None
        if last is not None and last[0] != phase:
            self.sink.observe("phase_seconds", {"variant": variant, "phase": last[0].value}, now - last[1])
            if last[0] == Phase.denoising and rec.step_seconds is not None:
                speed = rec.spec.params.speed or ""
                self.sink.observe("denoising_step_seconds", {"variant": variant, "speed": speed}, rec.step_seconds)
            del self._phase[rec.id]
        if phase is not None and (last is None or last[0] != phase):
            self._phase[rec.id] = (phase, now)
        if rec.status == JobStatus.queued:  # handed back or retried: its next start counts anew
            self._phase.pop(rec.id, None)
        if event.event == "terminal":
            code = rec.error_code or ""
            key = (variant, rec.status.value, code)
            self.ended_total[key] = self.ended_total.get(key, 0) + 1
            self.sink.inc("jobs_ended_total", {"variant": variant, "status": rec.status.value, "error_code": code})
            if rec.started_at is not None and rec.finished_at is not None:
                self.sink.observe(
                    "job_seconds", {"variant": variant, "status": rec.status.value}, rec.finished_at - rec.started_at
                )
            self._started.discard(rec.id)
            self._phase.pop(rec.id, None)

"""Estimated time until a job's file is written, from measured step times and the variant's
moving average of whole-job durations (the job store keeps it, ETA_EMA_ALPHA)."""

from __future__ import annotations

import math


def running_remaining_s(
    *,
    now: float,
    started_at: float | None,
    step: int,
    total_steps: int,
    step_seconds: float | None,
    avg_job_s: float | None,
) -> float | None:
    """Seconds left for a running job, or None when nothing is known yet.

    The steps left at the measured step time, but never less than what the average job has left
    (the VAE decode and the encode follow the last step, and the average covers them).
    """
    left_by_avg = max(avg_job_s - (now - started_at), 0.0) if avg_job_s is not None and started_at else None
    if step_seconds and total_steps:
        return max(step_seconds * (total_steps - step), left_by_avg or 0.0)
    return left_by_avg


def queued_eta_s(*, position: int, slots: int, avg_job_s: float | None, running_left_s: list[float]) -> float | None:
    """Seconds until a queued job's file is written, or None before any job of its variant ended.

    Args:
        position: 1 for the next job of the variant.
        slots: the variant's generator replicas (jobs that run at once).
        avg_job_s: the variant's average job duration, seconds.
        running_left_s: seconds left of each running job of the variant.

    It waits for a free replica (the soonest running job, if all are busy), then for the queued
    jobs ahead of it in rounds of ``slots``, then runs itself.
    """
    if avg_job_s is None:
        return None
    slots = max(slots, 1)
    wait_free = min(running_left_s) if len(running_left_s) >= slots else 0.0
    return wait_free + avg_job_s * (math.ceil(position / slots) - 1) + avg_job_s

"""Retention: which ended jobs and which result files a purge removes."""

from __future__ import annotations

from jobs.config import RetentionPolicy
from jobs.files import ResultFiles
from jobs.model import JobRecord
from jobs.store import JobStore

#: Seconds in a day, for ``retention_days``.
DAY_S = 86400


def expired_jobs(store: JobStore, policy: RetentionPolicy, now: float) -> list[JobRecord]:
    """Jobs that ended more than ``retention_days`` before ``now`` (Unix seconds), oldest first."""
    if policy.retention_days is None:
        return []
    return store.ended_before(now - policy.retention_days * DAY_S)


def files_over_cap(store: JobStore, files: ResultFiles, policy: RetentionPolicy) -> list[JobRecord]:
    """Successful jobs whose files go, oldest first, until the rest add up to ``max_output_gib`` at most.

    A job listed here whose file is already gone is listed too, so its record gets marked.
    """
    cap = policy.max_output_bytes
    if cap is None:
        return []
    videos = store.videos()
    sizes = {r.id: files.size(r.filename) for r in videos if r.filename}
    total = sum(s for s in sizes.values() if s is not None)
    chosen = []
    for rec in videos:  # oldest first
        if total <= cap:
            break
        chosen.append(rec)
        total -= sizes.get(rec.id) or 0
    return chosen


def expires_at(finished_at: float | None, policy_days: float | None) -> float | None:
    """When an ended job is purged (Unix seconds), or None when it is kept until deleted."""
    return finished_at + policy_days * DAY_S if finished_at and policy_days else None

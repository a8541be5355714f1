"""What the router's health check looks at: its loops, the job store's lease, and how long the
job store has been failing. Serve replaces a router whose check fails."""

from __future__ import annotations

import asyncio
import logging
import time

logger = logging.getLogger("ray.serve")

#: Seconds of failing store calls after which the router is unhealthy: long enough to ride out a
#: lock held past SQLite's busy timeout (5 s), short enough that a broken disk is noticed in a minute.
STORE_UNHEALTHY_S = 30.0


class RouterHealth:
    """Tracks the router's loops and store failures; ``check()`` raises while the router is unusable."""

    def __init__(self) -> None:
        self.loops: list[asyncio.Task] = []
        self.fenced = False
        self.store_errors = 0
        self.failing_since: float | None = None

    def store_failed(self, exc: BaseException) -> None:
        """A store call raised: logged at warning with the reason, counted, and timed."""
        self.store_errors += 1
        self.failing_since = self.failing_since or time.monotonic()
        logger.warning("job store call failed (%r, %d failures so far); trying again", exc, self.store_errors)

    def check(self, last_write_ok: float | None) -> None:
        """Raises RuntimeError when a loop ended, a newer router holds the job store's lease, or the
        store has failed for STORE_UNHEALTHY_S seconds without a write going through since
        (``last_write_ok``: time.monotonic() of the last committed write)."""
        if self.failing_since is not None and last_write_ok is not None and last_write_ok > self.failing_since:
            self.failing_since = None
        if any(task.done() for task in self.loops):
            raise RuntimeError("a router loop ended; the router must be replaced")
        if self.fenced:
            raise RuntimeError("a newer router holds the job store's lease")
        since = self.failing_since
        if since is not None and time.monotonic() - since > STORE_UNHEALTHY_S:
            raise RuntimeError(f"the job store has failed for {time.monotonic() - since:.0f} s")

"""Wake-ups for event readers on PostgreSQL: every row stored in ``job_events`` is announced on
``EVENTS_CHANNEL`` by a trigger (migration 0003; PostgreSQL sends it when the write commits), and
``EventNotices`` LISTENs there for one process, so a long poll learns of a new event within a
round trip instead of at its next poll of the store.

SQLite has no way to tell another process of a commit, so its readers keep polling
(jobs/reader.py ``EVENT_POLL_S``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

#: The PostgreSQL channel on which each stored job event is announced; the payload is the job's id.
EVENTS_CHANNEL = "wan_serve_job_events"

#: Seconds between tries to (re)connect the listening connection after it failed or dropped.
RECONNECT_S = 1.0

#: Seconds the listening thread waits for a notification before it checks whether it should stop:
#: how long ``stop()`` may take.
STOP_CHECK_S = 0.5


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (``postgresql+psycopg://...``) in libpq's form, for psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class EventNotices:
    """One thread and one PostgreSQL connection that LISTENs on ``EVENTS_CHANNEL`` and calls
    ``on_notice(job_id)`` for each announced event, from that thread. When the connection fails it
    reconnects every ``RECONNECT_S`` seconds; ``listening`` is false meanwhile, so readers poll,
    since announcements made while no one listens are lost. Each time it starts listening it calls
    ``on_notice(None)``: anything may have been stored before.

    Args:
        url: the job store's database (a SQLAlchemy or libpq PostgreSQL URL).
        on_notice: called with a job id, or None for "any job"; it must be thread-safe and quick.
    """

    def __init__(self, url: str, on_notice: Callable[[str | None], None]) -> None:
        self.conninfo = libpq_url(url)
        self.on_notice = on_notice
        self._listening = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False  # logged once per outage

    @property
    def listening(self) -> bool:
        """Whether the connection is LISTENing now (announcements reach ``on_notice``)."""
        return self._listening.is_set()

    def start(self) -> None:
        """Start the listening thread (a daemon); a second call does nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="job-event-notices", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop listening and close the connection (within ``STOP_CHECK_S`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self._listening.set()
                    self._failing = False
                    self.on_notice(None)
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=STOP_CHECK_S):
                            self.on_notice(notice.payload)
            except psycopg.Error as exc:
                if not self._failing:
                    logger.warning("listening for job events failed (%s); readers poll until it reconnects", exc)
                self._failing = True
            finally:
                self._listening.clear()
            self._stop.wait(RECONNECT_S)

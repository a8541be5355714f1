"""Reading jobs from the job store: views with queue positions and ETAs, pages, lookups, result
files and progress events.

The ingress reads through a ``JobReader`` of its own, so status, listing, lookup and events scale
with its replicas and never wait on the router; the router's engine builds its views (and the
events it stores) with one too, so both compute positions and ETAs the same way. It writes nothing:
the router alone writes jobs and queue state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from jobs.errors import FileNotFoundForJob, IdempotencyConflict, JobNotFound
from jobs.eta import queued_eta_s, running_remaining_s
from jobs.event_notices import EventNotices
from jobs.events import EVENT_ID_SPAN, EventBatch, JobEvent
from jobs.files import ResultFiles
from jobs.model import JobRecord, JobStatus, JobView
from jobs.ownership import OPEN, Caller
from jobs.store import JobStore

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Seconds between one process's checks of the store for new events of the jobs it is asked
#: about (one query for all of them, a read of an index): the added latency of an event, at most.
EVENT_POLL_S = 0.01

#: Seconds between those checks while the process hears of new events as they are stored
#: (PostgreSQL, jobs/event_notices.py): only a safety net then, for an announcement lost with a
#: connection that dropped unnoticed.
NOTIFIED_POLL_S = 1.0

#: Seconds between re-reads of a queued job's place while a listener waits: queue moves are not
#: stored events, so the polls above do not see them.
QUEUED_REFRESH_S = 1.0


def scoped_key(key: str, owner: str | None) -> str:
    """The stored form of an Idempotency-Key: each API key has its own space of them."""
    return key if owner is None else f"{owner}:{key}"


def replica_start_delay(
    replica_start_s: dict[str, float], replica_running: Callable[[str], bool]
) -> Callable[[str], float | None]:
    """A variant -> the seconds its queued jobs wait for a replica to start: its expected start
    (``replica_start_s``, the variants that autoscale) while none is running, else None."""

    def delay(variant: str) -> float | None:
        start = replica_start_s.get(variant)
        return None if start is None or replica_running(variant) else start

    return delay


class JobReader:
    """Views of the jobs in ``store``, as callers see them.

    Args:
        store: the job store (read only).
        files: the result files (to check that a download's file exists).
        slots_of: a variant's generator replicas, i.e. jobs it runs at once (for queued ETAs).
        clock: Unix seconds.
        start_delay_of: seconds until a variant's first replica is expected up, None when one runs
            (``replica_start_delay``); added to its queued jobs' ETAs.
        avg_job_s_of: a variant's average job duration, seconds, for ``view``; default: read from
            the store each time (the router, the one writer of it, passes what it keeps in memory).

    Every call takes the ``caller`` (jobs/ownership.py) and sees only that caller's jobs; an unknown
    job and another key's job both raise ``JobNotFound``. Thread-safe as the store is.
    """

    def __init__(
        self,
        store: JobStore,
        files: ResultFiles,
        slots_of: Callable[[str], int],
        clock: Callable[[], float] = time.time,
        start_delay_of: Callable[[str], float | None] = lambda variant: None,
        avg_job_s_of: Callable[[str], float | None] | None = None,
    ) -> None:
        self.store = store
        self.avg_job_s_of = avg_job_s_of or store.avg_job_seconds
        self.files = files
        self.slots_of = slots_of
        self.clock = clock
        self.start_delay_of = start_delay_of

    def get(self, job_id: str, caller: Caller = OPEN) -> JobRecord:
        """The job, if ``caller`` may see it. Raises JobNotFound (the same for another key's job)."""
        rec = self.store.get(job_id)
        if rec is None or not caller.sees(rec.owner):
            raise JobNotFound(f"no job with id {job_id!r}")
        return rec

    def remaining_s(self, rec: JobRecord, avg_job_s: float | None) -> float | None:
        """Seconds until a running job's file is written (jobs/eta.py), or None when nothing is
        known; ``avg_job_s`` is its variant's average job duration (JobStore.avg_job_seconds)."""
        return running_remaining_s(
            now=self.clock(),
            started_at=rec.started_at,
            step=rec.step,
            total_steps=rec.total_steps,
            step_seconds=rec.step_seconds,
            avg_job_s=avg_job_s,
        )

    def view(self, rec: JobRecord, position: int | None = None) -> JobView:
        """``rec`` as callers see it, with its queue position and ETA as the store has them now.
        The router passes a queued job's ``position`` from its own queue (the same order)."""
        if rec.status == JobStatus.running:
            return self._view(rec, None, self.avg_job_s_of(rec.variant), [])
        if rec.status != JobStatus.queued:
            return JobView.of(rec)
        position = position or self.store.queue_position(rec)
        if position is None:
            return JobView.of(rec)
        avg = self.avg_job_s_of(rec.variant)
        return self._view(rec, position, avg, self.store.running_progress(rec.variant) if avg is not None else [])

    def _view(
        self,
        rec: JobRecord,
        position: int | None,
        avg: float | None,
        running: list[tuple[float | None, int, int, float | None]],
    ) -> JobView:
        """``rec``'s view from what the store says of its queue: its ``position`` (queued jobs), its
        variant's average job ``avg`` (seconds) and ``running`` jobs (JobStore.running_progress)."""
        if rec.status == JobStatus.running:
            return JobView.of(rec, eta_seconds=self.remaining_s(rec, avg))
        if rec.status != JobStatus.queued or position is None:
            return JobView.of(rec)
        now = self.clock()
        eta = queued_eta_s(
            position=position,
            slots=self.slots_of(rec.variant),
            avg_job_s=avg,
            running_left_s=[
                running_remaining_s(
                    now=now,
                    started_at=started_at,
                    step=step,
                    total_steps=total,
                    step_seconds=step_s,
                    avg_job_s=avg,
                )
                or 0.0
                for started_at, step, total, step_s in running
            ]
            if avg is not None
            else [],
        )
        start_s = self.start_delay_of(rec.variant)
        if start_s is not None and eta is not None:
            eta += start_s
        return JobView.of(rec, queue_position=position, eta_seconds=eta, waiting_for_replica=start_s is not None)

    def status(self, job_id: str, caller: Caller = OPEN) -> JobView:
        """The job's view, read in one query (JobStore.get_for_view). Raises JobNotFound (the same
        for another key's job)."""
        found = self.store.get_for_view(job_id)
        if found is None or not caller.sees(found.record.owner):
            raise JobNotFound(f"no job with id {job_id!r}")
        return self._view(found.record, found.queue_position, found.avg_job_s, found.running)

    def page(
        self, after: str | None, limit: int, descending: bool, caller: Caller = OPEN
    ) -> tuple[list[JobView], bool]:
        """A page of the caller's jobs in submission order (newest first when ``descending``) and
        whether more follow.

        Raises:
            JobNotFound: ``after`` names no job of the caller's.
        """
        try:
            records, more = self.store.page(after, limit, descending, caller.scope)
        except KeyError:
            raise JobNotFound(f"no job with id {after!r} to list after") from None
        return [self.view(r) for r in records], more

    def lookup(self, prompt: str, caller: Caller = OPEN) -> JobView:
        """The caller's newest job submitted with exactly ``prompt``. Raises JobNotFound."""
        rec = self.store.newest_with_prompt(prompt, caller.scope)
        if rec is None:
            raise JobNotFound("no job has that prompt")
        return self.view(rec)

    def find_idempotent(self, key: str, request_hash: str, caller: Caller = OPEN) -> JobView | None:
        """The job the caller submitted earlier with Idempotency-Key ``key`` (``replayed``), or None.

        Raises:
            IdempotencyConflict: ``key`` came with a different request (``request_hash``).
        """
        rec = self.store.by_idempotency_key(scoped_key(key, caller.key_id))
        if rec is None:
            return None
        if rec.request_hash != request_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was used for a different request (job {rec.id}); use a new key "
                "for a new request",
                field="Idempotency-Key",
            )
        return self.view(rec).model_copy(update={"replayed": True})

    def load(self, variants: Iterable[str]) -> dict[str, dict[str, int]]:
        """Per variant of ``variants``: ``{"queued": jobs waiting, "running": jobs on a generator}``."""
        counts = self.store.counts()
        return {v: counts.get(v, {"queued": 0, "running": 0}) for v in variants}

    # ---- result files -------------------------------------------------------------------------

    def videos(self, after: str | None = None, limit: int = 100, caller: Caller = OPEN) -> tuple[list[JobView], bool]:
        """A page of the caller's successful jobs whose file was not deleted, oldest first, after
        job ``after``, and whether more follow. Reads the store only (no request per file to the
        object store): a file removed behind the service's back is listed, and its download is 404.

        Raises:
            JobNotFound: ``after`` is not one of them.
        """
        try:
            records, more = self.store.videos_page(after, limit, caller.scope)
        except KeyError:
            raise JobNotFound(f"no video of job {after!r} to list after") from None
        return [JobView.of(r) for r in records], more

    def check_file(self, filename: str, caller: Caller = OPEN) -> str:
        """``filename`` when it is the result file of a successful job of the caller's and still exists.

        Raises:
            FileNotFoundForJob: otherwise (the same for another key's file).
        """
        rec = self.store.filename_owner(filename)
        if (
            rec is None
            or not caller.sees(rec.owner)
            or rec.status != JobStatus.success
            or not self.files.exists(filename)
        ):
            raise FileNotFoundForJob(f"no video named {filename!r}; GET /videos lists them")
        return filename

    # ---- progress events ------------------------------------------------------------------------

    def events(self, job_id: str, after: int = 0, caller: Caller = OPEN) -> EventBatch:
        """The job's events with ids above ``after`` (jobs/events.py), without waiting: its stored
        events, then, while the newest is ``queued``, a queue move when it has moved up since.

        Raises:
            JobNotFound: no such job of the caller's.
        """
        rec = self.get(job_id, caller)
        last = self.store.last_event(job_id)
        if last is None:  # stored without events (before they were kept): its state now, as event 0's move
            state = JobEvent.of(self.view(rec)).model_copy(update={"id": 1})
            return EventBatch(events=[state] if state.id > after else [], done=state.event == "terminal")
        new = self.store.events_after(job_id, after // EVENT_ID_SPAN) if last.id > after else []
        latest = new[-1] if new else last
        if latest.event == "queued" and latest.queue_position is not None:
            now = self.view(rec)
            moved = latest.queue_position - (now.queue_position or latest.queue_position)
            if now.status == JobStatus.queued and moved > 0:
                move = JobEvent.of(now).model_copy(update={"id": latest.id + min(moved, EVENT_ID_SPAN - 1)})
                if move.id > after:
                    new.append(move)
        return EventBatch(events=new, done=latest.event == "terminal")


class EventWatch:
    """Long polls on jobs' events for one process (an ingress replica, or the router's engine in
    tests): one store query every ``poll_s`` seconds for all jobs being waited on, however many
    listeners wait, and a re-read of each waiting listener's job every ``refresh_s`` seconds for
    queue moves. Runs on one event loop; ``inline`` reads on it instead of in worker threads.

    With ``notices_url`` (a PostgreSQL job store), it LISTENs for stored events
    (jobs/event_notices.py) and queries the store when one of a waited-on job is announced, and
    otherwise only every ``notified_poll_s`` seconds; while that connection is down, every
    ``poll_s`` seconds again. ``close()`` stops the listening.
    """

    def __init__(
        self,
        reader: JobReader,
        poll_s: float = EVENT_POLL_S,
        refresh_s: float = QUEUED_REFRESH_S,
        inline: bool = False,
        notices_url: str | None = None,
        notified_poll_s: float = NOTIFIED_POLL_S,
    ) -> None:
        self.reader = reader
        self.inline = inline  # read on the event loop (a local SQLite file), not in a worker thread
        self.poll_s = poll_s
        self.refresh_s = refresh_s
        self.notified_poll_s = notified_poll_s
        self.notices = EventNotices(notices_url, self._notice) if notices_url else None
        self._waiting: dict[str, dict[asyncio.Event, int]] = {}  # job id -> listener -> its stored events seen
        self._poller: asyncio.Task | None = None
        self._nudge: asyncio.Event | None = None  # set (on the loop) when the store should be read now
        self._loop: asyncio.AbstractEventLoop | None = None

    def _notice(self, job_id: str | None) -> None:
        """From the listening thread: an event of ``job_id`` (None: of any job) was stored."""
        loop, nudge = self._loop, self._nudge
        if loop is None or nudge is None or (job_id is not None and job_id not in self._waiting):
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(nudge.set)

    def close(self) -> None:
        """Stop listening for announcements (the long polls fall back to polling)."""
        if self.notices is not None:
            self.notices.stop()

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args) if self.inline else await asyncio.to_thread(fn, *args)

    async def wait(self, job_id: str, after: int = 0, timeout_s: float = 15.0, caller: Caller = OPEN) -> EventBatch:
        """Events of ``job_id`` above id ``after``, waiting up to ``timeout_s`` seconds for one.

        Raises:
            JobNotFound: no such job of the caller's.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        batch = await self._read(self.reader.events, job_id, after, caller)
        if batch.events or batch.done or timeout_s <= 0:
            return batch
        woken = asyncio.Event()
        self._waiting.setdefault(job_id, {})[woken] = after // EVENT_ID_SPAN
        if self._poller is None or self._poller.done():
            self._loop, self._nudge = loop, asyncio.Event()
            self._poller = asyncio.create_task(self._poll())
            if self.notices is not None:
                self.notices.start()
        try:
            while (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(left, self.refresh_s))
                woken.clear()
                batch = await self._read(self.reader.events, job_id, after, caller)
                if batch.events or batch.done:
                    return batch
            return batch
        finally:
            listeners = self._waiting.get(job_id, {})
            listeners.pop(woken, None)
            if not listeners:
                self._waiting.pop(job_id, None)

    async def _poll(self) -> None:
        nudge = self._nudge
        assert nudge is not None
        while self._waiting:
            nudge.clear()  # before the read: an announcement during it asks for another
            try:
                counts = await self._read(self.reader.store.event_counts, list(self._waiting))
            except Exception:  # the store failed: listeners still re-read every refresh_s
                logger.warning("polling the job store for events failed", exc_info=True)
                await asyncio.sleep(self.refresh_s)
                continue
            for job_id, listeners in list(self._waiting.items()):
                stored = counts.get(job_id, 0)
                for woken, seen in listeners.items():
                    if stored > seen:
                        woken.set()
            listening = self.notices is not None and self.notices.listening
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nudge.wait(), self.notified_poll_s if listening else self.poll_s)

"""The job store's reads for one ingress replica: status, listing, lookup, idempotent replays,
downloads' checks, webhook deliveries and event long polls, straight from the job store
(jobs/reader.py), never through the router. So reads scale with ingress replicas, and a router
that is restarting or busy dispatching does not slow them. Nothing here writes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from jobs.events import EventBatch
from jobs.files import ResultFiles
from jobs.model import JobView
from jobs.objects import ObjectStore
from jobs.ownership import OPEN, Caller
from jobs.reader import EventWatch, JobReader
from jobs.store import SqlJobStore
from webhooks.model import WebhookMessage
from webhooks.store import WebhookStore

T = TypeVar("T")


class JobReads:
    """Each call runs the ``JobReader`` call of the same name: on PostgreSQL in a worker thread
    (each query waits on the network), on SQLite on the event loop (an indexed read of a local
    file takes about 0.1 ms, less than the hop to a worker thread and back: bench/queue_depth.py
    measured status at 0.66x a bare echo's throughput with the hop and 0.79x without).

    Args:
        job_store_url: the job store's database (jobs/database.py ``database_url``).
        objects: the object store of results.
        slots: variant -> generator replicas (jobs it runs at once), for queued jobs' ETAs.
        start_delay_of: seconds until a variant's first replica is expected up, None when one runs
            (jobs/reader.py ``replica_start_delay``).
    """

    def __init__(
        self,
        job_store_url: str,
        objects: ObjectStore,
        slots: dict[str, int],
        start_delay_of: Callable[[str], float | None] = lambda variant: None,
    ) -> None:
        self.store = SqlJobStore(job_store_url)
        self.slots = slots
        self.reader = JobReader(
            self.store,
            ResultFiles(objects),
            lambda variant: self.slots.get(variant, 1),
            start_delay_of=start_delay_of,
        )
        self.inline = self.store.db.dialect == "sqlite"
        # On PostgreSQL, long polls hear of each stored event (LISTEN) instead of polling for it.
        self.watch = EventWatch(self.reader, inline=self.inline, notices_url=None if self.inline else self.store.db.url)
        self.webhooks = WebhookStore(self.store.db)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args) if self.inline else await asyncio.to_thread(fn, *args)

    async def status(self, job_id: str, caller: Caller = OPEN) -> JobView:
        """Raises JobNotFound."""
        return await self._run(self.reader.status, job_id, caller)

    async def page(
        self, after: str | None, limit: int, descending: bool, caller: Caller = OPEN
    ) -> tuple[list[JobView], bool]:
        """Raises JobNotFound for an unknown ``after``."""
        return await self._run(self.reader.page, after, limit, descending, caller)

    async def lookup(self, prompt: str, caller: Caller = OPEN) -> JobView:
        """Raises JobNotFound."""
        return await self._run(self.reader.lookup, prompt, caller)

    async def find_idempotent(self, key: str, request_hash: str, caller: Caller = OPEN) -> JobView | None:
        """Raises IdempotencyConflict."""
        return await self._run(self.reader.find_idempotent, key, request_hash, caller)

    async def load(self, variants: list[str]) -> dict[str, dict[str, int]]:
        return await self._run(self.reader.load, variants)

    async def videos(
        self, after: str | None = None, limit: int = 100, caller: Caller = OPEN
    ) -> tuple[list[JobView], bool]:
        """Raises JobNotFound for an unknown ``after``."""
        return await self._run(self.reader.videos, after, limit, caller)

    async def check_file(self, filename: str, caller: Caller = OPEN) -> str:
        """Raises FileNotFoundForJob."""
        return await self._run(self.reader.check_file, filename, caller)

    async def events(self, job_id: str, after: int = 0, timeout_s: float = 15.0, caller: Caller = OPEN) -> EventBatch:
        """A long poll (jobs/reader.py EventWatch). Raises JobNotFound."""
        return await self.watch.wait(job_id, after, timeout_s, caller)

    async def webhook_deliveries(self, job_id: str, caller: Caller = OPEN) -> list[WebhookMessage]:
        """The job's webhook messages, oldest first, each with every delivery attempt. Raises JobNotFound."""

        def read() -> list[WebhookMessage]:
            self.reader.get(job_id, caller)
            return self.webhooks.webhook_messages(job_id)

        return await self._run(read)

"""The job store's reads for one ingress replica: status, listing, lookup, idempotent replays,
downloads' checks, webhook deliveries and event long polls, straight from the job store
(jobs/reader.py), never through the router. So reads scale with ingress replicas, and a router
that is restarting or busy dispatching does not slow them. Nothing here writes."""

from __future__ import annotations

import asyncio

from jobs.events import EventBatch
from jobs.files import ResultFiles
from jobs.model import JobView
from jobs.objects import ObjectStore
from jobs.ownership import OPEN, Caller
from jobs.reader import EventWatch, JobReader
from jobs.store import SqlJobStore
from webhooks.model import WebhookMessage
from webhooks.store import WebhookStore


class JobReads:
    """Each call runs the ``JobReader`` call of the same name in a worker thread (the store's
    driver blocks).

    Args:
        job_store_url: the job store's database (jobs/database.py ``database_url``).
        objects: the object store of results.
        slots: variant -> generator replicas (jobs it runs at once), for queued jobs' ETAs.
    """

    def __init__(self, job_store_url: str, objects: ObjectStore, slots: dict[str, int]) -> None:
        self.store = SqlJobStore(job_store_url)
        self.slots = slots
        self.reader = JobReader(self.store, ResultFiles(objects), lambda variant: self.slots.get(variant, 1))
        self.watch = EventWatch(self.reader)
        self.webhooks = WebhookStore(self.store.db)

    async def status(self, job_id: str, caller: Caller = OPEN) -> JobView:
        """Raises JobNotFound."""
        return await asyncio.to_thread(self.reader.status, job_id, caller)

    async def page(
        self, after: str | None, limit: int, descending: bool, caller: Caller = OPEN
    ) -> tuple[list[JobView], bool]:
        """Raises JobNotFound for an unknown ``after``."""
        return await asyncio.to_thread(self.reader.page, after, limit, descending, caller)

    async def lookup(self, prompt: str, caller: Caller = OPEN) -> JobView:
        """Raises JobNotFound."""
        return await asyncio.to_thread(self.reader.lookup, prompt, caller)

    async def find_idempotent(self, key: str, request_hash: str, caller: Caller = OPEN) -> JobView | None:
        """Raises IdempotencyConflict."""
        return await asyncio.to_thread(self.reader.find_idempotent, key, request_hash, caller)

    async def load(self, variants: list[str]) -> dict[str, dict[str, int]]:
        return await asyncio.to_thread(self.reader.load, variants)

    async def videos(
        self, after: str | None = None, limit: int = 100, caller: Caller = OPEN
    ) -> tuple[list[JobView], bool]:
        """Raises JobNotFound for an unknown ``after``."""
        return await asyncio.to_thread(self.reader.videos, after, limit, caller)

    async def check_file(self, filename: str, caller: Caller = OPEN) -> str:
        """Raises FileNotFoundForJob."""
        return await asyncio.to_thread(self.reader.check_file, filename, caller)

    async def events(self, job_id: str, after: int = 0, timeout_s: float = 15.0, caller: Caller = OPEN) -> EventBatch:
        """A long poll (jobs/reader.py EventWatch). Raises JobNotFound."""
        return await self.watch.wait(job_id, after, timeout_s, caller)

    async def webhook_deliveries(self, job_id: str, caller: Caller = OPEN) -> list[WebhookMessage]:
        """The job's webhook messages, oldest first, each with every delivery attempt. Raises JobNotFound."""

        def read() -> list[WebhookMessage]:
            self.reader.get(job_id, caller)
            return self.webhooks.webhook_messages(job_id)

        return await asyncio.to_thread(read)

"""The router deployment: a thin Ray Serve shell around the job engine (jobs/engine.py), as Ray
Serve's LLMServer wraps its engine. It owns what needs Ray (the generator calls, the watch on their
deployment states) and the loops that drive dispatch and retention. It alone writes the job store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import ray.exceptions
from pydantic import BaseModel, Field, SecretStr
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.fit_plans import FitPlanCache
from deployments.lora_adapters import adapter_set_id
from deployments.replica_status import GeneratorWatch
from jobs.config import DataLayout
from jobs.engine import EngineConfig, JobEngine
from jobs.errors import exception_chain
from jobs.events import EventBatch
from jobs.files import ResultFiles
from jobs.model import JobResult, JobSpec, JobStatus, JobView, ProgressEvent
from jobs.store import SqliteJobStore
from webhooks.model import WebhookMessage
from webhooks.sender import WebhookConfig, WebhookSender
from webhooks.store import WebhookStore

logger = logging.getLogger("ray.serve")

#: Seconds between two looks at the generators' deployment states.
GENERATOR_STATUS_POLL_S = 2.0

#: Longest a queued job waits for the dispatcher to look again, seconds (a timer may fire a hair early).
DISPATCH_POLL_S = 0.5


class RouterConfig(BaseModel):
    """Settings of the router deployment, built by the app builder from its arguments."""

    layout: DataLayout = Field(description="Where the job store, inputs, results and fit plans are.")
    engine: EngineConfig = Field(description="Queue, retention and circuit breaker settings, and slots per variant.")
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig, description="Webhook delivery settings.")
    webhook_secret: SecretStr = Field(description="Standard Webhooks signing secret, 'whsec_' + base64.")


def _replica_died(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) says the generator replica's process went away."""
    return any(isinstance(e, ray.exceptions.RayActorError) for e in exception_chain(exc))


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class Router:
    """One replica. Jobs are dispatched in FIFO order per variant, one per free generator replica."""

    # Ray Serve awaits an async constructor; mypy knows only the synchronous kind.
    async def __init__(self, config: RouterConfig, generators: dict[str, DeploymentHandle]) -> None:  # type: ignore[misc]
        self.config = config
        self.generators = generators
        layout = config.layout
        store = SqliteJobStore(layout.jobs_db)
        self.webhook_store = WebhookStore(store.db)
        self.webhooks = WebhookSender(
            config.webhooks, config.webhook_secret.get_secret_value(), store, self.webhook_store
        )
        self.engine = JobEngine(
            config.engine, store, ResultFiles(layout.outputs), layout.inputs, observers=[self.webhooks]
        )
        self.engine.recover()
        resumed = self.webhooks.resume()
        if resumed:
            logger.info("resending %d webhook messages a previous router had not delivered", resumed)
        self._fit_plans = FitPlanCache()
        self._streams: dict[str, Any] = {}  # job id -> its generator call (a streaming response)
        self._runs: dict[str, asyncio.Task] = {}  # job id -> the task consuming that stream
        self.watch = GeneratorWatch(serve.get_replica_context().app_name, list(generators), GENERATOR_STATUS_POLL_S)
        self._wake = asyncio.Event()
        self._tasks = [asyncio.create_task(loop()) for loop in (self._dispatch_loop, self._purge_loop, self.watch.run)]
        self._wake.set()

    # ---- dispatch -----------------------------------------------------------------------------

    def _variant_ready(self, variant: str) -> bool:
        status = self.watch.statuses.get(variant)
        return status is None or not status.failed  # a failing variant's jobs wait until a replica runs

    def _wake_in(self, seconds: float | None) -> None:
        if seconds is not None:
            asyncio.get_running_loop().call_later(seconds, self._wake.set)

    async def _dispatch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DISPATCH_POLL_S if len(self.engine.queue) else None)
            self._wake.clear()
            for spec in self.engine.dispatchable(self._variant_ready):
                self._runs[spec.id] = asyncio.create_task(self._run(spec))

    async def _run(self, spec: JobSpec) -> None:
        run = self.engine.running[spec.id]
        self.engine.start(spec.id)
        try:
            # A job with LoRA adapters goes to a replica that already has its set loaded (multiplexing).
            set_id = adapter_set_id([lora.name for lora in spec.params.loras])
            handle = self.generators[spec.variant].options(stream=True, multiplexed_model_id=set_id)
            stream = self._streams[spec.id] = handle.generate.remote(spec)
            async for item in stream:
                if run.canceled:
                    break
                if isinstance(item, ProgressEvent):
                    self.engine.progress(spec.id, item)
                elif isinstance(item, JobResult):
                    self.engine.succeeded(spec.id, item)
        except asyncio.CancelledError:
            if not run.canceled:
                raise
        except Exception as exc:  # every job ends in a terminal state, or goes back to the queue
            if not run.canceled:
                self._wake_in(self.engine.failed(spec.id, exc, _replica_died(exc)))
        finally:
            self._streams.pop(spec.id, None)
            self._runs.pop(spec.id, None)
            self._wake_in(self.engine.finish(spec.id))  # when the cooldown ends, the probe goes
            self._wake.set()

    # ---- calls from the ingress -----------------------------------------------------------------

    def _precheck(self, spec: JobSpec) -> None:
        """Refuse a request over its variant's fit plan (RequestTooLarge), or any job while the
        generator cannot start under ``when_unavailable: refuse`` (ModelUnavailable)."""
        self._fit_plans.check(self.config.layout.fit, spec)
        status = self.watch.statuses.get(spec.variant)
        if self.config.engine.queue.when_unavailable == "refuse" and status is not None and status.failed:
            raise status.refusal(spec.variant, retry_after_s=GENERATOR_STATUS_POLL_S * 30)

    async def find_idempotent(self, key: str, request_hash: str) -> JobView | None:
        """See JobEngine.find_idempotent."""
        return self.engine.find_idempotent(key, request_hash)

    async def submit(
        self, spec: JobSpec, idempotency_key: str | None = None, request_hash: str | None = None
    ) -> JobView:
        """Store ``spec`` as a queued job and wake the dispatcher (JobEngine.submit; its errors, and
        RequestTooLarge or ModelUnavailable from the fit and availability checks)."""
        view = self.engine.submit(spec, idempotency_key, request_hash, precheck=self._precheck)
        self._wake.set()
        return view

    async def remix(self, job_id: str, prompt: str) -> JobView:
        """A new job with ``job_id``'s parameters and inputs and a new prompt (JobEngine.remix_spec, submit)."""
        spec = await asyncio.to_thread(self.engine.remix_spec, job_id, prompt)
        view = self.engine.submit(spec, precheck=self._precheck, discard_on_refusal=True)
        self._wake.set()
        return view

    async def status(self, job_id: str) -> JobView:
        """The job with its queue position and ETA. Raises JobNotFound."""
        return self.engine.status(job_id)

    async def page(self, after: str | None, limit: int, descending: bool) -> tuple[list[JobView], bool]:
        """See JobEngine.page."""
        return self.engine.page(after, limit, descending)

    async def lookup(self, prompt: str) -> JobView:
        """See JobEngine.lookup."""
        return self.engine.lookup(prompt)

    async def events(self, job_id: str, after: int = 0, timeout_s: float = 15.0) -> EventBatch:
        """See JobEngine.events."""
        return await self.engine.events(job_id, after, timeout_s)

    async def cancel(self, job_id: str) -> JobView:
        """Cancel a queued or running job; it ends ``canceled`` and writes no file.

        A queued job is removed before it reaches a generator; a running one stops after
        its current denoising step. Terminal jobs are returned unchanged. Raises JobNotFound.
        """
        if self.engine.cancel(job_id) is not None:
            if (stream := self._streams.get(job_id)) is not None:
                stream.cancel()
            if (task := self._runs.get(job_id)) is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._wake.set()
        return self.engine.status(job_id)

    async def delete_jobs(
        self,
        ids: list[str] | None = None,
        status: JobStatus | None = None,
        all_jobs: bool = False,
        delete_files: bool = False,
    ) -> dict:
        """Cancel the selected queued and running jobs, then remove every selected job.

        Returns ``{"deleted": [ids], "canceled": [ids], "files_deleted": [filenames]}``.
        """
        selected = self.engine.select(ids, status, all_jobs)
        canceled = [rec.id for rec in selected if not rec.status.terminal]
        for job_id in canceled:
            await self.cancel(job_id)
        files = self.engine.delete(selected, delete_files)
        return {"deleted": [r.id for r in selected], "canceled": canceled, "files_deleted": files}

    async def videos(self) -> list[JobView]:
        """Successful jobs whose file still exists, oldest first."""
        return self.engine.videos()

    async def delete_videos(
        self, filenames: list[str] | None = None, ids: list[str] | None = None, all_videos: bool = False
    ) -> dict:
        """Delete result files (the jobs stay, marked file_deleted). Returns ``{"files_deleted": [...]}``."""
        return {"files_deleted": self.engine.delete_videos(filenames, ids, all_videos)}

    async def check_file(self, filename: str) -> str:
        """``filename`` when this service wrote it and it still exists. Raises FileNotFoundForJob."""
        return self.engine.check_file(filename)

    async def webhook_deliveries(self, job_id: str) -> list[WebhookMessage]:
        """The job's webhook messages, oldest first, each with every delivery attempt. Raises JobNotFound."""
        self.engine.status(job_id)
        return self.webhook_store.webhook_messages(job_id)

    async def purge(self) -> dict:
        """Apply retention now (JobEngine.purge)."""
        return self.engine.purge()

    async def process_info(self) -> dict:
        """``{"pid": ...}`` of the router's process (fault tests kill it with os.kill)."""
        return {"pid": os.getpid()}

    # ---- background loops -----------------------------------------------------------------------

    async def _purge_loop(self) -> None:
        while True:
            try:
                self.engine.purge()
            except Exception:  # a failed purge must not stop the next one
                logger.exception("retention purge failed")
            await asyncio.sleep(self.config.engine.retention.purge_interval_s)

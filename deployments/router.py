"""The router deployment: a thin Ray Serve shell around the job engine (jobs/engine.py), as Ray
Serve's LLMServer wraps its engine. It owns what needs Ray (the generator calls, the watch on their
deployment states) and the loops that drive dispatch and retention. It alone writes the job store."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from auth.keys import KeyStore
from auth.signed_urls import UrlSigner, derive_key
from deployments.faults import ROUTER, FaultSwitch, StoreFaults
from deployments.fit_plans import FitPlanCache
from deployments.lora_adapters import adapter_set_id
from deployments.metrics import RaySink
from deployments.replica_status import GENERATOR_STATUS_POLL_S, GeneratorWatch, replica_died
from deployments.router_config import RouterConfig
from deployments.router_health import RouterHealth
from jobs.engine import JobEngine
from jobs.files import ResultFiles
from jobs.log_context import install_job_fields, job_context
from jobs.metrics import JobMetrics
from jobs.model import JobResult, JobSpec, JobStatus, JobView, ProgressEvent
from jobs.objects import ObjectStore
from jobs.ownership import OPEN, Caller
from jobs.store import SqlJobStore
from webhooks.sender import WebhookSender
from webhooks.store import WebhookStore

logger = logging.getLogger("ray.serve")

#: Longest a queued job waits for the dispatcher to look again, seconds (a timer may fire a hair early).
DISPATCH_POLL_S = 0.5

#: Seconds before a store call that failed (full disk, locked, I/O error) is tried again.
STORE_RETRY_S = 1.0
#: Seconds between refreshes of the queue and replica gauges.
GAUGE_PERIOD_S = 2.0

#: A key's last_used_at is written at most this often, seconds: a busy key would otherwise write
#: the store on every request.
KEY_TOUCH_S = 60.0


# check_health every 5 s (Serve's default is 10; it replaces a replica after 3 failed checks).
@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}, health_check_period_s=5)
class Router:
    """One replica. Jobs are dispatched in FIFO order per variant, one per free generator replica."""

    # Ray Serve awaits an async constructor; mypy knows only the synchronous kind.
    async def __init__(self, config: RouterConfig, generators: dict[str, DeploymentHandle]) -> None:  # type: ignore[misc]
        install_job_fields()
        self.config = config
        self.generators = generators
        hooks = StoreFaults(FaultSwitch(config.fault_file, ROUTER)) if config.fault_file else None
        store = SqlJobStore(config.job_store_url.get_secret_value(), hooks)
        self.webhook_store = WebhookStore(store.db)
        self.keys = KeyStore(store.db)
        self._touched: dict[str, float] = {}
        secret = config.webhook_secret.get_secret_value()
        # Receivers get a signed file_url: a third party holds no API key.
        signer = UrlSigner(derive_key(secret, "file-urls"), config.file_url_ttl_s)
        self.sink = RaySink()
        self.metrics = JobMetrics(self.sink)
        self.webhooks = WebhookSender(
            config.webhooks, secret, store, self.webhook_store, url_signer=signer, metrics=self.sink
        )
        self.engine = JobEngine(
            config.engine,
            store,
            ResultFiles(ObjectStore(config.storage_url)),
            observers=[self.webhooks],
            quotas_of=self.keys.quotas,
            metrics=self.metrics,
            replica_running=lambda variant: self.watch.replica_running(variant),
        )
        self.engine.recover()  # takes the store's lease: a router still draining stops dispatching
        resumed = self.webhooks.resume()
        if resumed:
            logger.info("resending %d webhook messages a previous router had not delivered", resumed)
        self._fit_plans = FitPlanCache(self.engine.objects)
        self._streams: dict[str, Any] = {}  # job id -> its generator call (a streaming response)
        self._runs: dict[str, asyncio.Task] = {}  # job id -> the task consuming that stream
        self.watch = GeneratorWatch(serve.get_replica_context().app_name, list(generators))
        self.health = RouterHealth()
        self._wake = asyncio.Event()
        self.health.loops = [
            asyncio.create_task(f()) for f in (self._dispatch_loop, self._purge_loop, self.watch.run, self._gauge_loop)
        ]
        self._wake.set()

    def check_health(self) -> None:
        """Serve's health check (RouterHealth.check): Serve replaces a router that fails it."""
        self.health.fenced = self.engine.fenced
        self.health.check(self.webhook_store.db.last_write_ok)  # the database both stores share

    # ---- dispatch -----------------------------------------------------------------------------

    def _wake_in(self, seconds: float | None) -> None:
        if seconds is not None:
            asyncio.get_running_loop().call_later(seconds, self._wake.set)

    async def _dispatch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DISPATCH_POLL_S if len(self.engine.queue) else None)
            self._wake.clear()
            try:
                specs = self.engine.dispatchable(self.watch.ready)
            except Exception as exc:  # the store failed: the jobs stay queued; check_health tracks it
                self.health.store_failed(exc)
                self._wake_in(STORE_RETRY_S)
                continue
            for spec in specs:
                task = self._runs[spec.id] = asyncio.create_task(self._run(spec))
                # Settled by a done-callback: it runs even for a task canceled before its first step.
                task.add_done_callback(functools.partial(self._settle, spec.id))

    async def _run(self, spec: JobSpec) -> None:
        with job_context(spec.id, spec.variant):  # this task's log lines name the job
            await self._run_job(spec)

    async def _run_job(self, spec: JobSpec) -> None:
        run, called, started = self.engine.running[spec.id], False, False
        try:
            # A job with LoRA adapters goes to a replica that already has its set loaded (multiplexing).
            set_id = adapter_set_id([lora.name for lora in spec.params.loras])
            handle = self.generators[spec.variant].options(stream=True, multiplexed_model_id=set_id)
            # The call may wait at the handle for a replica (all busy, or one being started by
            # autoscaling, which counts such calls): the job stays queued until a replica takes it.
            stream = self._streams[spec.id] = handle.generate.remote(spec)
            called = True
            async for item in stream:
                if not started:  # the replica's first event: it has the job
                    try:
                        self.engine.start(spec.id, getattr(item, "gpu_id", None))
                    except Exception:  # unwritten, so it did not start: stop the replica's run
                        stream.cancel()
                        called = False
                        raise
                    started = True
                    if isinstance(item, ProgressEvent) and item.step == 0:
                        continue
                if isinstance(item, ProgressEvent):
                    self.engine.progress(spec.id, item)
                elif isinstance(item, JobResult):
                    self.engine.succeeded(spec.id, item)
                if run.canceled:
                    break
        except asyncio.CancelledError:
            if not run.canceled:
                raise
        except Exception as exc:  # every job ends in a terminal state, or goes back to the queue
            if run.canceled or run.result is not None:  # a result whose write failed: the settle retries it
                return
            try:
                if called:
                    if not started:  # the replica refused it before any event: that was its attempt
                        self.engine.start(spec.id)
                    self._wake_in(self.engine.failed(spec.id, exc, replica_died(exc)))
                else:  # the store failed before the job started: back to the front, no attempt spent
                    self.health.store_failed(exc)
                    self._wake_in(STORE_RETRY_S)
                    self.engine.hand_back(spec.id, STORE_RETRY_S)
            except Exception as store_exc:  # the settle below retries until the job's state is written
                self.health.store_failed(store_exc)

    def _settle(self, job_id: str, _task: object = None) -> None:
        """Free the job's slot once its state is written (JobEngine.finish), retrying a failing store."""
        self._streams.pop(job_id, None)
        self._runs.pop(job_id, None)
        try:
            self._wake_in(self.engine.finish(job_id))  # when the cooldown ends, the probe goes
        except Exception as exc:
            self.health.store_failed(exc)
            asyncio.get_running_loop().call_later(STORE_RETRY_S, self._settle, job_id)
        self._wake.set()

    # ---- calls from the ingress -----------------------------------------------------------------

    def _precheck(self, spec: JobSpec) -> None:
        """Refuse a request over its variant's fit plan (RequestTooLarge), or any job while the
        generator cannot start under ``when_unavailable: refuse`` (ModelUnavailable)."""
        self._fit_plans.check(spec)
        status = self.watch.statuses.get(spec.variant)
        if self.config.engine.queue.when_unavailable == "refuse" and status is not None and status.failed:
            raise status.refusal(spec.variant, retry_after_s=GENERATOR_STATUS_POLL_S * 30)

    # Every call below takes the caller (jobs/ownership.py) and sees only that caller's jobs.

    async def authenticate(self, digest: str) -> Caller | None:
        """The caller of the live API key whose SHA-256 is ``digest`` (hex), or None."""
        key = await asyncio.to_thread(self.keys.authenticate, digest)
        if key is None:
            return None
        now = asyncio.get_running_loop().time()
        if now - self._touched.get(key.id, -KEY_TOUCH_S) >= KEY_TOUCH_S:
            self._touched[key.id] = now
            await asyncio.to_thread(self.keys.touch, key.id, self.engine.clock())
        return key.caller()

    async def key_count(self, include_revoked: bool = False) -> int:
        """How many API keys are live, or were ever made (KeyStore.count)."""
        return await asyncio.to_thread(self.keys.count, include_revoked)

    async def submit(
        self,
        spec: JobSpec,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        caller: Caller = OPEN,
    ) -> JobView:
        """Store ``spec`` as a queued job of ``caller`` and wake the dispatcher (JobEngine.submit; its
        errors, and RequestTooLarge or ModelUnavailable from the fit and availability checks)."""
        view = self.engine.submit(spec, idempotency_key, request_hash, precheck=self._precheck, caller=caller)
        self._wake.set()
        return view

    async def remix(self, job_id: str, prompt: str, caller: Caller = OPEN) -> JobView:
        """A new job with ``job_id``'s parameters and inputs and a new prompt (JobEngine.remix_spec, submit)."""
        spec = await asyncio.to_thread(self.engine.remix_spec, job_id, prompt, caller)
        view = self.engine.submit(spec, precheck=self._precheck, discard_on_refusal=True, caller=caller)
        self._wake.set()
        return view

    async def cancel(self, job_id: str, caller: Caller = OPEN) -> JobView:
        """Cancel a queued or running job; it ends ``canceled`` and writes no file.

        A queued job is removed before it reaches a generator; a running one stops after
        its current denoising step. Terminal jobs are returned unchanged. Raises JobNotFound.
        """
        if self.engine.cancel(job_id, caller) is not None:
            if (stream := self._streams.get(job_id)) is not None:
                stream.cancel()
            if (task := self._runs.get(job_id)) is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._wake.set()
        return self.engine.status(job_id, caller)

    async def delete_jobs(
        self,
        ids: list[str] | None = None,
        status: JobStatus | None = None,
        all_jobs: bool = False,
        delete_files: bool = False,
        caller: Caller = OPEN,
    ) -> dict:
        """See JobEngine.delete_jobs (which cancels through this router)."""
        return await self.engine.delete_jobs(ids, status, all_jobs, delete_files, cancel=self.cancel, caller=caller)

    async def delete_videos(
        self,
        filenames: list[str] | None = None,
        ids: list[str] | None = None,
        all_videos: bool = False,
        caller: Caller = OPEN,
    ) -> dict:
        """Delete result files (the jobs stay, marked file_deleted). Returns ``{"files_deleted": [...]}``."""
        return {"files_deleted": self.engine.delete_videos(filenames, ids, all_videos, caller)}

    async def purge(self) -> dict:
        """Apply retention now (JobEngine.purge)."""
        return self.engine.purge()

    async def process_info(self) -> dict:
        """``{"pid", "node_id"}`` of the router's process (fault tests kill it with os.kill)."""
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    # ---- background loops -----------------------------------------------------------------------

    def gauges(self) -> dict[str, dict[str, int]]:
        """Per variant: queued and running jobs, and target and live generator replicas. The target
        of a variant that autoscales is what its queue asks Ray Serve for: its queued and running
        jobs, between min_replicas and max_replicas; else its fixed replica count."""
        load = self.engine.load()
        out: dict[str, dict[str, int]] = {}
        for variant, counts in load.items():
            status = self.watch.statuses.get(variant)
            target = slots = self.config.engine.slots[variant]
            if (low := self.config.min_replicas.get(variant)) is not None:
                target = min(max(counts["queued"] + counts["running"], low), slots)
            out[variant] = {
                "queued": counts["queued"],
                "running": counts["running"],
                "target": target,
                "live": status.running_replicas if status is not None else 0,
            }
        return out

    async def _gauge_loop(self) -> None:
        """Refresh the queue and replica gauges every GAUGE_PERIOD_S (Ray exports every 10 s by default)."""
        while True:
            for variant, g in self.gauges().items():
                self.sink.set("queue_depth", {"variant": variant}, g["queued"])
                self.sink.set("running_jobs", {"variant": variant}, g["running"])
                self.sink.set("replicas", {"variant": variant, "kind": "target"}, g["target"])
                self.sink.set("replicas", {"variant": variant, "kind": "live"}, g["live"])
            await asyncio.sleep(GAUGE_PERIOD_S)

    async def metrics_snapshot(self) -> dict:
        """What ``GET /metrics`` serves: jobs submitted and ended since this router started, and the
        gauges (``gauges``)."""
        return {
            "submitted": dict(self.metrics.submitted_total),
            "ended": [[*key, count] for key, count in self.metrics.ended_total.items()],
            "gauges": self.gauges(),
        }

    async def _purge_loop(self) -> None:
        while True:
            try:
                self.engine.purge()
            except Exception:  # a failed purge must not stop the next one
                logger.exception("retention purge failed")
            await asyncio.sleep(self.config.engine.retention.purge_interval_s)

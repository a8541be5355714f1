"""The router deployment: owns the FIFO job queue, backpressure, dispatch to the generators and
progress. It is the only writer of the job store."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import ray.exceptions
from pydantic import BaseModel, Field, SecretStr
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.circuit_breaker import CircuitBreaker, CircuitConfig
from deployments.errors import (
    FileNotFoundForJob,
    FilenameTaken,
    IdempotencyConflict,
    JobNotFound,
    ModelUnavailable,
    QueueFull,
    ReplicaFailed,
    ServiceError,
    VariantNotDeployed,
    unwrap,
)
from deployments.fit_plans import FitPlanCache, check_request_fits
from deployments.lora_adapters import adapter_set_id
from deployments.job_inputs import kept_for_remix, remove_inputs
from deployments.job_store import JobRecord, JobStore
from deployments.jobs import JobResult, JobSpec, JobStatus, Phase, ProgressEvent, job_progress
from deployments.replica_status import GeneratorStatus, generator_statuses
from deployments.webhooks import WebhookConfig, WebhookSender

logger = logging.getLogger("ray.serve")


class RouterConfig(BaseModel):
    """Settings of the router deployment (from the app builder's arguments)."""

    db_path: str = Field(description="SQLite job store file.")
    output_dir: str = Field(description="Folder the generators write result files to.")
    inputs_dir: str = Field(description="Folder of the jobs' decoded inputs; a job's folder goes when the job ends.")
    max_queued_jobs: int = Field(ge=0, description="Jobs allowed to wait; one more gets HTTP 429 (backpressure).")
    slots: dict[str, int] = Field(description="Variant -> generator replicas, i.e. jobs it may run at once.")
    retry_after_s: int = Field(default=30, ge=1, description="Retry-After when no job duration has been measured yet, seconds.")
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig, description="Webhook delivery settings.")
    webhook_secret: SecretStr = Field(description="Standard Webhooks signing secret, 'whsec_' + base64.")
    max_attempts: int = Field(
        default=3, ge=1, description="Times a job may be dispatched: a job whose replica died, or that was running "
        "when the router restarted, goes back to the queue until it has run this many times.")
    circuit_breaker: CircuitConfig = Field(default_factory=CircuitConfig, description="Per-variant circuit breaker.")
    retention_days: float | None = Field(
        default=None, gt=0, description="Ended jobs older than this many days are purged with their files; None keeps them.")
    max_output_bytes: int | None = Field(
        default=None, gt=0, description="Result files beyond this many bytes in all are deleted, oldest first; None: no cap.")
    purge_interval_s: float = Field(default=600.0, gt=0, description="Seconds between two retention purges.")
    fit_dir: str | None = Field(
        default=None, description="Folder where generators write their fit plans (<variant>.json); requests "
        "that would not fit are refused before queueing. None: no such check here.")
    when_unavailable: Literal["queue", "refuse"] = Field(
        default="queue", description="For a variant whose generator cannot start (e.g. missing or corrupt weights): "
        "queue: its jobs are accepted and wait; refuse: they get 503 model_unavailable with the reason.")

#: Seconds between two looks at the generators' deployment states.
GENERATOR_STATUS_POLL_S = 2.0

#: Longest a queued job waits for the dispatcher to look again, seconds.
DISPATCH_POLL_S = 0.5

#: Seconds a variant's dispatch pauses after a broken replica handed a job back untouched.
REFUSED_PAUSE_S = 1.0

#: Error codes that say the variant, not the request, failed: they count toward the circuit breaker.
VARIANT_FAILURE_CODES = frozenset({"internal", "model_unavailable", "disk_full"})


class JobView(BaseModel):
    """A job as callers see it: its record plus live queue position and ETA."""

    record: JobRecord
    queue_position: int | None = Field(default=None, description="1 = next of its variant to start; None unless queued.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds until the file is written.")
    replayed: bool = Field(default=False, description="True when an Idempotency-Key matched an existing job.")


class _EventLog:
    """A job's progress events, in order, for SSE and WebSocket listeners to read and resume."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.changed = asyncio.Event()
        self.done = False


#: Event logs kept in memory; the oldest logs of ended jobs go first beyond this many.
MAX_EVENT_LOGS = 1000


class _Running:
    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.task: asyncio.Task | None = None
        self.stream = None
        self.canceled = False


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class Router:
    """One replica. Jobs are dispatched in FIFO order per variant, one per free generator replica."""

    async def __init__(self, config: RouterConfig, generators: dict[str, DeploymentHandle]) -> None:
        self.config = config
        self.generators = generators
        self.store = JobStore(Path(config.db_path))
        self._fit_plans = FitPlanCache()
        self.output_dir = Path(config.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, _Running] = {}
        self.queue: list[str] = []
        self._variant_of: dict[str, str] = {}  # for queued jobs only
        self._logs: OrderedDict[str, _EventLog] = OrderedDict()
        self.breakers = {v: CircuitBreaker(config.circuit_breaker) for v in generators}
        self._paused_until: dict[str, float] = {}  # variant -> monotonic time its dispatch resumes
        self.webhooks = WebhookSender(config.webhooks, config.webhook_secret.get_secret_value(), self.store)
        # A job that was running when a router died goes back to the queue, in FIFO order,
        # unless it has had all its attempts.
        for rec in self.store.by_status([JobStatus.running]):
            if rec.attempts >= config.max_attempts:
                self._update(rec.id, status=JobStatus.error, error_code="internal", finished_at=time.time(),
                             error_message=f"the job was running when the service stopped, {rec.attempts} times "
                             f"(max_attempts={config.max_attempts}); it was not retried again")
                remove_inputs(rec.spec.inputs, Path(config.inputs_dir))
            else:
                self.store.update(rec.id, status=JobStatus.queued, phase=None, step=0)
        queued = self.store.by_status([JobStatus.queued])
        self.queue = [r.id for r in queued]
        self._variant_of = {r.id: r.variant for r in queued}
        resumed = self.webhooks.resume()
        if resumed:
            logger.info("resending %d webhook messages a previous router had not delivered", resumed)
        self._wake = asyncio.Event()
        self._dispatcher = asyncio.create_task(self._dispatch_loop())
        self._purger = asyncio.create_task(self._purge_loop())
        self._generator_status: dict[str, GeneratorStatus] = {}
        self._status_watch = asyncio.create_task(self._watch_generators())
        self._wake.set()

    # ---- progress events ----------------------------------------------------------------

    def _update(self, job_id: str, **fields) -> None:
        """Write ``fields`` to the job's row, then record the change as an event (and webhook)."""
        self.store.update(job_id, **fields)
        rec = self.store.get(job_id)
        if rec is not None:
            self._record(rec)
            if rec.spec.webhook is not None:
                self.webhooks.notify(rec, self._event(rec))

    def _event(self, rec: JobRecord) -> dict:
        """The progress event of ``rec``'s current state (without its log ``id``)."""
        view = self._view(rec)
        if rec.status.terminal:
            kind = "terminal"
        elif rec.status == JobStatus.queued:
            kind = "queued"
        elif rec.phase == Phase.denoising.value and rec.step:
            kind = "step"
        else:
            kind = "phase"
        event = {"event": kind, "status": rec.status.value,
                 "phase": rec.phase if rec.status == JobStatus.running else None,
                 "step": rec.step, "total_steps": rec.total_steps, "progress": job_progress(rec),
                 "eta_seconds": view.eta_seconds, "queue_position": view.queue_position}
        if rec.status.terminal:
            event["error"] = {"code": rec.error_code, "message": rec.error_message} if rec.error_code else None
            event["filename"] = rec.filename if rec.status == JobStatus.success else None
        return event

    def _record(self, rec: JobRecord, log: _EventLog | None = None) -> None:
        """Append an event for ``rec``'s current state to its log, unless nothing a listener sees changed."""
        log = log or self._logs.get(rec.id)
        if log is None:
            return
        event = self._event(rec)
        if log.items and all(log.items[-1][k] == event[k] for k in ("status", "phase", "step", "queue_position")):
            return
        log.items.append({"id": len(log.items) + 1, **event})
        log.done = rec.status.terminal
        log.changed.set()
        log.changed = asyncio.Event()

    def _open_log(self, rec: JobRecord) -> _EventLog:
        log = self._logs[rec.id] = _EventLog()
        self._record(rec, log)
        while len(self._logs) > MAX_EVENT_LOGS:
            oldest = next((k for k, v in self._logs.items() if v.done), None)
            if oldest is None:
                break
            del self._logs[oldest]
        return log

    async def events(self, job_id: str, after: int = 0, timeout_s: float = 15.0) -> dict:
        """Events of ``job_id`` with ids above ``after``, waiting up to ``timeout_s`` seconds for one.

        Returns ``{"events": [...], "done": bool}``; ``done`` is true once the terminal event has
        been returned. Each event: ``id`` (1, 2, ...), ``event`` (queued, phase, step, terminal),
        ``status``, ``phase``, ``step``, ``total_steps``, ``progress`` (0..1), ``eta_seconds``,
        ``queue_position``, and for the terminal event ``error`` and ``filename``. Nothing is
        computed for a job nobody asks about beyond appending to its log. A log that is not in
        memory (router restarted, or evicted) starts again from a snapshot of the stored job.

        Raises:
            JobNotFound: no such job.
        """
        log = self._logs.get(job_id)
        if log is None:
            log = self._open_log(self._get(job_id))
        new = [e for e in log.items if e["id"] > after]
        if not new and not log.done:
            try:
                await asyncio.wait_for(log.changed.wait(), timeout_s)
            except TimeoutError:
                pass
            new = [e for e in log.items if e["id"] > after]
            if not new and log.items and log.items[-1]["event"] == "queued":
                rec = self.store.get(job_id)  # queue positions move without an update of this job
                if rec is not None:
                    self._record(rec, log)
                    new = [e for e in log.items if e["id"] > after]
        seen_up_to = new[-1]["id"] if new else after
        return {"events": new, "done": log.done and seen_up_to >= log.items[-1]["id"]}

    # ---- queue and dispatch -------------------------------------------------------------

    def _queued_of(self, variant: str) -> list[str]:
        return [j for j in self.queue if self._variant_of[j] == variant]

    def _running_of(self, variant: str) -> list[_Running]:
        return [r for r in self.running.values() if r.spec.variant == variant]

    async def _dispatch_loop(self) -> None:
        while True:
            # Woken by every change; with jobs waiting, also every DISPATCH_POLL_S, so a pause or a
            # cooldown that ends is noticed even if its timer fired a hair early.
            try:
                await asyncio.wait_for(self._wake.wait(), DISPATCH_POLL_S if self.queue else None)
            except TimeoutError:
                pass
            self._wake.clear()
            for job_id in list(self.queue):
                variant = self._variant_of[job_id]
                if len(self._running_of(variant)) >= self.config.slots.get(variant, 0):
                    continue
                if time.monotonic() < self._paused_until.get(variant, 0.0):
                    continue
                status = self._generator_status.get(variant)
                if status is not None and status.failed:  # its jobs wait until a replica runs
                    continue
                if not self.breakers[variant].may_dispatch():
                    continue
                self.queue.remove(job_id)
                self._variant_of.pop(job_id, None)
                rec = self.store.get(job_id)
                if rec is None or rec.status != JobStatus.queued:
                    continue
                self.breakers[variant].started()
                run = _Running(rec.spec)
                self.running[job_id] = run
                run.task = asyncio.create_task(self._run(run))
                for waiting in self._queued_of(variant):  # everyone behind it moved up one place
                    if waiting in self._logs and (queued := self.store.get(waiting)) is not None:
                        self._record(queued)

    async def _run(self, run: _Running) -> None:
        spec = run.spec
        breaker = self.breakers[spec.variant]
        started = time.time()
        attempts = self.store.get(spec.id).attempts + 1
        self._update(spec.id, status=JobStatus.running, phase=Phase.loading.value, started_at=started,
                     attempts=attempts)
        try:
            # A job with LoRA adapters goes to a replica that already has its set loaded (multiplexing).
            set_id = adapter_set_id([lora.name for lora in spec.params.loras])
            run.stream = self.generators[spec.variant].options(stream=True, multiplexed_model_id=set_id
                                                               ).generate.remote(spec)
            async for item in run.stream:
                if run.canceled:
                    break
                if isinstance(item, ProgressEvent):
                    fields = dict(phase=item.phase.value, step=item.step, total_steps=item.total_steps,
                                  gpu_id=item.gpu_id)
                    if item.step_seconds is not None:  # phases after denoising keep the measured step time
                        fields["step_seconds"] = item.step_seconds
                    self._update(spec.id, **fields)
                elif isinstance(item, JobResult):
                    finished = time.time()
                    self._update(spec.id, status=JobStatus.success, phase=None, filename=item.filename,
                                 result=item.model_dump(), finished_at=finished, gpu_id=item.gpu_id)
                    self.store.record_job_seconds(spec.variant, finished - started)
                    breaker.succeeded()
        except asyncio.CancelledError:
            if not run.canceled:
                raise
        except Exception as exc:  # every job ends in a terminal state, or goes back to the queue
            if not run.canceled:
                self._failed(spec, exc, attempts)
        finally:
            rec = self.store.get(spec.id)
            if rec is not None and rec.status == JobStatus.running and not run.canceled:
                self._update(spec.id, status=JobStatus.error, error_code="internal",
                             error_message="the generator stream ended without a result", finished_at=time.time())
                breaker.failed("the generator stream ended without a result")
            if run.canceled:
                breaker.neutral()
            self.running.pop(spec.id, None)
            rec = self.store.get(spec.id)
            if rec is None or (rec.status.terminal and not (
                    rec.status == JobStatus.success and kept_for_remix(spec.inputs))):
                remove_inputs(spec.inputs, Path(self.config.inputs_dir))
            if breaker.refusing():  # look again when the cooldown ends: the probe goes then
                asyncio.get_running_loop().call_later(breaker.retry_after_s(), self._wake.set)
            self._wake.set()

    def _requeue_first(self, spec: JobSpec) -> None:
        """Put a job that was running back at the front of the queue: it was the oldest of its
        variant when it started."""
        self.queue.insert(0, spec.id)
        self._variant_of[spec.id] = spec.variant
        self._update(spec.id, status=JobStatus.queued, phase=None, step=0)

    def _failed(self, spec: JobSpec, exc: BaseException, attempts: int) -> None:
        """End (or requeue) a job whose generator call raised ``exc``, and tell the breaker."""
        breaker = self.breakers[spec.variant]
        inner = unwrap(exc)
        if isinstance(inner, ReplicaFailed) and inner.details.get("started") is False:
            # A broken replica refused it before any work: no attempt spent; the variant pauses
            # briefly so the job does not bounce off that replica until Serve replaces it.
            breaker.neutral()
            self.store.update(spec.id, attempts=attempts - 1)
            self._requeue_first(spec)
            self._paused_until[spec.variant] = time.monotonic() + REFUSED_PAUSE_S
            asyncio.get_running_loop().call_later(REFUSED_PAUSE_S, self._wake.set)
            return
        if isinstance(inner, ReplicaFailed) or _replica_died(exc):
            reason = inner.message if isinstance(inner, ReplicaFailed) else "the generator replica died"
            breaker.failed(reason)
            logger.warning("job %s: %s (attempt %d of %d)", spec.id, reason, attempts, self.config.max_attempts)
            if attempts < self.config.max_attempts:
                self._requeue_first(spec)
                return
            self._update(spec.id, status=JobStatus.error, error_code=ReplicaFailed.code, finished_at=time.time(),
                         error_message=f"{reason}, on each of {attempts} attempts (max_attempts="
                         f"{self.config.max_attempts}); the operator should check the {spec.variant} replicas")
            return
        if isinstance(inner, ServiceError):
            code, message = inner.code, inner.message
        else:
            logger.error("job %s failed", spec.id, exc_info=exc)
            code = "internal"
            message = f"generation failed ({type(inner).__name__}); the server log has details"
        if code in VARIANT_FAILURE_CODES:
            breaker.failed(message)
        else:
            breaker.neutral()
        self._update(spec.id, status=JobStatus.error, error_code=code, error_message=message, finished_at=time.time())

    # ---- ETA ------------------------------------------------------------------------------

    def _remaining_seconds(self, run: _Running) -> float | None:
        rec = self.store.get(run.spec.id)
        avg = self.store.avg_job_seconds(run.spec.variant)
        left_by_avg = max(avg - (time.time() - rec.started_at), 0.0) if avg is not None and rec.started_at else None
        if rec.step_seconds and rec.total_steps:
            left_by_steps = rec.step_seconds * (rec.total_steps - rec.step)
            # The decode and the encode follow the last step; the average job time covers them.
            return max(left_by_steps, left_by_avg or 0.0)
        return left_by_avg

    def _view(self, rec: JobRecord) -> JobView:
        if rec.status == JobStatus.running and rec.id in self.running:
            return JobView(record=rec, eta_seconds=self._remaining_seconds(self.running[rec.id]))
        if rec.status != JobStatus.queued or rec.id not in self.queue:
            return JobView(record=rec)
        ahead = self._queued_of(rec.variant)
        position = ahead.index(rec.id) + 1
        avg = self.store.avg_job_seconds(rec.variant)
        eta = None
        if avg is not None:
            slots = max(self.config.slots.get(rec.variant, 1), 1)
            running = [self._remaining_seconds(r) or 0.0 for r in self._running_of(rec.variant)]
            # Waits for a free replica (the soonest running job, if all are busy), then for the
            # queued jobs ahead of it in rounds of `slots`, then runs itself.
            wait_free = min(running) if len(running) >= slots else 0.0
            eta = wait_free + avg * (math.ceil(position / slots) - 1) + avg
        return JobView(record=rec, queue_position=position, eta_seconds=eta)

    # ---- calls from the ingress -----------------------------------------------------------

    async def find_idempotent(self, key: str, request_hash: str) -> JobView | None:
        """The job submitted earlier with Idempotency-Key ``key``, or None.

        Raises:
            IdempotencyConflict: ``key`` came with a different request.
        """
        rec = self.store.by_idempotency_key(key)
        if rec is None:
            return None
        if rec.request_hash != request_hash:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was used for a different request (job {rec.id}); use a new key "
                "for a new request", field="Idempotency-Key")
        return self._view(rec).model_copy(update={"replayed": True})

    def _check_fit(self, spec: JobSpec) -> None:
        """Refuse ``spec`` when its variant's fit plan (written by its replicas at load) says it would not fit.

        Raises:
            RequestTooLarge: with the largest frame count that fits at its size.
        """
        if self.config.fit_dir is None:
            return
        plan = self._fit_plans.get(Path(self.config.fit_dir) / f"{spec.variant}.json")
        if plan is not None:
            check_request_fits(plan, spec)

    async def submit(self, spec: JobSpec, idempotency_key: str | None = None,
                     request_hash: str | None = None) -> JobView:
        """Store ``spec`` as a queued job and wake the dispatcher. With ``idempotency_key``, a
        key seen before returns that job instead (``replayed``), and stores nothing.

        Raises:
            VariantNotDeployed: no generator serves ``spec.variant``.
            ModelUnavailable: the variant's circuit breaker is open (``retry_after_s`` says when to retry).
            QueueFull: ``max_queued_jobs`` jobs are already waiting.
            FilenameTaken: another live job or file already uses ``spec.filename``.
            IdempotencyConflict: ``idempotency_key`` came with a different request before.
            RequestTooLarge: the variant's replicas would not have the memory for it (fit check).
        """
        if spec.variant not in self.generators:
            raise VariantNotDeployed(f"variant {spec.variant!r} is not deployed", deployed=sorted(self.generators))
        if idempotency_key is not None:
            earlier = await self.find_idempotent(idempotency_key, request_hash or "")
            if earlier is not None:
                return earlier
        self._check_fit(spec)
        status = self._generator_status.get(spec.variant)
        if self.config.when_unavailable == "refuse" and status is not None and status.failed:
            raise ModelUnavailable(
                f"{spec.variant} cannot run jobs: its generator does not start ({status.reason}); the operator "
                "must fix it (GET /ready shows the state)", retry_after_s=GENERATOR_STATUS_POLL_S * 30)
        breaker = self.breakers[spec.variant]
        if breaker.refusing():
            retry = breaker.retry_after_s()
            raise ModelUnavailable(
                f"{spec.variant} failed {breaker.failures} jobs in a row (last: {breaker.last_error}); new jobs are "
                f"refused for {retry} s while the queued ones wait, then one job probes it", retry_after_s=retry)
        if len(self.queue) >= self.config.max_queued_jobs:
            avg = self.store.avg_job_seconds(spec.variant)
            retry = math.ceil(avg) if avg else self.config.retry_after_s
            raise QueueFull(
                f"{len(self.queue)} jobs are already waiting (max_queued_jobs={self.config.max_queued_jobs}); "
                f"retry in about {retry} s",
                retry_after_s=retry,
            )
        if spec.filename and (self.store.filename_owner(spec.filename) or (self.output_dir / spec.filename).exists()):
            raise FilenameTaken(f"filename {spec.filename!r} is already used by another job; choose another name")
        rec = self.store.insert(spec, idempotency_key, request_hash or None)
        self.queue.append(spec.id)
        self._variant_of[spec.id] = spec.variant
        self._open_log(rec)
        self._wake.set()
        return self._view(rec)

    def _get(self, job_id: str) -> JobRecord:
        rec = self.store.get(job_id)
        if rec is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return rec

    async def status(self, job_id: str) -> JobView:
        """The job's record with its queue position and ETA. Raises JobNotFound."""
        return self._view(self._get(job_id))

    async def page(self, after: str | None, limit: int, descending: bool) -> tuple[list[JobView], bool]:
        """A page of jobs with their live queue positions and ETAs, and whether more follow.

        Raises:
            JobNotFound: ``after`` names no job.
        """
        try:
            records, more = self.store.page(after, limit, descending)
        except KeyError:
            raise JobNotFound(f"no job with id {after!r} to list after") from None
        return [self._view(r) for r in records], more

    async def lookup(self, prompt: str) -> JobView:
        """The newest job submitted with exactly ``prompt``. Raises JobNotFound."""
        rec = self.store.newest_with_prompt(prompt)
        if rec is None:
            raise JobNotFound("no job has that prompt")
        return self._view(rec)

    async def cancel(self, job_id: str) -> JobView:
        """Cancel a queued or running job; it ends ``canceled`` and writes no file.

        A queued job is removed before it reaches a generator; a running one stops after
        its current denoising step. Terminal jobs are returned unchanged. Raises JobNotFound.
        """
        rec = self._get(job_id)
        if rec.status.terminal:
            return self._view(rec)
        self._update(job_id, status=JobStatus.canceled, error_code="canceled", error_message="canceled by request",
                          finished_at=time.time())
        if job_id in self.queue:
            self.queue.remove(job_id)
            self._variant_of.pop(job_id, None)
            remove_inputs(rec.spec.inputs, Path(self.config.inputs_dir))
        run = self.running.get(job_id)
        if run is not None:
            run.canceled = True
            if run.stream is not None:
                run.stream.cancel()
            if run.task is not None:
                run.task.cancel()
                await asyncio.gather(run.task, return_exceptions=True)
        self._wake.set()
        return self._view(self._get(job_id))

    def _select(self, ids: list[str] | None, status: JobStatus | None, all_jobs: bool) -> list[JobRecord]:
        if all_jobs:
            return self.store.all()
        if ids:
            return self.store.by_ids(ids)
        if status is not None:
            return self.store.by_status([status])
        return []

    def _remove_file(self, filename: str | None) -> bool:
        if not filename:
            return False
        path = self.output_dir / filename
        if path.is_file():
            path.unlink()
            return True
        return False

    async def delete_jobs(self, ids: list[str] | None = None, status: JobStatus | None = None,
                          all_jobs: bool = False, delete_files: bool = False) -> dict:
        """Cancel the selected queued and running jobs, then remove every selected job.

        Returns ``{"deleted": [ids], "canceled": [ids], "files_deleted": [filenames]}``.
        """
        selected = self._select(ids, status, all_jobs)
        canceled, files = [], []
        for rec in selected:
            if not rec.status.terminal:
                await self.cancel(rec.id)
                canceled.append(rec.id)
            if delete_files and rec.status == JobStatus.success and not rec.file_deleted and self._remove_file(rec.filename):
                files.append(rec.filename)
        for rec in selected:
            remove_inputs(rec.spec.inputs, Path(self.config.inputs_dir))
        self.store.delete([r.id for r in selected])
        return {"deleted": [r.id for r in selected], "canceled": canceled, "files_deleted": files}

    async def videos(self) -> list[JobRecord]:
        """Successful jobs whose file still exists, oldest first."""
        return [r for r in self.store.videos() if (self.output_dir / r.filename).is_file()]

    async def delete_videos(self, filenames: list[str] | None = None, ids: list[str] | None = None,
                            all_videos: bool = False) -> dict:
        """Delete result files (the jobs stay, marked file_deleted). Returns ``{"files_deleted": [...]}``."""
        recs = self.store.videos()
        if not all_videos:
            wanted_names, wanted_ids = set(filenames or []), set(ids or [])
            recs = [r for r in recs if r.filename in wanted_names or r.id in wanted_ids]
        deleted = []
        for rec in recs:
            if self._remove_file(rec.filename):
                deleted.append(rec.filename)
            self.store.update(rec.id, file_deleted=1)
        return {"files_deleted": deleted}

    async def resolve_file(self, filename: str) -> str:
        """Absolute path of a result file this service wrote. Raises FileNotFoundForJob otherwise."""
        rec = self.store.filename_owner(filename)
        path = self.output_dir / filename
        if rec is None or rec.status != JobStatus.success or not path.is_file():
            raise FileNotFoundForJob(f"no video named {filename!r}; GET /videos lists them")
        return str(path)

    # ---- generator health -----------------------------------------------------------------------

    async def _watch_generators(self) -> None:
        """Keep ``_generator_status`` fresh, so dispatch skips (and, per ``when_unavailable``,
        submit refuses) a variant whose generator cannot start."""
        app_name = serve.get_replica_context().app_name
        while True:
            try:
                self._generator_status = await asyncio.to_thread(generator_statuses, app_name, list(self.generators))
            except Exception:  # the controller may be restarting; keep the last answer
                logger.debug("generator status unavailable", exc_info=True)
            await asyncio.sleep(GENERATOR_STATUS_POLL_S)

    # ---- retention ----------------------------------------------------------------------------

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception:  # a failed purge must not stop the next one
                logger.exception("retention purge failed")
            await asyncio.sleep(self.config.purge_interval_s)

    async def purge(self) -> dict:
        """Apply retention now: remove jobs that ended more than ``retention_days`` ago (rows, files,
        inputs, webhook records), then delete the oldest result files while they add up to more
        than ``max_output_bytes``. Returns ``{"jobs_deleted": [ids], "files_deleted": [names]}``."""
        jobs_deleted, files_deleted = [], []
        if self.config.retention_days is not None:
            old = self.store.ended_before(time.time() - self.config.retention_days * 86400)
            for rec in old:
                if rec.status == JobStatus.success and not rec.file_deleted and self._remove_file(rec.filename):
                    files_deleted.append(rec.filename)
                remove_inputs(rec.spec.inputs, Path(self.config.inputs_dir))
                self._logs.pop(rec.id, None)
            self.store.delete([r.id for r in old])
            jobs_deleted = [r.id for r in old]
        if self.config.max_output_bytes is not None:
            files = [(r, self.output_dir / r.filename) for r in self.store.videos()]
            sizes = {r.id: p.stat().st_size for r, p in files if p.is_file()}
            total = sum(sizes.values())
            for rec, _ in files:  # oldest first
                if total <= self.config.max_output_bytes:
                    break
                if rec.id in sizes and self._remove_file(rec.filename):
                    total -= sizes[rec.id]
                    files_deleted.append(rec.filename)
                self.store.update(rec.id, file_deleted=1)
        if jobs_deleted or files_deleted:
            logger.info("retention: %d jobs and %d files removed", len(jobs_deleted), len(files_deleted))
        return {"jobs_deleted": jobs_deleted, "files_deleted": files_deleted}

    async def webhook_deliveries(self, job_id: str) -> list[dict]:
        """The job's webhook messages, oldest first, each with every delivery attempt. Raises JobNotFound."""
        self._get(job_id)
        return [m.model_dump() for m in self.store.webhook_messages(job_id)]

    async def process_info(self) -> dict:
        """``{"pid": ...}`` of the router's process (fault tests kill it with os.kill)."""
        return {"pid": os.getpid()}

    async def queue_depth(self) -> dict:
        """Queued and running job counts per variant."""
        return {v: {"queued": len(self._queued_of(v)), "running": len(self._running_of(v))} for v in self.generators}


def _replica_died(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) says the generator replica's process went away."""
    seen = 0
    while exc is not None and seen < 6:
        if isinstance(exc, ray.exceptions.RayActorError):
            return True
        exc, seen = getattr(exc, "cause", None) or exc.__cause__, seen + 1
    return False

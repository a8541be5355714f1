"""The job engine: everything the router does that is not Ray. It composes the store, the
per-variant queue, the event logs, the circuit breakers, ETAs and retention, and is driven by
the router deployment (deployments/router.py), which owns the generator calls.

Tests build it without Ray: a store on a temporary SQLite file, a folder for results.
Not thread-safe: one event loop (the router's) drives it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from pydantic import BaseModel, Field

from jobs.circuit_breaker import CircuitBreaker, CircuitConfig
from jobs.config import QueuePolicy, RetentionPolicy
from jobs.errors import (
    FilenameTaken,
    JobCanceled,
    ModelUnavailable,
    QueueFull,
    QuotaExceeded,
    ServiceError,
    ValidationFailed,
    VariantNotDeployed,
)
from jobs.events import EventBatch, JobEvent
from jobs.failures import FailureAction, classify_failure
from jobs.filenames import default_name_job
from jobs.files import ResultFiles
from jobs.inputs import copy_inputs, kept_for_remix, remove_inputs
from jobs.metrics import JobMetrics
from jobs.model import JobRecord, JobResult, JobSpec, JobStatus, JobView, Phase, ProgressEvent
from jobs.ownership import OPEN, QUOTA_WINDOW_S, Caller, Quotas
from jobs.queue import JobQueue
from jobs.reader import EventWatch, JobReader, replica_start_delay, scoped_key
from jobs.retention import expired_jobs, files_over_cap
from jobs.store import JobStore

logger = logging.getLogger(__name__)

#: Seconds a variant's dispatch pauses after a broken replica handed a job back untouched, so the
#: job does not bounce off that replica until Ray Serve replaces it (it fails health checks every 5 s).
REFUSED_PAUSE_S = 1.0

#: The message of a job whose generator stream ended without a result or an error.
STREAM_ENDED = "the generator stream ended without a result"


#: Jobs removed per step of a bulk delete before other work gets the event loop again: each
#: removes a row, its inputs folder and maybe a file, a few milliseconds in all on a local disk.
DELETE_BATCH = 100


class EngineConfig(BaseModel):
    """Settings of the job engine (embedded in the router's config)."""

    queue: QueuePolicy = Field(default_factory=QueuePolicy, description="Queue bound, attempts, unavailable variants.")
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy, description="Purging ended jobs and files.")
    circuit_breaker: CircuitConfig = Field(default_factory=CircuitConfig, description="Per-variant circuit breaker.")
    slots: dict[str, int] = Field(
        description="Variant -> jobs it may run at once: its generator replicas, or its autoscaling max_replicas."
    )
    replica_start_s: dict[str, float] = Field(
        default={},
        description="Variant -> seconds a new generator replica takes to start, for the variants that autoscale "
        "(model_store/variants.py Autoscaling.expected_start_s); a queued job of such a variant with no "
        "running replica has it added to its ETA.",
    )
    retry_after_s: int = Field(
        default=30, ge=1, description="Retry-After of a 429 before any job duration was measured, seconds."
    )


class JobObserver(Protocol):
    """Told about every stored change of a job (the webhook sender is one)."""

    def job_changed(self, rec: JobRecord, event: JobEvent) -> None: ...

    def jobs_deleted(self, ids: list[str]) -> None: ...


class RunningJob:
    """A dispatched job: its spec, when and how many times it started, whether it was canceled,
    and its result once the generator sent it."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.started = 0.0
        self.attempts = 0
        self.canceled = False
        self.filename: str | None = None  # the result file the generator announced before writing it
        self.result: JobResult | None = None


class JobEngine:
    """Jobs from submission to their one terminal state.

    Args:
        config: queue, retention and breaker settings, and each variant's slots.
        store: where jobs are kept (written before ``submit`` returns).
        files: the result files, in the object store that holds the jobs' inputs too.
        observers: told of every change and deletion.
        clock: Unix seconds (``time.time``); ``monotonic`` for pauses.
        quotas_of: an owner's (API key's) quotas, for jobs queued before this engine saw the key
            submit (after a restart); default: no limits.
        metrics: told of every stored job and committed change (jobs/metrics.py); None measures nothing.
        replica_running: whether a variant has a running generator replica now (for queued jobs' ETAs
            and ``waiting_for_replica``); default: always.

    Every call that reads or changes a job takes the ``caller`` (jobs/ownership.py) and sees only
    that caller's jobs; an unknown job and another key's job both raise ``JobNotFound``.
    """

    def __init__(
        self,
        config: EngineConfig,
        store: JobStore,
        files: ResultFiles,
        observers: Iterable[JobObserver] = (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        quotas_of: Callable[[str], Quotas | None] | None = None,
        metrics: JobMetrics | None = None,
        replica_running: Callable[[str], bool] = lambda variant: True,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store
        self.files = files
        self.objects = files.store  # results and the jobs' inputs share the object store
        self.observers = list(observers)
        self.clock, self.monotonic = clock, monotonic
        self.queue = JobQueue()
        self.running: dict[str, RunningJob] = {}
        self.reader = JobReader(
            store,
            files,
            lambda variant: config.slots.get(variant, 1),
            clock,
            start_delay_of=replica_start_delay(config.replica_start_s, replica_running),
            avg_job_s_of=self.avg_job_seconds,
        )
        # variant -> its average job, seconds: this engine alone writes it (record_job_seconds), and
        # every view of a submit or progress event reads it.
        self._avg_job_s: dict[str, float | None] = {}
        self._watch: EventWatch | None = None
        self._last_events: dict[str, JobEvent] = {}  # running job -> its newest stored event
        self._rotations: dict[str, list[str] | None] = {}  # variant -> the lane rotation stored (None: unknown)
        self.breakers = {v: CircuitBreaker(config.circuit_breaker) for v in config.slots}
        self._paused_until: dict[str, float] = {}
        self.generation: int | None = None  # of the store's lease, taken by recover()
        self.fenced = False  # a newer router took the lease: this engine dispatches nothing more
        self.quotas_of = quotas_of
        self._quotas: dict[str, Quotas] = {}  # owner -> quotas it last submitted with
        self._submitted: dict[str | None, deque[float]] = {}  # owner -> submit times in the quota window

    # ---- start ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Take the store's lease (fencing any earlier router, which may still be draining), then
        load the queue from the store: queued jobs in FIFO order, and jobs a previous router left
        running back at their place, unless they have had all their attempts."""
        self.generation = self.store.claim_lease()
        limit = self.config.queue.max_attempts
        for rec in self.store.by_status([JobStatus.running]):
            if rec.attempts >= limit:
                self._update(
                    rec.id,
                    status=JobStatus.error,
                    error_code=ServiceError.code,
                    finished_at=self.clock(),
                    error_message=f"the job was running when the service stopped, {rec.attempts} times "
                    f"(max_attempts={limit}); it was not retried again",
                )
                remove_inputs(rec.spec.inputs, self.objects)
            else:
                with self.store.transaction():  # back in the queue, which its listeners see
                    requeued = self.store.update(rec.id, status=JobStatus.queued, phase=None, step=0)
                    if requeued is not None:
                        self.store.append_event(rec.id, JobEvent.of(self.view(requeued)))
        for rec in self.store.by_status([JobStatus.queued]):
            self.queue.push(rec.id, rec.variant, rec.owner)
        for variant in self.config.slots:
            self._rotations[variant] = None  # a previous router's may be stored: store this one's
            self._sync_rotation(variant)
        for owner, created in self.store.submitted_since(self.clock() - QUOTA_WINDOW_S):
            self._submitted.setdefault(owner, deque()).append(created)

    # ---- views ------------------------------------------------------------------------------

    def _get(self, job_id: str, caller: Caller = OPEN) -> JobRecord:
        """The job, if ``caller`` may see it. Raises JobNotFound (the same for another key's job)."""
        return self.reader.get(job_id, caller)

    def _running_of(self, variant: str) -> list[RunningJob]:
        return [r for r in self.running.values() if r.spec.variant == variant]

    def view(self, rec: JobRecord) -> JobView:
        """``rec`` as callers see it, with its queue position and ETA (JobReader.view)."""
        return self.reader.view(rec)

    def status(self, job_id: str, caller: Caller = OPEN) -> JobView:
        """Raises JobNotFound."""
        return self.reader.status(job_id, caller)

    def page(
        self, after: str | None, limit: int, descending: bool, caller: Caller = OPEN
    ) -> tuple[list[JobView], bool]:
        """See JobReader.page."""
        return self.reader.page(after, limit, descending, caller)

    def load(self) -> dict[str, dict[str, int]]:
        """Per configured variant: ``{"queued": jobs waiting, "running": jobs on a generator}``."""
        return {v: {"queued": self.queue.depth(v), "running": len(self._running_of(v))} for v in self.config.slots}

    def lookup(self, prompt: str, caller: Caller = OPEN) -> JobView:
        """See JobReader.lookup."""
        return self.reader.lookup(prompt, caller)

    # ---- changes and their events -------------------------------------------------------------

    def _update(self, job_id: str, **fields: Any) -> JobRecord | None:
        """Write ``fields`` and tell the observers in the same transaction (what they store, e.g. a
        webhook message, commits with the change or not at all: a transactional outbox), then the
        job's event log."""
        with self.store.transaction():
            rec = self.store.update(job_id, **fields)
            if rec is None:
                return None
            event = self._store_event(rec)
            for observer in self.observers:
                observer.job_changed(rec, event)
        if rec.status == JobStatus.running:
            self._last_events[rec.id] = event
        else:
            self._last_events.pop(rec.id, None)
        if self.metrics is not None:
            self.metrics.recorded(rec, event)
        return rec

    def _store_event(self, rec: JobRecord) -> JobEvent:
        """The event of ``rec``'s state, stored unless a listener would see nothing new in it (the
        job's newest stored event then, numbered). Call inside the write's transaction."""
        event = JobEvent.of(self.view(rec))
        last = self._last_events.get(rec.id)
        if last is not None and last.same_state(event):
            return last
        return self.store.append_event(rec.id, event)

    async def events(self, job_id: str, after: int = 0, timeout_s: float = 15.0, caller: Caller = OPEN) -> EventBatch:
        """Events of ``job_id`` after id ``after``, waiting up to ``timeout_s`` seconds for one
        (jobs/reader.py EventWatch). Raises JobNotFound."""
        if self._watch is None:
            self._watch = EventWatch(self.reader)
        return await self._watch.wait(job_id, after, timeout_s, caller)

    def _sync_rotation(self, variant: str) -> None:
        """Store ``variant``'s lane rotation when it changed and matters to a reader's queue
        positions (two lanes or more, now or as last stored): one key alone writes nothing."""
        lanes = self.queue.rotation(variant)
        stored = self._rotations.get(variant, [])
        if stored is None or (lanes != stored and (len(lanes) > 1 or len(stored) > 1)):
            self._rotations[variant] = None  # until the write below commits
            self.store.set_rotation(variant, lanes)
            self._rotations[variant] = lanes

    # ---- submit -------------------------------------------------------------------------------

    def find_idempotent(self, key: str, request_hash: str, caller: Caller = OPEN) -> JobView | None:
        """See JobReader.find_idempotent."""
        return self.reader.find_idempotent(key, request_hash, caller)

    def avg_job_seconds(self, variant: str) -> float | None:
        """``variant``'s average job duration, seconds (JobStore.avg_job_seconds), read once and
        kept until this engine records another job's duration."""
        if variant not in self._avg_job_s:
            self._avg_job_s[variant] = self.store.avg_job_seconds(variant)
        return self._avg_job_s[variant]

    def submit(
        self,
        spec: JobSpec,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        precheck: Callable[[JobSpec], None] | None = None,
        discard_on_refusal: bool = False,
        caller: Caller = OPEN,
    ) -> JobView:
        """Store ``spec`` as a queued job owned by ``caller``. With ``idempotency_key``, a key the
        caller used before returns that job instead (``replayed``) and stores nothing.
        ``precheck(spec)`` runs after that lookup and may raise to refuse it (the router's fit and
        availability checks).

        Raises:
            VariantNotDeployed: no generator serves ``spec.variant``.
            IdempotencyConflict: ``idempotency_key`` came with a different request before.
            ModelUnavailable: the variant's circuit breaker is open (``retry_after_s`` says when to retry).
            QueueFull: ``max_queued_jobs`` jobs are already waiting.
            QuotaExceeded: the caller's key is at its ``max_queued`` or ``jobs_per_hour``.
            FilenameTaken: another live job or file already uses ``spec.filename``.
            ServiceError: whatever ``precheck`` raises.

        With ``discard_on_refusal`` (a spec whose inputs this process made, e.g. a remix), a refused
        job's inputs are removed before the error propagates.
        """
        try:
            return self._submit(
                spec.model_copy(update={"owner": caller.key_id}), idempotency_key, request_hash, precheck, caller
            )
        except BaseException:
            if discard_on_refusal:
                remove_inputs(spec.inputs, self.objects)
            raise

    def _submit(
        self,
        spec: JobSpec,
        idempotency_key: str | None,
        request_hash: str | None,
        precheck: Callable[[JobSpec], None] | None,
        caller: Caller,
    ) -> JobView:
        if spec.variant not in self.config.slots:
            raise VariantNotDeployed(f"variant {spec.variant!r} is not deployed", deployed=sorted(self.config.slots))
        if idempotency_key is not None:
            earlier = self.find_idempotent(idempotency_key, request_hash or "", caller)
            if earlier is not None:
                return earlier
            idempotency_key = scoped_key(idempotency_key, caller.key_id)
        if precheck is not None:
            precheck(spec)
        self._check_quotas(spec, caller)
        breaker = self.breakers[spec.variant]
        if breaker.refusing():
            retry = breaker.retry_after_s()
            raise ModelUnavailable(
                f"{spec.variant} failed {breaker.failures} jobs in a row (last: {breaker.last_error}); new jobs are "
                f"refused for {retry} s while the queued ones wait, then one job probes it",
                retry_after_s=retry,
            )
        limit = self.config.queue.max_queued_jobs
        if len(self.queue) >= limit:
            avg = self.avg_job_seconds(spec.variant)
            retry = math.ceil(avg) if avg else self.config.retry_after_s
            raise QueueFull(
                f"{len(self.queue)} jobs are already waiting (max_queued_jobs={limit}); retry in about {retry} s",
                retry_after_s=retry,
            )
        if spec.filename and (self.store.filename_owner(spec.filename) or self.files.exists(spec.filename)):
            raise FilenameTaken(f"filename {spec.filename!r} is already used by another job; choose another name")
        try:
            with self.store.transaction():  # the job, its first event and the rotation: one commit
                rec = self.store.insert(spec, idempotency_key, request_hash or None, created_at=self.clock())
                self.queue.push(spec.id, spec.variant, spec.owner)
                self._sync_rotation(spec.variant)
                view = self.reader.view(rec, position=self.queue.position(rec.id))
                self.store.append_event(rec.id, JobEvent.of(view))
        except BaseException:  # nothing was stored (the commit failed, or a write before it)
            self.queue.remove(spec.id)
            self._rotations[spec.variant] = None  # the rotation's write went with the rollback
            raise
        self._submitted.setdefault(spec.owner, deque()).append(rec.created_at)
        if self.metrics is not None:
            self.metrics.submitted(rec)
        return view

    def _check_quotas(self, spec: JobSpec, caller: Caller) -> None:
        """Raise QuotaExceeded when the caller's key is at its ``max_queued`` or ``jobs_per_hour``."""
        if caller.key_id is None:
            return
        quotas = self._quotas[caller.key_id] = caller.quotas
        if quotas.max_queued is not None and self.queue.owned(caller.key_id) >= quotas.max_queued:
            avg = self.avg_job_seconds(spec.variant)
            retry = math.ceil(avg) if avg else self.config.retry_after_s
            raise QuotaExceeded(
                f"key {caller.name!r} has {quotas.max_queued} jobs waiting, its max_queued; retry in about "
                f"{retry} s, when one has started",
                limit="max_queued",
                retry_after_s=retry,
            )
        if quotas.jobs_per_hour is not None:
            recent = self._submitted.setdefault(caller.key_id, deque())
            now = self.clock()
            while recent and recent[0] <= now - QUOTA_WINDOW_S:
                recent.popleft()
            if len(recent) >= quotas.jobs_per_hour:
                retry = max(math.ceil(recent[0] + QUOTA_WINDOW_S - now), 1)
                raise QuotaExceeded(
                    f"key {caller.name!r} submitted {len(recent)} jobs in the last hour, its jobs_per_hour; "
                    f"retry in {retry} s",
                    limit="jobs_per_hour",
                    retry_after_s=retry,
                )

    def _may_start(self, owner: str | None) -> bool:
        """Whether ``owner`` is below its ``max_running`` (every job of an open service may start)."""
        if owner is None:
            return True
        quotas = self._quotas.get(owner)
        if quotas is None and self.quotas_of is not None:
            quotas = self._quotas[owner] = self.quotas_of(owner) or Quotas()
        if quotas is None or quotas.max_running is None:
            return True
        return sum(1 for r in self.running.values() if r.spec.owner == owner) < quotas.max_running

    def remix_spec(self, job_id: str, prompt: str, caller: Caller = OPEN) -> JobSpec:
        """A new job with job ``job_id``'s parameters (seed included), its inputs copied, and ``prompt``.

        Touches only the store and the disk, so it may run in a worker thread.

        Raises:
            JobNotFound: no such job, or another key's.
            ValidationFailed: the original's uploaded inputs are no longer stored.
        """
        original = self._get(job_id, caller).spec
        new_id = uuid.uuid4().hex
        inputs = None
        if original.inputs is not None:
            inputs = copy_inputs(original.inputs, self.objects, new_id)
            if inputs is None:
                raise ValidationFailed(
                    "this video's inputs are no longer stored (a source video is dropped when its job ends, "
                    "and a failed or canceled job keeps none); create a new video with them instead",
                    field="video_id",
                )
        params = original.params.model_copy(update={"prompt": prompt})
        return original.model_copy(
            update={
                "id": new_id,
                "params": params,
                "inputs": inputs,
                "filename": None,
                "remixed_from": original.id,
                "owner": caller.key_id,
            }
        )

    # ---- dispatch -----------------------------------------------------------------------------

    def dispatchable(self, variant_ready: Callable[[str], bool]) -> list[JobSpec]:
        """Take the jobs that may start now off the queue, oldest first per variant, and count them
        as running: one per free slot of a variant whose dispatch is not paused, whose generator is
        not failing (``variant_ready``) and whose circuit breaker lets it through.

        Nothing is dispatched once a newer router took the store's lease (``fenced``).

        Raises:
            Exception: the store failed before any job started (every job stays queued).
        """
        started: list[JobSpec] = []
        if not self.store.holds_lease():
            self.fenced = True
            return started
        try:
            self._dispatch_into(started, variant_ready)
        except Exception:
            if not started:
                raise
            logger.warning("dispatch stopped after %d jobs: the store failed", len(started), exc_info=True)
        return started

    def _dispatch_into(self, started: list[JobSpec], variant_ready: Callable[[str], bool]) -> None:
        for variant in self.queue.variants():
            breaker = self.breakers[variant]
            while (job_id := self.queue.head(variant, self._may_start)) is not None:
                if len(self._running_of(variant)) >= self.config.slots.get(variant, 0):
                    break
                if self.monotonic() < self._paused_until.get(variant, 0.0):
                    break
                if not variant_ready(variant) or not breaker.may_dispatch():
                    break
                rec = self.store.get(job_id)  # read before the pop: a failing read leaves the job queued
                self.queue.pop(variant, job_id)
                if rec is None or rec.status != JobStatus.queued:
                    continue
                breaker.started()
                self.running[job_id] = RunningJob(rec.spec)
                started.append(rec.spec)
            self._sync_rotation(variant)

    def start(self, job_id: str, gpu_id: str | None = None) -> None:
        """A generator replica (on ``gpu_id``, when known) has taken the dispatched job: it is
        running, one more attempt. Until then a dispatched job stays ``queued`` in the store."""
        run = self.running[job_id]
        run.started = self.clock()
        run.attempts = self._get(job_id).attempts + 1
        fields: dict[str, Any] = dict(
            status=JobStatus.running, phase=Phase.loading, started_at=run.started, attempts=run.attempts
        )
        if gpu_id is not None:
            fields["gpu_id"] = gpu_id
        self._update(job_id, **fields)

    def progress(self, job_id: str, item: ProgressEvent) -> None:
        """A progress report from the generator (a canceled job's is only noted for its file's name)."""
        run = self.running[job_id]
        if item.filename is not None:
            run.filename = item.filename
        if run.canceled:
            return
        fields: dict[str, Any] = dict(
            phase=item.phase, step=item.step, total_steps=item.total_steps, gpu_id=item.gpu_id
        )
        if item.filename is not None:  # the file about to be written: known before it exists
            fields["filename"] = item.filename
        if item.step_seconds is not None:  # phases after denoising keep the measured step time
            fields["step_seconds"] = item.step_seconds
        self._update(job_id, **fields)

    def succeeded(self, job_id: str, result: JobResult) -> None:
        """The generator wrote the result file (a canceled job's file is removed instead)."""
        run = self.running[job_id]
        run.result = result
        if run.canceled:
            return
        finished = self.clock()
        try:
            with self.store.transaction():  # one commit: the job's end is on every listener's critical path
                self._update(
                    job_id,
                    status=JobStatus.success,
                    phase=None,
                    filename=result.filename,
                    result=result.model_dump(),
                    finished_at=finished,
                    gpu_id=result.gpu_id,
                )
                self.store.record_job_seconds(run.spec.variant, finished - run.started)
        finally:  # read again next time: the new average, or the stored one after a rollback
            self._avg_job_s.pop(run.spec.variant, None)
        if run.attempts > 1:  # only a job that ran before can have an earlier attempt's file
            self._remove_stale_results(job_id, keep=result.filename)
        self.breakers[run.spec.variant].succeeded()

    def failed(self, job_id: str, exc: BaseException, replica_died: bool) -> float | None:
        """The generator call raised ``exc``: requeue the job or end it, and tell the breaker.

        Returns the seconds the variant's dispatch pauses (a hand-back), else None.
        """
        run = self.running[job_id]
        spec, breaker, limit = run.spec, self.breakers[run.spec.variant], self.config.queue.max_attempts
        failure = classify_failure(
            exc, replica_died=replica_died, attempts=run.attempts, max_attempts=limit, variant=spec.variant
        )
        if failure.action == FailureAction.hand_back:
            breaker.neutral()
            self.store.update(job_id, attempts=run.attempts - 1)
            self._requeue_first(spec)
            self._paused_until[spec.variant] = self.monotonic() + REFUSED_PAUSE_S
            return REFUSED_PAUSE_S
        if failure.variant_at_fault:
            breaker.failed(failure.reason)
        else:
            breaker.neutral()
        if failure.replica_lost:
            logger.warning("job %s: %s (attempt %d of %d)", job_id, failure.reason, run.attempts, limit)
        if failure.action == FailureAction.retry:
            self._requeue_first(spec)
            return None
        if failure.unexpected:
            logger.error("job %s failed", job_id, exc_info=exc)
        self._update(
            job_id,
            status=JobStatus.error,
            error_code=failure.code,
            error_message=failure.message,
            finished_at=self.clock(),
        )
        return None

    def hand_back(self, job_id: str, pause_s: float) -> None:
        """Put a dispatched job back at the front of its queue without spending an attempt: nothing
        of it reached a generator (its start could not be written, or the call not be made). Its
        variant's dispatch pauses ``pause_s`` seconds, so a failing store is not hammered."""
        run = self.running[job_id]
        self.queue.push(job_id, run.spec.variant, run.spec.owner, front=True)
        self._sync_rotation(run.spec.variant)
        self._paused_until[run.spec.variant] = self.monotonic() + pause_s
        self._update(job_id, status=JobStatus.queued, phase=None, step=0, attempts=max(run.attempts - 1, 0))

    def _requeue_first(self, spec: JobSpec) -> None:
        """Put a job that was running back at the front of its queue: it was the oldest of its
        variant when it started."""
        self.queue.push(spec.id, spec.variant, spec.owner, front=True)
        self._sync_rotation(spec.variant)
        self._update(spec.id, status=JobStatus.queued, phase=None, step=0)

    def finish(self, job_id: str) -> float | None:
        """The generator call is over, however it ended (or never began): settle the job, then free
        its slot and its inputs. Idempotent, and safe to call again after it raised: the slot is
        freed only once the job's state is written.

        A job still ``running`` here ends ``success`` if its result came (its write had failed),
        else ``error``/``internal``; a job still ``queued`` (its start was never written) goes back
        to the front of its queue; a canceled job's result file is removed. Returns the seconds
        until the variant's open circuit lets a probe through, or None.
        """
        run = self.running.get(job_id)
        if run is None:
            return None
        breaker = self.breakers[run.spec.variant]
        rec = self.store.get(job_id)
        if rec is not None and rec.status == JobStatus.running and not run.canceled and run.result is not None:
            self.succeeded(job_id, run.result)
        elif rec is not None and rec.status == JobStatus.running and not run.canceled:
            self._update(
                job_id,
                status=JobStatus.error,
                error_code=ServiceError.code,
                error_message=STREAM_ENDED,
                finished_at=self.clock(),
            )
            breaker.failed(STREAM_ENDED)
        elif rec is not None and rec.status == JobStatus.queued and job_id not in self.queue:
            self.queue.push(job_id, run.spec.variant, run.spec.owner, front=True)
            self._sync_rotation(run.spec.variant)
        if run.canceled:
            breaker.neutral()
            self.remove_result(rec or self._get(job_id), run)
        del self.running[job_id]
        rec = self.store.get(job_id)
        if rec is None or (
            rec.status.terminal and not (rec.status == JobStatus.success and kept_for_remix(run.spec.inputs))
        ):
            remove_inputs(run.spec.inputs, self.objects)
        return breaker.retry_after_s() if breaker.refusing() else None

    def _remove_stale_results(self, job_id: str, keep: str | None) -> None:
        """Remove the files an earlier attempt of a job left under default names (a run that a
        replaced router or replica finished too): they carry the job's id, so they are its own."""
        for name in self.files.default_named():
            if default_name_job(name) == job_id and name != keep:
                self.files.remove(name)

    def remove_result(self, rec: JobRecord, run: RunningJob | None = None) -> None:
        """Remove the result file of a canceled job, wherever its run got to: the name announced
        before writing, the one in its result, or the caller's chosen name. Names are unique to
        their job (jobs/filenames.py), so no other job's file is touched."""
        names = {
            rec.filename,
            rec.spec.filename,
            run.filename if run else None,
            run.result.filename if run and run.result else None,
        }
        for name in names:
            if name and self.store.filename_owner(name) is None:  # a canceled job owns no name
                self.files.remove(name)

    # ---- cancel and delete --------------------------------------------------------------------

    def cancel(self, job_id: str, caller: Caller = OPEN) -> RunningJob | None:
        """Mark a queued or running job ``canceled`` (a terminal job stays as it is).

        A queued job leaves the queue and its inputs go; a running one is returned, flagged, for
        the caller to stop its generator call. Raises JobNotFound.
        """
        rec = self._get(job_id, caller)
        if rec.status.terminal:
            return None
        self._update(
            job_id,
            status=JobStatus.canceled,
            error_code=JobCanceled.code,
            error_message="canceled by request",
            finished_at=self.clock(),
        )
        if self.queue.remove(job_id):
            self._sync_rotation(rec.variant)
            remove_inputs(rec.spec.inputs, self.objects)
        run = self.running.get(job_id)
        if run is not None:
            run.canceled = True
        return run

    def select(
        self, ids: list[str] | None, status: JobStatus | None, all_jobs: bool, caller: Caller = OPEN
    ) -> list[JobRecord]:
        """The caller's jobs a delete names: all, by ids, or by status (nothing when none is given).
        For an admin key (or an open service) "the caller's" is every job."""
        if all_jobs:
            selected = self.store.all()
        elif ids:
            selected = self.store.by_ids(ids)
        elif status is not None:
            selected = self.store.by_status([status])
        else:
            selected = []
        return [rec for rec in selected if caller.sees(rec.owner)]

    async def delete_jobs(
        self,
        ids: list[str] | None,
        status: JobStatus | None,
        all_jobs: bool,
        delete_files: bool,
        cancel: Callable[[str], Awaitable[object]],
        caller: Caller = OPEN,
    ) -> dict[str, list[str]]:
        """Cancel the selected queued and running jobs with ``cancel`` (the router's, which also stops
        their generator calls), then remove every selected job (``delete``).

        Returns ``{"deleted": [ids], "canceled": [ids], "files_deleted": [filenames]}``.
        """
        selected = self.select(ids, status, all_jobs, caller)
        canceled = [rec.id for rec in selected if not rec.status.terminal]
        for job_id in canceled:
            await cancel(job_id)
        files: list[str] = []
        # In batches, yielding between them: removing thousands of files and folders at once
        # would hold the event loop (status calls, dispatch, progress) for seconds.
        for start in range(0, len(selected), DELETE_BATCH):
            files += self.delete(selected[start : start + DELETE_BATCH], delete_files)
            await asyncio.sleep(0)
        return {"deleted": [r.id for r in selected], "canceled": canceled, "files_deleted": files}

    def delete(self, selected: list[JobRecord], delete_files: bool) -> list[str]:
        """Remove ``selected`` jobs (already ended or canceled) with their inputs and, with
        ``delete_files``, their result files. Returns the file names deleted."""
        files = [
            r.filename for r in selected if delete_files and r.has_file and r.filename and self.files.remove(r.filename)
        ]
        for rec in selected:
            remove_inputs(rec.spec.inputs, self.objects)
        self._forget([r.id for r in selected])
        return [f for f in files if f]

    def _forget(self, ids: list[str]) -> None:
        self.store.delete(ids)
        for observer in self.observers:
            observer.jobs_deleted(ids)

    def _delete_file(self, rec: JobRecord) -> bool:
        """Delete a job's result file and mark it deleted (the job stays). Returns whether a file went."""
        removed = self.files.remove(rec.filename)
        self.store.update(rec.id, file_deleted=True)
        return removed

    # ---- result files -------------------------------------------------------------------------

    def videos(self, after: str | None = None, limit: int = 100, caller: Caller = OPEN) -> tuple[list[JobView], bool]:
        """See JobReader.videos."""
        return self.reader.videos(after, limit, caller)

    def delete_videos(
        self, filenames: list[str] | None, ids: list[str] | None, all_videos: bool, caller: Caller = OPEN
    ) -> list[str]:
        """Delete the caller's result files (the jobs stay, marked file_deleted). Returns the names deleted."""
        recs = self.store.videos(caller.scope)
        if not all_videos:
            wanted_names, wanted_ids = set(filenames or []), set(ids or [])
            recs = [r for r in recs if r.filename in wanted_names or r.id in wanted_ids]
        return [r.filename for r in recs if self._delete_file(r) and r.filename]

    def check_file(self, filename: str, caller: Caller = OPEN) -> str:
        """See JobReader.check_file."""
        return self.reader.check_file(filename, caller)

    def purge(self) -> dict[str, list[str]]:
        """Apply retention now: remove jobs that ended more than ``retention_days`` ago (rows, files,
        inputs, what observers keep), then delete the oldest result files while they add up to
        more than ``max_output_gib``. Returns ``{"jobs_deleted": [ids], "files_deleted": [names]}``."""
        policy = self.config.retention
        files_deleted: list[str] = []
        old = expired_jobs(self.store, policy, self.clock())
        for rec in old:
            if rec.has_file and rec.filename and self.files.remove(rec.filename):
                files_deleted.append(rec.filename)
            remove_inputs(rec.spec.inputs, self.objects)
        if old:
            self._forget([r.id for r in old])
        for rec in files_over_cap(self.store, self.files, policy):
            if self._delete_file(rec) and rec.filename:
                files_deleted.append(rec.filename)
        for name in self.files.default_named():  # attempts' leftovers that no record points to
            owner = self.store.get(default_name_job(name) or "")
            stale = owner is not None and owner.status.terminal and not (owner.has_file and owner.filename == name)
            if stale and self.files.remove(name):
                files_deleted.append(name)
        jobs_deleted = [r.id for r in old]
        if jobs_deleted or files_deleted:
            logger.info("retention: %d jobs and %d files removed", len(jobs_deleted), len(files_deleted))
        return {"jobs_deleted": jobs_deleted, "files_deleted": files_deleted}

"""The job domain without Ray: the engine over a real SQLite store and a real folder of files."""

from __future__ import annotations

import asyncio

import pytest

from jobs.config import QueuePolicy, RetentionPolicy
from jobs.engine import EngineConfig, JobEngine
from jobs.errors import (
    DiskFull,
    FilenameTaken,
    IdempotencyConflict,
    JobNotFound,
    ModelUnavailable,
    OutOfMemory,
    QueueFull,
    ReplicaFailed,
    exception_chain,
    unwrap,
)
from jobs.eta import queued_eta_s, running_remaining_s
from jobs.events import EVENT_ID_SPAN
from jobs.failures import FailureAction, classify_failure
from jobs.files import ResultFiles
from jobs.objects import ObjectStore
from jobs.inputs import PreparedInputs
from jobs.model import GenerationParams, JobResult, JobSpec, JobStatus, Phase, ProgressEvent
from jobs.queue import JobQueue
from jobs.reader import EventWatch, JobReader
from jobs.store import ETA_EMA_ALPHA, SqlJobStore
from model_store.variants import Size


class Clock:
    """A settable clock (Unix seconds), so ETAs and retention are exact."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _spec(i: int, variant: str = "a", filename: str | None = None, steps: int = 4) -> JobSpec:
    params = GenerationParams(
        prompt=f"p{i}", width=64, height=64, num_frames=5, num_inference_steps=steps, guidance_scale=1.0, seed=i
    )
    return JobSpec(
        id=f"job{i}", variant=variant, params=params, output_size=Size(width=64, height=64), filename=filename
    )


def _engine(tmp_path, clock=None, slots=None, **policy) -> JobEngine:
    retention = {k: policy.pop(k) for k in list(policy) if k in RetentionPolicy.model_fields}
    config = EngineConfig(
        queue=QueuePolicy(**policy), retention=RetentionPolicy(**retention), slots=slots or {"a": 1, "b": 1}
    )
    return JobEngine(
        config,
        SqlJobStore(tmp_path / "jobs.db"),
        ResultFiles(ObjectStore(tmp_path)),
        clock=clock or Clock(),
    )


def _result(name: str) -> JobResult:
    return JobResult(
        filename=name,
        size_bytes=3,
        width=64,
        height=64,
        num_frames=5,
        fps=16,
        pipeline_seconds=1.0,
        encode_seconds=0.1,
        gpu_id="cpu",
    )


def test_queue_is_fifo_per_variant_and_a_handed_back_job_goes_first():
    q = JobQueue()
    for job, variant in [("1", "a"), ("2", "b"), ("3", "a"), ("4", "a")]:
        q.push(job, variant)
    assert len(q) == 4 and q.of("a") == ["1", "3", "4"] and q.of("b") == ["2"]
    assert q.position("4") == 3 and q.position("2") == 1 and q.position("nope") is None
    assert q.pop("a") == "1" and q.remove("3") and not q.remove("3")
    q.push("1", "a", front=True)
    assert q.of("a") == ["1", "4"] and "3" not in q and len(q) == 3
    with pytest.raises(IndexError):
        JobQueue().pop("a")


def test_dispatch_takes_the_oldest_job_per_variant_one_per_slot(tmp_path):
    engine = _engine(tmp_path, slots={"a": 2, "b": 1})
    for i, variant in enumerate(["a", "b", "a", "a", "b"]):
        engine.submit(_spec(i, variant))
    started = engine.dispatchable(lambda v: True)
    assert [s.id for s in started] == ["job0", "job2", "job1"]  # a's two slots, then b's one
    assert engine.dispatchable(lambda v: True) == []  # every slot is busy
    for spec in started:  # as the router does before calling a generator
        engine.start(spec.id)
    assert engine.status("job3").queue_position == 1 and engine.status("job4").queue_position == 1
    assert engine.dispatchable(lambda v: v != "a") == []  # a variant that is not ready keeps its jobs


def test_eta_arithmetic():
    # 4 steps left at 2 s each, but the average job (30 s, started 10 s ago) has 20 s left: the larger wins.
    assert (
        running_remaining_s(now=110.0, started_at=100.0, step=6, total_steps=10, step_seconds=2.0, avg_job_s=30.0)
        == 20.0
    )
    assert (
        running_remaining_s(now=110.0, started_at=100.0, step=0, total_steps=10, step_seconds=None, avg_job_s=None)
        is None
    )
    # 3rd in line, 2 replicas both busy (6 s and 9 s left), 10 s a job: 6 + 10 * (ceil(3/2) - 1) + 10.
    assert queued_eta_s(position=3, slots=2, avg_job_s=10.0, running_left_s=[9.0, 6.0]) == 26.0
    assert queued_eta_s(position=1, slots=2, avg_job_s=10.0, running_left_s=[9.0]) == 10.0  # a replica is free
    assert queued_eta_s(position=1, slots=1, avg_job_s=None, running_left_s=[]) is None


def test_a_queued_jobs_eta_comes_from_the_stored_average(tmp_path):
    clock = Clock()
    engine = _engine(tmp_path, clock=clock)
    engine.store.record_job_seconds("a", 40.0)
    engine.submit(_spec(0))
    engine.submit(_spec(1))
    (spec,) = engine.dispatchable(lambda v: True)
    engine.start(spec.id)
    clock.now += 10
    assert engine.status("job0").eta_seconds == 30.0  # 40 s average, 10 s in
    assert engine.status("job1").eta_seconds == 30.0 + 40.0


def test_a_submit_after_a_job_ends_gets_the_new_average_in_its_eta(tmp_path):
    clock = Clock()
    engine = _engine(tmp_path, clock=clock)
    engine.store.record_job_seconds("a", 40.0)
    assert engine.submit(_spec(0)).eta_seconds == 40.0  # the router reads the stored average once
    (spec,) = engine.dispatchable(lambda v: True)
    engine.start(spec.id)
    clock.now += 100
    engine.succeeded(spec.id, _result("a.mp4"))
    engine.finish(spec.id)
    average = 40.0 * (1 - ETA_EMA_ALPHA) + 100.0 * ETA_EMA_ALPHA
    assert engine.store.avg_job_seconds("a") == pytest.approx(average)
    assert engine.submit(_spec(1)).eta_seconds == pytest.approx(average)  # not the 40 s it read before


def test_events_skip_repeats_number_in_order_and_resume(tmp_path):
    engine = _engine(tmp_path)
    engine.submit(_spec(0, steps=2))
    (spec,) = engine.dispatchable(lambda v: True)
    engine.start(spec.id)
    for step in (1, 1, 2):  # the second report of step 1 changes nothing a listener sees
        engine.progress(spec.id, ProgressEvent(phase=Phase.denoising, step=step, total_steps=2, gpu_id="cpu"))
    engine.succeeded(spec.id, _result("a.mp4"))
    engine.finish(spec.id)

    batch = asyncio.run(engine.events("job0", 0, 0.0))
    assert [(e.id, e.event, e.step) for e in batch.events] == [
        (1 * EVENT_ID_SPAN, "queued", 0),
        (2 * EVENT_ID_SPAN, "phase", 0),
        (3 * EVENT_ID_SPAN, "step", 1),
        (4 * EVENT_ID_SPAN, "step", 2),
        (5 * EVENT_ID_SPAN, "terminal", 2),
    ]
    assert batch.done and batch.events[-1].filename == "a.mp4" and batch.events[-1].progress == 1.0
    resumed = asyncio.run(engine.events("job0", 3 * EVENT_ID_SPAN, 0.0))
    assert [e.id for e in resumed.events] == [4 * EVENT_ID_SPAN, 5 * EVENT_ID_SPAN] and resumed.done
    assert "error" not in batch.events[0].as_dict() and batch.events[-1].as_dict()["error"] is None
    with pytest.raises(JobNotFound):
        asyncio.run(engine.events("nope", 0, 0.0))
    # Another process's reader (an ingress replica: its own connection) replays the same events.
    other = JobReader(SqlJobStore(tmp_path / "jobs.db"), engine.files, lambda v: 1)
    assert other.events("job0", 0) == batch


def test_a_listener_waits_for_the_next_stored_event(tmp_path):
    engine = _engine(tmp_path)
    engine.submit(_spec(0, steps=2))
    watch = EventWatch(JobReader(SqlJobStore(tmp_path / "jobs.db"), engine.files, lambda v: 1), poll_s=0.01)

    async def go():
        waiting = asyncio.create_task(watch.wait("job0", EVENT_ID_SPAN, 5.0))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        (spec,) = engine.dispatchable(lambda v: True)
        engine.start(spec.id)
        return await asyncio.wait_for(waiting, 1.0)

    batch = asyncio.run(go())
    assert [(e.id, e.event, e.phase) for e in batch.events] == [(2 * EVENT_ID_SPAN, "phase", Phase.loading)]
    assert not batch.done


def test_queue_moves_are_read_not_stored_and_their_ids_grow(tmp_path):
    engine = _engine(tmp_path, slots={"a": 1, "b": 1})
    for i in range(4):
        engine.submit(_spec(i))
    first = asyncio.run(engine.events("job3", 0, 0.0)).events
    assert [(e.id, e.queue_position) for e in first] == [(EVENT_ID_SPAN, 4)]
    for _ in range(2):  # two jobs ahead of job3 start and end
        (spec,) = engine.dispatchable(lambda v: True)
        engine.start(spec.id)
        engine.succeeded(spec.id, _result(f"{spec.id}.mp4"))
        engine.finish(spec.id)
    moved = asyncio.run(engine.events("job3", EVENT_ID_SPAN, 0.0)).events
    assert [(e.id, e.event, e.queue_position) for e in moved] == [(EVENT_ID_SPAN + 2, "queued", 2)]
    assert asyncio.run(engine.events("job3", EVENT_ID_SPAN + 2, 0.0)).events == []  # nothing new since
    assert engine.store.last_event("job3").id == EVENT_ID_SPAN  # moves are not stored


def test_failure_classification():
    kw = dict(attempts=1, max_attempts=3, variant="a")
    handed_back = classify_failure(ReplicaFailed("broken", started=False), replica_died=False, **kw)
    assert handed_back.action == FailureAction.hand_back and handed_back.variant_at_fault is None
    died = classify_failure(RuntimeError("actor gone"), replica_died=True, **kw)
    assert died.action == FailureAction.retry and died.variant_at_fault
    last = classify_failure(RuntimeError("actor gone"), replica_died=True, attempts=3, max_attempts=3, variant="a")
    assert last.action == FailureAction.end and last.code == "model_unavailable" and "3 attempts" in last.message
    oom = classify_failure(OutOfMemory("fewer frames"), replica_died=False, **kw)
    assert (oom.action, oom.code, oom.variant_at_fault) == (FailureAction.end, "out_of_memory", False)
    disk = classify_failure(DiskFull("free space"), replica_died=False, **kw)
    assert (disk.code, disk.variant_at_fault) == ("disk_full", True)
    bug = classify_failure(KeyError("x"), replica_died=False, **kw)
    assert (bug.code, bug.variant_at_fault, bug.unexpected) == ("internal", True, True)
    assert "KeyError" in bug.message


def test_one_unwrapper_follows_ray_style_causes():
    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__("wrapped")
            self.cause = cause

    inner = OutOfMemory("fewer frames")
    wrapped = Wrapper(Wrapper(inner))
    assert unwrap(wrapped) is inner and list(exception_chain(wrapped))[-1] is inner
    plain = ValueError("x")
    assert unwrap(plain) is plain


def test_a_failed_job_goes_back_first_then_ends_after_max_attempts(tmp_path):
    engine = _engine(tmp_path, max_attempts=2)
    engine.submit(_spec(0))
    engine.submit(_spec(1))
    for attempt in (1, 2):
        (spec,) = engine.dispatchable(lambda v: True)
        assert spec.id == "job0"
        engine.start(spec.id)
        engine.failed(spec.id, RuntimeError("gone"), replica_died=True)
        engine.finish(spec.id)
        assert engine.status("job0").attempts == attempt
    rec = engine.status("job0")
    assert rec.status == JobStatus.error and rec.error.code == "model_unavailable"
    assert engine.queue.of("a") == ["job1"]


def test_submit_refusals_and_idempotency(tmp_path):
    engine = _engine(tmp_path, max_queued_jobs=2)
    first = engine.submit(_spec(0, filename="mine.mp4"), "key-1", "hash-1")
    assert engine.submit(_spec(9), "key-1", "hash-1").id == first.id  # replayed, nothing stored
    assert len(engine.queue) == 1
    with pytest.raises(IdempotencyConflict):
        engine.submit(_spec(8), "key-1", "hash-2")
    with pytest.raises(FilenameTaken):
        engine.submit(_spec(1, filename="mine.mp4"))
    engine.submit(_spec(2))
    with pytest.raises(QueueFull) as full:
        engine.submit(_spec(3))
    assert full.value.details["retry_after_s"] == 30  # no job duration measured yet
    breaker = engine.breakers["b"]
    for _ in range(5):
        breaker.failed("boom")
    with pytest.raises(ModelUnavailable):
        engine.submit(_spec(4, variant="b"))


def test_cancel_a_queued_job_removes_it_and_its_inputs(tmp_path):
    engine = _engine(tmp_path)
    spec = _spec(0)
    import numpy as np

    spec.inputs = PreparedInputs(image=np.zeros((4, 4, 3), np.uint8)).save(engine.objects, spec.id)
    engine.submit(spec)
    assert engine.cancel("job0") is None
    view = engine.status("job0")
    assert view.status == JobStatus.canceled and view.error.code == "canceled"
    assert "job0" not in engine.queue and not (tmp_path / "inputs" / "job0").exists()
    assert engine.dispatchable(lambda v: True) == []


def test_retention_purges_old_jobs_then_the_oldest_files_over_the_cap(tmp_path):
    clock = Clock()
    engine = _engine(tmp_path, clock=clock, retention_days=1, max_output_gib=2.5 / 2**30 * 2**20)  # 2.5 MiB
    outputs = tmp_path / "outputs"
    for i in range(4):
        engine.submit(_spec(i))
        (spec,) = engine.dispatchable(lambda v: True)
        engine.start(spec.id)
        (outputs / f"f{i}.mp4").write_bytes(b"x" * 2**20)  # 1 MiB each
        engine.succeeded(spec.id, _result(f"f{i}.mp4"))
        engine.finish(spec.id)
        clock.now += 86400 / 2 if i == 0 else 1  # job0 ends half a day before the others
    clock.now += 86400 / 2 + 0.5  # job0 ended more than a day ago; the others not
    result = engine.purge()
    assert result["jobs_deleted"] == ["job0"]
    assert result["files_deleted"] == ["f0.mp4", "f1.mp4"]  # job0's with its job, then the oldest over 2.5 MiB
    assert sorted(p.name for p in outputs.iterdir()) == ["f2.mp4", "f3.mp4"]
    with pytest.raises(JobNotFound):
        engine.status("job0")
    kept = engine.status("job1")
    assert kept.status == JobStatus.success and kept.file_url is None  # the job stays, its file is gone


def test_recover_requeues_running_jobs_until_their_attempts_are_spent(tmp_path):
    engine = _engine(tmp_path, max_attempts=2)
    for i in range(3):
        engine.submit(_spec(i))
    engine.store.update("job1", status=JobStatus.running, attempts=1)
    engine.store.update("job2", status=JobStatus.running, attempts=2)
    again = _engine(tmp_path, max_attempts=2)
    again.recover()
    assert again.queue.of("a") == ["job0", "job1"]
    assert again.status("job2").status == JobStatus.error and again.status("job2").error.code == "internal"


def test_a_newer_router_fences_the_older_one(tmp_path):
    from jobs.store import Fenced

    old = _engine(tmp_path)
    old.recover()
    old.submit(_spec(0))
    new = _engine(tmp_path)
    new.recover()  # takes the lease
    assert new.generation == old.generation + 1
    assert old.dispatchable(lambda v: True) == [] and old.fenced  # the older one dispatches nothing more
    with pytest.raises(Fenced):
        old.store.update("job0", step=1)
    assert [s.id for s in new.dispatchable(lambda v: True)] == ["job0"] and not new.fenced


def test_a_change_and_what_observers_store_commit_together_or_not_at_all(tmp_path):
    from webhooks.store import WebhookStore

    engine = _engine(tmp_path)
    hooks = WebhookStore(engine.store.db)

    class Outbox:
        fail = False

        def job_changed(self, rec, event):
            hooks.add_webhook_message(f"msg-{rec.status.value}", rec.id, "video.test", "{}")
            if self.fail:
                raise OSError("the outbox write failed")

        def jobs_deleted(self, ids):
            pass

    outbox = Outbox()
    engine.observers.append(outbox)
    engine.submit(_spec(0))
    (spec,) = engine.dispatchable(lambda v: True)
    engine.start(spec.id)  # running, and its message, in one commit
    assert [m.id for m in hooks.webhook_messages("job0")] == ["msg-running"]
    outbox.fail = True
    with pytest.raises(OSError):
        engine.succeeded(spec.id, _result("a.mp4"))
    assert engine.store.get("job0").status == JobStatus.running  # rolled back with the message
    assert [m.id for m in hooks.webhook_messages("job0")] == ["msg-running"]


def test_finish_settles_a_job_whose_start_was_never_written(tmp_path):
    engine = _engine(tmp_path)
    engine.submit(_spec(0))
    (spec,) = engine.dispatchable(lambda v: True)  # dispatched, but its task never ran
    assert engine.finish(spec.id) is None
    assert engine.queue.of("a") == ["job0"] and engine.running == {}  # back in line, slot free
    assert engine.finish(spec.id) is None  # idempotent
    (again,) = engine.dispatchable(lambda v: True)
    assert again.id == "job0"


def test_a_success_removes_its_earlier_attempts_files_and_the_purge_sweeps_stale_ones(tmp_path):
    from jobs.filenames import default_filename

    engine = _engine(tmp_path)
    outputs = tmp_path / "outputs"
    first, second = (_spec(i).model_copy(update={"id": f"{i:032x}"}) for i in (1, 2))  # ids of 32 hex digits
    engine.submit(first)
    engine.submit(second)
    # An attempt of the first job that a replaced replica finished too, under its own default name.
    stale = default_filename("cpu", first.id, extension=".mp4")
    fresh = stale.replace("result_cpu_", "result_gpu0_")
    (spec,) = engine.dispatchable(lambda v: True)
    engine.start(spec.id)
    engine.failed(spec.id, RuntimeError("replica gone"), replica_died=True)  # its first attempt's replica died...
    engine.finish(spec.id)
    (outputs / stale).write_bytes(b"x")  # ...after writing its file (it was draining, say)
    (spec,) = engine.dispatchable(lambda v: True)
    engine.start(spec.id)
    (outputs / fresh).write_bytes(b"y")
    engine.succeeded(spec.id, _result(fresh))
    engine.finish(spec.id)
    assert sorted(p.name for p in outputs.iterdir()) == [fresh]  # the earlier attempt's file went
    # A terminal job whose record points to no file: its default-named leftovers go at the purge.
    engine.cancel(second.id)
    leftover = default_filename("cpu", second.id, extension=".mp4")
    (outputs / leftover).write_bytes(b"z")
    assert engine.purge()["files_deleted"] == [leftover]
    assert sorted(p.name for p in outputs.iterdir()) == [fresh]


def test_a_bulk_delete_goes_in_batches_and_lets_other_work_run(tmp_path):
    from jobs.engine import DELETE_BATCH

    engine = _engine(tmp_path, max_queued_jobs=1000)
    for i in range(2 * DELETE_BATCH + 50):
        engine.submit(_spec(i))
        engine.store.update(f"job{i}", status=JobStatus.success)
        engine.queue.remove(f"job{i}")
    ticks = []

    async def go():
        async def other_work():
            while True:
                ticks.append(len(engine.store.page(None, 1000, False)[0]))
                await asyncio.sleep(0)

        other = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        result = await engine.delete_jobs(None, None, True, False, cancel=None)
        other.cancel()
        return result

    result = asyncio.run(go())
    assert len(result["deleted"]) == 2 * DELETE_BATCH + 50 and engine.store.page(None, 10, False)[0] == []
    # Other work ran between the three batches and saw the jobs go a batch at a time.
    seen = sorted(set(ticks), reverse=True)
    assert seen[:3] == [2 * DELETE_BATCH + 50, DELETE_BATCH + 50, 50], seen


def test_a_dispatched_job_stays_queued_until_a_replica_takes_it_and_its_eta_counts_the_start(tmp_path):
    # Variant "a" autoscales and has no running replica: its queued jobs wait for one to start.
    running = {"a": False}
    config = EngineConfig(slots={"a": 2}, replica_start_s={"a": 100.0})
    engine = JobEngine(
        config,
        SqlJobStore(tmp_path / "jobs.db"),
        ResultFiles(ObjectStore(tmp_path)),
        clock=Clock(),
        replica_running=lambda v: running[v],
    )
    engine.store.record_job_seconds("a", 40.0)
    view = engine.submit(_spec(0))
    assert (view.status, view.waiting_for_replica, view.eta_seconds) == (JobStatus.queued, True, 140.0)
    (spec,) = engine.dispatchable(lambda v: True)  # its call now waits at the generator's handle
    waiting = engine.status(spec.id)
    assert (waiting.status, waiting.attempts, waiting.queue_position) == (JobStatus.queued, 0, 1)
    running["a"] = True  # the replica is up and takes the job: its first event
    engine.start(spec.id, gpu_id="0")
    started = engine.status(spec.id)
    assert (started.status, started.attempts, started.gpu_id, started.waiting_for_replica) == (
        JobStatus.running,
        1,
        "0",
        False,
    )
    engine.submit(_spec(1))
    assert engine.status("job1").eta_seconds == 40.0  # a replica runs: no start to wait for

"""Ownership, quotas and fair dispatch in the job domain, without Ray: two API keys' callers over
one engine on a real SQLite store."""

from __future__ import annotations

import asyncio

import pytest

from jobs.errors import FileNotFoundForJob, IdempotencyConflict, JobNotFound, QueueFull, QuotaExceeded
from jobs.model import JobStatus
from jobs.ownership import OPEN, QUOTA_WINDOW_S, Caller, Quotas
from jobs.queue import JobQueue
from tests.test_job_engine import Clock, _engine, _result, _spec

A = Caller(key_id="key_a", name="team-a")
B = Caller(key_id="key_b", name="team-b")
ADMIN = Caller(key_id="key_admin", name="ops", admin=True)


def _run_to_success(engine, job_id: str, name: str) -> None:
    engine.start(job_id)
    (engine.objects.folder / "outputs").mkdir(parents=True, exist_ok=True)
    ((engine.objects.folder / "outputs") / name).write_bytes(b"mp4")
    engine.succeeded(job_id, _result(name))
    engine.finish(job_id)


def test_a_key_sees_only_its_own_jobs_and_another_keys_job_is_a_404(tmp_path):
    engine = _engine(tmp_path, slots={"a": 1})
    engine.recover()
    mine = engine.submit(_spec(1), caller=A)
    theirs = engine.submit(_spec(2), caller=B)
    assert engine.store.get(mine.id).owner == "key_a" and engine.store.get(theirs.id).owner == "key_b"

    assert engine.status(mine.id, A).id == mine.id
    for call in (
        lambda: engine.status(theirs.id, A),
        lambda: engine.cancel(theirs.id, A),
        lambda: engine.remix_spec(theirs.id, "stolen", A),
        lambda: asyncio.run(engine.events(theirs.id, 0, 0.0, A)),
    ):
        with pytest.raises(JobNotFound) as refused:
            call()
        assert refused.value.message == f"no job with id {theirs.id!r}"
    with pytest.raises(JobNotFound, match="no job has that prompt"):
        engine.lookup("p2", A)  # B's prompt: A cannot learn that anyone typed it
    # Unknown and foreign read the same.
    with pytest.raises(JobNotFound) as unknown:
        engine.status("nope", A)
    with pytest.raises(JobNotFound) as foreign:
        engine.status(theirs.id, A)
    assert unknown.value.message.replace("nope", "X") == foreign.value.message.replace(theirs.id, "X")
    assert engine.store.get(theirs.id).status == JobStatus.queued  # the cancel did nothing

    assert [v.id for v in engine.page(None, 10, True, A)[0]] == [mine.id]
    assert [v.id for v in engine.page(None, 10, True, ADMIN)[0]] == [theirs.id, mine.id]
    with pytest.raises(JobNotFound):
        engine.page(theirs.id, 10, True, A)  # paging after another key's job is a 404 too
    assert engine.lookup("p1", A).id == mine.id and engine.lookup("p2", ADMIN).id == theirs.id


def test_delete_all_and_files_are_scoped_to_the_key_unless_admin(tmp_path):
    engine = _engine(tmp_path, slots={"a": 1})
    engine.recover()
    a_job = engine.submit(_spec(1), caller=A)
    b_job = engine.submit(_spec(2), caller=B)
    for job in (a_job, b_job):
        assert engine.dispatchable(lambda v: True)[0].id == job.id
        _run_to_success(engine, job.id, f"{job.id}.mp4")

    assert engine.check_file(f"{b_job.id}.mp4", B) == f"{b_job.id}.mp4"
    with pytest.raises(FileNotFoundForJob):
        engine.check_file(f"{b_job.id}.mp4", A)
    assert [v.id for v in engine.videos(None, 100, A)[0]] == [a_job.id]
    assert engine.delete_videos(None, None, True, A) == [f"{a_job.id}.mp4"]  # all=true: A's only
    assert ((engine.objects.folder / "outputs") / f"{b_job.id}.mp4").exists()

    async def no_cancel(job_id):
        raise AssertionError("nothing is running")

    done = asyncio.run(engine.delete_jobs(None, None, True, True, no_cancel, caller=A))
    assert done["deleted"] == [a_job.id]
    assert engine.store.get(b_job.id) is not None
    done = asyncio.run(engine.delete_jobs(None, None, True, True, no_cancel, caller=ADMIN))
    assert done["deleted"] == [b_job.id] and done["files_deleted"] == [f"{b_job.id}.mp4"]


def test_remix_belongs_to_the_caller_and_idempotency_keys_are_per_key(tmp_path):
    engine = _engine(tmp_path, slots={"a": 1})
    engine.recover()
    first = engine.submit(_spec(1), "same-key", "hash-1", caller=A)
    # B with the same Idempotency-Key makes its own job; A's replay returns A's.
    other = engine.submit(_spec(2), "same-key", "hash-2", caller=B)
    assert other.id != first.id and not other.replayed
    again = engine.submit(_spec(3), "same-key", "hash-1", caller=A)
    assert again.id == first.id and again.replayed
    with pytest.raises(IdempotencyConflict, match="job " + other.id):  # B's own use of the key, not A's
        engine.find_idempotent("same-key", "hash-1", B)
    remix = engine.remix_spec(first.id, "new words", A)
    assert remix.owner == "key_a" and remix.remixed_from == first.id


def test_max_queued_and_jobs_per_hour_refuse_with_the_limit_named_and_retry_after(tmp_path):
    clock = Clock()
    engine = _engine(tmp_path, clock=clock, slots={"a": 1})
    engine.recover()
    tight = A.model_copy(update={"quotas": Quotas(max_queued=2)})
    engine.submit(_spec(1), caller=tight)
    engine.submit(_spec(2), caller=tight)
    with pytest.raises(QuotaExceeded) as over:
        engine.submit(_spec(3), caller=tight)
    assert over.value.details["limit"] == "max_queued" and over.value.details["retry_after_s"] == 30
    assert "team-a" in over.value.message and "max_queued" in over.value.message
    engine.submit(_spec(4), caller=B)  # another key is not held back by A's quota

    hourly = Caller(key_id="key_h", name="hourly", quotas=Quotas(jobs_per_hour=3))
    for i in range(3):
        engine.submit(_spec(10 + i), caller=hourly)
        clock.now += 100
    with pytest.raises(QuotaExceeded) as per_hour:
        engine.submit(_spec(20), caller=hourly)
    # The oldest of the three was 300 s ago: a slot frees in 3600 - 300 s.
    assert per_hour.value.details == {"limit": "jobs_per_hour", "retry_after_s": int(QUOTA_WINDOW_S - 300)}
    clock.now += QUOTA_WINDOW_S - 300
    assert engine.submit(_spec(21), caller=hourly).status == JobStatus.queued

    # A restarted router still counts the last hour's submissions (from the store).
    again = _engine(tmp_path, clock=clock, slots={"a": 1})
    again.recover()
    with pytest.raises(QuotaExceeded):
        again.submit(_spec(22), caller=hourly)


def test_the_global_queue_bound_still_holds_over_the_keys(tmp_path):
    engine = _engine(tmp_path, slots={"a": 1}, max_queued_jobs=2)
    engine.recover()
    engine.submit(_spec(1), caller=A)
    engine.submit(_spec(2), caller=B)
    with pytest.raises(QueueFull):
        engine.submit(_spec(3), caller=ADMIN)


def test_dispatch_is_round_robin_between_keys_so_a_full_queue_of_one_does_not_starve_another(tmp_path):
    engine = _engine(tmp_path, slots={"a": 1})
    engine.recover()
    a_jobs = [engine.submit(_spec(i), caller=A).id for i in range(10)]
    b_job = engine.submit(_spec(99), caller=B).id
    # A's first job is next; B's comes right after it, not after A's ten.
    assert engine.status(b_job, B).queue_position == 2
    started = []
    for _ in range(4):
        (spec,) = engine.dispatchable(lambda v: True)
        started.append(spec.id)
        _run_to_success(engine, spec.id, f"{spec.id}.mp4")
    assert started == [a_jobs[0], b_job, a_jobs[1], a_jobs[2]]
    assert [engine.status(j, A).queue_position for j in a_jobs[3:6]] == [1, 2, 3]  # A's own order kept


def test_max_running_holds_a_keys_jobs_in_the_queue_while_others_start(tmp_path):
    engine = _engine(tmp_path, slots={"a": 3})
    engine.recover()
    one_at_a_time = A.model_copy(update={"quotas": Quotas(max_running=1)})
    a_jobs = [engine.submit(_spec(i), caller=one_at_a_time).id for i in range(3)]
    b_jobs = [engine.submit(_spec(10 + i), caller=B).id for i in range(2)]
    started = [s.id for s in engine.dispatchable(lambda v: True)]
    assert started == [a_jobs[0], b_jobs[0], b_jobs[1]]  # A's second waits although a slot is free
    _run_to_success(engine, a_jobs[0], "a0.mp4")
    assert [s.id for s in engine.dispatchable(lambda v: True)] == [a_jobs[1]]


def test_max_running_of_jobs_queued_before_a_restart_comes_from_the_key_store(tmp_path):
    engine = _engine(tmp_path, slots={"a": 2})
    engine.recover()
    for i in range(2):
        engine.submit(_spec(i), caller=A)
    again = _engine(tmp_path, slots={"a": 2})
    again.quotas_of = {"key_a": Quotas(max_running=1)}.get
    again.recover()
    assert [s.id for s in again.dispatchable(lambda v: True)] == ["job0"]


def test_open_service_jobs_have_no_owner_and_only_admins_see_them_once_keys_exist(tmp_path):
    engine = _engine(tmp_path, slots={"a": 1})
    engine.recover()
    job = engine.submit(_spec(1), caller=OPEN)
    assert engine.store.get(job.id).owner is None
    with pytest.raises(JobNotFound):
        engine.status(job.id, A)
    assert engine.status(job.id, ADMIN).id == job.id


def test_queue_rotation_order_front_pushes_and_counts():
    q = JobQueue()
    for job, owner in [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"), ("c1", None), ("b2", "B")]:
        q.push(job, "v", owner)
    assert q.of("v") == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert [q.position(j) for j in ("a1", "b1", "c1", "a2")] == [1, 2, 3, 4]
    assert q.owned("A") == 3 and q.owned(None) == 1 and q.depth("v") == 6 and len(q) == 6
    assert q.pop("v") == "a1"  # A goes to the back of the rotation
    assert q.of("v") == ["b1", "c1", "a2", "b2", "a3"]
    q.push("a1", "v", "A", front=True)  # handed back: next again
    assert q.head("v") == "a1"
    assert q.head("v", eligible=lambda owner: owner != "A") == "b1"
    assert q.pop("v", "b1") == "b1"
    with pytest.raises(IndexError):
        q.pop("v", "a3")  # not first of its lane
    assert q.remove("a2") and not q.remove("a2")
    assert q.of("v") == ["a1", "c1", "b2", "a3"]


def test_the_stores_queue_positions_match_the_routers_queue_across_keys(tmp_path):
    """What an ingress reads (indexed counts and the stored rotation) is the router's dispatch order."""
    engine = _engine(tmp_path, slots={"a": 1})
    engine.recover()
    owners = [A, A, B, OPEN, A, B, B, A, OPEN, A, B, A]
    ids = [engine.submit(_spec(i), caller=who).id for i, who in enumerate(owners)]

    def check() -> None:
        queued = [j for j in ids if j in engine.queue]
        assert [engine.store.queue_position(engine.store.get(j)) for j in queued] == [
            engine.queue.position(j) for j in queued
        ]
        assert sorted(engine.queue.position(j) for j in queued) == list(range(1, len(queued) + 1))

    check()
    for n in range(5):  # dispatch, a hand-back to the front, a cancel: the rotation moves each time
        (spec,) = engine.dispatchable(lambda v: True)
        if n == 2:
            engine.hand_back(spec.id, 0.0)
            engine.finish(spec.id)
            (spec,) = engine.dispatchable(lambda v: True)
        _run_to_success(engine, spec.id, f"{spec.id}.mp4")
        check()
    engine.cancel(ids[6], B)
    check()
    assert engine.store.queue_position(engine.store.get(ids[0])) is None  # started long ago

"""The job store on both of its databases (a SQLite file and a real PostgreSQL server), its
migrations, fencing and the uniqueness of Idempotency-Keys across writers."""

import asyncio
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from auth.keys import KeyStore
from jobs.database import Fenced
from jobs.errors import JobNotFound
from jobs.events import EVENT_ID_SPAN, JobEvent
from jobs.files import ResultFiles
from jobs.model import GenerationParams, JobSpec, JobStatus
from jobs.objects import ObjectStore
from jobs.ownership import Caller
from jobs.reader import EventWatch, JobReader
from jobs.store import ETA_EMA_ALPHA
from jobs.store import SqlJobStore as JobStore
from model_store.variants import Size
from serve_app.job_reads import JobReads
from webhooks.model import DeliveryState
from webhooks.store import WebhookStore

LEGACY = Path(__file__).parent / "data" / "jobs-before-migrations.db"


def _spec(i: int, variant="v", filename=None) -> JobSpec:
    params = GenerationParams(prompt=f"p{i}", width=64, height=64, num_frames=5, num_inference_steps=2,
                              guidance_scale=1.0, seed=i)
    return JobSpec(id=f"job{i}", variant=variant, params=params, output_size=Size(width=64, height=64),
                   filename=filename)


def test_jobs_survive_reopening_in_fifo_order(db_url):
    db = db_url
    store = JobStore(db)
    for i in range(5):
        store.insert(_spec(i))
    store.update("job1", status=JobStatus.running)
    store.update("job3", status=JobStatus.success, filename="a.mp4", result={"size_bytes": 3})
    store.close()

    again = JobStore(db)
    assert [r.id for r in again.by_status([JobStatus.queued])] == ["job0", "job2", "job4"]
    rec = again.get("job3")
    assert rec.status == JobStatus.success and rec.result == {"size_bytes": 3} and rec.spec.params.seed == 3
    if "://" not in db:
        assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_lookup_filenames_and_delete(db_url):
    store = JobStore(db_url)
    store.insert(_spec(1, filename="x.mp4"))
    store.insert(_spec(2))
    store.update("job2", prompt="p1")
    assert store.newest_with_prompt("p1").id == "job2"
    assert store.filename_owner("x.mp4").id == "job1"
    store.update("job1", status=JobStatus.canceled)
    assert store.filename_owner("x.mp4") is None  # a canceled job frees its name
    store.delete(["job1", "job2"])
    assert store.all() == []


def test_job_duration_moving_average(db_url):
    store = JobStore(db_url)
    assert store.avg_job_seconds("v") is None
    store.record_job_seconds("v", 10.0)
    store.record_job_seconds("v", 20.0)
    expected = 10 * (1 - ETA_EMA_ALPHA) + 20 * ETA_EMA_ALPHA
    assert abs(store.avg_job_seconds("v") - expected) < 1e-9
    store.close()
    assert abs(JobStore(db_url).avg_job_seconds("v") - expected) < 1e-9  # survives a restart


def test_the_data_folder_and_the_store_are_private_to_the_service_user(tmp_path):
    import stat

    from jobs.config import make_private_dir
    from jobs.files import ResultFiles
    from jobs.objects import ObjectStore

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    store = JobStore(tmp_path / "var" / "jobs.db")
    store.insert(_spec(1))  # a write, so the WAL file exists
    assert mode(tmp_path / "var") == 0o700 and mode(tmp_path / "var" / "jobs.db") == 0o600
    assert mode(tmp_path / "var" / "jobs.db-wal") == 0o600  # SQLite gives it the database's mode
    ResultFiles(ObjectStore(tmp_path / "other" / "deep"))
    assert [mode(tmp_path / p) for p in ("other", "other/deep", "other/deep/outputs")] == [0o700] * 3
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    make_private_dir(shared / "inputs")
    assert mode(shared) == 0o755 and mode(shared / "inputs") == 0o700  # an operator's folder keeps its mode


def test_pages_keys_and_webhook_records_on_both_databases(db_url):
    store = JobStore(db_url)
    for i in range(5):
        store.insert(_spec(i))
    first, more = store.page(None, 2, descending=True)
    assert [r.id for r in first] == ["job4", "job3"] and more
    rest, more = store.page("job3", 10, descending=True)
    assert [r.id for r in rest] == ["job2", "job1", "job0"] and not more
    with pytest.raises(KeyError):
        store.page("nope", 2, descending=False)
    keys = KeyStore(store.db)
    key, secret = keys.create("team")
    assert keys.count() == 1 and keys.revoke("team").revoked_at is not None and keys.count() == 0
    hooks = WebhookStore(store.db)
    with store.transaction():  # a status and its message in one commit
        store.update("job1", status=JobStatus.success)
        hooks.add_webhook_message("m1", "job1", "video.completed", "{}")
    [message] = hooks.webhook_messages("job1")
    assert message.state == DeliveryState.pending and store.get("job1").status == JobStatus.success
    hooks.delete_for_jobs(["job1"])
    assert hooks.webhook_messages() == []


def test_a_rolled_back_transaction_leaves_nothing(db_url):
    store = JobStore(db_url)
    store.insert(_spec(1))
    with pytest.raises(RuntimeError), store.transaction():
        store.update("job1", status=JobStatus.running)
        store.insert(_spec(2))
        raise RuntimeError("the webhook record could not be written")
    assert [(r.id, r.status) for r in store.all()] == [("job1", JobStatus.queued)]


def test_a_newer_lease_fences_the_older_writer(db_url):
    old, new = JobStore(db_url), JobStore(db_url)  # two routers, two connections
    old.claim_lease()
    old.insert(_spec(1))
    assert new.claim_lease() == 2 and not old.holds_lease()
    with pytest.raises(Fenced, match="the job store's lease moved to generation 2; this router holds 1"):
        old.update("job1", status=JobStatus.running)
    assert new.get("job1").status == JobStatus.queued  # the fenced write did not happen


def test_one_job_per_idempotency_key_when_two_writers_race(db_url):
    """Two writers (two connections, as two processes would have) insert the same key at once:
    exactly one job, and the other writer gets the database's uniqueness error."""
    stores = [JobStore(db_url), JobStore(db_url)]
    start, outcomes = threading.Barrier(2), []

    def submit(i: int) -> None:
        start.wait()
        try:
            stores[i].insert(_spec(10 + i), idempotency_key="owner:same-key")
            outcomes.append("stored")
        except IntegrityError:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused", "stored"]
    assert len(stores[0].all()) == 1 and stores[1].by_idempotency_key("owner:same-key") is not None


def test_events_and_queue_positions_on_both_databases(db_url):
    store = JobStore(db_url)
    owners = ["A", "A", "B", None, "A"]
    for i, owner in enumerate(owners):
        store.insert(_spec(i).model_copy(update={"owner": owner}))
    # One key's lane alone is FIFO; with three, they take turns in the stored rotation.
    store.set_rotation("v", ["B", "", "A"])
    positions = [store.queue_position(store.get(f"job{i}")) for i in range(5)]
    assert positions == [3, 4, 1, 2, 5]  # B, none, A, then A's two more (the other lanes are done)
    store.set_rotation("v", ["A", "B", ""])
    assert [store.queue_position(store.get(f"job{i}")) for i in range(5)] == [1, 4, 2, 3, 5]
    store.update("job0", status=JobStatus.running)
    assert store.queue_position(store.get("job1")) == 1 and store.running_of("v")[0].id == "job0"
    store.set_rotation("v", ["B", "", "A"])  # as the router stores it after A's turn
    assert store.queue_position(store.get("job1")) == 3
    assert store.counts() == {"v": {"queued": 4, "running": 1}}
    queued = JobEvent(event="queued", status=JobStatus.queued, phase=None, step=0, total_steps=2, progress=0.0,
                      eta_seconds=None, queue_position=1)
    ids = [store.append_event("job0", queued).id, store.append_event("job0", queued).id]
    assert ids == [EVENT_ID_SPAN, 2 * EVENT_ID_SPAN] and store.event_counts(["job0", "job1"]) == {"job0": 2}
    assert [e.id for e in store.events_after("job0", 1)] == [2 * EVENT_ID_SPAN]
    store.delete(["job0"])
    assert store.last_event("job0") is None


def test_a_status_read_gives_in_one_query_what_the_separate_reads_give(db_url, tmp_path):
    store = JobStore(db_url)
    for i, owner in enumerate(["A", "A", "B", None, "A", None]):
        store.insert(_spec(i).model_copy(update={"owner": owner}))
    store.insert(_spec(9, variant="w"))
    store.update("job9", status=JobStatus.running, started_at=50.0, step=1, total_steps=2, step_seconds=4.0)
    store.update("job0", status=JobStatus.running, started_at=100.0, step=3, total_steps=10, step_seconds=2.0)
    store.update("job5", status=JobStatus.running, started_at=90.0)
    store.record_job_seconds("v", 30.0)
    reader = JobReader(store, ResultFiles(ObjectStore(tmp_path / "files")), lambda v: 2, clock=lambda: 110.0)
    for rotation in ([], ["B", "", "A"], ["A", "B", ""]):
        store.set_rotation("v", rotation)
        for i in (0, 1, 2, 3, 4, 5, 9):
            rec = store.get(f"job{i}")
            found = store.get_for_view(f"job{i}")
            assert found.record == rec and found.queue_position == store.queue_position(rec)
            assert found.avg_job_s == store.avg_job_seconds(rec.variant)
            queued = rec.status == JobStatus.queued
            assert sorted(found.running) == (sorted(store.running_progress("v")) if queued else [])
            assert reader.status(f"job{i}") == reader.view(rec)
    assert [store.get_for_view(f"job{i}").queue_position for i in (1, 2, 3, 4)] == [1, 2, 3, 4]  # A, B, none, A
    # Two replicas, both busy: the next job waits for the sooner to end of job0 (20 s: the average's
    # 30 s less 10 run; its steps say 14) and job5 (10 s: 30 less 20 run), then runs 30 s; the 4th
    # in line waits a round of 30 s more.
    assert (reader.status("job1").eta_seconds, reader.status("job4").eta_seconds) == (40.0, 70.0)
    assert store.get_for_view("nope") is None


def test_an_ingress_reads_many_statuses_and_events_at_once(db_url, tmp_path):
    store = JobStore(db_url)
    for i in range(6):
        store.insert(_spec(i).model_copy(update={"owner": "B" if i == 5 else None}))
    store.update("job0", status=JobStatus.running, started_at=1.0)
    queued = JobEvent(event="queued", status=JobStatus.queued, phase=None, step=0, total_steps=2, progress=0.0,
                      eta_seconds=None, queue_position=1)
    store.append_event("job1", queued)
    reads = JobReads(db_url, ObjectStore(tmp_path / "files"), {"v": 1})

    async def read_all():
        # Four reads of each job at once: on PostgreSQL in worker threads sharing one connection.
        views = await asyncio.gather(*(reads.status(f"job{i}") for i in range(5) for _ in range(4)))
        batch = await reads.events("job1", 0, 0.0)
        with pytest.raises(JobNotFound):
            await reads.status("job5", Caller(key_id="A", name="a"))
        return views, batch

    views, batch = asyncio.run(read_all())
    assert [v.queue_position for v in views[::4]] == [None, 1, 2, 3, 4]
    assert [v.id for v in views] == [f"job{i}" for i in range(5) for _ in range(4)]
    assert [(e.id, e.event) for e in batch.events] == [(EVENT_ID_SPAN, "queued")]


def test_a_job_store_from_before_schema_versions_is_migrated_in_place(tmp_path):
    db = tmp_path / "jobs.db"
    shutil.copy(LEGACY, db)
    store = JobStore(db)
    assert store.db.schema_version == "0003" and "alembic_version" in store.db.tables
    # Every row of the old file, read by the current code.
    jobs = {r.id: r for r in store.all()}
    assert [r.id for r in store.all()] == ["legacy1", "legacy2", "legacy3"]
    assert jobs["legacy1"].status == JobStatus.success and jobs["legacy1"].result["filename"] == "legacy1.mp4"
    assert jobs["legacy2"].error_code == "out_of_memory" and jobs["legacy2"].owner is not None
    assert store.by_idempotency_key("idem-1").id == "legacy1"
    assert store.avg_job_seconds("ti2v-5b-tiny") == 12.5
    [message] = WebhookStore(store.db).webhook_messages("legacy1")
    assert message.attempts[0].status_code == 200
    [key] = KeyStore(store.db).list()
    assert key.name == "legacy-team" and key.id == jobs["legacy2"].owner
    # The lease goes on from the old generation, new jobs follow in FIFO order, keys stay unique.
    assert store.claim_lease() == 2
    assert store.insert(_spec(9)).seq > jobs["legacy3"].seq
    with pytest.raises(IntegrityError):
        store.insert(_spec(10), idempotency_key="idem-1")
    store.close()
    assert JobStore(db).db.schema_version == "0003"  # opening again migrates nothing
    # A job stored before events were has its state as one event, numbered below any stored one.
    reader = JobReader(JobStore(db), ResultFiles(ObjectStore(tmp_path / "data")), lambda v: 1)
    batch = reader.events("legacy1")
    assert [(e.id, e.event, e.filename) for e in batch.events] == [(1, "terminal", "legacy1.mp4")]
    assert batch.done and reader.events("legacy1", 1).events == [] and 1 < EVENT_ID_SPAN


def _queued_event(position: int) -> JobEvent:
    return JobEvent(
        event="queued",
        status=JobStatus.queued,
        phase=None,
        step=0,
        total_steps=2,
        progress=0.0,
        eta_seconds=None,
        queue_position=position,
    )


def _listeners(url: str) -> list[int]:
    """The server pids of the connections LISTENing for job events."""
    import psycopg

    from jobs.event_notices import libpq_url

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'"
        ).fetchall()
    return [row[0] for row in rows]


def test_a_long_poll_on_postgresql_hears_of_each_stored_event_without_polling(postgres, tmp_path):
    url = postgres.new_database()
    writer = JobStore(url)  # the router's connection
    writer.insert(_spec(1))
    first = writer.append_event("job1", _queued_event(1))  # its place now: no queue move to report
    # Polls only once a minute, and re-reads the job once a minute: only an announcement wakes it sooner.
    watch = EventWatch(
        JobReader(JobStore(url), ResultFiles(ObjectStore(tmp_path / "f")), lambda v: 1),
        poll_s=60,
        refresh_s=60,
        notices_url=url,
        notified_poll_s=60,
    )

    async def wait_for_next(after: int, store_it) -> list[tuple[int, int | None]]:
        waiting = asyncio.create_task(watch.wait("job1", after, timeout_s=30))
        await asyncio.sleep(0.2)  # the poller's first read is done; it waits a minute now
        assert not waiting.done()
        await asyncio.to_thread(store_it)
        batch = await asyncio.wait_for(waiting, 10)
        return [(e.id, e.queue_position) for e in batch.events]

    async def run():
        for _ in range(100):  # the listening thread connects
            if watch.notices.listening:
                break
            await asyncio.sleep(0.05)
        heard = await wait_for_next(first.id, lambda: writer.append_event("job1", _queued_event(1)))
        # The server drops the listening connection: it reconnects, and hears the next event.
        (pid,) = _listeners(url)
        await asyncio.to_thread(writer.db.execute, "SELECT pg_terminate_backend(:pid)", {"pid": pid})
        for _ in range(100):
            if watch.notices.listening and _listeners(url) not in ([], [pid]):
                break
            await asyncio.sleep(0.05)
        heard_again = await wait_for_next(2 * EVENT_ID_SPAN, lambda: writer.append_event("job1", _queued_event(1)))
        return heard, heard_again

    try:
        heard, heard_again = asyncio.run(run())
    finally:
        watch.close()
    assert heard == [(2 * EVENT_ID_SPAN, 1)]
    assert heard_again == [(3 * EVENT_ID_SPAN, 1)]
    assert _listeners(url) == []  # close() closed the listening connection

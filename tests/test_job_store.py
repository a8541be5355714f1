import sqlite3

from jobs.store import ETA_EMA_ALPHA
from jobs.store import SqliteJobStore as JobStore
from jobs.model import GenerationParams, JobSpec, JobStatus
from model_store.variants import Size


def _spec(i: int, variant="v", filename=None) -> JobSpec:
    params = GenerationParams(prompt=f"p{i}", width=64, height=64, num_frames=5, num_inference_steps=2,
                              guidance_scale=1.0, seed=i)
    return JobSpec(id=f"job{i}", variant=variant, params=params, output_size=Size(width=64, height=64),
                   filename=filename)


def test_jobs_survive_reopening_in_fifo_order(tmp_path):
    db = tmp_path / "jobs.db"
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
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_lookup_filenames_and_delete(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    store.insert(_spec(1, filename="x.mp4"))
    store.insert(_spec(2))
    store.update("job2", prompt="p1")
    assert store.newest_with_prompt("p1").id == "job2"
    assert store.filename_owner("x.mp4").id == "job1"
    store.update("job1", status=JobStatus.canceled)
    assert store.filename_owner("x.mp4") is None  # a canceled job frees its name
    store.delete(["job1", "job2"])
    assert store.all() == []


def test_job_duration_moving_average(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    assert store.avg_job_seconds("v") is None
    store.record_job_seconds("v", 10.0)
    store.record_job_seconds("v", 20.0)
    expected = 10 * (1 - ETA_EMA_ALPHA) + 20 * ETA_EMA_ALPHA
    assert abs(store.avg_job_seconds("v") - expected) < 1e-9
    store.close()
    assert abs(JobStore(tmp_path / "jobs.db").avg_job_seconds("v") - expected) < 1e-9  # survives a restart


def test_the_data_folder_and_the_store_are_private_to_the_service_user(tmp_path):
    import stat

    from jobs.config import make_private_dir
    from jobs.files import ResultFiles

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    store = JobStore(tmp_path / "var" / "jobs.db")
    store.insert(_spec(1))  # a write, so the WAL file exists
    assert mode(tmp_path / "var") == 0o700 and mode(tmp_path / "var" / "jobs.db") == 0o600
    assert mode(tmp_path / "var" / "jobs.db-wal") == 0o600  # SQLite gives it the database's mode
    ResultFiles(tmp_path / "other" / "deep" / "outputs")
    assert [mode(tmp_path / p) for p in ("other", "other/deep", "other/deep/outputs")] == [0o700] * 3
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    make_private_dir(shared / "inputs")
    assert mode(shared) == 0o755 and mode(shared / "inputs") == 0o700  # an operator's folder keeps its mode

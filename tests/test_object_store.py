"""The object store (jobs/objects.py) on a local folder and on a real S3-compatible server
(moto's server mode on 127.0.0.1): whole objects only, ranges, prefixes, retention through the
job engine, and inputs saved by one process and read by another."""

import io
import time

import numpy as np
import pytest

from jobs.engine import EngineConfig, JobEngine
from jobs.files import ResultFiles
from jobs.inputs import PreparedInputs, copy_inputs, remove_inputs
from jobs.model import JobStatus
from jobs.objects import ObjectStore
from jobs.config import QueuePolicy, RetentionPolicy
from jobs.store import SqlJobStore
from tests.test_job_engine import Clock, _result, _spec


def test_objects_round_trip_with_ranges_prefixes_and_deletes(storage_url):
    store = ObjectStore(storage_url)
    data = bytes(range(256)) * 8192  # 2 MiB: two streaming chunks
    assert store.put_file("outputs/a.mp4", io.BytesIO(data)) == len(data)
    store.put_bytes("outputs/b.mp4", b"bee")
    store.put_bytes("outputs-not/c.mp4", b"sea")
    assert store.get_bytes("outputs/a.mp4") == data
    assert store.get_range("outputs/a.mp4", 1000, 1010) == data[1000:1010]
    assert b"".join(store.iter_range("outputs/a.mp4", 5, len(data) - 3)) == data[5:-3]
    assert sorted(o.key for o in store.list("outputs/")) == ["outputs/a.mp4", "outputs/b.mp4"]
    info = store.info("outputs/b.mp4")
    assert info.size == 3 and abs(info.modified - time.time()) < 120
    assert store.delete("outputs/b.mp4") and not store.delete("outputs/b.mp4") and store.info("outputs/b.mp4") is None
    with pytest.raises(FileNotFoundError):
        store.get_bytes("outputs/b.mp4")
    assert store.delete_prefix("outputs/") == 1 and store.list("outputs/") == []
    assert store.get_bytes("outputs-not/c.mp4") == b"sea"  # a sibling prefix is untouched


class BrokenReader(io.RawIOBase):
    """A file that fails after ``good`` bytes, as a disk error or a killed writer would."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise OSError("read error (injected)")
        n = min(self.left, size if size > 0 else self.left)
        self.left -= n
        return b"x" * n


def test_an_interrupted_upload_leaves_no_object_and_keeps_the_old_one(storage_url):
    store = ObjectStore(storage_url)
    with pytest.raises(OSError):
        store.put_file("outputs/new.mp4", BrokenReader(3 << 20))
    assert store.info("outputs/new.mp4") is None and store.list("outputs/") == []
    store.put_bytes("outputs/kept.mp4", b"complete")
    with pytest.raises(OSError):
        store.put_file("outputs/kept.mp4", BrokenReader(1 << 20))
    assert store.get_bytes("outputs/kept.mp4") == b"complete"


def test_inputs_saved_by_one_process_are_read_by_another_and_removed(storage_url):
    ingress, generator = ObjectStore(storage_url), ObjectStore(storage_url)  # two processes' views
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    saved = PreparedInputs(image=image, images=[image, 255 - image], summary={"image": "4x6"}).save(ingress, "job1")
    assert saved.key == "inputs/job1/" and saved.folder is None
    loaded = PreparedInputs.load(saved, generator)
    assert np.array_equal(loaded.image, image) and np.array_equal(loaded.images[1], 255 - image)
    with pytest.raises(FileExistsError):
        PreparedInputs(image=image).save(ingress, "job1")
    remix = copy_inputs(saved, generator, "job2")
    assert remix.key == "inputs/job2/" and np.array_equal(PreparedInputs.load(remix, ingress).image, image)
    remove_inputs(saved, generator)
    assert ingress.list("inputs/job1/") == [] and len(ingress.list("inputs/job2/")) == 3


def test_retention_deletes_result_objects_and_their_jobs(storage_url, tmp_path):
    clock = Clock()
    files = ResultFiles(ObjectStore(storage_url))
    engine = JobEngine(
        EngineConfig(queue=QueuePolicy(), retention=RetentionPolicy(retention_days=1), slots={"a": 1}),
        SqlJobStore(tmp_path / "jobs.db"), files, clock=clock,
    )
    spec = _spec(1)
    engine.submit(spec)
    [started] = engine.dispatchable(lambda v: True)
    engine.start(started.id)
    files.store.put_bytes(files.key("r1.mp4"), b"mp4 bytes")
    engine.succeeded(started.id, _result("r1.mp4"))
    engine.finish(started.id)
    assert engine.store.get(spec.id).status == JobStatus.success and files.exists("r1.mp4")
    clock.now += 2 * 86400
    purged = engine.purge()
    assert purged["jobs_deleted"] == [spec.id] and purged["files_deleted"] == ["r1.mp4"] and not files.exists("r1.mp4") and engine.store.get(spec.id) is None


def test_a_result_is_written_again_after_the_folder_emptied(tmp_path):
    """The local store removes a folder with its last object; the next result's folder comes back."""
    files = ResultFiles(ObjectStore(tmp_path))
    files.store.put_bytes(files.key("a.mp4"), b"a")
    assert files.remove("a.mp4") and not (tmp_path / "outputs").exists()
    path = files.writable_path("b.mp4")
    path.write_bytes(b"b")
    assert files.exists("b.mp4") and path == tmp_path / "outputs" / "b.mp4"

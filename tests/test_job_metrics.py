"""JobMetrics on a real JobEngine and SQLite store (no Ray): what each job's life records."""

from jobs.config import QueuePolicy
from jobs.engine import EngineConfig, JobEngine
from jobs.files import ResultFiles
from jobs.objects import ObjectStore
from jobs.metrics import SERIES, JobMetrics
from jobs.model import JobStatus, Phase, ProgressEvent
from jobs.store import SqlJobStore
from tests.test_job_engine import Clock, _result, _spec


class Recorder:
    """A MetricsSink that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict, float]] = []

    def inc(self, series, labels, value=1.0):
        self.calls.append(("inc", series, labels, value))

    def observe(self, series, labels, value):
        self.calls.append(("observe", series, labels, value))

    def set(self, series, labels, value):
        self.calls.append(("set", series, labels, value))

    def of(self, series):
        return [(labels, value) for _, s, labels, value in self.calls if s == series]


class Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_job_records_its_wait_phases_step_time_and_end(tmp_path):
    clock, mono, sink = Clock(), Monotonic(), Recorder()
    metrics = JobMetrics(sink, monotonic=mono)
    engine = JobEngine(EngineConfig(queue=QueuePolicy(), slots={"a": 1}), SqlJobStore(tmp_path / "jobs.db"),
                       ResultFiles(ObjectStore(tmp_path)), clock=clock, metrics=metrics)
    ok, bad = _spec(1), _spec(2)
    engine.submit(ok)
    engine.submit(bad)
    assert metrics.submitted_total == {"a": 2} and sink.of("jobs_submitted_total") == [({"variant": "a"}, 1.0)] * 2

    clock.now += 7.0  # waited 7 s
    [spec] = engine.dispatchable(lambda v: True)
    engine.start(spec.id)
    mono.now = 1.0
    engine.progress(spec.id, ProgressEvent(phase=Phase.encoding_prompt, step=0, total_steps=4, gpu_id="cpu"))
    mono.now = 1.5
    for step in (1, 2, 3, 4):
        engine.progress(spec.id, ProgressEvent(phase=Phase.denoising, step=step, total_steps=4, step_seconds=0.75, gpu_id="cpu"))
    mono.now = 4.5
    engine.progress(spec.id, ProgressEvent(phase=Phase.decoding, step=4, total_steps=4, step_seconds=0.75, gpu_id="cpu"))
    mono.now = 5.0
    clock.now += 5.0
    engine.succeeded(spec.id, _result("a.mp4"))
    engine.finish(spec.id)

    assert sink.of("queue_wait_seconds") == [({"variant": "a"}, 7.0)]
    assert sink.of("phase_seconds") == [
        ({"variant": "a", "phase": "loading"}, 1.0),
        ({"variant": "a", "phase": "encoding_prompt"}, 0.5),
        ({"variant": "a", "phase": "denoising"}, 3.0),
        ({"variant": "a", "phase": "decoding"}, 0.5),
    ]
    assert sink.of("denoising_step_seconds") == [({"variant": "a", "speed": ""}, 0.75)]
    assert sink.of("job_seconds") == [({"variant": "a", "status": "success"}, 5.0)]
    # The other job is canceled while queued: it ends, with no start, no wait and no duration.
    engine.cancel(bad.id)
    assert engine.store.get(bad.id).status == JobStatus.canceled
    assert metrics.ended_total == {("a", "success", ""): 1, ("a", "canceled", "canceled"): 1}
    assert len(sink.of("queue_wait_seconds")) == 1 and len(sink.of("job_seconds")) == 1
    for _, series, labels, _ in sink.calls:  # every call names every label of its series
        assert set(labels) == set(SERIES[series].labels), (series, labels)

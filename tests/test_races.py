"""Nothing lost, part two: the races and hangs a careful reading of the router and generator
found. Real Ray, real processes; faults from the fault switch (deployments/faults.py: generator
faults, and the router's job-store faults) or real kills; never a mock of Ray or the pipeline.

Webhooks go to a receiver on 127.0.0.1 (allowlisted in this app) and nowhere else.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from deployments.replica_status import generator_deployment_name
from jobs.model import GenerationParams, JobSpec
from model_store.variants import Size, load_variant
from tests.conftest import deploy
from tests.fault_harness import AppUnderTest, check_invariants, disarm_after_each
from tests.media_samples import CHELSEA
from tests.webhook_receiver import Receiver

TI2V = "ti2v-5b-tiny"
APP = "races"
FAST = {"size": "1280x720", "num_inference_steps": 2, "variant": TI2V}
GENERATE_S, ENCODE_S = 15, 5  # the twin's 2-step jobs take about 5 s; writing its MP4 well under 1 s
ARGS = dict(
    variants=[TI2V],
    max_queued_jobs=64,
    max_attempts=2,
    circuit_breaker={"failure_threshold": 1000, "cooldown_s": 1},
    overrides={TI2V: {"warmup": False, "timeouts": {"generate_s": GENERATE_S, "encode_s": ENCODE_S}}},
    # Webhooks to the test's own receiver on 127.0.0.1; a 2 s retry window, shorter than a router restart.
    webhooks={"allow_networks": ["127.0.0.1/32"], "retry_for_s": 2.0, "first_retry_s": 0.2, "timeout_s": 2.0},
)


@pytest.fixture(scope="module")
def races(ray_serve, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("races")
    url = deploy(ray_serve, APP, data_dir, fault_file=str(data_dir / "faults.json"), **ARGS)
    with httpx.Client(base_url=url, timeout=120) as c, Receiver() as rx:
        d = AppUnderTest(c, data_dir, url, APP, FAST)
        d.receiver = rx
        yield d
        d.arm()
        check_invariants(d, d.submitted)
    from ray import serve

    serve.delete(APP)


_disarm = disarm_after_each("races")


def _router():
    from ray import serve

    return serve.get_deployment_handle("Router", APP)


def _spec(prompt: str) -> JobSpec:
    """A 2-step, 5-frame ti2v job as the ingress would build it."""
    variant = load_variant(TI2V)
    native = variant.native_sizes["1280x720"]
    params = GenerationParams(prompt=prompt, width=native.width, height=native.height, num_frames=5,
                              num_inference_steps=2, guidance_scale=5.0, seed=7)
    return JobSpec(id=uuid.uuid4().hex, variant=TI2V, params=params, output_size=Size.parse("1280x720"))


def _deliveries(rx: Receiver, job_id: str) -> list[str]:
    """The webhook-ids of every POST the receiver got about ``job_id``."""
    import json

    return [r.headers["webhook-id"] for r in rx.requests if json.loads(r.body)["data"]["id"] == job_id]


def test_cancels_at_the_moment_of_dispatch_never_leak_a_slot(races):
    # One replica: a leaked slot would stop this variant for good. Each round submits a job
    # straight to the router while 40 cancels are in flight, so some land between its dispatch
    # and the first step of the task that runs it.
    router = _router()
    rounds = 25
    with ThreadPoolExecutor(8) as pool:
        for i in range(rounds):
            spec = _spec(f"canceled at dispatch {i}")
            submitted = router.submit.remote(spec)
            cancels = [pool.submit(lambda: router.cancel.remote(spec.id).result()) for _ in range(40)]
            submitted.result()
            races.submitted.append(spec.id)
            for f in cancels:
                try:
                    f.result()
                except Exception:  # a cancel that arrived before the job was stored: 404
                    pass
            assert races.status(spec.id)["status"] == "canceled"
    # Every slot came back: a third job runs.
    after = races.wait(races.submit("after the cancels"), timeout=120)
    assert after["status"] == "success" and after["attempts"] == 1


def test_a_failing_store_at_a_jobs_start_hands_it_back_and_dispatch_goes_on(races):
    # The write that marks the job running fails (a full disk, a lock held past the timeout).
    races.arm({"variant": "router", "kind": "store_error", "op": "update", "status": "running"})
    first = races.wait(races.submit("its start could not be written"), timeout=120)
    assert first["status"] == "success" and first["attempts"] == 1  # handed back: no attempt spent
    second = races.wait(races.submit("and the next one runs"), timeout=120)
    assert second["status"] == "success"


def test_a_store_that_keeps_failing_gets_the_router_replaced_and_nothing_is_lost(races):
    pid = races.pid("Router")
    # Every job-state write fails (the disk is gone), for good: the router's check_health fails
    # after 30 s of it, Serve replaces the router, and the queued job runs once the disk is back.
    races.arm({"variant": "router", "kind": "store_error", "op": "update", "times": 1_000_000})
    job_id = races.submit("queued while the store fails")
    deadline = time.monotonic() + 180
    while True:
        try:
            if races.pid("Router") != pid:
                break
        except Exception:  # the router is being replaced
            pass
        assert time.monotonic() < deadline, "the router was never replaced"
        time.sleep(1)
    races.arm()
    s = races.wait(job_id, timeout=120)
    assert s["status"] == "success" and s["attempts"] == 1, s


def test_a_cancel_after_the_file_is_written_leaves_no_file(races):
    # The result is reported 6 s after its file is complete: the cancel lands in between.
    races.arm({"variant": TI2V, "kind": "slow_result", "hang_s": 6})
    job_id = races.submit("canceled with my file on disk")
    outputs = races.data_dir / "outputs"
    deadline = time.monotonic() + 120
    while not any(job_id[:8] in p.name and not p.name.startswith(".") for p in outputs.iterdir()):
        assert time.monotonic() < deadline, "the result file never appeared"
        time.sleep(0.05)
    canceled = races.client.post(f"/jobs/{job_id}/cancel").json()
    assert canceled["status"] == "canceled"
    time.sleep(8)  # past the delayed report, and the replica's own cleanup
    assert [p.name for p in outputs.iterdir() if job_id[:8] in p.name] == []
    assert races.status(job_id)["status"] == "canceled" and races.status(job_id)["file_url"] is None
    assert races.wait(races.submit("the replica serves on"))["status"] == "success"


def test_a_router_that_dies_after_storing_a_job_keeps_its_inputs_and_answers_202(races):
    races.arm({"variant": "router", "kind": "store_crash", "op": "insert"})
    pid = races.pid("Router")
    r = races.client.post("/generate", data={"prompt": "stored, then the router died", **FAST},
                          files={"image": ("chelsea.png", CHELSEA.read_bytes(), "image/png")})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    races.submitted.append(job_id)
    assert races.pid("Router") != pid  # it did die, after the commit
    s = races.wait(job_id, timeout=180)
    assert s["status"] == "success" and s["inputs"]["image"]["width"] > 0, s


def test_a_step_that_never_returns_ends_the_job_and_replaces_the_replica(races):
    pid = races.pid(f"generator-{TI2V}")
    races.arm({"variant": TI2V, "kind": "hang", "at_step": 1, "hang_s": 3600})
    started = time.monotonic()
    s = races.wait(races.submit("stuck in a kernel"), timeout=120)
    assert s["status"] == "error" and s["error"]["code"] == "timeout", s
    assert "a step hung" in s["error"]["message"]
    assert time.monotonic() - started < GENERATE_S + ENCODE_S + 10 + 30  # the watchdog, not the hour
    races.arm()
    after = races.wait(races.submit("on the fresh replica"), timeout=240)
    assert after["status"] == "success"
    assert races.pid(f"generator-{TI2V}") != pid  # check_health failed and Serve replaced it


def test_a_redeploy_runs_each_queued_job_to_success_once(races, ray_serve):
    from ray import serve

    from serve_app.app import build_app

    rx = races.receiver
    jobs = [races.submit(f"through a redeploy {i}", webhook_url=rx.url) for i in range(5)]
    races.wait(jobs[0], until=lambda s: s["status"] == "running")
    # An open event stream keeps the old router busy, so it drains while the new one runs.
    with races.client.stream("GET", f"/jobs/{jobs[-1]}/events") as events:
        next(events.iter_lines())
        args = dict(ARGS, max_queued_jobs=65, data_dir=str(races.data_dir), fault_file=str(races.fault_file))
        serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")
        finals = [races.wait(j, timeout=300) for j in jobs]
    assert all(s["status"] == "success" for s in finals), finals
    time.sleep(3)  # deliveries are sent after the commit
    for job_id in jobs:  # one terminal state, once: one video.completed message per job
        assert len(set(_deliveries(rx, job_id))) == 1, (job_id, _deliveries(rx, job_id))


def test_a_terminal_webhook_survives_a_crash_right_after_its_commit_and_a_long_outage(races):
    rx = races.receiver
    races.arm({"variant": "router", "kind": "store_crash", "op": "update", "status": "success"})
    job_id = races.submit("finished as the router died", webhook_url=rx.url)
    s = races.wait(job_id, timeout=180)
    assert s["status"] == "success"
    deadline = time.monotonic() + 60  # the router restarts in more than the 2 s retry window
    while not _deliveries(rx, job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(set(_deliveries(rx, job_id))) == 1, _deliveries(rx, job_id)


def test_a_job_ended_during_router_start_is_delivered_once(races):
    rx = races.receiver
    # Running when the router dies, twice (max_attempts=2): the second restart ends it as it starts.
    races.arm({"variant": TI2V, "kind": "hang", "at_step": 1, "hang_s": 8, "times": 2})
    job_id = races.submit("ended while the router starts", webhook_url=rx.url)
    for attempt in (1, 2):
        races.wait(job_id, until=lambda s: s["status"] == "running" and s["attempts"] == attempt, timeout=120)
        os.kill(races.pid("Router"), signal.SIGKILL)
        if attempt == 1:
            # The replica would finish the orphaned first run and hand its result to the second
            # dispatch (a success); replaced, it runs the job again and meets the second hang.
            assert races.kill(generator_deployment_name(TI2V))
    s = races.wait(job_id, timeout=180)
    assert s["status"] == "error" and "max_attempts=2" in s["error"]["message"]
    time.sleep(5)  # any second delivery would have come by now
    assert len(_deliveries(rx, job_id)) == 1, _deliveries(rx, job_id)


def test_a_callers_filename_cannot_take_another_jobs_default_name(races):
    job = races.wait(races.submit("a default name"))
    taken = job["filename"]
    assert job["id"] in taken  # default names carry the whole job id
    r = races.client.post("/generate", json={"prompt": "squatter", **FAST, "filename": taken.replace(job["id"], uuid.uuid4().hex)})
    assert r.status_code == 422 and r.json()["error"]["param"] == "filename"
    assert "default names" in r.json()["error"]["message"]

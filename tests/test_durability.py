"""Nothing lost: real Ray, real processes, faults injected with os.kill and the fault switch
(deployments/faults.py, turned on by the app's ``fault_file``), never a mock of Ray or the pipeline.

Every job a test here submits is checked at the end of the module: it still exists, it is
terminal (or still queued), and at most one result file was written for it.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import all_videos, deploy
from tests.fault_harness import AppUnderTest, check_invariants, disarm_after_each
from tests.media_samples import CHELSEA

TI2V, T2V = "ti2v-5b-tiny", "t2v-a14b-tiny"
APP = "dura"
FAST = {"size": "1280x720", "num_inference_steps": 2, "variant": TI2V}
GENERATE_S = 15  # the ti2v twin's generate timeout in this app; its 2-step jobs take about 5 s
ENCODE_S = 5  # and its encode timeout; writing its 5-frame MP4 takes well under a second
CAP_BYTES = 5 * 2**19  # 2.5 MiB: two of this app's 1280x720 5-frame MP4s (about 1.1 MB each) fit

PURGED: set[str] = set()
# warmup off: replicas restart often here, and a warm-up would only add to each restart.
DURA_ARGS = dict(variants=[TI2V, T2V], max_queued_jobs=16, max_attempts=2,
                 circuit_breaker={"failure_threshold": 3, "cooldown_s": 6},
                 overrides={TI2V: {"warmup": False, "timeouts": {"generate_s": GENERATE_S, "encode_s": ENCODE_S}},
                            T2V: {"warmup": False}},
                 retention_days=1, max_output_gib=CAP_BYTES / 2**30, purge_interval_s=3600)


@pytest.fixture(scope="module")
def dura(ray_serve, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("dura")
    url = deploy(ray_serve, APP, data_dir, fault_file=str(data_dir / "faults.json"), **DURA_ARGS)
    with httpx.Client(base_url=url, timeout=60) as c:
        d = AppUnderTest(c, data_dir, url, APP, FAST)
        yield d
        d.arm()
        check_invariants(d, d.submitted, PURGED)
    from ray import serve
    serve.delete(APP)


_disarm = disarm_after_each("dura")


def test_out_of_memory_ends_the_job_with_suggestions_and_the_replica_keeps_serving(dura):
    pid = dura.pid(f"generator-{TI2V}")
    dura.arm({"variant": TI2V, "kind": "oom", "at_step": 1})
    s = dura.wait(dura.submit("too big for the device"))
    assert s["status"] == "error" and s["error"]["code"] == "out_of_memory" and s["attempts"] == 1
    message = s["error"]["message"]
    assert "fewer frames or a smaller size" in message and "offload or quantization" in message
    assert "Traceback" not in message and "/" not in message.replace("offload or", "")
    after = dura.wait(dura.submit("after the oom"))
    assert after["status"] == "success" and dura.pid(f"generator-{TI2V}") == pid  # same replica


def test_a_killed_generator_job_is_retried_and_other_variants_keep_serving(dura):
    pid = dura.pid(f"generator-{TI2V}")
    dura.arm({"variant": TI2V, "kind": "crash", "at_step": 1})
    job = dura.submit("the replica dies under me")
    other = dura.submit("meanwhile on another variant", variant=T2V, size="832x480")
    s = dura.wait(job)
    assert s["status"] == "success" and s["attempts"] == 2, s
    assert dura.pid(f"generator-{TI2V}") != pid  # Serve restarted the replica
    assert dura.client.get(s["file_url"]).content[4:8] == b"ftyp"
    o = dura.wait(other)
    assert o["status"] == "success" and o["attempts"] == 1


# A repeated-restart sequence: in `make soak`, out of `make test`'s 35-minute budget.
@pytest.mark.soak
def test_a_job_that_kills_every_replica_ends_after_max_attempts(dura):
    dura.arm({"variant": TI2V, "kind": "crash", "at_step": 1, "times": 2})
    s = dura.wait(dura.submit("poison"))
    assert s["status"] == "error" and s["attempts"] == 2
    assert s["error"]["code"] == "model_unavailable" and "max_attempts=2" in s["error"]["message"]
    assert dura.wait(dura.submit("healthy again"))["status"] == "success"


def test_a_cuda_error_fails_the_health_check_and_the_job_runs_on_the_replacement(dura):
    pid = dura.pid(f"generator-{TI2V}")
    dura.arm({"variant": TI2V, "kind": "cuda_error", "at_step": 1})
    s = dura.wait(dura.submit("illegal memory access"), timeout=240)
    assert s["status"] == "success" and s["attempts"] == 2, s
    assert dura.pid(f"generator-{TI2V}") != pid  # replaced after check_health failed


def test_a_phase_over_its_timeout_ends_with_code_timeout(dura):
    dura.arm({"variant": TI2V, "kind": "hang", "at_step": 1, "hang_s": GENERATE_S + 1})
    s = dura.wait(dura.submit("stuck"))
    assert s["status"] == "error" and s["error"]["code"] == "timeout"
    assert f"timeouts.generate_s={GENERATE_S}" in s["error"]["message"]
    assert dura.wait(dura.submit("unstuck"))["status"] == "success"


def test_writing_over_its_timeout_ends_with_code_timeout_and_leaves_no_file(dura):
    dura.arm({"variant": TI2V, "kind": "slow_write", "hang_s": ENCODE_S + 1})
    s = dura.wait(dura.submit("slow disk"))
    assert s["status"] == "error" and s["error"]["code"] == "timeout" and s["file_url"] is None
    assert f"timeouts.encode_s={ENCODE_S}" in s["error"]["message"]
    leftovers = [p.name for p in (dura.data_dir / "outputs").iterdir() if s["id"][:8] in p.name]
    assert leftovers == []  # not even a partial file


def test_a_full_disk_fails_the_job_and_the_service_keeps_running(dura):
    dura.arm({"variant": TI2V, "kind": "disk_full"})
    s = dura.wait(dura.submit("nowhere to write"))
    assert s["status"] == "error" and s["error"]["code"] == "disk_full" and s["file_url"] is None
    assert "free disk space" in s["error"]["message"]
    assert dura.wait(dura.submit("space again"))["status"] == "success"


def test_circuit_breaker_opens_refuses_with_retry_after_and_a_probe_closes_it(dura):
    dura.arm({"variant": TI2V, "kind": "error", "at_step": 1, "times": 3})
    failing = [dura.submit(f"failure {i}") for i in range(3)]
    waiting = dura.submit("queued while the circuit opens")
    for job_id in failing:
        s = dura.wait(job_id)
        assert s["status"] == "error" and s["error"]["code"] == "internal"
    refused = dura.client.post("/generate", json={"prompt": "refused", **FAST})
    assert refused.status_code == 503 and 1 <= int(refused.headers["Retry-After"]) <= 6
    error = refused.json()["error"]
    assert error["code"] == "model_unavailable" and "failed 3 jobs in a row" in error["message"]
    other = dura.client.post("/generate", json={"prompt": "other variant", **FAST, "variant": T2V, "size": "832x480"})
    assert other.status_code == 202  # the breaker is per variant
    dura.submitted.append(other.json()["id"])
    assert dura.status(waiting)["status"] == "queued"  # queued jobs wait out the cooldown
    s = dura.wait(waiting, timeout=60)  # then it runs as the probe, and succeeds
    assert s["status"] == "success" and s["started_at"] >= dura.status(failing[-1])["finished_at"] + 5
    dura.submit("accepted again")


def test_idempotency_key_returns_the_same_job(dura):
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = dura.client.post("/generate", json={"prompt": "once", **FAST}, headers=key)
    again = dura.client.post("/generate", json={"prompt": "once", **FAST}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    dura.submitted.append(first.json()["id"])
    other = dura.client.post("/generate", json={"prompt": "twice?", **FAST}, headers=key)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    v_key = {"Idempotency-Key": f"video-{uuid.uuid4()}"}
    a = dura.client.post("/v1/videos", json={"prompt": "once more", "model": TI2V}, headers=v_key).json()
    b = dura.client.post("/v1/videos", json={"prompt": "once more", "model": TI2V}, headers=v_key).json()
    assert a["id"] == b["id"]
    dura.submitted.append(a["id"])
    listed = [v["id"] for v in dura.client.get("/v1/videos", params={"limit": 100}).json()["data"]]
    assert listed.count(first.json()["id"]) == 1 and listed.count(a["id"]) == 1
    dura.wait(first.json()["id"])


def test_a_client_that_goes_away_never_cancels_its_job(dura):
    # A POST whose client leaves right after sending: Ray Serve's proxy may cancel the request
    # before the handler stores anything (HTTP 499 in its log); once the handler is storing the
    # job, it finishes (shielded). Either way: no job half-stored, no orphaned inputs, and a
    # stored job runs to success.
    prompt = f"nobody waits for me {uuid.uuid4()}"
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{prompt}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"variant\"\r\n\r\n{TI2V}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"num_inference_steps\"\r\n\r\n2\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + CHELSEA.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    host, port = dura.base_url.removeprefix("http://").split("/")[0].split(":")
    with socket.create_connection((host, int(port))) as s:  # 127.0.0.1 only
        s.sendall(f"POST /{APP}/generate HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode() + body)
    time.sleep(3)
    found = dura.client.get("/jobs/lookup", params={"prompt": prompt})
    assert found.status_code in (200, 404)
    if found.status_code == 200:
        dura.submitted.append(found.json()["id"])
        assert dura.wait(found.json()["id"])["status"] == "success"
    inputs = dura.data_dir / "inputs"
    stored = {p.name for p in inputs.iterdir() if not p.name.startswith(".")} if inputs.exists() else set()
    for folder in stored:
        assert dura.client.get(f"/status/{folder}").status_code == 200, f"orphaned inputs {folder}"
    # A job whose listeners leave mid-stream (SSE, then WebSocket) runs on to success.
    job_id = dura.submit("listeners leave", num_inference_steps=4)
    with dura.client.stream("GET", f"/jobs/{job_id}/events") as events:
        next(events.iter_lines())
    ws_url = dura.base_url.replace("http://", "ws://") + f"/ws/jobs/{job_id}"
    with connect(ws_url) as ws:
        ws.recv(timeout=30)
    final = dura.wait(job_id)
    assert final["status"] == "success" and final["attempts"] == 1


def test_a_killed_router_reloads_its_queue_in_fifo_order_and_requeues_the_running_job(dura):
    running = dura.submit("running when the router dies", num_inference_steps=6)
    dura.wait(running, until=lambda s: s["status"] == "running" and s["step"] >= 1)
    queued = [dura.submit(f"queued {i}") for i in range(3)]
    os.kill(dura.pid("Router"), signal.SIGKILL)
    finals = {j: dura.wait(j, timeout=240) for j in [running, *queued]}
    assert all(s["status"] == "success" for s in finals.values()), finals
    assert finals[running]["attempts"] == 2 and all(finals[j]["attempts"] == 1 for j in queued)
    starts = [finals[j]["started_at"] for j in [running, *queued]]
    assert starts == sorted(starts)  # FIFO held across the restart


# A repeated-restart sequence: in `make soak`, out of `make test`'s 35-minute budget.
@pytest.mark.soak
def test_a_redeploy_lets_the_running_job_finish_or_hands_it_back(dura, ray_serve):
    from ray import serve

    from serve_app.app import build_app

    before = dura.replicas(f"generator-{TI2V}")
    job = dura.submit("running through a redeploy", num_inference_steps=6)
    dura.wait(job, until=lambda s: s["status"] == "running" and s["step"] >= 1)
    # A changed generator config makes Serve replace the replica; it finishes its job first
    # (graceful_shutdown_timeout_s is the variant's longest job).
    args = dict(DURA_ARGS, data_dir=str(dura.data_dir), fault_file=str(dura.fault_file),
                overrides={**DURA_ARGS["overrides"],
                           TI2V: {"warmup": False, "timeouts": {"generate_s": GENERATE_S + 1, "encode_s": ENCODE_S}}})
    serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")
    s = dura.wait(job)
    assert s["status"] == "success" and s["attempts"] in (1, 2), s
    assert dura.replicas(f"generator-{TI2V}") != before  # the replica was replaced
    assert dura.wait(dura.submit("after the redeploy"))["status"] == "success"


# A repeated-restart sequence: in `make soak`, out of `make test`'s 35-minute budget.
@pytest.mark.soak
def test_a_job_running_through_max_attempts_router_deaths_ends_with_the_reason(dura):
    # The first run hangs at its first step, so the job is still running when the router dies,
    # and its second dispatch waits behind that orphaned run (a dead router cannot stop it)
    # when the router dies again.
    dura.arm({"variant": TI2V, "kind": "hang", "at_step": 1, "hang_s": GENERATE_S + 1})
    job = dura.submit("the router keeps dying under me")
    for attempt in (1, 2):  # max_attempts=2 in this app
        dura.wait(job, until=lambda s: s["status"] == "running" and s["attempts"] == attempt)
        assert dura.kill("Router")  # ray.kill by actor name: no handle to a restarted replica needed
    s = dura.wait(job)
    assert s["status"] == "error" and s["attempts"] == 2 and s["error"]["code"] == "internal"
    assert "running when the service stopped, 2 times (max_attempts=2)" in s["error"]["message"]
    # The orphans end (the first in the generate timeout); then the generator serves the next job.
    after = dura.wait(dura.submit("after the orphans"), timeout=240)
    assert after["status"] == "success"


def test_retention_purges_old_jobs_and_the_disk_cap_deletes_the_oldest_files(dura):
    old, *middle, recent = [dura.submit(name) for name in ("old", "middle 1", "middle 2", "recent")]
    for job_id in (old, *middle, recent):
        assert dura.wait(job_id)["status"] == "success"
    old_file = dura.data_dir / "outputs" / dura.status(old)["filename"]
    video = dura.client.get(f"/v1/videos/{recent}").json()  # OpenAI's expires_at follows the retention
    assert video["expires_at"] == int(dura.status(recent)["finished_at"] + 86400)
    # Age one job by two days, straight in the job store's SQLite file (WAL allows a second writer).
    with sqlite3.connect(dura.data_dir / "jobs.db") as db:
        db.execute("UPDATE jobs SET finished_at = finished_at - 2 * 86400 WHERE id = ?", (old,))
    from ray import serve
    result = serve.get_deployment_handle("Router", APP).purge.remote().result()
    PURGED.add(old)
    assert old in result["jobs_deleted"] and recent not in result["jobs_deleted"]
    assert dura.client.get(f"/status/{old}").status_code == 404 and not old_file.exists()
    # The cap: what is left fits in it, and every deleted file is older than every kept one.
    videos = all_videos(dura.client)
    kept = sum((dura.data_dir / "outputs" / v["filename"]).stat().st_size for v in videos)
    assert 0 < kept <= CAP_BYTES and recent in [v["job_id"] for v in videos]
    deleted = [f for f in result["files_deleted"] if f != old_file.name]
    assert deleted, "the cap deleted nothing; the test's jobs should exceed it"
    oldest_kept = min(v["created_at"] for v in videos)
    for job_id in dura.submitted:
        s = dura.status(job_id)
        if s.get("filename") in deleted:
            assert s["file_url"] is None and s["finished_at"] <= oldest_kept


# Waits for Serve to give up on two failing apps (about 45 s): in `make soak`. `make test` keeps the
# not-ready-with-the-reason half in tests/test_model_store_http.py.
@pytest.mark.soak
def test_a_variant_that_cannot_start_is_not_ready_and_its_jobs_follow_the_policy(ray_serve, tmp_path):
    """Two apps at once (their constructors fail in parallel): missing weights with
    when_unavailable=refuse, and a load over load_s with when_unavailable=queue."""
    from ray import serve

    from serve_app.app import build_app

    cases = {
        "broken-refuse": ("refuse", {"weights": {"local_path": str(tmp_path / "no-such-weights"), "repo_id": None}},
                          f"weights folder for variant '{T2V}' is missing"),
        "broken-queue": ("queue", {"timeouts": {"load_s": 0.01}},  # loading cannot finish in 10 ms
                         f"loading {T2V} took longer than timeouts.load_s=0.01 s"),
    }
    def run(name: str) -> None:
        policy, override, _ = cases[name]
        app = build_app({"data_dir": str(tmp_path / name), "variants": [T2V], "when_unavailable": policy,
                         "overrides": {T2V: override}})
        try:
            serve.run(app, name=name, route_prefix=f"/{name}")  # returns (or raises) once Serve gives up
        except Exception:  # Serve reports the failed deployment; the app's other parts keep running
            pass

    with ThreadPoolExecutor(len(cases)) as pool:
        list(pool.map(run, cases))
    for name, (policy, _, expected) in cases.items():
        with httpx.Client(base_url=f"{ray_serve}/{name}", timeout=30) as c:
            deadline = time.monotonic() + 120
            while True:
                ready = c.get("/ready")
                variant = ready.json()["variants"][T2V] if ready.status_code == 503 else {}
                if variant.get("deployment_status") in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert ready.status_code == 503 and variant["ready"] is False, ready.text
            assert expected in variant["reason"], variant
            assert str(tmp_path) not in ready.text and "Traceback" not in ready.text  # no server paths
            time.sleep(2.5)  # the router looks at the generators every 2 s
            r = c.post("/generate", json={"prompt": "needs t2v", "variant": T2V, "size": "832x480"})
            if policy == "refuse":
                assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
                assert expected in r.json()["error"]["message"] and "/ready" in r.json()["error"]["message"]
            else:
                assert r.status_code == 202
                time.sleep(3)
                s = c.get(f"/status/{r.json()['id']}").json()
                assert s["status"] == "queued" and s["attempts"] == 0  # waits; never sent to a dead deployment
    for name in cases:
        serve.delete(name)

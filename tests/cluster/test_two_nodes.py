"""The seed contract on two Ray nodes with the job store on PostgreSQL and inputs and results in
an S3 bucket: no file moves through a local disk from one node to another. Then faults: the router
killed mid-run (no job lost or stuck, FIFO kept) and a generator on the GPU node killed mid-job
(retried)."""

import json
import os
import signal
import time

import httpx
import pytest
from ray import serve

from deployments.faults import write_faults
from deployments.replica_status import generator_deployment_name
from jobs.objects import ObjectStore
from tests.conftest import TINY, deploy
from tests.media_samples import CHELSEA, encode_image, load_rgb

APP = "two"
FAST = {"size": "1280x720", "num_inference_steps": 3, "num_frames": 5}


@pytest.fixture(scope="module")
def app(two_nodes, postgres, s3, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("two-data")
    storage = f"s3://{s3.new_bucket()}/state"
    faults = tmp_path_factory.mktemp("two-faults") / "faults.json"
    write_faults(faults, [])
    url = deploy(two_nodes["url"], APP, data_dir, variants=[TINY], storage_url=storage,
                 job_store_url=postgres.new_database(), control_resources={"head_node": 0.01}, fault_file=str(faults),
                 overrides={TINY: {"warmup": False, "deployment": {"resources": {"gpu_node": 1}}}})
    with httpx.Client(base_url=url, timeout=60) as client:
        yield {"client": client, "bucket": ObjectStore(storage), "data_dir": data_dir, "faults": faults}
    serve.delete(APP)


def _router():
    return serve.get_deployment_handle("Router", APP).process_info.remote().result()


def _generator():
    return serve.get_deployment_handle(generator_deployment_name(TINY), APP).info.remote().result()


def _status(client, job_id):
    """/status, retried while the router restarts."""
    deadline = time.monotonic() + 60
    while True:
        r = client.get(f"/status/{job_id}")
        if r.status_code < 500 or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.2)


def _wait(client, job_id, until=lambda s: s["status"] in ("success", "error", "canceled"), timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _status(client, job_id)
        if until(s):
            return s
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: {s}")


def test_the_generators_run_on_the_gpu_node_and_the_router_on_the_head(app):
    assert _generator()["node_id"] != _router()["node_id"]


def test_the_seed_contract_across_two_nodes(app):
    client, bucket = app["client"], app["bucket"]
    # A text job, watched through its SSE stream to the end.
    text = client.post("/generate", json={"prompt": "a heron on a post", **FAST}).json()["id"]
    events = []
    with client.stream("GET", f"/jobs/{text}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1]["event"] == "terminal":
                    break
    assert events[-1]["status"] == "success" and any(e["event"] == "step" for e in events)
    final = _status(client, text)
    # An image job: the ingress (head) stores the decoded upload in the bucket, the generator
    # (GPU node) reads it from there.
    png = encode_image(load_rgb(CHELSEA), "PNG")
    image = client.post("/generate", data={"prompt": "the cat yawns", **{k: str(v) for k, v in FAST.items()}},
                        files={"image": ("cat.png", png, "image/png")}).json()["id"]
    assert _wait(client, image)["status"] == "success"
    # Downloads come from the bucket, whole and by range.
    whole = client.get(final["file_url"]).content
    assert whole[4:8] == b"ftyp" and whole == bucket.get_bytes(f"outputs/{final['filename']}")
    part = client.get(final["file_url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == whole[:100]
    # Lookup by prompt, then the OpenAI routes.
    assert client.get("/jobs/lookup", params={"prompt": "a heron on a post"}).json()["id"] == text
    video = client.post("/v1/videos", json={"prompt": "a slow tide", "model": TINY, "seconds": "1"}).json()
    done = _wait(client, video["id"])
    assert done["status"] == "success"
    content = client.get(f"/v1/videos/{video['id']}/content")
    assert content.status_code == 200 and content.content[4:8] == b"ftyp"
    # Cancel a running job: no file anywhere.
    slow = client.post("/generate", json={"prompt": "a long one", **FAST, "num_inference_steps": 40}).json()["id"]
    _wait(client, slow, until=lambda s: s["status"] == "running" and s["step"] >= 1)
    assert client.post(f"/jobs/{slow}/cancel").status_code == 200
    canceled = _wait(client, slow)
    assert canceled["status"] == "canceled" and not [o for o in bucket.list("outputs/") if slow[:8] in o.key]
    # Delete: the job, its file and its inputs go; the file's URL answers 404.
    assert client.delete(f"/v1/videos/{image}").status_code == 200
    assert bucket.list(f"inputs/{image}/") == [] and client.get(f"/status/{image}").status_code == 404
    assert client.delete(f"/v1/videos/{text}").status_code == 200
    assert client.get(final["file_url"]).status_code == 404
    # Nothing went through the data folder: the job store and the objects are elsewhere.
    left = sorted(p.name for p in app["data_dir"].iterdir())
    assert left == ["webhook_secret"], left


def test_a_router_killed_mid_run_loses_no_job_and_keeps_fifo(app):
    client = app["client"]
    running = client.post("/generate", json={"prompt": "running when the router dies", **FAST,
                                             "num_inference_steps": 8}).json()["id"]
    _wait(client, running, until=lambda s: s["status"] == "running" and s["step"] >= 1)
    queued = [client.post("/generate", json={"prompt": f"queued {i}", **FAST}).json()["id"] for i in range(3)]
    os.kill(_router()["pid"], signal.SIGKILL)
    finals = {j: _wait(client, j) for j in [running, *queued]}
    assert all(s["status"] == "success" for s in finals.values()), finals
    assert all(finals[j]["attempts"] == 1 for j in queued)
    starts = [finals[j]["started_at"] for j in [running, *queued]]
    assert starts == sorted(starts)  # FIFO held across the restart


def test_a_generator_killed_on_the_gpu_node_is_retried(app):
    client = app["client"]
    pid = _generator()
    write_faults(app["faults"], [{"variant": TINY, "kind": "crash", "at_step": 1}])
    job = client.post("/generate", json={"prompt": "the replica dies under me", **FAST}).json()["id"]
    final = _wait(client, job)
    write_faults(app["faults"], [])
    assert final["status"] == "success" and final["attempts"] == 2, final
    assert client.get(final["file_url"]).content[4:8] == b"ftyp"
    assert pid["node_id"] == _generator()["node_id"]  # restarted on the GPU node again

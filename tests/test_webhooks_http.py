"""Webhooks through the running service on a local Ray cluster: submit-time refusals on the main
app (no allowlist), and real deliveries to a receiver on 127.0.0.1 on an app that allowlists it.

No request goes to any address outside 127.0.0.0/8: the refusals are checked at submit,
where the guard refuses before anything is sent.
"""

import json
import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import TINY, deploy, free_port, wait_for, wait_terminal
from tests.webhook_receiver import Receiver, standard_signature

FAST = {"size": "1280x720", "num_inference_steps": 2}


def _job_count(client) -> int:
    return len(client.get("/v1/videos", params={"limit": 100}).json()["data"])


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:9/hook", "a loopback address"),
    ("http://169.254.169.254/latest/meta-data/iam/", "a cloud metadata address"),
    ("http://10.0.0.1/hook", "a private address"),
    ("http://167772161/hook", "a private address (it resolves to 10.0.0.1)"),  # a name the resolver maps to 10.0.0.1
    ("http://localhost:9/hook", "a loopback address (it resolves to 127.0.0.1)"),
    ("http://[::ffff:10.0.0.1]/hook", "a private address"),
    ("file:///etc/passwd", "must be http or https"),
])
def test_submit_refuses_webhooks_to_non_public_addresses_with_422(client, url, words):
    before = _job_count(client)
    r = client.post("/generate", json={"prompt": "a fox", "webhook_url": url, **FAST})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and error["param"] == "webhook_url"
    assert words in error["message"]
    if "address" in words:
        assert "allow_networks" in error["message"]  # says what would admit it
    assert "Traceback" not in r.text and "/work" not in r.text
    # The same refusal through the OpenAI-shaped endpoint, and nothing was queued either way.
    v = client.post("/v1/videos", json={"prompt": "a fox", "webhook_url": url})
    assert v.status_code == 422 and v.json()["error"]["param"] == "webhook_url"
    assert _job_count(client) == before


def test_webhook_events_need_a_url_and_valid_names(client):
    r = client.post("/generate", json={"prompt": "a fox", "webhook_events": ["video.completed"], **FAST})
    assert r.status_code == 422 and r.json()["error"]["param"] == "webhook_events"
    r = client.post("/generate", json={"prompt": "a fox", "webhook_url": "http://10.0.0.1/",
                                       "webhook_events": ["video.exploded"], **FAST})
    assert r.status_code == 422 and "webhook_events" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def hooks(ray_serve, tmp_path_factory):
    """An app whose config allowlists 127.0.0.1, with fast retries; yields (client, secret)."""
    data_dir = tmp_path_factory.mktemp("hooks")
    url = deploy(ray_serve, "hooks", data_dir, variants=[TINY],
                 webhooks={"allow_networks": ["127.0.0.1/32"], "first_retry_s": 0.5, "retry_for_s": 20,
                           "progress_interval_s": 2.0})
    secret = (data_dir / "webhook_secret").read_text().strip()  # created at first start
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c, secret
    from ray import serve
    serve.delete("hooks")


def test_terminal_webhook_is_signed_and_redelivered_after_two_500s(hooks):
    client, secret = hooks
    with Receiver(script=[500, 500]) as rx:
        r = client.post("/generate", json={"prompt": "a heron", "webhook_url": rx.url, **FAST})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_terminal(client, job_id)
        requests = rx.wait(3)
    assert {q.headers["webhook-id"] for q in requests} == {requests[0].headers["webhook-id"]}
    for q in requests:
        body = Webhook(secret).verify(q.body, q.headers)  # a receiver's library verifies it
        assert q.headers["webhook-signature"] == standard_signature(
            secret, q.headers["webhook-id"], q.headers["webhook-timestamp"], q.body)
    assert body["type"] == "video.completed"
    data = body["data"]
    assert data["id"] == job_id and data["status"] == "success" and data["progress"] == 1.0
    video = client.get(data["file_url"])
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    # Every attempt is in the job store, with what the receiver answered.
    record = client.get(f"/jobs/{job_id}/webhooks").json()
    assert record["webhook"] == {"url": rx.url, "events": ["video.completed", "video.failed", "video.canceled"]}
    (message,) = record["messages"]
    assert message["id"] == requests[0].headers["webhook-id"] and message["state"] == "delivered"
    assert [a["status_code"] for a in message["attempts"]] == [500, 500, 200]
    assert message["attempts"][0]["error"] == "the receiver answered HTTP 500"
    assert message["attempts"][0]["next_attempt_at"] >= message["attempts"][0]["attempted_at"] + 0.5
    status = client.get(f"/status/{job_id}").json()
    assert status["webhook"]["url"] == rx.url and status["status"] == "success"


def test_progress_webhooks_every_2s_at_most_then_the_terminal_one(hooks):
    client, secret = hooks
    with Receiver() as rx:
        r = client.post("/generate", data={"prompt": "a slow river", "size": "1280x720", "num_inference_steps": "8",
                                           "webhook_url": rx.url,
                                           "webhook_events": "video.progress,video.completed"})  # a form field
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_terminal(client, job_id)
        rx.wait(1, where=lambda q: json.loads(q.body)["type"] == "video.completed")
    messages = client.get(f"/jobs/{job_id}/webhooks").json()["messages"]
    progress = [m for m in messages if m["event_type"] == "video.progress"]
    assert len(progress) >= 2 and messages[-1]["event_type"] == "video.completed"
    times = [m["attempts"][0]["attempted_at"] for m in progress]
    assert all(b - a >= 2.0 - 0.05 for a, b in zip(times, times[1:])), times
    bodies = [json.loads(m["payload"]) for m in progress]
    assert all(b["data"]["status"] == "running" for b in bodies)
    steps = [b["data"]["step"] for b in bodies]
    assert steps == sorted(steps)
    assert all(m["state"] == "delivered" for m in messages)


def test_a_receiver_that_is_down_never_affects_the_job_and_cancel_sends_canceled(hooks):
    client, _ = hooks
    down = f"http://127.0.0.1:{free_port()}/hook"
    job_id = client.post("/generate", json={"prompt": "an owl", "webhook_url": down, **FAST}).json()["id"]
    assert wait_terminal(client, job_id)[-1]["status"] == "success"
    deadline = time.monotonic() + 30
    while not (messages := client.get(f"/jobs/{job_id}/webhooks").json()["messages"]) or not (
            messages[0]["attempts"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    first = messages[0]
    assert first["state"] == "pending" and "could not connect" in first["attempts"][0]["error"]
    assert first["attempts"][0]["next_attempt_at"] is not None  # still retrying; the job is long done
    with Receiver() as rx:
        long = client.post("/generate", json={"prompt": "a moth", "size": "1280x720", "num_inference_steps": 40,
                                              "webhook_url": rx.url}).json()["id"]
        wait_for(client, long, lambda s: s["status"] == "running")
        client.post(f"/jobs/{long}/cancel")
        (q,) = rx.wait(1)
    body = json.loads(q.body)
    assert body["type"] == "video.canceled" and body["data"]["error"]["code"] == "canceled"

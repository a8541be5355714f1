"""Webhook delivery without Ray: a real SQLite job store, real HTTP to a receiver on 127.0.0.1.

Host names other than 127.0.0.1 go through ``FakeResolver`` (DNS is outside this machine), and
every one of them answers 127.0.0.1, so no request leaves 127.0.0.0/8.
"""

import asyncio
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook

from jobs.events import JobEvent
from jobs.model import GenerationParams, JobSpec, JobStatus, WebhookSpec
from jobs.store import SqlJobStore
from webhooks.sender import WebhookConfig, WebhookSender, check_secret, load_or_create_secret
from webhooks.store import WebhookStore
from model_store.variants import Size
from tests.conftest import free_port
from tests.test_webhook_guard import FakeResolver
from tests.webhook_receiver import Receiver, standard_signature

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks specification's example secret
LOCAL = ["127.0.0.1/32"]


def _config(**overrides) -> WebhookConfig:
    return WebhookConfig(**{"allow_networks": LOCAL, "first_retry_s": 0.2, "retry_for_s": 10.0,
                            "timeout_s": 2.0, **overrides})


def _stores(tmp_path) -> tuple[SqlJobStore, WebhookStore]:
    """The job store and the webhook tables on one database, as the router has them."""
    jobs = SqlJobStore(tmp_path / "jobs.db")
    return jobs, WebhookStore(jobs.db)


def _job(store: SqlJobStore, url: str, events=None, status=JobStatus.success):
    spec = JobSpec(id=f"job{time.monotonic_ns()}", variant="ti2v-5b-tiny", output_size=Size.parse("1280x720"),
                   params=GenerationParams(prompt="a fox", width=1280, height=704, num_frames=5,
                                           num_inference_steps=2, guidance_scale=5.0, seed=1),
                   webhook=WebhookSpec(url=url, **({"events": events} if events else {})))
    store.insert(spec)
    store.update(spec.id, status=status, filename="fox.mp4" if status == JobStatus.success else None,
                 error_code=None if status == JobStatus.success else "canceled")
    return store.get(spec.id)


def _event(rec) -> JobEvent:
    return JobEvent(id=9, event="terminal", status=rec.status, phase=None, step=2, total_steps=2, progress=1.0,
                    eta_seconds=None, queue_position=None, error=None, filename=rec.filename)


async def _settle(sender: WebhookSender, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sender._tasks and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not sender._tasks, "deliveries still running"


def _run(coro):
    return asyncio.run(coro)


def test_delivery_is_signed_pinned_to_the_checked_address_and_recorded(tmp_path):
    store, hooks = _stores(tmp_path)
    dns = FakeResolver({"hooks.example.test": ["127.0.0.1"]})
    with Receiver() as rx:
        rec = _job(store, f"http://hooks.example.test:{rx.port}/hook?team=7")

        async def go():
            sender = WebhookSender(_config(), SECRET, store, hooks, resolve=dns)
            sender.notify(rec, _event(rec))
            await _settle(sender)
            await sender.aclose()
        _run(go())
        (req,) = rx.wait(1)
    # The name was looked up by the guard only, and the connection went to the address it checked.
    assert dns.asked == [("hooks.example.test", rx.port)]
    assert req.headers["host"] == f"hooks.example.test:{rx.port}" and req.path == "/hook?team=7"
    body = Webhook(SECRET).verify(req.body, req.headers)  # the specification's reference verifier
    assert req.headers["webhook-signature"] == standard_signature(
        SECRET, req.headers["webhook-id"], req.headers["webhook-timestamp"], req.body)
    assert body["type"] == "video.completed" and body["data"]["id"] == rec.id
    assert body["data"]["file_url"] == "/files/fox.mp4" and body["data"]["status"] == "success"
    (message,) = hooks.webhook_messages(rec.id)
    assert message.id == req.headers["webhook-id"] and message.state == "delivered"
    assert message.payload.encode() == req.body
    (attempt,) = message.attempts
    assert (attempt.attempt, attempt.status_code, attempt.address, attempt.error) == (1, 200, "127.0.0.1", None)


def test_with_a_url_signer_the_payloads_file_url_is_signed_for_the_receiver(tmp_path):
    from auth.signed_urls import UrlSigner, derive_key

    store, hooks = _stores(tmp_path)
    signer = UrlSigner(derive_key(SECRET, "file-urls"), ttl_s=3600)
    with Receiver() as rx:
        rec = _job(store, f"http://127.0.0.1:{rx.port}/hook")

        async def go():
            sender = WebhookSender(_config(), SECRET, store, hooks, url_signer=signer)
            sender.notify(rec, _event(rec))
            await _settle(sender)
            await sender.aclose()
        _run(go())
        (req,) = rx.wait(1)
    url = Webhook(SECRET).verify(req.body, req.headers)["data"]["file_url"]
    path, _, query = url.partition("?")
    params = dict(p.split("=") for p in query.split("&"))
    assert path == "/files/fox.mp4" and signer.valid(path, params["expires"], params["signature"])


def test_retries_on_5xx_429_and_timeouts_with_backoff_then_delivers(tmp_path):
    store, hooks = _stores(tmp_path)
    with Receiver(script=[500, 429, 503], delay_s=[0, 0, 0, 3.0]) as rx:
        rec = _job(store, rx.url)

        async def go():
            sender = WebhookSender(_config(timeout_s=1.0), SECRET, store, hooks)
            sender.notify(rec, _event(rec))
            await _settle(sender)
            await sender.aclose()
        _run(go())
        requests = rx.wait(5)
    assert len({r.headers["webhook-id"] for r in requests}) == 1  # one message, retried
    assert len({r.body for r in requests}) == 1
    for r in requests:  # each attempt signed afresh, each verifies
        Webhook(SECRET).verify(r.body, r.headers)
    (message,) = hooks.webhook_messages(rec.id)
    assert message.state == "delivered"
    codes = [a.status_code for a in message.attempts]
    assert codes == [500, 429, 503, None, 200]
    assert "no answer within 1 s" in message.attempts[3].error
    gaps = [b.attempted_at - a.attempted_at for a, b in zip(message.attempts, message.attempts[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8  # exponential: 0.2 s, doubling
    assert all(a.next_attempt_at is not None for a in message.attempts[:-1])
    assert message.attempts[-1].next_attempt_at is None


def test_gives_up_after_the_retry_window_and_never_retries_a_4xx(tmp_path):
    store, hooks = _stores(tmp_path)
    down = _job(store, f"http://127.0.0.1:{free_port()}/hook")
    with Receiver(script=[400, 301]) as rx:
        bad_request = _job(store, rx.url)
        redirect = _job(store, rx.url)

        async def go():
            sender = WebhookSender(_config(retry_for_s=1.5), SECRET, store, hooks)
            for rec in (down, bad_request, redirect):
                sender.notify(rec, _event(rec))
                await _settle(sender)
            await sender.aclose()
        _run(go())
    (m_down,) = hooks.webhook_messages(down.id)
    assert m_down.state == "failed" and len(m_down.attempts) >= 3
    assert all("could not connect" in a.error for a in m_down.attempts)
    assert m_down.attempts[-1].attempted_at - m_down.created_at <= 1.5 + 0.5
    (m_400,) = hooks.webhook_messages(bad_request.id)
    assert m_400.state == "failed" and [a.status_code for a in m_400.attempts] == [400]
    (m_301,) = hooks.webhook_messages(redirect.id)
    assert m_301.state == "failed" and "redirects are not followed" in m_301.attempts[0].error


def test_delivery_time_guard_refuses_without_sending(tmp_path):
    store, hooks = _stores(tmp_path)
    with Receiver() as rx:
        rec = _job(store, rx.url)  # admitted once (say under an allowlist that has since been removed)

        async def go():
            sender = WebhookSender(_config(allow_networks=[]), SECRET, store, hooks)
            sender.notify(rec, _event(rec))
            await _settle(sender)
            await sender.aclose()
        _run(go())
        assert rx.requests == []
    (message,) = hooks.webhook_messages(rec.id)
    assert message.state == "failed" and len(message.attempts) == 1
    assert "loopback address" in message.attempts[0].error and message.attempts[0].address is None


def test_only_requested_events_and_progress_at_most_every_interval(tmp_path):
    store, hooks = _stores(tmp_path)
    with Receiver() as rx:
        rec = _job(store, rx.url, events=["video.progress", "video.failed"], status=JobStatus.running)

        async def go():
            sender = WebhookSender(_config(progress_interval_s=0.5), SECRET, store, hooks)
            started = time.monotonic()
            while time.monotonic() - started < 1.2:  # a step every 50 ms
                sender.notify(rec, _event(rec).model_copy(update={"event": "step", "status": JobStatus.running}))
                await asyncio.sleep(0.05)
            done = store.get(rec.id).model_copy(update={"status": JobStatus.success})
            sender.notify(done, _event(done))  # video.completed was not asked for
            await _settle(sender)
            await sender.aclose()
        _run(go())
    types = [m.event_type for m in hooks.webhook_messages(rec.id)]
    assert types == ["video.progress"] * 3  # at 0, 0.5 and 1.0 s of 1.2 s
    bodies = [json.loads(r.body) for r in rx.requests]
    assert all(b["type"] == "video.progress" and b["data"]["status"] == "running" for b in bodies)


def test_a_restarted_sender_resends_pending_messages(tmp_path):
    store, hooks = _stores(tmp_path)
    with Receiver() as rx:
        rec = _job(store, rx.url)
        hooks.add_webhook_message("msg_left_behind", rec.id, "video.completed", '{"type":"video.completed"}')
        hooks.add_webhook_message("msg_progress", rec.id, "video.progress", '{"type":"video.progress"}')

        async def go():
            sender = WebhookSender(_config(), SECRET, store, hooks)
            assert sender.resume() == 1  # progress is superseded, not resent
            await _settle(sender)
            await sender.aclose()
        _run(go())
        (req,) = rx.wait(1)
    assert req.headers["webhook-id"] == "msg_left_behind" and req.body == b'{"type":"video.completed"}'
    states = {m.id: m.state for m in hooks.webhook_messages(rec.id)}
    assert states == {"msg_left_behind": "delivered", "msg_progress": "failed"}


def test_secret_is_created_once_with_mode_0600_and_checked(tmp_path):
    path = tmp_path / "state" / "webhook_secret"
    first = load_or_create_secret(path)
    assert first.startswith("whsec_") and load_or_create_secret(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    Webhook(first)  # the reference library takes it
    for bad in ("whsec_not base64!", "whsec_" + "QUJD"):  # not base64; 3 bytes
        with pytest.raises(ValueError):
            check_secret(bad)


def test_a_receiver_that_dribbles_its_answer_is_cut_at_the_attempt_deadline(tmp_path):
    """A receiver on 127.0.0.1 that sends its status line one byte every 0.2 s: each byte would
    restart a per-read timeout, so only a deadline on the whole attempt stops it."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def dribble():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n":
                if stop.wait(0.2):
                    break
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break
            conn.close()

    threading.Thread(target=dribble, daemon=True).start()
    store, hooks = _stores(tmp_path)
    rec = _job(store, f"http://127.0.0.1:{server.getsockname()[1]}/hook")
    try:
        async def go():
            sender = WebhookSender(_config(timeout_s=1.0, retry_for_s=0.5), SECRET, store, hooks)
            sender.notify(rec, _event(rec))
            await _settle(sender)
            await sender.aclose()
        _run(go())
    finally:
        stop.set()
        server.close()
    (message,) = hooks.webhook_messages(rec.id)
    assert message.state == "failed"
    first = message.attempts[0]
    # The whole answer would take 8 s; the attempt ended at its 1 s deadline.
    assert first.status_code is None and "no answer within 1 s" in first.error and first.duration_s < 1.5

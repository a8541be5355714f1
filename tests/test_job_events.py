"""Live progress: Server-Sent Events and WebSocket streams of a real job, in order, resumable."""

import json

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

STEPS = 6


def _sse(client, job_id: str, last_event_id: int | None = None) -> list[dict]:
    """Every event of the stream until the server ends it, as parsed dicts (id, event, data fields)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events, current = [], {}
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(":"):
                continue  # keep-alive comment
            if not line:
                if current:
                    events.append(current)
                current = {}
                continue
            key, _, value = line.partition(": ")
            current[key] = value
    return [{"sse_id": int(e["id"]), "sse_event": e["event"], **json.loads(e["data"])} for e in events]


def _check_run(events: list[dict]) -> None:
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == list(range(1, STEPS + 1)), steps  # every denoising step, in order
    phases = [e["phase"] for e in events if e["event"] == "phase"]
    assert phases.index("encoding_prompt") < phases.index("decoding") < phases.index("encoding_video")
    first_step = next(i for i, e in enumerate(events) if e["event"] == "step")
    assert any(e["phase"] == "encoding_prompt" for e in events[:first_step])
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    last = events[-1]
    assert last["event"] == "terminal" and last["status"] == "success" and last["progress"] == 1.0
    assert last["filename"].endswith(".mp4") and last["error"] is None
    assert all(e["event"] != "terminal" for e in events[:-1])


def test_sse_streams_every_step_then_the_terminal_event_and_resumes(client):
    job = client.post("/generate", json={"prompt": "a bird over a river", "size": "1280x720",
                                         "num_inference_steps": STEPS}).json()
    events = _sse(client, job["id"])
    assert events[0]["event"] in ("queued", "phase")
    assert all(e["sse_id"] == e["id"] and e["sse_event"] == e["event"] for e in events)
    _check_run(events)
    # Resume after the third step: only what came later, identical to the first stream's tail.
    third = next(e["id"] for e in events if e["event"] == "step" and e["step"] == 3)
    resumed = _sse(client, job["id"], last_event_id=third)
    assert resumed == [e for e in events if e["id"] > third]
    # An ended job's stream replays to the terminal event and closes.
    assert _sse(client, job["id"])[-1]["event"] == "terminal"


def test_websocket_streams_the_same_events(client, app_url):
    job = client.post("/generate", json={"prompt": "a fox in the snow", "size": "1280x720",
                                         "num_inference_steps": STEPS}).json()
    ws_url = app_url.replace("http://", "ws://") + f"/ws/jobs/{job['id']}"
    events = []
    with connect(ws_url, open_timeout=30) as ws:
        try:
            while True:
                events.append(json.loads(ws.recv(timeout=300)))
        except ConnectionClosed as closed:
            assert closed.rcvd.code == 1000
    _check_run(events)


def test_unknown_jobs(client, app_url):
    r = client.get("/jobs/nope/events")
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    with connect(app_url.replace("http://", "ws://") + "/ws/jobs/nope", open_timeout=30) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert closed.value.rcvd.code == 4404


def test_health_and_status_stay_fast_with_200_streams_open(app_url, client):
    """The ingress keeps 100 live streams (max_event_streams); the next get 429 and a WebSocket
    1013, and /health and /status still answer at once."""
    import threading
    import time

    import httpx

    job = client.post("/generate", json={"prompt": "watched by many", "num_inference_steps": 400}).json()
    opened, refused, stop = [], [], threading.Event()
    lock = threading.Lock()

    def listen():
        with httpx.Client(base_url=app_url, timeout=120) as c, c.stream("GET", f"/jobs/{job['id']}/events") as r:
            with lock:
                (opened if r.status_code == 200 else refused).append(r)
            if r.status_code == 200:
                for _ in r.iter_raw():
                    if stop.is_set():
                        return
            else:
                r.read()

    threads = [threading.Thread(target=listen, daemon=True) for _ in range(200)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(opened) + len(refused) < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (len(opened), len(refused)) == (100, 100)
        body = refused[0].json()["error"]
        assert refused[0].status_code == 429 and refused[0].headers["retry-after"] == "5"
        assert body["code"] == "too_many_streams" and "GET /status/{id}" in body["message"]
        with pytest.raises(ConnectionClosed) as closed, connect(
                f"{app_url.replace('http', 'ws', 1)}/ws/jobs/{job['id']}") as ws:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1013
        for path in ("/health", f"/status/{job['id']}"):
            started = time.monotonic()
            assert client.get(path).status_code == 200
            assert time.monotonic() - started < 1.0, path
    finally:
        stop.set()
        client.post(f"/jobs/{job['id']}/cancel")  # the streams end with the job
        for t in threads:
            t.join(30)
    # The slots came back: a new stream opens, and ends at once with the job's terminal event.
    events = _sse(client, job["id"])
    assert events[-1]["sse_event"] == "terminal" and events[-1]["status"] == "canceled"

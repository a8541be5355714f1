"""The client commands of ``wan-serve`` (generate, jobs, server status), each run as a real
subprocess against the live app on the tiny twins, as a person or a script would run them."""

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import openai
import pytest

from jobs.events import EVENT_ID_SPAN

from tests.conftest import TINY_VARIANTS, wait_terminal
from tests.media_samples import CHELSEA
from wan_client.exit_codes import ExitCode

WAN_SERVE = str(Path(sys.executable).parent / "wan-serve")
TIMEOUT = 300


def run(app_url, *args, stdin=None, timeout=TIMEOUT):
    env = {**os.environ, "WAN_SERVE_URL": app_url}
    return subprocess.run([WAN_SERVE, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def _interruptible():
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt as in a
    terminal (a shell's background job, such as a CI run started with &, starts with it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _frames(path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)]), float(stream.average_rate)


def test_generate_shows_progress_and_saves_the_video(app_url, tmp_path, client):
    out = tmp_path / "cockatoo.mp4"
    r = run(app_url, "generate", "a cockatoo over the beach", "--size", "1280x720", "--frames", "9", "-o", str(out))
    assert r.returncode == ExitCode.OK, r.stderr
    assert r.stdout.strip() == str(out)
    frames, fps = _frames(out)
    assert frames.shape == (9, 720, 1280, 3) and fps == 24.0
    lines = r.stderr.splitlines()
    assert any("queue position 1" in line for line in lines), r.stderr
    steps = [line for line in lines if "denoising · step" in line]
    assert [s.split("step ")[1].split(" ")[0] for s in steps] == ["1/4", "2/4", "3/4", "4/4"]
    assert lines[-1].endswith("success · 100%")
    job_id = lines[0].split()[1]
    assert client.get(f"/status/{job_id}").json()["num_frames"] == 9


def test_no_wait_then_watch_then_download_gives_the_same_file(app_url, tmp_path, client):
    r = run(app_url, "generate", "a lighthouse at dusk", "--no-wait", "--seconds", "0.3")
    assert r.returncode == ExitCode.OK, r.stderr
    job_id = r.stdout.strip()
    assert len(job_id) == 32 and client.get(f"/status/{job_id}").status_code == 200

    watched = run(app_url, "jobs", "watch", job_id, "--json")
    assert watched.returncode == ExitCode.OK, watched.stderr
    status = json.loads(watched.stdout)
    assert status["status"] == "success" and status["num_frames"] == 9  # 0.3 s at 24 fps: 7.2, nearest 4k+1
    assert "step 4/4" in watched.stderr

    got = run(app_url, "jobs", "download", job_id, "-o", str(tmp_path) + "/")
    assert got.returncode == ExitCode.OK, got.stderr
    path = Path(got.stdout.strip())
    assert path == tmp_path / status["filename"]
    assert path.read_bytes() == client.get(f"/files/{status['filename']}").content

    listed = json.loads(run(app_url, "jobs", "ls", "--json", "--limit", "100").stdout)
    assert job_id in [j["id"] for j in listed["data"]]
    shown = run(app_url, "jobs", "show", job_id)
    assert shown.returncode == ExitCode.OK and status["filename"] in shown.stdout

    removed = run(app_url, "jobs", "rm", job_id)
    assert removed.returncode == ExitCode.OK and removed.stdout.strip() == f"removed {job_id}"
    assert client.get(f"/status/{job_id}").status_code == 404
    gone = run(app_url, "jobs", "show", job_id)
    assert gone.returncode == ExitCode.REFUSED and f"no job with id {job_id!r}" in gone.stderr.replace('"', "'")


def _start_until(app_url, args, marker, **popen):
    """Start ``wan-serve ARGS`` and read its stderr until ``marker`` shows; returns the process and
    what it printed so far."""
    env = {**os.environ, "WAN_SERVE_URL": app_url}
    proc = subprocess.Popen([WAN_SERVE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_interruptible, **popen)
    seen, deadline = "", time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while marker not in seen and time.monotonic() < deadline:
            if sel.select(timeout=1):
                seen += os.read(proc.stderr.fileno(), 65536).decode()
    assert marker in seen, seen
    return proc, seen


def test_ctrl_c_then_cancel_leaves_the_job_canceled(app_url, client):
    proc, seen = _start_until(app_url, ["generate", "a long job to interrupt", "--steps", "400"], "step 2/400",
                              stdin=subprocess.PIPE)
    job_id = seen.split()[1]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate("cancel\n", timeout=TIMEOUT)
    assert proc.returncode == ExitCode.CANCELED, stderr
    assert "Cancel the job, or leave it running?" in stderr and "canceled by request" in stderr
    assert client.get(f"/status/{job_id}").json()["status"] == "canceled"


def test_ctrl_c_can_leave_the_job_running(app_url, client):
    proc, seen = _start_until(app_url, ["generate", "left running", "--steps", "30", "--on-interrupt", "leave"],
                              "step 1/30")
    job_id = seen.split()[1]
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == ExitCode.INTERRUPTED and f"wan-serve jobs watch {job_id}" in stderr
    assert wait_terminal(client, job_id)[-1]["status"] == "success"  # it went on without the client


def test_a_refused_request_exits_with_the_services_message(app_url):
    r = run(app_url, "generate", "six frames", "--frames", "6")
    assert r.returncode == ExitCode.REFUSED
    assert "num_frames must be 4k+1" in r.stderr and "try 5" in r.stderr and "[validation_error]" in r.stderr
    r = run(app_url, "generate", "x", "--variant", "sora-2")
    assert r.returncode == ExitCode.REFUSED and "deployed: " in r.stderr and "[variant_not_found]" in r.stderr
    r = run("http://127.0.0.1:9", "server", "status")  # nothing listens on the discard port
    assert r.returncode == ExitCode.UNREACHABLE and "no answer from http://127.0.0.1:9" in r.stderr


def test_image_to_video_with_a_photo(app_url, tmp_path, client):
    r = run(app_url, "generate", "the cat turns its head", "--variant", "i2v-a14b-tiny", "--image", str(CHELSEA),
            "--json", "-o", str(tmp_path))
    assert r.returncode == ExitCode.OK, r.stderr
    status = json.loads(r.stdout)
    assert status["status"] == "success" and status["inputs"]["image"]["width"] == 451
    frames, fps = _frames(status["path"])
    assert frames.shape == (5, 480, 832, 3) and fps == 16.0  # landscape photo: 832x480, i2v's first landscape size


def test_server_status_lists_variants_and_queues(app_url):
    r = run(app_url, "server", "status", "--json")
    assert r.returncode == ExitCode.OK, r.stderr
    body = json.loads(r.stdout)
    assert body["ready"] is True and body["default_variant"] == "ti2v-5b-tiny"
    assert [v["name"] for v in body["variants"]] == TINY_VARIANTS
    assert all(v["readiness"]["ready"] and v["readiness"]["running_replicas"] == 1 for v in body["variants"])
    table = run(app_url, "server", "status")
    assert table.returncode == ExitCode.OK and "ready" in table.stdout.splitlines()[0]
    assert all(name in table.stdout for name in TINY_VARIANTS)


def test_variants_and_openai_models_list(app_url, client):
    oa = openai.OpenAI(base_url=f"{app_url}/v1", api_key="not-checked", max_retries=0)
    models = list(oa.models.list())
    assert [m.id for m in models] == TINY_VARIANTS
    assert all(m.object == "model" and m.owned_by == "wan-serve" and m.created > 0 for m in models)
    assert {m.id: m.task for m in models} == {"ti2v-5b-tiny": "ti2v", "t2v-a14b-tiny": "t2v",
                                               "i2v-a14b-tiny": "i2v", "vace-14b-tiny": "vace",
                                               "qwen-image-edit-tiny": "image_edit"}

    catalog = client.get("/variants").json()
    by_name = {v["name"]: v for v in catalog["variants"]}
    assert by_name["vace-14b-tiny"]["uploads"] == {"required": ["video", "mask"], "optional": ["reference_images"],
                                                     "repeatable": ["reference_images"]}
    assert by_name["vace-14b-tiny"]["output_formats"] == ["mp4", "webm", "png_zip"]
    assert by_name["i2v-a14b-tiny"]["uploads"] == {"required": ["image"], "optional": ["last_image"],
                                                     "repeatable": []}
    assert by_name["ti2v-5b-tiny"]["sizes"] == ["1280x720", "720x1280"] and by_name["ti2v-5b-tiny"]["fps"] == 24
    assert by_name["t2v-a14b-tiny"]["experts"] == 2 and by_name["ti2v-5b-tiny"]["experts"] == 1
    ti2v = by_name["ti2v-5b-tiny"]
    assert ti2v["max_seconds"] == pytest.approx(ti2v["max_num_frames"] / 24, abs=1e-3)
    assert ti2v["defaults"]["num_inference_steps"] == 4 and ti2v["frame_rule"] == "4k+1"


def test_seconds_on_generate(client):
    r = client.post("/generate", json={"prompt": "x", "seconds": 0.3, "num_frames": 9})
    assert r.status_code == 422 and r.json()["error"]["message"] == "send num_frames or seconds, not both"
    r = client.post("/generate", json={"prompt": "x", "seconds": 60})
    assert r.status_code == 422 and "at most 33 frames" in r.json()["error"]["message"]
    r = client.post("/generate", json={"prompt": "x", "seconds": 1.4592143344135833e307})  # found by the fuzz
    assert r.status_code == 422 and "at most 33 frames" in r.json()["error"]["message"]
    job = client.post("/generate", json={"prompt": "a short one", "seconds": 0.01}).json()
    assert client.get(f"/status/{job['id']}").json()["num_frames"] == 1  # rounded to the nearest 4k+1
    assert wait_terminal(client, job["id"])[-1]["status"] == "success"


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of the app that cuts the first ``drops`` event streams
    (GET .../events) right after forwarding a chunk with at least two events in it, as a proxy
    with an idle timeout or a flaky network would. Records each event request's Last-Event-ID."""

    def __init__(self, upstream_port: int, drops: int = 2):
        import socket
        import threading

        self.upstream_port, self.drops = upstream_port, drops
        self.last_event_ids: list[str | None] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, client, upstream):
        import re
        import socket
        import threading

        request = client.recv(65536)
        head = request.split(b"\r\n\r\n")[0].decode("latin-1")
        is_events = head.split(" ")[1].endswith("/events") if " " in head else False
        cut = False
        if is_events:
            ids = [line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("last-event-id:")]
            with self.lock:
                self.last_event_ids.append(ids[0] if ids else None)
                cut = self.drops > 0
                self.drops -= cut
        # One request per connection: the server closes it after the answer, so the end of a
        # stream is the end of the connection, on both sides.
        request = re.sub(rb"(?i)\r\nconnection:[^\r]*", b"", request, count=1).replace(
            b"\r\n", b"\r\nConnection: close\r\n", 1)
        upstream.sendall(request)

        def shut(s):
            try:
                s.shutdown(socket.SHUT_RDWR)  # unlike close(), wakes a recv blocked in another thread
            except OSError:
                pass
            s.close()

        def back():
            seen = 0
            try:
                while chunk := upstream.recv(65536):
                    client.sendall(chunk)
                    seen += chunk.count(b"\nevent: ") + chunk.startswith(b"event: ")
                    if cut and seen >= 2:
                        break
            except OSError:
                pass
            shut(client)
            shut(upstream)

        threading.Thread(target=back, daemon=True).start()
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass

    def close(self):
        self.server.close()


def test_a_dropped_event_stream_resumes_with_last_event_id(app_url, client):
    from urllib.parse import urlsplit

    from wan_client.api import WanServeClient

    url = urlsplit(app_url)
    proxy = DroppingProxy(url.port, drops=2)
    try:
        job = client.post("/generate", json={"prompt": "through a flaky network", "num_inference_steps": 8}).json()
        events = []

        def follow():
            with WanServeClient(f"http://127.0.0.1:{proxy.port}{url.path}") as flaky:
                events.extend(flaky.events(job["id"]))

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        reader.join(TIMEOUT)  # a fault in the proxy must fail the test, not hang the suite
        assert not reader.is_alive(), f"the stream did not end; events so far: {[e.id for e in events]}"
    finally:
        proxy.close()
    ids = [e.id for e in events]
    assert ids == sorted(set(ids))  # every event once, in order, across the drops
    stored = [i // EVENT_ID_SPAN for i in ids if i % EVENT_ID_SPAN == 0]  # the rest are queue moves
    assert stored == list(range(1, len(stored) + 1)) and stored[-1] * EVENT_ID_SPAN == ids[-1]
    assert events[-1].kind == "terminal" and events[-1].data["status"] == "success"
    assert [e.data["step"] for e in events if e.kind == "step"] == list(range(1, 9))
    # Three requests: the first without Last-Event-ID, each later one resuming after the last event it got.
    assert len(proxy.last_event_ids) == 3 and proxy.last_event_ids[0] is None
    resumed = [int(i) for i in proxy.last_event_ids[1:]]
    assert resumed[0] >= 2 and resumed[1] > resumed[0]


def test_server_wait_prints_where_things_are(app_url):
    r = run(app_url, "server", "wait", "--timeout", "60", "--dashboard", "http://127.0.0.1:8265",
            "--metrics", "http://127.0.0.1:8080/metrics")
    assert r.returncode == ExitCode.OK, r.stderr
    assert r.stdout.strip() == (f"wan-serve is ready · studio {app_url}/ · API docs {app_url}/docs · "
                                "Ray dashboard http://127.0.0.1:8265 · metrics http://127.0.0.1:8080/metrics")
    started = time.monotonic()
    r = run("http://127.0.0.1:9", "server", "wait", "--timeout", "2")
    assert r.returncode == ExitCode.NOT_READY and "not ready after 2 s" in r.stderr
    assert time.monotonic() - started < 30

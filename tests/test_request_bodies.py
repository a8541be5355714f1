"""Request bodies are bounded while they stream in: 600 MB bodies get 413 without the ingress (or
Ray's proxy) holding them, over a raw socket on 127.0.0.1 so that the client keeps sending until
the server answers."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psutil
import pytest

from serve_app.settings import ServiceSettings
from tests.conftest import deploy
from tests.media_samples import CHELSEA

MB = 10**6
#: What the tests send: far over every bound (1 MiB for JSON, 300 MiB for multipart).
BODY_BYTES = 600 * MB
CHUNK = 1 << 20
#: Growth of resident memory allowed while a refused body streams in, bytes: well under the body.
RSS_GROWTH_LIMIT = 150 * MB


@pytest.fixture(scope="module")
def bodies_url(ray_serve, tmp_path_factory) -> Iterator[str]:
    from ray import serve

    yield deploy(ray_serve, "bodies", tmp_path_factory.mktemp("bodies"), variants=["ti2v-5b-tiny"])
    serve.delete("bodies")  # its generator's CPU share goes back to the other modules' apps


def _pids(app: str) -> dict[str, int]:
    """Process ids of the app's ingress replica and of Ray Serve's HTTP proxy, by the titles Ray
    gives its actor processes (``ray::ServeReplica:<app>:Ingress``, ``ray::ProxyActor``)."""
    titles = {"ingress": f"ray::ServeReplica:{app}:Ingress", "proxy": "ray::ProxyActor"}
    pids: dict[str, int] = {}
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        for name, prefix in titles.items():
            if title.startswith(prefix):
                pids[name] = proc.pid
    assert set(pids) == set(titles), pids
    return pids


class PeakRss(threading.Thread):
    """Samples the resident memory of some processes every 20 ms; ``growth`` is the peak over the start."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start_rss = {name: p.memory_info().rss for name, p in self.procs.items()}
        self.peak = dict(self.start_rss)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, p in self.procs.items():
                self.peak[name] = max(self.peak[name], p.memory_info().rss)
            time.sleep(0.02)

    def growth(self) -> dict[str, int]:
        self.stop.set()
        self.join()
        return {name: self.peak[name] - self.start_rss[name] for name in self.procs}


def _send(
    url: str, headers: dict[str, str], head: bytes, chunks: Iterator[bytes], chunked: bool
) -> tuple[int, bytes, int]:
    """POST ``head`` then ``chunks`` until the server answers or hangs up. Returns (status, response
    body, bytes of the request body sent)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    sent = 0
    try:
        for data in [head, *chunks]:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer came: stop sending
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            sent += len(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    response = b""
    sock.settimeout(30)
    try:
        while b"\r\n\r\n" not in response or len(response.split(b"\r\n\r\n", 1)[1]) < _length(response):
            more = sock.recv(65536)
            if not more:
                break
            response += more
    except ConnectionResetError:
        pass
    sock.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.split(b"\r\n\r\n", 1)[1], sent


def _length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _zeros(total: int) -> Iterator[bytes]:
    block = b"0" * CHUNK
    for _ in range(total // CHUNK):
        yield block


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_600_mb_json_body_gets_413_while_memory_stays_flat(bodies_url, declared):
    watch = PeakRss(_pids("bodies"))
    watch.start()
    head = b'{"prompt": "'
    headers = {"Content-Type": "application/json"}
    if declared:
        headers["Content-Length"] = str(BODY_BYTES)
    status, body, sent = _send(f"{bodies_url}/generate", headers, head, _zeros(BODY_BYTES), chunked=not declared)
    growth = watch.growth()
    assert status == 413 and b'"payload_too_large"' in body and b"1 MiB" in body, body
    assert sent < BODY_BYTES / 2, f"the client sent {sent} bytes before the answer"
    assert max(growth.values()) < RSS_GROWTH_LIMIT, growth


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_multipart_file_over_the_bound_gets_413_while_memory_stays_flat(bodies_url, declared):
    watch = PeakRss(_pids("bodies"))
    watch.start()
    boundary = "wanservebodytest"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    # Chunked, the body is read up to the bound: sent at five times the bound, so a process that
    # held it all would be seen.
    size = BODY_BYTES if declared else 5 * ServiceSettings().max_request_bytes
    if declared:
        headers["Content-Length"] = str(size + len(head))
    status, body, sent = _send(f"{bodies_url}/generate", headers, head, _zeros(size), chunked=not declared)
    growth = watch.growth()
    assert status == 413 and b'"payload_too_large"' in body and b"300 MiB" in body, body
    assert sent < 0.6 * BODY_BYTES, f"the client sent {sent} bytes before the answer"
    if declared:
        assert max(growth.values()) < RSS_GROWTH_LIMIT, growth  # refused from the header: nothing read
    else:
        # Read up to the bound, then refused: Ray's proxy hands the body to the ingress in batches
        # it holds in memory (measured up to about 1.5 times the bound), never the whole body.
        assert max(growth.values()) < 2 * ServiceSettings().max_request_bytes < size / 2, growth


def test_a_small_body_still_goes_through(bodies_url):
    import httpx

    r = httpx.post(f"{bodies_url}/generate", json={"prompt": "small", "num_inference_steps": 2}, timeout=60)
    assert r.status_code == 202, r.text


def test_forms_over_the_parsers_limits_are_422_with_the_limits_named(bodies_url):
    import httpx

    photo = CHELSEA.read_bytes()
    files = [("reference_images", ("r.png", photo, "image/png"))] * 17  # one over MAX_FORM_FILES
    many = httpx.post(f"{bodies_url}/generate", data={"prompt": "x"}, files=files, timeout=60)
    assert many.status_code == 422 and many.json()["error"]["param"] == "body", many.text
    assert "at most 16 files" in many.json()["error"]["message"]
    long_field = httpx.post(
        f"{bodies_url}/generate", data={"prompt": "x" * (65 * 1024)}, files={"image": ("c.png", photo)},
        timeout=60,
    )
    assert long_field.status_code == 422 and "64 KiB per text field" in long_field.json()["error"]["message"]

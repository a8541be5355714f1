"""A real HTTP webhook receiver on 127.0.0.1 for the webhook tests (never any other address)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    at: float  # time.time() on arrival
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class Receiver:
    """Answers each POST with the next status of ``script`` (then 200), and keeps every request."""

    def __init__(self, script: list[int] | None = None, delay_s: list[float] | None = None) -> None:
        self.script = list(script or [])
        self.delay_s = list(delay_s or [])  # seconds to wait before answering, per request
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.requests.append(Received(time.time(), self.path,
                                                      {k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.script.pop(0) if receiver.script else 200
                    delay = receiver.delay_s.pop(0) if receiver.delay_s else 0.0
                time.sleep(delay)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, timeout: float = 60.0, where=lambda r: True) -> list[Received]:
        """The first ``count`` requests matching ``where``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                hits = [r for r in self.requests if where(r)]
            if len(hits) >= count:
                return hits[:count]
            time.sleep(0.05)
        raise AssertionError(f"{len(hits)} of {count} webhook requests arrived in {timeout} s")


def standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks v1 signature, computed here from the specification (not by the library)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()

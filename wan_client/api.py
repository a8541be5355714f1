"""The wan-serve HTTP API from Python: submit, status, events (SSE, resumed after a drop),
cancel, delete, list, download, variants and readiness."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

#: Where ``make serve`` listens (http_options in serve_config.yaml).
DEFAULT_SERVER = "http://127.0.0.1:8000"
#: Seconds without a byte on an event stream before it counts as dropped. The server sends a
#: keep-alive comment after each 15 s without news (EVENTS_WAIT_S in serve_app/generate/routes.py).
EVENTS_READ_TIMEOUT_S = 60.0
#: Reconnections of an event stream in a row without an event before giving up.
EVENTS_MAX_RETRIES = 8


class ServiceRefused(Exception):
    """The service answered 4xx: ``code`` and ``message`` are its error's; ``retry_after_s`` its
    Retry-After header (queue full, model unavailable), if any."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s


class ServiceUnavailable(Exception):
    """No answer from the service (connection refused, timeout, dropped stream), or a 5xx."""


@dataclass(frozen=True)
class JobEvent:
    """One event of a job's stream: ``kind`` queued, phase, step or terminal; ``data`` its JSON
    (status, phase, step, total_steps, progress, eta_seconds, queue_position; error and filename
    on the terminal event)."""

    id: int
    kind: str
    data: dict[str, Any]


class WanServeClient:
    """A connection to one wan-serve server.

    Args:
        server: base URL, e.g. http://127.0.0.1:8000 (a route prefix may follow the host).
        api_key: sent as ``Authorization: Bearer <key>``.
        timeout_s: seconds for each ordinary request.
        transport: an httpx transport (tests); default the network.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> WanServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"no answer from {self.server}: {exc}") from exc
        return check(response)

    def variants(self) -> dict:
        """GET /variants: ``{"default_variant", "variants": [...]}``."""
        return self._request("GET", "/variants").json()

    def ready(self) -> tuple[bool, dict]:
        """GET /ready: whether every variant has a running replica, and the per-variant detail."""
        try:
            response = self.http.get("/ready")
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"no answer from {self.server}: {exc}") from exc
        if response.status_code == 503:
            return False, response.json()
        return True, check(response).json()

    def submit(self, fields: dict[str, Any], files: list[tuple[str, Path]] | None = None) -> dict:
        """POST /generate: JSON without files, multipart with them (``files`` as (field, path)).
        Returns the 202 answer (id, status, queue_position, eta_seconds).

        Raises:
            ServiceRefused: bad fields or uploads, unknown variant, queue full...
            FileNotFoundError: a file to upload is missing.
        """
        fields = {k: v for k, v in fields.items() if v is not None}
        if not files:
            return self._request("POST", "/generate", json=fields).json()
        form = {k: json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in fields.items()}
        handles = [(field, (path.name, path.open("rb"))) for field, path in files]
        try:
            return self._request("POST", "/generate", data=form, files=handles).json()
        finally:
            for _, (_, handle) in handles:
                handle.close()

    def status(self, job_id: str) -> dict:
        """GET /status/{id}. Raises ServiceRefused (404) for an unknown job."""
        return self._request("GET", f"/status/{job_id}").json()

    def cancel(self, job_id: str) -> dict:
        """POST /jobs/{id}/cancel; returns the job's status after it."""
        return self._request("POST", f"/jobs/{job_id}/cancel").json()

    def delete(self, job_ids: list[str], delete_files: bool = True) -> dict:
        """DELETE /jobs?ids=...: cancels unfinished ones, removes the jobs (and their files)."""
        params = {"ids": ",".join(job_ids), "delete_files": str(delete_files).lower()}
        return self._request("DELETE", "/jobs", params=params).json()

    def jobs(self, limit: int = 20, after: str | None = None, order: str = "desc") -> dict:
        """GET /jobs: one page, ``{"data": [status...], "has_more", "last_id"}``."""
        params: dict[str, Any] = {"limit": limit, "order": order}
        if after:
            params["after"] = after
        return self._request("GET", "/jobs", params=params).json()

    def download(self, job_id: str, dest: Path) -> Path:
        """Save a successful job's result file at ``dest``; the file appears only when complete.

        Raises:
            ServiceRefused: unknown job, or it has no result (not done, failed, deleted).
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, self.http.stream("GET", f"/v1/videos/{job_id}/content") as response:
                if response.is_error:
                    response.read()
                    check(response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
            os.chmod(partial, 0o666 & ~_umask())  # mkstemp made it 0600; give it a new file's mode
            os.replace(partial, dest)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"the download from {self.server} broke off: {exc}") from exc
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return dest

    def events(self, job_id: str, after: int = 0) -> Iterator[JobEvent]:
        """The job's events after event ``after``, up to and including the terminal one.

        A dropped stream is reopened with ``Last-Event-ID``, so no event is lost or repeated;
        after EVENTS_MAX_RETRIES failed reconnections in a row it raises ServiceUnavailable.

        Raises:
            ServiceRefused: unknown job (404).
        """
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(after)} if after else {}
            timeout = httpx.Timeout(self.http.timeout.connect, read=EVENTS_READ_TIMEOUT_S)
            try:
                with connect_sse(
                    self.http, "GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout
                ) as source:
                    if source.response.is_error:
                        source.response.read()
                        check(source.response)
                    for sse in source.iter_sse():
                        if not sse.event or not sse.data:
                            continue
                        failures = 0
                        after = int(sse.id) if sse.id else after
                        yield JobEvent(id=after, kind=sse.event, data=sse.json())
                        if sse.event == "terminal":
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures > EVENTS_MAX_RETRIES:
                    raise ServiceUnavailable(f"the event stream of job {job_id} keeps dropping: {exc}") from exc
                time.sleep(min(0.25 * 2**failures, 5.0))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check(response: httpx.Response) -> httpx.Response:
    """``response`` when it is not an error; else ServiceRefused (4xx) or ServiceUnavailable (5xx)
    with the service's message."""
    if not response.is_error:
        return response
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    message = error.get("message") or f"HTTP {response.status_code}"
    if response.status_code >= 500:
        raise ServiceUnavailable(f"the service failed ({response.status_code}): {message}")
    retry = response.headers.get("retry-after")
    raise ServiceRefused(
        response.status_code, error.get("code", "http_error"), message, float(retry) if retry else None
    )

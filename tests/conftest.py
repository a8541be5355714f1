"""Shared fixtures: the tiny twins on disk, and a real local Ray cluster running the app."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from model_store.tiny_twin import ensure_tiny_twins
from tests import s3_server

TINY = "ti2v-5b-tiny"
TINY_VARIANTS = ["ti2v-5b-tiny", "t2v-a14b-tiny", "i2v-a14b-tiny", "vace-14b-tiny", "qwen-image-edit-tiny"]
TERMINAL = {"success", "error", "canceled"}


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    """The ti2v-5b tiny twin's diffusers folder; every tiny twin is built if missing."""
    return dict(zip(TINY_VARIANTS, ensure_tiny_twins(TINY_VARIANTS)))[TINY]


def free_port() -> int:
    """A 127.0.0.1 port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3 server's port, fixed when the session starts so Ray's workers inherit AWS_ENDPOINT_URL.
S3_PORT = free_port()
s3_server.configure(S3_PORT)


@pytest.fixture(scope="session")
def s3():
    """An S3-compatible server of the session on 127.0.0.1 (tests/s3_server.py)."""
    server = s3_server.S3Server(S3_PORT).start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage_url(request, tmp_path) -> str:
    """An object store of the test's own: a local folder, then a fresh bucket."""
    if request.param == "local":
        return str(tmp_path / "objects")
    return f"s3://{request.getfixturevalue('s3').new_bucket()}/wan"


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of the session on 127.0.0.1 (tests/postgres_server.py)."""
    from tests.postgres_server import PostgresServer

    server = PostgresServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A job store database of the test's own: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="session")
def ray_serve(tiny_weights):
    """A local Ray cluster with Serve's HTTP proxy on 127.0.0.1; yields the base URL."""
    import ray
    from ray import serve

    from serve_app.body_limit import PROXY_CALLBACK

    port = free_port()
    # The body bound in Ray Serve's proxy too, as `make serve` sets it (serve_app/body_limit.py).
    os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = PROXY_CALLBACK
    # Ray's Prometheus export, on a port tests scrape (tests/test_metrics.py reads it from here).
    os.environ["WAN_SERVE_TEST_RAY_METRICS_PORT"] = str(free_port())
    # address="local": a cluster of our own, even when `make serve` runs one on this machine.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=int(os.environ["WAN_SERVE_TEST_RAY_METRICS_PORT"]))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def deploy(base_url: str, name: str, data_dir: Path, **args) -> str:
    """Run the wan-serve app as ``name`` under ``/name``; returns its base URL."""
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app({"data_dir": str(data_dir), **args}), name=name, route_prefix=f"/{name}")
    return f"{base_url}/{name}"


@pytest.fixture(scope="session")
def app_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wan-serve-data")


@pytest.fixture(scope="session")
def app_url(ray_serve, app_dir) -> str:
    """The app as `make serve` runs it (all five tiny twins, ti2v-5b-tiny the default), with a roomy queue."""
    # Warm-up stays on for the default variant (the path `make serve` takes); the others skip
    # it to keep the suite inside its time budget.
    quiet = {name: {"warmup": False} for name in TINY_VARIANTS if name != TINY}
    return deploy(ray_serve, "main", app_dir, max_queued_jobs=8, overrides=quiet)


@pytest.fixture
def client(app_url):
    with httpx.Client(base_url=app_url, timeout=60) as c:
        yield c


def wait_for(client: httpx.Client, job_id: str, until, timeout: float = 120.0, poll: float = 0.1) -> list[dict]:
    """Poll /status until ``until(status_json)``; returns every status seen. Fails on timeout."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/status/{job_id}").json()
        seen.append(body)
        if until(body):
            return seen
        time.sleep(poll)
    raise AssertionError(f"job {job_id} did not reach the expected state in {timeout}s; last: {seen[-1]}")


def wait_terminal(client, job_id, timeout=120.0):
    return wait_for(client, job_id, lambda s: s["status"] in TERMINAL, timeout)


def all_videos(client: httpx.Client, **params) -> list[dict]:
    """Every entry of GET /videos, page after page (oldest first)."""
    videos: list[dict] = []
    after = None
    while True:
        page = client.get("/videos", params={"limit": 100, **({"after": after} if after else {}), **params})
        assert page.status_code == 200, page.text
        body = page.json()
        videos += body["data"]
        if not body["has_more"]:
            return videos
        after = body["last_id"]


@pytest.fixture
def temporary_apps(ray_serve):
    """Names of apps a test deploys for itself; each is deleted after the test, passed or failed,
    so its generators' CPU shares go back to the apps of later tests (the cluster has 4 CPUs)."""
    from ray import serve

    names: list[str] = []
    yield names
    for name in names:
        serve.delete(name)

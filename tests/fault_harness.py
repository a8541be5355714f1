"""Driving a deployed app through faults: submit, wait through restarts, find and kill replica
processes, and check the invariants every fault test ends with. Real Ray and real processes;
traffic to 127.0.0.1 only."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from deployments.faults import write_faults
from tests.conftest import TERMINAL


class AppUnderTest:
    """One deployed app under test: its client, data folder and fault file; ``submitted`` lists
    every job id it accepted."""

    def __init__(self, client: httpx.Client, data_dir: Path, base_url: str, app: str, defaults: dict) -> None:
        self.client, self.data_dir, self.base_url = client, data_dir, base_url
        self.app, self.defaults = app, defaults
        self.fault_file = data_dir / "faults.json"
        self.submitted: list[str] = []

    def arm(self, *faults: dict) -> None:
        write_faults(self.fault_file, list(faults))

    def submit(self, prompt: str, headers=None, **fields) -> str:
        r = self.client.post("/generate", json={"prompt": prompt, **self.defaults, **fields}, headers=headers or {})
        assert r.status_code == 202, r.text
        self.submitted.append(r.json()["id"])
        return r.json()["id"]

    def status(self, job_id: str) -> dict:
        """/status, retried while the router restarts (the ingress answers 5xx meanwhile)."""
        deadline = time.monotonic() + 60
        while True:
            r = self.client.get(f"/status/{job_id}")
            if r.status_code < 500 or time.monotonic() > deadline:
                return r.json()
            time.sleep(0.2)

    def wait(self, job_id: str, until=lambda s: s["status"] in TERMINAL, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status(job_id)
            if until(s):
                return s
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not there in {timeout}s: {s}")

    def replicas(self, deployment: str) -> list[str]:
        """Names of the live replica actors of ``deployment`` (Serve names them
        ``SERVE_REPLICA::<app>#<deployment>#<replica id>``). Asks Ray, not the deployment, so it
        works while the deployment is down."""
        import ray

        prefix = f"SERVE_REPLICA::{self.app}#{deployment}#"
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]

    def kill(self, deployment: str) -> str | None:
        """ray.kill one replica actor of ``deployment``; returns its name, or None if none is alive."""
        import ray

        names = self.replicas(deployment)
        if not names:
            return None
        ray.kill(ray.get_actor(names[0], namespace="serve"))
        return names[0]

    def pid(self, deployment: str) -> int:
        from ray import serve
        return serve.get_deployment_handle(deployment, self.app).process_info.remote().result()["pid"]


def check_invariants(d: AppUnderTest, ids: list[str], purged: set[str] = frozenset()) -> dict[str, dict]:
    """Every job in ``ids`` (but ``purged``) still exists, is terminal or still queued, and has at
    most one result file. Returns the final statuses."""
    files = [p.name for p in (d.data_dir / "outputs").iterdir() if not p.name.startswith(".")]
    finals = {}
    for job_id in ids:
        if job_id in purged:
            continue
        # A job still running when the checks start is given time to end: running is not a resting state.
        s = finals[job_id] = d.wait(job_id, until=lambda s: s.get("status") != "running")
        assert s.get("id") == job_id, f"job {job_id} was lost: {s}"
        assert s["status"] in TERMINAL | {"queued"}, s
        assert sum(job_id[:8] in name for name in files) <= 1, f"job {job_id} wrote more than one file"
    return finals


def disarm_after_each(app_fixture: str):
    """An autouse fixture for a module: after every test that used ``app_fixture`` (an
    AppUnderTest), its fault switch is disarmed, so no fault outlives its test."""

    @pytest.fixture(autouse=True)
    def _disarm(request):
        yield
        if app_fixture in request.fixturenames:
            request.getfixturevalue(app_fixture).arm()

    return _disarm

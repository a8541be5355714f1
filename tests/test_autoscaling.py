"""Queue-driven autoscaling on the local Ray cluster with the tiny twin: a variant at
min_replicas 0 serves a job from zero and goes back to zero, a queue brings up max_replicas
replicas that run jobs at once, a replica scaled down mid-job finishes it, and /ready stays 200
while the variant is at zero. Jobs are held at a denoising step by the fault switch's ``hang``,
so how long each runs does not depend on this machine's speed."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.faults import write_faults
from deployments.replica_status import generator_deployment_name
from tests.conftest import TINY, deploy, wait_terminal

APP = "autoscale"
FAST = {"size": "1280x720", "num_inference_steps": 2, "num_frames": 1}
EXPECTED_START_S = 30.0
SCALING = {
    "min_replicas": 0,
    "max_replicas": 2,
    "upscale_delay_s": 0,
    "downscale_delay_s": 2,
    "downscale_to_zero_delay_s": 3,
    "expected_start_s": EXPECTED_START_S,
}


class Scaled:
    def __init__(self, client: httpx.Client, fault_file) -> None:
        self.client, self.fault_file = client, fault_file

    def replica_states(self) -> dict[str, int]:
        from ray import serve

        dep = serve.status().applications[APP].deployments[generator_deployment_name(TINY)]
        return {str(getattr(k, "value", k)): v for k, v in (dep.replica_states or {}).items()}

    def ready(self) -> httpx.Response:
        return self.client.get("/ready")

    def wait_at_zero(self, timeout: float = 90) -> None:
        """Until no replica is left and /ready says scaled_to_zero; /ready is 200 at every look."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.ready()
            assert r.status_code == 200, r.text
            if r.json()["variants"][TINY]["state"] == "scaled_to_zero" and not any(self.replica_states().values()):
                break
            assert time.monotonic() < deadline, f"still not at zero replicas: {r.json()} {self.replica_states()}"
            time.sleep(0.25)
        time.sleep(2.5)  # the router's and the ingress's replica watches look every 2 s

    def target(self) -> float:
        """The replica target GET /metrics reports for the variant."""
        r = self.client.get("/metrics")
        assert r.status_code == 200, r.text
        found = [
            s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
            if s.name == "wan_serve_replicas" and s.labels == {"variant": TINY, "kind": "target"}
        ]
        assert len(found) == 1, r.text
        return found[0]

    def submit(self, prompt: str, **fields) -> dict:
        r = self.client.post("/generate", json={"prompt": prompt, **FAST, **fields})
        assert r.status_code == 202, r.text
        return r.json()

    def arm(self, *faults: dict) -> None:
        write_faults(self.fault_file, list(faults))


@pytest.fixture(scope="module")
def scaled(ray_serve, tmp_path_factory):
    from ray import serve

    data_dir = tmp_path_factory.mktemp("autoscale")
    faults = data_dir / "faults.json"
    write_faults(faults, [])
    url = deploy(
        ray_serve,
        APP,
        data_dir,
        variants=[TINY],
        fault_file=str(faults),
        overrides={TINY: {"warmup": False, "deployment": {"autoscaling": SCALING}}},
    )
    with httpx.Client(base_url=url, timeout=60) as client:
        yield Scaled(client, faults)
    serve.delete(APP)


def test_a_job_brings_a_variant_up_from_zero_and_it_goes_back_to_zero(scaled):
    scaled.wait_at_zero()
    assert scaled.ready().json()["status"] == "ready"
    assert scaled.target() == 0
    first = scaled.submit("from zero")
    assert first["status"] == "queued" and first["waiting_for_replica"] is True
    final = wait_terminal(scaled.client, first["id"])[-1]
    assert final["status"] == "success" and final["attempts"] == 1
    assert scaled.client.get(f"/files/{final['filename']}").status_code == 200

    scaled.wait_at_zero()  # back to zero after its idle delay, /ready 200 all along
    # Now a job's duration is known: a job waiting for a replica has the replica's start in its ETA.
    second = scaled.submit("from zero again")
    assert second["status"] == "queued" and second["waiting_for_replica"] is True
    assert second["eta_seconds"] is not None and second["eta_seconds"] >= EXPECTED_START_S
    seen = wait_terminal(scaled.client, second["id"])
    assert seen[-1]["status"] == "success"
    # Once a replica took it, it is running and no longer waiting.
    running = [s for s in seen if s["status"] == "running"]
    assert running and not any(s["waiting_for_replica"] for s in running)


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most of ``intervals`` (start, end; seconds) that hold at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in edges:  # at a tie an end sorts first: touching intervals do not overlap
        now += step
        most = max(most, now)
    return most


def test_a_queue_of_six_runs_two_at_once_on_max_replicas(scaled):
    scaled.wait_at_zero()
    scaled.arm({"variant": TINY, "kind": "hang", "at_step": 1, "hang_s": 3, "times": 6})
    ids = [scaled.submit(f"queued {i}")["id"] for i in range(6)]
    assert scaled.target() == 2  # six jobs ask for six replicas; max_replicas is 2
    most_live, finals = 0, {}
    deadline = time.monotonic() + 180
    while len(finals) < 6:
        assert time.monotonic() < deadline, f"not all ended: {finals}"
        most_live = max(most_live, scaled.replica_states().get("RUNNING", 0))
        states = {j: scaled.client.get(f"/status/{j}").json() for j in ids if j not in finals}
        finals.update({j: s for j, s in states.items() if s["status"] in ("success", "error", "canceled")})
        time.sleep(0.1)
    assert [finals[j]["status"] for j in ids] == ["success"] * 6
    assert [finals[j]["attempts"] for j in ids] == [1] * 6
    assert most_live == 2
    # From each job's stored start (a replica took it) to its end: each holds 3 s at its hang, so
    # two replicas overlap by seconds. The last 0.5 s of each is left out: the router may note a
    # replica's next job a few milliseconds before the end of the one it just finished.
    runs = [(finals[j]["started_at"], finals[j]["finished_at"] - 0.5) for j in ids]
    assert most_at_once(runs) == 2


def test_a_replica_scaled_down_mid_job_finishes_it(scaled):
    scaled.wait_at_zero()
    # Job a holds the first replica 20 s; job b, on the second (newer) replica, 35 s. When a ends the
    # queue asks for one replica, and Ray Serve stops the newest (deployment_scheduler.py
    # _get_replicas_to_stop): the one running b, which must finish b before it goes. a's hold
    # outlasts the second replica's start (about 6 s here), so b cannot land on a's replica.
    scaled.arm({"variant": TINY, "kind": "hang", "at_step": 1, "hang_s": 20, "times": 1})
    a = scaled.submit("short")["id"]
    wait = time.monotonic() + 90
    while scaled.client.get(f"/status/{a}").json()["status"] != "running":
        assert time.monotonic() < wait
        time.sleep(0.1)
    time.sleep(1)  # a is at its step-1 hang: the next fault is b's
    scaled.arm({"variant": TINY, "kind": "hang", "at_step": 1, "hang_s": 35, "times": 1})
    b = scaled.submit("long")["id"]
    b_started_while_a_ran = stopping_while_b_ran = False
    deadline = time.monotonic() + 150
    while (sb := scaled.client.get(f"/status/{b}").json())["status"] not in ("success", "error", "canceled"):
        assert time.monotonic() < deadline, sb
        if sb["status"] == "running" and not b_started_while_a_ran:
            b_started_while_a_ran = scaled.client.get(f"/status/{a}").json()["status"] == "running"
            assert b_started_while_a_ran, "b started only after a ended: the second replica took too long"
        states = scaled.replica_states()
        if sb["status"] == "running" and states.get("STOPPING", 0) >= 1 and states.get("RUNNING", 0) == 1:
            stopping_while_b_ran = True
        time.sleep(0.2)
    sa = scaled.client.get(f"/status/{a}").json()
    assert (sa["status"], sa["attempts"]) == ("success", 1)
    assert (sb["status"], sb["attempts"]) == ("success", 1)
    assert stopping_while_b_ran, "the replica running b was never being stopped while b ran"

"""Soak (``make soak``): a stream of jobs while a generator replica and the router are killed at
random moments; then the invariants over every job. Bounded by SOAK_SECONDS (env WAN_SERVE_SOAK_S)."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import TERMINAL, deploy
from tests.fault_harness import AppUnderTest, check_invariants

TI2V = "ti2v-5b-tiny"
SOAK_SECONDS = float(os.environ.get("WAN_SERVE_SOAK_S", 150))
MAX_ATTEMPTS = 3


@pytest.mark.soak
def test_jobs_survive_random_generator_and_router_kills(ray_serve, tmp_path):
    seed = int(os.environ.get("WAN_SERVE_SOAK_SEED", time.time()))
    print(f"soak seed {seed} (WAN_SERVE_SOAK_SEED reruns it), {SOAK_SECONDS:g} s")
    rng = random.Random(seed)
    url = deploy(ray_serve, "soak", tmp_path, variants=[TI2V], max_queued_jobs=64, max_attempts=MAX_ATTEMPTS,
                 circuit_breaker={"failure_threshold": 1000, "cooldown_s": 1})
    defaults = {"size": "1280x720", "num_inference_steps": 2, "variant": TI2V}
    with httpx.Client(base_url=url, timeout=30) as client:
        app = AppUnderTest(client, tmp_path, url, "soak", defaults)
        accepted: list[str] = []
        stop = threading.Event()
        kills: list[tuple[float, str]] = []

        def killer():
            while not stop.wait(rng.uniform(12, 30)):
                target = rng.choice(["Router", f"generator-{TI2V}"])
                killed = app.kill(target)  # ray.kill: works while the deployment is restarting
                if killed:
                    kills.append((round(time.time(), 1), killed))

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        deadline = time.monotonic() + SOAK_SECONDS
        while time.monotonic() < deadline:
            # Submitting through a router restart: retried with the same Idempotency-Key until accepted.
            key = {"Idempotency-Key": str(uuid.uuid4())}
            body = {"prompt": f"soak {len(accepted)}", **defaults}
            for _ in range(100):
                try:
                    r = client.post("/generate", json=body, headers=key)
                except httpx.HTTPError:
                    r = None
                if r is not None and r.status_code == 202:
                    if r.json()["id"] not in accepted:
                        accepted.append(r.json()["id"])
                    break
                # 5xx while the router restarts; 429 (backpressure) says when to come back.
                time.sleep(float(r.headers.get("Retry-After", 0.3)) if r is not None else 0.3)
            time.sleep(rng.uniform(2.0, 6.0))  # about one job per 4 s: the replica keeps up between kills
        stop.set()
        thread.join()
        for job_id in accepted:
            app.wait(job_id, timeout=600)
        finals = check_invariants(app, accepted)
        print(f"{len(accepted)} jobs, kills: {kills}")
        assert kills, "nothing was killed; raise WAN_SERVE_SOAK_S"
        assert all(s["status"] in TERMINAL for s in finals.values())
        for s in finals.values():
            assert s["attempts"] <= MAX_ATTEMPTS
            if s["status"] != "success":  # only a job that used up its attempts may fail
                assert s["attempts"] == MAX_ATTEMPTS or s["error"]["code"] == "internal", s
        # FIFO: jobs that ran once started in the order they were accepted.
        once = [finals[j]["started_at"] for j in accepted if finals[j]["attempts"] == 1]
        assert once == sorted(once)
        assert sum(s["status"] == "success" for s in finals.values()) >= len(accepted) // 2
    from ray import serve
    serve.delete("soak")

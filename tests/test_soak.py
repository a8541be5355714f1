"""Soak (``make soak``): a stream of jobs while, at random moments, a generator replica or the
router is killed, a step hangs for good, the job store fails a write, or the app is redeployed;
then the invariants over every job. Bounded by SOAK_SECONDS (env WAN_SERVE_SOAK_S)."""

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
    args = dict(variants=[TI2V], max_queued_jobs=64, max_attempts=MAX_ATTEMPTS, fault_file=str(tmp_path / "faults.json"),
                circuit_breaker={"failure_threshold": 1000, "cooldown_s": 1},
                overrides={TI2V: {"timeouts": {"generate_s": 15, "encode_s": 5}}})
    url = deploy(ray_serve, "soak", tmp_path, **args)
    defaults = {"size": "1280x720", "num_inference_steps": 2, "variant": TI2V}
    with httpx.Client(base_url=url, timeout=30) as client:
        app = AppUnderTest(client, tmp_path, url, "soak", defaults)
        accepted: list[str] = []
        stop = threading.Event()
        kills: list[tuple[float, str]] = []

        redeploys = [0]

        def killer():
            from ray import serve

            from serve_app.app import build_app

            kinds = ["Router", f"generator-{TI2V}", "hang", "store_error", "redeploy"]
            first = rng.sample(kinds, len(kinds))  # every kind once (in a random order), then at random
            while not stop.wait(rng.uniform(12, 24)):
                fault = first.pop() if first else rng.choice(kinds)
                if fault == "hang":  # a step that never returns: the watchdog ends the job, Serve replaces the replica
                    app.arm({"variant": TI2V, "kind": "hang", "at_step": 1, "hang_s": 3600})
                elif fault == "store_error":  # the next job-state write fails
                    app.arm({"variant": "router", "kind": "store_error", "op": "update"})
                elif fault == "redeploy":  # a new router starts while the old one drains
                    redeploys[0] += 1
                    changed = dict(args, data_dir=str(tmp_path), max_queued_jobs=64 + redeploys[0])
                    threading.Thread(target=serve.run, args=(build_app(changed),), daemon=True,
                                     kwargs={"name": "soak", "route_prefix": "/soak"}).start()
                else:
                    fault = app.kill(fault)  # ray.kill: works while the deployment is restarting
                if fault:
                    kills.append((round(time.time(), 1), fault))

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
            if s["status"] != "success":  # only a job that used up its attempts, or hung, may fail
                assert s["attempts"] == MAX_ATTEMPTS or s["error"]["code"] in ("internal", "timeout"), s
        # FIFO: jobs that ran once started in the order they were accepted.
        once = [finals[j]["started_at"] for j in accepted if finals[j]["attempts"] == 1]
        assert once == sorted(once)
        assert sum(s["status"] == "success" for s in finals.values()) >= len(accepted) // 2
    from ray import serve
    serve.delete("soak")

"""How long the service takes to recover from a router kill, a generator crash and a CUDA-style error.

Usage: python bench/recovery.py [--variant ti2v-5b-tiny] [--rounds 2] [--out bench/results/recovery.json]

Per round, on an app with the fault switch on (deployments/faults.py), text-only 2-step jobs at
1280x720, all times wall seconds measured from this process (polled every 50 ms):

- ``baseline_job_s``: submit to success with no fault.
- ``router_kill``: the router replica is ray.kill-ed while a job runs; ``status_back_s`` is the
  time until GET /status answers again, ``job_done_s`` until that job is a success (it is
  dispatched again: ``attempts`` 2).
- ``generator_crash``: the replica exits (os._exit) at the job's first step;
  ``job_done_s`` is submit to success on the restarted replica.
- ``cuda_error``: a CUDA-style error at the first step; ``job_done_s`` is submit to success on
  the replica Serve puts in place after ``check_health`` fails.

Writes JSON with every round's numbers and the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx
import ray
import torch
from local_serve import start_local_serve
from ray import serve

from deployments.faults import write_faults
from serve_app.app import build_app

POLL_S = 0.05


def _wait(c: httpx.Client, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(f"/status/{job_id}")
        if r.status_code == 200 and r.json()["status"] in ("success", "error", "canceled"):
            return r.json()
        time.sleep(POLL_S)
    raise TimeoutError(f"job {job_id} did not end in {timeout} s")


def _replica_names(app: str, deployment: str) -> list[str]:
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="ti2v-5b-tiny")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/recovery.json"))
    args = ap.parse_args()

    data_dir = Path(tempfile.mkdtemp())
    fault_file = data_dir / "faults.json"
    port = start_local_serve()
    serve.run(
        build_app({"variants": [args.variant], "data_dir": str(data_dir), "fault_file": str(fault_file)}),
        name="bench",
        route_prefix="/",
    )
    body = {"prompt": "a heron over a river", "variant": args.variant, "size": "1280x720", "num_inference_steps": 2}

    rounds = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:

        def submit() -> tuple[str, float]:
            t = time.perf_counter()
            return c.post("/generate", json=body).json()["id"], t

        for _ in range(args.rounds):
            result = {}
            job, t = submit()
            _wait(c, job)
            result["baseline_job_s"] = time.perf_counter() - t

            job, t = submit()
            while c.get(f"/status/{job}").json()["status"] != "running":
                time.sleep(POLL_S)
            name = _replica_names("bench", "Router")[0]
            killed = time.perf_counter()
            ray.kill(ray.get_actor(name, namespace="serve"))
            time.sleep(POLL_S)
            while True:
                try:
                    if c.get(f"/status/{job}").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(POLL_S)
            status_back = time.perf_counter() - killed
            final = _wait(c, job)
            result["router_kill"] = {
                "status_back_s": status_back,
                "job_done_s": time.perf_counter() - killed,
                "attempts": final["attempts"],
                "status": final["status"],
            }

            for kind in ("crash", "cuda_error"):
                write_faults(fault_file, [{"variant": args.variant, "kind": kind, "at_step": 1}])
                job, t = submit()
                final = _wait(c, job)
                result["generator_crash" if kind == "crash" else kind] = {
                    "job_done_s": time.perf_counter() - t,
                    "attempts": final["attempts"],
                    "status": final["status"],
                }
            write_faults(fault_file, [])
            rounds.append(result)
            print(json.dumps(result, indent=1))

    out = {
        "variant": args.variant,
        "rounds": rounds,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Measure a cold start: a job submitted to a variant at zero replicas, until a replica has taken it.

Usage: python bench/cold_start.py [--variant ti2v-5b-tiny] [--rounds 3] [--model-dir DIR]
                                  [--out bench/results/cold_start.json]

Deploys the variant on a local Ray cluster with autoscaling from zero (min_replicas 0,
max_replicas 1), then, each round: waits until no replica is left, submits one job and polls its
status every 20 ms until it runs, asks the replica for its constructor's timings
(Generator.info), and waits for the job to end. Each round is split, in seconds, into:

- ``scheduling``: submit until the replica's constructor starts (the router's dispatch, Ray Serve's
  autoscaler seeing the call at the handle, placing the actor, starting its process and imports);
- ``loading``: the constructor loading the weights, ``manifest_check`` included (the files against
  the model store's manifest: sizes and recorded stats, rehashing a file whose stats changed,
  model_store/weights_manifest.py ``check_before_load``);
- ``warmup``: the warm-up job the constructor runs (0 when the variant has none);
- ``to_start``: constructor done until the job is running (Serve marks the replica running, the
  handle assigns the waiting call, the first event reaches the job store);
- ``total``: submit until the job runs (the client's clock for the submit, the job's stored
  ``started_at`` for its start; both Unix seconds on this machine).

The same script runs on a GPU machine against the real variants (``--variant ti2v-5b``) once their
weights are in the model store (``--model-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import ray
import torch
from local_serve import start_local_serve
from ray import serve

from deployments.replica_status import generator_deployment_name
from serve_app.app import build_app

APP = "bench-cold-start"
#: Seconds a replica stays idle before it is stopped: long enough to ask it for its timings.
IDLE_S = 5.0


def _replicas(variant: str) -> int:
    dep = serve.status().applications[APP].deployments[generator_deployment_name(variant)]
    return sum((dep.replica_states or {}).values())


def _wait_at_zero(variant: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _replicas(variant):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{variant} did not scale to zero in {timeout} s")
        time.sleep(0.2)


def one_round(client: httpx.Client, variant: str, request: dict) -> dict:
    """Submit one job at zero replicas; returns its split (seconds) and the replica's timings."""
    _wait_at_zero(variant)
    submitted = time.time()
    r = client.post("/generate", json={**request, "variant": variant})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    waiting = r.json()["waiting_for_replica"]
    while (s := client.get(f"/status/{job_id}").json())["status"] == "queued":
        time.sleep(0.02)
    info = serve.get_deployment_handle(generator_deployment_name(variant), APP).info.remote().result()
    while (end := client.get(f"/status/{job_id}").json())["status"] not in ("success", "error", "canceled"):
        time.sleep(0.05)
    assert end["status"] == "success", end
    warmup = info["warmup_seconds"] or 0.0
    split = {
        "scheduling": info["constructed_at"] - submitted,
        "loading": info["load_seconds"],
        "manifest_check": info["manifest_check_seconds"],
        "warmup": warmup,
        "to_start": s["started_at"] - info["ready_at"],
        "total": s["started_at"] - submitted,
    }
    return {"waiting_for_replica_at_submit": waiting, **{k: round(v, 3) for k, v in split.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="ti2v-5b-tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/results/cold_start.json"))
    args = ap.parse_args()

    port = start_local_serve()
    scaling = {"min_replicas": 0, "max_replicas": 1, "downscale_delay_s": IDLE_S, "downscale_to_zero_delay_s": IDLE_S}
    app_args: dict = {
        "variants": [args.variant],
        "data_dir": tempfile.mkdtemp(),
        "overrides": {args.variant: {"deployment": {"autoscaling": scaling}}},
    }
    if args.model_dir:
        app_args["model_dir"] = str(args.model_dir)
    serve.run(build_app(app_args), name=APP, route_prefix="/")
    request = {"prompt": "a lighthouse at dusk", "size": "1280x720", "num_frames": 1, "num_inference_steps": 2}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        rounds = [one_round(client, args.variant, request) for _ in range(args.rounds)]
    serve.shutdown()
    ray.shutdown()

    keys = ("scheduling", "loading", "manifest_check", "warmup", "to_start", "total")
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        },
        "variant": args.variant,
        "rounds": rounds,
        "median_seconds": {k: round(statistics.median(r[k] for r in rounds), 3) for k in keys},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Measure one default job end to end and inside the pipeline call, on a local Ray cluster.

Usage: python bench/job_latency.py [--variant ti2v-5b-tiny] [--jobs 3] [--out bench/results/job_latency.json]

Writes JSON: per job, submit-to-success wall time (seconds, polled every 50 ms), the
generator's pipeline_seconds (encode_prompt + denoising + VAE decode) and encode_seconds
(MP4), and the replica's load and warm-up times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import httpx
import ray
import torch
from ray import serve

from serve_app.app import build_app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="ti2v-5b-tiny")
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/job_latency.json"))
    args = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    t0 = time.perf_counter()
    serve.run(build_app({"variants": [args.variant], "data_dir": tempfile.mkdtemp()}), name="bench", route_prefix="/")
    deploy_seconds = time.perf_counter() - t0

    jobs = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as c:
        for i in range(args.jobs):
            t = time.perf_counter()
            job_id = c.post("/generate", json={"prompt": f"a cat on the beach, take {i}", "size": "1280x720",
                                               "seed": i}).json()["id"]
            while (s := c.get(f"/status/{job_id}").json())["status"] not in ("success", "error", "canceled"):
                time.sleep(0.05)
            wall = time.perf_counter() - t
            assert s["status"] == "success", s
            jobs.append({"end_to_end_seconds": round(wall, 3), **{k: round(v, 3) for k, v in s["timings"].items()}})
    serve.shutdown()
    ray.shutdown()

    report = {
        "variant": args.variant,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "deploy_seconds": round(deploy_seconds, 2),
        "jobs": jobs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

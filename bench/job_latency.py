"""Measure default jobs end to end and inside the pipeline call, on a local Ray cluster.

Usage: python bench/job_latency.py [--variant ti2v-5b-tiny ...] [--size 1280x720] [--jobs 3]
                                  [--out bench/results/job_latency.json]

Each variant gets its task's inputs from tests/data: i2v, ti2v and image_edit the 451x300
chelsea.png, vace the 1280x720 cockatoo.mp4 with a box mask; t2v none. Writes JSON: per variant and job,
submit-to-success wall time (seconds, polled every 50 ms), the generator's pipeline_seconds
(encode_prompt + denoising + VAE decode) and encode_seconds (result file), and the deploy time.
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

from model_store.variants import load_variant
from serve_app.app import build_app

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def _box_mask_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    mask = np.zeros((720, 1280), np.uint8)
    mask[200:500, 400:900] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    return buf.getvalue()


def _uploads(task: str) -> list:
    if task in ("i2v", "ti2v", "image_edit"):
        return [("image", ("chelsea.png", (DATA / "chelsea.png").read_bytes(), "image/png"))]
    if task == "vace":
        return [
            ("video", ("cockatoo.mp4", (DATA / "cockatoo.mp4").read_bytes(), "video/mp4")),
            ("mask", ("mask.png", _box_mask_png(), "image/png")),
        ]
    return []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", nargs="+", default=["ti2v-5b-tiny"])
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/job_latency.json"))
    args = ap.parse_args()

    port = start_local_serve()
    t0 = time.perf_counter()
    serve.run(build_app({"variants": args.variant, "data_dir": tempfile.mkdtemp()}), name="bench", route_prefix="/")
    deploy_seconds = time.perf_counter() - t0

    results = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as c:
        for variant in args.variant:
            task, jobs = load_variant(variant).task, []
            for i in range(args.jobs):
                fields = {
                    "prompt": f"a cat on the beach, take {i}",
                    "variant": variant,
                    "size": args.size,
                    "seed": str(i),
                }
                t = time.perf_counter()
                r = c.post("/generate", data=fields, files=_uploads(task) or None)
                assert r.status_code == 202, r.text
                job_id = r.json()["id"]
                while (s := c.get(f"/status/{job_id}").json())["status"] not in ("success", "error", "canceled"):
                    time.sleep(0.05)
                wall = time.perf_counter() - t
                assert s["status"] == "success", s
                jobs.append({"end_to_end_seconds": round(wall, 3), **{k: round(v, 3) for k, v in s["timings"].items()}})
            results[variant] = {"task": task, "size": args.size, "jobs": jobs}
    serve.shutdown()
    ray.shutdown()

    report = {
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
        "deploy_seconds": round(deploy_seconds, 2),
        "variants": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

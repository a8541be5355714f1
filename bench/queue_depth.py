"""How the API holds up as the queue grows, on SQLite and on PostgreSQL, against a bare Ray Serve
echo deployment on the same proxy.

Usage: python bench/queue_depth.py [--backend sqlite postgresql] [--queued 10000] [--seconds 15]
                                   [--clients 16] [--out bench/results/queue_depth.json]

On a local Ray cluster with one ti2v-5b-tiny generator and ``max_queued_jobs`` 20000, for each job
store backend:

1. one long job runs (500 denoising steps of 17 frames), so the queue does not drain;
2. the echo, status (GET /status/{id} of a queued job), and the echo again, each from
   ``--clients`` concurrent clients for ``--seconds``: requests per second, p50 and p99 latency,
   with 0 jobs queued behind it, the ratios of status to the echo's mean, and the CPU time per
   request of the proxy, the echo replica, the ingress and the router;
3. ``--queued`` jobs are written to the job store and the router restarted, so it reloads them as
   its queue (what a restart does), then status again;
4. submits (POST /generate) from the same clients: jobs per second;
5. serving overhead of a 1-frame, 1-step job (a fresh app, nothing queued): submit to the
   terminal event on the job's SSE stream, seen by the client, minus the generator's pipeline and
   encode seconds; median of 20, and where it goes.

The echo (a FastAPI route answering a constant JSON through Serve's proxy) is the ceiling of this
machine's proxy. It is measured with the long job running, as status is (the long job's denoising
takes both cores' spare time, so an echo on an idle machine would compare unlike loads), and once
on the idle machine before anything else. Writes JSON; the figures go into docs/performance.md.
The PostgreSQL server is started like the tests' (tests/postgres_server.py), on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import ray
from fastapi import FastAPI
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.model import GenerationParams, JobSpec  # noqa: E402
from jobs.store import SqlJobStore  # noqa: E402
from model_store.variants import Size  # noqa: E402
from serve_app.app import build_app  # noqa: E402
from serve_app.ingress import INGRESS_MAX_ONGOING_REQUESTS  # noqa: E402
from tests.conftest import free_port  # noqa: E402

VARIANT = "ti2v-5b-tiny"
echo_api = FastAPI()


# As many requests at once as the wan-serve ingress takes, so the two differ only in their work.
@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS)
@serve.ingress(echo_api)
class Echo:
    @echo_api.get("/status/{job_id}")
    async def status(self, job_id: str) -> dict:
        return {"id": job_id, "status": "queued"}


def _serve_processes(app: str) -> dict[str, psutil.Process]:
    """The proxy, the echo replica and ``app``'s ingress and router replicas, by their Ray process titles."""
    titles = {
        "proxy": "ray::ProxyActor",
        "echo": "ray::ServeReplica:echo:Echo",
        "ingress": f"ray::ServeReplica:{app}:Ingress",
        "router": f"ray::ServeReplica:{app}:Router",
    }
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        for name, title in titles.items():
            if line.startswith(title):
                found[name] = proc
    return found


def _cpu_s(processes: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in processes.items():
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[name] = times.user + times.system
    return out


async def _hammer(
    url: str,
    seconds: float,
    clients: int,
    method: str = "GET",
    body: dict | None = None,
    processes: dict[str, psutil.Process] | None = None,
) -> dict:
    """Requests per second and p50/p99 latency of ``clients`` concurrent clients for ``seconds``;
    with ``processes``, each one's CPU time per request too (ms: user + system, from /proc), a
    measure of the work per request that the machine's load does not skew as it skews throughput."""
    latencies: list[float] = []
    before = _cpu_s(processes or {})
    stop = time.monotonic() + seconds

    async def one(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            r = await (client.get(url) if method == "GET" else client.post(url, json=body))
            latencies.append(time.perf_counter() - t0)
            if r.status_code >= 400:
                raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:200]}")

    async with httpx.AsyncClient(timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()
    out: dict = {
        "requests": len(latencies),
        "per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2),
    }
    if processes:
        after = _cpu_s(processes)
        out["cpu_ms_per_request"] = {
            name: round(1000 * (after[name] - before[name]) / len(latencies), 2) for name in after if name in before
        }
    return out


def _spec(i: int) -> JobSpec:
    params = GenerationParams(
        prompt=f"queued {i}",
        width=1280,
        height=704,
        num_frames=1,
        num_inference_steps=2,
        guidance_scale=5.0,
        seed=i,
        speed="quality",
    )
    return JobSpec(id=f"q{i:06d}", variant=VARIANT, params=params, output_size=Size(width=1280, height=720))


def _deploy(base: str, name: str, data_dir: Path, job_store_url: str | None, max_queued: int) -> str:
    args = {
        "data_dir": str(data_dir),
        "variants": [VARIANT],
        "max_queued_jobs": max_queued,
        "overrides": {VARIANT: {"warmup": False}},
    }
    if job_store_url:
        args["job_store_url"] = job_store_url
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    return f"{base}/{name}"


def _wait(client: httpx.Client, job_id: str, until, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/status/{job_id}")
        if r.status_code < 500 and until(r.json()):  # 5xx while a router restarts
            return r.json()
        time.sleep(0.02)
    raise TimeoutError(job_id)


def _terminal_event(client: httpx.Client, job_id: str) -> dict:
    """Follow the job's Server-Sent Events until its terminal event; returns that event's data."""
    with client.stream("GET", f"/jobs/{job_id}/events") as r:
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: ") and kind == "terminal":
                return json.loads(line[len("data: ") :])
    raise RuntimeError(f"the event stream of {job_id} ended without a terminal event")


def _kill_router(app: str) -> None:
    """Kill the app's router replica; Serve starts another, which reloads the queue from the store."""
    prefix = f"SERVE_REPLICA::{app}#Router#"
    name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))
    ray.kill(ray.get_actor(name, namespace="serve"))


def _ratios(status: dict, echo: dict) -> dict:
    return {
        "throughput_vs_echo": round(status["per_second"] / echo["per_second"], 2),
        "p99_vs_echo": round(status["p99_ms"] / echo["p99_ms"], 2),
    }


def measure(base: str, backend: str, store_url: str | None, args) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{backend}-"))
    url = _deploy(base, f"q{backend}", data_dir, store_url, 20000)
    out: dict = {"backend": backend}
    with httpx.Client(base_url=url, timeout=60) as client:
        fast = {"size": "1280x720", "num_frames": 1, "num_inference_steps": 1}
        # 5. overhead first, with nothing queued.
        overheads, parts = [], []
        for i in range(20):
            t0, wall0 = time.perf_counter(), time.time()
            r = client.post("/generate", json={"prompt": f"overhead {i}", **fast})
            answered = time.perf_counter() - t0
            _terminal_event(client, r.json()["id"])
            seen, wall = time.perf_counter() - t0, time.time()
            final = client.get(f"/status/{r.json()['id']}").json()
            t = final["timings"]
            overheads.append(seen - t["pipeline_seconds"] - t["encode_seconds"])
            # Where it goes (server timestamps; one machine, one clock): the 202, the queue until
            # the router started it, the generator's time outside pipeline and encode, and the
            # terminal event's way to the client (its Server-Sent Events stream).
            parts.append(
                {
                    "submit_answered": answered,
                    "stored_to_started": final["started_at"] - final["created_at"],
                    "generator_other": final["finished_at"]
                    - final["started_at"]
                    - t["pipeline_seconds"]
                    - t["encode_seconds"],
                    "ended_to_seen": wall - final["finished_at"],
                    "sent_to_stored": final["created_at"] - wall0,
                }
            )
        out["overhead_ms_median"] = round(1000 * statistics.median(overheads), 1)
        out["overhead_parts_ms_median"] = {k: round(1000 * statistics.median(p[k] for p in parts), 1) for k in parts[0]}
        long_job = client.post(
            "/generate",
            json={"prompt": "the long one", "size": "1280x720", "num_frames": 17, "num_inference_steps": 500},
        ).json()["id"]
        _wait(client, long_job, lambda s: s["status"] == "running")
        probe = client.post("/generate", json={"prompt": "probe", **fast}).json()["id"]
        procs = _serve_processes(f"q{backend}")
        echo_url = f"{base}/echo/status/x"
        # The echo before and after status, compared with their mean: this machine's speed drifts
        # by 10 to 20 % within minutes under this load.
        before = asyncio.run(_hammer(echo_url, args.seconds, args.clients, processes=procs))
        status_url = f"{url}/status/{probe}"
        out["status_queue_0"] = asyncio.run(_hammer(status_url, args.seconds, args.clients, processes=procs))
        after = asyncio.run(_hammer(echo_url, args.seconds, args.clients, processes=procs))
        out["echo_runs"] = [before, after]
        out["echo"] = {
            "per_second": round((before["per_second"] + after["per_second"]) / 2, 1),
            "p99_ms": round((before["p99_ms"] + after["p99_ms"]) / 2, 2),
        }
        out["status_queue_0"].update(_ratios(out["status_queue_0"], out["echo"]))
        # 3. A deep queue: written to the store, then reloaded by a restarted router.
        store = SqlJobStore(store_url or data_dir / "jobs.db")
        t0 = time.perf_counter()
        with store.transaction():
            for i in range(args.queued):
                store.insert(_spec(i))
        out["queued_insert_seconds"] = round(time.perf_counter() - t0, 1)
        store.close()
        _kill_router(f"q{backend}")
        t0, depth = time.perf_counter(), 0
        while depth < args.queued:  # the new router has reloaded the queue from the store
            time.sleep(0.5)
            r = client.get("/variants")
            depth = r.json()["variants"][0]["queued"] if r.status_code == 200 else 0
            if time.perf_counter() - t0 > 600:
                raise TimeoutError(f"the router reloaded {depth} of {args.queued} jobs")
        out["router_reload_seconds"] = round(time.perf_counter() - t0, 1)
        out["queued"] = depth
        procs = _serve_processes(f"q{backend}")  # the router is a new process
        deep = out[f"status_queue_{args.queued}"] = asyncio.run(
            _hammer(f"{url}/status/{probe}", args.seconds, args.clients, processes=procs)
        )
        deep.update(_ratios(deep, out["echo"]))
        deep["p99_vs_empty_queue"] = round(deep["p99_ms"] / out["status_queue_0"]["p99_ms"], 2)
        tail = client.get("/jobs", params={"limit": 1, "order": "desc"}).json()["data"][0]["id"]
        out[f"status_of_the_last_of_{args.queued}"] = asyncio.run(
            _hammer(f"{url}/status/{tail}", args.seconds, args.clients)
        )
        out["submits"] = asyncio.run(
            _hammer(f"{url}/generate", args.seconds, args.clients, "POST", {"prompt": "a submit", **fast}, procs)
        )
        # Free the generator, so the app stops without waiting out the long job.
        client.post(f"/jobs/{long_job}/cancel")
    print(json.dumps(out), flush=True)
    try:
        serve.delete(f"q{backend}")
    except TimeoutError:
        print(f"app q{backend} still stopping; going on", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument("--queued", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("bench/results/queue_depth.json"))
    args = ap.parse_args()
    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "args": vars(args)}
    report["echo_idle"] = asyncio.run(_hammer(f"{base}/echo/status/x", args.seconds, args.clients))
    server = None
    report["backends"] = []
    for backend in args.backend:
        url = None
        if backend == "postgresql":
            from tests.postgres_server import PostgresServer

            server = PostgresServer(free_port()).start()
            url = server.new_database()
        report["backends"].append(measure(base, backend, url, args))
    if server is not None:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()

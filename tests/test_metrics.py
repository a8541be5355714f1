"""Metrics on the local Ray cluster: after jobs of which one fails (the fault switch's OOM), GET
/metrics and Ray's Prometheus export carry each series with the right counts and labels."""

import os
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.faults import write_faults
from tests.conftest import TINY, deploy, wait_terminal
from tests.webhook_receiver import Receiver

APP = "metrics"
FAST = {"size": "1280x720", "num_inference_steps": 2, "num_frames": 1}


def _samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list, name: str, **labels) -> float | None:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


@pytest.fixture(scope="module")
def metrics_app(ray_serve, tmp_path_factory):
    from ray import serve

    data_dir = tmp_path_factory.mktemp("metrics")
    faults = data_dir / "faults.json"
    write_faults(faults, [{"variant": TINY, "kind": "oom", "at_step": 1, "times": 1}])
    url = deploy(ray_serve, APP, data_dir, variants=[TINY], fault_file=str(faults),
                 overrides={TINY: {"warmup": False}}, webhooks={"allow_networks": ["127.0.0.1/32"]})
    with httpx.Client(base_url=url, timeout=60) as client, Receiver() as rx:
        ids = []
        for i in range(3):  # the first meets the OOM at step 1; one success sends a webhook
            body = {"prompt": f"a tern {i}", **FAST, **({"webhook_url": rx.url} if i == 2 else {})}
            ids.append(client.post("/generate", json=body).json()["id"])
            wait_terminal(client, ids[-1])
        rx.wait(1)
        yield client, [client.get(f"/status/{j}").json() for j in ids]
    serve.delete(APP)


def test_get_metrics_counts_jobs_by_variant_status_and_code(metrics_app):
    client, finals = metrics_app
    assert [f["status"] for f in finals] == ["error", "success", "success"]
    assert finals[0]["error"]["code"] == "out_of_memory"
    deadline = time.monotonic() + 15  # the live replica count is polled every few seconds
    while True:
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = _samples(r.text)
        if _value(samples, "wan_serve_replicas", variant=TINY, kind="live") == 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert _value(samples, "wan_serve_jobs_submitted_total", variant=TINY) == 3
    assert _value(samples, "wan_serve_jobs_ended_total", variant=TINY, status="success", error_code="") == 2
    assert _value(samples, "wan_serve_jobs_ended_total", variant=TINY, status="error",
                  error_code="out_of_memory") == 1
    assert _value(samples, "wan_serve_queue_depth", variant=TINY) == 0
    assert _value(samples, "wan_serve_running_jobs", variant=TINY) == 0
    assert _value(samples, "wan_serve_replicas", variant=TINY, kind="target") == 1
    assert _value(samples, "wan_serve_replicas", variant=TINY, kind="live") == 1


def test_rays_metrics_export_carries_the_job_histograms(metrics_app):
    port = os.environ["WAN_SERVE_TEST_RAY_METRICS_PORT"]
    mine = {"application": APP}
    expected = {
        ("ray_wan_serve_jobs_submitted_total", ()): 3,
        ("ray_wan_serve_jobs_ended_total", (("status", "success"),)): 2,
        ("ray_wan_serve_jobs_ended_total", (("status", "error"), ("error_code", "out_of_memory"))): 1,
        ("ray_wan_serve_queue_wait_seconds_count", ()): 3,
        ("ray_wan_serve_job_seconds_count", (("status", "success"),)): 2,
        ("ray_wan_serve_job_seconds_count", (("status", "error"),)): 1,
        # Every job left denoising once (the failed one after its first step), each with its step time.
        ("ray_wan_serve_phase_seconds_count", (("phase", "denoising"),)): 3,
        ("ray_wan_serve_denoising_step_seconds_count", (("speed", "quality"),)): 3,
        ("ray_wan_serve_phase_seconds_count", (("phase", "encoding_video"),)): 2,
        ("ray_wan_serve_webhook_deliveries_total", (("outcome", "delivered"),)): 1,
    }
    deadline = time.monotonic() + 60  # Ray's agent exports every 10 s
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        samples = _samples(text)
        got = {key: _value(samples, key[0], **mine, **({"variant": TINY} if "webhook" not in key[0] else {}),
                           **dict(key[1])) for key in expected}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert got == expected
    assert _value(samples, "ray_wan_serve_replicas", **mine, variant=TINY, kind="target") == 1


def test_the_grafana_dashboard_queries_only_series_that_exist():
    """Each query names wan-serve series of jobs/metrics.py (with Prometheus' suffixes) or Ray's GPU
    node metrics: a renamed series fails here, not on an operator's empty panel."""
    import json
    import re
    from pathlib import Path

    from jobs.metrics import PREFIX, SERIES

    dashboard = json.loads((Path(__file__).parents[1] / "dashboards" / "wan-serve.json").read_text())
    names = {n for p in dashboard["panels"] for t in p["targets"] for n in re.findall(r"ray_[a-z_]+", t["expr"])}
    suffixes = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    known = {f"ray_{PREFIX}{name}{sfx}" for name, s in SERIES.items() for sfx in suffixes[s.kind]}
    known |= {"ray_node_gpus_utilization", "ray_node_gram_used"}  # Ray's reporter agent (docs/metrics.md)
    assert names and names <= known, sorted(names - known)
    used = {n.removeprefix("ray_" + PREFIX).removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            for n in names}
    assert set(SERIES) <= used  # every series has a panel

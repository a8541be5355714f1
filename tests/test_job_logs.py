"""Structured logs: each log line of a job names it (wan_job_id, variant), as a field of Ray
Serve's JSON log format."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ray._common.formatters import JSONFormatter

from jobs.log_context import install_job_fields, job_context
from tests.conftest import wait_terminal

TI2V = "ti2v-5b-tiny"


def test_records_made_for_a_job_carry_its_id_and_variant_in_json():
    install_job_fields()
    install_job_fields()  # once per process, however often it is called
    logger = logging.getLogger("wan-serve-test")
    with job_context("job-1", TI2V):
        inside = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "working", (), None)
    outside = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "idle", (), None)
    line = json.loads(JSONFormatter().format(inside))
    assert line["wan_job_id"] == "job-1" and line["variant"] == TI2V and line["message"] == "working"
    assert "wan_job_id" not in json.loads(JSONFormatter().format(outside))


def test_a_jobs_replica_log_lines_are_json_with_its_id(ray_serve, tmp_path, temporary_apps):
    import ray
    from ray import serve

    from serve_app.app import build_app

    temporary_apps.append("jsonlogs")
    serve.run(
        build_app({"data_dir": str(tmp_path), "variants": [TI2V], "overrides": {TI2V: {"warmup": False}}}),
        name="jsonlogs",
        route_prefix="/jsonlogs",
        logging_config={"encoding": "JSON"},
    )
    import httpx

    with httpx.Client(base_url=f"{ray_serve}/jsonlogs", timeout=60) as client:
        r = client.post("/generate", json={"prompt": "logged", "num_frames": 1, "num_inference_steps": 2})
        assert r.status_code == 202, r.text
        job = r.json()
        assert wait_terminal(client, job["id"])[-1]["status"] == "success"
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    lines: list[dict] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(lines) < 2:  # the files are flushed by line, by another process
        lines = []
        for path in logs.glob("replica_jsonlogs_generator-*.log"):
            for raw in path.read_text().splitlines():
                if job["id"] in raw:
                    lines.append(json.loads(raw))
        time.sleep(0.5)
    mine = [line for line in lines if line.get("wan_job_id") == job["id"]]
    assert [line["message"].split(":")[1].split()[0] for line in mine] == ["2", "wrote"]
    assert all(line["variant"] == TI2V and line["levelname"] == "INFO" for line in mine)

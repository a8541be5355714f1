"""The service with its job store on a real PostgreSQL server (job_store_url), on the local Ray
cluster: jobs, their Idempotency-Keys and their webhook-free lifecycle land in PostgreSQL."""

import httpx

from jobs.model import JobStatus
from jobs.store import SqlJobStore
from tests.conftest import TINY, deploy, wait_terminal

APP = "pgstore"


def test_the_service_keeps_its_jobs_in_postgresql(ray_serve, postgres, tmp_path, temporary_apps):
    url = postgres.new_database()
    base = deploy(ray_serve, APP, tmp_path / "data", variants=[TINY], job_store_url=url,
                  overrides={TINY: {"warmup": False}})
    temporary_apps.append(APP)
    body = {"prompt": "a crane in the reeds", "size": "1280x720", "num_inference_steps": 2, "num_frames": 1}
    with httpx.Client(base_url=base, timeout=60) as client:
        first = client.post("/generate", json=body, headers={"Idempotency-Key": "pg-1"})
        again = client.post("/generate", json=body, headers={"Idempotency-Key": "pg-1"})
        assert first.status_code == 202 and again.json()["id"] == first.json()["id"]
        final = wait_terminal(client, first.json()["id"])[-1]
        assert final["status"] == "success"
    store = SqlJobStore(url)
    [rec] = store.all()
    assert rec.id == first.json()["id"] and rec.status == JobStatus.success and rec.result["num_frames"] == 1
    assert store.db.schema_version == "0003" and not (tmp_path / "data" / "jobs.db").exists()
    assert store.db.execute("SELECT generation FROM lease").scalar_one() == 1  # the router holds the lease

"""Keys, ownership, signed URLs and quotas over real HTTP on 127.0.0.1: two teams' keys and an
admin key on one app, and every route that names a job tried with the wrong key."""

from __future__ import annotations

import asyncio
import json

from collections.abc import Iterator

import httpx
import openai
import pytest
import websockets
from ray import serve

from auth.keys import KeyStore
from jobs.config import DataLayout
from jobs.ownership import Quotas
from jobs.store import Database
from tests.conftest import all_videos, deploy, wait_for, wait_terminal
from tests.media_samples import CHELSEA

TI2V = "ti2v-5b-tiny"
QUICK = {"size": "1280x720", "num_frames": 5, "num_inference_steps": 2}
LONG = {"size": "1280x720", "num_frames": 5, "num_inference_steps": 400}


class Secured:
    """The app, its keys (secrets by name) and a client per key."""

    def __init__(self, url: str, secrets: dict[str, str]) -> None:
        self.url, self.secrets = url, secrets

    def client(self, name: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.secrets[name]}"} if name else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def secured(ray_serve, tmp_path_factory) -> Iterator[Secured]:
    data_dir = tmp_path_factory.mktemp("secured")
    keys = KeyStore(Database(DataLayout(data_dir=data_dir).jobs_db))
    secrets = {
        "a": keys.create("team-a")[1],
        "b": keys.create("team-b")[1],
        "admin": keys.create("ops", admin=True)[1],
        "queue1": keys.create("one-queued", quotas=Quotas(max_queued=1))[1],
        "hourly": keys.create("one-per-hour", quotas=Quotas(jobs_per_hour=1))[1],
    }
    url = deploy(ray_serve, "secured", data_dir, variants=[TI2V], max_queued_jobs=16, max_event_streams_per_key=2)
    yield Secured(url, secrets)
    serve.delete("secured")  # its generator's CPU share goes back to the other modules' apps


def _not_found_alike(foreign: httpx.Response, unknown: httpx.Response, foreign_id: str) -> None:
    """Another key's job answers exactly as an unknown one (its id aside)."""
    assert foreign.status_code == unknown.status_code == 404, (foreign.text, unknown.text)
    assert foreign.json() == json.loads(unknown.text.replace("0" * 32, foreign_id))


def test_another_keys_jobs_answer_404_on_every_route_and_the_attacks_fail(secured):
    a, b, admin, anonymous = (secured.client(n) for n in ("a", "b", "admin", None))
    photo = CHELSEA.read_bytes()
    job = a.post("/generate", data={"prompt": "team a's private photo", **QUICK}, files={"image": photo})
    assert job.status_code == 202, job.text
    a_id = job.json()["id"]
    done = wait_terminal(a, a_id)[-1]
    assert done["status"] == "success", done
    name = done["filename"]
    unknown_id = "0" * 32

    for method, path in [
        ("GET", "/status/{}"),
        ("GET", "/jobs/{}/events"),
        ("GET", "/jobs/{}/webhooks"),
        ("POST", "/jobs/{}/cancel"),
        ("GET", "/v1/videos/{}"),
        ("GET", "/v1/videos/{}/content"),
        ("DELETE", "/v1/videos/{}"),
    ]:
        _not_found_alike(b.request(method, path.format(a_id)), b.request(method, path.format(unknown_id)), a_id)
    remix = b.post(f"/v1/videos/{a_id}/remix", json={"prompt": "give me frame 0"})
    _not_found_alike(remix, b.post(f"/v1/videos/{unknown_id}/remix", json={"prompt": "x"}), a_id)
    assert b.get("/jobs/lookup", params={"prompt": "team a's private photo"}).status_code == 404
    assert a.get("/jobs/lookup", params={"prompt": "team a's private photo"}).json()["id"] == a_id
    assert b.get(f"/files/{name}").status_code == 404  # B's key, no signature
    assert anonymous.get(f"/files/{name}").status_code == 404  # no key, no signature: not found

    # B's lists hold none of A's jobs; B's "delete everything" deletes none of them.
    b_job = b.post("/generate", json={"prompt": "team b's own", **QUICK}).json()["id"]
    wait_terminal(b, b_job)
    assert [j["id"] for j in b.get("/jobs", params={"limit": 100}).json()["data"]] == [b_job]
    assert [v["id"] for v in b.get("/v1/videos", params={"limit": 100}).json()["data"]] == [b_job]
    assert [v["job_id"] for v in all_videos(b)] == [b_job]
    deleted = b.delete("/jobs", params={"all": "true", "delete_files": "true"}).json()
    assert deleted["deleted"] == [b_job]
    assert a.get(f"/status/{a_id}").json()["status"] == "success"

    # The signed file_url works without a key, for one file, until it expires; a tampered one does not.
    signed = a.get(f"/status/{a_id}").json()["file_url"]
    assert signed.startswith(f"/files/{name}?expires=") and "signature=" in signed
    video = anonymous.get(signed)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    assert anonymous.get(signed[:-4] + "0000").status_code == 404
    thumb = anonymous.get(signed + "&variant=thumbnail")
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
    assert a.get(f"/files/{name}").content == video.content  # the owner's key, no signature

    # An admin key sees every key's jobs and deletes them all.
    assert a_id in [j["id"] for j in admin.get("/jobs", params={"limit": 100}).json()["data"]]
    assert admin.delete("/jobs", params={"all": "true", "delete_files": "true"}).json()["deleted"] == [a_id]
    assert a.get(f"/status/{a_id}").status_code == 404


def test_without_a_valid_key_only_health_and_a_minimal_ready_answer(secured):
    anonymous, wrong, a = secured.client(None), httpx.Client(base_url=secured.url, timeout=60), secured.client("a")
    wrong.headers["Authorization"] = "Bearer wsk_" + "x" * 43
    missing = anonymous.post("/generate", json={"prompt": "no key"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"] == {
        "code": "missing_api_key",
        "message": missing.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": None,
    }
    assert "wan-serve keys create" in missing.json()["error"]["message"]
    bad = wrong.get("/jobs")
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    for path in ("/variants", "/v1/models", "/videos", "/v1/videos", "/jobs"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.get("/health").json() == {"status": "ok", "auth": "api_keys"}
    assert anonymous.get("/ready").json() == {"status": "ready"}
    assert a.get("/ready").json()["variants"][TI2V]["ready"] is True


def test_the_openai_package_works_with_a_key_and_fails_with_a_wrong_one(secured):
    client = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=secured.secrets["a"])
    video = client.videos.create(prompt="an openai client with a key", model=TI2V, seconds="1", size="1280x720")
    assert client.videos.retrieve(video.id).id == video.id
    assert video.id in [v.id for v in client.videos.list(limit=100).data]
    stranger = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=secured.secrets["b"])
    with pytest.raises(openai.NotFoundError):
        stranger.videos.retrieve(video.id)
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=f"{secured.url}/v1", api_key="wsk_not-a-key").videos.list()
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    client.videos.delete(video.id)


def test_websocket_keys_from_a_header_or_a_browser_subprotocol(secured):
    a = secured.client("a")
    job = a.post("/generate", json={"prompt": "watched over a socket", **QUICK}).json()["id"]
    ws_url = secured.url.replace("http://", "ws://") + f"/ws/jobs/{job}"

    async def run():
        async with websockets.connect(
            ws_url, subprotocols=["wan-serve", f"wan-serve.bearer.{secured.secrets['a']}"]
        ) as ws:
            assert ws.subprotocol == "wan-serve"
            events = [json.loads(m) async for m in ws]
        assert events[-1]["status"] == "success"
        async with websockets.connect(
            ws_url, additional_headers={"Authorization": f"Bearer {secured.secrets['b']}"}
        ) as ws:
            await ws.wait_closed()
        foreign = ws.close_code
        async with websockets.connect(ws_url) as ws:
            await ws.wait_closed()
        return foreign, ws.close_code

    assert asyncio.run(run()) == (4404, 4401)


def test_quotas_answer_429_with_the_limit_and_keys_take_turns(secured):
    a, b, queue1, hourly = (secured.client(n) for n in ("a", "b", "queue1", "hourly"))
    long_job = a.post("/generate", json={"prompt": "keeps the generator busy", **LONG}).json()["id"]
    wait_for(a, long_job, lambda s: s["status"] == "running")
    a_jobs = [a.post("/generate", json={"prompt": f"a{i}", **QUICK}).json()["id"] for i in range(3)]
    b_job = b.post("/generate", json={"prompt": "b0", **QUICK}).json()
    assert b_job["queue_position"] == 2  # after A's next job, not after all of A's

    first = queue1.post("/generate", json={"prompt": "q0", **QUICK})
    assert first.status_code == 202
    over = queue1.post("/generate", json={"prompt": "q1", **QUICK})
    assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
    assert over.json()["error"]["code"] == "quota_exceeded" and over.json()["error"]["limit"] == "max_queued"
    assert over.json()["error"]["type"] == "rate_limit_error"
    assert hourly.post("/generate", json={"prompt": "h0", **QUICK}).status_code == 202
    per_hour = hourly.post("/generate", json={"prompt": "h1", **QUICK})
    assert per_hour.status_code == 429 and per_hour.json()["error"]["limit"] == "jobs_per_hour"
    assert 3500 <= int(per_hour.headers["retry-after"]) <= 3600

    # Two streams per key (max_event_streams_per_key=2): A's third is refused, B still gets one.
    streams = [a.stream("GET", f"/jobs/{long_job}/events") for _ in range(3)]
    opened = [s.__enter__() for s in streams[:2]]
    assert [r.status_code for r in opened] == [200, 200]
    third = a.get(f"/jobs/{long_job}/events")
    assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_streams"
    with b.stream("GET", f"/jobs/{b_job['id']}/events") as b_stream:
        assert b_stream.status_code == 200
    for s in streams[:2]:
        s.__exit__(None, None, None)

    a.post(f"/jobs/{long_job}/cancel")
    finished = {j: wait_terminal(a if j != b_job["id"] else b, j)[-1] for j in [*a_jobs, b_job["id"]]}
    assert all(s["status"] == "success" for s in finished.values())
    order = sorted(finished, key=lambda j: finished[j]["started_at"])
    assert order == [a_jobs[0], b_job["id"], a_jobs[1], a_jobs[2]]
    assert wait_terminal(queue1, first.json()["id"])[-1]["status"] == "success"
    assert wait_terminal(a, long_job)[-1]["status"] == "canceled"


def test_a_key_made_while_the_service_runs_open_turns_keys_on_and_revoking_it_keeps_them_on(
    ray_serve, tmp_path, temporary_apps
):
    import time

    temporary_apps.append("flip")
    url = deploy(ray_serve, "flip", tmp_path, variants=[TI2V], overrides={TI2V: {"warmup": False}})
    anonymous = httpx.Client(base_url=url, timeout=60)
    assert anonymous.get("/health").json()["auth"] == "open" and anonymous.get("/jobs").status_code == 200
    keys = KeyStore(Database(DataLayout(data_dir=tmp_path).jobs_db))
    key, secret = keys.create("late")
    time.sleep(5.5)  # the ingress's cache of the key count (AUTH_CACHE_S)
    assert anonymous.get("/health").json()["auth"] == "api_keys"
    assert anonymous.get("/jobs").status_code == 401
    keyed = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {secret}"})
    assert keyed.get("/jobs").status_code == 200
    keys.revoke(key.id)
    time.sleep(5.5)  # the ingress's cache of the key lookup
    refused = keyed.get("/jobs")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    # The last key revoked: the service stays keyed, it does not fall back to open.
    assert anonymous.get("/jobs").status_code == 401 and anonymous.get("/health").json()["auth"] == "api_keys"
    assert keys.get(key.id).last_used_at is not None  # the router recorded its use

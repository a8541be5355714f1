"""The service with its state off the local disk: jobs in a real PostgreSQL server, inputs and
results in a real S3-compatible bucket (moto's server), on the local Ray cluster. Uploads,
downloads (with Range, and presigned), deletes and the OpenAI routes all go through them."""

import httpx
import pytest
from ray import serve

from jobs.objects import ObjectStore
from jobs.store import SqlJobStore
from tests.conftest import TINY, deploy, wait_terminal
from tests.media_samples import CHELSEA, encode_image, load_rgb

APP = "cluster"
FAST = {"size": "1280x720", "num_inference_steps": 2, "num_frames": 5}


@pytest.fixture(scope="module")
def cluster_app(ray_serve, postgres, s3, tmp_path_factory):
    bucket = s3.new_bucket()
    storage, database = f"s3://{bucket}/state", postgres.new_database()
    data_dir = tmp_path_factory.mktemp("cluster")
    url = deploy(ray_serve, APP, data_dir, variants=[TINY], storage_url=storage, job_store_url=database,
                 overrides={TINY: {"warmup": False}})
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client, ObjectStore(storage), SqlJobStore(database), data_dir
    serve.delete(APP)


def test_text_and_image_jobs_keep_their_state_in_the_bucket_and_the_database(cluster_app):
    client, bucket, jobs, data_dir = cluster_app
    text = client.post("/generate", json={"prompt": "a lantern", **FAST}).json()["id"]
    png = encode_image(load_rgb(CHELSEA), "PNG")
    image = client.post("/generate", data={"prompt": "the cat blinks", **{k: str(v) for k, v in FAST.items()}},
                        files={"image": ("cat.png", png, "image/png")}).json()["id"]
    finals = {j: wait_terminal(client, j)[-1] for j in (text, image)}
    assert {f["status"] for f in finals.values()} == {"success"}
    # The results are objects in the bucket; nothing under the data folder but scratch-free state.
    for final in finals.values():
        info = bucket.info(f"outputs/{final['filename']}")
        assert info is not None and info.size > 1000
    assert not (data_dir / "outputs").exists() and not (data_dir / "inputs").exists()
    assert not (data_dir / "jobs.db").exists()
    # The image job's inputs were read by the generator from the bucket, and are kept for remixes.
    assert sorted(o.key for o in bucket.list(f"inputs/{image}/")) == [f"inputs/{image}/image.npy"]
    assert {r.id for r in jobs.all()} >= {text, image}


def test_downloads_answer_ranges_and_presigned_redirects_and_404_once_deleted(cluster_app):
    client, bucket, jobs, _ = cluster_app
    job = client.post("/generate", json={"prompt": "a red door", **FAST}).json()["id"]
    final = wait_terminal(client, job)[-1]
    whole = client.get(final["file_url"])
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert whole.content == bucket.get_bytes(f"outputs/{final['filename']}") and whole.content[4:8] == b"ftyp"
    part = client.get(final["file_url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"
    tail = client.get(final["file_url"], headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    beyond = client.get(final["file_url"], headers={"Range": f"bytes={len(whole.content)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(whole.content)}"
    openai = client.get(f"/v1/videos/{job}/content")
    assert openai.status_code == 200 and openai.content == whole.content
    thumb = client.get(final["file_url"], params={"variant": "thumbnail"})
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # a JPEG made from the object
    assert client.delete(f"/v1/videos/{job}").status_code == 200
    assert bucket.info(f"outputs/{final['filename']}") is None
    assert client.get(final["file_url"]).status_code == 404


def test_presigned_downloads_redirect_to_the_bucket(ray_serve, postgres, s3, tmp_path, temporary_apps):
    storage = f"s3://{s3.new_bucket()}/p"
    url = deploy(ray_serve, "presigned", tmp_path / "data", variants=[TINY], storage_url=storage,
                 downloads="presigned", overrides={TINY: {"warmup": False}})
    temporary_apps.append("presigned")
    with httpx.Client(base_url=url, timeout=60) as client:
        job = client.post("/generate", json={"prompt": "a kite", **FAST}).json()["id"]
        final = wait_terminal(client, job)[-1]
        r = client.get(final["file_url"], follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"].startswith(f"{s3.endpoint}/")
        assert "X-Amz-Signature=" in r.headers["location"]
        direct = httpx.get(r.headers["location"], timeout=30)  # the bucket, not the ingress, sends the bytes
        assert direct.status_code == 200 and direct.content == ObjectStore(storage).get_bytes(
            f"outputs/{final['filename']}")

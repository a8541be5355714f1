"""The /generate API end to end: real Ray Serve, the real pipeline on the tiny twin, real MP4 files."""

import io
import time

import av
import httpx
import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from deployments.generation import frames_to_uint8
from tests.conftest import all_videos, deploy, wait_for, wait_terminal

LONG = {"num_inference_steps": 400}  # several seconds of denoising on the tiny twin


def _decode(content: bytes):
    with av.open(io.BytesIO(content)) as c:
        stream = c.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)])
        return frames, float(stream.average_rate)


def _block_psnr(a: np.ndarray, b: np.ndarray, k: int = 16) -> float:
    """PSNR in dB of the k x k block means of two (T, H, W, 3) videos.

    The tiny twin's random weights give noise-like frames; yuv420p chroma subsampling and
    H.264 quantisation wipe out their pixel-level detail (same seed and another seed both
    score ~16 dB per pixel), while block means keep them apart (~45 dB vs ~25 dB measured).
    """
    def means(x):
        t, h, w, c = x.shape
        return x.reshape(t, h // k, k, w // k, k, c).astype(np.float64).mean(axis=(2, 4))
    mse = np.mean((means(a) - means(b)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def test_prompt_in_mp4_out(client, tiny_weights):
    body = {"prompt": "a red cat walking on the beach at sunset", "size": "1280x720", "seed": 42,
            "num_frames": 9, "num_inference_steps": 6}
    r = client.post("/generate", json=body)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["status"] == "queued" and accepted["gpu_assigned"] is None
    assert accepted["queue_position"] >= 1

    seen = wait_terminal(client, accepted["id"])
    final = seen[-1]
    assert final["status"] == "success", final
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress), "progress must never go back"
    assert any(0 < p < 1 for p in progress), "progress must rise through the run"
    assert final["progress"] == 1.0 and final["gpu_id"] == "cpu" and final["seed"] == 42
    assert 0 < final["timings"]["pipeline_seconds"] < final["finished_at"] - final["created_at"]
    assert final["filename"].startswith("result_cpu_") and final["filename"].endswith(".mp4")

    video = client.get(final["file_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    frames, fps = _decode(video.content)
    assert frames.shape == (9, 720, 1280, 3) and fps == 24
    # TI2V-5B generates 1280x704; the service pads 8 black rows above and below.
    assert frames[:, :6].mean() < 4 and frames[:, -6:].mean() < 4
    assert frames[:, 8:-8].std() > 10

    # The same frames as a direct diffusers call, up to H.264 loss (the bit-exact check of the
    # frames before encoding is tests/test_generation.py).
    direct = WanPipeline.from_pretrained(str(tiny_weights), dtype=torch.float32)
    expected = frames_to_uint8(direct(
        prompt=body["prompt"], height=704, width=1280, num_frames=9, num_inference_steps=6, guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(42), output_type="np",
    ).frames[0])
    assert _block_psnr(frames[:, 8:-8], expected) > 38

    listed = all_videos(client)
    assert final["filename"] in [v["filename"] for v in listed]
    entry = next(v for v in listed if v["filename"] == final["filename"])
    assert entry["size_bytes"] == len(video.content) and entry["job_id"] == final["id"]


def test_portrait(client):
    r = client.post("/generate", json={"prompt": "a dog in the city", "size": "720x1280", "seed": 1})
    final = wait_terminal(client, r.json()["id"])[-1]
    assert final["status"] == "success"
    frames, _ = _decode(client.get(final["file_url"]).content)
    assert frames.shape == (5, 1280, 720, 3)
    assert frames[:, :, :6].mean() < 4 and frames[:, :, -6:].mean() < 4

    # With a measured job duration on record, a queued job gets an ETA.
    again = client.post("/generate", json={"prompt": "a dog in the city", "size": "720x1280", "seed": 2}).json()
    assert again["eta_seconds"] is not None and again["eta_seconds"] > 0
    assert wait_terminal(client, again["id"])[-1]["status"] == "success"


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"prompt": "", "size": "1280x720"}, "prompt", "at least 1"),
        ({"size": "1280x720"}, "prompt", "required"),
        ({"prompt": "x", "size": "1920x1080"}, "size", "1280x720"),
        ({"prompt": "x", "size": "1280x720", "filename": "../../x"}, "filename", "path separators"),
        ({"prompt": "x", "size": "1280x720", "num_frames": 8}, "num_frames", "4k+1"),
        ({"prompt": "x", "size": "1280x720", "num_frames": 1001}, "num_frames", "at most"),
        ({"prompt": "x", "size": "1280x720", "num_inference_steps": 0}, "num_inference_steps", "greater"),
        ({"prompt": "x", "size": "1280x720", "num_inference_steps": 501}, "num_inference_steps", "1 to 500"),
        ({"prompt": "x", "size": "1280x720", "guidance_scale": -1}, "guidance_scale", "greater"),
        ({"prompt": "x", "size": "1280x720", "colour": "red"}, "colour", "not permitted"),
    ],
)
def test_validation_says_what_is_wrong(client, body, field, words):
    r = client.post("/generate", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert field in err["message"] and words.lower() in err["message"].lower()
    assert "Traceback" not in r.text and "/work" not in r.text


def test_unknown_variant_is_404_with_the_deployed_list(client):
    r = client.post("/generate", json={"prompt": "x", "size": "1280x720", "variant": "t2v-a14b"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "variant_not_found"
    assert r.json()["error"]["deployed"] == sorted(["ti2v-5b-tiny", "t2v-a14b-tiny", "i2v-a14b-tiny", "vace-14b-tiny",
                                                    "qwen-image-edit-tiny"])


def test_cancel_queued_and_running(client, app_dir):
    outputs = app_dir / "outputs"
    before = set(p.name for p in outputs.iterdir())
    running = client.post("/generate", json={"prompt": "long job", "size": "1280x720", **LONG}).json()["id"]
    queued = client.post("/generate", json={"prompt": "waits", "size": "1280x720"}).json()["id"]
    wait_for(client, running, lambda s: s["step"] >= 2)
    assert client.get(f"/status/{queued}").json()["status"] == "queued"

    r = client.post(f"/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    r = client.post(f"/jobs/{running}/cancel")
    assert r.json()["status"] == "canceled" and r.json()["error"]["code"] == "canceled"
    step_at_cancel = r.json()["step"]

    # The queued job never reached a generator.
    q = client.get(f"/status/{queued}").json()
    assert q["status"] == "canceled" and q["started_at"] is None and q["gpu_id"] is None
    # The running one stopped: the replica is free for the next job well before 400 steps could finish.
    nxt = client.post("/generate", json={"prompt": "after cancel", "size": "1280x720"}).json()["id"]
    assert wait_terminal(client, nxt, timeout=60)[-1]["status"] == "success"
    r = client.get(f"/status/{running}").json()
    assert r["status"] == "canceled" and r["file_url"] is None and r["step"] <= step_at_cancel + 1
    new_files = set(p.name for p in outputs.iterdir()) - before
    assert len(new_files) == 1 and not any(n.startswith(".") for n in new_files)


def test_lookup_listing_and_deletion(client, app_dir):
    prompt = f"lookup me {time.time()}"
    first = client.post("/generate", json={"prompt": prompt, "size": "1280x720", "filename": "mine one"}).json()["id"]
    second = client.post("/generate", json={"prompt": prompt, "size": "1280x720"}).json()["id"]
    for job in (first, second):
        assert wait_terminal(client, job)[-1]["status"] == "success"

    found = client.get("/jobs/lookup", params={"prompt": prompt}).json()
    assert found["id"] == second
    assert client.get("/jobs/lookup", params={"prompt": "never sent"}).status_code == 404

    mine = client.get(f"/status/{first}").json()
    assert mine["filename"] == "mine_one.mp4"
    # The name is taken while its file exists.
    dup = client.post("/generate", json={"prompt": "x", "size": "1280x720", "filename": "mine_one.mp4"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "filename_conflict"

    # DELETE /videos removes the file; the job stays with no file_url.
    r = client.request("DELETE", "/videos", params={"filenames": "mine_one.mp4"})
    assert r.json() == {"files_deleted": ["mine_one.mp4"]}
    assert not (app_dir / "outputs" / "mine_one.mp4").exists()
    assert client.get(f"/status/{first}").json()["file_url"] is None
    assert client.get("/files/mine_one.mp4").status_code == 404
    assert "mine_one.mp4" not in [v["filename"] for v in all_videos(client)]

    # DELETE /jobs with delete_files removes both the row and the file.
    second_file = client.get(f"/status/{second}").json()["filename"]
    r = client.request("DELETE", "/jobs", params={"ids": f"{first},{second}", "delete_files": "true"}).json()
    assert sorted(r["deleted"]) == sorted([first, second]) and r["files_deleted"] == [second_file]
    assert not (app_dir / "outputs" / second_file).exists()
    assert client.get(f"/status/{first}").status_code == 404
    assert client.request("DELETE", "/jobs").status_code == 422


def test_only_service_files_are_served(client, app_dir):
    (app_dir / "outputs" / "planted.mp4").write_bytes(b"not ours")
    assert client.get("/files/planted.mp4").status_code == 404
    assert client.get("/files/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/status/nope").json()["error"]["code"] == "job_not_found"


def test_health_ready_and_docs(client):
    assert client.get("/health").json() == {"status": "ok", "auth": "open"}  # no keys, on 127.0.0.1
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["variants"]["ti2v-5b-tiny"]["ready"] is True
    assert "/generate" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_backpressure_429_with_retry_after(ray_serve, tmp_path):
    url = deploy(ray_serve, "bp", tmp_path, max_queued_jobs=1, variants=["ti2v-5b-tiny"])
    with httpx.Client(base_url=url, timeout=60) as c:
        first = c.post("/generate", json={"prompt": "one", "size": "1280x720", **LONG}).json()["id"]
        wait_for(c, first, lambda s: s["status"] == "running")
        second = c.post("/generate", json={"prompt": "two", "size": "1280x720"})
        assert second.status_code == 202 and second.json()["queue_position"] == 1
        third = c.post("/generate", json={"prompt": "three", "size": "1280x720"})
        assert third.status_code == 429
        assert int(third.headers["Retry-After"]) >= 1
        assert third.json()["error"]["code"] == "queue_full"
        r = c.request("DELETE", "/jobs", params={"all": "true"}).json()
        assert sorted(r["canceled"]) == sorted([first, second.json()["id"]])
        assert c.post("/generate", json={"prompt": "four", "size": "1280x720"}).status_code == 202
    from ray import serve
    serve.delete("bp")

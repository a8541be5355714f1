"""The image-edit twin over HTTP beside the video twins: /generate with one to three images, refusals,
progress, cancel, and OpenAI's images API through the official ``openai`` package."""

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.conftest import wait_for, wait_terminal
from tests.media_samples import ASTRONAUT, CHELSEA, gif_bytes
from tests.test_job_events import _sse

EDIT = "qwen-image-edit-tiny"
JOB_TIMEOUT = 300


def _edit(client, images: list[tuple[str, bytes]], **fields) -> httpx.Response:
    data = {"variant": EDIT, "prompt": "make the cat wear a red hat", "num_inference_steps": "2", **fields}
    return client.post("/generate", data=data, files=[("image", im) for im in images])


def _png(path) -> tuple[str, bytes]:
    return (path.name, path.read_bytes())


def _done(client, job_id) -> dict:
    final = wait_terminal(client, job_id, timeout=JOB_TIMEOUT)[-1]
    assert final["status"] == "success", final
    return final


def _download(client, status: dict) -> Image.Image:
    r = client.get(status["file_url"])
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(r.content))
    image.load()
    return image


def test_an_edit_is_a_png_of_the_asked_size_with_per_step_progress(client):
    r = _edit(client, [_png(CHELSEA)], size="512x384", num_inference_steps="3")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    events = _sse(client, job_id)
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    phases = [e["phase"] for e in events if e["event"] == "phase"]
    assert phases.index("encoding_prompt") < phases.index("decoding") < phases.index("encoding_image")
    assert events[-1]["event"] == "terminal" and events[-1]["status"] == "success"

    status = client.get(f"/status/{job_id}").json()
    assert status["output_format"] == "png" and status["size"] == "512x384" and status["num_frames"] == 1
    assert status["inputs"] == {"images": [{"width": 451, "height": 300, "format": "PNG"}]}
    assert status["filename"].endswith(".png")
    image = _download(client, status)
    assert image.format == "PNG" and image.size == (512, 384) and image.mode == "RGB"
    assert np.asarray(image).std() > 1.0  # not blank (1 step would be NaN: refused, below)
    thumb = client.get(status["file_url"] + "&variant=thumbnail")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (512, 384)
    # Listed and downloadable like any other job.
    assert job_id in [j["id"] for j in client.get("/jobs", params={"limit": 100}).json()["data"]]


def test_without_a_size_the_output_follows_the_first_image_at_a_megapixel(client):
    # Astronaut first (square): 1024x1024 whatever the second image's shape.
    r = _edit(client, [_png(ASTRONAUT), _png(CHELSEA)], output_format="webp")
    assert r.status_code == 202, r.text
    status = _done(client, r.json()["id"])
    assert status["size"] == "1024x1024" and status["output_format"] == "webp"
    assert [i["width"] for i in status["inputs"]["images"]] == [512, 451]
    image = _download(client, status)
    assert image.format == "WEBP" and image.size == (1024, 1024)


def test_three_images_work_and_a_fourth_is_refused(client):
    three = [_png(CHELSEA), _png(ASTRONAUT), _png(CHELSEA)]
    r = _edit(client, three, size="256x256", output_format="jpeg")
    assert r.status_code == 202, r.text
    status = _done(client, r.json()["id"])
    assert len(status["inputs"]["images"]) == 3
    image = _download(client, status)
    assert image.format == "JPEG" and image.size == (256, 256)

    r = _edit(client, three + [_png(ASTRONAUT)])
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "image"
    assert r.json()["error"]["message"] == f"variant {EDIT} edits from 1 to 3 images, got 4"


@pytest.mark.parametrize(
    ("files", "fields", "status", "param", "words"),
    [
        ([("cat.gif", gif_bytes())], {}, 415, "image", "GIF"),
        ([("cat.png", CHELSEA.read_bytes()[:2000])], {}, 422, "image", "truncated"),
        ([], {}, 422, "image", "needs an image to edit"),
        ([("cat.png", CHELSEA.read_bytes())], {"size": "500x500"}, 422, "size", "try 496x496"),
        ([("cat.png", CHELSEA.read_bytes())], {"size": "4096x4096"}, 422, "size", "from 256 to 2048"),
        ([("cat.png", CHELSEA.read_bytes())], {"num_inference_steps": "1"}, 422, "num_inference_steps", "2 to 500"),
        ([("cat.png", CHELSEA.read_bytes())], {"guidance_scale": "4"}, 422, "guidance_scale", "true_cfg_scale"),
        ([("cat.png", CHELSEA.read_bytes())], {"num_frames": "5"}, 422, "num_frames", "makes one image"),
        ([("cat.png", CHELSEA.read_bytes())], {"output_format": "mp4"}, 422, "output_format", "png or webp or jpeg"),
    ],
)
def test_refusals_name_the_field_and_what_to_send(client, files, fields, status, param, words):
    r = client.post("/generate", data={"variant": EDIT, "prompt": "x", **fields}, files=[("image", f) for f in files])
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_video_variants_refuse_image_fields(client):
    r = client.post("/generate", json={"variant": "ti2v-5b-tiny", "prompt": "x", "true_cfg_scale": 4})
    assert r.status_code == 422 and r.json()["error"]["param"] == "true_cfg_scale"
    r = client.post("/generate", json={"variant": "ti2v-5b-tiny", "prompt": "x", "output_format": "png"})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "ti2v-5b-tiny makes videos: use mp4"


def test_cancel_mid_run_ends_canceled_without_a_file(client):
    r = _edit(client, [_png(CHELSEA)], size="256x256", num_inference_steps="400")
    job_id = r.json()["id"]
    wait_for(client, job_id, lambda s: s["status"] == "running" and s["step"] >= 1, timeout=JOB_TIMEOUT)
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    final = wait_terminal(client, job_id, timeout=JOB_TIMEOUT)[-1]
    assert final["status"] == "canceled" and final["file_url"] is None
    assert final["step"] < 400


def test_the_variant_catalog_describes_the_image_variant(client):
    variants = {v["name"]: v for v in client.get("/variants").json()["variants"]}
    edit = variants[EDIT]
    assert edit["task"] == "image_edit" and edit["output"] == "image" and edit["sizes"] == []
    assert edit["image_sizes"] == {"multiple_of": 16, "min_side": 256, "max_side": 2048, "default_area": 1048576}
    assert edit["output_formats"] == ["png", "webp", "jpeg"] and edit["max_edit_images"] == 3
    assert edit["uploads"] == {"required": ["image"], "optional": [], "repeatable": ["image"]}
    assert edit["min_inference_steps"] == 2
    assert variants["ti2v-5b-tiny"]["output"] == "video" and variants["ti2v-5b-tiny"]["image_sizes"] is None


# --- OpenAI's images API through the openai package -------------------------------------------

@pytest.fixture(scope="module")
def oa(app_url):
    return openai.OpenAI(base_url=f"{app_url}/v1", api_key="not-checked", timeout=JOB_TIMEOUT, max_retries=0)


def test_openai_images_edit_returns_a_url_and_b64_json(oa, client):
    with CHELSEA.open("rb") as f:
        result = oa.images.edit(model=EDIT, image=f, prompt="the cat as a watercolor", size="512x512",
                                extra_body={"num_inference_steps": 2})
    assert len(result.data) == 1 and result.size == "512x512" and result.output_format == "png"
    url = result.data[0].url
    assert url.startswith("http://127.0.0.1:") and "signature=" in url and result.data[0].b64_json is None
    downloaded = httpx.get(url, timeout=60)  # signed: no key needed
    assert downloaded.status_code == 200 and downloaded.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(downloaded.content)).size == (512, 512)
    job = client.get(f"/status/{result.model_extra['id']}").json()  # the job behind it, like any other
    assert job["status"] == "success" and job["variant"] == EDIT

    with CHELSEA.open("rb") as a, ASTRONAUT.open("rb") as b:
        result = oa.images.edit(model=EDIT, image=[a, b], prompt="both together", size="auto",
                                response_format="b64_json", extra_body={"num_inference_steps": 2, "seed": 5})
    raw = base64.b64decode(result.data[0].b64_json)
    image = Image.open(io.BytesIO(raw))
    assert image.format == "PNG" and image.size == (1248, 832)  # the first image's 451x300 at a megapixel
    job = client.get(f"/status/{result.model_extra['id']}").json()
    assert len(job["inputs"]["images"]) == 2 and job["seed"] == 5
    assert raw == client.get(job["file_url"]).content


def test_openai_images_refusals(oa):
    with CHELSEA.open("rb") as f, pytest.raises(openai.UnprocessableEntityError) as refused:
        oa.images.edit(model=EDIT, image=f, prompt="x", n=2)
    assert refused.value.body["param"] == "n"
    with CHELSEA.open("rb") as f, pytest.raises(openai.UnprocessableEntityError) as refused:
        oa.images.edit(model="ti2v-5b-tiny", image=f, prompt="x")
    assert "use POST /v1/videos" in refused.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        oa.images.generate(model=EDIT, prompt="a cat")
    assert "send the image(s) to edit with the prompt to POST /v1/images/edits" in refused.value.body["message"]
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        oa.videos.create(model=EDIT, prompt="a cat")
    assert "use POST /v1/images/edits" in refused.value.body["message"]


def test_respond_async_answers_202_with_the_job(client):
    # A long job holds the one replica, so the next one is queued when the 202 comes back.
    long = _edit(client, [_png(CHELSEA)], size="256x256", num_inference_steps="400").json()["id"]
    wait_for(client, long, lambda s: s["status"] == "running", timeout=JOB_TIMEOUT)
    r = client.post("/v1/images/edits", data={"model": EDIT, "prompt": "x", "num_inference_steps": "2", "size": "256x256"},
                    files=[("image", _png(CHELSEA))], headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and r.headers["location"] == f"/status/{body['id']}"
    client.post(f"/jobs/{long}/cancel")
    assert _done(client, body["id"])["size"] == "256x256"

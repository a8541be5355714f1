"""All four variants through one HTTP API: multipart uploads of real media, real pipelines on the
tiny twins, real result files (MP4, WebM with alpha, zip of RGBA PNGs), and refusals of bad input."""

import io
import zipfile

import av
import numpy as np
import pytest

from media.fit import fit_mask, fit_video
from media.decode import image_to_mask
from media.video_io import read_png_zip, read_video, write_mp4
from tests.conftest import wait_terminal
from tests.media_samples import (
    ASTRONAUT,
    CHELSEA,
    COCKATOO,
    SVG,
    box_mask,
    cockatoo_frames,
    encode_image,
    gif_bytes,
    huge_png,
    load_rgb,
    mask_png,
    psnr,
    tiff_bytes,
)

JOB_TIMEOUT = 300  # seconds; the A14B twins' full-size Wan2.1-VAE decode takes ~15 s on 2 cores
BOX = (400, 200, 900, 500)  # left, top, right, bottom in cockatoo's 1280x720 frame


def _files(**uploads):
    """httpx multipart files from field -> bytes (or a list of bytes for repeatable fields)."""
    out = []
    for field, value in uploads.items():
        for i, data in enumerate(value if isinstance(value, list) else [value]):
            out.append((field, (f"{field}{i}", data, "application/octet-stream")))
    return out


def _submit(client, fields: dict, **uploads) -> dict:
    r = client.post("/generate", data={k: str(v) for k, v in fields.items()}, files=_files(**uploads))
    assert r.status_code == 202, r.text
    return r.json()


def _succeed(client, job_id: str) -> dict:
    final = wait_terminal(client, job_id, timeout=JOB_TIMEOUT)[-1]
    assert final["status"] == "success", final
    return final


def _decode_mp4(content: bytes):
    with av.open(io.BytesIO(content)) as c:
        stream = c.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)]), float(stream.average_rate)


# A14B's 480P sizes: its 720P pair is covered by tests/test_variant_pipelines.py, at half the decode here.
@pytest.mark.parametrize("size", ["832x480", "480x832"])
def test_i2v_from_a_photo_in_both_orientations(client, size):
    job = _submit(client, {"prompt": "a cat looks around", "variant": "i2v-a14b-tiny", "size": size, "seed": 3},
                  image=CHELSEA.read_bytes())
    final = _succeed(client, job["id"])
    assert final["inputs"] == {"image": {"width": 451, "height": 300, "format": "PNG"}}
    assert final["size"] == size and final["num_frames"] == 5
    frames, fps = _decode_mp4(client.get(final["file_url"]).content)
    width, height = map(int, size.split("x"))
    assert frames.shape == (5, height, width, 3) and fps == 16.0


def test_default_size_follows_the_photo_and_inputs_go_with_the_job(client, app_dir):
    portrait = np.ascontiguousarray(load_rgb(CHELSEA).transpose(1, 0, 2))  # 300x451
    sizes = {}
    for name, data in (("landscape", CHELSEA.read_bytes()), ("portrait", encode_image(portrait, "PNG"))):
        job = _submit(client, {"prompt": f"a {name} cat", "variant": "i2v-a14b-tiny", "num_inference_steps": 400},
                      image=data)
        assert (app_dir / "inputs" / job["id"]).is_dir()  # decoded inputs are stored with the job
        sizes[name] = client.get(f"/status/{job['id']}").json()["size"]
        assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "canceled"
        assert not (app_dir / "inputs" / job["id"]).exists()  # and leave with it
    # The tiny twins list 480P first; the orientation comes from the photo.
    assert sizes == {"landscape": "832x480", "portrait": "480x832"}


def test_i2v_first_last_frame(client):
    job = _submit(client, {"prompt": "a cat turns into an astronaut", "variant": "i2v-a14b-tiny", "size": "832x480"},
                  image=CHELSEA.read_bytes(), last_image=ASTRONAUT.read_bytes())
    final = _succeed(client, job["id"])
    assert set(final["inputs"]) == {"image", "last_image"}
    frames, _ = _decode_mp4(client.get(final["file_url"]).content)
    assert frames.shape == (5, 480, 832, 3)


def test_ti2v_with_and_without_an_image(client):
    with_image = _submit(client, {"prompt": "a cat", "variant": "ti2v-5b-tiny", "size": "1280x720", "seed": 5},
                         image=CHELSEA.read_bytes())
    text_only = client.post("/generate", json={"prompt": "a cat", "variant": "ti2v-5b-tiny", "size": "1280x720",
                                               "seed": 5}).json()
    a = _decode_mp4(client.get(_succeed(client, with_image["id"])["file_url"]).content)[0]
    b = _decode_mp4(client.get(_succeed(client, text_only["id"])["file_url"]).content)[0]
    assert a.shape == b.shape == (5, 720, 1280, 3)  # 1280x704 generated, padded to 1280x720
    assert psnr(a[0], b[0]) < 30  # the image changed the video


def test_t2v_a14b_over_json(client):
    r = client.post("/generate", json={"prompt": "a city street at night", "variant": "t2v-a14b-tiny",
                                       "size": "832x480", "guidance_scale": 4.0, "guidance_scale_2": 2.0})
    assert r.status_code == 202, r.text
    final = _succeed(client, r.json()["id"])
    frames, fps = _decode_mp4(client.get(final["file_url"]).content)
    assert frames.shape == (5, 480, 832, 3) and fps == 16.0


def test_vace_inpaints_a_real_clip_and_keeps_the_rest(client):
    job = _submit(client, {"prompt": "a parrot with golden feathers", "variant": "vace-14b-tiny", "size": "1280x720"},
                  video=COCKATOO.read_bytes(), mask=mask_png(box_mask(1280, 720, BOX)))
    final = _succeed(client, job["id"])
    assert final["inputs"]["video"] == {"width": 1280, "height": 720, "fps": 20.0, "container": "MP4/MOV",
                                        "frames_used": 5}
    frames, fps = _decode_mp4(client.get(final["file_url"]).content)
    assert frames.shape == (5, 720, 1280, 3) and fps == 16.0  # the variant's frames and fps
    source = cockatoo_frames([0, 1, 2, 3, 5])  # 20 fps -> 16 fps
    inside = np.repeat(box_mask(1280, 720, BOX)[None], 5, axis=0)
    assert psnr(frames[~inside], source[~inside]) > 30  # H.264 of the source pixels
    assert psnr(frames[inside], source[inside]) < 20  # regenerated


def _mask_video(mask: np.ndarray, frames: int, fps: int = 20) -> bytes:
    import tempfile
    from pathlib import Path

    rgb = np.repeat((mask.astype(np.uint8) * 255)[None, ..., None], 3, axis=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mask.mp4"
        write_mp4(np.repeat(rgb, frames, axis=0), path, fps)
        return path.read_bytes()


@pytest.mark.parametrize("output_format, mask_kind", [("webm", "image"), ("png_zip", "video")])
def test_alpha_output_carries_the_mask(client, tmp_path, output_format, mask_kind):
    mask = box_mask(1280, 720, (320, 160, 960, 560))
    upload = mask_png(mask) if mask_kind == "image" else _mask_video(mask, frames=10)
    job = _submit(client, {"prompt": "a parrot", "variant": "vace-14b-tiny", "size": "832x480",
                           "output_format": output_format}, video=COCKATOO.read_bytes(), mask=upload)
    final = _succeed(client, job["id"])
    assert final["output_format"] == output_format
    r = client.get(final["file_url"])
    path = tmp_path / final["filename"]
    path.write_bytes(r.content)
    if mask_kind == "image":
        expected = fit_mask(mask, 832, 480, "crop")
    else:  # the mask video as the test decodes it: thresholded frames 0, 1, 2, 3, 5
        with av.open(io.BytesIO(upload)) as c:
            decoded = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
        expected = fit_mask(np.stack([image_to_mask(decoded[i]) for i in (0, 1, 2, 3, 5)]), 832, 480, "crop")
    expected = np.broadcast_to(expected, (5, 480, 832))
    source = fit_video(cockatoo_frames([0, 1, 2, 3, 5]), 832, 480, "crop")
    if output_format == "webm":
        assert r.headers["content-type"] == "video/webm" and final["filename"].endswith(".webm")
        video = read_video(path, with_alpha=True)
        assert video.frames.shape == (5, 480, 832, 4) and video.fps == 16.0
        assert np.array_equal(video.frames[..., 3] >= 128, expected)
    else:
        assert r.headers["content-type"] == "application/zip" and final["filename"].endswith(".zip")
        assert zipfile.ZipFile(path).namelist() == [f"frame_{i:05d}.png" for i in range(5)]
        rgba = read_png_zip(path)
        assert rgba.shape == (5, 480, 832, 4)
        assert np.array_equal(rgba[..., 3], expected.astype(np.uint8) * 255)  # exact: PNG is lossless
        assert np.array_equal(rgba[..., :3][~expected], source[~expected])  # paste-back, exact


def _bad(variant, **uploads):
    return {"prompt": "x", "variant": variant}, uploads


BAD_INPUTS = {
    "garbage image": (*_bad("i2v-a14b-tiny", image=b"\x00\x01garbage" * 64), 415, "not a recognized image"),
    "truncated image": (*_bad("i2v-a14b-tiny", image=CHELSEA.read_bytes()[:20000]), 422, "truncated"),
    "gif": (*_bad("i2v-a14b-tiny", image=gif_bytes()), 415, "GIF"),
    "tiff": (*_bad("i2v-a14b-tiny", image=tiff_bytes()), 415, "TIFF"),
    "svg": (*_bad("i2v-a14b-tiny", image=SVG), 415, "SVG"),
    "10000x10000": (*_bad("i2v-a14b-tiny", image=huge_png()), 422, "10000x10000"),
    "no image for i2v": (*_bad("i2v-a14b-tiny"), 422, "needs the first frame"),
    "image sent to t2v": (*_bad("t2v-a14b-tiny", image=CHELSEA.read_bytes()), 422, "i2v-a14b-tiny"),
    "last_image sent to ti2v": (*_bad("ti2v-5b-tiny", image=CHELSEA.read_bytes(), last_image=CHELSEA.read_bytes()),
                                422, "last_image"),
    "truncated video": (*_bad("vace-14b-tiny", video=COCKATOO.read_bytes()[:300_000], mask=mask_png(box_mask(1280, 720, BOX))),
                        422, "could not be opened"),
    "gif as video": (*_bad("vace-14b-tiny", video=gif_bytes(), mask=mask_png(box_mask(1280, 720, BOX))),
                     415, "MP4, MOV or WebM"),
    "mask of another size": (*_bad("vace-14b-tiny", video=COCKATOO.read_bytes(), mask=mask_png(box_mask(640, 360, BOX))),
                             422, "mask is 640x360 but the video is 1280x720"),
    "all-black mask": (*_bad("vace-14b-tiny", video=COCKATOO.read_bytes(), mask=mask_png(np.zeros((720, 1280), bool))),
                       422, "black everywhere"),
    "no mask": (*_bad("vace-14b-tiny", video=COCKATOO.read_bytes()), 422, "needs the mask"),
    "unknown file field": (*_bad("i2v-a14b-tiny", image=CHELSEA.read_bytes(), picture=CHELSEA.read_bytes()),
                           422, "not a file field"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_before_anything_is_queued(client, app_dir, case):
    fields, uploads, status, words = BAD_INPUTS[case]
    before = set((app_dir / "inputs").glob("*")) if (app_dir / "inputs").exists() else set()
    r = client.post("/generate", data=fields, files=_files(**uploads))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == {415: "unsupported_media_type", 422: "validation_error"}[status]
    assert words in err["message"], err
    assert "Traceback" not in r.text and "/work" not in r.text and "/tmp" not in r.text
    after = set((app_dir / "inputs").glob("*")) if (app_dir / "inputs").exists() else set()
    assert after == before  # nothing stored, so nothing queued


def test_form_fields_and_json_refusals(client):
    r = client.post("/generate", data={"prompt": "x", "variant": "i2v-a14b-tiny", "image": "not a file"})
    assert r.status_code == 422 and "must be sent as a file" in r.json()["error"]["message"]
    r = client.post("/generate", json={"prompt": "x", "variant": "ti2v-5b-tiny", "output_format": "webm"})
    assert r.status_code == 422 and "vace" in r.json()["error"]["message"]
    r = client.post("/generate", content=b"prompt=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/generate", data={"prompt": "x", "variant": "ti2v-5b-tiny", "num_frames": "eight"})
    assert r.status_code == 422 and "num_frames" in r.json()["error"]["message"]


def test_all_five_variants_are_ready(client):
    body = client.get("/ready").json()
    assert body["status"] == "ready", body
    assert set(body["variants"]) == {"ti2v-5b-tiny", "t2v-a14b-tiny", "i2v-a14b-tiny", "vace-14b-tiny",
                                     "qwen-image-edit-tiny"}


def test_hostile_videos_are_refused_in_seconds_and_health_stays_fast(app_url, client):
    """A 650 KB MP4 of 50,000 frames and one of 4096x4096 frames, sent four times each at once:
    refused from their headers (422), while /health keeps answering within 1 s."""
    import threading
    import time

    import httpx

    from tests.media_samples import synthetic_mp4

    bad = {"holds 50,000 frames": synthetic_mp4(16, 16, 50_000),
           "4096x4096 pixels": synthetic_mp4(4096, 4096, 2, fps=16)}
    answers, health = [], []

    def submit(words, video):
        started = time.monotonic()
        with httpx.Client(base_url=app_url, timeout=60) as c:
            r = c.post("/generate", data={"prompt": "x", "variant": "vace-14b-tiny"},
                       files=_files(video=video, mask=mask_png(box_mask(16, 16, (0, 0, 8, 8)))))
        answers.append((words, r.status_code, r.json()["error"]["message"], time.monotonic() - started))

    threads = [threading.Thread(target=submit, args=item) for item in list(bad.items()) * 4]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        health.append(time.monotonic() - started)
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert len(answers) == 8
    for words, status, message, seconds in answers:
        assert status == 422 and words in message and seconds < 10, (words, status, message, seconds)
    assert health and max(health) < 1.0

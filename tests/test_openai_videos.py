"""The OpenAI-compatible Videos API, driven by the official ``openai`` package, unmodified:
only base_url and api_key are set. Real jobs on the tiny twins behind it."""

import io

import av
import numpy as np
import openai
import pytest
from PIL import Image

from tests.media_samples import CHELSEA

# openai-python marks its Videos methods deprecated (OpenAI's own Sora service shuts down); the API shape stays.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def oa(app_url):
    return openai.OpenAI(base_url=f"{app_url}/v1", api_key="not-checked", timeout=JOB_TIMEOUT, max_retries=0)


def _frames(content: bytes) -> tuple[np.ndarray, float]:
    with av.open(io.BytesIO(content)) as c:
        stream = c.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)]), float(stream.average_rate)


def test_create_and_poll_download_list_remix_delete(oa, client):
    video = oa.videos.create_and_poll(prompt="a cockatoo over the beach", model="ti2v-5b-tiny", size="1280x720",
                                      poll_interval_ms=200)
    assert video.status == "completed" and video.progress == 100, video
    assert video.object == "video" and video.model == "ti2v-5b-tiny" and video.size == "1280x720"
    assert video.seconds == f"{5 / 24:g}" and video.completed_at >= video.created_at
    assert client.get(f"/status/{video.id}").json()["status"] == "success"  # the same job as /generate's

    frames, fps = _frames(oa.videos.download_content(video.id).read())
    assert frames.shape == (5, 720, 1280, 3) and fps == 24.0
    thumb = Image.open(io.BytesIO(oa.videos.download_content(video.id, variant="thumbnail").read()))
    assert thumb.format == "JPEG" and thumb.size == (1280, 720)
    sheet = Image.open(io.BytesIO(oa.videos.download_content(video.id, variant="spritesheet").read()))
    assert sheet.format == "JPEG" and sheet.size == (4 * 256, 2 * 144)  # 5 frames: 4 columns, 2 rows of 256x144

    assert oa.videos.retrieve(video.id).id == video.id
    remix = oa.videos.remix(video.id, prompt="a cockatoo over the city")
    assert remix.remixed_from_video_id == video.id and remix.prompt == "a cockatoo over the city"
    assert remix.size == video.size and remix.seconds == video.seconds
    remix = oa.videos.poll(remix.id, poll_interval_ms=200)
    assert remix.status == "completed"
    # Same seed and parameters, new prompt: a different video.
    remix_frames, _ = _frames(oa.videos.download_content(remix.id).read())
    assert not np.array_equal(remix_frames, frames)

    listed = [v.id for v in oa.videos.list(limit=1)]  # auto-paginates over has_more / last_id
    assert listed.index(remix.id) < listed.index(video.id)  # newest first
    ascending = [v.id for v in oa.videos.list(order="asc", limit=2)]
    assert ascending.index(video.id) < ascending.index(remix.id) and sorted(ascending) == sorted(listed)

    deleted = oa.videos.delete(remix.id)
    assert deleted.deleted and deleted.id == remix.id and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError) as err:
        oa.videos.retrieve(remix.id)
    assert err.value.body["code"] == "job_not_found"


def test_image_to_video_with_input_reference_then_remix_it(oa):
    video = oa.videos.create_and_poll(prompt="the cat looks up", model="i2v-a14b-tiny", size="832x480",
                                      input_reference=("chelsea.png", CHELSEA.read_bytes(), "image/png"),
                                      poll_interval_ms=200)
    assert video.status == "completed", video
    frames, fps = _frames(oa.videos.download_content(video.id).read())
    assert frames.shape == (5, 480, 832, 3) and fps == 16.0
    # The finished video remixes with the same photo (its inputs stay while the job exists).
    remix = oa.videos.poll(oa.videos.remix(video.id, prompt="the cat looks down").id, poll_interval_ms=200)
    assert remix.status == "completed" and remix.remixed_from_video_id == video.id
    remix_frames, _ = _frames(oa.videos.download_content(remix.id).read())
    assert remix_frames.shape == frames.shape and not np.array_equal(remix_frames, frames)


def test_errors_come_in_openais_shape(oa):
    with pytest.raises(openai.UnprocessableEntityError) as err:
        oa.videos.create(prompt="x", model="ti2v-5b-tiny", seconds="12")
    assert err.value.status_code == 422 and err.value.body["param"] == "seconds"
    assert "at most 33 frames" in err.value.body["message"] and err.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as err:
        oa.videos.create(prompt="x", model="sora-2")
    assert "deployed" in err.value.body["message"]

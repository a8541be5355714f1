"""A CFG-parallel generator replica on the local Ray cluster: its second rank runs as a Ray actor in
the replica's placement group, and a job served through HTTP matches one process's frames."""

import os

import httpx
import numpy as np
from ray import serve

from deployments.generation import GenerationRunner
from deployments.replica_status import generator_deployment_name
from jobs.model import GenerationParams
from media.video_io import read_video, write_mp4
from model_store.loader import load_pipeline
from model_store.variants import load_variant
from tests.conftest import deploy, wait_terminal
from tests.media_samples import psnr

T2V = "t2v-a14b-tiny"


def test_a_cfg_parallel_replica_serves_jobs_on_two_ranks(ray_serve, tmp_path, temporary_apps, tiny_weights):
    url = deploy(ray_serve, "parallel", tmp_path / "data", variants=[T2V], overrides={T2V: {"parallel": {"cfg": 2}}})
    temporary_apps.append("parallel")
    info = serve.get_deployment_handle(generator_deployment_name(T2V), app_name="parallel").info.remote().result()
    assert len(info["rank_pids"]) == 1 and os.getpid() not in info["rank_pids"]  # rank 1; rank 0 is the replica
    os.kill(info["rank_pids"][0], 0)  # a live process on this node
    body = {"prompt": "a red kite over a beach", "num_frames": 5, "num_inference_steps": 4, "seed": 9,
            "guidance_scale": 4.0, "guidance_scale_2": 3.0, "size": "832x480"}
    with httpx.Client(base_url=url, timeout=60) as client:
        job = client.post("/generate", json=body).json()["id"]
        final = wait_terminal(client, job)[-1]
        assert final["status"] == "success" and final["total_steps"] == 4, final
        got = client.get(final["file_url"]).content
    # The same job in one process, through the same MP4 writer.
    variant = load_variant(T2V)
    frames = GenerationRunner(variant, load_pipeline(variant)).run(GenerationParams(
        prompt=body["prompt"], negative_prompt=variant.defaults.negative_prompt, width=832, height=480, num_frames=5,
        num_inference_steps=4, guidance_scale=4.0, guidance_scale_2=3.0, seed=9))
    write_mp4(frames, tmp_path / "single.mp4", variant.fps)
    (tmp_path / "served.mp4").write_bytes(got)
    served, single = read_video(tmp_path / "served.mp4").frames, read_video(tmp_path / "single.mp4").frames
    assert served.shape == single.shape == (5, 480, 832, 3)
    assert psnr(served, single) > 40 and np.abs(served.astype(int) - single).mean() < 1

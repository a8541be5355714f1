"""The generator's pipeline runner against a direct diffusers call, progress, and cancellation."""

import threading

import numpy as np
import pytest
import torch
from diffusers import WanPipeline

from jobs.errors import JobCanceled
from deployments.generation import GenerationRunner, frames_to_uint8
from jobs.model import GenerationParams, Phase
from model_store.loader import load_pipeline
from model_store.variants import load_variant

PARAMS = dict(prompt="a cockatoo flying over the beach at sunset", width=1280, height=704, num_frames=5,
              num_inference_steps=3, guidance_scale=5.0, seed=1234)


@pytest.fixture(scope="module")
def runner(tiny_weights):
    variant = load_variant("ti2v-5b-tiny")
    return GenerationRunner(variant, load_pipeline(variant))


def test_frames_equal_a_direct_diffusers_call(runner, tiny_weights):
    events = []
    frames = runner.run(GenerationParams(**PARAMS), on_progress=lambda *e: events.append(e))

    direct = WanPipeline.from_pretrained(str(tiny_weights), dtype=torch.float32)
    expected = direct(
        prompt=PARAMS["prompt"], height=704, width=1280, num_frames=5, num_inference_steps=3, guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(1234), output_type="np",
    ).frames[0]
    assert frames.shape == (5, 704, 1280, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, frames_to_uint8(expected))
    assert frames.std() > 1.0  # not a blank video

    phases = [(p, step) for p, step, _total, _s in events]
    assert phases == [(Phase.encoding_prompt, 0), (Phase.denoising, 1), (Phase.denoising, 2),
                      (Phase.denoising, 3), (Phase.decoding, 3)]


def test_cancel_stops_within_one_step_and_skips_the_decode(runner):
    calls = {"transformer": 0, "decoder": 0}
    hooks = [
        runner.pipe.transformer.register_forward_hook(lambda *a: calls.__setitem__("transformer", calls["transformer"] + 1)),
        runner.pipe.vae.decoder.register_forward_hook(lambda *a: calls.__setitem__("decoder", calls["decoder"] + 1)),
    ]
    cancel = threading.Event()
    steps_seen = []

    def on_progress(phase, step, total, _s):
        if phase == Phase.denoising:
            steps_seen.append(step)
            if step == 2:
                cancel.set()  # as the router does when a cancel arrives during step 2

    try:
        with pytest.raises(JobCanceled):
            runner.run(GenerationParams(**{**PARAMS, "num_inference_steps": 10}), on_progress=on_progress, cancel=cancel)
    finally:
        for h in hooks:
            h.remove()
    assert steps_seen == [1, 2]
    assert calls["transformer"] == 2 * 2  # two steps, conditional and unconditional pass each (CFG)
    assert calls["decoder"] == 0


def test_cancel_before_start_runs_nothing(runner):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(JobCanceled):
        runner.run(GenerationParams(**PARAMS), cancel=cancel)

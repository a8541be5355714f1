"""Each variant's real pipeline on its tiny twin, observed with forward hooks on the real modules (no Ray).

The twins have random weights, so "resembles the input" cannot mean "looks like the photo"
after a generation. What can be checked exactly is what reaches the model: the VAE encoder's
input for image conditioning, which expert runs at which step, and, for TI2V-5B (whose latents
keep the condition), that the first output frame is the VAE round trip of the fitted image.
"""

import numpy as np
import pytest
import torch

from media.compositing import paste_back
from media.fit import fit_image, fit_mask, fit_video
from deployments.generation import GenerationRunner, frames_to_uint8
from jobs.inputs import PreparedInputs
from jobs.model import GenerationParams
from model_store.loader import load_pipeline
from model_store.variants import load_variant
from tests.media_samples import ASTRONAUT, CHELSEA, box_mask, cockatoo_frames, load_rgb, psnr


class Stop(Exception):
    """Raised from a hook once the observation is made, to skip the rest of the (slow) run."""


@pytest.fixture(scope="module")
def runners(tiny_weights):
    torch.set_num_threads(2)
    names = ("t2v-a14b-tiny", "i2v-a14b-tiny", "ti2v-5b-tiny", "vace-14b-tiny")
    return {n: GenerationRunner(load_variant(n), load_pipeline(load_variant(n))) for n in names}


def _params(variant, width, height, **kw):
    base = dict(prompt="a cat on the beach", width=width, height=height, num_frames=5, num_inference_steps=4,
                guidance_scale=variant.defaults.guidance_scale, guidance_scale_2=variant.defaults.guidance_scale_2,
                seed=7)
    return GenerationParams(**{**base, **kw})


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8, as the pipelines' preprocessing maps pixels."""
    return frames_to_uint8(((x.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy())


def test_t2v_experts_split_the_steps_at_the_boundary(runners):
    runner = runners["t2v-a14b-tiny"]
    pipe = runner.pipe
    steps = 8
    calls = {"high": 0, "low": 0}
    hooks = [
        pipe.transformer.register_forward_hook(lambda *a: calls.__setitem__("high", calls["high"] + 1)),
        pipe.transformer_2.register_forward_hook(lambda *a: calls.__setitem__("low", calls["low"] + 1)),
        pipe.vae.decoder.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(Stop())),
    ]
    try:
        with pytest.raises(Stop):
            runner.run(_params(runner.variant, 832, 480, num_inference_steps=steps))
    finally:
        for h in hooks:
            h.remove()
    # Expected split from a fresh copy of the scheduler: steps at t >= 0.875 * 1000 are high-noise.
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    high_steps = int((scheduler.timesteps >= 0.875 * 1000).sum())
    assert 0 < high_steps < steps
    # Two forward calls per step: conditional and unconditional (guidance 4.0 and 3.0 > 1).
    assert calls == {"high": 2 * high_steps, "low": 2 * (steps - high_steps)}
    assert pipe.guidance_scale == 4.0 and pipe._guidance_scale_2 == 3.0


def _encoder_inputs(runner, params, inputs, stop_at_transformer=False):
    """Frames entering the VAE encoder, concatenated over its causal chunks: (T, H, W, 3) uint8."""
    pipe, seen = runner.pipe, []

    def grab(_module, args):
        seen.append(args[0].detach()[0])  # (3, t, H, W)
        if not stop_at_transformer:
            raise Stop()

    hooks = [pipe.vae.encoder.register_forward_pre_hook(grab)]
    if stop_at_transformer:
        hooks.append(pipe.transformer.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(Stop())))
    try:
        with pytest.raises(Stop):
            runner.run(params, inputs=inputs)
    finally:
        for h in hooks:
            h.remove()
    video = torch.cat(seen, dim=1)  # (3, T, H, W)
    return np.stack([_to_uint8(video[:, t]) for t in range(video.shape[1])])


@pytest.mark.parametrize("width, height", [(1280, 720), (720, 1280)])
def test_i2v_conditions_on_the_center_cropped_photo(runners, width, height):
    runner = runners["i2v-a14b-tiny"]
    photo = load_rgb(CHELSEA)  # 451x300: neither 16:9 nor 9:16
    cropped = fit_image(photo, width, height, "crop")
    seen = _encoder_inputs(runner, _params(runner.variant, width, height), PreparedInputs(image=cropped))
    assert seen.shape == (1, height, width, 3)
    assert psnr(seen[0], cropped) > 40
    # ...and not the padded fit of the same photo, nor another photo.
    assert psnr(seen[0], fit_image(photo, width, height, "pad")) < 20
    assert psnr(seen[0], fit_image(load_rgb(ASTRONAUT), width, height, "crop")) < 20


def test_i2v_first_last_frame(runners):
    runner = runners["i2v-a14b-tiny"]
    first = fit_image(load_rgb(CHELSEA), 832, 480, "crop")
    last = fit_image(load_rgb(ASTRONAUT), 832, 480, "crop")
    seen = _encoder_inputs(runner, _params(runner.variant, 832, 480), PreparedInputs(image=first, last_image=last),
                           stop_at_transformer=True)
    assert seen.shape == (5, 480, 832, 3)
    assert psnr(seen[0], first) > 40 and psnr(seen[-1], last) > 40
    # Frames between are left for the model: zeros in [-1, 1], i.e. mid-gray.
    assert np.abs(seen[1:-1].astype(int) - 128).max() <= 1


def test_ti2v_first_frame_is_the_vae_round_trip_of_the_image(runners):
    runner = runners["ti2v-5b-tiny"]
    pipe = runner.pipe
    image = fit_image(load_rgb(CHELSEA), 1280, 704, "crop")
    with_image = runner.run(_params(runner.variant, 1280, 704), inputs=PreparedInputs(image=image))
    text_only = runner.run(_params(runner.variant, 1280, 704))
    assert with_image.shape == text_only.shape == (5, 704, 1280, 3)

    # TI2V-5B keeps the image's latent as the first latent frame; the causal VAE decodes that
    # frame alone into output frame 0.
    with torch.inference_mode():
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1
        latent = pipe.vae.encode(x).latent_dist.mode()
        decoded = pipe.vae.decode(latent).sample
        expected = frames_to_uint8(pipe.video_processor.postprocess_video(decoded, output_type="np")[0])[0]
    assert psnr(with_image[0], expected) > 40
    assert psnr(text_only[0], expected) < 30


def test_vace_inpaints_the_cockatoo_and_paste_back_keeps_the_rest(runners):
    runner = runners["vace-14b-tiny"]
    source = fit_video(cockatoo_frames([0, 1, 2, 3, 5]), 832, 480, "crop")
    mask = np.repeat(fit_mask(box_mask(1280, 720, (400, 200, 900, 500)), 832, 480, "crop")[None], 5, axis=0)
    out = runner.run(_params(runner.variant, 832, 480), inputs=PreparedInputs(video=source, mask=mask))
    assert out.shape == (5, 480, 832, 3)
    final = paste_back(out, source, mask)
    assert np.array_equal(final[~mask], source[~mask])
    assert np.array_equal(final[mask], out[mask])
    assert psnr(final[mask], source[mask]) < 20  # the masked region really was regenerated


def test_vace_takes_reference_images(runners):
    runner = runners["vace-14b-tiny"]
    source = fit_video(cockatoo_frames([0, 1, 2, 3, 5]), 832, 480, "crop")
    mask = np.ones((5, 480, 832), bool)
    seen = []
    hook = runner.pipe.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["hidden_states"].shape[2]), with_kwargs=True)
    try:
        out = runner.run(_params(runner.variant, 832, 480, num_inference_steps=1, guidance_scale=1.0),
                         inputs=PreparedInputs(video=source, mask=mask, reference_images=[load_rgb(ASTRONAUT)]))
    finally:
        hook.remove()
    # The reference image is one extra latent frame in front of the video's 2, dropped before decoding.
    assert seen == [3] and out.shape == (5, 480, 832, 3)

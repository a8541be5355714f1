"""The image-edit variant (Qwen-Image-Edit-2509's tiny twin) on its real diffusers pipeline, without
Ray: the twin's layout, fidelity to a direct diffusers call, multiple images, progress and cancel."""

import json
import threading

import numpy as np
import pytest
import torch
from diffusers import QwenImageEditPlusPipeline
from PIL import Image

from deployments.generation import GenerationRunner, frames_to_uint8
from jobs.errors import JobCanceled
from jobs.inputs import PreparedInputs
from jobs.model import GenerationParams, Phase
from model_store.loader import load_pipeline
from model_store.qwen_processor import load_processor
from model_store.variants import load_variant
from model_store.weights_manifest import read_manifest
from tests.media_samples import ASTRONAUT, CHELSEA, load_rgb

NAME = "qwen-image-edit-tiny"
PARAMS = dict(prompt="turn the cat into a tiger", width=768, height=512, num_frames=1, num_inference_steps=3,
              guidance_scale=4.0, negative_prompt=" ", seed=99)


@pytest.fixture(scope="module")
def runner(tiny_weights):
    torch.set_num_threads(2)
    variant = load_variant(NAME)
    return GenerationRunner(variant, load_pipeline(variant))


def test_the_twin_is_saved_in_the_published_layout_with_a_manifest(tiny_weights):
    folder = tiny_weights.parent / NAME
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"
    # The real repo's entries, not the stand-in processor class the twin was built with.
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert index["text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    assert index["transformer"] == ["diffusers", "QwenImageTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLQwenImage"]
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.name == NAME and manifest.source == "tiny"
    assert any(f.startswith("transformer/") and f.endswith(".safetensors") for f in manifest.files)
    assert not (folder / "processor" / "video_preprocessor_config.json").exists()


def test_edit_equals_a_direct_diffusers_call(runner, tiny_weights):
    events = []
    chelsea = load_rgb(CHELSEA)
    frames = runner.run(GenerationParams(**PARAMS), on_progress=lambda *e: events.append(e),
                        inputs=PreparedInputs(images=[chelsea]))

    folder = str(tiny_weights.parent / NAME)
    direct = QwenImageEditPlusPipeline.from_pretrained(folder, processor=load_processor(folder), dtype=torch.float32)
    expected = direct(
        image=[Image.fromarray(chelsea)], prompt=PARAMS["prompt"], negative_prompt=" ", true_cfg_scale=4.0,
        height=512, width=768, num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(99),
        output_type="np",
    ).images
    assert frames.shape == (1, 512, 768, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, frames_to_uint8(expected))
    assert frames.std() > 1.0  # not a blank image
    phases = [(p, step) for p, step, _total, _s in events]
    assert phases == [(Phase.encoding_prompt, 0), (Phase.denoising, 1), (Phase.denoising, 2),
                      (Phase.denoising, 3), (Phase.decoding, 3)]


def test_every_input_image_reaches_the_vae_and_the_text_encoder(runner):
    pipe = runner.pipe
    encoded, seen_by_vision = [], []
    hooks = [
        pipe.vae.encoder.register_forward_pre_hook(lambda _m, args: encoded.append(tuple(args[0].shape))),
        pipe.text_encoder.model.visual.register_forward_pre_hook(
            lambda _m, args, kwargs: seen_by_vision.append(kwargs.get("grid_thw", args[1] if len(args) > 1 else None)),
            with_kwargs=True,
        ),
    ]
    try:
        frames = runner.run(
            GenerationParams(**{**PARAMS, "num_inference_steps": 2, "guidance_scale": 1.0}),
            inputs=PreparedInputs(images=[load_rgb(CHELSEA), load_rgb(ASTRONAUT), load_rgb(CHELSEA)[:, ::-1].copy()]),
        )
    finally:
        for h in hooks:
            h.remove()
    assert frames.shape == (1, 512, 768, 3) and frames.std() > 1.0
    # Each image is encoded by the VAE at about 1024x1024 in its own aspect (diffusers' calculate_dimensions):
    # 451x300 -> 1248x832, 512x512 -> 1024x1024.
    assert [s[-2:] for s in encoded] == [(832, 1248), (1024, 1024), (832, 1248)]
    assert len(encoded) == 3  # once each (the 2 steps reuse the image latents)
    # ...and all three reach the vision tower in one prompt (three rows of grid_thw).
    assert len(seen_by_vision) == 1 and seen_by_vision[0].shape[0] == 3


def test_cancel_stops_within_one_step_and_skips_the_decode(runner):
    calls = {"transformer": 0, "decoder": 0}
    hooks = [
        runner.pipe.transformer.register_forward_hook(lambda *a: calls.__setitem__("transformer", calls["transformer"] + 1)),
        runner.pipe.vae.decoder.register_forward_hook(lambda *a: calls.__setitem__("decoder", calls["decoder"] + 1)),
    ]
    cancel = threading.Event()

    def on_progress(phase, step, _total, _s):
        if phase == Phase.denoising and step == 2:
            cancel.set()

    try:
        with pytest.raises(JobCanceled):
            runner.run(GenerationParams(**{**PARAMS, "num_inference_steps": 10}), on_progress=on_progress,
                       cancel=cancel, inputs=PreparedInputs(images=[load_rgb(CHELSEA)]))
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"transformer": 2 * 2, "decoder": 0}  # two steps of true CFG (two passes each), no decode


def test_default_output_size_follows_the_first_image_at_a_megapixel():
    variant = load_variant(NAME)
    # diffusers calculate_dimensions(1024 * 1024, 451 / 300): sqrt(1048576 * 1.503) = 1255.6 -> 1248; 835.2 -> 832.
    assert str(variant.image_size_for(451, 300)) == "1248x832"
    assert str(variant.image_size_for(512, 512)) == "1024x1024"
    assert str(variant.image_size_for(720, 1280)) == "768x1376"


def test_a_lora_changes_the_edit_and_its_removal_restores_it(runner, tmp_path):
    from deployments.lora_adapters import LoadedAdapterSet
    from jobs.model import LoraRef
    from model_store.adapters import adapter_for, build_random_lora
    from model_store.settings import StoreSettings

    params = GenerationParams(**{**PARAMS, "width": 256, "height": 256, "num_inference_steps": 2})
    inputs = PreparedInputs(images=[load_rgb(CHELSEA)])
    base = runner.run(params, inputs=inputs)
    build_random_lora(runner.pipe, tmp_path / "loras" / "ink", NAME)
    info = adapter_for("ink", runner.variant, StoreSettings(model_dir=tmp_path))
    held = LoadedAdapterSet(runner.adapters, [info])
    inked = runner.run(params.model_copy(update={"loras": [LoraRef(name="ink")]}), inputs=inputs)
    assert np.abs(inked.astype(int) - base).mean() > 0.05
    held.__del__()  # what Ray Serve's LRU does on eviction
    assert runner.adapters.loaded == [] and np.array_equal(runner.run(params, inputs=inputs), base)

"""CUDA checks: the same runner on a GPU. Skipped, with the reason, where no GPU is visible."""

import numpy as np
import pytest
import torch

from deployments.generation import GenerationRunner
from jobs.model import GenerationParams
from model_store.loader import load_pipeline, resolve_device
from model_store.variants import load_variant

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible to torch here"),
]


def test_tiny_twin_runs_on_cuda_in_bf16(tiny_weights):
    variant = load_variant("ti2v-5b-tiny").model_copy(update={"device": "cuda", "torch_dtype": "bfloat16"})
    assert resolve_device(variant).type == "cuda"
    pipe = load_pipeline(variant)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    frames = GenerationRunner(variant, pipe).run(
        GenerationParams(prompt="a cat", width=1280, height=704, num_frames=5, num_inference_steps=2,
                         guidance_scale=5.0, seed=0)
    )
    assert frames.shape == (5, 704, 1280, 3) and frames.dtype == np.uint8 and frames.std() > 1.0


@pytest.mark.parametrize("name", ["t2v-a14b-tiny", "i2v-a14b-tiny", "ti2v-5b-tiny", "vace-14b-tiny"])
def test_every_variant_twin_runs_on_cuda_with_its_inputs(tiny_weights, name):
    from jobs.inputs import PreparedInputs

    variant = load_variant(name).model_copy(update={"device": "cuda", "torch_dtype": "bfloat16"})
    runner = GenerationRunner(variant, load_pipeline(variant))
    size = min(variant.native_sizes.values(), key=lambda s: s.width * s.height)
    gray = np.full((size.height, size.width, 3), 100, np.uint8)
    inputs = {
        "i2v": PreparedInputs(image=gray, last_image=255 - gray),
        "ti2v": PreparedInputs(image=gray),
        "vace": PreparedInputs(video=np.stack([gray] * 5), mask=np.ones((5, size.height, size.width), bool)),
    }.get(variant.task)
    frames = runner.run(
        GenerationParams(prompt="a cat", width=size.width, height=size.height, num_frames=5, num_inference_steps=2,
                         guidance_scale=4.0, guidance_scale_2=3.0 if variant.boundary_ratio else None, seed=0),
        inputs=inputs,
    )
    assert frames.shape == (5, size.height, size.width, 3) and frames.std() > 1.0

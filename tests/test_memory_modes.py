"""Memory modes on CPU: each mode that runs here loads the tiny twin through from_pretrained and
generates, close to the float32 reference; the modes that cannot run here are refused by name.

CUDA-only modes (fp8, bitsandbytes int8 and nf4, the offload modes) are in tests/gpu/.
"""

import numpy as np
import pytest
import torch

from deployments.generation import GenerationRunner
from jobs.model import GenerationParams
from model_store.loader import load_variant_pipeline
from model_store.memory_config import MemoryConfig
from model_store.memory_modes import DeviceInfo, ModeRefused, check_mode, tensor_bytes
from model_store.variants import load_variant
from tests.media_samples import psnr

VARIANT = "t2v-a14b-tiny"  # two experts: every mode must reach transformer_2 too
PARAMS = dict(prompt="a red cat walking in the city", width=832, height=480, num_frames=1, num_inference_steps=2,
              guidance_scale=4.0, guidance_scale_2=3.0, seed=3)


def generate(overrides: dict):
    variant = load_variant(VARIANT, overrides=overrides)
    loaded = load_variant_pipeline(variant)
    frames = GenerationRunner(variant, loaded.pipe, loaded.prompt_pipe).run(GenerationParams(**PARAMS))
    return loaded, frames


@pytest.fixture(scope="module")
def reference(tiny_weights):
    loaded, frames = generate({})
    assert frames.shape == (1, 480, 832, 3) and frames.std() > 1.0
    return {"frames": frames, "transformer_bytes": tensor_bytes(loaded.pipe.transformer)}


def _weight(module):
    return module.blocks[0].attn1.to_q.weight


def test_bf16_and_fp16_stay_close_to_float32(reference):
    for dtype, torch_dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        loaded, frames = generate({"torch_dtype": dtype})
        assert loaded.pipe.transformer.dtype == torch_dtype and loaded.pipe.transformer_2.dtype == torch_dtype
        assert loaded.pipe.vae.dtype == torch.float32  # the VAE keeps float32, as the Wan model cards say
        assert psnr(frames, reference["frames"]) > 40, dtype


def test_fp8_storage_stores_float8_and_stays_close(reference):
    loaded, frames = generate({"memory": {"quantization": "fp8_storage"}})
    for name in ("transformer", "transformer_2"):
        assert _weight(getattr(loaded.pipe, name)).dtype == torch.float8_e4m3fn, name
    # The text encoder follows (quantization covers it unless text_encoder_quantization says otherwise),
    # except wo, which UMT5 needs in the compute dtype.
    block = loaded.pipe.text_encoder.encoder.block[0]
    assert block.layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert block.layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    assert psnr(frames, reference["frames"]) > 40
    assert not np.array_equal(frames, reference["frames"])  # the mode changed the computation


def test_int8_on_cpu_is_torchao_weight_only_and_stays_close(reference):
    loaded, frames = generate({"memory": {"quantization": "int8", "text_encoder_quantization": "none"}})
    weight = _weight(loaded.pipe.transformer_2)
    assert type(weight).__module__.startswith("torchao"), type(weight)
    inner = [getattr(weight, n) for n in weight.__tensor_flatten__()[0]]
    assert torch.int8 in {t.dtype for t in inner}
    assert loaded.pipe.text_encoder.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float32
    assert tensor_bytes(loaded.pipe.transformer) < reference["transformer_bytes"]
    assert psnr(frames, reference["frames"]) > 40
    assert not np.array_equal(frames, reference["frames"])


def test_vae_tiling_decodes_in_tiles_close_to_whole(reference):
    loaded, frames = generate({"memory": {"vae_tiling": True}})
    assert loaded.pipe.vae.use_tiling
    assert frames.shape == reference["frames"].shape
    assert psnr(frames, reference["frames"]) > 35  # tiles blend at their seams: close, not equal


def test_text_encoder_on_cpu_gives_the_same_frames(reference):
    loaded, frames = generate({"memory": {"text_encoder_device": "cpu"}})
    assert loaded.pipe.text_encoder is None and loaded.prompt_pipe.text_encoder is not None
    assert np.array_equal(frames, reference["frames"])  # same device here, so exactly the same numbers


CPU = DeviceInfo("cpu", "CPU (host memory)", 24 * 2**30, 20 * 2**30)
AMPERE = DeviceInfo("cuda", "NVIDIA A100-SXM4-80GB", 80 * 2**30, 79 * 2**30, (8, 0))


@pytest.mark.parametrize("memory, device, words", [
    ({"quantization": "nf4"}, CPU, ["quantization nf4", "CUDA GPU", "int8", "fp8_storage"]),
    ({"quantization": "fp8"}, CPU, ["quantization fp8", "8.9", "use fp8_storage"]),
    ({"quantization": "fp8"}, AMPERE, ["quantization fp8", "NVIDIA A100-SXM4-80GB, compute capability 8.0",
                                       "8.9", "fp8_storage"]),
    ({"text_encoder_quantization": "nf4"}, CPU, ["text_encoder_quantization nf4", "int8"]),
    ({"offload": "group"}, CPU, ["offload group", "runs on CPU", "offload: none"]),
    ({"offload": "model"}, CPU, ["offload model", "offload: none"]),
])
def test_modes_the_device_cannot_run_are_refused_with_what_would_work(memory, device, words):
    with pytest.raises(ModeRefused) as refused:
        check_mode(MemoryConfig(**memory), device, "t2v-a14b")
    message = str(refused.value)
    assert message.startswith("variant t2v-a14b: memory mode refused: ")
    for word in words:
        assert word in message


def test_modes_the_device_can_run_pass_the_check():
    for memory in ({}, {"quantization": "fp8_storage"}, {"quantization": "int8"}, {"vae_tiling": True},
                   {"text_encoder_device": "cpu", "quantization": "fp8_storage"}):
        check_mode(MemoryConfig(**memory), CPU, "x")  # returns None: nothing refused
    assert MemoryConfig(quantization="int8").text_encoder_format == "int8"


def test_contradictory_placement_is_a_config_error():
    with pytest.raises(ValueError, match="text_encoder_device: cpu with offload: model"):
        MemoryConfig(text_encoder_device="cpu", offload="model")


def test_a_refused_mode_stops_the_load_before_weights_are_read(tiny_weights, tmp_path):
    # A weights folder that does not exist: reaching from_pretrained would raise OSError instead.
    variant = load_variant(VARIANT, overrides={"memory": {"quantization": "nf4"},
                                               "weights": {"local_path": str(tmp_path / "none")}})
    with pytest.raises(ModeRefused, match="nf4"):
        load_variant_pipeline(variant)

"""Memory modes that need CUDA: fp8 (torchao float8, compute capability 8.9+), bitsandbytes int8 and
nf4, the three offload modes with group offloading on a CUDA stream, the text encoder kept on the
CPU beside a GPU pipeline, and the fit check against the GPU's real free memory.

Skipped, with the reason, where no GPU is visible (or a library or capability is missing).
Run with `make test-gpu` on a machine with a GPU.
"""

import importlib.util

import pytest
import torch

from deployments.generation import GenerationRunner
from jobs.model import GenerationParams
from model_store.loader import load_variant_pipeline
from model_store.memory_modes import ModeRefused, probe_device
from model_store.variants import load_variant
from tests.media_samples import psnr
from tests.test_memory_modes import PARAMS, VARIANT  # the same job as the CPU modes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible to torch here"),
]

def generate(memory: dict):
    variant = load_variant(VARIANT, overrides={"device": "cuda", "torch_dtype": "bfloat16", "memory": memory})
    loaded = load_variant_pipeline(variant)
    runner = GenerationRunner(variant, loaded.pipe, loaded.prompt_pipe)
    torch.cuda.reset_peak_memory_stats()
    frames = runner.run(GenerationParams(**PARAMS))
    return loaded, frames, torch.cuda.max_memory_allocated()


@pytest.fixture(scope="module")
def reference(tiny_weights):
    loaded, frames, peak = generate({})
    return {"frames": frames, "peak": peak}


def _capability() -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else (0, 0)


NO_GPU = "needs a CUDA GPU; none is visible to torch here"


@pytest.mark.skipif(_capability() < (8, 9), reason=NO_GPU if not torch.cuda.is_available() else
                    "fp8 needs compute capability 8.9+ (Ada, Hopper); this GPU has less")
def test_fp8_torchao_runs_close_to_bf16(reference):
    loaded, frames, _ = generate({"quantization": "fp8", "text_encoder_quantization": "none"})
    assert type(loaded.pipe.transformer.blocks[0].attn1.to_q.weight).__module__.startswith("torchao")
    assert psnr(frames, reference["frames"]) > 30


@pytest.mark.skipif(not torch.cuda.is_available() or _capability() >= (8, 9), reason=NO_GPU if not
                    torch.cuda.is_available() else "this GPU runs fp8; the refusal is for GPUs below compute capability 8.9")
def test_fp8_is_refused_below_8_9(tiny_weights):
    variant = load_variant(VARIANT, overrides={"device": "cuda", "memory": {"quantization": "fp8"}})
    with pytest.raises(ModeRefused, match="compute capability 8.9"):
        load_variant_pipeline(variant)


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason=NO_GPU if not torch.cuda.is_available() else
                    "bitsandbytes is not installed (pip install -e '.[gpu]')")
@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_bitsandbytes_modes_run_close_to_bf16(reference, mode):
    loaded, frames, _ = generate({"quantization": mode, "text_encoder_quantization": "none"})
    weight = loaded.pipe.transformer.blocks[0].attn1.to_q.weight
    assert type(weight).__module__.startswith("bitsandbytes"), type(weight)
    assert psnr(frames, reference["frames"]) > 25


@pytest.mark.parametrize("memory", [{"offload": "model"}, {"offload": "group"},
                                    {"offload": "group", "group_offload_type": "leaf_level"},
                                    {"offload": "sequential"}, {"text_encoder_device": "cpu"},
                                    {"quantization": "fp8_storage", "offload": "group"}])
def test_offload_modes_give_the_same_video(reference, memory):
    loaded, frames, peak = generate(memory)
    assert frames.shape == reference["frames"].shape
    assert psnr(frames, reference["frames"]) > 30
    if memory.get("offload") in ("group", "sequential"):
        assert peak <= reference["peak"]


def test_the_fit_plan_reads_the_gpus_free_memory(reference):
    free, total = torch.cuda.mem_get_info()
    info = probe_device(torch.device("cuda"))
    assert info.kind == "cuda" and info.total_bytes == total and abs(info.free_bytes - free) < 2**30
    loaded, _, _ = generate({})
    assert loaded.fit is not None and 0 < loaded.fit.budget_bytes <= total

"""Speed profiles on the tiny twins' real pipelines (no Ray): step caches skip transformer work and
stay close to the uncached output, per expert on A14B; refusals at start; the profile over HTTP."""

import numpy as np
import pytest
import torch

from deployments.generation import GenerationRunner
from jobs.inputs import PreparedInputs
from jobs.model import GenerationParams
from model_store.loader import load_pipeline
from model_store.memory_modes import DeviceInfo
from model_store.speed_config import SpeedConfig, SpeedProfile, StepCache
from model_store.speed_modes import SpeedRefused, attention_refusal, check_speed
from model_store.variants import load_variant
from tests.media_samples import CHELSEA, load_rgb, psnr

GIB = 2**30
CPU = DeviceInfo("cpu", "CPU (host memory)", 24 * GIB, 20 * GIB)


class Counter:
    """Counts forward calls of chosen submodules (the work a cache skips runs none of them)."""

    def __init__(self, modules: dict[str, list]):
        self.counts = dict.fromkeys(modules, 0)
        self.hooks = [m.register_forward_hook(self._hit(name)) for name, ms in modules.items() for m in ms]

    def _hit(self, name):
        def hook(*_):
            self.counts[name] += 1
        return hook

    def remove(self):
        for h in self.hooks:
            h.remove()


def _runner(name: str, **profiles: SpeedProfile) -> GenerationRunner:
    variant = load_variant(name)
    variant = variant.model_copy(update={"speed": SpeedConfig(profiles={"quality": SpeedProfile(), **profiles})})
    return GenerationRunner(variant, load_pipeline(variant))


@pytest.fixture(scope="module")
def a14b(tiny_weights):
    torch.set_num_threads(2)
    return _runner("t2v-a14b-tiny", fast=SpeedProfile(cache=StepCache(kind="first_block", threshold=0.5)))


def _params(**kw) -> GenerationParams:
    base = dict(prompt="a cat on the beach", width=832, height=480, num_frames=1, num_inference_steps=12,
                guidance_scale=4.0, guidance_scale_2=3.0, seed=11)
    return GenerationParams(**{**base, **kw})


def test_first_block_cache_skips_blocks_of_each_expert_and_stays_close(a14b):
    experts = {"high": list(a14b.pipe.transformer.blocks), "low": list(a14b.pipe.transformer_2.blocks)}
    ffn = {k: [b.ffn for b in blocks] for k, blocks in experts.items()}
    full_count = Counter(ffn)
    full = a14b.run(_params(speed="quality"))
    full_count.remove()
    cached_count = Counter(ffn)
    cached = a14b.run(_params(speed="fast"))
    cached_count.remove()
    # Uncached: every step runs both blocks of its expert, twice (CFG). 12 steps split at boundary 0.875.
    assert sum(full_count.counts.values()) == 12 * 2 * 2
    for expert in ("high", "low"):
        assert 0 < cached_count.counts[expert] < full_count.counts[expert], (expert, cached_count.counts)
    # Stated bound for the twin at threshold 0.5: at least 30 dB from the uncached image.
    assert psnr(cached, full) > 30.0 and not np.array_equal(cached, full)
    # The cache is gone after the job: the full profile gives its image again, bit for bit.
    assert np.array_equal(a14b.run(_params(speed="quality")), full)


def test_taylor_seer_predicts_attention_between_full_steps(tiny_weights):
    runner = _runner("ti2v-5b-tiny", fast=SpeedProfile(
        cache=StepCache(kind="taylor_seer", cache_interval=3, disable_cache_before_step=2)))
    attention = {"to_q": [b.attn1.to_q for b in runner.pipe.transformer.blocks]}
    params = dict(prompt="a cockatoo", width=1280, height=704, num_frames=1, num_inference_steps=10,
                  guidance_scale=5.0, seed=3)
    counts = Counter(attention)
    full = runner.run(GenerationParams(**params, speed="quality"))
    full_calls = counts.counts["to_q"]
    counts.counts["to_q"] = 0
    cached = runner.run(GenerationParams(**params, speed="fast"))
    counts.remove()
    assert full_calls == 10 * 2 * 2  # 10 steps, 2 blocks, CFG
    assert 0 < counts.counts["to_q"] < full_calls
    assert psnr(cached, full) > 25.0 and not np.array_equal(cached, full)


def test_first_block_cache_on_the_image_edit_twin(tiny_weights):
    runner = _runner("qwen-image-edit-tiny", fast=SpeedProfile(cache=StepCache(kind="first_block", threshold=0.5)))
    mlp = {"img_mlp": [b.img_mlp for b in runner.pipe.transformer.transformer_blocks]}
    params = dict(prompt="a red hat", width=256, height=256, num_frames=1, num_inference_steps=8,
                  guidance_scale=4.0, negative_prompt=" ", seed=1)
    inputs = PreparedInputs(images=[load_rgb(CHELSEA)])
    counts = Counter(mlp)
    full = runner.run(GenerationParams(**params, speed="quality"), inputs=inputs)
    full_calls, counts.counts["img_mlp"] = counts.counts["img_mlp"], 0
    cached = runner.run(GenerationParams(**params, speed="fast"), inputs=inputs)
    counts.remove()
    assert full_calls == 8 * 2 * 2 and 0 < counts.counts["img_mlp"] < full_calls
    assert psnr(cached, full) > 30.0


@pytest.mark.parametrize(
    ("backend", "device", "words"),
    [
        ("flash", CPU, "attention_backend flash is a CUDA kernel and this replica runs on CPU (host memory); "
                       "use native or _native_math"),
        ("_flash_3", DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", 40 * GIB, 40 * GIB, (8, 0)),
         "attention_backend _flash_3 needs compute capability 9.0 or newer and NVIDIA A100-SXM4-40GB, compute "
         "capability 8.0 has less; use native (torch's scaled_dot_product_attention) or flash on Ampere and newer"),
        ("flash", DeviceInfo("cuda", "NVIDIA H100", 80 * GIB, 80 * GIB, (9, 0)),
         "attention_backend flash: Flash Attention backend 'flash' is not usable because of missing package or "
         "the version is too old. Please install `flash-attn>="),
        ("flashy", CPU, "attention_backend 'flashy' is not a diffusers attention backend; known: "),
    ],
)
def test_attention_backends_the_replica_cannot_run_are_refused(backend, device, words):
    why = attention_refusal(backend, device)
    assert why is not None and why.startswith(words), why
    with pytest.raises(SpeedRefused) as refused:
        check_speed({"quick": SpeedProfile(attention_backend=backend)}, device, "ti2v-5b")
    assert str(refused.value) == f"variant ti2v-5b: speed profile refused: profile quick: {why}"


def test_native_attention_and_an_unknown_default_profile():
    assert attention_refusal("native", CPU) is None
    with pytest.raises(ValueError, match=r"speed.default 'turbo' is not among speed.profiles \['quality'\]"):
        SpeedConfig(default="turbo")


def test_the_profile_over_http(client):
    catalog = {v["name"]: v for v in client.get("/variants").json()["variants"]}
    assert set(catalog["ti2v-5b-tiny"]["speed_profiles"]) == {"quality", "fast"}
    assert catalog["ti2v-5b-tiny"]["default_speed"] == "quality"
    r = client.post("/generate", json={"prompt": "x", "speed": "turbo"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "speed"
    assert r.json()["error"]["message"] == "ti2v-5b-tiny has no speed profile 'turbo'; it has quality, fast"
    job = client.post("/generate", json={"prompt": "x", "speed": "fast", "num_inference_steps": 2}).json()["id"]
    from tests.conftest import wait_terminal

    final = wait_terminal(client, job)[-1]
    assert final["status"] == "success" and final["speed"] == "fast"
    plain = client.post("/generate", json={"prompt": "y", "num_inference_steps": 2}).json()["id"]
    assert wait_terminal(client, plain)[-1]["speed"] == "quality"


def test_a_cache_that_would_hook_nothing_is_refused_at_load(a14b, monkeypatch):
    from model_store import speed_modes

    taylor = {"fast": SpeedProfile(cache=StepCache(kind="taylor_seer"))}
    speed_modes.check_caches(a14b.pipe, taylor, "t2v-a14b-tiny")  # returns None: Wan's attn1/attn2 are hooked
    # diffusers' own identifiers (^blocks.*attn, matched in full) miss Wan's attn1 and attn2:
    monkeypatch.setattr(speed_modes, "TAYLOR_SEER_IDENTIFIERS", {})
    with pytest.raises(SpeedRefused) as refused:
        speed_modes.check_caches(a14b.pipe, taylor, "t2v-a14b-tiny")
    assert str(refused.value) == (
        "variant t2v-a14b-tiny: speed profile refused: profile fast: cache taylor_seer finds no module to hook in "
        "WanTransformer3DModel, so it would skip nothing; choose first_block, or no cache")
    assert speed_modes.diffusers_hooks(a14b.pipe.transformer) == set()  # the probe left nothing behind

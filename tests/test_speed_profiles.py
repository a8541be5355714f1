"""Speed profiles on the tiny twins' real pipelines (no Ray): step caches skip transformer work and
stay close to the uncached output, per expert on A14B; refusals at start; the profile over HTTP."""

import inspect
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from deployments.generation import GenerationRunner
from jobs.errors import ValidationFailed
from jobs.inputs import PreparedInputs
from jobs.model import GenerationParams
from model_store.loader import load_pipeline
from model_store.memory_modes import DeviceInfo
from model_store.adapters import build_random_lora
from model_store.settings import StoreSettings
from model_store.speed_config import DistilledLora, RegionalCompile, SpeedConfig, SpeedProfile, StepCache
from model_store.speed_modes import (
    SEA_CACHE_PIPELINES,
    SpeedRefused,
    attention_refusal,
    calibrate_mag_ratios,
    check_caches,
    check_speed,
    expert_steps,
)
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


# --- MagCache, SeaCache, distilled LoRA, regional compile -------------------------------------------

@contextmanager
def profiles(runner: GenerationRunner, **extra: SpeedProfile):
    """``runner`` with ``extra`` speed profiles beside quality, for the block."""
    saved = runner.variant
    runner.variant = saved.model_copy(update={"speed": SpeedConfig(profiles={"quality": SpeedProfile(), **extra})})
    try:
        yield runner
    finally:
        runner.variant = saved


def test_mag_cache_calibrates_each_expert_then_skips_its_blocks(a14b):
    params = _params(num_inference_steps=12)
    ratios = calibrate_mag_ratios(a14b.pipe, 12, lambda: a14b.run(params))
    split = expert_steps(a14b.pipe, 12)
    # One ratio per step each expert ran (12 steps split at boundary 0.875), the first 1.0 by definition.
    assert {k: len(v) for k, v in ratios.items()} == split and sum(split.values()) == 12
    assert all(r[0] == 1.0 and all(x > 0 for x in r) for r in ratios.values())
    assert a14b.pipe.transformer.is_cache_enabled is False  # calibration left no hook behind
    ffn = {k: [b.ffn for b in m.blocks] for k, m in (("high", a14b.pipe.transformer), ("low", a14b.pipe.transformer_2))}
    mag = SpeedProfile(cache=StepCache(kind="mag", threshold=0.2, retention_ratio=0.2, mag_ratios=ratios))
    with profiles(a14b, mag=mag):
        full_count = Counter(ffn)
        full = a14b.run(params.model_copy(update={"speed": "quality"}))
        full_count.remove()
        cached_count = Counter(ffn)
        cached = a14b.run(params.model_copy(update={"speed": "mag"}))
        cached_count.remove()
    assert sum(full_count.counts.values()) == 12 * 2 * 2
    # Each expert skipped some of its own steps (the low-noise one has fewer, so skips fewer).
    for expert in ("high", "low"):
        assert cached_count.counts[expert] < full_count.counts[expert], (expert, cached_count.counts)
    assert psnr(cached, full) > 30.0 and not np.array_equal(cached, full)


def test_mag_cache_without_ratios_is_refused():
    with pytest.raises(ValueError, match="cache kind mag needs mag_ratios calibrated on this checkpoint: run "
                                         "`wan-serve models calibrate-magcache <variant>`"):
        StepCache(kind="mag")
    with pytest.raises(ValueError, match=r"mag_ratios keys must be among \['transformer', 'transformer_2'\]"):
        StepCache(kind="mag", mag_ratios={"unet": [1.0]})


def test_sea_cache_skips_steps_on_the_text_to_video_pipeline(a14b):
    ffn = {"all": [b.ffn for m in (a14b.pipe.transformer, a14b.pipe.transformer_2) for b in m.blocks]}
    with profiles(a14b, sea=SpeedProfile(cache=StepCache(kind="sea", threshold=1.0))):
        check_caches(a14b.pipe, a14b.variant.speed.profiles, "t2v-a14b-tiny", ("WanPipeline",))
        counts = Counter(ffn)
        full = a14b.run(_params(speed="quality"))
        full_calls, counts.counts["all"] = counts.counts["all"], 0
        cached = a14b.run(_params(speed="sea"))
        counts.remove()
    assert full_calls == 12 * 2 * 2 and 0 < counts.counts["all"] < full_calls
    assert psnr(cached, full) > 30.0 and not np.array_equal(cached, full)


@pytest.mark.parametrize(
    ("pipelines", "unfed"),
    [(("WanImageToVideoPipeline",), "WanImageToVideoPipeline"),
     (("WanVACEPipeline",), "WanVACEPipeline"),
     (("WanPipeline", "WanImageToVideoPipeline"), "WanImageToVideoPipeline")],  # TI2V-5B's two pipelines
)
def test_sea_cache_is_refused_where_the_pipeline_does_not_pass_sigma(a14b, pipelines, unfed):
    sea = {"sea": SpeedProfile(cache=StepCache(kind="sea"))}
    with pytest.raises(SpeedRefused) as refused:
        check_caches(a14b.pipe, sea, "i2v-a14b", pipelines)
    assert str(refused.value) == (
        f"variant i2v-a14b: speed profile refused: profile sea: cache sea needs each step's sigma, which {unfed} "
        "does not pass to the transformer (only WanPipeline does), so it would skip nothing; choose first_block, "
        "taylor_seer or mag")


def test_the_sea_cache_table_matches_diffusers_pipelines():
    """SEA_CACHE_PIPELINES is what diffusers' denoising loops do: fails when a diffusers upgrade
    starts (or stops) passing sigma to cache_context in one of the pipelines the variants use."""
    import diffusers

    for name in ("WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline", "QwenImageEditPlusPipeline"):
        source = inspect.getsource(getattr(diffusers, name).__call__)
        passes_sigma = "cache_context" in source and '"sigma"' in source
        assert passes_sigma == (name in SEA_CACHE_PIPELINES), name


def test_the_distilled_profile_runs_four_steps_without_cfg_with_a_lora_on_each_expert(a14b, tmp_path):
    settings = StoreSettings(model_dir=tmp_path)
    build_random_lora(a14b.pipe, tmp_path / "loras" / "lightning-twin", "t2v-a14b-tiny",
                      experts=("high_noise", "low_noise"), split=True)
    lightning = SpeedProfile(distilled=DistilledLora(adapter="lightning-twin"))
    with profiles(a14b, lightning=lightning):
        assert a14b.pin_distilled(settings) == ["lightning-twin"]
        seen: list[tuple[str, str, float]] = []
        lora_calls = {"high": 0, "low": 0}

        def on_forward(expert):
            def hook(module, args, kwargs):
                seen.append((expert, type(a14b.pipe.scheduler).__name__, a14b.pipe.scheduler.config.get("shift")))
            return hook

        def on_lora(expert):
            def hook(*_):
                lora_calls[expert] += 1
            return hook

        hooks = [a14b.pipe.transformer.register_forward_pre_hook(on_forward("high"), with_kwargs=True),
                 a14b.pipe.transformer_2.register_forward_pre_hook(on_forward("low"), with_kwargs=True),
                 a14b.pipe.transformer.blocks[0].attn1.to_q.lora_A["lightning-twin"].register_forward_hook(on_lora("high")),
                 a14b.pipe.transformer_2.blocks[0].attn1.to_q.lora_A["lightning-twin"].register_forward_hook(on_lora("low"))]
        try:
            fast = a14b.run(_params(speed="lightning", num_inference_steps=4, guidance_scale=1.0, guidance_scale_2=1.0))
            # A later job of another profile runs without the LoRA and on the variant's own scheduler.
            lora_calls_after_fast = dict(lora_calls)
            a14b.run(_params(num_inference_steps=4, guidance_scale=1.0, guidance_scale_2=1.0))
        finally:
            for h in hooks:
                h.remove()
            a14b.adapters.release("lightning-twin")
    # 4 transformer calls, no unconditional pass; 4 steps with shift 5 put 2 above boundary 0.875.
    assert [s[0] for s in seen[:4]] == ["high", "high", "low", "low"]
    assert {s[1:] for s in seen[:4]} == {("FlowMatchEulerDiscreteScheduler", 5.0)}
    assert lora_calls_after_fast == {"high": 2, "low": 2} and lora_calls == lora_calls_after_fast
    assert {s[1] for s in seen[4:]} == {type(a14b.pipe.scheduler).__name__} != {"FlowMatchEulerDiscreteScheduler"}
    assert fast.shape == (1, 480, 832, 3)
    with profiles(a14b, lightning=lightning), pytest.raises(ValidationFailed, match="runs 4 steps with guidance_scale 1"):
        a14b.run(_params(speed="lightning", num_inference_steps=8))


def test_a_distilled_adapter_missing_from_the_store_is_refused(a14b, tmp_path):
    lightning = SpeedProfile(distilled=DistilledLora(adapter="lightning"))
    with profiles(a14b, lightning=lightning), pytest.raises(SpeedRefused) as refused:
        a14b.pin_distilled(StoreSettings(model_dir=tmp_path))
    assert str(refused.value).startswith("variant t2v-a14b-tiny: speed profile refused: profile lightning: ")
    assert str(refused.value).endswith("`wan-serve models pull t2v-a14b-tiny` fetches it when the profile names a source")


def test_a_distilled_profile_fixes_steps_and_guidance_at_the_ingress(tiny_weights, tmp_path):
    from serve_app.generate.protocol import GenerateRequest
    from jobs.objects import ObjectStore
    from serve_app.generate.serving import JobService

    variant = load_variant("t2v-a14b-tiny")
    variant = variant.model_copy(update={"speed": SpeedConfig(profiles={
        "quality": SpeedProfile(), "lightning": SpeedProfile(distilled=DistilledLora(adapter="x"))})})
    service = JobService(None, {variant.name: variant}, variant.name, ObjectStore(tmp_path))
    spec, _ = service.build_spec(GenerateRequest(prompt="a fox", speed="lightning", num_frames=1))
    p = spec.params
    assert (p.num_inference_steps, p.guidance_scale, p.guidance_scale_2, p.speed) == (4, 1.0, 1.0, "lightning")
    with pytest.raises(ValidationFailed) as refused:
        service.build_spec(GenerateRequest(prompt="a fox", speed="lightning", num_inference_steps=30))
    assert str(refused.value) == ("speed profile lightning runs 4 denoising steps with CFG off (guidance_scale 1); "
                                  "leave num_inference_steps unset or send 4")
    assert refused.value.details["field"] == "num_inference_steps"
    with pytest.raises(ValidationFailed, match="leave guidance_scale unset or send 1$"):
        service.build_spec(GenerateRequest(prompt="a fox", speed="lightning", guidance_scale=5.0))


def test_the_distilled_lora_pull_says_when_the_hub_cannot_be_reached(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from model_store.hub import HubUnreachable, pull_distilled

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    variant = load_variant("t2v-a14b")
    assert "lightning" in variant.speed.profiles
    with pytest.raises(HubUnreachable) as refused:
        pull_distilled(variant, StoreSettings(model_dir=tmp_path))
    assert str(refused.value).startswith(
        f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to pull LoRA wan2.2-t2v-a14b-lightning from "
        "lightx2v/Wan2.2-Lightning")
    assert not (tmp_path / "loras" / "wan2.2-t2v-a14b-lightning" / "adapter.yaml").exists()


# torch.compile of every block, once per speed profile, takes about 90 s on 2 cores: in `make soak`,
# out of `make test`'s 35-minute budget.
@pytest.mark.soak
def test_regional_compile_at_warm_up_gives_the_eager_frames(tiny_weights):
    """About 25 s here: the warm-up compiles each block once per profile (the cache's hooks change
    what is traced)."""
    variant = load_variant("ti2v-5b-tiny")
    eager = GenerationRunner(variant, load_pipeline(variant))
    params = GenerationParams(prompt="a cockatoo", width=1280, height=704, num_frames=5, num_inference_steps=4,
                              guidance_scale=5.0, seed=3)
    expected = {speed: eager.run(params.model_copy(update={"speed": speed})) for speed in ("quality", "fast")}
    compiled_variant = variant.model_copy(update={"speed": variant.speed.model_copy(update={"compile": RegionalCompile()})})
    compiled = GenerationRunner(compiled_variant, load_pipeline(compiled_variant))
    blocks = list(compiled.pipe.transformer.blocks)
    assert all(b._compiled_call_impl is not None for b in blocks) and eager.compile_seconds is None
    compiled.warmup()
    assert compiled.compile_seconds is not None and compiled.compile_seconds > 0.5
    for speed, frames in expected.items():
        got = compiled.run(params.model_copy(update={"speed": speed}))
        # Inductor fuses and reorders float32 math: a rounding step at most, stated bound 60 dB.
        assert got.shape == frames.shape and np.abs(got.astype(int) - frames).max() <= 2 and psnr(got, frames) > 60


def test_fullgraph_compile_beside_a_cache_is_refused():
    with pytest.raises(ValueError, match=r"speed.compile.fullgraph cannot trace the step cache hooks of profile fast: "
                                         r"set compile.fullgraph: false"):
        SpeedConfig(profiles={"quality": SpeedProfile(), "fast": SpeedProfile(cache=StepCache(kind="first_block"))},
                    compile=RegionalCompile(fullgraph=True))


def test_calibrate_magcache_prints_a_block_the_config_accepts(tiny_weights):
    import yaml
    from typer.testing import CliRunner

    from serve_app.cli import app as cli

    done = CliRunner().invoke(cli, ["models", "calibrate-magcache", "t2v-a14b-tiny", "--steps", "6", "--num-frames", "1"])
    assert done.exit_code == 0, done.output
    header, _, body = done.stdout.partition("\n")
    assert header == "# MagCache ratios of t2v-a14b-tiny: 832x480, 1 frames, 6 steps"
    cache = StepCache(**yaml.safe_load(body)["cache"])
    assert cache.kind == "mag" and cache.mag_ratios is not None
    assert sum(len(r) for r in cache.mag_ratios.values()) == 6 and set(cache.mag_ratios) == {"transformer", "transformer_2"}

"""The model store: manifests and verification, the `wan-serve models` commands, the fit check's
estimates and refusals, and LoRA adapters in a pipeline. Real files, real pipelines, no Ray."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from jobs.errors import RequestTooLarge
from deployments.fit_plans import check_request_fits
from deployments.generation import GenerationRunner
from jobs.model import GenerationParams, JobSpec, LoraRef
from deployments.lora_adapters import AdapterRegistry, LoadedAdapterSet
from model_store import weights_manifest
from model_store.adapters import AdapterNotFound, adapter_for, build_random_lora
from model_store.fit_check import GIB, plan_fit, read_layout
from model_store.loader import WontFit, check_fit, load_variant_pipeline
from model_store.memory_modes import DeviceInfo
from model_store.settings import StoreSettings
from model_store.variants import Size, load_variant
from model_store.weights_manifest import WeightsCorrupt, check_before_load, read_manifest, verify
from serve_app.cli import app as cli

WEIGHT = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture
def store(tiny_weights, tmp_path, monkeypatch) -> Path:
    """A model store of its own (WAN_SERVE_MODEL_DIR) holding a copy of the ti2v-5b tiny twin."""
    shutil.copytree(tiny_weights, tmp_path / "ti2v-5b-tiny")
    monkeypatch.setenv("WAN_SERVE_MODEL_DIR", str(tmp_path))
    return tmp_path


def flip_byte(path: Path, offset: int = -100) -> None:
    """Flip one byte of ``path`` in place (inside the tensor data, past the header)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(data)


def test_tiny_twins_carry_a_manifest_that_verifies(tiny_weights):
    manifest = read_manifest(tiny_weights)
    assert manifest.source == "tiny" and WEIGHT in manifest.files and "model_index.json" in manifest.files
    entry = manifest.files[WEIGHT]
    assert entry.size == (tiny_weights / WEIGHT).stat().st_size
    assert entry.sha256 == weights_manifest.sha256_file(tiny_weights / WEIGHT)
    assert verify(tiny_weights) == []


def test_a_flipped_byte_is_caught_by_verify_and_by_the_load(store):
    folder = store / "ti2v-5b-tiny"
    flip_byte(folder / WEIGHT)
    problems = verify(folder)
    assert problems == [f"{WEIGHT} does not match its sha256 in the manifest (corrupted or replaced)"]
    variant = load_variant("ti2v-5b-tiny")
    with pytest.raises(WeightsCorrupt) as caught:
        # Random bytes in a tensor load without complaint in from_pretrained: only the manifest catches them.
        load_variant_pipeline(variant, StoreSettings())
    message = str(caught.value)
    assert message.startswith("weights of variant ti2v-5b-tiny failed verification: ") and WEIGHT in message
    assert "build-tiny --force" in message


def test_a_missing_or_truncated_file_is_named(store):
    folder = store / "ti2v-5b-tiny"
    (folder / "vae" / "config.json").unlink()
    with (folder / WEIGHT).open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(WeightsCorrupt) as caught:
        check_before_load(folder, "variant x", "fix it")
    assert "vae/config.json is missing" in str(caught.value)
    assert f"{WEIGHT} has 1000 bytes" in str(caught.value)


def test_a_load_rehashes_only_files_changed_since_their_last_hash(store, monkeypatch):
    folder = store / "ti2v-5b-tiny"
    hashed = []
    real = weights_manifest.sha256_file
    monkeypatch.setattr(weights_manifest, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    check_before_load(folder, "variant x", "")
    files = len(read_manifest(folder).files)
    assert len(hashed) == files  # a copy: new inodes, so every file is hashed once
    hashed.clear()
    check_before_load(folder, "variant x", "")
    assert hashed == []  # nothing changed since
    os.utime(folder / WEIGHT)  # touched: same bytes, new mtime
    check_before_load(folder, "variant x", "")
    assert hashed == [Path(WEIGHT).name]
    hashed.clear()
    check_before_load(folder, "variant x", "")
    assert hashed == []
    assert len(verify(folder)) == 0 and len(hashed) == files  # verify hashes all


def test_models_commands_list_verify_rm(store):
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list", "--offline"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if line.startswith("ti2v-5b-tiny"))
    assert str(store / "ti2v-5b-tiny") in row and "built here" in row and "verified" in row
    real = next(line for line in listed.output.splitlines() if line.startswith("t2v-a14b "))
    assert "Wan-AI/Wan2.2-T2V-A14B-Diffusers" in real and "5be7df9619b5" in real and "not asked" in real

    ok = runner.invoke(cli, ["models", "verify", "ti2v-5b-tiny"])
    assert ok.exit_code == 0 and "files match their sha256" in ok.output
    flip_byte(store / "ti2v-5b-tiny" / WEIGHT)
    bad = runner.invoke(cli, ["models", "verify", "ti2v-5b-tiny"])
    assert bad.exit_code == 1 and f"BAD {WEIGHT} does not match its sha256" in bad.output
    listed = runner.invoke(cli, ["models", "list", "--offline"])
    assert "changed since verified" in next(l for l in listed.output.splitlines() if l.startswith("ti2v-5b-tiny"))

    gone = runner.invoke(cli, ["models", "rm", "ti2v-5b-tiny", "--yes"])
    assert gone.exit_code == 0 and not (store / "ti2v-5b-tiny").exists()
    missing = runner.invoke(cli, ["models", "verify", "ti2v-5b-tiny"])
    assert missing.exit_code == 1 and "no weights in the model store" in missing.output


def test_pull_says_when_the_hub_cannot_be_reached(store, monkeypatch):
    """Offline mode, in-process: what a closed network gives too, after huggingface_hub's own retries
    (about 24 s against a refused port: `HF_ENDPOINT=http://127.0.0.1:9 wan-serve models pull ti2v-5b`)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    runner = CliRunner()
    done = runner.invoke(cli, ["models", "pull", "ti2v-5b"])
    assert done.exit_code == 1, done.output
    assert f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to pull Wan-AI/Wan2.2-TI2V-5B-Diffusers" in done.output
    assert f"put the diffusers folder at {store / 'Wan2.2-TI2V-5B-Diffusers'}" in done.output
    assert "Traceback" not in done.output and read_manifest(store / "Wan2.2-TI2V-5B-Diffusers") is None
    twin = runner.invoke(cli, ["models", "pull", "ti2v-5b-tiny"])
    assert twin.exit_code == 1 and "it is a tiny twin: wan-serve models build-tiny" in twin.output
    listed = runner.invoke(cli, ["models", "list"])  # asks the hub for newer revisions, which it cannot reach
    assert listed.exit_code == 0
    assert "unreachable" in next(line for line in listed.output.splitlines() if line.startswith("t2v-a14b "))


def test_models_plan_prices_each_mode_without_weights():
    done = CliRunner().invoke(cli, ["models", "plan", "ti2v-5b", "--budget-gib", "24"])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("ti2v-5b, 121 frames at 1280x704, from published configs (not downloaded)")
    rows = {line.split("  ")[0]: line.split() for line in done.output.splitlines()[2:]}
    assert rows["quantization none, offload none"][-1] == "no"  # ~29 GiB: over a 24 GiB GPU
    assert rows["quantization none, offload group"][-1] == "yes"


# --- the fit check -----------------------------------------------------------------------------

def test_reference_layouts_match_the_published_sizes():
    from model_store.reference_layouts import reference_layout

    plan = plan_fit(load_variant("t2v-a14b"), reference_layout("t2v-a14b"), 80 * GIB, "H100")
    # Each A14B expert is about 28.6 GB in bf16 and UMT5-XXL about 11 GB (the issue; Wan2.2 README).
    assert 28.0e9 < plan.weights_bytes["transformer"] < 29.2e9
    assert plan.weights_bytes["transformer_2"] == plan.weights_bytes["transformer"]
    assert 10.5e9 < plan.weights_bytes["text_encoder"] < 11.8e9
    # tokens = latent frames x latent height x latent width / patch area: 21 x 90 x 160 / 4 at 720P, 81 frames
    assert plan.tokens(1280, 720, 81) == 21 * 90 * 160 // 4


def test_fp8_storage_and_int8_price_about_half_of_bf16():
    from model_store.memory_config import MemoryConfig
    from model_store.reference_layouts import reference_layout

    layout = reference_layout("ti2v-5b")
    variant = load_variant("ti2v-5b")
    bf16 = plan_fit(variant, layout, 80 * GIB, "x").weights_bytes["transformer"]
    for mode in ("fp8_storage", "int8", "fp8"):
        quantized = plan_fit(variant, layout, 80 * GIB, "x", MemoryConfig(quantization=mode)).weights_bytes["transformer"]
        assert 0.45 * bf16 < quantized <= 0.55 * bf16, mode
    nf4 = plan_fit(variant, layout, 80 * GIB, "x", MemoryConfig(quantization="nf4")).weights_bytes["transformer"]
    assert nf4 < 0.35 * bf16


def test_a14b_in_bf16_does_not_fit_a_40_gib_gpu_and_the_refusal_says_what_would(monkeypatch):
    from model_store import loader
    from model_store.reference_layouts import reference_layout

    monkeypatch.setattr(loader, "read_layout", lambda folder: reference_layout("t2v-a14b"))
    gpu = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", 40 * GIB, 40 * GIB, (8, 0))
    monkeypatch.setattr("model_store.memory_modes._has", lambda module: True)  # as on a GPU host with the extras
    with pytest.raises(WontFit) as refused:
        check_fit(load_variant("t2v-a14b"), Path("unused"), gpu)
    message = str(refused.value)
    assert message.startswith("variant t2v-a14b (quantization none, offload none) needs ~")
    assert "for its default request (81 frames at 1280x720)" in message
    assert "NVIDIA A100-SXM4-40GB, compute capability 8.0 has ~40 GiB free" in message
    assert message.endswith(" would fit") and "offload group" in message
    assert "quantization fp8 " not in message  # fp8 cannot run below compute capability 8.9: never suggested
    # ...and each suggested mode does fit:
    suggested = message.split(" free: ")[1].removesuffix(" would fit").split(" or ")
    assert 1 <= len(suggested) <= 3
    for words in suggested:
        key, value = words.split(" ")
        fits = load_variant("t2v-a14b", overrides={"memory": {key: value}})
        assert check_fit(fits, Path("unused"), gpu).fits(1280, 720, 81), words


def test_requests_over_the_budget_are_refused_with_what_fits(tiny_weights):
    variant = load_variant("ti2v-5b-tiny", overrides={"memory": {"budget_gib": 0.3, "margin_gib": 0}})
    plan = check_fit(variant, tiny_weights, DeviceInfo("cpu", "CPU", 24 * GIB, 20 * GIB))
    assert plan.budget_bytes == int(0.3 * GIB)
    small = GenerationParams(prompt="x", width=1280, height=704, num_frames=5, num_inference_steps=1,
                             guidance_scale=1, seed=0)
    spec = JobSpec(id="a" * 32, variant=variant.name, params=small, output_size=Size(width=1280, height=720))
    check_request_fits(plan, spec)  # returns None: the default request fits
    most = plan.max_frames(1280, 704, 4)
    assert 5 <= most < 33 and plan.fits(1280, 704, most) and not plan.fits(1280, 704, most + 4)
    big = spec.model_copy(update={"params": small.model_copy(update={"num_frames": 33})})
    with pytest.raises(RequestTooLarge) as refused:
        check_request_fits(plan, big)
    assert f"at this size at most {most} frames fit" in str(refused.value)
    assert refused.value.details["max_num_frames"] == most and refused.value.code == "request_too_large"


def test_the_estimate_grows_with_tokens_and_offload_lowers_the_resident_weights(tiny_weights):
    from model_store.memory_config import MemoryConfig

    from model_store.reference_layouts import reference_layout

    variant = load_variant("t2v-a14b")
    layout = reference_layout("t2v-a14b")
    none = plan_fit(variant, layout, GIB, "x")
    assert none.resident_bytes == sum(none.weights_bytes.values())
    model = plan_fit(variant, layout, GIB, "x", MemoryConfig(offload="model"))
    assert model.resident_bytes == max(none.weights_bytes.values())
    group = plan_fit(variant, layout, GIB, "x", MemoryConfig(offload="group"))
    assert group.resident_bytes < model.resident_bytes
    te_cpu = plan_fit(variant, layout, GIB, "x", MemoryConfig(text_encoder_device="cpu"))
    assert te_cpu.resident_bytes == none.resident_bytes - none.weights_bytes["text_encoder"]
    assert none.activation_bytes(1280, 720, 81) > none.activation_bytes(1280, 720, 33) > none.activation_bytes(832, 480, 33)
    tiny = plan_fit(load_variant("t2v-a14b-tiny"), read_layout(tiny_weights.parent / "t2v-a14b-tiny"), GIB, "x")
    assert tiny.weights_bytes["transformer"] == (tiny_weights.parent / "t2v-a14b-tiny" / WEIGHT).stat().st_size - (
        8 + int.from_bytes((tiny_weights.parent / "t2v-a14b-tiny" / WEIGHT).read_bytes()[:8], "little"))


# --- LoRA adapters ------------------------------------------------------------------------------

def test_a_lora_changes_the_output_and_its_removal_restores_it(tiny_weights, tmp_path):
    variant = load_variant("t2v-a14b-tiny")
    loaded = load_variant_pipeline(variant)
    runner = GenerationRunner(variant, loaded.pipe)
    params = GenerationParams(prompt="a red cat", width=832, height=480, num_frames=1, num_inference_steps=2,
                              guidance_scale=4.0, guidance_scale_2=3.0, seed=3)
    base = runner.run(params)
    settings = StoreSettings(model_dir=tmp_path)
    build_random_lora(loaded.pipe, tmp_path / "loras" / "style", "t2v-a14b-tiny", experts=("high_noise", "low_noise"),
                      split=True)
    build_random_lora(loaded.pipe, tmp_path / "loras" / "low-only", "t2v-a14b-tiny", seed=7, experts=("low_noise",))
    style = adapter_for("style", variant, settings)
    assert set(style.files) == {"transformer", "transformer_2"} and style.experts == ["high_noise", "low_noise"]
    low = adapter_for("low-only", variant, settings)
    assert list(low.files) == ["transformer_2"]  # targets the low-noise expert only

    held = LoadedAdapterSet(runner.adapters, [style])
    with_style = runner.run(params.model_copy(update={"loras": [LoraRef(name="style", scale=1.0)]}))
    assert not np.array_equal(with_style, base) and np.abs(with_style.astype(int) - base).mean() > 0.05
    half = runner.run(params.model_copy(update={"loras": [LoraRef(name="style", scale=0.5)]}))
    assert not np.array_equal(half, with_style) and not np.array_equal(half, base)
    assert np.array_equal(runner.run(params), base)  # loaded but not asked for: off

    held.__del__()  # what Ray Serve's LRU does on eviction
    assert runner.adapters.loaded == []
    assert not getattr(loaded.pipe.transformer, "peft_config", {})
    assert np.array_equal(runner.run(params), base)

    held = LoadedAdapterSet(runner.adapters, [low])
    # Enough steps that some run below boundary_ratio, where the low-noise expert takes over.
    longer = params.model_copy(update={"num_inference_steps": 8})
    only_low = runner.run(longer.model_copy(update={"loras": [LoraRef(name="low-only", scale=1.0)]}))
    assert not np.array_equal(only_low, runner.run(longer))
    assert not getattr(loaded.pipe.transformer, "peft_config", {})  # the high-noise expert untouched
    held.__del__()


def test_adapters_are_verified_and_matched_to_their_variant(tiny_weights, tmp_path):
    variant = load_variant("ti2v-5b-tiny")
    settings = StoreSettings(model_dir=tmp_path)
    pipe = load_variant_pipeline(variant).pipe
    folder = build_random_lora(pipe, tmp_path / "loras" / "ti2v-style", "ti2v-5b-tiny")
    with pytest.raises(AdapterNotFound, match="is for variant ti2v-5b-tiny, not t2v-a14b-tiny"):
        adapter_for("ti2v-style", load_variant("t2v-a14b-tiny"), settings)
    with pytest.raises(AdapterNotFound, match="no LoRA adapter 'nope'"):
        adapter_for("nope", variant, settings)
    with pytest.raises(AdapterNotFound):
        adapter_for("../ti2v-5b-tiny", variant, settings)  # not a valid adapter name
    flip_byte(folder / "pytorch_lora_weights.safetensors")
    registry = AdapterRegistry(pipe)
    with pytest.raises(WeightsCorrupt, match="pytorch_lora_weights.safetensors does not match its sha256"):
        LoadedAdapterSet(registry, [adapter_for("ti2v-style", variant, settings)])
    assert registry.loaded == []
    assert json.loads((folder / "wan-serve-manifest.json").read_text())["source"] == "adapter"


def test_qwen_image_edit_is_priced_from_its_published_configs():
    from model_store.memory_config import MemoryConfig
    from model_store.reference_layouts import reference_layout

    variant = load_variant("qwen-image-edit")
    layout = reference_layout("qwen-image-edit")
    plan = plan_fit(variant, layout, 24 * GIB, "RTX 4090")
    # The 20B MMDiT is about 40.9 GB in bf16 and Qwen2.5-VL-7B (8.3B parameters) about 16.6 GB (model cards).
    assert 40.5e9 < plan.weights_bytes["transformer"] < 41.3e9
    assert 16.2e9 < plan.weights_bytes["text_encoder"] < 17.0e9
    # Output tokens at 1024x1024 (64 x 64 latents in 2x2 patches) plus three edit images' at about 1024x1024.
    assert plan.tokens(1024, 1024, 1) == 64 * 64 + 3 * 64 * 64
    # The seed's 24 GB GPU: not in bf16, not fp8_storage alone; nf4, or fp8_storage with group offload.
    assert not plan.fits(1024, 1024, 1)
    for mode, fits in (({"quantization": "fp8_storage"}, False), ({"quantization": "nf4"}, True),
                       ({"quantization": "fp8_storage", "offload": "group"}, True)):
        assert plan_fit(variant, layout, 24 * GIB, "x", MemoryConfig(**mode)).fits(1024, 1024, 1) is fits, mode


def test_an_image_edit_variant_keeps_its_text_encoder_on_the_device():
    with pytest.raises(ValueError) as refused:
        load_variant("qwen-image-edit", overrides={"memory": {"text_encoder_device": "cpu"}})
    assert ("QwenImageEditPlusPipeline encodes the prompt with the input images inside its call: use offload "
            "model or group") in str(refused.value)


def test_an_image_too_large_for_the_replica_is_refused_by_its_size():
    from model_store.memory_config import MemoryConfig
    from model_store.reference_layouts import reference_layout

    variant = load_variant("qwen-image-edit")
    plan = plan_fit(variant, reference_layout("qwen-image-edit"), 24 * GIB, "RTX 4090",
                    MemoryConfig(quantization="nf4"))
    params = GenerationParams(prompt="x", width=1024, height=1024, num_frames=1, num_inference_steps=40,
                              guidance_scale=4, seed=0)
    spec = JobSpec(id="b" * 32, variant=variant.name, params=params, output_size=Size(width=1024, height=1024),
                   output_format="png")
    check_request_fits(plan, spec)  # returns None: a megapixel edit fits 24 GiB in nf4
    big = spec.model_copy(update={"params": params.model_copy(update={"width": 2048, "height": 2048})})
    with pytest.raises(RequestTooLarge) as refused:
        check_request_fits(plan, big)
    assert refused.value.details["field"] == "size"
    assert str(refused.value).startswith("qwen-image-edit: an image at 2048x2048 needs ~")
    assert "not even one image fits at this size; ask for a smaller size" in str(refused.value)

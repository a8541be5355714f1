"""Time the real Wan 2.2 models' parts at full size on one GPU, from random weights.

Usage: python bench/gpu.py [--variant ti2v-5b t2v-a14b] [--profile quality fast] [--steps 3]
                           [--dry-run] [--out bench/results/gpu.json] [--doc docs/performance.md]

The GPU machines this project may borrow have no network, so nothing is downloaded: every
component is built directly on the GPU, in bf16 (the VAE in its configured dtype), from the
published configs the fit check already keeps (model_store/reference_layouts.py), with random
weights. Timing does not depend on weight values, with one exception said below.

Per variant, at the official settings (the variant config's defaults: TI2V-5B 1280x704, 121 frames,
50 steps; A14B 1280x720, 81 frames, 40 steps; CFG on), each part runs alone and frees its memory:

- text encoding: UMT5-XXL over two 512-token prompts (the prompt and the negative prompt);
- denoising: ``--steps`` steps after one warm-up step, each a conditional and an unconditional
  transformer pass, timed with CUDA events; the seconds per step are extrapolated to the full
  step count (said so in the output). A14B's two experts have the same architecture, so one is
  built and timed (both would not fit an 80 GB GPU in bf16 beside their activations), and its
  step time stands for both experts' shares of the steps;
- VAE decode of the full clip's latents; writing the MP4 (PyAV, libx264, on the CPU);
- peak device memory of each part (``torch.cuda.max_memory_allocated``), and MFU: FLOPs of one
  step, counted by ``torch.utils.flop_counter`` on the meta device from the model dimensions,
  over the step time and the GPU's dense bf16 peak (``PEAK_BF16_TFLOPS``).

Each ``--profile`` (from the variant config's ``speed`` block) is timed in turn. A distilled
profile runs one (conditional) pass per step, with a random LoRA of the published rank (64) on the
transformer unfused, and its step count. With ``--compile`` the transformer's blocks are compiled
(regional compile, as speed.compile does) and the first step's extra seconds are the compile
time. Step caches decide
what to skip from how much the activations change between steps, which depends on the weights:
with random weights their step times show the hooks' overhead and skip mechanics, not the speed-up
on trained weights. Attention backends are timed for what they are.

``--dry-run`` (any machine, no GPU): builds the configs on the meta device, counts FLOPs per step
and prints the plan with the bf16 weight bytes, allocating nothing.

Writes JSON, and with ``--doc`` the table between the markers in docs/performance.md, beside the
official Wan2.2 figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from model_store.reference_layouts import REFERENCE, UMT5_XXL
from model_store.speed_modes import speed_profile
from model_store.variants import load_variant

#: Dense bf16 tensor-core peak per GPU, TFLOP/s (no sparsity), from the vendors' data sheets:
#: H100 SXM and H200 989.4; H100 PCIe 756; A100 312; L40S 362.05; RTX 4090 165.2 (FP32 accumulate).
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.05,
    "RTX 4090": 165.2,
}

#: The official Wan2.2 end-to-end figures (Wan2.2 README, computational efficiency table), seconds.
OFFICIAL_SECONDS = {
    "ti2v-5b": ("one RTX 4090, 720P", 534.7),
    "t2v-a14b": ("one H100, 720P", 1041.5),
}

#: The variants this benchmark builds: the Wan text-to-video transformers take (latents, timestep,
#: text) alone; VACE's also needs control latents and Qwen-Image-Edit is another architecture.
VARIANTS = ("ti2v-5b", "t2v-a14b", "i2v-a14b")

#: UMT5-XXL's prompt length in the Wan pipelines (max_sequence_length), tokens.
TEXT_TOKENS = 512

START, END = "<!-- bench/gpu.py: start -->", "<!-- bench/gpu.py: end -->"


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU named ``device_name``, or None when it is not in the table."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def latent_shape(variant, vae_config: dict, channels: int) -> tuple[int, int, int, int, int]:
    """(1, channels, latent frames, latent height, latent width) of the variant's default request."""
    size = variant.default_size
    spatial = vae_config.get("scale_factor_spatial", 8)
    temporal = vae_config.get("scale_factor_temporal", 4)
    frames = (variant.defaults.num_frames - 1) // temporal + 1
    return (1, channels, frames, size.height // spatial, size.width // spatial)


def _transformer(name: str, device: str):
    import diffusers

    cls, config, _two, _vae = REFERENCE[name]
    with torch.device(device):
        return getattr(diffusers, cls)(**config).eval()


def _inputs(shape, device: str):
    latents = (
        torch.randn(shape, device=device, dtype=torch.bfloat16)
        if device != "meta"
        else torch.empty(shape, device="meta", dtype=torch.bfloat16)
    )
    text = torch.empty(1, TEXT_TOKENS, UMT5_XXL["d_model"], device=device, dtype=torch.bfloat16)
    if device != "meta":
        text.normal_()
    timestep = torch.full((1,), 500, device=device, dtype=torch.long)
    return latents, text, timestep


def step_flops(name: str, shape) -> int:
    """FLOPs of one denoising step (conditional + unconditional pass), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = _transformer(name, "meta")
    finally:
        torch.set_default_dtype(default)
    latents, text, timestep = _inputs(shape, "meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)
    return 2 * counter.get_total_flops()


def plan(name: str) -> dict:
    """What the benchmark would build for ``name``, with FLOPs per step and bf16 weight bytes."""
    from model_store.fit_check import plan_fit
    from model_store.reference_layouts import reference_layout

    variant = load_variant(name)
    layout = reference_layout(name)
    # The transformer's input: I2V-A14B's 36 channels are the 16 noise latents plus the mask and image condition.
    shape = latent_shape(variant, layout.vae_config, layout.transformer_config["in_channels"])
    weights = plan_fit(variant, layout, 1, "plan").weights_bytes
    return {
        "variant": name,
        "size": str(variant.default_size),
        "num_frames": variant.defaults.num_frames,
        "num_inference_steps": variant.defaults.num_inference_steps,
        "latents": list(shape),
        "vae_latents": list(latent_shape(variant, layout.vae_config, layout.vae_config["z_dim"])),
        "step_tflop": round(step_flops(name, shape) / 1e12, 1),
        "weights_gb": {k: round(v / 1e9, 2) for k, v in weights.items()},
        "profiles": list(variant.speed.profiles),
    }


def _cuda_seconds(fn, repeat: int = 1) -> float:
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / 1000 / repeat


def _fresh() -> None:
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def time_text_encoder() -> dict:
    from transformers import UMT5Config, UMT5EncoderModel

    _fresh()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, UMT5_XXL["vocab_size"], (2, TEXT_TOKENS), device="cuda")
    with torch.no_grad():
        encoder(input_ids=ids)  # warm-up
        seconds = _cuda_seconds(lambda: encoder(input_ids=ids))
    peak = torch.cuda.max_memory_allocated()
    return {"seconds": round(seconds, 3), "peak_gib": round(peak / 2**30, 2)}


#: Rank and target modules of the Wan2.2-Lightning LoRAs ("lora-rank64" in their file names).
LIGHTNING_LORA_RANK = 64
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def time_denoising(
    name: str, variant, shape, steps: int, profile_name: str, flops: int, compile_blocks: bool = False
) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler

    _fresh()
    profile = variant.speed.profiles[profile_name]
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = _transformer(name, "cuda")
        if profile.distilled is not None:
            from peft import LoraConfig

            model.add_adapter(
                LoraConfig(r=LIGHTNING_LORA_RANK, lora_alpha=LIGHTNING_LORA_RANK, target_modules=LORA_TARGETS),
                adapter_name="distilled",
            )
    finally:
        torch.set_default_dtype(torch.float32)
    if compile_blocks:
        model.compile_repeated_blocks(dynamic=True)
    latents, text, timestep = _inputs(shape, "cuda")
    negative = torch.randn_like(text)
    cfg = profile.distilled is None

    class Holder:  # what speed_profile reads: the pipeline's transformer(s) and scheduler
        transformer = model
        scheduler = FlowMatchEulerDiscreteScheduler()

    def step():
        nonlocal latents
        with model.cache_context("cond"):
            cond = model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        if not cfg:
            latents = latents - 0.02 * cond
            return
        with model.cache_context("uncond"):
            uncond = model(hidden_states=latents, timestep=timestep, encoder_hidden_states=negative, return_dict=False)[
                0
            ]
        # A small Euler-like move, so successive steps see similar inputs (what caches key on).
        latents = latents - 0.02 * (uncond + 5.0 * (cond - uncond))

    with torch.no_grad(), speed_profile(Holder, profile, steps + 1):
        first = _cuda_seconds(step)  # warm-up (compiling, kernel selection, the caches' first full step)
        seconds = _cuda_seconds(step, repeat=steps)
    peak = torch.cuda.max_memory_allocated()
    total = profile.distilled.num_inference_steps if profile.distilled else variant.defaults.num_inference_steps
    tflops = peak_tflops(torch.cuda.get_device_name())
    step_flops = flops if cfg else flops // 2
    return {
        "seconds_per_step": round(seconds, 3),
        "steps_measured": steps,
        "steps_full": total,
        "denoising_seconds_extrapolated": round(seconds * total, 1),
        "compile_seconds": round(first - seconds, 1) if compile_blocks else None,
        "peak_gib": round(peak / 2**30, 2),
        "mfu": round(step_flops / seconds / (tflops * 1e12), 3) if tflops else None,
    }


def time_vae(name: str, variant, shape) -> dict:
    import diffusers

    _cls, _config, _two, vae_config = REFERENCE[name]
    _fresh()
    dtype = getattr(torch, variant.vae_dtype)
    with torch.device("cuda"):
        vae = diffusers.AutoencoderKLWan(**vae_config).to(dtype).eval()
    latents = torch.randn(shape, device="cuda", dtype=dtype)
    with torch.no_grad():
        seconds = _cuda_seconds(lambda: vae.decode(latents, return_dict=False))
    peak = torch.cuda.max_memory_allocated()
    return {"seconds": round(seconds, 3), "peak_gib": round(peak / 2**30, 2)}


def time_encode(variant) -> dict:
    import numpy as np

    from media.video_io import write_mp4

    size = variant.default_size
    frames = np.random.default_rng(0).integers(
        0, 256, (variant.defaults.num_frames, size.height, size.width, 3), np.uint8
    )
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        write_mp4(frames, Path(folder) / "bench.mp4", variant.fps)
        return {"seconds": round(time.perf_counter() - t0, 3)}


def run(name: str, profiles: list[str] | None, steps: int, compile_blocks: bool = False) -> dict:
    """Every part of ``name`` on this machine's GPU (see the module docstring)."""
    variant = load_variant(name)
    report = plan(name)
    shape = tuple(report["latents"])
    flops = int(report["step_tflop"] * 1e12)
    report["gpu"] = torch.cuda.get_device_name()
    report["text_encoder"] = time_text_encoder()
    report["denoising"] = {
        p: time_denoising(name, variant, shape, steps, p, flops, compile_blocks)
        for p in (profiles or list(variant.speed.profiles))
    }
    report["vae_decode"] = time_vae(name, variant, tuple(report["vae_latents"]))
    report["encode_mp4"] = time_encode(variant)
    return report


def compiled(d: dict) -> str:
    """The profile cell's note on regional compile ('' when eager)."""
    return f", compiled ({d['compile_seconds']} s compiling)" if d.get("compile_seconds") is not None else ""


def table(reports: list[dict]) -> str:
    """The markdown table of the reports, beside the official figures."""
    rows = [
        "| variant, GPU | profile | text encoder s | s/step (measured, steps) | denoising s (extrapolated) | "
        "VAE decode s | MP4 s | peak GiB | MFU | official end to end |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in reports:
        where, official = OFFICIAL_SECONDS.get(r["variant"], ("", None))
        for profile, d in r["denoising"].items():
            peak = max(d["peak_gib"], r["vae_decode"]["peak_gib"], r["text_encoder"]["peak_gib"])
            rows.append(
                f"| {r['variant']}, {r['gpu']} | {profile}{compiled(d)} | {r['text_encoder']['seconds']} | "
                f"{d['seconds_per_step']} ({d['steps_measured']}) | "
                f"{d['denoising_seconds_extrapolated']} ({d.get('steps_full', '')} steps) | "
                f"{r['vae_decode']['seconds']} | {r['encode_mp4']['seconds']} | {peak} | {d['mfu']} | "
                f"{f'{official} s on {where}' if official else ''} |"
            )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", nargs="+", default=["ti2v-5b", "t2v-a14b"], choices=VARIANTS)
    ap.add_argument("--profile", nargs="+", default=None, help="Speed profiles to time (default: all).")
    ap.add_argument("--steps", type=int, default=3, help="Denoising steps timed after the warm-up step.")
    ap.add_argument("--compile", action="store_true", help="Regional compile before timing (speed.compile).")
    ap.add_argument("--dry-run", action="store_true", help="Count FLOPs and print the plan; allocate nothing.")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    ap.add_argument("--doc", type=Path, default=None)
    args = ap.parse_args()

    if args.dry_run:
        out = {"dry_run": True, "variants": [plan(v) for v in args.variant]}
        print(json.dumps(out, indent=2))
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (none is visible to torch); --dry-run works anywhere")
    reports = [run(v, args.profile, args.steps, args.compile) for v in args.variant]
    out = {"machine": {"torch": torch.__version__, "python": platform.python_version()}, "variants": reports}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    if args.doc is not None:
        text = args.doc.read_text()
        a, b = text.index(START) + len(START), text.index(END)
        args.doc.write_text(text[:a] + "\n" + table(reports) + "\n" + text[b:])


if __name__ == "__main__":
    main()

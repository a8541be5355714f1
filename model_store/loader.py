"""Loading a variant's diffusers pipeline, from a local folder or a Hugging Face repo at a revision.

Real weights and tiny twins take exactly this path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch

from model_store.fit_check import GIB, FitPlan, gib, plan_fit, read_layout, suggestions
from model_store.hub import local_folder, pull, pull_distilled
from model_store.memory_modes import DeviceInfo, apply_fp8_storage, check_mode, place, probe_device, quantization_config
from model_store.qwen_processor import load_processor
from model_store.settings import StoreSettings
from model_store.speed_modes import check_caches, check_speed
from model_store.variants import VariantConfig
from model_store.weights_manifest import check_before_load, read_manifest

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(variant: VariantConfig) -> torch.device:
    """The device a variant runs on: ``cuda`` when configured or (for ``auto``) when a GPU is visible.

    Raises:
        RuntimeError: the config asks for cuda and none is visible to this process.
    """
    if variant.device == "cpu" or (variant.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"variant {variant.name!r} is configured with device: cuda, but this replica sees no GPU; "
            "give its deployment num_gpus: 1 or set device: auto"
        )
    return torch.device("cuda")


@dataclass
class LoadedVariant:
    """A variant's pipeline, ready to run.

    ``prompt_pipe`` is set when ``memory.text_encoder_device`` is cpu: a ``WanPipeline`` holding only
    the tokenizer and the text encoder, in host memory, while ``pipe.text_encoder`` is None so the
    pipeline's execution device is the transformer's.
    """

    pipe: object
    prompt_pipe: object | None
    device: torch.device
    fit: FitPlan | None = None
    manifest_check_seconds: float = 0.0  # hashing the weights against their manifest, part of the load


class WontFit(ValueError):
    """The variant's default request would not fit its device in its memory mode. The message gives
    the estimate, the budget and modes that would fit; the generator raises it from its
    constructor, so /ready shows it."""


def check_fit(variant: VariantConfig, folder: Path, device_info: DeviceInfo) -> FitPlan:
    """Estimate ``variant``'s peak memory (model_store/fit_check.py) and refuse it when its default
    request (``defaults.num_frames`` at its first native size) would not fit.

    Returns the FitPlan, which also prices larger requests (they are refused one by one, 422).

    Raises:
        WontFit: with the estimate, the budget and up to three modes that would fit.
    """
    memory = variant.memory
    budget = int(memory.budget_gib * GIB) if memory.budget_gib else device_info.free_bytes
    layout = read_layout(folder)
    plan = plan_fit(variant, layout, budget, device_info.describe())
    size = variant.default_size
    frames = variant.defaults.num_frames
    if memory.fit_check and not plan.fits(size.width, size.height, frames):
        what = "free" if not memory.budget_gib else "in its budget (memory.budget_gib)"
        better = suggestions(variant, layout, budget, device_info, size.width, size.height, frames)
        advice = (" or ".join(better) + " would fit") if better else "no memory mode fits it on this device"
        raise WontFit(
            f"variant {variant.name} ({plan.mode}) needs {gib(plan.peak_bytes(size.width, size.height, frames))} "
            f"for its default request ({frames} frames at {size}), and {device_info.describe()} has "
            f"{gib(budget)} {what}: {advice}"
        )
    return plan


def load_variant_pipeline(variant: VariantConfig, settings: StoreSettings | None = None) -> LoadedVariant:
    """Load ``variant``'s pipeline with ``from_pretrained`` in its memory mode and place it.

    Steps: 1. refuse a memory mode or speed profile the device cannot run; pull missing weights into the model
    store; check the files against their manifest; refuse a variant whose default request would
    not fit (the fit check); 2. load, quantizing per the mode
    (torchao or bitsandbytes); 3. check the weights are this variant's (boundary_ratio);
    4. fp8 storage, text encoder placement, offload or device placement, VAE tiling.

    The transformer and text encoder load in ``variant.torch_dtype``, the VAE in
    ``variant.vae_dtype`` (float32 by default, as the Wan model cards recommend).

    Raises:
        ModeRefused: the memory mode cannot run on this replica's device.
        SpeedRefused: a speed profile cannot run on it (an attention backend's package or GPU is missing,
            or a cache that would hook nothing in this pipeline).
        WontFit: the fit check's estimate is over the device's free memory (or memory.budget_gib).
        WeightsCorrupt: a file listed in the weights' manifest is missing, resized or altered; checked
            before any weights are read into memory.
        HubUnreachable: the weights are not in the model store and the hub cannot be reached.
        FileNotFoundError: a local-only variant whose folder is missing.
        OSError: from_pretrained could not find or read the weights.
        ValueError: the weights' boundary_ratio is not the one the variant config states
            (wrong weights for this variant).
    """
    # 1. The mode against the device, before any weights are read.
    device = resolve_device(variant)
    memory = variant.memory
    device_info = probe_device(device)
    check_mode(memory, device_info, variant.name)
    check_speed(variant.speed.profiles, device_info, variant.name)
    folder = local_folder(variant, settings)
    if (
        folder is not None
        and variant.weights.repo_id
        and (not folder.is_dir() or (read_manifest(folder) is None and (folder / ".cache" / "huggingface").is_dir()))
    ):
        # Missing, or a download that stopped before its manifest: fetch (resuming) into the store.
        logger.info("variant %s: weights not in the model store; pulling %s", variant.name, variant.weights.repo_id)
        pull(variant, settings)
    pull_distilled(variant, settings)
    location = variant.weights_location(settings)
    fit, manifest_check_seconds = None, 0.0
    if Path(location).is_dir():
        fix = (
            "rebuild it: wan-serve models build-tiny --force"
            if variant.twin_of
            else f"`wan-serve models verify {variant.name}` lists the bad files; `wan-serve models pull "
            f"{variant.name}` fetches a good copy"
        )
        t_check = time.perf_counter()
        check_before_load(Path(location), f"variant {variant.name}", fix)
        manifest_check_seconds = time.perf_counter() - t_check
        fit = check_fit(variant, Path(location), device_info)

    # 2. Load, quantizing while loading where the mode says so.
    pipeline_cls = getattr(diffusers, variant.pipeline_class)
    compute_dtype = _DTYPES[variant.torch_dtype]
    kwargs = {}
    if location == variant.weights.repo_id and variant.weights.revision:
        kwargs["revision"] = variant.weights.revision
    quant = quantization_config(memory, device_info, compute_dtype, variant.boundary_ratio is not None)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if variant.pipeline_class == "QwenImageEditPlusPipeline":
        kwargs["processor"] = load_processor(location, revision=kwargs.get("revision"))
    pipe = pipeline_cls.from_pretrained(
        location, dtype={"default": compute_dtype, "vae": _DTYPES[variant.vae_dtype]}, **kwargs
    )

    # 3. The right weights for this variant.
    loaded_boundary = pipe.config.get("boundary_ratio")
    if loaded_boundary != variant.boundary_ratio:
        raise ValueError(
            f"weights for variant {variant.name!r} have boundary_ratio {loaded_boundary}, but its config says "
            f"{variant.boundary_ratio}: these are not the weights this variant describes"
        )

    # 4. Storage format, placement and tiling.
    apply_fp8_storage(pipe, memory, compute_dtype)
    prompt_pipe = None
    if memory.text_encoder_device == "cpu":
        # Every Wan pipeline encodes prompts with the same code (WanPipeline.encode_prompt), so a
        # WanPipeline of the tokenizer and text encoder alone serves all of them.
        prompt_pipe = diffusers.WanPipeline(
            tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=None, scheduler=pipe.scheduler
        )
        prompt_pipe.set_progress_bar_config(disable=True)
        pipe.register_modules(text_encoder=None)
    place(pipe, memory, device)
    pipe.set_progress_bar_config(disable=True)
    # TI2V-5B's image jobs run WanImageToVideoPipeline on the same modules (image_pipeline).
    pipelines = (variant.pipeline_class,) + (("WanImageToVideoPipeline",) if variant.task == "ti2v" else ())
    check_caches(pipe, variant.speed.profiles, variant.name, pipelines)
    return LoadedVariant(
        pipe=pipe, prompt_pipe=prompt_pipe, device=device, fit=fit, manifest_check_seconds=manifest_check_seconds
    )


def load_pipeline(variant: VariantConfig, settings: StoreSettings | None = None):
    """``load_variant_pipeline(variant).pipe``, for variants whose text encoder is not split off.

    Raises:
        ValueError: the variant keeps its text encoder on the CPU (use load_variant_pipeline).
        And whatever load_variant_pipeline raises.
    """
    if variant.memory.text_encoder_device == "cpu":
        raise ValueError("text_encoder_device: cpu splits the pipeline; use load_variant_pipeline")
    return load_variant_pipeline(variant, settings).pipe


def image_pipeline(pipe):
    """TI2V-5B's text+image pipeline: a ``WanImageToVideoPipeline`` sharing ``pipe``'s modules.

    The loaded modules are shared (no extra memory) and ``expand_timesteps`` is carried over
    (True for TI2V-5B: the first latent frame is the image's), which is how the diffusers docs
    run TI2V-5B on an image. Built directly rather than with ``from_pipe``, which casts every
    shared module to one dtype (float32 by default) and would undo the bf16/fp32 split.
    """
    c = pipe.components
    i2v = diffusers.WanImageToVideoPipeline(
        tokenizer=c["tokenizer"],
        text_encoder=c["text_encoder"],
        vae=c["vae"],
        scheduler=c["scheduler"],
        transformer=c["transformer"],
        transformer_2=c.get("transformer_2"),
        boundary_ratio=pipe.config.get("boundary_ratio"),
        expand_timesteps=pipe.config.get("expand_timesteps", False),
    )
    i2v.set_progress_bar_config(disable=True)
    return i2v

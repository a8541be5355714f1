"""Checking a variant's speed profiles (model_store/speed_config.py) against its pipeline and
device, and applying one to a job.

1. ``check_speed`` before anything loads: refuses a profile the replica cannot run (an attention
   backend whose package or GPU generation is missing), with the reason and what would work;
   ``check_caches`` once the pipeline is loaded: refuses a cache that would hook nothing in it.
2. ``speed_profile`` around one pipeline call: turns the profile's cache and attention backend
   on for every transformer, and off again after the job, so each job starts from a clean cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from model_store.memory_modes import DeviceInfo
from model_store.speed_config import SpeedProfile, StepCache

#: Attention backends that run on a CPU: torch's own scaled_dot_product_attention and its math
#: kernel. Every other diffusers backend is a CUDA kernel.
CPU_ATTENTION_BACKENDS = ("native", "_native_math")

#: The oldest CUDA compute capability each kernel family runs on: FlashAttention 2 needs Ampere
#: (its README: sm80+), FlashAttention 3 Hopper (sm90, its README), SageAttention 2 Ampere.
MIN_CAPABILITY = {"flash": (8, 0), "_flash_3": (9, 0), "sage": (8, 0)}


#: TaylorSeer's modules per transformer class, as ``re.fullmatch`` patterns of module names.
#: diffusers' default (``^blocks.*attn``, ``^transformer_blocks.*attn``) fits Flux and Qwen-Image,
#: whose attention modules are named ``attn``; Wan's are ``attn1`` (self) and ``attn2`` (cross), so
#: the default would hook nothing there and the cache would silently do nothing.
TAYLOR_SEER_IDENTIFIERS: dict[str, list[str]] = {
    "WanTransformer3DModel": [r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2"],
    "WanVACETransformer3DModel": [r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2"],
}


class SpeedRefused(ValueError):
    """A speed profile this replica cannot run. The message names the profile, the reason and what
    would work; the generator raises it from its constructor, so /ready shows it."""


def _family(backend: str) -> str | None:
    return next((f for f in sorted(MIN_CAPABILITY, key=len, reverse=True) if backend.startswith(f)), None)


def attention_refusal(backend: str, device: DeviceInfo) -> str | None:
    """Why attention ``backend`` cannot run on ``device`` (None when it can)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        name = AttentionBackendName(backend)
    except ValueError:
        known = ", ".join(sorted(b.value for b in AttentionBackendName))
        return f"attention_backend {backend!r} is not a diffusers attention backend; known: {known}"
    if device.kind != "cuda" and backend not in CPU_ATTENTION_BACKENDS:
        return (
            f"attention_backend {backend} is a CUDA kernel and this replica runs on {device.describe()}; "
            f"use {' or '.join(CPU_ATTENTION_BACKENDS)}"
        )
    family = _family(backend)
    if (
        device.kind == "cuda"
        and family
        and device.capability is not None
        and device.capability < MIN_CAPABILITY[family]
    ):
        need = ".".join(map(str, MIN_CAPABILITY[family or ""]))
        return (
            f"attention_backend {backend} needs compute capability {need} or newer and {device.describe()} "
            "has less; use native (torch's scaled_dot_product_attention) or flash on Ampere and newer"
        )
    try:
        # diffusers' own package check, the one set_attention_backend runs: done here so a missing
        # package stops the replica at start, not its first job.
        _check_attention_backend_requirements(name)
    except RuntimeError as exc:
        return f"attention_backend {backend}: {exc}; or use native, which needs nothing"
    return None


def check_speed(profiles: dict[str, SpeedProfile], device: DeviceInfo, variant_name: str) -> None:
    """Refuse any profile of ``profiles`` that ``device`` cannot run, before any weights load.

    Raises:
        SpeedRefused: naming each refused profile, why, and what would work.
    """
    problems = [
        f"profile {name}: {why}"
        for name, profile in profiles.items()
        if profile.attention_backend is not None
        and (why := attention_refusal(profile.attention_backend, device)) is not None
    ]
    if problems:
        raise SpeedRefused(f"variant {variant_name}: speed profile refused: " + "; ".join(problems))


def cache_config(cache: StepCache, transformer_class: str):
    """The diffusers config object of ``cache`` for a transformer of class ``transformer_class``."""
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if cache.kind == "first_block":
        return FirstBlockCacheConfig(threshold=cache.threshold)
    return TaylorSeerCacheConfig(
        cache_interval=cache.cache_interval,
        disable_cache_before_step=cache.disable_cache_before_step,
        cache_identifiers=TAYLOR_SEER_IDENTIFIERS.get(transformer_class),
    )


def diffusers_hooks(module) -> set[tuple[str, str]]:
    """(submodule name, hook name) of every diffusers hook under ``module`` (offload hooks included)."""
    return {
        (name, hook)
        for name, sub in module.named_modules()
        for hook in getattr(getattr(sub, "_diffusers_hook", None), "hooks", {})
    }


def check_caches(pipe, profiles: dict[str, SpeedProfile], variant_name: str) -> None:
    """Refuse a profile whose cache would hook nothing in ``pipe``'s transformers (so would silently
    skip nothing): each cache is enabled on each transformer once, counted, and removed.

    Raises:
        SpeedRefused: naming the profile, the cache and the transformer class.
    """
    problems = []
    for name, profile in profiles.items():
        if profile.cache is None:
            continue
        for module in transformers_of(pipe):
            cls = type(module).__name__
            before = diffusers_hooks(module)
            module.enable_cache(cache_config(profile.cache, cls))
            try:
                # The cache's own hooks: an offload mode's hooks were there before.
                hooked = len(diffusers_hooks(module) - before)
            finally:
                module.disable_cache()
            if not hooked:
                problems.append(
                    f"profile {name}: cache {profile.cache.kind} finds no module to hook in {cls}, so it would skip "
                    "nothing; choose first_block, or no cache"
                )
    if problems:
        raise SpeedRefused(f"variant {variant_name}: speed profile refused: " + "; ".join(dict.fromkeys(problems)))


def transformers_of(pipe) -> list:
    """The pipeline's denoising transformers: ``transformer``, and ``transformer_2`` (A14B's
    low-noise expert) when it has one."""
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


@contextmanager
def speed_profile(pipe, profile: SpeedProfile) -> Iterator[None]:
    """Run the block with ``profile``'s cache and attention backend on every transformer of
    ``pipe``; both are removed afterwards (even when the block raises), so the next job starts
    with an empty cache and the default backend."""
    modules = transformers_of(pipe)
    try:
        for module in modules:
            if profile.attention_backend is not None:
                module.set_attention_backend(profile.attention_backend)
            if profile.cache is not None:
                # A new config object per module: the hooks keep their state per transformer, so
                # each A14B expert compares against its own previous step.
                module.enable_cache(cache_config(profile.cache, type(module).__name__))
        yield
    finally:
        for module in modules:
            if profile.cache is not None and getattr(module, "is_cache_enabled", False):
                module.disable_cache()
            if profile.attention_backend is not None:
                module.reset_attention_backend()

"""Checking a variant's speed profiles (model_store/speed_config.py) against its pipeline and
device, and applying one to a job.

1. ``check_speed`` before anything loads: refuses a profile the replica cannot run (an attention
   backend whose package or GPU generation is missing), with the reason and what would work;
   ``check_caches`` once the pipeline is loaded: refuses a cache that would hook nothing in it, or
   that its pipelines do not feed (SeaCache).
2. ``compile_blocks`` once per replica: regional compile of every transformer.
3. ``speed_profile`` around one pipeline call: turns the profile's cache, attention backend and
   distilled schedule on for every transformer, and off again after the job, so each job starts
   from a clean cache.
4. ``calibrate_mag_ratios``: one generation that measures MagCache's ratios for a checkpoint.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from model_store.memory_modes import DeviceInfo
from model_store.speed_config import MAG_RATIO_COMPONENTS, RegionalCompile, SpeedProfile, StepCache

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


#: Pipelines whose denoising loop passes each step's index, sigma and step count to the transformer
#: (``cache_context(name, step_index=..., sigma=..., num_inference_steps=...)``), which SeaCache
#: needs; elsewhere it runs every step in full ("fail-open"). In diffusers 0.42.1 only
#: ``WanPipeline`` does (pipelines/wan/pipeline_wan.py); ``WanImageToVideoPipeline``,
#: ``WanVACEPipeline`` and ``QwenImageEditPlusPipeline`` enter ``cache_context`` with a name only.
SEA_CACHE_PIPELINES = ("WanPipeline",)


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


def cache_config(cache: StepCache, transformer_class: str, component: str = "transformer", steps: int = 1):
    """The diffusers config object of ``cache`` for the transformer ``component`` (of class
    ``transformer_class``), which runs ``steps`` denoising steps of the job (MagCache counts them).

    Raises:
        SpeedRefused: a MagCache without ratios for ``component``.
    """
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, SeaCacheConfig, TaylorSeerCacheConfig

    threshold = {"threshold": cache.threshold} if cache.threshold is not None else {}
    if cache.kind == "first_block":
        return FirstBlockCacheConfig(**threshold)
    if cache.kind == "mag":
        ratios = (cache.mag_ratios or {}).get(component)
        if ratios is None:
            raise SpeedRefused(
                f"cache mag has no mag_ratios for {component}; calibrate it: wan-serve models calibrate-magcache"
            )
        return MagCacheConfig(
            **threshold,
            max_skip_steps=cache.max_skip_steps,
            retention_ratio=cache.retention_ratio,
            num_inference_steps=max(steps, 1),
            mag_ratios=list(ratios),
        )
    if cache.kind == "sea":
        return SeaCacheConfig(**threshold, max_consecutive_cached=cache.max_consecutive_cached)
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


def check_caches(pipe, profiles: dict[str, SpeedProfile], variant_name: str, pipelines: tuple[str, ...] = ()) -> None:
    """Refuse a profile whose cache would skip nothing: one that hooks nothing in ``pipe``'s
    transformers (each cache is enabled on each transformer once, counted, and removed), a SeaCache
    on a pipeline that does not pass it the step's sigma (``pipelines``: the class names of every
    pipeline the replica calls; ``pipe``'s own when empty), or a MagCache missing an expert's ratios.

    Raises:
        SpeedRefused: naming the profile, the cache and the transformer or pipeline class.
    """
    problems = []
    pipelines = pipelines or (type(pipe).__name__,)
    for name, profile in profiles.items():
        if profile.cache is None:
            continue
        if profile.cache.kind == "sea":
            unfed = [p for p in pipelines if p not in SEA_CACHE_PIPELINES]
            if unfed:
                problems.append(
                    f"profile {name}: cache sea needs each step's sigma, which {' and '.join(unfed)} does not pass "
                    f"to the transformer (only {', '.join(SEA_CACHE_PIPELINES)} does), so it would skip nothing; "
                    "choose first_block, taylor_seer or mag"
                )
                continue
        for component, module in components_of(pipe).items():
            cls = type(module).__name__
            before = diffusers_hooks(module)
            try:
                config = cache_config(profile.cache, cls, component)
            except SpeedRefused as exc:
                problems.append(f"profile {name}: {exc}")
                continue
            module.enable_cache(config)
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


def components_of(pipe) -> dict:
    """The pipeline's denoising transformers by component name: ``transformer``, and
    ``transformer_2`` (A14B's low-noise expert) when it has one."""
    return {c: m for c in MAG_RATIO_COMPONENTS if (m := getattr(pipe, c, None)) is not None}


def transformers_of(pipe) -> list:
    """The pipeline's denoising transformers: ``transformer``, and ``transformer_2`` when it has one."""
    return list(components_of(pipe).values())


def expert_steps(pipe, num_inference_steps: int) -> dict[str, int]:
    """How many of ``num_inference_steps`` each transformer of ``pipe`` runs: all of them for one
    transformer; for A14B, the high-noise expert (``transformer``) takes the steps whose timestep is
    at or above ``boundary_ratio`` x num_train_timesteps and ``transformer_2`` the rest, as the Wan
    pipelines' denoising loops switch. Sets the scheduler's timesteps, which the pipeline sets again."""
    components = components_of(pipe)
    boundary = pipe.config.get("boundary_ratio") if hasattr(pipe, "config") else None
    if "transformer_2" not in components or boundary is None:
        return dict.fromkeys(components, num_inference_steps)
    pipe.scheduler.set_timesteps(num_inference_steps, device="cpu")
    boundary_t = boundary * pipe.scheduler.config.num_train_timesteps
    high = int(sum(1 for t in pipe.scheduler.timesteps if t >= boundary_t))
    return {"transformer": high, "transformer_2": num_inference_steps - high}


def distilled_scheduler(pipe, flow_shift: float):
    """A ``FlowMatchEulerDiscreteScheduler`` shifted by ``flow_shift``, from ``pipe``'s scheduler config
    (so ``num_train_timesteps`` stays the model's): the few-step schedule of a distilled LoRA."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=flow_shift)


@contextmanager
def speed_profile(pipe, profile: SpeedProfile, num_inference_steps: int = 1) -> Iterator[None]:
    """Run the block with ``profile``'s cache, attention backend and distilled schedule on every
    transformer of ``pipe``, for a job of ``num_inference_steps`` steps; all are removed afterwards
    (even when the block raises), so the next job starts with an empty cache, the default backend
    and the variant's own scheduler. (A distilled profile's LoRA is switched with the job's
    adapters, deployments/lora_adapters.py.)"""
    modules = components_of(pipe)
    scheduler = getattr(pipe, "scheduler", None)
    try:
        if profile.distilled is not None:
            pipe.scheduler = distilled_scheduler(pipe, profile.distilled.flow_shift)
        steps = expert_steps(pipe, num_inference_steps) if profile.cache is not None else {}
        for component, module in modules.items():
            if profile.attention_backend is not None:
                module.set_attention_backend(profile.attention_backend)
            if profile.cache is not None:
                # A new config object per module: the hooks keep their state per transformer, so
                # each A14B expert compares against its own previous step.
                module.enable_cache(cache_config(profile.cache, type(module).__name__, component, steps[component]))
        yield
    finally:
        if profile.distilled is not None:
            pipe.scheduler = scheduler
        for module in modules.values():
            if profile.cache is not None and getattr(module, "is_cache_enabled", False):
                module.disable_cache()
            if profile.attention_backend is not None:
                module.reset_attention_backend()


def compile_blocks(pipe, config: RegionalCompile) -> int:
    """Regional compile: ``torch.compile`` each transformer's repeated blocks (diffusers
    ``compile_repeated_blocks``; Wan: ``WanTransformerBlock``, Qwen-Image: ``QwenImageTransformerBlock``).
    Compiling is lazy: the first call of each block compiles it, so the warm-up pays for it.
    Returns the number of transformers compiled."""
    modules = transformers_of(pipe)
    for module in modules:
        module.compile_repeated_blocks(mode=config.mode, fullgraph=config.fullgraph, dynamic=config.dynamic)
    return len(modules)


class _MagRatiosLog(logging.Handler):
    """Collects the ratio lists diffusers' MagCache logs at the end of a calibrated run, tagged with
    the transformer that was running."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.current: str | None = None
        self.found: dict[str, list[float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        prefix = "MagCache Calibration Results: "
        # The first list per transformer is the conditional pass's: with CFG the pipelines run
        # "cond" before "uncond" in every step, so it finishes first.
        if message.startswith(prefix) and self.current is not None and self.current not in self.found:
            self.found[self.current] = [round(float(r), 5) for r in ast.literal_eval(message[len(prefix) :])]


def calibrate_mag_ratios(pipe, num_inference_steps: int, run: Callable[[], object]) -> dict[str, list[float]]:
    """MagCache's ratios for ``pipe``'s checkpoint: ``run()`` generates once (``num_inference_steps``
    steps, nothing skipped) with diffusers' MagCache in calibration mode on every transformer, which
    logs, per step, the mean ratio of the block stack's residual norm to the previous step's.

    Returns:
        component ("transformer", "transformer_2") -> one ratio per step that transformer ran.
    """
    from diffusers import MagCacheConfig

    steps = expert_steps(pipe, num_inference_steps)
    log = _MagRatiosLog()
    diffusers_log = logging.getLogger("diffusers.hooks.mag_cache")
    level, propagate = diffusers_log.level, diffusers_log.propagate
    hooks = []
    for component, module in components_of(pipe).items():
        module.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps[component]))

        def mark(_module, _args, component=component):
            log.current = component

        hooks.append(module.register_forward_pre_hook(mark))
    diffusers_log.addHandler(log)
    diffusers_log.setLevel(logging.INFO)
    diffusers_log.propagate = False  # collected here, not printed by diffusers' handler
    try:
        run()
    finally:
        diffusers_log.removeHandler(log)
        diffusers_log.setLevel(level)
        diffusers_log.propagate = propagate
        for hook in hooks:
            hook.remove()
        for module in transformers_of(pipe):
            if getattr(module, "is_cache_enabled", False):
                module.disable_cache()
    return log.found

"""Running one generation on a loaded pipeline, with per-step progress and cancellation.

This is the generator's work without Ray around it, so tests can drive it directly.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from deployments.lora_adapters import AdapterRegistry
from deployments.rank_group import CfgSplit, RankGroup
from jobs.errors import JobCanceled, ValidationFailed
from jobs.inputs import PreparedInputs
from jobs.model import GenerationParams, Phase
from model_store.adapters import AdapterNotFound, adapter_for
from model_store.loader import image_pipeline
from model_store.settings import StoreSettings
from model_store.speed_config import SpeedProfile
from model_store.speed_modes import SpeedRefused, compile_blocks, speed_profile, transformers_of
from model_store.variants import Size, VariantConfig

ProgressCallback = Callable[[Phase, int, int, "float | None"], None]
#: Rank 0 of a parallel replica: ``fan_out(params, inputs)`` starts the same job on the other ranks
#: and returns a function that waits for them (raising what they raised).
FanOut = Callable[[GenerationParams, "PreparedInputs | None"], Callable[[], None]]


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1], (T, H, W, C) float, to (T, H, W, C) uint8 by rounding to nearest."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image)


class GenerationRunner:
    """Runs ``variant``'s pipeline for one request at a time.

    ``run`` reports progress through ``on_progress(phase, step, total_steps, step_seconds)``:
    ``encoding_prompt``, then ``denoising`` after every step, then ``decoding``.
    Cancellation is checked after every denoising step: once ``cancel`` is set, no
    further step and no VAE decode runs.

    Per task (``variant.task``), the pipeline receives:

    - t2v: the prompt only (``WanPipeline``; A14B's two experts switch at ``boundary_ratio``).
    - i2v: ``image`` and optionally ``last_image`` (``WanImageToVideoPipeline``).
    - ti2v: the prompt, or with an image the same modules as ``WanImageToVideoPipeline``.
    - vace: ``video``, ``mask`` (white = regenerate) and ``reference_images`` (``WanVACEPipeline``).
    - image_edit: the prompt and one to three ``images`` (``QwenImageEditPlusPipeline``), whose
      prompt encoding reads the images, so it runs inside the pipeline call; the result is one
      frame, (1, H, W, 3).
    """

    def __init__(
        self,
        variant: VariantConfig,
        pipe,
        prompt_pipe=None,
        ranks: RankGroup | None = None,
        fan_out: FanOut | None = None,
    ) -> None:
        self.variant = variant
        self.pipe = pipe
        # A parallel replica (deployments/rank_group.py): this process's rank, and on rank 0 how
        # every call of ``run`` reaches the other ranks, which must run it at the same time.
        self.ranks = ranks
        self.fan_out = fan_out
        self.cfg_split = None
        if ranks is not None:
            ranks.shard_sequence(transformers_of(pipe))
            if ranks.cfg_group is not None:
                self.cfg_split = CfgSplit(ranks, transformers_of(pipe))
        # Set when the text encoder stays in host memory (memory.text_encoder_device: cpu).
        self.prompt_pipe = prompt_pipe
        self.device = pipe._execution_device
        self.image_pipe = image_pipeline(pipe) if variant.task == "ti2v" else None
        # LoRA adapters live in the shared transformer modules, so image_pipe sees them too.
        self.adapters = AdapterRegistry(pipe)
        #: Seconds the warm-up spent compiling (speed.compile), None when the replica runs eagerly.
        self.compile_seconds: float | None = None
        if variant.speed.compile is not None:
            compile_blocks(pipe, variant.speed.compile)

    def pin_distilled(self, settings: StoreSettings | None = None) -> list[str]:
        """Load every distilled profile's LoRA (model_store/speed_config.py ``DistilledLora``) into
        the pipeline for the replica's lifetime; jobs of other profiles run with it turned off.
        Returns the adapter names.

        Raises:
            SpeedRefused: an adapter is not in the model store, or is for another variant.
            WeightsCorrupt: its files differ from its manifest.
        """
        pinned = []
        for name, profile in self.variant.speed.profiles.items():
            if profile.distilled is None:
                continue
            try:
                info = adapter_for(profile.distilled.adapter, self.variant, settings)
            except AdapterNotFound as exc:
                raise SpeedRefused(
                    f"variant {self.variant.name}: speed profile refused: profile {name}: {exc}; "
                    f"`wan-serve models pull {self.variant.name}` fetches it when the profile names a source"
                ) from None
            self.adapters.acquire(info)
            pinned.append(info.name)
        return pinned

    def _pipeline_and_inputs(self, params: GenerationParams, inputs: PreparedInputs | None) -> tuple[Any, dict]:
        """The pipeline to call and its media arguments; the ingress has already validated the inputs."""
        task, inputs = self.variant.task, inputs or PreparedInputs()
        kwargs: dict = {}
        if task == "image_edit":
            if not inputs.images:
                raise ValidationFailed(f"variant {self.variant.name} needs an image to edit", field="image")
            return self.pipe, {"image": [_pil(image) for image in inputs.images]}
        if self.variant.boundary_ratio is not None:
            kwargs["guidance_scale_2"] = params.guidance_scale_2
        if task == "i2v" or (task == "ti2v" and inputs.image is not None):
            if inputs.image is None:
                raise ValidationFailed(f"variant {self.variant.name} needs an image", field="image")
            kwargs["image"] = _pil(inputs.image)
            if inputs.last_image is not None:
                kwargs["last_image"] = _pil(inputs.last_image)
            return (self.image_pipe if task == "ti2v" else self.pipe), kwargs
        if task == "vace":
            if inputs.video is None or inputs.mask is None:
                raise ValidationFailed(f"variant {self.variant.name} needs a video and a mask", field="video")
            kwargs["video"] = [_pil(f) for f in inputs.video]
            kwargs["mask"] = [Image.fromarray(m.astype(np.uint8) * 255, mode="L").convert("RGB") for m in inputs.mask]
            kwargs["reference_images"] = [_pil(r) for r in inputs.reference_images] or None
        return self.pipe, kwargs

    def run(
        self,
        params: GenerationParams,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        inputs: PreparedInputs | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Generate ``params.num_frames`` frames at ``params.width`` x ``params.height``.

        ``inputs`` holds the job's media, already fitted to ``params.width`` x ``params.height``
        (and, for a video, to ``params.num_frames`` at the variant's fps). ``on_step(step)``
        runs after every denoising step (1, 2, ...); whatever it raises stops the job there
        (the generator's deadlines and injected faults use it).
        Returns frames as (T, H, W, 3) uint8.

        Raises:
            JobCanceled: ``cancel`` was set; raised before the next step or the decode.
            ValidationFailed: the task needs inputs that are missing.
            Exception: whatever ``on_step`` raises.
        """
        wait_ranks = self.fan_out(params, inputs) if self.fan_out is not None else None
        try:
            frames = self._run(params, on_progress, cancel, inputs, on_step)
        except BaseException:
            if wait_ranks is not None:
                with contextlib.suppress(Exception):  # they stop at the same step; this error is the job's
                    wait_ranks()
            raise
        if wait_ranks is not None:
            wait_ranks()
        return frames

    def _run(
        self,
        params: GenerationParams,
        on_progress: ProgressCallback | None,
        cancel: threading.Event | None,
        inputs: PreparedInputs | None,
        on_step: Callable[[int], None] | None,
    ) -> np.ndarray:
        report = on_progress or (lambda *a: None)
        cancel = cancel or threading.Event()
        pipe, media = self._pipeline_and_inputs(params, inputs)
        total = params.num_inference_steps
        profile = self.profile(params)
        distilled = profile.distilled
        if distilled is not None and (
            total != distilled.num_inference_steps
            or params.guidance_scale != 1.0
            or params.guidance_scale_2 not in (None, 1.0)
        ):
            raise ValidationFailed(
                f"speed profile {params.speed or self.variant.speed.default} runs "
                f"{distilled.num_inference_steps} steps with guidance_scale 1",
                field="speed",
            )
        if cancel.is_set():
            raise JobCanceled("job canceled before it started")

        # 1. Encode the prompt separately so its phase is visible; the pipeline call
        #    below would do exactly this with the same arguments.
        report(Phase.encoding_prompt, 0, total, None)
        do_cfg = params.guidance_scale > 1.0
        negative_embeds = None
        if self.variant.task == "image_edit":
            # Qwen-Image-Edit encodes the prompt together with the images it resizes inside its
            # call; true CFG runs when true_cfg_scale > 1 and a negative prompt is given, so an
            # empty one becomes the model card's " ".
            prompt_args = {
                "prompt": params.prompt,
                "negative_prompt": (params.negative_prompt or " ") if do_cfg else None,
                "true_cfg_scale": params.guidance_scale,
                "max_sequence_length": self.variant.max_sequence_length,
            }
        else:
            encoder = self.prompt_pipe or pipe
            with torch.inference_mode():
                prompt_embeds, negative_embeds = encoder.encode_prompt(
                    prompt=params.prompt,
                    negative_prompt=params.negative_prompt or None,
                    do_classifier_free_guidance=do_cfg,
                    max_sequence_length=self.variant.max_sequence_length,
                    device=encoder._execution_device if self.prompt_pipe is not None else self.device,
                )
            if self.prompt_pipe is not None:
                prompt_embeds = prompt_embeds.to(self.device)
                negative_embeds = negative_embeds.to(self.device) if negative_embeds is not None else None
            prompt_args = {
                "prompt_embeds": prompt_embeds,
                "negative_prompt_embeds": negative_embeds,
                "num_frames": params.num_frames,
                "guidance_scale": params.guidance_scale,
            }

        # 2. Denoise and decode, reporting after every step.
        started = time.perf_counter()

        def on_step_end(_pipe: Any, i: int, _t: Any, callback_kwargs: dict) -> dict:
            done = i + 1
            step_seconds = (time.perf_counter() - started) / done
            report(Phase.denoising, done, total, step_seconds)
            stop: BaseException | None = None
            try:
                if on_step is not None:
                    on_step(done)
                if cancel.is_set():
                    # Raising (not pipe._interrupt) is what stops the VAE decode too.
                    raise JobCanceled(f"job canceled after step {done} of {total}")
            except BaseException as exc:
                stop = exc
            if self.ranks is not None and self.ranks.any_stop(stop is not None) and stop is None:
                stop = JobCanceled(f"job stopped by another rank after step {done} of {total}")
            if stop is not None:
                raise stop
            if done == total:
                report(Phase.decoding, done, total, step_seconds)
            return callback_kwargs

        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        # Exactly this job's adapters (loaded by the generator before the job) and its distilled
        # profile's; none turns LoRA off.
        scales = {lora.name: lora.scale for lora in params.loras}
        if distilled is not None:
            scales[distilled.adapter] = distilled.scale
        self.adapters.activate(scales)
        split = self.cfg_split.job(do_cfg, negative_embeds) if self.cfg_split is not None else contextlib.nullcontext()
        with torch.inference_mode(), speed_profile(pipe, profile, total), split:
            output = pipe(
                height=params.height,
                width=params.width,
                num_inference_steps=total,
                generator=generator,
                output_type="np",
                callback_on_step_end=on_step_end,
                **prompt_args,
                **media,
            )
        # Video pipelines give frames (1, T, H, W, C); image pipelines images (1, H, W, C), one frame.
        return frames_to_uint8(output.images if self.variant.output_kind == "image" else output.frames[0])

    def profile(self, params: GenerationParams) -> SpeedProfile:
        """The speed profile ``params`` names (the variant's default when it names none).

        Raises:
            ValidationFailed: the profile is no longer in the variant's config (it changed after the
                job was accepted).
        """
        speed = self.variant.speed
        name = params.speed or speed.default
        if name not in speed.profiles:
            raise ValidationFailed(
                f"speed profile {name!r} is no longer configured for {self.variant.name}; it has "
                f"{', '.join(speed.profiles)}: resubmit with one of them",
                field="speed",
            )
        return speed.profiles[name]

    def warmup(self) -> float:
        """One short generation (min_inference_steps steps, one frame) at the smallest size, so the
        first job is not slow. With regional compile (speed.compile) the blocks compile in it; a
        second run measures how much of the first was compiling (``compile_seconds``), and every
        other profile runs once, so its hooks are traced before a job needs them.

        Image and video tasks get a gray frame (and an all-regenerate mask). Returns its wall
        time in seconds.
        """
        t0 = time.perf_counter()
        self._warm_run(self.variant.speed.default)
        if self.variant.speed.compile is not None:
            first = time.perf_counter() - t0
            t1 = time.perf_counter()
            self._warm_run(self.variant.speed.default)
            self.compile_seconds = max(first - (time.perf_counter() - t1), 0.0)
            for name in self.variant.speed.profiles:
                if name != self.variant.speed.default:
                    self._warm_run(name)
        return time.perf_counter() - t0

    def smallest_size(self) -> Size:
        """The smallest size this variant generates: its smallest native size, or for an image variant
        a square of ``limits.min_image_side`` on its grid."""
        if self.variant.image_sizing is not None:
            side = self.variant.limits.min_image_side // self.variant.image_sizing.multiple_of
            return Size(
                width=side * self.variant.image_sizing.multiple_of, height=side * self.variant.image_sizing.multiple_of
            )
        return min(self.variant.native_sizes.values(), key=lambda s: s.width * s.height)

    def gray_inputs(self, size: Size, num_frames: int = 1, image: np.ndarray | None = None) -> PreparedInputs | None:
        """Inputs for a job this variant's task can run without uploads: ``image`` ((H, W, 3) uint8 at
        ``size``; a mid-gray frame when None) for the image tasks, and for VACE a gray video of
        ``num_frames`` frames with an all-regenerate mask. None for text-only tasks."""
        gray = image if image is not None else np.full((size.height, size.width, 3), 128, np.uint8)
        if self.variant.task == "i2v":
            return PreparedInputs(image=gray)
        if self.variant.task == "ti2v" and image is not None:
            return PreparedInputs(image=gray)
        if self.variant.task == "image_edit":
            return PreparedInputs(images=[gray])
        if self.variant.task == "vace":
            return PreparedInputs(
                video=np.repeat(gray[None], num_frames, axis=0),
                mask=np.ones((num_frames, size.height, size.width), bool),
            )
        return None

    def _warm_run(self, speed: str) -> None:
        size = self.smallest_size()
        inputs = self.gray_inputs(size)
        distilled = self.variant.speed.profiles[speed].distilled
        self.run(
            GenerationParams(
                prompt="warm-up",
                width=size.width,
                height=size.height,
                num_frames=1,
                num_inference_steps=distilled.num_inference_steps
                if distilled is not None
                else self.variant.limits.min_inference_steps,
                guidance_scale=1.0,
                seed=0,
                guidance_scale_2=1.0 if self.variant.boundary_ratio is not None else None,
                speed=speed,
            ),
            inputs=inputs,
        )

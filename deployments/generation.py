"""Running one generation on a loaded pipeline, with per-step progress and cancellation.

This is the generator's work without Ray around it, so tests can drive it directly.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
import torch

from deployments.errors import JobCanceled
from deployments.jobs import GenerationParams, Phase
from model_store.variants import VariantConfig

ProgressCallback = Callable[[Phase, int, int, "float | None"], None]


def frames_to_uint8(frames: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1], (T, H, W, C) float, to (T, H, W, C) uint8 by rounding to nearest."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


class GenerationRunner:
    """Runs ``variant``'s pipeline for one request at a time.

    ``run`` reports progress through ``on_progress(phase, step, total_steps, step_seconds)``:
    ``encoding_prompt``, then ``denoising`` after every step, then ``decoding``.
    Cancellation is checked after every denoising step: once ``cancel`` is set, no
    further step and no VAE decode runs.
    """

    def __init__(self, variant: VariantConfig, pipe) -> None:
        self.variant = variant
        self.pipe = pipe
        self.device = pipe._execution_device

    def run(
        self,
        params: GenerationParams,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> np.ndarray:
        """Generate ``params.num_frames`` frames at ``params.width`` x ``params.height``.

        Returns frames as (T, H, W, 3) uint8.

        Raises:
            JobCanceled: ``cancel`` was set; raised before the next step or the decode.
        """
        report = on_progress or (lambda *a: None)
        cancel = cancel or threading.Event()
        pipe = self.pipe
        total = params.num_inference_steps
        if cancel.is_set():
            raise JobCanceled("job canceled before it started")

        # 1. Encode the prompt separately so its phase is visible; the pipeline call
        #    below would do exactly this with the same arguments.
        report(Phase.encoding_prompt, 0, total, None)
        do_cfg = params.guidance_scale > 1.0
        with torch.inference_mode():
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                prompt=params.prompt,
                negative_prompt=params.negative_prompt or None,
                do_classifier_free_guidance=do_cfg,
                max_sequence_length=self.variant.max_sequence_length,
                device=self.device,
            )

        # 2. Denoise and decode, reporting after every step.
        started = time.perf_counter()

        def on_step_end(_pipe, i, _t, callback_kwargs):
            done = i + 1
            step_seconds = (time.perf_counter() - started) / done
            report(Phase.denoising, done, total, step_seconds)
            if cancel.is_set():
                # Raising (not pipe._interrupt) is what stops the VAE decode too.
                raise JobCanceled(f"job canceled after step {done} of {total}")
            if done == total:
                report(Phase.decoding, done, total, step_seconds)
            return callback_kwargs

        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        with torch.inference_mode():
            output = pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                height=params.height,
                width=params.width,
                num_frames=params.num_frames,
                num_inference_steps=total,
                guidance_scale=params.guidance_scale,
                generator=generator,
                output_type="np",
                callback_on_step_end=on_step_end,
            )
        return frames_to_uint8(output.frames[0])

    def warmup(self) -> float:
        """One 1-step, 1-frame generation at the first native size, so the first job is not slow.

        Returns its wall time in seconds.
        """
        size = next(iter(self.variant.native_sizes.values()))
        t0 = time.perf_counter()
        self.run(
            GenerationParams(
                prompt="warm-up", width=size.width, height=size.height, num_frames=1,
                num_inference_steps=1, guidance_scale=1.0, seed=0,
            )
        )
        return time.perf_counter() - t0

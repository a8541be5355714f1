"""The generator deployment: one GPU-pinned replica per variant, which loads its pipeline once and
runs one job at a time, streaming progress back to the router."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator

import ray
import torch
from ray import serve

from deployments.compositing import mask_to_alpha, paste_back
from deployments.generation import GenerationRunner
from deployments.job_inputs import PreparedInputs
from deployments.jobs import OUTPUT_EXTENSIONS, JobResult, JobSpec, Phase, ProgressEvent
from deployments.video_io import fit_frames, write_mp4, write_png_zip, write_webm_alpha
from model_store.loader import load_pipeline
from model_store.variants import VariantConfig

logger = logging.getLogger("ray.serve")

_DONE = object()


def default_filename(gpu_id: str, job_id: str, now: datetime | None = None, extension: str = ".mp4") -> str:
    """``result_gpu{gpu}_{YYYY-mm-dd_HH-MM-SS}_{short_id}.mp4``; on a CPU replica ``result_cpu_...``.

    ``extension`` follows the output format (``.webm``, ``.zip``).
    """
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    device = "cpu" if gpu_id == "cpu" else f"gpu{gpu_id}"
    return f"result_{device}_{stamp}_{job_id[:8]}{extension}"


# max_ongoing_requests=1: a replica owns one GPU and runs one job at a time; the
# router keeps the queue, so nothing waits inside Ray.
@serve.deployment(max_ongoing_requests=1, health_check_period_s=10)
class Generator:
    """Loads ``variant`` once (and warms it up), then serves ``generate`` calls.

    Args:
        variant: the validated variant config.
        output_dir: folder the MP4 files are written to (shared with the ingress).
    """

    def __init__(self, variant: VariantConfig, output_dir: str) -> None:
        if variant.deployment.torch_threads:
            torch.set_num_threads(variant.deployment.torch_threads)
        self.variant = variant
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        gpu_ids = ray.get_gpu_ids()
        self.gpu_id = str(gpu_ids[0]) if gpu_ids else "cpu"
        t0 = time.perf_counter()
        self.runner = GenerationRunner(variant, load_pipeline(variant))
        self.load_seconds = time.perf_counter() - t0
        self.warmup_seconds = self.runner.warmup() if variant.warmup else None
        # One pipeline, one job: also held while a canceled job's thread finishes its step.
        self._busy = asyncio.Lock()
        logger.info("generator %s ready on %s: load %.1fs, warm-up %s s", variant.name, self.gpu_id,
                    self.load_seconds, self.warmup_seconds)

    def info(self) -> dict:
        """Variant, device and timings of this replica (seconds)."""
        return {"variant": self.variant.name, "gpu_id": self.gpu_id, "load_seconds": self.load_seconds,
                "warmup_seconds": self.warmup_seconds}

    def _work(self, spec: JobSpec, emit, cancel: threading.Event) -> JobResult:
        params = spec.params

        def on_progress(phase: Phase, step: int, total: int, step_seconds: float | None) -> None:
            emit(ProgressEvent(phase=phase, step=step, total_steps=total, step_seconds=step_seconds,
                               gpu_id=self.gpu_id))

        inputs = PreparedInputs.load(spec.inputs) if spec.inputs is not None else None
        t0 = time.perf_counter()
        frames = self.runner.run(params, on_progress=on_progress, cancel=cancel, inputs=inputs)
        pipeline_seconds = time.perf_counter() - t0
        on_progress(Phase.encoding_video, params.num_inference_steps, params.num_inference_steps, None)
        alpha = None
        if inputs is not None and inputs.mask is not None:
            if spec.preserve_unmasked:
                frames = paste_back(frames, inputs.video, inputs.mask)
            alpha = mask_to_alpha(inputs.mask)
        out = spec.output_size
        frames = fit_frames(frames, out.width, out.height, self.variant.resize_mode)
        filename = spec.filename or default_filename(self.gpu_id, spec.id, extension=OUTPUT_EXTENSIONS[spec.output_format])
        path = self.output_dir / filename
        t1 = time.perf_counter()
        if spec.output_format == "mp4":
            size = write_mp4(frames, path, self.variant.fps, width=out.width, height=out.height,
                             should_abort=cancel.is_set)
        else:
            if alpha is None or frames.shape[1:3] != alpha.shape[1:]:
                raise ValueError(f"output_format {spec.output_format} needs a mask at the output size")
            writer = write_webm_alpha if spec.output_format == "webm" else write_png_zip
            extra = {"fps": self.variant.fps} if spec.output_format == "webm" else {}
            size = writer(frames, alpha, path, should_abort=cancel.is_set, **extra)
        return JobResult(filename=filename, size_bytes=size, width=out.width, height=out.height,
                         num_frames=len(frames), fps=self.variant.fps, pipeline_seconds=pipeline_seconds,
                         encode_seconds=time.perf_counter() - t1, gpu_id=self.gpu_id,
                         output_format=spec.output_format)

    async def generate(self, spec: JobSpec) -> AsyncIterator[ProgressEvent | JobResult]:
        """Run ``spec``; yields ProgressEvents, then one JobResult. Call with ``stream=True``.

        The pipeline runs in a worker thread so the replica's event loop stays free. When
        the caller cancels the stream, the job stops after its current denoising step
        (no decode, no file) before this replica takes another job.

        Raises:
            JobCanceled: the job was canceled.
            Exception: whatever the pipeline or the encoder raised.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(item) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        def work():
            try:
                emit(self._work(spec, emit, cancel))
            except BaseException as exc:  # handed to the event loop, re-raised there
                emit(exc)
            finally:
                emit(_DONE)

        async with self._busy:
            future = loop.run_in_executor(None, work)
            try:
                while True:
                    item = await events.get()
                    if item is _DONE:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            except (asyncio.CancelledError, GeneratorExit):
                cancel.set()
                # Hold the lock until the thread has stopped, so the next job never shares the pipeline.
                await asyncio.shield(future)
                raise
            await future

"""The generator deployment: one GPU-pinned replica per variant, which loads its pipeline once and
runs one job at a time, streaming progress back to the router."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import gc
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import ray
import torch
from ray import serve

from deployments.faults import FaultSwitch, after_write_delay
from deployments.fit_plans import check_request_fits, write_fit_plan
from deployments.generation import GenerationRunner
from deployments.lora_adapters import LoadedAdapterSet, adapter_set_id
from deployments.metrics import RaySink
from deployments.rank_group import RankGroup
from deployments.rank_worker import RankWorkers, rendezvous
from jobs.config import DataLayout
from jobs.errors import (
    AdapterNotDeployed,
    DiskFull,
    JobCanceled,
    JobTimeout,
    OutOfMemory,
    ReplicaFailed,
)
from jobs.filenames import default_filename
from jobs.files import ResultFiles
from jobs.inputs import PreparedInputs
from jobs.log_context import install_job_fields, job_context
from jobs.model import OUTPUT_FORMATS, JobResult, JobSpec, Phase, ProgressEvent
from jobs.objects import ObjectStore
from media.compositing import mask_to_alpha, paste_back
from media.image_io import ImageFormat, write_image
from media.video_io import fit_frames, write_mp4, write_png_zip, write_webm_alpha
from model_store.adapters import AdapterNotFound, adapter_for
from model_store.loader import LoadedVariant, load_variant_pipeline, resolve_device
from model_store.settings import StoreSettings
from model_store.variants import VariantConfig

logger = logging.getLogger("ray.serve")

_DONE = object()

#: Recent job results a replica remembers, to answer a repeated dispatch without running it again.
FINISHED_KEPT = 256

#: Seconds past a job's time limits (generate_s + encode_s) before the watchdog gives up on its
#: worker thread: the in-thread checks fire first when the thread still runs.
WATCHDOG_GRACE_S = 10.0


# max_ongoing_requests=1: a replica owns one GPU and runs one job at a time; the
# router keeps the queue, so nothing waits inside Ray. check_health only reads a flag, so it
# runs every 5 s (Serve's default is 10) to replace a broken replica sooner.
@serve.deployment(max_ongoing_requests=1, health_check_period_s=5)
class Generator:
    """Loads ``variant`` once (and warms it up), then serves ``generate`` calls.

    Args:
        variant: the validated variant config.
        layout: the data folder: the fit plan goes to its ``fit``
            (for the router, deployments/fit_plans.py).
        fault_file: JSON file of injected faults (deployments/faults.py); None disables them.
        model_dir: the model store (weights and loras/); None: WAN_SERVE_MODEL_DIR or ./models.
        storage_url: the object store of inputs and results (jobs/objects.py); None: the data folder.

    Raises (from the constructor, which Ray Serve reports as the deployment's status message):
        TimeoutError: loading and warming up took longer than ``timeouts.load_s``.
        ModeRefused, WontFit: the memory mode cannot run on this device, or would not fit it.
        Exception: whatever loading the weights raised (missing or corrupt files).
    """

    def __init__(
        self,
        variant: VariantConfig,
        layout: DataLayout,
        fault_file: str | None = None,
        model_dir: str | None = None,
        storage_url: str | None = None,
    ) -> None:
        self.constructed_at = time.time()  # Unix seconds: bench/cold_start.py splits a cold start here
        install_job_fields()
        if variant.deployment.torch_threads:
            torch.set_num_threads(variant.deployment.torch_threads)
        self.variant = variant
        self.store = StoreSettings(model_dir=Path(model_dir)) if model_dir else StoreSettings()
        self.objects = ObjectStore(storage_url or layout.data_dir)
        self.files = ResultFiles(self.objects)
        # Results are written here first when the store is a bucket (this process's own scratch).
        self.scratch = Path(tempfile.mkdtemp(prefix="wan-serve-results-"))
        self.faults = FaultSwitch(fault_file, variant.name)
        self.sink = RaySink()
        self._broken: str | None = None  # set when the pipeline can no longer be trusted (CUDA error)
        gpu_ids = ray.get_gpu_ids()
        self.gpu_id = str(gpu_ids[0]) if gpu_ids else "cpu"
        t0 = time.perf_counter()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        # A parallel replica's other ranks (deployments/rank_worker.py) start loading at once.
        self.workers: RankWorkers | None = None
        self.rank_pids: list[int] = []
        init_method = rendezvous() if variant.parallel.world_size > 1 else ""
        if init_method:
            self.workers = RankWorkers(variant, init_method, model_dir)

        def load() -> tuple[LoadedVariant, GenerationRunner]:
            ranks = None
            if self.workers is not None:
                ranks = RankGroup(
                    variant.parallel, 0, init_method, resolve_device(variant), variant.timeouts.generate_s
                )
            loaded = load_variant_pipeline(variant, self.store)
            fan_out = self.workers.fan_out if self.workers is not None else None
            runner = GenerationRunner(variant, loaded.pipe, loaded.prompt_pipe, ranks=ranks, fan_out=fan_out)
            runner.pin_distilled(self.store)
            if self.workers is not None:
                self.rank_pids = self.workers.ready(variant.timeouts.load_s)
            return loaded, runner

        try:
            loaded, self.runner = pool.submit(load).result(timeout=variant.timeouts.load_s)
            self.fit = loaded.fit if variant.memory.fit_check else None
            if self.fit is not None:
                write_fit_plan(self.fit, self.objects)
            self.load_seconds = time.perf_counter() - t0
            self.manifest_check_seconds = loaded.manifest_check_seconds
            self.warmup_seconds = None
            if variant.warmup:
                left = variant.timeouts.load_s - self.load_seconds
                self.warmup_seconds = pool.submit(self.runner.warmup).result(timeout=max(left, 0.001))
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"loading {variant.name} took longer than timeouts.load_s={variant.timeouts.load_s:g} s; "
                "check the weights' disk or network, or raise the limit in its config"
            ) from None
        finally:
            pool.shutdown(wait=False)
        # LoRA adapter sets as Ray Serve multiplexed models: an LRU of deployment.max_loaded_adapters per
        # replica, and the router's handle routes a job to a replica that has its set. Wrapped here, not
        # with the decorator on the class, so the LRU size comes from the variant's config. The wrapper
        # must replace the method under its own name: Serve finds the replica's ``self`` by looking the
        # loader's __name__ up on it (ray.serve._private.utils.extract_self_if_method_call).
        self._adapter_set = serve.multiplexed(  # type: ignore[method-assign]
            max_num_models_per_replica=variant.deployment.max_loaded_adapters
        )(type(self)._adapter_set)
        # One pipeline, one job: also held while a canceled job's thread finishes its step.
        self._busy = asyncio.Lock()
        # Results of recent jobs: a job dispatched again (its router restarted while it ran here)
        # gets the file already written instead of a second run.
        self._finished: OrderedDict[str, JobResult] = OrderedDict()
        self.ready_at = time.time()
        logger.info(
            "generator %s ready on %s: load %.1fs, warm-up %s s (compiling %s s)",
            variant.name,
            self.gpu_id,
            self.load_seconds,
            self.warmup_seconds,
            self.runner.compile_seconds,
        )

    def info(self) -> dict:
        """Variant, device, Ray node, timings (seconds; ``constructed_at`` and ``ready_at`` are Unix
        seconds: the constructor's start and end), loaded LoRA adapters and the fit plan of this replica."""
        return {
            "variant": self.variant.name,
            "gpu_id": self.gpu_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "constructed_at": self.constructed_at,
            "ready_at": self.ready_at,
            "load_seconds": self.load_seconds,
            "manifest_check_seconds": self.manifest_check_seconds,
            "warmup_seconds": self.warmup_seconds,
            "compile_seconds": self.runner.compile_seconds,
            # A parallel replica's other ranks (their process ids); [] for a one-process replica.
            "rank_pids": self.rank_pids,
            "adapters": self.runner.adapters.loaded,
            "fit": self.fit.model_dump() if self.fit is not None else None,
        }

    async def _adapter_set(self, set_id: str) -> LoadedAdapterSet:
        """Load the adapters of ``set_id`` (names joined by '+'); called through the multiplexing LRU.

        Raises:
            AdapterNotDeployed: an adapter left the model store after the job was accepted.
            WeightsCorrupt: an adapter's files differ from its manifest.
        """
        try:
            infos = [adapter_for(name, self.variant, self.store) for name in set_id.split("+")]
        except AdapterNotFound as exc:
            raise AdapterNotDeployed(str(exc), field="loras") from None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, LoadedAdapterSet, self.runner.adapters, infos)

    def process_info(self) -> dict:
        """``{"pid": ...}`` of this replica's process (fault tests kill it with os.kill)."""
        return {"pid": os.getpid(), "variant": self.variant.name}

    def check_health(self) -> None:
        """Ray Serve's health check (every ``health_check_period_s``): fails once a job hit an error
        that leaves the pipeline unusable (a CUDA error), so Serve replaces this replica.

        Raises:
            RuntimeError: the replica is broken, with the reason.
        """
        if self._broken is not None:
            raise RuntimeError(f"pipeline unusable after: {self._broken}")

    def _work(self, spec: JobSpec, emit, cancel: threading.Event) -> JobResult:
        """Run the job: generate under ``timeouts.generate_s``, write under ``timeouts.encode_s``.

        Raises:
            JobCanceled, JobTimeout, OutOfMemory, DiskFull, ReplicaFailed: as their names say.
            Exception: anything else the pipeline or the encoder raised.
        """
        try:
            return self._run_job(spec, emit, cancel)
        except torch.OutOfMemoryError:
            # The job's tensors are garbage once its frames unwind; give the memory back now so
            # the next job starts from a clean device.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            p = spec.params
            raise OutOfMemory(
                f"{self.variant.name} ran out of device memory at {p.width}x{p.height}, {p.num_frames} frames. "
                "Try fewer frames or a smaller size, or ask the operator for an offload or quantization mode "
                "for this variant; this replica has freed the memory and keeps serving"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFull(
                    "no space left on the device for the result file; the operator must free disk "
                    "space (or lower RETENTION_DAYS); resubmit afterwards"
                ) from None
            raise
        except torch.AcceleratorError as exc:
            # A CUDA error leaves the context unusable (CUDA's documentation: sticky errors), so this
            # replica must go; torch raises AcceleratorError for them since 2.8.
            self._broken = str(exc)[:200]
            logger.error("generator %s unusable after a CUDA error; failing health checks", self.variant.name)
            raise ReplicaFailed(f"the {self.variant.name} replica hit a device error and is being replaced") from None

    def _run_job(self, spec: JobSpec, emit, cancel: threading.Event) -> JobResult:
        params = spec.params
        limits = self.variant.timeouts
        if self.fit is not None:  # the router checked at submit; a replica on a smaller device checks again
            check_request_fits(self.fit, spec)

        def on_progress(phase: Phase, step: int, total: int, step_seconds: float | None) -> None:
            emit(
                ProgressEvent(phase=phase, step=step, total_steps=total, step_seconds=step_seconds, gpu_id=self.gpu_id)
            )

        generate_deadline = time.monotonic() + limits.generate_s

        def on_step(step: int) -> None:
            self.faults.at_step(step)
            if time.monotonic() > generate_deadline:
                raise JobTimeout(
                    f"generation ran past timeouts.generate_s={limits.generate_s:g} s at step {step} "
                    f"of {params.num_inference_steps}; use fewer steps, frames or a smaller size"
                )

        logger.info(
            "job %s: %d denoising steps, %d frames at %dx%d, speed %s",
            spec.id,
            params.num_inference_steps,
            params.num_frames,
            params.width,
            params.height,
            params.speed,
        )
        inputs = PreparedInputs.load(spec.inputs, self.objects) if spec.inputs is not None else None
        on_gpu = self.runner.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(self.runner.device)
        t0 = time.perf_counter()
        frames = self.runner.run(params, on_progress=on_progress, cancel=cancel, inputs=inputs, on_step=on_step)
        pipeline_seconds = time.perf_counter() - t0
        if on_gpu:
            peak = torch.cuda.max_memory_allocated(self.runner.device)
            self.sink.observe("job_peak_device_memory_bytes", {"variant": self.variant.name}, peak)
        if time.monotonic() > generate_deadline:  # the VAE decode cannot be interrupted; judged after it
            raise JobTimeout(f"generation (with the VAE decode) ran past timeouts.generate_s={limits.generate_s:g} s")
        filename = spec.filename or default_filename(
            self.gpu_id, spec.id, extension=OUTPUT_FORMATS[spec.output_format].extension
        )
        # Announced before it exists, so a cancel from now on removes it whatever the timing.
        image = self.variant.output_kind == "image"
        emit(
            ProgressEvent(
                phase=Phase.encoding_image if image else Phase.encoding_video,
                step=params.num_inference_steps,
                total_steps=params.num_inference_steps,
                gpu_id=self.gpu_id,
                filename=filename,
            )
        )
        alpha = None
        if inputs is not None and inputs.mask is not None:
            if spec.preserve_unmasked and inputs.video is not None:
                frames = paste_back(frames, inputs.video, inputs.mask)
            alpha = mask_to_alpha(inputs.mask)
        out = spec.output_size
        frames = fit_frames(frames, out.width, out.height, self.variant.resize_mode)
        # A local store's file is written in place (renamed into it when complete); for a bucket,
        # in this process's scratch folder, then uploaded whole.
        local = self.files.writable_path(filename)
        path = local if local is not None else self.scratch / filename
        t1 = time.perf_counter()
        encode_deadline = time.monotonic() + limits.encode_s

        def should_abort() -> bool:
            return cancel.is_set() or time.monotonic() > encode_deadline

        try:
            self.faults.on_write()
            if image:
                size = write_image(frames, path, cast(ImageFormat, spec.output_format), should_abort=should_abort)
            elif spec.output_format == "mp4":
                size = write_mp4(
                    frames, path, self.variant.fps, width=out.width, height=out.height, should_abort=should_abort
                )
            else:
                if alpha is None or frames.shape[1:3] != alpha.shape[1:]:
                    raise ValueError(f"output_format {spec.output_format} needs a mask at the output size")
                writer = write_webm_alpha if spec.output_format == "webm" else write_png_zip
                extra = {"fps": self.variant.fps} if spec.output_format == "webm" else {}
                size = writer(frames, alpha, path, should_abort=should_abort, **extra)
            if local is None:
                try:
                    size = self.files.put(filename, path)
                finally:
                    path.unlink(missing_ok=True)
        except JobCanceled:
            if not cancel.is_set():
                raise JobTimeout(f"writing the result ran past timeouts.encode_s={limits.encode_s:g} s") from None
            raise
        after_write_delay(self.faults)
        logger.info("job %s: wrote %s (%d bytes) after %.2f s of pipeline", spec.id, filename, size, pipeline_seconds)
        return JobResult(
            filename=filename,
            size_bytes=size,
            width=out.width,
            height=out.height,
            num_frames=len(frames),
            fps=self.variant.fps,
            pipeline_seconds=pipeline_seconds,
            encode_seconds=time.perf_counter() - t1,
            gpu_id=self.gpu_id,
            output_format=spec.output_format,
        )

    async def generate(self, spec: JobSpec) -> AsyncIterator[ProgressEvent | JobResult]:
        """Run ``spec``; yields ProgressEvents (the first, phase ``loading``, as soon as this replica
        takes the job), then one JobResult. Call with ``stream=True``.

        The pipeline runs in a worker thread so the replica's event loop stays free. When
        the caller cancels the stream, the job stops after its current denoising step
        (no decode, no file) before this replica takes another job.

        Raises:
            JobCanceled: the job was canceled.
            ReplicaFailed: the replica is broken (``details['started']`` False: nothing ran).
            OutOfMemory, JobTimeout, DiskFull: see ``_work``.
            Exception: whatever the pipeline or the encoder raised.
        """
        if self._broken is not None:
            # Until Serve replaces this replica: hand the job back untouched (no attempt spent).
            raise ReplicaFailed(
                f"the {self.variant.name} replica is being replaced after a device error", started=False
            )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(item) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        def work():
            try:
                with job_context(spec.id, spec.variant):
                    result = self._work(spec, emit, cancel)
                self._finished[spec.id] = result
                while len(self._finished) > FINISHED_KEPT:
                    self._finished.popitem(last=False)
                emit(result)
            except BaseException as exc:  # handed to the event loop, re-raised there
                emit(exc)
            finally:
                emit(_DONE)

        async with self._busy:
            # The first event says a replica has taken the job: until then the router keeps it
            # queued (it may wait at the handle for a replica that autoscaling is starting).
            yield ProgressEvent(phase=Phase.loading, gpu_id=self.gpu_id)
            earlier = self._finished.get(spec.id)
            if earlier is not None and self.files.exists(earlier.filename):
                yield earlier
                return
            set_id = adapter_set_id([lora.name for lora in spec.params.loras])
            # Held for the job: the LRU only evicts while loading another set, which waits for _busy.
            # The multiplexed wrapper takes (self, model_id) explicitly (set in __init__).
            adapters = await self._adapter_set(self, set_id) if set_id else None  # type: ignore[call-arg,arg-type]  # noqa: F841
            future = loop.run_in_executor(None, work)
            # The watchdog: a step that never returns (a kernel, collective or filesystem hang) is
            # past every in-thread deadline check; past them and a grace period, the job ends and
            # this replica, whose worker thread may never come back, fails its health checks.
            deadline = time.monotonic() + self.variant.longest_job_s + WATCHDOG_GRACE_S
            try:
                while True:
                    try:
                        item = await asyncio.wait_for(events.get(), max(deadline - time.monotonic(), 0.0))
                    except TimeoutError:
                        cancel.set()
                        self._broken = f"job {spec.id} hung in its worker thread past its time limits"
                        logger.error("generator %s: %s; failing health checks", self.variant.name, self._broken)
                        raise JobTimeout(
                            f"the job did not finish within timeouts.generate_s + encode_s = "
                            f"{self.variant.longest_job_s:g} s (a step hung); the replica is being replaced"
                        ) from None
                    if item is _DONE:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            except (asyncio.CancelledError, GeneratorExit):
                cancel.set()
                # Hold the lock until the thread has stopped, so the next job never shares the pipeline.
                await asyncio.shield(future)
                # Canceled after its file was written (the result may not have reached the router):
                # the file goes, so a canceled job never leaves one.
                written = self._finished.pop(spec.id, None)
                if written is not None:
                    self.files.remove(written.filename)
                raise
            await future

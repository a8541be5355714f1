"""Serving logic of the /generate API: turning requests into job specs and records into responses.

Routes (serve_app/ingress.py) stay thin; the router deployment owns the state.
"""

from __future__ import annotations

import secrets
import uuid

from deployments.errors import AdapterNotDeployed, ValidationFailed, VariantNotDeployed
from deployments.job_inputs import PreparedInputs
from deployments.jobs import (
    DEFAULT_WEBHOOK_EVENTS,
    OUTPUT_EXTENSIONS,
    GenerationParams,
    JobSpec,
    JobStatus,
    LoraRef,
    WebhookSpec,
    file_url,
    job_progress,
)
from deployments.router import JobView
from deployments.webhook_guard import Resolver, check_webhook_url, system_resolve
from model_store.adapters import AdapterNotFound, adapter_for, list_adapters
from model_store.settings import StoreSettings
from model_store.variants import Size, VariantConfig
from serve_app.filenames import sanitize_filename
from serve_app.media_inputs import Upload, prepare_media
from serve_app.protocol import GenerateAccepted, GenerateRequest, JobStatusResponse, VideoInfo


class JobService:
    """Validates requests against the deployed variants and builds what the router needs."""

    def __init__(self, variants: dict[str, VariantConfig], default_variant: str,
                 webhook_allow_networks: list[str] | None = None, resolve: Resolver = system_resolve,
                 store: StoreSettings | None = None) -> None:
        self.store = store or StoreSettings()
        self.variants = variants
        self.default_variant = default_variant
        self.webhook_allow_networks = list(webhook_allow_networks or [])
        self.resolve = resolve

    def webhook_spec(self, url: str | None, events: list[str] | None) -> WebhookSpec | None:
        """The checked webhook of a request, or None without ``url``. Resolves the host (blocking).

        Raises:
            WebhookRefused: the URL fails the SSRF guard (see deployments/webhook_guard.py).
            ValidationFailed: events without a URL, or an empty event list.
        """
        if url is None:
            if events:
                raise ValidationFailed("webhook_events needs a webhook_url to send them to", field="webhook_events")
            return None
        if events is not None and not events:
            raise ValidationFailed("webhook_events is empty; leave it out for the terminal events",
                                   field="webhook_events")
        check_webhook_url(url, self.webhook_allow_networks, self.resolve)
        return WebhookSpec(url=url, events=list(dict.fromkeys(events)) if events else list(DEFAULT_WEBHOOK_EVENTS))

    def variant_for(self, name: str | None) -> VariantConfig:
        """The deployed variant ``name`` (default when None). Raises VariantNotDeployed."""
        name = name or self.default_variant
        if name not in self.variants:
            raise VariantNotDeployed(
                f"variant {name!r} is not deployed here; deployed: {', '.join(sorted(self.variants))}",
                deployed=sorted(self.variants),
            )
        return self.variants[name]

    def build_spec(self, req: GenerateRequest, uploads: list[Upload] | None = None) -> tuple[JobSpec, PreparedInputs | None]:
        """Resolve defaults, check limits, and decode and fit the uploads, before anything is queued.

        CPU-bound for media uploads (decoding, resizing): call it in a worker thread.
        Returns the job spec (without ``inputs``: the caller saves the prepared inputs and sets
        it) and the prepared inputs, or None for a text-only job.

        Raises:
            VariantNotDeployed: unknown variant.
            ValidationFailed: size, frames, steps or output format outside what the variant allows;
                a bad filename; a missing or unexpected upload (and its subclasses for bad media).
            WebhookRefused: a webhook_url the SSRF guard refuses.
            AdapterNotDeployed: a LoRA adapter the model store lacks for this variant.
        """
        variant = self.variant_for(req.variant)
        webhook = self.webhook_spec(req.webhook_url, req.webhook_events)
        loras = self.check_loras(variant, req.loras or [])
        d, limits = variant.defaults, variant.limits
        if req.output_format != "mp4" and variant.task != "vace":
            raise ValidationFailed(
                f"output_format {req.output_format} carries an inpainting mask as alpha; it is for vace variants, "
                f"and {variant.name} is {variant.task}: use mp4", field="output_format")
        if req.num_frames is not None:
            self._check_frames(variant, req.num_frames)
        steps = req.num_inference_steps if req.num_inference_steps is not None else d.num_inference_steps
        if steps > limits.max_inference_steps:
            raise ValidationFailed(
                f"num_inference_steps must be at most {limits.max_inference_steps} for {variant.name}; got {steps}",
                field="num_inference_steps",
            )
        if req.guidance_scale_2 is not None and variant.boundary_ratio is None:
            raise ValidationFailed(
                f"guidance_scale_2 sets the low-noise expert's guidance; {variant.name} has one expert: "
                "use guidance_scale", field="guidance_scale_2")
        image_variants = sorted(n for n, v in self.variants.items() if v.takes_image)
        media = prepare_media(variant, size=req.size, num_frames=req.num_frames, fit=req.fit,
                              uploads=uploads or [], image_variants=image_variants)
        self._check_frames(variant, media.num_frames)
        native = variant.native_sizes[media.size]
        guidance = req.guidance_scale if req.guidance_scale is not None else d.guidance_scale
        params = GenerationParams(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt if req.negative_prompt is not None else d.negative_prompt,
            width=native.width,
            height=native.height,
            num_frames=media.num_frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            guidance_scale_2=(req.guidance_scale_2 if req.guidance_scale_2 is not None else d.guidance_scale_2)
            if variant.boundary_ratio is not None else None,
            seed=req.seed if req.seed is not None else secrets.randbelow(2**32),
            loras=loras,
        )
        extension = OUTPUT_EXTENSIONS[req.output_format]
        spec = JobSpec(
            id=uuid.uuid4().hex,
            variant=variant.name,
            params=params,
            output_size=Size.parse(media.size),
            filename=sanitize_filename(req.filename, extension) if req.filename is not None else None,
            output_format=req.output_format,
            preserve_unmasked=req.preserve_unmasked,
            webhook=webhook,
        )
        return spec, media.inputs

    def check_loras(self, variant: VariantConfig, loras: list[LoraRef]) -> list[LoraRef]:
        """The request's adapters, each present in the model store for ``variant`` (adapter.yaml's base).

        Raises:
            AdapterNotDeployed: unknown, or for another variant; the message lists the ones there are.
            ValidationFailed: the same adapter named twice.
        """
        names = [lora.name for lora in loras]
        if len(set(names)) != len(names):
            raise ValidationFailed("loras names an adapter twice; give each adapter once, with one scale",
                                   field="loras")
        for lora in loras:
            try:
                adapter_for(lora.name, variant, self.store)
            except AdapterNotFound as exc:
                there = sorted(a.name for a in list_adapters(self.store) if a.base == variant.name)
                raise AdapterNotDeployed(f"{exc}; adapters for {variant.name}: {', '.join(there) or 'none'}",
                                         field="loras", adapters=there) from None
        return loras

    @staticmethod
    def _check_frames(variant: VariantConfig, num_frames: int) -> None:
        limits = variant.limits
        if not variant.frames_ok(num_frames) or num_frames > limits.max_num_frames:
            k = max(round((num_frames - 1) / variant.temporal_compression), 0)
            nearest = min(k * variant.temporal_compression + 1, limits.max_num_frames)
            raise ValidationFailed(
                f"num_frames must be {variant.frame_rule} and at most {limits.max_num_frames} for {variant.name}; "
                f"got {num_frames}, try {nearest}",
                field="num_frames",
            )

    @staticmethod
    def accepted(view: JobView) -> GenerateAccepted:
        return GenerateAccepted(id=view.record.id, queue_position=view.queue_position, eta_seconds=view.eta_seconds)

    @staticmethod
    def status(view: JobView) -> JobStatusResponse:
        rec = view.record
        progress = job_progress(rec)
        has_file = rec.status == JobStatus.success and rec.filename and not rec.file_deleted
        error = {"code": rec.error_code, "message": rec.error_message} if rec.error_code else None
        return JobStatusResponse(
            id=rec.id, status=rec.status, variant=rec.variant, prompt=rec.prompt, progress=progress,
            phase=rec.phase if rec.status == JobStatus.running else None, step=rec.step, total_steps=rec.total_steps,
            queue_position=view.queue_position, eta_seconds=view.eta_seconds, gpu_id=rec.gpu_id, attempts=rec.attempts,
            seed=rec.spec.params.seed, filename=rec.filename, file_url=file_url(rec.filename) if has_file else None,
            error=error, webhook=rec.spec.webhook, created_at=rec.created_at, output_format=rec.spec.output_format,
            size=str(rec.spec.output_size), num_frames=rec.spec.params.num_frames,
            inputs=rec.spec.inputs.summary if rec.spec.inputs is not None else None,
            timings={k: rec.result[k] for k in ("pipeline_seconds", "encode_seconds")} if rec.result else None,
            started_at=rec.started_at, finished_at=rec.finished_at,
        )

    @staticmethod
    def video(rec) -> VideoInfo:
        return VideoInfo(filename=rec.filename, file_url=file_url(rec.filename), job_id=rec.id,
                         size_bytes=(rec.result or {}).get("size_bytes", 0), created_at=rec.finished_at or rec.created_at)

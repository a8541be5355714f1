"""Serving logic of the /generate API: turning requests into job specs and records into responses.

Routes (serve_app/ingress.py) stay thin; the router deployment owns the state.
"""

from __future__ import annotations

import secrets
import uuid

from deployments.errors import ValidationFailed, VariantNotDeployed
from deployments.jobs import GenerationParams, JobSpec, JobStatus
from deployments.router import JobView
from model_store.variants import Size, VariantConfig
from serve_app.filenames import sanitize_filename
from serve_app.protocol import GenerateAccepted, GenerateRequest, JobStatusResponse, VideoInfo


def file_url(filename: str) -> str:
    """Path, relative to the service root, where a result file is downloaded."""
    return f"/files/{filename}"


#: Share of ``progress`` given to denoising; decoding and encoding the video take the rest.
#: A choice, not a measurement: denoising dominates on GPUs (Wan2.2 README timings).
DENOISING_SHARE = 0.9


def job_progress(rec) -> float:
    """0..1: denoising steps fill 0..0.9, the VAE decode reaches 0.9, encoding the video 0.95, success 1."""
    if rec.status == JobStatus.success:
        return 1.0
    if rec.status != JobStatus.running:
        return 0.0
    if rec.phase == "encoding_video":
        return 0.95
    if rec.phase == "decoding":
        return DENOISING_SHARE
    return DENOISING_SHARE * min(rec.step / rec.total_steps, 1.0) if rec.total_steps else 0.0


class JobService:
    """Validates requests against the deployed variants and builds what the router needs."""

    def __init__(self, variants: dict[str, VariantConfig], default_variant: str) -> None:
        self.variants = variants
        self.default_variant = default_variant

    def variant_for(self, name: str | None) -> VariantConfig:
        """The deployed variant ``name`` (default when None). Raises VariantNotDeployed."""
        name = name or self.default_variant
        if name not in self.variants:
            raise VariantNotDeployed(
                f"variant {name!r} is not deployed here; deployed: {', '.join(sorted(self.variants))}",
                deployed=sorted(self.variants),
            )
        return self.variants[name]

    def build_spec(self, req: GenerateRequest) -> JobSpec:
        """Resolve defaults and check limits, before anything is queued.

        Raises:
            VariantNotDeployed: unknown variant.
            ValidationFailed: size, frames or steps outside what the variant allows; a bad filename.
        """
        variant = self.variant_for(req.variant)
        if req.size not in variant.native_sizes:
            raise ValidationFailed(
                f"variant {variant.name} serves sizes {', '.join(variant.native_sizes)}, not {req.size}", field="size"
            )
        d, limits = variant.defaults, variant.limits
        num_frames = req.num_frames if req.num_frames is not None else d.num_frames
        if not variant.frames_ok(num_frames) or num_frames > limits.max_num_frames:
            k = max(round((num_frames - 1) / variant.temporal_compression), 0)
            nearest = min(k * variant.temporal_compression + 1, limits.max_num_frames)
            raise ValidationFailed(
                f"num_frames must be {variant.frame_rule} and at most {limits.max_num_frames} for {variant.name}; "
                f"got {num_frames}, try {nearest}",
                field="num_frames",
            )
        steps = req.num_inference_steps if req.num_inference_steps is not None else d.num_inference_steps
        if steps > limits.max_inference_steps:
            raise ValidationFailed(
                f"num_inference_steps must be at most {limits.max_inference_steps} for {variant.name}; got {steps}",
                field="num_inference_steps",
            )
        native = variant.native_sizes[req.size]
        params = GenerationParams(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt if req.negative_prompt is not None else d.negative_prompt,
            width=native.width,
            height=native.height,
            num_frames=num_frames,
            num_inference_steps=steps,
            guidance_scale=req.guidance_scale if req.guidance_scale is not None else d.guidance_scale,
            seed=req.seed if req.seed is not None else secrets.randbelow(2**32),
        )
        return JobSpec(
            id=uuid.uuid4().hex,
            variant=variant.name,
            params=params,
            output_size=Size.parse(req.size),
            filename=sanitize_filename(req.filename) if req.filename is not None else None,
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
            queue_position=view.queue_position, eta_seconds=view.eta_seconds, gpu_id=rec.gpu_id,
            seed=rec.spec.params.seed, filename=rec.filename, file_url=file_url(rec.filename) if has_file else None,
            error=error, created_at=rec.created_at,
            timings={k: rec.result[k] for k in ("pipeline_seconds", "encode_seconds")} if rec.result else None,
            started_at=rec.started_at, finished_at=rec.finished_at,
        )

    @staticmethod
    def video(rec) -> VideoInfo:
        return VideoInfo(filename=rec.filename, file_url=file_url(rec.filename), job_id=rec.id,
                         size_bytes=(rec.result or {}).get("size_bytes", 0), created_at=rec.finished_at or rec.created_at)

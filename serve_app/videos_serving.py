"""Serving logic of the OpenAI-compatible Videos API: OpenAI's fields in, job specs out, and
job records back as OpenAI video objects. The jobs are the same as /generate's (same queue,
same store, same ids)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from deployments.errors import ValidationFailed
from deployments.job_inputs import JobInputs
from deployments.jobs import JobSpec, JobStatus
from deployments.router import JobView
from model_store.variants import VariantConfig
from serve_app.media_inputs import Upload
from serve_app.protocol import GenerateRequest
from serve_app.request_body import validate_model
from serve_app.serving import JobService, job_progress
from serve_app.videos_protocol import Video, VideoError

#: Job status -> OpenAI video status.
VIDEO_STATUS = {
    JobStatus.queued: "queued", JobStatus.running: "in_progress", JobStatus.success: "completed",
    JobStatus.error: "failed", JobStatus.canceled: "failed",
}
#: Multipart file fields of POST /v1/videos.
VIDEO_FILE_FIELDS = ("input_reference",)


def frames_for_seconds(variant: VariantConfig, seconds: str) -> int:
    """``seconds`` of video at the variant's fps, rounded to the nearest 4k+1 frame count.

    Raises:
        ValidationFailed: not a positive number, or more frames than ``limits.max_num_frames``.
    """
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValidationFailed(f"seconds must be a positive number, got {seconds!r}", field="seconds")
    step = variant.temporal_compression
    frames = max(round((value * variant.fps - 1) / step), 0) * step + 1
    if frames > variant.limits.max_num_frames:
        longest = variant.limits.max_num_frames / variant.fps
        raise ValidationFailed(
            f"seconds={seconds} is {frames} frames at {variant.fps} fps; {variant.name} makes at most "
            f"{variant.limits.max_num_frames} frames ({longest:g} s)", field="seconds")
    return frames


class VideosService:
    """Maps /v1/videos requests onto ``JobService`` and job views onto ``Video`` objects."""

    def __init__(self, jobs: JobService, retention_days: float | None = None) -> None:
        self.jobs = jobs
        self.retention_days = retention_days  # sets expires_at; None: kept until deleted

    def generate_request(self, fields: dict, uploads: list[Upload]) -> tuple[GenerateRequest, list[Upload]]:
        """OpenAI's create fields (prompt, model, seconds, size, input_reference) as a /generate request.

        Raises:
            RequestValidationError, ValidationFailed, VariantNotDeployed: bad fields, as /generate.
        """
        fields = dict(fields)
        extra = sorted(set(fields) - {"prompt", "model", "seconds", "size", "webhook_url", "webhook_events",
                                     "loras"})
        if extra:
            raise ValidationFailed(f"unknown field {extra[0]!r}; /v1/videos takes prompt, model, seconds, size, "
                                   "input_reference, and (beyond OpenAI's fields) webhook_url, webhook_events and loras",
                                   field=extra[0])
        variant = self.jobs.variant_for(fields.pop("model", None) or None)
        seconds = fields.pop("seconds", None)
        body = {**fields, "variant": variant.name}
        if seconds is not None:
            body["num_frames"] = frames_for_seconds(variant, str(seconds))
        images = [Upload(field="image", data=u.data, filename=u.filename) for u in uploads]
        return validate_model(GenerateRequest, body), images

    def remix_spec(self, original: JobSpec, prompt: str, inputs_dir: Path) -> JobSpec:
        """A new job with ``original``'s parameters (seed included), its inputs copied, and ``prompt``.

        Raises:
            ValidationFailed: the original's uploaded inputs are no longer stored.
        """
        new_id = uuid.uuid4().hex
        inputs = None
        if original.inputs is not None:
            source = Path(original.inputs.folder)
            if not source.is_dir():
                raise ValidationFailed(
                    "this video's inputs are no longer stored (a source video is dropped when its job ends, "
                    "and a failed or canceled job keeps none); create a new video with them instead",
                    field="video_id")
            target = inputs_dir / new_id
            shutil.copytree(source, target)
            inputs = JobInputs(**{**original.inputs.model_dump(), "folder": str(target.resolve())})
        params = original.params.model_copy(update={"prompt": prompt})
        return original.model_copy(update={"id": new_id, "params": params, "inputs": inputs, "filename": None,
                                           "remixed_from": original.id})

    def video(self, view: JobView) -> Video:
        """The job as OpenAI's video object: ``seconds`` is num_frames / fps, ``progress`` 0-100."""
        rec = view.record
        spec = rec.spec
        variant = self.jobs.variants.get(rec.variant)
        fps = variant.fps if variant else 1
        error = VideoError(code=rec.error_code, message=rec.error_message or "") if rec.error_code else None
        return Video(
            id=rec.id, model=rec.variant, status=VIDEO_STATUS[rec.status], progress=round(100 * job_progress(rec)),
            created_at=int(rec.created_at), completed_at=int(rec.finished_at) if rec.finished_at else None,
            expires_at=int(rec.finished_at + self.retention_days * 86400)
            if rec.finished_at and self.retention_days else None,
            size=str(spec.output_size), seconds=f"{spec.params.num_frames / fps:g}", prompt=rec.prompt, error=error,
            remixed_from_video_id=spec.remixed_from, queue_position=view.queue_position, eta_seconds=view.eta_seconds,
        )

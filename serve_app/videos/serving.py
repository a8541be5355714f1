"""Serving logic of the OpenAI-compatible Videos API: OpenAI's fields in, /generate requests out,
and job views back as OpenAI video objects. The jobs are the same as /generate's (same queue,
same store, same ids)."""

from __future__ import annotations

from jobs.errors import ValidationFailed
from jobs.model import JobStatus, JobView
from jobs.retention import expires_at
from serve_app.generate.protocol import GenerateRequest
from serve_app.generate.serving import JobService
from serve_app.media_inputs import Upload
from serve_app.request_body import validate_model
from serve_app.videos.protocol import Video, VideoError

#: Job status -> OpenAI video status.
VIDEO_STATUS = {
    JobStatus.queued: "queued",
    JobStatus.running: "in_progress",
    JobStatus.success: "completed",
    JobStatus.error: "failed",
    JobStatus.canceled: "failed",
}
#: Multipart file fields of POST /v1/videos.
VIDEO_FILE_FIELDS = ("input_reference",)


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
        extra = sorted(set(fields) - {"prompt", "model", "seconds", "size", "webhook_url", "webhook_events", "loras"})
        if extra:
            raise ValidationFailed(
                f"unknown field {extra[0]!r}; /v1/videos takes prompt, model, seconds, size, "
                "input_reference, and (beyond OpenAI's fields) webhook_url, webhook_events and loras",
                field=extra[0],
            )
        variant = self.jobs.variant_for(fields.pop("model", None) or None)
        if variant.output_kind == "image":
            raise ValidationFailed(
                f"model {variant.name} makes images; /v1/videos is for video variants: use POST /v1/images/edits",
                field="model",
            )
        seconds = fields.pop("seconds", None)
        body = {**fields, "variant": variant.name}
        if seconds is not None:
            body["seconds"] = seconds
        images = [Upload(field="image", data=u.data, filename=u.filename) for u in uploads]
        return validate_model(GenerateRequest, body), images

    def video(self, view: JobView) -> Video:
        """The job as OpenAI's video object: ``seconds`` is num_frames / fps, ``progress`` 0-100."""
        variant = self.jobs.variants.get(view.variant)
        fps = variant.fps if variant else 1
        error = VideoError(code=view.error.code, message=view.error.message) if view.error else None
        expires = expires_at(view.finished_at, self.retention_days)
        return Video(
            id=view.id,
            model=view.variant,
            status=VIDEO_STATUS[view.status],
            progress=round(100 * view.progress),
            created_at=int(view.created_at),
            completed_at=int(view.finished_at) if view.finished_at else None,
            expires_at=int(expires) if expires else None,
            size=str(view.output_size),
            seconds=f"{view.params.num_frames / fps:g}",
            prompt=view.prompt,
            error=error,
            remixed_from_video_id=view.remixed_from,
            queue_position=view.queue_position,
            eta_seconds=view.eta_seconds,
            waiting_for_replica=view.waiting_for_replica,
        )

"""Request and response models of the HTTP API (the /generate family)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from jobs.model import (
    DEFAULT_WEBHOOK_EVENTS,
    WAITING_FOR_REPLICA,
    JobStatus,
    LoraRef,
    OutputFormat,
    WebhookEvent,
    WebhookSpec,
)
from media.fit import Fit
from model_store.variants import API_SIZES, upload_roles
from webhooks.guard import MAX_URL_LENGTH
from webhooks.model import WebhookMessage


def _comma_list(value):
    """Form fields carry lists as "a,b"; JSON carries them as arrays."""
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


WebhookEvents = Annotated[list[WebhookEvent], BeforeValidator(_comma_list)]


def _json_list(value):
    """Form fields carry a list of objects as JSON text; JSON bodies as an array."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError('loras must be a JSON array like [{"name": "my-style", "scale": 0.8}]') from None
    return value


#: What a ``size`` field looks like before the variant checks it: WIDTHxHEIGHT in pixels.
SIZE_PATTERN = r"^[0-9]{1,5}x[0-9]{1,5}$"

#: LoRA adapters one request may apply at once.
MAX_LORAS = 4
Loras = Annotated[list[LoraRef], BeforeValidator(_json_list), Field(max_length=MAX_LORAS)]

#: Multipart file fields of POST /generate, described for the OpenAPI document (which task takes
#: which is TASK_UPLOADS in model_store/variants.py).
UPLOAD_FIELDS: dict[str, str] = {
    name: f"{text} ({upload_roles(name)})"
    for name, text in {
        "image": "First frame: PNG, JPEG or WEBP; for image_edit the image(s) to edit, one to three "
        "(repeat the field).",
        "last_image": "Last frame for first-last-frame generation: PNG, JPEG or WEBP.",
        "video": "Source clip to inpaint: MP4, MOV or WebM, any pixel format and frame rate.",
        "mask": "What to regenerate, white = regenerate: an image applied to every frame, "
        "or a video; the size of the source video (or of the output).",
        "reference_images": "Reference images, repeatable: PNG, JPEG or WEBP.",
    }.items()
}


class GenerateRequest(BaseModel):
    """POST /generate fields, as a JSON body or as multipart form fields beside the file uploads.

    Unset optional fields take the variant's defaults (configs/<variant>.yaml).
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=10_000, description="What the video shows. Required, non-empty.")
    size: str | None = Field(
        default=None,
        pattern=SIZE_PATTERN,
        description=f"Output size, WIDTHxHEIGHT. Video variants: one of {', '.join(API_SIZES)} that the variant "
        "serves (GET /variants); default: its first native size in the orientation of the uploaded image or "
        "video (portrait when taller than wide), else its first native size. Image variants: sides multiples "
        "of 16 within the variant's bounds (256 to 2048 by default); default: the first image's aspect ratio "
        "at about a megapixel.",
    )
    filename: str | None = Field(
        default=None, description="Output file name; sanitized, the output format's extension enforced."
    )
    variant: str | None = Field(default=None, description="Model variant; default from the app config.")
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="Random seed; random when unset, reported back."
    )
    num_inference_steps: int | None = Field(default=None, ge=1, description="Denoising steps.")
    num_frames: int | None = Field(default=None, ge=1, description="Frames in the video; must be 4k+1 for Wan.")
    seconds: float | None = Field(
        default=None,
        gt=0,
        description="Length of the video in seconds instead of num_frames: at the variant's fps, "
        "rounded to the nearest 4k+1 frame count. Send one of the two.",
    )
    guidance_scale: float | None = Field(
        default=None, ge=0, le=50, description="Classifier-free guidance scale (the high-noise expert's on A14B)."
    )
    guidance_scale_2: float | None = Field(
        default=None, ge=0, le=50, description="A14B only: the low-noise expert's guidance scale."
    )
    speed: str | None = Field(
        default=None,
        max_length=64,
        description="Speed profile of the variant (GET /variants lists them: a step cache and an attention "
        "backend each, trading fidelity for time); default: the variant's own default.",
    )
    true_cfg_scale: float | None = Field(
        default=None,
        ge=0,
        le=50,
        description="Image-edit variants (Qwen-Image-Edit) only: the true classifier-free guidance scale, "
        "> 1 to turn guidance on (the model card uses 4.0). Video variants take guidance_scale.",
    )
    negative_prompt: str | None = Field(default=None, max_length=10_000, description="What the video should avoid.")
    fit: Fit = Field(
        default="crop",
        description="How uploads reach the output size: crop (center-crop to the aspect, then "
        "resize) or pad (resize to fit, then black bands).",
    )
    output_format: OutputFormat | None = Field(
        default=None,
        description="Result file. Video variants: mp4 (H.264, the default); for vace also webm (VP9 with the "
        "mask as alpha) or png_zip (RGBA PNG frames, the mask as alpha). Image variants: png (the default), "
        "webp (lossless) or jpeg.",
    )
    preserve_unmasked: bool = Field(
        default=True, description="vace: copy the source pixels outside the mask into the result unchanged."
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=MAX_URL_LENGTH,
        description="http(s) URL that gets this job's events as signed "
        "POSTs (Standard Webhooks). Must resolve to a public address unless the operator allowlists it.",
    )
    webhook_events: WebhookEvents | None = Field(
        default=None,
        description="Event types to send: video.completed, video.failed, video.canceled, "
        f"video.progress (at most one every 2 s by default). Default: {', '.join(DEFAULT_WEBHOOK_EVENTS)}. "
        "A form field takes them comma-separated.",
    )
    loras: Loras | None = Field(
        default=None,
        description=f"LoRA adapters from the model store, at most {MAX_LORAS}: "
        '[{"name": "my-style", "scale": 0.8}] (scale defaults to 1). Unknown adapters get 404 before queueing. '
        "A form field takes the same JSON text.",
    )


class GenerateAccepted(BaseModel):
    """202 answer to POST /generate."""

    id: str = Field(description="Job id; poll GET /status/{id}.")
    status: Literal["queued"] = "queued"
    queue_position: int | None = Field(description="1 = next of its variant to start.")
    eta_seconds: float | None = Field(description="Estimated seconds until the video is written; null until measured.")
    waiting_for_replica: bool = Field(default=False, description=WAITING_FOR_REPLICA)
    gpu_assigned: str | None = Field(default=None, description="Always null at submission; see /status.")


class JobStatusResponse(BaseModel):
    """GET /status/{id} answer."""

    id: str
    status: JobStatus
    variant: str
    prompt: str
    progress: float = Field(
        ge=0,
        le=1,
        description="Fraction done, 0..1: denoising steps fill 0..0.9, decoding 0.9, encoding 0.95, success 1.",
    )
    phase: str | None = Field(
        description="loading | encoding_prompt | denoising | decoding | encoding_video (encoding_image for an "
        "image) while running."
    )
    step: int = Field(description="Denoising steps completed.")
    total_steps: int = Field(description="Denoising steps in this job.")
    queue_position: int | None = Field(description="1 = next of its variant to start; null unless queued.")
    eta_seconds: float | None = Field(description="Estimated seconds until done; null when unknown or finished.")
    waiting_for_replica: bool = Field(default=False, description=WAITING_FOR_REPLICA)
    gpu_id: str | None = Field(description="GPU index of the replica that ran it, or 'cpu'.")
    attempts: int = Field(
        default=0,
        description="Times the job was dispatched to a generator (more than 1 after "
        "a replica failure or a router restart).",
    )
    seed: int = Field(description="Seed used; resubmit with it to reproduce the video.")
    speed: str | None = Field(default=None, description="The speed profile the job runs.")
    filename: str | None
    file_url: str | None = Field(description="Where to download the result once status is success.")
    output_format: str = Field(default="mp4", description="mp4, webm or png_zip; png, webp or jpeg for an image.")
    size: str = Field(default="", description="Output size, WIDTHxHEIGHT.")
    num_frames: int = Field(default=0, description="Frames in the output video.")
    inputs: dict | None = Field(
        default=None,
        description="The uploads this job was given: per field, size in pixels and format "
        "(and fps and frames used for a video).",
    )
    error: dict | None = Field(description="{code, message} when status is error or canceled.")
    webhook: WebhookSpec | None = Field(
        default=None,
        description="Where this job's webhooks go and which events; GET /jobs/{id}/webhooks "
        "lists every delivery attempt.",
    )
    timings: dict | None = Field(
        default=None,
        description="On success: pipeline_seconds (prompt encoding, denoising, VAE decode) and "
        "encode_seconds (MP4), wall time in seconds on the replica.",
    )
    created_at: float = Field(description="Unix seconds.")
    started_at: float | None
    finished_at: float | None


class JobList(BaseModel):
    """GET /jobs: one page of jobs."""

    data: list[JobStatusResponse] = Field(description="The jobs of this page, in the order asked for.")
    has_more: bool = Field(description="More jobs follow: ask again with after=last_id.")
    last_id: str | None = Field(description="Id of the last job of this page; null on an empty page.")


class WebhookDeliveries(BaseModel):
    """GET /jobs/{id}/webhooks: the job's webhook and every message sent for it."""

    job_id: str
    webhook: WebhookSpec | None = Field(description="The job's webhook_url and events; null when it has none.")
    messages: list[WebhookMessage] = Field(
        description="Oldest first; each with its delivery attempts (status code or error, and when the retry is due)."
    )


class VideoInfo(BaseModel):
    """One entry of GET /videos."""

    filename: str
    file_url: str = Field(description="Signed download URL, valid without a key until it expires.")
    job_id: str
    size_bytes: int
    created_at: float = Field(description="Unix seconds when the job finished.")


class VideoInfoList(BaseModel):
    """GET /videos: one page of result videos, oldest first."""

    data: list[VideoInfo] = Field(description="The videos of this page.")
    has_more: bool = Field(description="More videos follow: ask again with after=last_id.")
    last_id: str | None = Field(description="Job id of the last video of this page; null on an empty page.")


class DeleteJobsResult(BaseModel):
    deleted: list[str] = Field(description="Ids of the removed jobs.")
    canceled: list[str] = Field(description="Ids among them that were queued or running and got canceled first.")
    files_deleted: list[str] = Field(description="Result files removed (delete_files=true).")


class DeleteVideosResult(BaseModel):
    files_deleted: list[str]

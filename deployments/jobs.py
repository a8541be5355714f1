"""Job vocabulary shared by the router and the generator: statuses, phases, specs and events."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.job_inputs import JobInputs
from model_store.variants import Size

#: Result file formats. ``webm`` (VP9, yuva420p) and ``png_zip`` (RGBA PNG frames) carry the
#: inpainting mask as alpha; they exist for VACE jobs.
OutputFormat = Literal["mp4", "webm", "png_zip"]

#: File extension of each output format.
OUTPUT_EXTENSIONS: dict[str, str] = {"mp4": ".mp4", "webm": ".webm", "png_zip": ".zip"}


class JobStatus(str, Enum):
    """Lifecycle of a job: queued -> running -> one terminal state."""

    queued = "queued"
    running = "running"
    success = "success"
    error = "error"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.success, JobStatus.error, JobStatus.canceled)


class Phase(str, Enum):
    """Where a running job is inside the generator."""

    loading = "loading"
    encoding_prompt = "encoding_prompt"
    denoising = "denoising"
    decoding = "decoding"
    encoding_video = "encoding_video"


class LoraRef(BaseModel):
    """One LoRA adapter a request applies, from the model store's loras/ folder."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Adapter name (its folder under loras/).")
    scale: float = Field(default=1.0, ge=-4.0, le=4.0, description="Strength: 1 as trained, 0 off; "
                         "beyond +-4 outputs break down, so larger values are refused.")


class GenerationParams(BaseModel):
    """Fully resolved pipeline inputs (no defaults left to fill in)."""

    prompt: str = Field(description="Text prompt.")
    negative_prompt: str = Field(default="", description="Negative prompt; empty means none.")
    width: int = Field(description="Native generation width in pixels (e.g. 1280 for TI2V-5B landscape).")
    height: int = Field(description="Native generation height in pixels (e.g. 704 for TI2V-5B landscape).")
    num_frames: int = Field(description="Frames to generate; k*4+1 for Wan.")
    num_inference_steps: int = Field(description="Denoising steps.")
    guidance_scale: float = Field(description="Classifier-free guidance scale (the high-noise expert's on A14B).")
    guidance_scale_2: float | None = Field(default=None, description="Low-noise expert's guidance scale (A14B only).")
    seed: int = Field(description="Seed of the CPU torch.Generator that draws the initial latents.")
    loras: list[LoraRef] = Field(default=[], description="LoRA adapters applied to this job, with their scales.")


#: Webhook event types (Standard Webhooks ``type``; the names follow OpenAI's ``video.completed``
#: and ``video.failed``). ``video.progress`` is sent at most once per ``progress_interval_s``.
WebhookEvent = Literal["video.completed", "video.failed", "video.canceled", "video.progress"]

#: Sent when a job names no ``webhook_events``: the terminal ones.
DEFAULT_WEBHOOK_EVENTS: tuple[str, ...] = ("video.completed", "video.failed", "video.canceled")


class WebhookSpec(BaseModel):
    """Where a job's webhooks go (checked by the SSRF guard at submit, and again at each delivery)."""

    url: str = Field(description="http(s) URL the events are POSTed to.")
    events: list[WebhookEvent] = Field(default=list(DEFAULT_WEBHOOK_EVENTS), description="Event types to send.")


def file_url(filename: str) -> str:
    """Path, relative to the service root, where a result file is downloaded: ``/files/{filename}``."""
    return f"/files/{filename}"


class JobSpec(BaseModel):
    """What the router hands the generator: one job to run and write."""

    id: str = Field(description="Job id.")
    variant: str = Field(description="Variant name.")
    params: GenerationParams
    output_size: Size = Field(description="Size of the written video (the API size, e.g. 1280x720).")
    filename: str | None = Field(default=None, description="Sanitized output filename, or None for the default name.")
    inputs: JobInputs | None = Field(default=None, description="Decoded media inputs on disk; None for text-only jobs.")
    output_format: OutputFormat = Field(default="mp4", description="Result file format.")
    remixed_from: str | None = Field(default=None, description="Id of the job this one remixes (same parameters, new prompt).")
    preserve_unmasked: bool = Field(
        default=True, description="VACE: copy the source pixels outside the mask into the result (paste-back).")
    webhook: WebhookSpec | None = Field(default=None, description="Signed webhooks for this job's events, if any.")


class ProgressEvent(BaseModel):
    """One progress report from the generator, streamed to the router."""

    phase: Phase
    step: int = Field(default=0, description="Denoising steps completed.")
    total_steps: int = Field(default=0, description="Denoising steps in this job.")
    step_seconds: float | None = Field(default=None, description="Mean wall time of a denoising step so far, seconds.")
    gpu_id: str = Field(description="GPU index of the replica, or 'cpu'.")


class JobResult(BaseModel):
    """The generator's last message for a successful job."""

    filename: str = Field(description="File name in the output folder.")
    size_bytes: int = Field(description="Size of the written file in bytes.")
    width: int
    height: int
    num_frames: int
    fps: int
    pipeline_seconds: float = Field(description="Wall time inside the diffusers pipeline call, seconds.")
    encode_seconds: float = Field(description="Wall time of writing the result file, seconds.")
    output_format: OutputFormat = "mp4"
    gpu_id: str


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

"""The job model: statuses, phases, output formats, specs, progress reports, results, stored
records and the view callers get. Plain pydantic; no Ray, no HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from jobs.inputs import JobInputs
from model_store.variants import OutputKind, Size

#: Result file formats. Videos: ``mp4``; ``webm`` (VP9, yuva420p) and ``png_zip`` (RGBA PNG frames)
#: carry the inpainting mask as alpha, for VACE jobs. Images (image_edit): ``png``, ``webp``, ``jpeg``.
OutputFormat = Literal["mp4", "webm", "png_zip", "png", "webp", "jpeg"]


@dataclass(frozen=True)
class FormatInfo:
    """How one output format is stored and served."""

    extension: str  #: file name suffix, with the dot
    media_type: str  #: HTTP Content-Type (IANA media types: video/mp4, video/webm, application/zip, image/png ...)
    kind: OutputKind  #: what it holds: a video or one image


#: The one table of output formats: extension, media type and kind of each. The first of each kind
#: is that kind's default.
OUTPUT_FORMATS: dict[str, FormatInfo] = {
    "mp4": FormatInfo(".mp4", "video/mp4", "video"),
    "webm": FormatInfo(".webm", "video/webm", "video"),
    "png_zip": FormatInfo(".zip", "application/zip", "video"),
    "png": FormatInfo(".png", "image/png", "image"),
    "webp": FormatInfo(".webp", "image/webp", "image"),
    "jpeg": FormatInfo(".jpg", "image/jpeg", "image"),
}
assert tuple(OUTPUT_FORMATS) == get_args(OutputFormat)

#: Extensions of the files this service writes, in OUTPUT_FORMATS order.
RESULT_EXTENSIONS: tuple[str, ...] = tuple(f.extension for f in OUTPUT_FORMATS.values())


def format_of_filename(filename: str) -> OutputFormat | None:
    """The output format whose extension ``filename`` ends with (case-insensitive), or None."""
    lower = filename.lower()
    name = next((name for name, f in OUTPUT_FORMATS.items() if lower.endswith(f.extension)), None)
    return cast(OutputFormat, name) if name is not None else None


class JobStatus(str, Enum):
    """Lifecycle of a job: queued -> running -> one terminal state."""

    queued = "queued"
    running = "running"
    success = "success"
    error = "error"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (success, error or canceled): no state follows."""
        return self in (JobStatus.success, JobStatus.error, JobStatus.canceled)


class Phase(str, Enum):
    """Where a running job is inside the generator."""

    loading = "loading"
    encoding_prompt = "encoding_prompt"
    denoising = "denoising"
    decoding = "decoding"
    encoding_video = "encoding_video"
    encoding_image = "encoding_image"

    @property
    def writes_file(self) -> bool:
        """Whether the generator is writing the result file (a video or an image)."""
        return self in (Phase.encoding_video, Phase.encoding_image)


class LoraRef(BaseModel):
    """One LoRA adapter a request applies, from the model store's loras/ folder."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Adapter name (its folder under loras/).")
    scale: float = Field(
        default=1.0,
        ge=-4.0,
        le=4.0,
        description="Strength: 1 as trained, 0 off; beyond +-4 outputs break down, so larger values are refused.",
    )


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
    speed: str | None = Field(
        default=None,
        description="Speed profile of the variant's config this job runs (model_store/speed_config.py); None "
        "in jobs stored before profiles existed, which run the variant's default.",
    )


#: Webhook event types (Standard Webhooks ``type``; the names follow OpenAI's ``video.completed``
#: and ``video.failed``). ``video.progress`` is sent at most once per ``progress_interval_s``.
WebhookEvent = Literal["video.completed", "video.failed", "video.canceled", "video.progress"]

#: Sent when a job names no ``webhook_events``: the terminal ones.
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("video.completed", "video.failed", "video.canceled")


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
    remixed_from: str | None = Field(
        default=None, description="Id of the job this one remixes (same parameters, new prompt)."
    )
    preserve_unmasked: bool = Field(
        default=True, description="VACE: copy the source pixels outside the mask into the result (paste-back)."
    )
    webhook: WebhookSpec | None = Field(default=None, description="Signed webhooks for this job's events, if any.")
    owner: str | None = Field(
        default=None, description="Public id of the API key that submitted the job; None on an open service."
    )


class ProgressEvent(BaseModel):
    """One progress report from the generator, streamed to the router."""

    phase: Phase
    step: int = Field(default=0, description="Denoising steps completed.")
    total_steps: int = Field(default=0, description="Denoising steps in this job.")
    step_seconds: float | None = Field(default=None, description="Mean wall time of a denoising step so far, seconds.")
    gpu_id: str = Field(description="GPU index of the replica, or 'cpu'.")
    filename: str | None = Field(
        default=None,
        description="With encoding_video or encoding_image: the result file about to be written, so the router knows "
        "it before it exists (a cancel then removes it whatever the timing).",
    )


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


def job_progress(rec: JobRecord) -> float:
    """0..1: denoising steps fill 0..0.9, the VAE decode reaches 0.9, writing the file 0.95, success 1."""
    if rec.status == JobStatus.success:
        return 1.0
    if rec.status != JobStatus.running:
        return 0.0
    if rec.phase is not None and rec.phase.writes_file:
        return 0.95
    if rec.phase == Phase.decoding:
        return DENOISING_SHARE
    return DENOISING_SHARE * min(rec.step / rec.total_steps, 1.0) if rec.total_steps else 0.0


class JobRecord(BaseModel):
    """One stored job, as the job store keeps it (jobs/store.py). Times are Unix seconds.

    Holds what only the service may see (the idempotency key, the request hash, the inputs
    folder): callers get a ``JobView`` instead.
    """

    seq: int = Field(description="Submission order (FIFO), from the store.")
    id: str
    variant: str
    prompt: str
    spec: JobSpec
    status: JobStatus
    phase: Phase | None = None
    step: int = 0
    total_steps: int = 0
    step_seconds: float | None = Field(default=None, description="Mean denoising step time, seconds.")
    gpu_id: str | None = None
    filename: str | None = None
    file_deleted: bool = False
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    result: dict | None = Field(default=None, description="The JobResult of a successful job, as a dict.")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    owner: str | None = Field(default=None, description="Public id of the submitting API key; None when open.")

    @property
    def has_file(self) -> bool:
        """Whether the job succeeded and its result file has not been deleted."""
        return self.status == JobStatus.success and bool(self.filename) and not self.file_deleted


class JobError(BaseModel):
    """Why a job ended in error or canceled."""

    code: str = Field(description="Stable machine-readable code (jobs/errors.py), e.g. out_of_memory.")
    message: str = Field(description="What went wrong and what to do.")


#: What ``waiting_for_replica`` means, wherever a job's view carries it.
WAITING_FOR_REPLICA = (
    "True for a queued job whose variant has no running generator replica (scaled to zero, one starting): it "
    "waits for one, and eta_seconds includes the replica's expected start."
)


class JobView(BaseModel):
    """A job as callers see it: no server paths, hashes or keys; with live queue position and ETA.

    Built by the job engine from a ``JobRecord``; the HTTP serving code builds its responses from this.
    """

    id: str
    variant: str
    prompt: str
    status: JobStatus
    phase: Phase | None = Field(description="Where a running job is; None unless running.")
    step: int
    total_steps: int
    progress: float = Field(description="0..1, see job_progress.")
    queue_position: int | None = Field(
        default=None, description="1 = next of its variant to start; None unless queued."
    )
    eta_seconds: float | None = Field(default=None, description="Estimated seconds until the file is written.")
    gpu_id: str | None
    attempts: int
    params: GenerationParams
    output_size: Size
    output_format: OutputFormat
    filename: str | None
    file_url: str | None = Field(description="Where to download the result; None unless it exists.")
    error: JobError | None
    inputs: dict | None = Field(description="Summary of the uploads (sizes, formats, fps); None for text-only jobs.")
    webhook: WebhookSpec | None
    remixed_from: str | None
    result: dict | None = Field(description="The JobResult of a successful job, as a dict.")
    created_at: float
    started_at: float | None
    finished_at: float | None
    replayed: bool = Field(default=False, description="True when an Idempotency-Key matched an existing job.")
    waiting_for_replica: bool = Field(default=False, description=WAITING_FOR_REPLICA)

    @classmethod
    def of(
        cls,
        rec: JobRecord,
        queue_position: int | None = None,
        eta_seconds: float | None = None,
        waiting_for_replica: bool = False,
    ) -> JobView:
        spec = rec.spec
        return cls(
            id=rec.id,
            variant=rec.variant,
            prompt=rec.prompt,
            status=rec.status,
            phase=rec.phase if rec.status == JobStatus.running else None,
            step=rec.step,
            total_steps=rec.total_steps,
            progress=job_progress(rec),
            queue_position=queue_position,
            eta_seconds=eta_seconds,
            gpu_id=rec.gpu_id,
            attempts=rec.attempts,
            params=spec.params,
            output_size=spec.output_size,
            output_format=spec.output_format,
            # A running job's record holds the name it is about to write; callers see it once it exists.
            filename=rec.filename if rec.status == JobStatus.success else spec.filename,
            file_url=file_url(rec.filename) if rec.has_file and rec.filename else None,
            error=JobError(code=rec.error_code, message=rec.error_message or "") if rec.error_code else None,
            inputs=spec.inputs.summary if spec.inputs is not None else None,
            webhook=spec.webhook,
            remixed_from=spec.remixed_from,
            result=rec.result,
            created_at=rec.created_at,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            waiting_for_replica=waiting_for_replica,
        )

"""Request and response models of the HTTP API (the /generate family)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.jobs import JobStatus

ApiSize = Literal["1280x720", "720x1280"]


class GenerateRequest(BaseModel):
    """POST /generate body. Unset optional fields take the variant's defaults (configs/<variant>.yaml)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=10_000, description="What the video shows. Required, non-empty.")
    size: ApiSize = Field(description="Output size, WIDTHxHEIGHT: 1280x720 (landscape) or 720x1280 (portrait).")
    filename: str | None = Field(default=None, description="Output file name; sanitized, '.mp4' enforced.")
    variant: str | None = Field(default=None, description="Model variant; default from the app config.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Random seed; random when unset, reported back.")
    num_inference_steps: int | None = Field(default=None, ge=1, description="Denoising steps.")
    num_frames: int | None = Field(default=None, ge=1, description="Frames in the video; must be 4k+1 for Wan.")
    guidance_scale: float | None = Field(default=None, ge=0, le=50, description="Classifier-free guidance scale.")
    negative_prompt: str | None = Field(default=None, max_length=10_000, description="What the video should avoid.")


class GenerateAccepted(BaseModel):
    """202 answer to POST /generate."""

    id: str = Field(description="Job id; poll GET /status/{id}.")
    status: Literal["queued"] = "queued"
    queue_position: int | None = Field(description="1 = next of its variant to start.")
    eta_seconds: float | None = Field(description="Estimated seconds until the video is written; null until measured.")
    gpu_assigned: str | None = Field(default=None, description="Always null at submission; see /status.")


class JobStatusResponse(BaseModel):
    """GET /status/{id} answer."""

    id: str
    status: JobStatus
    variant: str
    prompt: str
    progress: float = Field(ge=0, le=1, description="Fraction done, 0..1: denoising steps fill 0..0.9, decoding 0.9, encoding 0.95, success 1.")
    phase: str | None = Field(description="loading | encoding_prompt | denoising | decoding | encoding_video while running.")
    step: int = Field(description="Denoising steps completed.")
    total_steps: int = Field(description="Denoising steps in this job.")
    queue_position: int | None = Field(description="1 = next of its variant to start; null unless queued.")
    eta_seconds: float | None = Field(description="Estimated seconds until done; null when unknown or finished.")
    gpu_id: str | None = Field(description="GPU index of the replica that ran it, or 'cpu'.")
    seed: int = Field(description="Seed used; resubmit with it to reproduce the video.")
    filename: str | None
    file_url: str | None = Field(description="Where to download the MP4 once status is success.")
    error: dict | None = Field(description="{code, message} when status is error or canceled.")
    timings: dict | None = Field(
        default=None, description="On success: pipeline_seconds (prompt encoding, denoising, VAE decode) and "
        "encode_seconds (MP4), wall time in seconds on the replica.")
    created_at: float = Field(description="Unix seconds.")
    started_at: float | None
    finished_at: float | None


class VideoInfo(BaseModel):
    """One entry of GET /videos."""

    filename: str
    file_url: str
    job_id: str
    size_bytes: int
    created_at: float = Field(description="Unix seconds when the job finished.")


class DeleteJobsResult(BaseModel):
    deleted: list[str] = Field(description="Ids of the removed jobs.")
    canceled: list[str] = Field(description="Ids among them that were queued or running and got canceled first.")
    files_deleted: list[str] = Field(description="Result files removed (delete_files=true).")


class DeleteVideosResult(BaseModel):
    files_deleted: list[str]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. validation_error, queue_full.")
    message: str = Field(description="What went wrong and what to do.")


class ErrorResponse(BaseModel):
    error: ErrorDetail

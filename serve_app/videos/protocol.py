"""Protocol models of the OpenAI-compatible Videos API (/v1/videos), in OpenAI's shapes.

The official ``openai`` package parses these (``openai.types.Video``, ``VideoDeleteResponse``
and its cursor page); the extra fields ``queue_position`` and ``eta_seconds`` are ignored by it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.model import WAITING_FOR_REPLICA


class VideoError(BaseModel):
    code: str = Field(description="Stable machine-readable code, as in the /generate API (e.g. canceled).")
    message: str = Field(description="What went wrong and what to do.")


class Video(BaseModel):
    """OpenAI's video object; ``model`` names the variant."""

    id: str = Field(description="Job id (the same id works on /status/{id}).")
    object: Literal["video"] = "video"
    model: str = Field(description="Variant that generates the video, e.g. ti2v-5b.")
    status: Literal["queued", "in_progress", "completed", "failed"] = Field(
        description="queued; in_progress (running); completed (success); failed (error or canceled)."
    )
    progress: int = Field(ge=0, le=100, description="Percent done, from the same measure as /status progress.")
    created_at: int = Field(description="Unix seconds.")
    completed_at: int | None = Field(default=None, description="Unix seconds when the job ended.")
    expires_at: int | None = Field(
        default=None, description="Unix seconds when the file is purged; null: kept until deleted."
    )
    size: str = Field(description="WIDTHxHEIGHT of the video.")
    seconds: str = Field(description="Duration: num_frames / fps, in seconds.")
    prompt: str | None = None
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    queue_position: int | None = Field(
        default=None, description="1 = next of its variant to start; null unless queued."
    )
    eta_seconds: float | None = Field(
        default=None, description="Estimated seconds until done; null when unknown or ended."
    )
    waiting_for_replica: bool = Field(default=False, description=WAITING_FOR_REPLICA)


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class RemixRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=10_000, description="The new prompt; every other parameter is kept.")

"""Response models of the OpenAI-compatible Images API (openai-python's ``ImagesResponse``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

#: What an image is returned as: a download URL (signed, valid without a key until it expires)
#: or the file's bytes in base64 (OpenAI's ``response_format``).
ResponseFormat = Literal["url", "b64_json"]


class ImageData(BaseModel):
    """One generated image (OpenAI's ``Image``)."""

    url: str | None = Field(default=None, description="Signed absolute download URL, with response_format url.")
    b64_json: str | None = Field(default=None, description="The image file in base64, with response_format b64_json.")
    revised_prompt: str | None = Field(default=None, description="Always null: prompts are used as sent.")


class ImagesResponse(BaseModel):
    """200 answer of /v1/images/edits: OpenAI's fields, and the job behind it (beyond OpenAI's)."""

    created: int = Field(description="Unix seconds when the job was submitted.")
    data: list[ImageData] = Field(description="One image (n = 1).")
    output_format: Literal["png", "webp", "jpeg"] = Field(description="Format of the image file.")
    size: str = Field(description="WIDTHxHEIGHT of the image, pixels.")
    id: str = Field(description="The job's id: GET /status/{id}, /jobs and /videos list it like any other job.")
    model: str = Field(description="The variant that made it.")
    seed: int = Field(description="Seed used; send it again (extra field seed) to reproduce the image.")


class ImageJobAccepted(BaseModel):
    """202 answer of /v1/images/edits when the image is not done yet: the caller asked not to wait
    (``Prefer: respond-async``) or the wait passed ``image_wait_s``. Poll ``status_url``."""

    id: str = Field(description="The job's id.")
    status: Literal["queued", "running"] = Field(description="Where the job is now.")
    status_url: str = Field(description="GET it for progress and, once done, file_url.")

"""Webhook messages and their delivery attempts, as the webhook store keeps them."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field


class DeliveryState(str, Enum):
    """Where a webhook message stands."""

    pending = "pending"  #: being delivered or waiting for a retry
    delivered = "delivered"  #: the receiver answered 2xx
    failed = "failed"  #: given up: refused for good, or retries ran out


class WebhookAttempt(BaseModel):
    """One try at delivering a webhook message. Times are Unix seconds."""

    attempt: int = Field(description="1 for the first try.")
    attempted_at: float = Field(description="Unix seconds when the try started.")
    address: str | None = Field(default=None, description="IP address connected to (after the SSRF check).")
    status_code: int | None = Field(default=None, description="The receiver's HTTP status, if it answered.")
    error: str | None = Field(default=None, description="Why this try did not deliver, if it did not.")
    duration_s: float | None = Field(default=None, description="Seconds from connect to the receiver's answer.")
    next_attempt_at: float | None = Field(default=None, description="When the retry is due; null when none follows.")


class WebhookMessage(BaseModel):
    """One webhook event of a job, with every delivery attempt."""

    id: str = Field(description="The webhook-id header: the same on every attempt, so receivers can deduplicate.")
    job_id: str = Field(description="The job the event is about.")
    event_type: str = Field(description="video.completed, video.failed, video.canceled or video.progress.")
    payload: str = Field(description="The JSON body exactly as signed.")
    state: DeliveryState = Field(description="pending (being delivered or retried), delivered, or failed (gave up).")
    created_at: float = Field(description="Unix seconds when the event happened.")
    attempts: list[WebhookAttempt] = Field(default_factory=list, description="Every delivery attempt, in order.")

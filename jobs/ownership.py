"""Who a request comes from, and what it may see: the owner of every job is the API key that
submitted it; a key sees only its own jobs, an admin key every job.

``Caller`` travels with each call from the ingress to the router; the job engine scopes every
read, cancel, delete and submit by it. Unknown and foreign jobs look the same (``JobNotFound``),
so a key learns nothing of another's jobs, not even that they exist.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

#: The window of the ``jobs_per_hour`` quota, seconds.
QUOTA_WINDOW_S = 3600.0


class Quotas(BaseModel):
    """Limits of one API key; None is no limit (the service-wide ``max_queued_jobs`` still holds)."""

    max_running: int | None = Field(
        default=None, ge=1, description="Jobs of this key on generators at once; more wait in the queue."
    )
    max_queued: int | None = Field(
        default=None, ge=1, description="Jobs of this key waiting at once; past it, 429 quota_exceeded."
    )
    jobs_per_hour: int | None = Field(
        default=None, ge=1, description="Jobs this key submits in any 3600 s; past it, 429 quota_exceeded."
    )


class Caller(BaseModel):
    """The key a request was made with (or the open service's anonymous caller)."""

    key_id: str | None = Field(description="Public id of the API key (its owner id on jobs); None when open.")
    name: str = Field(description="The key's name, e.g. a team.")
    admin: bool = Field(default=False, description="Sees, cancels and deletes every key's jobs.")
    quotas: Quotas = Field(default_factory=Quotas, description="This key's limits.")

    @property
    def scope(self) -> str | None:
        """The owner whose jobs this caller sees; None: every job (admin, or the open service)."""
        return None if self.admin else self.key_id

    def sees(self, owner: str | None) -> bool:
        """Whether a job owned by ``owner`` is visible to this caller."""
        return self.admin or (self.key_id is not None and owner == self.key_id)


#: The caller of a service with no API keys, on a loopback address: sees everything, owns nothing.
OPEN = Caller(key_id=None, name="open", admin=True)

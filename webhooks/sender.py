"""Signed webhooks: a job's events POSTed to its ``webhook_url``, signed per Standard Webhooks,
retried with exponential backoff, and every attempt recorded in the job store.

Signing follows the Standard Webhooks specification (https://www.standardwebhooks.com/):
headers ``webhook-id`` (the same on every retry of one message), ``webhook-timestamp`` (Unix
seconds of this attempt) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 over
``id.timestamp.body`` with the secret's bytes). The ``standardwebhooks`` package (the
specification's reference library) signs, so any receiver library of the specification verifies.

The sender runs inside the router replica, in background tasks: a job's state is written
before its webhook is sent, and a receiver that is slow, down or refused changes nothing about
the job. A message is stored ``pending`` before its first attempt, so a restarted router
resends the terminal events it had not delivered yet (at-least-once).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import secrets
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
from pydantic import BaseModel, Field, field_validator
from standardwebhooks.webhooks import Webhook
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from auth.signed_urls import UrlSigner
from jobs.config import make_private_dir
from jobs.events import JobEvent
from jobs.metrics import MetricsSink
from jobs.model import JobRecord, JobStatus, file_url
from jobs.store import JobStore
from webhooks.guard import (
    DEFAULT_WEBHOOK_PORTS,
    Resolver,
    WebhookHostUnresolved,
    WebhookRefused,
    check_webhook_url,
    parse_networks,
    system_resolve,
)
from webhooks.model import DeliveryState, WebhookAttempt, WebhookMessage
from webhooks.store import WebhookStore

logger = logging.getLogger("ray.serve")

#: The event type a job's terminal status sends.
TERMINAL_EVENTS = {
    JobStatus.success: "video.completed",
    JobStatus.error: "video.failed",
    JobStatus.canceled: "video.canceled",
}
PROGRESS_EVENT = "video.progress"

#: Receiver answers worth retrying: request timeout, rate limited, and server errors.
RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))

USER_AGENT = "wan-serve-webhooks/0.1"


class WebhookConfig(BaseModel):
    """Webhook delivery settings (the ``webhooks:`` block of the app's args in serve_config.yaml).

    The signing secret is not here: it comes from WAN_SERVE_WEBHOOK_SECRET or the data folder.
    """

    allow_networks: list[str] = Field(
        default=[],
        description="CIDR networks webhooks may reach although they are not public (loopback, private, "
        "link-local), e.g. ['10.20.0.0/16'] for an in-cluster receiver. Empty: public addresses only.",
    )
    allow_ports: list[int] = Field(
        default=list(DEFAULT_WEBHOOK_PORTS),
        description="Ports a webhook URL may name for a public receiver; a receiver inside allow_networks "
        "may use any port. Default: 80 and 443.",
    )
    timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds one attempt may take in all (connect, send, and the receiver's status line "
        "and headers): a receiver that dribbles its answer byte by byte is cut off at this deadline.",
    )
    retry_for_s: float = Field(
        default=300.0,
        ge=0,
        description="Seconds after an event that its retries stop (5 minutes: long enough "
        "for a receiver's restart or deploy); no retry starts later than this.",
    )
    first_retry_s: float = Field(
        default=1.0, gt=0, description="Wait before the first retry, seconds; doubles each retry."
    )
    max_retry_interval_s: float = Field(default=60.0, gt=0, description="Longest wait between two attempts, seconds.")
    progress_interval_s: float = Field(
        default=2.0, ge=0, description="Least seconds between two video.progress deliveries of one job."
    )
    max_concurrent: int = Field(default=32, ge=1, description="Deliveries in flight at once, across all jobs.")

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # ValueError names the entry that is not a network
        return value


def load_or_create_secret(path: Path) -> str:
    """The signing secret stored at ``path``, created (``whsec_`` + base64 of 32 random bytes,
    mode 0600) when the file does not exist yet.

    Raises:
        ValueError: the file holds something that is not a Standard Webhooks secret.
    """
    path = Path(path)
    if not path.exists():
        make_private_dir(path.parent)
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
    secret = path.read_text().strip()
    check_secret(secret)
    return secret


def check_secret(secret: str) -> None:
    """Raise ValueError unless ``secret`` is ``whsec_`` + base64 of at least 24 bytes (the
    specification's minimum secret size)."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret must be 'whsec_' followed by base64 (Standard Webhooks)") from None
    if len(key) < 24:
        raise ValueError(f"the webhook secret must hold at least 24 bytes; it holds {len(key)}")


class _Retryable(Exception):
    """An attempt failed in a way worth retrying (connection error, timeout, 408/429/5xx)."""


class WebhookSender:
    """Sends a job's webhook events; owned by the router replica, where the job engine tells it of
    every change (it is a ``jobs.engine.JobObserver``).

    Terminal events are retried until ``retry_for_s`` after the event; progress events get one
    attempt (a later one supersedes them). Every attempt becomes a row of ``webhook_attempts``.

    Args:
        config: delivery settings.
        secret: the Standard Webhooks signing secret (``whsec_`` + base64).
        jobs: the job store, read for a message's job (its URL, at each delivery).
        messages: the webhook store, where messages and attempts are recorded.
        resolve: the host-name resolver of the SSRF guard.
        url_signer: signs the payloads' ``file_url`` (the receiver has no API key); None: a plain path.
    """

    def __init__(
        self,
        config: WebhookConfig,
        secret: str,
        jobs: JobStore,
        messages: WebhookStore,
        resolve: Resolver = system_resolve,
        url_signer: UrlSigner | None = None,
        metrics: MetricsSink | None = None,
    ) -> None:
        check_secret(secret)
        self.metrics = metrics
        self.url_signer = url_signer
        self.config = config
        self.jobs = jobs
        self.store = messages
        self._resolve = resolve
        self._signer = Webhook(secret)
        # trust_env=False: a proxy from the environment would bypass the address pinning.
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=config.timeout_s)
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._tasks: set[asyncio.Task] = set()
        self._in_flight: set[str] = set()  # message ids being delivered by this sender
        self._last_progress: dict[str, float] = {}

    # ---- what to send -----------------------------------------------------------------------

    def job_changed(self, rec: JobRecord, event: JobEvent) -> None:
        """The job engine's hook: ``notify``."""
        self.notify(rec, event)

    def jobs_deleted(self, ids: list[str]) -> None:
        """The job engine's hook: deleted jobs take their webhook records with them."""
        self.store.delete_for_jobs(ids)

    def notify(self, rec: JobRecord, event: JobEvent) -> None:
        """Queue the webhook (if any) for ``rec``'s new state; ``event`` is the job's progress event.

        Returns at once: delivery happens in a background task.
        """
        hook = rec.spec.webhook
        if hook is None:
            return
        if rec.status.terminal:
            self._last_progress.pop(rec.id, None)
            kind = TERMINAL_EVENTS[rec.status]
            if kind in hook.events:
                self._send_after_commit(self._message(rec, kind, event), retry=True)
        elif rec.status == JobStatus.running and PROGRESS_EVENT in hook.events:
            now = time.monotonic()
            if now - self._last_progress.get(rec.id, -1e18) >= self.config.progress_interval_s:
                self._last_progress[rec.id] = now
                self._send_after_commit(self._message(rec, PROGRESS_EVENT, event), retry=False)

    def _message(self, rec: JobRecord, kind: str, event: JobEvent) -> WebhookMessage:
        data = {k: v for k, v in event.as_dict().items() if k not in ("id", "event")}
        data = {"id": rec.id, "object": "video", "variant": rec.variant, **data}
        if data.get("filename"):
            path = file_url(data["filename"])
            data["file_url"] = self.url_signer.sign(path) if self.url_signer else path
        body = {"type": kind, "timestamp": datetime.now(timezone.utc).isoformat(), "data": data}
        message = WebhookMessage(
            id=f"msg_{uuid.uuid4().hex}",
            job_id=rec.id,
            event_type=kind,
            payload=json.dumps(body, separators=(",", ":")),
            state=DeliveryState.pending,
            created_at=time.time(),
        )
        self.store.add_webhook_message(message.id, message.job_id, message.event_type, message.payload)
        return message

    def resume(self) -> int:
        """Send the terminal messages a previous router left ``pending``, however long ago: each gets
        at least one attempt now, and retries while its window lasts. Pending progress messages are
        superseded and marked ``failed``. A message this sender already has in flight is not sent
        twice. Returns how many were resumed."""
        resumed = 0
        for message in self.store.webhook_messages(state=DeliveryState.pending):
            rec = self.jobs.get(message.job_id)
            if rec is None or rec.spec.webhook is None or message.event_type == PROGRESS_EVENT:
                self.store.set_webhook_state(message.id, DeliveryState.failed)
            elif self._spawn(message, retry=True):
                resumed += 1
        return resumed

    def _send_after_commit(self, message: WebhookMessage, retry: bool) -> None:
        """Deliver once the transaction that stored ``message`` (with its job's change) commits."""
        self.store.db.on_commit(lambda: self._spawn(message, retry))

    def _spawn(self, message: WebhookMessage, retry: bool) -> bool:
        """Start delivering ``message`` unless it already is; returns whether it started."""
        if message.id in self._in_flight:
            return False
        self._in_flight.add(message.id)
        task = asyncio.create_task(self._deliver(message, retry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._in_flight.discard(message.id))
        return True

    async def aclose(self) -> None:
        """Stop delivering (pending messages stay pending in the store for the next router)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    # ---- how it is sent ---------------------------------------------------------------------

    async def _deliver(self, message: WebhookMessage, retry: bool) -> None:
        rec = self.jobs.get(message.job_id)
        if rec is None or rec.spec.webhook is None:
            return
        url = rec.spec.webhook.url
        deadline = message.created_at + self.config.retry_for_s
        attempt_no = len(message.attempts)
        last_row: list[int] = []

        def stop(state: RetryCallState) -> bool:
            return not retry or time.time() + state.upcoming_sleep > deadline

        def before_sleep(state: RetryCallState) -> None:
            if last_row:
                self.store.set_next_attempt(last_row[-1], time.time() + state.upcoming_sleep)

        retrying = AsyncRetrying(
            stop=stop,
            before_sleep=before_sleep,
            reraise=True,
            retry=retry_if_exception_type(_Retryable),
            wait=wait_exponential_jitter(
                multiplier=self.config.first_retry_s,
                max=self.config.max_retry_interval_s,
                jitter=self.config.first_retry_s / 2,
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempt_no += 1
                    async with self._slots:
                        delivered = await self._attempt(message, url, attempt_no, last_row)
            self.store.set_webhook_state(message.id, DeliveryState.delivered if delivered else DeliveryState.failed)
        except _Retryable:
            self.store.set_webhook_state(message.id, DeliveryState.failed)
            logger.warning(
                "webhook %s of job %s not delivered after %d attempts", message.id, message.job_id, attempt_no
            )
        except asyncio.CancelledError:
            raise  # router stopping: the message stays pending for the next one
        except Exception:  # a bug here must not take the router down
            logger.exception("webhook %s of job %s failed", message.id, message.job_id)
            self.store.set_webhook_state(message.id, DeliveryState.failed)

    async def _attempt(self, message: WebhookMessage, url: str, attempt_no: int, rows: list[int]) -> bool:
        """One POST. Returns True when delivered, False when refused for good.

        Raises:
            _Retryable: a connection error, a timeout, or a 408, 429 or 5xx answer.
        """
        started = time.time()
        result = WebhookAttempt(attempt=attempt_no, attempted_at=started)
        delivered = retryable = False
        try:
            # Checked again at every attempt, and the connection pinned to the address checked.
            target = await asyncio.to_thread(
                check_webhook_url, url, self.config.allow_networks, self._resolve, self.config.allow_ports
            )
            result.address = target.address
            # httpx's timeout is per read; the attempt as a whole gets timeout_s.
            result.status_code = status = await asyncio.wait_for(self._post(target, message), self.config.timeout_s)
            delivered = 200 <= status < 300
            if not delivered:
                retryable = status in RETRY_STATUS
                result.error = f"the receiver answered HTTP {status}" + (
                    "; redirects are not followed" if 300 <= status < 400 else ""
                )
        except WebhookHostUnresolved as exc:  # DNS may come back
            retryable, result.error = True, exc.message
        except WebhookRefused as exc:
            result.error = exc.message
        except (httpx.TimeoutException, asyncio.TimeoutError):
            retryable, result.error = True, f"no answer within {self.config.timeout_s:g} s"
        except httpx.TransportError as exc:
            retryable, result.error = True, f"could not connect ({type(exc).__name__})"
        result.duration_s = time.time() - started
        rows.append(self.store.add_webhook_attempt(message.id, message.job_id, result))
        if self.metrics is not None:
            outcome = "delivered" if delivered else "retryable" if retryable else "refused"
            self.metrics.inc("webhook_deliveries_total", {"outcome": outcome})
        if retryable:
            raise _Retryable(result.error)
        return delivered

    async def _post(self, target, message: WebhookMessage) -> int:
        """POST the signed message to ``target.address``; returns the HTTP status. The body of
        the answer is never read."""
        now = int(time.time())
        signature = self._signer.sign(message.id, datetime.fromtimestamp(now, timezone.utc), message.payload)
        default_port = 443 if target.scheme == "https" else 80
        host_header = target.host if ":" not in target.host else f"[{target.host}]"
        if target.port != default_port:
            host_header += f":{target.port}"
        pinned = httpx.URL(target.url).copy_with(host=target.address, port=target.port)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": host_header,
            "webhook-id": message.id,
            "webhook-timestamp": str(now),
            "webhook-signature": signature,
        }
        # TLS still verifies the certificate against the URL's host name (SNI), not the address.
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        async with self._client.stream(
            "POST", pinned, content=message.payload.encode(), headers=headers, extensions=extensions
        ) as response:
            return response.status_code

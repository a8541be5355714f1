"""Routes of the /generate API: submit, status, live progress, cancel, delete, files.

Thin: each route reads its request and hands it to ``JobService`` (serving.py), the job store's
reads (serve_app/job_reads.py) or, for changes, the router.
``GenerateRoutes`` is a base of the ingress deployment (serve_app/ingress.py), whose
``serve.ingress`` binds these methods to the replica.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from jobs.errors import FileNotFoundForJob, JobNotFound, Unauthenticated, ValidationFailed, unwrap
from jobs.filenames import sanitize_filename
from jobs.files import ResultFiles
from jobs.model import OUTPUT_FORMATS, JobStatus, file_url, format_of_filename
from jobs.ownership import Caller
from media.previews import spritesheet_jpeg, thumbnail_jpeg
from serve_app.authentication import current_caller, optional_caller, websocket_caller, websocket_token
from serve_app.downloads import preview, result_response
from serve_app.errors import ERROR_RESPONSES
from serve_app.event_streams import StreamSlots, TooManyStreams
from serve_app.generate.protocol import (
    DeleteJobsResult,
    DeleteVideosResult,
    GenerateAccepted,
    JobList,
    JobStatusResponse,
    VideoInfoList,
    WebhookDeliveries,
)
from serve_app.generate.serving import JobService, idempotency
from serve_app.job_reads import JobReads
from serve_app.request_body import generate_openapi, read_generate_request

router = APIRouter()

#: Seconds one events call waits for something new; an SSE keep-alive comment
#: goes out after each empty wait, so proxies with idle timeouts of 30 s or more keep the stream.
EVENTS_WAIT_S = 15.0
#: WebSocket close code "Try Again Later" (RFC 6455 registry, IANA), for a refused stream.
WS_TRY_AGAIN_LATER = 1013
#: WebSocket close codes of this service (4000-4999 are for applications): HTTP's 401 and 404.
WS_UNAUTHENTICATED = 4401
WS_NOT_FOUND = 4404

#: The caller of a route that needs a key (when auth is on): a FastAPI dependency.
CallerDep = Depends(current_caller)


def _last_event_id(header: str | None) -> int:
    try:
        return max(int(header), 0) if header else 0
    except ValueError:
        raise ValidationFailed(
            f"Last-Event-ID must be an event id (an integer), got {header!r}", field="Last-Event-ID"
        ) from None


def _split(csv: str | None) -> list[str]:
    return [part for part in (csv or "").split(",") if part]


class GenerateRoutes:
    """The /generate family of routes. Needs ``router`` (the router's handle, for writes), ``reads``
    (the job store's reads), ``jobs``, ``streams``
    (the replica's StreamSlots), and ``results``, ``downloads`` and ``file_url_ttl_s``
    (serve_app/downloads.py)."""

    router: Any
    reads: JobReads
    jobs: JobService
    streams: StreamSlots
    results: ResultFiles
    downloads: str
    file_url_ttl_s: float

    @router.post(
        "/generate",
        status_code=202,
        response_model=GenerateAccepted,
        responses=ERROR_RESPONSES,
        openapi_extra=generate_openapi(),
    )
    async def generate(self, request: Request, response: Response, caller: Caller = CallerDep) -> GenerateAccepted:
        """Queue a video generation job: JSON for text-only jobs, multipart/form-data with files
        (image, last_image, video, mask, reference_images) for the others.

        Uploads are decoded and checked before anything is queued; the job (and its decoded
        inputs) are stored before this answers 202. With an ``Idempotency-Key`` header, the
        same key and request return the same job (header ``Idempotent-Replayed: true``).
        """
        req, uploads = await read_generate_request(request)
        key = idempotency(request.url.path, request.headers.get("idempotency-key"), req, uploads)
        # Shielded: once the request is read, a client that goes away does not stop it being stored.
        view = await asyncio.shield(self.jobs.submit(req, uploads, idempotent=key, caller=caller))
        if view.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return self.jobs.accepted(view)

    @router.get("/status/{job_id}", response_model=JobStatusResponse, responses=ERROR_RESPONSES)
    async def status(self, job_id: str, caller: Caller = CallerDep) -> Response:
        """Status, progress (0..1), ETA, and the file URL once done (signed: it works without a key
        until it expires)."""
        # The busiest route: serialized once here, not validated again against response_model.
        body = self.jobs.status(await self.reads.status(job_id, caller=caller))
        return Response(body.model_dump_json(), media_type="application/json")

    @router.get("/jobs", response_model=JobList, responses=ERROR_RESPONSES)
    async def list_jobs(
        self,
        after: str | None = Query(default=None, description="Id of the last job of the previous page."),
        limit: int = Query(default=20, ge=1, le=100, description="Jobs per page."),
        order: Literal["asc", "desc"] = Query(default="desc", description="By submission time."),
        caller: Caller = CallerDep,
    ) -> JobList:
        """The caller's jobs (an admin key's: every job), newest first by default, a page at a time
        (``has_more``, ``last_id``)."""
        views, more = await self.reads.page(after, limit, order == "desc", caller=caller)
        data = [self.jobs.status(v) for v in views]
        return JobList(data=data, has_more=more, last_id=data[-1].id if data else None)

    @router.post("/jobs/{job_id}/cancel", response_model=JobStatusResponse, responses=ERROR_RESPONSES)
    async def cancel(self, job_id: str, caller: Caller = CallerDep) -> JobStatusResponse:
        """Cancel a queued or running job; it ends `canceled` and writes no file. The job stays listed."""
        return self.jobs.status(await self.router.cancel.remote(job_id, caller=caller))

    @router.get("/jobs/{job_id}/events", responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}})
    async def job_events(self, job_id: str, request: Request, caller: Caller = CallerDep) -> StreamingResponse:
        """Server-Sent Events: one event per phase change, per denoising step and per queue move,
        then the terminal event, after which the stream ends. Each has ``id``, ``event`` (queued,
        phase, step, terminal) and JSON ``data`` (status, phase, step, total_steps, progress,
        eta_seconds, queue_position). Reconnect with ``Last-Event-ID`` to resume after that event."""
        after = _last_event_id(request.headers.get("last-event-id"))
        first = await self.reads.events(job_id, after, 0.0, caller=caller)  # 404 before the stream starts
        hold = self.streams.acquire(caller.key_id)  # 429 past the replica's or the key's limit of open streams

        async def stream() -> AsyncIterator[str]:
            batch, seen = first, after
            try:
                while True:
                    for event in batch.events:
                        seen = event.id
                        yield f"id: {event.id}\nevent: {event.event}\ndata: {json.dumps(event.as_dict())}\n\n"
                    if batch.done:
                        return
                    if not batch.events:
                        yield ": keep-alive\n\n"
                    batch = await self.reads.events(job_id, seen, EVENTS_WAIT_S, caller=caller)
            finally:
                hold.release()

        # The background task releases the slot too when the stream never started (client gone).
        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(hold.release),
        )

    @router.websocket("/ws/jobs/{job_id}")
    async def job_events_ws(self, websocket: WebSocket, job_id: str, last_event_id: int = 0) -> None:
        """The same events as /jobs/{id}/events, one JSON message each; the server closes the
        socket (code 1000) after the terminal event, with 4404 for an unknown job, 4401 without a
        valid API key, or 1013 (try again later) when the replica or the key holds its limit of
        open streams. The key goes in the Authorization header or, from a browser, as the
        subprotocol ``wan-serve.bearer.<key>`` offered beside ``wan-serve``."""
        token, subprotocol = websocket_token(websocket)
        await websocket.accept(subprotocol=subprotocol)
        try:
            caller = await websocket_caller(token)
        except Unauthenticated as exc:
            await websocket.close(code=WS_UNAUTHENTICATED, reason=exc.message[:120])
            return
        try:
            hold = self.streams.acquire(caller.key_id)
        except TooManyStreams as exc:
            await websocket.close(code=WS_TRY_AGAIN_LATER, reason=exc.message[:120])
            return
        after = last_event_id
        try:
            while True:
                try:
                    batch = await self.reads.events(job_id, after, EVENTS_WAIT_S, caller=caller)
                except Exception as exc:
                    inner = unwrap(exc)
                    if isinstance(inner, JobNotFound):
                        await websocket.close(code=WS_NOT_FOUND, reason=inner.message[:120])
                        return
                    raise
                for event in batch.events:
                    after = event.id
                    await websocket.send_json(event.as_dict())
                if batch.done:
                    await websocket.close(code=1000)
                    return
        except WebSocketDisconnect:
            return
        finally:
            hold.release()

    @router.get("/jobs/{job_id}/webhooks", response_model=WebhookDeliveries, responses=ERROR_RESPONSES)
    async def webhook_deliveries(self, job_id: str, caller: Caller = CallerDep) -> WebhookDeliveries:
        """The job's webhook and every message sent for it, each with its delivery attempts."""
        view = await self.reads.status(job_id, caller=caller)
        return self.jobs.webhook_deliveries(view, await self.reads.webhook_deliveries(job_id, caller=caller))

    @router.get("/jobs/lookup", response_model=JobStatusResponse, responses=ERROR_RESPONSES)
    async def lookup(
        self, prompt: str = Query(min_length=1, description="Exact prompt text."), caller: Caller = CallerDep
    ) -> JobStatusResponse:
        """The caller's newest job submitted with exactly this prompt."""
        return self.jobs.status(await self.reads.lookup(prompt, caller=caller))

    @router.delete("/jobs", response_model=DeleteJobsResult, responses=ERROR_RESPONSES)
    async def delete_jobs(
        self,
        ids: str | None = Query(default=None, description="Comma-separated job ids."),
        status: JobStatus | None = Query(default=None, description="Every job in this status."),
        all: bool = Query(default=False, description="Every job."),
        delete_files: bool = Query(default=False, description="Also delete the jobs' result files."),
        caller: Caller = CallerDep,
    ) -> DeleteJobsResult:
        """Cancel the selected queued and running jobs, then remove the selected jobs: of the
        caller's own (every key's for an admin key)."""
        if not (ids or status or all):
            raise ValidationFailed(
                "say which jobs: ids=a,b or status=queued|running|success|error|canceled or all=true"
            )
        result = await self.router.delete_jobs.remote(_split(ids) or None, status, all, delete_files, caller=caller)
        return DeleteJobsResult(**result)

    @router.get("/videos", response_model=VideoInfoList, responses=ERROR_RESPONSES)
    async def videos(
        self,
        after: str | None = Query(default=None, description="Job id of the last video of the previous page."),
        limit: int = Query(default=20, ge=1, le=100, description="Videos per page."),
        caller: Caller = CallerDep,
    ) -> VideoInfoList:
        """The caller's result videos still on disk, oldest first, a page at a time."""
        views, more = await self.reads.videos(after, limit, caller=caller)
        data = [self.jobs.video(v) for v in views]
        return VideoInfoList(data=data, has_more=more, last_id=data[-1].job_id if data else None)

    @router.delete("/videos", response_model=DeleteVideosResult, responses=ERROR_RESPONSES)
    async def delete_videos(
        self,
        filenames: str | None = Query(default=None, description="Comma-separated file names."),
        ids: str | None = Query(default=None, description="Comma-separated job ids."),
        all: bool = Query(default=False, description="Every video of the caller's (every key's for an admin key)."),
        caller: Caller = CallerDep,
    ) -> DeleteVideosResult:
        """Delete result files; their jobs stay, with file_url null."""
        if not (filenames or ids or all):
            raise ValidationFailed("say which videos: filenames=a.mp4,b.mp4 or ids=a,b or all=true")
        result = await self.router.delete_videos.remote(
            _split(filenames) or None, _split(ids) or None, all, caller=caller
        )
        return DeleteVideosResult(**result)

    @router.get(
        "/files/{filename}",
        response_class=FileResponse,
        responses={
            **ERROR_RESPONSES,
            200: {"content": {"video/mp4": {}, "video/webm": {}, "application/zip": {}, "image/jpeg": {}}},
        },
    )
    async def files(
        self,
        filename: str,
        request: Request,
        expires: str | None = Query(default=None, description="Of a signed URL (file_url): when it expires."),
        signature: str | None = Query(default=None, description="Of a signed URL (file_url): its HMAC."),
        variant: Literal["file", "thumbnail", "spritesheet"] = Query(
            default="file",
            description="file: the result itself; thumbnail: its middle frame (JPEG); spritesheet: up to "
            "16 evenly spaced frames in a 4-column grid (JPEG).",
        ),
    ) -> Response:
        """Download a result file this service wrote (nothing else is served): MP4, WebM or zip.
        With the signed URL from ``file_url`` no key is needed (for a browser or a third party);
        without it, the file's own key (or an admin key)."""
        fmt = OUTPUT_FORMATS[format_of_filename(filename) or "mp4"]
        name = sanitize_filename(filename, fmt.extension)
        if self.jobs.signer.valid(file_url(name), expires, signature):
            safe = await self.reads.check_file(name)
        else:
            caller = await optional_caller(request)
            if caller is None or expires or signature:  # a bad or expired signature is no key either
                raise FileNotFoundForJob(
                    f"no video named {name!r} for this key, or its signed URL has expired; GET /status/{{id}} "
                    "gives a fresh file_url"
                )
            safe = await self.reads.check_file(name, caller=caller)
        if variant == "file":
            return result_response(self.results, safe, fmt.media_type, request, self.downloads, self.file_url_ttl_s)
        make = thumbnail_jpeg if variant == "thumbnail" else spritesheet_jpeg
        return Response(await asyncio.to_thread(preview, make, self.results, safe), media_type="image/jpeg")

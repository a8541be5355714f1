"""Routes of the variants API: GET /variants and OpenAI's GET /v1/models.

``VariantsRoutes`` is a base of the ingress deployment (serve_app/ingress.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Response
from ray import serve

from deployments.replica_status import GeneratorStatus, generator_statuses, scales_to_zero
from serve_app.authentication import current_caller
from serve_app.errors import ERROR_RESPONSES
from serve_app.job_reads import JobReads
from serve_app.metrics_text import CONTENT_TYPE, render
from serve_app.variants.protocol import ModelList, VariantList
from serve_app.variants.serving import VariantsService

# Deployed variants and queue lengths are no one's secret, but not for the public either: a key.
router = APIRouter(dependencies=[Depends(current_caller)], responses={401: ERROR_RESPONSES[401]})


class VariantsRoutes:
    """The variants routes. Needs ``catalog`` (a VariantsService), ``router`` (the router's handle)
    and ``reads`` (the job store's reads)."""

    catalog: VariantsService
    router: Any
    reads: JobReads

    async def _statuses(self) -> dict[str, GeneratorStatus]:
        app_name = serve.get_replica_context().app_name
        variants = self.catalog.jobs.variants
        return await asyncio.to_thread(generator_statuses, app_name, sorted(variants), scales_to_zero(variants))

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."}},
    )
    async def metrics(self) -> Response:
        """Jobs submitted and ended (by variant, status and error code) since the router started,
        queued and running jobs, and target and live replicas per variant, in Prometheus' text
        format. The per-job histograms are in Ray's metrics export (docs/metrics.md)."""
        snapshot = await self.router.metrics_snapshot.remote()
        return Response(render(snapshot), media_type=CONTENT_TYPE)

    @router.get("/variants", response_model=VariantList)
    async def variants(self) -> VariantList:
        """Every deployed variant: task, sizes, frame limits, defaults, uploads it takes, output
        formats, LoRA adapters, and whether a generator replica runs it."""
        statuses, load = await asyncio.gather(self._statuses(), self.reads.load(sorted(self.catalog.jobs.variants)))
        return await asyncio.to_thread(self.catalog.catalog, statuses, load)

    @router.get("/v1/models", response_model=ModelList, tags=["openai"])
    async def models(self) -> ModelList:
        """OpenAI ``models.list``: each deployed variant, with ``owned_by``, its task and the files it takes."""
        return self.catalog.models(await self._statuses())

"""The HTTP ingress deployment: one FastAPI app made of each API's routes, bound to the replica by
``serve.ingress``, plus liveness, readiness and the web studio at ``/``.

The API docs (/docs, /redoc) load Swagger UI and ReDoc from this app, not from a CDN
(``fastapi_offline`` ships them), so they work on an air-gapped cluster."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import SecretStr
from ray import serve
from ray.serve.handle import DeploymentHandle

from auth.signed_urls import DEFAULT_FILE_URL_TTL_S, UrlSigner
from deployments.replica_status import GeneratorWatch, generator_statuses, replica_start_s, scales_to_zero
from jobs.config import DataLayout
from jobs.files import ResultFiles
from jobs.objects import ObjectStore
from jobs.ownership import Caller
from jobs.reader import replica_start_delay
from model_store.settings import StoreSettings
from model_store.variants import VariantConfig
from serve_app import errors
from serve_app.authentication import Authenticator, check_listen, optional_caller
from serve_app.body_limit import BodyLimit
from serve_app.event_streams import StreamSlots
from serve_app.generate import routes as generate_routes
from serve_app.generate.routes import GenerateRoutes
from serve_app.generate.serving import JobService
from serve_app.images import routes as images_routes
from serve_app.images.routes import ImagesRoutes
from serve_app.images.serving import DEFAULT_IMAGE_WAIT_S, ImagesService
from serve_app.job_reads import JobReads
from serve_app.studio import routes as studio_routes
from serve_app.studio.routes import StudioRoutes
from serve_app.variants import routes as variants_routes
from serve_app.variants.routes import VariantsRoutes
from serve_app.variants.serving import VariantsService
from serve_app.videos import routes as videos_routes
from serve_app.videos.routes import VideosRoutes
from serve_app.videos.serving import VideosService

logger = logging.getLogger("ray.serve")

api = FastAPIOffline(
    title="wan-serve",
    summary="Wan 2.2 video generation and Qwen-Image-Edit image editing over HTTP: submit a prompt, poll "
    "progress, download the result.",
    version="0.1.0",
)
errors.install(api)

# The body bound (serve_app/body_limit.py); Ray Serve's proxy runs it too, when configured to.
api.add_middleware(BodyLimit)

probes = APIRouter()


class HealthRoutes:
    """Liveness and readiness, open to all (load balancers and Kubernetes probes have no key).
    Needs ``jobs`` (for the deployed variants) and ``auth``."""

    jobs: JobService
    auth: Authenticator

    @probes.get("/health")
    async def health(self) -> dict:
        """Liveness: the HTTP process answers; and whether it runs ``open`` (no API keys, loopback
        only) or needs ``api_keys`` (the key count is at most 5 s old; while the router does not
        answer, what this replica last learned, after 0.5 s at most). No model work."""
        return {"status": "ok", "auth": "api_keys" if await self.auth.required_soon() else "open"}

    @probes.get("/ready", responses={503: {"description": "Some variant has no running generator replica."}})
    async def ready(self, caller: Caller | None = Depends(optional_caller)) -> Response:
        """Readiness: every configured variant has at least one running generator replica. Without a
        valid key (when keys are needed) only ``status``; with one, each variant's replicas too."""
        app_name = serve.get_replica_context().app_name
        statuses = await asyncio.to_thread(
            generator_statuses, app_name, sorted(self.jobs.variants), scales_to_zero(self.jobs.variants)
        )
        ready = all(st.ready for st in statuses.values())
        body: dict = {"status": "ready" if ready else "not_ready"}
        if caller is not None:
            body["variants"] = {name: st.model_dump(exclude_none=True) for name, st in statuses.items()}
        return JSONResponse(body, status_code=200 if ready else 503)


for _routes in (
    generate_routes.router,
    videos_routes.router,
    images_routes.router,
    variants_routes.router,
    probes,
    studio_routes.router,
):
    api.include_router(_routes)
studio_routes.mount(api)


#: Requests one ingress replica serves at once (Ray Serve's max_ongoing_requests); live event
#: streams may hold at most AppArgs.max_event_streams of them.
INGRESS_MAX_ONGOING_REQUESTS = 200


def serve_listen_host() -> str:
    """The host Ray Serve's HTTP proxies listen on (``http_options.host``).

    Read from the Serve controller's client, which Ray does not document as public; if it cannot
    be read, "0.0.0.0" (every address), so that keys are required rather than silently not.
    """
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        return str(client.http_config.host) if client is not None else "0.0.0.0"
    except Exception:  # an unknown listen address must not mean an open service
        logger.warning("could not read Ray Serve's http_options.host; requiring API keys")
        return "0.0.0.0"


@serve.deployment(max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress(GenerateRoutes, VideosRoutes, ImagesRoutes, VariantsRoutes, HealthRoutes, StudioRoutes):
    """Validates requests, reads jobs from the job store, forwards changes to the router, serves
    result files and the web studio.

    Args:
        router: the router deployment's handle.
        variants: the deployed variants by name; ``default_variant`` for requests naming none.
        layout: the data folder.
        storage_url: the object store of inputs and results (jobs/objects.py); None: the data folder.
        downloads: how results are downloaded from a bucket: proxy or presigned (serve_app/downloads.py).
        job_store_url: the job store's database, which this replica reads (serve_app/job_reads.py);
            None: the SQLite file in the data folder.
        webhook_allow_networks: networks the webhook SSRF guard admits; webhook_allow_ports the
            ports it admits for public receivers (default 80, 443).
        retention_days: sets ``expires_at`` of /v1/videos objects; None: kept until deleted.
        model_dir: the model store (LoRA adapters); None: WAN_SERVE_MODEL_DIR or ./models.
        max_event_streams: SSE and WebSocket streams this replica keeps open at once;
            max_event_streams_per_key of them for one API key.
        url_signing_key: the HMAC key of signed download URLs (auth/signed_urls.py); file_url_ttl_s
            how long one stays valid.
        image_wait_s: how long a synchronous /v1/images request waits for its job, seconds.

    Raises:
        AuthRequired: Serve listens beyond loopback and no API key exists.
    """

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits an async constructor
        self,
        router: DeploymentHandle,
        variants: dict[str, VariantConfig],
        default_variant: str,
        layout: DataLayout,
        webhook_allow_networks: list[str] | None = None,
        webhook_allow_ports: list[int] | None = None,
        retention_days: float | None = None,
        model_dir: str | None = None,
        max_event_streams: int = 100,
        max_event_streams_per_key: int = 20,
        url_signing_key: bytes = b"",
        file_url_ttl_s: float = DEFAULT_FILE_URL_TTL_S,
        image_wait_s: float = DEFAULT_IMAGE_WAIT_S,
        storage_url: str | None = None,
        downloads: str = "proxy",
        job_store_url: SecretStr | None = None,
    ) -> None:
        self.router = router
        host = serve_listen_host()
        check_listen(host, await router.key_count.remote())
        self.auth = Authenticator(router, host, await router.key_count.remote(include_revoked=True))
        if not await self.auth.required():
            logger.warning(
                "wan-serve runs OPEN on %s: no API keys exist, so anyone on this machine can use it. "
                "`wan-serve keys create --name NAME` turns keys on.",
                host,
            )
        self.layout = layout
        self.objects = ObjectStore(storage_url or layout.data_dir)
        self.results = ResultFiles(self.objects)
        # Which variants have a running replica, for the ETA of a job waiting on a scale-up.
        self.replicas = GeneratorWatch(serve.get_replica_context().app_name, sorted(variants))
        self._replica_watch = asyncio.create_task(self.replicas.run())
        self.reads = JobReads(
            (job_store_url.get_secret_value() if job_store_url else None) or str(layout.jobs_db),
            self.objects,
            {name: cfg.deployment.max_jobs for name, cfg in variants.items()},
            replica_start_delay(replica_start_s(variants), self.replicas.replica_running),
        )
        self.downloads = downloads
        self.file_url_ttl_s = file_url_ttl_s
        store = StoreSettings(model_dir=Path(model_dir)) if model_dir else StoreSettings()
        self.jobs = JobService(
            router,
            variants,
            default_variant,
            self.objects,
            webhook_allow_networks,
            store=store,
            webhook_allow_ports=webhook_allow_ports,
            signer=UrlSigner(url_signing_key, file_url_ttl_s) if url_signing_key else None,
            reads=self.reads,
        )
        self.videos = VideosService(self.jobs, retention_days)
        self.images = ImagesService(self.jobs, self.reads, self.results, image_wait_s)
        self.catalog = VariantsService(self.jobs, deployed_at=time.time())
        self.streams = StreamSlots(max_event_streams, max_event_streams_per_key)

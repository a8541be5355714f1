"""Routes of the web studio: the page at ``/`` and its assets under ``/studio/``.

The page is static files (no build step); only its ``<base href>`` is filled in per request,
from the ASGI ``root_path``, so the studio's relative API calls work under any Ray Serve
route prefix. ``StudioRoutes`` is a base of the ingress deployment (serve_app/ingress.py).
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: The studio's files: index.html, studio.css and the JavaScript modules.
STATIC_DIR = Path(__file__).parent / "static"
#: URL path of the assets, relative to the app's root.
ASSETS_PATH = "/studio"
#: The page may load and call only this service: no CDN, no third-party script, so it works on an
#: air-gapped cluster and an injected script cannot send data elsewhere. blob: is for upload previews.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
_INDEX = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

router = APIRouter(include_in_schema=False)


class StudioRoutes:
    """The studio's page. Needs nothing of the ingress."""

    @router.get("/", response_class=HTMLResponse)
    async def studio(self, request: Request) -> HTMLResponse:
        """The studio page, with ``<base href>`` set to this app's root."""
        root = str(request.scope.get("root_path") or "").rstrip("/") + "/"
        page = _INDEX.replace("{{base}}", html.escape(root, quote=True))
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": CONTENT_SECURITY_POLICY}
        return HTMLResponse(page, headers=headers)


def mount(app: FastAPI) -> None:
    """Serve the studio's assets under ASSETS_PATH."""
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="studio")

"""The package layering, read from the source: who may import whom (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Package -> top-level modules it must never import.
FORBIDDEN = {
    "jobs": {"ray", "fastapi", "starlette", "deployments", "serve_app", "webhooks", "media"},
    "media": {"ray", "fastapi", "starlette", "deployments", "serve_app", "webhooks"},
    "webhooks": {"ray", "fastapi", "starlette", "deployments", "serve_app", "media"},
    "model_store": {"ray", "fastapi", "starlette", "deployments", "serve_app", "webhooks", "media", "jobs"},
    "deployments": {"fastapi", "starlette", "serve_app"},
    # API keys and signed URLs: plain Python over the job store's database.
    "auth": {"ray", "fastapi", "starlette", "deployments", "serve_app", "webhooks", "media"},
    # The client runs on people's machines: HTTP only, nothing of the server.
    "wan_client": {"ray", "fastapi", "starlette", "torch", "diffusers", "jobs", "media", "webhooks", "model_store",
                   "deployments", "serve_app", "auth"},
}


def _imports(path: Path) -> set[str]:
    """Dotted names of every module ``path`` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downwards(package):
    bad = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / package).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN[package]
    }
    assert not bad, sorted(bad)


def test_http_schemas_import_no_store_or_deployment():
    schemas = sorted((ROOT / "serve_app").rglob("protocol.py"))
    assert [p.parent.name for p in schemas] == ["generate", "images", "variants", "videos"]
    for path in schemas:
        bad = [n for n in _imports(path) if n.endswith(".store") or n.split(".")[0] == "deployments"]
        assert not bad, (path.name, bad)


def test_every_deployments_module_is_used_by_ray_code_not_only_by_the_ingress():
    users: dict[str, set[str]] = {}
    for path in ROOT.glob("*/**/*.py"):
        if path.parts[len(ROOT.parts)] in ("tests", "bench", ".venv"):
            continue
        for name in _imports(path):
            if name.startswith("deployments."):
                users.setdefault(name, set()).add(path.parts[len(ROOT.parts)])
    # The app builder (serve_app/app.py) binds the two deployments; every other module of
    # deployments/ must serve them, not only the ingress.
    only_ingress = {m for m, pkgs in users.items() if pkgs == {"serve_app"}}
    assert only_ingress == {"deployments.router", "deployments.generator"}, users

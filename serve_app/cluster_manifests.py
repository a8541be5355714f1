"""The KubeRay manifests' Serve config, generated from serve_config.yaml so the two cannot drift.

A cluster profile (``k8s/profiles/*.yaml``) names a RayService manifest and what a cluster changes
in ``serve_config.yaml``: the proxy on every node on 0.0.0.0, JSON logs, the real variants and
the app arguments of a cluster. ``render`` merges them and checks the result against Ray Serve's
own config schema and this app's ``AppArgs`` (every variant must have a config file);
``write_into`` puts it into the manifest's ``spec.serveConfigV2`` block, leaving every other line
(and its comments) as it is. ``wan-serve k8s-render`` runs both; with ``--check`` it only reports
drift, as ``make test`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

#: The manifest key whose block scalar holds the Serve config (KubeRay's RayService spec).
SERVE_CONFIG_KEY = "serveConfigV2:"

#: The application in serve_config.yaml that a profile changes.
APP_NAME = "wan-serve"


class ClusterProfile(BaseModel):
    """What one cluster changes in serve_config.yaml, and which manifest holds the result.
    Paths are relative to the profile file."""

    model_config = ConfigDict(extra="forbid")

    manifest: Path = Field(description="The RayService manifest whose spec.serveConfigV2 this profile writes.")
    serve_config: Path = Field(
        default=Path("../../serve_config.yaml"), description="The Ray Serve config file the profile starts from."
    )
    proxy_location: str = Field(
        default="EveryNode",
        description="Ray Serve's proxy_location: EveryNode, so the Kubernetes Service reaches a proxy on any pod.",
    )
    http_options: dict[str, Any] = Field(
        default={"host": "0.0.0.0", "port": 8000},
        description="Ray Serve's http_options: 0.0.0.0 so other pods reach the proxy (API keys are then required).",
    )
    logging_config: dict[str, Any] = Field(
        default={"encoding": "JSON"},
        description="The app's Ray Serve logging_config: JSON lines, a job's lines carrying job_id and variant.",
    )
    args: dict[str, Any] = Field(
        default={}, description="Merged over the wan-serve app's args in serve_config.yaml (AppArgs fields)."
    )

    @classmethod
    def load(cls, path: Path) -> tuple[ClusterProfile, Path]:
        """The profile in ``path`` and the folder its paths are relative to.

        Raises:
            pydantic.ValidationError: a field that is not a profile's, or of the wrong type.
        """
        return cls.model_validate(yaml.safe_load(path.read_text())), path.parent


def render(profile: ClusterProfile, base: Path) -> dict[str, Any]:
    """The Serve config of ``profile`` (paths relative to ``base``), checked.

    Raises:
        KeyError: serve_config.yaml has no application named ``wan-serve``.
        pydantic.ValidationError: the result fails Ray Serve's ServeDeploySchema or AppArgs.
        model_store.variants.VariantNotFound: a variant without a config file.
    """
    from ray.serve.schema import ServeDeploySchema

    from model_store.variants import load_variant
    from serve_app.app import AppArgs

    config = yaml.safe_load((base / profile.serve_config).read_text())
    config["proxy_location"] = profile.proxy_location
    config["http_options"] = dict(profile.http_options)
    app = next((a for a in config.get("applications", []) if a.get("name") == APP_NAME), None)
    if app is None:
        raise KeyError(f"{profile.serve_config} has no application named {APP_NAME!r}")
    app["args"] = {**app.get("args", {}), **profile.args}
    app["logging_config"] = dict(profile.logging_config)
    ServeDeploySchema.model_validate(config)
    args = AppArgs.model_validate(app["args"])
    for name in args.variants:
        load_variant(name, overrides=args.overrides.get(name))
    return config


def serve_config_text(config: dict[str, Any]) -> str:
    """``config`` as the YAML text that goes into serveConfigV2."""
    return yaml.safe_dump(config, sort_keys=False, width=100)


def read_from(manifest: str) -> str:
    """The serveConfigV2 block scalar of ``manifest`` (a RayService's YAML), dedented.

    Raises:
        ValueError: no ``serveConfigV2: |`` line.
    """
    start, indent, end = _block(manifest.splitlines(keepends=True))
    lines = manifest.splitlines(keepends=True)[start + 1 : end]
    return "".join(line[indent:] if line.strip() else "\n" for line in lines)


def write_into(manifest: str, text: str) -> str:
    """``manifest`` with its serveConfigV2 block replaced by ``text``; every other line kept.

    Raises:
        ValueError: no ``serveConfigV2: |`` line.
    """
    lines = manifest.splitlines(keepends=True)
    start, indent, end = _block(lines)
    body = [(" " * indent + line if line.strip() else "\n") for line in text.splitlines(keepends=True)]
    return "".join(lines[: start + 1] + body + lines[end:])


def _block(lines: list[str]) -> tuple[int, int, int]:
    """(index of the ``serveConfigV2: |`` line, the block's indent, index after the block)."""
    for n, line in enumerate(lines):
        if line.strip() == f"{SERVE_CONFIG_KEY} |":
            indent = len(line) - len(line.lstrip()) + 2
            end = n + 1
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" " * indent)):
                end += 1
            while end > n + 1 and not lines[end - 1].strip():  # blank lines after the block stay outside it
                end -= 1
            return n, indent, end
    raise ValueError(f"no '{SERVE_CONFIG_KEY} |' block")

"""``wan-serve`` command line: model-store chores and launching helpers."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

app = typer.Typer(help="wan-serve: serve Wan 2.2 video models with Ray Serve.", no_args_is_help=True)
models = typer.Typer(help="Model store: variants and their weights.", no_args_is_help=True)
app.add_typer(models, name="models")


@models.command("build-tiny")
def build_tiny(force: bool = typer.Option(False, help="Rebuild even if the folder exists.")) -> None:
    """Build the tiny random-weight twins (diffusers layout) under WAN_SERVE_MODEL_DIR."""
    from model_store.tiny_twin import ensure_tiny_twins

    for path in ensure_tiny_twins(force=force):
        typer.echo(f"{path.name}: {path}")


@models.command("list")
def list_models() -> None:
    """Variants in configs/: task, pipeline class, and where their weights come from (revision)."""
    from model_store.variants import list_variants, load_variant

    for name in list_variants():
        v = load_variant(name)
        try:
            where = v.weights_location()
        except FileNotFoundError:
            where = "missing (build-tiny)"
        revision = f"@{v.weights.revision[:12]}" if where == v.weights.repo_id and v.weights.revision else ""
        typer.echo(f"{name:16} {v.task:5} {v.pipeline_class:24} {where}{revision}")


@app.command("render-config")
def render_config(
    config: Path = typer.Argument(Path("serve_config.yaml"), help="Ray Serve config file."),
    port: int = typer.Option(8000, help="HTTP port."),
    host: str = typer.Option("127.0.0.1", help="HTTP host."),
    out: Path = typer.Option(..., help="Where to write the rendered config."),
) -> None:
    """Copy a Ray Serve config file with its http_options host and port replaced."""
    data = yaml.safe_load(config.read_text())
    data.setdefault("http_options", {}).update({"host": host, "port": port})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    typer.echo(str(out))

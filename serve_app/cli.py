"""``wan-serve`` command line: operator commands (model store, config) and, grouped apart, the
client commands (generate, jobs, server) from ``wan_client``."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import typer
import yaml

from wan_client.commands import register as register_client_commands

#: The help panel of the operator commands (the client's are wan_client.commands.CLIENT_PANEL).
OPERATOR_PANEL = "Operator: run the service"

app = typer.Typer(help="wan-serve: serve Wan 2.2 video models with Ray Serve.", no_args_is_help=True)
models = typer.Typer(help="Model store: variants and their weights.", no_args_is_help=True)
app.add_typer(models, name="models", rich_help_panel=OPERATOR_PANEL)
keys = typer.Typer(
    help="API keys: who may use the service (kept in the job store; only a hash of each).", no_args_is_help=True
)
app.add_typer(keys, name="keys", rich_help_panel=OPERATOR_PANEL)
register_client_commands(app)


@models.command("build-tiny")
def build_tiny(force: bool = typer.Option(False, help="Rebuild even if the folder exists.")) -> None:
    """Build the tiny random-weight twins (diffusers layout, with a manifest) under WAN_SERVE_MODEL_DIR."""
    from model_store.tiny_twin import ensure_tiny_twins

    for path in ensure_tiny_twins(force=force):
        typer.echo(f"{path.name}: {path}")


def _variant(name: str):
    from model_store.variants import VariantNotFound, load_variant

    try:
        return load_variant(name)
    except VariantNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@models.command("list")
def list_models(offline: bool = typer.Option(False, help="Do not ask the hub for newer revisions.")) -> None:
    """Variants and adapters: where their weights are, revision, size on disk, verified or not, and
    (online) whether the hub has a newer revision."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.console import Console
    from rich.table import Table

    from model_store.adapters import list_adapters
    from model_store.fit_check import gib
    from model_store.hub import hub_revision, local_folder
    from model_store.variants import list_variants, load_variant
    from model_store.weights_manifest import disk_bytes, verified_state

    variants = [load_variant(n) for n in list_variants()]
    repos = sorted({v.weights.repo_id for v in variants if v.weights.repo_id})
    latest: dict[str, str | None] = {}
    if not offline and repos:
        with ThreadPoolExecutor(len(repos)) as pool:
            latest = dict(zip(repos, pool.map(hub_revision, repos), strict=True))
    table = Table("variant", "task", "weights", "revision", "size", "state", "hub", box=None, pad_edge=False)
    for v in variants:
        folder = local_folder(v)
        where = str(folder) if folder is not None and folder.is_dir() else (v.weights.repo_id or str(folder))
        revision = (v.weights.revision or "")[:12] or ("built here" if v.twin_of else "-")
        hub = "-"
        if v.weights.repo_id:
            newest = latest.get(v.weights.repo_id)
            hub = (
                "not asked"
                if offline
                else "unreachable"
                if newest is None
                else "up to date"
                if newest == v.weights.revision
                else f"newer: {newest[:12]}"
            )
        size = disk_bytes(folder) if folder is not None else 0
        table.add_row(
            v.name,
            v.task,
            where,
            revision,
            gib(size).lstrip("~") if size else "-",
            verified_state(folder) if folder is not None else "-",
            hub,
        )
    Console(width=200).print(table)
    adapters = list_adapters()
    if adapters:
        t = Table("adapter", "base", "experts", "size", "state", box=None, pad_edge=False)
        for a in adapters:
            t.add_row(
                a.name, a.base, ", ".join(a.experts), gib(disk_bytes(a.folder)).lstrip("~"), verified_state(a.folder)
            )
        Console(width=200).print(t)


@models.command("pull")
def pull_model(variant: str = typer.Argument(..., help="Variant name, e.g. ti2v-5b.")) -> None:
    """Download VARIANT's weights at its pinned revision into the model store (resumable, retried),
    and the distilled LoRAs its speed profiles name, then write their sha256 manifests."""
    from model_store.hub import HubUnreachable, pull, pull_distilled

    v = _variant(variant)
    try:
        manifest = pull(v)
        for adapter in pull_distilled(v):
            typer.echo(f"{v.name}: distilled LoRA {adapter} pulled")
    except (HubUnreachable, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{v.name}: {len(manifest.files)} files, {manifest.size_bytes / 2**30:.2f} GiB at "
        f"{manifest.repo_id}@{manifest.revision}"
    )


@models.command("verify")
def verify_model(name: str = typer.Argument(..., help="Variant or adapter name.")) -> None:
    """Re-hash every file of NAME's weights against its manifest; exit status 1 when one differs."""
    from model_store.adapters import adapter_folder
    from model_store.hub import local_folder
    from model_store.variants import list_variants
    from model_store.weights_manifest import WeightsCorrupt, read_manifest, verify

    folder = local_folder(_variant(name)) if name in list_variants() else adapter_folder(name)
    if folder is None or not folder.is_dir():
        typer.echo(f"error: {name} has no weights in the model store (pull or build them first)", err=True)
        raise typer.Exit(1)
    try:
        problems = verify(folder)
    except WeightsCorrupt as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for problem in problems:
        typer.echo(f"BAD {problem}")
    if problems:
        raise typer.Exit(1)
    manifest = read_manifest(folder)
    typer.echo(f"{name}: {len(manifest.files) if manifest else 0} files match their sha256")


@models.command("rm")
def remove_model(
    name: str = typer.Argument(..., help="Variant or adapter name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete NAME's weights folder from the model store (the config stays)."""
    import shutil

    from model_store.adapters import adapter_folder
    from model_store.hub import local_folder
    from model_store.variants import list_variants
    from model_store.weights_manifest import disk_bytes

    folder = local_folder(_variant(name)) if name in list_variants() else adapter_folder(name)
    if folder is None or not folder.is_dir():
        typer.echo(f"{name}: nothing to remove")
        return
    size = disk_bytes(folder) / 2**30
    if not yes and not typer.confirm(f"delete {folder} ({size:.2f} GiB)?"):
        raise typer.Exit(1)
    shutil.rmtree(folder)
    typer.echo(f"{name}: removed {folder} ({size:.2f} GiB)")


@models.command("calibrate-magcache")
def calibrate_magcache(
    variant: str = typer.Argument(..., help="Variant name, e.g. t2v-a14b."),
    prompt: str = typer.Option("A cat walks on the grass, realistic style.", help="Prompt of the calibration run."),
    image: Path | None = typer.Option(None, help="Input image for image variants (default: mid-gray)."),
    size: str = typer.Option("", help="WIDTHxHEIGHT (default: the variant's default size)."),
    num_frames: int = typer.Option(0, help="Frames (default: the variant's default)."),
    steps: int = typer.Option(0, help="Denoising steps (default: the variant's default)."),
    seed: int = typer.Option(42, help="Seed of the calibration run."),
) -> None:
    """Measure MagCache's magnitude ratios for VARIANT's checkpoint: one generation at the variant's
    defaults (the GPU a replica would use), nothing skipped, then print the `cache:` block to put
    under a speed profile of its config."""
    from diffusers.utils import logging as diffusers_logging

    from deployments.generation import GenerationRunner
    from jobs.model import GenerationParams
    from media.decode import decode_image
    from media.fit import fit_image
    from model_store.loader import load_variant_pipeline
    from model_store.speed_modes import calibrate_mag_ratios
    from model_store.variants import Size

    v = _variant(variant)
    diffusers_logging.disable_progress_bar()
    loaded = load_variant_pipeline(v)
    runner = GenerationRunner(v, loaded.pipe, loaded.prompt_pipe)
    s = Size.parse(size) if size else v.default_size
    native = v.native_sizes.get(str(s), s) if v.native_sizes else s
    frames = 1 if v.output_kind == "image" else num_frames or v.defaults.num_frames
    total = steps or v.defaults.num_inference_steps
    picture = (
        fit_image(decode_image(image.read_bytes(), field="image", max_side=8192), native.width, native.height, "crop")
        if image
        else None
    )
    params = GenerationParams(
        prompt=prompt,
        negative_prompt=v.defaults.negative_prompt,
        width=native.width,
        height=native.height,
        num_frames=frames,
        num_inference_steps=total,
        guidance_scale=v.defaults.guidance_scale,
        guidance_scale_2=v.defaults.guidance_scale_2,
        seed=seed,
    )
    inputs = runner.gray_inputs(native, frames, picture)
    with contextlib.redirect_stdout(io.StringIO()):  # diffusers prints the ratios too; we print YAML
        ratios = calibrate_mag_ratios(runner.pipe, total, lambda: runner.run(params, inputs=inputs))
    block = {"cache": {"kind": "mag", "mag_ratios": ratios}}
    typer.echo(f"# MagCache ratios of {v.name}: {native.width}x{native.height}, {frames} frames, {total} steps")
    typer.echo(yaml.safe_dump(block, sort_keys=False, default_flow_style=None, width=100), nl=False)


@models.command("plan")
def plan_model(
    variant: str = typer.Argument(..., help="Variant name, e.g. t2v-a14b."),
    budget_gib: float = typer.Option(80.0, help="Device memory to plan for, GiB."),
    size: str = typer.Option("", help="WIDTHxHEIGHT to price (default: the variant's first native size)."),
    num_frames: int = typer.Option(0, help="Frames to price (default: the variant's default)."),
) -> None:
    """The fit check's estimate for VARIANT in each memory mode, for a device with BUDGET_GIB: from
    its weights in the store, or (for the real models, without downloading) from their published
    configs. No GPU needed; device capabilities are not checked here."""
    from rich.console import Console
    from rich.table import Table

    from model_store.fit_check import GIB, gib, plan_fit, read_layout
    from model_store.hub import local_folder
    from model_store.memory_config import MemoryConfig
    from model_store.reference_layouts import REFERENCE, reference_layout
    from model_store.variants import Size

    v = _variant(variant)
    folder = local_folder(v)
    if folder is not None and (folder / "model_index.json").is_file():
        layout, source = read_layout(folder), f"weights in {folder}"
    elif v.name in REFERENCE:
        layout, source = reference_layout(v.name), "published configs (not downloaded)"
    else:
        typer.echo(f"error: {v.name} has no weights in the store to read", err=True)
        raise typer.Exit(1)
    s = Size.parse(size) if size else v.default_size
    frames = num_frames or v.defaults.num_frames
    modes = [
        {},
        {"quantization": "fp8_storage"},
        {"quantization": "int8"},
        {"quantization": "nf4"},
        {"text_encoder_device": "cpu"},
        {"quantization": "fp8_storage", "text_encoder_device": "cpu"},
        {"offload": "model"},
        {"offload": "group"},
        {"offload": "sequential"},
        {"quantization": "fp8_storage", "offload": "model"},
        {"quantization": "fp8_storage", "offload": "group"},
    ]
    table = Table(
        "mode", "weights", "on device", "activations", "peak", f"fits {budget_gib:g} GiB", box=None, pad_edge=False
    )
    for change in modes:
        memory = MemoryConfig(**{**v.memory.model_dump(), **change})
        try:  # a mode the variant itself refuses (an image_edit variant keeps its text encoder on the device)
            type(v).model_validate({**v.model_dump(), "memory": memory.model_dump()})
        except ValueError:
            continue
        p = plan_fit(v, layout, int(budget_gib * GIB), "plan", memory)
        table.add_row(
            p.mode,
            gib(sum(p.weights_bytes.values())),
            gib(p.resident_bytes),
            gib(p.activation_bytes(s.width, s.height, frames)),
            gib(p.peak_bytes(s.width, s.height, frames)),
            "yes" if p.fits(s.width, s.height, frames) else "no",
        )
    what = "an image" if v.output_kind == "image" else f"{frames} frames"
    typer.echo(f"{v.name}, {what} at {s}, from {source}; peak = on device + activations + margin")
    Console(width=200).print(table)


DATA_DIR_OPTION = typer.Option(
    None, "--data-dir", help="The service's data folder (its jobs.db); default WAN_SERVE_DATA_DIR or ./var."
)


def _key_store(data_dir: Path | None):
    from auth.keys import KeyStore
    from jobs.config import DataLayout, make_private_dir
    from jobs.store import Database
    from serve_app.settings import ServiceSettings

    settings = ServiceSettings()
    if settings.database_url is not None:  # the service's job store is a database server
        return KeyStore(Database(settings.database_url.get_secret_value()))
    layout = DataLayout(data_dir=make_private_dir((data_dir or settings.data_dir).resolve()))
    return KeyStore(Database(layout.jobs_db))


@keys.command("create")
def create_key(
    name: str = typer.Option(..., "--name", help="Who the key is for, e.g. team-a; unique among live keys."),
    admin: bool = typer.Option(False, "--admin", help="The key sees, cancels and deletes every key's jobs."),
    max_running: int | None = typer.Option(None, min=1, help="Jobs of this key on generators at once."),
    max_queued: int | None = typer.Option(None, min=1, help="Jobs of this key waiting at once (then 429)."),
    jobs_per_hour: int | None = typer.Option(None, min=1, help="Jobs this key submits per hour (then 429)."),
    data_dir: Path | None = DATA_DIR_OPTION,
) -> None:
    """Make an API key and print it, once: only its hash is kept. The service requires keys from
    then on (within 5 s if it is running)."""
    from auth.keys import KeyNameTaken
    from jobs.ownership import Quotas

    quotas = Quotas(max_running=max_running, max_queued=max_queued, jobs_per_hour=jobs_per_hour)
    try:
        key, secret = _key_store(data_dir).create(name, admin=admin, quotas=quotas)
    except (KeyNameTaken, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"{key.id} {key.name}{' (admin)' if key.admin else ''}: the key follows; store it now, it is not shown again",
        err=True,
    )
    typer.echo(secret)


@keys.command("list")
def list_keys(
    revoked: bool = typer.Option(False, "--revoked", help="Show revoked keys too."),
    data_dir: Path | None = DATA_DIR_OPTION,
) -> None:
    """API keys: id, name, its first characters, scope, quotas, when made and last used."""
    import datetime

    from rich.console import Console
    from rich.table import Table

    def when(t: float | None) -> str:
        return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"

    table = Table(
        "id",
        "name",
        "key",
        "scope",
        "max running",
        "max queued",
        "jobs/hour",
        "created",
        "last used",
        *(["revoked"] if revoked else []),
        box=None,
        pad_edge=False,
    )
    for k in _key_store(data_dir).list(include_revoked=revoked):
        q = k.quotas
        table.add_row(
            k.id,
            k.name,
            k.shown + "...",
            "admin" if k.admin else "own jobs",
            *(str(v) if v is not None else "-" for v in (q.max_running, q.max_queued, q.jobs_per_hour)),
            when(k.created_at),
            when(k.last_used_at),
            *([when(k.revoked_at)] if revoked else []),
        )
    Console(width=200).print(table)


@keys.command("revoke")
def revoke_key(
    name_or_id: str = typer.Argument(..., help="The key's name or id (key_...)."),
    data_dir: Path | None = DATA_DIR_OPTION,
) -> None:
    """Revoke a key: requests with it fail within 5 s. Its jobs stay (an admin key still sees them)."""
    from auth.keys import KeyNotFound

    try:
        key = _key_store(data_dir).revoke(name_or_id)
    except KeyNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{key.id} {key.name}: revoked")


@app.command("k8s-render", rich_help_panel=OPERATOR_PANEL)
def k8s_render(
    profiles: list[Path] = typer.Argument(..., help="Cluster profiles, e.g. k8s/profiles/cluster.yaml."),
    check: bool = typer.Option(False, "--check", help="Change nothing; exit 1 if a manifest is out of date."),
) -> None:
    """Write each profile's Serve config (serve_config.yaml with the profile's changes, checked
    against Ray Serve's schema and the app's arguments) into its RayService manifest's
    spec.serveConfigV2."""
    from serve_app.cluster_manifests import ClusterProfile, render, serve_config_text, write_into

    stale = []
    for path in profiles:
        profile, base = ClusterProfile.load(path)
        manifest = Path(os.path.normpath(base / profile.manifest))
        old = manifest.read_text()
        new = write_into(old, serve_config_text(render(profile, base)))
        if new == old:
            typer.echo(f"{manifest}: up to date")
        elif check:
            stale.append(manifest)
            typer.echo(f"{manifest}: out of date; run wan-serve k8s-render {path}", err=True)
        else:
            manifest.write_text(new)
            typer.echo(f"{manifest}: written")
    if stale:
        raise typer.Exit(1)


@app.command("render-config", rich_help_panel=OPERATOR_PANEL)
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


if __name__ == "__main__":
    app()

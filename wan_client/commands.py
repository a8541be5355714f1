"""The client commands of ``wan-serve``: ``generate``, ``jobs ...`` and ``server status``.

They talk HTTP to a running server (``--server`` / WAN_SERVE_URL, ``--api-key`` /
WAN_SERVE_API_KEY) and exit with the statuses of ``ExitCode``. Progress goes to stderr; stdout
carries the result (a path, a job id, a table, or JSON with ``--json``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Column, Table

from wan_client.api import DEFAULT_SERVER, ServiceRefused, ServiceUnavailable, WanServeClient
from wan_client.exit_codes import ExitCode
from wan_client.progress import describe, progress_view

#: The help panel the client commands are grouped under in ``wan-serve --help``.
CLIENT_PANEL = "Client: talk to a running server"

Server = Annotated[str, typer.Option("--server", envvar="WAN_SERVE_URL", help="Base URL of the wan-serve server.")]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="WAN_SERVE_API_KEY", help="API key, sent as a bearer token."),
]
Output = Annotated[
    str | None,
    typer.Option("-o", "--output", help="File to save the result as, or a folder (default: here, under its name)."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


class Interrupt(str, Enum):
    """What Ctrl-C does to the job being watched."""

    ask = "ask"
    cancel = "cancel"
    leave = "leave"


class ResultFormat(str, Enum):
    """Result file formats (the server's output_format values; webm and png_zip for vace; png, webp
    and jpeg for image variants)."""

    mp4 = "mp4"
    webm = "webm"
    png_zip = "png_zip"
    png = "png"
    webp = "webp"
    jpeg = "jpeg"


OnInterrupt = Annotated[
    Interrupt,
    typer.Option("--on-interrupt", help="What Ctrl-C does to the job: ask, cancel it, or leave it running."),
]

# Wide when piped, so tables keep whole job ids for scripts and logs.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(command: F) -> F:
    """Turn the client's errors into the service's message on stderr and an ExitCode."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ServiceRefused as exc:
            retry = f" (retry after {exc.retry_after_s:g} s)" if exc.retry_after_s else ""
            err.print(f"error: {exc.message} [{exc.code}]{retry}", markup=False, highlight=False)
            raise typer.Exit(ExitCode.REFUSED) from None
        except ServiceUnavailable as exc:
            err.print(f"error: {exc}", markup=False, highlight=False)
            raise typer.Exit(ExitCode.UNREACHABLE) from None

    return wrapper  # type: ignore[return-value]


def _exit_for(status: dict) -> ExitCode:
    return {"success": ExitCode.OK, "canceled": ExitCode.CANCELED}.get(status["status"], ExitCode.JOB_FAILED)


def _ask_on_interrupt(job_id: str) -> Literal["cancel", "leave"]:
    """Ask on stderr until the answer is cancel or leave; no answer (end of input, Ctrl-C) is leave."""
    question = f"\nStopped watching job {job_id}. Cancel the job, or leave it running? [cancel/leave] (leave): "
    while True:
        try:
            answer = err.input(question, markup=False).strip().lower() or "leave"
        except (EOFError, KeyboardInterrupt):
            return "leave"
        if answer in ("cancel", "c"):
            return "cancel"
        if answer in ("leave", "l"):
            return "leave"


def follow(client: WanServeClient, job_id: str, on_interrupt: Interrupt, show: bool = True) -> dict:
    """Show the job's progress from its event stream until it ends; returns its final status.

    On Ctrl-C: cancels the job or leaves it running (asking unless ``on_interrupt`` says),
    exiting INTERRUPTED in the second case.
    """
    view = progress_view(err, job_id) if show else None
    try:
        try:
            # The stream starts with the job's history (from its queued event), then goes live.
            for event in client.events(job_id):
                if view is not None:
                    view.update(event.data)
        finally:
            if view is not None:
                view.close()
    except KeyboardInterrupt:
        choice = on_interrupt.value if on_interrupt != Interrupt.ask else _ask_on_interrupt(job_id)
        if choice == "cancel":
            status = client.cancel(job_id)
            err.print(f"{job_id[:8]} {describe(status)}", markup=False, highlight=False)
            return status
        err.print(f"left running: wan-serve jobs watch {job_id}", markup=False, highlight=False)
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    return client.status(job_id)


def _save(client: WanServeClient, status: dict, output: str | None) -> Path:
    """Download the job's file to ``output``: a file path, or a folder (existing, or ending in /)
    to save it under the server's file name; default the current folder."""
    if not output:
        dest = Path(status["filename"])
    elif output.endswith(("/", os.sep)) or Path(output).is_dir():
        dest = Path(output) / status["filename"]
    else:
        dest = Path(output)
    return client.download(status["id"], dest)


def _finish(client: WanServeClient, status: dict, output: str | None, as_json: bool) -> None:
    """Download a successful job's file, print the outcome, exit with the job's ExitCode."""
    path = _save(client, status, output) if status["status"] == "success" else None
    if as_json:
        out.print_json(json.dumps({**status, "path": str(path) if path else None}))
    elif path is not None:
        out.print(str(path), markup=False, highlight=False)
    else:
        error = status.get("error") or {}
        err.print(
            f"job {status['id']} ended {status['status']}: {error.get('message', '')} [{error.get('code', '')}]",
            markup=False,
            highlight=False,
        )
    raise typer.Exit(_exit_for(status))


def _lora(text: str) -> dict[str, Any]:
    name, _, scale = text.partition(":")
    try:
        return {"name": name, "scale": float(scale)} if scale else {"name": name}
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give NAME or NAME:SCALE, e.g. my-style:0.8") from None


@reports_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    variant: Annotated[str | None, typer.Option(help="Model variant (wan-serve server status lists them).")] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="First frame; for an image-edit variant the image(s) to edit, repeatable (one to three).",
        ),
    ] = None,
    last_image: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Last frame (i2v).")] = None,
    video: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Source video (vace).")] = None,
    mask: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Mask, white = regenerate.")] = None,
    reference_image: Annotated[
        list[Path] | None, typer.Option(exists=True, dir_okay=False, help="Reference image (vace), repeatable.")
    ] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT, e.g. 1280x720.")] = None,
    frames: Annotated[int | None, typer.Option(help="Frames (4k+1).")] = None,
    seconds: Annotated[float | None, typer.Option(help="Length in seconds instead of --frames.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale.")] = None,
    guidance_2: Annotated[float | None, typer.Option(help="Low-noise expert's guidance scale (A14B).")] = None,
    true_cfg: Annotated[float | None, typer.Option(help="True CFG scale (image-edit variants).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="What the video should avoid.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (reported back when unset).")] = None,
    lora: Annotated[list[str] | None, typer.Option(help="LoRA adapter NAME[:SCALE], repeatable.")] = None,
    output_format: Annotated[ResultFormat, typer.Option("--format", help="Result file.")] = ResultFormat.mp4,
    output: Output = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the job id and return at once.")] = False,
    on_interrupt: OnInterrupt = Interrupt.ask,
    as_json: AsJson = False,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Submit a job (a video, or an edited image), show its progress, and save the result.

    Exit status: 0 success, 1 job error, 3 canceled, 4 refused by the service, 5 no answer,
    130 Ctrl-C with the job left running.
    """
    fields = {
        "prompt": prompt,
        "variant": variant,
        "size": size,
        "num_frames": frames,
        "seconds": seconds,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "guidance_scale_2": guidance_2,
        "true_cfg_scale": true_cfg,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "loras": [_lora(item) for item in lora] if lora else None,
        "output_format": output_format.value if output_format != ResultFormat.mp4 else None,
    }
    files = [("image", path) for path in image or []]
    files += [
        (name, path)
        for name, path in (("last_image", last_image), ("video", video), ("mask", mask))
        if path is not None
    ]
    files += [("reference_images", path) for path in reference_image or []]
    with WanServeClient(server, api_key) as client:
        accepted = client.submit(fields, files)
        job_id = accepted["id"]
        if no_wait:
            if as_json:
                out.print_json(json.dumps(accepted))
            else:
                out.print(job_id, markup=False, highlight=False)
            return
        err.print(f"job {job_id} queued", markup=False, highlight=False)
        _finish(client, follow(client, job_id, on_interrupt), output, as_json)


jobs_app = typer.Typer(help="Jobs on a server: list, show, watch, download, cancel, remove.", no_args_is_help=True)
server_app = typer.Typer(help="The server: readiness, replicas and queue per variant.", no_args_is_help=True)


@jobs_app.command("ls")
@reports_errors
def jobs_ls(
    limit: Annotated[int, typer.Option(min=1, max=100, help="Jobs per page.")] = 20,
    after: Annotated[str | None, typer.Option(help="List after this job id (the next page).")] = None,
    as_json: AsJson = False,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Jobs, newest first."""
    with WanServeClient(server, api_key) as client:
        page = client.jobs(limit=limit, after=after)
    if as_json:
        out.print_json(json.dumps(page))
        return
    table = Table(
        Column("id", no_wrap=True, min_width=32),
        Column("status", no_wrap=True),
        Column("variant", no_wrap=True),
        Column("progress", no_wrap=True, justify="right"),
        Column("created", no_wrap=True),
        Column("prompt", no_wrap=True, overflow="ellipsis", ratio=1),
        box=None,
        pad_edge=False,
    )
    for job in page["data"]:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["created_at"]))
        table.add_row(
            job["id"], job["status"], job["variant"], f"{round(100 * job['progress'])}%", created, job["prompt"][:60]
        )
    out.print(table)
    if page["has_more"]:
        err.print(f"more: wan-serve jobs ls --after {page['last_id']}", markup=False, highlight=False)


@jobs_app.command("show")
@reports_errors
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: AsJson = False,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """A job's status, parameters, timings and error."""
    with WanServeClient(server, api_key) as client:
        status = client.status(job_id)
    if as_json:
        out.print_json(json.dumps(status))
        return
    table = Table(box=None, show_header=False, pad_edge=False)
    for key in ("id", "status", "variant", "prompt", "size", "num_frames", "seed", "attempts", "filename"):
        table.add_row(key, str(status.get(key)))
    table.add_row("progress", describe(status))
    if status.get("error"):
        table.add_row("error", f"{status['error'].get('message')} [{status['error'].get('code')}]")
    if status.get("timings"):
        table.add_row("timings", ", ".join(f"{k} {v:.2f}" for k, v in status["timings"].items()))
    out.print(table)


@jobs_app.command("watch")
@reports_errors
def jobs_watch(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    on_interrupt: OnInterrupt = Interrupt.ask,
    as_json: AsJson = False,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Show a job's progress until it ends; exit status as for generate."""
    with WanServeClient(server, api_key) as client:
        status = follow(client, job_id, on_interrupt)
    if as_json:
        out.print_json(json.dumps(status))
    else:
        out.print(f"{job_id} {describe(status)}", markup=False, highlight=False)
    raise typer.Exit(_exit_for(status))


@jobs_app.command("download")
@reports_errors
def jobs_download(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    output: Output = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Save a finished job's result file; prints its path."""
    with WanServeClient(server, api_key) as client:
        status = client.status(job_id)
        if status["status"] != "success":
            err.print(f"job {job_id} is {status['status']}; it has a file once it succeeds", markup=False)
            raise typer.Exit(ExitCode.REFUSED)
        out.print(str(_save(client, status, output)), markup=False, highlight=False)


@jobs_app.command("cancel")
@reports_errors
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Cancel a queued or running job (it stays listed, as canceled)."""
    with WanServeClient(server, api_key) as client:
        status = client.cancel(job_id)
    out.print(f"{job_id} {describe(status)}", markup=False, highlight=False)


@jobs_app.command("rm")
@reports_errors
def jobs_rm(
    job_ids: Annotated[list[str], typer.Argument(help="Job ids.")],
    keep_files: Annotated[bool, typer.Option("--keep-files", help="Keep the result files.")] = False,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Remove jobs (canceling unfinished ones) and their result files."""
    with WanServeClient(server, api_key) as client:
        result = client.delete(job_ids, delete_files=not keep_files)
    for job_id in result["deleted"]:
        out.print(f"removed {job_id}", markup=False, highlight=False)
    missing = sorted(set(job_ids) - set(result["deleted"]))
    if missing:
        err.print(f"no such jobs: {', '.join(missing)}", markup=False, highlight=False)
        raise typer.Exit(ExitCode.REFUSED)


@server_app.command("status")
@reports_errors
def server_status(
    as_json: AsJson = False,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Readiness, and per variant: replicas running, jobs queued and running. Exit 6 when not ready."""
    with WanServeClient(server, api_key) as client:
        ready, _ = client.ready()
        catalog = client.variants()
    if as_json:
        out.print_json(json.dumps({"ready": ready, **catalog}))
    else:
        out.print(f"{client.server}: {'ready' if ready else 'not ready'}", markup=False, highlight=False)
        table = Table("variant", "task", "ready", "replicas", "queued", "running", "note", box=None, pad_edge=False)
        for v in catalog["variants"]:
            r = v["readiness"]
            default = " (default)" if v["name"] == catalog["default_variant"] else ""
            table.add_row(
                v["name"] + default,
                v["task"],
                "yes" if r["ready"] else "no",
                str(r["running_replicas"]),
                str(v["queued"]),
                str(v["running"]),
                r.get("reason") or "",
            )
        out.print(table)
    if not ready:
        raise typer.Exit(ExitCode.NOT_READY)


@server_app.command("wait")
@reports_errors
def server_wait(
    timeout: Annotated[float, typer.Option(help="Seconds to wait at most.")] = 900.0,
    dashboard: Annotated[str | None, typer.Option(help="Ray dashboard URL, for the ready line.")] = None,
    metrics: Annotated[str | None, typer.Option(help="Metrics URL, for the ready line.")] = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Wait until every variant has a running replica, then print one line: where the studio, the
    API docs, the Ray dashboard and the metrics are. Exit 6 if not ready within TIMEOUT."""
    deadline = time.monotonic() + timeout
    with WanServeClient(server, api_key) as client:
        while True:
            try:
                if client.ready()[0]:
                    break
            except (ServiceUnavailable, ServiceRefused):
                pass  # not listening yet, or the proxy has no route to the app yet (404)
            if time.monotonic() > deadline:
                err.print(f"{client.server} is not ready after {timeout:g} s", markup=False, highlight=False)
                raise typer.Exit(ExitCode.NOT_READY)
            time.sleep(1.0)
    parts = [f"studio {client.server}/", f"API docs {client.server}/docs"]
    parts += [f"Ray dashboard {dashboard}"] if dashboard else []
    parts += [f"metrics {metrics}"] if metrics else []
    out.print(f"wan-serve is ready · {' · '.join(parts)}", style="bold green", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``wan-serve`` app, under their own help panel."""
    app.command("generate", rich_help_panel=CLIENT_PANEL)(generate)
    app.add_typer(jobs_app, name="jobs", rich_help_panel=CLIENT_PANEL)
    app.add_typer(server_app, name="server", rich_help_panel=CLIENT_PANEL)

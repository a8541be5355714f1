"""Fetching a variant's weights from the Hugging Face Hub into the model store, at its pinned revision.

huggingface_hub does the transfer: ``snapshot_download`` into the variant's folder, resuming
partial files, with its progress bars. Transient network errors are retried (tenacity). A
manifest (model_store/weights_manifest.py) is written when the download completes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from model_store.settings import StoreSettings
from model_store.weights_manifest import Manifest, write_manifest

logger = logging.getLogger(__name__)


class HubUnreachable(ConnectionError):
    """The Hugging Face Hub cannot be reached (offline, firewall, HF_HUB_OFFLINE=1)."""


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _transient(exc: BaseException) -> bool:
    """Network trouble worth another attempt; not 'no such repo' or 'no access'."""
    import httpx
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError)):
        return False
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)) or (
        isinstance(exc, OSError) and "connect" in str(exc).lower()
    )


def local_folder(variant, settings: StoreSettings | None = None) -> Path | None:
    """Where ``variant``'s weights live (or will live) in the model store; None without a local_path."""
    settings = settings or StoreSettings()
    path = variant.weights.local_path
    if path is None:
        return None
    return path if path.is_absolute() else settings.model_dir / path


def pull(variant, settings: StoreSettings | None = None, *, attempts: int | None = None) -> Manifest:
    """Download ``variant``'s weights (``weights.repo_id`` at ``weights.revision``) into its
    ``weights.local_path`` and write their manifest. Resumes a partial download.

    Raises:
        ValueError: the variant has no repo_id or no local_path (a tiny twin: use build-tiny).
        HubUnreachable: no connection to the hub after ``attempts`` tries, or offline mode.
        huggingface_hub.errors.RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError: as named.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    settings = settings or StoreSettings()
    attempts = attempts or settings.pull_attempts
    target = local_folder(variant, settings)
    if variant.weights.repo_id is None or target is None:
        raise ValueError(
            f"variant {variant.name} has no weights.repo_id and local_path to pull into"
            + ("; it is a tiny twin: wan-serve models build-tiny" if variant.twin_of else "")
        )
    target.mkdir(parents=True, exist_ok=True)

    @retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=2, max=60),
        reraise=True,
    )
    def download() -> None:
        snapshot_download(variant.weights.repo_id, revision=variant.weights.revision, local_dir=target)

    try:
        download()
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise HubUnreachable(
            f"cannot reach the Hugging Face Hub at {_endpoint()} to pull {variant.weights.repo_id} "
            f"({type(exc).__name__}); local weights still load: put the diffusers folder at "
            f"{target}"
        ) from None
    except Exception as exc:
        if _transient(exc):
            raise HubUnreachable(
                f"cannot reach the Hugging Face Hub at {_endpoint()} to pull "
                f"{variant.weights.repo_id} after {attempts} attempts ({type(exc).__name__}); "
                f"rerun to resume, or put the diffusers folder at {target}"
            ) from None
        raise
    return write_manifest(target, variant.name, "hub", variant.weights.repo_id, variant.weights.revision)


def pull_distilled(variant, settings: StoreSettings | None = None, *, attempts: int | None = None) -> list[str]:
    """Download each distilled LoRA that ``variant``'s speed profiles name with a ``source`` and the
    model store lacks (no manifest yet): per expert, its file at the pinned revision into
    ``loras/<adapter>/<expert>/pytorch_lora_weights.safetensors`` (model_store/adapters.py), then
    adapter.yaml (``base``: this variant) and the manifest. Returns the adapters pulled.

    Raises:
        HubUnreachable: no connection to the hub after ``attempts`` tries, or offline mode.
        huggingface_hub.errors.RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError: as named.
    """
    import shutil

    import yaml
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    from model_store.adapters import LORA_FILE, loras_dir
    from model_store.weights_manifest import read_manifest

    settings = settings or StoreSettings()
    attempts = attempts or settings.pull_attempts
    pulled = []
    for profile in variant.speed.profiles.values():
        d = profile.distilled
        if d is None or d.source is None:
            continue
        folder = loras_dir(settings) / d.adapter
        if folder.is_dir() and read_manifest(folder) is not None:
            continue
        staging = settings.model_dir / ".cache" / "loras" / d.adapter

        @retry(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=2, max=60),
            reraise=True,
        )
        def download(filename: str, source=d.source, staging: Path = staging) -> str:
            return hf_hub_download(source.repo_id, filename, revision=source.revision, local_dir=staging)

        try:
            for expert, filename in d.source.files.items():
                target = folder / expert / LORA_FILE
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(download(filename), target)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
            raise HubUnreachable(
                f"cannot reach the Hugging Face Hub at {_endpoint()} to pull LoRA {d.adapter} from "
                f"{d.source.repo_id} ({type(exc).__name__}); or put it at {folder} (one folder per expert, "
                f"each with {LORA_FILE})"
            ) from None
        except Exception as exc:
            if _transient(exc):
                raise HubUnreachable(
                    f"cannot reach the Hugging Face Hub at {_endpoint()} to pull LoRA {d.adapter} from "
                    f"{d.source.repo_id} after {attempts} attempts ({type(exc).__name__}); rerun to resume"
                ) from None
            raise
        meta = {"base": variant.name, "description": f"distilled LoRA from {d.source.repo_id}"}
        (folder / "adapter.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        write_manifest(folder, d.adapter, "hub", d.source.repo_id, d.source.revision)
        shutil.rmtree(staging, ignore_errors=True)
        pulled.append(d.adapter)
    return pulled


def hub_revision(repo_id: str, timeout_s: float = 5.0) -> str | None:
    """The hub's current commit SHA of ``repo_id``'s main branch; None when the hub cannot be reached."""
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(repo_id, timeout=timeout_s).sha
    except Exception:  # offline, DNS, timeouts, HTTP errors: 'unknown' is the honest answer
        return None

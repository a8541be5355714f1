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


def hub_revision(repo_id: str, timeout_s: float = 5.0) -> str | None:
    """The hub's current commit SHA of ``repo_id``'s main branch; None when the hub cannot be reached."""
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(repo_id, timeout=timeout_s).sha
    except Exception:  # offline, DNS, timeouts, HTTP errors: 'unknown' is the honest answer
        return None

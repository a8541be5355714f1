"""The manifest of a weights folder: the sha256 and size of every file, written when the weights
arrive (``pull``, ``build-tiny``, an adapter build) and checked before they are loaded.

Hashing 126 GB of A14B weights at every replica start would take minutes, so a load re-hashes
only the files whose size, mtime or inode changed since they were last hashed (the stat record
beside the manifest, as git's index does for its work tree). Any write to a file changes its
mtime, so a flipped byte is caught at the next load; ``wan-serve models verify`` re-hashes all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

from pydantic import BaseModel, Field

#: The manifest's file name inside a weights folder.
MANIFEST_NAME = "wan-serve-manifest.json"
#: Stat record of the last hash of each file (size, mtime_ns, inode); a cache, safe to delete.
STAT_NAME = ".wan-serve-verified.json"
#: Paths never listed: our own files and huggingface_hub's download bookkeeping.
_SKIPPED = (MANIFEST_NAME, STAT_NAME, ".cache/", ".gitattributes")

_CHUNK = 8 * 2**20


class WeightsCorrupt(OSError):
    """A weights file is missing, or its size or sha256 is not the manifest's. The message names
    the file (relative to its folder) and says how to get a good copy."""


class ManifestEntry(BaseModel):
    size: int = Field(description="File size, bytes.")
    sha256: str = Field(description="Hex sha256 of the file's bytes.")


class Manifest(BaseModel):
    """Every file of a weights folder, as it was when the weights arrived."""

    name: str = Field(description="Variant or adapter name.")
    source: str = Field(description="hub, tiny (built here) or adapter.")
    repo_id: str | None = Field(default=None, description="Hugging Face repo the files came from.")
    revision: str | None = Field(default=None, description="Its revision (commit SHA).")
    created_at: float = Field(description="Unix time the manifest was written.")
    files: dict[str, ManifestEntry] = Field(description="Path relative to the folder -> size and sha256.")

    @property
    def size_bytes(self) -> int:
        return sum(e.size for e in self.files.values())


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _listed(folder: Path) -> list[str]:
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(rel == s or rel.startswith(s) for s in _SKIPPED):
            out.append(rel)
    return out


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _save_stats(folder: Path, stats: dict[str, list[int]]) -> None:
    # A read-only folder (a mounted volume) keeps no stats: every load hashes again, which is only slower.
    with contextlib.suppress(OSError):
        (folder / STAT_NAME).write_text(json.dumps(stats))


def write_manifest(
    folder: Path, name: str, source: str, repo_id: str | None = None, revision: str | None = None
) -> Manifest:
    """Hash every file under ``folder`` and write ``MANIFEST_NAME`` (and the stat record)."""
    files, stats = {}, {}
    for rel in _listed(folder):
        path = folder / rel
        files[rel] = ManifestEntry(size=path.stat().st_size, sha256=sha256_file(path))
        stats[rel] = _stat_key(path)
    manifest = Manifest(
        name=name, source=source, repo_id=repo_id, revision=revision, created_at=time.time(), files=files
    )
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    _save_stats(folder, stats)
    return manifest


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, or None when it has none."""
    path = folder / MANIFEST_NAME
    return Manifest.model_validate_json(path.read_text()) if path.is_file() else None


def _problems(folder: Path, manifest: Manifest, rehash_all: bool) -> tuple[list[str], dict[str, list[int]]]:
    try:
        known = {} if rehash_all else json.loads((folder / STAT_NAME).read_text())
    except (OSError, ValueError):
        known = {}
    problems, stats = [], {}
    for rel, entry in manifest.files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
            continue
        key = _stat_key(path)
        if key[0] != entry.size:
            problems.append(f"{rel} has {key[0]} bytes, the manifest says {entry.size}")
            continue
        if known.get(rel) != key and sha256_file(path) != entry.sha256:
            problems.append(f"{rel} does not match its sha256 in the manifest (corrupted or replaced)")
            continue
        stats[rel] = key
    return problems, stats


def verify(folder: Path, rehash_all: bool = True) -> list[str]:
    """Check every file of ``folder``'s manifest; returns the problems (empty: all good).

    ``rehash_all`` False re-hashes only files changed since their last hash (what a load does).

    Raises:
        WeightsCorrupt: the folder has no manifest.
    """
    manifest = read_manifest(folder)
    if manifest is None:
        raise WeightsCorrupt(f"{folder.name} has no {MANIFEST_NAME}; nothing to verify against")
    problems, stats = _problems(folder, manifest, rehash_all)
    if not problems:
        _save_stats(folder, stats)
    return problems


def check_before_load(folder: Path, what: str, fix: str) -> Manifest | None:
    """Refuse to load ``folder`` when a file of its manifest is missing, resized or altered.

    Runs before any weights are read into memory. A folder without a manifest (weights placed by
    hand) loads unchecked; returns None then, else the manifest.

    Raises:
        WeightsCorrupt: naming each bad file of ``what`` (e.g. 'variant ti2v-5b') and ending with ``fix``.
    """
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    problems, stats = _problems(folder, manifest, rehash_all=False)
    if problems:
        raise WeightsCorrupt(f"weights of {what} failed verification: {'; '.join(problems)}. {fix}")
    _save_stats(folder, stats)
    return manifest


def disk_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (0 when it does not exist)."""
    # is_file and stat follow symlinks, so a linked weight file counts at its target's size.
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def verified_state(folder: Path) -> str:
    """Without hashing: 'verified' (every manifest file unchanged since its last hash), 'changed
    since verified', 'files missing', 'no manifest' or 'missing' (no folder)."""
    if not folder.is_dir():
        return "missing"
    manifest = read_manifest(folder)
    if manifest is None:
        return "no manifest"
    try:
        stats = json.loads((folder / STAT_NAME).read_text())
    except (OSError, ValueError):
        stats = {}
    for rel in manifest.files:
        if not (folder / rel).is_file():
            return "files missing"
        if stats.get(rel) != _stat_key(folder / rel):
            return "changed since verified"
    return "verified"

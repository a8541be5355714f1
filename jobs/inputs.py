"""A job's decoded media inputs, kept in the object store from submission until the job ends
(image inputs of a successful job: until the job is deleted, for remixes).

The ingress decodes and fits uploads once (media/decode.py, media/fit.py) and saves the
resulting arrays under ``inputs/<job id>/`` of the object store (jobs/objects.py: a local folder
or a bucket); the job spec carries only that prefix (``JobInputs``). The generator, on any node,
loads the arrays, so a job that is retried or requeued finds its inputs again, and no frames
travel through the router. Arrays are stored as ``.npy``: exact, and read back without decoding.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from jobs.objects import ObjectStore, npy_bytes

#: Key prefix of jobs' inputs in the object store.
INPUTS = "inputs/"


class JobInputs(BaseModel):
    """Where a job's prepared inputs are, and which ones it has."""

    key: str | None = Field(default=None, description="The job's prefix in the object store: inputs/<job id>/.")
    folder: str | None = Field(
        default=None, description="Jobs stored before the object store: the absolute path of their input folder."
    )
    image: bool = Field(default=False, description="A first frame, (H, W, 3) uint8 at the generation size.")
    last_image: bool = Field(default=False, description="A last frame (i2v first-last-frame), like image.")
    video: bool = Field(default=False, description="A source clip, (T, H, W, 3) uint8 at the generation size and fps.")
    mask: bool = Field(default=False, description="A (T, H, W) bool mask; True = regenerate.")
    reference_images: int = Field(default=0, ge=0, description="Number of VACE reference images, each (h, w, 3) uint8.")
    images: int = Field(
        default=0, ge=0, description="Number of image_edit input images, each (h, w, 3) uint8 as uploaded."
    )
    summary: dict = Field(default_factory=dict, description="What was uploaded, for the job's status (sizes, fps).")


@dataclass
class PreparedInputs:
    """Decoded, fitted inputs of one job. Every array is uint8 RGB or bool, shapes as in JobInputs."""

    image: np.ndarray | None = None
    last_image: np.ndarray | None = None
    video: np.ndarray | None = None
    mask: np.ndarray | None = None
    reference_images: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """Object name -> array, as ``save`` writes them."""
        out = {name: getattr(self, name) for name in ("image", "last_image", "video", "mask")}
        out = {name: value for name, value in out.items() if value is not None}
        out.update({f"reference_{i}": ref for i, ref in enumerate(self.reference_images)})
        out.update({f"image_{i}": image for i, image in enumerate(self.images)})
        return out

    def save(self, store: ObjectStore, job_id: str) -> JobInputs:
        """Write the arrays under ``inputs/<job_id>/`` of ``store`` and describe them. Each object
        appears complete or not at all; the job refers to them only once all are written.

        Raises:
            FileExistsError: the job already has inputs there.
            OSError: the store refused a write (a full disk, a bucket's error).
        """
        key = f"{INPUTS}{job_id}/"
        if store.list(key):
            raise FileExistsError(f"inputs already exist for job {job_id}")
        for name, value in self.arrays().items():
            store.put_bytes(f"{key}{name}.npy", npy_bytes(value))
        return JobInputs(
            key=key,
            image=self.image is not None,
            last_image=self.last_image is not None,
            video=self.video is not None,
            mask=self.mask is not None,
            reference_images=len(self.reference_images),
            images=len(self.images),
            summary=self.summary,
        )

    @classmethod
    def load(cls, inputs: JobInputs, store: ObjectStore) -> PreparedInputs:
        """Read back what ``save`` wrote (or, for a job stored before the object store, its folder).

        Raises:
            FileNotFoundError: an array is gone.
        """

        def read(name: str) -> np.ndarray:
            if inputs.key is not None:
                return np.load(io.BytesIO(store.get_bytes(f"{inputs.key}{name}.npy")), allow_pickle=False)
            return np.load(Path(inputs.folder or "") / f"{name}.npy", allow_pickle=False)

        return cls(
            image=read("image") if inputs.image else None,
            last_image=read("last_image") if inputs.last_image else None,
            video=read("video") if inputs.video else None,
            mask=read("mask") if inputs.mask else None,
            reference_images=[read(f"reference_{i}") for i in range(inputs.reference_images)],
            images=[read(f"image_{i}") for i in range(inputs.images)],
            summary=inputs.summary,
        )


def kept_for_remix(inputs: JobInputs | None) -> bool:
    """Whether a successful job keeps its inputs until it is deleted, so it can be remixed.

    Images are kept (a few MB as arrays at 720P); a source video is not (81 frames at 720P are
    about 224 MB as arrays, plus the mask), so a finished vace job cannot be remixed.
    """
    return inputs is not None and not inputs.video and not inputs.mask


def _legacy_folder(inputs: JobInputs, store: ObjectStore) -> Path | None:
    """A pre-object-store job's input folder, when it lies directly under the local store's
    ``inputs/`` (nothing else is ours to touch)."""
    if inputs.folder is None or store.folder is None:
        return None
    folder = Path(inputs.folder).resolve()
    return folder if folder.parent == (store.folder / INPUTS).resolve() else None


def remove_inputs(inputs: JobInputs | None, store: ObjectStore) -> None:
    """Delete a job's inputs: its objects under ``inputs/<id>/`` (nothing outside them).

    Every removal of inputs goes through here.
    """
    if inputs is None:
        return
    if inputs.key is not None and inputs.key.startswith(INPUTS) and inputs.key.count("/") == 2:
        store.delete_prefix(inputs.key)
        return
    folder = _legacy_folder(inputs, store)
    if folder is not None and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)


def copy_inputs(inputs: JobInputs, store: ObjectStore, new_job_id: str) -> JobInputs | None:
    """Copy a job's inputs for job ``new_job_id`` (a remix); None when they are gone.

    Raises:
        OSError: the copy failed (a full disk, a bucket's error).
    """
    target = f"{INPUTS}{new_job_id}/"
    if inputs.key is not None:
        if not store.copy_prefix(inputs.key, target):
            return None
        return inputs.model_copy(update={"key": target, "folder": None})
    folder = _legacy_folder(inputs, store)
    if folder is None or not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.npy")):
        store.put_file(target + path.name, path)
    return inputs.model_copy(update={"key": target, "folder": None})

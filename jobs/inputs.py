"""A job's decoded media inputs, kept on disk from submission until the job ends (image inputs
of a successful job: until the job is deleted, for remixes).

The ingress decodes and fits uploads once (media/decode.py, media/fit.py) and
saves the resulting arrays in the job's own folder under ``<data_dir>/inputs/``; the job
spec carries only the folder (``JobInputs``). The generator loads the arrays, so a job that
is retried or requeued finds its inputs again, and no frames travel through the router.
Arrays are stored as ``.npy``: exact, and read back without decoding.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from jobs.config import make_private_dir


class JobInputs(BaseModel):
    """Where a job's prepared inputs are, and which ones it has."""

    folder: str = Field(description="Absolute path of the job's input folder.")
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

    def save(self, folder: Path) -> JobInputs:
        """Write the arrays to ``folder`` (created; must not exist) and describe them.

        Written to a temporary sibling folder and renamed, so a half-written folder never
        carries the job's name.

        Raises:
            FileExistsError: ``folder`` already exists.
            OSError: the disk is full or not writable.
        """
        folder = Path(folder)
        if folder.exists():
            raise FileExistsError(f"input folder already exists: {folder.name}")
        make_private_dir(folder.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            for name in ("image", "last_image", "video", "mask"):
                value = getattr(self, name)
                if value is not None:
                    np.save(tmp / f"{name}.npy", value)
            for i, ref in enumerate(self.reference_images):
                np.save(tmp / f"reference_{i}.npy", ref)
            for i, image in enumerate(self.images):
                np.save(tmp / f"image_{i}.npy", image)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return JobInputs(
            folder=str(folder.resolve()),
            image=self.image is not None,
            last_image=self.last_image is not None,
            video=self.video is not None,
            mask=self.mask is not None,
            reference_images=len(self.reference_images),
            images=len(self.images),
            summary=self.summary,
        )

    @classmethod
    def load(cls, inputs: JobInputs) -> PreparedInputs:
        """Read back what ``save`` wrote.

        Raises:
            FileNotFoundError: the folder or one of its arrays is gone.
        """
        folder = Path(inputs.folder)

        def read(name: str) -> np.ndarray:
            return np.load(folder / f"{name}.npy", allow_pickle=False)

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


def _owned_folder(inputs: JobInputs, inputs_root: Path) -> Path | None:
    """The job's input folder when it lies directly under ``inputs_root`` (nothing else is ours to touch)."""
    folder = Path(inputs.folder).resolve()
    return folder if folder.parent == Path(inputs_root).resolve() else None


def remove_inputs(inputs: JobInputs | None, inputs_root: Path) -> None:
    """Delete a job's input folder, but only if it lies directly under ``inputs_root``.

    Every removal of an input folder goes through here.
    """
    if inputs is None:
        return
    folder = _owned_folder(inputs, inputs_root)
    if folder is not None and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)


def copy_inputs(inputs: JobInputs, inputs_root: Path, new_job_id: str) -> JobInputs | None:
    """Copy a job's input folder for job ``new_job_id`` (a remix); None when the folder is gone
    or does not lie directly under ``inputs_root``.

    Raises:
        OSError: the copy failed (full disk).
    """
    source = _owned_folder(inputs, inputs_root)
    if source is None or not source.is_dir():
        return None
    target = Path(inputs_root) / new_job_id
    shutil.copytree(source, target)
    return inputs.model_copy(update={"folder": str(target.resolve())})

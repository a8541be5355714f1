"""Checking a request's uploads against its variant, then decoding and fitting them.

Runs in the ingress, before a job exists: every rule below ends in a 4xx that names the
field and says what to send instead, so no job is queued that would fail later. Which task
takes which uploads is ``TASK_UPLOADS`` (model_store/variants.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.errors import InvalidMedia, UploadTooLarge, ValidationFailed
from jobs.inputs import PreparedInputs
from media.decode import (
    VIDEO_CONTAINERS,
    decode_image,
    decode_video,
    image_to_mask,
    looks_like_image,
    sniff_image_format,
)
from media.fit import Fit, fit_image, fit_mask, fit_video
from model_store.variants import Limits, Size, VariantConfig

_WHAT = {"image": "the first frame", "video": "the source clip", "mask": "the mask (white = regenerate)"}


@dataclass
class Upload:
    """One uploaded file: its multipart field name, bytes and (untrusted) client file name."""

    field: str
    data: bytes
    filename: str | None = None


@dataclass
class PreparedMedia:
    """What the uploads decide about a job.

    Attributes:
        size: the output size, WIDTHxHEIGHT: an API size key (``1280x720``) of a video variant, or an
            image variant's output size.
        num_frames: frames to generate (for vace: what the source clip gives, 4k+1).
        inputs: decoded and fitted inputs, or None for a text-only job.
    """

    size: str
    num_frames: int
    inputs: PreparedInputs | None


def _orientation_size(variant: VariantConfig, width: int, height: int) -> str:
    portrait = height > width
    for key, native in variant.native_sizes.items():
        if (native.height > native.width) == portrait:
            return key
    return next(iter(variant.native_sizes))


def _check_fields(variant: VariantConfig, uploads: list[Upload], image_variants: list[str]) -> dict[str, list[Upload]]:
    by_field: dict[str, list[Upload]] = {}
    for up in uploads:
        by_field.setdefault(up.field, []).append(up)
    accepted = variant.uploads.accepted
    for name, ups in by_field.items():
        if name not in accepted:
            if variant.task == "t2v" and name in ("image", "last_image"):
                others = ", ".join(image_variants) or "an i2v or ti2v variant"
                raise ValidationFailed(
                    f"variant {variant.name} generates from text only and takes no {name}; "
                    f"for image-to-video use {others}",
                    field=name,
                )
            takes = ", ".join(accepted) if accepted else "no uploads (text only)"
            raise ValidationFailed(f"variant {variant.name} takes {takes}; it cannot use {name!r}", field=name)
        if len(ups) > 1 and name not in variant.uploads.repeatable:
            raise ValidationFailed(f"send one {name}, not {len(ups)}", field=name)
        for up in ups:
            if len(up.data) > variant.limits.max_upload_bytes:
                raise UploadTooLarge(
                    f"{name} is {len(up.data) / 2**20:.1f} MiB; files may be at most "
                    f"{variant.limits.max_upload_bytes / 2**20:.0f} MiB",
                    field=name,
                )
    for name in variant.uploads.required:
        if name not in by_field:
            what = "an image to edit" if variant.task == "image_edit" else _WHAT.get(name, name)
            raise ValidationFailed(
                f"variant {variant.name} needs {what}: send it as the multipart file field {name!r}",
                field=name,
            )
    images = by_field.get("image", [])
    if variant.task == "image_edit" and len(images) > variant.limits.max_edit_images:
        raise ValidationFailed(
            f"variant {variant.name} edits from 1 to {variant.limits.max_edit_images} images, got {len(images)}",
            field="image",
        )
    refs = by_field.get("reference_images", [])
    if len(refs) > variant.limits.max_reference_images:
        raise ValidationFailed(
            f"at most {variant.limits.max_reference_images} reference_images, got {len(refs)}", field="reference_images"
        )
    return by_field


def image_output_size(variant: VariantConfig, size: str | None, first: tuple[int, int] | None) -> Size:
    """An image variant's output size: ``size`` (WIDTHxHEIGHT) when given, checked against the
    variant's grid and bounds; else the first input image's (width, height) aspect at the default
    area (``VariantConfig.image_size_for``), each side kept within the bounds.

    Raises:
        ValidationFailed: a malformed size, a side off the grid or outside the bounds.
    """
    assert variant.image_sizing is not None
    grid, limits = variant.image_sizing.multiple_of, variant.limits
    low, high = limits.min_image_side, limits.max_image_side
    if size is None:
        w, h = first or (1, 1)
        chosen = variant.image_size_for(w, h)
        fit = [min(max(side, -(-low // grid) * grid), high // grid * grid) for side in (chosen.width, chosen.height)]
        return Size(width=fit[0], height=fit[1])
    try:
        asked = Size.parse(size)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="size") from None
    sides = (asked.width, asked.height)
    if any(side % grid for side in sides) or not all(low <= side <= high for side in sides):
        nearest = Size(**{k: min(max(round(v / grid) * grid, low), high) for k, v in asked.model_dump().items()})
        raise ValidationFailed(
            f"variant {variant.name} makes images whose sides are multiples of {grid} from {low} to {high} pixels; "
            f"got {size}, try {nearest}",
            field="size",
        )
    return asked


def _check_size(variant: VariantConfig, size: str) -> str:
    if size not in variant.native_sizes:
        raise ValidationFailed(
            f"variant {variant.name} serves sizes {', '.join(variant.native_sizes)}, not {size}", field="size"
        )
    return size


def _video_frames(variant: VariantConfig, clip_len: int, requested: int | None) -> int:
    """Frames to generate from a clip that gives ``clip_len`` frames at the variant's fps."""
    if requested is not None:
        if clip_len < requested:
            usable = variant.round_frames(clip_len, down=True)
            raise InvalidMedia(
                f"video gives {clip_len} frames at {variant.fps} fps, fewer than num_frames={requested}; "
                f"ask for num_frames={usable} or send a longer clip",
                field="video",
            )
        return requested
    return variant.round_frames(clip_len, down=True)


def _image_limits(limits: Limits) -> dict:
    """decode_image's limits from the variant's."""
    return {"max_side": limits.max_input_side, "max_pixels": limits.max_input_pixels}


def _video_limits(limits: Limits) -> dict:
    """decode_video's limits from the variant's."""
    return {
        **_image_limits(limits),
        "max_source_frames": limits.max_source_frames,
        "budget_s": limits.decode_budget_s,
    }


def _prepare_mask(
    variant: VariantConfig, up: Upload, video_size: tuple[int, int], native, num_frames: int, fit: Fit
) -> tuple[np.ndarray, dict]:
    limits = variant.limits
    if looks_like_image(up.data):
        rgb = decode_image(up.data, field="mask", **_image_limits(limits))
        masks = image_to_mask(rgb)[None]
        summary = {
            "kind": "image",
            "width": rgb.shape[1],
            "height": rgb.shape[0],
            "format": sniff_image_format(up.data),
        }
    else:
        clip = decode_video(up.data, field="mask", fps=variant.fps, max_frames=num_frames, **_video_limits(limits))
        if len(clip.frames) < num_frames:
            raise InvalidMedia(
                f"mask video gives {len(clip.frames)} frames at {variant.fps} fps but the video gives {num_frames}; "
                "send a mask video at least as long as the video, or a mask image",
                field="mask",
            )
        masks = np.stack([image_to_mask(f) for f in clip.frames])
        summary = {
            "kind": "video",
            "width": clip.source_size[0],
            "height": clip.source_size[1],
            "fps": clip.source_fps,
            "container": VIDEO_CONTAINERS[clip.container],
        }
    height, width = masks.shape[1:]
    if (width, height) == video_size:
        masks = fit_mask(masks, native.width, native.height, fit)
    elif (width, height) != (native.width, native.height):
        raise InvalidMedia(
            f"mask is {width}x{height} but the video is {video_size[0]}x{video_size[1]} (output "
            f"{native.width}x{native.height}); send a mask of the video's size",
            field="mask",
        )
    if not masks.any():
        raise InvalidMedia(
            "mask is black everywhere, so nothing would be regenerated; paint the region to regenerate white",
            field="mask",
        )
    if len(masks) == 1:
        masks = np.repeat(masks, num_frames, axis=0)
    return masks, summary


def _prepare_edit_images(variant: VariantConfig, size: str | None, uploads: list[Upload]) -> PreparedMedia:
    """Decode an image_edit request's images as uploaded: the pipeline resizes each itself (about
    384x384 for its text encoder, 1024x1024 for its VAE), so nothing is fitted here."""
    images = [
        decode_image(up.data, field="image" if len(uploads) == 1 else f"image[{i}]", **_image_limits(variant.limits))
        for i, up in enumerate(uploads)
    ]
    chosen = image_output_size(variant, size, (images[0].shape[1], images[0].shape[0]))
    summary = {
        "images": [
            {"width": im.shape[1], "height": im.shape[0], "format": sniff_image_format(up.data)}
            for im, up in zip(images, uploads, strict=True)
        ]
    }
    return PreparedMedia(size=str(chosen), num_frames=1, inputs=PreparedInputs(images=images, summary=summary))


def prepare_media(
    variant: VariantConfig,
    *,
    size: str | None,
    num_frames: int | None,
    fit: Fit,
    uploads: list[Upload],
    image_variants: list[str],
) -> PreparedMedia:
    """Check ``uploads`` against ``variant``'s task, decode them, and fit them to the output size.

    Args:
        variant: the variant the request names.
        size: the requested API size, or None to choose it from the uploads' orientation.
        num_frames: the requested frame count, or None for the variant default (vace: the clip's length).
        fit: ``crop`` or ``pad`` (media/fit.py).
        uploads: the request's files.
        image_variants: deployed variants that take an image, named in the refusal of an image sent to t2v.

    Raises:
        ValidationFailed: a missing, unexpected or duplicated upload; a size the variant does not serve.
        UploadTooLarge: a file above ``limits.max_upload_bytes``.
        UnsupportedMediaType: a file of a format the service does not take.
        InvalidMedia: an undecodable, truncated or oversized file, a mask that does not fit the video,
            or a clip shorter than ``num_frames``.
    """
    by_field = _check_fields(variant, uploads, image_variants)
    limits = variant.limits
    default_frames = num_frames if num_frames is not None else variant.defaults.num_frames
    if variant.task == "image_edit":
        return _prepare_edit_images(variant, size, by_field["image"])
    if not by_field:
        chosen = _check_size(variant, size or next(iter(variant.native_sizes)))
        return PreparedMedia(size=chosen, num_frames=default_frames, inputs=None)

    prepared = PreparedInputs()
    summary: dict[str, Any] = {}
    if variant.task in ("i2v", "ti2v"):
        images = {}
        for name in ("image", "last_image"):
            if name in by_field:
                images[name] = decode_image(by_field[name][0].data, field=name, **_image_limits(limits))
                summary[name] = {
                    "width": images[name].shape[1],
                    "height": images[name].shape[0],
                    "format": sniff_image_format(by_field[name][0].data),
                }
        h, w = images["image"].shape[:2]
        chosen = _check_size(variant, size or _orientation_size(variant, w, h))
        native = variant.native_sizes[chosen]
        prepared.image = fit_image(images["image"], native.width, native.height, fit)
        if "last_image" in images:
            prepared.last_image = fit_image(images["last_image"], native.width, native.height, fit)
        frames = default_frames
    else:  # vace
        clip = decode_video(
            by_field["video"][0].data,
            field="video",
            fps=variant.fps,
            max_frames=num_frames if num_frames is not None else min(default_frames, limits.max_num_frames),
            **_video_limits(limits),
        )
        frames = _video_frames(variant, len(clip.frames), num_frames)
        chosen = _check_size(variant, size or _orientation_size(variant, *clip.source_size))
        native = variant.native_sizes[chosen]
        prepared.video = fit_video(clip.frames[:frames], native.width, native.height, fit)
        summary["video"] = {
            "width": clip.source_size[0],
            "height": clip.source_size[1],
            "fps": clip.source_fps,
            "container": VIDEO_CONTAINERS[clip.container],
            "frames_used": frames,
        }
        prepared.mask, summary["mask"] = _prepare_mask(
            variant, by_field["mask"][0], clip.source_size, native, frames, fit
        )
        for i, up in enumerate(by_field.get("reference_images", [])):
            prepared.reference_images.append(
                decode_image(up.data, field=f"reference_images[{i}]", **_image_limits(limits))
            )
        if prepared.reference_images:
            summary["reference_images"] = [
                {"width": r.shape[1], "height": r.shape[0]} for r in prepared.reference_images
            ]
    prepared.summary = summary
    return PreparedMedia(size=chosen, num_frames=frames, inputs=prepared)

"""The one adjustment Qwen-Image-Edit's processor needs to load without torchvision.

``QwenImageEditPlusPipeline`` prompts its Qwen2.5-VL text encoder through a ``Qwen2VLProcessor``
(tokenizer + image processor). In transformers 5 that processor also insists on a video processor,
both when it is built and in ``from_pretrained``, and the video processor imports torchvision,
which this project does not install (nothing else needs it; it pins torch's exact build). The
pipeline never sends the processor a video, so ``ImageOnlyQwen2VLProcessor`` narrows the
processor's parts to the image processor and the tokenizer. Everything that builds or loads the
pipeline gets its processor from here.

The saved layout stays the real one: model_index.json names ``transformers.Qwen2VLProcessor``,
as the published repo does, and the processor folder holds the same files.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Qwen2VLProcessor

#: model_index.json's entry for the processor, as in the published Qwen/Qwen-Image-Edit-2509 repo.
PROCESSOR_INDEX_ENTRY = ["transformers", "Qwen2VLProcessor"]


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` made of its image processor and tokenizer only (no video processor)."""

    @classmethod
    def get_attributes(cls) -> list[str]:
        # transformers reads a processor's parts from this list, both in __init__ and in
        # from_pretrained; without "video_processor" neither builds one.
        return ["image_processor", "tokenizer"]


def load_processor(location: str | Path, revision: str | None = None, **kwargs) -> ImageOnlyQwen2VLProcessor:
    """The pipeline's processor from its ``processor`` subfolder (a local folder or a Hub repo id).

    Raises:
        OSError: the folder or repo has no readable processor files.
    """
    return ImageOnlyQwen2VLProcessor.from_pretrained(str(location), subfolder="processor", revision=revision, **kwargs)

"""Tiny random-weight twins of the served pipelines (Wan 2.2 and Qwen-Image-Edit).

No weights can be downloaded on the development machines, so each real variant has
a twin built here: the *same* diffusers and transformers classes, the same
structure (two experts and boundary_ratio for A14B, expand_timesteps and the 48-channel
Wan2.2 VAE for TI2V-5B, VACE control blocks, a UMT5 text encoder), and
small dimensions. The twin is saved in the standard diffusers layout
(model_index.json, one folder per component, safetensors) and is loaded by the
same ``from_pretrained`` code as the real weights.

Same seed -> same weights: every component is created right after
``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from model_store.settings import StoreSettings
from model_store.variants import VariantConfig, load_variant
from model_store.weights_manifest import read_manifest, write_manifest

# Words that get their own tokenizer piece; everything else falls back to characters.
_TOKENIZER_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "to",
    "with",
    "and",
    "is",
    "are",
    "over",
    "under",
    "through",
    "cat",
    "dog",
    "bird",
    "cockatoo",
    "astronaut",
    "city",
    "street",
    "beach",
    "forest",
    "ocean",
    "river",
    "mountain",
    "sky",
    "sunset",
    "sunrise",
    "night",
    "day",
    "rain",
    "snow",
    "light",
    "red",
    "blue",
    "green",
    "gold",
    "white",
    "black",
    "camera",
    "slow",
    "motion",
    "close",
    "up",
    "wide",
    "shot",
    "walking",
    "running",
    "flying",
    "dancing",
    "video",
    "cinematic",
]


def build_tokenizer():
    """A small Unigram tokenizer with T5's conventions (Metaspace, ``</s>`` appended), built offline.

    Returns a ``transformers.T5TokenizerFast`` whose vocabulary is
    ``<pad>=0, </s>=1, <unk>=2``, then word pieces, then single characters.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -5.0) for w in _TOKENIZER_WORDS]
    vocab += [(c, -8.0) for c in string.ascii_letters + string.digits + string.punctuation]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


_TEXT_DIM = 32


def _tiny_text_encoder(tokenizer, seed: int):
    """UMT5 encoder of the real class (UMT5-XXL in the real models), 2 layers of width 32."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=_TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
        )
    )


def _tiny_transformer(seed: int, in_channels: int, out_channels: int, cls_name: str = "WanTransformer3DModel", **extra):
    """A 2-layer Wan transformer with the real patch (1, 2, 2), qk norm and RoPE settings."""
    import diffusers

    torch.manual_seed(seed)
    return getattr(diffusers, cls_name)(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=_TEXT_DIM,
        freq_dim=256,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
        **extra,
    )


def _tiny_wan21_vae(seed: int):
    """The Wan2.1 VAE of the A14B and VACE models: z_dim 16, 8x spatial and 4x temporal compression,
    no patchify. Width 4 with a flat dim_mult, so the full-size decode stays cheap on a CPU."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=4,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16,
        latents_std=[1.0] * 16,
    )


def _flow_unipc(flow_shift: float):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift, num_train_timesteps=1000
    )


def build_ti2v_5b_tiny(seed: int = 0):
    """Build the tiny twin of Wan-AI/Wan2.2-TI2V-5B-Diffusers as an in-memory ``WanPipeline``.

    Kept from the real model (its model_index.json and component configs):
    ``WanPipeline`` with ``expand_timesteps=True`` and no ``transformer_2``; the
    Wan2.2 VAE (``AutoencoderKLWan`` with z_dim=48, is_residual=True, patch_size=2,
    16x spatial and 4x temporal compression); ``WanTransformer3DModel`` with
    patch (1, 2, 2) and 48 in/out channels; a ``UMT5EncoderModel`` text encoder;
    ``UniPCMultistepScheduler`` with flow-matching sigmas and flow_shift 5.0.
    Shrunk: widths, depths and the vocabulary. The same folder loads as
    ``WanImageToVideoPipeline`` for text+image jobs, as the real weights do.
    """
    from diffusers import AutoencoderKLWan, WanPipeline

    tokenizer = build_tokenizer()
    text_encoder = _tiny_text_encoder(tokenizer, seed)
    transformer = _tiny_transformer(seed, 48, 48)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        # Width 4 with a flat dim_mult: the decoder runs at full 1280x704 on CPU, where its
        # conv3d and channel RMS norms dominate a tiny job (measured: width 8 is ~2.5x slower).
        base_dim=4,
        decoder_base_dim=4,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=[0.0] * 48,
        latents_std=[1.0] * 48,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=_flow_unipc(5.0),
        transformer_2=None,
        boundary_ratio=None,
        expand_timesteps=True,
    )


def build_t2v_a14b_tiny(seed: int = 0):
    """Build the tiny twin of Wan-AI/Wan2.2-T2V-A14B-Diffusers as an in-memory ``WanPipeline``.

    Kept: two experts of the real class, ``transformer`` (high noise) and ``transformer_2``
    (low noise), switched at ``boundary_ratio`` 0.875 (Wan2.2 wan/configs/wan_t2v_A14B.py:
    boundary 0.875); 16 latent in/out channels; the Wan2.1 VAE (z_dim 16, 8x spatial);
    UMT5; UniPC flow matching with flow_shift 12.0 (wan_t2v_A14B.py: sample_shift 12.0).
    The two experts get different seeds, so they are different modules, as in the real model.
    """
    from diffusers import WanPipeline

    tokenizer = build_tokenizer()
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_tiny_text_encoder(tokenizer, seed),
        transformer=_tiny_transformer(seed, 16, 16),
        transformer_2=_tiny_transformer(seed + 1, 16, 16),
        vae=_tiny_wan21_vae(seed),
        scheduler=_flow_unipc(12.0),
        boundary_ratio=0.875,
        expand_timesteps=False,
    )


def build_i2v_a14b_tiny(seed: int = 0):
    """Build the tiny twin of Wan-AI/Wan2.2-I2V-A14B-Diffusers as an in-memory ``WanImageToVideoPipeline``.

    Kept: two experts with ``in_channels`` 36 (16 noise latents + 4 frame-mask channels + 16
    image-condition latents) and 16 out, ``boundary_ratio`` 0.9 (wan_i2v_A14B.py: boundary 0.900),
    no image encoder (Wan2.2 I2V conditions on VAE latents only: ``image_dim`` is None), the
    Wan2.1 VAE, UMT5, and UniPC with flow_shift 5.0 (wan_i2v_A14B.py: sample_shift 5.0).
    """
    from diffusers import WanImageToVideoPipeline

    tokenizer = build_tokenizer()
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=_tiny_text_encoder(tokenizer, seed),
        transformer=_tiny_transformer(seed, 36, 16),
        transformer_2=_tiny_transformer(seed + 1, 36, 16),
        vae=_tiny_wan21_vae(seed),
        scheduler=_flow_unipc(5.0),
        image_processor=None,
        image_encoder=None,
        boundary_ratio=0.9,
        expand_timesteps=False,
    )


def build_vace_14b_tiny(seed: int = 0):
    """Build the tiny twin of Wan-AI/Wan2.1-VACE-14B-diffusers as an in-memory ``WanVACEPipeline``.

    Kept: ``WanVACETransformer3DModel`` with VACE control blocks (``vace_layers`` must include
    layer 0; here [0, 1] of 2 layers, the real model has [0, 5, ..., 35] of 40) and
    ``vace_in_channels`` 96 (16 inactive + 16 reactive video latents + 64 = 8x8 pixel-unshuffled
    mask), the Wan2.1 VAE, UMT5, UniPC with flow_shift 5.0 (the diffusers VACE docs use 5.0 for 720P).
    """
    from diffusers import WanVACEPipeline

    tokenizer = build_tokenizer()
    return WanVACEPipeline(
        tokenizer=tokenizer,
        text_encoder=_tiny_text_encoder(tokenizer, seed),
        transformer=_tiny_transformer(
            seed, 16, 16, "WanVACETransformer3DModel", vace_layers=[0, 1], vace_in_channels=96
        ),
        vae=_tiny_wan21_vae(seed),
        scheduler=_flow_unipc(5.0),
    )


def _byte_level_qwen_tokenizer():
    """A byte-level BPE ``Qwen2Tokenizer`` with the real model's chat and vision special tokens.

    Qwen2.5-VL's tokenizer is byte-level BPE over 151k merges; with no merges, each of the 256
    byte symbols is a token, which keeps every prompt encodable. The special tokens are the ones
    the pipeline's prompt template and the processor use (``<|im_start|>``, ``<|vision_start|>``,
    ``<|image_pad|>`` ...), so the prompt is built exactly as for the real model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return Qwen2Tokenizer(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ],
    )


def build_qwen_image_edit_tiny(seed: int = 0):
    """Build the tiny twin of Qwen/Qwen-Image-Edit-2509 as an in-memory ``QwenImageEditPlusPipeline``.

    Kept from the real model (its model_index.json and component configs): a
    ``Qwen2_5_VLForConditionalGeneration`` text encoder that sees the edit images through its
    vision tower (patch 14, 2x2 merge, temporal patch 2, windowed attention with full-attention
    blocks) and multimodal RoPE (mrope sections in the ratio of the real [16, 24, 24]); the
    ``Qwen2VLProcessor`` (through model_store/qwen_processor.py); a ``QwenImageTransformer2DModel``
    MMDiT with patch 2, 64 in (16 latent channels x 2x2) and 16 out channels; the
    ``AutoencoderKLQwenImage`` (z_dim 16, 8x spatial compression, which the pipeline's
    ``vae_scale_factor`` reads from its three downsamples); and ``FlowMatchEulerDiscreteScheduler``
    with the real scheduler config (dynamic shifting, base_shift 0.5, max_shift 0.9,
    shift_terminal 0.02, exponential time shift). Shrunk: widths, depths and the vocabulary.
    The pipeline resizes every edit image to about 1024x1024 for the VAE whatever the output size,
    so the VAE is 4 channels wide: a CPU job takes seconds.
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from model_store.qwen_processor import ImageOnlyQwen2VLProcessor

    tokenizer = _byte_level_qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=ids("<|im_end|>"),
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
    )
    vision_config = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=_TEXT_DIM,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
    )
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config=vision_config,
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
    )
    # The real processor's pixel limits (Qwen2.5-VL preprocessor_config.json: min_pixels 3136,
    # max_pixels 12845056) bound what the pipeline's 384x384 condition images become.
    processor = ImageOnlyQwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(
            min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, temporal_patch_size=2, merge_size=2
        ),
        tokenizer=tokenizer,
    )
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_DIM,
        axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    return QwenImageEditPlusPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )


#: Tiny-twin variant name -> builder of its in-memory pipeline.
TINY_BUILDERS: dict[str, Callable[[int], Any]] = {
    "t2v-a14b-tiny": build_t2v_a14b_tiny,
    "i2v-a14b-tiny": build_i2v_a14b_tiny,
    "ti2v-5b-tiny": build_ti2v_5b_tiny,
    "vace-14b-tiny": build_vace_14b_tiny,
    "qwen-image-edit-tiny": build_qwen_image_edit_tiny,
}


def _real_index_entries(folder: Path) -> None:
    """Name the real classes in a saved twin's model_index.json where the twin used a stand-in
    (the processor: model_store/qwen_processor.py), so the twin's layout is the published one."""
    import json

    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    if "processor" in index:
        from model_store.qwen_processor import PROCESSOR_INDEX_ENTRY

        index["processor"] = PROCESSOR_INDEX_ENTRY
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_tiny_twin(
    variant: VariantConfig, settings: StoreSettings | None = None, *, seed: int = 0, force: bool = False
) -> Path:
    """Build ``variant``'s tiny twin and save it in diffusers layout at its ``weights.local_path``.

    Written to a temporary folder beside the target and renamed, so a half-written
    twin is never loaded. Returns the folder. Does nothing if it already exists
    (unless ``force``).

    Raises:
        KeyError: the variant has no tiny-twin builder.
    """
    settings = settings or StoreSettings()
    if variant.name not in TINY_BUILDERS:
        raise KeyError(f"variant {variant.name!r} has no tiny-twin builder; known: {sorted(TINY_BUILDERS)}")
    assert variant.weights.local_path is not None, "a tiny twin is always local"
    target = variant.weights.local_path
    if not target.is_absolute():
        target = settings.model_dir / target
    if (target / "model_index.json").is_file() and not force:
        if read_manifest(target) is None:  # built before manifests existed
            write_manifest(target, variant.name, "tiny")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    pipe = TINY_BUILDERS[variant.name](seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _real_index_entries(tmp)
        write_manifest(tmp, variant.name, "tiny")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def ensure_tiny_twins(
    names: list[str] | None = None, settings: StoreSettings | None = None, *, force: bool = False
) -> list[Path]:
    """Build every missing tiny twin among ``names`` (default: all known), or all of them with ``force``.

    Returns their folders.
    """
    settings = settings or StoreSettings()
    return [save_tiny_twin(load_variant(n, settings), settings, force=force) for n in (names or sorted(TINY_BUILDERS))]

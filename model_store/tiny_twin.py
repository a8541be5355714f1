"""Tiny random-weight twins of the Wan 2.2 pipelines.

No weights can be downloaded on the development machines, so each real variant has
a twin built here: the *same* diffusers and transformers classes, the same
structure (expand_timesteps, a 48-channel Wan2.2 VAE, a UMT5 text encoder), and
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
from pathlib import Path
from typing import Callable

import torch

from model_store.settings import StoreSettings
from model_store.variants import VariantConfig, load_variant

# Words that get their own tokenizer piece; everything else falls back to characters.
_TOKENIZER_WORDS = (
    "a an the of in on at to with and is are over under through cat dog bird cockatoo astronaut "
    "city street beach forest ocean river mountain sky sunset sunrise night day rain snow light "
    "red blue green gold white black camera slow motion close up wide shot walking running flying "
    "dancing video cinematic"
).split()


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
    return T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0
    )


def build_ti2v_5b_tiny(seed: int = 0):
    """Build the tiny twin of Wan-AI/Wan2.2-TI2V-5B-Diffusers as an in-memory ``WanPipeline``.

    Kept from the real model (its model_index.json and component configs):
    ``WanPipeline`` with ``expand_timesteps=True`` and no ``transformer_2``; the
    Wan2.2 VAE (``AutoencoderKLWan`` with z_dim=48, is_residual=True, patch_size=2,
    16x spatial and 4x temporal compression); ``WanTransformer3DModel`` with
    patch (1, 2, 2) and 48 in/out channels; a ``UMT5EncoderModel`` text encoder;
    ``UniPCMultistepScheduler`` with flow-matching sigmas and flow_shift 5.0.
    Shrunk: widths, depths and the vocabulary.
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = build_tokenizer()
    text_dim = 32

    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_dim,
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

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=48,
        out_channels=48,
        text_dim=text_dim,
        freq_dim=256,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    )

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

    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0, num_train_timesteps=1000
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        transformer_2=None,
        boundary_ratio=None,
        expand_timesteps=True,
    )


#: Tiny-twin variant name -> builder of its in-memory pipeline.
TINY_BUILDERS: dict[str, Callable[[int], object]] = {"ti2v-5b-tiny": build_ti2v_5b_tiny}


def save_tiny_twin(variant: VariantConfig, settings: StoreSettings | None = None, *, seed: int = 0,
                   force: bool = False) -> Path:
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
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    pipe = TINY_BUILDERS[variant.name](seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def ensure_tiny_twins(names: list[str] | None = None, settings: StoreSettings | None = None, *,
                      force: bool = False) -> list[Path]:
    """Build every missing tiny twin among ``names`` (default: all known), or all of them with ``force``.

    Returns their folders.
    """
    settings = settings or StoreSettings()
    return [save_tiny_twin(load_variant(n, settings), settings, force=force) for n in (names or sorted(TINY_BUILDERS))]

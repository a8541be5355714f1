"""Weight layouts of the real Wan 2.2 models, built on the meta device from their published
configs: the fit check can price them (``wan-serve models plan``, bench/memory.py) without
downloading 30 to 126 GB.

Sources of the numbers:
- Wan2.2 wan/configs/wan_t2v_A14B.py, wan_i2v_A14B.py, wan_ti2v_5B.py: dim 5120 / ffn 13824 /
  40 heads / 40 layers for each A14B expert; dim 3072 / ffn 14336 / 24 heads / 30 layers for TI2V-5B;
  patch (1, 2, 2); vae_stride (4, 8, 8) for the Wan2.1 VAE and (4, 16, 16) for the Wan2.2 VAE.
- UMT5-XXL (google/umt5-xxl): d_model 4096, d_ff 10240, 24 layers, 64 heads of 64, vocabulary 256384.
- diffusers AutoencoderKLWan defaults (Wan2.1 VAE: base_dim 96, z_dim 16) and the Wan2.2 VAE's
  diffusers config (base_dim 160, decoder_base_dim 256, z_dim 48, patch_size 2, is_residual).
- I2V-A14B: in_channels 36 (16 noise + 4 mask + 16 image latents). VACE-14B: Wan2.1-VACE-14B,
  vace_layers every 5th of 40, vace_in_channels 96.
- Qwen-Image-Edit-2509 (its transformer/config.json, the same as Qwen-Image's): QwenImageTransformer2DModel
  with 60 layers, 24 heads of 128, joint_attention_dim 3584, in_channels 64, out_channels 16, patch 2,
  axes_dims_rope (16, 56, 56), about 20B parameters (the model card's "20B MMDiT"). Its text encoder is
  Qwen2.5-VL-7B-Instruct (config.json: hidden 3584, intermediate 18944, 28 layers, 28 heads, 4 KV
  heads, vocabulary 152064; vision tower depth 32, hidden 1280, intermediate 3420, 16 heads, out 3584).
  Its VAE: AutoencoderKLQwenImage (base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 res blocks).
"""

from __future__ import annotations

import torch

from model_store.fit_check import TensorInfo, WeightsLayout

_WAN14B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
_WAN5B = dict(_WAN14B, num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48)
_WAN21_VAE = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]
)
_WAN22_VAE = dict(
    base_dim=160,
    decoder_base_dim=256,
    z_dim=48,
    in_channels=12,
    out_channels=12,
    is_residual=True,
    patch_size=2,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
    temperal_downsample=[False, True, True],
)
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
)

_QWEN_IMAGE = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=60,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    axes_dims_rope=(16, 56, 56),
)
_QWEN_IMAGE_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
_QWEN25_VL_7B = dict(
    text_config=dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        tie_word_embeddings=False,
    ),
    vision_config=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
    ),
    tie_word_embeddings=False,
)

#: Real variant -> (transformer class, its config, second expert?, VAE config).
REFERENCE = {
    "t2v-a14b": ("WanTransformer3DModel", _WAN14B, True, _WAN21_VAE),
    "i2v-a14b": ("WanTransformer3DModel", dict(_WAN14B, in_channels=36), True, _WAN21_VAE),
    "ti2v-5b": ("WanTransformer3DModel", _WAN5B, False, _WAN22_VAE),
    "vace-14b": (
        "WanVACETransformer3DModel",
        dict(_WAN14B, vace_layers=list(range(0, 40, 5)), vace_in_channels=96),
        False,
        _WAN21_VAE,
    ),
    "qwen-image-edit": ("QwenImageTransformer2DModel", _QWEN_IMAGE, False, _QWEN_IMAGE_VAE),
}


def _text_encoder(variant: str) -> torch.nn.Module:
    """The real variant's text encoder, on whatever device is current (meta, in reference_layout)."""
    if variant.startswith("qwen-image"):
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**_QWEN25_VL_7B))
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**UMT5_XXL))


def _tensors(module: torch.nn.Module, dtype: str) -> list[TensorInfo]:
    """Parameters once each (UMT5 ties embed_tokens to shared, and a checkpoint stores it once)."""
    return [TensorInfo(name=n, shape=list(p.shape), dtype=dtype) for n, p in module.named_parameters()]


def reference_layout(variant: str) -> WeightsLayout:
    """The WeightsLayout of real variant ``variant`` (a key of REFERENCE), in bf16 (fp32 VAE for Wan;
    Qwen-Image-Edit's runs in bf16 as its model card loads it, but its safetensors are priced as stored).

    Raises:
        KeyError: not a real variant with a reference layout.
    """
    import diffusers

    cls, config, two, vae = REFERENCE[variant]
    vae_cls = diffusers.AutoencoderKLQwenImage if cls == "QwenImageTransformer2DModel" else diffusers.AutoencoderKLWan
    with torch.device("meta"):
        transformer = getattr(diffusers, cls)(**config)
        text = _text_encoder(variant)
        autoencoder = vae_cls(**vae)
    tensors = {
        "transformer": _tensors(transformer, "BF16"),
        "text_encoder": _tensors(text, "BF16"),
        "vae": _tensors(autoencoder, "F32"),
    }
    if two:
        tensors["transformer_2"] = tensors["transformer"]
    return WeightsLayout(
        tensors=tensors, transformer_config=dict(transformer.config), vae_config=dict(autoencoder.config)
    )

import json

import pytest
import torch
from safetensors.torch import load_file

from model_store.loader import load_pipeline
from model_store.settings import StoreSettings
from model_store.tiny_twin import save_tiny_twin
from model_store.variants import load_variant


def test_layout_classes_and_loading(tiny_weights):
    index = json.loads((tiny_weights / "model_index.json").read_text())
    # The classes of Wan-AI/Wan2.2-TI2V-5B-Diffusers' model_index.json.
    assert index["_class_name"] == "WanPipeline"
    assert index["expand_timesteps"] is True
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    assert index["transformer_2"] == [None, None]
    for part in ("transformer", "vae"):
        assert (tiny_weights / part / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_weights / "text_encoder" / "model.safetensors").is_file()
    assert (tiny_weights / "tokenizer" / "tokenizer.json").is_file()

    pipe = load_pipeline(load_variant("ti2v-5b-tiny"))
    assert pipe.vae.config.z_dim == 48 and pipe.vae.config.is_residual
    assert pipe.transformer.config.in_channels == 48
    assert pipe.vae_scale_factor_spatial == 16 and pipe.vae_scale_factor_temporal == 4
    ids = pipe.tokenizer("a cat on the beach").input_ids
    assert ids[-1] == pipe.tokenizer.eos_token_id and pipe.tokenizer.unk_token_id not in ids


def test_same_seed_same_weights(tmp_path):
    cfg = load_variant("ti2v-5b-tiny")
    a = save_tiny_twin(cfg, StoreSettings(model_dir=tmp_path / "a"), seed=0)
    b = save_tiny_twin(cfg, StoreSettings(model_dir=tmp_path / "b"), seed=0)
    c = save_tiny_twin(cfg, StoreSettings(model_dir=tmp_path / "c"), seed=1)
    name = "transformer/diffusion_pytorch_model.safetensors"
    wa, wb, wc = load_file(a / name), load_file(b / name), load_file(c / name)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_a14b_and_vace_twins_keep_the_real_structure(tiny_weights):
    t2v = load_pipeline(load_variant("t2v-a14b-tiny"))
    assert type(t2v).__name__ == "WanPipeline" and t2v.config.boundary_ratio == 0.875
    assert t2v.transformer is not None and t2v.transformer_2 is not None
    assert not torch.equal(t2v.transformer.proj_out.weight, t2v.transformer_2.proj_out.weight)  # two experts
    assert t2v.vae.config.z_dim == 16 and t2v.vae_scale_factor_spatial == 8  # Wan2.1 VAE
    assert t2v.scheduler.config.flow_shift == 12.0

    i2v = load_pipeline(load_variant("i2v-a14b-tiny"))
    assert type(i2v).__name__ == "WanImageToVideoPipeline" and i2v.config.boundary_ratio == 0.9
    assert i2v.transformer.config.in_channels == 36 and i2v.transformer_2.config.in_channels == 36
    assert i2v.transformer.config.image_dim is None and i2v.image_encoder is None  # latent conditioning only

    vace = load_pipeline(load_variant("vace-14b-tiny"))
    assert type(vace).__name__ == "WanVACEPipeline"
    assert type(vace.transformer).__name__ == "WanVACETransformer3DModel"
    assert vace.transformer.config.vace_in_channels == 96 and 0 in vace.transformer.config.vace_layers
    assert len(vace.transformer.vace_blocks) == len(vace.transformer.config.vace_layers)


def test_loading_refuses_weights_of_another_variant(tiny_weights):
    wrong = load_variant("t2v-a14b-tiny").model_copy(update={"boundary_ratio": 0.9})
    with pytest.raises(ValueError, match="boundary_ratio 0.875"):
        load_pipeline(wrong)

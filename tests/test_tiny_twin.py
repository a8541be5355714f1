import json

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

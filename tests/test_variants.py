import pytest
from pydantic import ValidationError

from model_store.settings import StoreSettings
from model_store.variants import VariantConfig, VariantNotFound, list_variants, load_variant


def test_real_and_tiny_configs_validate_and_agree_on_structure():
    real, tiny = load_variant("ti2v-5b"), load_variant("ti2v-5b-tiny")
    assert real.tiny_twin == tiny.name and tiny.twin_of == real.name
    assert real.weights.repo_id == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    # Official defaults (Wan2.2 README / wan_ti2v_5B config): 1280x704, 24 fps, 121 frames, 50 steps, cfg 5.0.
    assert (real.fps, real.defaults.num_frames, real.defaults.num_inference_steps, real.defaults.guidance_scale) == (
        24, 121, 50, 5.0)
    for cfg in (real, tiny):
        assert str(cfg.native_sizes["1280x720"]) == "1280x704"
        assert str(cfg.native_sizes["720x1280"]) == "704x1280"
        assert cfg.pipeline_class == "WanPipeline"
    assert real.deployment.num_gpus == 1 and tiny.deployment.num_gpus == 0


def test_frame_rule():
    cfg = load_variant("ti2v-5b")
    assert [n for n in range(1, 14) if cfg.frames_ok(n)] == [1, 5, 9, 13]


def test_unknown_variant_lists_known_ones():
    with pytest.raises(VariantNotFound) as err:
        load_variant("nope")
    assert "ti2v-5b" in str(err.value)
    assert "ti2v-5b-tiny" in list_variants()


def test_bad_default_frames_are_refused():
    data = load_variant("ti2v-5b").model_dump()
    data["defaults"]["num_frames"] = 120
    with pytest.raises(ValidationError, match="4k\\+1"):
        VariantConfig.model_validate(data)


def test_missing_local_twin_says_how_to_build_it(tmp_path):
    cfg = load_variant("ti2v-5b-tiny")
    with pytest.raises(FileNotFoundError, match="build-tiny"):
        cfg.weights_location(StoreSettings(model_dir=tmp_path))


def test_real_variant_falls_back_to_the_hub_repo(tmp_path):
    assert load_variant("ti2v-5b").weights_location(StoreSettings(model_dir=tmp_path)) == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"

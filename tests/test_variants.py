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


@pytest.mark.parametrize(
    "name, pipeline, task, boundary, steps, guidance, guidance_2, fps, frames",
    [
        # Wan2.2 wan/configs/wan_t2v_A14B.py, wan_i2v_A14B.py, shared_config.py; Wan2.1 generate.py for VACE.
        ("t2v-a14b", "WanPipeline", "t2v", 0.875, 40, 4.0, 3.0, 16, 81),
        ("i2v-a14b", "WanImageToVideoPipeline", "i2v", 0.9, 40, 3.5, 3.5, 16, 81),
        ("ti2v-5b", "WanPipeline", "ti2v", None, 50, 5.0, None, 24, 121),
        ("vace-14b", "WanVACEPipeline", "vace", None, 50, 5.0, None, 16, 81),
    ],
)
def test_real_variants_carry_the_official_defaults(name, pipeline, task, boundary, steps, guidance, guidance_2,
                                                   fps, frames):
    real = load_variant(name)
    tiny = load_variant(real.tiny_twin)
    assert tiny.twin_of == name
    assert (real.pipeline_class, real.task, real.boundary_ratio) == (pipeline, task, boundary)
    assert (tiny.pipeline_class, tiny.task, tiny.boundary_ratio) == (pipeline, task, boundary)
    d = real.defaults
    assert (d.num_inference_steps, d.guidance_scale, d.guidance_scale_2, real.fps, d.num_frames) == (
        steps, guidance, guidance_2, fps, frames)
    assert len(real.weights.revision) == 40 and int(real.weights.revision, 16) >= 0  # a pinned commit SHA
    assert real.weights.repo_id.startswith("Wan-AI/")
    expected_sizes = {"1280x720", "720x1280"} if name == "ti2v-5b" else {"1280x720", "720x1280", "832x480", "480x832"}
    assert set(real.native_sizes) == set(tiny.native_sizes) == expected_sizes
    assert real.deployment.num_gpus == 1 and tiny.deployment.num_gpus == 0


def test_boundary_ratio_needs_a_second_guidance_scale():
    data = load_variant("t2v-a14b").model_dump()
    data["defaults"]["guidance_scale_2"] = None
    with pytest.raises(ValidationError, match="guidance_scale_2"):
        VariantConfig.model_validate(data)

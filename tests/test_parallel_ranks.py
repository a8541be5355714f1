"""Parallel replicas without Ray: two CFG-parallel ranks as processes on the gloo backend give the
frames of one process, each computing one pass per step; a job stopped on one rank stops on all."""

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from deployments.generation import GenerationRunner
from jobs.model import GenerationParams
from model_store.loader import load_pipeline
from model_store.parallel_config import ParallelConfig
from model_store.variants import load_variant
from tests.conftest import free_port
from tests.media_samples import psnr
from tests.parallel_harness import rank_main

PARAMS = dict(prompt="a lighthouse at dusk", width=832, height=480, num_frames=5, num_inference_steps=6,
              guidance_scale=4.0, guidance_scale_2=3.0, seed=5)


def _ranks(tmp_path, parallel: dict, stop_at: int = 0, variant: str = "t2v-a14b-tiny") -> list[dict]:
    mp.start_processes(rank_main, args=(variant, parallel, free_port(), PARAMS, str(tmp_path), stop_at),
                       nprocs=ParallelConfig(**parallel).world_size, join=True, start_method="spawn")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_cfg_parallel_ranks_give_one_process_frames_with_one_pass_per_step(tiny_weights, tmp_path):
    torch.set_num_threads(2)
    variant = load_variant("t2v-a14b-tiny")
    single = GenerationRunner(variant, load_pipeline(variant))
    passes = {"transformer": 0, "transformer_2": 0}
    for c in passes:
        getattr(single.pipe, c).blocks[0].ffn.register_forward_hook(lambda *_, c=c: passes.__setitem__(c, passes[c] + 1))
    expected = single.run(GenerationParams(**PARAMS))

    reports = _ranks(tmp_path, {"cfg": 2})
    frames = [np.load(tmp_path / f"rank{r}.npy") for r in range(2)]
    assert [r["branch"] for r in reports] == [0, 1]
    # One process: two passes (CFG) per step, 6 steps split between the experts. Each rank: one.
    assert sum(passes.values()) == 6 * 2
    for r in reports:
        assert {c: 2 * n for c, n in r["passes"].items()} == passes, r
    # Both ranks took the same steps; against one process, float32 sums in another order.
    assert np.array_equal(frames[0], frames[1])
    assert frames[0].shape == expected.shape == (5, 480, 832, 3)
    assert np.abs(frames[0].astype(int) - expected).max() <= 2 and psnr(frames[0], expected) > 50


def test_a_job_stopped_on_one_rank_stops_on_the_other_at_the_same_step(tiny_weights, tmp_path):
    reports = _ranks(tmp_path, {"cfg": 2}, stop_at=2)
    assert reports[0]["error"] == "canceled on rank 0 after step 2"
    assert reports[1]["error"] == "job stopped by another rank after step 2 of 6"
    # Neither rank computed a third step.
    assert [sum(r["passes"].values()) for r in reports] == [2, 2]


def test_ulysses_on_cpu_is_refused_with_the_reason():
    from deployments.rank_group import RankGroup

    with pytest.raises(RuntimeError) as refused:
        RankGroup(ParallelConfig(ulysses=2), 0, "tcp://127.0.0.1:1", torch.device("cpu"), 5)
    assert str(refused.value) == (
        "parallel.ulysses 2 needs GPUs: diffusers' context parallelism places each rank on a CUDA device, and "
        "this replica runs on cpu; use cfg only, or GPUs")


def test_parallel_is_refused_for_a_pipeline_it_cannot_split():
    variant = load_variant("qwen-image-edit-tiny")
    with pytest.raises(ValueError, match="parallel replicas run the Wan pipelines .*; QwenImageEditPlusPipeline is "
                                         "not one: drop parallel"):
        type(variant).model_validate({**variant.model_dump(), "parallel": {"cfg": 2}})

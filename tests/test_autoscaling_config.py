"""The autoscaling block of a variant config and what the app builder makes of it (no Ray cluster)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.replica_status import replica_start_s, scales_to_zero
from model_store.variants import Autoscaling, load_variant
from serve_app.app import replica_count

TINY = "ti2v-5b-tiny"


def test_a_variant_without_autoscaling_runs_its_fixed_replicas():
    cfg = load_variant(TINY, overrides={"deployment": {"num_replicas": 3}})
    assert replica_count(cfg) == {"num_replicas": 3}
    assert cfg.deployment.max_jobs == 3 and not cfg.deployment.scales_to_zero
    assert replica_start_s({TINY: cfg}) == {} and scales_to_zero({TINY: cfg}) == frozenset()


def test_autoscaling_becomes_serves_autoscaling_config_with_one_job_per_replica():
    scaling = {"min_replicas": 0, "max_replicas": 4, "downscale_delay_s": 60, "expected_start_s": 90}
    cfg = load_variant(TINY, overrides={"deployment": {"autoscaling": scaling}})
    options = replica_count(cfg)
    assert "num_replicas" not in options
    serve_cfg = options["autoscaling_config"]
    assert (serve_cfg["min_replicas"], serve_cfg["initial_replicas"], serve_cfg["max_replicas"]) == (0, 0, 4)
    assert serve_cfg["target_ongoing_requests"] == 1 and serve_cfg["downscale_delay_s"] == 60
    assert "downscale_to_zero_delay_s" not in serve_cfg
    assert cfg.deployment.max_jobs == 4  # the router's dispatch slots
    assert replica_start_s({TINY: cfg}) == {TINY: 90} and scales_to_zero({TINY: cfg}) == {TINY}
    # Ray Serve accepts it as it is.
    from ray.serve.config import AutoscalingConfig

    assert AutoscalingConfig(**serve_cfg).max_replicas == 4


def test_min_above_max_is_refused():
    with pytest.raises(ValidationError, match="min_replicas 3 is above max_replicas 2"):
        Autoscaling(min_replicas=3, max_replicas=2)
    kept_warm = Autoscaling(min_replicas=1, max_replicas=2, downscale_to_zero_delay_s=30)
    assert kept_warm.serve_config()["downscale_to_zero_delay_s"] == 30

"""The other ranks of a parallel generator replica (model_store/parallel_config.py) as Ray actors,
placed in the replica's own placement group bundles; rank 0 is the Serve replica itself.

Each rank loads the whole pipeline; rank 0 starts every job (and every warm-up run) on all of
them at once through ``RankWorkers.fan_out``, and the collectives in deployments/rank_group.py
keep them in step.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import ray
import torch
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from deployments.generation import GenerationRunner
from deployments.rank_group import RankGroup
from jobs.inputs import PreparedInputs
from jobs.model import GenerationParams
from model_store.adapters import adapter_for
from model_store.loader import load_variant_pipeline, resolve_device
from model_store.settings import StoreSettings
from model_store.variants import VariantConfig


def rendezvous() -> str:
    """A ``tcp://127.0.0.1:PORT`` rendezvous on a free port of this node (the placement group is
    STRICT_PACK, so every rank runs here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class RankProcess:
    """One non-zero rank: joins the group, loads the pipeline, then runs what rank 0 fans out."""

    def __init__(self, variant: VariantConfig, rank: int, init_method: str, model_dir: str | None) -> None:
        if variant.deployment.torch_threads:
            torch.set_num_threads(variant.deployment.torch_threads)
        self.variant = variant
        self.store = StoreSettings(model_dir=Path(model_dir)) if model_dir else StoreSettings()
        group = RankGroup(variant.parallel, rank, init_method, resolve_device(variant), variant.timeouts.generate_s)
        loaded = load_variant_pipeline(variant, self.store)
        self.runner = GenerationRunner(variant, loaded.pipe, loaded.prompt_pipe, ranks=group)
        self.runner.pin_distilled(self.store)

    def pid(self) -> int:
        """This rank's process id (fault tests)."""
        return os.getpid()

    def run(self, params: GenerationParams, inputs: PreparedInputs | None) -> None:
        """Run rank 0's job here; the frames stay with rank 0. Loads the job's LoRA adapters first
        (kept loaded, as rank 0's multiplexed sets are)."""
        for lora in params.loras:
            if lora.name not in self.runner.adapters.loaded:
                self.runner.adapters.acquire(adapter_for(lora.name, self.variant, self.store))
        self.runner.run(params, inputs=inputs)


class RankWorkers:
    """Rank 0's handles on ranks 1 .. world_size - 1, one Ray actor each in the bundles of the
    replica's placement group (bundle i holds rank i)."""

    def __init__(self, variant: VariantConfig, init_method: str, model_dir: str | None) -> None:
        pg = get_current_placement_group()
        if pg is None:
            raise RuntimeError("a parallel replica needs its placement group (serve_app/app.py sets the bundles)")
        actor = ray.remote(RankProcess)
        self.actors = [
            actor.options(
                num_cpus=variant.deployment.num_cpus,
                num_gpus=variant.deployment.num_gpus,
                resources=variant.deployment.resources,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=rank
                ),
            ).remote(variant, rank, init_method, model_dir)
            for rank in range(1, variant.parallel.world_size)
        ]

    def ready(self, timeout_s: float) -> list[int]:
        """Wait until every rank has loaded; returns their process ids.

        Raises:
            ray.exceptions.RayActorError: a rank failed to start (its error inside).
            ray.exceptions.GetTimeoutError: past ``timeout_s``.
        """
        return ray.get([a.pid.remote() for a in self.actors], timeout=timeout_s)

    def fan_out(self, params: GenerationParams, inputs: PreparedInputs | None) -> Callable[[], None]:
        """Start ``params`` on every other rank; the returned function waits for them."""
        refs = [a.run.remote(params, inputs) for a in self.actors]

        def wait() -> None:
            ray.get(refs)

        return wait

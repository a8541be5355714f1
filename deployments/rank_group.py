"""The ranks of a parallel replica (model_store/parallel_config.py), in plain torch.distributed:
no Ray here, so tests run ranks as processes.

Each rank holds the whole pipeline and runs the same denoising loop from the same seed; the
ranks differ only inside the transformer calls:

- CFG-parallel (``cfg: 2``): at each step the first branch's ranks compute the conditional pass and
  the second branch's the unconditional one (the same call with the negative prompt's
  embeddings), at the same time; ``all_gather`` gives every rank both, so every rank's scheduler
  takes the same step. The pipeline's own second call of the step returns the gathered result
  without computing (``CfgSplit``).
- Ulysses (``ulysses: N``): diffusers' context parallelism splits each pass's sequence over the N
  ranks of a branch (``ContextParallelConfig`` on a device mesh of shape (cfg, 1, N)).

A job stops on every rank at the same step: after each step the ranks agree (``any_stop``) whether
one of them was canceled or failed, and the others raise ``JobCanceled`` there instead of waiting
in the next collective.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from model_store.parallel_config import ParallelConfig


class RankGroup:
    """This process's rank in a parallel replica, and the collectives the runner needs.

    Args:
        config: the variant's ``parallel`` block.
        rank: 0 .. ``config.world_size`` - 1; rank 0 is the replica Ray Serve routes to.
        init_method: torch.distributed rendezvous, e.g. ``tcp://127.0.0.1:29500`` (all ranks share a
            node: the replica's placement group is STRICT_PACK).
        device: this rank's device; picks the backend when ``config.backend`` is None (nccl on CUDA,
            gloo otherwise).
        timeout_s: how long a collective waits for the other ranks, seconds (the generate limit: a
            rank that died mid-job fails the others after it).

    Raises:
        RuntimeError: Ulysses on a non-CUDA device (diffusers' context parallelism places each rank
            on ``torch.accelerator``, so it needs GPUs).
    """

    def __init__(
        self, config: ParallelConfig, rank: int, init_method: str, device: torch.device, timeout_s: float
    ) -> None:
        if config.ulysses > 1 and device.type != "cuda":
            raise RuntimeError(
                f"parallel.ulysses {config.ulysses} needs GPUs: diffusers' context parallelism places each rank on "
                f"a CUDA device, and this replica runs on {device.type}; use cfg only, or GPUs"
            )
        self.config = config
        self.rank = rank
        self.device = device
        backend = config.backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=rank,
            world_size=config.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        #: 0: this rank computes conditional passes; 1: unconditional ones.
        self.branch = rank // config.ulysses
        self.cfg_group = None
        self.cp_mesh = None
        if config.ulysses > 1:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(
                device.type, (config.cfg, 1, config.ulysses), mesh_dim_names=("cfg", "ring", "ulysses")
            )
            self.cp_mesh = mesh["ring", "ulysses"]
            if config.cfg > 1:
                self.cfg_group = mesh.get_group("cfg")
        elif config.cfg > 1:
            self.cfg_group = dist.group.WORLD

    def any_stop(self, stop: bool) -> bool:
        """Whether any rank says ``stop`` for this step (every rank must call it, once per step)."""
        flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=self._collective_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def shard_sequence(self, modules: list) -> None:
        """Turn on Ulysses on each transformer in ``modules`` (no-op at ``ulysses: 1``)."""
        if self.cp_mesh is None:
            return
        from diffusers import ContextParallelConfig

        for module in modules:
            module.enable_parallelism(
                config=ContextParallelConfig(ulysses_degree=self.config.ulysses, mesh=self.cp_mesh)
            )

    def close(self) -> None:
        """Leave the process group (when the replica stops)."""
        if dist.is_initialized():
            dist.destroy_process_group()


class CfgSplit:
    """Splits each step's two guidance passes across the CFG branches of ``group``, for the
    transformers in ``modules`` (both A14B experts; TI2V-5B's image pipeline shares them).

    Installed by replacing each module's ``forward`` (as diffusers' own hooks do). Outside ``job``,
    or in a job without CFG, the modules run as before.
    """

    def __init__(self, group: RankGroup, modules: list) -> None:
        self.group = group
        self._active = False
        self._negative: torch.Tensor | None = None
        self._pending: dict[int, torch.Tensor] = {}
        for module in modules:
            module.forward = self._wrap(module, module.forward)

    @contextmanager
    def job(self, do_cfg: bool, negative_embeds: torch.Tensor | None) -> Iterator[None]:
        """Split the block's transformer calls when ``do_cfg``; ``negative_embeds`` are the
        unconditional pass's text embeddings, (1, L, D)."""
        self._active, self._negative, self._pending = do_cfg, negative_embeds, {}
        try:
            yield
        finally:
            self._active, self._negative, self._pending = False, None, {}

    def _wrap(self, module, original):
        def forward(*args, **kwargs):
            if not self._active:
                return original(*args, **kwargs)
            key = id(module)
            if key in self._pending:
                # The pipeline's unconditional call: computed by the other branch with the conditional one.
                return _like(kwargs, self._pending.pop(key))
            if "encoder_hidden_states" not in kwargs or self._negative is None:
                raise RuntimeError("CFG-parallel needs the text embeddings as encoder_hidden_states=")
            if self.group.branch == 1:
                cond = kwargs["encoder_hidden_states"]
                kwargs = {**kwargs, "encoder_hidden_states": self._negative.to(cond.device, cond.dtype)}
                # Its own cache state, as the unconditional pass has in one process.
                with module.cache_context("uncond"):
                    mine = original(*args, **kwargs)
            else:
                mine = original(*args, **kwargs)
            sample = mine[0] if isinstance(mine, tuple) else mine.sample
            both = [torch.empty_like(sample) for _ in range(2)]
            dist.all_gather(both, sample.contiguous(), group=self.group.cfg_group)
            self._pending[key] = both[1]
            return _like(kwargs, both[0])

        return forward


def _like(kwargs: dict, sample: torch.Tensor):
    """``sample`` in the form the pipeline asked for (``return_dict``)."""
    if kwargs.get("return_dict", True):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)
    return (sample,)

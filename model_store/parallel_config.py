"""How one generator replica spans several GPUs: the ``parallel:`` block of a variant YAML.

Only the config lives here (no torch); deployments/rank_group.py runs it.

- ``cfg: 2``: CFG-parallel. Two ranks run each denoising step's conditional and unconditional
  transformer passes at once and exchange the results, so a step with classifier-free guidance
  takes about one pass instead of two.
- ``ulysses: N``: sequence parallelism (DeepSpeed-Ulysses) inside each CFG branch: the N ranks each
  hold 1/N of the video tokens and exchange heads around attention (diffusers'
  ``ContextParallelConfig(ulysses_degree=N)`` on the transformer's ``_cp_plan``); N must divide
  the attention heads.

A replica takes ``cfg x ulysses`` GPUs (Ray placement group bundles, one process per rank); the
router still counts it as one slot.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ParallelConfig(BaseModel):
    """The ``parallel:`` block of a variant config."""

    model_config = ConfigDict(extra="forbid")

    cfg: Literal[1, 2] = Field(
        default=1, description="Ranks across classifier-free guidance: 2 runs the two passes of a step at once."
    )
    ulysses: int = Field(
        default=1, ge=1, le=8, description="Ranks splitting the sequence (Ulysses) in each CFG branch; GPUs only."
    )
    backend: Literal["nccl", "gloo"] | None = Field(
        default=None,
        description="torch.distributed backend; None: nccl on GPUs, gloo on CPUs (which runs CFG-parallel "
        "only: diffusers' context parallelism places each rank on a GPU).",
    )

    @property
    def world_size(self) -> int:
        """Processes (and GPUs) one replica takes: ``cfg x ulysses``."""
        return self.cfg * self.ulysses

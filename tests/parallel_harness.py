"""One rank of a parallel replica as a plain process (no Ray), for tests/test_parallel_ranks.py:
loads a twin with ``parallel`` set, runs one job, and writes its frames and what it computed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from deployments.generation import GenerationRunner
from jobs.errors import JobCanceled
from jobs.model import GenerationParams
from model_store.loader import load_pipeline
from model_store.parallel_config import ParallelConfig
from model_store.variants import load_variant


def rank_main(
    rank: int, variant_name: str, parallel: dict, port: int, params: dict, out: str, stop_at: int, device: str = "cpu"
) -> None:
    """Rank ``rank``: run ``params`` on ``variant_name``; rank 0 raises JobCanceled after step
    ``stop_at`` (0: never). On ``device`` "cuda" each rank takes GPU ``rank`` in bf16. Writes
    ``rank{N}.npy`` (frames) or the error, and ``rank{N}.json``."""
    from deployments.rank_group import RankGroup

    torch.set_num_threads(1)
    update: dict = {"parallel": ParallelConfig(**parallel)}
    if device == "cuda":
        torch.cuda.set_device(rank)
        update.update(device="cuda", torch_dtype="bfloat16")  # "cuda" is the current device: this rank's
    variant = load_variant(variant_name).model_copy(update=update)
    where = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    group = RankGroup(variant.parallel, rank, f"tcp://127.0.0.1:{port}", where, timeout_s=120)
    runner = GenerationRunner(variant, load_pipeline(variant), ranks=group)
    passes = {"transformer": 0, "transformer_2": 0}
    for component in passes:
        module = getattr(runner.pipe, component, None)
        if module is not None:
            module.blocks[0].ffn.register_forward_hook(
                lambda *_, c=component: passes.__setitem__(c, passes[c] + 1)
            )

    def on_step(done: int) -> None:
        if rank == 0 and done == stop_at:
            raise JobCanceled(f"canceled on rank 0 after step {done}")

    report: dict = {"rank": rank, "branch": group.branch}
    try:
        frames = runner.run(GenerationParams(**params), on_step=on_step)
        np.save(Path(out) / f"rank{rank}.npy", frames)
    except JobCanceled as exc:
        report["error"] = str(exc)
    report["passes"] = passes
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))
    group.close()

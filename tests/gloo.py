"""Two-process torch.distributed (gloo) runs for the tests: every rank runs one function inside
an initialised process group, and the test gets each rank's return value."""

import datetime
import os
import pickle

import pytest


def _rank_main(rank, world_size, store, out_dir, body, args):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        result = body(rank, world_size, *args)
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
    finally:
        dist.destroy_process_group()


def run_ranks(body, args, tmp_path, world_size: int = 2) -> list:
    """``body(rank, world_size, *args)`` in ``world_size`` spawned processes; their results in
    rank order. ``body`` must be a module-level function (spawn pickles it by name). Skips
    without torch.distributed and gloo."""
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(world_size, str(tmp_path / "store"), str(tmp_path), body, args),
             nprocs=world_size, join=True)
    results = []
    for rank in range(world_size):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return results

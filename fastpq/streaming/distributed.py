"""Reduction of PQ accumulators across the processes of a ``torch.distributed`` group.

Only per-category sums travel, never segments or maps: each rank contributes one int64 vector of
``5 C + 2`` numbers (C categories) and receives everyone's, O(world size x C) in all.

Exactness: the counts are integers, but the IoU sums are double-double values (``iou`` plus its
rounding error ``iou_err``, see :mod:`fastpq.core.accumulator`). Summing ``iou`` and ``iou_err``
across ranks with ``all_reduce`` would round the ``iou`` additions and lose those errors, and
the rounding would depend on the backend's reduction order. So the vectors are all-gathered, the
float64 values carried bit for bit as int64, and every rank merges them in rank order with the
accumulator's own error-free merge: each rank gets the identical result, equal to the result of
one process that saw every image.

torch is imported on first use (``pip install fastpq[torch]``).
"""

from __future__ import annotations

import json
import sys
import zlib

import numpy as np

from fastpq.core.accumulator import PQAccumulator
from fastpq.core.categories import Categories

_INSTALL_HINT = "fastpq's distributed reduction needs PyTorch: pip install fastpq[torch]"


def _torch():
    try:
        import torch
        import torch.distributed
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return torch


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised in this process.

    Never imports torch: without torch loaded there is no process group.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def _fingerprint(categories: Categories) -> int:
    """A checksum of the category table, equal on every rank that built the same table."""
    return zlib.crc32(json.dumps(categories.to_coco(), sort_keys=True).encode())


def _pack(acc: PQAccumulator) -> np.ndarray:
    head = np.array([_fingerprint(acc.categories), acc.n_images], np.int64)
    return np.concatenate([head, acc.tp, acc.fp, acc.fn, acc.iou.view(np.int64),
                           acc.iou_err.view(np.int64)])


def _unpack(row: np.ndarray, categories: Categories) -> PQAccumulator:
    acc = PQAccumulator(categories)
    c = len(categories)
    body = row[2:].reshape(5, c)
    acc.n_images = int(row[1])
    acc.tp, acc.fp, acc.fn = body[0].copy(), body[1].copy(), body[2].copy()
    acc.iou, acc.iou_err = body[3].view(np.float64).copy(), body[4].view(np.float64).copy()
    return acc


def _collective_device(torch, process_group, device):
    if device is not None:
        return torch.device(device)
    if str(torch.distributed.get_backend(process_group)) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_accumulator(acc: PQAccumulator, *, process_group=None, device=None) -> PQAccumulator:
    """The accumulator over all ranks of a process group; a collective call.

    Every rank of the group must call it (with an accumulator on the same category table). Each
    rank's vectors are all-gathered and merged in rank order, so every rank returns the same
    accumulator, equal to one process adding all the images.

    Parameters
    ----------
    acc : PQAccumulator
        This rank's accumulator; it is not modified.
    process_group : torch.distributed.ProcessGroup, optional
        Default: the default group.
    device : torch.device or str, optional
        Where the gathered tensors live. Default: the current CUDA device when the group's
        backend is NCCL, else the CPU (gloo, MPI, the CPU side of a mixed backend).

    Returns
    -------
    PQAccumulator
        A new accumulator holding the sums of all ranks.

    Raises
    ------
    ImportError
        torch is not installed.
    ValueError
        A rank holds an accumulator on a different category table (raised on every rank).
    """
    torch = _torch()
    dist = torch.distributed
    mine = torch.from_numpy(_pack(acc)).to(_collective_device(torch, process_group, device))
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(gathered, mine, group=process_group)
    rows = torch.stack(gathered).cpu().numpy()
    fingerprint = _fingerprint(acc.categories)
    total = PQAccumulator(acc.categories)
    for rank, row in enumerate(rows):
        if row[0] != fingerprint:
            raise ValueError(f"rank {rank} accumulated PQ over a different category table than "
                             f"rank {dist.get_rank(process_group)}; every rank must use the same "
                             "categories, in the same order")
        total.merge(_unpack(row, acc.categories))
    return total

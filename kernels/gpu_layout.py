"""The host side of the CUDA sources (``pairs.cu``, ``encode.cu``, ``accumulate.cu``): their
launch sizes and table sizes, status bits, encoding modes and the result types of their kernels.

:mod:`fastpq.gpu.cupy_kernels` builds the sources with these sizes (passed as ``-D`` options, see
:func:`nvrtc_options`) and returns these types; :mod:`fastpq.gpu.device_state` reads the status
bits. NumPy only: nothing here needs CuPy or a GPU. The tests check that the ``#define`` defaults
of the sources equal these values.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ACCUMULATE_THREADS", "BLOCK_THREADS", "DEFAULT_CAPACITY", "DEFAULT_TILE_PIXELS", "EMPTY_KEY",
    "HASH_MULTIPLIER", "MATCH_THREADS", "MAX_CAPACITY", "MAX_GRID_Y", "MIN_CAPACITY",
    "MODE_DIVISOR", "MODE_PAIRS", "MatchPartials", "PairTables", "RANK_TILE", "RECORD_FIELDS", "SHARED_LOG2",
    "SHARED_MAX_PROBE", "STATUS_CATEGORY_UNKNOWN", "STATUS_ID_OUT_OF_RANGE",
    "STATUS_INSTANCE_TOO_LARGE", "STATUS_MESSAGES", "STATUS_PAIR_TABLE_OVERFLOW",
    "STATUS_PRED_CATEGORY_UNKNOWN", "STATUS_PRED_ID_NOT_LISTED", "STATUS_PRED_SEGMENT_ABSENT",
    "SegmentTables", "capacity_log2", "check_tile_pixels", "instance_bits", "nvrtc_options",
]

# Launch geometry and table sizes of pairs.cu (FASTPQ_* macros, passed as -D options).
BLOCK_THREADS = 256
SHARED_LOG2 = 11
SHARED_MAX_PROBE = 32
RANK_TILE = 1024
MATCH_THREADS = 128
ACCUMULATE_THREADS = 128  # FASTPQ_ACCUMULATE_THREADS of accumulate.cu

DEFAULT_TILE_PIXELS = 16384
DEFAULT_CAPACITY = 8192
MIN_CAPACITY = 64
MAX_CAPACITY = 1 << 30
MAX_GRID_Y = 65535  # images per histogram launch (grid.y); larger batches are split

EMPTY_KEY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # FASTPQ_EMPTY_KEY: a free hash table slot
HASH_MULTIPLIER = np.uint64(0x9E37_79B9_7F4A_7C15)  # FASTPQ_HASH_MULTIPLIER

# Bits of the per-image status word (the STATUS_* macros of pairs.cu and encode.cu).
STATUS_PAIR_TABLE_OVERFLOW = 1
STATUS_ID_OUT_OF_RANGE = 2
STATUS_PRED_ID_NOT_LISTED = 4
STATUS_PRED_SEGMENT_ABSENT = 8
STATUS_PRED_CATEGORY_UNKNOWN = 16
STATUS_CATEGORY_UNKNOWN = 32  # encode.cu: a map's category is neither in the table nor void
STATUS_INSTANCE_TOO_LARGE = 64  # encode.cu: an instance id beyond the encoded ids' range

STATUS_MESSAGES = {
    STATUS_PAIR_TABLE_OVERFLOW: "more distinct (gt, pred) pairs than the pair table capacity",
    STATUS_ID_OUT_OF_RANGE: "a segment id outside [0, 2**31) in a label map",
    STATUS_PRED_ID_NOT_LISTED: "a non-zero predicted id in the map is not in the segment table",
    STATUS_PRED_SEGMENT_ABSENT: "a predicted segment of the table has no pixel in the map",
    STATUS_PRED_CATEGORY_UNKNOWN: "a predicted segment in the map has an unknown category",
    STATUS_CATEGORY_UNKNOWN: "a map has pixels of a category that is neither in the category "
                             "table nor the void label",
    STATUS_INSTANCE_TOO_LARGE: "an instance id too large for the GPU path's encoded ids "
                               "(pass host maps to evaluate it)",
}

# How encode.cu reads a map (MODE_* macros): [category, instance] pairs, or category * divisor
# + instance ids.
MODE_PAIRS = 0
MODE_DIVISOR = 1

#: int64 fields of accumulate.cu's record of refused updates.
RECORD_FIELDS = 6


class PairTables(NamedTuple):
    """Per-image pair histograms, padded to the table capacity ``cap``.

    Row ``b`` holds image ``b``'s ``n_pairs[b]`` distinct ``(gt_id, pred_id)`` pairs in ascending
    ``(gt_id, pred_id)`` order in its first ``n_pairs[b]`` entries; the rest is unspecified.
    CuPy arrays from :mod:`fastpq.gpu.cupy_kernels`, NumPy arrays from host copies.
    """

    gt: object  # (B, cap) int32
    pred: object  # (B, cap) int32
    count: object  # (B, cap) int64 pixel counts
    n_pairs: object  # (B,) int32
    status: object  # (B,) int32 STATUS_* bits; an image with STATUS_PAIR_TABLE_OVERFLOW is invalid


class SegmentTables(NamedTuple):
    """Segment tables of a batch, padded to ``S`` segments per image, in segments_info order.

    ``category`` is the dense category index (-1: not a category of the evaluation). ``iscrowd``
    marks crowd with 1 (other values are not crowd, as in the reference). ``area`` (float64) is
    the GT area of the reference's JSON; ``None`` means the pixel count. Pred tables use ``id``,
    ``category`` and ``count`` only.
    """

    id: object  # (B, S) int32
    category: object  # (B, S) int32
    iscrowd: object  # (B, S) int32
    area: object  # (B, S) float64 or None
    count: object  # (B,) int32 segments per image


class MatchPartials(NamedTuple):
    """Per-image, per-category results of the matcher (SPEC §2.3-2.5).

    ``iou_sum[b, c]`` is ``0.0`` plus the IoUs of image ``b``'s category-``c`` matches in ascending
    ``(gt_id, pred_id)`` order. Summing rows in image order with a sequential loop gives fastpq's
    default float order (SPEC §2.9); ``pair_iou``/``pair_matched`` allow any other order.
    """

    tp: object  # (B, C) int64
    fp: object  # (B, C) int64
    fn: object  # (B, C) int64
    iou_sum: object  # (B, C) float64
    pair_iou: object  # (B, cap) float64, valid for the first n_pairs entries
    pair_matched: object  # (B, cap) int32
    status: object  # (B,) int32: the pair tables' bits plus the matcher's


def nvrtc_options(
    *,
    block_threads: int = BLOCK_THREADS,
    shared_log2: int = SHARED_LOG2,
    shared_max_probe: int = SHARED_MAX_PROBE,
    rank_tile: int = RANK_TILE,
    match_threads: int = MATCH_THREADS,
) -> tuple:
    """The -D options that build ``pairs.cu`` with these sizes.

    Raises
    ------
    ValueError
        ``block_threads`` is not a multiple of 32 in [32, 1024], or ``shared_log2`` is outside
        [1, 12].
    """
    if block_threads % 32 or not 32 <= block_threads <= 1024:
        raise ValueError(
            f"block_threads must be a multiple of 32 in [32, 1024], got {block_threads}")
    if not 1 <= shared_log2 <= 12:
        raise ValueError(f"shared_log2 must lie in [1, 12], got {shared_log2}")
    return (
        f"-DFASTPQ_BLOCK_THREADS={block_threads}",
        f"-DFASTPQ_SHARED_LOG2={shared_log2}",
        f"-DFASTPQ_SHARED_MAX_PROBE={shared_max_probe}",
        f"-DFASTPQ_RANK_TILE={rank_tile}",
        f"-DFASTPQ_MATCH_THREADS={match_threads}",
    )


def capacity_log2(capacity: int) -> int:
    """log2 of the per-image table size: ``capacity`` rounded up to a power of two >= 64.

    Raises
    ------
    ValueError
        ``capacity`` is outside [1, 2**30].
    """
    capacity = int(capacity)
    if not 0 < capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must lie in [1, {MAX_CAPACITY}], got {capacity}")
    return max(MIN_CAPACITY - 1, capacity - 1).bit_length()


def check_tile_pixels(tile_pixels: int) -> int:
    """``tile_pixels`` (pixels per histogram block) as an int.

    Raises
    ------
    ValueError
        It is not a multiple of 4 in [4, 2**30].
    """
    tile_pixels = int(tile_pixels)
    if tile_pixels < 4 or tile_pixels % 4 or tile_pixels > 1 << 30:
        raise ValueError(f"tile_pixels must be a multiple of 4 in [4, 2**30], got {tile_pixels}")
    return tile_pixels


def instance_bits(n_categories: int) -> int:
    """Bits left for the instance in encode.cu's ids ((dense + 1) << bits | instance < 2**31).

    Raises
    ------
    ValueError
        Fewer than 8 bits are left.
    """
    bits = 31 - int(n_categories).bit_length()
    if bits < 8:
        raise ValueError(f"{n_categories} categories leave too few bits for instance ids on the "
                         "GPU path")
    return bits

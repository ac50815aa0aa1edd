"""Host-side twins of ``kernels/pairs.cu``: its constants, result types, a CPU emulation of its
work split, and a ``numba.cuda`` version of the histogram.

The CUDA kernels run only on a GPU, and no GPU is attached to the development or CI machines.
Their logic is checked here instead:

* :func:`pair_histogram_emulated` replays, in NumPy/Numba on the CPU, exactly what the histogram
  and compaction kernels do: the same tiles, warps, four pixels per lane, merging of equal
  neighbours inside a lane, the warp's run of uniform spans, warp aggregation (groups of equal
  keys, one insert by the lowest lane), the same hash function, bounded probing of the shared table with fallback to the global table,
  the global table's overflow flag, and the ballot-ordered packing followed by the rank sort.
  The one thing it fixes that the GPU leaves open is the order of concurrent work (warps in order,
  lanes in order); the pair *tables* do not depend on it.
* :func:`match_emulated` replays the matcher kernel's phases.
* :func:`pair_histogram_twin` is the same shared-memory hash table design written with
  ``numba.cuda`` (atomics, no warp intrinsics), which runs under ``NUMBA_ENABLE_CUDASIM=1``.

All three are checked against ``np.unique`` / a direct port of panopticapi in
``tests/test_gpu_kernel.py``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import numba
import numpy as np

# Launch geometry and table sizes; fastpq/gpu.py passes them to pairs.cu as -D options.
BLOCK_THREADS = 256
SHARED_LOG2 = 11
SHARED_MAX_PROBE = 32
RANK_TILE = 1024
MATCH_THREADS = 128

DEFAULT_TILE_PIXELS = 16384
DEFAULT_CAPACITY = 8192
MIN_CAPACITY = 64
MAX_CAPACITY = 1 << 30
MAX_GRID_Y = 65535  # images per histogram launch (grid.y); larger batches are split

EMPTY_KEY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
HASH_MULTIPLIER = np.uint64(0x9E37_79B9_7F4A_7C15)
_LOW32 = np.uint64(0xFFFF_FFFF)
_SHIFT32 = np.uint64(32)

# Bits of the per-image status word (the STATUS_* macros of pairs.cu).
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


class PairTables(NamedTuple):
    """Per-image pair histograms, padded to the table capacity ``cap``.

    Row ``b`` holds image ``b``'s ``n_pairs[b]`` distinct ``(gt_id, pred_id)`` pairs in ascending
    ``(gt_id, pred_id)`` order in its first ``n_pairs[b]`` entries; the rest is unspecified.
    NumPy arrays from the emulation and the twin, CuPy arrays from ``fastpq.gpu.cupy_kernels``.
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
    """The -D options that build ``pairs.cu`` with these sizes (the emulation's parameters)."""
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
    """log2 of the per-image table size: ``capacity`` rounded up to a power of two >= 64."""
    capacity = int(capacity)
    if not 0 < capacity <= MAX_CAPACITY:
        raise ValueError(f"capacity must lie in [1, {MAX_CAPACITY}], got {capacity}")
    return max(MIN_CAPACITY - 1, capacity - 1).bit_length()


def check_tile_pixels(tile_pixels: int) -> int:
    tile_pixels = int(tile_pixels)
    if tile_pixels < 4 or tile_pixels % 4 or tile_pixels > 1 << 30:
        raise ValueError(f"tile_pixels must be a multiple of 4 in [4, 2**30], got {tile_pixels}")
    return tile_pixels


def batch_label_maps(gt, pred, xp):
    """Validate a pair of label-map batches and flatten them to ``(B, H*W)``.

    ``gt`` and ``pred`` are ``(H, W)`` or ``(B, H, W)`` integer arrays of the array module ``xp``
    (NumPy or CuPy) with equal shapes. int32 and int64 are used as they are; uint32/uint64 are
    reinterpreted as int32/int64 (ids >= 2**31 then raise STATUS_ID_OUT_OF_RANGE on the device);
    narrower integers are widened to int32. Returns ``(gt2d, pred2d)``, C-contiguous, same dtype.
    """
    if gt.shape != pred.shape:
        raise ValueError(
            f"gt and pred label maps must have the same shape, got {tuple(gt.shape)} and "
            f"{tuple(pred.shape)}"
        )
    if gt.ndim not in (2, 3):
        raise ValueError(f"label maps must be (H, W) or (B, H, W), got shape {tuple(gt.shape)}")
    maps = []
    wide = gt.dtype.itemsize == 8 or pred.dtype.itemsize == 8
    for name, array in (("gt", gt), ("pred", pred)):
        kind = array.dtype.kind
        if kind not in "iu":
            raise TypeError(f"{name} label map must have an integer dtype, got {array.dtype}")
        array = xp.ascontiguousarray(array)
        if wide:
            if array.dtype == np.uint64:
                array = array.view(np.int64)
            elif array.dtype != np.int64:
                array = array.astype(np.int64)
        elif array.dtype == np.uint32:
            array = array.view(np.int32)
        elif array.dtype != np.int32:
            array = array.astype(np.int32)
        n_images = 1 if array.ndim == 2 else array.shape[0]
        maps.append(array.reshape(n_images, array.shape[-2] * array.shape[-1]))
    return maps[0], maps[1]


def uses_vec4(gt2d, pred2d, tile_pixels: int, aligned: bool) -> bool:
    """Whether the histogram may read int4 vectors: int32 maps, N % 4 == 0, 16-byte alignment."""
    return (
        gt2d.dtype == np.int32 and gt2d.shape[1] % 4 == 0 and tile_pixels % 4 == 0 and aligned
    )


def pad_segment_tables(
    ids: Sequence,
    categories: Sequence,
    iscrowd: Optional[Sequence] = None,
    areas: Optional[Sequence] = None,
) -> SegmentTables:
    """Padded NumPy segment tables from per-image sequences (one 1-D array per image).

    ``categories`` are dense category indices (-1 for unknown). ``iscrowd`` and ``areas`` are
    optional; without ``areas`` the matcher uses pixel counts.
    """
    n_images = len(ids)
    count = np.array([len(x) for x in ids], dtype=np.int32)
    for b in range(n_images):
        if len(categories[b]) != count[b]:
            raise ValueError(f"image {b}: {count[b]} segment ids but {len(categories[b])} "
                             "categories")
    width = max(1, int(count.max(initial=0)))
    filled = np.arange(width) < count[:, None]  # row-major order = the concatenation's order

    def table(rows, dtype, pad):
        out = np.full((n_images, width), pad, dtype)
        if rows is not None and n_images:
            out[filled] = np.concatenate(rows).astype(dtype, copy=False)
        return out

    table_id = table(ids, np.int32, 0)
    table_category = table(categories, np.int32, -1)
    table_iscrowd = table(iscrowd, np.int32, 0)
    table_area = table(areas, np.float64, 0) if areas is not None else None
    return SegmentTables(table_id, table_category, table_iscrowd, table_area, count)


# ---------------------------------------------------------------------------------------------
# CPU emulation of pair_histogram_* and compact_pair_tables
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _pair_key(g, p):
    return ((np.uint64(g) & _LOW32) << _SHIFT32) | (np.uint64(p) & _LOW32)


@numba.njit(cache=True)
def _slot_of(key, log2):
    return np.int64((key * HASH_MULTIPLIER) >> np.uint64(64 - log2))


@numba.njit(cache=True)
def _global_insert(keys, counts, image, cap_log2, key, count, status):
    if status[image] & STATUS_PAIR_TABLE_OVERFLOW:
        return
    mask = (1 << cap_log2) - 1
    slot = _slot_of(key, cap_log2)
    for _ in range(mask + 1):
        found = keys[image, slot]
        if found == EMPTY_KEY:
            keys[image, slot] = key
            found = key
        if found == key:
            counts[image, slot] += np.uint64(count)
            return
        slot = (slot + 1) & mask
    status[image] |= STATUS_PAIR_TABLE_OVERFLOW


@numba.njit(cache=True)
def _shared_insert(s_keys, s_counts, shared_log2, probes, key, count, keys, counts, image,
                   cap_log2, status):
    mask = (1 << shared_log2) - 1
    slot = _slot_of(key, shared_log2)
    for _ in range(probes):
        found = s_keys[slot]
        if found == EMPTY_KEY:
            s_keys[slot] = key
            found = key
        if found == key:
            s_counts[slot] += count
            return
        slot = (slot + 1) & mask
    _global_insert(keys, counts, image, cap_log2, key, count, status)


@numba.njit(cache=True)
def _insert_lane_items(k, c, warp_aggregation, s_keys, s_counts, shared_log2, probes, keys,
                       counts, image, cap_log2, status):
    # k, c: (32, 4) keys and counts of one warp's lanes (insert_lane_items in pairs.cu)
    for lane in range(32):
        for j in range(3, 0, -1):
            if k[lane, j] == k[lane, j - 1]:
                c[lane, j - 1] += c[lane, j]
                c[lane, j] = 0
    for j in range(4):
        has_any = False
        for lane in range(32):
            if c[lane, j] != 0:
                has_any = True
        if not has_any:
            continue
        for lane in range(32):
            key = k[lane, j] if c[lane, j] != 0 else EMPTY_KEY
            if warp_aggregation:
                # __match_any_sync groups; __reduce_add_sync total; lowest lane inserts
                leader = True
                for other in range(lane):
                    if (k[other, j] if c[other, j] != 0 else EMPTY_KEY) == key:
                        leader = False
                        break
                if not leader or key == EMPTY_KEY:
                    continue
                total = 0
                for other in range(lane, 32):
                    if (k[other, j] if c[other, j] != 0 else EMPTY_KEY) == key:
                        total += c[other, j]
                _shared_insert(s_keys, s_counts, shared_log2, probes, key, total, keys, counts,
                               image, cap_log2, status)
            elif key != EMPTY_KEY:
                _shared_insert(s_keys, s_counts, shared_log2, probes, key, c[lane, j], keys,
                               counts, image, cap_log2, status)


@numba.njit(cache=True)
def _add_span(k, c, run_key, run_count, warp_aggregation, s_keys, s_counts, shared_log2, probes,
              keys, counts, image, cap_log2, status):
    # add_span in pairs.cu: a span whose pixels all share lane 0's first key extends the warp's
    # run (flushed into the shared table when the key changes); other spans are inserted
    first = k[0, 0]
    uniform = True
    n = 0
    for lane in range(32):
        for j in range(4):
            if c[lane, j] != 0:
                n += 1
                if k[lane, j] != first:
                    uniform = False
    if not uniform:
        _insert_lane_items(k, c, warp_aggregation, s_keys, s_counts, shared_log2, probes, keys,
                           counts, image, cap_log2, status)
        return run_key, run_count
    if first == run_key and run_count <= 0x7FFFFFFF:
        return run_key, run_count + n
    if run_count != 0:
        _shared_insert(s_keys, s_counts, shared_log2, probes, run_key, run_count, keys, counts,
                       image, cap_log2, status)
    return first, n


@numba.njit(cache=True)
def _emulate_histogram(gt, pred, tile_pixels, vec4, block_threads, shared_log2, shared_max_probe,
                       warp_aggregation, cap_log2):
    n_images, n_pixels = gt.shape
    cap = 1 << cap_log2
    keys = np.full((n_images, cap), EMPTY_KEY, dtype=np.uint64)
    counts = np.zeros((n_images, cap), dtype=np.uint64)
    status = np.zeros(n_images, dtype=np.int32)
    slots = 1 << shared_log2
    probes = min(shared_max_probe, slots)
    n_warps = block_threads // 32
    n_tiles = (n_pixels + tile_pixels - 1) // tile_pixels
    s_keys = np.empty(slots, dtype=np.uint64)
    s_counts = np.empty(slots, dtype=np.int64)
    k = np.empty((32, 4), dtype=np.uint64)
    c = np.empty((32, 4), dtype=np.int64)
    for image in range(n_images):
        for tile in range(n_tiles):  # one block
            s_keys[:] = EMPTY_KEY
            s_counts[:] = 0
            start = tile * tile_pixels
            end = min(start + tile_pixels, n_pixels)
            seen = np.int64(0)
            for warp in range(n_warps):
                run_key, run_count = EMPTY_KEY, 0
                if vec4:
                    quad_end = end >> 2
                    base = (start >> 2) + warp * 32
                    while base < quad_end:
                        for lane in range(32):
                            q = base + lane
                            for j in range(4):
                                if q < quad_end:
                                    a = gt[image, 4 * q + j]
                                    b = pred[image, 4 * q + j]
                                    seen |= np.int64(a) | np.int64(b)
                                    k[lane, j] = _pair_key(a, b)
                                    c[lane, j] = 1
                                else:
                                    k[lane, j] = EMPTY_KEY
                                    c[lane, j] = 0
                        run_key, run_count = _add_span(
                            k, c, run_key, run_count, warp_aggregation, s_keys, s_counts,
                            shared_log2, probes, keys, counts, image, cap_log2, status)
                        base += n_warps * 32
                else:
                    base = start + warp * 128
                    while base < end:
                        for lane in range(32):
                            for j in range(4):
                                i = base + 32 * j + lane
                                if i < end:
                                    a = gt[image, i]
                                    b = pred[image, i]
                                    seen |= np.int64(a) | np.int64(b)
                                    k[lane, j] = _pair_key(a, b)
                                    c[lane, j] = 1
                                else:
                                    k[lane, j] = EMPTY_KEY
                                    c[lane, j] = 0
                        run_key, run_count = _add_span(
                            k, c, run_key, run_count, warp_aggregation, s_keys, s_counts,
                            shared_log2, probes, keys, counts, image, cap_log2, status)
                        base += n_warps * 128
                if run_count != 0:
                    _shared_insert(s_keys, s_counts, shared_log2, probes, run_key, run_count,
                                   keys, counts, image, cap_log2, status)
            if (seen >> 31) != 0:
                status[image] |= STATUS_ID_OUT_OF_RANGE
            for s in range(slots):  # flush
                if s_keys[s] != EMPTY_KEY:
                    _global_insert(keys, counts, image, cap_log2, s_keys[s], s_counts[s], status)
    return keys, counts, status


@numba.njit(cache=True)
def _emulate_compaction(keys, counts):
    n_images, cap = keys.shape
    pair_gt = np.zeros((n_images, cap), dtype=np.int32)
    pair_pred = np.zeros((n_images, cap), dtype=np.int32)
    pair_count = np.zeros((n_images, cap), dtype=np.int64)
    n_pairs = np.zeros(n_images, dtype=np.int32)
    scratch_keys = np.empty(cap, dtype=np.uint64)
    scratch_counts = np.empty(cap, dtype=np.uint64)
    for image in range(n_images):
        n = 0
        for s in range(cap):  # ballot + prefix sum packs in slot order
            if keys[image, s] != EMPTY_KEY:
                scratch_keys[n] = keys[image, s]
                scratch_counts[n] = counts[image, s]
                n += 1
        for i in range(n):
            key = scratch_keys[i]
            rank = 0
            for t in range(n):
                if scratch_keys[t] < key:
                    rank += 1
            pair_gt[image, rank] = np.int32(np.int64(key >> _SHIFT32))
            pair_pred[image, rank] = np.int32(np.int64(key & _LOW32))
            pair_count[image, rank] = np.int64(scratch_counts[i])
        n_pairs[image] = n
    return pair_gt, pair_pred, pair_count, n_pairs


def pair_histogram_emulated(
    gt,
    pred,
    *,
    capacity: int = DEFAULT_CAPACITY,
    tile_pixels: int = DEFAULT_TILE_PIXELS,
    block_threads: int = BLOCK_THREADS,
    shared_log2: int = SHARED_LOG2,
    shared_max_probe: int = SHARED_MAX_PROBE,
    warp_aggregation: bool = True,
    vec4: Optional[bool] = None,
) -> PairTables:
    """What ``pair_histogram_*`` + ``compact_pair_tables`` compute, replayed on the CPU.

    Parameters are those of ``fastpq.gpu.cupy_kernels.pair_histogram_batch`` plus the compile-time sizes of
    ``pairs.cu`` (small ``shared_log2``/``capacity`` force the overflow paths).
    ``warp_aggregation=False`` replays the pre-sm_80 build (one insert per lane item).
    ``vec4=None`` decides as the GPU wrapper does for aligned maps.
    """
    gt2d, pred2d = batch_label_maps(np.asarray(gt), np.asarray(pred), np)
    tile_pixels = check_tile_pixels(tile_pixels)
    nvrtc_options(block_threads=block_threads, shared_log2=shared_log2)  # validates the sizes
    if vec4 is None:
        vec4 = uses_vec4(gt2d, pred2d, tile_pixels, aligned=True)
    elif vec4 and not uses_vec4(gt2d, pred2d, tile_pixels, aligned=True):
        raise ValueError("vec4 needs int32 maps and H*W and tile_pixels divisible by 4")
    cap_log2 = capacity_log2(capacity)
    keys, counts, status = _emulate_histogram(
        gt2d, pred2d, tile_pixels, bool(vec4), block_threads, shared_log2, shared_max_probe,
        bool(warp_aggregation), cap_log2,
    )
    pair_gt, pair_pred, pair_count, n_pairs = _emulate_compaction(keys, counts)
    return PairTables(pair_gt, pair_pred, pair_count, n_pairs, status)


# ---------------------------------------------------------------------------------------------
# CPU emulation of match_segments
# ---------------------------------------------------------------------------------------------


def match_emulated(
    pairs: PairTables, gt_segments: SegmentTables, pred_segments: SegmentTables, n_categories: int
) -> MatchPartials:
    """What ``match_segments`` computes, replayed phase by phase on the CPU (NumPy inputs)."""
    n_images, cap = pairs.gt.shape
    tp = np.zeros((n_images, n_categories), np.int64)
    fp = np.zeros_like(tp)
    fn = np.zeros_like(tp)
    iou_sum = np.zeros((n_images, n_categories), np.float64)
    pair_iou = np.zeros((n_images, cap), np.float64)
    pair_matched = np.zeros((n_images, cap), np.int32)
    status = np.array(pairs.status, dtype=np.int32, copy=True)
    for b in range(n_images):
        n_p = int(pairs.n_pairs[b])
        n_g, n_q = int(gt_segments.count[b]), int(pred_segments.count[b])
        g_id, g_cat = gt_segments.id[b, :n_g], gt_segments.category[b, :n_g]
        g_crowd = gt_segments.iscrowd[b, :n_g]
        q_id, q_cat = pred_segments.id[b, :n_q], pred_segments.category[b, :n_q]
        # 0. last-listed crowd of each category
        last_crowd = np.zeros(n_g, bool)
        for i in range(n_g):
            if g_crowd[i] == 1:
                last_crowd[i] = not any(
                    g_crowd[j] == 1 and g_cat[j] == g_cat[i] for j in range(i + 1, n_g)
                )
        gt_pixels = np.zeros(n_g, np.int64)
        gt_matched = np.zeros(n_g, bool)
        q_area = np.zeros(n_q, np.int64)
        q_void = np.zeros(n_q, np.int64)
        q_crowd = np.zeros(n_q, np.int64)
        q_matched = np.zeros(n_q, bool)
        # 1. segments of the pairs, marginals, I(void, p)
        pair_segments = []
        for i in range(n_p):
            g, p, count = int(pairs.gt[b, i]), int(pairs.pred[b, i]), int(pairs.count[b, i])
            gs = int(np.flatnonzero(g_id == g)[0]) if (g_id == g).any() else -1
            ps = int(np.flatnonzero(q_id == p)[0]) if (q_id == p).any() else -1
            pair_segments.append((gs, ps, count))
            if ps >= 0:
                q_area[ps] += count
                if g == 0:
                    q_void[ps] = count
            elif p != 0:
                status[b] |= STATUS_PRED_ID_NOT_LISTED
            if gs >= 0:
                gt_pixels[gs] += count
        # 2. IoUs and matches
        for i, (gs, ps, count) in enumerate(pair_segments):
            if gs < 0 or ps < 0:
                continue
            category = g_cat[gs]
            if category < 0 or category != q_cat[ps]:
                continue
            if last_crowd[gs]:
                q_crowd[ps] = count
            if g_crowd[gs] == 1:
                continue
            area_g = (
                float(gt_pixels[gs]) if gt_segments.area is None else float(gt_segments.area[b, gs])
            )
            union = ((float(q_area[ps]) + area_g) - float(count)) - float(q_void[ps])
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = float(np.float64(count) / np.float64(union))
            pair_iou[b, i] = iou
            if iou > 0.5:
                pair_matched[b, i] = 1
                gt_matched[gs] = True
                q_matched[ps] = True
        # 3. tp / iou_sum in pair order; fn; fp
        for i, (gs, _, _) in enumerate(pair_segments):
            if pair_matched[b, i]:
                tp[b, g_cat[gs]] += 1
                iou_sum[b, g_cat[gs]] += pair_iou[b, i]
        for i in range(n_g):
            if not gt_matched[i] and g_crowd[i] != 1 and g_cat[i] >= 0:
                fn[b, g_cat[i]] += 1
        for j in range(n_q):
            if q_matched[j]:
                continue
            if q_area[j] == 0:
                status[b] |= STATUS_PRED_SEGMENT_ABSENT
                continue
            if q_cat[j] < 0:
                status[b] |= STATUS_PRED_CATEGORY_UNKNOWN
                continue
            if float(q_void[j] + q_crowd[j]) / float(q_area[j]) > 0.5:
                continue
            fp[b, q_cat[j]] += 1
    return MatchPartials(tp, fp, fn, iou_sum, pair_iou, pair_matched, status)


# ---------------------------------------------------------------------------------------------
# numba.cuda twin of the histogram (shared-memory hash, atomics, no warp intrinsics)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _twin_kernels(shared_log2: int, shared_max_probe: int):
    # numba.cuda is imported here, not at the top, so that the emulation needs Numba only; it is
    # bound as a module global because the simulator swaps `cuda` in the kernels' globals.
    global cuda, int32, int64, uint64
    from numba import cuda, int32, int64, uint64

    slots = 1 << shared_log2
    probes = min(shared_max_probe, slots)
    empty = uint64(0xFFFF_FFFF_FFFF_FFFF)
    overflow = int32(STATUS_PAIR_TABLE_OVERFLOW)

    @cuda.jit(device=True)
    def slot_of(key, mask):
        # mixing of the two 31-bit ids without integer overflow (the simulator warns on it)
        g = int64(key >> uint64(32)) & 0x7FFF_FFFF
        p = int64(key & uint64(0xFFFF_FFFF)) & 0x7FFF_FFFF
        h = (g * 0x9E37_79B1) ^ (p * 0x85EB_CA6B)
        return int64((h ^ (h >> 17)) & mask)

    @cuda.jit(device=True)
    def global_insert(keys, counts, cap_mask, key, count, status, image):
        if status[image] & overflow:
            return
        slot = slot_of(key, cap_mask)
        for _ in range(cap_mask + 1):
            found = cuda.atomic.cas(keys, slot, empty, key)
            if found == empty or found == key:
                cuda.atomic.add(counts, slot, uint64(count))
                return
            slot = (slot + 1) & cap_mask
        cuda.atomic.or_(status, image, overflow)

    @cuda.jit
    def histogram(gt, pred, tile_pixels, table_keys, table_counts, status):
        s_keys = cuda.shared.array(slots, dtype=uint64)
        s_counts = cuda.shared.array(slots, dtype=uint64)
        tid = cuda.threadIdx.x
        image = cuda.blockIdx.y
        n_pixels = gt.shape[1]
        cap_mask = table_keys.shape[1] - 1
        keys = table_keys[image]
        counts = table_counts[image]
        for s in range(tid, slots, cuda.blockDim.x):
            s_keys[s] = empty
            s_counts[s] = uint64(0)
        cuda.syncthreads()
        start = cuda.blockIdx.x * tile_pixels
        end = min(start + tile_pixels, n_pixels)
        seen = int64(0)
        for i in range(start + tid, end, cuda.blockDim.x):
            g = int64(gt[image, i])
            p = int64(pred[image, i])
            seen |= g | p
            key = (uint64(g & 0xFFFF_FFFF) << uint64(32)) | uint64(p & 0xFFFF_FFFF)
            slot = slot_of(key, slots - 1)
            done = False
            for _ in range(probes):
                found = cuda.atomic.cas(s_keys, slot, empty, key)
                if found == empty or found == key:
                    cuda.atomic.add(s_counts, slot, uint64(1))
                    done = True
                    break
                slot = (slot + 1) & (slots - 1)
            if not done:
                global_insert(keys, counts, cap_mask, key, 1, status, image)
        if cuda.syncthreads_or(int32((seen >> 31) != 0)) and tid == 0:
            cuda.atomic.or_(status, image, int32(STATUS_ID_OUT_OF_RANGE))
        for s in range(tid, slots, cuda.blockDim.x):
            key = s_keys[s]
            if key != empty:
                global_insert(keys, counts, cap_mask, key, s_counts[s], status, image)

    @cuda.jit
    def compact(table_keys, table_counts, scratch_keys, scratch_counts, pair_gt, pair_pred,
                pair_count, n_pairs):
        packed = cuda.shared.array(1, dtype=int32)
        tid = cuda.threadIdx.x
        image = cuda.blockIdx.x
        cap = table_keys.shape[1]
        if tid == 0:
            packed[0] = 0
        cuda.syncthreads()
        for s in range(tid, cap, cuda.blockDim.x):
            key = table_keys[image, s]
            if key != empty:
                at = cuda.atomic.add(packed, 0, 1)
                scratch_keys[image, at] = key
                scratch_counts[image, at] = table_counts[image, s]
        cuda.syncthreads()
        n = packed[0]
        for i in range(tid, n, cuda.blockDim.x):
            key = scratch_keys[image, i]
            rank = 0
            for t in range(n):
                if scratch_keys[image, t] < key:
                    rank += 1
            pair_gt[image, rank] = int32(int64(key >> uint64(32)))
            pair_pred[image, rank] = int32(int64(key & uint64(0xFFFF_FFFF)))
            pair_count[image, rank] = int64(scratch_counts[image, i])
        if tid == 0:
            n_pairs[image] = n

    return histogram, compact


def pair_histogram_twin(
    gt,
    pred,
    *,
    capacity: int = DEFAULT_CAPACITY,
    tile_pixels: int = DEFAULT_TILE_PIXELS,
    block_threads: int = BLOCK_THREADS,
    shared_log2: int = SHARED_LOG2,
    shared_max_probe: int = SHARED_MAX_PROBE,
) -> PairTables:
    """The pair histogram with ``numba.cuda`` kernels; NumPy in, NumPy out.

    Same tables as :func:`pair_histogram_emulated`. Runs on a GPU with numba-cuda, or on the CPU
    under ``NUMBA_ENABLE_CUDASIM=1`` (slow: keep inputs tiny there).
    """
    from numba import cuda

    gt2d, pred2d = batch_label_maps(np.asarray(gt), np.asarray(pred), np)
    tile_pixels = check_tile_pixels(tile_pixels)
    cap = 1 << capacity_log2(capacity)
    n_images, n_pixels = gt2d.shape
    histogram, compact = _twin_kernels(int(shared_log2), int(shared_max_probe))
    table_keys = cuda.to_device(np.full((n_images, cap), EMPTY_KEY, np.uint64))
    table_counts = cuda.to_device(np.zeros((n_images, cap), np.uint64))
    status = cuda.to_device(np.zeros(n_images, np.int32))
    if n_images and n_pixels:
        n_tiles = -(-n_pixels // tile_pixels)
        histogram[(n_tiles, n_images), block_threads](
            cuda.to_device(gt2d), cuda.to_device(pred2d), tile_pixels, table_keys, table_counts,
            status,
        )
    scratch_keys = cuda.device_array((n_images, cap), np.uint64)
    scratch_counts = cuda.device_array((n_images, cap), np.uint64)
    pair_gt = cuda.to_device(np.zeros((n_images, cap), np.int32))
    pair_pred = cuda.to_device(np.zeros((n_images, cap), np.int32))
    pair_count = cuda.to_device(np.zeros((n_images, cap), np.int64))
    n_pairs = cuda.to_device(np.zeros(n_images, np.int32))
    if n_images:
        compact[n_images, block_threads](
            table_keys, table_counts, scratch_keys, scratch_counts, pair_gt, pair_pred,
            pair_count, n_pairs,
        )
    return PairTables(
        pair_gt.copy_to_host(), pair_pred.copy_to_host(), pair_count.copy_to_host(),
        n_pairs.copy_to_host(), status.copy_to_host(),
    )

"""CPU oracles of the CUDA kernels, for the tests (as stumpy keeps its naive implementations in
tests/naive.py): none of this ships.

The main oracle of ``kernels/*.cu`` is the g++ build of the real sources on CPU threads (the
CUDA shim of test_gpu_kernel.py). The emulations here replay the same work in NumPy/Numba, fast
enough to run the streaming metric's device glue (:mod:`fastpq.gpu.device_state`) on the CPU:

* :func:`pair_histogram_emulated` replays what the histogram and compaction kernels of
  ``pairs.cu`` do: the same tiles, warps, four pixels per lane, merging of equal neighbours inside
  a lane, the warp's run of uniform spans, warp aggregation (groups of equal keys, one insert by
  the lowest lane), the same hash function, bounded probing of the shared table with fallback to
  the global table, the global table's overflow flag, and the ballot-ordered packing followed by
  the rank sort. The one thing it fixes that the GPU leaves open is the order of concurrent work
  (warps in order, lanes in order); the pair *tables* do not depend on it.
* :func:`match_emulated` replays the matcher kernel's phases.
* :func:`encode_emulated` and :func:`derive_tables_emulated` replay ``encode.cu``.
* :func:`accumulate_partials_host` is ``accumulate.cu`` in NumPy.
* :class:`EmulatedBackend` bundles them behind the interface of
  :class:`fastpq.gpu.cupy_kernels.CupyBackend`; tests pass it to
  ``PanopticQuality(..., gpu_backend=...)``.

test_gpu_kernel.py, test_device_state.py and test_device_encoded.py check each emulation against
``np.unique`` / a direct port of panopticapi and against the shim build of the real source.
"""

from __future__ import annotations

from typing import Optional

import numba
import numpy as np

from fastpq.core.arrays import is_torch_tensor
from fastpq.core.sums import two_sum
from fastpq.gpu.cupy_kernels import batch_label_maps, uses_vec4
from fastpq.kernels.gpu_layout import (
    BLOCK_THREADS,
    DEFAULT_CAPACITY,
    DEFAULT_TILE_PIXELS,
    EMPTY_KEY,
    HASH_MULTIPLIER,
    MODE_PAIRS,
    SHARED_LOG2,
    SHARED_MAX_PROBE,
    STATUS_CATEGORY_UNKNOWN,
    STATUS_ID_OUT_OF_RANGE,
    STATUS_INSTANCE_TOO_LARGE,
    STATUS_PAIR_TABLE_OVERFLOW,
    STATUS_PRED_CATEGORY_UNKNOWN,
    STATUS_PRED_ID_NOT_LISTED,
    STATUS_PRED_SEGMENT_ABSENT,
    MatchPartials,
    PairTables,
    SegmentTables,
    capacity_log2,
    check_tile_pixels,
    nvrtc_options,
)

_LOW32 = np.uint64(0xFFFF_FFFF)
_SHIFT32 = np.uint64(32)


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

    Parameters are those of :func:`fastpq.gpu.cupy_kernels.pair_histogram_batch` plus the
    compile-time sizes of ``pairs.cu`` (small ``shared_log2``/``capacity`` force the overflow
    paths). ``warp_aggregation=False`` replays the pre-sm_80 build (one insert per lane item).
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
# CPU emulation of encode.cu
# ---------------------------------------------------------------------------------------------


def encode_emulated(gt, pred, mode: int, divisor: int, void_label: int, lut, inst_bits: int):
    """The encoding ``pair_histogram_encoded_*`` applies to each pixel (``encode_at``), on whole
    maps: (B, N) int32 id maps of each side and (B,) status bits.
    ``gt``/``pred`` are (B, 2N) interleaved [category, instance] (pairs) or (B, N) ids."""
    outputs = []
    status = np.zeros(gt.shape[0], np.int32)
    for side in (gt, pred):
        side = np.asarray(side, np.int64)
        bad = np.zeros(side.shape[:1] + (side.shape[1] // (2 if mode == MODE_PAIRS else 1),),
                       np.int32)
        if mode == MODE_PAIRS:
            category, instance = side[:, 0::2], side[:, 1::2]
            out_of_range = ((category | instance) < 0) | (((category | instance) >> 31) != 0)
        else:
            out_of_range = side < 0
            safe = np.where(out_of_range, 0, side)
            category, instance = safe // divisor, safe % divisor
        bad[out_of_range] |= STATUS_ID_OUT_OF_RANGE
        valid = ~out_of_range
        void = valid & (category == void_label)
        in_lut = (category >= 0) & (category < lut.size)
        dense = np.where(in_lut, lut[np.clip(category, 0, lut.size - 1)], -1)
        unknown = valid & ~void & (dense < 0)
        bad[unknown] |= STATUS_CATEGORY_UNKNOWN
        too_large = valid & ~void & ~unknown & ((instance >> inst_bits) != 0)
        bad[too_large] |= STATUS_INSTANCE_TOO_LARGE
        good = valid & ~void & ~unknown & ~too_large
        ids = np.where(good, ((dense + 1) << inst_bits) | instance, 0).astype(np.int32)
        outputs.append(ids)
        status |= np.bitwise_or.reduce(bad, axis=1) if bad.shape[1] else 0
    return outputs[0], outputs[1], status


def derive_tables_emulated(pairs: PairTables, inst_bits: int, is_thing, crowd_rule: bool):
    """What ``derive_segment_tables`` computes: GT and predicted SegmentTables (rows of the pair
    tables' capacity) from sorted pair tables."""
    pair_gt, pair_pred = np.asarray(pairs.gt), np.asarray(pairs.pred)
    n_images, cap = pair_gt.shape
    gt = SegmentTables(np.zeros((n_images, cap), np.int32), np.zeros((n_images, cap), np.int32),
                       np.zeros((n_images, cap), np.int32), None, np.zeros(n_images, np.int32))
    pred = SegmentTables(np.zeros((n_images, cap), np.int32),
                         np.zeros((n_images, cap), np.int32), None, None,
                         np.zeros(n_images, np.int32))
    mask = (1 << inst_bits) - 1
    for b in range(n_images):
        n = int(np.asarray(pairs.n_pairs)[b])
        g, p = pair_gt[b, :n], pair_pred[b, :n]
        gt_ids = np.array([x for i, x in enumerate(g.tolist())
                           if x != 0 and (i == 0 or g[i - 1] != x)], np.int32)
        seen, pred_ids = set(), []
        for x in p.tolist():
            if x != 0 and x not in seen:
                seen.add(x)
                pred_ids.append(x)
        pred_ids = np.array(pred_ids, np.int32)
        gt_category = (gt_ids >> inst_bits) - 1
        gt.id[b, :gt_ids.size] = gt_ids
        gt.category[b, :gt_ids.size] = gt_category
        if crowd_rule:
            gt.iscrowd[b, :gt_ids.size] = (np.asarray(is_thing)[gt_category] != 0) & (
                (gt_ids & mask) == 0)
        gt.count[b] = gt_ids.size
        pred.id[b, :pred_ids.size] = pred_ids
        pred.category[b, :pred_ids.size] = (pred_ids >> inst_bits) - 1
        pred.count[b] = pred_ids.size
    return gt, pred


# ---------------------------------------------------------------------------------------------
# accumulate.cu in NumPy
# ---------------------------------------------------------------------------------------------


def accumulate_partials_host(partials: MatchPartials, state, *, update: int) -> None:
    """``kernels/accumulate.cu`` (:func:`fastpq.gpu.cupy_kernels.accumulate_partials`) in NumPy.

    Adds the rows of ``partials`` (tp, fp, fn, iou_sum, status of B images) into ``state`` =
    ``(tp, fp, fn, iou, iou_err, record)`` in place, image by image, exactly as
    :meth:`PQAccumulator.add_image` does; a batch with a status bit adds nothing and is counted in
    ``record`` (refused updates, first refused update, its first bad image, that image's status,
    OR of all status bits, images refused).
    """
    tp, fp, fn, iou, iou_err, record = state
    status = np.asarray(partials.status)
    bad = np.flatnonzero(status)
    if bad.size:
        if record[0] == 0:
            record[1], record[2], record[3] = update, bad[0], status[bad[0]]
        record[0] += 1
        record[4] |= np.bitwise_or.reduce(status)
        record[5] += status.size
        return
    for b in range(status.size):
        tp += partials.tp[b]
        fp += partials.fp[b]
        fn += partials.fn[b]
        iou[:], err = two_sum(iou, partials.iou_sum[b])
        iou_err += err


# ---------------------------------------------------------------------------------------------
# The backend of the device state on the CPU
# ---------------------------------------------------------------------------------------------


class EmulatedBackend:
    """The CPU twin of :class:`fastpq.gpu.cupy_kernels.CupyBackend`: NumPy arrays, and the
    emulations above in place of the kernels.

    ``histogram_options`` go to :func:`pair_histogram_emulated` (e.g. small ``tile_pixels`` or
    ``shared_log2`` to exercise the kernel's overflow paths).

    An instance is also a ``gpu_backend`` factory for :class:`fastpq.PanopticQuality`: called
    with an update's maps it returns itself while :attr:`on_device` is true (every update goes
    through the device glue, host maps included) and None otherwise (the host path).
    """

    xp = np
    key = ("emulation",)

    def __init__(self, **histogram_options):
        self.histogram_options = histogram_options
        self.on_device = True

    def __call__(self, gt, pred):
        return self if self.on_device else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def as_array(self, value):
        if is_torch_tensor(value):
            return value.detach().numpy()
        return np.asarray(value)

    def histogram(self, gt, pred, capacity: int):
        return pair_histogram_emulated(gt, pred, capacity=capacity, **self.histogram_options)

    def match(self, pairs, gt_segments, pred_segments, n_categories: int) -> MatchPartials:
        return match_emulated(pairs, gt_segments, pred_segments, n_categories)

    def accumulate(self, partials, state, update: int) -> None:
        accumulate_partials_host(partials, state, update=update)

    def encode(self, gt, pred, *, mode, lut, inst_bits, void_label, divisor=1):
        shape = gt.shape[:-1] if mode == MODE_PAIRS else gt.shape
        g, p, status = encode_emulated(np.asarray(gt).reshape(shape[0], -1),
                                       np.asarray(pred).reshape(shape[0], -1), mode, divisor,
                                       void_label, np.asarray(lut), inst_bits)
        return g.reshape(shape), p.reshape(shape), status

    def histogram_encoded(self, gt, pred, capacity: int, **encoding):
        """encode.cu's fused histogram: the encoding, then the histogram's scalar work split."""
        gt_ids, pred_ids, status = self.encode(gt, pred, **encoding)
        options = dict(self.histogram_options, vec4=False)
        tables = pair_histogram_emulated(gt_ids, pred_ids, capacity=capacity, **options)
        return tables._replace(status=tables.status | status)

    def derive_tables(self, pairs, *, inst_bits, is_thing, crowd_rule):
        return derive_tables_emulated(pairs, inst_bits, np.asarray(is_thing), crowd_rule)

    def upload(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, copy=True)

    def download(self, array) -> np.ndarray:
        return np.array(array, copy=True)

    def marker(self):
        return None

    def wait_for(self, marker) -> None:
        return None

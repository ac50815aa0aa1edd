"""Host-side twins of ``kernels/encode.cu``: the id encoding of pairs/divisor maps on the GPU,
its constants, and CPU emulations of its two kernels (checked against the host path in
``tests/test_device_encoded.py``).
"""

from __future__ import annotations

import numpy as np

from .pairs_cuda import (
    STATUS_CATEGORY_UNKNOWN,
    STATUS_ID_OUT_OF_RANGE,
    STATUS_INSTANCE_TOO_LARGE,
    PairTables,
    SegmentTables,
)

MODE_PAIRS = 0
MODE_DIVISOR = 1


def instance_bits(n_categories: int) -> int:
    """Bits left for the instance in an encoded id ((dense + 1) << bits | instance < 2**31)."""
    bits = 31 - int(n_categories).bit_length()
    if bits < 8:
        raise ValueError(f"{n_categories} categories leave too few bits for instance ids on the "
                         "GPU path")
    return bits


def category_lut(category_ids, thing_mask, max_lut: int = 1 << 20):
    """``(lut, is_thing)`` int32 arrays: ``lut[category id]`` = dense index or -1, ``is_thing``
    per dense index. None when category ids are negative or above ``max_lut``."""
    ids = np.asarray(category_ids, np.int64)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= max_lut:
        return None
    lut = np.full(int(ids.max()) + 1, -1, np.int32)
    lut[ids] = np.arange(ids.size, dtype=np.int32)
    return lut, np.asarray(thing_mask, np.int32)


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

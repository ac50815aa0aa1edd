"""The matcher: one image's pair table + segment tables -> per-category tp, fp, fn, IoU sum.

It follows panopticapi's ``pq_compute_single_core`` rule for rule (SPEC §2.3–2.5):

* pairs are visited in ascending (gt id, pred id) order; a pair is a candidate when both ids are
  listed segments, the GT segment is not crowd and the categories are equal;
* ``union = area_p + area_g - I - I(void, p)`` with void = GT id 0 only; a match needs IoU
  strictly above 0.5 and adds the float64 ``I / union`` to the category's IoU sum;
* unmatched GT segments are FN, except crowd ones, of which only the last listed per category is
  remembered;
* an unmatched prediction is ignored when ``(I(void, p) + I(crowd of its category, p)) / area_p``
  is strictly above 0.5, else it is an FP.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from fastpq.core.segments import SegmentTable

#: Status codes of predicted segments in :class:`ImageMatch`.
PRED_FP, PRED_MATCHED, PRED_IGNORED = 0, 1, 2


class ImageMatch(NamedTuple):
    """What the matcher found in one image.

    tp, fp, fn : int64 (C,); iou : float64 (C,) — this image's contribution per category, the IoU
    sum taken in ascending (gt id, pred id) order.
    gt_match : int64 (G,) — matched pred row per GT row, -1 when unmatched.
    pred_status : int8 (P,) — PRED_FP, PRED_MATCHED or PRED_IGNORED per pred row.
    match_iou : float64 (G,) — the IoU of each GT row's match (0 when unmatched).
    gt_area, pred_area : float64 (G,), (P,) — the areas used in unions.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou: np.ndarray
    gt_match: np.ndarray
    pred_status: np.ndarray
    match_iou: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray


@njit(nogil=True, cache=True)
def _row_of(sorted_ids, order, x):
    k = np.searchsorted(sorted_ids, x)
    if k < sorted_ids.size and sorted_ids[k] == x:
        return order[k]
    return -1


@njit(nogil=True, cache=True)
def _pair_count(pg, pp, pc, g, p):
    lo = np.searchsorted(pg, g)
    hi = np.searchsorted(pg, g, side="right")
    k = lo + np.searchsorted(pp[lo:hi], p)
    if k < hi and pp[k] == p:
        return pc[k]
    return 0


# Holds the GIL: a call takes microseconds, less than handing the GIL to another thread and back.
@njit(cache=True, error_model="numpy")
def _match(pg, pp, pc, gt_ids, gt_cat, gt_crowd, gt_area_json, use_json_area,
           pred_ids, pred_cat, n_cat):
    n_gt = gt_ids.size
    n_pred = pred_ids.size
    gt_order = np.argsort(gt_ids)
    gt_sorted = gt_ids[gt_order]
    pred_order = np.argsort(pred_ids)
    pred_sorted = pred_ids[pred_order]

    gt_row = np.empty(pg.size, np.int64)
    pred_row = np.empty(pg.size, np.int64)
    gt_area = np.zeros(n_gt, np.float64)
    pred_area = np.zeros(n_pred, np.float64)
    void_overlap = np.zeros(n_pred, np.int64)
    for k in range(pg.size):
        gr = _row_of(gt_sorted, gt_order, pg[k])
        pr = _row_of(pred_sorted, pred_order, pp[k])
        gt_row[k] = gr
        pred_row[k] = pr
        if gr >= 0:
            gt_area[gr] += pc[k]
        if pr >= 0:
            pred_area[pr] += pc[k]
            if pg[k] == 0:
                void_overlap[pr] = pc[k]
    if use_json_area:
        gt_area = gt_area_json.copy()

    tp = np.zeros(n_cat, np.int64)
    fp = np.zeros(n_cat, np.int64)
    fn = np.zeros(n_cat, np.int64)
    iou_sum = np.zeros(n_cat, np.float64)
    gt_match = np.full(n_gt, -1, np.int64)
    match_iou = np.zeros(n_gt, np.float64)
    pred_status = np.zeros(n_pred, np.int8)

    for k in range(pg.size):
        gr = gt_row[k]
        pr = pred_row[k]
        if gr < 0 or pr < 0 or gt_crowd[gr] or gt_cat[gr] != pred_cat[pr]:
            continue
        # the reference's order of operations: ((area_p + area_g) - I) - I(void, p)
        union = pred_area[pr] + gt_area[gr] - pc[k] - void_overlap[pr]
        iou = pc[k] / union
        if iou > 0.5:
            c = gt_cat[gr]
            tp[c] += 1
            iou_sum[c] += iou
            gt_match[gr] = pr
            match_iou[gr] = iou
            pred_status[pr] = 1

    crowd_of = np.full(n_cat, -1, np.int64)
    for gr in range(n_gt):
        if gt_match[gr] >= 0:
            continue
        c = gt_cat[gr]
        if c < 0:
            continue
        if gt_crowd[gr]:
            crowd_of[c] = gt_ids[gr]
            continue
        fn[c] += 1

    for pr in range(n_pred):
        if pred_status[pr] == 1:
            continue
        c = pred_cat[pr]
        ignored = void_overlap[pr]
        if crowd_of[c] >= 0:
            ignored += _pair_count(pg, pp, pc, crowd_of[c], pred_ids[pr])
        if ignored / pred_area[pr] > 0.5:
            pred_status[pr] = 2
            continue
        fp[c] += 1
    return tp, fp, fn, iou_sum, gt_match, pred_status, match_iou, gt_area, pred_area


_NO_AREA = np.zeros(0, np.float64)


def match_image(pairs, gt: SegmentTable, pred: SegmentTable, n_categories: int) -> ImageMatch:
    """Match one image.

    Parameters
    ----------
    pairs : (gt_ids, pred_ids, counts)
        The image's pair table, sorted by (gt id, pred id) (see ``fastpq.kernels.pairs``).
    gt, pred : SegmentTable
        ``gt.area`` given: those areas are used in unions (the reference's JSON areas); None:
        pixel counts. Prediction areas are always pixel counts. Every predicted segment must
        cover at least one pixel (the callers check it).
    n_categories : int
        Size of the dense category index.
    """
    pg, pp, pc = pairs
    use_json = gt.area is not None
    out = _match(pg, pp, pc, gt.ids, gt.category, gt.iscrowd,
                 gt.area if use_json else _NO_AREA, use_json,
                 pred.ids, pred.category, n_categories)
    return ImageMatch(*out)

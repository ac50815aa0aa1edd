"""PQ and PQ-dagger under torchmetrics' rules (``convention='torchmetrics'``).

torchmetrics' ``PanopticQuality`` (SPEC §3.2–3.3): all stuff segments of a category are one
segment; crowd flags are ignored (a crowd region is an ordinary segment); void (id 0, and GT ids
missing from the segment table) is taken out of the union on both sides, an unmatched GT segment
more than half predicted as void is not an FN, an unmatched prediction more than half on GT void
is not an FP (both tests ``<= 0.5`` in float32); areas are pixel counts; each IoU is the float32
quotient of the float32-rounded intersection and union, as its 0-d int64 tensor division gives,
compared with 0.5 in float32 and added to float64 sums; scores as its ``compute`` (see
:class:`~fastpq.core.result.PQResult`). ``ModifiedPanopticQuality`` (PQ-dagger) scores stuff
classes by the PQ-dagger rule of :mod:`fastpq.metrics.pq_dagger` on these segments.
"""

from __future__ import annotations

import numpy as np

from fastpq.core.categories import Categories
from fastpq.metrics.protocol import PQSumsMetric, table_rows, take_rows


def _units(table, rows: np.ndarray, stuff: np.ndarray) -> np.ndarray:
    """torchmetrics' segment of each pair-table entry: a table row, the first listed row of its
    category for stuff (its stuff segments are one), -1 for void (unlisted ids, categories
    outside the table)."""
    if len(table) == 0:
        return np.full(rows.shape, -1, np.int64)
    cat = table.category
    unit = np.arange(len(table), dtype=np.int64)
    is_stuff = np.flatnonzero((cat >= 0) & stuff[np.maximum(cat, 0)])
    if is_stuff.size:
        _, first, inverse = np.unique(cat[is_stuff], return_index=True, return_inverse=True)
        unit[is_stuff] = is_stuff[first][inverse]
    unit[cat < 0] = -1
    return take_rows(unit, rows, -1)


def torchmetrics_image(prepared, categories: Categories, *, dagger: bool = False):
    """One image's per-category ``(tp, fp, fn, iou)`` under torchmetrics' rules (module docstring).

    Parameters
    ----------
    prepared : PreparedImage
    categories : Categories
    dagger : bool
        ``ModifiedPanopticQuality``'s stuff rule instead of ``PanopticQuality``'s.

    Returns
    -------
    tp, fp, fn : int64 (C,)
    iou : float64 (C,)
        Sums of float32 IoUs, in pair-table order.
    """
    pg, pp, pc = (np.asarray(a) for a in prepared.pairs)
    gt, pred = prepared.gt, prepared.pred
    n_cat = len(categories)
    stuff = ~categories.thing_mask
    gu = _units(gt, table_rows(gt.ids, pg), stuff)
    pu = _units(pred, table_rows(pred.ids, pp), stuff)
    n_p = len(pred) + 1
    keys, inverse = np.unique((gu + 1) * n_p + (pu + 1), return_inverse=True)
    inter = np.bincount(inverse.ravel(), weights=pc, minlength=keys.size).astype(np.int64)
    ug, up = keys // n_p - 1, keys % n_p - 1

    g_area = np.bincount(ug[ug >= 0], weights=inter[ug >= 0], minlength=len(gt)).astype(np.int64)
    p_area = np.bincount(up[up >= 0], weights=inter[up >= 0], minlength=len(pred)).astype(np.int64)
    g_void = np.zeros(len(gt), np.int64)
    p_void = np.zeros(len(pred), np.int64)
    on_void = (ug >= 0) & (up < 0)
    g_void[ug[on_void]] = inter[on_void]
    on_void = (up >= 0) & (ug < 0)
    p_void[up[on_void]] = inter[on_void]

    g_cat = take_rows(gt.category, ug, -1)
    cand = (ug >= 0) & (up >= 0) & (g_cat == take_rows(pred.category, up, -2))
    cg, cp, ci, cat = ug[cand], up[cand], inter[cand], g_cat[cand]
    union = p_area[cp] - p_void[cp] + g_area[cg] - g_void[cg] - ci
    iou = ci.astype(np.float32) / union.astype(np.float32)
    modified = stuff[cat] if dagger else np.zeros(cat.size, bool)
    hit = ~modified & (iou > np.float32(0.5))
    summed = hit | (modified & (iou > 0))
    tp = np.bincount(cat[hit], minlength=n_cat).astype(np.int64)
    iou_sum = np.bincount(cat[summed], weights=iou[summed].astype(np.float64), minlength=n_cat)

    g_matched = np.zeros(len(gt), bool)
    g_matched[cg[hit]] = True
    p_matched = np.zeros(len(pred), bool)
    p_matched[cp[hit]] = True
    g_units, p_units = np.unique(ug[ug >= 0]), np.unique(up[up >= 0])
    g_unit_cat, p_unit_cat = gt.category[g_units], pred.category[p_units]
    excluded = stuff if dagger else np.zeros(n_cat, bool)
    if dagger:  # one "true positive" per GT stuff segment: the PQ-dagger denominator
        tp += np.bincount(g_unit_cat[stuff[g_unit_cat]], minlength=n_cat)
    fn = _unmatched(g_units, g_unit_cat, g_matched, g_area, g_void, excluded)
    fp = _unmatched(p_units, p_unit_cat, p_matched, p_area, p_void, excluded)
    return tp, fp, fn, iou_sum


def _unmatched(units, cat, matched, area, void, excluded) -> np.ndarray:
    """torchmetrics' FN (or FP) counts: unmatched segments whose void share is ``<= 0.5`` in
    float32, outside the ``excluded`` categories."""
    counted = (~matched[units] & ~excluded[cat]
               & (void[units].astype(np.float32) / area[units].astype(np.float32)
                  <= np.float32(0.5)))
    return np.bincount(cat[counted], minlength=excluded.size).astype(np.int64)


class TorchmetricsPQMetric(PQSumsMetric):
    """torchmetrics' ``PanopticQuality`` (``convention='torchmetrics'``, module docstring)."""

    name = "pq"
    convention = "torchmetrics"
    title = "Panoptic Quality"
    dagger = False

    def score(self, prepared, categories, index, image_id):
        return torchmetrics_image(prepared, categories, dagger=self.dagger)


class TorchmetricsPQDaggerMetric(TorchmetricsPQMetric):
    """torchmetrics' ``ModifiedPanopticQuality`` (``metric='pq_dagger',
    convention='torchmetrics'``)."""

    name = "pq_dagger"
    title = "PQ-dagger"
    dagger = True

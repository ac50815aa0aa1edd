"""Breakdowns of a :class:`~fastpq.core.result.PQResult`: by segment size, supercategory, things vs
stuff, and the PQ that each kind of error costs.

:func:`by_supercategory` and :func:`by_kind` need only the per-class rows. :func:`by_size`,
:func:`error_breakdown` and :func:`worst_images` read the per-image records, so the result must
come from ``evaluate(..., per_image=True)`` or ``pq_compute(..., per_image=True)``.

Size bins (COCO's): *small* area < 32², *medium* 32² <= area < 96², *large* area >= 96². A true
positive and a false negative are binned by the GT segment's area (the area used in its IoU:
the JSON area in ``pq_compute``), a false positive by the predicted segment's pixel count.
Ignored predictions and crowd regions are in no bin. Every tp, fp and fn falls in exactly one
bin, so the bins' counts add up to the dataset's.

Error kinds (see :mod:`fastpq.core.records` for how each FN and FP is classified). For a category
with ``D = tp + fp/2 + fn/2``::

    1 - PQ = (tp - iou) / D  +  (fn + fp) / (2 D)
           = low_iou + missed + spurious + wrong_class + low_overlap

``low_iou`` is the sum of ``1 - IoU`` over the matches, divided by D; every FN or FP adds
``0.5 / D`` to its kind. A split's parts are the means of its categories' parts (over the ``n``
categories it averages), so they add up to ``1 - PQ`` of the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastpq.core.categories import Categories
from fastpq.core.records import ERROR_KINDS
from fastpq.core.result import SPLITS, PQResult, SplitScore

#: COCO's area ranges: (name, lower bound inclusive, upper bound exclusive), in pixels.
COCO_SIZES = (("small", 0, 32 ** 2), ("medium", 32 ** 2, 96 ** 2), ("large", 96 ** 2, math.inf))

#: The parts of ``1 - PQ``, in the order tables show them.
COST_KINDS = ("low_iou", "missed", "spurious", "wrong_class", "low_overlap")


def _records(result) -> list:
    if getattr(result, "per_image", None) is None:
        raise ValueError("this breakdown reads per-image records: evaluate with per_image=True "
                         "(fastpq.evaluate or fastpq.pq_compute)")
    return result.per_image


def by_supercategory(result: PQResult) -> dict[str, SplitScore]:
    """PQ, SQ, RQ and n per supercategory: the split rule (mean over the categories with any tp,
    fp or fn) applied to each supercategory's categories, in category-table order.

    Categories without a supercategory are under ''.
    """
    categories = result.categories
    groups: dict[str, list] = {}
    for k, name in enumerate(categories.supercategories):
        groups.setdefault(name, []).append(k)
    out = {}
    for name, rows in groups.items():
        sub = Categories([categories.ids[k] for k in rows], [categories.isthing[k] for k in rows],
                         [categories.names[k] for k in rows], [name] * len(rows))
        out[name] = PQResult(sub, result.tp[rows], result.fp[rows], result.fn[rows],
                             result.iou[rows], metric=result.metric,
                             convention=result.convention).all
    return out


def by_kind(result: PQResult) -> dict[str, SplitScore]:
    """``{'Things': ..., 'Stuff': ...}`` — the result's own splits."""
    return {"Things": result.things, "Stuff": result.stuff}


def by_size(result: PQResult, bins=COCO_SIZES) -> dict[str, PQResult]:
    """One :class:`PQResult` per size bin (module docstring), from the per-image records.

    Parameters
    ----------
    result : PQResult
        With per-image records.
    bins : sequence of (name, low, high)
        Area ranges ``low <= area < high``; default COCO's small / medium / large. They must
        cover every area for the bins to add up to the dataset.

    Raises
    ------
    ValueError
        The result has no per-image records.
    """
    records = _records(result)
    categories = result.categories
    index = categories.index_map()
    edges = np.array([b[1] for b in bins] + [bins[-1][2]], np.float64)
    n_cat = len(categories)
    tp, fp, fn = (np.zeros((len(bins), n_cat), np.int64) for _ in range(3))
    iou = np.zeros((len(bins), n_cat), np.float64)

    def bin_of(area):
        return int(np.searchsorted(edges, area, side="right")) - 1

    for record in records:
        for m in record.matches:
            b, c = bin_of(m.gt_area), index[m.category_id]
            tp[b, c] += 1
            iou[b, c] += m.iou
        for u in record.unmatched:
            if u.why in ("fn", "fp"):
                (fn if u.why == "fn" else fp)[bin_of(u.area), index[u.category_id]] += 1
    return {name: PQResult(categories, tp[b], fp[b], fn[b], iou[b])
            for b, (name, _, _) in enumerate(bins)}


@dataclass(frozen=True)
class ErrorBreakdown:
    """The PQ each kind of error costs (module docstring).

    Attributes
    ----------
    per_class : dict[int, dict[str, float]]
        Category id -> {kind: cost} over :data:`COST_KINDS`, for the categories with any tp, fp
        or fn; the costs add up to ``1 - pq`` of the category.
    counts : dict[int, dict[str, int]]
        Category id -> number of FN and FP of each kind in :data:`fastpq.core.records.ERROR_KINDS`.
    splits : dict[str, dict[str, float]]
        'All', 'Things', 'Stuff' -> {kind: cost}: means over the split's categories, adding up
        to ``1 - pq`` of the split (all zero for an empty split).
    """

    per_class: dict
    counts: dict
    splits: dict


def error_breakdown(result: PQResult) -> ErrorBreakdown:
    """Split ``1 - PQ`` of every category and split into the error kinds that cost it.

    Raises
    ------
    ValueError
        The result has no per-image records.
    """
    records = _records(result)
    categories = result.categories
    index = categories.index_map()
    kinds = np.zeros((len(categories), len(ERROR_KINDS)), np.int64)
    column = {kind: k for k, kind in enumerate(ERROR_KINDS)}
    for record in records:
        for u in record.unmatched:
            if u.error is not None:
                kinds[index[u.category_id], column[u.error]] += 1

    per_class, counts = {}, {}
    for k, (cid, row) in enumerate(result.per_class.items()):
        counts[cid] = dict(zip(ERROR_KINDS, kinds[k].tolist()))
        if row.tp + row.fp + row.fn == 0:
            continue
        half = 0.5 / (row.tp + 0.5 * row.fp + 0.5 * row.fn)
        n_of = counts[cid]
        per_class[cid] = {
            "low_iou": (row.tp - row.iou) / (row.tp + 0.5 * row.fp + 0.5 * row.fn),
            "missed": half * n_of["missed"],
            "spurious": half * n_of["spurious"],
            "wrong_class": half * n_of["wrong_class"],
            "low_overlap": half * n_of["low_overlap"],
        }
    splits = {}
    for name, isthing in SPLITS:
        members = [per_class[cid] for cid, row in result.per_class.items()
                   if cid in per_class and (isthing is None or row.isthing == isthing)]
        splits[name] = {kind: (sum(m[kind] for m in members) / len(members) if members else 0.0)
                        for kind in COST_KINDS}
    return ErrorBreakdown(per_class, counts, splits)


def worst_images(result: PQResult, k: int = 10) -> list:
    """The ``k`` records with the lowest per-image PQ (images with nothing to score are left
    out), lowest first; ties keep input order.

    Raises
    ------
    ValueError
        The result has no per-image records.
    """
    scored = [r for r in _records(result) if not math.isnan(r.pq)]
    return sorted(scored, key=lambda r: r.pq)[:k]

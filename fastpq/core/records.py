"""Per-image records: what the matcher did with every segment of one image, and its scores.

:func:`image_record` is a pure function of one image's pair table, segment tables and
:class:`~fastpq.core.matching.ImageMatch`; ``evaluate(..., per_image=True)``,
``pq_compute(..., per_image=True)`` and the streaming metric all call it. A record holds
O(segments) plain Python values, never a pixel map.

Records add up to the dataset result: the per-class ``tp``, ``fp`` and ``fn`` of all records sum
to the dataset's counts exactly, and their ``iou`` values (the per-image partials the accumulator
adds) to its IoU sums within rounding.

Why a segment is unmatched (:attr:`UnmatchedSegment.why`):

``'fn'``
    a ground-truth segment counted as a false negative;
``'fp'``
    a predicted segment counted as a false positive;
``'ignored'``
    a predicted segment that is not counted because more than half of it lies on GT void, or on
    void plus the crowd region of its own category (SPEC §2.5);
``'crowd'``
    a ground-truth crowd region: never matched and never a false negative (SPEC §2.4);
``'dropped'``
    a ground-truth segment whose category is not in the category table (only ``pq_compute``
    lets it through: the reference counts it in a category it never reports, SPEC §9 case 27).

What kind of error an FN or FP is (:attr:`UnmatchedSegment.error`), the first rule that applies:

``'wrong_class'``
    it has IoU > 0.5 with a non-crowd segment of another category on the other side (the IoU
    of a match, ``I / (area_p + area_g - I - I(void, p))``): it would have matched with the
    right class;
``'low_overlap'``
    it overlaps a non-crowd segment of its own category on the other side, but never with
    IoU > 0.5 (a merge, a split, a poor boundary or a duplicate);
``'missed'`` (FN) or ``'spurious'`` (FP)
    it overlaps no non-crowd segment of its own category on the other side.

:mod:`fastpq.analysis.breakdown` turns these into the PQ each kind of error costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from fastpq.core.categories import Categories
from fastpq.core.inputs import PreparedImage
from fastpq.core.matching import PRED_IGNORED, PRED_MATCHED, ImageMatch

#: The values of :attr:`UnmatchedSegment.why`.
WHY = ("fn", "fp", "ignored", "crowd", "dropped")
#: The error kinds of FN and FP segments (:attr:`UnmatchedSegment.error`).
ERROR_KINDS = ("wrong_class", "low_overlap", "missed", "spurious")


class MatchedPair(NamedTuple):
    """A true positive: a GT segment and the prediction matched to it (user ids)."""

    gt_id: Any
    pred_id: Any
    category_id: int
    iou: float
    gt_area: float
    pred_area: float


class UnmatchedSegment(NamedTuple):
    """A segment without a match and why (module docstring)."""

    side: str  # 'gt' or 'pred'
    segment_id: Any
    category_id: int | None  # None for 'dropped' segments
    area: float
    why: str
    error: str | None  # FN and FP only


@dataclass(frozen=True)
class ImageRecord:
    """One image's scores and segments.

    Attributes
    ----------
    index : int
        Position of the image in the input (0-based).
    image_id
        The image id given by the caller (``image_ids=``, or the annotation's ``image_id`` for
        files); None when none was given.
    pq, sq, rq : float
        Mean over the categories with any tp, fp or fn in this image (SPEC §8.2); NaN when there
        is none. The dataset PQ is *not* the mean of these.
    n : int
        Number of those categories.
    per_class : dict[int, dict]
        Category id -> ``{'pq', 'sq', 'rq', 'tp', 'fp', 'fn', 'iou'}`` (as in
        ``PQResult.to_dict()['per_class']``) for the categories with any tp, fp or fn here.
    matches : tuple of MatchedPair
        True positives, in ascending (gt id, pred id) order of the pair table.
    unmatched : tuple of UnmatchedSegment
        Unmatched GT segments in ``segments_info`` order, then unmatched predictions.
    """

    index: int
    image_id: Any
    pq: float
    sq: float
    rq: float
    n: int
    per_class: dict = field(repr=False)
    matches: tuple = field(repr=False)
    unmatched: tuple = field(repr=False)

    def as_dict(self) -> dict:
        """Plain Python (JSON-serialisable when the ids are); NaN scores become None."""
        def score(x):
            return None if math.isnan(x) else x

        return {
            "index": self.index, "image_id": self.image_id,
            "pq": score(self.pq), "sq": score(self.sq), "rq": score(self.rq), "n": self.n,
            "per_class": {cid: dict(row) for cid, row in self.per_class.items()},
            "matches": [m._asdict() for m in self.matches],
            "unmatched": [u._asdict() for u in self.unmatched],
        }


# bits of the per-segment flags of _pair_flags
_MATCHED, _WRONG_CLASS, _SAME_CLASS_OVERLAP = 1, 2, 4


@njit(nogil=True, cache=True, error_model="numpy")
def _pair_flags(pg, pp, pc, gt_ids, gt_cat, gt_crowd, gt_area, pred_ids, pred_cat, pred_area):
    """Every (listed GT, listed pred) pair with the matcher's IoU: the matches (pair order) and
    per-segment flags (matched, IoU > 0.5 with another class, overlaps its own class)."""
    gt_order = np.argsort(gt_ids)
    gt_sorted = gt_ids[gt_order]
    pred_order = np.argsort(pred_ids)
    pred_sorted = pred_ids[pred_order]
    gt_row = np.full(pg.size, -1, np.int64)
    pred_row = np.full(pg.size, -1, np.int64)
    void_overlap = np.zeros(pred_ids.size, np.int64)
    for k in range(pg.size):
        i = np.searchsorted(gt_sorted, pg[k])
        if i < gt_sorted.size and gt_sorted[i] == pg[k]:
            gt_row[k] = gt_order[i]
        i = np.searchsorted(pred_sorted, pp[k])
        if i < pred_sorted.size and pred_sorted[i] == pp[k]:
            pred_row[k] = pred_order[i]
            if pg[k] == 0:
                void_overlap[pred_row[k]] = pc[k]
    gt_flags = np.zeros(gt_ids.size, np.int8)
    pred_flags = np.zeros(pred_ids.size, np.int8)
    match_gt = np.empty(pg.size, np.int64)
    match_pred = np.empty(pg.size, np.int64)
    match_iou = np.empty(pg.size, np.float64)
    n = 0
    for k in range(pg.size):
        g = gt_row[k]
        p = pred_row[k]
        if g < 0 or p < 0 or gt_crowd[g] or gt_cat[g] < 0:
            continue
        # the matcher's order of operations: ((area_p + area_g) - I) - I(void, p)
        iou = pc[k] / (pred_area[p] + gt_area[g] - pc[k] - void_overlap[p])
        if gt_cat[g] == pred_cat[p]:
            gt_flags[g] |= _SAME_CLASS_OVERLAP
            pred_flags[p] |= _SAME_CLASS_OVERLAP
            if iou > 0.5:
                gt_flags[g] |= _MATCHED
                match_gt[n] = g
                match_pred[n] = p
                match_iou[n] = iou
                n += 1
        elif iou > 0.5:
            gt_flags[g] |= _WRONG_CLASS
            pred_flags[p] |= _WRONG_CLASS
    return gt_flags, pred_flags, match_gt[:n], match_pred[:n], match_iou[:n]


def _error_kind(flags: int, none_overlapping: str) -> str:
    if flags & _WRONG_CLASS:
        return "wrong_class"
    return "low_overlap" if flags & _SAME_CLASS_OVERLAP else none_overlapping


def _user_ids(prepared: PreparedImage, ids: np.ndarray) -> list:
    """The caller's segment ids: ints, or (category, instance) tuples for pair maps."""
    if prepared.original_ids is None:
        return ids.tolist()
    user = np.asarray(prepared.original_ids(ids))
    return [tuple(row) for row in user.tolist()] if user.ndim == 2 else user.tolist()


def image_record(index: int, image_id, prepared, match: ImageMatch,
                 categories: Categories) -> ImageRecord:
    """Build the record of one image.

    Parameters
    ----------
    index : int
        Position of the image in the input.
    image_id
        The caller's id for the image (any value; None when there is none).
    prepared : PreparedImage or (pairs, gt_table, pred_table)
        What the matcher was given: the pair table sorted by (gt id, pred id) and the two
        :class:`~fastpq.core.segments.SegmentTable`; ``PreparedImage.original_ids`` maps table ids
        back to the caller's ids (derived conventions).
    match : ImageMatch
        :func:`fastpq.core.matching.match_image` of exactly these tables.
    categories : Categories
        The table the dense category indices refer to.

    Returns
    -------
    ImageRecord
    """
    if not isinstance(prepared, PreparedImage):
        prepared = PreparedImage(*prepared)
    gt, pred = prepared.gt, prepared.pred
    pg, pp, pc = (np.asarray(a) for a in prepared.pairs)
    gt_flags, pred_flags, match_gt, match_pred, match_iou = _pair_flags(
        pg, pp, pc, gt.ids, gt.category, gt.iscrowd, match.gt_area, pred.ids, pred.category,
        match.pred_area)
    cat_ids = categories.ids
    gt_user, pred_user = _user_ids(prepared, gt.ids), _user_ids(prepared, pred.ids)
    gt_cat, pred_cat = gt.category.tolist(), pred.category.tolist()
    gt_area, pred_area = match.gt_area.tolist(), match.pred_area.tolist()
    matches = tuple(MatchedPair(gt_user[g], pred_user[p], cat_ids[gt_cat[g]], v, gt_area[g],
                                pred_area[p])
                    for g, p, v in zip(match_gt.tolist(), match_pred.tolist(),
                                       match_iou.tolist()))

    unmatched = []
    for g, (flags, c, crowd) in enumerate(zip(gt_flags.tolist(), gt_cat, gt.iscrowd.tolist())):
        if flags & _MATCHED:
            continue
        if c < 0:
            why, error = "dropped", None
        elif crowd:
            why, error = "crowd", None
        else:
            why, error = "fn", _error_kind(flags, "missed")
        unmatched.append(UnmatchedSegment("gt", gt_user[g], cat_ids[c] if c >= 0 else None,
                                          gt_area[g], why, error))
    for p, (status, flags, c) in enumerate(zip(match.pred_status.tolist(), pred_flags.tolist(),
                                              pred_cat)):
        if status == PRED_MATCHED:
            continue
        why, error = (("ignored", None) if status == PRED_IGNORED
                      else ("fp", _error_kind(flags, "spurious")))
        unmatched.append(UnmatchedSegment("pred", pred_user[p], cat_ids[c], pred_area[p], why,
                                          error))

    per_class = {}
    pq_sum = sq_sum = rq_sum = 0.0
    present = np.flatnonzero(match.tp + match.fp + match.fn)
    for k, tp, fp, fn, iou_k in zip(present.tolist(), match.tp[present].tolist(),
                                    match.fp[present].tolist(), match.fn[present].tolist(),
                                    match.iou[present].tolist()):
        den = tp + 0.5 * fp + 0.5 * fn
        row = {"pq": iou_k / den, "sq": iou_k / tp if tp else 0.0, "rq": tp / den,
               "tp": tp, "fp": fp, "fn": fn, "iou": iou_k}
        per_class[cat_ids[k]] = row
        pq_sum += row["pq"]
        sq_sum += row["sq"]
        rq_sum += row["rq"]
    n = len(per_class)
    pq, sq, rq = (s / n for s in (pq_sum, sq_sum, rq_sum)) if n else (math.nan,) * 3
    return ImageRecord(index, image_id, pq, sq, rq, n, per_class, matches, tuple(unmatched))

"""Metric variants on the same pair table: PQ-dagger, torchmetrics' rules, Parsing Covering.

Every variant reads one image's :class:`~fastpq.core.inputs.PreparedImage` — the pair table and
segment tables that the default path's adapters and kernel produce — and returns per-category
sums that an accumulator adds up. :class:`Scoring` drives them for :func:`fastpq.evaluate` and
:func:`fastpq.pq_compute` (``metric=``, ``convention=``, ``per_image=``).

``metric``

``'pq'``
    Panoptic Quality (the default).
``'pq_dagger'``
    PQ-dagger (Porzi et al., CVPR 2019) as torchmetrics' ``ModifiedPanopticQuality`` computes it
    (SPEC §3.2, §8.1): things are scored as PQ; for a stuff class each ground-truth segment adds
    1 to ``tp`` and every same-class (GT, prediction) pair that overlaps adds its IoU to ``iou``,
    without the 0.5 threshold and without FP or FN, so stuff PQ-dagger = IoU sum / number of GT
    segments. Under the panopticapi convention crowd GT segments are skipped and a GT segment
    listed but absent from the map counts with IoU 0.
``'pc'``
    Parsing Covering (DeeperLab; tensorflow/models ``research/deeplab/evaluation/
    parsing_covering.py`` with the crowd handling of its ``eval_coco_format.py``, SPEC §8.3).
    Per category ``PC_c = sum_g w_g max_p IoU(g, p) / sum_g w_g`` over its GT segments g and
    same-class predictions p, ``w_g`` = pixel area of g divided by the image's pixel count,
    numerator and denominator summed over the dataset; PC = mean over categories with GT area.
    Void, GT crowd regions and GT ids missing from the segment table are ignored: not scored,
    and not counted in prediction areas (so IoU = I / (|g| + |p outside them| - I)). No 0.5
    threshold, no FP term; areas are pixel counts. Only with the panopticapi convention.

``convention``

``'panopticapi'``
    The reference's rules (SPEC §2.3–2.5), the default.
``'torchmetrics'``
    torchmetrics' ``PanopticQuality`` (SPEC §3.2–3.3): all stuff segments of a category are one
    segment; crowd flags are ignored (a crowd region is an ordinary segment); void (id 0, and
    GT ids missing from the segment table) is taken out of the union on both sides, an unmatched
    GT segment more than half predicted as void is not an FN, an unmatched prediction more than
    half on GT void is not an FP (both tests ``<= 0.5`` in float32); areas are pixel counts;
    each IoU is the float32 quotient of the float32-rounded intersection and union, as its 0-d
    int64 tensor division gives, compared with 0.5 in float32 and added to float64 sums; scores
    as its ``compute`` (see :class:`~fastpq.core.result.PQResult`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from fastpq.core.accumulator import PQAccumulator
from fastpq.core.sums import two_sum
from fastpq.core.categories import Categories
from fastpq.errors import InputError
from fastpq.core.matching import match_image
from fastpq.core.records import image_record
from fastpq.core.result import SPLITS, PQResult

METRICS = ("pq", "pq_dagger", "pc")
CONVENTIONS = ("panopticapi", "torchmetrics")


def _table_rows(table_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in a segment table, -1 for ids it does not list (void, unlisted)."""
    if table_ids.size == 0:
        return np.full(ids.size, -1, np.int64)
    order = np.argsort(table_ids, kind="stable")
    pos = np.minimum(np.searchsorted(table_ids[order], ids), table_ids.size - 1)
    return np.where(table_ids[order][pos] == ids, order[pos], -1)


def _take(values: np.ndarray, rows: np.ndarray, fill):
    """``values[rows]`` with ``fill`` where ``rows`` is -1 (ids the table does not list)."""
    if values.size == 0:
        return np.full(rows.shape, fill, values.dtype)
    return np.where(rows >= 0, values[np.maximum(rows, 0)], fill)


# -- torchmetrics' rules ---------------------------------------------------------------------------

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
    return _take(unit, rows, -1)


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
    gu = _units(gt, _table_rows(gt.ids, pg), stuff)
    pu = _units(pred, _table_rows(pred.ids, pp), stuff)
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

    g_cat = _take(gt.category, ug, -1)
    cand = (ug >= 0) & (up >= 0) & (g_cat == _take(pred.category, up, -2))
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


# -- PQ-dagger under the reference's rules -------------------------------------------------------

def pq_dagger_image(prepared, categories: Categories):
    """One image's per-category ``(tp, fp, fn, iou)`` for PQ-dagger under panopticapi's rules.

    Things as :func:`~fastpq.core.matching.match_image` scores them; stuff by the PQ-dagger rule
    (module docstring) with the reference's union ``area_p + area_g - I - I(void, p)``.
    """
    gt, pred = prepared.gt, prepared.pred
    n_cat = len(categories)
    match = match_image(prepared.pairs, gt, pred, n_cat)
    stuff = ~categories.thing_mask
    tp, fp, fn = (np.where(stuff, 0, a) for a in (match.tp, match.fp, match.fn))
    iou = np.where(stuff, 0.0, match.iou)

    pg, pp, pc = (np.asarray(a) for a in prepared.pairs)
    gr, pr = _table_rows(gt.ids, pg), _table_rows(pred.ids, pp)
    void_overlap = np.zeros(len(pred), np.int64)
    on_void = (pg == 0) & (pr >= 0)
    void_overlap[pr[on_void]] = pc[on_void]
    scored = (gt.category >= 0) & ~gt.iscrowd & stuff[np.maximum(gt.category, 0)]
    tp += np.bincount(gt.category[scored], minlength=n_cat)
    cand = (_take(scored, gr, False) & (pr >= 0)
            & (_take(gt.category, gr, -1) == _take(pred.category, pr, -2)))
    g, p, inter = gr[cand], pr[cand], pc[cand]
    pair_iou = inter / (match.pred_area[p] + match.gt_area[g] - inter - void_overlap[p])
    keep = pair_iou > 0
    iou = iou + np.bincount(gt.category[g[keep]], weights=pair_iou[keep], minlength=n_cat)
    return tp, fp, fn, iou


# -- Parsing Covering ------------------------------------------------------------------------------

def parsing_covering_image(prepared, categories: Categories):
    """One image's per-category Parsing Covering ``(numerator, denominator)`` (module docstring).

    Returns
    -------
    numerator, denominator : float64 (C,)
        ``sum_g w_g max_p IoU(g, p)`` and ``sum_g w_g`` with ``w_g = |g| / image pixels``.
    """
    pg, pp, pc = (np.asarray(a) for a in prepared.pairs)
    gt, pred = prepared.gt, prepared.pred
    n_cat = len(categories)
    gr, pr = _table_rows(gt.ids, pg), _table_rows(pred.ids, pp)
    on_segment = _take(~gt.iscrowd, gr, False)  # not on void, unlisted ids or crowd regions
    g_area = np.bincount(gr[gr >= 0], weights=pc[gr >= 0], minlength=len(gt))
    counted = on_segment & (pr >= 0)
    p_area = np.bincount(pr[counted], weights=pc[counted], minlength=len(pred))
    g_cat = _take(gt.category, gr, -1)
    cand = counted & (g_cat >= 0) & (g_cat == _take(pred.category, pr, -2))
    g, p, inter = gr[cand], pr[cand], pc[cand]
    best = np.zeros(len(gt))
    np.maximum.at(best, g, inter / (g_area[g] + p_area[p] - inter))
    scored = ~gt.iscrowd & (gt.category >= 0)
    weight = g_area[scored] / max(int(pc.sum()), 1)
    cat = gt.category[scored]
    return (np.bincount(cat, weights=best[scored] * weight, minlength=n_cat),
            np.bincount(cat, weights=weight, minlength=n_cat))


class CoveringAccumulator:
    """Per-category Parsing Covering numerators and denominators, merged by addition.

    Sums are double-double (as in :class:`~fastpq.core.accumulator.PQAccumulator`), so the result
    does not depend on how images are grouped.
    """

    __slots__ = ("categories", "numerator", "numerator_err", "denominator", "denominator_err",
                 "n_images")

    def __init__(self, categories):
        self.categories = Categories.coerce(categories)
        c = len(self.categories)
        for name in self.__slots__[1:5]:
            setattr(self, name, np.zeros(c, np.float64))
        self.n_images = 0

    def add_image(self, numerator, denominator) -> None:
        """Add one image's per-category sums."""
        self.numerator, err = two_sum(self.numerator, np.asarray(numerator, np.float64))
        self.numerator_err += err
        self.denominator, err = two_sum(self.denominator, np.asarray(denominator, np.float64))
        self.denominator_err += err
        self.n_images += 1

    def merge(self, other: "CoveringAccumulator") -> "CoveringAccumulator":
        """Add ``other`` into this accumulator (in place) and return self.

        Raises
        ------
        ValueError
            The accumulators use different category tables.
        """
        if other.categories != self.categories:
            raise ValueError("cannot merge accumulators built on different category tables")
        self.numerator, err = two_sum(self.numerator, other.numerator)
        self.numerator_err += err + other.numerator_err
        self.denominator, err = two_sum(self.denominator, other.denominator)
        self.denominator_err += err + other.denominator_err
        self.n_images += other.n_images
        return self

    def result(self) -> "CoveringResult":
        """The :class:`CoveringResult` of what was accumulated."""
        return CoveringResult(self.categories, self.numerator + self.numerator_err,
                              self.denominator + self.denominator_err, n_images=self.n_images)


@dataclass(frozen=True)
class CoveringScore:
    """One category's Parsing Covering and the sums it comes from."""

    category_id: int
    name: str
    isthing: bool
    pc: float
    numerator: float
    denominator: float

    def as_dict(self) -> dict:
        """``{'pc', 'numerator', 'denominator'}``."""
        return {"pc": self.pc, "numerator": self.numerator, "denominator": self.denominator}


@dataclass(frozen=True)
class CoveringSplit:
    """A split's Parsing Covering and the number of categories it averages."""

    pc: float
    n: int

    def as_dict(self) -> dict:
        """``{'pc', 'n'}``."""
        return {"pc": self.pc, "n": self.n}


class CoveringResult:
    """Parsing Covering of a set of images (``metric='pc'``).

    Attributes
    ----------
    all, things, stuff : CoveringSplit
        ``.pc`` (mean over the split's categories with GT area, sequential sum in table order)
        and ``.n``; 0.0 with n = 0 for an empty split.
    per_class : dict[int, CoveringScore]
        Keyed by category id, in table order; 0.0 for categories without GT area.
    """

    metric = "pc"
    per_image = None

    def __init__(self, categories: Categories, numerator, denominator, *, n_images: int = 0):
        self.categories = categories
        self.n_images = n_images
        self.per_class: dict[int, CoveringScore] = {}
        for k, cid in enumerate(categories.ids):
            num, den = float(numerator[k]), float(denominator[k])
            self.per_class[cid] = CoveringScore(cid, categories.names[k], categories.isthing[k],
                                                num / den if den != 0 else 0.0, num, den)
        self.all, self.things, self.stuff = (self._split(isthing) for _, isthing in SPLITS)

    def _split(self, isthing) -> CoveringSplit:
        rows = [r for r in self.per_class.values()
                if r.denominator != 0 and (isthing is None or r.isthing == isthing)]
        total = 0.0
        for r in rows:
            total += r.pc
        return CoveringSplit(total / len(rows) if rows else 0.0, len(rows))

    @property
    def pc(self) -> float:
        """Parsing Covering over all categories."""
        return self.all.pc

    def split(self, name: str) -> CoveringSplit:
        """'All', 'Things' or 'Stuff'."""
        return {"All": self.all, "Things": self.things, "Stuff": self.stuff}[name]

    def to_dict(self) -> dict:
        """``{'All': {pc, n}, 'Things': ..., 'Stuff': ..., 'per_class': {id: {pc, numerator,
        denominator}}}``."""
        out = {name: self.split(name).as_dict() for name, _ in SPLITS}
        out["per_class"] = {cid: row.as_dict() for cid, row in self.per_class.items()}
        return out

    def to_json(self, **kwargs) -> str:
        """:meth:`to_dict` as JSON (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    def table(self) -> str:
        """All / Things / Stuff in percent, with N."""
        lines = ["{:10s}| {:>5s} {:>5s}".format("", "PC", "N"), "-" * 22]
        for name, _ in SPLITS:
            s = self.split(name)
            lines.append("{:10s}| {:5.1f} {:5d}".format(name, 100 * s.pc, s.n))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"CoveringResult(pc={self.all.pc:.4f}, n={self.all.n}, images={self.n_images})"


# -- the driver ------------------------------------------------------------------------------------

class Scoring:
    """How the images of one evaluation are scored and collected.

    Parameters
    ----------
    categories : Categories
    metric : {'pq', 'pq_dagger', 'pc'}
    convention : {'panopticapi', 'torchmetrics'}
    per_image : bool
        Keep an :class:`~fastpq.core.records.ImageRecord` per image (metric 'pq', convention
        'panopticapi').
    image_ids : sequence, optional
        The ids records carry, by image index.
    first_index : int
        The index records give the first image (a streaming metric counts across batches).

    Raises
    ------
    fastpq.errors.InputError
        An unknown metric or convention, or a combination that is not offered.

    Notes
    -----
    :meth:`score` is pure and runs in worker threads; :meth:`add` must see the images in input
    order (records keep it).
    """

    def __init__(self, categories: Categories, *, metric: str = "pq",
                 convention: str = "panopticapi", per_image: bool = False, image_ids=None,
                 first_index: int = 0):
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r}; known: {', '.join(map(repr, METRICS))}")
        if convention not in CONVENTIONS:
            raise InputError(f"unknown convention {convention!r}; known: "
                             f"{', '.join(map(repr, CONVENTIONS))}")
        if metric == "pc" and convention != "panopticapi":
            raise InputError("metric='pc' follows Parsing Covering's own rules (void and crowd "
                             "ignored, no threshold); convention= applies to 'pq' and 'pq_dagger'")
        if per_image and (metric != "pq" or convention != "panopticapi"):
            raise InputError("per_image records are kept for metric='pq' under the panopticapi "
                             "convention only")
        self.categories = categories
        self.metric = metric
        self.convention = convention
        self.image_ids = list(image_ids) if image_ids is not None else None
        self.first_index = first_index
        self._acc = CoveringAccumulator(categories) if metric == "pc" else PQAccumulator(categories)
        self._records = [] if per_image else None

    def score(self, index: int, prepared):
        """One image's per-category sums and its record (None without ``per_image``)."""
        categories = self.categories
        if self.metric == "pc":
            return parsing_covering_image(prepared, categories), None
        if self.convention == "torchmetrics":
            return torchmetrics_image(prepared, categories, dagger=self.metric == "pq_dagger"), None
        if self.metric == "pq_dagger":
            return pq_dagger_image(prepared, categories), None
        match = match_image(prepared.pairs, prepared.gt, prepared.pred, len(categories))
        record = None
        if self._records is not None:
            image_id = self.image_ids[index] if self.image_ids is not None else None
            record = image_record(self.first_index + index, image_id, prepared, match,
                                  categories)
        return (match.tp, match.fp, match.fn, match.iou), record

    def add(self, scores) -> None:
        """Add what :meth:`score` returned for the next image."""
        sums, record = scores
        self._acc.add_image(*sums)
        if record is not None:
            self._records.append(record)

    def result(self):
        """:class:`~fastpq.core.result.PQResult`, or :class:`CoveringResult` for ``metric='pc'``."""
        acc = self._acc
        if self.metric == "pc":
            return acc.result()
        return PQResult(self.categories, acc.tp.copy(), acc.fp.copy(), acc.fn.copy(),
                        acc.iou_sum(), n_images=acc.n_images, per_image=self._records,
                        metric=self.metric, convention=self.convention)

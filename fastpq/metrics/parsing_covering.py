"""Parsing Covering (``metric='pc'``) and its result type.

Parsing Covering (DeeperLab; tensorflow/models ``research/deeplab/evaluation/parsing_covering.py``
with the crowd handling of its ``eval_coco_format.py``, SPEC §8.3). Per category ``PC_c = sum_g
w_g max_p IoU(g, p) / sum_g w_g`` over its GT segments g and same-class predictions p, ``w_g`` =
pixel area of g divided by the image's pixel count, numerator and denominator summed over the
dataset; PC = mean over categories with GT area. Void, GT crowd regions and GT ids missing from
the segment table are ignored: not scored, and not counted in prediction areas (so IoU = I / (|g|
+ |p outside them| - I)). No 0.5 threshold, no FP term; areas are pixel counts. Only with the
panopticapi convention.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from fastpq.core.categories import Categories
from fastpq.core.result import SPLITS
from fastpq.core.sums import two_sum
from fastpq.metrics.protocol import Metric, table_rows, take_rows


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
    gr, pr = table_rows(gt.ids, pg), table_rows(pred.ids, pp)
    on_segment = take_rows(~gt.iscrowd, gr, False)  # not on void, unlisted ids or crowd regions
    g_area = np.bincount(gr[gr >= 0], weights=pc[gr >= 0], minlength=len(gt))
    counted = on_segment & (pr >= 0)
    p_area = np.bincount(pr[counted], weights=pc[counted], minlength=len(pred))
    g_cat = take_rows(gt.category, gr, -1)
    cand = counted & (g_cat >= 0) & (g_cat == take_rows(pred.category, pr, -2))
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


class ParsingCoveringMetric(Metric):
    """Parsing Covering (module docstring): partials ``(numerator, denominator)`` added by a
    :class:`CoveringAccumulator`, reported as a :class:`CoveringResult`."""

    name = "pc"
    title = "Parsing Covering"
    accumulator_type = CoveringAccumulator
    other_conventions = ("metric='pc' follows Parsing Covering's own rules (void and crowd "
                         "ignored, no threshold); convention= applies to 'pq' and 'pq_dagger'")

    def score(self, prepared, categories, index, image_id):
        return parsing_covering_image(prepared, categories)

    def result(self, accumulator, per_image=None):
        """The :class:`CoveringResult` of ``accumulator`` (Parsing Covering keeps no records)."""
        return accumulator.result()

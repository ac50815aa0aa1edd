"""The result type: PQ, SQ, RQ over All / Things / Stuff and per class.

Numbers are computed with the reference's formulas and summation order (SPEC §2.6): per class
``pq = iou / (tp + fp/2 + fn/2)``, ``sq = iou / tp`` (0 when tp == 0), ``rq = tp / (tp + fp/2 +
fn/2)``; split averages are sequential sums over the categories in table order divided by ``n``,
the number of categories of the split with any tp, fp or fn. One deliberate difference: a split
with n = 0 gives pq = sq = rq = 0.0 where the reference raises ZeroDivisionError.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fastpq.core.categories import Categories

SPLITS = (("All", None), ("Things", True), ("Stuff", False))


@dataclass(frozen=True)
class ClassScore:
    """One category's row: scores and the counts they come from."""

    category_id: int
    name: str
    isthing: bool
    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int
    iou: float

    def as_dict(self) -> dict:
        return {"pq": self.pq, "sq": self.sq, "rq": self.rq,
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "iou": self.iou}


@dataclass(frozen=True)
class SplitScore:
    pq: float
    sq: float
    rq: float
    n: int

    def as_dict(self) -> dict:
        return {"pq": self.pq, "sq": self.sq, "rq": self.rq, "n": self.n}


def reference_class_scores(tp: int, fp: int, fn: int, iou: float) -> tuple[float, float, float]:
    """panopticapi's per-class ``(pq, sq, rq)`` in float64 (SPEC §2.6); tp + fp + fn > 0."""
    den = tp + 0.5 * fp + 0.5 * fn
    return iou / den, iou / tp if tp != 0 else 0.0, tp / den


def torchmetrics_class_scores(tp: int, fp: int, fn: int, iou: float) -> tuple[float, float, float]:
    """torchmetrics' per-class compute: its int32 counts times 0.5 are float32 tensors, so the
    denominator and ``rq`` are float32; ``sq`` is float64 and ``pq = sq * rq`` (SPEC §3.2, §3.3)."""
    half = np.float32(0.5)
    den = np.float32(tp) + half * np.float32(fp) + half * np.float32(fn)
    rq = float(np.float32(tp) / den)
    sq = iou / tp if tp != 0 else 0.0
    return sq * rq, sq, rq


def reference_split_rq(rq_sum: float, n: int) -> float:
    """panopticapi's split RQ: the float64 mean."""
    return rq_sum / n


def torchmetrics_split_rq(rq_sum: float, n: int) -> float:
    """torchmetrics' split RQ: ``torch.mean`` of its float32 per-class ``rq``."""
    return float(np.float32(rq_sum / n))


#: ``{convention: (per-class scores, split RQ)}``: how each convention turns counts into scores.
SCORE_RULES = {
    "panopticapi": (reference_class_scores, reference_split_rq),
    "torchmetrics": (torchmetrics_class_scores, torchmetrics_split_rq),
}


class PQResult:
    """Panoptic Quality of a set of images.

    Attributes
    ----------
    all, things, stuff : SplitScore
        ``.pq``, ``.sq``, ``.rq`` as fractions in [0, 1] (the reference's scale) and ``.n``.
    per_class : dict[int, ClassScore]
        Keyed by category id, in category-table order; absent categories score 0.0. Rows and
        splits are computed on first access, from copies of the counts taken at construction.
    per_image : list of fastpq.core.records.ImageRecord or None
        Per-image records when asked for (``per_image=True``), in input order.
    metric : {'pq', 'pq_dagger'}
        What was scored (:mod:`fastpq.metrics`); for 'pq_dagger' a stuff class's ``tp`` counts
        its ground-truth segments and its ``iou`` sums IoUs without the 0.5 threshold.
    convention : {'panopticapi', 'torchmetrics'}
        The rules the counts follow; under 'torchmetrics' the scores are computed as torchmetrics
        computes them (SPEC §3.3 item 6: float32 ``rq``, ``pq = sq * rq``, float32 split RQ).
    """

    def __init__(self, categories: Categories, tp, fp, fn, iou, *, n_images: int = 0,
                 per_image=None, metric: str = "pq", convention: str = "panopticapi"):
        SCORE_RULES[convention]  # an unknown convention is refused here, not at first access
        self.categories = categories
        self.metric = metric
        self.convention = convention
        # copies: the rows are computed from these later, whatever the caller does to its arrays
        self.tp = np.array(tp, np.int64)
        self.fp = np.array(fp, np.int64)
        self.fn = np.array(fn, np.int64)
        self.iou = np.array(iou, np.float64)
        self.n_images = n_images
        self.per_image = per_image

    # Rows and splits are built on first access: a one-image evaluate call would otherwise spend
    # more time building 133 rows than scoring the image.
    @cached_property
    def _scores(self) -> dict:
        """{dense index: (pq, sq, rq)} of the categories with any tp, fp or fn, in table order."""
        class_scores, _ = SCORE_RULES[self.convention]
        tp, fp, fn, iou = (a.tolist() for a in (self.tp, self.fp, self.fn, self.iou))
        return {k: class_scores(tp[k], fp[k], fn[k], iou[k])
                for k in np.flatnonzero(self.tp + self.fp + self.fn != 0).tolist()}

    @cached_property
    def per_class(self) -> dict:
        """{category id: ClassScore}, in category-table order (built on first access)."""
        categories, scores = self.categories, self._scores
        tp, fp, fn, iou = (a.tolist() for a in (self.tp, self.fp, self.fn, self.iou))
        return {cid: ClassScore(cid, categories.names[k], categories.isthing[k],
                                *scores.get(k, (0.0, 0.0, 0.0)), tp[k], fp[k], fn[k], iou[k])
                for k, cid in enumerate(categories.ids)}

    @cached_property
    def all(self) -> SplitScore:
        return self._split(None)

    @cached_property
    def things(self) -> SplitScore:
        return self._split(True)

    @cached_property
    def stuff(self) -> SplitScore:
        return self._split(False)

    def _split(self, isthing) -> SplitScore:
        """A split's average over its categories with any tp, fp or fn, summed in table order."""
        _, split_rq = SCORE_RULES[self.convention]
        flags = self.categories.isthing
        pq = sq = rq = 0.0
        n = 0
        for k, (pq_k, sq_k, rq_k) in self._scores.items():
            if isthing is not None and flags[k] != isthing:
                continue
            n += 1
            pq += pq_k
            sq += sq_k
            rq += rq_k
        if n == 0:
            return SplitScore(0.0, 0.0, 0.0, 0)
        return SplitScore(pq / n, sq / n, split_rq(rq, n), n)

    # -- convenience -----------------------------------------------------------------------------
    @property
    def pq(self) -> float:
        return self.all.pq

    @property
    def sq(self) -> float:
        return self.all.sq

    @property
    def rq(self) -> float:
        return self.all.rq

    def split(self, name: str) -> SplitScore:
        return {"All": self.all, "Things": self.things, "Stuff": self.stuff}[name]

    # -- outputs ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The reference's return dict (plain Python numbers), per-class rows with counts."""
        out = {name: self.split(name).as_dict() for name, _ in SPLITS}
        out["per_class"] = {cid: row.as_dict() for cid, row in self.per_class.items()}
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def class_rows(self) -> list[dict]:
        """One plain dict per category, in table order: ``category_id``, ``name``,
        ``supercategory``, ``isthing``, ``pq``, ``sq``, ``rq``, ``tp``, ``fp``, ``fn``, ``iou``."""
        return [{"category_id": row.category_id, "name": row.name, "supercategory": sup,
                 "isthing": row.isthing, **row.as_dict()}
                for row, sup in zip(self.per_class.values(), self.categories.supercategories)]

    def to_csv(self, path=None) -> str | None:
        """The per-class rows (:meth:`class_rows`) as CSV with a header line.

        Floats are written with ``repr`` (they read back exactly). Returns the text when
        ``path`` is None; otherwise writes it to ``path`` (UTF-8) and returns None.
        """
        buffer = io.StringIO()
        rows = self.class_rows()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        if path is None:
            return buffer.getvalue()
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(buffer.getvalue())
        return None

    def to_pandas(self):
        """The per-class rows (:meth:`class_rows`) as a pandas DataFrame indexed by category id.

        Raises
        ------
        ImportError
            pandas is not installed (``pip install pandas``).
        """
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("PQResult.to_pandas needs pandas: pip install pandas") from e
        return pd.DataFrame(self.class_rows()).set_index("category_id")

    def table(self) -> str:
        """The reference's printed table (All / Things / Stuff, percent, N)."""
        lines = ["{:10s}| {:>5s}  {:>5s}  {:>5s} {:>5s}".format("", "PQ", "SQ", "RQ", "N"),
                 "-" * (10 + 7 * 4)]
        for name, _ in SPLITS:
            s = self.split(name)
            lines.append("{:10s}| {:5.1f}  {:5.1f}  {:5.1f} {:5d}".format(
                name, 100 * s.pq, 100 * s.sq, 100 * s.rq, s.n))
        return "\n".join(lines)

    def class_table(self) -> str:
        """Per-class table: id, name, kind, PQ/SQ/RQ in percent, counts."""
        width = max([14] + [len(r.name) for r in self.per_class.values()])
        head = (f"{'id':>5s}  {'name':{width}s}  {'kind':5s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}"
                f"  {'TP':>6s} {'FP':>6s} {'FN':>6s}")
        lines = [head, "-" * len(head)]
        for r in self.per_class.values():
            kind = "thing" if r.isthing else "stuff"
            lines.append(f"{r.category_id:5d}  {r.name:{width}s}  {kind:5s}| {100 * r.pq:5.1f}  "
                         f"{100 * r.sq:5.1f}  {100 * r.rq:5.1f}  {r.tp:6d} {r.fp:6d} {r.fn:6d}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (f"PQResult(pq={self.all.pq:.4f}, sq={self.all.sq:.4f}, rq={self.all.rq:.4f}, "
                f"n={self.all.n}, images={self.n_images})")

"""The PQ accumulator: four arrays over the dense category index, merged by addition.

``tp``, ``fp`` and ``fn`` are exact int64 counts. The IoU sums are kept as double-double values
(``iou`` + ``iou_err``, error-free TwoSum at every addition), so the float64 sum that comes out
does not depend on how images were grouped across threads, processes or machines: merging
shards in any order gives the same result as one pass, where the reference's own last bits move
with its CPU count (SPEC §2.6, §2.9). Each image contributes its IoU partial summed in the
reference's order (ascending (gt id, pred id)).
"""

from __future__ import annotations

import numpy as np

from fastpq.core.categories import Categories
from fastpq.core.result import PQResult
from fastpq.core.sums import two_sum


class PQAccumulator:
    """Per-category tp, fp, fn and IoU sums over any number of images.

    Mergeable (``a + b``, ``a += b``; categories must be equal), picklable, and convertible to
    and from a plain dict (:meth:`to_dict` / :meth:`from_dict`).
    """

    __slots__ = ("categories", "tp", "fp", "fn", "iou", "iou_err", "n_images")

    def __init__(self, categories):
        self.categories = Categories.coerce(categories)
        c = len(self.categories)
        self.tp = np.zeros(c, np.int64)
        self.fp = np.zeros(c, np.int64)
        self.fn = np.zeros(c, np.int64)
        self.iou = np.zeros(c, np.float64)
        self.iou_err = np.zeros(c, np.float64)
        self.n_images = 0

    # -- accumulation ----------------------------------------------------------------------------
    def add_image(self, tp, fp, fn, iou) -> None:
        """Add one image's per-category counts and IoU partials."""
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.iou, err = two_sum(self.iou, np.asarray(iou, np.float64))
        self.iou_err += err
        self.n_images += 1

    def merge(self, other: "PQAccumulator") -> "PQAccumulator":
        """Add ``other`` into this accumulator (in place) and return self."""
        if not isinstance(other, PQAccumulator):
            return NotImplemented
        if other.categories != self.categories:
            raise ValueError("cannot merge PQ accumulators built on different category tables")
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou, err = two_sum(self.iou, other.iou)
        self.iou_err += err + other.iou_err
        self.n_images += other.n_images
        return self

    def __iadd__(self, other):
        return self.merge(other)

    def __add__(self, other):
        if not isinstance(other, PQAccumulator):
            return NotImplemented
        return self.copy().merge(other)

    def __radd__(self, other):
        # sum([...]) starts from 0
        if isinstance(other, int) and other == 0:
            return self.copy()
        return NotImplemented

    def copy(self) -> "PQAccumulator":
        new = PQAccumulator(self.categories)
        for k in ("tp", "fp", "fn", "iou", "iou_err"):
            setattr(new, k, getattr(self, k).copy())
        new.n_images = self.n_images
        return new

    def reset(self) -> None:
        for k in ("tp", "fp", "fn", "iou", "iou_err"):
            getattr(self, k)[:] = 0
        self.n_images = 0

    # -- reading -----------------------------------------------------------------------------------
    def iou_sum(self) -> np.ndarray:
        """The IoU sums, rounded to float64."""
        return self.iou + self.iou_err

    def result(self, *, per_image=None, metric: str = "pq", convention: str = "panopticapi"):
        """The :class:`~fastpq.core.result.PQResult` of what was accumulated.

        The one place a result is built from accumulated sums: every front door ends here.

        Parameters
        ----------
        per_image : list of ImageRecord, optional
            The records of the accumulated images, in input order.
        metric, convention : str
            What the sums score and under whose rules (:mod:`fastpq.metrics`); the convention
            picks the per-class formulas.
        """
        return PQResult(self.categories, self.tp, self.fp, self.fn,  # PQResult copies them
                        self.iou_sum(), n_images=self.n_images, per_image=per_image,
                        metric=metric, convention=convention)

    def __eq__(self, other):
        return (isinstance(other, PQAccumulator) and self.categories == other.categories
                and all(np.array_equal(getattr(self, k), getattr(other, k))
                        for k in ("tp", "fp", "fn"))
                and np.array_equal(self.iou_sum(), other.iou_sum()))

    def __repr__(self):
        return (f"PQAccumulator({len(self.categories)} categories, {self.n_images} images, "
                f"tp={int(self.tp.sum())}, fp={int(self.fp.sum())}, fn={int(self.fn.sum())})")

    # -- plain data --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-Python state: lists and ints only (JSON-serialisable, exact)."""
        return {
            "categories": self.categories.to_coco(),
            "tp": self.tp.tolist(), "fp": self.fp.tolist(), "fn": self.fn.tolist(),
            "iou": self.iou.tolist(), "iou_err": self.iou_err.tolist(),
            "n_images": self.n_images,
        }

    @classmethod
    def from_dict(cls, state: dict) -> "PQAccumulator":
        acc = cls(Categories.from_coco(state["categories"]))
        for k in ("tp", "fp", "fn"):
            setattr(acc, k, np.asarray(state[k], np.int64).copy())
        acc.iou = np.asarray(state["iou"], np.float64).copy()
        acc.iou_err = np.asarray(state.get("iou_err", np.zeros_like(acc.iou)), np.float64).copy()
        acc.n_images = int(state.get("n_images", 0))
        return acc

    def __getstate__(self):
        return self.to_dict()

    def __setstate__(self, state):
        other = PQAccumulator.from_dict(state)
        for k in self.__slots__:
            setattr(self, k, getattr(other, k))


class RecordingAccumulator:
    """A :class:`PQAccumulator` and the per-image records of the images it holds.

    ``add_image((tp, fp, fn, iou), record)`` takes the partial of
    :class:`fastpq.metrics.pq.PQRecordsMetric`. Records are kept in the order images are added
    (input order: the runner delivers in order), and :meth:`merge` appends the other
    accumulator's records, so merge accumulators in input order.

    Parameters
    ----------
    sums : PQAccumulator
        The sums added to (the streaming metric passes its own state).
    records : list, optional
        The list records are appended to (default: a new one).
    """

    __slots__ = ("sums", "records")

    def __init__(self, sums: PQAccumulator, records: list | None = None):
        self.sums = sums
        self.records = [] if records is None else records

    @property
    def categories(self) -> Categories:
        return self.sums.categories

    @property
    def n_images(self) -> int:
        return self.sums.n_images

    def add_image(self, sums, record) -> None:
        """Add one image's ``(tp, fp, fn, iou)`` and keep its record."""
        self.sums.add_image(*sums)
        self.records.append(record)

    def merge(self, other: "RecordingAccumulator") -> "RecordingAccumulator":
        """Add ``other`` (the images that follow this one's) in place and return self."""
        self.sums.merge(other.sums)
        self.records.extend(other.records)
        return self

    def result(self, *, per_image=None, metric: str = "pq", convention: str = "panopticapi"):
        """:meth:`PQAccumulator.result` carrying these records (or ``per_image`` when given)."""
        return self.sums.result(per_image=self.records if per_image is None else per_image,
                                metric=metric, convention=convention)

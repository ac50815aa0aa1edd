"""The metric protocol: how a metric scores one prepared image, adds it up and reports it."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fastpq.core.accumulator import PQAccumulator
from fastpq.errors import InputError


class Metric(ABC):
    """One metric under one convention, as every front door drives it.

    A front door (``evaluate``, ``PanopticQuality``, ``pq_compute``, the cluster) prepares each
    image into a :class:`~fastpq.core.inputs.PreparedImage`, calls :meth:`score` on it (in
    worker threads), adds what it returns to the accumulator of :meth:`accumulator` in input
    order (``accumulator.add_image(*partial)``) and turns the accumulator into the result with
    :meth:`result`. Metric objects hold no per-run state: one may serve many runs and threads.

    Attributes
    ----------
    name : str
        The ``metric=`` string it is registered under (:data:`fastpq.metrics.METRICS`).
    convention : str
        The ``convention=`` string: whose matching rules.
    title : str
        The metric's name in messages ("Parsing Covering").
    accumulator_type : type
        What :meth:`accumulator` builds: :class:`~fastpq.core.accumulator.PQAccumulator` for
        the metrics with per-category tp, fp, fn and IoU sums (the streaming metric and the
        GPU path keep only those).
    on_cluster : bool
        Whether :mod:`fastpq.scale.cluster` can score it.
    on_device : bool
        Whether the GPU path of :class:`fastpq.PanopticQuality` computes it.
    other_conventions : str
        The message for a convention this metric is not registered under.
    """

    name: str
    convention: str = "panopticapi"
    title: str
    accumulator_type: type = PQAccumulator
    on_cluster = False
    on_device = False
    other_conventions = ""

    @abstractmethod
    def score(self, prepared, categories, index: int, image_id):
        """One image's partial: the arguments of ``accumulator.add_image``.

        Parameters
        ----------
        prepared : PreparedImage
            The image's pair table and segment tables.
        categories : Categories
            The table the dense category indices of ``prepared`` refer to.
        index : int
            The image's position in the whole input (across batches and shards).
        image_id
            The caller's id of the image, or None.

        Returns
        -------
        tuple
            Unpacked into the accumulator's ``add_image``.
        """

    def accumulator(self, categories):
        """An empty accumulator for this metric's partials."""
        return self.accumulator_type(categories)

    @abstractmethod
    def result(self, accumulator, per_image=None):
        """The result of what ``accumulator`` holds (``per_image``: records kept elsewhere)."""

    def with_records(self) -> "Metric":
        """This metric that also keeps one :class:`~fastpq.core.records.ImageRecord` per image.

        Raises
        ------
        fastpq.errors.InputError
            The metric keeps no records (only metric 'pq' under the panopticapi convention).
        """
        raise InputError("per_image records are kept for metric='pq' under the panopticapi "
                         "convention only")

    def __repr__(self):
        return f"{type(self).__name__}(metric={self.name!r}, convention={self.convention!r})"


class PQSumsMetric(Metric):
    """A metric scored as per-category tp, fp, fn and IoU sums (PQ and PQ-dagger, under either
    convention): a :class:`~fastpq.core.accumulator.PQAccumulator` adds them and the result is a
    :class:`~fastpq.core.result.PQResult`."""

    def result(self, accumulator, per_image=None):
        """The :class:`~fastpq.core.result.PQResult` of ``accumulator`` (a PQAccumulator, or a
        :class:`~fastpq.core.accumulator.RecordingAccumulator` whose records it carries)."""
        return accumulator.result(per_image=per_image, metric=self.name,
                                  convention=self.convention)


def table_rows(table_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in a segment table, -1 for ids it does not list (void, unlisted)."""
    if table_ids.size == 0:
        return np.full(ids.size, -1, np.int64)
    order = np.argsort(table_ids, kind="stable")
    pos = np.minimum(np.searchsorted(table_ids[order], ids), table_ids.size - 1)
    return np.where(table_ids[order][pos] == ids, order[pos], -1)


def take_rows(values: np.ndarray, rows: np.ndarray, fill):
    """``values[rows]`` with ``fill`` where ``rows`` is -1 (ids the table does not list)."""
    if values.size == 0:
        return np.full(rows.shape, fill, values.dtype)
    return np.where(rows >= 0, values[np.maximum(rows, 0)], fill)

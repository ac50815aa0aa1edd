"""Panoptic Quality under the reference's rules (SPEC §2), with or without per-image records."""

from __future__ import annotations

from fastpq.core.accumulator import PQAccumulator, RecordingAccumulator
from fastpq.core.matching import ImageMatch, match_image
from fastpq.core.records import image_record
from fastpq.metrics.protocol import PQSumsMetric


class PQMetric(PQSumsMetric):
    """Panoptic Quality as panopticapi computes it (``metric='pq'``, the default).

    The partial of an image is its :class:`~fastpq.core.matching.ImageMatch`'s ``(tp, fp, fn,
    iou)``; subclasses that need more of the match (records, the shim's predicted areas)
    override :meth:`score` and call :meth:`match`.
    """

    name = "pq"
    title = "Panoptic Quality"
    on_cluster = True
    on_device = True

    def match(self, prepared, categories) -> ImageMatch:
        """The matcher's :class:`~fastpq.core.matching.ImageMatch` of one prepared image."""
        return match_image(prepared.pairs, prepared.gt, prepared.pred, len(categories))

    def score(self, prepared, categories, index, image_id):
        match = self.match(prepared, categories)
        return match.tp, match.fp, match.fn, match.iou

    def with_records(self) -> "PQRecordsMetric":
        return PQRecordsMetric()


class PQRecordsMetric(PQMetric):
    """:class:`PQMetric` that also keeps each image's :class:`~fastpq.core.records.ImageRecord`
    (``per_image=True``): the partial is ``((tp, fp, fn, iou), record)``, added by a
    :class:`~fastpq.core.accumulator.RecordingAccumulator`; the result carries the records in
    input order as ``per_image``."""

    on_device = False

    def score(self, prepared, categories, index, image_id):
        match = self.match(prepared, categories)
        return ((match.tp, match.fp, match.fn, match.iou),
                image_record(index, image_id, prepared, match, categories))

    def accumulator(self, categories) -> RecordingAccumulator:
        return RecordingAccumulator(PQAccumulator(categories))

    def with_records(self) -> "PQRecordsMetric":
        return self

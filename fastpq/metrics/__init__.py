"""The metrics scored on the per-image pair tables, and the registry that resolves ``metric=`` and
``convention=`` strings into a :class:`~fastpq.metrics.protocol.Metric`.

``metric``

``'pq'``
    Panoptic Quality (the default; :mod:`fastpq.metrics.pq`).
``'pq_dagger'``
    PQ-dagger: stuff scored by IoU without the 0.5 threshold (:mod:`fastpq.metrics.pq_dagger`).
``'pc'``
    Parsing Covering (:mod:`fastpq.metrics.parsing_covering`), panopticapi convention only.

``convention``

``'panopticapi'``
    The reference's rules (SPEC §2.3–2.5), the default.
``'torchmetrics'``
    torchmetrics' ``PanopticQuality`` rules (:mod:`fastpq.metrics.torchmetrics_rules`).

Adding a metric is one module with a :class:`~fastpq.metrics.protocol.Metric` subclass and one
entry in :data:`METRICS`.
"""

from __future__ import annotations

from fastpq.errors import InputError
from fastpq.metrics.parsing_covering import ParsingCoveringMetric
from fastpq.metrics.pq import PQMetric, PQRecordsMetric
from fastpq.metrics.pq_dagger import PQDaggerMetric
from fastpq.metrics.protocol import Metric
from fastpq.metrics.torchmetrics_rules import TorchmetricsPQDaggerMetric, TorchmetricsPQMetric

#: ``{metric name: {convention: Metric subclass}}``, in the order messages list them.
METRICS: dict[str, dict[str, type[Metric]]] = {
    "pq": {"panopticapi": PQMetric, "torchmetrics": TorchmetricsPQMetric},
    "pq_dagger": {"panopticapi": PQDaggerMetric, "torchmetrics": TorchmetricsPQDaggerMetric},
    "pc": {"panopticapi": ParsingCoveringMetric},
}

#: Every convention some metric is registered under.
CONVENTIONS = tuple(dict.fromkeys(c for by_convention in METRICS.values() for c in by_convention))

#: The default: Panoptic Quality under the reference's rules.
DEFAULT_METRIC = PQMetric()


def resolve_metric(metric: str = "pq", convention: str = "panopticapi", *,
                   per_image: bool = False) -> Metric:
    """The metric object of ``metric=``, ``convention=`` and ``per_image=`` strings and flags.

    Parameters
    ----------
    metric : str
        A name of :data:`METRICS`.
    convention : str
        One of :data:`CONVENTIONS` that ``metric`` is registered under.
    per_image : bool
        Also keep one :class:`~fastpq.core.records.ImageRecord` per image.

    Returns
    -------
    Metric

    Raises
    ------
    fastpq.errors.InputError
        An unknown metric or convention, a metric not offered under the convention, or
        ``per_image`` with a metric that keeps no records.
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; known: {', '.join(map(repr, METRICS))}")
    if convention not in CONVENTIONS:
        raise InputError(f"unknown convention {convention!r}; known: "
                         f"{', '.join(map(repr, CONVENTIONS))}")
    by_convention = METRICS[metric]
    if convention not in by_convention:
        raise InputError(next(iter(by_convention.values())).other_conventions)
    resolved = by_convention[convention]()
    return resolved.with_records() if per_image else resolved


__all__ = ["CONVENTIONS", "DEFAULT_METRIC", "METRICS", "Metric", "PQRecordsMetric",
           "resolve_metric"]

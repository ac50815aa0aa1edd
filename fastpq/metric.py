"""``fastpq.PanopticQuality``: streaming Panoptic Quality for training and validation loops.

Feed it batches with :meth:`~PanopticQuality.update`, read the result with
:meth:`~PanopticQuality.compute`. It runs the same adapters, matcher and accumulator as
:func:`fastpq.evaluate`, so streaming any split of the images into batches gives exactly the
result of one ``evaluate`` call on all of them. The state is one
:class:`~fastpq.accumulator.PQAccumulator`: a few arrays over the categories, whatever the number
of images. Under ``torch.distributed``, ``compute`` reduces it across ranks
(:mod:`fastpq.distributed`); torch is needed only then.
"""

from __future__ import annotations

from .accumulator import PQAccumulator
from .api import iter_matches
from .categories import Categories
from .distributed import is_distributed, reduce_accumulator
from .errors import InputError
from .inputs import Convention
from .result import PQResult
from .variants import Scoring


class PanopticQuality:
    """Panoptic Quality accumulated over batches, with panopticapi's numbers.

    Parameters
    ----------
    categories : Categories, COCO categories list, {'things': [...], 'stuff': [...]} or preset
        The category table ('coco' and 'cityscapes' are presets).
    label_divisor : int, optional
        Maps hold ``category * label_divisor + instance`` (the divisor convention). Without it,
        the convention follows each batch as in :func:`fastpq.evaluate`: COCO id maps when
        segments are given, else (H, W, 2) [category, instance] maps.
    void_label : int
        Pairs/divisor conventions: the void category.
    thing_instance_zero : {'crowd', 'instance'}
        Pairs/divisor conventions: a thing pixel with instance 0 is a crowd region of its
        category (the Cityscapes convention) or an ordinary instance.
    device : torch.device or str, optional
        Where the tensors of the cross-process reduction live; default: the current CUDA device
        when the process group's backend is NCCL, else the CPU.
    process_group : torch.distributed.ProcessGroup, optional
        The group :meth:`compute` reduces over; default: the default group, whenever
        ``torch.distributed`` is initialised.
    metric : {'pq', 'pq_dagger'}
        As in :func:`fastpq.evaluate` (Parsing Covering is ``evaluate(..., metric='pc')``).
    convention : {'panopticapi', 'torchmetrics'}
        As in :func:`fastpq.evaluate`.

    Raises
    ------
    fastpq.errors.InputError
        An unknown category preset, an empty or inconsistent category table, a non-positive
        ``label_divisor``, an unknown ``thing_instance_zero``, ``metric`` or ``convention``.

    Notes
    -----
    Label maps are read on the host: NumPy arrays and torch CPU tensors (contiguous or not) are
    read in place, without copies; maps in GPU memory (CUDA tensors, CuPy arrays) are refused
    with an InputError. The metric is picklable; the process group is not pickled (an unpickled
    metric uses the default group).

    Examples
    --------
    >>> import fastpq
    >>> metric = fastpq.PanopticQuality("coco")
    >>> for gt, pred, gt_info, pred_info in loader:          # doctest: +SKIP
    ...     metric.update(gt, pred, gt_segments=gt_info, pred_segments=pred_info)
    >>> print(metric.compute())                              # doctest: +SKIP
    """

    def __init__(self, categories, *, label_divisor: int | None = None, void_label: int = 0,
                 thing_instance_zero: str = "crowd", device=None, process_group=None,
                 metric: str = "pq", convention: str = "panopticapi"):
        self.categories = Categories.coerce(categories)
        # refuse bad options now rather than at the first update
        Convention("pairs" if label_divisor is None else "divisor", label_divisor, void_label,
                   thing_instance_zero)
        if metric == "pc":
            raise InputError("the streaming metric scores metric='pq' or 'pq_dagger'; for Parsing "
                             "Covering use fastpq.evaluate(..., metric='pc')")
        Scoring(self.categories, metric=metric, convention=convention)
        self.metric = metric
        self.convention = convention
        self._records = []
        self.label_divisor = label_divisor
        self.void_label = void_label
        self.thing_instance_zero = thing_instance_zero
        self.device = device
        self.process_group = process_group
        self._acc = PQAccumulator(self.categories)

    def update(self, gt, pred, *, gt_segments=None, pred_segments=None,
               per_image: bool = False) -> None:
        """Add one image or a batch.

        Parameters
        ----------
        gt, pred, gt_segments, pred_segments
            As in :func:`fastpq.evaluate`: one image or a batch (a list, or a stacked (B, ...)
            array or tensor) in the COCO, pairs or divisor convention.
        per_image : bool
            Keep these images' :class:`~fastpq.records.ImageRecord` (indexed from the first
            image this metric saw) for ``compute().per_image``; metric 'pq' under the
            panopticapi convention only. Records grow with the images, stay in this process
            (they are not reduced across ranks, nor part of :meth:`state_dict`) and are cleared
            by :meth:`reset`.

        Raises
        ------
        fastpq.errors.InputError
            As :func:`fastpq.evaluate`. A batch with a refused image adds nothing.

        Notes
        -----
        Never communicates with other processes.
        """
        if per_image or self.metric != "pq" or self.convention != "panopticapi":
            scoring = Scoring(self.categories, metric=self.metric, convention=self.convention,
                              per_image=per_image, first_index=self._acc.n_images)
            scored = list(iter_matches(gt, pred, gt_segments=gt_segments,
                                       pred_segments=pred_segments, categories=self.categories,
                                       label_divisor=self.label_divisor,
                                       void_label=self.void_label,
                                       thing_instance_zero=self.thing_instance_zero,
                                       score=scoring.score))
            for sums, record in scored:
                self._acc.add_image(*sums)
                if record is not None:
                    self._records.append(record)
            return
        matches = list(iter_matches(gt, pred, gt_segments=gt_segments,
                                    pred_segments=pred_segments, categories=self.categories,
                                    label_divisor=self.label_divisor, void_label=self.void_label,
                                    thing_instance_zero=self.thing_instance_zero))
        for match in matches:
            self._acc.add_image(match.tp, match.fp, match.fn, match.iou)

    def sync(self) -> PQAccumulator:
        """The accumulator over all ranks (a collective call under ``torch.distributed``).

        Returns
        -------
        PQAccumulator
            A new accumulator: the sums of every rank of the process group, identical on every
            rank and equal to one process adding all the images; without an initialised process
            group, a copy of this one. This metric's own state is unchanged, so updates can go
            on and a later :meth:`compute` counts each image once.
        """
        if not is_distributed():
            return self._acc.copy()
        return reduce_accumulator(self._acc, process_group=self.process_group, device=self.device)

    def compute(self) -> PQResult:
        """PQ, SQ and RQ of every image seen, by every rank under ``torch.distributed``.

        Under an initialised process group this is a collective call (see :meth:`sync`): every
        rank must call it, and every rank returns the global result. ``per_image`` holds this
        process's records when updates asked for them, else None.
        """
        acc = self.sync()
        return PQResult(self.categories, acc.tp, acc.fp, acc.fn, acc.iou_sum(),
                        n_images=acc.n_images, per_image=list(self._records) or None,
                        metric=self.metric, convention=self.convention)

    def reset(self) -> None:
        """Forget every image (the configuration stays)."""
        self._acc.reset()
        self._records.clear()

    def merge(self, other: "PanopticQuality") -> "PanopticQuality":
        """Add another metric's images into this one (in place) and return self.

        Raises
        ------
        TypeError
            ``other`` is not a PanopticQuality.
        ValueError
            The metrics use different category tables.
        """
        if not isinstance(other, PanopticQuality):
            raise TypeError(f"can only merge a PanopticQuality, not {type(other).__name__}")
        if (other.metric, other.convention) != (self.metric, self.convention):
            raise ValueError(f"cannot merge a metric={other.metric!r}, convention="
                             f"{other.convention!r} metric into a metric={self.metric!r}, "
                             f"convention={self.convention!r} one")
        self._acc.merge(other._acc)
        self._records.extend(other._records)
        return self

    def state_dict(self) -> dict:
        """The accumulated state as plain Python data (JSON-serialisable, exact)."""
        return self._acc.to_dict()

    def load_state_dict(self, state: dict) -> None:
        """Replace the accumulated state with one from :meth:`state_dict`.

        Raises
        ------
        ValueError
            The state was accumulated over a different category table.
        """
        acc = PQAccumulator.from_dict(state)
        if acc.categories != self.categories:
            raise ValueError("the state was accumulated over a different category table than "
                             "this metric's")
        self._acc = acc

    def __getstate__(self):
        state = dict(self.__dict__)
        state["process_group"] = None  # a process group belongs to its process
        return state

    def __repr__(self):
        return (f"PanopticQuality({len(self.categories)} categories, "
                f"{self._acc.n_images} images)")

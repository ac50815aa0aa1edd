"""``fastpq.PanopticQuality``: streaming Panoptic Quality for training and validation loops.

Feed it batches with :meth:`~PanopticQuality.update`, read the result with
:meth:`~PanopticQuality.compute`. It runs the same adapters, matcher and accumulator as
:func:`fastpq.evaluate`, so streaming any split of the images into batches gives exactly the
result of one ``evaluate`` call on all of them. The state is one
:class:`~fastpq.core.accumulator.PQAccumulator`: a few arrays over the categories, whatever the number
of images. Under ``torch.distributed``, ``compute`` reduces it across ranks
(:mod:`fastpq.streaming.distributed`); torch is needed only then.

COCO-convention updates with maps in GPU memory (CUDA torch tensors, CuPy arrays) run on the GPU
instead (:mod:`fastpq.gpu.device_state`): pair histogram, matcher and accumulation are queued on the
device and ``update`` returns without waiting for them; the state comes back to the host, with
the same bits, when it is read.
"""

from __future__ import annotations

from fastpq.core.accumulator import PQAccumulator, RecordingAccumulator
from fastpq.core.categories import Categories
from fastpq.core.runner import score_arrays
from fastpq.streaming.distributed import is_distributed, reduce_accumulator
from fastpq.errors import InputError
from fastpq.core.inputs import Convention, pick_convention
from fastpq.kernels.gpu_layout import DEFAULT_CAPACITY, capacity_log2
from fastpq.core.result import PQResult
from fastpq.metrics import resolve_metric


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
    pair_capacity : int
        GPU path: distinct (gt id, pred id) pairs an image may have (rounded up to a power of
        two; default 8192, far above the few hundred of COCO or Cityscapes images). The pair
        tables take about ``B * pair_capacity * 56`` bytes of GPU memory per update of B images.
        An image with more pairs makes ``compute()`` raise an InputError that names it.
    gpu_backend : callable, optional
        ``gpu_backend(gt, pred)`` returns the device backend that evaluates an update's maps
        (the interface of :class:`fastpq.gpu.cupy_kernels.CupyBackend`), or None for the host
        path. Default: :func:`fastpq.gpu.device_state.device_backend`, a CupyBackend for CUDA
        torch tensors and CuPy arrays. Other backends (the tests' CPU oracles of the kernels)
        come in here; the metric pickles only with a picklable factory.

    Raises
    ------
    fastpq.errors.InputError
        An unknown category preset, an empty or inconsistent category table, a non-positive
        ``label_divisor``, an unknown ``thing_instance_zero``, ``metric`` or ``convention``.
    ValueError
        ``pair_capacity`` outside [1, 2**30].

    Notes
    -----
    Host maps (NumPy arrays, torch CPU tensors, contiguous or not) are read in place, without
    copies.

    GPU maps (CUDA torch tensors, CuPy arrays), with the default metric and convention and
    without ``per_image``, are evaluated on their GPU (CuPy needed: ``pip install fastpq[gpu]``): ``update`` builds the
    segment tables on the host, copies them to the device (one copy from pinned memory), queues
    the kernels on the maps' stream (torch's current stream for tensors, CuPy's for CuPy arrays)
    and returns without waiting for the device. The running sums stay on the device until the
    metric is read (``compute``, ``sync``, ``state_dict``, ``merge``, pickling, or an update
    with host maps), which synchronises once. The numbers are bitwise those of the host path.
    Checked on the host at ``update``: shapes, dtypes and segments_info. Checked on the device,
    raised at the next ``compute``/``sync`` (the refused update adds nothing): too many distinct
    pairs for ``pair_capacity``, ids outside [0, 2**31), predicted ids in a map but not in its
    segments_info, listed predicted segments without pixels. Not checked on the GPU path (the
    host path refuses them): GT ids missing from segments_info (counted as non-void, as
    panopticapi does), listed GT segments without pixels (false negatives), ids in
    [2**24, 2**31). In the pairs and divisor conventions nothing is built on the host: the
    maps are encoded to int32 ids on the device ((dense category + 1) << bits | instance, with
    31 - bits the bit length of the number of categories), and the segment tables come from
    the pair tables, on the device. Raised at the next ``compute``/``sync`` there: categories
    neither in the table nor the void label, categories or instances outside [0, 2**31), and
    instances too large for the encoding (at least 2**23 with 133 categories; host maps take
    any). GPU maps in other cases (``per_image``, other metrics or conventions) are copied to
    the host (a synchronisation) and take the host path.

    The metric is picklable; the process group is not pickled (an unpickled metric uses the
    default group).

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
                 metric: str = "pq", convention: str = "panopticapi",
                 pair_capacity: int = DEFAULT_CAPACITY, gpu_backend=None):
        self.categories = Categories.coerce(categories)
        capacity_log2(pair_capacity)  # refuses a bad capacity now
        self.pair_capacity = int(pair_capacity)
        # refuse bad options now rather than at the first update
        Convention("pairs" if label_divisor is None else "divisor", label_divisor, void_label,
                   thing_instance_zero)
        scoring = resolve_metric(metric, convention)
        if scoring.accumulator_type is not PQAccumulator:
            raise InputError(f"the streaming metric keeps PQ sums (metric='pq' or 'pq_dagger'); "
                             f"for {scoring.title} use fastpq.evaluate(..., metric={metric!r})")
        self._scoring = scoring
        self.metric = metric
        self.convention = convention
        self._records = []
        self.label_divisor = label_divisor
        self.void_label = void_label
        self.thing_instance_zero = thing_instance_zero
        self.device = device
        self.process_group = process_group
        self._acc = PQAccumulator(self.categories)
        self.gpu_backend = gpu_backend
        self._device = None  # DeviceAccumulator while the state lives on a GPU
        self._refused = None  # RefusedUpdates found on the device, raised by sync()
        self._n_updates = 0

    # attributes of metrics pickled before the GPU path existed
    _device = None
    _refused = None
    _n_updates = 0
    pair_capacity = DEFAULT_CAPACITY
    gpu_backend = None

    def _to_host(self) -> None:
        """Bring a device state back into ``self._acc`` (one synchronisation)."""
        if self._device is None:
            return
        acc, refused = self._device.to_host()
        self._acc, self._device = acc, None
        if refused is not None:
            self._refused = refused if self._refused is None else self._refused.merge(refused)

    def _on_gpu(self, gt, pred, gt_segments, per_image):
        """The device backend and input convention of this update when its maps live on a GPU
        and the GPU path covers it (the state is then on that device), else None."""
        if per_image or not self._scoring.on_device:
            return None
        if self.gpu_backend is None:
            from fastpq.gpu.device_state import device_backend as choose_backend
        else:
            choose_backend = self.gpu_backend
        backend = choose_backend(gt, pred)
        if backend is None:
            return None
        convention = pick_convention(gt, gt_segments, self.label_divisor, self.void_label,
                                     self.thing_instance_zero)
        if self._device is not None and self._device.backend.key != backend.key:
            self._to_host()  # the maps moved to another device: the state follows
        if self._device is None:
            from fastpq.gpu.device_state import DeviceAccumulator

            self._device = DeviceAccumulator(backend, self._acc, pair_capacity=self.pair_capacity)
        return backend, convention

    def update(self, gt, pred, *, gt_segments=None, pred_segments=None,
               per_image: bool = False) -> None:
        """Add one image or a batch.

        Parameters
        ----------
        gt, pred, gt_segments, pred_segments
            As in :func:`fastpq.evaluate`: one image or a batch (a list, or a stacked (B, ...)
            array or tensor) in the COCO, pairs or divisor convention.
        per_image : bool
            Keep these images' :class:`~fastpq.core.records.ImageRecord` (indexed from the first
            image this metric saw) for ``compute().per_image``; metric 'pq' under the
            panopticapi convention only. Records grow with the images, stay in this process
            (they are not reduced across ranks, nor part of :meth:`state_dict`) and are cleared
            by :meth:`reset`.

        Raises
        ------
        fastpq.errors.InputError
            As :func:`fastpq.evaluate`. A batch with a refused image adds nothing. On the GPU
            path, what only the device can see is raised by the next :meth:`compute` /
            :meth:`sync` instead (see the class notes).

        Notes
        -----
        Never communicates with other processes. With GPU maps (see the class notes) it queues
        the work on the device and returns without waiting for it.
        """
        update = self._n_updates
        self._n_updates += 1
        on_gpu = self._on_gpu(gt, pred, gt_segments, per_image)
        if on_gpu is not None:
            backend, convention = on_gpu
            if convention.name == "coco":
                self._device.add(backend, gt, pred, gt_segments, pred_segments, update=update)
            else:
                self._device.add_encoded(backend, gt, pred, convention, update=update)
            return
        self._to_host()
        scoring = self._scoring.with_records() if per_image else self._scoring
        partials = list(score_arrays(gt, pred, gt_segments=gt_segments,
                                     pred_segments=pred_segments, categories=self.categories,
                                     metric=scoring, label_divisor=self.label_divisor,
                                     void_label=self.void_label,
                                     thing_instance_zero=self.thing_instance_zero,
                                     first_index=self._acc.n_images))
        acc = RecordingAccumulator(self._acc, self._records) if per_image else self._acc
        for partial in partials:
            acc.add_image(*partial)

    def sync(self) -> PQAccumulator:
        """The accumulator over all ranks (a collective call under ``torch.distributed``).

        Returns
        -------
        PQAccumulator
            A new accumulator: the sums of every rank of the process group, identical on every
            rank and equal to one process adding all the images; without an initialised process
            group, a copy of this one. This metric's own state is unchanged, so updates can go
            on and a later :meth:`compute` counts each image once.

        Raises
        ------
        fastpq.errors.InputError
            GPU updates were refused on the device since the state was last read (SegmentError
            for a predicted id missing from segments_info or a listed segment without pixels).
            The message names the first refused update and image; refused updates added
            nothing. It is raised once, after the reduction (so that other ranks do not wait
            forever): the next call returns the sums of the accepted updates.
        """
        self._to_host()
        if not is_distributed():
            acc = self._acc.copy()
        else:
            acc = reduce_accumulator(self._acc, process_group=self.process_group,
                                     device=self.device)
        if self._refused is not None:
            refused, self._refused = self._refused, None
            raise refused.error(self.pair_capacity)
        return acc

    def compute(self) -> PQResult:
        """PQ, SQ and RQ of every image seen, by every rank under ``torch.distributed``.

        Under an initialised process group this is a collective call (see :meth:`sync`): every
        rank must call it, and every rank returns the global result. ``per_image`` holds this
        process's records when updates asked for them, else None.
        """
        return self._scoring.result(self.sync(), per_image=list(self._records) or None)

    def reset(self) -> None:
        """Forget every image (the configuration stays)."""
        self._device = None
        self._refused = None
        self._n_updates = 0
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
        self._to_host()
        other._to_host()
        self._acc.merge(other._acc)
        if other._refused is not None:
            self._refused = (other._refused if self._refused is None
                             else self._refused.merge(other._refused))
        self._records.extend(other._records)
        return self

    def state_dict(self) -> dict:
        """The accumulated state as plain Python data (JSON-serialisable, exact)."""
        self._to_host()
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
        self._device = None
        self._refused = None
        self._acc = acc

    def __getstate__(self):
        self._to_host()  # device arrays and streams belong to this process
        state = dict(self.__dict__)
        state["process_group"] = None  # a process group belongs to its process
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "_scoring" not in state:  # pickled before metrics were objects
            self._scoring = resolve_metric(self.metric, self.convention)

    def __repr__(self):
        n_images = self._acc.n_images if self._device is None else self._device.n_images
        return f"PanopticQuality({len(self.categories)} categories, {n_images} images)"

"""The streaming metric's state on a GPU: batches of device label maps in, running sums on device.

:class:`fastpq.PanopticQuality` hands COCO-convention updates whose maps live on a GPU (CUDA
torch tensors, CuPy arrays) to a :class:`DeviceAccumulator`. One update is

    segment tables (host: segments_info -> dense categories, one host->device copy)
      -> pair histogram (device)  -> matcher (device)  -> accumulation (device)

and nothing in it waits for the device: no value computed on the device is read on the host.
The running sums are the host accumulator's (:class:`~fastpq.core.accumulator.PQAccumulator`): int64
tp/fp/fn and double-double IoU sums, added image by image in input order with the same TwoSum,
so a metric fed on the GPU holds bitwise the numbers of one fed the same images on the host.
They move to the host (one synchronisation) when the metric is read: ``compute()``, ``sync()``,
``state_dict()``, ``merge()``, pickling, or a host-map update.

What is checked where. On the host, at ``update()``, as on the host path: map shapes and dtypes
(metadata only) and everything about the segments_info lists (ids, duplicates, GT id 0,
``iscrowd``, unknown categories). On the device, as status bits of each image: more distinct
(gt id, pred id) pairs than ``pair_capacity``, ids outside [0, 2**31), a non-zero predicted id in
the map that segments_info does not list, a listed predicted segment without pixels. An update
with such an image adds nothing, and the next ``compute()`` (or ``sync()``) raises the error,
naming the update and the image. Not checked on the device (the host path refuses these): GT ids
in the map that segments_info does not list (they count as non-void pixels in unions, as in
panopticapi's ``pq_compute``), listed GT segments without pixels (false negatives, as in the
reference), ids in [2**24, 2**31), and predicted id 0 listed in segments_info (a segment, as in
the reference).

The glue is written against a small backend (array module ``xp``, histogram, matcher,
accumulation, copies), passed in: :class:`DeviceAccumulator` takes it, and
:class:`fastpq.PanopticQuality` gets it from a factory (``gpu_backend=``; by default
:func:`device_backend`, which picks :class:`fastpq.gpu.cupy_kernels.CupyBackend` for CUDA torch
tensors and CuPy arrays). The tests pass CPU oracles of the kernels through the same argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastpq.core.accumulator import PQAccumulator
from fastpq.core.categories import Categories
from fastpq.core.arrays import check_integer_map, is_rgb_map, on_device, rgb_to_ids
from fastpq.core.inputs import split_segments
from fastpq.core.validation import Policy, check_same_size, segment_tables
from fastpq.errors import InputError, SegmentError
from fastpq.kernels.gpu_layout import (
    DEFAULT_CAPACITY,
    MODE_DIVISOR,
    MODE_PAIRS,
    RECORD_FIELDS,
    STATUS_CATEGORY_UNKNOWN,
    STATUS_MESSAGES,
    STATUS_PAIR_TABLE_OVERFLOW,
    STATUS_PRED_CATEGORY_UNKNOWN,
    STATUS_PRED_ID_NOT_LISTED,
    STATUS_PRED_SEGMENT_ABSENT,
    MatchPartials,
    SegmentTables,
    capacity_log2,
    instance_bits,
)

__all__ = ["DEFAULT_CAPACITY", "DeviceAccumulator", "RECORD_FIELDS", "RefusedUpdates",
           "category_lut", "device_backend", "pad_segment_tables"]

_SEGMENT_STATUS = (STATUS_PRED_ID_NOT_LISTED | STATUS_PRED_SEGMENT_ABSENT
                   | STATUS_PRED_CATEGORY_UNKNOWN | STATUS_CATEGORY_UNKNOWN)


def device_backend(gt, pred):
    """The backend for an update's maps: a :class:`fastpq.gpu.cupy_kernels.CupyBackend` on the
    device of the maps when they live on a GPU (CUDA torch tensors, CuPy arrays), None when they
    are host maps. The default ``gpu_backend`` factory of :class:`fastpq.PanopticQuality`.

    Raises
    ------
    InputError
        Some maps are on a GPU and others are not.
    """
    gts = list(gt) if isinstance(gt, (list, tuple)) else [gt]
    preds = list(pred) if isinstance(pred, (list, tuple)) else [pred]
    placed = [on_device(x) for x in gts + preds]
    if not any(placed):
        return None
    if not all(placed):
        first_host = placed.index(False)
        side, k = (("ground-truth", first_host) if first_host < len(gts)
                   else ("predicted", first_host - len(gts)))
        raise InputError(f"the {side} map is in host memory while other maps of the update are "
                         "on a GPU; pass all maps of an update on the same device", image_index=k)
    from fastpq.gpu.cupy_kernels import CupyBackend

    return CupyBackend.for_maps(gts + preds)


def pad_segment_tables(ids, categories, iscrowd=None, areas=None) -> SegmentTables:
    """Padded NumPy segment tables from per-image sequences (one 1-D array per image).

    ``categories`` are dense category indices (-1 for unknown). ``iscrowd`` and ``areas`` are
    optional; without ``areas`` the matcher uses pixel counts.

    Raises
    ------
    ValueError
        An image has a different number of segment ids and categories.
    """
    n_images = len(ids)
    count = np.array([len(x) for x in ids], dtype=np.int32)
    for b in range(n_images):
        if len(categories[b]) != count[b]:
            raise ValueError(f"image {b}: {count[b]} segment ids but {len(categories[b])} "
                             "categories")
    width = max(1, int(count.max(initial=0)))
    filled = np.arange(width) < count[:, None]  # row-major order = the concatenation's order

    def table(rows, dtype, pad):
        out = np.full((n_images, width), pad, dtype)
        if rows is not None and n_images:
            out[filled] = np.concatenate(rows).astype(dtype, copy=False)
        return out

    table_id = table(ids, np.int32, 0)
    table_category = table(categories, np.int32, -1)
    table_iscrowd = table(iscrowd, np.int32, 0)
    table_area = table(areas, np.float64, 0) if areas is not None else None
    return SegmentTables(table_id, table_category, table_iscrowd, table_area, count)


def category_lut(category_ids, thing_mask, max_lut: int = 1 << 20):
    """``(lut, is_thing)`` int32 arrays for ``encode.cu``: ``lut[category id]`` = dense index or
    -1, ``is_thing`` per dense index. None when category ids are negative or not below
    ``max_lut``."""
    ids = np.asarray(category_ids, np.int64)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= max_lut:
        return None
    lut = np.full(int(ids.max()) + 1, -1, np.int32)
    lut[ids] = np.arange(ids.size, dtype=np.int32)
    return lut, np.asarray(thing_mask, np.int32)


@dataclass
class RefusedUpdates:
    """Updates refused on the device, found when the state came back to the host."""

    count: int  # refused updates
    update: int  # number of the first refused update (0 = the first update() call)
    image: int  # its first image with a status bit, counted within the update
    status: int  # that image's status bits
    all_status: int  # OR of the status bits of every refused image
    n_images: int  # images in the refused updates

    @classmethod
    def from_record(cls, record) -> "RefusedUpdates | None":
        record = [int(x) for x in record]
        return cls(*record) if record[0] else None

    def merge(self, other: "RefusedUpdates | None") -> "RefusedUpdates":
        if other is None:
            return self
        return RefusedUpdates(self.count + other.count, self.update, self.image, self.status,
                              self.all_status | other.all_status, self.n_images + other.n_images)

    def error(self, pair_capacity: int) -> InputError:
        """The exception to raise: SegmentError for segment-table mismatches, else InputError."""
        def reasons(bits):
            return "; ".join(text for bit, text in STATUS_MESSAGES.items() if bits & bit)

        message = f"refused on the GPU: {reasons(self.status)}. That update added nothing."
        if self.status & STATUS_PAIR_TABLE_OVERFLOW:
            slots = 1 << capacity_log2(pair_capacity)
            message += (f" The GPU pair table holds {slots} distinct (gt id, pred id) pairs per "
                        "image; pass a larger pair_capacity= to PanopticQuality.")
        if self.status & _SEGMENT_STATUS:
            message += (" fastpq.evaluate on host copies of that image's maps names the "
                        "segment id.")
        if self.count > 1:
            message += (f" In all, {self.count} updates ({self.n_images} images) were refused "
                        f"since the state was last read: {reasons(self.all_status)}.")
        kind = SegmentError if self.status & _SEGMENT_STATUS else InputError
        return kind(message, image_index=self.image, update=self.update)


# -- label maps ------------------------------------------------------------------------------------

def _is_rgb(array) -> bool:
    """One image's map in the COCO PNG layout, (H, W, 3 or 4) uint8."""
    return array.ndim == 3 and is_rgb_map(array)


def _ids(array):
    """An (H, W) or (B, H, W) integer id map; RGB maps (COCO PNG layout) become int32 ids on the
    device (:func:`fastpq.core.arrays.rgb_to_ids`)."""
    return rgb_to_ids(array, np.int32) if is_rgb_map(array) else array


def _check_same_way(gt, pred) -> None:
    if isinstance(gt, (list, tuple)) != isinstance(pred, (list, tuple)):
        raise InputError("pass the ground truth and the predictions the same way: both lists of "
                         "maps, or both one array")


def _stack_runs(xp, maps) -> list:
    """``[(gt, pred), ...]`` per image -> stacked batches, one per run of equal shapes, in input
    order (a run of one image is a view, not a copy)."""
    batches = []
    start = 0
    for k in range(1, len(maps) + 1):
        if k == len(maps) or maps[k][0].shape != maps[start][0].shape:
            run = maps[start:k]
            if len(run) == 1:
                batches.append((run[0][0][None], run[0][1][None]))
            else:
                batches.append((xp.stack([g for g, _ in run]), xp.stack([p for _, p in run])))
            start = k
    return batches


def _batches(backend, gt, pred) -> tuple[list, int]:
    """The update's maps as ``[(gt, pred), ...]`` device batches of equal-shape (B, H, W) id
    maps, in input order, and the number of images. Reads metadata only."""
    xp = backend.xp
    _check_same_way(gt, pred)
    if not isinstance(gt, (list, tuple)):
        g, p = backend.as_array(gt), backend.as_array(pred)
        for array, what in ((g, "ground-truth"), (p, "predicted")):
            check_integer_map(array, what)
        g, p = _ids(g), _ids(p)
        if g.ndim == 2:
            g = g[None]
        if p.ndim == 2:
            p = p[None]
        if g.ndim != 3 or p.ndim != 3:
            raise InputError(f"COCO maps on a GPU must be (H, W) or (B, H, W) integer ids, or "
                             f"(H, W, 3) / (B, H, W, 3) uint8 RGB; got shapes "
                             f"{tuple(gt.shape)} and {tuple(pred.shape)}")
        if g.shape[0] != p.shape[0]:
            raise InputError(f"{g.shape[0]} ground-truth maps but {p.shape[0]} predicted maps")
        if g.shape != p.shape:
            raise InputError(f"the ground truth is {g.shape[1]}x{g.shape[2]} but the prediction "
                             f"is {p.shape[1]}x{p.shape[2]}")
        return ([(g, p)] if g.shape[0] else []), g.shape[0]
    maps = _image_maps(backend, gt, pred, lambda a: a.ndim == 2 or _is_rgb(a),
                       "COCO maps are (H, W) integer ids or (H, W, 3) uint8 RGB",
                       _ids)
    return _stack_runs(xp, maps), len(maps)


def _image_maps(backend, gt, pred, accepts, layout: str, convert=None) -> list:
    """``[(gt, pred), ...]`` device maps of an update given as lists, one pair per image:
    integer dtypes, shapes that ``accepts`` (else an error ending in ``layout``), equal shapes
    after ``convert``."""
    if len(gt) != len(pred):
        raise InputError(f"{len(gt)} ground-truth maps but {len(pred)} predicted maps")
    maps = []
    for k, (g, p) in enumerate(zip(gt, pred)):
        g, p = backend.as_array(g), backend.as_array(p)
        for array, what in ((g, "ground-truth"), (p, "predicted")):
            check_integer_map(array, what, image_index=k)
            if not accepts(array):
                raise InputError(f"the {what} map has shape {tuple(array.shape)}; {layout}",
                                 image_index=k)
        if convert is not None:
            g, p = convert(g), convert(p)
        if g.shape != p.shape:
            check_same_size(g.shape, p.shape, image_index=k)
        maps.append((g, p))
    return maps


def _encoded_batches(backend, gt, pred, pairs: bool) -> tuple[list, int]:
    """The update's pairs-convention ((H, W, 2) / (B, H, W, 2)) or divisor-convention
    ((H, W) / (B, H, W)) maps as ``[(gt, pred), ...]`` stacked device batches of equal shape, in
    input order, and the number of images. Reads metadata only."""
    xp = backend.xp
    one = 3 if pairs else 2  # dimensions of one image's map
    layout = "(H, W, 2) [category, instance]" if pairs else "(H, W) integer"
    _check_same_way(gt, pred)
    if not isinstance(gt, (list, tuple)):
        g, p = backend.as_array(gt), backend.as_array(pred)
        for array, what in ((g, "ground-truth"), (p, "predicted")):
            check_integer_map(array, what)
            if array.ndim not in (one, one + 1) or (pairs and array.shape[-1] != 2):
                raise InputError(f"the {what} maps have shape {tuple(array.shape)}; this "
                                 f"convention takes {layout} maps or a stack of them")
        g = g if g.ndim == one + 1 else g[None]
        p = p if p.ndim == one + 1 else p[None]
        if g.shape != p.shape:
            raise InputError(f"the ground-truth maps have shape {tuple(g.shape)} but the "
                             f"predicted maps {tuple(p.shape)}")
        return ([(g, p)] if g.shape[0] else []), g.shape[0]
    maps = _image_maps(backend, gt, pred,
                       lambda a: a.ndim == one and (not pairs or a.shape[-1] == 2),
                       f"this convention takes {layout} maps")
    return _stack_runs(xp, maps), len(maps)


# -- segment tables --------------------------------------------------------------------------------

def _tables(gt_segments, pred_segments, categories: Categories, first: int):
    """Host segment tables of images ``first, first + 1, ...`` (index within the update), under
    the deferred policy (:class:`fastpq.core.validation.Policy`): what the host can check is
    refused here, the rest on the device."""
    gt_tables, pred_tables = [], []
    for k, (gs, ps) in enumerate(zip(gt_segments, pred_segments), start=first):
        gt_table, pred_table = segment_tables(gs, ps, categories, Policy.DEFERRED, image_index=k)
        gt_tables.append(gt_table)
        pred_tables.append(pred_table)
    return gt_tables, pred_tables


def _upload_tables(backend, gt_tables, pred_tables):
    """Padded device SegmentTables of a batch, from one host-to-device copy."""
    gt = pad_segment_tables([t.ids for t in gt_tables], [t.category for t in gt_tables],
                            [t.iscrowd for t in gt_tables])
    pred = pad_segment_tables([t.ids for t in pred_tables], [t.category for t in pred_tables])
    parts = [gt.id, gt.category, gt.iscrowd, gt.count, pred.id, pred.category, pred.count]
    device = backend.upload(np.concatenate([np.ascontiguousarray(a, np.int32).ravel()
                                            for a in parts]))
    views, at = [], 0
    for a in parts:
        views.append(device[at:at + a.size].reshape(a.shape))
        at += a.size
    return (SegmentTables(views[0], views[1], views[2], None, views[3]),
            SegmentTables(views[4], views[5], None, None, views[6]))


# -- the state -------------------------------------------------------------------------------------

class DeviceAccumulator:
    """A :class:`~fastpq.core.accumulator.PQAccumulator` living on a device, fed batches of device
    label maps without host-device synchronisation.

    Parameters
    ----------
    backend : CupyBackend or a backend with its methods
        Where the state lives (the tests pass CPU oracles of the kernels).
    acc : PQAccumulator
        The starting sums (copied to the device): the state continues them exactly.
    pair_capacity : int
        Distinct (gt id, pred id) pairs per image of the pair tables.
    """

    def __init__(self, backend, acc: PQAccumulator, *, pair_capacity: int = DEFAULT_CAPACITY):
        capacity_log2(pair_capacity)  # validates
        self.backend = backend
        self.categories = acc.categories
        self.pair_capacity = int(pair_capacity)
        with backend:
            self.state = tuple(backend.upload(a) for a in (
                acc.tp, acc.fp, acc.fn, acc.iou, acc.iou_err,
                np.zeros(RECORD_FIELDS, np.int64)))
            self._marker = backend.marker()
        self.n_images = acc.n_images  # including refused images until to_host()
        self._encoded = None  # (lut, is_thing, inst_bits) of the pairs/divisor conventions

    def add(self, backend, gt, pred, gt_segments, pred_segments, *, update: int) -> int:
        """Queue one update; returns its number of images.

        ``backend`` is this update's (same device as the state; its stream may differ, then it
        waits on the device for the state's last writes). Host-side refusals (shapes, dtypes,
        segments_info) raise InputError here, before anything is queued; device-side ones are
        recorded and raised by :meth:`to_host`'s caller.
        """
        if backend.key != self.backend.key:
            raise ValueError(f"this state lives on {self.backend.key}, the maps on {backend.key}")
        with backend:
            batches, n_images = _batches(backend, gt, pred)
            if n_images == 0:
                raise InputError("empty input: no images to evaluate")
            gsegs = split_segments(gt_segments, n_images, "gt_segments")
            psegs = split_segments(pred_segments, n_images, "pred_segments")
            gt_tables, pred_tables = _tables(gsegs, psegs, self.categories, 0)
            backend.wait_for(self._marker)
            partials = []
            first = 0
            for g, p in batches:
                size = g.shape[0]
                gt_dev, pred_dev = _upload_tables(backend, gt_tables[first:first + size],
                                                  pred_tables[first:first + size])
                pairs = backend.histogram(g, p, self.pair_capacity)
                partials.append(backend.match(pairs, gt_dev, pred_dev, len(self.categories)))
                first += size
            if len(partials) > 1:  # one accumulation per update: a refusal refuses all of it
                xp = backend.xp
                joined = MatchPartials(*(xp.concatenate([getattr(m, name) for m in partials])
                                         for name in ("tp", "fp", "fn", "iou_sum")),
                                       None, None,
                                       xp.concatenate([m.status for m in partials]))
            else:
                joined = partials[0]
            backend.accumulate(joined, self.state, update)
            self._marker = backend.marker()
        self.backend = backend
        self.n_images += n_images
        return n_images

    def add_encoded(self, backend, gt, pred, convention, *, update: int) -> int:
        """Queue one pairs- or divisor-convention update (segments come from the ids, on the
        device); returns its number of images. Refusals as in :meth:`add`."""
        if backend.key != self.backend.key:
            raise ValueError(f"this state lives on {self.backend.key}, the maps on {backend.key}")
        pairs = convention.name == "pairs"
        with backend:
            batches, n_images = _encoded_batches(backend, gt, pred, pairs)
            if n_images == 0:
                raise InputError("empty input: no images to evaluate")
            lut, is_thing, inst_bits = self._encoding(backend)
            backend.wait_for(self._marker)
            partials = []
            for g, p in batches:
                tables = backend.histogram_encoded(
                    g, p, self.pair_capacity, mode=MODE_PAIRS if pairs else MODE_DIVISOR,
                    lut=lut, inst_bits=inst_bits, void_label=convention.void_label,
                    divisor=1 if pairs else convention.label_divisor)
                gt_tables, pred_tables = backend.derive_tables(
                    tables, inst_bits=inst_bits, is_thing=is_thing,
                    crowd_rule=convention.thing_instance_zero == "crowd")
                partials.append(backend.match(tables, gt_tables, pred_tables,
                                              len(self.categories)))
            xp = backend.xp
            joined = partials[0] if len(partials) == 1 else MatchPartials(
                *(xp.concatenate([getattr(m, name) for m in partials])
                  for name in ("tp", "fp", "fn", "iou_sum")),
                None, None, xp.concatenate([m.status for m in partials]))
            backend.accumulate(joined, self.state, update)
            self._marker = backend.marker()
        self.backend = backend
        self.n_images += n_images
        return n_images

    def _encoding(self, backend):
        """Device category lookup table, thing mask and instance bits (uploaded once)."""
        if self._encoded is None:
            found = category_lut(self.categories.ids, self.categories.thing_mask)
            if found is None:
                raise InputError("the GPU path of the pairs and divisor conventions needs "
                                 "category ids in [0, 2**20); pass host maps")
            self._encoded = (backend.upload(found[0]), backend.upload(found[1]),
                             instance_bits(len(self.categories)))
        return self._encoded

    def to_host(self) -> tuple[PQAccumulator, RefusedUpdates | None]:
        """The sums as a host accumulator, and the refused updates (synchronises once)."""
        with self.backend:
            tp, fp, fn, iou, iou_err, record = (self.backend.download(a) for a in self.state)
        acc = PQAccumulator(self.categories)
        acc.tp, acc.fp, acc.fn = (np.asarray(a, np.int64) for a in (tp, fp, fn))
        acc.iou, acc.iou_err = (np.asarray(a, np.float64) for a in (iou, iou_err))
        acc.n_images = self.n_images - int(record[5])
        return acc, RefusedUpdates.from_record(record)

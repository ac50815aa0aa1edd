"""CuPy front door of the CUDA kernels in ``kernels/pairs.cu`` and ``kernels/accumulate.cu``.

``pair_histogram_batch`` turns a batch of (gt, pred) label maps into sorted per-image pair tables;
``match_batch`` turns pair tables and segment tables into per-image, per-category tp/fp/fn and
IoU partial sums (SPEC §2.3-2.5); ``accumulate_partials`` adds those partials into the
streaming metric's running sums on the device (``kernels/accumulate.cu``); :class:`CupyBackend`
bundles the three for :mod:`fastpq.gpu.device_state`. They take device arrays (CuPy arrays, or CUDA
torch tensors through DLPack, without a copy), queue their kernels on one stream and return
device arrays: they never wait for the device (no ``.get()``, no ``int()`` of a device value),
so a training loop can call them every step. Reading results, and acting on the ``status`` bits
(a pair table that overflowed, ids out of range), happens where the caller synchronises anyway,
e.g. at ``compute()``; :func:`pair_histogram_retrying` is the one function here that synchronises.

CuPy is imported on first use; without it these functions raise ImportError naming the extra to
install (``pip install fastpq[gpu]``). The CUDA source is compiled by NVRTC on first use and
cached per device.
"""

from __future__ import annotations

import sys
import threading
from importlib import resources

import numpy as np

from fastpq.core.arrays import check_integer_map, is_torch_tensor
from fastpq.kernels.gpu_layout import (
    ACCUMULATE_THREADS,
    BLOCK_THREADS,
    DEFAULT_CAPACITY,
    DEFAULT_TILE_PIXELS,
    MATCH_THREADS,
    MAX_CAPACITY,
    MAX_GRID_Y,
    MODE_PAIRS,
    STATUS_PAIR_TABLE_OVERFLOW,
    MatchPartials,
    PairTables,
    SegmentTables,
    capacity_log2,
    check_tile_pixels,
    nvrtc_options,
)

__all__ = [
    "CupyBackend", "MatchPartials", "PairTables", "SegmentTables", "accumulate_partials",
    "accumulate_source", "batch_label_maps", "compiled_kernel", "cuda_source",
    "derive_segment_tables", "encode_source", "encoded_module_source", "match_batch",
    "pair_histogram_batch", "pair_histogram_encoded", "pair_histogram_retrying", "uses_vec4",
]

_INSTALL_HINT = "fastpq's GPU path needs CuPy: pip install fastpq[gpu]"
_MODULES: dict = {}
_MODULES_LOCK = threading.Lock()


def cuda_source() -> str:
    """The text of ``pairs.cu``, shipped as package data of ``fastpq.kernels``."""
    return resources.files("fastpq.kernels").joinpath("pairs.cu").read_text(encoding="utf-8")


def accumulate_source() -> str:
    """The text of ``accumulate.cu``, shipped as package data of ``fastpq.kernels``."""
    return resources.files("fastpq.kernels").joinpath("accumulate.cu").read_text(
        encoding="utf-8")


def encode_source() -> str:
    """The text of ``encode.cu``, shipped as package data of ``fastpq.kernels``."""
    return resources.files("fastpq.kernels").joinpath("encode.cu").read_text(encoding="utf-8")


def encoded_module_source() -> str:
    """``pairs.cu`` then ``encode.cu``: one module, since the fused encoded histogram of
    ``encode.cu`` reuses the histogram of ``pairs.cu``."""
    return cuda_source() + "\n" + encode_source()


def _cupy():
    try:
        import cupy
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return cupy


def compiled_kernel(name: str, source=cuda_source):
    """The kernel ``name`` of ``source()`` (default: ``pairs.cu``), built with NVRTC at the
    sizes of :func:`~fastpq.kernels.gpu_layout.nvrtc_options`, once per device and source (a
    CuPy RawModule), for the current device.

    Parameters
    ----------
    name : str
        An ``extern "C"`` kernel of the source, e.g. ``"pair_histogram_i32"``.
    source : callable
        Returns the CUDA text: :func:`cuda_source`, :func:`accumulate_source` or
        :func:`encoded_module_source`.

    Returns
    -------
    cupy.RawKernel

    Raises
    ------
    ImportError
        CuPy is not installed (the message names the extra: ``pip install fastpq[gpu]``).
    """
    cp = _cupy()
    key = (cp.cuda.Device().id, source.__name__, nvrtc_options())
    module = _MODULES.get(key)
    if module is None:
        with _MODULES_LOCK:
            module = _MODULES.get(key)
            if module is None:
                module = cp.RawModule(code=source(), options=key[2])
                _MODULES[key] = module
    return module.get_function(name)


def batch_label_maps(gt, pred, xp):
    """Validate a pair of label-map batches and flatten them to ``(B, H*W)``.

    ``gt`` and ``pred`` are ``(H, W)`` or ``(B, H, W)`` integer arrays of the array module ``xp``
    (NumPy or CuPy) with equal shapes. int32 and int64 are used as they are; uint32/uint64 are
    reinterpreted as int32/int64 (ids >= 2**31 then raise STATUS_ID_OUT_OF_RANGE on the device);
    narrower integers are widened to int32. Returns ``(gt2d, pred2d)``, C-contiguous, same dtype.

    Raises
    ------
    ValueError
        The shapes differ or are neither 2-D nor 3-D.
    fastpq.errors.InputError
        A map does not hold integers.
    """
    if gt.shape != pred.shape:
        raise ValueError(
            f"gt and pred label maps must have the same shape, got {tuple(gt.shape)} and "
            f"{tuple(pred.shape)}"
        )
    if gt.ndim not in (2, 3):
        raise ValueError(f"label maps must be (H, W) or (B, H, W), got shape {tuple(gt.shape)}")
    maps = []
    wide = gt.dtype.itemsize == 8 or pred.dtype.itemsize == 8
    for name, array in (("gt", gt), ("pred", pred)):
        check_integer_map(array, {"gt": "ground-truth", "pred": "predicted"}[name])
        array = xp.ascontiguousarray(array)
        if wide:
            if array.dtype == np.uint64:
                array = array.view(np.int64)
            elif array.dtype != np.int64:
                array = array.astype(np.int64)
        elif array.dtype == np.uint32:
            array = array.view(np.int32)
        elif array.dtype != np.int32:
            array = array.astype(np.int32)
        n_images = 1 if array.ndim == 2 else array.shape[0]
        maps.append(array.reshape(n_images, array.shape[-2] * array.shape[-1]))
    return maps[0], maps[1]


def uses_vec4(gt2d, pred2d, tile_pixels: int, aligned: bool) -> bool:
    """Whether the histogram may read int4 vectors: int32 maps, N % 4 == 0, 16-byte alignment."""
    return (
        gt2d.dtype == np.int32 and gt2d.shape[1] % 4 == 0 and tile_pixels % 4 == 0 and aligned
    )


def _device_id(cp, value) -> int:
    if isinstance(value, cp.ndarray):
        return value.device.id
    if is_torch_tensor(value):
        if not value.is_cuda:
            raise TypeError(
                "fastpq.gpu.cupy_kernels needs CUDA tensors, got a tensor on the CPU; move it with .cuda() or "
                "use the CPU path"
            )
        return value.device.index
    return cp.cuda.Device().id


class _StreamHandle:
    """A raw ``cudaStream_t`` in the CUDA stream protocol (``Stream.from_external``)."""

    def __init__(self, ptr: int):
        self.ptr = int(ptr)

    def __cuda_stream__(self):
        return (0, self.ptr)


def _external_stream(cp, ptr: int, device_id: int):
    if hasattr(cp.cuda.Stream, "from_external"):  # CuPy >= 14
        return cp.cuda.Stream.from_external(_StreamHandle(ptr))
    return cp.cuda.ExternalStream(ptr, device_id)


def _stream(cp, stream, device_id: int, values):
    """The stream to launch on: the given one, else torch's current one for torch inputs, else
    CuPy's current one. Accepts CuPy streams, torch streams and raw ``cudaStream_t`` ints."""
    if stream is None:
        if any(is_torch_tensor(v) for v in values):
            torch = sys.modules["torch"]
            return _external_stream(cp, torch.cuda.current_stream(device_id).cuda_stream,
                                    device_id)
        return cp.cuda.get_current_stream()
    if isinstance(stream, (cp.cuda.Stream, cp.cuda.ExternalStream)):
        return stream
    if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
        return _external_stream(cp, stream.cuda_stream, device_id)
    if isinstance(stream, int):
        return _external_stream(cp, stream, device_id)
    raise TypeError(f"stream must be a CuPy or torch CUDA stream or a cudaStream_t, got {stream!r}")


def _as_device_array(cp, value, dtype=None):
    """A CuPy view of ``value`` (CuPy array, CUDA torch tensor, any CUDA array interface object);
    NumPy arrays are copied to the device (a host-blocking copy)."""
    if value is None:
        return None
    if isinstance(value, cp.ndarray):
        array = value
    elif is_torch_tensor(value):
        array = cp.from_dlpack(value.detach())
    else:
        array = cp.asarray(value)
    if dtype is not None and array.dtype != dtype:
        array = array.astype(dtype)
    return array


def pair_histogram_batch(
    gt,
    pred,
    *,
    capacity: int = DEFAULT_CAPACITY,
    tile_pixels: int = DEFAULT_TILE_PIXELS,
    stream=None,
) -> PairTables:
    """Distinct ``(gt_id, pred_id)`` pairs and their pixel counts for each image of a batch.

    Parameters
    ----------
    gt, pred : CuPy arrays or CUDA torch tensors, (H, W) or (B, H, W)
        Label maps of equal shape; int32 or int64 (uint32/uint64 reinterpreted, narrower integers
        widened on the device). Ids must lie in [0, 2**31) (COCO ids are < 2**24).
    capacity : int
        Slots of each image's hash table, rounded up to a power of two (>= 64). An image with more
        than ``capacity`` distinct pairs sets ``STATUS_PAIR_TABLE_OVERFLOW`` in ``status`` and its
        row is invalid; rerun with a larger capacity (:func:`pair_histogram_retrying`). The
        default, 8192, is far above the few hundred pairs of COCO or Cityscapes images; memory is
        about ``B * capacity * 48`` bytes.
    tile_pixels : int
        Pixels per thread block (a multiple of 4).
    stream : CuPy stream, torch stream or cudaStream_t, optional
        Default: torch's current stream for torch inputs, else CuPy's current stream.

    Returns
    -------
    PairTables of CuPy arrays (see :class:`fastpq.kernels.gpu_layout.PairTables`): ``gt``,
    ``pred`` (B, cap) int32, ``count`` (B, cap) int64, ``n_pairs`` (B,) int32, ``status`` (B,)
    int32; rows sorted by (gt_id, pred_id). Nothing is synchronised.
    """
    cp = _cupy()
    tile_pixels = check_tile_pixels(tile_pixels)
    cap_log2 = capacity_log2(capacity)
    device_id = _device_id(cp, gt)
    with cp.cuda.Device(device_id), _stream(cp, stream, device_id, (gt, pred)):
        gt2d, pred2d = batch_label_maps(_as_device_array(cp, gt), _as_device_array(cp, pred), cp)
        n_images, n_pixels = gt2d.shape
        aligned = gt2d.data.ptr % 16 == 0 and pred2d.data.ptr % 16 == 0
        vec4 = uses_vec4(gt2d, pred2d, tile_pixels, aligned)
        table_keys, table_counts, status = _new_tables(cp, n_images, cap_log2)
        if n_images and n_pixels:
            histogram = compiled_kernel("pair_histogram_i32" if gt2d.dtype == cp.int32 else
                                        "pair_histogram_i64")
            _launch_histogram(histogram, n_images, n_pixels, tile_pixels, (gt2d, pred2d),
                              (np.int64(n_pixels), np.int64(tile_pixels), np.int32(vec4)),
                              (table_keys, table_counts, np.int32(cap_log2), status))
        return _compact(cp, table_keys, table_counts, cap_log2, status)


def _new_tables(cp, n_images: int, cap_log2: int):
    """Empty per-image hash tables and zero status words (one init kernel)."""
    cap = 1 << cap_log2
    table_keys = cp.empty((n_images, cap), dtype=cp.uint64)
    table_counts = cp.empty((n_images, cap), dtype=cp.uint64)
    status = cp.empty(n_images, dtype=cp.int32)
    if n_images:
        n_slots = n_images * cap
        compiled_kernel("init_pair_tables")(
            (min(-(-n_slots // BLOCK_THREADS), 4096),), (BLOCK_THREADS,),
            (table_keys, table_counts, np.int64(n_slots), status, np.int64(n_images)))
    return table_keys, table_counts, status


def _launch_histogram(kernel, n_images, n_pixels, tile_pixels, maps, options, tables):
    """A histogram kernel over the batch, split into launches of at most MAX_GRID_Y images.
    ``maps`` are (B, ...) arrays sliced per launch, as are the tables' (B, ...) arrays."""
    table_keys, table_counts, cap_log2, status = tables
    n_tiles = -(-n_pixels // tile_pixels)
    for first in range(0, n_images, MAX_GRID_Y):
        last = min(first + MAX_GRID_Y, n_images)
        kernel((n_tiles, last - first), (BLOCK_THREADS,),
               (*(m[first:last] for m in maps), *options, table_keys[first:last],
                table_counts[first:last], cap_log2, status[first:last]))


def _compact(cp, table_keys, table_counts, cap_log2: int, status) -> PairTables:
    """Sorted pair tables from hash tables (compact_pair_tables)."""
    n_images = table_keys.shape[0]
    cap = 1 << cap_log2
    pair_gt = cp.empty((n_images, cap), dtype=cp.int32)
    pair_pred = cp.empty((n_images, cap), dtype=cp.int32)
    pair_count = cp.empty((n_images, cap), dtype=cp.int64)
    n_pairs = cp.empty(n_images, dtype=cp.int32)  # written by compact_pair_tables
    if n_images:
        scratch_keys = cp.empty((n_images, cap), dtype=cp.uint64)
        scratch_counts = cp.empty((n_images, cap), dtype=cp.uint64)
        compiled_kernel("compact_pair_tables")(
            (n_images,), (BLOCK_THREADS,),
            (table_keys, table_counts, np.int32(cap_log2), scratch_keys, scratch_counts,
             pair_gt, pair_pred, pair_count, n_pairs),
        )
    return PairTables(pair_gt, pair_pred, pair_count, n_pairs, status)


def pair_histogram_retrying(gt, pred, *, capacity: int = DEFAULT_CAPACITY, growth: int = 8,
                            **kwargs) -> PairTables:
    """:func:`pair_histogram_batch`, rerun with ``growth`` times the capacity while an image
    overflows. Synchronises with the device once per run to read the status."""
    cp = _cupy()
    while True:
        tables = pair_histogram_batch(gt, pred, capacity=capacity, **kwargs)
        overflowed = bool(cp.any(tables.status & STATUS_PAIR_TABLE_OVERFLOW).get())
        if not overflowed or capacity >= MAX_CAPACITY:
            return tables
        capacity = min(MAX_CAPACITY, capacity * growth)


def match_batch(
    pairs: PairTables,
    gt_segments: SegmentTables,
    pred_segments: SegmentTables,
    n_categories: int,
    *,
    stream=None,
) -> MatchPartials:
    """Per-image, per-category tp, fp, fn and IoU sums of a batch, on the device (SPEC §2.3-2.5).

    Parameters
    ----------
    pairs : PairTables
        From :func:`pair_histogram_batch` (sorted rows).
    gt_segments : SegmentTables
        Padded (B, S_gt) ``id``, ``category`` (dense index, -1 = unknown), ``iscrowd``, ``area``
        (float64 JSON areas, or None to use pixel counts) and ``count`` (B,). Order within a row
        is segments_info order: it decides which crowd segment of a category counts (the last).
    pred_segments : SegmentTables
        Padded (B, S_pred) ``id``, ``category``, ``count``; areas are the pixel counts.
    n_categories : int
        Number of dense categories C.

    Device arrays are used in place (NumPy arrays are copied, blocking the host).

    Returns
    -------
    MatchPartials of CuPy arrays: ``tp``, ``fp``, ``fn`` (B, C) int64, ``iou_sum`` (B, C) float64
    (each image's IoUs added in ascending (gt_id, pred_id) order), ``pair_iou``, ``pair_matched``
    (B, cap), and ``status`` = the pair tables' status plus the matcher's bits (unlisted pred id,
    pred segment absent from the map, unknown pred category: the reference's KeyErrors).
    Add the rows of ``iou_sum`` in image order with a sequential loop for fastpq's default float
    order (SPEC §2.9). Nothing is synchronised.
    """
    cp = _cupy()
    device_id = _device_id(cp, pairs.gt)
    with cp.cuda.Device(device_id), _stream(cp, stream, device_id, (pairs.gt,)):
        def table(value, dtype):
            return cp.ascontiguousarray(_as_device_array(cp, value, dtype))

        pair_gt = table(pairs.gt, cp.int32)
        pair_pred = table(pairs.pred, cp.int32)
        pair_count = table(pairs.count, cp.int64)
        n_pairs = table(pairs.n_pairs, cp.int32)
        status = table(pairs.status, cp.int32).copy()
        n_images, cap = pair_gt.shape
        cap_log2 = cap.bit_length() - 1
        if cap != 1 << cap_log2:
            raise ValueError(f"pair tables must have a power-of-two capacity, got {cap}")

        g_id = table(gt_segments.id, cp.int32)
        g_category = table(gt_segments.category, cp.int32)
        g_iscrowd = table(gt_segments.iscrowd, cp.int32)
        g_count = table(gt_segments.count, cp.int32)
        from_pixels = gt_segments.area is None
        g_area = cp.zeros(1, cp.float64) if from_pixels else table(gt_segments.area, cp.float64)
        q_id = table(pred_segments.id, cp.int32)
        q_category = table(pred_segments.category, cp.int32)
        q_count = table(pred_segments.count, cp.int32)
        s_gt, s_pred = g_id.shape[-1], q_id.shape[-1]
        expected = [
            ("pair pred ids", pair_pred, (n_images, cap)),
            ("pair counts", pair_count, (n_images, cap)),
            ("pair table sizes", n_pairs, (n_images,)), ("status", status, (n_images,)),
            ("gt ids", g_id, (n_images, s_gt)), ("gt categories", g_category, (n_images, s_gt)),
            ("gt iscrowd", g_iscrowd, (n_images, s_gt)),
            ("gt segment counts", g_count, (n_images,)),
            ("pred ids", q_id, (n_images, s_pred)),
            ("pred categories", q_category, (n_images, s_pred)),
            ("pred segment counts", q_count, (n_images,)),
        ]
        if not from_pixels:
            expected.append(("gt areas", g_area, (n_images, s_gt)))
        for name, array, shape in expected:
            if array.shape != shape:
                raise ValueError(f"{name} must have shape {shape} for {n_images} images with "
                                 f"pair capacity {cap}, got {tuple(array.shape)}")

        tp = cp.empty((n_images, n_categories), dtype=cp.int64)
        fp = cp.empty_like(tp)
        fn = cp.empty_like(tp)
        iou_sum = cp.empty((n_images, n_categories), dtype=cp.float64)
        pair_iou = cp.empty((n_images, cap), dtype=cp.float64)
        pair_matched = cp.empty((n_images, cap), dtype=cp.int32)
        if n_images:
            compiled_kernel("match_segments")(
                (n_images,), (MATCH_THREADS,),
                (pair_gt, pair_pred, pair_count, n_pairs, np.int32(cap_log2),
                 g_id, g_category, g_iscrowd, g_area, g_count, np.int32(s_gt),
                 np.int32(from_pixels),
                 q_id, q_category, q_count, np.int32(s_pred), np.int32(n_categories),
                 cp.empty((n_images, cap), dtype=cp.int32),  # pair_gt_segment
                 cp.empty((n_images, cap), dtype=cp.int32),  # pair_pred_segment
                 pair_iou, pair_matched,
                 cp.empty((n_images, s_gt), dtype=cp.int64),  # gt_pixels
                 cp.empty((n_images, s_gt), dtype=cp.int32),  # gt_state
                 cp.empty((n_images, s_pred), dtype=cp.int64),  # pred_area
                 cp.empty((n_images, s_pred), dtype=cp.int64),  # pred_void
                 cp.empty((n_images, s_pred), dtype=cp.int64),  # pred_crowd
                 cp.empty((n_images, s_pred), dtype=cp.int32),  # pred_matched
                 tp, fp, fn, iou_sum, status),
            )
    return MatchPartials(tp, fp, fn, iou_sum, pair_iou, pair_matched, status)


def accumulate_partials(partials: MatchPartials, state, *, update: int, stream=None) -> None:
    """Add a batch's per-image partials into running per-category sums, on the device.

    Parameters
    ----------
    partials : MatchPartials
        From :func:`match_batch`: ``tp``, ``fp``, ``fn`` (B, C) int64, ``iou_sum`` (B, C) float64
        and ``status`` (B,) int32 are read.
    state : tuple of CuPy arrays
        ``(tp, fp, fn, iou, iou_err, record)``: (C,) int64 counts, (C,) float64 double-double IoU
        sums, and the (6,) int64 record of refused batches (see ``kernels/accumulate.cu``);
        updated in place.
    update : int
        The number of this update, kept in ``record`` when the batch is refused.

    Rows are added in image order with :meth:`fastpq.PQAccumulator.add_image`'s arithmetic; a
    batch with any status bit set adds nothing and is counted in ``record``.
    Nothing is synchronised.
    """
    cp = _cupy()
    tp, fp, fn, iou, iou_err, record = state
    device_id = tp.device.id
    with cp.cuda.Device(device_id), _stream(cp, stream, device_id, ()):
        n_images, n_categories = partials.tp.shape
        if tp.shape != (n_categories,):
            raise ValueError(f"the state has {tp.shape[0]} categories, the partials "
                             f"{n_categories}")
        batch = [cp.ascontiguousarray(a) for a in (partials.tp, partials.fp, partials.fn)]
        batch_iou = cp.ascontiguousarray(partials.iou_sum)
        status = cp.ascontiguousarray(partials.status)
        n_blocks = -(-n_categories // ACCUMULATE_THREADS)
        compiled_kernel("accumulate_partials", accumulate_source)(
            (n_blocks,), (ACCUMULATE_THREADS,),
            (*batch, batch_iou, status, np.int32(n_images), np.int32(n_categories),
             np.int64(update), tp, fp, fn, iou, iou_err, record),
        )


def pair_histogram_encoded(gt, pred, *, mode: int, lut, inst_bits: int, void_label: int,
                           divisor: int = 1, capacity: int = DEFAULT_CAPACITY,
                           tile_pixels: int = DEFAULT_TILE_PIXELS, stream=None) -> PairTables:
    """:func:`pair_histogram_batch` of the encoded ids of a batch of pairs-convention
    ((B, H, W, 2) [category, instance]) or divisor-convention ((B, H, W) ids) maps, in one pass
    (``kernels/encode.cu``): each pixel is encoded as it is read and no id map is written.
    ``mode`` is :data:`~fastpq.kernels.gpu_layout.MODE_PAIRS` or ``MODE_DIVISOR``, ``lut`` the
    device category lookup table (:func:`fastpq.gpu.device_state.category_lut`). The encoding's
    status bits are in the tables' ``status``. Nothing is synchronised."""
    cp = _cupy()
    tile_pixels = check_tile_pixels(tile_pixels)
    cap_log2 = capacity_log2(capacity)
    device_id = _device_id(cp, gt)
    with cp.cuda.Device(device_id), _stream(cp, stream, device_id, (gt, pred)):
        g, q = _as_device_array(cp, gt), _as_device_array(cp, pred)
        if g.shape != q.shape:
            raise ValueError(f"gt and pred maps must have the same shape, got {tuple(g.shape)} "
                             f"and {tuple(q.shape)}")
        shape = g.shape[:-1] if mode == MODE_PAIRS else g.shape
        n_images = shape[0]
        n_pixels = int(np.prod(shape[1:], dtype=np.int64))
        g2d, q2d = batch_label_maps(g.reshape(n_images, -1), q.reshape(n_images, -1), cp)
        table_keys, table_counts, status = _new_tables(cp, n_images, cap_log2)
        if n_images and n_pixels:
            histogram = compiled_kernel("pair_histogram_encoded_i32" if g2d.dtype == cp.int32
                                        else "pair_histogram_encoded_i64", encoded_module_source)
            _launch_histogram(histogram, n_images, n_pixels, tile_pixels, (g2d, q2d),
                              (np.int64(n_pixels), np.int64(tile_pixels), np.int32(mode),
                               np.int64(divisor), np.int64(void_label), lut,
                               np.int64(lut.size), np.int32(inst_bits)),
                              (table_keys, table_counts, np.int32(cap_log2), status))
        return _compact(cp, table_keys, table_counts, cap_log2, status)


def derive_segment_tables(pairs: PairTables, *, inst_bits: int, is_thing, crowd_rule: bool,
                          stream=None) -> tuple[SegmentTables, SegmentTables]:
    """GT and predicted SegmentTables of encoded maps, from their sorted pair tables
    (``derive_segment_tables`` in ``kernels/encode.cu``). Nothing is synchronised."""
    cp = _cupy()
    device_id = pairs.gt.device.id
    with cp.cuda.Device(device_id), _stream(cp, stream, device_id, ()):
        n_images, cap = pairs.gt.shape
        tables = [cp.empty((n_images, cap), cp.int32) for _ in range(6)]
        n_gt, n_pred = cp.empty(n_images, cp.int32), cp.empty(n_images, cp.int32)
        if n_images:
            compiled_kernel("derive_segment_tables", encoded_module_source)(
                (n_images,), (MATCH_THREADS,),
                (pairs.gt, pairs.pred, pairs.n_pairs, np.int32(cap.bit_length() - 1),
                 np.int32(inst_bits), is_thing, np.int32(bool(crowd_rule)), tables[0],
                 tables[1], tables[2], tables[3], n_gt, tables[4], tables[5], n_pred))
    return (SegmentTables(tables[1], tables[2], tables[3], None, n_gt),
            SegmentTables(tables[4], tables[5], None, None, n_pred))


class _PinnedStaging:
    """Page-locked host buffers for host-to-device copies that never wait for the device.

    A copy from pageable memory may block the host until the stream is idle; from pinned memory
    it is queued. A buffer is reused only once the copy that last read it has completed (an event
    query, which does not block), else another one is taken.
    """

    def __init__(self):
        self._buffers = []  # [pinned memory, nbytes, event or None]
        self._lock = threading.Lock()

    def upload(self, cp, host: np.ndarray, stream):
        host = np.ascontiguousarray(host)
        device = cp.empty(host.shape, host.dtype)
        if host.nbytes == 0:
            return device
        with self._lock:
            return self._upload(cp, host, device, stream)

    def _upload(self, cp, host, device, stream):
        for entry in self._buffers:
            if entry[1] >= host.nbytes and (entry[2] is None or entry[2].done):
                break
        else:
            nbytes = max(host.nbytes, 1 << 16)
            entry = [cp.cuda.alloc_pinned_memory(nbytes), nbytes, None]
            self._buffers.append(entry)
        staged = np.ndarray(host.nbytes, np.uint8, buffer=entry[0])  # as cupyx.empty_pinned
        staged[:] = host.view(np.uint8).reshape(-1)
        device.data.copy_from_host_async(entry[0].ptr, host.nbytes, stream)
        event = cp.cuda.Event(block=False, disable_timing=True)
        event.record(stream)
        entry[2] = event
        return device


class CupyBackend:
    """The device half of :class:`fastpq.PanopticQuality` on CuPy: one device and one stream.

    :mod:`fastpq.gpu.device_state` drives it; :func:`fastpq.gpu.device_state.device_backend`
    picks it for CUDA torch tensors and CuPy arrays. Every method queues work and returns; only
    :meth:`download` synchronises (with this stream).
    ``with backend:`` makes the device and stream current.

    Parameters
    ----------
    device_id : int
    stream : CuPy stream, torch stream or cudaStream_t, optional
        Default: torch's current stream when ``maps`` holds torch tensors, else CuPy's current
        stream.
    maps : sequence
        The label maps of the update (they pick the default stream).
    """

    def __init__(self, device_id: int, stream=None, maps=()):
        cp = _cupy()
        self.xp = cp
        self.device_id = int(device_id)
        self.stream = _stream(cp, stream, self.device_id, tuple(maps))
        self.key = ("cuda", self.device_id)
        self._contexts = []

    @classmethod
    def for_maps(cls, maps) -> "CupyBackend":
        """The backend of the device the first map lives on."""
        cp = _cupy()
        return cls(_device_id(cp, maps[0]), maps=maps)

    def __enter__(self):
        device = self.xp.cuda.Device(self.device_id)
        device.__enter__()
        self.stream.__enter__()
        self._contexts.append(device)
        return self

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self._contexts.pop().__exit__(*exc)

    def as_array(self, value):
        """A CuPy view of a CuPy array or CUDA torch tensor (no copy)."""
        return _as_device_array(self.xp, value)

    def histogram(self, gt, pred, capacity: int) -> PairTables:
        return pair_histogram_batch(gt, pred, capacity=capacity, stream=self.stream)

    def match(self, pairs, gt_segments, pred_segments, n_categories: int) -> MatchPartials:
        return match_batch(pairs, gt_segments, pred_segments, n_categories, stream=self.stream)

    def accumulate(self, partials, state, update: int) -> None:
        accumulate_partials(partials, state, update=update, stream=self.stream)

    def histogram_encoded(self, gt, pred, capacity: int, **encoding) -> PairTables:
        return pair_histogram_encoded(gt, pred, capacity=capacity, stream=self.stream,
                                      **encoding)

    def derive_tables(self, pairs, **options):
        return derive_segment_tables(pairs, stream=self.stream, **options)

    def upload(self, host: np.ndarray):
        """A device copy of a host array, queued on the stream from pinned memory."""
        staging = _STAGING.setdefault(self.device_id, _PinnedStaging())
        with self.xp.cuda.Device(self.device_id):
            return staging.upload(self.xp, host, self.stream)

    def download(self, array) -> np.ndarray:
        """A host copy (synchronises with the stream)."""
        return array.get(stream=self.stream)

    def marker(self):
        """An event after the work queued so far (see :meth:`wait_for`)."""
        event = self.xp.cuda.Event(block=False, disable_timing=True)
        event.record(self.stream)
        return event

    def wait_for(self, marker) -> None:
        """Make this stream wait (on the device, not the host) for another stream's marker."""
        if marker is not None:
            self.stream.wait_event(marker)


_STAGING: dict = {}

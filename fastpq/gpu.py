"""CuPy front door of the CUDA kernels in ``kernels/pairs.cu``.

``pair_histogram_batch`` turns a batch of (gt, pred) label maps into sorted per-image pair tables;
``match_batch`` turns pair tables and segment tables into per-image, per-category tp/fp/fn and
IoU partial sums (SPEC §2.3-2.5). Both take device arrays (CuPy arrays, or CUDA torch tensors
through DLPack, without a copy), queue their kernels on one stream and return device arrays: they
never wait for the device (no ``.get()``, no ``int()`` of a device value), so a training loop can
call them every step. Reading results, and acting on the ``status`` bits (a pair table that
overflowed, ids out of range), happens where the caller synchronises anyway, e.g. at
``compute()``; :func:`pair_histogram_retrying` is the one function here that synchronises.

CuPy is imported on first use; without it these functions raise ImportError naming the extra to
install (``pip install fastpq[gpu]``). The CUDA source is compiled by NVRTC on first use and
cached per device.
"""

from __future__ import annotations

import sys
import threading
from importlib import resources

import numpy as np

from fastpq.kernels.pairs_cuda import (
    BLOCK_THREADS,
    DEFAULT_CAPACITY,
    DEFAULT_TILE_PIXELS,
    EMPTY_KEY,
    MATCH_THREADS,
    MAX_CAPACITY,
    MAX_GRID_Y,
    STATUS_PAIR_TABLE_OVERFLOW,
    MatchPartials,
    PairTables,
    SegmentTables,
    batch_label_maps,
    capacity_log2,
    check_tile_pixels,
    nvrtc_options,
    uses_vec4,
)

__all__ = [
    "MatchPartials", "PairTables", "SegmentTables", "cuda_source", "match_batch",
    "pair_histogram_batch", "pair_histogram_retrying",
]

_INSTALL_HINT = "fastpq's GPU path needs CuPy: pip install fastpq[gpu]"
_MODULES: dict = {}
_MODULES_LOCK = threading.Lock()


def cuda_source() -> str:
    """The text of ``pairs.cu``, shipped as package data of ``fastpq.kernels``."""
    return resources.files("fastpq.kernels").joinpath("pairs.cu").read_text(encoding="utf-8")


def _cupy():
    try:
        import cupy
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return cupy


def _kernel(cp, name: str):
    """A kernel of pairs.cu, compiled once per device (RawModule, NVRTC)."""
    key = (cp.cuda.Device().id, nvrtc_options())
    module = _MODULES.get(key)
    if module is None:
        with _MODULES_LOCK:
            module = _MODULES.get(key)
            if module is None:
                module = cp.RawModule(code=cuda_source(), options=key[1])
                _MODULES[key] = module
    return module.get_function(name)


def _is_torch_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _device_id(cp, value) -> int:
    if isinstance(value, cp.ndarray):
        return value.device.id
    if _is_torch_tensor(value):
        if not value.is_cuda:
            raise TypeError(
                "fastpq.gpu needs CUDA tensors, got a tensor on the CPU; move it with .cuda() or "
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
        if any(_is_torch_tensor(v) for v in values):
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
    elif _is_torch_tensor(value):
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
    PairTables of CuPy arrays (see :class:`fastpq.kernels.pairs_cuda.PairTables`): ``gt``,
    ``pred`` (B, cap) int32, ``count`` (B, cap) int64, ``n_pairs`` (B,) int32, ``status`` (B,)
    int32; rows sorted by (gt_id, pred_id). Nothing is synchronised.
    """
    cp = _cupy()
    tile_pixels = check_tile_pixels(tile_pixels)
    cap_log2 = capacity_log2(capacity)
    cap = 1 << cap_log2
    device_id = _device_id(cp, gt)
    with cp.cuda.Device(device_id), _stream(cp, stream, device_id, (gt, pred)):
        gt2d, pred2d = batch_label_maps(_as_device_array(cp, gt), _as_device_array(cp, pred), cp)
        n_images, n_pixels = gt2d.shape
        aligned = gt2d.data.ptr % 16 == 0 and pred2d.data.ptr % 16 == 0
        vec4 = uses_vec4(gt2d, pred2d, tile_pixels, aligned)
        table_keys = cp.full((n_images, cap), EMPTY_KEY, dtype=cp.uint64)
        table_counts = cp.zeros((n_images, cap), dtype=cp.uint64)
        status = cp.zeros(n_images, dtype=cp.int32)
        if n_images and n_pixels:
            histogram = _kernel(cp, "pair_histogram_i32" if gt2d.dtype == cp.int32 else
                                "pair_histogram_i64")
            n_tiles = -(-n_pixels // tile_pixels)
            for first in range(0, n_images, MAX_GRID_Y):
                last = min(first + MAX_GRID_Y, n_images)
                histogram(
                    (n_tiles, last - first), (BLOCK_THREADS,),
                    (gt2d[first:last], pred2d[first:last], np.int64(n_pixels),
                     np.int64(tile_pixels), np.int32(vec4), table_keys[first:last],
                     table_counts[first:last], np.int32(cap_log2), status[first:last]),
                )
        pair_gt = cp.empty((n_images, cap), dtype=cp.int32)
        pair_pred = cp.empty((n_images, cap), dtype=cp.int32)
        pair_count = cp.empty((n_images, cap), dtype=cp.int64)
        n_pairs = cp.zeros(n_images, dtype=cp.int32)
        if n_images:
            scratch_keys = cp.empty((n_images, cap), dtype=cp.uint64)
            scratch_counts = cp.empty((n_images, cap), dtype=cp.uint64)
            _kernel(cp, "compact_pair_tables")(
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
            _kernel(cp, "match_segments")(
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

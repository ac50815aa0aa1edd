"""One-pass (gt id, pred id) pair histogram of two label maps, on the CPU with Numba.

The reference builds ``gt * 2**24 + pred`` for every pixel and sorts it with ``np.unique``. Here
each map is read once into the pair table of `fastpq.kernels.pair_table`; this module holds its
row sources for label maps given as arrays: integer id maps (COCO ids, and the divisor
convention's ``category * divisor + instance``), (H, W, 3) uint8 RGB maps and (H, W, 2)
[category, instance] maps.

All functions are pure: arrays in, arrays out. Ids are int64 on output; the maps may be any
integer dtype. The pair table is sorted by (gt, pred), the order in which the reference visits
pairs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .pair_table import DONE, INITIAL_CAPACITY, grow_and_retry, pair_table

__all__ = ["INITIAL_CAPACITY", "OUTSIDE_CATINST_RANGE", "histogram_catinst", "histogram_ids",
           "histogram_rgb", "marginals", "pair_counts", "pair_counts_catinst", "pair_counts_rgb"]

#: status of the [category, instance] kernel: a category or instance outside [0, 2**31)
OUTSIDE_CATINST_RANGE = -1


@njit(nogil=True, cache=True, inline="always")
def _id_rows(y, gt, pred, rows):
    """Row source of 2-D id maps: the maps' own rows, read in place."""
    return DONE, gt[y], pred[y], rows


@njit(nogil=True, cache=True, inline="always")
def _rgb_rows(y, gt, pred, rows):
    """Row source of (H, W, 3) uint8 maps: ids R + 256 G + 65536 B, into two int32 rows."""
    row_g, row_p = rows
    for x in range(row_g.shape[0]):
        row_g[x] = (np.int32(gt[y, x, 0]) | (np.int32(gt[y, x, 1]) << 8)
                    | (np.int32(gt[y, x, 2]) << 16))
        row_p[x] = (np.int32(pred[y, x, 0]) | (np.int32(pred[y, x, 1]) << 8)
                    | (np.int32(pred[y, x, 2]) << 16))
    return DONE, row_g, row_p, rows


@njit(nogil=True, cache=True, inline="always")
def _catinst_rows(y, gt, pred, rows):
    """Row source of (H, W, 2) [category, instance] maps: ids category << 32 | instance, into two
    int64 rows; `OUTSIDE_CATINST_RANGE` for a value outside [0, 2**31)."""
    row_g, row_p = rows
    outside = np.int64(0)
    for x in range(row_g.shape[0]):
        gc, gi = np.int64(gt[y, x, 0]), np.int64(gt[y, x, 1])
        pc, pi = np.int64(pred[y, x, 0]), np.int64(pred[y, x, 1])
        outside |= gc | gi | pc | pi
        row_g[x] = (gc << 32) | gi
        row_p[x] = (pc << 32) | pi
    if outside & ~np.int64(0x7FFFFFFF):
        return OUTSIDE_CATINST_RANGE, row_g, row_p, rows
    return DONE, row_g, row_p, rows


@njit(nogil=True, cache=True)
def histogram_ids(gt, pred, capacity):
    """`pair_table` of two 2-D integer id maps: (status, gt_ids, pred_ids, counts)."""
    height, width = gt.shape
    return pair_table(_id_rows, gt, pred, (), height, width, capacity)


@njit(nogil=True, cache=True)
def histogram_rgb(gt, pred, capacity):
    """`pair_table` of two (H, W, 3) uint8 RGB maps: (status, gt_ids, pred_ids, counts)."""
    height, width = gt.shape[0], gt.shape[1]
    rows = (np.empty(width, np.int32), np.empty(width, np.int32))
    return pair_table(_rgb_rows, gt, pred, rows, height, width, capacity)


@njit(nogil=True, cache=True)
def histogram_catinst(gt, pred, capacity):
    """`pair_table` of two (H, W, 2) [category, instance] maps: (status, gt_ids, pred_ids,
    counts); status `OUTSIDE_CATINST_RANGE` for a value outside [0, 2**31)."""
    height, width = gt.shape[0], gt.shape[1]
    rows = (np.empty(width, np.int64), np.empty(width, np.int64))
    return pair_table(_catinst_rows, gt, pred, rows, height, width, capacity)


def pair_counts(gt: np.ndarray, pred: np.ndarray, capacity: int = INITIAL_CAPACITY):
    """Every distinct (gt id, pred id) pair of two equal-shape 2-D integer maps, with its count.

    Parameters
    ----------
    gt, pred : ndarray, shape (H, W), any integer dtype
        Label maps (strided views are read in place, never copied).
    capacity : int
        Initial hash-table size; it grows (outside the hot loop) when more pairs appear.

    Returns
    -------
    gt_ids, pred_ids, counts : ndarray of int64, shape (K,)
        Sorted by (gt_id, pred_id); counts sum to H * W.
    """
    _, g, p, c = grow_and_retry(histogram_ids, gt, pred, capacity=capacity)
    return g, p, c


def pair_counts_rgb(gt: np.ndarray, pred: np.ndarray, capacity: int = INITIAL_CAPACITY):
    """As :func:`pair_counts` for (H, W, 3) uint8 COCO RGB maps (id = R + 256 G + 256² B)."""
    _, g, p, c = grow_and_retry(histogram_rgb, gt, pred, capacity=capacity)
    return g, p, c


def pair_counts_catinst(gt: np.ndarray, pred: np.ndarray, capacity: int = INITIAL_CAPACITY):
    """As :func:`pair_counts` for (H, W, 2) [category, instance] maps; ids are
    ``category << 32 | instance``.

    Raises
    ------
    ValueError
        A category or instance outside [0, 2**31).
    """
    status, g, p, c = grow_and_retry(histogram_catinst, gt, pred, capacity=capacity)
    if status == OUTSIDE_CATINST_RANGE:
        raise ValueError("a category or instance outside [0, 2**31)")
    return g, p, c


@njit(nogil=True, cache=True)
def marginals(ids, counts):
    """Areas per distinct id from one side of a pair table: (unique ids ascending, areas)."""
    order = np.argsort(ids, kind="mergesort")
    uniq = np.empty(ids.size, np.int64)
    areas = np.zeros(ids.size, np.int64)
    n = 0
    for k in order:
        if n == 0 or ids[k] != uniq[n - 1]:
            uniq[n] = ids[k]
            n += 1
        areas[n - 1] += counts[k]
    return uniq[:n].copy(), areas[:n].copy()

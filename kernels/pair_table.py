"""The pair-table skeleton every CPU pair histogram shares: a (gt id, pred id) -> count table
filled row by row, and the one policy that grows it when it fills up.

A histogram variant only says how to produce its next pair of rows of ids (a row source, see
`pair_table`); the skeleton owns everything else: the open-addressing table and its allocation,
the scan of a row pair (change marks, then one table update per run of equal pairs), the final
sorted table, and `grow_and_retry`. The id-map, RGB and [category, instance] variants of
`fastpq.kernels.pairs` and the PNG scanline variant of `fastpq.kernels.png` are row sources.

Panoptic maps have long runs and few distinct pairs, so a run of equal (gt, pred) pixels costs one
comparison per pixel and only a change of pair touches the table, which stays in cache.

Pure: arrays in, arrays out. The table holds int64 ids; a row may be of any integer dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

#: Initial table size (slots, a power of two). `grow_and_retry` quadruples it when it fills up.
INITIAL_CAPACITY = 1 << 10

#: Status of a pair-table kernel: the table is complete.
DONE = 1
#: Status of a pair-table kernel: more than ``capacity // 2`` distinct pairs; retry larger.
TABLE_FULL = 0
# Negative statuses are the row source's own failures (a value out of range, a bad PNG row).

#: The empty int64 array of a table with no pairs, or of a failed kernel's outputs.
NO_PAIRS = np.zeros(0, np.int64)

_MUL_G = np.uint64(0x9E3779B97F4A7C15)
_MUL_P = np.uint64(0xC2B2AE3D27D4EB4F)


@njit(nogil=True, cache=True, inline="always")
def _insert(slots, g, p, n, mask):
    """Add n to the count of (g, p) in an open-addressing table of rows [g, p, count];
    a row with count 0 is free. Returns 1 when a new row was taken, else 0."""
    h = np.uint64(g) * _MUL_G ^ np.uint64(p) * _MUL_P
    s = np.int64((h >> np.uint64(29)) & np.uint64(mask))
    while True:
        if slots[s, 2] == 0:
            slots[s, 0] = g
            slots[s, 1] = p
            slots[s, 2] = n
            return 1
        if slots[s, 0] == g and slots[s, 1] == p:
            slots[s, 2] += n
            return 0
        s = (s + 1) & mask


@njit(nogil=True, cache=True)
def _sorted_pairs(slots):
    """The used rows of the table as (gt ids, pred ids, counts), sorted by (gt, pred)."""
    rows = np.flatnonzero(slots[:, 2])
    g = slots[rows, 0]
    p = slots[rows, 1]
    c = slots[rows, 2]
    # sort by (g, p): stable sort on the minor key, then on the major key
    order = np.argsort(p, kind="mergesort")
    g, p, c = g[order], p[order], c[order]
    order = np.argsort(g, kind="mergesort")
    return g[order], p[order], c[order]


@njit(nogil=True, cache=True, inline="always")
def _scan_row(row_g, row_p, change, words, run_g, run_p, run, slots, mask, n_used):
    """Feed one row pair to the table. A branch-free (vectorised) pass marks where the pair
    changes; the marks are then read eight at a time as one 64-bit word, so flat stretches cost
    no per-pixel branch. Returns the open run (gt id, pred id, length) and the rows used; stops
    early once more than half the slots are used."""
    w = row_g.shape[0]
    change[0] = (row_g[0] != run_g) | (row_p[0] != run_p)
    for j in range(1, w):
        change[j] = (row_g[j] != row_g[j - 1]) | (row_p[j] != row_p[j - 1])
    pos = 0
    limit = (mask + 1) // 2
    for k in range(words.shape[0]):
        marks = words[k]
        while marks != 0:
            # byte index of the lowest mark (little-endian words)
            j = k * 8 + (trailing_zeros(marks) >> 3)
            marks &= marks - np.uint64(1)
            run += j - pos
            if run > 0:
                n_used += _insert(slots, np.int64(run_g), np.int64(run_p), run, mask)
                if n_used > limit:
                    return run_g, run_p, run, n_used
            run_g = row_g[j]
            run_p = row_p[j]
            run = 0
            pos = j
    return run_g, run_p, run + w - pos, n_used


@njit(nogil=True, cache=True, inline="always")
def pair_table(next_rows, gt, pred, rows, height, width, capacity):
    """The (gt id, pred id) pair table of two maps given row by row by a row source.

    Inlined into each variant (``next_rows`` is then a known function, inlined in turn), so the
    row source costs no call per row.

    Parameters
    ----------
    next_rows : Numba function ``(y, gt, pred, rows) -> (status, gt_row, pred_row, rows)``
        Produces row ``y`` of both maps (``y`` = 0, 1, ... in order) as two 1-D integer arrays
        of length ``width`` (views or scratch, read before the next call), with status `DONE`,
        or a negative status of its own that ends the scan. ``rows`` is its state (scratch
        arrays, which buffer holds the last row), returned updated.
    gt, pred
        The maps in the row source's form, passed to it unchanged.
    rows
        The row source's initial state.
    height, width : int
        Size of the maps.
    capacity : int
        Table size, a power of two.

    Returns
    -------
    status : int
        `DONE`; `TABLE_FULL` when more than ``capacity // 2`` distinct pairs appeared (call again
        with a larger capacity: `grow_and_retry`); or the row source's negative status.
    gt_ids, pred_ids, counts : ndarray of int64, shape (K,)
        Sorted by (gt_id, pred_id); counts sum to ``height * width``. Empty unless `DONE`.
    """
    if height * width == 0:
        return DONE, NO_PAIRS, NO_PAIRS, NO_PAIRS
    slots = np.zeros((capacity, 3), np.int64)
    mask = capacity - 1
    change = np.zeros((width + 7) // 8 * 8, np.uint8)
    words = change.view(np.uint64)
    run, n_used = 0, 0
    for y in range(height):
        status, row_g, row_p, rows = next_rows(y, gt, pred, rows)
        if status != DONE:
            return status, NO_PAIRS, NO_PAIRS, NO_PAIRS
        if y == 0:  # the open run starts empty, keyed in the rows' own dtype
            run_g, run_p = row_g[0], row_p[0]
        run_g, run_p, run, n_used = _scan_row(row_g, row_p, change, words, run_g, run_p, run,
                                              slots, mask, n_used)
        if n_used > capacity // 2:
            return TABLE_FULL, NO_PAIRS, NO_PAIRS, NO_PAIRS
    n_used += _insert(slots, np.int64(run_g), np.int64(run_p), run, mask)
    if n_used > capacity // 2:
        return TABLE_FULL, NO_PAIRS, NO_PAIRS, NO_PAIRS
    g, p, c = _sorted_pairs(slots)
    return DONE, g, p, c


def grow_and_retry(kernel, *args, capacity: int = INITIAL_CAPACITY):
    """``kernel(*args, capacity)``, called again with four times the capacity for as long as it
    returns `TABLE_FULL`.

    Parameters
    ----------
    kernel : callable
        A pair-table kernel whose last parameter is the table capacity and whose first output is
        its status (`pair_table`'s).
    *args
        Its other arguments.
    capacity : int
        The first capacity tried, a power of two.

    Returns
    -------
    tuple
        The kernel's outputs from the first call that did not fill its table: status `DONE` or
        the row source's negative status, then the tables.
    """
    while True:
        outputs = kernel(*args, capacity)
        if outputs[0] != TABLE_FULL:
            return outputs
        capacity *= 4

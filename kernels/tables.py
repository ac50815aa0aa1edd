"""Segment tables of maps whose ids encode (category, instance), from their pair table.

For the pairs and divisor conventions the segments are the distinct ids of each side. This does,
in one compiled pass over the (few hundred) pairs, what ``fastpq.core.inputs.prepare_encoded`` would
otherwise do in a dozen NumPy calls: map void ids to 0 and the others to ``id + 1`` (void ids then
merge), re-sort the pairs, and look up each segment's dense category. Pure: arrays in, arrays out;
problems come back as a status code for the caller to turn into its error message.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: status codes of :func:`encoded_tables` (the order in which the checks run)
OK = 0
GT_NEGATIVE = 1
PRED_NEGATIVE = 2
GT_TOO_LARGE = 3
PRED_TOO_LARGE = 4
GT_UNKNOWN_CATEGORY = 5
PRED_UNKNOWN_CATEGORY = 6

#: ids at or beyond this are refused (the +1 shift must not overflow int64 arithmetic)
ID_LIMIT = 1 << 62

_NONE = np.zeros(0, np.int64)
_NO_FLAGS = np.zeros(0, np.bool_)


@njit(nogil=True, cache=True, inline="always")
def _split(ids, shift, divisor):
    if shift:
        return ids >> 32, ids & 0xFFFFFFFF
    return ids // divisor, ids % divisor


@njit(nogil=True, cache=True)
def _dense(ids, shift, divisor, sorted_categories, order):
    """Dense category of each (shifted, non-zero) id; -1 where the category is unknown."""
    out = np.empty(ids.size, np.int64)
    category, _ = _split(ids - 1, shift, divisor)
    pos = np.searchsorted(sorted_categories, category)
    for k in range(ids.size):
        at = pos[k]
        if at < sorted_categories.size and sorted_categories[at] == category[k]:
            out[k] = order[at]
        else:
            out[k] = -1
    return out


@njit(nogil=True, cache=True)
def encoded_tables(g, p, c, shift, divisor, void, sorted_categories, order, is_thing,
                   crowd_rule):
    """Remapped pairs and both segment tables of one image.

    Parameters
    ----------
    g, p, c : int64 arrays, the pair table sorted by (g, p)
    shift : bool
        True: ids are ``category << 32 | instance`` (pairs); False: ``category * divisor +
        instance`` (divisor).
    void : int
        The void category.
    sorted_categories, order : int64 arrays
        Category ids ascending and their dense indices (``Categories.index_array()``).
    is_thing : bool array, per dense index
    crowd_rule : bool
        A thing GT segment with instance 0 is a crowd region.

    Returns
    -------
    status, bad, (mg, mp, mc), (gt_ids, gt_dense, gt_crowd), (pred_ids, pred_dense)
        ``status`` is OK or the first failed check; ``bad`` the offending id (for the unknown
        categories: the shifted id, whose category is unknown). Ids in the outputs are shifted:
        0 is void, any other id is the user's id + 1.
    """
    empty = (_NONE, _NONE, _NONE)
    if g.size and g[0] < 0:
        return GT_NEGATIVE, g[0], empty, (_NONE, _NONE, _NO_FLAGS), (_NONE, _NONE)
    if p.size and p.min() < 0:
        return PRED_NEGATIVE, p.min(), empty, (_NONE, _NONE, _NO_FLAGS), (_NONE, _NONE)
    if g.size and g[-1] >= ID_LIMIT:
        return GT_TOO_LARGE, g[-1], empty, (_NONE, _NONE, _NO_FLAGS), (_NONE, _NONE)
    if p.size and p.max() >= ID_LIMIT:
        return PRED_TOO_LARGE, p.max(), empty, (_NONE, _NONE, _NO_FLAGS), (_NONE, _NONE)

    n = g.size
    sg = np.empty(n, np.int64)
    sp = np.empty(n, np.int64)
    gc, _ = _split(g, shift, divisor)
    pc, _ = _split(p, shift, divisor)
    for k in range(n):
        sg[k] = 0 if gc[k] == void else g[k] + 1
        sp[k] = 0 if pc[k] == void else p[k] + 1
    # re-sort by (sg, sp): stable on the minor key, then on the major key; merge equal pairs
    o = np.argsort(sp, kind="mergesort")
    sg, sp, sc = sg[o], sp[o], c[o]
    o = np.argsort(sg, kind="mergesort")
    sg, sp, sc = sg[o], sp[o], sc[o]
    mg = np.empty(n, np.int64)
    mp = np.empty(n, np.int64)
    mc = np.empty(n, np.int64)
    m = 0
    for k in range(n):
        if m and mg[m - 1] == sg[k] and mp[m - 1] == sp[k]:
            mc[m - 1] += sc[k]
        else:
            mg[m], mp[m], mc[m] = sg[k], sp[k], sc[k]
            m += 1
    mg, mp, mc = mg[:m], mp[:m], mc[:m]

    gt_ids = np.unique(mg)
    if gt_ids.size and gt_ids[0] == 0:
        gt_ids = gt_ids[1:]
    pred_ids = np.unique(mp)
    if pred_ids.size and pred_ids[0] == 0:
        pred_ids = pred_ids[1:]
    gt_dense = _dense(gt_ids, shift, divisor, sorted_categories, order)
    for k in range(gt_ids.size):
        if gt_dense[k] < 0:
            return (GT_UNKNOWN_CATEGORY, gt_ids[k], empty, (_NONE, _NONE, _NO_FLAGS),
                    (_NONE, _NONE))
    pred_dense = _dense(pred_ids, shift, divisor, sorted_categories, order)
    for k in range(pred_ids.size):
        if pred_dense[k] < 0:
            return (PRED_UNKNOWN_CATEGORY, pred_ids[k], empty, (_NONE, _NONE, _NO_FLAGS),
                    (_NONE, _NONE))
    gt_crowd = np.zeros(gt_ids.size, np.bool_)
    if crowd_rule:
        _, instance = _split(gt_ids - 1, shift, divisor)
        for k in range(gt_ids.size):
            gt_crowd[k] = instance[k] == 0 and is_thing[gt_dense[k]]
    return OK, 0, (mg, mp, mc), (gt_ids, gt_dense, gt_crowd), (pred_ids, pred_dense)

"""Input adapters: array label maps in one of three conventions -> pair table + segment tables.

Conventions (chosen by what is passed):

* **coco** — (H, W) integer id maps or (H, W, 3) uint8 RGB maps (id = R + 256 G + 256² B),
  with ``segments_info`` lists (dicts with id, category_id, iscrowd) for each side. Id 0 is void.
* **pairs** — (H, W, 2) [category, instance] maps (torchmetrics' layout).
* **divisor** — one integer map, id = category × label_divisor + instance (Cityscapes/DeepLab).

In the last two, segment tables come from the ids: pixels of category ``void_label`` are void
(whatever their instance), and a thing pixel with instance 0 is a crowd region of its category
when ``thing_instance_zero == 'crowd'`` (the Cityscapes convention, the default), an ordinary
instance when it is ``'instance'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fastpq.core.arrays import (as_array, check_integer_map, is_rgb_map, is_torch_tensor, on_device,
                               rgb_to_ids, to_host)
from fastpq.core.categories import Categories
from fastpq.core.segments import COCO_ID_LIMIT, SegmentTable
from fastpq.core.validation import (Policy, check_id_range, check_same_size, check_segments,
                                    distinct_ids, segment_tables)
from fastpq.errors import InputError, SegmentError
from fastpq.kernels import pairs as pair_kernels
from fastpq.kernels import tables


@dataclass(frozen=True)
class Convention:
    """How label maps encode segments (see the module docstring)."""

    name: str  # 'coco', 'pairs' or 'divisor'
    label_divisor: int | None = None
    void_label: int = 0
    thing_instance_zero: str = "crowd"

    def __post_init__(self):
        if self.thing_instance_zero not in ("crowd", "instance"):
            raise InputError("thing_instance_zero must be 'crowd' or 'instance', "
                             f"not {self.thing_instance_zero!r}")
        if self.name == "divisor" and (self.label_divisor is None or self.label_divisor < 1):
            raise InputError(f"label_divisor must be a positive integer, not {self.label_divisor!r}")


@dataclass
class PreparedImage:
    """One image ready for the matcher."""

    pairs: tuple  # (gt_ids, pred_ids, counts), sorted by (gt, pred)
    gt: SegmentTable
    pred: SegmentTable
    #: maps the ids used in ``pairs``/tables back to the user's ids (None: identical); for pair
    #: maps an (S, 2) array of [category, instance] rows
    original_ids: Any = None


def host_maps(x, what: str):
    """An update's maps (one array or a list) with every GPU map copied to the host: one copy
    (and synchronisation) for a stacked batch, one per map for a list."""
    if isinstance(x, (list, tuple)):
        return [to_host(m, what=what, image_index=k) if on_device(m) else m
                for k, m in enumerate(x)]
    return to_host(x, what=what) if on_device(x) else x


def _coco_pairs(gt: np.ndarray, pred: np.ndarray, location: dict):
    rgb = [a.ndim == 3 for a in (gt, pred)]
    for a, what, is_rgb in ((gt, "ground-truth", rgb[0]), (pred, "predicted", rgb[1])):
        if (is_rgb and not is_rgb_map(a)) or (not is_rgb and a.ndim != 2):
            raise InputError(f"the {what} map has shape {a.shape}"
                             f"{f' and dtype {a.dtype}' if is_rgb else ''}; COCO maps are (H, W) "
                             "integer ids or (H, W, 3) uint8 RGB", **location)
        check_integer_map(a, what, **location)
    check_same_size(gt.shape, pred.shape, **location)
    if all(rgb):
        return pair_kernels.pair_counts_rgb(gt[..., :3], pred[..., :3])
    gt = rgb_to_ids(gt) if rgb[0] else gt
    pred = rgb_to_ids(pred) if rgb[1] else pred
    return pair_kernels.pair_counts(gt, pred)


def prepare_coco(gt, pred, gt_segments, pred_segments, categories: Categories, *,
                 image_index=None, image_id=None) -> PreparedImage:
    """One image of COCO-convention maps, checked under the strict policy
    (:class:`fastpq.core.validation.Policy`).

    Raises
    ------
    InputError
        A map that is not (H, W) integer ids or (H, W, 3) uint8 RGB, sizes that differ, ids
        outside [0, 2**24).
    SegmentError
        A malformed segments_info list, an unknown category, an id in a map but not in its
        list or the reverse.
    """
    location = {"image_index": image_index, "image_id": image_id}
    gt = as_array(gt, what="ground-truth", **location)
    pred = as_array(pred, what="predicted", **location)
    pairs = _coco_pairs(gt, pred, location)
    gt_present = distinct_ids(pairs[0], ascending=True)  # pairs are sorted by gt id
    pred_present = distinct_ids(pairs[1])
    check_id_range(gt_present, "ground-truth", COCO_ID_LIMIT, **location)
    check_id_range(pred_present, "predicted", COCO_ID_LIMIT, **location)
    gt_table, pred_table = segment_tables(gt_segments, pred_segments, categories, Policy.STRICT,
                                          **location)
    check_segments(Policy.STRICT, gt_table, pred_table, gt_present, pred_present, **location)
    return PreparedImage(pairs, gt_table, pred_table)


def prepare_encoded(gt, pred, categories: Categories, convention: Convention, *,
                    image_index=None, image_id=None) -> PreparedImage:
    """One image of pairs- or divisor-convention maps, checked under the strict policy.

    Raises
    ------
    InputError
        A map of the wrong layout or dtype, sizes that differ, negative or too large ids.
    SegmentError
        Pixels of a category neither in the table nor the void label.
    """
    location = {"image_index": image_index, "image_id": image_id}
    gt = as_array(gt, what="ground-truth", **location)
    pred = as_array(pred, what="predicted", **location)
    for a, what in ((gt, "ground-truth"), (pred, "predicted")):
        check_integer_map(a, what, **location)
        want = 3 if convention.name == "pairs" else 2
        if a.ndim != want or (want == 3 and a.shape[2] != 2):
            layout = "(H, W, 2) [category, instance]" if want == 3 else "(H, W) integer"
            raise InputError(f"the {what} map has shape {a.shape}; the {convention.name} "
                             f"convention takes {layout} maps", **location)
    check_same_size(gt.shape, pred.shape, **location)
    if convention.name == "pairs":
        try:
            pairs = pair_kernels.pair_counts_catinst(gt, pred)
        except ValueError as e:
            raise InputError(f"a label map holds {e}", **location) from None
    else:
        pairs = pair_kernels.pair_counts(gt, pred)
    shift = convention.name == "pairs"
    div = 1 if shift else convention.label_divisor
    void = convention.void_label
    sorted_ids, order = categories.index_array()
    status, bad, mapped, (gt_ids, gt_dense, gt_crowd), (pred_ids, pred_dense) = \
        tables.encoded_tables(*pairs, shift, div, void, sorted_ids, order,
                              categories.thing_mask, convention.thing_instance_zero == "crowd")
    if status != tables.OK:
        raise _encoded_error(status, int(bad), shift, div, void, location)
    gt_table = SegmentTable(gt_ids, gt_dense, gt_crowd)
    pred_table = SegmentTable(pred_ids, pred_dense, np.zeros(pred_ids.size, bool))
    if shift:  # a pair-map segment's own id is its [category, instance]
        def original_ids(ids):
            return np.stack(((ids - 1) >> 32, (ids - 1) & 0xFFFFFFFF), axis=-1)
    else:
        def original_ids(ids):
            return ids - 1
    return PreparedImage(mapped, gt_table, pred_table, original_ids=original_ids)


def _encoded_error(status: int, bad: int, shift: bool, divisor: int, void: int,
                   location: dict) -> InputError:
    """The error of a failed :func:`fastpq.kernels.tables.encoded_tables` check."""
    what = "ground-truth" if status in (tables.GT_NEGATIVE, tables.GT_TOO_LARGE,
                                        tables.GT_UNKNOWN_CATEGORY) else "predicted"
    if status in (tables.GT_NEGATIVE, tables.PRED_NEGATIVE):
        return InputError(f"the {what} map holds the negative id {bad}; ids must be >= 0",
                          segment_id=bad, **location)
    if status in (tables.GT_TOO_LARGE, tables.PRED_TOO_LARGE):
        return InputError(f"id {bad} is beyond the supported range (< 2**62)", segment_id=bad,
                          **location)
    user_id = bad - 1
    category = user_id >> 32 if shift else user_id // divisor
    name = "ground truth" if what == "ground-truth" else "prediction"
    return SegmentError(f"the {name} has pixels of category {category} (segment id {user_id}), "
                        f"which is neither in the category table nor the void label {void}",
                        segment_id=user_id, **location)


def pick_convention(gt, gt_segments, label_divisor, void_label, thing_instance_zero) -> Convention:
    if gt_segments is not None:
        if label_divisor is not None:
            raise InputError("pass either gt_segments/pred_segments (COCO convention) or "
                             "label_divisor (divisor convention), not both")
        return Convention("coco")
    if label_divisor is not None:
        return Convention("divisor", int(label_divisor), void_label, thing_instance_zero)
    first = gt[0] if isinstance(gt, (list, tuple)) and len(gt) else gt
    shape = getattr(first, "shape", None)
    if shape is not None and len(shape) >= 3 and shape[-1] == 2:
        return Convention("pairs", None, void_label, thing_instance_zero)
    raise InputError("cannot tell the input convention: pass gt_segments and pred_segments "
                     "(COCO id/RGB maps), label_divisor= (category * divisor + instance maps), "
                     "or (H, W, 2) [category, instance] maps")


def split_batch(x, convention: Convention, what: str) -> Sequence:
    """One image or a batch -> a list of images."""
    if isinstance(x, (list, tuple)):
        return list(x)
    if is_torch_tensor(x) and not on_device(x):
        x = as_array(x, what=what)  # slice NumPy views, compare NumPy dtypes
    ndim = getattr(x, "ndim", None)
    if ndim is None:
        raise InputError(f"the {what} input must be an array or a list of arrays, not {type(x).__name__}")
    if convention.name == "coco":
        single = ndim == 2 or (ndim == 3 and x.shape[-1] in (3, 4) and x.dtype == np.uint8)
    elif convention.name == "pairs":
        single = ndim == 3
    else:
        single = ndim == 2
    return [x] if single else [x[b] for b in range(x.shape[0])]


def split_segments(segments, n: int, what: str) -> list:
    """segments_info for one image (a list of dicts) or a batch (a list of lists)."""
    if segments is None:
        return [None] * n
    if len(segments) and isinstance(segments[0], dict) or (n == 1 and len(segments) == 0):
        segments = [segments]
    if len(segments) != n:
        raise InputError(f"{what} has {len(segments)} entries for {n} images")
    return list(segments)

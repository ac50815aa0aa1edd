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

import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fastpq.core.categories import Categories
from fastpq.errors import InputError, SegmentError, where
from fastpq.kernels import pairs as pair_kernels
from fastpq.kernels import tables
from fastpq.core.segments import COCO_ID_LIMIT, SegmentTable, coco_table


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


def is_torch_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor (torch is never imported here: a tensor implies it is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def on_device(x) -> bool:
    """Whether a label map lives in GPU memory: a CUDA torch tensor, a CuPy array, or any object
    with ``__cuda_array_interface__``. The one test that separates the host and device paths."""
    if is_torch_tensor(x):
        return x.is_cuda
    return hasattr(x, "__cuda_array_interface__")


def to_host(x, *, what: str, loc: str):
    """A host copy of a label map in GPU memory (:func:`on_device`).

    CUDA torch tensors become CPU tensors (``.cpu()``), CuPy arrays and other objects with
    ``__cuda_array_interface__`` NumPy arrays (through CuPy). The copy waits for the device: one
    host-device synchronisation per call.

    Raises
    ------
    InputError
        The copy failed, or needs CuPy and CuPy is not installed.
    """
    if is_torch_tensor(x):
        return x.detach().cpu()
    try:
        import cupy
    except ImportError:
        raise InputError(f"{loc}: the {what} map is in GPU memory (a {type(x).__name__}); "
                         "copying it to the host needs CuPy: pip install fastpq[gpu]") from None
    try:
        return cupy.asnumpy(x if isinstance(x, cupy.ndarray) else cupy.asarray(x))
    except Exception as e:
        raise InputError(f"{loc}: the {what} map is in GPU memory and could not be copied to "
                         f"the host: {e}") from None


def host_maps(x, what: str):
    """An update's maps (one array or a list) with every GPU map copied to the host: one copy
    (and synchronisation) for a stacked batch, one per map for a list."""
    if isinstance(x, (list, tuple)):
        return [to_host(m, what=what, loc=where(k)) if on_device(m) else m
                for k, m in enumerate(x)]
    return to_host(x, what=what, loc="batch") if on_device(x) else x


def as_array(x, *, what: str, loc: str) -> np.ndarray:
    """A host NumPy view of a label map, without a copy for host maps.

    NumPy arrays pass through; torch CPU tensors become their ``.numpy()`` view (any strides);
    maps in GPU memory (:func:`on_device`) are copied to the host first (:func:`to_host`, a
    synchronisation); other array-likes go through ``np.asarray``. The dtype is not checked here.

    Raises
    ------
    InputError
        A GPU map that cannot be copied, or a tensor without a NumPy view (bfloat16, sparse,
        meta).
    """
    if isinstance(x, np.ndarray):
        return x
    if on_device(x):
        x = to_host(x, what=what, loc=loc)
        if isinstance(x, np.ndarray):
            return x
    if is_torch_tensor(x):
        try:
            return x.detach().numpy()
        except (TypeError, RuntimeError) as e:
            raise InputError(f"{loc}: the {what} map, a {x.dtype} tensor ({x.layout}, on "
                             f"{x.device}), has no NumPy view: {e}") from None
    try:
        return np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise InputError(f"{loc}: the {what} map cannot be read as an array: {e}") from None


def _check_integer(a: np.ndarray, what: str, loc: str) -> None:
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{loc}: the {what} map has dtype {a.dtype}; label maps must hold integer "
                         "ids (cast float maps explicitly if their values are whole numbers)")


def _check_ids(ids: np.ndarray, what: str, loc: str, limit: int | None) -> None:
    if ids.size == 0:
        return
    if ids[0] < 0:  # ids are sorted
        bad = int(ids[0])
        raise InputError(f"{loc}: the {what} map holds the negative id {bad}; ids must be >= 0")
    if limit is not None and ids.max() >= limit:
        raise InputError(f"{loc}: the {what} map holds id {int(ids.max())}, beyond the COCO panoptic "
                         f"encoding (ids < 2**24 = {limit}); use label_divisor= for larger ids")


def _coco_pairs(gt: np.ndarray, pred: np.ndarray, loc: str):
    rgb = [a.ndim == 3 for a in (gt, pred)]
    for a, what, is_rgb in ((gt, "ground-truth", rgb[0]), (pred, "predicted", rgb[1])):
        if is_rgb and (a.shape[2] not in (3, 4) or a.dtype != np.uint8):
            raise InputError(f"{loc}: the {what} map has shape {a.shape} and dtype {a.dtype}; COCO "
                             "maps are (H, W) integer ids or (H, W, 3) uint8 RGB")
        if not is_rgb and a.ndim != 2:
            raise InputError(f"{loc}: the {what} map has shape {a.shape}; COCO maps are (H, W) "
                             "integer ids or (H, W, 3) uint8 RGB")
        _check_integer(a, what, loc)
    if gt.shape[:2] != pred.shape[:2]:
        raise InputError(f"{loc}: the ground truth is {gt.shape[0]}x{gt.shape[1]} but the "
                         f"prediction is {pred.shape[0]}x{pred.shape[1]}")
    if all(rgb):
        return pair_kernels.pair_counts_rgb(gt[..., :3], pred[..., :3])
    gt = rgb2id(gt) if rgb[0] else gt
    pred = rgb2id(pred) if rgb[1] else pred
    return pair_kernels.pair_counts(gt, pred)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic RGB -> ids (R + 256 G + 256² B) as uint32; extra channels are dropped."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0].astype(np.uint32) | (rgb[..., 1].astype(np.uint32) << 8)
            | (rgb[..., 2].astype(np.uint32) << 16))


def _listed_vs_present(table: SegmentTable, present: np.ndarray, what: str, loc: str) -> None:
    """Every non-void id of the map is listed and every listed id covers pixels."""
    present = present[present != 0]
    unlisted = present[~np.isin(present, table.ids)]
    if unlisted.size:
        raise SegmentError(f"{loc}: {what} segment id {int(unlisted[0])} is in the map but not in "
                           "segments_info")
    absent = table.ids[~np.isin(table.ids, present)]
    if absent.size:
        raise SegmentError(f"{loc}: {what} segment id {int(absent[0])} is in segments_info but "
                           "covers no pixel of the map")


def prepare_coco(gt, pred, gt_segments, pred_segments, categories: Categories, *,
                 image_index=None, image_id=None) -> PreparedImage:
    loc = where(image_index, image_id)
    gt = as_array(gt, what="ground-truth", loc=loc)
    pred = as_array(pred, what="predicted", loc=loc)
    pairs = _coco_pairs(gt, pred, loc)
    gt_present = np.unique(pairs[0])
    pred_present = np.unique(pairs[1])
    _check_ids(gt_present, "ground-truth", loc, COCO_ID_LIMIT)
    _check_ids(pred_present, "predicted", loc, COCO_ID_LIMIT)
    gt_table = coco_table(gt_segments, categories, side="gt", image_index=image_index,
                          image_id=image_id)
    pred_table = coco_table(pred_segments, categories, side="pred", image_index=image_index,
                            image_id=image_id)
    _listed_vs_present(gt_table, gt_present, "ground-truth", loc)
    _listed_vs_present(pred_table, pred_present, "predicted", loc)
    return PreparedImage(pairs, gt_table, pred_table)


def prepare_encoded(gt, pred, categories: Categories, convention: Convention, *,
                    image_index=None, image_id=None) -> PreparedImage:
    """Pairs and divisor conventions."""
    loc = where(image_index, image_id)
    gt = as_array(gt, what="ground-truth", loc=loc)
    pred = as_array(pred, what="predicted", loc=loc)
    for a, what in ((gt, "ground-truth"), (pred, "predicted")):
        _check_integer(a, what, loc)
        want = 3 if convention.name == "pairs" else 2
        if a.ndim != want or (want == 3 and a.shape[2] != 2):
            layout = "(H, W, 2) [category, instance]" if want == 3 else "(H, W) integer"
            raise InputError(f"{loc}: the {what} map has shape {a.shape}; the {convention.name} "
                             f"convention takes {layout} maps")
    if gt.shape != pred.shape:
        raise InputError(f"{loc}: the ground truth is {gt.shape[0]}x{gt.shape[1]} but the "
                         f"prediction is {pred.shape[0]}x{pred.shape[1]}")
    if convention.name == "pairs":
        try:
            pairs = pair_kernels.pair_counts_catinst(gt, pred)
        except ValueError as e:
            raise InputError(f"{loc}: a label map holds {e}") from None
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
        _raise_encoded(status, int(bad), shift, div, void, loc)
    gt_table = SegmentTable(gt_ids, gt_dense, gt_crowd)
    pred_table = SegmentTable(pred_ids, pred_dense, np.zeros(pred_ids.size, bool))
    if shift:  # a pair-map segment's own id is its [category, instance]
        def original_ids(ids):
            return np.stack(((ids - 1) >> 32, (ids - 1) & 0xFFFFFFFF), axis=-1)
    else:
        def original_ids(ids):
            return ids - 1
    return PreparedImage(mapped, gt_table, pred_table, original_ids=original_ids)


def _raise_encoded(status: int, bad: int, shift: bool, divisor: int, void: int, loc: str):
    """The error of a failed :func:`fastpq.kernels.tables.encoded_tables` check."""
    what = "ground-truth" if status in (tables.GT_NEGATIVE, tables.GT_TOO_LARGE,
                                        tables.GT_UNKNOWN_CATEGORY) else "predicted"
    if status in (tables.GT_NEGATIVE, tables.PRED_NEGATIVE):
        raise InputError(f"{loc}: the {what} map holds the negative id {bad}; ids must be >= 0")
    if status in (tables.GT_TOO_LARGE, tables.PRED_TOO_LARGE):
        raise InputError(f"{loc}: id {bad} is beyond the supported range (< 2**62)")
    user_id = bad - 1
    category = user_id >> 32 if shift else user_id // divisor
    name = "ground truth" if what == "ground-truth" else "prediction"
    raise SegmentError(f"{loc}: the {name} has pixels of category {category} (segment id "
                       f"{user_id}), which is neither in the category table nor the void label "
                       f"{void}")


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
        x = as_array(x, what=what, loc="batch")  # slice NumPy views, compare NumPy dtypes
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

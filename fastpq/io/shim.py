"""``import panopticapi`` backed by fastpq: a drop-in for code written against the reference.

:func:`install_as_panopticapi` registers three modules in ``sys.modules`` (SPEC §6.3):

``panopticapi``
    The package; ``panopticapi.evaluation`` and ``panopticapi.utils`` are its attributes.
``panopticapi.evaluation``
    ``OFFSET``, ``VOID``, ``PQStatCat``, ``PQStat``, ``pq_compute_single_core``,
    ``pq_compute_multi_core``, ``pq_compute`` (and ``rgb2id``, ``get_traceback``, which the
    reference module also exposes).
``panopticapi.utils``
    ``rgb2id``, ``id2rgb``, ``IdGenerator``, ``save_json``, ``get_traceback``.

Frameworks that import panopticapi lazily (detectron2's ``COCOPanopticEvaluator``, DETR's
``PanopticEvaluator``) or build on its ``PQStat`` (mmdetection's ``CocoPanopticMetric``) then run
on fastpq's engine, with the reference's numbers. Install it before anything imports the real
package; the ``pq_compute*`` functions all end in :func:`fastpq.io.coco.evaluate_files`.

Where the shim differs from the reference, on purpose:

* a split with no category present gives pq = sq = rq = 0.0 and n = 0 in ``pq_average`` and
  ``pq_compute`` (the reference raises ``ZeroDivisionError``; SPEC "fastpq's decisions" §4);
* errors carry the file path, and fastpq refuses what the reference scores wrongly (duplicate
  segment ids, GT/prediction size mismatch, grayscale PNGs; see :mod:`fastpq.io.coco`);
* ``pq_compute_single_core`` and ``pq_compute_multi_core`` use threads and print nothing (the
  reference prints per-core progress); ``pq_compute`` prints the reference's header and table;
* ``PQStat.pq_per_cat`` holds the categories of the table passed in (the reference also keeps
  counts for GT categories outside it, which it never reports); a class with tp == 0 has
  sq = 0.0, a float, where the reference gives the int 0;
* the ``area`` written into each predicted segment (the reference mutates the caller's dicts,
  and so does the shim) is a Python int, not ``np.int64``.

Pickles of ``PQStat`` made by the shim name ``fastpq.io.shim``, so they load wherever fastpq is
installed; pickles made by the real panopticapi load into the shim's classes while it is
installed.
"""

from __future__ import annotations

import functools
import importlib.machinery
import json
import sys
import traceback
import types
from collections import defaultdict

import numpy as np

from fastpq.core.categories import Categories
from fastpq.core.result import PQResult
from fastpq.core.runner import warn_suspect_data
from fastpq.io.coco import evaluate_files
from fastpq.io.coco import pq_compute as local_pq_compute
from fastpq.metrics.pq import PQMetric

__all__ = ["install_as_panopticapi", "uninstall_panopticapi_shim", "OFFSET", "VOID", "PQStatCat",
           "PQStat", "pq_compute_single_core", "pq_compute_multi_core", "pq_compute", "rgb2id",
           "id2rgb", "IdGenerator", "save_json", "get_traceback"]

OFFSET = 256 * 256 * 256
"""The reference's pair-key multiplier (``key = gt_id * OFFSET + pred_id``)."""

VOID = 0
"""The void segment id of the COCO panoptic format."""


# -- panopticapi.utils ----------------------------------------------------------------------------

def rgb2id(color):
    """Segment id(s) of RGB colour(s), ``R + 256 G + 65536 B``.

    Parameters
    ----------
    color : ndarray of shape (H, W, C) with C >= 3, or a sequence of three numbers
        An image (uint8 is widened to int32 first; other dtypes are kept, so a uint32 image gives
        uint32 ids) or one colour. Channels after the third are ignored.

    Returns
    -------
    ndarray of shape (H, W), or int
    """
    if isinstance(color, np.ndarray) and color.ndim == 3:
        if color.dtype == np.uint8:
            color = color.astype(np.int32)
        return color[:, :, 0] + 256 * color[:, :, 1] + 65536 * color[:, :, 2]
    return int(color[0] + 256 * color[1] + 65536 * color[2])


def id2rgb(id_map):
    """RGB colour(s) of segment id(s): ``[id % 256, id // 256 % 256, id // 65536 % 256]``.

    Parameters
    ----------
    id_map : ndarray of int, any shape, or int

    Returns
    -------
    ndarray of uint8, shape ``id_map.shape + (3,)``, or list of three ints
    """
    if isinstance(id_map, np.ndarray):
        rgb = np.empty(id_map.shape + (3,), np.uint8)
        rest = id_map.copy()
        for channel in range(3):
            rgb[..., channel] = rest % 256
            rest //= 256
        return rgb
    return [id_map % 256, id_map // 256 % 256, id_map // 65536 % 256]


class IdGenerator:
    """Segment ids whose colours are near their category's colour (panopticapi's converters).

    Parameters
    ----------
    categories : dict
        ``{category_id: {'isthing': 0 or 1, 'color': [r, g, b], ...}}``.

    Notes
    -----
    A stuff category (``isthing == 0``) always gets its own colour: one segment per stuff class
    per image. The first segment of a thing category gets the category colour unless it is
    taken; later ones get the category colour plus a uniform offset in [-30, 30] per channel,
    clipped to [0, 255], redrawn until the colour is new. The offsets come from NumPy's global
    random state with the same calls as the reference, so ``np.random.seed`` reproduces its ids.
    Ids are ``R + 256 G + 65536 B`` (the reference's class docstring states another formula; its
    code uses this one).
    """

    def __init__(self, categories):
        self.categories = categories
        # The reference starts from set([0, 0, 0]) == {0}, which no colour tuple equals: black is
        # not reserved there either, so a black thing category can get id 0 (VOID) in both.
        self.taken_colors = set()
        for category in categories.values():
            if category["isthing"] == 0:
                self.taken_colors.add(tuple(category["color"]))

    def get_color(self, cat_id):
        """A colour for a new segment of category ``cat_id`` (marked as taken)."""
        category = self.categories[cat_id]
        if category["isthing"] == 0:
            return category["color"]
        color = tuple(category["color"])
        while color in self.taken_colors:
            offset = np.random.randint(low=-30, high=31, size=3)
            color = tuple(np.clip(np.asarray(category["color"]) + offset, 0, 255))
        self.taken_colors.add(color)
        return color

    def get_id(self, cat_id):
        """A segment id for a new segment of category ``cat_id``."""
        return rgb2id(self.get_color(cat_id))

    def get_id_and_color(self, cat_id):
        """``(segment id, colour)`` for a new segment of category ``cat_id``."""
        color = self.get_color(cat_id)
        return rgb2id(color), color


def save_json(d, file):
    """Write ``d`` as JSON to the path ``file``."""
    with open(file, "w") as f:
        json.dump(d, f)


def get_traceback(f):
    """Decorate ``f`` so that an exception is reported before it propagates.

    The report is the line ``Caught exception in worker thread:`` on stdout and the traceback on
    stderr, as in the reference, which wraps its worker function with it because a
    ``multiprocessing`` worker's traceback is otherwise lost.
    """
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except Exception:
            print("Caught exception in worker thread:")
            traceback.print_exc()
            raise

    return wrapper


# -- panopticapi.evaluation -----------------------------------------------------------------------

class PQStatCat:
    """One category's counts: ``iou`` (sum of matched IoUs), ``tp``, ``fp``, ``fn``."""

    def __init__(self):
        self.iou = 0.0
        self.tp = 0
        self.fp = 0
        self.fn = 0

    def __iadd__(self, other):
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def __repr__(self):
        return f"PQStatCat(iou={self.iou!r}, tp={self.tp}, fp={self.fp}, fn={self.fn})"


class PQStat:
    """Per-category counts, as the reference's ``PQStat``.

    ``pq_per_cat`` is a ``defaultdict(PQStatCat)`` keyed by category id; ``stat[c]`` returns
    (and creates) the mutable :class:`PQStatCat` of category ``c``, so ``stat[c].tp += 1``
    works; ``a += b`` adds ``b`` category by category (IoU sums in that order, as the
    reference does). Picklable.
    """

    def __init__(self):
        self.pq_per_cat = defaultdict(PQStatCat)

    def __getitem__(self, category_id):
        return self.pq_per_cat[category_id]

    def __iadd__(self, other):
        for category_id, counts in other.pq_per_cat.items():
            self.pq_per_cat[category_id] += counts
        return self

    def pq_average(self, categories, isthing):
        """PQ, SQ, RQ averaged over the categories of one split, and per class.

        Parameters
        ----------
        categories : dict
            ``{category_id: {'isthing': ..., ...}}``; classes are summed in its order.
        isthing : bool or None
            None: every category; True: those with ``isthing == 1``; False: the others.

        Returns
        -------
        (dict, dict)
            ``{'pq', 'sq', 'rq', 'n'}`` where ``n`` counts the split's categories with any tp,
            fp or fn, and ``{category_id: {'pq', 'sq', 'rq'}}`` for every category of the
            split (0.0 for an absent one). With n = 0 the scores are 0.0 where the reference
            raises ZeroDivisionError (SPEC "fastpq's decisions" §4).
        """
        table = _category_table(categories)
        empty = PQStatCat()
        counts = [self.pq_per_cat.get(cid, empty) for cid in table.ids]
        result = PQResult(table, [c.tp for c in counts], [c.fp for c in counts],
                          [c.fn for c in counts], [c.iou for c in counts])
        split = result.split("All" if isthing is None else "Things" if isthing else "Stuff")
        per_class = {cid: {"pq": row.pq, "sq": row.sq, "rq": row.rq}
                     for cid, row in result.per_class.items()
                     if isthing is None or row.isthing == bool(isthing)}
        return split.as_dict(), per_class

    def __repr__(self):
        return f"PQStat({dict(self.pq_per_cat)!r})"


def _category_table(categories) -> Categories:
    """The reference's ``{id: category dict}`` as a :class:`~fastpq.core.categories.Categories`."""
    return Categories.from_coco([dict(info, id=cid) for cid, info in categories.items()])


class PredAreaWritingPQ(PQMetric):
    """Panoptic Quality that also writes each predicted segment's pixel count into the caller's
    ``segments_info`` dicts as ``area`` (an int), as the reference's worker does.

    Parameters
    ----------
    matched : sequence of (dict, dict)
        The annotation pairs of the run, by image index.
    """

    def __init__(self, matched):
        self.matched = matched

    def score(self, prepared, categories, index, image_id):
        match = self.match(prepared, categories)
        # each image writes only its own dicts, so the threads never share one
        for segment, area in zip(self.matched[index][1]["segments_info"],
                                 match.pred_area.tolist()):
            segment["area"] = int(area)
        return match.tp, match.fp, match.fn, match.iou


def _score(annotation_set, gt_folder, pred_folder, categories, workers) -> PQStat:
    matched = [(gt_ann, pred_ann) for gt_ann, pred_ann in annotation_set]
    acc, notes = evaluate_files(matched, gt_folder, pred_folder, _category_table(categories),
                                metric=PredAreaWritingPQ(matched), workers=workers,
                                progress=False)
    warn_suspect_data(notes)
    stat = PQStat()
    iou = acc.iou_sum()
    for k, cid in enumerate(acc.categories.ids):
        if acc.tp[k] or acc.fp[k] or acc.fn[k]:
            counts = stat[cid]
            counts.iou, counts.tp = float(iou[k]), int(acc.tp[k])
            counts.fp, counts.fn = int(acc.fp[k]), int(acc.fn[k])
    return stat


def pq_compute_single_core(proc_id, annotation_set, gt_folder, pred_folder, categories, *,
                           workers=None):
    """Score ``(gt_ann, pred_ann)`` pairs of COCO panoptic annotations; the reference's worker.

    Parameters
    ----------
    proc_id : int
        Unused (the reference prints it in its progress lines).
    annotation_set : iterable of (dict, dict)
        GT and prediction annotations (``image_id``, ``file_name``, ``segments_info``), e.g. a
        list of tuples or the rows of a NumPy object array. GT segments need ``area`` and
        ``iscrowd``; each predicted segment's ``area`` is set to its pixel count, as the
        reference does.
    gt_folder, pred_folder : str
        Where the GT and predicted PNGs (``file_name``) are.
    categories : dict
        ``{category_id: {'isthing', ...}}``, usually from the GT JSON.
    workers : int, optional
        Threads reading and scoring images (default: the number of cores).

    Returns
    -------
    PQStat
        Counts of the categories with any tp, fp or fn.

    Raises
    ------
    KeyError, Exception, FileNotFoundError, fastpq.errors.InputError
        As :func:`fastpq.pq_compute`: the reference's texts for prediction ids missing from the
        PNG or the JSON and unknown categories, with the file path appended.
    """
    return _score(annotation_set, gt_folder, pred_folder, categories, workers)


def pq_compute_multi_core(matched_annotations_list, gt_folder, pred_folder, categories, *,
                          workers=None):
    """Score all ``(gt_ann, pred_ann)`` pairs with every core and return the merged PQStat.

    As :func:`pq_compute_single_core` (threads instead of the reference's process pool; the
    numbers do not depend on how images are split).
    """
    return _score(matched_annotations_list, gt_folder, pred_folder, categories, workers)


def pq_compute(gt_json_file, pred_json_file, gt_folder=None, pred_folder=None):
    """The reference's ``pq_compute``: :func:`fastpq.io.coco.pq_compute` with its defaults.

    Prints the reference's header and table on ``sys.stdout`` and returns its dict (per-class
    rows also carry ``tp``, ``fp``, ``fn`` and ``iou``).
    """
    return local_pq_compute(gt_json_file, pred_json_file, gt_folder, pred_folder)


# -- registration ---------------------------------------------------------------------------------

_EVALUATION_NAMES = ("OFFSET", "VOID", "PQStatCat", "PQStat", "pq_compute_single_core",
                     "pq_compute_multi_core", "pq_compute", "rgb2id", "get_traceback")
_UTILS_NAMES = ("rgb2id", "id2rgb", "IdGenerator", "save_json", "get_traceback")
_MARK = "__fastpq_shim__"

#: Modules replaced by ``install_as_panopticapi(force=True)``, restored by the uninstall.
_shadowed: dict = {}


def _module(name, names, doc, *, package=False):
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    setattr(module, _MARK, True)
    for attribute in names:
        setattr(module, attribute, globals()[attribute])
    return module


def _is_shim(module) -> bool:
    return getattr(module, _MARK, False) is True


def install_as_panopticapi(force: bool = False) -> types.ModuleType:
    """Make ``import panopticapi`` (and its ``evaluation`` and ``utils``) use fastpq.

    Call it before anything imports panopticapi; calling it again is harmless. Other
    submodules of the real package (``combine_semantic_and_instance_predictions``) are not
    provided: importing one raises ``ModuleNotFoundError``.

    Parameters
    ----------
    force : bool
        Replace a panopticapi that is already imported. Code that has already imported names
        from it keeps the real ones. :func:`uninstall_panopticapi_shim` puts it back.

    Returns
    -------
    module
        The ``panopticapi`` package module.

    Raises
    ------
    RuntimeError
        A panopticapi not created by fastpq is already imported and ``force`` is False.
    """
    current = sys.modules.get("panopticapi")
    if current is not None and _is_shim(current):
        return current
    existing = {name: module for name, module in sys.modules.items()
                if name == "panopticapi" or name.startswith("panopticapi.")}
    if existing and not force:
        where = getattr(existing.get("panopticapi"), "__file__", None) or sorted(existing)[0]
        raise RuntimeError(
            f"the real panopticapi is already imported ({where}); fastpq will not shadow a module "
            "that other code may already hold. Call fastpq.install_as_panopticapi() before "
            "anything imports panopticapi, or pass force=True to replace it in sys.modules.")
    for name, module in existing.items():
        _shadowed.setdefault(name, module)
        del sys.modules[name]
    package = _module("panopticapi", (), "panopticapi, backed by fastpq (fastpq.io.shim).",
                      package=True)
    package.evaluation = _module("panopticapi.evaluation", _EVALUATION_NAMES,
                                 "panopticapi.evaluation, backed by fastpq (fastpq.io.shim).")
    package.utils = _module("panopticapi.utils", _UTILS_NAMES,
                            "panopticapi.utils, backed by fastpq (fastpq.io.shim).")
    sys.modules.update({"panopticapi": package, "panopticapi.evaluation": package.evaluation,
                        "panopticapi.utils": package.utils})
    return package


def uninstall_panopticapi_shim() -> bool:
    """Remove the shim's modules from ``sys.modules`` and restore what ``force=True`` replaced.

    Returns
    -------
    bool
        Whether the shim was installed.
    """
    installed = _is_shim(sys.modules.get("panopticapi"))
    for name in ("panopticapi", "panopticapi.evaluation", "panopticapi.utils"):
        if _is_shim(sys.modules.get(name)):
            del sys.modules[name]
    sys.modules.update(_shadowed)
    _shadowed.clear()
    return installed

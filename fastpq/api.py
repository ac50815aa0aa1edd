"""The front doors: ``fastpq.evaluate`` (in-memory label maps), ``fastpq.pq_compute`` and
``fastpq.evaluate_many`` (COCO panoptic files, locally or on a Dask cluster)."""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

from fastpq.core.categories import Categories
from fastpq.core.runner import score_arrays
from fastpq.io import checkpoints, coco
from fastpq.metrics import resolve_metric


def evaluate(gt, pred, *, gt_segments=None, pred_segments=None, categories=None,
             label_divisor: int | None = None, void_label: int = 0,
             thing_instance_zero: str = "crowd", image_ids: Sequence | None = None,
             workers: int | None = 1, per_image: bool = False, metric: str = "pq",
             convention: str = "panopticapi"):
    """Panoptic Quality of one image or a list of images, with panopticapi's numbers.

    Parameters
    ----------
    gt, pred : array or list of arrays
        One image or a batch (a list, or a stacked array). Sizes may differ between images, not
        between an image's GT and prediction. Three conventions, picked by what is passed:

        * COCO: (H, W) integer id maps or (H, W, 3) uint8 RGB maps (id = R + 256 G + 256² B),
          with ``gt_segments`` / ``pred_segments`` (segments_info lists: dicts with ``id``,
          ``category_id`` and, for the GT, ``iscrowd``). Id 0 is void.
        * pairs: (H, W, 2) [category, instance] maps (torchmetrics' layout).
        * divisor: (H, W) maps of ``category * label_divisor + instance``.

        In the last two, category ``void_label`` is void; see ``thing_instance_zero``.

        Maps in GPU memory (CUDA torch tensors, CuPy arrays) are copied to the host first: one
        copy, and one wait for the device, per stacked batch (per map for a list). For
        evaluation without host copies, feed them to :class:`fastpq.PanopticQuality`, whose
        ``update`` runs on the GPU.
    categories : Categories, COCO categories list, {'things': [...], 'stuff': [...]} or preset
        The category table ('coco' and 'cityscapes' are presets). Class scores are averaged in
        its order.
    thing_instance_zero : {'crowd', 'instance'}
        Pairs/divisor conventions: a thing pixel with instance 0 is a crowd region of its
        category ('crowd', the Cityscapes convention and the default) or an ordinary instance.
    image_ids : sequence, optional
        Names the images in error messages.
    workers : int or None
        Threads over images (None: all cores; never more than the images). The result does
        not depend on it.
    per_image : bool
        Also keep one :class:`~fastpq.core.records.ImageRecord` per image in ``result.per_image``
        (default metric and convention only).
    metric : {'pq', 'pq_dagger', 'pc'}
        Panoptic Quality; PQ-dagger (stuff scored by IoU without the 0.5 threshold); Parsing
        Covering (a :class:`~fastpq.metrics.parsing_covering.CoveringResult`). See
        :mod:`fastpq.metrics`.
    convention : {'panopticapi', 'torchmetrics'}
        Whose matching rules: the reference's, or torchmetrics' ``PanopticQuality`` (void
        forgiven on both sides, stuff segments merged, no crowd, float32 IoUs).

    Returns
    -------
    PQResult
        Or :class:`~fastpq.metrics.parsing_covering.CoveringResult` for ``metric='pc'``.

    Raises
    ------
    fastpq.errors.InputError (a ValueError)
        Shape mismatch, non-integer or negative ids, ids beyond the encoding, an id in a map but
        not in its segments_info or the reverse, duplicate segment ids, an unknown category, a GT
        segment without ``iscrowd``, GT segment id 0, empty input. Areas are pixel counts, so a
        GT id missing from segments_info is refused here (``pq_compute`` reproduces the
        reference instead and warns). An unknown ``metric`` or ``convention``, a combination
        that is not offered, ``per_image`` with a metric other than 'pq' under the panopticapi
        convention.
    """
    scoring = resolve_metric(metric, convention, per_image=per_image)
    categories = Categories.coerce(categories)
    acc = scoring.accumulator(categories)
    for partial in score_arrays(gt, pred, gt_segments=gt_segments, pred_segments=pred_segments,
                                categories=categories, metric=scoring,
                                label_divisor=label_divisor, void_label=void_label,
                                thing_instance_zero=thing_instance_zero, image_ids=image_ids,
                                workers=workers):
        acc.add_image(*partial)
    return scoring.result(acc)


def pq_compute(gt_json_file, pred_json_file, gt_folder=None, pred_folder=None, *,
               workers: int | None = None, progress: bool | None = None, verbose: bool = True,
               return_result: bool = False, client=None, per_image: bool = False,
               metric: str = "pq", convention: str = "panopticapi"):
    """panopticapi's ``pq_compute``: the same signature, defaults, errors, table and return dict.

    Parameters
    ----------
    gt_json_file, pred_json_file : str or path
        COCO panoptic JSON files. Folders default to the JSON paths with '.json' removed.
    workers : int, optional
        Threads decoding and scoring images (default: the number of cores). Nothing outlives
        the call. The numbers do not depend on it.
    progress : bool, optional
        A tqdm bar on stderr (default: when stderr is a terminal).
    verbose : bool
        Print the reference's header and table on ``sys.stdout``.
    return_result : bool
        Return the :class:`~fastpq.core.result.PQResult` instead of the reference's dict.
    client : distributed.Client, optional
        Score the images on this Dask cluster instead (:mod:`fastpq.scale.cluster`); its workers
        read the PNGs at the same paths, and ``workers`` is ignored. The numbers are the same.
    per_image, metric, convention
        As in :func:`fastpq.evaluate` (``metric`` and ``convention`` not with ``client``). Under
        the 'torchmetrics' convention GT areas are pixel counts, and GT ids missing from the JSON
        are void.

    Returns
    -------
    dict
        ``{'All': {pq, sq, rq, n}, 'Things': ..., 'Stuff': ..., 'per_class': {cat_id: {pq, sq,
        rq, tp, fp, fn, iou}}}`` — a split with no category gives 0.0 and n = 0 where the
        reference raises ZeroDivisionError.

    Notes
    -----
    The local run is :func:`fastpq.io.coco.pq_compute`; with ``client`` the same run scores the
    images with :func:`fastpq.scale.cluster.score_on_cluster`.
    """
    score_images = None
    if client is not None:
        from fastpq.scale.cluster import score_on_cluster

        score_images = functools.partial(score_on_cluster, client)
    return coco.pq_compute(gt_json_file, pred_json_file, gt_folder, pred_folder, workers=workers,
                           progress=progress, verbose=verbose, return_result=return_result,
                           per_image=per_image, metric=metric, convention=convention,
                           score_images=score_images)


def evaluate_many(gt_json, pred_jsons: Mapping, *, gt_folder=None,
                  pred_folders: Mapping | None = None, client=None, workers: int | None = None,
                  progress: bool | None = None) -> dict:
    """Panoptic Quality of several predictions against one COCO panoptic ground truth.

    Parameters
    ----------
    gt_json : str or path
        The ground-truth JSON (``annotations`` and ``categories``).
    pred_jsons : mapping
        ``{name: prediction JSON path}``; names are any hashable labels (checkpoint names).
    gt_folder : str or path, optional
        Ground-truth PNGs; default: ``gt_json`` with '.json' removed, as in ``pq_compute``.
    pred_folders : mapping, optional
        ``{name: prediction PNG folder}`` for some or all names; a name without one takes its
        JSON path with '.json' removed.
    client : distributed.Client, optional
        Score on this Dask cluster (:func:`fastpq.scale.cluster.score_many_on_cluster`); the
        workers read the PNGs at the same paths and ``workers`` is ignored.
    workers : int, optional
        Local threads, one image (its GT and every prediction) at a time each (default: the
        number of cores).
    progress : bool, optional
        A tqdm bar on stderr (default: when stderr is a terminal).

    Returns
    -------
    dict
        ``{name: PQResult}`` in the order of ``pred_jsons``; each equals ``pq_compute(gt_json,
        pred_jsons[name], gt_folder, pred_folders[name], return_result=True)``.

    Raises
    ------
    InputError
        No prediction given, or a ``pred_folders`` name that is not in ``pred_jsons``.
    Exception
        What ``pq_compute`` raises for the first bad input: a missing folder, an image without a
        prediction (both the reference's plain ``Exception``), a bad PNG or segment table.
    """
    score_images = None
    if client is not None:
        from fastpq.scale.cluster import score_many_on_cluster

        score_images = functools.partial(score_many_on_cluster, client)
    return checkpoints.evaluate_many(gt_json, pred_jsons, gt_folder=gt_folder,
                                     pred_folders=pred_folders, workers=workers,
                                     progress=progress, score_images=score_images)

"""``fastpq.evaluate``: Panoptic Quality of in-memory label maps."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from fastpq.core.accumulator import PQAccumulator
from fastpq.core.categories import Categories
from fastpq.errors import InputError
from fastpq.core.inputs import (Convention, PreparedImage, host_maps, pick_convention, prepare_coco,
                     prepare_encoded, split_batch, split_segments)
from fastpq.core.matching import match_image


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
        Threads over images (None: all cores). The result does not depend on it.
    per_image : bool
        Also keep one :class:`~fastpq.core.records.ImageRecord` per image in ``result.per_image``
        (default metric and convention only).
    metric : {'pq', 'pq_dagger', 'pc'}
        Panoptic Quality; PQ-dagger (stuff scored by IoU without the 0.5 threshold); Parsing
        Covering (a :class:`~fastpq.metrics.variants.CoveringResult`). See :mod:`fastpq.metrics.variants`.
    convention : {'panopticapi', 'torchmetrics'}
        Whose matching rules: the reference's, or torchmetrics' ``PanopticQuality`` (void
        forgiven on both sides, stuff segments merged, no crowd, float32 IoUs).

    Returns
    -------
    PQResult
        Or :class:`~fastpq.metrics.variants.CoveringResult` for ``metric='pc'``.

    Raises
    ------
    fastpq.errors.InputError (a ValueError)
        Shape mismatch, non-integer or negative ids, ids beyond the encoding, an id in a map but
        not in its segments_info or the reverse, duplicate segment ids, an unknown category, a GT
        segment without ``iscrowd``, GT segment id 0, empty input. Areas are pixel counts, so a
        GT id missing from segments_info is refused here (``pq_compute`` reproduces the
        reference instead and warns).
    """
    categories = Categories.coerce(categories)
    if per_image or metric != "pq" or convention != "panopticapi":
        from fastpq.metrics.variants import Scoring

        scoring = Scoring(categories, metric=metric, convention=convention, per_image=per_image,
                          image_ids=image_ids)
        for scores in iter_matches(gt, pred, gt_segments=gt_segments, pred_segments=pred_segments,
                                   categories=categories, label_divisor=label_divisor,
                                   void_label=void_label, thing_instance_zero=thing_instance_zero,
                                   image_ids=image_ids, workers=workers, score=scoring.score):
            scoring.add(scores)
        return scoring.result()
    acc = PQAccumulator(categories)
    for match in iter_matches(gt, pred, gt_segments=gt_segments, pred_segments=pred_segments,
                              categories=categories, label_divisor=label_divisor,
                              void_label=void_label, thing_instance_zero=thing_instance_zero,
                              image_ids=image_ids, workers=workers):
        acc.add_image(match.tp, match.fp, match.fn, match.iou)
    return acc.result()


def iter_matches(gt, pred, *, gt_segments, pred_segments, categories: Categories,
                 label_divisor=None, void_label=0, thing_instance_zero="crowd", image_ids=None,
                 workers=1, score=None):
    """Yield each image's :class:`~fastpq.core.matching.ImageMatch`, in input order.

    ``score(index, prepared)``, when given, replaces the matcher (metric variants, per-image
    records): what it returns for each :class:`~fastpq.core.inputs.PreparedImage` is yielded instead.
    It runs in the worker threads.
    """
    gt, pred = host_maps(gt, "ground-truth"), host_maps(pred, "predicted")
    convention = pick_convention(gt, gt_segments, label_divisor, void_label, thing_instance_zero)
    gts = split_batch(gt, convention, "ground-truth")
    preds = split_batch(pred, convention, "prediction")
    if len(gts) == 0:
        raise InputError("empty input: no images to evaluate")
    if len(gts) != len(preds):
        raise InputError(f"{len(gts)} ground-truth maps but {len(preds)} predicted maps")
    gsegs = split_segments(gt_segments, len(gts), "gt_segments")
    psegs = split_segments(pred_segments, len(gts), "pred_segments")
    if convention.name == "coco" and pred_segments is None:
        raise InputError("gt_segments was given without pred_segments")
    ids = list(image_ids) if image_ids is not None else [None] * len(gts)
    if len(ids) != len(gts):
        raise InputError(f"image_ids has {len(ids)} entries for {len(gts)} images")

    def one(k):
        prepared = prepare_one(gts[k], preds[k], gsegs[k], psegs[k], categories, convention,
                               image_index=k, image_id=ids[k])
        if score is not None:
            return score(k, prepared)
        return match_image(prepared.pairs, prepared.gt, prepared.pred, len(categories))

    n_workers = os.cpu_count() if workers is None else max(1, int(workers))
    if n_workers == 1 or len(gts) == 1:
        for k in range(len(gts)):
            yield one(k)
        return
    with ThreadPoolExecutor(min(n_workers, len(gts)), thread_name_prefix="fastpq") as pool:
        yield from pool.map(one, range(len(gts)))


def prepare_one(gt, pred, gt_segments, pred_segments, categories: Categories,
                convention: Convention, *, image_index=None, image_id=None) -> PreparedImage:
    if convention.name == "coco":
        return prepare_coco(gt, pred, gt_segments, pred_segments, categories,
                            image_index=image_index, image_id=image_id)
    return prepare_encoded(gt, pred, categories, convention, image_index=image_index,
                           image_id=image_id)

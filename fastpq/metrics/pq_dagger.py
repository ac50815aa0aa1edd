"""PQ-dagger under the reference's rules (``metric='pq_dagger'``).

PQ-dagger (Porzi et al., CVPR 2019) as torchmetrics' ``ModifiedPanopticQuality`` computes it
(SPEC §3.2, §8.1): things are scored as PQ; for a stuff class each ground-truth segment adds 1 to
``tp`` and every same-class (GT, prediction) pair that overlaps adds its IoU to ``iou``, without
the 0.5 threshold and without FP or FN, so stuff PQ-dagger = IoU sum / number of GT segments.
Under the panopticapi convention crowd GT segments are skipped and a GT segment listed but absent
from the map counts with IoU 0. Under torchmetrics' convention it is
:class:`fastpq.metrics.torchmetrics_rules.TorchmetricsPQDaggerMetric`.
"""

from __future__ import annotations

import numpy as np

from fastpq.core.categories import Categories
from fastpq.core.matching import match_image
from fastpq.metrics.protocol import PQSumsMetric, table_rows, take_rows


def pq_dagger_image(prepared, categories: Categories):
    """One image's per-category ``(tp, fp, fn, iou)`` for PQ-dagger under panopticapi's rules.

    Things as :func:`~fastpq.core.matching.match_image` scores them; stuff by the PQ-dagger rule
    (module docstring) with the reference's union ``area_p + area_g - I - I(void, p)``.
    """
    gt, pred = prepared.gt, prepared.pred
    n_cat = len(categories)
    match = match_image(prepared.pairs, gt, pred, n_cat)
    stuff = ~categories.thing_mask
    tp, fp, fn = (np.where(stuff, 0, a) for a in (match.tp, match.fp, match.fn))
    iou = np.where(stuff, 0.0, match.iou)

    pg, pp, pc = (np.asarray(a) for a in prepared.pairs)
    gr, pr = table_rows(gt.ids, pg), table_rows(pred.ids, pp)
    void_overlap = np.zeros(len(pred), np.int64)
    on_void = (pg == 0) & (pr >= 0)
    void_overlap[pr[on_void]] = pc[on_void]
    scored = (gt.category >= 0) & ~gt.iscrowd & stuff[np.maximum(gt.category, 0)]
    tp += np.bincount(gt.category[scored], minlength=n_cat)
    cand = (take_rows(scored, gr, False) & (pr >= 0)
            & (take_rows(gt.category, gr, -1) == take_rows(pred.category, pr, -2)))
    g, p, inter = gr[cand], pr[cand], pc[cand]
    pair_iou = inter / (match.pred_area[p] + match.gt_area[g] - inter - void_overlap[p])
    keep = pair_iou > 0
    iou = iou + np.bincount(gt.category[g[keep]], weights=pair_iou[keep], minlength=n_cat)
    return tp, fp, fn, iou


class PQDaggerMetric(PQSumsMetric):
    """PQ-dagger under the panopticapi convention (module docstring)."""

    name = "pq_dagger"
    title = "PQ-dagger"

    def score(self, prepared, categories, index, image_id):
        return pq_dagger_image(prepared, categories)

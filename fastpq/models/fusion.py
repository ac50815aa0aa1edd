"""Panoptic fusion: instance masks + a semantic map -> one panoptic id map and its segment table.

The heuristic of Kirillov et al. 2019 as implemented by detectron2's
``combine_semantic_and_instance_outputs`` (SPEC §7.1), in pure torch so it runs on the device of
its inputs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fastpq.errors import InputError


def panoptic_fusion(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    semantic: torch.Tensor,
    *,
    thing_ids: Sequence[int],
    stuff_ids: Sequence[int],
    instance_score_thresh: float = 0.5,
    overlap_thresh: float = 0.5,
    stuff_area_thresh: int = 4096,
    mask_thresh: float = 0.5,
) -> tuple[torch.Tensor, list[dict]]:
    """Paint instances, then large stuff regions, into one panoptic id map.

    Steps (SPEC §7.1):

    1. Instances are visited by descending score. The sort is stable: equal scores keep their
       original order (detectron2's ``argsort`` is not stable; this is the one deliberate
       difference). Instances with ``score < instance_score_thresh`` are dropped.
    2. Each mask is binarised with ``mask >= mask_thresh``; an empty mask is skipped. With
       ``overlap`` = its pixels already painted, the instance is skipped if
       ``overlap / area > overlap_thresh`` (strict); otherwise only its unpainted pixels are
       painted (skipped if none are left).
    3. For each stuff class present in ``semantic``, in ascending class order (the
       "thing/other" class ``len(stuff_ids)`` excluded), the region ``semantic == class`` minus
       the painted pixels is painted if its area is ``>= stuff_area_thresh``.

    Segment ids are 1, 2, 3, ... in painting order; 0 is void (pixels nobody painted).

    Parameters
    ----------
    masks : Tensor, shape (N, H, W) or (N, 1, H, W)
        Instance masks: probabilities (floating, binarised with ``>= mask_thresh``) or bool.
    scores : Tensor, shape (N,)
        Instance confidence scores.
    labels : Tensor, shape (N,), integer
        Contiguous thing labels ``1..len(thing_ids)`` (torchvision's convention, 0 = background);
        label ``k`` has dataset category id ``thing_ids[k - 1]``.
    semantic : Tensor, shape (H, W), integer
        Per-pixel semantic class (the argmax of the semantic logits): ``0..len(stuff_ids) - 1``
        are stuff classes (class ``k`` has category id ``stuff_ids[k]``) and ``len(stuff_ids)``
        is the "thing/other" class, which is never painted as stuff.
    thing_ids, stuff_ids : sequence of int
        Dataset category ids of the thing and stuff classes.
    instance_score_thresh : float, default 0.5
        Instances scoring below are dropped.
    overlap_thresh : float, default 0.5
        An instance whose already-painted fraction exceeds this is dropped.
    stuff_area_thresh : int, default 4096
        Stuff regions with fewer pixels (after removing painted ones) are dropped.
    mask_thresh : float, default 0.5
        Binarisation threshold for floating masks.

    Returns
    -------
    panoptic : Tensor, shape (H, W), int32
        Segment ids, on the device of ``semantic``; 0 = void.
    segments_info : list of dict
        One dict per segment, in id order: ``id``, ``category_id`` (dataset id), ``isthing``,
        ``area`` (its pixel count in ``panoptic``); things also carry ``score`` and
        ``instance_id`` (the instance's index in the inputs).

    Raises
    ------
    InputError
        If shapes disagree, a label is outside ``1..len(thing_ids)`` or a semantic class outside
        ``0..len(stuff_ids)``.
    """
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise InputError(f"masks must have shape (N, H, W) or (N, 1, H, W); got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if semantic.dim() != 2:
        raise InputError(f"semantic must be an (H, W) class map; got shape {tuple(semantic.shape)}")
    n = masks.shape[0]
    if masks.dim() != 3 or (n and masks.shape[1:] != semantic.shape):
        raise InputError(f"masks of shape {tuple(masks.shape)} do not match the semantic map of shape "
                         f"{tuple(semantic.shape)}: expected (N, {semantic.shape[0]}, {semantic.shape[1]})")
    if scores.shape != (n,) or labels.shape != (n,):
        raise InputError(f"{n} masks need {n} scores and labels; got scores of shape "
                         f"{tuple(scores.shape)} and labels of shape {tuple(labels.shape)}")
    thing_ids = [int(i) for i in thing_ids]
    stuff_ids = [int(i) for i in stuff_ids]
    other_class = len(stuff_ids)
    device = semantic.device

    panoptic = torch.zeros(semantic.shape, dtype=torch.int32, device=device)
    painted = torch.zeros(semantic.shape, dtype=torch.bool, device=device)
    segments_info: list[dict] = []

    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[scores[order] >= instance_score_thresh]
    if order.numel():
        kept_labels = labels[order].tolist()
        bad = [lab for lab in kept_labels if not 1 <= lab <= len(thing_ids)]
        if bad:
            raise InputError(f"instance label {bad[0]} is outside the thing labels 1..{len(thing_ids)}")
        binary = masks.to(device)
        binary = binary if binary.dtype == torch.bool else binary >= mask_thresh
        boxes = _bounding_boxes(binary).tolist()
        kept_scores = scores[order].tolist()
        for k, index in enumerate(order.tolist()):
            # Work inside the mask's bounding box: views, so painting writes through.
            y0, y1, x0, x1 = boxes[index]
            mask, painted_box = binary[index, y0:y1, x0:x1], painted[y0:y1, x0:x1]
            area = int(mask.sum())
            if area == 0:
                continue
            overlap = int((mask & painted_box).sum())
            if overlap / area > overlap_thresh:
                continue
            free_area = area - overlap
            if free_area == 0:
                continue
            free = mask & ~painted_box
            segment_id = len(segments_info) + 1
            panoptic[y0:y1, x0:x1][free] = segment_id
            painted_box |= free
            segments_info.append({"id": segment_id, "category_id": thing_ids[kept_labels[k] - 1],
                                  "isthing": True, "score": kept_scores[k], "area": free_area,
                                  "instance_id": index})

    if semantic.numel():
        low, high = int(semantic.min()), int(semantic.max())
        if low < 0 or high > other_class:
            bad = low if low < 0 else high
            raise InputError(f"semantic class {bad} is outside 0..{other_class} "
                             f"({other_class} stuff classes + the thing/other class {other_class})")
        free_semantic = semantic[~painted].long()
        stuff_areas = torch.bincount(free_semantic, minlength=other_class + 1)[:other_class].tolist()
        for stuff_class, area in enumerate(stuff_areas):
            if area == 0 or area < stuff_area_thresh:
                continue
            region = (semantic == stuff_class) & ~painted
            segment_id = len(segments_info) + 1
            panoptic[region] = segment_id
            segments_info.append({"id": segment_id, "category_id": stuff_ids[stuff_class],
                                  "isthing": False, "area": area})
    return panoptic, segments_info


def _bounding_boxes(binary: torch.Tensor) -> torch.Tensor:
    """(N, 4) int64 ``y0, y1, x0, x1`` (half-open) of each (H, W) bool mask; all zeros if empty."""
    as_bytes = binary.view(torch.uint8)  # byte max is much faster than bool any() on CPU
    rows, cols = as_bytes.amax(dim=2) > 0, as_bytes.amax(dim=1) > 0
    h, w = binary.shape[1:]

    def span(hits: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(size, device=hits.device)
        first = torch.where(hits, positions, size).amin(dim=1)
        last = torch.where(hits, positions, -1).amax(dim=1) + 1
        return first.clamp(max=last), last.clamp(min=0)

    y0, y1 = span(rows, h)
    x0, x1 = span(cols, w)
    return torch.stack([y0, y1, x0, x1], dim=1)

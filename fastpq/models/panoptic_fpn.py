"""Panoptic FPN (Kirillov et al. 2019) on torchvision's Mask R-CNN with a ResNet-50 FPN backbone.

One backbone pass feeds both torchvision's RPN + ROI heads (things) and the semantic FPN branch of
the paper (stuff + one "thing/other" class); :func:`~fastpq.models.fusion.panoptic_fusion` merges
the two into a panoptic id map whose segment table ``fastpq`` evaluates directly.

Nothing is downloaded: the model starts from random weights, or from a state-dict file the user
provides (``weights=``).
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn

from fastpq.errors import InputError
from .fusion import panoptic_fusion

# torchvision's FPN keys of P2..P5 and their strides; 'pool' (P6) feeds only the RPN.
_FPN_LEVELS = (("0", 4), ("1", 8), ("2", 16), ("3", 32))


class SemanticFPNHead(nn.Module):
    """The semantic segmentation branch of Panoptic FPN (Kirillov et al. 2019, Fig. 3).

    Each FPN level P2..P5 goes through ``max(1, log2(stride / 4))`` stages of 3x3 conv
    (``conv_dims`` channels, no bias), GroupNorm(32), ReLU and, for strides above 4, 2x bilinear
    upsampling; the four 1/4-scale maps are summed, a 1x1 conv predicts ``num_classes`` logits,
    and 4x bilinear upsampling brings them to the input scale (as detectron2's ``SemSegFPNHead``).

    Parameters
    ----------
    in_channels : int
        Channels of every FPN level (256 for torchvision's FPN).
    num_classes : int
        Semantic classes (stuff classes + 1 "thing/other").
    conv_dims : int, default 128
    num_groups : int, default 32
        GroupNorm groups.
    """

    def __init__(self, in_channels: int, num_classes: int, conv_dims: int = 128, num_groups: int = 32):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for _, stride in _FPN_LEVELS:
            n_stages = max(1, int(math.log2(stride // 4)))
            stages: list[nn.Module] = []
            for k in range(n_stages):
                stages += [nn.Conv2d(in_channels if k == 0 else conv_dims, conv_dims, 3, padding=1, bias=False),
                           nn.GroupNorm(num_groups, conv_dims), nn.ReLU(inplace=True)]
                if stride > 4:
                    stages.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*stages))
        self.predictor = nn.Conv2d(conv_dims, num_classes, 1)
        for module in self.modules():  # detectron2's c2_msra_fill
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Semantic logits at the batched input scale.

        Parameters
        ----------
        features : mapping of str to Tensor
            torchvision FPN outputs; keys ``'0'..'3'`` (P2..P5, shapes (B, C, H/s, W/s)) are used.
            H and W must be divisible by 32 (torchvision's default ``size_divisible``).

        Returns
        -------
        Tensor, shape (B, num_classes, H, W)
        """
        x = None
        for (key, _), head in zip(_FPN_LEVELS, self.scale_heads):
            y = head(features[key])
            x = y if x is None else x + y
        return F.interpolate(self.predictor(x), scale_factor=4, mode="bilinear", align_corners=False)


class PanopticFPN(nn.Module):
    """Panoptic FPN: torchvision Mask R-CNN (ResNet-50 FPN) + a semantic FPN branch + fusion.

    Called like a torchvision detection model on a list of (3, H, W) float images in 0..1
    (sizes may differ). The submodules ``transform``, ``backbone``, ``rpn`` and ``roi_heads`` are
    torchvision's, under the same names as in its ``MaskRCNN`` (so its state-dict keys carry
    over); ``semantic_head`` is :class:`SemanticFPNHead`.

    Parameters
    ----------
    num_things : int, default 80
        Thing classes (the detector predicts ``num_things + 1`` classes, 0 = background).
    num_stuff : int, default 53
        Stuff classes (the semantic head predicts ``num_stuff + 1`` classes: stuff ``0..num_stuff-1``
        and "thing/other" ``num_stuff``).
    min_size, max_size : int, default 800, 1333
        torchvision's resize: shorter side to ``min_size`` unless the longer one would exceed
        ``max_size``.
    thing_ids, stuff_ids : sequence of int, optional
        Dataset category ids of the contiguous thing labels ``1..num_things`` and stuff classes
        ``0..num_stuff-1``, used in ``segments_info``. Default: things ``1..num_things``, stuff
        ``num_things+1..num_things+num_stuff``.
    instance_score_thresh, overlap_thresh, stuff_area_thresh
        Fusion thresholds (detectron2's defaults 0.5, 0.5, 4096); see
        :func:`~fastpq.models.fusion.panoptic_fusion`.
    loss_weight_instance, loss_weight_semantic : float, default 1.0, 0.5
        Training losses: every torchvision Mask R-CNN loss is multiplied by
        ``loss_weight_instance``; ``loss_sem_seg`` is ``loss_weight_semantic`` x cross-entropy.
    sem_ignore_index : int, default 255
        Semantic target value that is ignored by the loss (void).
    weights : str or os.PathLike or mapping, optional
        A state-dict file (read with ``torch.load(..., weights_only=True)``) or a state dict,
        loaded strictly; ``None`` keeps the random initialisation. Nothing is ever downloaded:
        trained weights must come from the user.
    **maskrcnn_kwargs
        Passed to ``torchvision.models.detection.maskrcnn_resnet50_fpn`` (``box_score_thresh``,
        ``box_detections_per_img``, ``image_mean``, ...). ``size_divisible``, if given, must be a
        multiple of 32.

    Notes
    -----
    With ``weights_backbone=None`` torchvision builds the ResNet with ordinary ``BatchNorm2d`` and
    all layers trainable (a pretrained torchvision backbone would use ``FrozenBatchNorm2d``, whose
    state dict lacks ``num_batches_tracked``).

    Training mode: ``forward(images, targets)`` with one dict per image holding torchvision's
    ``boxes`` (float (N, 4), xyxy, input pixels), ``labels`` (int64 (N,), ``1..num_things``),
    ``masks`` (uint8 (N, H, W)) plus ``sem_seg`` (int64 (H, W): stuff ``0..num_stuff-1``, every
    thing pixel ``num_stuff``, void ``sem_ignore_index``; see :func:`sem_seg_targets_from_panoptic`).
    Returns the loss dict: torchvision's five Mask R-CNN losses and ``loss_sem_seg``. The semantic
    cross-entropy is computed at the transformed input scale (logits upsampled 4x, the target
    resized with nearest neighbour and padded with ``sem_ignore_index``), as detectron2 does.

    Eval mode: ``forward(images)`` returns one dict per image:

    * ``panoptic_seg``: ``(panoptic, segments_info)``, panoptic an int32 (H, W) id map at the input
      image size on the input device, 0 = void; ``segments_info`` as returned by
      :func:`~fastpq.models.fusion.panoptic_fusion` (dataset category ids);
    * ``instances``: torchvision's detections dict (``boxes``, ``labels`` contiguous
      ``1..num_things``, ``scores``, ``masks`` (N, 1, H, W) probabilities);
    * ``sem_seg``: float (num_stuff + 1, H, W) semantic logits at the input image size.
    """

    def __init__(self, num_things: int = 80, num_stuff: int = 53, min_size: int = 800, max_size: int = 1333, *,
                 thing_ids: Sequence[int] | None = None, stuff_ids: Sequence[int] | None = None,
                 instance_score_thresh: float = 0.5, overlap_thresh: float = 0.5, stuff_area_thresh: int = 4096,
                 loss_weight_instance: float = 1.0, loss_weight_semantic: float = 0.5, sem_ignore_index: int = 255,
                 weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None, **maskrcnn_kwargs):
        super().__init__()
        if num_things < 1 or num_stuff < 1:
            raise ValueError(f"PanopticFPN needs at least one thing and one stuff class; "
                             f"got num_things={num_things}, num_stuff={num_stuff}")
        if maskrcnn_kwargs.get("size_divisible", 32) % 32:
            raise ValueError(f"size_divisible must be a multiple of 32 (the stride of P5, which the semantic "
                             f"head upsamples 8x); got {maskrcnn_kwargs['size_divisible']}")
        thing_ids = list(range(1, num_things + 1)) if thing_ids is None else [int(i) for i in thing_ids]
        stuff_ids = (list(range(num_things + 1, num_things + num_stuff + 1)) if stuff_ids is None
                     else [int(i) for i in stuff_ids])
        if len(thing_ids) != num_things or len(stuff_ids) != num_stuff:
            raise ValueError(f"thing_ids has {len(thing_ids)} ids and stuff_ids {len(stuff_ids)}; "
                             f"expected {num_things} (num_things) and {num_stuff} (num_stuff)")
        if len(set(thing_ids + stuff_ids)) != num_things + num_stuff:
            all_ids = thing_ids + stuff_ids
            dup = sorted({i for i in all_ids if all_ids.count(i) > 1})
            raise ValueError(f"category ids must be unique across thing_ids and stuff_ids; repeated: {dup}")

        self.num_things, self.num_stuff = num_things, num_stuff
        self.thing_ids, self.stuff_ids = tuple(thing_ids), tuple(stuff_ids)
        self.instance_score_thresh = instance_score_thresh
        self.overlap_thresh = overlap_thresh
        self.stuff_area_thresh = stuff_area_thresh
        self.loss_weight_instance = loss_weight_instance
        self.loss_weight_semantic = loss_weight_semantic
        self.sem_ignore_index = sem_ignore_index

        mask_rcnn = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_things + 1,
                                          min_size=min_size, max_size=max_size, **maskrcnn_kwargs)
        self.transform = mask_rcnn.transform
        self.backbone = mask_rcnn.backbone
        self.rpn = mask_rcnn.rpn
        self.roi_heads = mask_rcnn.roi_heads
        self.semantic_head = SemanticFPNHead(self.backbone.out_channels, num_stuff + 1)

        if weights is not None:
            self._load_weights(weights)

    def _load_weights(self, weights) -> None:
        if isinstance(weights, Mapping):
            state, source = weights, "the given state dict"
        else:
            state, source = torch.load(weights, map_location="cpu", weights_only=True), f"weights file {weights}"
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise RuntimeError(f"{source} does not fit PanopticFPN(num_things={self.num_things}, "
                               f"num_stuff={self.num_stuff}): {exc}") from exc

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]] | None = None):
        """Losses (training mode) or panoptic predictions (eval mode); see the class docstring.

        Parameters
        ----------
        images : sequence of Tensor, each (3, H, W) float in 0..1
        targets : sequence of dict, optional
            Required in training mode, one per image; ignored in eval mode.

        Returns
        -------
        dict of str to Tensor (training) or list of dict (eval)

        Raises
        ------
        InputError
            In training mode: missing targets, a target without ``sem_seg`` or whose ``sem_seg``
            does not have its image's size, a degenerate box.
        """
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        if not self.training:
            return self._predict(list(images), original_sizes)

        if targets is None or len(targets) != len(images):
            raise InputError(f"training mode needs one target dict per image: got {len(images)} images and "
                             f"{'no' if targets is None else len(targets)} targets")
        sem_targets, det_targets = [], []
        for i, target in enumerate(targets):
            if "sem_seg" not in target:
                raise InputError(f"target of image {i} has no 'sem_seg' (an (H, W) int64 semantic target)")
            if tuple(target["sem_seg"].shape) != original_sizes[i]:
                raise InputError(f"the sem_seg target of image {i} has shape {tuple(target['sem_seg'].shape)}; "
                                 f"expected the image size {original_sizes[i]}")
            sem_targets.append(target["sem_seg"])
            det_targets.append({k: v for k, v in target.items() if k != "sem_seg"})

        image_list, det_targets = self.transform(list(images), det_targets)
        for i, target in enumerate(det_targets):
            boxes = target["boxes"]
            degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if degenerate.any():
                box = boxes[int(degenerate.nonzero()[0, 0])].tolist()
                raise InputError(f"target of image {i} has the degenerate box {box} (after resizing): boxes "
                                 f"must be x1 < x2, y1 < y2")
        features = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, features, det_targets)
        _, roi_losses = self.roi_heads(features, proposals, image_list.image_sizes, det_targets)
        losses = {name: self.loss_weight_instance * value for name, value in {**rpn_losses, **roi_losses}.items()}
        sem_logits = self.semantic_head(features)
        losses["loss_sem_seg"] = self.loss_weight_semantic * self._semantic_loss(
            sem_logits, sem_targets, image_list.image_sizes)
        return losses

    def _semantic_loss(self, sem_logits: torch.Tensor, sem_targets: list[torch.Tensor],
                       image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        """Cross-entropy of (B, C, Hp, Wp) logits against the targets resized to the transformed sizes.

        torchvision's transform resizes ``masks`` but not ``sem_seg``: each target is resized here with
        nearest neighbour to its transformed image size and padded to the batch with the ignore
        value. A batch without a single labelled pixel gives a zero loss (not NaN) that still
        keeps the graph.
        """
        batched = torch.full((sem_logits.shape[0], *sem_logits.shape[-2:]), self.sem_ignore_index,
                             dtype=torch.long, device=sem_logits.device)
        for i, (target, (h, w)) in enumerate(zip(sem_targets, image_sizes)):
            resized = F.interpolate(target[None, None].to(sem_logits.device, torch.float32), size=(h, w),
                                    mode="nearest")
            batched[i, :h, :w] = resized[0, 0].long()
        if not (batched != self.sem_ignore_index).any():
            return sem_logits.sum() * 0.0
        return F.cross_entropy(sem_logits, batched, ignore_index=self.sem_ignore_index)

    def _predict(self, images: list[torch.Tensor], original_sizes: list[tuple[int, int]]) -> list[dict]:
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        proposals, _ = self.rpn(image_list, features)
        detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        sem_logits = self.semantic_head(features)

        results = []
        for i, (instances, (h, w), size) in enumerate(zip(detections, image_list.image_sizes, original_sizes)):
            # detectron2's sem_seg_postprocess: crop the padding, resize to the input image size.
            logits = F.interpolate(sem_logits[i:i + 1, :, :h, :w], size=size, mode="bilinear",
                                   align_corners=False)[0]
            panoptic = panoptic_fusion(
                instances["masks"], instances["scores"], instances["labels"], logits.argmax(dim=0),
                thing_ids=self.thing_ids, stuff_ids=self.stuff_ids,
                instance_score_thresh=self.instance_score_thresh, overlap_thresh=self.overlap_thresh,
                stuff_area_thresh=self.stuff_area_thresh)
            results.append({"panoptic_seg": panoptic, "instances": instances, "sem_seg": logits})
        return results


def sem_seg_targets_from_panoptic(panoptic, segments_info: Sequence[Mapping], *, thing_ids: Sequence[int],
                                  stuff_ids: Sequence[int], ignore_index: int = 255) -> torch.Tensor:
    """The semantic training target of Panoptic FPN from a panoptic id map and its segment table.

    Stuff segments become their class ``0..len(stuff_ids)-1`` (position in ``stuff_ids``), thing
    segments (crowd included, as detectron2's ``prepare_panoptic_fpn.py``) the "thing/other" class
    ``len(stuff_ids)``, and every other pixel (void, id 0 or unlisted ids) ``ignore_index``.

    Parameters
    ----------
    panoptic : Tensor or array-like, shape (H, W), integer
        Segment ids (e.g. ``rgb2id`` of a COCO panoptic PNG).
    segments_info : sequence of dict
        Each with ``id`` and ``category_id`` (dataset category id).
    thing_ids, stuff_ids : sequence of int
        Dataset category ids of the thing and stuff classes (as given to :class:`PanopticFPN`).
    ignore_index : int, default 255

    Returns
    -------
    Tensor, shape (H, W), int64, on the device of ``panoptic`` (CPU for arrays)

    Raises
    ------
    InputError
        If a segment's category is neither in ``thing_ids`` nor in ``stuff_ids``, or a segment id
        is listed twice.
    """
    panoptic = torch.as_tensor(panoptic)
    class_of = {int(c): len(stuff_ids) for c in thing_ids}
    class_of.update({int(c): k for k, c in enumerate(stuff_ids)})
    ids, classes = [], []
    for segment in segments_info:
        category = int(segment["category_id"])
        if category not in class_of:
            raise InputError(f"segment {segment['id']} has category {category}, which is neither a thing "
                             f"nor a stuff category of the model")
        ids.append(int(segment["id"]))
        classes.append(class_of[category])
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"segment ids listed more than once in segments_info: {dup}")
    target = torch.full(panoptic.shape, ignore_index, dtype=torch.long, device=panoptic.device)
    if not ids:
        return target
    ids_sorted, order = torch.sort(torch.tensor(ids, dtype=torch.int64, device=panoptic.device))
    classes_sorted = torch.tensor(classes, dtype=torch.long, device=panoptic.device)[order]
    flat = panoptic.to(torch.int64)
    position = torch.searchsorted(ids_sorted, flat).clamp_(max=len(ids) - 1)
    listed = (ids_sorted[position] == flat) & (flat != 0)
    return torch.where(listed, classes_sorted[position], target)

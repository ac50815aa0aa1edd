"""``fastpq.PanopticEvaluator``: Panoptic Quality of model outputs, as detectron2 evaluates them.

detectron2's ``COCOPanopticEvaluator`` encodes every predicted map as a PNG, gathers the PNGs on
the main process, writes them to a folder with a predictions JSON and runs panopticapi's
``pq_compute`` at the end. This evaluator takes the same ``process(inputs, outputs)`` calls and
returns the same ``evaluate()`` dict, but scores each image as it comes: the maps go straight
to :class:`fastpq.PanopticQuality` (no PNG, no files) and only per-category sums are kept and
reduced across ``torch.distributed`` ranks. The numbers are panopticapi's.

It needs neither detectron2 nor torch: ``inputs`` and ``outputs`` are plain dicts whose maps are
NumPy arrays or torch tensors (tensors on a GPU are copied to the host first, as detectron2
does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from fastpq.core.accumulator import PQAccumulator
from fastpq.core.arrays import as_array, check_integer_map, on_device, to_host
from fastpq.errors import InputError, SegmentError
from fastpq.io.coco import read_png_ids
from fastpq.streaming.metric import PanopticQuality
from fastpq.core.result import PQResult

logger = logging.getLogger(__name__)

#: detectron2's result keys: (key, split, score).
_DETECTRON2_KEYS = (("PQ", "All", "pq"), ("SQ", "All", "sq"), ("RQ", "All", "rq"),
                    ("PQ_th", "Things", "pq"), ("SQ_th", "Things", "sq"), ("RQ_th", "Things", "rq"),
                    ("PQ_st", "Stuff", "pq"), ("SQ_st", "Stuff", "sq"), ("RQ_st", "Stuff", "rq"))


class PanopticEvaluator:
    """detectron2-style evaluator of panoptic model outputs, with panopticapi's numbers.

    Parameters
    ----------
    categories : Categories, COCO categories list, {'things': [...], 'stuff': [...]} or preset
        The dataset's category table ('coco' is the 133 COCO panoptic categories). Category ids
        in segment tables are these dataset ids, unless a contiguous mapping is given.
    contiguous_to_dataset_id : mapping of int to int, optional
        For segments that carry ``isthing`` (detectron2 models and detectron2's COCO panoptic
        dataset dicts): ``category_id`` is a contiguous training id, mapped to the dataset id
        with this table (detectron2's ``thing_dataset_id_to_contiguous_id`` reversed). Segments
        without ``isthing`` keep their ``category_id``, as in detectron2.
    stuff_contiguous_to_dataset_id : mapping of int to int, optional
        The table for segments with a false ``isthing`` when stuff has its own contiguous ids
        (detectron2's ``stuff_dataset_id_to_contiguous_id`` reversed). Default:
        ``contiguous_to_dataset_id``.
    label_divisor : int, optional
        For outputs whose ``segments_info`` is None (detectron2's Panoptic-DeepLab convention):
        the map holds ``contiguous category * label_divisor + instance`` and -1 is void; a class
        is a thing when ``contiguous_to_dataset_id`` maps it, and ids are the labels + 1.
    distributed : bool, default True
        Under an initialised ``torch.distributed`` process group, :meth:`evaluate` and
        :meth:`compute` sum every rank's images (collective calls that every rank must make);
        False scores this process's images only.
    process_group, device
        As in :class:`fastpq.PanopticQuality`.

    Attributes
    ----------
    metric : PanopticQuality
        The per-category sums of the images processed since the last :meth:`reset`.
    result : PQResult or None
        The full result of the last :meth:`evaluate` (per class, counts, tables).

    Raises
    ------
    fastpq.errors.InputError
        An invalid category table, a contiguous mapping to ids outside it, a non-positive
        ``label_divisor``.

    Notes
    -----
    Segment tables from :class:`fastpq.models.PanopticFPN` already hold dataset ids: give no
    contiguous mapping for it. Unlike detectron2, :meth:`evaluate` returns the result on every
    rank (detectron2 returns None off the main process), and an empty Things or Stuff split
    scores 0 where panopticapi divides by zero.

    Examples
    --------
    >>> evaluator = fastpq.PanopticEvaluator("coco")                 # doctest: +SKIP
    >>> evaluator.reset()                                            # doctest: +SKIP
    >>> for inputs in loader:                                        # doctest: +SKIP
    ...     evaluator.process(inputs, model(inputs))
    >>> evaluator.evaluate()["panoptic_seg"]["PQ"]                   # doctest: +SKIP
    """

    def __init__(self, categories, *, contiguous_to_dataset_id: Mapping[int, int] | None = None,
                 stuff_contiguous_to_dataset_id: Mapping[int, int] | None = None,
                 label_divisor: int | None = None, distributed: bool = True, process_group=None,
                 device=None):
        self.metric = PanopticQuality(categories, process_group=process_group, device=device)
        self.categories = self.metric.categories
        if stuff_contiguous_to_dataset_id is not None and contiguous_to_dataset_id is None:
            raise InputError("stuff_contiguous_to_dataset_id needs contiguous_to_dataset_id (the "
                             "thing table) too")
        self._thing_ids = self._check_mapping(contiguous_to_dataset_id, "contiguous_to_dataset_id")
        self._stuff_ids = (self._thing_ids if stuff_contiguous_to_dataset_id is None else
                           self._check_mapping(stuff_contiguous_to_dataset_id,
                                               "stuff_contiguous_to_dataset_id"))
        if label_divisor is not None and int(label_divisor) < 1:
            raise InputError(f"label_divisor must be a positive integer, not {label_divisor!r}")
        self.label_divisor = None if label_divisor is None else int(label_divisor)
        self.distributed = bool(distributed)
        self.result: PQResult | None = None
        self._n_processed = 0

    def _check_mapping(self, mapping, name):
        if mapping is None:
            return None
        table = {int(k): int(v) for k, v in mapping.items()}
        if not table:
            raise InputError(f"{name} is empty")
        unknown = sorted({v for v in table.values() if self.categories.index(v) < 0})
        if unknown:
            raise InputError(f"{name} maps to category ids {unknown}, which are not in the "
                             "category table")
        return table

    # -- detectron2's DatasetEvaluator ------------------------------------------------------------
    def reset(self) -> None:
        """Forget every processed image and the last result."""
        self.metric.reset()
        self.result = None
        self._n_processed = 0

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        """Score a batch of model outputs against its ground truth.

        Parameters
        ----------
        inputs : sequence of dict
            One dict per image (detectron2's dataset dicts): ``segments_info`` (dicts with
            ``id``, ``category_id``, ``iscrowd``) and the ground-truth map, either ``pan_seg``
            ((H, W) integer ids or (H, W, 3) uint8 RGB, array or tensor) or
            ``pan_seg_file_name`` (a COCO panoptic PNG); ``image_id`` names the image in errors.
        outputs : sequence of dict
            One dict per image with ``panoptic_seg``: ``(seg, segments_info)``, seg an (H, W)
            integer id map (array or tensor, 0 = void) and segments_info dicts with ``id`` and
            ``category_id`` (or None with ``label_divisor``, see the class).

        Raises
        ------
        fastpq.errors.InputError
            A missing key, a ground-truth file that cannot be read, a contiguous category id
            outside the mapping, and everything :func:`fastpq.evaluate` refuses (a predicted
            segment id listed but absent from the map or the reverse, an unknown category, sizes
            that differ), naming the image (index since :meth:`reset`, and ``image_id``) and the
            segment id. A batch with a refused image adds nothing.
        FileNotFoundError
            ``pan_seg_file_name`` does not exist.
        """
        if len(inputs) != len(outputs):
            raise InputError(f"process() got {len(inputs)} inputs but {len(outputs)} outputs")
        locations, gts, gt_segments, preds, pred_segments = [], [], [], [], []
        for k, (image, output) in enumerate(zip(inputs, outputs)):
            loc = {"image_index": self._n_processed + k, "image_id": image.get("image_id")}
            gt, gt_info = self._ground_truth(image, loc)
            pred, pred_info = self._prediction(output, loc)
            locations.append(loc)
            gts.append(gt)
            gt_segments.append(gt_info)
            preds.append(pred)
            pred_segments.append(pred_info)
        if not locations:
            return
        try:
            self.metric.update(gts, preds, gt_segments=gt_segments, pred_segments=pred_segments)
        except InputError as error:
            if error.image_index is None or not 0 <= error.image_index < len(locations):
                raise
            # the metric names the image by its position in this batch
            raise error.relocated(**locations[error.image_index]) from None
        self._n_processed += len(locations)

    def evaluate(self) -> dict:
        """PQ, SQ and RQ in percent, in detectron2's ``COCOPanopticEvaluator`` layout.

        Returns
        -------
        dict
            ``{'panoptic_seg': {'PQ', 'SQ', 'RQ', 'PQ_th', 'SQ_th', 'RQ_th', 'PQ_st', 'SQ_st',
            'RQ_st'}}``, each ``100 *`` the reference's fraction. The full
            :class:`~fastpq.core.result.PQResult` is kept in :attr:`result`.

        Notes
        -----
        A collective call under ``torch.distributed`` (see ``distributed``). Logs the
        reference's table at INFO level.
        """
        result = self.compute()
        logger.info("Panoptic Evaluation Results:\n%s", result.table())
        return {"panoptic_seg": {key: 100 * getattr(result.split(split), score)
                                 for key, split, score in _DETECTRON2_KEYS}}

    # -- torchmetrics' names ----------------------------------------------------------------------
    def update(self, outputs: Sequence[Mapping], targets: Sequence[Mapping]) -> None:
        """``process(targets, outputs)`` in torchmetrics' argument order (predictions first)."""
        self.process(targets, outputs)

    def compute(self) -> PQResult:
        """The :class:`~fastpq.core.result.PQResult` of every processed image (kept in :attr:`result`).

        A collective call under ``torch.distributed`` unless ``distributed=False``.
        """
        if self.distributed:
            self.result = self.metric.compute()
        else:
            self.result = PQAccumulator.from_dict(self.metric.state_dict()).result()
        return self.result

    # -- adapters ---------------------------------------------------------------------------------
    def _ground_truth(self, image: Mapping, loc: dict):
        if "segments_info" not in image:
            raise InputError(f"the input has no 'segments_info' (the ground-truth segment "
                             f"table); its keys are {sorted(image)}", **loc)
        if "pan_seg" in image:
            gt = _on_host(image["pan_seg"], "ground-truth", loc)
        elif "pan_seg_file_name" in image:
            gt = read_png_ids(image["pan_seg_file_name"], "ground-truth", **loc)
        else:
            raise InputError(f"the input has neither 'pan_seg' (a ground-truth id map) nor "
                             f"'pan_seg_file_name' (a COCO panoptic PNG); its keys are "
                             f"{sorted(image)}", **loc)
        return gt, self._dataset_ids(image["segments_info"], loc, "ground-truth")

    def _prediction(self, output: Mapping, loc: dict):
        if "panoptic_seg" not in output:
            raise InputError(f"the model output has no 'panoptic_seg'; its keys are "
                             f"{sorted(output)}", **loc)
        try:
            seg, segments_info = output["panoptic_seg"]
        except (TypeError, ValueError):
            raise InputError("the output's 'panoptic_seg' must be a pair (seg, segments_info)",
                             **loc) from None
        seg = _on_host(seg, "predicted", loc)
        if segments_info is None:
            seg, segments_info = self._from_divisor_map(seg, loc)
        return seg, self._dataset_ids(segments_info, loc, "predicted")

    def _dataset_ids(self, segments_info, loc: dict, side: str):
        """segments_info with dataset category ids (new dicts only where one is converted)."""
        if self._thing_ids is None:
            return segments_info
        converted = []
        for segment in segments_info:
            if "isthing" not in segment:  # detectron2: the category is a dataset id already
                converted.append(segment)
                continue
            isthing = bool(segment["isthing"])
            table = self._thing_ids if isthing else self._stuff_ids
            contiguous = segment.get("category_id")
            try:
                dataset_id = table[contiguous]
            except (KeyError, TypeError):
                name = ("contiguous_to_dataset_id" if isthing or table is self._thing_ids
                        else "stuff_contiguous_to_dataset_id")
                raise SegmentError(
                    f"{side} segment {segment.get('id')!r} ({'thing' if isthing else 'stuff'}) "
                    f"has contiguous category_id {contiguous!r}, which {name} does not map (it "
                    f"maps {min(table)}..{max(table)})", segment_id=segment.get("id"),
                    **loc) from None
            converted.append({**segment, "category_id": dataset_id})
        return converted

    def _from_divisor_map(self, seg, loc: dict):
        """detectron2's ``category * label_divisor + instance`` output: ids + 1 and segments."""
        if self.label_divisor is None:
            raise InputError("the output's segments_info is None, which detectron2 uses for "
                             "category * label_divisor + instance maps; pass label_divisor= to "
                             "the evaluator", **loc)
        seg = as_array(seg, what="predicted", **loc)
        check_integer_map(seg, "predicted", **loc)
        labels = np.unique(seg)
        if labels.size and labels[0] < -1:
            raise InputError(f"the predicted map holds label {int(labels[0])}; with "
                             "segments_info None, labels are >= 0 and -1 is void",
                             segment_id=int(labels[0]), **loc)
        segments_info = []
        for label in labels[labels >= 0].tolist():
            category = label // self.label_divisor
            segment = {"id": label + 1, "category_id": category}
            if self._thing_ids is not None:
                segment["isthing"] = category in self._thing_ids
            segments_info.append(segment)
        return seg.astype(np.int64) + 1, segments_info

    def __repr__(self):
        return (f"PanopticEvaluator({len(self.categories)} categories, "
                f"{self._n_processed} images processed)")


def _on_host(x, what: str, loc: dict):
    """A map in host memory: GPU maps are copied to the host, as detectron2's ``.cpu()``."""
    return to_host(x, what=what, **loc) if on_device(x) else x



"""The validation policy: what each front door refuses, warns about or defers, in one place.

One image's inputs are checked the same way everywhere (map sizes, segments_info lists, the ids a
map holds against the ids its table lists); what differs is the answer to an inconsistency, the
:class:`Policy`:

* ``STRICT`` — arrays (:func:`fastpq.evaluate`, :class:`fastpq.PanopticQuality` on host maps):
  refuse it, with a :class:`~fastpq.errors.SegmentError` naming image and segment id.
* ``REFERENCE`` — files (``pq_compute``): do what panopticapi's ``pq_compute`` does (SPEC §2):
  its prediction sanity checks raise its ``KeyError`` texts; what it accepts silently but is
  suspect (stale GT areas, GT ids missing from the JSON) gives its numbers and a
  :class:`~fastpq.errors.SuspectNote`; unknown categories are kept with index -1.
* ``DEFERRED`` — maps on a GPU: only what the host can check without reading device memory is
  refused at ``update()``; the rest is found on the device as status bits and raised at
  ``compute()`` (:mod:`fastpq.gpu.device_state`).

Every error and note carries its location as fields (:mod:`fastpq.errors`).
"""

from __future__ import annotations

import enum
from typing import Mapping, Sequence

import numpy as np

from fastpq.core.categories import Categories
from fastpq.core.segments import SegmentTable, coco_table
from fastpq.errors import InputError, SegmentError, SuspectNote, reference_error

#: The largest id of the GPU path's int32 id maps.
INT32_MAX = (1 << 31) - 1


class Policy(enum.Enum):
    """How inconsistent input is answered (see the module docstring)."""

    STRICT = "strict"
    REFERENCE = "reference"
    DEFERRED = "deferred"


def check_same_size(gt_shape, pred_shape, *, image_index=None, image_id=None, gt_file=None,
                    pred_file=None) -> None:
    """Refuse an image whose ground truth and prediction differ in height or width.

    Raises
    ------
    InputError
        Naming both sizes, and both files when given (in the message: the location fields hold
        the image only).
    """
    if tuple(gt_shape[:2]) == tuple(pred_shape[:2]):
        return
    gt_name = "" if gt_file is None else f" {gt_file}"
    pred_name = "" if pred_file is None else f" {pred_file}"
    raise InputError(f"the ground truth{gt_name} is {gt_shape[0]}x{gt_shape[1]} but the "
                     f"prediction{pred_name} is {pred_shape[0]}x{pred_shape[1]}",
                     image_index=image_index, image_id=image_id)


def segment_tables(gt_segments: Sequence[Mapping] | None, pred_segments: Sequence[Mapping] | None,
                   categories: Categories, policy: Policy, *, image_index=None, image_id=None,
                   gt_file=None, pred_file=None) -> tuple[SegmentTable, SegmentTable]:
    """The (GT, prediction) segment tables of one image's ``segments_info`` lists.

    Under every policy, malformed lists are refused (:func:`fastpq.core.segments.coco_table`).
    ``STRICT`` and ``DEFERRED`` refuse unknown categories; ``REFERENCE`` keeps them with index -1
    and takes GT areas from the JSON (the reference trusts them); ``DEFERRED`` refuses ids
    beyond the GPU path's int32.

    Raises
    ------
    InputError
        A missing list (``DEFERRED``: COCO maps on a GPU need both).
    SegmentError
        What :func:`~fastpq.core.segments.coco_table` refuses; under ``DEFERRED`` an id above
        2**31 - 1.
    """
    reference = policy is Policy.REFERENCE
    unknown = "drop" if reference else "error"
    sides = [(gt_segments, "gt", gt_file), (pred_segments, "pred", pred_file)]
    if reference:  # the prediction's list is read first, as in the reference
        sides.reverse()
    tables = {}
    for segments, side, file in sides:
        if segments is None:
            raise InputError("COCO maps need segments_info on both sides",
                             image_index=image_index, image_id=image_id)
        table = coco_table(segments, categories, side=side, image_index=image_index,
                           image_id=image_id, file=file, unknown_category=unknown,
                           need_area=reference and side == "gt")
        if policy is Policy.DEFERRED and table.ids.size and table.ids.max() > INT32_MAX:
            name = "ground-truth" if side == "gt" else "predicted"
            largest = int(table.ids.max())
            raise SegmentError(f"{name} segment id {largest} does not fit the GPU path's int32 "
                               "ids (COCO ids are < 2**24)", image_index=image_index,
                               image_id=image_id, segment_id=largest)
        tables[side] = table
    return tables["gt"], tables["pred"]


def check_id_range(present: np.ndarray, what: str, limit: int | None, *, image_index=None,
                   image_id=None) -> None:
    """Refuse negative ids, and ids at or above ``limit``, among the sorted distinct ids of a map.

    Raises
    ------
    InputError
        Naming the first offending id.
    """
    if present.size == 0:
        return
    if present[0] < 0:  # sorted
        bad = int(present[0])
        raise InputError(f"the {what} map holds the negative id {bad}; ids must be >= 0",
                         image_index=image_index, image_id=image_id, segment_id=bad)
    if limit is not None and present[-1] >= limit:
        bad = int(present[-1])
        raise InputError(f"the {what} map holds id {bad}, beyond the COCO panoptic encoding "
                         f"(ids < 2**24 = {limit}); use label_divisor= for larger ids",
                         image_index=image_index, image_id=image_id, segment_id=bad)


def check_segments(policy: Policy, gt_table: SegmentTable, pred_table: SegmentTable,
                   gt_present: np.ndarray, pred_present: np.ndarray, *, gt_area=None,
                   pred_segments: Sequence[Mapping] | None = None, image_index=None,
                   image_id=None, gt_file=None, pred_file=None) -> list[SuspectNote]:
    """Compare each side's listed segments with the ids its map holds, as ``policy`` says.

    Parameters
    ----------
    policy : Policy
        ``DEFERRED`` checks nothing here (the device does).
    gt_table, pred_table : SegmentTable
    gt_present, pred_present : int64 (N,)
        The distinct ids of each map, ascending (0 included when present).
    gt_area : (N,) array, optional
        Pixels of each ``gt_present`` id (``REFERENCE`` only).
    pred_segments : list of dict, optional
        The prediction's segments_info (``REFERENCE`` only: its error names the category id as
        given).

    Returns
    -------
    list of SuspectNote
        Under ``REFERENCE``: GT segments whose JSON area differs from their pixels, GT ids in the
        PNG but not the JSON. Empty otherwise.

    Raises
    ------
    SegmentError
        ``STRICT``: a non-void id in a map but not in its table, or a listed id without pixels.
    KeyError
        ``REFERENCE``: the reference's prediction sanity errors, its texts with the file
        appended.
    """
    location = {"image_index": image_index, "image_id": image_id}
    if policy is Policy.STRICT:
        _listed_vs_present(gt_table, gt_present, "ground-truth", location)
        _listed_vs_present(pred_table, pred_present, "predicted", location)
        return []
    if policy is Policy.REFERENCE:
        _reference_prediction_checks(pred_table, pred_present, pred_segments, image_id,
                                     pred_file, image_index)
        return _suspect_ground_truth(gt_table, gt_present, gt_area, image_id, gt_file,
                                     image_index)
    return []


def _listed_vs_present(table: SegmentTable, present: np.ndarray, what: str, location) -> None:
    """Every non-void id of the map is listed and every listed id covers pixels."""
    # Python sets: an image has tens of ids, where np.isin costs more than the pixel pass
    present = [i for i in present.tolist() if i != 0]
    listed = table.ids.tolist()
    listed_set = set(listed)
    for bad in present:  # ascending: the smallest unlisted id is named
        if bad not in listed_set:
            raise SegmentError(f"{what} segment id {bad} is in the map but not in segments_info",
                               segment_id=bad, **location)
    if len(listed_set) == len(present):  # each listed id is distinct and all present ids are listed
        return
    present_set = set(present)
    for bad in listed:  # in listing order
        if bad not in present_set:
            raise SegmentError(f"{what} segment id {bad} is in segments_info but covers no pixel "
                               "of the map", segment_id=bad, **location)


def distinct_ids(ids: np.ndarray, *, ascending: bool = False) -> np.ndarray:
    """The distinct values of ``ids``, ascending (``np.unique``); ``ascending``: ``ids`` is
    already sorted (a pair table's GT column), and one comparison with the neighbour does it."""
    if not ascending:
        return np.unique(ids)
    if ids.size < 2:
        return ids.copy()
    keep = np.empty(ids.size, bool)
    keep[0] = True
    np.not_equal(ids[1:], ids[:-1], out=keep[1:])
    return ids[keep]


def _reference_prediction_checks(table, present, segments_info, image_id, pred_file,
                                 image_index) -> None:
    """The reference's prediction sanity pass, in its order (ascending ids in the PNG)."""
    location = {"image_index": image_index, "image_id": image_id, "file": pred_file}
    listed = {int(i): k for k, i in enumerate(table.ids)}
    present_ids = present.tolist()
    for label in present_ids:
        k = listed.get(label)
        if k is None:
            if label == 0:
                continue
            raise reference_error(KeyError, "In the image with ID {} segment with ID {} is "
                                  "presented in PNG and not presented in JSON.".format(
                                      image_id, label), segment_id=label, **location)
        if table.category[k] < 0:
            raise reference_error(KeyError, "In the image with ID {} segment with ID {} has "
                                  "unknown category_id {}.".format(
                                      image_id, label, segments_info[k]["category_id"]),
                                  segment_id=label, **location)
    leftover = set(listed) - set(present_ids)
    if leftover:
        leftover = list(leftover)
        raise reference_error(KeyError, "In the image with ID {} the following segment IDs {} are "
                              "presented in JSON and not presented in PNG.".format(
                                  image_id, leftover), segment_id=leftover[0], **location)


def _suspect_ground_truth(table, present, area, image_id, gt_file, image_index) -> list:
    """What the reference accepts silently in a GT image: JSON areas that differ from the pixels,
    PNG ids the JSON does not list (neither segments nor void, SPEC §2.3-2.4)."""
    location = {"image_index": image_index, "image_id": image_id, "file": gt_file}
    notes = []
    pixels = dict(zip(present.tolist(), area.tolist()))
    listed = table.ids.tolist()
    for sid, json_area in zip(listed, table.area.tolist()):
        px = pixels.get(sid, 0)
        if px != json_area:
            notes.append(SuspectNote(f"ground-truth segment {sid} has area {json_area:g} in the "
                                     f"JSON but {px} pixels in the PNG; the JSON area is used, as "
                                     "the reference does", segment_id=sid, **location))
    for sid in sorted(set(pixels) - set(listed) - {0}):
        notes.append(SuspectNote(f"ground-truth segment {sid} is in the PNG but not in the JSON; "
                                 "as in the reference it is neither a segment nor void",
                                 segment_id=sid, **location))
    return notes

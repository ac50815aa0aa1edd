"""Segment tables: per image, the segments of one side (GT or prediction) as parallel arrays.

A table keeps the order in which segments were listed (``segments_info`` order), because the
reference walks GT segments in that order when it remembers crowd regions (SPEC §2.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from fastpq.core.categories import Categories
from fastpq.errors import SegmentError

#: COCO panoptic ids are 24-bit (id = R + 256 G + 256² B).
COCO_ID_LIMIT = 1 << 24

_INT = frozenset({int})


@dataclass
class SegmentTable:
    """Segments of one side of one image.

    Attributes
    ----------
    ids : int64 (S,)
        Segment ids as they appear in the label map, in listing order.
    category : int64 (S,)
        Dense category index (position in :class:`Categories`); -1 for a category outside the
        table (only the file path lets that through, as the reference does).
    iscrowd : bool (S,)
        Crowd flag (``iscrowd == 1`` as the reference tests it); always False for predictions.
    area : float64 (S,) or None
        Areas to use in IoU unions. None: take them from the pixels (the pair table marginals).
    """

    ids: np.ndarray
    category: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.size)


def coco_table(segments_info: Sequence[Mapping], categories: Categories, *, side: str,
               image_index=None, image_id=None, file=None, unknown_category: str = "error",
               need_area: bool = False) -> SegmentTable:
    """Build a table from a COCO ``segments_info`` list.

    Parameters
    ----------
    side : {'gt', 'pred'}
    unknown_category : {'error', 'drop'}
        'drop' keeps the segment with category index -1 (the reference accumulates it but never
        reports it); 'error' refuses it.
    need_area : bool
        Take ``area`` from each GT segment (the reference trusts the JSON area).

    Raises
    ------
    SegmentError
        Duplicate ids, non-integer or negative ids, GT id 0, a missing ``iscrowd`` (GT) or
        ``category_id``, an unknown category (when ``unknown_category='error'``).
    """
    table = _coco_table_fast(segments_info, categories, side, unknown_category, need_area)
    if table is not None:
        return table
    location = {"image_index": image_index, "image_id": image_id, "file": file}
    name = "ground-truth" if side == "gt" else "predicted"
    ids, cats, crowd, area = [], [], [], []
    index = categories.index_map()
    seen: set = set()
    for k, seg in enumerate(segments_info):
        try:
            sid = seg["id"]
            cid = seg["category_id"]
        except (KeyError, TypeError) as e:
            raise SegmentError(f"{name} segments_info entry {k} has no {e} key: {seg!r}",
                               **location) from None
        if isinstance(sid, bool) or not isinstance(sid, (int, np.integer)) or sid < 0:
            raise SegmentError(f"{name} segment id {sid!r} is not a non-negative integer",
                               **location)
        if sid in seen:
            raise SegmentError(f"{name} segment id {sid} is listed twice in segments_info",
                               segment_id=sid, **location)
        seen.add(sid)
        if side == "gt" and sid == 0:
            raise SegmentError("ground-truth segment id 0 is listed in segments_info, but 0 is "
                               "VOID in the COCO panoptic format", segment_id=0, **location)
        ids.append(sid)
        c = index.get(cid, -1)
        if c < 0 and unknown_category == "error":
            raise SegmentError(f"{name} segment {sid} has unknown category_id {cid!r} (not in the "
                               "category table)", segment_id=sid, **location)
        cats.append(c)
        if side == "gt":
            if "iscrowd" not in seg:
                raise SegmentError(f"ground-truth segment {sid} has no 'iscrowd' key",
                                   segment_id=sid, **location)
            crowd.append(seg["iscrowd"] == 1)
            if need_area:
                if "area" not in seg:
                    raise SegmentError(f"ground-truth segment {sid} has no 'area' key",
                                       segment_id=sid, **location)
                area.append(seg["area"])
    n = len(ids)
    return SegmentTable(np.array(ids, np.int64).reshape(n), np.array(cats, np.int64).reshape(n),
                        np.array(crowd, bool).reshape(n) if side == "gt" else np.zeros(n, bool),
                        np.array(area, np.float64).reshape(n) if need_area else None)


def _coco_table_fast(segments_info, categories: Categories, side: str, unknown_category: str,
                     need_area: bool) -> SegmentTable | None:
    """The table of a well-formed list, field by field; None when any check fails, so that the
    caller's entry-by-entry loop finds the first bad entry and names it."""
    try:
        ids = [seg["id"] for seg in segments_info]
        index = categories.index_map()
        cats = [index.get(seg["category_id"], -1) for seg in segments_info]
        crowd = [seg["iscrowd"] == 1 for seg in segments_info] if side == "gt" else None
        area = [seg["area"] for seg in segments_info] if need_area else None
    except (KeyError, TypeError):
        return None
    n = len(ids)
    if not set(map(type, ids)) <= _INT or len(set(ids)) != n:
        return None
    if n and (min(ids) < (1 if side == "gt" else 0) or max(ids) >= 2**63):
        return None
    if unknown_category == "error" and -1 in cats:
        return None
    try:
        area_array = np.array(area, np.float64).reshape(n) if need_area else None
    except (TypeError, ValueError):
        return None
    return SegmentTable(np.array(ids, np.int64), np.array(cats, np.int64),
                        np.array(crowd, bool).reshape(n) if side == "gt" else np.zeros(n, bool),
                        area_array)

"""Generated COCO scenes re-encoded in the pairs and divisor conventions (test data only)."""

from __future__ import annotations

import numpy as np


def category_instance(ids: np.ndarray, segments: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(category, instance) int32 maps of a COCO id map and its segments_info.

    Void (id 0) becomes category 0; a crowd segment becomes instance 0 of its category; every
    other segment gets instance k + 1, k its position in ``segments``.
    """
    seg_ids = np.array([0] + [s["id"] for s in segments], np.int64)
    category = np.array([0] + [s["category_id"] for s in segments], np.int32)
    instance = np.array([0] + [0 if s.get("iscrowd") else k + 1 for k, s in enumerate(segments)],
                        np.int32)
    order = np.argsort(seg_ids)
    row = order[np.searchsorted(seg_ids[order], ids)]
    return category[row], instance[row]


def pairs_map(ids: np.ndarray, segments: list[dict]) -> np.ndarray:
    """(H, W, 2) [category, instance] map (the pairs convention)."""
    return np.stack(category_instance(ids, segments), axis=-1)


def divisor_map(ids: np.ndarray, segments: list[dict], label_divisor: int = 1000) -> np.ndarray:
    """(H, W) ``category * label_divisor + instance`` map (the divisor convention)."""
    category, instance = category_instance(ids, segments)
    return category * label_divisor + instance

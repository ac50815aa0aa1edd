"""Helpers shared by the in-memory benchmarks: timing, and torchmetrics fed the same scenes."""

from __future__ import annotations

import statistics
import time

import numpy as np

from fastpq.core.categories import Categories


def median_time(fn, repeat: int, warmup: bool = True) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs, after one warm-up run (JIT, caches)
    unless ``warmup`` is False."""
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def category_instance(ids: np.ndarray, segments: list[dict]) -> np.ndarray:
    """(H, W, 2) int64 [category, instance] map of a COCO id map: void -> category 0 (not a
    category: torchmetrics' void), segment k of ``segments`` -> instance k + 1."""
    seg_ids = np.array([0] + [s["id"] for s in segments], np.int64)
    table = np.array([(0, 0)] + [(s["category_id"], k + 1) for k, s in enumerate(segments)],
                     np.int64)
    order = np.argsort(seg_ids)
    return table[order[np.searchsorted(seg_ids[order], ids)]]


def torchmetrics_run(images, categories: Categories):
    """A function that scores ``images`` ((gt, gt_segments, pred, pred_segments) scenes) with
    torchmetrics' PanopticQuality on CPU: one update per image, then compute."""
    import torch
    from torchmetrics.detection import PanopticQuality

    things = [c for c, t in zip(categories.ids, categories.isthing) if t]
    stuff = [c for c, t in zip(categories.ids, categories.isthing) if not t]
    pairs = [(torch.from_numpy(category_instance(p, ps))[None],
              torch.from_numpy(category_instance(g, gs))[None]) for g, gs, p, ps in images]

    def run():
        metric = PanopticQuality(things=things, stuffs=stuff, allow_unknown_preds_category=True)
        for pred, target in pairs:
            metric.update(pred, target)
        metric.compute()

    return run

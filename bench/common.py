"""Helpers shared by the benchmarks: timing, torchmetrics fed the same scenes, and a tool run in a
fresh Python subprocess with the peak resident memory of its process tree."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
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


def run_python(code: str, env: dict | None = None, unset=(), interval: float = 0.005) -> dict:
    """Run ``code`` in a fresh ``python -c`` subprocess (this interpreter), sampling the resident
    memory of its whole process tree every ``interval`` seconds (children included: panopticapi
    uses a process pool).

    The child reports with one line ``RESULT <json object>`` on stdout (the last one counts).

    Parameters
    ----------
    code : str
        The program.
    env : dict, optional
        Variables set over this process's environment; ``unset`` names variables removed from it.

    Returns
    -------
    dict
        The child's ``RESULT`` object, plus ``peak_mb`` (peak tree RSS, MiB) and ``spawned``
        (``time.perf_counter()`` just before the child was started: the clock is
        CLOCK_MONOTONIC, shared by every process, so a child's own ``perf_counter()`` readings
        minus ``spawned`` time it from its start).

    Raises
    ------
    RuntimeError
        The child failed or printed no ``RESULT`` line (its stderr tail in the message).
    """
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    environment.update(env or {})
    spawned = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment)
    rss = proc_tree_rss if os.path.exists(f"/proc/{proc.pid}/task") else psutil_tree_rss
    peak = 0
    while proc.poll() is None:
        peak = max(peak, rss(proc.pid))
        time.sleep(interval)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the subprocess failed (exit status {proc.returncode}):\n{err[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["peak_mb"] = peak / 2**20
    result["spawned"] = spawned
    return result


def proc_tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants, from /proc (Linux). A few file reads:
    psutil's children() scans every process, which every 5 ms took a quarter of a core from the
    2-core machine the tools run on."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(child) for child in f.read().split())
        except (OSError, ValueError):  # the process or one of its threads has just ended
            pass
    return total


def psutil_tree_rss(pid: int) -> int:
    """:func:`proc_tree_rss` through psutil, where there is no /proc."""
    import psutil

    try:
        parent = psutil.Process(pid)
        total = parent.memory_info().rss
        for child in parent.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        return 0
    return total

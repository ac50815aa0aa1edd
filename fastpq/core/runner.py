"""The runner: every front door's per-image steps on threads, delivered in input order.

:func:`ordered_map` is the one thread runner and :func:`worker_count` its one worker rule;
:func:`score_arrays` is the per-image step of in-memory label maps (``evaluate`` and the
streaming metric). The file loops (:mod:`fastpq.io.coco`, :mod:`fastpq.io.checkpoints`) and the
cluster's shards run their steps through :func:`ordered_map` too.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from fastpq.core.categories import Categories
from fastpq.core.inputs import (Convention, PreparedImage, host_maps, pick_convention,
                                prepare_coco, prepare_encoded, split_batch, split_segments)
from fastpq.errors import InputError, SuspectDataWarning

#: Consecutive images per thread task at most: fewer hand-offs between threads, each of which
#: waits for the GIL, than one task per image.
IMAGES_PER_TASK = 8

#: Tasks in flight per thread: bounds the memory of results waiting for an earlier image.
TASKS_PER_WORKER = 4


def worker_count(workers: int | None, n_items: int) -> int:
    """Threads for ``n_items`` items: ``workers`` (None: every core), never more than the items,
    at least one.

    Parameters
    ----------
    workers : int or None
        Threads asked for; None for ``os.cpu_count()`` (1 when that is unknown).
    n_items : int
        Items to run.
    """
    asked = (os.cpu_count() or 1) if workers is None else int(workers)
    return max(1, min(asked, n_items))


def ordered_map(step: Callable[[int], object], n_items: int, workers: int | None = 1, *,
                progress: bool | None = False) -> Iterator:
    """``step(0), step(1), ...`` computed on threads and yielded in order.

    Parameters
    ----------
    step : callable
        ``step(k)`` for item k; runs in worker threads, so it must not share mutable state.
    n_items : int
    workers : int or None
        As :func:`worker_count`. One worker runs the steps in the calling thread, without a
        pool.
    progress : bool or None
        A tqdm bar on stderr, advanced per item (None: when stderr is a terminal; see
        :func:`progress_bar`).

    Returns
    -------
    iterator
        What the steps return, in item order. Threads take tasks of up to
        :data:`IMAGES_PER_TASK` consecutive items (fewer when there are few items, so that
        every thread gets work), and at most :data:`TASKS_PER_WORKER` tasks per thread are in
        flight. The first exception in item order is raised where its item would have been
        yielded; tasks not yet started are then cancelled.
    """
    n_workers = worker_count(workers, n_items)
    results = (map(step, range(n_items)) if n_workers == 1
               else _threaded(step, n_items, n_workers))
    bar = progress_bar(n_items, progress)
    return results if bar is None else _advancing(results, bar)


def _threaded(step, n_items: int, n_workers: int) -> Iterator:
    chunk = max(1, min(IMAGES_PER_TASK, n_items // (2 * n_workers)))

    def run(start):
        """The task's results, and the exception that stopped it (None when none did)."""
        done = []
        try:
            for k in range(start, min(start + chunk, n_items)):
                done.append(step(k))
        except BaseException as error:  # re-raised by the consumer, after the earlier items
            return done, error
        return done, None

    window = TASKS_PER_WORKER * n_workers
    with ThreadPoolExecutor(n_workers, thread_name_prefix="fastpq") as pool:
        pending = deque()
        try:
            for start in range(0, n_items, chunk):
                pending.append(pool.submit(run, start))
                if len(pending) >= window:
                    yield from _delivered(pending.popleft())
            while pending:
                yield from _delivered(pending.popleft())
        finally:
            for future in pending:
                future.cancel()


def _delivered(future) -> Iterator:
    """A finished task's results, then the exception that stopped it."""
    done, error = future.result()
    yield from done
    if error is not None:
        raise error


def _advancing(results: Iterator, bar) -> Iterator:
    try:
        for value in results:
            yield value
            bar.update(1)
    finally:
        bar.close()


def progress_bar(total: int, progress: bool | None):
    """A tqdm bar on stderr, or None.

    Parameters
    ----------
    total : int
        Units of work (images).
    progress : bool or None
        True or False; None: when stderr is a terminal. None is returned without tqdm.
    """
    if progress is None:
        progress = sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="img", file=sys.stderr, desc="fastpq")


def warn_suspect_data(notes) -> None:
    """Emit suspect-data notes (strings, from per-image steps) as
    :class:`~fastpq.errors.SuspectDataWarning`, in order, attributed to the first caller outside
    the fastpq package (the user's line, however deep the front door's own calls go)."""
    if not notes:
        return
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    for note in notes:
        warnings.warn(note, SuspectDataWarning, stacklevel=level)


def score_arrays(gt, pred, *, gt_segments, pred_segments, categories: Categories, metric,
                 label_divisor=None, void_label=0, thing_instance_zero="crowd", image_ids=None,
                 workers: int | None = 1, first_index: int = 0) -> Iterator:
    """Each image's partial under ``metric``, in input order (in-memory label maps).

    Parameters
    ----------
    gt, pred, gt_segments, pred_segments, label_divisor, void_label, thing_instance_zero
        As in :func:`fastpq.evaluate` (one image or a batch).
    categories : Categories
    metric : fastpq.metrics.protocol.Metric
        Scores each prepared image (``metric.score``, in the worker threads).
    image_ids : sequence, optional
        The images' ids, by position in the batch (error messages, records).
    workers : int or None
        As :func:`worker_count`.
    first_index : int
        The index ``metric.score`` gets for the first image (a streaming metric counts across
        batches); error messages give positions in the batch.

    Returns
    -------
    iterator
        ``metric.score(...)`` per image, for ``accumulator.add_image(*partial)``.

    Raises
    ------
    fastpq.errors.InputError
        Empty input, batches of different lengths, ``gt_segments`` without ``pred_segments``,
        ``image_ids`` of the wrong length (before any image is scored), and what
        :func:`prepare_arrays` raises for an image (when its turn comes).
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

    def step(k):
        prepared = prepare_arrays(gts[k], preds[k], gsegs[k], psegs[k], categories, convention,
                                  image_index=k, image_id=ids[k])
        return metric.score(prepared, categories, first_index + k, ids[k])

    return ordered_map(step, len(gts), workers)


def prepare_arrays(gt, pred, gt_segments, pred_segments, categories: Categories,
                   convention: Convention, *, image_index=None,
                   image_id=None) -> PreparedImage:
    """One image's pair table and segment tables from its label maps.

    ``convention`` picks the adapter: :func:`~fastpq.core.inputs.prepare_coco` (with the
    segments_info lists) or :func:`~fastpq.core.inputs.prepare_encoded`; it raises what they
    raise, naming the image by ``image_index`` and ``image_id``.
    """
    if convention.name == "coco":
        return prepare_coco(gt, pred, gt_segments, pred_segments, categories,
                            image_index=image_index, image_id=image_id)
    return prepare_encoded(gt, pred, categories, convention, image_index=image_index,
                           image_id=image_id)


__all__ = ["IMAGES_PER_TASK", "TASKS_PER_WORKER", "ordered_map", "prepare_arrays",
           "progress_bar", "score_arrays", "warn_suspect_data", "worker_count"]

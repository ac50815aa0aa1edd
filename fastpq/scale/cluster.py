"""COCO panoptic files scored on a Dask cluster (``pip install fastpq[dask]``).

``fastpq.pq_compute(..., client=client)`` and ``fastpq.evaluate_many(..., client=client)`` come
here. The image list is cut into shards of consecutive images. Each shard is one task that scores
its images with the file path of a local run (:func:`fastpq.io.coco.evaluate_files`, or
:func:`fastpq.io.checkpoints.evaluate_files_many` for several predictions) on the threads of the
worker running it, and returns a :class:`Partial`: per-category accumulators, the image range it
covers and its suspect-data notes, a few kilobytes and never pixels. Partials are merged on the
cluster by a tree of merge tasks as the shards finish; only the root comes back to the client.

With ``per_image=True`` a shard scores its images through :func:`fastpq.io.coco.score_files` and a
per-image :class:`~fastpq.metrics.variants.Scoring`, and its partial also carries its
:class:`~fastpq.core.records.ImageRecord` list (O(segments) each, still no pixels); the records travel
up the merge tree and come back in input order.

How the annotations travel
    The client reads both JSON files (it has to: the pairing of images, the reference's "no
    prediction" error and the category table come before any work), and each shard task carries
    only its own annotations, pickled once into the task (as bytes, so that Dask does not walk
    the nested lists looking for futures). Every annotation therefore goes once to
    the scheduler and once to the worker that runs its shard (again only if the shard reruns).
    Not ``client.scatter``: scattered data has no lineage, so a shard whose annotations sat on a
    worker that died could not rerun elsewhere. Not loading the JSON on the workers from a shared
    path: each task would parse the whole file for its few images. At most
    ``_SHARDS_PER_THREAD`` shards per worker thread are in flight and the next is submitted as
    one finishes, so the scheduler holds the annotations of a few shards, not the whole JSON.

The PNGs are read by the workers at the paths the client gives, made absolute: the folders must be
visible at the same path on every worker (a shared file system), and error messages name the
absolute paths.

Lost workers
    Shard tasks are pure functions of their annotations and files, without side effects, so
    rerunning one returns the same partial: when a worker dies, Dask reruns its shards
    elsewhere, including finished ones whose partial a merge still needs. Their keys are unique
    to the call (``fastpq-shard-<start>-<stop>-<call id>``), not hashes of the arguments: PNG
    files can change between two calls while the scheduler still holds an earlier call's partial
    under a content key, which Dask would then hand back instead of reading the new files. Each
    partial records the image ranges it covers; a merge refuses overlapping ranges and the root
    must cover every image once, so an image can be neither lost nor counted twice.

Exactness
    The accumulator keeps its IoU sums as double-double values, so the merge order, which depends
    on which shard finishes first, does not change the float64 sums: the result is the one of a
    single machine.

Errors and warnings
    Bad input raises the exception of the first bad image in input order, as a local run does: no
    shard is submitted after a failure, the shards in flight finish, and the error of the earliest
    failed shard is raised (shards are submitted in order, so every earlier one has run).
    :class:`~fastpq.errors.SuspectDataWarning` notes are caught on the workers and emitted on the
    client in image order.
"""

from __future__ import annotations

import os
import pickle
import threading
import uuid
import warnings
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from fastpq.core.accumulator import PQAccumulator
from fastpq.core.categories import Categories
from fastpq.errors import SuspectDataWarning
from fastpq.core.result import PQResult

_INSTALL_HINT = "fastpq's Dask evaluation needs dask.distributed: pip install fastpq[dask]"

_SHARDS_PER_THREAD = 2
"""Shards in flight per worker thread: one running, one queued so that no thread waits."""

_SHARDS_PER_THREAD_TOTAL = 4
"""The default shard size cuts the images into about this many shards per worker thread, so
that a slow or lost worker delays the end by a small part of the run."""

_SHARD_SIZE_LIMITS = (8, 1000)
"""Default shard size bounds in images. An empty shard's round trip takes 10-25 ms on a loaded
2-core machine (bench/bench_cluster.py), mostly latency that overlaps the previous shard's work
since two shards per thread are in flight; an image takes 2-8 ms of one thread at 640x480. The
upper bound keeps the rerun of a shard after a worker loss a matter of seconds."""

_MERGE_FAN_IN = 8
"""Partials per merge task."""

# catch_warnings changes process-wide state: one shard per worker process at a time uses it
_NOTES_LOCK = threading.Lock()


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return distributed


class Partial(NamedTuple):
    """What a shard task or a merge task returns.

    Attributes
    ----------
    ranges : tuple of (int, int)
        The ``[start, stop)`` image index ranges covered, sorted and coalesced.
    accumulators : dict
        One :class:`~fastpq.core.accumulator.PQAccumulator` per prediction name.
    notes : tuple of (int, tuple of str)
        ``(first image of a shard, its suspect-data notes in image order)``, shards with notes
        only.
    records : tuple of (int, list of ImageRecord)
        ``(first image of a shard, its per-image records)``; empty without ``per_image``.
    """

    ranges: tuple
    accumulators: dict
    notes: tuple
    records: tuple


def connect(address: str):
    """A ``distributed.Client`` connected to the scheduler at ``address``.

    Parameters
    ----------
    address : str
        The scheduler's address, e.g. ``tcp://10.0.0.5:8786`` (what ``dask scheduler`` prints).

    Raises
    ------
    ImportError
        If dask.distributed is not installed (``pip install fastpq[dask]``).
    OSError
        If no scheduler answers at ``address`` within Dask's connect timeout.
    """
    return _import_distributed().Client(address)


def evaluate_on_cluster(client, matched: Sequence[tuple], gt_folder, pred_folder,
                        categories: Categories, *, progress: bool | None = None,
                        shard_size: int | None = None, per_image: bool = False) -> PQResult:
    """Score (gt_ann, pred_ann) pairs on a Dask cluster, as :func:`fastpq.io.coco.evaluate_files`.

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster; its workers must see the folders at the same paths.
    matched : sequence of (dict, dict)
        GT and prediction annotations, paired as :func:`fastpq.io.coco.pair_annotations` pairs them.
    gt_folder, pred_folder : str or os.PathLike
        The PNG folders.
    categories : Categories
    progress : bool, optional
        A tqdm bar on stderr, advanced as shards finish (default: when stderr is a terminal).
    shard_size : int, optional
        Images per task (default: about four shards per worker thread, 8 to 1000 images).
    per_image : bool
        Also return the per-image records (``result.per_image``, in input order, image ids from
        the GT annotations), as ``pq_compute(..., per_image=True)`` does locally.

    Returns
    -------
    PQResult
        Equal to the result of a local ``pq_compute`` on the same pairs.

    Raises
    ------
    ImportError
        If dask.distributed is not installed.
    Exception
        What the first bad image in input order raises in a local run (``FileNotFoundError``,
        ``KeyError``, :class:`~fastpq.errors.InputError`, ...).
    """
    accumulators, records = _run(client, matched, gt_folder, {None: pred_folder}, categories,
                                 progress=progress, shard_size=shard_size, per_image=per_image)
    acc = accumulators[None]
    if records is None:
        return acc.result()
    return PQResult(categories, acc.tp.copy(), acc.fp.copy(), acc.fn.copy(), acc.iou_sum(),
                    n_images=acc.n_images, per_image=records)


def evaluate_many_on_cluster(client, images: Sequence[tuple], gt_folder,
                             pred_folders: Mapping, categories: Categories, *,
                             progress: bool | None = None,
                             shard_size: int | None = None) -> dict:
    """Score several predictions of each image on a Dask cluster, each GT PNG decoded once.

    Parameters
    ----------
    client : distributed.Client
    images : sequence of (dict, dict)
        ``(gt_ann, {name: pred_ann})`` per image, as :func:`fastpq.io.checkpoints.evaluate_files_many`
        takes them.
    gt_folder : str or os.PathLike
    pred_folders : mapping
        ``{name: prediction PNG folder}``.
    categories, progress, shard_size
        As in :func:`evaluate_on_cluster`.

    Returns
    -------
    dict
        ``{name: PQResult}``, equal to the local results.

    Raises
    ------
    ImportError, Exception
        As in :func:`evaluate_on_cluster`.
    """
    accumulators, _ = _run(client, images, gt_folder, dict(pred_folders), categories,
                           progress=progress, shard_size=shard_size, per_image=False)
    return {name: acc.result() for name, acc in accumulators.items()}


def _run(client, items, gt_folder, pred_folders: dict, categories: Categories, *, progress,
         shard_size, per_image) -> tuple:
    """Shard, submit, merge; ``({name: PQAccumulator}, records or None)``."""
    from fastpq.io.coco import _progress_bar

    distributed = _import_distributed()
    from dask.base import tokenize

    call_id = uuid.uuid4().hex
    n = len(items)
    if n == 0:
        return {name: PQAccumulator(categories) for name in pred_folders}, [] if per_image else None
    gt_folder = os.path.abspath(gt_folder)
    pred_folders = {name: os.path.abspath(folder) for name, folder in pred_folders.items()}
    category_list = categories.to_coco()
    size = int(shard_size) if shard_size else _default_shard_size(n, _threads(client))
    bounds = [(start, min(start + size, n)) for start in range(0, n, size)]

    in_flight = distributed.as_completed()
    first_image = {}          # future key -> first image it covers (orders the errors)
    shard_images = {}         # shard future key -> its number of images (the progress bar)
    ready, failed = [], []
    next_shard = 0
    bar = _progress_bar(n, progress)

    def submit_shards():
        nonlocal next_shard
        limit = _SHARDS_PER_THREAD * max(1, _threads(client))
        while next_shard < len(bounds) and not failed and in_flight.count() < limit:
            start, stop = bounds[next_shard]
            payload = pickle.dumps(list(items[start:stop]), protocol=pickle.HIGHEST_PROTOCOL)
            future = client.submit(_evaluate_shard, payload, start, gt_folder, pred_folders,
                                   category_list, per_image,
                                   key=f"fastpq-shard-{start}-{stop}-{call_id}")
            first_image[future.key], shard_images[future.key] = start, stop - start
            in_flight.add(future)
            next_shard += 1

    try:
        submit_shards()
        for future in in_flight:
            if future.status == "finished":
                ready.append(future)
                if bar is not None and future.key in shard_images:
                    bar.update(shard_images[future.key])
            else:
                failed.append(future)
            submit_shards()
            last_round = next_shard == len(bounds) and in_flight.is_empty()
            while not failed and (len(ready) >= _MERGE_FAN_IN or (last_round and len(ready) > 1)):
                group, ready = ready[:_MERGE_FAN_IN], ready[_MERGE_FAN_IN:]
                merged = client.submit(_merge_partials, *group,
                                       key=f"fastpq-merge-{tokenize(*(f.key for f in group))}")
                first_image[merged.key] = min(first_image[f.key] for f in group)
                in_flight.add(merged)
    finally:
        if bar is not None:
            bar.close()
    if failed:
        min(failed, key=lambda f: first_image[f.key]).result()  # raises the remote exception
    root = ready[0].result()
    if root.ranges != ((0, n),):
        raise RuntimeError(f"the cluster's partial results cover images {list(root.ranges)} "
                           f"instead of all {n} images once")
    for _, notes in sorted(root.notes, key=itemgetter(0)):
        for note in notes:
            warnings.warn(note, SuspectDataWarning, stacklevel=4)
    records = None
    if per_image:
        records = [r for _, shard in sorted(root.records, key=itemgetter(0)) for r in shard]
    return root.accumulators, records


def _threads(client) -> int:
    return sum(client.nthreads().values())


def _default_shard_size(n_images: int, threads: int) -> int:
    low, high = _SHARD_SIZE_LIMITS
    per_shard = -(-n_images // (_SHARDS_PER_THREAD_TOTAL * max(1, threads)))
    return max(low, min(high, per_shard))


def _evaluate_shard(payload: bytes, start: int, gt_folder: str, pred_folders: dict,
                    category_list: list, per_image: bool) -> Partial:
    """The shard task, run on a worker: score images ``start ..`` with the worker's threads."""
    from distributed import get_worker

    from fastpq.io.checkpoints import evaluate_files_many
    from fastpq.io.coco import evaluate_files, score_files
    from fastpq.metrics.variants import Scoring

    items = pickle.loads(payload)
    categories = Categories.from_coco(category_list)
    threads = get_worker().state.nthreads
    records = ()
    with _NOTES_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if per_image:
            [(name, pred_folder)] = pred_folders.items()
            scoring = Scoring(categories, per_image=True, first_index=start,
                              image_ids=[gt_ann["image_id"] for gt_ann, _ in items])
            shard_records = score_files(items, gt_folder, pred_folder, scoring, workers=threads,
                                        progress=False).per_image
            accumulators = {name: _accumulate_records(shard_records, categories)}
            records = ((start, shard_records),)
        elif len(pred_folders) == 1:
            [(name, pred_folder)] = pred_folders.items()
            accumulators = {name: evaluate_files(items, gt_folder, pred_folder, categories,
                                                 workers=threads, progress=False,
                                                 first_index=start)}
        else:
            accumulators = evaluate_files_many(items, gt_folder, pred_folders, categories,
                                               workers=threads, progress=False,
                                               first_index=start)
    notes = tuple(str(w.message) for w in caught if issubclass(w.category, SuspectDataWarning))
    for w in caught:  # other warnings caught in the window go to the worker's log as usual
        if not issubclass(w.category, SuspectDataWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return Partial(((start, start + len(items)),), accumulators,
                   ((start, notes),) if notes else (), records)


def _accumulate_records(records, categories: Categories) -> PQAccumulator:
    """A shard's accumulator from its per-image records.

    A record's per-class ``tp``, ``fp``, ``fn`` and ``iou`` are the partials the accumulator adds
    for that image (:mod:`fastpq.core.records`; categories without any are all zero there), so adding
    them image by image gives the accumulator of the images themselves, bit for bit.
    """
    acc = PQAccumulator(categories)
    row_of = categories.index_map()
    for record in records:
        tp, fp, fn = (np.zeros(len(categories), np.int64) for _ in range(3))
        iou = np.zeros(len(categories), np.float64)
        for cid, row in record.per_class.items():
            k = row_of[cid]
            tp[k], fp[k], fn[k], iou[k] = row["tp"], row["fp"], row["fn"], row["iou"]
        acc.add_image(tp, fp, fn, iou)
    return acc


def _merge_partials(*partials: Partial) -> Partial:
    """The merge task: add accumulators name by name, refusing an image range seen twice."""
    ranges = []
    for start, stop in sorted(r for p in partials for r in p.ranges):
        if ranges and start < ranges[-1][1]:
            raise RuntimeError(f"images {start} to {min(stop, ranges[-1][1]) - 1} are in two "
                               "partial results; they would be counted twice")
        if ranges and start == ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], stop)
        else:
            ranges.append((start, stop))
    accumulators = {name: sum(p.accumulators[name] for p in partials)
                    for name in partials[0].accumulators}
    notes = tuple(entry for p in partials for entry in p.notes)
    records = tuple(entry for p in partials for entry in p.records)
    return Partial(tuple(ranges), accumulators, notes, records)

"""COCO panoptic files scored on a Dask cluster (``pip install fastpq[dask]``).

``fastpq.pq_compute(..., client=client)`` and ``fastpq.evaluate_many(..., client=client)`` come
here (through :func:`fastpq.api.pq_compute` and :func:`fastpq.api.evaluate_many`, which hand
:func:`score_on_cluster` or :func:`score_many_on_cluster` to the local file run). The image list is
cut into shards of consecutive images. Each shard is one task (:func:`evaluate_shard`) that scores
its images with the file path of a local run (:func:`fastpq.io.coco.evaluate_files`, or
:func:`fastpq.io.checkpoints.evaluate_files_many` for several predictions) on the threads of the
worker running it, and returns a :class:`Partial`: per-category accumulators, the image range it
covers and its suspect-data notes, a few kilobytes and never pixels. Partials are merged on the
cluster by a tree of merge tasks as the shards finish; only the root comes back to the client.

With ``per_image=True`` (the metric :class:`~fastpq.metrics.pq.PQRecordsMetric`) a shard's partial
also carries its :class:`~fastpq.core.records.ImageRecord` list (O(segments) each, still no
pixels); the records travel up the merge tree and come back in input order.

How the annotations travel
    The client reads both JSON files (it has to: the pairing of images, the reference's "no
    prediction" error and the category table come before any work), and each shard task carries
    only its own annotations, pickled once into the task (as bytes, so that Dask does not walk
    the nested lists looking for futures). Every annotation therefore goes once to
    the scheduler and once to the worker that runs its shard (again only if the shard reruns).
    Not ``client.scatter``: scattered data has no lineage, so a shard whose annotations sat on a
    worker that died could not rerun elsewhere. Not loading the JSON on the workers from a shared
    path: each task would parse the whole file for its few images. At most
    :data:`SHARDS_PER_THREAD` shards per worker thread are in flight and the next is submitted as
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
    Suspect-data notes come back from the shards as values (:attr:`Partial.notes`) and are
    emitted on the client, in image order, as :class:`~fastpq.errors.SuspectDataWarning`.
"""

from __future__ import annotations

import os
import pickle
import uuid
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import NamedTuple

from fastpq.core.accumulator import RecordingAccumulator
from fastpq.core.categories import Categories
from fastpq.core.result import PQResult
from fastpq.core.runner import progress_bar, warn_suspect_data
from fastpq.errors import InputError
from fastpq.io.checkpoints import evaluate_files_many
from fastpq.io.coco import evaluate_files
from fastpq.metrics import DEFAULT_METRIC, Metric, resolve_metric

_INSTALL_HINT = "fastpq's Dask evaluation needs dask.distributed: pip install fastpq[dask]"

SHARDS_PER_THREAD = 2
"""Shards in flight per worker thread: one running, one queued so that no thread waits."""

SHARDS_PER_THREAD_TOTAL = 4
"""The default shard size cuts the images into about this many shards per worker thread, so
that a slow or lost worker delays the end by a small part of the run."""

SHARD_SIZE_LIMITS = (8, 1000)
"""Default shard size bounds in images. An empty shard's round trip takes 10-25 ms on a loaded
2-core machine (bench/bench_cluster.py), mostly latency that overlaps the previous shard's work
since two shards per thread are in flight; an image takes 2-8 ms of one thread at 640x480. The
upper bound keeps the rerun of a shard after a worker loss a matter of seconds."""

_MERGE_FAN_IN = 8
"""Partials per merge task."""


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
        ``(first image of a shard, its per-image records)``; empty without records.
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


def score_on_cluster(client, matched: Sequence[tuple], gt_folder, pred_folder,
                     categories: Categories, metric: Metric = DEFAULT_METRIC, *,
                     progress: bool | None = None, shard_size: int | None = None) -> tuple:
    """Score (gt_ann, pred_ann) pairs on a Dask cluster, as :func:`fastpq.io.coco.evaluate_files`.

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster; its workers must see the folders at the same paths.
    matched : sequence of (dict, dict)
        GT and prediction annotations, paired as :func:`fastpq.io.coco.pair_annotations` pairs
        them.
    gt_folder, pred_folder : str or os.PathLike
        The PNG folders.
    categories : Categories
    metric : Metric
        One whose ``on_cluster`` is true: Panoptic Quality under the reference's rules, with or
        without per-image records.
    progress : bool, optional
        A tqdm bar on stderr, advanced as shards finish (default: when stderr is a terminal).
    shard_size : int, optional
        Images per task (default: :func:`default_shard_size`).

    Returns
    -------
    accumulator
        A :class:`~fastpq.core.accumulator.PQAccumulator` (a
        :class:`~fastpq.core.accumulator.RecordingAccumulator` with the records in input order,
        image ids from the GT annotations, for the records metric), equal to the local one.
    notes : list of str
        The suspect-data notes, in image order.

    Raises
    ------
    fastpq.errors.InputError
        A metric the cluster does not score.
    ImportError
        If dask.distributed is not installed.
    Exception
        What the first bad image in input order raises in a local run (``FileNotFoundError``,
        ``KeyError``, :class:`~fastpq.errors.InputError`, ...).
    """
    if not metric.on_cluster:
        raise InputError("metric and convention are not available with a Dask client; "
                         "evaluate without client=")
    accumulators, notes, records = _run(client, matched, gt_folder, {None: pred_folder},
                                        categories, metric, progress=progress,
                                        shard_size=shard_size)
    acc = accumulators[None]
    return (acc if records is None else RecordingAccumulator(acc, records)), notes


def evaluate_on_cluster(client, matched: Sequence[tuple], gt_folder, pred_folder,
                        categories: Categories, *, progress: bool | None = None,
                        shard_size: int | None = None, per_image: bool = False) -> PQResult:
    """:func:`score_on_cluster`'s result, its notes emitted as
    :class:`~fastpq.errors.SuspectDataWarning`.

    Parameters
    ----------
    client, matched, gt_folder, pred_folder, categories, progress, shard_size
        As in :func:`score_on_cluster`.
    per_image : bool
        Also return the per-image records (``result.per_image``, in input order), as
        ``pq_compute(..., per_image=True)`` does locally.

    Returns
    -------
    PQResult
        Equal to the result of a local ``pq_compute`` on the same pairs.
    """
    metric = resolve_metric(per_image=per_image)
    acc, notes = score_on_cluster(client, matched, gt_folder, pred_folder, categories, metric,
                                  progress=progress, shard_size=shard_size)
    warn_suspect_data(notes)
    return metric.result(acc)


def score_many_on_cluster(client, images: Sequence[tuple], gt_folder, pred_folders: Mapping,
                          categories: Categories, *, progress: bool | None = None,
                          shard_size: int | None = None) -> tuple:
    """Score several predictions of each image on a Dask cluster, each GT PNG decoded once.

    Parameters
    ----------
    client : distributed.Client
    images : sequence of (dict, dict)
        ``(gt_ann, {name: pred_ann})`` per image, as
        :func:`fastpq.io.checkpoints.evaluate_files_many` takes them.
    gt_folder : str or os.PathLike
    pred_folders : mapping
        ``{name: prediction PNG folder}``.
    progress, shard_size
        As in :func:`score_on_cluster`.

    Returns
    -------
    accumulators : dict
        ``{name: PQAccumulator}``, equal to the local ones.
    notes : list of str
        The suspect-data notes, once per image, in image order.

    Raises
    ------
    ImportError, Exception
        As in :func:`score_on_cluster`.
    """
    accumulators, notes, _ = _run(client, images, gt_folder, dict(pred_folders), categories,
                                  DEFAULT_METRIC, progress=progress, shard_size=shard_size)
    return accumulators, notes


def evaluate_many_on_cluster(client, images: Sequence[tuple], gt_folder,
                             pred_folders: Mapping, categories: Categories, *,
                             progress: bool | None = None,
                             shard_size: int | None = None) -> dict:
    """:func:`score_many_on_cluster`'s ``{name: PQResult}``, its notes emitted as
    :class:`~fastpq.errors.SuspectDataWarning`."""
    accumulators, notes = score_many_on_cluster(client, images, gt_folder, pred_folders,
                                                categories, progress=progress,
                                                shard_size=shard_size)
    warn_suspect_data(notes)
    return {name: DEFAULT_METRIC.result(acc) for name, acc in accumulators.items()}


def _run(client, items, gt_folder, pred_folders: dict, categories: Categories, metric: Metric, *,
         progress, shard_size) -> tuple:
    """Shard, submit, merge; ``({name: PQAccumulator}, notes, records or None)``."""
    distributed = _import_distributed()
    from dask.base import tokenize

    call_id = uuid.uuid4().hex
    n = len(items)
    keeps_records = isinstance(metric.accumulator(categories), RecordingAccumulator)
    if n == 0:
        return ({name: DEFAULT_METRIC.accumulator(categories) for name in pred_folders}, [],
                [] if keeps_records else None)
    gt_folder = os.path.abspath(gt_folder)
    pred_folders = {name: os.path.abspath(folder) for name, folder in pred_folders.items()}
    category_list = categories.to_coco()
    size = int(shard_size) if shard_size else default_shard_size(n, _threads(client))
    bounds = [(start, min(start + size, n)) for start in range(0, n, size)]

    in_flight = distributed.as_completed()
    first_image = {}          # future key -> first image it covers (orders the errors)
    shard_images = {}         # shard future key -> its number of images (the progress bar)
    ready, failed = [], []
    next_shard = 0
    bar = progress_bar(n, progress)

    def submit_shards():
        nonlocal next_shard
        limit = SHARDS_PER_THREAD * max(1, _threads(client))
        while next_shard < len(bounds) and not failed and in_flight.count() < limit:
            start, stop = bounds[next_shard]
            payload = pickle.dumps(list(items[start:stop]), protocol=pickle.HIGHEST_PROTOCOL)
            future = client.submit(evaluate_shard, payload, start, gt_folder, pred_folders,
                                   category_list, metric,
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
    notes = [note for _, shard in sorted(root.notes, key=itemgetter(0)) for note in shard]
    records = None
    if keeps_records:
        records = [r for _, shard in sorted(root.records, key=itemgetter(0)) for r in shard]
    return root.accumulators, notes, records


def _threads(client) -> int:
    return sum(client.nthreads().values())


def default_shard_size(n_images: int, threads: int) -> int:
    """Images per shard task for ``n_images`` on ``threads`` worker threads: about
    :data:`SHARDS_PER_THREAD_TOTAL` shards per thread, within :data:`SHARD_SIZE_LIMITS`."""
    low, high = SHARD_SIZE_LIMITS
    per_shard = -(-n_images // (SHARDS_PER_THREAD_TOTAL * max(1, threads)))
    return max(low, min(high, per_shard))


def evaluate_shard(payload: bytes, start: int, gt_folder: str, pred_folders: dict,
                   category_list: list, metric: Metric = DEFAULT_METRIC) -> Partial:
    """The shard task, run on a worker: score images ``start ..`` with the worker's threads.

    Parameters
    ----------
    payload : bytes
        The pickled list of the shard's annotation pairs: ``(gt_ann, pred_ann)`` with one
        prediction folder, ``(gt_ann, {name: pred_ann})`` with several.
    start : int
        The index of the shard's first image in the whole list.
    gt_folder : str
    pred_folders : dict
        ``{name: prediction PNG folder}``.
    category_list : list
        The COCO categories list of the category table.
    metric : Metric
        With one prediction folder; several are scored by the default metric.

    Returns
    -------
    Partial
    """
    from distributed import get_worker

    items = pickle.loads(payload)
    categories = Categories.from_coco(category_list)
    threads = get_worker().state.nthreads
    records = ()
    if len(pred_folders) == 1:
        [(name, pred_folder)] = pred_folders.items()
        acc, notes = evaluate_files(items, gt_folder, pred_folder, categories, metric=metric,
                                    workers=threads, progress=False, first_index=start)
        if isinstance(acc, RecordingAccumulator):
            acc, records = acc.sums, ((start, acc.records),)
        accumulators = {name: acc}
    else:
        accumulators, notes = evaluate_files_many(items, gt_folder, pred_folders, categories,
                                                  workers=threads, progress=False,
                                                  first_index=start)
    return Partial(((start, start + len(items)),), accumulators,
                   ((start, tuple(notes)),) if notes else (), records)


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

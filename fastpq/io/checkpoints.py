"""Several predictions of one COCO panoptic ground truth (checkpoints, ablations) in one pass.

Each ground-truth PNG is decoded once per image and paired with every prediction's PNG of that
image; each prediction is then scored exactly as :func:`fastpq.pq_compute` scores it alone (the
same :func:`fastpq.io.coco.evaluate_pair`, the same accumulator), so the results equal separate runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from fastpq.core.accumulator import PQAccumulator
from fastpq.core.categories import Categories
from fastpq.io.coco import _bounded_map, _progress_bar, _read, evaluate_pair, load_json, pair_annotations
from fastpq.errors import InputError, SuspectDataWarning


def evaluate_many(gt_json, pred_jsons: Mapping, *, gt_folder=None,
                  pred_folders: Mapping | None = None, client=None, workers: int | None = None,
                  progress: bool | None = None) -> dict:
    """Panoptic Quality of several predictions against one COCO panoptic ground truth.

    Parameters
    ----------
    gt_json : str or path
        The ground-truth JSON (``annotations`` and ``categories``).
    pred_jsons : mapping
        ``{name: prediction JSON path}``; names are any hashable labels (checkpoint names).
    gt_folder : str or path, optional
        Ground-truth PNGs; default: ``gt_json`` with '.json' removed, as in ``pq_compute``.
    pred_folders : mapping, optional
        ``{name: prediction PNG folder}`` for some or all names; a name without one takes its
        JSON path with '.json' removed.
    client : distributed.Client, optional
        Score on this Dask cluster (:mod:`fastpq.scale.cluster`); the workers read the PNGs at the same
        paths and ``workers`` is ignored.
    workers : int, optional
        Local threads, one image (its GT and every prediction) at a time each (default: the
        number of cores).
    progress : bool, optional
        A tqdm bar on stderr (default: when stderr is a terminal).

    Returns
    -------
    dict
        ``{name: PQResult}`` in the order of ``pred_jsons``; each equals ``pq_compute(gt_json,
        pred_jsons[name], gt_folder, pred_folders[name], return_result=True)``.

    Raises
    ------
    InputError
        No prediction given, or a ``pred_folders`` name that is not in ``pred_jsons``.
    Exception
        What ``pq_compute`` raises for the first bad input: a missing folder, an image without a
        prediction (both the reference's plain ``Exception``), a bad PNG or segment table.
    """
    if not pred_jsons:
        raise InputError("evaluate_many needs at least one prediction JSON, got none")
    pred_folders = dict(pred_folders or {})
    unknown = [name for name in pred_folders if name not in pred_jsons]
    if unknown:
        raise InputError(f"pred_folders names {unknown!r} are not among the prediction names "
                         f"{list(pred_jsons)!r}")
    gt = load_json(gt_json, "ground-truth")
    preds = {name: load_json(path, "prediction") for name, path in pred_jsons.items()}
    categories = Categories.from_coco(gt["categories"])
    # the reference replaces every '.json' in the path, not only a suffix (SPEC §2.1)
    gt_folder = str(gt_json).replace(".json", "") if gt_folder is None else gt_folder
    folders = {name: pred_folders.get(name, str(path).replace(".json", ""))
               for name, path in pred_jsons.items()}
    if not os.path.isdir(gt_folder):
        raise Exception("Folder {} with ground truth segmentations doesn't exist".format(gt_folder))
    for folder in folders.values():
        if not os.path.isdir(folder):
            raise Exception("Folder {} with predicted segmentations doesn't exist".format(folder))
    paired = {name: pair_annotations(gt, preds[name], gt_json, path)
              for name, path in pred_jsons.items()}
    images = [(gt_ann, {name: paired[name][k][1] for name in paired})
              for k, gt_ann in enumerate(gt["annotations"])]
    if client is not None:
        from fastpq.scale.cluster import evaluate_many_on_cluster

        return evaluate_many_on_cluster(client, images, gt_folder, folders, categories,
                                        progress=progress)
    accumulators = evaluate_files_many(images, gt_folder, folders, categories, workers=workers,
                                       progress=progress)
    return {name: acc.result() for name, acc in accumulators.items()}


def evaluate_files_many(images: Sequence[tuple], gt_folder, pred_folders: Mapping,
                        categories: Categories, *, workers: int | None = None,
                        progress: bool | None = None, first_index: int = 0) -> dict:
    """Score several predictions per image with threads, decoding each GT PNG once.

    Parameters
    ----------
    images : sequence of (dict, dict)
        ``(gt_ann, {name: pred_ann})`` per image; every dict has every name of ``pred_folders``.
    gt_folder : str or path
    pred_folders : mapping
        ``{name: prediction PNG folder}``.
    categories : Categories
    workers : int, optional
        Threads, one image at a time each (default: the number of cores).
    progress : bool, optional
        A tqdm bar on stderr (default: when stderr is a terminal).
    first_index : int
        The index error messages give the first image (a shard of a longer list).

    Returns
    -------
    dict
        ``{name: PQAccumulator}``, images added in input order. Suspect ground truth is reported
        once per image (the notes depend on the GT only), as
        :class:`~fastpq.errors.SuspectDataWarning`.
    """
    accumulators = {name: PQAccumulator(categories) for name in pred_folders}
    n_workers = max(1, min(os.cpu_count() or 1, len(images)) if workers is None else int(workers))
    bar = _progress_bar(len(images), progress)

    def one(k):
        gt_ann, pred_anns = images[k]
        gt_ids = _read(os.path.join(gt_folder, gt_ann["file_name"]), gt_ann["image_id"],
                       "ground-truth")
        return {name: evaluate_pair(gt_ann, pred_anns[name], gt_folder, folder, categories,
                                    image_index=first_index + k, gt_ids=gt_ids)
                for name, folder in pred_folders.items()}

    try:
        if n_workers == 1 or len(images) <= 1:
            _accumulate_many(map(one, range(len(images))), accumulators, bar)
        else:
            with ThreadPoolExecutor(n_workers, thread_name_prefix="fastpq-many") as pool:
                _accumulate_many(_bounded_map(pool, one, len(images), 4 * n_workers),
                                 accumulators, bar)
    finally:
        if bar is not None:
            bar.close()
    return accumulators


def _accumulate_many(results, accumulators: dict, bar) -> None:
    for per_name in results:
        for note in dict.fromkeys(note for _, notes in per_name.values() for note in notes):
            warnings.warn(note, SuspectDataWarning, stacklevel=4)
        for name, (match, _) in per_name.items():
            accumulators[name].add_image(match.tp, match.fp, match.fn, match.iou)
        if bar is not None:
            bar.update(1)

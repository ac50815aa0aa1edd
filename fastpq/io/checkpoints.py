"""Several predictions of one COCO panoptic ground truth (checkpoints, ablations) in one pass.

Each ground-truth PNG is decoded once per image and paired with every prediction's PNG of that
image; each prediction is then scored exactly as :func:`fastpq.pq_compute` scores it alone (the
same :func:`fastpq.io.coco.prepare_pair`, metric and accumulator), so the results equal separate
runs. ``fastpq.evaluate_many`` is :func:`fastpq.api.evaluate_many`, which adds ``client=``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from fastpq.core.categories import Categories
from fastpq.core.runner import ordered_map, warn_suspect_data
from fastpq.errors import InputError
from fastpq.io.coco import load_json, pair_annotations, prepare_pair, read_ground_truth
from fastpq.metrics import DEFAULT_METRIC


def evaluate_many(gt_json, pred_jsons: Mapping, *, gt_folder=None,
                  pred_folders: Mapping | None = None, workers: int | None = None,
                  progress: bool | None = None, score_images=None) -> dict:
    """:func:`fastpq.evaluate_many` on this machine (its parameters, return value and errors).

    ``score_images(images, gt_folder, pred_folders, categories, progress=)``, when given, scores
    the images elsewhere (a Dask cluster: ``fastpq.evaluate_many(..., client=)``) and returns
    ``({name: PQAccumulator}, notes)`` as :func:`evaluate_files_many` does, the default.
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
    if score_images is None:
        accumulators, notes = evaluate_files_many(images, gt_folder, folders, categories,
                                                  workers=workers, progress=progress)
    else:
        accumulators, notes = score_images(images, gt_folder, folders, categories,
                                           progress=progress)
    warn_suspect_data(notes)
    return {name: DEFAULT_METRIC.result(acc) for name, acc in accumulators.items()}


def evaluate_files_many(images: Sequence[tuple], gt_folder, pred_folders: Mapping,
                        categories: Categories, *, workers: int | None = None,
                        progress: bool | None = None, first_index: int = 0) -> tuple:
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
    accumulators : dict
        ``{name: PQAccumulator}``, images added in input order.
    notes : list of str
        Suspect ground truth, once per image (the notes depend on the GT only), in image order,
        for :func:`fastpq.core.runner.warn_suspect_data`.
    """
    metric = DEFAULT_METRIC
    accumulators = {name: metric.accumulator(categories) for name in pred_folders}
    notes = []

    def step(k):
        gt_ann, pred_anns = images[k]
        gt_ids = read_ground_truth(gt_ann, gt_folder, first_index + k)
        scored = {}
        for name, folder in pred_folders.items():
            prepared, image_notes = prepare_pair(gt_ann, pred_anns[name], gt_folder, folder,
                                                 categories, image_index=first_index + k,
                                                 gt_ids=gt_ids)
            scored[name] = (metric.score(prepared, categories, first_index + k,
                                         gt_ann["image_id"]), image_notes)
        return scored

    for scored in ordered_map(step, len(images), workers, progress=progress):
        notes.extend(dict.fromkeys(note for _, image_notes in scored.values()
                                   for note in image_notes))
        for name, (partial, _) in scored.items():
            accumulators[name].add_image(*partial)
    return accumulators, notes

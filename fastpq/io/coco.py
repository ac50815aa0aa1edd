"""COCO panoptic files: the drop-in ``pq_compute`` (JSON + PNG folders, as panopticapi reads them).

What the reference does with files is reproduced (SPEC §2.1–2.7): GT areas come from the GT JSON,
GT ids absent from the JSON are neither segments nor void, the pred sanity checks raise the
reference's exceptions with its message texts (the file path appended), images pair by
``image_id``. What the reference accepts silently but is suspect gives the reference's numbers and
a :class:`~fastpq.errors.SuspectDataWarning` naming image and segment.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import threading
import time
from typing import Sequence

from fastpq.core.categories import Categories
from fastpq.core.inputs import PreparedImage
from fastpq.core.runner import ordered_map, warn_suspect_data
from fastpq.core.validation import Policy, check_same_size, check_segments, segment_tables
from fastpq.errors import DecodeError, InputError, MissingFileError, SuspectNote
from fastpq.kernels import pairs as pair_kernels
from fastpq.metrics import DEFAULT_METRIC, Metric, resolve_metric


def load_json(path, role: str) -> dict:
    """Read a COCO panoptic JSON file; truncated or invalid JSON names the file."""
    try:
        with open(path, "r", encoding="utf-8") as f, _cyclic_gc_paused():
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DecodeError(f"the {role} JSON is not valid JSON ({e.msg} at line {e.lineno}, column "
                          f"{e.colno}); is the file truncated?", file=path) from None
    if not isinstance(data, dict) or "annotations" not in data:
        raise InputError(f"the {role} JSON has no 'annotations' list", file=path)
    if role == "ground-truth" and "categories" not in data:
        raise InputError("the ground-truth JSON has no 'categories' list", file=path)
    return data


@contextlib.contextmanager
def _cyclic_gc_paused():
    """Parsed JSON holds no reference cycles, but its hundreds of thousands of new dicts and lists
    set off the cyclic collector again and again, each time over a larger heap: parsing a COCO
    val2017-size file takes 2-3x as long with it running."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def pair_annotations(gt_json: dict, pred_json: dict, gt_file, pred_file) -> list[tuple]:
    """(gt_ann, pred_ann) in GT order, paired by image_id (duplicate pred ids: last wins)."""
    for ann, file in [(a, gt_file) for a in gt_json["annotations"]] + \
                     [(a, pred_file) for a in pred_json["annotations"]]:
        if "segments_info" not in ann or "file_name" not in ann or "image_id" not in ann:
            missing = [k for k in ("image_id", "file_name", "segments_info") if k not in ann]
            raise InputError(f"{file}: annotation for image id {ann.get('image_id')!r} has no "
                             f"{', '.join(repr(m) for m in missing)}")
    pred_by_id = {a["image_id"]: a for a in pred_json["annotations"]}
    matched = []
    for gt_ann in gt_json["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in pred_by_id:
            raise Exception("no prediction for the image with id: {} [{}]".format(image_id, pred_file))
        matched.append((gt_ann, pred_by_id[image_id]))
    return matched


_BUFFERS = threading.local()


def _read_bytes(path, image_id, role, image_index=None):
    """The contents of one PNG file.

    Raises
    ------
    fastpq.errors.MissingFileError
        (a ``FileNotFoundError``) The file does not exist; names the image and the file.
    """
    from fastpq.io.png import read_file

    try:
        return read_file(path)
    except FileNotFoundError:
        raise MissingFileError(f"the {role} PNG {path} does not exist", image_index=image_index,
                               image_id=image_id) from None


def _read(path, image_id, role, image_index=None):
    """The ids of one PNG file (see :func:`_decode`)."""
    return _decode(_read_bytes(path, image_id, role, image_index), path, image_id, role,
                   image_index)


def read_png_ids(path, role: str, *, image_index=None, image_id=None):
    """The ids of one COCO panoptic PNG file, in a new array; errors name the image.

    Parameters
    ----------
    path : str or path
    role : {'ground-truth', 'predicted'}
        For the messages.
    image_index, image_id : optional
        Where the file belongs (:func:`fastpq.errors.format_location`).

    Raises
    ------
    fastpq.errors.MissingFileError
        The file does not exist.
    fastpq.errors.DecodeError
        It cannot be decoded (the message names the file).
    """
    return _decode(_read_bytes(path, image_id, role, image_index), path, image_id, role,
                   image_index, reuse_buffer=False)


def _decode(data, path, image_id, role, image_index=None, *, reuse_buffer=True):
    """The ids of one PNG, by default in this thread's reused buffer for ``role`` (valid until
    the thread decodes the next image of that role). A :class:`~fastpq.errors.DecodeError`
    (whose message names the file) is raised again with the image's location."""
    from fastpq.io.png import IdBuffer, read_ids_bytes

    out = None
    if reuse_buffer:
        buffers = getattr(_BUFFERS, "by_role", None)
        if buffers is None:
            buffers = _BUFFERS.by_role = {"ground-truth": IdBuffer(), "predicted": IdBuffer()}
        out = buffers[role]
    try:
        return read_ids_bytes(data, name=os.fspath(path), out=out)
    except DecodeError as e:
        raise e.relocated(image_index=image_index, image_id=image_id) from None


def prepare_pair(gt_ann: dict, pred_ann: dict, gt_folder, pred_folder, categories: Categories,
                 image_index=None, gt_ids=None) -> tuple[PreparedImage, list[SuspectNote]]:
    """Read and check one image as the reference does, under the reference policy
    (:class:`fastpq.core.validation.Policy`).

    Returns the pair table and segment tables (GT areas from the JSON) and the
    :class:`~fastpq.errors.SuspectNote` values about suspect ground truth
    (``warnings.warn(note, SuspectDataWarning)`` turns one into a warning).

    Raises
    ------
    fastpq.errors.MissingFileError, fastpq.errors.DecodeError, fastpq.errors.InputError
        A PNG that is missing or cannot be decoded, sizes that differ.
    fastpq.errors.SegmentError
        A malformed segments_info list.
    KeyError
        The reference's prediction sanity errors (its texts, the file appended).
    """
    from fastpq.io.png import pair_counts_bytes

    image_id = gt_ann["image_id"]
    gt_path = os.path.join(gt_folder, gt_ann["file_name"])
    pred_path = os.path.join(pred_folder, pred_ann["file_name"])
    gt_data = (_read_bytes(gt_path, image_id, "ground-truth", image_index) if gt_ids is None
               else None)
    pred_data = _read_bytes(pred_path, image_id, "predicted", image_index)
    tables = pair_counts_bytes(gt_data, pred_data) if gt_ids is None else None
    if tables is None:  # not both fast-path PNGs of one size, or gt_ids given: one map at a time
        gt = (_decode(gt_data, gt_path, image_id, "ground-truth", image_index) if gt_ids is None
              else gt_ids)
        pred = _decode(pred_data, pred_path, image_id, "predicted", image_index)
        check_same_size(gt.shape, pred.shape, image_index=image_index, image_id=image_id,
                        gt_file=gt_path, pred_file=pred_path)
        pairs = pair_kernels.pair_counts(gt, pred)
        del gt, pred
        tables = (*pairs, *pair_kernels.marginals(pairs[0], pairs[2]),
                  *pair_kernels.marginals(pairs[1], pairs[2]))
    pairs = tables[:3]
    gt_present, gt_area, pred_present = tables[3:6]
    gt_table, pred_table = segment_tables(gt_ann["segments_info"], pred_ann["segments_info"],
                                          categories, Policy.REFERENCE, image_index=image_index,
                                          image_id=image_id, gt_file=gt_path, pred_file=pred_path)
    notes = check_segments(Policy.REFERENCE, gt_table, pred_table, gt_present, pred_present,
                           gt_area=gt_area, pred_segments=pred_ann["segments_info"],
                           image_index=image_index, image_id=image_id, gt_file=gt_path,
                           pred_file=pred_path)
    return PreparedImage(pairs, gt_table, pred_table), notes


def read_ground_truth(gt_ann: dict, gt_folder, image_index=None):
    """The decoded ground-truth PNG of one annotation, for :func:`prepare_pair`'s ``gt_ids``
    (several predictions of one image share it: :mod:`fastpq.io.checkpoints`).

    The array is this thread's reused buffer: valid until the thread decodes its next
    ground-truth PNG. Errors name the image (``image_index``, the annotation's ``image_id``).
    """
    return _read(os.path.join(gt_folder, gt_ann["file_name"]), gt_ann["image_id"],
                 "ground-truth", image_index)


def evaluate_files(matched: Sequence[tuple], gt_folder, pred_folder, categories: Categories, *,
                   metric: Metric = DEFAULT_METRIC, workers: int | None = None,
                   progress: bool | None = None, first_index: int = 0) -> tuple:
    """Score (gt_ann, pred_ann) pairs on threads, each image read and checked as the reference
    does (:func:`prepare_pair`) and scored by ``metric``; images are added in input order.

    Parameters
    ----------
    matched : sequence of (dict, dict)
        As :func:`pair_annotations` returns them.
    gt_folder, pred_folder : str or path
    categories : Categories
    metric : fastpq.metrics.protocol.Metric
        Default: Panoptic Quality under the reference's rules.
    workers : int or None
        Threads (:func:`fastpq.core.runner.worker_count`; None: every core).
    progress : bool or None
        A tqdm bar on stderr (None: when stderr is a terminal).
    first_index : int
        The index that error messages and records give the first pair (a shard of a longer
        list, as on a Dask cluster, keeps the indices of the whole list).

    Returns
    -------
    accumulator
        ``metric.accumulator(categories)`` with every image added.
    notes : list of str
        The suspect-data notes of the images, in image order, for
        :func:`fastpq.core.runner.warn_suspect_data`.
    """
    acc = metric.accumulator(categories)
    notes = []

    def step(k):
        gt_ann, pred_ann = matched[k]
        prepared, image_notes = prepare_pair(gt_ann, pred_ann, gt_folder, pred_folder, categories,
                                             image_index=first_index + k)
        return metric.score(prepared, categories, first_index + k, gt_ann["image_id"]), image_notes

    for partial, image_notes in ordered_map(step, len(matched), workers, progress=progress):
        acc.add_image(*partial)
        notes += image_notes
    return acc, notes


def resolve_inputs(gt_json_file, pred_json_file, gt_folder=None, pred_folder=None):
    """Load both JSONs, default the folders as the reference does, pair the annotations."""
    gt_json = load_json(gt_json_file, "ground-truth")
    pred_json = load_json(pred_json_file, "prediction")
    # the reference replaces every '.json' in the path, not only a suffix (SPEC §2.1)
    gt_folder = str(gt_json_file).replace(".json", "") if gt_folder is None else gt_folder
    pred_folder = str(pred_json_file).replace(".json", "") if pred_folder is None else pred_folder
    categories = Categories.from_coco(gt_json["categories"])
    return gt_json, pred_json, gt_folder, pred_folder, categories


def pq_compute(gt_json_file, pred_json_file, gt_folder=None, pred_folder=None, *,
               workers: int | None = None, progress: bool | None = None, verbose: bool = True,
               return_result: bool = False, per_image: bool = False, metric: str = "pq",
               convention: str = "panopticapi", score_images=None):
    """panopticapi's ``pq_compute`` on this process's threads (``fastpq.pq_compute`` is
    :func:`fastpq.api.pq_compute`, which adds ``client=``).

    Parameters are those of :func:`fastpq.api.pq_compute` but ``client``, and:

    score_images : callable, optional
        ``score_images(matched, gt_folder, pred_folder, categories, metric, progress=)`` scores
        the paired annotations elsewhere (a Dask cluster) and returns ``(accumulator, notes)``
        as :func:`evaluate_files` does, which is the default.

    Returns
    -------
    dict or PQResult or CoveringResult
        As :func:`fastpq.api.pq_compute`.
    """
    start = time.time()
    scoring = resolve_metric(metric, convention, per_image=per_image)
    gt_json, pred_json, gt_folder, pred_folder, categories = resolve_inputs(
        gt_json_file, pred_json_file, gt_folder, pred_folder)
    out = sys.stdout if verbose else None
    _print_header(out, gt_json_file, gt_folder, pred_json_file, pred_folder)
    if not os.path.isdir(gt_folder):
        raise Exception("Folder {} with ground truth segmentations doesn't exist".format(gt_folder))
    if not os.path.isdir(pred_folder):
        raise Exception("Folder {} with predicted segmentations doesn't exist".format(pred_folder))
    matched = pair_annotations(gt_json, pred_json, gt_json_file, pred_json_file)
    if score_images is None:
        acc, notes = evaluate_files(matched, gt_folder, pred_folder, categories, metric=scoring,
                                    workers=workers, progress=progress)
    else:
        acc, notes = score_images(matched, gt_folder, pred_folder, categories, scoring,
                                  progress=progress)
    warn_suspect_data(notes)
    result = scoring.result(acc)
    if out is not None:
        print(result.table(), file=out)
        print("Time elapsed: {:0.2f} seconds".format(time.time() - start), file=out)
    return result if return_result else result.to_dict()


def _print_header(out, gt_json_file, gt_folder, pred_json_file, pred_folder):
    if out is None:
        return
    print("Evaluation panoptic segmentation metrics:", file=out)
    print("Ground truth:", file=out)
    print("\tSegmentation folder: {}".format(gt_folder), file=out)
    print("\tJSON file: {}".format(gt_json_file), file=out)
    print("Prediction:", file=out)
    print("\tSegmentation folder: {}".format(pred_folder), file=out)
    print("\tJSON file: {}".format(pred_json_file), file=out)


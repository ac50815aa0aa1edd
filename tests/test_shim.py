"""``fastpq.install_as_panopticapi()``: the frameworks' call patterns, against the real reference.

detectron2's ``COCOPanopticEvaluator``, DETR's ``PanopticEvaluator`` and mmdetection's
``CocoPanopticMetric`` are re-created from their source as described in SPEC §6 (lazy imports,
in-memory PNGs, ``predictions.json`` next to the PNGs, per-image ``PQStat`` merged across ranks
through pickle). Each runs once with the real panopticapi and once with the shim on the same
generated files, and every number is compared.

The real panopticapi is imported by other tests of the session, so the shim is installed with
``force=True`` inside :func:`shim_as_panopticapi` and the real modules are put back afterwards;
one test runs a fresh interpreter, where nothing has imported the real one.
"""

import contextlib
import copy
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

import fastpq
from fastpq.io import shim
from fastpq.datasets import synthetic
from fastpq.core.categories import Categories

TOL = 1e-12
DATASET = dict(height=(90, 150), width=(120, 200), categories="coco", seed=23)
N_IMAGES = 14


@contextlib.contextmanager
def shim_as_panopticapi():
    """The shim in ``sys.modules`` in place of the real panopticapi, which is restored after."""
    package = fastpq.install_as_panopticapi(force=True)
    try:
        yield package
    finally:
        shim.uninstall_panopticapi_shim()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """COCO panoptic files on disk and the same images in memory."""
    root = tmp_path_factory.mktemp("shim")
    files = synthetic.write_coco_dataset(root / "ds", N_IMAGES, **DATASET)
    images = synthetic.make_dataset(N_IMAGES, **DATASET)
    with open(files["gt_json"]) as f:
        gt_json = json.load(f)
    return dict(files, images=images, gt=gt_json, root=root)


def real_panopticapi():
    evaluation = pytest.importorskip("panopticapi.evaluation")
    assert not getattr(evaluation, "__fastpq_shim__", False)
    return evaluation


def assert_same_results(ours, ref):
    """pq_compute dicts: n exactly, pq/sq/rq within TOL, per-class keys in the same order."""
    for split in ("All", "Things", "Stuff"):
        assert ours[split]["n"] == ref[split]["n"], split
        for k in ("pq", "sq", "rq"):
            assert abs(ours[split][k] - ref[split][k]) <= TOL, (split, k)
    assert list(ours["per_class"]) == list(ref["per_class"])
    for cid, row in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cid][k] - row[k]) <= TOL, (cid, k)


def assert_same_stat(ours, ref, category_ids):
    """PQStat objects: tp/fp/fn of every category exactly, iou within TOL."""
    for cid in category_ids:
        a, b = ours.pq_per_cat.get(cid), ref.pq_per_cat.get(cid)
        a_counts = (a.tp, a.fp, a.fn) if a is not None else (0, 0, 0)
        b_counts = (b.tp, b.fp, b.fn) if b is not None else (0, 0, 0)
        assert a_counts == b_counts, cid
        assert abs((a.iou if a else 0.0) - (b.iou if b else 0.0)) <= TOL, cid


def averages(stat, categories):
    return [stat.pq_average(categories, isthing=isthing) for isthing in (None, True, False)]


# -- detectron2 ------------------------------------------------------------------------------------

def detectron2_outputs(dataset):
    """Panoptic FPN style model outputs: (int32 id map, segments_info with contiguous ids)."""
    cats = dataset["gt"]["categories"]
    thing_ids = [c["id"] for c in cats if c["isthing"]]
    stuff_ids = [c["id"] for c in cats if not c["isthing"]]
    inputs, outputs = [], []
    for k, (_, _, pred_ids, pred_segments) in enumerate(dataset["images"]):
        segments = []
        for n, seg in enumerate(pred_segments):
            isthing = seg["category_id"] in thing_ids
            ids = thing_ids if isthing else stuff_ids
            extra = {"score": 0.9, "instance_id": n} if isthing else {"area": 1}
            segments.append(dict(id=seg["id"], category_id=ids.index(seg["category_id"]),
                                 isthing=isthing, **extra))
        inputs.append({"image_id": k, "file_name": f"/datasets/coco/val2017/{k:012d}.jpg"})
        outputs.append({"panoptic_seg": (pred_ids.astype(np.int32), segments)})
    return inputs, outputs, thing_ids, stuff_ids


def detectron2_evaluate(inputs, outputs, gt_json, gt_folder, thing_ids, stuff_ids):
    """COCOPanopticEvaluator.process + evaluate (detectron2/evaluation/panoptic_evaluation.py)."""
    from panopticapi.utils import id2rgb

    predictions = []
    for input, output in zip(inputs, outputs):
        panoptic_img, segments_info = output["panoptic_seg"]
        file_name = os.path.basename(input["file_name"])
        file_name_png = os.path.splitext(file_name)[0] + ".png"
        with io.BytesIO() as out:
            Image.fromarray(id2rgb(panoptic_img)).save(out, format="PNG")
            converted = []
            for seg in copy.deepcopy(segments_info):  # _convert_category_id
                isthing = seg.pop("isthing")
                seg["category_id"] = (thing_ids if isthing else stuff_ids)[seg["category_id"]]
                converted.append(seg)
            predictions.append({"image_id": input["image_id"], "file_name": file_name_png,
                                "png_string": out.getvalue(), "segments_info": converted})
    with tempfile.TemporaryDirectory(prefix="panoptic_eval") as pred_dir:
        for p in predictions:
            with open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                f.write(p.pop("png_string"))
        with open(gt_json, "r") as f:
            json_data = json.load(f)
        json_data["annotations"] = predictions
        predictions_json = os.path.join(pred_dir, "predictions.json")
        with open(predictions_json, "w") as f:
            f.write(json.dumps(json_data))

        from panopticapi.evaluation import pq_compute

        with contextlib.redirect_stdout(io.StringIO()) as printed:
            pq_res = pq_compute(gt_json, predictions_json, gt_folder=gt_folder,
                                pred_folder=pred_dir)
    res = {}
    for key, split in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for k in ("pq", "sq", "rq"):
            res[k.upper() + key] = 100 * pq_res[split][k]
    return res, pq_res, printed.getvalue()


def test_detectron2_evaluator(dataset):
    real_panopticapi()
    inputs, outputs, thing_ids, stuff_ids = detectron2_outputs(dataset)
    args = (inputs, outputs, dataset["gt_json"], dataset["gt_folder"], thing_ids, stuff_ids)
    ref, ref_pq, _ = detectron2_evaluate(*args)
    with shim_as_panopticapi():
        ours, ours_pq, printed = detectron2_evaluate(*args)
    assert_same_results(ours_pq, ref_pq)
    assert "tp" in ours_pq["per_class"][1] and "tp" not in ref_pq["per_class"][1]  # fastpq ran
    assert ours.keys() == ref.keys()
    assert all(abs(ours[k] - ref[k]) <= 100 * TOL for k in ref)
    assert "Evaluation panoptic segmentation metrics:" in printed and "Time elapsed" in printed
    json.dumps(ours_pq)  # detectron2 logs and saves it


# -- DETR ------------------------------------------------------------------------------------------

class DetrPanopticEvaluator:
    """DETR's datasets/panoptic_eval.py ``PanopticEvaluator``."""

    def __init__(self, ann_file, ann_folder, output_dir):
        self.gt_json = ann_file
        self.gt_folder = ann_folder
        os.makedirs(output_dir, exist_ok=True)
        self.output_dir = output_dir
        self.predictions = []

    def update(self, predictions):
        for p in predictions:
            with open(os.path.join(self.output_dir, p["file_name"]), "wb") as f:
                f.write(p.pop("png_string"))
        self.predictions += predictions

    def summarize(self):
        from panopticapi.evaluation import pq_compute

        predictions_json = os.path.join(self.output_dir, "predictions.json")
        with open(predictions_json, "w") as f:
            f.write(json.dumps({"annotations": self.predictions}))
        return pq_compute(self.gt_json, predictions_json, gt_folder=self.gt_folder,
                          pred_folder=self.output_dir)


def detr_predictions(dataset):
    """PostProcessPanoptic output: segment ids 0..N-1 in segments_info order, so segment 0 is
    written as RGB (0, 0, 0) and listed in the JSON (SPEC §9 case 17); every pixel is assigned."""
    from panopticapi.utils import id2rgb

    cats = {c["id"]: c for c in dataset["gt"]["categories"]}
    predictions = []
    for k, (_, _, pred_ids, pred_segments) in enumerate(dataset["images"]):
        rank = {s["id"]: n for n, s in enumerate(pred_segments)}
        present, inverse = np.unique(pred_ids, return_inverse=True)
        m_id = np.array([rank.get(i, 0) for i in present.tolist()])[inverse].reshape(pred_ids.shape)
        with io.BytesIO() as out:
            Image.fromarray(id2rgb(m_id)).save(out, format="PNG")
            predictions.append({
                "png_string": out.getvalue(),
                "segments_info": [{"id": n, "isthing": bool(cats[s["category_id"]]["isthing"]),
                                   "category_id": s["category_id"], "area": int((m_id == n).sum())}
                                  for n, s in enumerate(pred_segments)],
                "image_id": k, "file_name": f"{k:012d}.png"})
    return predictions


def test_detr_evaluator(dataset, tmp_path):
    real_panopticapi()
    results = []
    for name, context in (("ref", contextlib.nullcontext), ("ours", shim_as_panopticapi)):
        with context():
            evaluator = DetrPanopticEvaluator(dataset["gt_json"], dataset["gt_folder"],
                                              str(tmp_path / name))
            predictions = detr_predictions(dataset)
            evaluator.update(predictions[:5])
            evaluator.update(predictions[5:])
            with contextlib.redirect_stdout(io.StringIO()):
                results.append(evaluator.summarize())
    ref, ours = results
    assert_same_results(ours, ref)
    assert "tp" in ours["per_class"][1] and "tp" not in ref["per_class"][1]  # fastpq ran
    assert any(s["id"] == 0 for p in predictions for s in p["segments_info"])


# -- mmdetection -----------------------------------------------------------------------------------

def matched_pairs(dataset):
    with open(dataset["pred_json"]) as f:
        pred = {a["image_id"]: a for a in json.load(f)["annotations"]}
    return [(gt_ann, pred[gt_ann["image_id"]]) for gt_ann in dataset["gt"]["annotations"]]


def mmdet_mode_a(pairs, gt_folder, pred_folder, categories):
    """CocoPanopticMetric without outfile_prefix: one pq_compute_single_core call per image, the
    per-image PQStat pickled to rank 0 (collect_results), merged with += in order, averaged."""
    from panopticapi.evaluation import PQStat, pq_compute_single_core

    results = [pickle.dumps(pq_compute_single_core(proc_id=0, annotation_set=[pair],
                                                   gt_folder=gt_folder, pred_folder=pred_folder,
                                                   categories=categories))
               for pair in pairs]
    pq_stat = PQStat()
    for result in results:
        pq_stat += pickle.loads(result)
    return pq_stat


def test_mmdet_metric_per_image_stats(dataset):
    evaluation = real_panopticapi()
    categories = {c["id"]: c for c in dataset["gt"]["categories"]}
    args = (dataset["gt_folder"], dataset["pred_folder"], categories)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = mmdet_mode_a(copy.deepcopy(matched_pairs(dataset)), *args)
    assert type(ref) is evaluation.PQStat
    with shim_as_panopticapi():
        ours = mmdet_mode_a(copy.deepcopy(matched_pairs(dataset)), *args)
    assert type(ours) is shim.PQStat
    assert_same_stat(ours, ref, categories)
    for (a, a_cls), (b, b_cls) in zip(averages(ours, categories), averages(ref, categories)):
        assert a["n"] == b["n"] and list(a_cls) == list(b_cls)
        assert all(abs(a[k] - b[k]) <= TOL for k in ("pq", "sq", "rq"))
        # mmdet zips dataset_meta['classes'] with per_class.values(): order matters
        assert all(abs(a_cls[c][k] - b_cls[c][k]) <= TOL for c in b_cls for k in ("pq", "sq", "rq"))


def test_multi_core_on_object_array_and_pred_area_mutation(dataset):
    """mmdet's outfile_prefix mode and older mmdet/VPS code: pq_compute_multi_core on the
    matched list; np.array_split chunks (object arrays) to pq_compute_single_core; the caller's
    prediction dicts receive the PNG areas as in the reference."""
    evaluation = real_panopticapi()
    categories = {c["id"]: c for c in dataset["gt"]["categories"]}
    args = (dataset["gt_folder"], dataset["pred_folder"], categories)
    ref_pairs, our_pairs = matched_pairs(dataset), matched_pairs(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = evaluation.pq_compute_single_core(0, ref_pairs, *args)
    ours = shim.pq_compute_multi_core(our_pairs, *args)
    assert_same_stat(ours, ref, categories)
    for (_, ref_pred), (_, our_pred) in zip(ref_pairs, our_pairs):
        assert [s["area"] for s in our_pred["segments_info"]] == \
               [int(s["area"]) for s in ref_pred["segments_info"]]
        assert all(type(s["area"]) is int for s in our_pred["segments_info"])
    merged = shim.PQStat()
    for chunk in np.array_split(matched_pairs(dataset), 3):
        merged += shim.pq_compute_single_core(0, chunk, *args, workers=2)
    assert_same_stat(merged, ref, categories)


# -- PQStat ----------------------------------------------------------------------------------------

def filled(stat_class, ops):
    stat = stat_class()
    for cid, field, value in ops:
        setattr(stat[cid], field, getattr(stat[cid], field) + value)
    return stat


def random_ops(rng, category_ids, n):
    fields = ["tp", "fp", "fn", "iou"]
    return [(int(rng.choice(category_ids)), f, float(rng.uniform(0.5, 1)) if f == "iou"
             else int(rng.integers(1, 4))) for f in rng.choice(fields, n)]


def test_pqstat_filled_in_place_averages_like_reference():
    """Code that fills PQStat itself (mmdet's and VPS's copies of the per-image loop)."""
    evaluation = real_panopticapi()
    cats = {c["id"]: c for c in Categories.coco_panoptic().to_coco()}
    rng = np.random.default_rng(5)
    for _ in range(20):
        ops = random_ops(rng, list(cats)[::7], 40)
        ours, ref = filled(shim.PQStat, ops), filled(evaluation.PQStat, ops)
        ours += filled(shim.PQStat, ops[:10])
        ref += filled(evaluation.PQStat, ops[:10])
        for isthing in (None, True, False):
            try:
                expected = ref.pq_average(cats, isthing)
            except ZeroDivisionError:
                continue
            assert ours.pq_average(cats, isthing) == expected


def test_pq_average_with_an_empty_split_gives_zero():
    """SPEC "fastpq's decisions" §4: the reference raises ZeroDivisionError here."""
    evaluation = real_panopticapi()
    cats = {1: {"id": 1, "isthing": 1}, 2: {"id": 2, "isthing": 0}}
    ops = [(1, "tp", 1), (1, "iou", 0.75), (1, "fp", 1)]
    with pytest.raises(ZeroDivisionError):
        filled(evaluation.PQStat, ops).pq_average(cats, isthing=False)
    stuff, per_class = filled(shim.PQStat, ops).pq_average(cats, isthing=False)
    assert stuff == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert per_class == {2: {"pq": 0.0, "sq": 0.0, "rq": 0.0}}
    things, per_class = filled(shim.PQStat, ops).pq_average(cats, isthing=True)
    assert things == {"pq": 0.75 / 1.5, "sq": 0.75, "rq": 1 / 1.5, "n": 1}
    assert list(per_class) == [1]


def test_pqstat_pickles():
    evaluation = real_panopticapi()
    ops = [(3, "tp", 2), (3, "iou", 1.5), (5, "fn", 1)]
    stat = pickle.loads(pickle.dumps(filled(shim.PQStat, ops)))
    assert type(stat) is shim.PQStat and type(stat[3]) is shim.PQStatCat
    assert (stat[3].tp, stat[3].iou, stat[5].fn) == (2, 1.5, 1)
    stat[7].fp += 1  # still a defaultdict of PQStatCat
    # a pickle of the real PQStat (another rank without the shim) loads into the shim's classes
    real_bytes = pickle.dumps(filled(evaluation.PQStat, ops))
    with shim_as_panopticapi():
        loaded = pickle.loads(real_bytes)
        assert type(loaded) is shim.PQStat and type(loaded[3]) is shim.PQStatCat
        loaded[9].tp += 1
        merged = shim.PQStat()
        merged += loaded
        merged += stat
        assert (merged[3].tp, merged[3].iou, merged[9].tp, merged[7].fp) == (4, 3.0, 1, 1)


# -- utils -----------------------------------------------------------------------------------------

def test_utils_match_reference(dataset, tmp_path, capsys):
    pytest.importorskip("panopticapi.utils")
    from panopticapi import utils as ref

    rng = np.random.default_rng(1)
    ids = rng.integers(0, 2**24, (5, 7)).astype(np.int32)
    rgb = ref.id2rgb(ids)
    assert np.array_equal(shim.id2rgb(ids), rgb) and shim.id2rgb(ids).dtype == np.uint8
    for image in (rgb, rgb.astype(np.uint32), np.dstack([rgb, rgb[..., :1]])):
        ours, theirs = shim.rgb2id(image), ref.rgb2id(image)
        assert np.array_equal(ours, theirs) and ours.dtype == theirs.dtype
    assert shim.id2rgb(5_000_000) == ref.id2rgb(5_000_000)
    assert shim.rgb2id([64, 75, 76]) == ref.rgb2id([64, 75, 76]) == 5_000_000

    categories = {c["id"]: c for c in dataset["gt"]["categories"]}
    draws = [1, 1, 1, 92, 2, 1, 92, 3] * 4 + [1] * 30
    results = []
    for module in (ref, shim):
        np.random.seed(3)
        generator = module.IdGenerator(copy.deepcopy(categories))
        results.append([generator.get_id(c) for c in draws]
                       + [generator.get_id_and_color(c) for c in draws]
                       + [generator.get_color(c) for c in draws])
    assert results[0] == results[1]

    shim.save_json({"a": [1, 2]}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2]}

    @shim.get_traceback
    def worker(x):
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="bad 3"):
        worker(3)
    printed = capsys.readouterr()
    assert printed.out == "Caught exception in worker thread:\n"
    assert "ValueError: bad 3" in printed.err and worker.__name__ == "worker"


# -- installation ----------------------------------------------------------------------------------

def test_refuses_to_shadow_real_panopticapi():
    evaluation = real_panopticapi()
    before = {k: v for k, v in sys.modules.items() if k.startswith("panopticapi")}
    with pytest.raises(RuntimeError, match=r"real panopticapi is already imported.*force=True"):
        fastpq.install_as_panopticapi()
    assert {k: v for k, v in sys.modules.items() if k.startswith("panopticapi")} == before
    with shim_as_panopticapi() as package:
        import panopticapi.evaluation as installed

        assert installed is package.evaluation and installed.pq_compute is shim.pq_compute
        assert fastpq.install_as_panopticapi() is package  # idempotent, no force needed
    assert sys.modules["panopticapi.evaluation"] is evaluation
    assert not shim.uninstall_panopticapi_shim()


def test_install_in_a_fresh_interpreter():
    code = """
import pickle, sys
import fastpq
package = fastpq.install_as_panopticapi()
import panopticapi
from panopticapi import evaluation, utils
from panopticapi.evaluation import (OFFSET, VOID, PQStatCat, PQStat, pq_compute_single_core,
                                    pq_compute_multi_core, pq_compute)
from panopticapi.utils import rgb2id, id2rgb, IdGenerator, save_json, get_traceback
assert panopticapi is package and evaluation.pq_compute is fastpq.io.shim.pq_compute
assert (OFFSET, VOID) == (256 ** 3, 0) and utils.IdGenerator is fastpq.io.shim.IdGenerator
try:
    import panopticapi.combine_semantic_and_instance_predictions
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("a submodule the shim does not provide was imported")
stat = PQStat()
stat[3].tp += 2
stat[3].iou += 1.5
sys.stdout.buffer.write(pickle.dumps(stat))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    stat = pickle.loads(done.stdout)  # another process, no shim installed here
    assert type(stat) is shim.PQStat and (stat[3].tp, stat[3].iou) == (2, 1.5)

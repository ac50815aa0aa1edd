"""Cityscapes panoptic files: fastpq.pq_compute against cityscapesScripts' evaluatePanoptic.

The files are generated in the format of cityscapesScripts' ``csCreatePanopticImgs`` (SPEC §1.2);
one test checks that claim by running the converter itself on the raw ``*_instanceIds.png`` maps
the files stand for. Needs ``pip install --no-deps cityscapesscripts pyquaternion`` (its other
dependencies — matplotlib, coloredlogs, appdirs, requests, the ``typing`` backport — are used
only by other tools of the package); skipped without it.
"""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

import fastpq
from fastpq.datasets import synthetic

TOL = 1e-12
SPLITS = ("All", "Things", "Stuff")
N_IMAGES = 3


@pytest.fixture(scope="module")
def cityscapes_eval():
    return pytest.importorskip(
        "cityscapesscripts.evaluation.evalPanopticSemanticLabeling",
        reason="pip install --no-deps cityscapesscripts pyquaternion")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    return synthetic.write_cityscapes_dataset(root, N_IMAGES, seed=4, n_things=(15, 40),
                                              n_stuff=(5, 10), crowd_prob=0.4)


def read_ids(path):
    return synthetic.rgb2id(np.asarray(Image.open(path)))


def test_files_are_what_csCreatePanopticImgs_writes(dataset, tmp_path, cityscapes_eval):
    """Write the raw *_gtFine_instanceIds.png maps the GT stands for (void pixels as several
    ignored labels), convert them with cityscapesScripts, and compare JSON and PNGs."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    with open(dataset["gt_json"]) as f:
        ours = json.load(f)
    rng = np.random.default_rng(0)
    for ann in ours["annotations"]:
        raw = read_ids(f"{dataset['gt_folder']}/{ann['file_name']}").astype(np.uint16)
        void = raw == 0
        raw[void] = rng.integers(0, 7, int(void.sum()))  # labels 0-6 are ignoreInEval
        city = ann["image_id"].split("_")[0]
        folder = tmp_path / "gtFine" / "val" / city
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw).save(folder / f"{ann['image_id']}_gtFine_instanceIds.png")
    (tmp_path / "out").mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(str(tmp_path / "gtFine"), str(tmp_path / "out"), setNames=["val"])
    with open(tmp_path / "out" / "cityscapes_panoptic_val.json") as f:
        converted = json.load(f)
    assert converted == ours
    assert any(s["iscrowd"] for a in ours["annotations"] for s in a["segments_info"])
    for ann in ours["annotations"]:
        assert np.array_equal(
            read_ids(tmp_path / "out" / "cityscapes_panoptic_val" / ann["file_name"]),
            read_ids(f"{dataset['gt_folder']}/{ann['file_name']}"))


def test_pq_compute_matches_evaluatePanoptic(dataset, tmp_path, cityscapes_eval):
    results_file = tmp_path / "resultPanopticSemanticLabeling.json"
    with contextlib.redirect_stdout(io.StringIO()):
        ref = cityscapes_eval.evaluatePanoptic(dataset["gt_json"], dataset["gt_folder"],
                                               dataset["pred_json"], dataset["pred_folder"],
                                               str(results_file))
        ours = fastpq.pq_compute(dataset["gt_json"], dataset["pred_json"])  # default folders
    for split in SPLITS:
        assert ours[split]["n"] == ref[split]["n"]
        for k in ("pq", "sq", "rq"):
            assert abs(ours[split][k] - ref[split][k]) <= TOL, (split, k)
    assert list(ours["per_class"]) == list(ref["per_class"]) and len(ref["per_class"]) == 19
    for cid, row in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cid][k] - row[k]) <= TOL, (cid, k)
    # the results file the cityscapes tool writes: per-class keys become strings
    written = json.loads(results_file.read_text())
    assert written["All"]["n"] == ours["All"]["n"]
    assert abs(written["per_class"]["26"]["pq"] - ours["per_class"][26]["pq"]) <= TOL

    # per-class counts, from the tool's own per-image code
    with open(dataset["gt_json"]) as f:
        gt = json.load(f)
    with open(dataset["pred_json"]) as f:
        pred = {a["image_id"]: a for a in json.load(f)["annotations"]}
    pairs = [(a, pred[a["image_id"]]) for a in gt["annotations"]]
    categories = {c["id"]: c for c in gt["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        stat = cityscapes_eval.pq_compute_single_core(0, pairs, dataset["gt_folder"],
                                                      dataset["pred_folder"], categories)
    for cid, row in ours["per_class"].items():
        ref_cat = stat.pq_per_cat[cid]
        assert (row["tp"], row["fp"], row["fn"]) == (ref_cat.tp, ref_cat.fp, ref_cat.fn), cid
        assert abs(row["iou"] - ref_cat.iou) <= TOL, cid
    totals = [sum(r[k] for r in ours["per_class"].values()) for k in ("tp", "fp", "fn")]
    assert all(t > 0 for t in totals)
    assert all(isinstance(a["image_id"], str) for a in gt["annotations"])

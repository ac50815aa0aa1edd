"""Parity with the reference panopticapi on generated data and on the real COCO sample.

Every per-class tp/fp/fn is compared exactly, iou sums and PQ/SQ/RQ within 1e-12.
"""

import contextlib
import io
import json

import numpy as np
import pytest

import fastpq
from fastpq.datasets import synthetic
from fastpq.core.categories import Categories
from reference import assert_parity, reference_stat

COCO = Categories.coco_panoptic()
COCO_LIST = COCO.to_coco()
CITY = Categories.cityscapes()
CITY_LIST = CITY.to_coco()


@pytest.fixture(scope="module")
def coco_images():
    return synthetic.make_dataset(300, height=(240, 480), width=(320, 640), categories="coco",
                                  seed=7)


def test_evaluate_matches_reference_on_300_coco_like_images(coco_images, tmp_path, panopticapi):
    gts, gsegs, preds, psegs = zip(*coco_images)
    result = fastpq.evaluate(list(gts), list(preds), gt_segments=list(gsegs),
                             pred_segments=list(psegs), categories=COCO_LIST, workers=2)
    stat = reference_stat(coco_images, COCO_LIST, str(tmp_path))
    assert_parity(result, stat, COCO_LIST)
    # the data exercises every kind of error
    assert result.tp.sum() > 0 and result.fp.sum() > 0 and result.fn.sum() > 0
    assert any(s["iscrowd"] for segs in gsegs for s in segs)
    assert any((g == 0).any() for g in gts)


@pytest.mark.slow
def test_evaluate_matches_reference_on_cityscapes_size_maps(tmp_path, panopticapi):
    images = synthetic.make_dataset(12, height=1024, width=2048, categories="cityscapes",
                                    seed=3, id_style="divisor")
    gts, gsegs, preds, psegs = zip(*images)
    result = fastpq.evaluate(list(gts), list(preds), gt_segments=list(gsegs),
                             pred_segments=list(psegs), categories=CITY)
    stat = reference_stat(images, CITY_LIST, str(tmp_path))
    assert_parity(result, stat, CITY_LIST)


def test_rgb_maps_equal_id_maps(coco_images):
    g, gs, p, ps = coco_images[0]
    by_ids = fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps, categories=COCO)
    by_rgb = fastpq.evaluate(synthetic.id2rgb(g), synthetic.id2rgb(p), gt_segments=gs,
                             pred_segments=ps, categories=COCO)
    assert by_ids.to_dict() == by_rgb.to_dict()


def test_pq_compute_matches_reference_pq_compute(tmp_path, panopticapi):
    info = synthetic.write_coco_dataset(tmp_path / "ds", 40, height=240, width=320, seed=11)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        ours = fastpq.pq_compute(info["gt_json"], info["pred_json"], workers=2)
    assert "Time elapsed" in printed.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        ref = panopticapi.pq_compute(info["gt_json"], info["pred_json"])
    _compare_dicts(ours, ref)
    # per-class counts against the reference's own per-image code
    gt = json.load(open(info["gt_json"]))
    pred = json.load(open(info["pred_json"]))
    pred_by_id = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, pred_by_id[a["image_id"]]) for a in gt["annotations"]]
    cats = {c["id"]: c for c in gt["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        stat = panopticapi.pq_compute_single_core(0, pairs, info["gt_folder"], info["pred_folder"],
                                                  cats)
    for cid, row in ours["per_class"].items():
        ref_cat = stat.pq_per_cat[cid]
        assert (row["tp"], row["fp"], row["fn"]) == (ref_cat.tp, ref_cat.fp, ref_cat.fn)
        assert abs(row["iou"] - ref_cat.iou) <= 1e-12


def _compare_dicts(ours, ref, tol=1e-12):
    for split in ("All", "Things", "Stuff"):
        assert ours[split]["n"] == ref[split]["n"]
        for k in ("pq", "sq", "rq"):
            assert abs(ours[split][k] - ref[split][k]) <= tol
    assert list(ours["per_class"]) == list(ref["per_class"])
    for cid, r in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cid][k] - r[k]) <= tol


def _sample_with_predictions(shared_data):
    """The real COCO sample, with predictions derived from its ground truth: ids renumbered,
    segments shifted, one thing relabelled, one segment dropped, one spurious segment."""
    from PIL import Image

    root = shared_data / "coco_panoptic_sample"
    gt_json = json.load(open(root / "panoptic_examples.json"))
    rng = np.random.default_rng(0)
    images = []
    for ann in gt_json["annotations"]:
        g = synthetic.rgb2id(np.array(Image.open(root / "panoptic_examples" / ann["file_name"])))
        segs = ann["segments_info"]
        p = np.zeros_like(g)
        psegs = []
        for k, s in enumerate(segs):
            if k == 1:
                continue  # missed
            mask = np.roll(g == s["id"], shift=int(rng.integers(-6, 7)), axis=1)
            new_id = 1000 + k
            p[mask] = new_id
            cat = s["category_id"]
            if k == 2 and s["category_id"] in (1, 2, 3):
                cat = 4 if cat != 4 else 1  # misclassified
            psegs.append({"id": new_id, "category_id": cat})
        p[:20, :20] = 999  # spurious
        psegs.append({"id": 999, "category_id": 1})
        present = set(np.unique(p).tolist())
        psegs = [s for s in psegs if s["id"] in present]
        images.append((g, segs, p, psegs))
    return gt_json, images


def test_real_coco_sample(shared_data, tmp_path, panopticapi):
    gt_json, images = _sample_with_predictions(shared_data)
    cats = gt_json["categories"]
    gts, gsegs, preds, psegs = zip(*images)
    result = fastpq.evaluate(list(gts), list(preds), gt_segments=list(gsegs),
                             pred_segments=list(psegs), categories=cats)
    stat = reference_stat(images, cats, str(tmp_path))
    assert_parity(result, stat, cats)
    assert 0 < result.pq < 1

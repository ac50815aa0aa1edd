"""The seeded data generator: determinism, self-consistency, realism and every error kind.

The error-kind tests switch one kind on at a time (rate 1, everything else 0) and check it with a
small naive matcher that follows the reference's rules (SPEC §2.3–2.5).
"""

import contextlib
import io
import json
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from fastpq.core.categories import Categories
from fastpq.errors import InputError
from fastpq.datasets.synthetic import (id2rgb, make_dataset, make_prediction, make_scene, rgb2id,
                              write_coco_dataset)

NO_ERRORS = dict(missed=0.0, merged=0.0, spurious=0.0, misclassified=0.0, boundary_noise=0,
                 pred_void_frac=0.0)


# -- a naive reading of the reference -------------------------------------------------------------

def overlaps(gt_ids, pred_ids):
    """{(gt_id, pred_id): pixel count} over the image."""
    key = gt_ids.astype(np.uint64) << np.uint64(24) | pred_ids.astype(np.uint64)
    keys, counts = np.unique(key, return_counts=True)
    return {(int(k >> 24), int(k & 0xFFFFFF)): int(c) for k, c in zip(keys, counts)}


def iou_table(gt_ids, gt_segments, pred_ids, pred_segments):
    """{(gt_id, pred_id): IoU} for every overlapping pair, with the reference's union (void forgiven)."""
    pairs = overlaps(gt_ids, pred_ids)
    gt = {s["id"]: s for s in gt_segments}
    pred = {s["id"]: s for s in pred_segments}
    table = {}
    for (g, p), inter in pairs.items():
        if g in gt and p in pred:
            union = gt[g]["area"] + pred[p]["area"] - inter - pairs.get((0, p), 0)
            table[g, p] = inter / union
    return table


def matched(gt_ids, gt_segments, pred_ids, pred_segments):
    """{gt_id: (pred_id, iou)} of the reference's matches (same category, not crowd, IoU > 0.5)."""
    gt = {s["id"]: s for s in gt_segments}
    pred = {s["id"]: s for s in pred_segments}
    return {g: (p, iou) for (g, p), iou in iou_table(gt_ids, gt_segments, pred_ids, pred_segments).items()
            if iou > 0.5 and not gt[g]["iscrowd"] and gt[g]["category_id"] == pred[p]["category_id"]}


def check_segments(ids, segments, *, prediction):
    """The map and its segments_info describe the same segments, with exact areas and boxes."""
    assert ids.dtype == np.uint32 and ids.ndim == 2
    listed = [s["id"] for s in segments]
    assert len(set(listed)) == len(listed)
    present, counts = np.unique(ids, return_counts=True)
    assert set(present.tolist()) - {0} == set(listed)
    area = dict(zip(present.tolist(), counts.tolist()))
    for s in segments:
        assert set(s) == {"id", "category_id", "iscrowd", "area", "bbox"}
        assert s["area"] == area[s["id"]]
        ys, xs = np.nonzero(ids == s["id"])
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        if prediction:
            assert s["iscrowd"] == 0


def scenes(n, *, categories="coco", seed=0, height=96, width=128, **kwargs):
    return make_dataset(n, height=height, width=width, categories=categories, seed=seed, **kwargs)


# -- determinism and consistency ------------------------------------------------------------------

def test_same_seed_gives_same_data_and_images_depend_only_on_seed_and_index():
    first = scenes(3, seed=7)
    again = scenes(3, seed=7)
    prefix = scenes(2, seed=7)
    other = scenes(3, seed=8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[2], b[2])
        assert a[1] == b[1] and a[3] == b[3]
    for a, b in zip(first, prefix):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[3] == b[3]
    assert not np.array_equal(first[0][0], other[0][0])


@pytest.mark.parametrize("categories, id_style, height, width", [
    ("coco", "coco", 120, 160), ("coco", "divisor", 97, 131), ("cityscapes", "divisor", 128, 256),
    ("cityscapes", "coco", 33, 57), ("coco", "coco", 1, 1), ("coco", "coco", 4, 300),
])
def test_segments_info_matches_the_map(categories, id_style, height, width):
    for gt_ids, gt_segments, pred_ids, pred_segments in scenes(6, categories=categories, height=height,
                                                               width=width, id_style=id_style):
        assert gt_ids.shape == pred_ids.shape == (height, width)
        check_segments(gt_ids, gt_segments, prediction=False)
        check_segments(pred_ids, pred_segments, prediction=True)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), height=st.integers(1, 48), width=st.integers(1, 48),
       rates=st.tuples(*[st.floats(0, 1)] * 5), noise=st.integers(0, 4),
       id_style=st.sampled_from(["coco", "divisor"]))
def test_any_options_give_consistent_segments(seed, height, width, rates, noise, id_style):
    rng = np.random.default_rng(seed)
    crowd, missed, merged, spurious, misclassified = rates
    gt_ids, gt_segments = make_scene(rng, height, width, "cityscapes", crowd_prob=crowd, id_style=id_style)
    check_segments(gt_ids, gt_segments, prediction=False)
    pred_ids, pred_segments = make_prediction(rng, gt_ids, gt_segments, "cityscapes", missed=missed,
                                              merged=merged, spurious=spurious, misclassified=misclassified,
                                              boundary_noise=noise, id_style=id_style)
    check_segments(pred_ids, pred_segments, prediction=True)


def test_sizes_vary_within_ranges():
    shapes = {data[0].shape for data in scenes(8, height=(40, 60), width=(50, 70))}
    assert len(shapes) > 1
    assert all(40 <= h <= 60 and 50 <= w <= 70 for h, w in shapes)


# -- realism of the ground truth ------------------------------------------------------------------

def test_ground_truth_looks_like_a_panoptic_map():
    sizes = []
    for gt_ids, gt_segments, _, _ in scenes(6, height=480, width=640):
        assert 4 <= len(gt_segments) <= 60
        changes = np.count_nonzero(gt_ids[:, 1:] != gt_ids[:, :-1])
        assert gt_ids.size / (changes + gt_ids.shape[0]) > 20      # mean horizontal run length
        assert 0 < np.mean(gt_ids == 0) < 0.15
        things = {c for c, t in zip(Categories.coco_panoptic().ids, Categories.coco_panoptic().isthing) if t}
        sizes += [s["area"] for s in gt_segments if s["category_id"] in things and not s["iscrowd"]]
    sizes = np.array(sizes)
    assert (sizes < 32 ** 2).any() and (sizes >= 96 ** 2).any()
    assert ((sizes >= 32 ** 2) & (sizes < 96 ** 2)).any()


def test_crowd_and_void_occur_across_a_dataset():
    data = scenes(30)
    assert sum(s["iscrowd"] for _, segments, _, _ in data for s in segments) > 0
    assert all((gt_ids == 0).any() for gt_ids, _, _, _ in data)
    assert not any((gt_ids == 0).any() for gt_ids, _, _, _ in scenes(5, void_frac=0.0))


def test_coco_style_sometimes_has_two_crowd_segments_of_one_class():
    def most_crowds_per_class(segments):
        crowd = [s["category_id"] for s in segments if s["iscrowd"]]
        return max((crowd.count(c) for c in crowd), default=0)

    assert max(most_crowds_per_class(d[1]) for d in scenes(20, crowd_prob=1.0)) == 2
    assert max(most_crowds_per_class(d[1]) for d in scenes(20, crowd_prob=1.0, id_style="divisor")) == 1


def test_divisor_ids_follow_cityscapes():
    cats = Categories.cityscapes()
    isthing = dict(zip(cats.ids, cats.isthing))
    for gt_ids, gt_segments, pred_ids, pred_segments in scenes(6, categories="cityscapes", height=128,
                                                               width=256, crowd_prob=0.5, id_style="divisor"):
        for s in gt_segments + pred_segments:
            if isthing[s["category_id"]] and not s["iscrowd"]:
                assert s["id"] // 1000 == s["category_id"]
            else:
                assert s["id"] == s["category_id"]


def test_coco_ids_are_fresh_and_use_all_three_bytes():
    gt, pred = set(), set()
    for _, gt_segments, _, pred_segments in scenes(10):
        gt |= {s["id"] for s in gt_segments}
        pred |= {s["id"] for s in pred_segments}
    assert len(gt & pred) <= 1
    assert max(gt) >= 2 ** 16 and max(pred) >= 2 ** 16 and max(gt | pred) < 2 ** 24


# -- predictions: each error kind on its own ------------------------------------------------------

def test_prediction_without_errors_matches_every_segment_exactly():
    for gt_ids, gt_segments, pred_ids, pred_segments in scenes(8, crowd_prob=0.5, **NO_ERRORS):
        matches = matched(gt_ids, gt_segments, pred_ids, pred_segments)
        assert set(matches) == {s["id"] for s in gt_segments if not s["iscrowd"]}
        assert all(iou == 1.0 for _, iou in matches.values())
        assert not (pred_ids == 0).any()


def test_missed_segments_are_never_matched_and_some_are_left_void():
    left_void = False
    for gt_ids, gt_segments, pred_ids, pred_segments in scenes(8, **dict(NO_ERRORS, missed=1.0)):
        assert matched(gt_ids, gt_segments, pred_ids, pred_segments) == {}
        left_void |= bool((pred_ids == 0).any())
    assert left_void


def test_merged_things_share_one_prediction():
    merges = 0
    for gt_ids, gt_segments, pred_ids, pred_segments in scenes(8, **dict(NO_ERRORS, merged=1.0)):
        gt = {s["id"]: s for s in gt_segments}
        covered = {}
        for (g, p), inter in overlaps(gt_ids, pred_ids).items():
            if g in gt and inter == gt[g]["area"]:
                covered.setdefault(p, []).append(gt[g]["category_id"])
        merges += sum(len(cats) - 1 for cats in covered.values() if len(cats) > 1 and len(set(cats)) == 1)
    assert merges > 0


def test_misclassified_segments_get_another_category_of_the_same_kind():
    cats = Categories.coco_panoptic()
    isthing = dict(zip(cats.ids, cats.isthing))
    for gt_ids, gt_segments, pred_ids, pred_segments in scenes(6, **dict(NO_ERRORS, misclassified=1.0)):
        gt = {s["id"]: s for s in gt_segments}
        pred = {s["id"]: s for s in pred_segments}
        for (g, p), iou in iou_table(gt_ids, gt_segments, pred_ids, pred_segments).items():
            if iou == 1.0 and not gt[g]["iscrowd"]:
                assert pred[p]["category_id"] != gt[g]["category_id"]
                assert isthing[pred[p]["category_id"]] == isthing[gt[g]["category_id"]]
        assert matched(gt_ids, gt_segments, pred_ids, pred_segments) == {}


def test_spurious_segments_land_anywhere_on_void_and_on_crowd():
    unmatched = on_void = on_same_class_crowd = 0
    for gt_ids, gt_segments, pred_ids, pred_segments in scenes(12, crowd_prob=0.5,
                                                               **dict(NO_ERRORS, spurious=1.0)):
        gt = {s["id"]: s for s in gt_segments}
        pairs = overlaps(gt_ids, pred_ids)
        hits = {p for p, _ in matched(gt_ids, gt_segments, pred_ids, pred_segments).values()}
        for s in pred_segments:
            if s["id"] in hits:
                continue
            unmatched += 1
            on_void += pairs.get((0, s["id"]), 0) > s["area"] / 2
            on_same_class_crowd += any(pairs.get((g, s["id"]), 0) > 0 and gt[g]["iscrowd"]
                                       and gt[g]["category_id"] == s["category_id"] for g in gt)
    assert unmatched > 0 and on_void > 0 and on_same_class_crowd > 0


def test_default_prediction_has_true_and_false_positives_and_negatives():
    tp = fn = fp = 0
    for gt_ids, gt_segments, pred_ids, pred_segments in scenes(10):
        matches = matched(gt_ids, gt_segments, pred_ids, pred_segments)
        tp += len(matches)
        fn += sum(1 for s in gt_segments if not s["iscrowd"] and s["id"] not in matches)
        fp += len(pred_segments) - len(matches)
    assert tp > 0 and fn > 0 and fp > 0
    assert 0.5 < tp / (tp + fn) < 0.95


# -- ids as RGB -----------------------------------------------------------------------------------

def test_id2rgb_and_rgb2id_are_inverse_and_follow_the_reference():
    from panopticapi.utils import id2rgb as ref_id2rgb, rgb2id as ref_rgb2id

    ids = np.array([[0, 1, 255, 256], [65535, 65536, 2 ** 24 - 1, 123456]], dtype=np.uint32)
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    np.testing.assert_array_equal(rgb, ref_id2rgb(ids.astype(np.int64)))
    np.testing.assert_array_equal(rgb2id(rgb), ref_rgb2id(rgb))
    np.testing.assert_array_equal(rgb2id(np.dstack([rgb, np.full((2, 4), 7, np.uint8)])), ids)
    for bad in (2 ** 24, -1):
        with pytest.raises(InputError):
            id2rgb(np.array([bad]))
    with pytest.raises(InputError):
        rgb2id(np.zeros((2, 2), np.uint8))


# -- files and the reference ----------------------------------------------------------------------

def test_write_coco_dataset_writes_what_make_dataset_makes(tmp_path):
    root = tmp_path / "data"
    threads = threading.active_count()
    paths = write_coco_dataset(root, 3, height=40, width=56, seed=3, workers=2)
    assert threading.active_count() == threads
    assert paths == {"gt_json": str(root / "gt.json"), "gt_folder": str(root / "gt"),
                     "pred_json": str(root / "pred.json"), "pred_folder": str(root / "pred"), "n_images": 3}
    gt_json = json.loads((root / "gt.json").read_text())
    pred_json = json.loads((root / "pred.json").read_text())
    assert set(gt_json) >= {"images", "annotations", "categories"} and set(pred_json) == {"annotations"}
    assert len(gt_json["categories"]) == 133
    assert all(set(c) == {"id", "name", "isthing", "supercategory", "color"} for c in gt_json["categories"])
    assert gt_json["categories"][0]["color"] == [220, 20, 60]
    expected = scenes(3, height=40, width=56, seed=3)
    for i, (gt_ids, gt_segments, pred_ids, pred_segments) in enumerate(expected):
        gt_ann, pred_ann = gt_json["annotations"][i], pred_json["annotations"][i]
        assert gt_json["images"][i]["id"] == gt_ann["image_id"] == pred_ann["image_id"] == i
        assert gt_ann["file_name"] == pred_ann["file_name"] == f"{i:012d}.png"
        assert gt_ann["segments_info"] == gt_segments and pred_ann["segments_info"] == pred_segments
        for folder, ids in (("gt", gt_ids), ("pred", pred_ids)):
            with Image.open(root / folder / gt_ann["file_name"]) as png:
                assert png.mode == "RGB"
                np.testing.assert_array_equal(rgb2id(np.asarray(png)), ids)


def test_reference_finds_the_data_realistic(tmp_path):
    from panopticapi.evaluation import pq_compute, pq_compute_single_core

    paths = write_coco_dataset(tmp_path / "data", 8, height=120, width=160, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        results = pq_compute(paths["gt_json"], paths["pred_json"])
        gt_json = json.loads(open(paths["gt_json"]).read())
        pred_json = json.loads(open(paths["pred_json"]).read())
        stats = pq_compute_single_core(0, list(zip(gt_json["annotations"], pred_json["annotations"])),
                                       paths["gt_folder"], paths["pred_folder"],
                                       {c["id"]: c for c in gt_json["categories"]})
    assert 0.3 < results["All"]["pq"] < 0.95
    counts = stats.pq_per_cat.values()
    assert sum(c.tp for c in counts) > 0 and sum(c.fp for c in counts) > 0 and sum(c.fn for c in counts) > 0


# -- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(id_style="cityscapes"), dict(crowd_prob=1.5), dict(void_frac=-0.1),
                                    dict(n_things=(5, 2))])
def test_make_scene_refuses_bad_options(kwargs):
    with pytest.raises(InputError):
        make_scene(np.random.default_rng(0), 20, 20, "coco", **kwargs)


def test_divisor_style_refuses_category_zero():
    with pytest.raises(InputError, match="divisor"):
        make_scene(np.random.default_rng(0), 20, 20, {"things": [1], "stuff": [0]}, id_style="divisor")


def test_make_prediction_refuses_unknown_category_and_bad_rates():
    rng = np.random.default_rng(0)
    ids = np.ones((4, 4), np.uint32)
    with pytest.raises(InputError, match="category_id 999"):
        make_prediction(rng, ids, [{"id": 1, "category_id": 999, "iscrowd": 0}], "coco")
    with pytest.raises(InputError, match="missed"):
        make_prediction(rng, ids, [{"id": 1, "category_id": 1, "iscrowd": 0}], "coco", missed=2.0)


def test_make_dataset_refuses_unknown_options():
    with pytest.raises(TypeError, match="n_thing"):
        make_dataset(1, n_thing=3)

"""SPEC §9 edge cases on hand-made maps: expected counts, and the reference run on the same maps."""

import numpy as np
import pytest

import fastpq
from reference import assert_parity, reference_stat

CATS = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 4, "name": "grass", "isthing": 0},
]


def gseg(i, c, crowd=0):
    return {"id": i, "category_id": c, "iscrowd": crowd}


def pseg(i, c):
    return {"id": i, "category_id": c}


def run(case, tmp_path, panopticapi):
    g, gs, p, ps = case
    result = fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps, categories=CATS)
    stat = reference_stat([case], CATS, str(tmp_path))
    assert_parity(result, stat, CATS)
    return result


def counts(result, cid):
    r = result.per_class[cid]
    return r.tp, r.fp, r.fn


def grid(h=4, w=8, fill=0):
    return np.full((h, w), fill, np.int64)


def test_identical_prediction_scores_one(tmp_path, panopticapi):
    g = grid(); g[:, :4] = 10; g[:, 4:] = 20; g[0, 0] = 0
    r = run((g, [gseg(10, 1), gseg(20, 3)], g.copy(), [pseg(10, 1), pseg(20, 3)]), tmp_path,
            panopticapi)
    assert r.pq == 1.0 and r.all.n == 2


def test_iou_exactly_half_is_no_match(tmp_path, panopticapi):
    # pred covers the 16-px GT segment and 16 px of another: IoU 16/32
    g = grid(); g[:, :4] = 10; g[:, 4:] = 20
    p = grid(fill=5)
    r = run((g, [gseg(10, 1), gseg(20, 2)], p, [pseg(5, 1)]), tmp_path, panopticapi)
    assert counts(r, 1) == (0, 1, 1) and counts(r, 2) == (0, 0, 1)


def test_iou_just_above_half_matches(tmp_path, panopticapi):
    g = grid(1, 17, 11); g[0, :9] = 10
    p = grid(1, 17, 5)
    r = run((g, [gseg(10, 3), gseg(11, 4)], p, [pseg(5, 3)]), tmp_path, panopticapi)
    assert counts(r, 3) == (1, 0, 0) and r.per_class[3].iou == 9 / 17


def test_prediction_over_gt_void_leaves_union(tmp_path, panopticapi):
    g = grid(); g[:, :4] = 10
    p = grid(); p[:, :6] = 7
    r = run((g, [gseg(10, 1)], p, [pseg(7, 1)]), tmp_path, panopticapi)
    assert counts(r, 1) == (1, 0, 0) and r.per_class[1].iou == 1.0


def test_predicted_void_inside_gt_stays_in_union(tmp_path, panopticapi):
    g = grid(); g[:, :8] = 10
    p = grid(); p[:, :5] = 7
    r = run((g, [gseg(10, 1)], p, [pseg(7, 1)]), tmp_path, panopticapi)
    assert r.per_class[1].iou == 20 / 32


@pytest.mark.parametrize("void_px, expect_fp", [(9, 0), (8, 1)])
def test_unmatched_prediction_on_void(tmp_path, panopticapi, void_px, expect_fp):
    # 16-px pred: void_px on void, the rest on a GT of another class
    g = grid(2, 8); g[:, void_px // 2 + void_px % 2:] = 10
    g[0, :void_px // 2 + void_px % 2] = 0
    g[1, :void_px // 2] = 0
    g[1, void_px // 2:] = 10
    p = grid(2, 8, 5)
    r = run((g, [gseg(10, 2)], p, [pseg(5, 1)]), tmp_path, panopticapi)
    assert counts(r, 1) == (0, expect_fp, 0)


def test_prediction_on_same_class_crowd_is_ignored(tmp_path, panopticapi):
    g = grid(); g[:, :6] = 30
    p = grid(); p[:, :4] = 5
    r = run((g, [gseg(30, 1, crowd=1)], p, [pseg(5, 1)]), tmp_path, panopticapi)
    assert counts(r, 1) == (0, 0, 0) and r.all.n == 0


def test_prediction_on_other_class_crowd_is_fp(tmp_path, panopticapi):
    g = grid(); g[:, :6] = 30
    p = grid(); p[:, :4] = 5
    r = run((g, [gseg(30, 1, crowd=1)], p, [pseg(5, 2)]), tmp_path, panopticapi)
    assert counts(r, 2) == (0, 1, 0)


def test_only_last_crowd_of_a_class_absorbs(tmp_path, panopticapi):
    g = grid(); g[:, :4] = 30; g[:, 4:] = 31
    p = grid(); p[:, :4] = 5; p[:, 4:] = 6
    gs = [gseg(30, 1, crowd=1), gseg(31, 1, crowd=1)]
    r = run((g, gs, p, [pseg(5, 1), pseg(6, 1)]), tmp_path, panopticapi)
    assert counts(r, 1) == (0, 1, 0)  # the pred on the first-listed crowd


def test_crowd_pixels_stay_in_union_of_same_class_pair(tmp_path, panopticapi):
    g = grid(); g[:, :5] = 10; g[:, 5:] = 30
    p = grid(); p[:, :6] = 5
    r = run((g, [gseg(10, 1), gseg(30, 1, crowd=1)], p, [pseg(5, 1)]), tmp_path, panopticapi)
    assert counts(r, 1) == (1, 0, 0) and r.per_class[1].iou == 20 / 24


def test_crowd_flag_on_stuff_is_honoured(tmp_path, panopticapi):
    g = grid(); g[:, :] = 40
    p = grid(); p[:, :] = 5
    r = run((g, [gseg(40, 3, crowd=1)], p, [pseg(5, 3)]), tmp_path, panopticapi)
    assert counts(r, 3) == (0, 0, 0)


def test_empty_prediction_gives_all_fn(tmp_path, panopticapi):
    g = grid(); g[:, :4] = 10; g[:, 4:] = 30
    r = run((g, [gseg(10, 1), gseg(30, 2, crowd=1)], grid(), []), tmp_path, panopticapi)
    assert counts(r, 1) == (0, 0, 1) and counts(r, 2) == (0, 0, 0)


def test_all_void_gt_ignores_predictions(tmp_path, panopticapi):
    p = grid(); p[:, :4] = 5; p[:, 4:] = 6
    r = run((grid(), [], p, [pseg(5, 1), pseg(6, 3)]), tmp_path, panopticapi)
    assert r.all.n == 0 and r.pq == 0.0  # the reference raises ZeroDivisionError here


def test_two_stuff_segments_of_one_class_match_separately(tmp_path, panopticapi):
    g = grid(); g[:, :4] = 40; g[:, 4:] = 41
    p = grid(fill=5)
    r = run((g, [gseg(40, 4), gseg(41, 4)], p, [pseg(5, 4)]), tmp_path, panopticapi)
    assert counts(r, 4) == (0, 1, 2)


def test_pred_and_gt_with_large_ids(tmp_path, panopticapi):
    g = grid(); g[:, :4] = 2**24 - 1; g[:, 4:] = 65536 + 7
    p = grid(); p[:, :5] = 2**23 + 3; p[:, 5:] = 256
    gs = [gseg(2**24 - 1, 1), gseg(65536 + 7, 3)]
    r = run((g, gs, p, [pseg(2**23 + 3, 1), pseg(256, 3)]), tmp_path, panopticapi)
    assert counts(r, 1) == (1, 0, 0) and counts(r, 3) == (1, 0, 0)


def test_category_with_only_fp_counts_in_n(tmp_path, panopticapi):
    g = grid(); g[:, :] = 10
    p = grid(); p[:, :] = 10; p[0, 0] = 11
    r = run((g, [gseg(10, 3)], p, [pseg(10, 3), pseg(11, 2)]), tmp_path, panopticapi)
    assert counts(r, 2) == (0, 1, 0) and r.per_class[2].sq == 0 and r.things.n == 1

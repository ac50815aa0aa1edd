"""Bad input to fastpq.evaluate: a clear error naming the image and the segment, never a number."""

import numpy as np
import pytest

import fastpq
from fastpq.errors import InputError, SegmentError

CATS = {"things": [1, 2], "stuff": [3]}


def scene():
    g = np.zeros((4, 6), np.int32)
    g[:, :3] = 10
    g[:, 3:] = 20
    gs = [{"id": 10, "category_id": 1, "iscrowd": 0}, {"id": 20, "category_id": 3, "iscrowd": 0}]
    ps = [{"id": 10, "category_id": 1}, {"id": 20, "category_id": 3}]
    return g, gs, g.copy(), ps


def call(g, gs, p, ps, **kw):
    return fastpq.evaluate([g], [p], gt_segments=[gs], pred_segments=[ps], categories=CATS,
                           image_ids=kw.pop("image_ids", [42]), **kw)


def test_shape_mismatch_names_image():
    g, gs, p, ps = scene()
    with pytest.raises(InputError, match=r"image 0 \(id 42\).*4x6.*4x5"):
        call(g, gs, p[:, :5], ps)


def test_pred_id_in_map_not_listed():
    g, gs, p, ps = scene()
    p[0, 0] = 99
    with pytest.raises(SegmentError, match=r"id 42.*predicted segment id 99 is in the map") as caught:
        call(g, gs, p, ps)
    assert (caught.value.image_index, caught.value.image_id, caught.value.segment_id) == (0, 42, 99)


def test_pred_id_listed_not_in_map():
    g, gs, p, ps = scene()
    ps.append({"id": 77, "category_id": 2})
    with pytest.raises(SegmentError, match=r"predicted segment id 77 is in segments_info"):
        call(g, gs, p, ps)


def test_gt_id_in_map_not_listed_is_refused():
    g, gs, p, ps = scene()
    g[0, 0] = 55
    with pytest.raises(SegmentError, match=r"ground-truth segment id 55 is in the map"):
        call(g, gs, p, ps)


def test_gt_id_listed_not_in_map():
    g, gs, p, ps = scene()
    gs.append({"id": 56, "category_id": 2, "iscrowd": 0})
    with pytest.raises(SegmentError, match=r"ground-truth segment id 56 is in segments_info"):
        call(g, gs, p, ps)


@pytest.mark.parametrize("side", ["gt", "pred"])
def test_unknown_category(side):
    g, gs, p, ps = scene()
    (gs if side == "gt" else ps)[0]["category_id"] = 9
    with pytest.raises(SegmentError, match=r"segment 10 has unknown category_id 9"):
        call(g, gs, p, ps)


@pytest.mark.parametrize("side", ["gt", "pred"])
def test_duplicate_ids(side):
    g, gs, p, ps = scene()
    segs = gs if side == "gt" else ps
    segs.append(dict(segs[0]))
    with pytest.raises(SegmentError, match=r"segment id 10 is listed twice"):
        call(g, gs, p, ps)


def test_float_map():
    g, gs, p, ps = scene()
    with pytest.raises(InputError, match=r"image 0 .*predicted map has dtype float32"):
        call(g, gs, p.astype(np.float32), ps)


def test_negative_ids():
    g, gs, p, ps = scene()
    p[0, 0] = -3
    with pytest.raises(InputError, match=r"negative id -3"):
        call(g, gs, p, ps)


def test_ids_beyond_coco_encoding():
    g, gs, p, ps = scene()
    p = p.astype(np.int64)
    p[p == 20] = 2**24
    ps[1]["id"] = 2**24
    with pytest.raises(InputError, match=r"id 16777216, beyond the COCO panoptic encoding"):
        call(g, gs, p, ps)


def test_missing_iscrowd():
    g, gs, p, ps = scene()
    del gs[1]["iscrowd"]
    with pytest.raises(SegmentError, match=r"ground-truth segment 20 has no 'iscrowd'"):
        call(g, gs, p, ps)


def test_gt_segment_id_zero():
    g, gs, p, ps = scene()
    gs.append({"id": 0, "category_id": 3, "iscrowd": 0})
    with pytest.raises(SegmentError, match=r"ground-truth segment id 0"):
        call(g, gs, p, ps)


def test_empty_input():
    with pytest.raises(InputError, match="empty input"):
        fastpq.evaluate([], [], gt_segments=[], pred_segments=[], categories=CATS)


def test_batch_length_mismatch():
    g, gs, p, ps = scene()
    with pytest.raises(InputError, match="2 ground-truth maps but 1 predicted"):
        fastpq.evaluate([g, g], [p], gt_segments=[gs, gs], pred_segments=[ps], categories=CATS)


def test_no_convention():
    g, _, p, _ = scene()
    with pytest.raises(InputError, match="cannot tell the input convention"):
        fastpq.evaluate(g, p, categories=CATS)


def test_divisor_unknown_category():
    g = np.full((2, 2), 3 * 1000, np.int64)
    p = np.full((2, 2), 7 * 1000, np.int64)
    with pytest.raises(SegmentError, match=r"category 7 \(segment id 7000\)"):
        fastpq.evaluate(g, p, label_divisor=1000, categories=CATS)


def test_errors_are_value_errors():
    assert issubclass(SegmentError, ValueError) and issubclass(InputError, ValueError)


@pytest.mark.parametrize("dtype", [np.int64, np.uint32, np.uint64])
@pytest.mark.parametrize("value", [-1, 2**31, 2**40])
def test_pair_maps_outside_int31_refused(dtype, value):
    g = np.zeros((3, 9, 2), np.int64)
    g[:, 4:, 0] = 1
    p = g.copy()
    p[2, 7, 1] = value
    if value < 0 and np.dtype(dtype).kind == "u" or value >= 2**32 and dtype == np.uint32:
        pytest.skip("not representable in this dtype")
    with pytest.raises(InputError, match=r"image 0.*outside \[0, 2\*\*31\)"):
        fastpq.evaluate(g.astype(dtype), p.astype(dtype), categories={"things": [1], "stuff": [2]})


# -- pairs and divisor conventions (segments from the ids) ----------------------------------------

def _encoded_scene():
    cats = fastpq.Categories.from_coco([{"id": 1, "name": "a", "isthing": 1},
                                        {"id": 2, "name": "b", "isthing": 0}])
    gt = np.zeros((4, 6), np.int64)
    gt[:, :3] = 1 * 1000 + 1
    gt[:, 3:] = 2 * 1000
    return cats, gt, gt.copy()


@pytest.mark.parametrize("side", ["gt", "pred"])
def test_encoded_unknown_category_names_category_and_segment(side):
    cats, gt, pred = _encoded_scene()
    (gt if side == "gt" else pred)[0, 0] = 7 * 1000 + 4
    name = "ground truth" if side == "gt" else "prediction"
    with pytest.raises(SegmentError, match=rf"image 0: the {name} has pixels of category 7 "
                                           r"\(segment id 7004\), which is neither"):
        fastpq.evaluate(gt, pred, categories=cats, label_divisor=1000)
    pairs = [np.stack([m // 1000, m % 1000], -1) for m in (gt, pred)]
    with pytest.raises(SegmentError, match=rf"the {name} has pixels of category 7 \(segment id "
                                           rf"{(7 << 32) | 4}\)"):
        fastpq.evaluate(*pairs, categories=cats)


def test_encoded_negative_and_huge_ids():
    cats, gt, pred = _encoded_scene()
    pred[1, 1] = -2
    with pytest.raises(InputError, match=r"image 0: the predicted map holds the negative id -2"):
        fastpq.evaluate(gt, pred, categories=cats, label_divisor=1000)
    pred[1, 1] = 2**62
    with pytest.raises(InputError, match=r"id 4611686018427387904 is beyond the supported range"):
        fastpq.evaluate(gt, pred, categories=cats, label_divisor=1000)
    pred[1, 1] = 5  # void (category 0), any instance: outside the prediction's segment
    result = fastpq.evaluate(gt, pred, categories=cats, label_divisor=1000)
    assert result.per_class[1].iou == 11 / 12 and result.per_class[2].iou == 1.0

"""Per-image records (fastpq.core.records), the breakdowns built on them (fastpq.analysis.breakdown) and the
per-class exports (PQResult.to_csv / to_pandas)."""

import csv
import io
import math
import sys

import numpy as np
import pytest

import fastpq
from fastpq.analysis import breakdown
from fastpq.datasets import synthetic
from fastpq.core.categories import Categories
from fastpq.core.matching import match_image
from fastpq.core.records import ImageRecord, MatchedPair, UnmatchedSegment, image_record
from fastpq.core.segments import SegmentTable

COCO = Categories.coco_panoptic()
TINY = Categories([1, 2, 3], [True, True, False], ["a", "b", "c"], ["animal", "animal", "ground"])


@pytest.fixture(scope="module")
def images():
    return synthetic.make_dataset(30, height=120, width=160, categories=COCO, seed=4)


@pytest.fixture(scope="module")
def result(images):
    gts, gsegs, preds, psegs = zip(*images)
    return fastpq.evaluate(list(gts), list(preds), gt_segments=list(gsegs),
                           pred_segments=list(psegs), categories=COCO, per_image=True,
                           image_ids=[f"img{k}" for k in range(len(images))], workers=2)


def assert_records_add_up(result):
    """Per-class counts of the records sum exactly to the dataset's, IoU sums within 1e-12, and
    the segments listed in the records account for every tp, fp and fn."""
    index = {cid: k for k, cid in enumerate(result.categories.ids)}
    tp, fp, fn = (np.zeros(len(index), np.int64) for _ in range(3))
    iou = np.zeros(len(index))
    listed = {kind: np.zeros(len(index), np.int64) for kind in ("tp", "fp", "fn")}
    for record in result.per_image:
        for cid, row in record.per_class.items():
            tp[index[cid]] += row["tp"]
            fp[index[cid]] += row["fp"]
            fn[index[cid]] += row["fn"]
            iou[index[cid]] += row["iou"]
        for m in record.matches:
            listed["tp"][index[m.category_id]] += 1
        for u in record.unmatched:
            if u.why in ("fp", "fn"):
                listed[u.why][index[u.category_id]] += 1
    np.testing.assert_array_equal(tp, result.tp)
    np.testing.assert_array_equal(fp, result.fp)
    np.testing.assert_array_equal(fn, result.fn)
    assert np.abs(iou - result.iou).max() <= 1e-12
    for kind in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(listed[kind], getattr(result, kind))


def test_records_add_up_to_the_dataset(images, result):
    assert_records_add_up(result)
    assert [r.index for r in result.per_image] == list(range(len(images)))
    assert [r.image_id for r in result.per_image] == [f"img{k}" for k in range(len(images))]
    gts, gsegs, preds, psegs = zip(*images)
    plain = fastpq.evaluate(list(gts), list(preds), gt_segments=list(gsegs),
                            pred_segments=list(psegs), categories=COCO)
    assert plain.per_image is None
    assert plain.to_dict() == result.to_dict()


def test_record_scores_follow_spec_8_2(result):
    for record in result.per_image:
        rows = list(record.per_class.values())
        assert record.n == len(rows)
        if rows:
            assert abs(record.pq - sum(r["pq"] for r in rows) / len(rows)) <= 1e-12
            for r in rows:
                assert r["pq"] == r["iou"] / (r["tp"] + 0.5 * r["fp"] + 0.5 * r["fn"])
        else:
            assert math.isnan(record.pq)
        for m in record.matches:
            assert 0.5 < m.iou <= 1.0


def test_pq_compute_records(images, tmp_path):
    pytest.importorskip("PIL")
    paths = synthetic.write_coco_dataset(tmp_path, 12, height=120, width=160, categories=COCO,
                                         seed=4)
    result = fastpq.pq_compute(paths["gt_json"], paths["pred_json"], verbose=False,
                               return_result=True, per_image=True, workers=2)
    assert_records_add_up(result)
    assert [r.image_id for r in result.per_image] == list(range(12))
    plain = fastpq.pq_compute(paths["gt_json"], paths["pred_json"], verbose=False)
    assert plain == result.to_dict()
    gts, gsegs, preds, psegs = zip(*images[:12])
    arrays = fastpq.evaluate(list(gts), list(preds), gt_segments=list(gsegs),
                             pred_segments=list(psegs), categories=COCO, per_image=True)
    assert [r.as_dict() | {"image_id": None} for r in result.per_image] == \
           [r.as_dict() for r in arrays.per_image]


def strip_scene():
    """A 1 x 80 image with one case of every kind (see the comments)."""
    gt = np.zeros((1, 80), np.int64)
    pred = np.zeros((1, 80), np.int64)
    gt[0, 0:10], pred[0, 0:10] = 1, 11     # a match, IoU 1
    gt[0, 10:20], pred[0, 10:20] = 2, 12   # right pixels, wrong class
    gt[0, 20:30] = 3                       # missed (predicted as void)
    gt[0, 30:42], pred[0, 30:34] = 4, 14   # a third of it: IoU 1/3
    gt[0, 42:52], pred[0, 42:52] = 5, 15   # crowd region, predicted as its class
    pred[0, 52:60] = 16                    # a prediction on GT void
    gt[0, 60:80], pred[0, 60:76] = 6, 18   # stuff, matched with IoU 0.8 ...
    pred[0, 76:80] = 17                    # ... and a spurious thing on it
    gsegs = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 0},
             {"id": 3, "category_id": 2, "iscrowd": 0}, {"id": 4, "category_id": 1, "iscrowd": 0},
             {"id": 5, "category_id": 1, "iscrowd": 1}, {"id": 6, "category_id": 3, "iscrowd": 0}]
    psegs = [{"id": 11, "category_id": 1}, {"id": 12, "category_id": 2},
             {"id": 14, "category_id": 1}, {"id": 15, "category_id": 1},
             {"id": 16, "category_id": 2}, {"id": 17, "category_id": 2},
             {"id": 18, "category_id": 3}]
    return gt, gsegs, pred, psegs


def test_every_reason_and_error_kind():
    gt, gsegs, pred, psegs = strip_scene()
    result = fastpq.evaluate(gt, pred, gt_segments=gsegs, pred_segments=psegs, categories=TINY,
                             per_image=True, image_ids=["strip"])
    (record,) = result.per_image
    assert record.matches == (MatchedPair(1, 11, 1, 1.0, 10.0, 10.0),
                              MatchedPair(6, 18, 3, 0.8, 20.0, 16.0))
    assert record.unmatched == (
        UnmatchedSegment("gt", 2, 1, 10.0, "fn", "wrong_class"),
        UnmatchedSegment("gt", 3, 2, 10.0, "fn", "missed"),
        UnmatchedSegment("gt", 4, 1, 12.0, "fn", "low_overlap"),
        UnmatchedSegment("gt", 5, 1, 10.0, "crowd", None),
        UnmatchedSegment("pred", 12, 2, 10.0, "fp", "wrong_class"),
        UnmatchedSegment("pred", 14, 1, 4.0, "fp", "low_overlap"),
        UnmatchedSegment("pred", 15, 1, 10.0, "ignored", None),
        UnmatchedSegment("pred", 16, 2, 8.0, "ignored", None),
        UnmatchedSegment("pred", 17, 2, 4.0, "fp", "spurious"),
    )
    assert record.per_class[1] == {"pq": 0.4, "sq": 1.0, "rq": 0.4, "tp": 1, "fp": 1,
                                   "fn": 2, "iou": 1.0}
    assert record.image_id == "strip" and record.n == 3
    assert_records_add_up(result)


def test_dropped_ground_truth_and_the_tables_form():
    """A GT category outside the table (only pq_compute lets it through) is 'dropped'."""
    pairs = (np.array([1, 2]), np.array([11, 0]), np.array([4, 4]))
    gt = SegmentTable(np.array([1, 2]), np.array([0, -1]), np.zeros(2, bool), np.array([4.0, 4]))
    pred = SegmentTable(np.array([11]), np.array([0]), np.zeros(1, bool))
    match = match_image(pairs, gt, pred, len(TINY))
    record = image_record(3, "x", (pairs, gt, pred), match, TINY)
    assert record.unmatched == (UnmatchedSegment("gt", 2, None, 4.0, "dropped", None),)
    assert record.as_dict()["unmatched"][0]["why"] == "dropped"


def test_user_ids_of_the_derived_conventions():
    gt, gsegs, pred, psegs = strip_scene()
    cat = {s["id"]: s["category_id"] for s in gsegs + psegs}

    def encoded(ids, divisor):
        out = np.zeros_like(ids)
        for sid, c in cat.items():
            out[ids == sid] = c * divisor + sid  # instance = the COCO id
        return out

    divided = fastpq.evaluate(encoded(gt, 100), encoded(pred, 100), categories=TINY,
                              label_divisor=100, per_image=True).per_image[0]
    assert divided.matches[0][:2] == (101, 111)
    pairs = [np.stack([m // 100, m % 100], axis=-1) for m in (encoded(gt, 100), encoded(pred, 100))]
    paired = fastpq.evaluate(*pairs, categories=TINY, per_image=True).per_image[0]
    assert paired.matches[0][:2] == ((1, 1), (1, 11))
    assert {u.segment_id for u in paired.unmatched} >= {(1, 2), (2, 3), (2, 17)}


def test_size_bins_add_up(result):
    sizes = breakdown.by_size(result)
    assert list(sizes) == ["small", "medium", "large"]
    for kind in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(sum(getattr(r, kind) for r in sizes.values()),
                                      getattr(result, kind))
    assert np.abs(sum(r.iou for r in sizes.values()) - result.iou).max() <= 1e-12
    assert all(r.all.n > 0 for r in sizes.values())


def test_size_bin_edges():
    """COCO: area < 32² is small; a false positive goes by its own area."""
    gt = np.zeros((32, 66), np.int64)
    gt[:31, :33] = 1                      # 1023 px: small
    gt[:, 33:65] = 2                      # 1024 px: medium
    pred = np.where(gt == 1, 11, 0)
    pred[:3, 33:36] = 13                  # a 9-px spurious prediction on segment 2
    gsegs = [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 0}]
    psegs = [{"id": 11, "category_id": 1}, {"id": 13, "category_id": 2}]
    result = fastpq.evaluate(gt, pred, gt_segments=gsegs, pred_segments=psegs, categories=TINY,
                             per_image=True)
    sizes = breakdown.by_size(result)
    assert (sizes["small"].tp[0], sizes["small"].fp[1], sizes["medium"].fn[0]) == (1, 1, 1)
    assert sum(int(r.tp.sum() + r.fp.sum() + r.fn.sum()) for r in sizes.values()) == 3


def test_error_costs_add_up_to_one_minus_pq(result):
    errors = breakdown.error_breakdown(result)
    for cid, parts in errors.per_class.items():
        row = result.per_class[cid]
        assert abs(sum(parts.values()) - (1 - row.pq)) <= 1e-12, cid
        assert sum(errors.counts[cid].values()) == row.fp + row.fn
    for name in ("All", "Things", "Stuff"):
        assert abs(sum(errors.splits[name].values()) - (1 - result.split(name).pq)) <= 1e-12
    totals = {k: sum(c[k] for c in errors.counts.values()) for k in breakdown.ERROR_KINDS}
    assert all(totals.values()), totals  # the generated data makes every kind of error


def test_error_costs_of_the_strip_scene():
    gt, gsegs, pred, psegs = strip_scene()
    result = fastpq.evaluate(gt, pred, gt_segments=gsegs, pred_segments=psegs, categories=TINY,
                             per_image=True)
    errors = breakdown.error_breakdown(result)
    # category 1: tp 1 (IoU 1), fn 2 (wrong class, low overlap), fp 1 (low overlap); D = 2.5
    assert errors.per_class[1] == {"low_iou": 0.0, "missed": 0.0, "spurious": 0.0,
                                   "wrong_class": 0.2, "low_overlap": 0.4}


def test_supercategory_kind_and_worst_images(result):
    groups = breakdown.by_supercategory(result)
    animal = [r for r, sup in zip(result.per_class.values(), COCO.supercategories)
              if sup == "animal" and r.tp + r.fp + r.fn]
    assert groups["animal"].n == len(animal)
    assert abs(groups["animal"].pq - sum(r.pq for r in animal) / len(animal)) <= 1e-12
    assert sum(g.n for g in groups.values()) == result.all.n
    assert breakdown.by_kind(result) == {"Things": result.things, "Stuff": result.stuff}
    worst = breakdown.worst_images(result, 5)
    assert len(worst) == 5 and all(isinstance(r, ImageRecord) for r in worst)
    assert [r.pq for r in worst] == sorted(r.pq for r in result.per_image)[:5]


def test_breakdowns_need_records(images):
    g, gs, p, ps = images[0]
    plain = fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps, categories=COCO)
    with pytest.raises(ValueError, match="per_image=True"):
        breakdown.by_size(plain)
    assert breakdown.by_supercategory(plain)  # per-class rows suffice


def test_csv(result, tmp_path):
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert len(rows) == len(COCO)
    for row, ours in zip(rows, result.per_class.values()):
        assert int(row["category_id"]) == ours.category_id and row["name"] == ours.name
        assert float(row["pq"]) == ours.pq and int(row["fn"]) == ours.fn
    assert result.to_csv(tmp_path / "classes.csv") is None
    assert (tmp_path / "classes.csv").read_text(encoding="utf-8") == result.to_csv()


def test_pandas(result):
    pytest.importorskip("pandas")
    frame = result.to_pandas()
    assert len(frame) == len(COCO) and frame.index.name == "category_id"
    assert frame.loc[1, "pq"] == result.per_class[1].pq


def test_pandas_missing_names_the_install(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        result.to_pandas()


def test_streaming_metric_records_continue_across_batches(images, result):
    metric = fastpq.PanopticQuality(COCO)
    for start in range(0, len(images), 7):
        gts, gsegs, preds, psegs = zip(*images[start:start + 7])
        metric.update(list(gts), list(preds), gt_segments=list(gsegs), pred_segments=list(psegs),
                      per_image=True)
    streamed = metric.compute()
    assert streamed.to_dict() == result.to_dict()
    assert [r.as_dict() | {"image_id": None} for r in result.per_image] == \
           [r.as_dict() for r in streamed.per_image]
    metric.reset()
    assert metric.compute().per_image is None

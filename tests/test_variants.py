"""Metric variants (the modules of fastpq.metrics) against their peers.

* ``convention='torchmetrics'``: torchmetrics' ``PanopticQuality`` on the same
  [category, instance] tensors, every per-class count and score;
* ``metric='pq_dagger', convention='torchmetrics'``: torchmetrics' ``ModifiedPanopticQuality``;
* ``metric='pc'`` and ``metric='pq_dagger'`` (panopticapi rules): direct NumPy implementations of
  their definitions on the pixels, written here.
"""

import numpy as np
import pytest

import fastpq
from fastpq.datasets import synthetic
from fastpq.core.categories import Categories
from fastpq.core.inputs import PreparedImage
from fastpq.core.segments import SegmentTable
from fastpq.metrics.torchmetrics_rules import torchmetrics_image

COCO = Categories.coco_panoptic()
THINGS = [c for c, t in zip(COCO.ids, COCO.isthing) if t]
STUFF = [c for c, t in zip(COCO.ids, COCO.isthing) if not t]


@pytest.fixture(scope="module")
def images():
    return synthetic.make_dataset(8, height=120, width=160, categories=COCO, seed=11)


def as_coco_args(images):
    gts, gsegs, preds, psegs = zip(*images)
    return list(gts), list(preds), dict(gt_segments=list(gsegs), pred_segments=list(psegs),
                                        categories=COCO)


def category_instance_map(ids, segments, split_stuff):
    """(H, W, 2) [category, instance] map; void -> category 0. Instances count from 0 per category
    (so a thing's instance 0 and crowd regions are ordinary instances, as torchmetrics sees them);
    with ``split_stuff`` the right half of each stuff segment gets another instance, which
    torchmetrics merges back."""
    cat = np.zeros(ids.shape, np.int64)
    inst = np.zeros(ids.shape, np.int64)
    right = np.arange(ids.shape[1])[None, :] >= ids.shape[1] // 2
    seen = {}
    for s in segments:
        mask = ids == s["id"]
        c = s["category_id"]
        cat[mask] = c
        inst[mask] = seen.get(c, 0)
        seen[c] = seen.get(c, 0) + 1
        if split_stuff and c in STUFF:
            inst[mask & right] = 100 + seen[c]
    return np.stack([cat, inst], axis=-1)


def pair_tensors(images):
    gt = np.stack([category_instance_map(g, gs, split_stuff=True) for g, gs, _, _ in images])
    pred = np.stack([category_instance_map(p, ps, split_stuff=False) for _, _, p, ps in images])
    return gt, pred


def torchmetrics_per_class(metric):
    """torchmetrics' state and per-class scores by category id (things sorted, then stuff)."""
    from torchmetrics.functional.detection._panoptic_quality_common import (
        _panoptic_quality_compute)

    pq, sq, rq, *_ = _panoptic_quality_compute(metric.iou_sum, metric.true_positives,
                                               metric.false_positives, metric.false_negatives)
    order = sorted(THINGS) + sorted(STUFF)
    return {cid: dict(tp=int(metric.true_positives[k]), fp=int(metric.false_positives[k]),
                      fn=int(metric.false_negatives[k]), iou=float(metric.iou_sum[k]),
                      pq=float(pq[k]), sq=float(sq[k]), rq=float(rq[k]))
            for k, cid in enumerate(order)}


def assert_same_per_class(result, expected):
    for cid, ref in expected.items():
        row = result.per_class[cid]
        assert (row.tp, row.fp, row.fn) == (ref["tp"], ref["fp"], ref["fn"]), (cid, row, ref)
        for key in ("iou", "pq", "sq", "rq"):
            assert abs(getattr(row, key) - ref[key]) <= 1e-9, (cid, key, getattr(row, key), ref)


def test_torchmetrics_convention_equals_panoptic_quality(images):
    torch = pytest.importorskip("torch")
    tmd = pytest.importorskip("torchmetrics.detection")
    gt, pred = pair_tensors(images)
    metric = tmd.PanopticQuality(things=set(THINGS), stuffs=set(STUFF),
                                 allow_unknown_preds_category=True, return_sq_and_rq=True)
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    pq, sq, rq = metric.compute().tolist()
    result = fastpq.evaluate(gt, pred, categories=COCO, convention="torchmetrics")
    assert_same_per_class(result, torchmetrics_per_class(metric))
    assert abs(result.pq - pq) <= 1e-9 and abs(result.sq - sq) <= 1e-9
    assert abs(result.rq - rq) <= 1e-7  # torch.mean of float32 values, in its own order
    # the rules differ from the reference's on these images
    assert result.to_dict() != fastpq.evaluate(gt, pred, categories=COCO).to_dict()


def test_torchmetrics_convention_on_coco_maps_equals_pair_maps(images):
    gts, preds, kwargs = as_coco_args(images)
    gt, pred = pair_tensors(images)
    by_coco = fastpq.evaluate(gts, preds, convention="torchmetrics", **kwargs)
    by_pairs = fastpq.evaluate(gt, pred, categories=COCO, convention="torchmetrics")
    assert by_coco.to_dict() == by_pairs.to_dict()


def test_pq_dagger_torchmetrics_equals_modified_panoptic_quality(images):
    torch = pytest.importorskip("torch")
    tmd = pytest.importorskip("torchmetrics.detection")
    gt, pred = pair_tensors(images)
    metric = tmd.ModifiedPanopticQuality(things=set(THINGS), stuffs=set(STUFF),
                                         allow_unknown_preds_category=True)
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
    expected_pq = float(metric.compute())
    result = fastpq.evaluate(gt, pred, categories=COCO, metric="pq_dagger",
                             convention="torchmetrics")
    assert_same_per_class(result, torchmetrics_per_class(metric))
    assert abs(result.pq - expected_pq) <= 1e-9
    assert result.metric == "pq_dagger"


def test_torchmetrics_float32_iou_fails_a_match_that_float64_makes():
    """SPEC §3.3 item 6: (2**24 + 1) / (2**25 + 1) is above 0.5, but not in float32."""
    big = 2**24 + 1
    pairs = (np.array([1, 2]), np.array([1, 1]), np.array([big, big - 1]))
    gt = SegmentTable(np.array([1, 2]), np.array([0, 1]), np.zeros(2, bool))
    pred = SegmentTable(np.array([1]), np.array([0]), np.zeros(1, bool))
    cats = Categories([1, 2], [True, True])
    tp, fp, fn, _ = torchmetrics_image(PreparedImage(pairs, gt, pred), cats)
    assert (tp[0], fp[0], fn[0]) == (0, 1, 1)
    assert big / (2 * big - 1) > 0.5
    torch = pytest.importorskip("torch")
    assert not bool(torch.tensor(big) / torch.tensor(2 * big - 1) > 0.5)


def direct_pq_dagger_stuff(images):
    """PQ-dagger of each stuff class from the pixels, with the reference's union."""
    iou_sum, segments = {}, {}
    for g, gsegs, p, psegs in images:
        void = g == 0
        for s in gsegs:
            c = s["category_id"]
            if c not in STUFF or s["iscrowd"]:
                continue
            segments[c] = segments.get(c, 0) + 1
            gmask = g == s["id"]
            for q in psegs:
                if q["category_id"] != c:
                    continue
                pmask = p == q["id"]
                inter = int((gmask & pmask).sum())
                if inter:
                    union = pmask.sum() + gmask.sum() - inter - (pmask & void).sum()
                    iou_sum[c] = iou_sum.get(c, 0.0) + inter / union
    return {c: iou_sum.get(c, 0.0) / n for c, n in segments.items()}


def test_pq_dagger_panopticapi_rules(images):
    gts, preds, kwargs = as_coco_args(images)
    dagger = fastpq.evaluate(gts, preds, metric="pq_dagger", **kwargs)
    pq = fastpq.evaluate(gts, preds, **kwargs)
    expected = direct_pq_dagger_stuff(images)
    for cid, row in dagger.per_class.items():
        if cid in THINGS:
            assert row == pq.per_class[cid]
        elif cid in expected:
            assert (row.fp, row.fn) == (0, 0)
            assert abs(row.pq - expected[cid]) <= 1e-12
        else:
            assert row.tp + row.fp + row.fn == 0
    assert expected and dagger.stuff.n == pq.stuff.n


def direct_parsing_covering(images):
    """Parsing Covering from its definition: per class sum_g w_g max_p IoU(g, p) / sum_g w_g,
    w_g = |g| / image size; void, crowd and unlisted GT pixels ignored on both sides."""
    numerator, denominator = {}, {}
    for g, gsegs, p, psegs in images:
        listed = {s["id"] for s in gsegs if not s["iscrowd"]}
        ignored = ~np.isin(g, list(listed))
        for s in gsegs:
            if s["iscrowd"]:
                continue
            c = s["category_id"]
            gmask = g == s["id"]
            best = 0.0
            for q in psegs:
                if q["category_id"] == c:
                    pmask = (p == q["id"]) & ~ignored
                    inter = int((gmask & pmask).sum())
                    if inter:
                        best = max(best, inter / (gmask.sum() + pmask.sum() - inter))
            w = gmask.sum() / g.size
            numerator[c] = numerator.get(c, 0.0) + w * best
            denominator[c] = denominator.get(c, 0.0) + w
    return {c: numerator[c] / denominator[c] for c in numerator if denominator[c] > 0}


def test_parsing_covering_equals_its_definition(images):
    gts, preds, kwargs = as_coco_args(images)
    result = fastpq.evaluate(gts, preds, metric="pc", **kwargs)
    expected = direct_parsing_covering(images)
    assert {c for c, r in result.per_class.items() if r.denominator > 0} == set(expected)
    for cid, pc in expected.items():
        assert abs(result.per_class[cid].pc - pc) <= 1e-12
    mean = sum(expected[c] for c in COCO.ids if c in expected) / len(expected)
    assert abs(result.pc - mean) <= 1e-12 and result.all.n == len(expected)
    assert set(result.to_dict()) == {"All", "Things", "Stuff", "per_class"}
    assert "PC" in result.table()


def test_pq_compute_variants_equal_evaluate(images, tmp_path):
    pytest.importorskip("PIL")
    paths = synthetic.write_coco_dataset(tmp_path, 8, height=120, width=160, categories=COCO,
                                         seed=11)
    gts, preds, kwargs = as_coco_args(images)
    for options in (dict(metric="pq_dagger"), dict(metric="pc"), dict(convention="torchmetrics"),
                    dict(metric="pq_dagger", convention="torchmetrics")):
        files = fastpq.pq_compute(paths["gt_json"], paths["pred_json"], verbose=False,
                                  return_result=True, workers=2, **options)
        arrays = fastpq.evaluate(gts, preds, **kwargs, **options)
        assert files.to_dict() == arrays.to_dict(), options


@pytest.mark.parametrize("options, message", [
    (dict(metric="PQ"), "unknown metric"),
    (dict(convention="detectron2"), "unknown convention"),
    (dict(metric="pc", convention="torchmetrics"), "Parsing Covering"),
    (dict(per_image=True, metric="pq_dagger"), "per_image"),
])
def test_refused_options(images, options, message):
    gts, preds, kwargs = as_coco_args(images[:1])
    with pytest.raises(fastpq.InputError, match=message):
        fastpq.evaluate(gts, preds, **kwargs, **options)


def test_streaming_metric_variants(images):
    gt, pred = pair_tensors(images)
    for options in (dict(convention="torchmetrics"), dict(metric="pq_dagger"),
                    dict(metric="pq_dagger", convention="torchmetrics")):
        metric = fastpq.PanopticQuality(COCO, **options)
        for start in range(0, len(images), 3):
            metric.update(gt[start:start + 3], pred[start:start + 3])
        streamed = metric.compute()
        expected = fastpq.evaluate(gt, pred, categories=COCO, **options)
        assert (streamed.metric, streamed.convention) == (expected.metric, expected.convention)
        assert streamed.to_dict() == expected.to_dict(), options
    with pytest.raises(fastpq.InputError, match="Parsing Covering"):
        fastpq.PanopticQuality(COCO, metric="pc")
    with pytest.raises(ValueError, match="cannot merge"):
        fastpq.PanopticQuality(COCO).merge(fastpq.PanopticQuality(COCO, metric="pq_dagger"))


# -- the registry ----------------------------------------------------------------------------------

def test_registry_resolves_every_entry():
    from fastpq.metrics import CONVENTIONS, METRICS, PQRecordsMetric, resolve_metric

    assert list(METRICS) == ["pq", "pq_dagger", "pc"]
    assert CONVENTIONS == ("panopticapi", "torchmetrics")
    for name, by_convention in METRICS.items():
        for convention, cls in by_convention.items():
            metric = resolve_metric(name, convention)
            assert type(metric) is cls
            assert (metric.name, metric.convention) == (name, convention)
    assert isinstance(resolve_metric("pq", per_image=True), PQRecordsMetric)
    assert resolve_metric().on_device and resolve_metric().on_cluster
    assert not resolve_metric(per_image=True).on_device
    assert not any(resolve_metric(name, convention).on_cluster
                   for name, convention in [("pq", "torchmetrics"), ("pq_dagger", "panopticapi"),
                                            ("pc", "panopticapi")])


@pytest.mark.parametrize("options, message", [
    (dict(metric="PQ"), r"unknown metric 'PQ'; known: 'pq', 'pq_dagger', 'pc'"),
    (dict(convention="detectron2"),
     r"unknown convention 'detectron2'; known: 'panopticapi', 'torchmetrics'"),
    (dict(metric="pc", convention="torchmetrics"), r"Parsing Covering's own rules"),
    (dict(metric="pc", per_image=True), r"per_image records are kept for metric='pq'"),
    (dict(convention="torchmetrics", per_image=True), r"per_image records are kept"),
])
def test_resolution_errors(options, message):
    from fastpq.metrics import resolve_metric

    with pytest.raises(fastpq.InputError, match=message):
        resolve_metric(**options)


def test_a_new_metric_is_one_class_and_one_registry_entry(images, monkeypatch):
    """A metric registered in METRICS is reachable through evaluate and the streaming metric."""
    import fastpq.metrics
    from fastpq.metrics.pq import PQMetric

    class ThingsOnlyPQ(PQMetric):
        name = "pq_things"
        on_cluster = on_device = False

        def score(self, prepared, categories, index, image_id):
            tp, fp, fn, iou = super().score(prepared, categories, index, image_id)
            things = categories.thing_mask
            return tp * things, fp * things, fn * things, iou * things

    monkeypatch.setitem(fastpq.metrics.METRICS, "pq_things", {"panopticapi": ThingsOnlyPQ})
    gts, preds, kwargs = as_coco_args(images)
    result = fastpq.evaluate(gts, preds, metric="pq_things", workers=2, **kwargs)
    plain = fastpq.evaluate(gts, preds, **kwargs)
    assert result.metric == "pq_things"
    assert result.things.as_dict() == plain.things.as_dict() and result.stuff.n == 0
    streaming = fastpq.PanopticQuality(COCO, metric="pq_things")
    streaming.update(gts[:2], preds[:2], gt_segments=kwargs["gt_segments"][:2],
                     pred_segments=kwargs["pred_segments"][:2])
    streaming.update(gts[2:], preds[2:], gt_segments=kwargs["gt_segments"][2:],
                     pred_segments=kwargs["pred_segments"][2:])
    assert streaming.compute().to_dict() == result.to_dict()

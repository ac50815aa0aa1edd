"""Property tests: invariants that hold for every input."""

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpq
from fastpq import PQAccumulator
from fastpq.kernels.pairs import pair_counts, pair_counts_catinst, pair_counts_rgb

CATS = fastpq.Categories.from_lists(things=[1, 2, 3], stuff=[7, 8])
THINGS = {1, 2, 3}


@st.composite
def scenes(draw, max_side=12):
    """A random (gt, gt_segments, pred, pred_segments) COCO scene on a small grid."""
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    n_gt = draw(st.integers(1, 6))
    n_pred = draw(st.integers(1, 6))
    g = np.array(draw(st.lists(st.integers(0, n_gt), min_size=h * w, max_size=h * w)),
                 np.int64).reshape(h, w)
    p = np.array(draw(st.lists(st.integers(0, n_pred), min_size=h * w, max_size=h * w)),
                 np.int64).reshape(h, w)
    cats = [1, 2, 3, 7, 8]
    gsegs = []
    for sid in np.unique(g[g > 0]).tolist():
        c = draw(st.sampled_from(cats))
        gsegs.append({"id": sid, "category_id": c,
                      "iscrowd": int(c in THINGS and draw(st.booleans()) and draw(st.booleans()))})
    psegs = [{"id": sid, "category_id": draw(st.sampled_from(cats))}
             for sid in np.unique(p[p > 0]).tolist()]
    return g, gsegs, p, psegs


def one_crowd_per_category(gsegs):
    """Keep the first crowd segment of each category crowd, make the others ordinary segments.
    (With two crowd segments of a class only the last absorbs predictions: SPEC §2.4.)"""
    seen = set()
    for s in gsegs:
        if s["iscrowd"]:
            if s["category_id"] in seen:
                s["iscrowd"] = 0
            seen.add(s["category_id"])
    return gsegs


def ev(g, gs, p, ps):
    return fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps, categories=CATS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_pair_histogram_equals_unique(scene):
    g, _, p, _ = scene
    key = g.astype(np.uint64) * 2**24 + p.astype(np.uint64)
    u, c = np.unique(key, return_counts=True)
    pg, pp, pc = pair_counts(g, p)
    assert np.array_equal(pg, (u // 2**24).astype(np.int64))
    assert np.array_equal(pp, (u % 2**24).astype(np.int64))
    assert np.array_equal(pc, c)
    rgb = lambda a: np.stack([a & 255, (a >> 8) & 255, a >> 16], -1).astype(np.uint8)
    assert all(np.array_equal(a, b) for a, b in zip(pair_counts_rgb(rgb(g), rgb(p)), (pg, pp, pc)))
    two = lambda a: np.stack([a, a * 3], -1).astype(np.int32)
    cg, cp, cc = pair_counts_catinst(two(g), two(p))
    assert np.array_equal(cg >> 32, pg) and np.array_equal(cp >> 32, pp) and np.array_equal(cc, pc)
    strided = pair_counts_catinst(np.asfortranarray(two(g)), np.asfortranarray(two(p)))
    assert all(np.array_equal(a, b) for a, b in zip(strided, (cg, cp, cc)))


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("dtype, bad", [(np.int32, -1), (np.int64, 2**31), (np.int64, -5),
                                        (np.uint64, 2**63 + 1)])
def test_catinst_values_outside_the_range_are_refused(layout, dtype, bad):
    g = np.ones((5, 9, 2), dtype)
    p = np.ones((5, 9, 2), dtype)
    p[3, 7, 1] = bad
    if layout == "strided":
        g, p = np.asfortranarray(g), np.asfortranarray(p)
    with pytest.raises(ValueError, match="outside"):
        pair_counts_catinst(g, p)
    p[3, 7, 1] = 0
    assert pair_counts_catinst(g, p)[2].sum() == 45


@settings(max_examples=100, deadline=None)
@given(scenes())
def test_prediction_equal_to_gt_scores_one(scene):
    g, gs, _, _ = scene
    gs = one_crowd_per_category(gs)
    r = ev(g, gs, g.copy(), [{"id": s["id"], "category_id": s["category_id"]} for s in gs])
    for s in gs:
        row = r.per_class[s["category_id"]]
        if not s["iscrowd"]:
            assert row.pq == 1.0 and row.fn == 0
    assert r.fp.sum() == 0 and r.fn.sum() == 0


@settings(max_examples=100, deadline=None)
@given(scenes(), st.randoms(use_true_random=False))
def test_renumbering_ids_changes_nothing(scene, rnd):
    g, gs, p, ps = scene
    gmap = {s["id"]: rnd.randrange(1, 2**24) for s in gs}
    pmap = {s["id"]: rnd.randrange(1, 2**24) for s in ps}
    if len(set(gmap.values())) < len(gmap) or len(set(pmap.values())) < len(pmap):
        return
    g2 = np.vectorize(lambda v: gmap.get(v, 0))(g)
    p2 = np.vectorize(lambda v: pmap.get(v, 0))(p)
    # keep the listing order (it decides which crowd segment is remembered)
    gs2 = [dict(s, id=gmap[s["id"]]) for s in gs]
    ps2 = [dict(s, id=pmap[s["id"]]) for s in ps]
    a, b = ev(g, gs, p, ps), ev(g2, gs2, p2, ps2)
    assert np.array_equal(a.tp, b.tp) and np.array_equal(a.fp, b.fp) and np.array_equal(a.fn, b.fn)
    # ascending-pair order inside an image changes with ids: floats may differ in the last ulp
    assert np.allclose(a.iou, b.iou, rtol=0, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(scenes(max_side=8), min_size=1, max_size=5), st.integers(1, 3))
def test_batch_equals_merge_of_single_images(images, workers):
    gts, gss, preds, pss = zip(*images)
    batch = fastpq.evaluate(list(gts), list(preds), gt_segments=list(gss), pred_segments=list(pss),
                            categories=CATS, workers=workers)
    acc = PQAccumulator(CATS)
    for img in reversed(images):  # merging order does not matter
        r = ev(*img)
        part = PQAccumulator(CATS)
        part.add_image(r.tp, r.fp, r.fn, r.iou)
        acc += pickle.loads(pickle.dumps(part))
    merged = acc.result()
    assert merged.to_dict() == batch.to_dict()
    assert PQAccumulator.from_dict(acc.to_dict()) == acc


@settings(max_examples=100, deadline=None)
@given(scenes())
def test_three_conventions_agree(scene):
    """The same scene as COCO ids + segments_info, as [category, instance] pairs, and as
    category * 1000 + instance: identical results. Crowd is a thing with instance 0."""
    g, gs, p, ps = scene
    gs = one_crowd_per_category(gs)  # the pair/divisor encodings have one crowd region

    def encode(ids, segs, side):
        cat = np.zeros_like(ids)
        inst = np.zeros_like(ids)
        info = {s["id"]: s for s in segs}
        for k, sid in enumerate(sorted(info)):
            s = info[sid]
            m = ids == sid
            cat[m] = s["category_id"]
            inst[m] = 0 if (side == "gt" and s["iscrowd"]) else k + 1
        return cat, inst

    gc, gi = encode(g, gs, "gt")
    pc, pi = encode(p, ps, "pred")
    coco = ev(g, gs, p, ps)
    pairs = fastpq.evaluate(np.stack([gc, gi], -1), np.stack([pc, pi], -1), categories=CATS)
    divisor = fastpq.evaluate(gc * 1000 + gi, pc * 1000 + pi, label_divisor=1000, categories=CATS)
    for other in (pairs, divisor):
        assert np.array_equal(coco.tp, other.tp) and np.array_equal(coco.fp, other.fp)
        assert np.array_equal(coco.fn, other.fn)
        assert np.allclose(coco.iou, other.iou, rtol=0, atol=1e-12)

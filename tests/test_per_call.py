"""The thin per-call path: category tables coerced once, result rows built on first access, the
strict checks of one image in a few set operations — same tables, same numbers, same errors."""

import pickle

import numpy as np
import pytest

import fastpq
from fastpq.core import categories as categories_module
from fastpq.core.categories import Categories
from fastpq.core.result import PQResult, reference_class_scores
from fastpq.core.validation import distinct_ids
from fastpq.datasets import synthetic
from fastpq.errors import InputError, SegmentError

CATS = [
    {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0, "supercategory": "sky"},
]


def fresh_list():
    return [dict(c) for c in CATS]


# -- the category table, coerced once ---------------------------------------------------------
def test_equal_lists_share_one_table():
    first = Categories.coerce(fresh_list())
    assert Categories.coerce(fresh_list()) is first
    assert first == Categories.from_coco(CATS)


def test_a_list_changed_after_the_call_gets_its_own_table():
    cats = fresh_list()
    before = Categories.coerce(cats)
    cats[2]["isthing"] = 1
    cats[0]["name"] = "pedestrian"
    after = Categories.coerce(cats)
    assert after is not before
    assert after.isthing == (True, True, True) and after.names[0] == "pedestrian"
    assert before.isthing == (True, True, False) and before.names[0] == "person"
    cats.append({"id": 7, "isthing": 0})
    assert Categories.coerce(cats).ids == (1, 2, 3, 7)


def test_equal_values_whose_text_differs_are_not_confused():
    # 1 == True == 1.0, but a table keeps names as text: '1', 'True', '1.0'
    tables = [Categories.coerce([{"id": 5, "isthing": 1, "name": name}])
              for name in (1, True, 1.0, "1")]
    assert [t.names[0] for t in tables] == ["1", "True", "1.0", "1"]
    missing = Categories.coerce([{"id": 5, "isthing": 1}])
    explicit_none = Categories.coerce([{"id": 5, "isthing": 1, "name": None}])
    assert (missing.names, explicit_none.names) == (("5",), ("None",))


def test_a_name_changed_to_an_equal_value_of_another_type_is_seen():
    cats = [{"id": 5, "isthing": 1, "name": 1}]
    assert Categories.coerce(cats).names == ("1",)
    cats[0]["name"] = True  # True == 1
    assert Categories.coerce(cats).names == ("True",)
    cats = [{"id": 5, "isthing": 1, "name": "a"}]
    assert Categories.coerce(cats).names == ("a",)
    cats[0]["name"] = 1.5
    assert Categories.coerce(cats).names == ("1.5",)


def test_entries_with_array_values_are_coerced():
    cats = [{"id": 1, "isthing": 1, "name": "a", "color": np.array([1, 2, 3])},
            {"id": 2, "isthing": 0, "name": "b", "color": np.array([4, 5, 6])}]
    first = Categories.coerce(cats)
    again = [dict(c, color=c["color"].copy()) for c in cats]  # == on arrays is ambiguous
    assert Categories.coerce(again) == first == Categories.from_coco(cats)


def test_isthing_values_are_read_as_the_reference_reads_them():
    # isthing == 1 is a thing; True is 1; 2 and '1' are stuff
    flags = [Categories.coerce([{"id": 1, "isthing": v}]).isthing[0]
             for v in (1, True, np.int64(1), 2, "1", 0)]
    assert flags == [True, True, True, False, False, False]


def test_thing_and_stuff_lists_and_presets_are_cached():
    lists = {"things": [1, 2], "stuff": [3]}
    assert Categories.coerce(dict(lists)) is Categories.coerce(dict(lists))
    assert Categories.coerce(lists).isthing == (True, True, False)
    assert Categories.coerce("coco") is Categories.coerce("coco")
    assert Categories.coerce("coco") == Categories.coco_panoptic()


def test_the_cache_is_bounded():
    for k in range(3 * categories_module.COERCE_CACHE_SIZE):
        Categories.coerce([{"id": k + 1, "isthing": 0}])
    assert len(categories_module._COERCED) <= categories_module.COERCE_CACHE_SIZE


def test_one_shot_iterables_and_bad_tables_are_not_cached():
    table = Categories.coerce(c for c in CATS)
    assert table.ids == (1, 2, 3)
    for bad, message in (([], "empty"), ([{"name": "x"}], "without an 'id'"),
                         ([{"id": 1}, {"id": -1}], "negative"),
                         ("nope", "unknown category preset"), (None, "categories is required")):
        for _ in range(2):  # the second call must raise as well
            with pytest.raises(InputError, match=message):
                Categories.coerce(bad)


def test_evaluate_with_a_list_equals_evaluate_with_its_table():
    g, gs, p, ps = synthetic.make_dataset(1, height=60, width=80, categories="coco", seed=5)[0]
    listed = Categories.coco_panoptic().to_coco()
    a = fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps, categories=listed)
    b = fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps,
                        categories=Categories.coco_panoptic())
    assert a.to_dict() == b.to_dict()


# -- result rows, built on first access -------------------------------------------------------
def eager_result(categories, tp, fp, fn, iou):
    """The rows and splits as the result built them before they were lazy: every row, then
    sequential sums over the rows in table order."""
    rows = {}
    for k, cid in enumerate(categories.ids):
        t, f, n, i = int(tp[k]), int(fp[k]), int(fn[k]), float(iou[k])
        rows[cid] = (0.0, 0.0, 0.0) if t + f + n == 0 else reference_class_scores(t, f, n, i)
    splits = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        pq = sq = rq = 0.0
        n = 0
        for k, cid in enumerate(categories.ids):
            if isthing is not None and categories.isthing[k] != isthing:
                continue
            if tp[k] + fp[k] + fn[k] == 0:
                continue
            n += 1
            pq, sq, rq = pq + rows[cid][0], sq + rows[cid][1], rq + rows[cid][2]
        splits[name] = (pq / n, sq / n, rq / n, n) if n else (0.0, 0.0, 0.0, 0)
    return rows, splits


def random_counts(seed, n):
    rng = np.random.default_rng(seed)
    tp, fp, fn = (rng.integers(0, 4, n) * (rng.random(n) < 0.4) for _ in range(3))
    iou = tp * rng.uniform(0.5, 1.0, n)
    return tp, fp, fn, iou


@pytest.mark.parametrize("seed", range(5))
def test_lazy_rows_and_splits_equal_the_eager_ones(seed):
    categories = Categories.coco_panoptic()
    tp, fp, fn, iou = random_counts(seed, len(categories))
    result = PQResult(categories, tp, fp, fn, iou)
    rows, splits = eager_result(categories, tp, fp, fn, iou)
    for name, split in splits.items():  # the splits first: they do not need the rows
        assert tuple(result.split(name).as_dict().values()) == split
    assert list(result.per_class) == list(categories.ids)
    for cid, row in result.per_class.items():
        k = categories.ids.index(cid)
        assert (row.pq, row.sq, row.rq) == rows[cid]
        assert (row.tp, row.fp, row.fn, row.iou) == (tp[k], fp[k], fn[k], iou[k])
        assert type(row.tp) is int and type(row.iou) is float


def test_a_result_does_not_follow_the_arrays_it_was_built_from():
    categories = Categories.coco_panoptic()
    tp, fp, fn, iou = random_counts(7, len(categories))
    result = PQResult(categories, tp, fp, fn, iou)
    expected = PQResult(categories, tp.copy(), fp.copy(), fn.copy(), iou.copy()).to_dict()
    tp[:] = 0
    iou[:] = 0.0
    assert result.to_dict() == expected


def test_a_result_pickles_before_and_after_its_rows_are_read():
    categories = Categories.coco_panoptic()
    result = PQResult(categories, *random_counts(8, len(categories)))
    unread = pickle.loads(pickle.dumps(result))
    expected = result.to_dict()
    assert unread.to_dict() == expected
    assert pickle.loads(pickle.dumps(result)).to_dict() == expected


def test_an_unknown_convention_is_refused_when_the_result_is_built():
    with pytest.raises(KeyError):
        PQResult(Categories.from_coco(CATS), [0] * 3, [0] * 3, [0] * 3, [0.0] * 3,
                 convention="nope")


# -- the strict checks of one image ------------------------------------------------------------
@pytest.mark.parametrize("ids", [[], [4], [0, 0, 3, 3, 3, 9], [-2, -2, 0, 5, 1 << 40]])
def test_distinct_ids_of_a_sorted_column_are_np_unique(ids):
    ids = np.array(ids, np.int64)
    assert np.array_equal(distinct_ids(ids, ascending=True), np.unique(ids))
    assert np.array_equal(distinct_ids(ids[::-1].copy()), np.unique(ids))


def segs(ids, crowd=False):
    out = [{"id": i, "category_id": 3 if i % 2 else 1} for i in ids]
    if crowd:
        for s in out:
            s["iscrowd"] = 0
    return out


@pytest.mark.parametrize("gt_listed, pred_listed, message", [
    ([1, 2], [1, 2], None),
    ([1], [1, 2], "ground-truth segment id 2 is in the map but not in segments_info"),
    ([1, 2, 9], [1, 2], "ground-truth segment id 9 is in segments_info but covers no pixel"),
    ([1, 2], [2], "predicted segment id 1 is in the map but not in segments_info"),
    ([1, 2], [0, 1, 2], "predicted segment id 0 is in segments_info but covers no pixel"),
    ([1, 2], [7, 1, 2, 5], "predicted segment id 7 is in segments_info but covers no pixel"),
])
def test_listed_and_present_ids_are_compared_as_before(gt_listed, pred_listed, message):
    gt = np.array([[0, 1, 1, 2]], np.int64)
    pred = np.array([[0, 1, 2, 2]], np.int64)
    run = lambda: fastpq.evaluate(gt, pred, gt_segments=segs(gt_listed, crowd=True),  # noqa: E731
                                  pred_segments=segs(pred_listed), categories=CATS)
    if message is None:
        assert run().all.n > 0
        return
    with pytest.raises(SegmentError, match=message) as caught:
        run()
    assert caught.value.image_index == 0

"""The pair-table skeleton (kernels/pair_table.py) under every row source: id maps, RGB maps,
[category, instance] maps and PNG scanlines, with more distinct pairs than the table first holds."""

import ast
from pathlib import Path

import numpy as np
import pytest

from fastpq.kernels import pair_table
from fastpq.kernels.pair_table import DONE, INITIAL_CAPACITY, TABLE_FULL, grow_and_retry
from fastpq.kernels.pairs import (OUTSIDE_CATINST_RANGE, histogram_catinst, histogram_ids,
                                  histogram_rgb, marginals, pair_counts, pair_counts_catinst,
                                  pair_counts_rgb)
from fastpq.kernels.png import pair_counts_scanlines


def unique_pairs(gt, pred):
    """The reference's histogram: np.unique over gt * 2**24 + pred (ids < 2**24)."""
    key = gt.astype(np.int64).ravel() * 2**24 + pred.astype(np.int64).ravel()
    keys, counts = np.unique(key, return_counts=True)
    return keys >> 24, keys & (2**24 - 1), counts


def many_pair_maps(height, width, seed, n_ids=5000):
    """Two random id maps whose distinct pairs are close to height * width (no runs)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n_ids, (height, width)).astype(np.uint32),
            rng.integers(0, n_ids, (height, width)).astype(np.uint32))


def to_rgb(ids):
    return np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], -1).astype(np.uint8)


def to_catinst(ids):
    """[category, instance] = [id >> 8, id & 255], so category << 32 | instance keeps the order."""
    return np.stack([ids >> 8, ids & 255], -1).astype(np.int32)


def catinst_to_ids(keys):
    return (keys >> 32) * 256 + (keys & 0xFFFFFFFF)


def up_scanlines(ids):
    """The scanlines of an RGB PNG of ``ids`` with every row Up-filtered (filter type 2)."""
    rows = to_rgb(ids).reshape(ids.shape[0], -1).astype(np.int16)
    above = np.vstack([np.zeros_like(rows[:1]), rows[:-1]])
    filtered = ((rows - above) % 256).astype(np.uint8)
    return np.hstack([np.full((ids.shape[0], 1), 2, np.uint8), filtered]).ravel()


def assert_table(got, expected):
    for got_array, expected_array in zip(got, expected, strict=True):
        assert got_array.dtype == np.int64
        np.testing.assert_array_equal(got_array, expected_array)


@pytest.mark.parametrize("capacity", [2, 16, INITIAL_CAPACITY])
def test_every_map_variant_grows_its_table_to_many_pairs(capacity):
    gt, pred = many_pair_maps(70, 90, seed=capacity)
    expected = unique_pairs(gt, pred)
    assert expected[0].size > 4 * INITIAL_CAPACITY  # several rounds of growth from any start
    assert_table(pair_counts(gt, pred, capacity), expected)
    wide_gt, wide_pred = np.repeat(gt, 2, axis=1), np.repeat(pred, 2, axis=1)
    assert_table(pair_counts(wide_gt[:, ::2], wide_pred[:, 1::2], capacity), expected)  # strided
    assert_table(pair_counts_rgb(to_rgb(gt), to_rgb(pred), capacity), expected)
    for layout in (np.ascontiguousarray, np.asfortranarray):
        g, p, c = pair_counts_catinst(layout(to_catinst(gt)), layout(to_catinst(pred)), capacity)
        assert_table((catinst_to_ids(g), catinst_to_ids(p), c), expected)


@pytest.mark.parametrize("capacity", [2, 16, INITIAL_CAPACITY])
def test_png_scanlines_grow_their_table_to_many_pairs(capacity):
    gt, pred = many_pair_maps(40, 60, seed=capacity)
    g, p, c = unique_pairs(gt, pred)
    status, *tables = grow_and_retry(pair_counts_scanlines, up_scanlines(gt), 3,
                                     up_scanlines(pred), 3, 40, 60, capacity=capacity)
    assert status == DONE
    assert_table(tables, (g, p, c, *marginals(g, c), *marginals(p, c)))


@pytest.mark.parametrize("kernel, convert", [(histogram_ids, lambda a: a),
                                             (histogram_rgb, to_rgb),
                                             (histogram_catinst, to_catinst)],
                         ids=["ids", "rgb", "catinst"])
def test_a_full_table_is_reported_not_returned(kernel, convert):
    gt, pred = many_pair_maps(20, 20, seed=1)
    n_pairs = unique_pairs(gt, pred)[0].size
    too_small = 1 << int(np.log2(n_pairs))  # holds at most half of that: fewer than n_pairs
    status, g, p, c = kernel(convert(gt), convert(pred), too_small)
    assert status == TABLE_FULL and g.size == p.size == c.size == 0
    status, g, p, c = kernel(convert(gt), convert(pred), 4 * too_small)
    assert status == DONE and c.sum() == 400 and g.size == n_pairs


def test_the_last_open_run_can_fill_the_table():
    # 3 distinct pairs, the third one only in the run still open after the last row: a table of 4
    # slots holds 2, so the skeleton's final insert must report the table full.
    gt = np.array([[1, 1, 2, 2, 3, 3]], np.int64)
    status, *_ = histogram_ids(gt, gt, 4)
    assert status == TABLE_FULL
    status, g, p, c = histogram_ids(gt, gt, 8)
    assert status == DONE and g.tolist() == [1, 2, 3] and c.tolist() == [2, 2, 2]


def test_grow_and_retry_quadruples_until_the_table_fits():
    seen = []

    def kernel(value, capacity):
        seen.append(capacity)
        return (DONE, value) if capacity >= 300 else (TABLE_FULL, None)

    assert grow_and_retry(kernel, "tables", capacity=4) == (DONE, "tables")
    assert seen == [4, 16, 64, 256, 1024]


def test_grow_and_retry_returns_a_row_source_failure_at_once():
    seen = []

    def kernel(capacity):
        seen.append(capacity)
        return (-3,)

    assert grow_and_retry(kernel) == (-3,)
    assert seen == [INITIAL_CAPACITY]


def test_a_catinst_value_outside_the_range_ends_the_scan_after_growth():
    gt, pred = many_pair_maps(30, 30, seed=2)
    g, p = to_catinst(gt), to_catinst(pred)
    p[-1, -1, 0] = -1  # in the last row, reached only once the table has grown
    assert histogram_catinst(g, p, 2)[0] == TABLE_FULL
    assert grow_and_retry(histogram_catinst, g, p, capacity=2)[0] == OUTSIDE_CATINST_RANGE
    with pytest.raises(ValueError, match="outside"):
        pair_counts_catinst(g, p, 2)


def test_a_bad_png_row_after_growth_names_its_side_and_row():
    gt, pred = many_pair_maps(12, 50, seed=3)
    gt_scanlines, pred_scanlines = up_scanlines(gt), up_scanlines(pred)
    pred_scanlines[9 * (1 + 50 * 3)] = 6  # the filter byte of row 9 of the prediction
    assert pair_counts_scanlines(gt_scanlines, 3, pred_scanlines, 3, 12, 50, 2)[0] == TABLE_FULL
    status, *tables = grow_and_retry(pair_counts_scanlines, gt_scanlines, 3, pred_scanlines, 3,
                                     12, 50, capacity=2)
    assert status == -1 - 12 - 9
    assert all(table.size == 0 for table in tables)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)])
def test_empty_maps_give_an_empty_table(shape):
    empty = np.zeros(shape, np.int64)
    for got in (pair_counts(empty, empty), pair_counts_rgb(to_rgb(empty), to_rgb(empty)),
                pair_counts_catinst(to_catinst(empty), to_catinst(empty))):
        assert [a.size for a in got] == [0, 0, 0]
    height, width = shape
    status, *tables = pair_counts_scanlines(np.zeros(height * (1 + 3 * width), np.uint8), 3,
                                            np.zeros(height * (1 + 3 * width), np.uint8), 3,
                                            height, width, 16)
    assert status == DONE and all(table.size == 0 for table in tables)


def test_wide_unsigned_ids_are_compared_exactly():
    # uint64 ids beyond 2**53 that differ only in their low bit must stay distinct pairs across
    # a row boundary (the open run keeps the rows' dtype).
    big = np.uint64(2**62)
    gt = np.array([[big, big], [big + np.uint64(1), big + np.uint64(1)]], np.uint64)
    pred = np.zeros_like(gt)
    g, p, c = pair_counts(gt, pred)
    assert g.tolist() == [2**62, 2**62 + 1] and c.tolist() == [2, 2]


def test_kernel_modules_import_no_underscore_name_of_another():
    # the variants and the PNG kernel reach the pair table only through its public names
    kernels_dir = Path(pair_table.__file__).resolve().parent
    for source in sorted(kernels_dir.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{source.name} imports {private} from {node.module}"

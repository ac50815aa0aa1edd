"""The GPU pair histogram and matcher (kernels/pairs.cu, fastpq/gpu/cupy_kernels.py).

Without a GPU the CUDA code is checked three ways: it compiles cleanly (nvcc for sm_80/sm_90,
NVRTC through CuPy), the real source runs on CPU threads under g++ with a CUDA shim and equals
``np.unique`` / a direct port of panopticapi (the main oracle), and so does its CPU emulation
(same work split, tests/cuda_oracles.py), which the device-state tests run on. Tests marked
``gpu`` run the real kernels and are skipped without CuPy and a CUDA device.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fastpq.gpu.cupy_kernels import batch_label_maps, uses_vec4
from fastpq.gpu.device_state import pad_segment_tables
from fastpq.kernels import gpu_layout
from fastpq.kernels.gpu_layout import (
    STATUS_ID_OUT_OF_RANGE,
    STATUS_PAIR_TABLE_OVERFLOW,
    STATUS_PRED_CATEGORY_UNKNOWN,
    STATUS_PRED_ID_NOT_LISTED,
    STATUS_PRED_SEGMENT_ABSENT,
    SegmentTables,
)
from cuda_build import NVCC, build_cpu_shim, nvcc_spills, nvrtc_log
from cuda_oracles import match_emulated, pair_histogram_emulated

SOURCE = os.path.join(os.path.dirname(gpu_layout.__file__), "pairs.cu")


def _has_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


HAS_GPU = _has_gpu()
gpu = pytest.mark.gpu
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA device")


# ---------------------------------------------------------------------------------------------
# Data and references
# ---------------------------------------------------------------------------------------------


def random_maps(rng, shape, n_gt, n_pred, dtype=np.int32):
    gt = rng.integers(0, n_gt, shape).astype(dtype)
    return gt, rng.integers(0, n_pred, shape).astype(dtype)


def voronoi_maps(rng, shape, n_segments=12, void_fraction=0.08, noise=0.01):
    """Panoptic-like maps: GT = Voronoi cells with random COCO-range ids and a void rectangle;
    pred = the cells of jittered centres, some ids kept, some new, plus salt noise."""
    n_images, height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    gt = np.empty(shape, np.int32)
    pred = np.empty(shape, np.int32)
    for b in range(n_images):
        cy = rng.uniform(0, height, n_segments)
        cx = rng.uniform(0, width, n_segments)
        gt_ids = rng.choice(np.arange(1, 1 << 24), n_segments, replace=False)
        cells = ((yy[..., None] - cy) ** 2 + (xx[..., None] - cx) ** 2).argmin(-1)
        gt[b] = gt_ids[cells]
        h, w = max(1, int(height * void_fraction * 3)), max(1, int(width * void_fraction * 3))
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        gt[b, y0:y0 + h, x0:x0 + w] = 0
        pred_ids = np.where(rng.random(n_segments) < 0.7, gt_ids,
                            rng.integers(1, 1 << 24, n_segments))
        jy = cy + rng.normal(0, height * 0.03, n_segments)
        jx = cx + rng.normal(0, width * 0.03, n_segments)
        cells = ((yy[..., None] - jy) ** 2 + (xx[..., None] - jx) ** 2).argmin(-1)
        pred[b] = pred_ids[cells]
        salt = rng.random((height, width)) < noise
        pred[b][salt] = rng.choice(np.append(pred_ids, 0), salt.sum())
    return gt, pred


def large_voronoi_maps(rng, shape, factor=8):
    """voronoi_maps drawn at 1/factor scale and upsampled (blocky borders; fast at any size)."""
    n_images, height, width = shape
    small = (n_images, -(-height // factor), -(-width // factor))
    gt, pred = voronoi_maps(rng, small)
    grow = [np.repeat(np.repeat(m, factor, 1), factor, 2)[:, :height, :width] for m in (gt, pred)]
    return np.ascontiguousarray(grow[0]), np.ascontiguousarray(grow[1])


def unique_pairs(gt, pred):
    """np.unique of the 64-bit key per image: list of (gt, pred, count) arrays."""
    gt = np.asarray(gt).reshape(len(gt) if np.ndim(gt) == 3 else 1, -1).astype(np.int64)
    pred = np.asarray(pred).reshape(gt.shape).astype(np.int64)
    out = []
    for g, p in zip(gt, pred):
        keys, counts = np.unique((g << 32) | (p & 0xFFFF_FFFF), return_counts=True)
        out.append((keys >> 32, keys & 0xFFFF_FFFF, counts))
    return out


def assert_tables_equal_unique(tables, gt, pred):
    tables = [np.asarray(a) for a in tables]
    pair_gt, pair_pred, pair_count, n_pairs, status = tables
    expected = unique_pairs(gt, pred)
    assert len(n_pairs) == len(expected)
    for b, (g, p, c) in enumerate(expected):
        assert status[b] & STATUS_PAIR_TABLE_OVERFLOW == 0, f"image {b} overflowed"
        n = int(n_pairs[b])
        assert n == len(g), f"image {b}: {n} pairs, np.unique finds {len(g)}"
        np.testing.assert_array_equal(pair_gt[b, :n], g)
        np.testing.assert_array_equal(pair_pred[b, :n], p)
        np.testing.assert_array_equal(pair_count[b, :n], c)


def reference_match(pairs, gt_segments, pred_segments, n_categories):
    """panopticapi's per-image matching (evaluation.py lines 119-163, SPEC §2.3-2.5), written out
    on a pair dict. ``pairs``: {(gt_id, pred_id): count} of one image; segments: lists of dicts
    (``id``, ``category`` dense index or -1, ``iscrowd``, ``area``) in segments_info order.
    Returns tp, fp, fn (C,) int64 and iou (C,) float64 summed from 0.0 in ascending key order."""
    gt_segms = {s["id"]: dict(s) for s in gt_segments}
    pred_segms = {s["id"]: dict(s) for s in pred_segments}
    for s in pred_segms.values():
        s["area"] = 0
    for (_, p), count in pairs.items():
        if p in pred_segms:
            pred_segms[p]["area"] += count
    stats = {}  # category -> [tp, fp, fn, iou]; -1 (not a category) is never reported

    def stat(category):
        return stats.setdefault(category, [0, 0, 0, 0.0])

    gt_matched, pred_matched = set(), set()
    for (g, p), intersection in sorted(pairs.items()):
        if g not in gt_segms or p not in pred_segms:
            continue
        if gt_segms[g]["iscrowd"] == 1:
            continue
        if gt_segms[g]["category"] != pred_segms[p]["category"]:
            continue
        union = (pred_segms[p]["area"] + gt_segms[g]["area"] - intersection
                 - pairs.get((0, p), 0))
        with np.errstate(divide="ignore"):
            iou = np.float64(intersection) / np.float64(union)
        if iou > 0.5:
            stat(gt_segms[g]["category"])[0] += 1
            stat(gt_segms[g]["category"])[3] += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, info in gt_segms.items():
        if g in gt_matched:
            continue
        if info["iscrowd"] == 1:
            crowd[info["category"]] = g
            continue
        stat(info["category"])[2] += 1
    for p, info in pred_segms.items():
        if p in pred_matched:
            continue
        intersection = pairs.get((0, p), 0)
        if info["category"] in crowd:
            intersection += pairs.get((crowd[info["category"]], p), 0)
        if intersection / info["area"] > 0.5:
            continue
        stat(info["category"])[1] += 1
    tp, fp, fn = (np.zeros(n_categories, np.int64) for _ in range(3))
    iou_sum = np.zeros(n_categories, np.float64)
    for category, (t, f_p, f_n, iou) in stats.items():
        if 0 <= category < n_categories:
            tp[category], fp[category], fn[category], iou_sum[category] = t, f_p, f_n, iou
    return tp, fp, fn, iou_sum


def segment_lists(tables: SegmentTables, b):
    n = int(tables.count[b])
    return [
        {"id": int(tables.id[b, i]), "category": int(tables.category[b, i]),
         "iscrowd": int(tables.iscrowd[b, i]),
         "area": None if tables.area is None else tables.area[b, i]}
        for i in range(n)
    ]


def random_segment_tables(rng, gt, pred, n_categories, *, json_areas):
    """Segment tables for maps from voronoi_maps: every GT id but some listed (a few unlisted,
    one listed but absent, a few crowds, some of unknown category); every non-zero pred id
    listed, mostly with the category of its largest GT overlap."""
    gt_tables, pred_tables = [], []
    for g, p in zip(gt, pred):
        ids, areas = np.unique(g[g != 0], return_counts=True)
        keep = rng.random(len(ids)) > 0.1
        ids, areas = ids[keep], areas[keep]
        ids = np.append(ids, 4242)  # listed, absent from the map: an FN
        areas = np.append(areas, 50)
        category = rng.integers(0, n_categories, len(ids))
        category[rng.random(len(ids)) < 0.05] = -1
        iscrowd = (rng.random(len(ids)) < 0.2).astype(np.int32)
        if json_areas:  # stale JSON areas as in detectron2#5420, some float
            areas = areas * rng.choice([1.0, 1.0, 0.5, 1.5], len(ids))
        order = rng.permutation(len(ids))
        gt_tables.append((ids[order], category[order], iscrowd[order], areas[order]))
        gt_category = dict(zip(ids.tolist(), category.tolist()))
        pred_ids = np.unique(p[p != 0])
        pred_category = []
        for q in pred_ids:
            under, counts = np.unique(g[p == q], return_counts=True)
            best = int(under[counts.argmax()])
            cat = gt_category.get(best, -1)
            if cat < 0 or rng.random() < 0.2:
                cat = int(rng.integers(0, n_categories))
            pred_category.append(cat)
        pred_tables.append((pred_ids, np.array(pred_category, np.int32)))
    gt_segments = pad_segment_tables(
        [t[0] for t in gt_tables], [t[1] for t in gt_tables], [t[2] for t in gt_tables],
        [t[3] for t in gt_tables] if json_areas else None,
    )
    pred_segments = pad_segment_tables([t[0] for t in pred_tables], [t[1] for t in pred_tables])
    return gt_segments, pred_segments


def pair_dicts(gt, pred):
    return [
        {(int(a), int(b)): int(c) for a, b, c in zip(*triple)} for triple in unique_pairs(gt, pred)
    ]


def assert_partials_equal_reference(partials, gt, pred, gt_segments, pred_segments, n_categories):
    tp, fp, fn, iou_sum = (np.asarray(a) for a in partials[:4])
    for b, pairs in enumerate(pair_dicts(gt, pred)):
        gt_list = segment_lists(gt_segments, b)
        if gt_segments.area is None:
            for s in gt_list:
                s["area"] = sum(c for (g, _), c in pairs.items() if g == s["id"])
        expected = reference_match(pairs, gt_list, segment_lists(pred_segments, b), n_categories)
        for name, got, want in zip(("tp", "fp", "fn"), (tp[b], fp[b], fn[b]), expected):
            np.testing.assert_array_equal(got, want, err_msg=f"image {b} {name}")
        # same additions in the same order: bit-identical
        np.testing.assert_array_equal(iou_sum[b], expected[3], err_msg=f"image {b} iou_sum")


# ---------------------------------------------------------------------------------------------
# (a) the CUDA source compiles cleanly
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch, defines", [
    ("sm_80", ()), ("sm_90", ()), ("sm_75", ()),
    ("sm_90", ("-DFASTPQ_SHARED_LOG2=3", "-DFASTPQ_SHARED_MAX_PROBE=2",
               "-DFASTPQ_BLOCK_THREADS=64")),
])
def test_nvcc_compiles_without_warnings_or_spills(tmp_path, arch, defines):
    if NVCC is not None:  # the PTX step too: its warnings are not all ptxas'
        ptx = subprocess.run(
            [NVCC, f"-arch={arch}", "-ptx", "-Werror", "all-warnings", *defines, "-o",
             str(tmp_path / "pairs.ptx"), SOURCE],
            capture_output=True, text=True,
        )
        assert ptx.returncode == 0 and not ptx.stderr.strip(), ptx.stderr
    spills = nvcc_spills(SOURCE, arch, tmp_path, defines)
    assert len(spills) == 5, spills
    if not defines:  # the shipped sizes: no local-memory traffic in any kernel
        assert all(s == ("0", "0") for s in spills), spills


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_nvrtc_compiles_without_messages(arch):
    from fastpq.gpu.cupy_kernels import cuda_source

    options = [f"-arch={arch}", *gpu_layout.nvrtc_options()]
    assert nvrtc_log(cuda_source(), "pairs.cu", options) == ""


def test_source_defaults_match_the_layout_module():
    """fastpq.kernels.gpu_layout's constants are the .cu defaults (fastpq.gpu.cupy_kernels also
    passes the sizes as -D options)."""
    folder = os.path.dirname(SOURCE)

    def define(name, file="pairs.cu"):
        with open(os.path.join(folder, file), encoding="utf-8") as source:
            found = re.search(rf"#define {name} (0x[0-9a-fA-F]+|\d+)", source.read())
        return int(found.group(1), 0)

    assert define("FASTPQ_BLOCK_THREADS") == gpu_layout.BLOCK_THREADS
    assert define("FASTPQ_SHARED_LOG2") == gpu_layout.SHARED_LOG2
    assert define("FASTPQ_SHARED_MAX_PROBE") == gpu_layout.SHARED_MAX_PROBE
    assert define("FASTPQ_RANK_TILE") == gpu_layout.RANK_TILE
    assert define("FASTPQ_MATCH_THREADS") == gpu_layout.MATCH_THREADS
    assert define("FASTPQ_EMPTY_KEY") == int(gpu_layout.EMPTY_KEY)
    assert define("FASTPQ_HASH_MULTIPLIER") == int(gpu_layout.HASH_MULTIPLIER)
    for name in ("PAIR_TABLE_OVERFLOW", "ID_OUT_OF_RANGE", "PRED_ID_NOT_LISTED",
                 "PRED_SEGMENT_ABSENT", "PRED_CATEGORY_UNKNOWN"):
        assert define(f"STATUS_{name}") == getattr(gpu_layout, f"STATUS_{name}")
    for name in ("STATUS_CATEGORY_UNKNOWN", "STATUS_INSTANCE_TOO_LARGE", "MODE_PAIRS",
                 "MODE_DIVISOR"):
        assert define(name, "encode.cu") == getattr(gpu_layout, name)
    assert define("FASTPQ_ACCUMULATE_THREADS", "accumulate.cu") == gpu_layout.ACCUMULATE_THREADS
    bits = sum(gpu_layout.STATUS_MESSAGES)
    assert sorted(gpu_layout.STATUS_MESSAGES) == [1 << k for k in range(bits.bit_length())]


def test_cuda_source_is_package_data():
    from fastpq.gpu.cupy_kernels import cuda_source

    assert 'extern "C" __global__' in cuda_source()


def test_missing_cupy_names_the_extra(monkeypatch):
    import fastpq.gpu.cupy_kernels

    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(ImportError, match=r"pip install fastpq\[gpu\]"):
        fastpq.gpu.cupy_kernels.pair_histogram_batch(np.zeros((2, 2), np.int32),
                                                     np.zeros((2, 2), np.int32))


# ---------------------------------------------------------------------------------------------
# (b) the CPU emulation of the kernels' work split
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 7), (2, 3, 5), (3, 37, 53), (2, 40, 52),
                                   (1, 64, 96)])
@pytest.mark.parametrize("tile_pixels", [4, 388, 1000, 16384])
def test_emulation_random_maps(shape, tile_pixels):
    rng = np.random.default_rng(hash((shape, tile_pixels)) % 2**32)
    gt, pred = random_maps(rng, shape, 6, 9)
    assert_tables_equal_unique(pair_histogram_emulated(gt, pred, tile_pixels=tile_pixels), gt, pred)


@pytest.mark.parametrize("shape", [(2, 48, 64), (3, 33, 47), (1, 121, 80)])
def test_emulation_panoptic_like_maps(shape):
    rng = np.random.default_rng(sum(shape))
    gt, pred = voronoi_maps(rng, shape)
    for tile_pixels in (256, 1996, 16384):
        tables = pair_histogram_emulated(gt, pred, tile_pixels=tile_pixels)
        assert_tables_equal_unique(tables, gt, pred)


@pytest.mark.parametrize("vec4", [True, False])
@pytest.mark.parametrize("warp_aggregation", [True, False])
def test_emulation_both_read_paths_and_arch_variants(vec4, warp_aggregation):
    rng = np.random.default_rng(7)
    gt, pred = voronoi_maps(rng, (2, 40, 60))
    tables = pair_histogram_emulated(gt, pred, tile_pixels=600, vec4=vec4,
                                     warp_aggregation=warp_aggregation)
    assert_tables_equal_unique(tables, gt, pred)


@pytest.mark.parametrize("shared_log2, probes", [(1, 1), (3, 2), (5, 32), (6, 8)])
def test_emulation_shared_table_overflow_goes_global(shared_log2, probes):
    # thousands of distinct pairs per tile against a 2..64-slot shared table
    rng = np.random.default_rng(shared_log2)
    gt, pred = random_maps(rng, (2, 50, 70), 60, 70)
    tables = pair_histogram_emulated(gt, pred, tile_pixels=1200, shared_log2=shared_log2,
                                     shared_max_probe=probes, block_threads=64)
    assert_tables_equal_unique(tables, gt, pred)


@pytest.mark.parametrize("capacity", [64, 128, 256])
def test_emulation_global_overflow_flag_exactly_when_pairs_exceed_capacity(capacity):
    rng = np.random.default_rng(capacity)
    # image 0: few pairs; image 1: about `capacity` pairs; image 2: many more
    gt = np.zeros((3, 40, 40), np.int32)
    pred = np.zeros((3, 40, 40), np.int32)
    gt[0], pred[0] = random_maps(rng, (40, 40), 3, 3)
    gt[1], pred[1] = random_maps(rng, (40, 40), 16, capacity // 16)
    gt[2], pred[2] = random_maps(rng, (40, 40), 100, 100)
    tables = pair_histogram_emulated(gt, pred, capacity=capacity, tile_pixels=400,
                                     shared_log2=4, shared_max_probe=4)
    for b, (g, _, _) in enumerate(unique_pairs(gt, pred)):
        overflowed = bool(tables.status[b] & STATUS_PAIR_TABLE_OVERFLOW)
        assert overflowed == (len(g) > capacity), (b, len(g), capacity)
        if not overflowed:
            assert_tables_equal_unique([a[b:b + 1] for a in tables], gt[b:b + 1], pred[b:b + 1])


def test_emulation_dtypes_and_large_ids():
    rng = np.random.default_rng(3)
    gt, pred = voronoi_maps(rng, (2, 30, 42))
    gt[0, 0, :5] = (1 << 24) - 1
    pred[1, -1, -3:] = (1 << 31) - 1
    for g, p in ((gt, pred), (gt.astype(np.int64), pred), (gt.astype(np.uint32),
                                                          pred.astype(np.uint32)),
                 (gt.astype(np.uint64), pred.astype(np.int64))):
        tables = pair_histogram_emulated(g, p, tile_pixels=500)
        assert not tables.status.any()
        assert_tables_equal_unique(tables, gt, pred)
    small = (gt % 200).astype(np.uint8), (pred % 200).astype(np.int16)
    assert_tables_equal_unique(pair_histogram_emulated(*small), *small)
    one_image = pair_histogram_emulated(gt[0], pred[0])  # (H, W) is a batch of one
    assert_tables_equal_unique(one_image, gt[:1], pred[:1])


def test_emulation_flags_ids_out_of_range():
    gt = np.ones((3, 4, 4), np.int64)
    pred = np.ones((3, 4, 4), np.int64)
    gt[0, 1, 1] = -1
    pred[1, 2, 2] = 1 << 31
    tables = pair_histogram_emulated(gt, pred)
    assert tables.status.tolist() == [STATUS_ID_OUT_OF_RANGE, STATUS_ID_OUT_OF_RANGE, 0]
    tables = pair_histogram_emulated(gt.astype(np.uint32), pred.astype(np.uint32))
    assert tables.status.tolist() == [STATUS_ID_OUT_OF_RANGE, STATUS_ID_OUT_OF_RANGE, 0]


def test_emulation_empty_inputs():
    tables = pair_histogram_emulated(np.zeros((0, 4, 4), np.int32), np.zeros((0, 4, 4), np.int32))
    assert tables.n_pairs.shape == (0,)
    tables = pair_histogram_emulated(np.zeros((2, 0, 4), np.int32), np.zeros((2, 0, 4), np.int32))
    assert tables.n_pairs.tolist() == [0, 0]


def test_emulation_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        pair_histogram_emulated(np.zeros((2, 3), np.int32), np.zeros((3, 2), np.int32))
    with pytest.raises(ValueError, match="integer ids"):
        pair_histogram_emulated(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="multiple of 4"):
        pair_histogram_emulated(np.zeros((2, 3), np.int32), np.zeros((2, 3), np.int32),
                                tile_pixels=6)


def test_emulation_property_hypothesis():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    from hypothesis.extra import numpy as hnp

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(
        maps=st.tuples(st.integers(1, 3), st.integers(1, 23), st.integers(1, 29)).flatmap(
            lambda shape: st.tuples(
                hnp.arrays(np.int32, shape, elements=st.integers(0, 12)),
                hnp.arrays(np.int32, shape, elements=st.integers(0, 40)),
            )
        ),
        tile_pixels=st.sampled_from([4, 8, 132, 400]),
        shared_log2=st.integers(1, 6),
    )
    def check(maps, tile_pixels, shared_log2):
        gt, pred = maps
        tables = pair_histogram_emulated(gt, pred, tile_pixels=tile_pixels, block_threads=64,
                                         shared_log2=shared_log2, shared_max_probe=3)
        assert_tables_equal_unique(tables, gt, pred)

    check()


# matcher emulation against the reference port


@pytest.mark.parametrize("json_areas", [False, True])
def test_match_emulation_equals_reference(json_areas):
    rng = np.random.default_rng(11 + json_areas)
    gt, pred = voronoi_maps(rng, (6, 48, 64), n_segments=14)
    gt_segments, pred_segments = random_segment_tables(rng, gt, pred, 5, json_areas=json_areas)
    tables = pair_histogram_emulated(gt, pred)
    partials = match_emulated(tables, gt_segments, pred_segments, 5)
    assert_partials_equal_reference(partials, gt, pred, gt_segments, pred_segments, 5)
    assert not (partials.status & ~STATUS_PRED_SEGMENT_ABSENT).any()
    assert partials.tp.sum() > 0 and partials.fp.sum() > 0 and partials.fn.sum() > 0


def test_match_emulation_on_synthetic_dataset():
    synthetic = pytest.importorskip("fastpq.datasets.synthetic")
    from fastpq.core.categories import Categories  # noqa: F401  (the dataset's category table)

    images = synthetic.make_dataset(4, height=60, width=80, seed=5)
    categories = {}
    for _, gt_info, _, pred_info in images:
        for s in list(gt_info) + list(pred_info):
            categories.setdefault(s["category_id"], len(categories))
    shape = (len(images), 60, 80)
    gt = np.stack([np.asarray(im[0], np.int64) for im in images]).reshape(shape)
    pred = np.stack([np.asarray(im[2], np.int64) for im in images]).reshape(shape)
    gt_segments = pad_segment_tables(
        [[s["id"] for s in im[1]] for im in images],
        [[categories[s["category_id"]] for s in im[1]] for im in images],
        [[s.get("iscrowd", 0) for s in im[1]] for im in images],
    )
    pred_segments = pad_segment_tables(
        [[s["id"] for s in im[3]] for im in images],
        [[categories[s["category_id"]] for s in im[3]] for im in images],
    )
    tables = pair_histogram_emulated(gt, pred)
    assert_tables_equal_unique(tables, gt, pred)
    partials = match_emulated(tables, gt_segments, pred_segments, len(categories))
    assert_partials_equal_reference(partials, gt, pred, gt_segments, pred_segments,
                                    len(categories))


def _one_image_case(gt_map, pred_map, gt_list, pred_list, n_categories=3, *, json_areas=None):
    gt_map = np.asarray(gt_map, np.int32)[None]
    pred_map = np.asarray(pred_map, np.int32)[None]
    gt_segments = pad_segment_tables(
        [[s[0] for s in gt_list]], [[s[1] for s in gt_list]], [[s[2] for s in gt_list]],
        None if json_areas is None else [json_areas],
    )
    pred_segments = pad_segment_tables([[s[0] for s in pred_list]], [[s[1] for s in pred_list]])
    return gt_map, pred_map, gt_segments, pred_segments, n_categories


def _paint(shape, *regions):
    """A label map of zeros with ``(id, rows, cols)`` rectangles painted in order."""
    label_map = np.zeros(shape, np.int32)
    for segment_id, rows, cols in regions:
        label_map[slice(*rows), slice(*cols)] = segment_id
    return label_map


def _hand_cases():
    """SPEC §2.8 cases on 4x8 / 4x12 maps: (name, case, expected (tp, fp, fn, iou) of cat 1)."""
    rows = (0, 4)
    crowds = _paint((4, 8), (3, rows, (0, 4)), (4, rows, (4, 8)))
    perfect_gt = _paint((4, 8), (5, rows, (0, 4)))
    perfect_pred = _paint((4, 8), (9, rows, (0, 4)))
    return [
        # pred covers GT 5 (16 px) and 16 px of GT 6: IoU 16/32 = 0.5 -> no match
        ("iou_exactly_half",
         _one_image_case(_paint((4, 12), (5, rows, (0, 4)), (6, rows, (4, 8))),
                         _paint((4, 12), (9, rows, (0, 8))), [(5, 1, 0), (6, 1, 0)], [(9, 1)]),
         (0, 1, 2, 0.0)),
        # pred 16 px: 8 on GT, 8 on void -> IoU 8/16 = 0.5 and void share 0.5: FN + FP
        ("half_on_void",
         _one_image_case(perfect_gt, _paint((4, 8), (9, (2, 4), (0, 8))), [(5, 1, 0)], [(9, 1)]),
         (0, 1, 1, 0.0)),
        # pred = GT (16 px) + 8 px of void -> TP with IoU 1
        ("void_forgiven",
         _one_image_case(perfect_gt, _paint((4, 8), (9, rows, (0, 6))), [(5, 1, 0)], [(9, 1)]),
         (1, 0, 0, 1.0)),
        # two crowds of class 1; pred on the first-listed -> FP, on the last-listed -> ignored
        ("first_crowd_not_remembered",
         _one_image_case(crowds, _paint((4, 8), (9, rows, (0, 4))), [(3, 1, 1), (4, 1, 1)],
                         [(9, 1)]),
         (0, 1, 0, 0.0)),
        ("last_crowd_remembered",
         _one_image_case(crowds, _paint((4, 8), (9, rows, (4, 8))), [(3, 1, 1), (4, 1, 1)],
                         [(9, 1)]),
         (0, 0, 0, 0.0)),
        # GT id 8 not listed: pred covers 8 px of it + all 16 px of GT 5 -> IoU 16/24
        ("unlisted_gt_in_union",
         _one_image_case(_paint((4, 8), (5, rows, (0, 4)), (8, (0, 2), (4, 8))),
                         _paint((4, 8), (9, rows, (0, 4)), (9, (0, 2), (4, 8))),
                         [(5, 1, 0)], [(9, 1)]),
         (1, 0, 0, 16 / 24)),
        # stale JSON area 10 for a 16 px segment, perfect pred -> IoU 1.6
        ("stale_json_area",
         _one_image_case(perfect_gt, perfect_pred, [(5, 1, 0)], [(9, 1)], json_areas=[10.0]),
         (1, 0, 0, 1.6)),
        # GT listed but absent from the map -> FN
        ("gt_absent_is_fn",
         _one_image_case(perfect_gt, perfect_pred, [(5, 1, 0), (77, 1, 0)], [(9, 1)]),
         (1, 0, 1, 1.0)),
        # pred 20 px: 4 on same-class crowd, 8 on void, 8 on another-class GT -> ignored
        ("crowd_plus_void_ignored",
         _one_image_case(_paint((4, 12), (3, rows, (0, 1)), (6, rows, (3, 5))),
                         _paint((4, 12), (9, rows, (0, 5))), [(3, 1, 1), (6, 2, 0)], [(9, 1)]),
         (0, 0, 0, 0.0)),
        # pred id 0 listed as a segment of class 1 covering stuff GT 5 exactly
        ("pred_id_zero_listed",
         _one_image_case(_paint((4, 8), (5, rows, (0, 8))), np.zeros((4, 8), np.int32),
                         [(5, 1, 0)], [(0, 1)]),
         (1, 0, 0, 1.0)),
    ]


HAND_CASES = _hand_cases()


@pytest.mark.parametrize("name, case, expected", HAND_CASES, ids=[c[0] for c in HAND_CASES])
def test_match_emulation_hand_cases(name, case, expected):
    gt, pred, gt_segments, pred_segments, n_categories = case
    partials = match_emulated(pair_histogram_emulated(gt, pred), gt_segments, pred_segments,
                              n_categories)
    got = (partials.tp[0, 1], partials.fp[0, 1], partials.fn[0, 1], partials.iou_sum[0, 1])
    assert got == pytest.approx(expected, abs=0, rel=0)
    assert_partials_equal_reference(partials, gt, pred, gt_segments, pred_segments, n_categories)


def test_match_emulation_status_bits():
    g = _paint((4, 8), (5, (0, 4), (0, 4)))[None]
    p = _paint((4, 8), (9, (0, 4), (0, 4)), (11, (0, 1), (7, 8)))[None]
    tables = pair_histogram_emulated(g, p)
    gt_segments = pad_segment_tables([[5]], [[1]], [[0]])
    unlisted = match_emulated(tables, gt_segments, pad_segment_tables([[9]], [[1]]), 3)
    assert unlisted.status[0] == STATUS_PRED_ID_NOT_LISTED
    absent = match_emulated(tables, gt_segments, pad_segment_tables([[9, 11, 12]], [[1, 1, 1]]), 3)
    assert absent.status[0] == STATUS_PRED_SEGMENT_ABSENT
    unknown = match_emulated(tables, gt_segments, pad_segment_tables([[9, 11]], [[1, -1]]), 3)
    assert unknown.status[0] == STATUS_PRED_CATEGORY_UNKNOWN


# ---------------------------------------------------------------------------------------------
# (c) pairs.cu itself on CPU threads: a small shim maps the CUDA built-ins it uses onto
# std::thread (one per CUDA thread, blocks one at a time), std::barrier (__syncthreads, and the
# warp intrinsics, which all 32 lanes reach together in these kernels) and GCC atomics, so the
# real source, races and all, runs under g++ and is compared with np.unique and the reference.
# Threads are expensive here (a block is 64-256 OS threads on 2 cores): keep the inputs small.
# ---------------------------------------------------------------------------------------------

CUDA_SHIM = r"""
// Runs CUDA kernels on CPU threads: one std::thread per CUDA thread, blocks one at a time.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>
#include <functional>
#include <memory>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct int4 { int x, y, z, w; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#ifndef SHIM_ARCH
#define SHIM_ARCH 800
#endif
#define __CUDA_ARCH__ SHIM_ARCH
// A blocking barrier (no spinning: a block has far more threads than the machine has cores).
struct ShimBarrier {
    explicit ShimBarrier(unsigned n) : n(n) {}
    void arrive_and_wait() {
        std::unique_lock<std::mutex> lock(mutex);
        const unsigned phase = generation;
        if (++arrived == n) {
            arrived = 0;
            ++generation;
            wake.notify_all();
        } else {
            wake.wait(lock, [&] { return phase != generation; });
        }
    }
    std::mutex mutex;
    std::condition_variable wake;
    unsigned n, arrived = 0, generation = 0;
};
struct ShimWarp {
    ShimBarrier bar{32};
    unsigned long long keys[32];
    unsigned values[32];
};
static ShimBarrier* shim_block_barrier;
static std::vector<std::unique_ptr<ShimWarp>> shim_warps;
static std::atomic<int> shim_or_flag{0};
static inline ShimWarp& shim_warp() { return *shim_warps[threadIdx.x >> 5]; }
static inline void __syncthreads() { shim_block_barrier->arrive_and_wait(); }
static inline int __syncthreads_or(int p) {
    if (p) shim_or_flag.store(1);
    __syncthreads();
    int r = shim_or_flag.load();
    __syncthreads();
    if (threadIdx.x == 0) shim_or_flag.store(0);
    __syncthreads();
    return r;
}
static inline unsigned __ballot_sync(unsigned, int p) {
    ShimWarp& w = shim_warp(); unsigned lane = threadIdx.x & 31;
    w.values[lane] = p ? 1u : 0u; w.bar.arrive_and_wait();
    unsigned r = 0; for (int i = 0; i < 32; ++i) r |= w.values[i] << i;
    w.bar.arrive_and_wait(); return r;
}
static inline int __any_sync(unsigned m, int p) { return __ballot_sync(m, p) != 0u; }
static inline int __all_sync(unsigned m, int p) { return __ballot_sync(m, p) == 0xffffffffu; }
static inline unsigned __shfl_up_sync(unsigned, unsigned v, unsigned delta) {
    ShimWarp& w = shim_warp(); unsigned lane = threadIdx.x & 31;
    w.values[lane] = v; w.bar.arrive_and_wait();
    unsigned r = lane >= delta ? w.values[lane - delta] : v;
    w.bar.arrive_and_wait(); return r;
}
static inline unsigned long long __shfl_sync(unsigned, unsigned long long v, int source) {
    ShimWarp& w = shim_warp(); unsigned lane = threadIdx.x & 31;
    w.keys[lane] = v; w.bar.arrive_and_wait();
    unsigned long long r = w.keys[source & 31];
    w.bar.arrive_and_wait(); return r;
}
static inline unsigned __match_any_sync(unsigned, unsigned long long v) {
    ShimWarp& w = shim_warp(); unsigned lane = threadIdx.x & 31;
    w.keys[lane] = v; w.bar.arrive_and_wait();
    unsigned r = 0; for (int i = 0; i < 32; ++i) r |= (w.keys[i] == v ? 1u : 0u) << i;
    w.bar.arrive_and_wait(); return r;
}
static inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
    ShimWarp& w = shim_warp(); unsigned lane = threadIdx.x & 31;
    if (!(mask >> lane & 1u)) __builtin_trap();
    w.values[lane] = v; w.bar.arrive_and_wait();
    unsigned r = 0; for (int i = 0; i < 32; ++i) if (mask >> i & 1u) r += w.values[i];
    w.bar.arrive_and_wait(); return r;
}
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
static inline int4 __ldg(const int4* p) { return *p; }
static inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long expected,
                                           unsigned long long desired) {
    __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}
static inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
static inline unsigned atomicAdd(unsigned* a, unsigned v) {
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
static inline int atomicOr(int* a, int v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }

static void shim_launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
    gridDim = grid; blockDim = block;
    for (unsigned by = 0; by < grid.y; ++by) for (unsigned bx = 0; bx < grid.x; ++bx) {
        ShimBarrier bar(block.x);
        shim_block_barrier = &bar;
        shim_warps.clear();
        for (unsigned w = 0; w < block.x / 32; ++w) shim_warps.emplace_back(new ShimWarp());
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block.x; ++t)
            threads.emplace_back([&, t, bx, by] {
                threadIdx.x = t; blockIdx.x = bx; blockIdx.y = by;
                kernel();
            });
        for (auto& th : threads) th.join();
    }
}
"""

SHIM_DRIVER = r"""
#include "cuda_shim.h"
#include "pairs.cu"
extern "C" {
void run_histogram(int wide, const void* gt, const void* pred, long long n_images,
                   long long n_pixels, long long tile, int vec4, u64* keys, u64* counts,
                   int cap_log2, int* status) {
    dim3 grid; grid.x = (unsigned)((n_pixels + tile - 1) / tile); grid.y = (unsigned)n_images;
    dim3 block; block.x = FASTPQ_BLOCK_THREADS;
    if (wide) shim_launch(grid, block, [&] {
        pair_histogram_i64((const long long*)gt, (const long long*)pred, n_pixels, tile, vec4,
                           keys, counts, cap_log2, status); });
    else shim_launch(grid, block, [&] {
        pair_histogram_i32((const int*)gt, (const int*)pred, n_pixels, tile, vec4, keys, counts,
                           cap_log2, status); });
}
void run_compact(long long n_images, const u64* keys, const u64* counts, int cap_log2, u64* sk,
                 u64* sc, int* pair_gt, int* pair_pred, long long* pair_count, int* n_pairs) {
    dim3 grid; grid.x = (unsigned)n_images; dim3 block; block.x = FASTPQ_BLOCK_THREADS;
    shim_launch(grid, block, [&] {
        compact_pair_tables(keys, counts, cap_log2, sk, sc, pair_gt, pair_pred, pair_count,
                            n_pairs); });
}
void run_match(long long n_images, void** a, int cap_log2, int gt_stride, int from_pixels,
               int pred_stride, int n_categories) {
    dim3 grid; grid.x = (unsigned)n_images; dim3 block; block.x = FASTPQ_MATCH_THREADS;
    shim_launch(grid, block, [&] { match_segments(
        (const int*)a[0], (const int*)a[1], (const long long*)a[2], (const int*)a[3], cap_log2,
        (const int*)a[4], (const int*)a[5], (const int*)a[6], (const double*)a[7],
        (const int*)a[8], gt_stride, from_pixels, (const int*)a[9], (const int*)a[10],
        (const int*)a[11], pred_stride, n_categories, (int*)a[12], (int*)a[13], (double*)a[14],
        (int*)a[15], (long long*)a[16], (int*)a[17], (long long*)a[18], (long long*)a[19],
        (long long*)a[20], (int*)a[21], (long long*)a[22], (long long*)a[23],
        (long long*)a[24], (double*)a[25], (int*)a[26]); });
}
}
"""

SHIM_BUILDS = {
    # small shared tables, several rank tiles: every overflow path; warp aggregation (sm_80+)
    "sm80_small_tables": ["-DSHIM_ARCH=800", "-DFASTPQ_BLOCK_THREADS=64", "-DFASTPQ_SHARED_LOG2=4",
                          "-DFASTPQ_SHARED_MAX_PROBE=4", "-DFASTPQ_RANK_TILE=16",
                          "-DFASTPQ_MATCH_THREADS=32"],
    # the shipped sizes; the pre-sm_80 insert path
    "sm70_shipped_sizes": ["-DSHIM_ARCH=700"],
}


class ShimKernels:
    """ctypes front of the shim build: the three kernels with fastpq.gpu.cupy_kernels's argument
    handling."""

    def __init__(self, library):
        self.lib = library

    def histogram(self, gt, pred, *, capacity=1024, tile_pixels=1000, vec4=None):
        import ctypes

        gt2d, pred2d = batch_label_maps(np.asarray(gt), np.asarray(pred), np)
        n_images, n_pixels = gt2d.shape
        cap_log2 = gpu_layout.capacity_log2(capacity)
        if vec4 is None:
            vec4 = uses_vec4(gt2d, pred2d, tile_pixels, True)
        keys = np.full((n_images, 1 << cap_log2), gpu_layout.EMPTY_KEY, np.uint64)
        counts = np.zeros_like(keys)
        status = np.zeros(n_images, np.int32)
        ll, i32 = ctypes.c_longlong, ctypes.c_int
        if n_images and n_pixels:
            self.lib.run_histogram(
                i32(int(gt2d.dtype == np.int64)), _ptr(gt2d), _ptr(pred2d), ll(n_images),
                ll(n_pixels), ll(tile_pixels), i32(int(vec4)), _ptr(keys), _ptr(counts),
                i32(cap_log2), _ptr(status))
        pair_gt = np.zeros(keys.shape, np.int32)
        pair_pred = np.zeros(keys.shape, np.int32)
        pair_count = np.zeros(keys.shape, np.int64)
        n_pairs = np.zeros(n_images, np.int32)
        scratch_keys, scratch_counts = np.empty_like(keys), np.empty_like(keys)
        self.lib.run_compact(ll(n_images), _ptr(keys), _ptr(counts), i32(cap_log2),
                             _ptr(scratch_keys), _ptr(scratch_counts), _ptr(pair_gt),
                             _ptr(pair_pred), _ptr(pair_count), _ptr(n_pairs))
        return gpu_layout.PairTables(pair_gt, pair_pred, pair_count, n_pairs, status)

    def match(self, tables, gt_segments, pred_segments, n_categories):
        import ctypes

        n_images, cap = tables.gt.shape
        s_gt, s_pred = gt_segments.id.shape[1], pred_segments.id.shape[1]
        from_pixels = gt_segments.area is None
        c = np.ascontiguousarray
        per_category = (n_images, n_categories)
        out = gpu_layout.MatchPartials(
            np.zeros(per_category, np.int64), np.zeros(per_category, np.int64),
            np.zeros(per_category, np.int64), np.zeros(per_category),
            np.zeros((n_images, cap)), np.zeros((n_images, cap), np.int32),
            np.array(tables.status, np.int32))
        arrays = [
            c(tables.gt, np.int32), c(tables.pred, np.int32), c(tables.count, np.int64),
            c(tables.n_pairs, np.int32), c(gt_segments.id, np.int32),
            c(gt_segments.category, np.int32), c(gt_segments.iscrowd, np.int32),
            np.zeros(1) if from_pixels else c(gt_segments.area, np.float64),
            c(gt_segments.count, np.int32), c(pred_segments.id, np.int32),
            c(pred_segments.category, np.int32), c(pred_segments.count, np.int32),
            np.empty((n_images, cap), np.int32), np.empty((n_images, cap), np.int32),
            out.pair_iou, out.pair_matched, np.empty((n_images, s_gt), np.int64),
            np.empty((n_images, s_gt), np.int32), *(np.empty((n_images, s_pred), np.int64)
                                                     for _ in range(3)),
            np.empty((n_images, s_pred), np.int32), out.tp, out.fp, out.fn, out.iou_sum,
            out.status,
        ]
        pointers = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
        i32 = ctypes.c_int
        self.lib.run_match(ctypes.c_longlong(n_images), pointers, i32(cap.bit_length() - 1),
                           i32(s_gt), i32(int(from_pixels)), i32(s_pred), i32(n_categories))
        return out


def _ptr(array):
    import ctypes

    return ctypes.c_void_p(array.ctypes.data)


@pytest.fixture(scope="module", params=list(SHIM_BUILDS))
def shim(request, tmp_path_factory):
    library = build_cpu_shim(tmp_path_factory.mktemp(request.param), CUDA_SHIM, SHIM_DRIVER,
                             os.path.dirname(SOURCE), SHIM_BUILDS[request.param])
    return ShimKernels(library)


def test_cuda_source_on_cpu_threads_histogram(shim):
    rng = np.random.default_rng(17)
    for shape, tile_pixels in [((1, 1, 1), 4), ((2, 3, 5), 8), ((2, 37, 53), 1000),
                               ((1, 48, 64), 16384)]:
        gt, pred = random_maps(rng, shape, 6, 9)
        assert_tables_equal_unique(shim.histogram(gt, pred, tile_pixels=tile_pixels), gt, pred)
        gt, pred = voronoi_maps(rng, shape)
        assert_tables_equal_unique(shim.histogram(gt, pred, tile_pixels=tile_pixels), gt, pred)
    gt, pred = voronoi_maps(rng, (2, 32, 48))
    assert_tables_equal_unique(shim.histogram(gt.astype(np.int64), pred), gt, pred)
    assert_tables_equal_unique(shim.histogram(gt, pred, vec4=False), gt, pred)
    gt, pred = random_maps(rng, (1, 30, 40), 30, 40)  # ~900 pairs: shared overflow, rank tiles
    assert_tables_equal_unique(shim.histogram(gt, pred, capacity=2048, tile_pixels=600), gt, pred)


def test_cuda_source_on_cpu_threads_status(shim):
    rng = np.random.default_rng(18)
    gt = np.zeros((3, 40, 40), np.int32)
    pred = np.zeros((3, 40, 40), np.int32)
    gt[0], pred[0] = random_maps(rng, (40, 40), 3, 3)
    gt[1], pred[1] = random_maps(rng, (40, 40), 16, 8)
    gt[2], pred[2] = random_maps(rng, (40, 40), 100, 100)
    tables = shim.histogram(gt, pred, capacity=128, tile_pixels=800)
    for b, (g, _, _) in enumerate(unique_pairs(gt, pred)):
        assert bool(tables.status[b] & STATUS_PAIR_TABLE_OVERFLOW) == (len(g) > 128)
    bad = np.ones((3, 4, 4), np.int64)
    bad[0, 1, 1] = -1
    bad[1, 2, 2] = 1 << 31
    assert shim.histogram(bad, np.ones_like(bad)).status.tolist() == [
        STATUS_ID_OUT_OF_RANGE, STATUS_ID_OUT_OF_RANGE, 0]


def test_cuda_source_on_cpu_threads_tile_remainders_and_tiny_tables(shim):
    """Tiles that end inside a warp's span, int64 maps, shared tables that overflow into the
    global table, a global table that overflows, ids out of range: each build of the shim."""
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, (2, 5, 7)).astype(np.int32)
    pred = rng.integers(0, 4, (2, 5, 7)).astype(np.int32)
    assert_tables_equal_unique(shim.histogram(gt, pred, capacity=64, tile_pixels=12), gt, pred)
    gt = rng.integers(0, 6, (1, 6, 9)).astype(np.int64)
    pred = rng.integers(0, 7, (1, 6, 9)).astype(np.int64)
    for tile_pixels in (32, 64):
        tables = shim.histogram(gt, pred, capacity=64, tile_pixels=tile_pixels)
        assert_tables_equal_unique(tables, gt, pred)
        emulated = pair_histogram_emulated(gt, pred, capacity=64, tile_pixels=tile_pixels)
        assert tables.status.tolist() == emulated.status.tolist() == [0]
        assert tables.n_pairs.tolist() == emulated.n_pairs.tolist()
    ids = np.arange(90, dtype=np.int32).reshape(1, 9, 10)  # 90 pairs > 64 slots
    assert shim.histogram(ids, ids, capacity=64, tile_pixels=48).status[0] & (
        STATUS_PAIR_TABLE_OVERFLOW)
    bad = np.ones((1, 2, 3), np.int64)
    bad[0, 1, 1] = -5
    assert shim.histogram(bad, bad, capacity=64).status.tolist() == [STATUS_ID_OUT_OF_RANGE]


@pytest.mark.parametrize("json_areas", [False, True])
def test_cuda_source_on_cpu_threads_matcher(shim, json_areas):
    rng = np.random.default_rng(19 + json_areas)
    gt, pred = voronoi_maps(rng, (4, 40, 56), n_segments=14)
    gt_segments, pred_segments = random_segment_tables(rng, gt, pred, 5, json_areas=json_areas)
    tables = shim.histogram(gt, pred, tile_pixels=4096)
    partials = shim.match(tables, gt_segments, pred_segments, 5)
    assert_partials_equal_reference(partials, gt, pred, gt_segments, pred_segments, 5)
    emulated = match_emulated(pair_histogram_emulated(gt, pred), gt_segments, pred_segments, 5)
    for name in ("tp", "fp", "fn", "iou_sum", "status"):
        np.testing.assert_array_equal(getattr(partials, name), getattr(emulated, name),
                                      err_msg=name)
    for b, n in enumerate(tables.n_pairs):
        np.testing.assert_array_equal(partials.pair_iou[b, :n], emulated.pair_iou[b, :n])
        np.testing.assert_array_equal(partials.pair_matched[b, :n], emulated.pair_matched[b, :n])
    for name, case, expected in HAND_CASES:
        gt, pred, gt_segments, pred_segments, n_categories = case
        partials = shim.match(shim.histogram(gt, pred, tile_pixels=64), gt_segments,
                              pred_segments, n_categories)
        got = (partials.tp[0, 1], partials.fp[0, 1], partials.fn[0, 1], partials.iou_sum[0, 1])
        assert got == expected, name


# ---------------------------------------------------------------------------------------------
# (d) the real kernels (CuPy and a CUDA device)
# ---------------------------------------------------------------------------------------------


def _get(tables):
    return type(tables)(*(None if a is None else a.get() for a in tables))


@gpu
@requires_gpu
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (3, 37, 53), (4, 480, 640),
                                   (2, 1024, 2048), (5, 427, 641)])
def test_gpu_histogram_equals_unique(shape):
    import cupy as cp

    from fastpq.gpu.cupy_kernels import pair_histogram_batch

    rng = np.random.default_rng(sum(shape))
    gt, pred = large_voronoi_maps(rng, shape)
    for tile_pixels in (4, 1000, 16384):
        tables = pair_histogram_batch(cp.asarray(gt), cp.asarray(pred), tile_pixels=tile_pixels)
        assert_tables_equal_unique(_get(tables), gt, pred)
    tables = pair_histogram_batch(cp.asarray(gt, cp.int64), cp.asarray(pred, cp.int64))
    assert_tables_equal_unique(_get(tables), gt, pred)


@gpu
@requires_gpu
def test_gpu_histogram_random_maps_and_overflow():
    import cupy as cp

    from fastpq.gpu.cupy_kernels import pair_histogram_batch, pair_histogram_retrying

    rng = np.random.default_rng(1)
    gt, pred = random_maps(rng, (3, 200, 300), 100, 100)  # ~10,000 pairs per image
    tables = _get(pair_histogram_batch(cp.asarray(gt), cp.asarray(pred), capacity=4096))
    assert (tables.status & STATUS_PAIR_TABLE_OVERFLOW).all()
    tables = _get(pair_histogram_batch(cp.asarray(gt), cp.asarray(pred), capacity=1 << 15))
    assert_tables_equal_unique(tables, gt, pred)
    tables = _get(pair_histogram_retrying(cp.asarray(gt), cp.asarray(pred), capacity=1024))
    assert_tables_equal_unique(tables, gt, pred)
    unaligned_gt = cp.asarray(gt).ravel()[1:1 + 2 * 200 * 300].reshape(2, 200, 300)
    unaligned_pred = cp.asarray(pred).ravel()[3:3 + 2 * 200 * 300].reshape(2, 200, 300)
    tables = _get(pair_histogram_batch(unaligned_gt, unaligned_pred, capacity=1 << 15))
    assert_tables_equal_unique(tables, unaligned_gt.get(), unaligned_pred.get())
    bad = cp.ones((2, 4, 4), cp.int32)
    bad[1, 2, 2] = -1
    assert _get(pair_histogram_batch(bad, bad)).status.tolist() == [0, STATUS_ID_OUT_OF_RANGE]


@gpu
@requires_gpu
def test_gpu_histogram_from_torch_on_its_stream():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    from fastpq.gpu.cupy_kernels import pair_histogram_batch

    rng = np.random.default_rng(2)
    gt, pred = voronoi_maps(rng, (3, 64, 80))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        tables = pair_histogram_batch(torch.from_numpy(gt).cuda(), torch.from_numpy(pred).cuda())
    stream.synchronize()
    assert_tables_equal_unique(_get(tables), gt, pred)


@gpu
@requires_gpu
@pytest.mark.parametrize("json_areas", [False, True])
def test_gpu_matcher_equals_reference_and_emulation(json_areas):
    import cupy as cp

    from fastpq.gpu.cupy_kernels import match_batch, pair_histogram_batch

    rng = np.random.default_rng(21 + json_areas)
    gt, pred = voronoi_maps(rng, (8, 96, 128), n_segments=20)
    gt_segments, pred_segments = random_segment_tables(rng, gt, pred, 6, json_areas=json_areas)
    tables = pair_histogram_batch(cp.asarray(gt), cp.asarray(pred))
    partials = _get(match_batch(tables, gt_segments, pred_segments, 6))
    assert_partials_equal_reference(partials, gt, pred, gt_segments, pred_segments, 6)
    emulated = match_emulated(pair_histogram_emulated(gt, pred), gt_segments, pred_segments, 6)
    for name in ("tp", "fp", "fn", "iou_sum", "status"):
        np.testing.assert_array_equal(getattr(partials, name), getattr(emulated, name),
                                      err_msg=name)
    for b, n in enumerate(tables.n_pairs.get()):
        np.testing.assert_array_equal(partials.pair_iou[b, :n], emulated.pair_iou[b, :n])
        np.testing.assert_array_equal(partials.pair_matched[b, :n], emulated.pair_matched[b, :n])


@gpu
@requires_gpu
@pytest.mark.parametrize("name, case, expected", HAND_CASES, ids=[c[0] for c in HAND_CASES])
def test_gpu_matcher_hand_cases(name, case, expected):
    import cupy as cp

    from fastpq.gpu.cupy_kernels import match_batch, pair_histogram_batch

    gt, pred, gt_segments, pred_segments, n_categories = case
    partials = _get(match_batch(pair_histogram_batch(cp.asarray(gt), cp.asarray(pred)),
                                gt_segments, pred_segments, n_categories))
    got = (partials.tp[0, 1], partials.fp[0, 1], partials.fn[0, 1], partials.iou_sum[0, 1])
    assert got == pytest.approx(expected, abs=0, rel=0)


@gpu
@requires_gpu
def test_gpu_calls_never_synchronise():
    """Histogram + matcher are captured into a CUDA graph: any host synchronisation (a .get(),
    an int() of a device value, a blocking copy) would abort the stream capture."""
    import cupy as cp

    from fastpq.gpu.cupy_kernels import match_batch, pair_histogram_batch

    rng = np.random.default_rng(31)
    gt, pred = voronoi_maps(rng, (4, 48, 64))
    gt_segments, pred_segments = random_segment_tables(rng, gt, pred, 5, json_areas=False)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        device_maps = cp.asarray(gt), cp.asarray(pred)
        gt_segments = SegmentTables(*(None if a is None else cp.asarray(a) for a in gt_segments))
        pred_segments = SegmentTables(*(None if a is None else cp.asarray(a)
                                        for a in pred_segments))
        match_batch(pair_histogram_batch(*device_maps), gt_segments, pred_segments, 5)  # warm-up
        stream.synchronize()
        stream.begin_capture()
        tables = pair_histogram_batch(*device_maps)
        partials = match_batch(tables, gt_segments, pred_segments, 5)
        graph = stream.end_capture()
        graph.launch()
    stream.synchronize()
    assert_tables_equal_unique(_get(tables), gt, pred)
    assert_partials_equal_reference(_get(partials), gt, pred, gt_segments=_host(gt_segments),
                                    pred_segments=_host(pred_segments), n_categories=5)


def _host(tables):
    return type(tables)(*(a if a is None or isinstance(a, np.ndarray) else a.get() for a in tables))


@gpu
@requires_gpu
def test_gpu_histogram_tile_sizes_of_other_block_counts():
    """Tiles of 1000 and 1200 pixels (not multiples of a block's span) on the device."""
    import cupy as cp

    from fastpq.gpu.cupy_kernels import pair_histogram_batch

    rng = np.random.default_rng(32)
    gt, pred = voronoi_maps(rng, (3, 64, 80))
    tables = pair_histogram_batch(cp.asarray(gt), cp.asarray(pred), tile_pixels=1000)
    assert_tables_equal_unique(_get(tables), gt, pred)
    gt, pred = random_maps(rng, (2, 60, 70), 60, 70)
    tables = pair_histogram_batch(cp.asarray(gt), cp.asarray(pred), capacity=8192,
                                  tile_pixels=1200)
    assert_tables_equal_unique(_get(tables), gt, pred)

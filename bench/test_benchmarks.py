"""pytest-benchmark suite: fastpq and the reference on the same inputs, grouped for comparison.

    python -m pytest bench/test_benchmarks.py --benchmark-only [--benchmark-compare]

Not collected by the test suite (``testpaths = tests``): these are timings, never assertions
about speed. Each group times fastpq beside the reference (panopticapi) on identical data; the
scripts beside this file (bench_*.py) print the wider comparison tables with the peers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

import fastpq
from fastpq.datasets import synthetic
from fastpq.core.categories import Categories
from fastpq.kernels.pairs import pair_counts
from fastpq.io.png import pair_counts_bytes, read_ids_bytes

from bench_evaluate import reference_core

CATEGORIES = Categories.coco_panoptic()


@pytest.fixture(scope="module", params=[(480, 640), (1024, 2048)], ids=["640x480", "1024x2048"])
def scenes(request):
    height, width = request.param
    return synthetic.make_dataset(4, height=height, width=width, categories=CATEGORIES, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.write_coco_dataset(tmp_path_factory.mktemp("coco"), 100, seed=4)


def test_pair_histogram(benchmark, scenes):
    benchmark.group = "pair histogram (4 images)"
    maps = [(g.astype(np.int32), p.astype(np.int32)) for g, _, p, _ in scenes]
    benchmark(lambda: [pair_counts(g, p) for g, p in maps])


def test_evaluate_fastpq(benchmark, scenes):
    benchmark.group = f"evaluate in memory (4 images {scenes[0][0].shape})"
    gts, gsegs, preds, psegs = zip(*scenes)
    benchmark(lambda: fastpq.evaluate(list(gts), list(preds), gt_segments=list(gsegs),
                                      pred_segments=list(psegs), categories=CATEGORIES,
                                      workers=1))


def test_evaluate_reference(benchmark, scenes):
    pytest.importorskip("panopticapi.evaluation")
    benchmark.group = f"evaluate in memory (4 images {scenes[0][0].shape})"
    benchmark(reference_core(scenes, CATEGORIES.to_coco()))


@pytest.fixture(scope="module")
def one_image():
    """One 640x480 COCO-like scene and a batch of 8 (the per-call groups)."""
    return synthetic.make_dataset(8, height=480, width=640, categories=CATEGORIES, seed=1)


def test_per_call_evaluate_one_image(benchmark, one_image):
    benchmark.group = "per call: one 640x480 COCO image"
    g, gs, p, ps = one_image[0]
    listed = CATEGORIES.to_coco()  # as users pass it: the plain categories list
    benchmark(lambda: fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps, categories=listed))


def test_per_call_reference_core(benchmark, one_image):
    pytest.importorskip("panopticapi.evaluation")
    benchmark.group = "per call: one 640x480 COCO image"
    benchmark(reference_core(one_image[:1], CATEGORIES.to_coco()))


def test_per_call_update_batch_of_8(benchmark, one_image):
    benchmark.group = "per call: PanopticQuality.update, 8 640x480 COCO images"
    gts, gsegs, preds, psegs = map(list, zip(*one_image))
    metric = fastpq.PanopticQuality(CATEGORIES.to_coco())
    benchmark(lambda: metric.update(gts, preds, gt_segments=gsegs, pred_segments=psegs))


def test_files_fastpq(benchmark, dataset):
    benchmark.group = "pq_compute, 100 COCO-like PNG pairs"
    benchmark(lambda: fastpq.pq_compute(dataset["gt_json"], dataset["pred_json"], verbose=False,
                                        progress=False))


def test_files_reference(benchmark, dataset):
    evaluation = pytest.importorskip("panopticapi.evaluation")
    benchmark.group = "pq_compute, 100 COCO-like PNG pairs"

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation.pq_compute(dataset["gt_json"], dataset["pred_json"])

    benchmark.pedantic(run, rounds=3, iterations=1)


@pytest.fixture(scope="module")
def png_pairs(dataset):
    with open(dataset["gt_json"]) as f:
        names = [a["file_name"] for a in json.load(f)["annotations"][:20]]
    pairs = []
    for name in names:
        with open(os.path.join(dataset["gt_folder"], name), "rb") as gt, \
                open(os.path.join(dataset["pred_folder"], name), "rb") as pred:
            pairs.append((gt.read(), pred.read()))
    return pairs


def test_png_pair_straight_to_histogram(benchmark, png_pairs):
    benchmark.group = "PNG pair to pair histogram (20 COCO-like pairs)"
    benchmark(lambda: [pair_counts_bytes(g, p) for g, p in png_pairs])


def test_png_pair_through_id_maps(benchmark, png_pairs):
    benchmark.group = "PNG pair to pair histogram (20 COCO-like pairs)"
    benchmark(lambda: [pair_counts(read_ids_bytes(g), read_ids_bytes(p)) for g, p in png_pairs])

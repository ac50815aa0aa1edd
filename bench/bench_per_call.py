"""Per-call cost of the in-memory front doors on one 640x480 COCO image, beside the reference.

    python bench/bench_per_call.py [--repeat 200] [--rounds 7] [--images 8]

On generated COCO-like images (:func:`fastpq.datasets.synthetic.make_dataset`, seed 1), one
thread, in one run, each figure the median over ``--rounds`` rounds of the mean of ``--repeat``
calls (the rounds of the contenders interleaved, so that load on the machine hits them alike):

* ``evaluate, one image``: ``fastpq.evaluate(gt, pred, gt_segments=..., pred_segments=...,
  categories=<the COCO categories list>)`` on one image, as a user calls it (the category table
  passed as the plain list of dicts);
* the same with a prepared :class:`fastpq.Categories`;
* ``update, per image``: ``PanopticQuality.update`` with a batch of ``--images`` images (a list
  of id maps and their segments_info lists), divided by the batch size; and with the same
  scenes as one stacked (B, H, W, 2) int64 [category, instance] array (torchmetrics' layout);
* ``pair kernel``: the pair histogram alone (:func:`fastpq.kernels.pairs.pair_counts`);
* ``reference core``: panopticapi's ``pq_compute_single_core`` per image on the same arrays, its
  PNG decode patched out (:func:`bench_evaluate.reference_core`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

import fastpq
from fastpq.core.categories import Categories
from fastpq.datasets import synthetic
from fastpq.kernels.pairs import pair_counts

from common import category_instance


def per_call(fn, repeat: int) -> float:
    """Mean seconds of ``fn()`` over ``repeat`` calls."""
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def contenders(images, n_batch: int):
    """``{label: (function, images per call)}`` on ``images`` ((gt, gt_segments, pred,
    pred_segments) scenes; the first is the one-image case)."""
    cats = Categories.coco_panoptic()
    cat_list = cats.to_coco()
    gt, gs, pred, ps = images[0]
    batch = images[:n_batch]
    gts, gss, preds, pss = map(list, zip(*batch))
    gt_pairs = np.stack([category_instance(g, s) for g, s, _, _ in batch])
    pred_pairs = np.stack([category_instance(p, s) for _, _, p, s in batch])
    metric = fastpq.PanopticQuality(cat_list)

    def update_coco():
        metric.update(gts, preds, gt_segments=gss, pred_segments=pss)

    def update_pairs():
        metric.update(gt_pairs, pred_pairs)

    out = {
        "evaluate, one image (categories list)": (
            lambda: fastpq.evaluate(gt, pred, gt_segments=gs, pred_segments=ps,
                                    categories=cat_list), 1),
        "evaluate, one image (Categories)": (
            lambda: fastpq.evaluate(gt, pred, gt_segments=gs, pred_segments=ps,
                                    categories=cats), 1),
        f"update, batch of {len(batch)} id maps": (update_coco, len(batch)),
        f"update, batch of {len(batch)} (B,H,W,2) int64": (update_pairs, len(batch)),
        "pair kernel alone": (lambda: pair_counts(gt, pred), 1),
    }
    try:
        from bench_evaluate import reference_core

        out["reference core (panopticapi)"] = (reference_core(images[:1], cat_list), 1)
    except ImportError:
        pass
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=200, help="calls per round (reference: / 20)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--images", type=int, default=8, help="batch size of update")
    args = ap.parse_args(argv)

    images = synthetic.make_dataset(max(args.images, 1), height=480, width=640,
                                    categories="coco", seed=1)
    runs = contenders(images, args.images)
    for fn, _ in runs.values():  # warm-up: compile, caches
        fn()
    times = {label: [] for label in runs}
    for _ in range(args.rounds):
        for label, (fn, n) in runs.items():
            repeat = max(1, args.repeat // 20) if label.startswith("reference") else args.repeat
            times[label].append(per_call(fn, repeat) / n)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {load:.2f}; Python {platform.python_version()}, numpy {np.__version__}, "
          f"fastpq {fastpq.__version__}")
    print(f"640x480 COCO-like images (make_dataset seed 1), one thread; median of "
          f"{args.rounds} rounds\n")
    medians = {label: statistics.median(t) for label, t in times.items()}
    ref = medians.get("reference core (panopticapi)")
    print(f"{'':44s} {'ms / image':>11s} {'x reference':>12s}")
    for label, t in medians.items():
        ratio = f"{ref / t:12.1f}" if ref else f"{'-':>12s}"
        print(f"{label:44s} {t * 1e3:11.3f} {ratio}")


if __name__ == "__main__":
    main()

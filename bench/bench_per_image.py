"""Cost of per-image records: fastpq.evaluate with and without ``per_image=True``.

    python bench/bench_per_image.py [--images 200] [--repeat 7] [--workers 1]

On the same generated COCO-like arrays (fastpq.datasets.synthetic, 640x480, seed 1), in one run,
interleaved, medians of --repeat runs: the default path (no records), ``per_image=True``, and
the breakdowns read from the records (fastpq.analysis.breakdown: by size and by error kind).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

import fastpq
from fastpq.analysis import breakdown
from fastpq.datasets import synthetic
from fastpq.core.categories import Categories


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)

    cats = Categories.coco_panoptic()
    images = synthetic.make_dataset(args.images, height=480, width=640, categories=cats, seed=1)
    gts, gsegs, preds, psegs = map(list, zip(*images))

    def run(per_image):
        return fastpq.evaluate(gts, preds, gt_segments=gsegs, pred_segments=psegs,
                               categories=cats, workers=args.workers, per_image=per_image)

    result = run(True)  # warm-up: JIT, caches
    assert run(False).to_dict() == result.to_dict()
    times = {"default": [], "per_image=True": [], "breakdowns": []}
    for _ in range(args.repeat):
        for label, fn in (("default", lambda: run(False)), ("per_image=True", lambda: run(True)),
                          ("breakdowns", lambda: (breakdown.by_size(result),
                                                  breakdown.error_breakdown(result)))):
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)

    segments = sum(len(r.matches) + len(r.unmatched) for r in result.per_image)
    print(f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, Python "
          f"{platform.python_version()}, numpy {np.__version__}, fastpq {fastpq.__version__}")
    print(f"data: {args.images} generated 640x480 COCO-like images, {segments} segments; "
          f"workers={args.workers}; medians of {args.repeat} runs\n")
    base = statistics.median(times["default"])
    print(f"{'':16s} {'total s':>9s} {'ms/image':>9s} {'vs default':>11s}")
    for label, ts in times.items():
        t = statistics.median(ts)
        print(f"{label:16s} {t:9.3f} {1e3 * t / args.images:9.3f} {t / base:10.2f}x")


if __name__ == "__main__":
    main()

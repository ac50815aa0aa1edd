"""Per-image cost of fastpq on torch CPU tensors, on NumPy arrays, and of torchmetrics.

    python bench/bench_torch.py [--repeat 7] [--images 8] [--tm-images 2] [--tm-repeat 3]

Generated scenes (``fastpq.datasets.synthetic``, COCO categories) at 640x480 and 2048x1024, in one run:

* fastpq.evaluate (one thread) on the same maps as NumPy arrays and as torch CPU tensors
  (``torch.from_numpy``, same memory), in the three input conventions: COCO int32 id maps +
  segments_info (a list of maps), (B, H, W, 2) int64 [category, instance] batches, and
  (B, H, W) int32 ``category * 1000 + instance`` batches;
* torchmetrics' PanopticQuality on CPU on the same [category, instance] tensors (one update per
  image, then compute), on the first --tm-images scenes.

Times are per image, medians of --repeat runs (--tm-repeat for torchmetrics, ~1 s per image),
after one warm-up run; the NumPy and torch runs alternate.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

import fastpq
from fastpq.datasets import synthetic
from fastpq.core.categories import Categories

from common import category_instance, torchmetrics_run

SIZES = {"640x480": (480, 640), "2048x1024": (1024, 2048)}
LABEL_DIVISOR = 1000


def median_times(runs, repeat: int) -> list[float]:
    """Median wall time of each callable; the callables take turns, so load drifts hit all alike."""
    for run in runs:
        run()  # warm-up (JIT, caches)
    times = [[] for _ in runs]
    for _ in range(repeat):
        for run, samples in zip(runs, times):
            start = time.perf_counter()
            run()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def fastpq_runs(images, categories: Categories):
    """{convention: (NumPy run, torch run)}, each evaluating every image once."""
    gts = [g.astype(np.int32) for g, _, _, _ in images]
    preds = [p.astype(np.int32) for _, _, p, _ in images]
    gsegs = [gs for _, gs, _, _ in images]
    psegs = [ps for _, _, _, ps in images]
    gt_pairs = np.stack([category_instance(g, gs) for g, gs, _, _ in images])
    pred_pairs = np.stack([category_instance(p, ps) for _, _, p, ps in images])
    gt_div = (gt_pairs[..., 0] * LABEL_DIVISOR + gt_pairs[..., 1]).astype(np.int32)
    pred_div = (pred_pairs[..., 0] * LABEL_DIVISOR + pred_pairs[..., 1]).astype(np.int32)

    def coco(gt, pred):
        return lambda: fastpq.evaluate(gt, pred, gt_segments=gsegs, pred_segments=psegs,
                                       categories=categories, workers=1)

    def pairs(gt, pred):
        return lambda: fastpq.evaluate(gt, pred, categories=categories, workers=1)

    def divisor(gt, pred):
        return lambda: fastpq.evaluate(gt, pred, label_divisor=LABEL_DIVISOR,
                                       categories=categories, workers=1)

    def tensors(arrays):
        return [torch.from_numpy(a) for a in arrays]

    return {
        "COCO ids (list)": (coco(gts, preds), coco(tensors(gts), tensors(preds))),
        "pairs (B,H,W,2)": (pairs(gt_pairs, pred_pairs),
                            pairs(torch.from_numpy(gt_pairs), torch.from_numpy(pred_pairs))),
        "divisor (B,H,W)": (divisor(gt_div, pred_div),
                            divisor(torch.from_numpy(gt_div), torch.from_numpy(pred_div))),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7, help="runs of fastpq (median)")
    ap.add_argument("--images", type=int, default=8, help="scenes per size")
    ap.add_argument("--tm-images", type=int, default=2, help="scenes given to torchmetrics")
    ap.add_argument("--tm-repeat", type=int, default=3, help="runs of torchmetrics (median)")
    args = ap.parse_args(argv)

    import torchmetrics

    torch.set_num_threads(1)
    categories = Categories.coco_panoptic()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; "
          f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
          f"(1 thread), torchmetrics {torchmetrics.__version__}, fastpq {fastpq.__version__}")
    print(f"{args.images} generated COCO scenes per size; fastpq medians of {args.repeat} runs, "
          f"torchmetrics {args.tm_images} scenes, medians of {args.tm_repeat} runs\n")
    header = (f"{'size':10s} {'input':16s} {'NumPy ms':>9s} {'torch ms':>9s} {'torch/NumPy':>12s} "
              f"{'torchmetrics ms':>16s} {'tm/torch':>9s}")
    print(header)
    print("-" * len(header))
    for label, (height, width) in SIZES.items():
        images = synthetic.make_dataset(args.images, height=height, width=width,
                                        categories=categories, seed=1)
        t_tm, = median_times([torchmetrics_run(images[:args.tm_images], categories)],
                             args.tm_repeat)
        t_tm /= args.tm_images
        for name, runs in fastpq_runs(images, categories).items():
            t_np, t_torch = (t / len(images) for t in median_times(runs, args.repeat))
            shown = f"{t_tm * 1e3:16.1f}" if name.startswith("pairs") else f"{'':16s}"
            tm = f"{shown} {t_tm / t_torch:9.0f}"
            print(f"{label:10s} {name:16s} {t_np * 1e3:9.3f} {t_torch * 1e3:9.3f} "
                  f"{t_torch / t_np:12.3f} {tm}")
    print("\nper image, one thread; torchmetrics ran on the pairs tensors; tm/torch divides its "
          "time by fastpq's on the same scenes in each encoding")


if __name__ == "__main__":
    main()

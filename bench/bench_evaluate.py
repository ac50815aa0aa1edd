"""Per-image cost of fastpq.evaluate against the reference's per-image core and torchmetrics.

    python bench/bench_evaluate.py [--repeat 7] [--images 8] [--no-torchmetrics]

All on the same generated arrays, in one run, medians of --repeat runs:

* fastpq.evaluate (one thread) on COCO id maps + segments_info;
* panopticapi's ``pq_compute_single_core`` with the PNG decode taken out (``Image.open`` and
  ``rgb2id`` patched to hand it the same arrays), i.e. its np.unique histogram and matcher;
* torchmetrics' PanopticQuality on the same scenes as (H, W, 2) [category, instance] tensors;
* the pair-histogram kernel alone, in ns per pixel on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform

import numpy as np

import fastpq
from fastpq.datasets import synthetic
from fastpq.core.categories import Categories
from fastpq.kernels.pairs import pair_counts

from common import median_time, torchmetrics_run

SIZES = {"640x480": (480, 640), "1024x2048": (1024, 2048)}


def reference_core(images, categories):
    """panopticapi's per-image code on in-memory arrays (decode patched out)."""
    import panopticapi.evaluation as ev

    arrays = {}
    pairs = []
    for k, (g, gs, p, ps) in enumerate(images):
        arrays[f"gt/{k}"], arrays[f"pred/{k}"] = g, p
        gs = [dict(s, area=int((g == s["id"]).sum())) for s in gs]
        pairs.append(({"image_id": k, "file_name": str(k), "segments_info": gs},
                      {"image_id": k, "file_name": str(k), "segments_info": ps}))
    cats = {c["id"]: c for c in categories}

    class _Image:
        @staticmethod
        def open(path):
            folder, name = path.rsplit("/", 1)
            return arrays[f"{folder}/{name}"]

    def run():
        saved = ev.Image, ev.rgb2id
        ev.Image, ev.rgb2id = _Image, (lambda a: a)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                ev.pq_compute_single_core(0, pairs, "gt", "pred", cats)
        finally:
            ev.Image, ev.rgb2id = saved

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--no-torchmetrics", action="store_true")
    args = ap.parse_args(argv)

    cats = Categories.coco_panoptic()
    cat_list = cats.to_coco()
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"numpy {np.__version__}, fastpq {fastpq.__version__}")
    rows = []
    for label, (h, w) in SIZES.items():
        images = synthetic.make_dataset(args.images, height=h, width=w, categories=cats, seed=1)
        gts, gss, preds, pss = map(list, zip(*images))
        n = len(images)
        t_fast = median_time(lambda: fastpq.evaluate(gts, preds, gt_segments=gss,
                                                     pred_segments=pss, categories=cats,
                                                     workers=1), args.repeat) / n
        t_kernel = median_time(lambda: [pair_counts(g, p) for g, p in zip(gts, preds)],
                               args.repeat) / n
        t_ref = median_time(reference_core(images, cat_list), args.repeat) / n
        t_tm = None
        if not args.no_torchmetrics:
            try:
                few = images[:2]
                t_tm = median_time(torchmetrics_run(few, cats), max(1, args.repeat // 3)) / len(few)
            except ImportError:
                pass
        rows.append((label, t_fast, t_kernel / (h * w) * 1e9, t_ref, t_tm))

    print(f"\n{'size':10s} {'fastpq ms':>10s} {'kernel ns/px':>13s} {'reference ms':>13s} "
          f"{'x ref':>7s} {'torchmetrics ms':>16s} {'x tm':>8s}")
    for label, t_fast, ns_px, t_ref, t_tm in rows:
        tm = f"{t_tm * 1e3:16.1f} {t_tm / t_fast:8.0f}" if t_tm else f"{'-':>16s} {'-':>8s}"
        print(f"{label:10s} {t_fast * 1e3:10.3f} {ns_px:13.3f} {t_ref * 1e3:13.2f} "
              f"{t_ref / t_fast:7.1f} {tm}")
    print("\nper image, one thread, decode excluded; medians of", args.repeat, "runs")


if __name__ == "__main__":
    main()

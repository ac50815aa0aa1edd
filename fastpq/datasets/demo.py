"""The README demo: a generated COCO-format dataset, evaluated by fastpq and by the reference."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time

from fastpq.datasets import synthetic
from fastpq.io.coco import pq_compute


def run_demo(n_images: int = 200, height: int = 480, width: int = 640, out=None, seed: int = 0) -> int:
    root = out or tempfile.mkdtemp(prefix="fastpq-demo-")
    try:
        print(f"Generating {n_images} COCO-format images ({width}x{height}, crowd, void, missed, "
              f"merged, spurious and misclassified segments) in {root} ...")
        info = synthetic.write_coco_dataset(root, n_images, height=height, width=width, seed=seed)
        start = time.perf_counter()
        tiny = synthetic.write_coco_dataset(os.path.join(root, "warm-up"), 2, height=48,
                                            width=64, seed=seed)
        with contextlib.redirect_stdout(io.StringIO()):
            pq_compute(tiny["gt_json"], tiny["pred_json"], progress=False)
        print(f"fastpq start-up: {time.perf_counter() - start:.2f} s, once per process (Numba "
              "compiles the kernels on the first run after installing, ~15 s, and caches them; "
              "later processes load them in about half a second)")
        print()
        start = time.perf_counter()
        ours = pq_compute(info["gt_json"], info["pred_json"], progress=False, return_result=True)
        t_ours = time.perf_counter() - start
        print()
        print("\n".join(ours.class_table().splitlines()[:7]))
        print(f"  ... {len(ours.per_class) - 5} more classes (fastpq eval --per-class prints all)")
        print()
        try:
            from panopticapi.evaluation import pq_compute as reference
        except ImportError:
            print(f"fastpq: {t_ours:.3f} s for {n_images} images. Install the reference "
                  "(pip install --no-deps panopticapi-lite) to compare.")
            return 0
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ref = reference(info["gt_json"], info["pred_json"])
        t_ref = time.perf_counter() - start
        diff = max(abs(getattr(ours.split(s), k) - ref[s][k])
                   for s in ("All", "Things", "Stuff") for k in ("pq", "sq", "rq"))
        same_n = all(ours.split(s).n == ref[s]["n"] for s in ("All", "Things", "Stuff"))
        print(f"{'':24s}{'time':>9s}   images/s")
        print(f"{'fastpq.pq_compute':24s}{t_ours:8.3f}s {n_images / t_ours:9.0f}")
        print(f"{'panopticapi pq_compute':24s}{t_ref:8.3f}s {n_images / t_ref:9.0f}")
        print(f"speed-up {t_ref / t_ours:.1f}x on {os.cpu_count()} cores; largest difference in "
              f"PQ/SQ/RQ {diff:.1e}, same N: {same_n}")
        return 0 if diff <= 1e-12 and same_n else 1
    finally:
        if out is None:
            shutil.rmtree(root, ignore_errors=True)

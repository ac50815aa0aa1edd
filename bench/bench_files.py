"""COCO panoptic files (JSON + PNG folders): fastpq against panopticapi, hotcoco and vernier.

    python bench/bench_files.py [--images 500] [--cityscapes 12] [--repeat 3] [--root DIR]
                                [--baseline CHECKOUT]

Writes a generated COCO-like folder (640x480) and a Cityscapes-like one (1024x2048), then runs
each tool on the same files in a fresh subprocess, interleaved, ``--repeat`` rounds; prints the
median wall time of the evaluation call (imports excluded; the import time is its own column),
images/s, and the peak resident memory of the whole process tree (sampled every 5 ms, children
included — panopticapi uses a process pool). Every tool's All-PQ is printed so a mismatch shows.

* fastpq:      fastpq.pq_compute (threads = cores), the first call in a fresh process: includes
               Numba's start-up (about 0.5 s once per process: its compiler registries, the SciPy
               import of its BLAS probe when SciPy is installed, loading the cached kernels)
* fastpq-warm:  the second call in the same process (a training job, a notebook, a service);
               its peak memory includes the first call
* panopticapi: panopticapi.evaluation.pq_compute (the reference; one process per core)
* hotcoco:     hotcoco.panoptic.pq_compute
* fastpq-1thread, hotcoco-1thread: one thread each (fastpq warm, workers=1; hotcoco with
               RAYON_NUM_THREADS=1): the speed per core
* fastpq@base, fastpq-warm@base, fastpq-1thread@base (with ``--baseline CHECKOUT``): the same
               runs importing fastpq from another checkout of this repository (``git worktree add
               ../base REV``), so a change is compared with what it replaces in the same
               interleaved run; the checkout needs ``fastpq/kernels`` (a link to ../kernels)
* vernier:     vernier.panoptic, parity_mode="strict"; it takes decoded arrays, so its time
               includes decoding every PNG with its own decoder (vernier.panoptic.decode_label_map_png)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile

from common import run_python

RUNNERS = {
    "fastpq": """
import fastpq
t = imported = time.perf_counter()
r = fastpq.pq_compute(GT, PRED, verbose=False, progress=False)
dt = time.perf_counter() - t
pq = r["All"]["pq"]
""",
    "fastpq-warm": """
import fastpq
imported = time.perf_counter()
fastpq.pq_compute(GT, PRED, verbose=False, progress=False)  # Numba start-up, page cache
t = time.perf_counter()
r = fastpq.pq_compute(GT, PRED, verbose=False, progress=False)
dt = time.perf_counter() - t
pq = r["All"]["pq"]
""",
    "panopticapi": """
from panopticapi.evaluation import pq_compute
t = imported = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    r = pq_compute(GT, PRED)
dt = time.perf_counter() - t
pq = r["All"]["pq"]
""",
    "hotcoco": """
from hotcoco.panoptic import pq_compute
t = imported = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    r = pq_compute(GT, PRED)
dt = time.perf_counter() - t
pq = r["All"]["pq"]
""",
    "fastpq-1thread": """
import fastpq
imported = time.perf_counter()
fastpq.pq_compute(GT, PRED, verbose=False, progress=False, workers=1)
t = time.perf_counter()
r = fastpq.pq_compute(GT, PRED, verbose=False, progress=False, workers=1)
dt = time.perf_counter() - t
pq = r["All"]["pq"]
""",
    "vernier": """
import vernier.panoptic as vp
t = imported = time.perf_counter()
gt = json.load(open(GT)); pred = json.load(open(PRED))
gdir, pdir = GT[:-5], PRED[:-5]
maps = {a["image_id"]: vp.decode_label_map_png(os.path.join(gdir, a["file_name"])) for a in gt["annotations"]}
pmaps = {a["image_id"]: vp.decode_label_map_png(os.path.join(pdir, a["file_name"])) for a in pred["annotations"]}
ds = vp.Dataset.from_arrays(maps, json.dumps({str(a["image_id"]): a["segments_info"] for a in gt["annotations"]}).encode(),
                            json.dumps(gt["categories"]).encode())
pr = vp.Predictions.from_arrays(pmaps, json.dumps({str(a["image_id"]): a["segments_info"] for a in pred["annotations"]}).encode())
s = vp.Evaluator(parity_mode="strict").evaluate(ds, pr)
dt = time.perf_counter() - t
pq = s.pq
""",
}

RUNNERS["hotcoco-1thread"] = RUNNERS["hotcoco"]
#: Environment of a tool's subprocess, over this process's.
ENVIRONMENT = {"hotcoco-1thread": {"RAYON_NUM_THREADS": "1"}}  # hotcoco's threads are rayon's

PRELUDE = "import time\nstarted = time.perf_counter()\nimport contextlib, io, json, os\nGT, PRED = {gt!r}, {pred!r}\n"
EPILOGUE = ("\nprint('RESULT', json.dumps({'seconds': dt, 'pq': float(pq), "
            "'import': imported - started}))\n")


BASELINE_SUFFIX = "@base"


def add_baseline(checkout):
    """Register ``fastpq*@base`` tools that import fastpq from another checkout."""
    checkout = os.path.abspath(checkout)
    if not os.path.isdir(os.path.join(checkout, "fastpq", "kernels")):
        sys.exit(f"--baseline {checkout}: no fastpq/kernels there; create it with "
                 f"ln -s ../kernels {os.path.join(checkout, 'fastpq', 'kernels')}")
    added = []
    for tool in ("fastpq", "fastpq-warm", "fastpq-1thread"):
        name = tool + BASELINE_SUFFIX
        RUNNERS[name] = RUNNERS[tool]
        path = os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))
        ENVIRONMENT[name] = {**ENVIRONMENT.get(tool, {}), "PYTHONPATH": path}
        added.append(name)
    return added


def run_one(tool, gt, pred):
    code = PRELUDE.format(gt=gt, pred=pred) + RUNNERS[tool] + EPILOGUE
    try:
        return run_python(code, ENVIRONMENT.get(tool, {}))
    except RuntimeError as error:
        raise RuntimeError(f"{tool} failed: {error}") from None


def available(tool):
    tool = tool.removesuffix(BASELINE_SUFFIX)
    module = {"fastpq": "fastpq", "fastpq-warm": "fastpq", "fastpq-1thread": "fastpq",
              "panopticapi": "panopticapi.evaluation", "hotcoco": "hotcoco.panoptic",
              "hotcoco-1thread": "hotcoco.panoptic", "vernier": "vernier.panoptic"}[tool]
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def bench(label, info, tools, repeat):
    gt, pred, n = info["gt_json"], info["pred_json"], info["n_images"]
    runs = {t: [] for t in tools}
    for _ in range(repeat):
        for tool in tools:  # interleaved rounds
            runs[tool].append(run_one(tool, gt, pred))
    print(f"\n{label}: {n} images")
    print(f"{'tool':16s} {'median s':>9s} {'images/s':>9s} {'x ref':>7s} {'peak MB':>8s} "
          f"{'import s':>8s}  All-PQ")
    t_ref = statistics.median(r["seconds"] for r in runs["panopticapi"]) if "panopticapi" in runs else None
    for tool, rs in runs.items():
        t = statistics.median(r["seconds"] for r in rs)
        peak = max(r["peak_mb"] for r in rs)
        x = f"{t_ref / t:7.1f}" if t_ref else f"{'-':>7s}"
        warm = tool.removesuffix(BASELINE_SUFFIX) in ("fastpq-warm", "fastpq-1thread")
        imp = "-" if warm else f"{statistics.median(r['import'] for r in rs):.3f}"
        print(f"{tool:16s} {t:9.3f} {n / t:9.0f} {x} {peak:8.0f} {imp:>8s}  {rs[0]['pq']:.15f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--cityscapes", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--root", default=None, help="keep the generated folders here")
    ap.add_argument("--baseline", default=None, metavar="CHECKOUT",
                    help="also run fastpq from this checkout (tools named ...@base)")
    ap.add_argument("--tools", default="fastpq,fastpq-warm,panopticapi,hotcoco,vernier,"
                                       "fastpq-1thread,hotcoco-1thread")
    args = ap.parse_args(argv)

    from fastpq.datasets import synthetic

    tools = [t for t in args.tools.split(",") if available(t)]
    if args.baseline:
        base = add_baseline(args.baseline)
        tools = [x for t in tools for x in ([t, t + BASELINE_SUFFIX] if t + BASELINE_SUFFIX in base else [t])]
    root = args.root or tempfile.mkdtemp(prefix="fastpq-bench-")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    coco = synthetic.write_coco_dataset(os.path.join(root, "coco"), args.images, seed=1)
    bench("COCO-like 640x480", coco, tools, args.repeat)
    if args.cityscapes:
        city = synthetic.write_coco_dataset(os.path.join(root, "cityscapes"), args.cityscapes,
                                            height=1024, width=2048, categories="cityscapes",
                                            id_style="divisor", seed=2)
        bench("Cityscapes-like 1024x2048", city, tools, args.repeat)


if __name__ == "__main__":
    main()

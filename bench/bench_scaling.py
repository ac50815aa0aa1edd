"""Scaling with cores on COCO panoptic files: fastpq against hotcoco and panopticapi, fresh process
and warm, one thread and every thread, peak memory, the GIL-held share of a file image, and
images/s against threads with an Amdahl projection to 16 cores.

    python bench/bench_scaling.py [--images 300,5000] [--cityscapes 12] [--repeat 3]
                                  [--repeat-large 1] [--tools fastpq,hotcoco,panopticapi]
                                  [--generator bench|fastpq] [--root DIR] [--quick]

Data
----
By default the files come from this script's own generator, written independently of
``fastpq.datasets.synthetic`` (issue 14: the independent checks use other generators), so fastpq
is not timed only on the maps its own generator draws:

* COCO-like: the sizes of COCO val images (640x480, 640x427, 480x640, ...); 1 to 5 stuff regions
  from a weighted Voronoi (power) diagram drawn on an 8-pixel grid; a negative-binomial number of
  things (mean 8, a long tail to 40), ellipses and boxes of log-uniform area, painted back to front;
  a crowd region in about one image in six; void lines along about half of the borders and
  void blobs; borders made ragged by per-pixel noise (stuff: pixels copied from a random
  neighbour up to 3 px away; things: a noisy radius). Ids are random in [1, 2**24) as COCO's.
* Predictions replay the scene with errors: stuff seeds moved, things moved and rescaled, about
  12% of things missed, some categories swapped, spurious small things, a crowd region predicted
  as one to three ordinary instances, and the border noise drawn again.
* Cityscapes-like: 1024x2048, the 19 Cityscapes classes, more stuff regions and many small
  things, ids in the divisor convention (instance k of class c: c * 1000 + k; stuff and crowd: c).

``--generator fastpq`` writes the sets with ``fastpq.datasets.synthetic.write_coco_dataset``
instead. The folders are cached under ``--root`` (reused when the same set was written before).

Timing
------
Every tool runs in a fresh ``python -c`` subprocess (``common.run_python``), rounds interleaved
(round 1 of every tool, then round 2, ...), medians over ``--repeat`` rounds (``--repeat-large``
for sets over 1000 images). One subprocess gives:

* fresh s: from the spawn of the interpreter to the end of the first evaluation call (start-up,
  imports, JSON, every image: what ``python my_eval.py`` costs); import s is its import part;
* warm s: a second call in the same process (a training job evaluating every epoch);
* peak MB: the peak resident memory of the process tree over its life (both calls; children
  included, which panopticapi's process pool needs), sampled every 5 ms from /proc.

Threads: fastpq ``workers=1`` or ``workers=None`` (every core); hotcoco ``RAYON_NUM_THREADS=1``,
or unset (every core); panopticapi runs only with its default one process per core (it has no
warm state, so it has no warm column). "vs hotcoco" is hotcoco's time over the tool's at the same
thread count, fresh and warm (above 1: faster than hotcoco); "vs papi" is panopticapi's fresh time
(one process per core) over the tool's fresh time. All-PQ is printed for every tool, and a value
that differs from panopticapi's by more than 1e-12 is marked.

GIL-held share of a file image
------------------------------
fastpq scores the smallest COCO-like set with ``workers=1`` in one warm process, repeated for a
few seconds. Two independent measurements of the share of that thread's time during which it
holds the GIL (the part a second thread cannot overlap, the serial share of Amdahl's law):

1. py-spy (``pip install py-spy``): ``py-spy record --pid`` attached after the warm-up call, once
   counting every sample in which the thread is running (not idle) and once with ``--gil``, which
   keeps only samples taken while the thread holds the GIL; only stacks inside ``pq_compute``
   count. Each run's samples are divided by that run's duration: py-spy pauses the process to
   read a stack, and it reads (and pauses for) every stack in the plain run but only the
   GIL-holding ones with ``--gil``, so the two runs stretch differently. share = (GIL-holding
   samples per second of the ``--gil`` run) / (running samples per second of the plain run);
   the ms per image that hold the GIL are that share of the unprofiled warm time per image.
2. A probe thread: it sleeps for random (exponential) intervals inside one GIL-free compiled call
   (Numba ``nogil``: ``nanosleep``, then ``clock_gettime`` on waking, both through ctypes), and
   on return measures how long it waited to take the GIL back. Random arrivals see time averages
   (PASTA), so the fraction of wake-ups that had to wait is the fraction of time another thread
   held the GIL. The same probe while the main thread idles gives the baseline wait
   distribution; a wake-up counts as waiting when it waited longer than ``tau`` (10 and 50 us
   shown), corrected by the baseline's rate. Holds shorter than ``tau`` are missed, so this is a
   lower bound; the probe's own GIL use (microseconds per wake-up) slows the worker slightly,
   its time is shown.

Scaling
-------
images/s of the warm call of the largest COCO-like set at 1 thread and at every thread, the
speed-up, the serial share e that the speed-up implies (Karp-Flatt: e = (1/S - 1/p)/(1 - 1/p)),
and images/s at 16 cores PROJECTED by Amdahl's law, S(16) = 1 / (s + (1 - s)/16), from fastpq's
measured GIL-held share and from each tool's Karp-Flatt share. On a machine whose two CPUs are
hyperthreads of one core the measured speed-up also includes the contention of the shared core
(``bench/bench_cores.py``), so the Karp-Flatt share overstates the serial share there.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import run_python

# ---------------------------------------------------------------------------------------------
# Data: an independent COCO-like generator
# ---------------------------------------------------------------------------------------------

#: (height, width) of COCO val images, the common ones more than once.
COCO_SIZES = [(480, 640), (480, 640), (427, 640), (640, 480), (425, 640), (640, 427),
              (428, 640), (512, 640), (360, 640), (480, 640)]

#: Cityscapes classes as COCO panoptic categories (id, name, isthing).
CITYSCAPES_CLASSES = [
    (7, "road", 0), (8, "sidewalk", 0), (11, "building", 0), (12, "wall", 0), (13, "fence", 0),
    (17, "pole", 0), (19, "traffic light", 0), (20, "traffic sign", 0), (21, "vegetation", 0),
    (22, "terrain", 0), (23, "sky", 0), (24, "person", 1), (25, "rider", 1), (26, "car", 1),
    (27, "truck", 1), (28, "bus", 1), (31, "train", 1), (32, "motorcycle", 1), (33, "bicycle", 1),
]

#: Scene parameters per kind of set.
KINDS = {
    "coco": dict(stuff=(1, 5), things_mean=8.0, things_max=40, area=(5e-4, 0.25),
                 crowd=1 / 6, void_blobs=(0, 2), id_style="coco"),
    "cityscapes": dict(stuff=(6, 10), things_mean=22.0, things_max=60, area=(1e-4, 0.02),
                       crowd=0.3, void_blobs=(0, 3), id_style="divisor"),
}


def coco_categories() -> list[dict]:
    """The 133 COCO panoptic categories (the data fastpq ships; only the list, no generator)."""
    from fastpq.core.categories import Categories

    return Categories.coco_panoptic().to_coco()


def cityscapes_categories() -> list[dict]:
    return [{"id": c, "name": n, "isthing": t, "supercategory": n, "color": [c, c, c]}
            for c, n, t in CITYSCAPES_CLASSES]


def draw_scene(rng, height, width, kind, stuff_ids, thing_ids) -> dict:
    """A scene description: stuff seeds (a power diagram) and things (painted in order)."""
    p = KINDS[kind]
    n_stuff = int(rng.integers(p["stuff"][0], p["stuff"][1] + 1))
    stuff_cats = rng.choice(stuff_ids, size=min(n_stuff, len(stuff_ids)), replace=False)
    stuff = [dict(category=int(c), y=rng.uniform(0, height), x=rng.uniform(0, width),
                  weight=rng.uniform(0, 0.3) * height * width) for c in stuff_cats]
    n_things = min(int(rng.negative_binomial(2, 2 / (2 + p["things_mean"]))), p["things_max"])
    things = [draw_thing(rng, height, width, p["area"], int(rng.choice(thing_ids)), False)
              for _ in range(n_things)]
    if rng.random() < p["crowd"]:
        lo, hi = p["area"]
        crowd = draw_thing(rng, height, width, (hi / 4, hi), int(rng.choice(thing_ids)), True)
        things.insert(int(rng.integers(0, len(things) + 1)), crowd)
    voids = [draw_thing(rng, height, width, (1e-3, 2e-2), 0, False)
             for _ in range(int(rng.integers(p["void_blobs"][0], p["void_blobs"][1] + 1)))]
    return dict(stuff=stuff, things=things, voids=voids)


def draw_thing(rng, height, width, area_range, category, crowd) -> dict:
    area = math.exp(rng.uniform(math.log(area_range[0]), math.log(area_range[1]))) * height * width
    return dict(category=category, crowd=crowd, y=rng.uniform(0, height), x=rng.uniform(0, width),
                area=area, aspect=math.exp(rng.normal(0, 0.5)), angle=rng.uniform(0, math.pi),
                box=bool(rng.random() < 0.3))


def perturb_scene(rng, scene, height, width, stuff_ids, thing_ids) -> dict:
    """A plausible prediction of ``scene``: moved, rescaled, missed, swapped and spurious."""
    stuff = []
    for s in scene["stuff"]:
        if rng.random() < 0.05 and len(scene["stuff"]) > 1:
            continue  # a stuff region missed: its neighbours take it
        category = int(rng.choice(stuff_ids)) if rng.random() < 0.08 else s["category"]
        stuff.append({**s, "category": category, "y": s["y"] + rng.normal(0, 0.04 * height),
                      "x": s["x"] + rng.normal(0, 0.04 * width)})
    if len({s["category"] for s in stuff}) < len(stuff):  # one segment per stuff class
        seen = set()
        stuff = [s for s in stuff if not (s["category"] in seen or seen.add(s["category"]))]
    things = []
    for t in scene["things"]:
        if t["crowd"]:  # predicted as one to three ordinary instances
            for _ in range(int(rng.integers(1, 4))):
                things.append({**t, "crowd": False, "area": t["area"] / 2,
                               "y": t["y"] + rng.normal(0, math.sqrt(t["area"]) / 3),
                               "x": t["x"] + rng.normal(0, math.sqrt(t["area"]) / 3)})
            continue
        if rng.random() < 0.12:
            continue  # missed
        radius = math.sqrt(t["area"])
        category = int(rng.choice(thing_ids)) if rng.random() < 0.06 else t["category"]
        things.append({**t, "category": category, "y": t["y"] + rng.normal(0, 0.08 * radius),
                       "x": t["x"] + rng.normal(0, 0.08 * radius),
                       "area": t["area"] * math.exp(rng.normal(0, 0.2)),
                       "angle": t["angle"] + rng.normal(0, 0.1)})
    for _ in range(int(rng.poisson(1.5))):
        things.insert(int(rng.integers(0, len(things) + 1)),
                      draw_thing(rng, height, width, (2e-4, 1e-2), int(rng.choice(thing_ids)), False))
    return dict(stuff=stuff, things=things, voids=[])


def render(rng, scene, height, width, void_border: float):
    """Label map (int32; 0 void, k >= 1 segment k - 1 of the returned list) and segment list."""
    segments = []
    grid = 8
    gy = (np.arange(0, height, grid) + grid / 2)[:, None, None]
    gx = (np.arange(0, width, grid) + grid / 2)[None, :, None]
    if scene["stuff"]:
        sy = np.array([s["y"] for s in scene["stuff"]])
        sx = np.array([s["x"] for s in scene["stuff"]])
        sw = np.array([s["weight"] for s in scene["stuff"]])
        coarse = np.argmin((gy - sy) ** 2 + (gx - sx) ** 2 - sw, axis=2).astype(np.int32) + 1
        labels = np.repeat(np.repeat(coarse, grid, 0), grid, 1)[:height, :width]
        labels = ragged(rng, labels, 3, 0.35)
        segments += [dict(category=s["category"], crowd=False) for s in scene["stuff"]]
    else:
        labels = np.zeros((height, width), np.int32)
    for t in scene["things"]:
        if paint(rng, labels, t, len(segments) + 1):
            segments.append(dict(category=t["category"], crowd=t["crowd"]))
    for v in scene["voids"]:
        paint(rng, labels, v, 0)
    if void_border:
        for axis in (0, 1):
            edge = np.zeros(labels.shape, bool)
            if axis == 0:
                edge[1:] = labels[1:] != labels[:-1]
            else:
                edge[:, 1:] = labels[:, 1:] != labels[:, :-1]
            labels[edge & (rng.random(labels.shape, np.float32) < void_border)] = 0
    return labels, segments


def ragged(rng, labels, reach: int, fraction: float):
    """Each pixel with probability ``fraction`` takes the label of a random pixel up to ``reach``
    away: ragged borders (a no-op inside a region)."""
    h, w = labels.shape
    n = int(fraction * h * w)
    flat = rng.integers(0, h * w, n)
    y = np.clip(flat // w + rng.integers(-reach, reach + 1, n), 0, h - 1)
    x = np.clip(flat % w + rng.integers(-reach, reach + 1, n), 0, w - 1)
    out = labels.copy()
    out.reshape(-1)[flat] = labels[y, x]
    return out


def paint(rng, labels, t, value) -> bool:
    """Paint ellipse or box ``t`` with ``value``, its border noisy; False when off the image."""
    h, w = labels.shape
    a = math.sqrt(t["area"] * t["aspect"] / math.pi)
    b = math.sqrt(t["area"] / t["aspect"] / math.pi)
    reach = max(a, b) * 1.2 + 2
    y0, y1 = max(0, int(t["y"] - reach)), min(h, int(t["y"] + reach) + 1)
    x0, x1 = max(0, int(t["x"] - reach)), min(w, int(t["x"] + reach) + 1)
    if y0 >= y1 or x0 >= x1:
        return False
    yy = np.arange(y0, y1)[:, None] - t["y"]
    xx = np.arange(x0, x1)[None, :] - t["x"]
    c, s = math.cos(t["angle"]), math.sin(t["angle"])
    u, v = (xx * c + yy * s) / max(a, 0.5), (-xx * s + yy * c) / max(b, 0.5)
    noise = 1 + 0.25 * (rng.random((y1 - y0, x1 - x0), np.float32) - 0.5)
    inside = (np.maximum(abs(u), abs(v)) if t["box"] else np.sqrt(u * u + v * v)) < noise
    if not inside.any():
        return False
    labels[y0:y1, x0:x1][inside] = value
    return True


def assign_ids(rng, segments, categories, id_style):
    """Segment ids: random distinct in [1, 2**24) (coco), or c * 1000 + k / c (divisor)."""
    if id_style == "coco":
        ids = np.unique(rng.integers(1, 2 ** 24, len(segments) + 16))
        rng.shuffle(ids)
        return [int(i) for i in ids[:len(segments)]]
    isthing = {c["id"]: c["isthing"] for c in categories}
    counts, ids = {}, []
    for s in segments:
        if isthing[s["category"]] and not s["crowd"]:
            k = counts.get(s["category"], 0)
            counts[s["category"]] = k + 1
            ids.append(s["category"] * 1000 + k)
        else:
            ids.append(s["category"])
    return ids


def merge_equal_ids(labels, segments, ids):
    """Segments sharing an id (divisor style: stuff or crowd of one class) become one."""
    first = {}
    remap = np.arange(len(segments) + 1, dtype=np.int32)
    keep = []
    for k, i in enumerate(ids):
        if i in first:
            remap[k + 1] = first[i]
        else:
            first[i] = k + 1
            keep.append(k)
    return remap[labels], [segments[k] for k in keep], [ids[k] for k in keep], remap


def annotation(labels, segments, ids, image_id, file_name, gt: bool):
    """The segments_info of a label map (areas and boxes counted on the map) and its id map."""
    n = len(segments)
    area = np.bincount(labels.reshape(-1), minlength=n + 1)
    h, w = labels.shape
    # which labels each row and each column holds: one bincount each over (row or column, label)
    rows = np.bincount((np.arange(h, dtype=np.int64)[:, None] * (n + 1) + labels).reshape(-1),
                       minlength=h * (n + 1)).reshape(h, n + 1) > 0
    cols = np.bincount((np.arange(w, dtype=np.int64)[None, :] * (n + 1) + labels).reshape(-1),
                       minlength=w * (n + 1)).reshape(w, n + 1) > 0
    info, table = [], np.zeros(n + 1, np.int64)
    for k, (s, i) in enumerate(zip(segments, ids), start=1):
        if area[k] == 0:
            continue  # painted over entirely
        table[k] = i
        ys, xs = np.flatnonzero(rows[:, k]), np.flatnonzero(cols[:, k])
        entry = {"id": i, "category_id": s["category"], "area": int(area[k]),
                 "bbox": [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]}
        if gt:
            entry["iscrowd"] = int(s["crowd"])
        info.append(entry)
    return {"image_id": image_id, "file_name": file_name, "segments_info": info}, table[labels]


def write_png(path, ids):
    from PIL import Image

    # id = R + 256 G + 256**2 B: the low three bytes of the little-endian uint32
    rgb = np.ascontiguousarray(ids.astype("<u4").view(np.uint8).reshape(*ids.shape, 4)[..., :3])
    Image.fromarray(rgb).save(path)  # Pillow's defaults, as panopticapi's converters write


def write_image(args):
    """Generate and write image ``index`` of a set: (image, gt annotation, pred annotation)."""
    root, kind, seed, index, categories = args
    rng = np.random.default_rng([seed, index])
    if kind == "coco":
        height, width = COCO_SIZES[int(rng.integers(len(COCO_SIZES)))]
    else:
        height, width = 1024, 2048
    stuff_ids = [c["id"] for c in categories if not c["isthing"]]
    thing_ids = [c["id"] for c in categories if c["isthing"]]
    id_style = KINDS[kind]["id_style"]
    scene = draw_scene(rng, height, width, kind, stuff_ids, thing_ids)
    prediction = perturb_scene(rng, scene, height, width, stuff_ids, thing_ids)
    name = f"{index:012d}.png"
    out = []
    for role, sc, void_border in (("gt", scene, 0.5), ("pred", prediction, 0.1)):
        labels, segments = render(rng, sc, height, width, void_border)
        ids = assign_ids(rng, segments, categories, id_style)
        if id_style == "divisor":
            labels, segments, ids, _ = merge_equal_ids(labels, segments, ids)
        ann, id_map = annotation(labels, segments, ids, index, name, role == "gt")
        write_png(os.path.join(root, role, name), id_map)
        out.append(ann)
    image = {"id": index, "file_name": name.replace(".png", ".jpg"), "height": height,
             "width": width}
    return image, out[0], out[1]


def write_bench_dataset(root, n_images, kind="coco", seed=1, workers=None) -> dict:
    """Write a set of this script's generator as COCO panoptic files under ``root``
    (``gt.json``, ``gt/``, ``pred.json``, ``pred/``); returns the paths as
    ``fastpq.datasets.synthetic.write_coco_dataset`` does."""
    categories = coco_categories() if kind == "coco" else cityscapes_categories()
    for role in ("gt", "pred"):
        os.makedirs(os.path.join(root, role), exist_ok=True)
    jobs = [(root, kind, seed, k, categories) for k in range(n_images)]
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        written = list(pool.map(write_image, jobs, chunksize=16))
    images, gt_anns, pred_anns = (list(x) for x in zip(*written))
    paths = {"gt_json": os.path.join(root, "gt.json"), "pred_json": os.path.join(root, "pred.json"),
             "gt_folder": os.path.join(root, "gt"), "pred_folder": os.path.join(root, "pred"),
             "n_images": n_images}
    with open(paths["gt_json"], "w") as f:
        json.dump({"images": images, "annotations": gt_anns, "categories": categories}, f)
    with open(paths["pred_json"], "w") as f:
        json.dump({"annotations": pred_anns}, f)
    return paths


def dataset(root, generator, kind, n_images, seed) -> dict:
    """The set written once under ``root`` (reused when its marker file matches)."""
    key = dict(generator=generator, kind=kind, n_images=n_images, seed=seed)
    folder = os.path.join(root, f"{generator}-{kind}-{n_images}-seed{seed}")
    marker = os.path.join(folder, "written.json")
    if os.path.exists(marker):
        with open(marker) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            return saved["paths"]
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    if generator == "bench":
        paths = write_bench_dataset(folder, n_images, kind, seed)
    else:
        from fastpq.datasets import synthetic

        if kind == "coco":
            paths = synthetic.write_coco_dataset(folder, n_images, seed=seed)
        else:
            paths = synthetic.write_coco_dataset(folder, n_images, height=1024, width=2048,
                                                 categories="cityscapes", id_style="divisor",
                                                 seed=seed)
    print(f"  wrote {n_images} {kind}-like images ({generator} generator) in "
          f"{time.perf_counter() - start:.0f} s: {folder}", file=sys.stderr)
    with open(marker, "w") as f:
        json.dump({"key": key, "paths": paths}, f)
    return paths


# ---------------------------------------------------------------------------------------------
# Timing: one subprocess per (tool, threads, round)
# ---------------------------------------------------------------------------------------------

CHILD = """
import time
started = time.perf_counter()
import contextlib, io, json, os
GT, PRED, THREADS, WARM = {gt!r}, {pred!r}, {threads!r}, {warm!r}
{setup}
imported = time.perf_counter()
t = time.perf_counter()
pq = call()
first_end = time.perf_counter()
second = None
if WARM:
    t2 = time.perf_counter()
    call()
    second = time.perf_counter() - t2
print('RESULT', json.dumps(dict(import_s=imported - started, first=first_end - t,
                               first_end=first_end, second=second, pq=float(pq))))
"""

SETUP = {
    "fastpq": """
import fastpq
def call():
    return fastpq.pq_compute(GT, PRED, verbose=False, progress=False, workers=THREADS)["All"]["pq"]
""",
    "hotcoco": """
from hotcoco.panoptic import pq_compute
def call():
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(GT, PRED)["All"]["pq"]
""",
    "panopticapi": """
from panopticapi.evaluation import pq_compute
def call():
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(GT, PRED)["All"]["pq"]
""",
}

MODULES = {"fastpq": "fastpq", "hotcoco": "hotcoco.panoptic",
           "panopticapi": "panopticapi.evaluation"}


def available(tool) -> bool:
    try:
        __import__(MODULES[tool])
        return True
    except ImportError:
        return False


def run_tool(tool, threads, paths) -> dict:
    """One fresh subprocess of ``tool`` at ``threads`` (None: every core) on ``paths``."""
    warm = tool != "panopticapi"
    fastpq_threads = threads if tool == "fastpq" else None
    code = CHILD.format(gt=paths["gt_json"], pred=paths["pred_json"], threads=fastpq_threads,
                        warm=warm, setup=SETUP[tool])
    env, unset = {}, ("RAYON_NUM_THREADS",)
    if tool == "hotcoco" and threads is not None:
        env["RAYON_NUM_THREADS"] = str(threads)  # hotcoco's threads are rayon's
    try:
        r = run_python(code, env, unset)
    except RuntimeError as error:
        raise RuntimeError(f"{tool} ({threads or 'all'} threads) failed: {error}") from None
    r["fresh"] = r["first_end"] - r["spawned"]
    return r


def variants(tools, thread_counts):
    """(tool, threads) in run order; panopticapi only at its default (one process per core)."""
    out = []
    for tool in tools:
        for threads in ([None] if tool == "panopticapi" else thread_counts):
            out.append((tool, threads))
    return out


def time_set(label, paths, tools, thread_counts, repeat) -> dict:
    runs = {v: [] for v in variants(tools, thread_counts)}
    for _ in range(repeat):
        for v in runs:  # interleaved rounds
            runs[v].append(run_tool(*v, paths))
    return runs


def med(rs, key):
    values = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(values) if values else None


def cores_label(threads):
    return str(os.cpu_count() or 1) if threads is None else str(threads)


def print_set(label, n, runs, repeat):
    print(f"\n{label}: {n} images; medians of {repeat} interleaved round(s); "
          f"fresh = spawn to end of the first call, warm = second call in the process")
    head = (f"{'tool':12s} {'thr':>3s} {'fresh s':>8s} {'import s':>8s} {'warm s':>8s} "
            f"{'img/s fresh':>11s} {'img/s warm':>10s} {'peak MB':>8s} {'vs hotcoco fresh/warm':>22s} "
            f"{'vs papi':>8s}  All-PQ")
    print(head)
    ref = next((rs for (tool, _), rs in runs.items() if tool == "panopticapi"), None)
    t_ref = med(ref, "fresh") if ref else None
    pq_ref = ref[0]["pq"] if ref else None
    for (tool, threads), rs in runs.items():
        fresh, warm, imp = med(rs, "fresh"), med(rs, "second"), med(rs, "import_s")
        peak = max(r["peak_mb"] for r in rs)
        hot = runs.get(("hotcoco", threads))
        if hot and tool != "hotcoco":
            hw = med(hot, "second")
            vs_hot = f"{med(hot, 'fresh') / fresh:.2f}x / " + (f"{hw / warm:.2f}x" if warm else "-")
        else:
            vs_hot = "-"
        vs_ref = f"{t_ref / fresh:.1f}x" if t_ref and tool != "panopticapi" else "-"
        warm_s = f"{warm:8.3f}" if warm else f"{'-':>8s}"
        warm_ips = f"{n / warm:10.0f}" if warm else f"{'-':>10s}"
        mismatch = "" if pq_ref is None or abs(rs[0]["pq"] - pq_ref) <= 1e-12 else "  (differs)"
        print(f"{tool:12s} {cores_label(threads):>3s} {fresh:8.3f} {imp:8.3f} {warm_s} "
              f"{n / fresh:11.0f} {warm_ips} {peak:8.0f} {vs_hot:>22s} {vs_ref:>8s}  "
              f"{rs[0]['pq']:.15f}{mismatch}")


# ---------------------------------------------------------------------------------------------
# The GIL-held share of a file image
# ---------------------------------------------------------------------------------------------

#: The work measured for the GIL-held share: ``call()``, one evaluation on one thread.
FASTPQ_WORKLOAD = """
import fastpq
GT, PRED = {gt!r}, {pred!r}
def call():
    fastpq.pq_compute(GT, PRED, verbose=False, progress=False, workers=1)
"""

#: A workload whose GIL-held share is known (the two methods checked on it): each call runs
#: ROUNDS times a pure-Python loop (holds the GIL) then a Numba nogil loop (releases it); the
#: child times both parts alone, which gives the true share.
KNOWN_WORKLOAD = """
from numba import njit
HELD, FREE, ROUNDS = {held!r}, {free!r}, {rounds!r}
@njit(nogil=True, cache=False)
def gil_free(n):
    x = 1
    for i in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFF
    return x
def gil_held(n):
    x = 0
    for i in range(n):
        x += i
    return x
def call():
    for _ in range(ROUNDS):
        gil_held(HELD)
        gil_free(FREE)
def true_share():
    import time
    gil_free(10)
    t = time.perf_counter(); [gil_held(HELD) for _ in range(ROUNDS)]; held = time.perf_counter() - t
    t = time.perf_counter(); [gil_free(FREE) for _ in range(ROUNDS)]; free = time.perf_counter() - t
    return held / (held + free)
"""

GIL_CHILD = """
import json, sys, time
{workload}
CALLS, SETTLE = {calls!r}, {settle!r}
call()  # kernels loaded, page cache warm
print('READY', flush=True)
time.sleep(SETTLE)  # py-spy attaches (an idle thread: no samples)
t = time.perf_counter()
for _ in range(CALLS):
    call()
print('RESULT', json.dumps(dict(seconds=time.perf_counter() - t)), flush=True)
"""

PROBE_CHILD = """
import ctypes, json, random, threading, time
import numpy as np
from numba import njit
{workload}
CALLS, CALIBRATE, MEAN_SLEEP = {calls!r}, {calibrate!r}, {mean_sleep!r}
libc = ctypes.CDLL(None)
nanosleep = libc.nanosleep
nanosleep.argtypes, nanosleep.restype = [ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
clock_gettime = libc.clock_gettime
clock_gettime.argtypes, clock_gettime.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_int
CLOCK_MONOTONIC, PR_SET_TIMERSLACK = 1, 29

@njit(nogil=True)
def sleep_then_stamp(ts, ns):
    # GIL released: sleep ns, read CLOCK_MONOTONIC on waking; the GIL is taken back on return
    ts[0] = ns // 1000000000
    ts[1] = ns % 1000000000
    nanosleep(ts.ctypes, 0)
    clock_gettime(CLOCK_MONOTONIC, ts.ctypes)
    return ts[0] * 1000000000 + ts[1]

def probe(stop, waits):
    libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)  # this thread's sleeps end on time
    ts = np.zeros(2, np.int64)
    draw = random.Random(7).expovariate
    while not stop.is_set():
        woke = sleep_then_stamp(ts, int(draw(1 / MEAN_SLEEP) * 1e9))
        waits.append(time.perf_counter_ns() - woke)  # perf_counter is CLOCK_MONOTONIC

def probed(work):
    stop, waits = threading.Event(), []
    thread = threading.Thread(target=probe, args=(stop, waits))
    thread.start()
    t = time.perf_counter()
    work()
    seconds = time.perf_counter() - t
    stop.set()
    thread.join()
    return np.array(waits[1:], np.int64), seconds

sleep_then_stamp(np.zeros(2, np.int64), 1000)  # compiled before any timing
call()
t = time.perf_counter()
call()
alone = time.perf_counter() - t
idle, _ = probed(lambda: threading.Event().wait(CALIBRATE))  # the main thread idles: GIL free
busy, seconds = probed(lambda: [call() for _ in range(CALLS)])
out = dict(alone=alone, seconds=seconds, idle_n=len(idle), busy_n=len(busy))
for tau in (10, 50):
    out[f"idle_{{tau}}"] = float((idle > tau * 1000).mean())
    out[f"busy_{{tau}}"] = float((busy > tau * 1000).mean())
out["idle_p50_us"] = float(np.median(idle) / 1000)
out["busy_p50_us"] = float(np.median(busy) / 1000)
if "true_share" in globals():
    out["true_share"] = true_share()
print('RESULT', json.dumps(out))
"""


def pyspy_samples(workload, calls, rate, gil: bool):
    """Samples inside ``call()`` of ``workload`` (``--gil``: only those holding the GIL) after
    one warm-up call, and the seconds of the ``calls`` calls."""
    code = GIL_CHILD.format(workload=workload, calls=calls, settle=1.0)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "READY":
        proc.wait()
        raise RuntimeError(f"the profiled process failed:\n{proc.stderr.read()[-2000:]}")
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        spy = subprocess.run(["py-spy", "record", "--pid", str(proc.pid), "--rate", str(rate),
                              "--format", "raw", "--output", raw.name]
                             + (["--gil"] if gil else []), capture_output=True, text=True)
        out, err = proc.communicate()
        if spy.returncode != 0 or proc.returncode != 0:
            raise RuntimeError(f"py-spy or the profiled process failed:\n{spy.stderr[-1000:]}"
                               f"{err[-1000:]}")
        with open(raw.name) as f:
            lines = f.read().splitlines()
    samples = sum(int(line.rsplit(" ", 1)[1]) for line in lines if "call (<string>:" in line)
    seconds = json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])["seconds"]
    return samples, seconds


def measure_gil(workload, calls, per_call, n_images, quick, indent="  "):
    """Both measurements of the GIL-held share of ``workload``'s ``call()``; prints them and
    returns (py-spy share or None, probe share at 10 us, the probe child's result)."""
    share = None
    if shutil.which("py-spy"):
        rate = 500
        try:
            running, t_all = pyspy_samples(workload, calls, rate, gil=False)
            holding, t_gil = pyspy_samples(workload, calls, rate, gil=True)
        except RuntimeError as error:
            print(f"{indent}py-spy: could not profile ({str(error).splitlines()[-1]})")
        else:
            share = (holding / t_gil) / (running / t_all) if running else None
            unit = calls * n_images
            print(f"{indent}py-spy at {rate} Hz: {holding} GIL-holding samples in {t_gil:.2f} s "
                  f"(--gil run, {1000 * t_gil / unit:.3f} ms/image), {running} running samples "
                  f"in {t_all:.2f} s (plain run, {1000 * t_all / unit:.3f} ms/image)")
            if share is not None:
                per_image = 1000 * per_call / n_images
                print(f"{indent}-> GIL-held share {100 * share:.1f}%: {share * per_image:.3f} ms "
                      f"of the {per_image:.3f} ms of an unprofiled warm image hold the GIL")
    else:
        print(f"{indent}py-spy: not installed (pip install py-spy); the probe alone follows")
    code = PROBE_CHILD.format(workload=workload, calls=calls, calibrate=0.5 if quick else 2.0,
                              mean_sleep=300e-6)
    r = run_python(code)
    print(f"{indent}probe thread (exponential sleeps, mean 300 us): {r['busy_n']} wake-ups during "
          f"the calls ({1000 * r['seconds'] / (calls * n_images):.3f} ms/image with the probe, "
          f"{1000 * r['alone'] / n_images:.3f} without; median GIL wait {r['busy_p50_us']:.1f} us),"
          f" {r['idle_n']} while idle (median GIL wait {r['idle_p50_us']:.1f} us)")
    probe_share = None
    for tau in (10, 50):
        b, f = r[f"idle_{tau}"], r[f"busy_{tau}"]
        corrected = (f - b) / (1 - b) if b < 1 else float("nan")
        probe_share = corrected if tau == 10 else probe_share
        print(f"{indent}-> waits > {tau:2d} us: {100 * f:.1f}% of wake-ups (idle baseline "
              f"{100 * b:.1f}%): GIL held >= {100 * corrected:.1f}% of the time")
    return share, probe_share, r


def gil_share(paths, quick):
    n = paths["n_images"]
    one_call = run_tool("fastpq", 1, paths)["second"]
    target = 0.5 if quick else 4.0
    calls = max(1, math.ceil(target / one_call))
    print(f"\nGIL-held share of a file image: fastpq, workers=1, warm, {n} COCO-like images x "
          f"{calls} calls ({calls * n} images) per measurement")
    workload = FASTPQ_WORKLOAD.format(gt=paths["gt_json"], pred=paths["pred_json"])
    share, probe_share, _ = measure_gil(workload, calls, one_call, n, quick)
    return share if share is not None else probe_share


def check_gil_methods(quick):
    """Both methods on workloads of known share: long holds (about 300 us Python, 700 us
    nogil) and short ones (about 15 us and 35 us), each call one "image"."""
    print("\nthe two GIL measurements on workloads of known share (a Python loop holding the GIL,"
          " then a Numba nogil loop; true share from timing each part alone):")
    for label, held, free, rounds in (("long holds", 12000, 250000, 1),
                                      ("short holds", 600, 12000, 20)):
        workload = KNOWN_WORKLOAD.format(held=held, free=free, rounds=rounds)
        calls = 500 if quick else 3000
        r = run_python(workload + "\nimport json, time\ncall()\nt = time.perf_counter()\n"
                       "call()\nprint('RESULT', json.dumps(dict(t=time.perf_counter() - t, "
                       "true=true_share())))")
        print(f"  {label}: {1e6 * r['t'] / rounds:.0f} us per round, true share "
              f"{100 * r['true']:.1f}%")
        measure_gil(workload, calls, r["t"], 1, quick, indent="    ")


# ---------------------------------------------------------------------------------------------
# Scaling and the projection
# ---------------------------------------------------------------------------------------------

def amdahl(serial, cores):
    return 1 / (serial + (1 - serial) / cores)


def print_scaling(label, n, runs, thread_counts, share, target=16):
    counts = [c for c in thread_counts]
    if len(counts) < 2:
        return
    p = os.cpu_count() if counts[-1] is None else counts[-1]
    print(f"\nimages/s against threads ({label}, {n} images, warm call, medians); "
          f"16 cores: a PROJECTION by Amdahl's law, not a measurement")
    print(f"{'tool':8s} " + " ".join(f"{cores_label(c) + ' thr':>9s}" for c in counts)
          + f" {'speed-up':>9s} {'Karp-Flatt e':>12s} {'16 cores from e':>16s} "
            f"{'16 cores from GIL share':>24s}")
    for tool in ("fastpq", "hotcoco"):
        if (tool, counts[0]) not in runs:
            continue
        ips = [n / med(runs[(tool, c)], "second") for c in counts]
        speedup = ips[-1] / ips[0]
        e = (1 / speedup - 1 / p) / (1 - 1 / p) if p > 1 else float("nan")
        e_clamped = min(max(e, 0.0), 1.0)
        from_e = ips[0] * amdahl(e_clamped, target)
        from_gil = (f"{ips[0] * amdahl(share, target):10.0f} (s={100 * share:.1f}%)"
                    if tool == "fastpq" and share is not None else "-")
        e_shown = f"{100 * e:11.1f}%" if speedup > 1 else f"{'no gain':>12s}"
        print(f"{tool:8s} " + " ".join(f"{x:9.0f}" for x in ips)
              + f" {speedup:8.2f}x {e_shown} {from_e:16.0f} {from_gil:>24s}")


# ---------------------------------------------------------------------------------------------

def machine_line():
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    versions = []
    for name in ("fastpq", "hotcoco", "panopticapi", "numpy", "numba", "imagecodecs"):
        try:
            from importlib.metadata import version

            versions.append(f"{name} {version(name)}")
        except Exception:
            pass
    return (f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, Python "
            f"{platform.python_version()}; {', '.join(versions)}; load average "
            f"{' '.join(f'{x:.2f}' for x in load)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", default="300,5000", help="COCO-like set sizes, comma-separated")
    ap.add_argument("--cityscapes", type=int, default=12, help="Cityscapes-like images (0: none)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per set")
    ap.add_argument("--repeat-large", type=int, default=None,
                    help="rounds for sets over 1000 images (default: --repeat)")
    ap.add_argument("--tools", default="fastpq,hotcoco,panopticapi")
    ap.add_argument("--threads", default=None,
                    help="thread counts, comma-separated (default: 1 and every core)")
    ap.add_argument("--generator", choices=("bench", "fastpq"), default="bench",
                    help="this script's generator (default) or fastpq.datasets.synthetic")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "fastpq-bench-scaling"),
                    help="where the generated sets are kept")
    ap.add_argument("--no-gil", action="store_true", help="skip the GIL-held share")
    ap.add_argument("--check-gil", action="store_true",
                    help="also check both GIL measurements on workloads of known share")
    ap.add_argument("--quick", action="store_true",
                    help="a small smoke run: 40 COCO-like and 2 Cityscapes-like images, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.cityscapes, args.repeat, args.repeat_large = "40", 2, 1, 1
    sizes = [int(x) for x in args.images.split(",") if x]
    cores = os.cpu_count() or 1
    if args.threads:
        thread_counts = [None if int(x) == cores else int(x) for x in args.threads.split(",")]
    else:
        thread_counts = [1, None] if cores > 1 else [None]
    tools = [t for t in args.tools.split(",") if t in MODULES and available(t)]
    missing = [t for t in args.tools.split(",") if t not in tools]
    print(machine_line())
    print(f"data: {args.generator} generator, seed {args.seed}; tools: {', '.join(tools)}"
          + (f" (not available: {', '.join(missing)})" if missing else ""))
    sets = [(f"COCO-like ({args.generator} generator)", "coco", n) for n in sizes]
    if args.cityscapes:
        sets.append((f"Cityscapes-like 1024x2048 ({args.generator} generator)", "cityscapes",
                     args.cityscapes))
    written = {(kind, n): dataset(args.root, args.generator, kind, n, args.seed + i)
               for i, (_, kind, n) in enumerate(sets)}
    share = None
    if "fastpq" in tools and sizes and not args.no_gil:
        share = gil_share(written[("coco", min(sizes))], args.quick)
        if args.check_gil:
            check_gil_methods(args.quick)
    all_runs = {}
    for label, kind, n in sets:
        repeat = args.repeat_large if (n > 1000 and args.repeat_large) else args.repeat
        runs = time_set(label, written[(kind, n)], tools, thread_counts, repeat)
        print_set(label, n, runs, repeat)
        all_runs[(kind, n)] = (label, runs)
        sys.stdout.flush()
    if sizes:
        label, runs = all_runs[("coco", max(sizes))]
        print_scaling(label, max(sizes), runs, thread_counts, share)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("rerun: python bench/bench_scaling.py " + " ".join(argv if argv is not None
                                                             else sys.argv[1:]))


if __name__ == "__main__":
    main()

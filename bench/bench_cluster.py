"""Throughput of pq_compute on a Dask cluster against the local threaded run, on one machine.

    python bench/bench_cluster.py [--images 400] [--height 480] [--width 640] [--repeat 3]
                                  [--out DIR]

On one generated COCO-like dataset (``fastpq.datasets.synthetic.write_coco_dataset``, seed 0), in one run:

* ``pq_compute(..., workers=1)`` and ``pq_compute(..., workers=<cores>)``: local threads;
* ``pq_compute(..., client=...)`` on a ``LocalCluster`` of 1 and of 2 worker processes with one
  thread each (default shard size), after one warm-up run on the fresh workers (imports, Numba
  cache load), shown as "first run";
* the round trip of an empty shard task (submit, run, return its partial), the per-task overhead;
* the client's own work per image (read and pair the JSONs, pickle the shards).

Times are medians of ``--repeat`` rounds; each round runs every configuration once, so that all
see the same load on a shared machine. The last lines project the wall time of 10**6 images on N
machines like this one from the measured per-image cost and overheads.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import pickle
import platform
import statistics
import tempfile
import time
import uuid

import numpy as np

import fastpq
from fastpq.datasets import synthetic
from fastpq.scale.cluster import default_shard_size, evaluate_shard
from fastpq.io.coco import pair_annotations, resolve_inputs

from common import median_time


def dataset(args):
    root = args.out or tempfile.mkdtemp(prefix="fastpq-bench-cluster-")
    gt_json = os.path.join(root, "gt.json")
    if not os.path.exists(gt_json):
        start = time.perf_counter()
        synthetic.write_coco_dataset(root, args.images, height=args.height, width=args.width,
                                     seed=0)
        print(f"generated {args.images} images {args.width}x{args.height} in {root} "
              f"({time.perf_counter() - start:.0f} s)")
    return {"gt_json": gt_json, "pred_json": os.path.join(root, "pred.json")}


def client_seconds_per_image(paths, threads):
    """The client's work per image: (reading + pairing the JSONs, pickling the shards).

    The first comes before any task; the second is done shard by shard as shards are submitted.
    """
    def read():
        gt_json, pred_json, _, _, _ = resolve_inputs(paths["gt_json"], paths["pred_json"])
        return pair_annotations(gt_json, pred_json, paths["gt_json"], paths["pred_json"])

    matched = read()
    size = default_shard_size(len(matched), threads)

    def pickle_shards():
        for start in range(0, len(matched), size):
            pickle.dumps(matched[start:start + size], protocol=pickle.HIGHEST_PROTOCOL)

    n = len(matched)
    return median_time(read, 5, warmup=False) / n, median_time(pickle_shards, 5, warmup=False) / n


def empty_shard_round_trip(client, categories, repeat=50):
    """Seconds from submitting an empty shard task to holding its partial on the client."""
    payload = pickle.dumps([])
    folders = {None: os.getcwd()}

    def once():
        client.submit(evaluate_shard, payload, 0, os.getcwd(), folders, categories,
                      key=f"bench-empty-shard-{uuid.uuid4().hex}").result()

    once()
    return median_time(once, repeat, warmup=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="dataset folder, reused when it has gt.json")
    args = ap.parse_args(argv)

    import dask
    import distributed

    cores = os.cpu_count() or 1
    paths = dataset(args)
    n = args.images
    categories = fastpq.Categories.from_coco(
        resolve_inputs(paths["gt_json"], paths["pred_json"])[0]["categories"]).to_coco()
    png_bytes = sum(os.path.getsize(os.path.join(root, name))
                    for root in (paths["gt_json"][:-5], paths["pred_json"][:-5])
                    for name in os.listdir(root)) / n
    json_bytes = (os.path.getsize(paths["gt_json"]) + os.path.getsize(paths["pred_json"])) / n

    def local(workers):
        return lambda: fastpq.pq_compute(paths["gt_json"], paths["pred_json"], verbose=False,
                                         workers=workers)

    expected = local(1)()  # also the warm-up (JIT cache load) of this process
    runs = {"local, 1 thread": local(1), f"local, {cores} threads": local(cores)}
    first_run, overhead = {}, {}
    with contextlib.ExitStack() as stack:
        for n_workers in (1, 2):
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True,
                dashboard_address=":0"))
            client = stack.enter_context(distributed.Client(cluster))
            label = f"Dask, {n_workers} worker{'s' * (n_workers > 1)} x 1 thread"
            runs[label] = functools.partial(fastpq.pq_compute, paths["gt_json"],
                                            paths["pred_json"], verbose=False, client=client)
            start = time.perf_counter()
            assert runs[label]() == expected  # warm-up on the fresh workers
            first_run[label] = time.perf_counter() - start
            overhead[n_workers] = empty_shard_round_trip(client, categories)
        # round robin, so that every configuration sees the same load on a shared machine
        times = {label: [] for label in runs}
        for _ in range(args.repeat):
            for label, run in runs.items():
                start = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - start)
    rows = [(label, statistics.median(times[label]), first_run.get(label)) for label in runs]
    client_read, client_pickle = client_seconds_per_image(paths, 2)

    print(f"\nmachine: {platform.machine()}, {cores} cores (shared; load average "
          f"{os.getloadavg()[0]:.1f}), Python {platform.python_version()}, numpy {np.__version__}"
          f", dask {dask.__version__}, distributed {distributed.__version__}, "
          f"fastpq {fastpq.__version__}")
    print(f"data: {n} generated COCO-like images {args.width}x{args.height}, "
          f"{png_bytes / 1e3:.0f} kB of PNG and {json_bytes / 1e3:.1f} kB of JSON "
          f"(GT + prediction) per image; medians of {args.repeat} rounds\n")
    print(f"{'run':28s} {'seconds':>8s} {'images/s':>9s} {'first run s':>12s}")
    for label, seconds, warm_up in rows:
        first = f"{warm_up:12.2f}" if warm_up is not None else f"{'-':>12s}"
        print(f"{label:28s} {seconds:8.2f} {n / seconds:9.1f} {first}")
    print(f"\nempty shard task round trip: {overhead[1] * 1e3:.1f} ms (1 worker), "
          f"{overhead[2] * 1e3:.1f} ms (2 workers)")
    print(f"client work per image: {client_read * 1e6:.0f} us reading and pairing the JSONs "
          f"(before the first task), {client_pickle * 1e6:.0f} us pickling shards "
          "(while tasks run)")

    # a worker thread's cost per image, measured on the cluster (its few task overheads included)
    per_image = rows[2][1] / n
    task = max(overhead.values())
    print(f"\nprojection, 10**6 images, machines like this one ({cores} worker threads each), "
          f"from {per_image * 1e3:.1f} ms per image per thread (Dask, 1 worker), "
          f"{task * 1e3:.1f} ms per task, "
          f"{(client_read + client_pickle) * 1e6:.0f} us per image on the client:")
    print(f"{'machines':>9s} {'shard size':>11s} {'shards':>7s} {'workers s':>10s} "
          f"{'client s':>9s} {'total min':>10s} {'PNG read MB/s':>14s}")
    total_images = 10 ** 6
    for machines in (1, 10, 100, 1000):
        threads = machines * cores
        size = default_shard_size(total_images, threads)
        shards = -(-total_images // size)
        # each thread runs its share of images and pays the task overhead once per shard
        workers_s = (total_images * per_image + shards * task) / threads
        client_s = total_images * (client_read + client_pickle)
        total = total_images * client_read + max(workers_s, total_images * client_pickle) + task
        print(f"{machines:9d} {size:11d} {shards:7d} {workers_s:10.0f} {client_s:9.0f} "
              f"{total / 60:10.1f} {total_images * png_bytes / total / 1e6:14.0f}")


if __name__ == "__main__":
    main()

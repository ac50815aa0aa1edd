"""How much a second thread adds on this machine, for two kinds of loop (read the file timings
against it).

    python bench/bench_cores.py [--repeat 5]

Each thread runs its own copy of the same Numba loop, with the GIL released; the table gives the
wall time of 1 and of 2 threads (twice the work) and the speed-up, medians:

* throughput-bound: XOR of an L2-resident array (vector loads, no dependency between iterations),
  like fastpq's decode and histogram loops;
* latency-bound: a chain of dependent multiply-adds (one instruction waits for the last).

On separate cores both speed up 2x. Two hardware threads of one core share its vector units and
caches, so the throughput-bound loop gains little there, while the latency-bound one still gains
about 2x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def throughput_bound(values, rounds):
    total = np.uint32(0)
    for r in range(rounds):
        for i in range(values.size):
            total ^= values[i]
        values[r % values.size] = total
    return total


@njit(nogil=True, cache=True)
def latency_bound(steps):
    x = np.uint64(1)
    for _ in range(steps):
        x = x * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
        x ^= x >> np.uint64(13)
    return x


def wall(n_threads, make_args, kernel):
    threads = [threading.Thread(target=kernel, args=make_args()) for _ in range(n_threads)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    loops = {
        "throughput-bound (32k uint32, L2)": (
            lambda: (np.arange(32_000, dtype=np.uint32), 12_000), throughput_bound),
        "latency-bound (dependent chain)": (lambda: (20_000_000,), latency_bound),
    }
    print(f"{os.cpu_count()} logical CPUs")
    print(f"{'loop':36s} {'1 thread s':>10s} {'2 threads s':>11s} {'speed-up':>9s}")
    for name, (make_args, kernel) in loops.items():
        kernel(*make_args())  # compile or load
        one = statistics.median(wall(1, make_args, kernel) for _ in range(args.repeat))
        two = statistics.median(wall(2, make_args, kernel) for _ in range(args.repeat))
        print(f"{name:36s} {one:10.3f} {two:11.3f} {2 * one / two:8.2f}x")


if __name__ == "__main__":
    main()

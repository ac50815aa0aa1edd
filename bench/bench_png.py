"""Decode time of COCO panoptic PNGs: the reference's Pillow + rgb2id against fastpq.io.png.read_ids.

The reference decode is ``rgb2id(np.array(Image.open(f), dtype=np.uint32))`` (panopticapi's
pq_compute, SPEC §2.2). The images are generated panoptic-like maps (a few large stuff regions
with wavy borders and elliptic thing blobs, ids anywhere in [0, 2**24)) written by Pillow with its
default settings, as panopticapi's converters write them, at COCO size (640x480) and Cityscapes
size (2048x1024). Each time is the median over ``--runs`` decodes of the same file, after a warm-up
that compiles the Numba kernel. Both decoders are checked to agree before timing.

Usage::

    python bench/bench_png.py [--runs 9] [--seed 0] [--files extra1.png extra2.png ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import imagecodecs
import numba
import numpy as np
import PIL
from PIL import Image

from fastpq.io.png import read_ids

try:
    from panopticapi.utils import rgb2id
except ImportError as error:
    raise SystemExit("the reference needs panopticapi: pip install fastpq[bench]") from error

SIZES = {"COCO 640x480": (480, 640), "Cityscapes 2048x1024": (1024, 2048)}


def panoptic_like_ids(height, width, seed):
    """A seeded (height, width) uint32 map: 5 stuff bands with wavy borders and 25 thing blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    ids = np.zeros((height, width), np.uint32)
    for band, boundary in enumerate(np.sort(rng.integers(0, height, 5))):
        border = boundary + 0.04 * height * np.sin(xx / (width / (3 + band)) + band)
        ids[yy >= border] = rng.integers(1, 1 << 24)
    for _ in range(25):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(height // 40, height // 6), rng.integers(width // 40, width // 6)
        ids[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.integers(1, 1 << 24)
    return ids


def write_png(ids, path):
    """Write ids as a COCO panoptic RGB PNG (panopticapi's id2rgb, Pillow's default encoder)."""
    rgb = np.stack([ids & 0xFF, (ids >> 8) & 0xFF, ids >> 16], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def reference_decode(path):
    return rgb2id(np.array(Image.open(path), dtype=np.uint32))


def median_ms(decode, path, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        decode(path)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine():
    return (
        f"{cpu_name()} ({os.cpu_count()} logical CPUs), {platform.system()}; "
        f"Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
        f"Pillow {PIL.__version__}, imagecodecs {imagecodecs.__version__} "
        f"(libdeflate {'yes' if imagecodecs.DEFLATE.available else 'no'})"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="decodes per timing (median; >= 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated maps")
    parser.add_argument("--files", nargs="*", type=Path, default=[], help="more PNGs to time")
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5")

    with tempfile.TemporaryDirectory() as folder:
        cases = []
        for label, (height, width) in SIZES.items():
            path = Path(folder) / f"{height}x{width}.png"
            write_png(panoptic_like_ids(height, width, args.seed), path)
            cases.append((label, path))
        cases += [(path.name, path) for path in args.files]

        print(f"machine: {machine()}")
        print(f"median of {args.runs} decodes per cell\n")
        header = (
            f"{'image':<22} {'PNG KiB':>8} {'Pillow+rgb2id ms':>17} {'fastpq ms':>10} "
            f"{'speedup':>8}"
        )
        print(header)
        print("-" * len(header))
        for label, path in cases:
            expected = reference_decode(path)
            if not np.array_equal(read_ids(path), expected):
                raise SystemExit(f"fastpq and the reference disagree on {path}")
            reference_ms = median_ms(reference_decode, path, args.runs)
            fastpq_ms = median_ms(read_ids, path, args.runs)
            print(
                f"{label:<22} {path.stat().st_size / 1024:>8.1f} {reference_ms:>17.2f} "
                f"{fastpq_ms:>10.2f} {reference_ms / fastpq_ms:>7.1f}x"
            )


if __name__ == "__main__":
    main()

"""Benchmark of the GPU pair histogram (kernels/pairs.cu) against the memory-bandwidth limit.

Run on a machine with a CUDA GPU and CuPy (``pip install fastpq[gpu]``)::

    python bench/bench_gpu.py [--runs 20] [--peak-gbs 3350] [--tile-pixels 8192 32768 ...]

For two batch shapes of int32 panoptic-like label maps (16 x 1024x2048 Cityscapes-size and
64 x 480x640 COCO-size, generated on the device, seeded) it prints, for each method, two times:

* ``device ms``: the median over ``--runs`` of the GPU time of one call, measured with CUDA events
  while the call is queued behind a spin kernel (``torch.cuda._sleep``), so that the host's launch
  cost does not leave the GPU idle between kernels; GB/s of label maps read (8 bytes per pixel:
  two int32 maps), the fraction of the peak bandwidth (from the device's memory clock and bus
  width, or ``--peak-gbs``) and of a measured device-to-device copy follow from it;
* ``wall ms``: wall-clock time per call in steady state (``--runs`` calls back to back, then one
  synchronisation; the median of 5 such rounds), host work included, and images/s from it.

The methods:

* ``histogram kernel``: the histogram kernel of :func:`fastpq.gpu.cupy_kernels.pair_histogram_batch` alone,
* ``histogram``: :func:`fastpq.gpu.cupy_kernels.pair_histogram_batch` (table init, histogram, compaction),
* ``histogram+match``: the same plus :func:`fastpq.gpu.cupy_kernels.match_batch`,
* ``torch.unique``: the sort-based baseline on a 64-bit key (image << 48 | gt << 24 | pred), when
  PyTorch with CUDA is installed,
* ``metric.update``: :meth:`fastpq.PanopticQuality.update` on the CuPy batch with COCO
  segments_info lists (segment tables built on the host and copied, histogram, matcher, device
  accumulation),
* ``update (pairs)``: :meth:`fastpq.PanopticQuality.update` on the (B, H, W, 2) int64
  [category, instance] CUDA tensors that torchmetrics gets (the pairs convention: ids encoded
  and segment tables derived on the device, nothing built on the host),
* ``torchmetrics``: ``torchmetrics.detection.PanopticQuality.update`` on the same pixels as
  (B, H, W, 2) [category, instance] CUDA tensors (wall-clock only, median of 3), when
  torchmetrics is installed; void pixels are category 0, declared as an extra stuff class since
  torchmetrics refuses unknown ground-truth categories (a timing row, not a parity check).

The pair counts of the kernel and of torch.unique are compared once, outside the timing.
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

SHAPES = [(16, 1024, 2048), (64, 480, 640)]


def _cupy_or_exit():
    try:
        import cupy
    except ImportError:
        sys.exit("bench_gpu.py needs CuPy and a CUDA GPU: pip install fastpq[gpu]")
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, or a driver without devices
        sys.exit(f"bench_gpu.py needs a CUDA GPU, and CUDA reports none: {error}")
    if n_devices == 0:
        sys.exit("bench_gpu.py needs a CUDA GPU, and CUDA reports none")
    return cupy


def peak_bandwidth_gbs(cp, device_id: int):
    """Theoretical DRAM bandwidth, memory clock (kHz) x bus width (bits) x 2 (DDR), in GB/s."""
    runtime = cp.cuda.runtime
    try:
        properties = runtime.getDeviceProperties(device_id)
        clock_khz, bus_bits = properties.get("memoryClockRate"), properties.get("memoryBusWidth")
        if not clock_khz:  # CUDA 13 dropped memoryClockRate from cudaDeviceProp
            clock_khz = runtime.deviceGetAttribute(36, device_id)  # cudaDevAttrMemoryClockRate
        if not bus_bits:
            bus_bits = runtime.deviceGetAttribute(37, device_id)  # cudaDevAttrGlobalMemoryBusWidth
        return clock_khz * 1e3 * bus_bits / 8 * 2 / 1e9
    except Exception:
        return None


def panoptic_like_batch(cp, rng, n_images, height, width, n_segments=40):
    """Voronoi cells with COCO-range ids and a void band (GT); jittered cells, 70 % of the ids
    kept, and 0.2 % salt noise (pred). Returns device maps and per-image id lists."""
    yy = cp.arange(height, dtype=cp.float32)[:, None]
    xx = cp.arange(width, dtype=cp.float32)[None, :]
    gt = cp.empty((n_images, height, width), cp.int32)
    pred = cp.empty_like(gt)
    ids = []

    def cells(cy, cx):
        best = cp.full((height, width), cp.inf, cp.float32)
        label = cp.zeros((height, width), cp.int32)
        for k in range(len(cy)):
            distance = (yy - float(cy[k])) ** 2 + (xx - float(cx[k])) ** 2
            closer = distance < best
            best = cp.where(closer, distance, best)
            label = cp.where(closer, k, label)
        return label

    for b in range(n_images):
        cy, cx = rng.uniform(0, height, n_segments), rng.uniform(0, width, n_segments)
        gt_ids = rng.choice((1 << 24) - 1, n_segments, replace=False).astype(np.int32) + 1
        gt[b] = cp.asarray(gt_ids)[cells(cy, cx)]
        band = int(rng.integers(0, height - height // 20))
        gt[b, band:band + height // 20] = 0
        pred_ids = np.where(rng.random(n_segments) < 0.7, gt_ids,
                            rng.integers(1, 1 << 24, n_segments)).astype(np.int32)
        jitter = (cy + rng.normal(0, height * 0.02, n_segments),
                  cx + rng.normal(0, width * 0.02, n_segments))
        pred[b] = cp.asarray(pred_ids)[cells(*jitter)]
        salt = cp.random.random((height, width), dtype=cp.float32) < 0.002
        pred[b] = cp.where(salt, int(pred_ids[0]), pred[b])
        ids.append((gt_ids, pred_ids))
    return gt, pred, ids


def segment_tables(rng, ids, n_categories=133):
    """Segment tables for the batch: random categories (5 % crowd); a pred id that is also a GT
    id takes that segment's category, so that segments match."""
    from fastpq.gpu.device_state import pad_segment_tables

    gt_categories = [rng.integers(0, n_categories, len(g)) for g, _ in ids]
    gt = pad_segment_tables([g for g, _ in ids], gt_categories,
                            [(rng.random(len(g)) < 0.05).astype(np.int32) for g, _ in ids])
    pred_ids, pred_categories = [], []
    for (g, p), categories in zip(ids, gt_categories, strict=True):
        lookup = dict(zip(g.tolist(), categories.tolist(), strict=True))
        p = np.unique(p)
        pred_ids.append(p)
        pred_categories.append([lookup.get(q, int(rng.integers(0, n_categories)))
                                for q in p.tolist()])
    return gt, pad_segment_tables(pred_ids, pred_categories), n_categories


def median_ms(cp, function, runs: int, warmup: int = 3, before=None) -> float:
    """Median CUDA-event time of ``function()``; ``before()`` is queued ahead of each timed call,
    outside the events."""
    for _ in range(warmup):
        function()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


def device_ms(cp, torch, function, runs: int, warmup: int = 3) -> float:
    """Median device time of one call: each timed call is queued behind a spin kernel
    (``torch.cuda._sleep``) longer than the host needs to launch it, so the events measure the
    GPU's work without the gaps of a host that launches more slowly than the GPU runs (the
    launch cost is in ``wall_ms``). Without torch, plain event timing (an upper bound)."""
    import time

    if torch is None or not hasattr(torch.cuda, "_sleep"):
        return median_ms(cp, function, runs, warmup)
    for _ in range(warmup):
        function()
    cp.cuda.Device().synchronize()
    start_host = time.perf_counter()
    function()
    host_s = time.perf_counter() - start_host
    cp.cuda.Device().synchronize()
    spin_cycles = int(max(2e6, 8e9 * host_s))  # about 4x the launch time at 2 GHz
    # the spin runs on torch's current stream: the legacy default stream, as CuPy's here
    return median_ms(cp, function, runs, warmup=0, before=lambda: torch.cuda._sleep(spin_cycles))


def wall_ms(cp, function, runs: int, rounds: int) -> float:
    """Steady-state wall-clock ms per call: ``runs`` calls back to back, then a synchronisation;
    the median over ``rounds``."""
    import time

    function()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(runs):
            function()
        cp.cuda.Device().synchronize()
        times.append((time.perf_counter() - start) / runs * 1e3)
    return float(np.median(times))


def category_instance_maps(cp, torch, maps, tables, category_ids):
    """(B, H, W, 2) [category, instance] torch tensors of id maps (void: category 0)."""
    out = cp.zeros(maps.shape + (2,), cp.int64)
    for b in range(maps.shape[0]):
        n = int(tables.count[b])
        ids = np.asarray(tables.id[b, :n], np.int64)
        order = np.argsort(ids)
        sorted_ids = cp.asarray(ids[order])
        cats = cp.asarray(category_ids[np.asarray(tables.category[b, :n])[order]])
        at = cp.minimum(cp.searchsorted(sorted_ids, maps[b]), n - 1)
        listed = sorted_ids[at] == maps[b]
        out[b, ..., 0] = cp.where(listed, cats[at], 0)
        out[b, ..., 1] = cp.where(listed, at + 1, 0)  # instance: the id's rank in the image
    return torch.from_dlpack(out)


def histogram_kernel_only(cp, gt, pred):
    """A function that launches only the histogram kernel of :func:`fastpq.gpu.cupy_kernels.
    pair_histogram_batch` (no table initialisation, no compaction) on tables it keeps."""
    from fastpq.gpu.cupy_kernels import compiled_kernel
    from fastpq.kernels.gpu_layout import (BLOCK_THREADS, DEFAULT_CAPACITY, DEFAULT_TILE_PIXELS,
                                           EMPTY_KEY, capacity_log2)

    n_images = gt.shape[0]
    n_pixels = gt[0].size
    cap_log2 = capacity_log2(DEFAULT_CAPACITY)
    keys = cp.full((n_images, 1 << cap_log2), EMPTY_KEY, cp.uint64)
    counts = cp.zeros_like(keys)
    status = cp.zeros(n_images, cp.int32)
    kernel = compiled_kernel("pair_histogram_i32")
    grid = (-(-n_pixels // DEFAULT_TILE_PIXELS), n_images)
    args = (gt, pred, np.int64(n_pixels), np.int64(DEFAULT_TILE_PIXELS), np.int32(1), keys,
            counts, np.int32(cap_log2), status)
    return lambda: kernel(grid, (BLOCK_THREADS,), args)


def bench_shape(cp, torch, rng, shape, runs: int, peak, copy_gbs: float, tiles=()) -> None:
    """Print the rows of one batch shape."""
    import fastpq
    from fastpq.gpu.cupy_kernels import match_batch, pair_histogram_batch

    n_images, height, width = shape
    gt, pred, ids = panoptic_like_batch(cp, rng, n_images, height, width)
    gt_segments, pred_segments, n_categories = segment_tables(rng, ids)
    categories = fastpq.Categories.coco_panoptic()
    category_ids = np.array([c["id"] for c in categories.to_coco()])
    gsegs = [[{"id": int(gt_segments.id[b, k]),
               "category_id": int(category_ids[gt_segments.category[b, k]]),
               "iscrowd": int(gt_segments.iscrowd[b, k])} for k in range(int(gt_segments.count[b]))]
             for b in range(n_images)]
    psegs = [[{"id": int(pred_segments.id[b, k]),
               "category_id": int(category_ids[pred_segments.category[b, k]])}
              for k in range(int(pred_segments.count[b]))] for b in range(n_images)]
    host_gt_segments, host_pred_segments = gt_segments, pred_segments
    gt_segments = type(gt_segments)(*(None if a is None else cp.asarray(a) for a in gt_segments))
    pred_segments = type(pred_segments)(*(None if a is None else cp.asarray(a)
                                          for a in pred_segments))
    read_bytes = 8 * n_images * height * width

    def histogram():
        return pair_histogram_batch(gt, pred)

    def histogram_match():
        return match_batch(pair_histogram_batch(gt, pred), gt_segments, pred_segments,
                           n_categories)

    kernel_only = histogram_kernel_only(cp, gt, pred)
    rows = [("histogram kernel", kernel_only), ("histogram", histogram),
            ("histogram+match", histogram_match)]
    torch_unique = None
    if torch is not None:
        tgt, tpred = torch.from_dlpack(gt), torch.from_dlpack(pred)
        image = torch.arange(n_images, device=tgt.device, dtype=torch.int64).view(-1, 1, 1)

        def torch_unique():
            key = (image << 48) | (tgt.long() << 24) | tpred.long()
            return torch.unique(key, return_counts=True)

        rows.append(("torch.unique", torch_unique))

    metric = fastpq.PanopticQuality(categories)

    def update():
        metric.update(gt, pred, gt_segments=gsegs, pred_segments=psegs)

    rows.append(("metric.update", update))
    timed = [(label, device_ms(cp, torch, function, runs), wall_ms(cp, function, runs, 5))
             for label, function in rows]
    result = metric.compute()  # also raises if the device refused an update
    if torch is not None:
        try:
            from torchmetrics.detection import PanopticQuality as TorchmetricsPQ
        except ImportError:
            TorchmetricsPQ = None
        if TorchmetricsPQ is not None:
            things = {c["id"] for c in categories.to_coco() if c["isthing"]}
            stuffs = set(category_ids.tolist()) - things
            tm_gt = category_instance_maps(cp, torch, gt, host_gt_segments, category_ids)
            tm_pred = category_instance_maps(cp, torch, pred, host_pred_segments, category_ids)
            tm = TorchmetricsPQ(things=things, stuffs=stuffs | {0},
                                allow_unknown_preds_category=True).to(tm_gt.device)
            pairs_metric = fastpq.PanopticQuality(categories)

            def update_pairs():
                pairs_metric.update(tm_gt, tm_pred)

            timed.append(("update (pairs)", device_ms(cp, torch, update_pairs, runs),
                          wall_ms(cp, update_pairs, runs, 5)))
            pairs_metric.compute()  # raises if the device refused an update
            timed.append(("torchmetrics", None,
                          wall_ms(cp, lambda: tm.update(tm_pred, tm_gt), 1, 3)))
    for label, device, wall in timed:
        ms = wall if device is None else device
        gbs = read_bytes / ms / 1e6
        print(f"{f'{n_images}x{height}x{width}':>16}  {label:<17}"
              f"{('-' if device is None else f'{device:.3f}'):>9} {gbs:7.0f} "
              f"{(f'{gbs / peak:.0%}' if peak else '-'):>8} {gbs / copy_gbs:8.0%} "
              f"{wall:9.3f} {n_images / wall * 1e3:10.0f}")
    walls = {label: wall for label, _, wall in timed}
    devices = {label: device for label, device, _ in timed}
    if "torchmetrics" in walls:
        tm_ms = walls["torchmetrics"]
        print(f"  torchmetrics over fastpq: {tm_ms / walls['update (pairs)']:.0f}x metric.update "
              f"on the same (B, H, W, 2) tensors, {tm_ms / walls['metric.update']:.0f}x "
              f"metric.update on id maps with segments_info (wall); "
              f"{tm_ms / devices['histogram+match']:.0f}x histogram+match (device)")
    print(f"  metric: {result.n_images} images, PQ {100 * result.pq:.2f}")
    for tile_pixels in tiles:
        ms = device_ms(cp, torch, lambda: pair_histogram_batch(gt, pred, tile_pixels=tile_pixels),
                       runs)
        gbs = read_bytes / ms / 1e6
        print(f"  histogram with tile_pixels={tile_pixels}: {ms:.3f} ms, {gbs:.0f} GB/s"
              + (f" ({gbs / peak:.0%} of peak)" if peak else ""))

    tables = pair_histogram_batch(gt, pred)
    status = tables.status.get()
    if status.any():
        print(f"  warning: status bits set: {sorted(set(status.tolist()))}")
    n_pairs = int(tables.n_pairs.sum().get())
    if torch_unique is not None:
        keys, _ = torch_unique()
        verdict = "agree" if n_pairs == keys.numel() else "DISAGREE"
        print(f"  pairs: {n_pairs} (torch.unique: {keys.numel()}, {verdict})")
    else:
        print(f"  pairs: {n_pairs}")


def copy_bandwidth_gbs(cp, runs: int) -> float:
    """Measured device-to-device copy of 1 GiB (read + write), in GB/s."""
    source = cp.empty(1 << 28, cp.int32)
    target = cp.empty_like(source)
    ms = median_ms(cp, lambda: cp.copyto(target, source), runs)
    return 2 * source.nbytes / ms / 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per row (median; >= 10)")
    parser.add_argument("--peak-gbs", type=float, default=None,
                        help="peak memory bandwidth in GB/s (default: from device attributes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile-pixels", type=int, nargs="*", default=[],
                        help="also time the histogram with these pixels per thread block")
    args = parser.parse_args(argv)
    runs = max(10, args.runs)

    cp = _cupy_or_exit()
    import fastpq

    try:
        import torch

        torch = torch if torch.cuda.is_available() else None
    except ImportError:
        torch = None

    device = cp.cuda.Device()
    name = cp.cuda.runtime.getDeviceProperties(device.id)["name"].decode()
    peak = args.peak_gbs or peak_bandwidth_gbs(cp, device.id)
    copy_gbs = copy_bandwidth_gbs(cp, runs)

    print(f"device: {name} (cc {device.compute_capability}), CUDA runtime "
          f"{cp.cuda.runtime.runtimeGetVersion()}, CuPy {cp.__version__}"
          + (f", torch {torch.__version__}" if torch else ", torch not available")
          + f", fastpq {fastpq.__version__}, Python {platform.python_version()}")
    print(f"peak bandwidth: {f'{peak:.0f} GB/s' if peak else 'unknown (pass --peak-gbs)'}; "
          f"measured device-to-device copy: {copy_gbs:.0f} GB/s; median of {runs} runs")
    print()
    header = (f"{'batch':>16}  {'method':<17}{'device ms':>9} {'GB/s':>7} {'of peak':>8} "
              f"{'of copy':>8} {'wall ms':>9} {'images/s':>10}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(args.seed)
    for shape in SHAPES:
        bench_shape(cp, torch, rng, shape, runs, peak, copy_gbs, args.tile_pixels)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The streaming metric's GPU path (fastpq/gpu/device_state.py, kernels/accumulate.cu).

On the CPU, the metric's device glue runs with :class:`cuda_oracles.EmulatedBackend` (the
kernels' CPU emulations on NumPy arrays, passed as ``PanopticQuality(..., gpu_backend=...)``)
and must give the host path's numbers exactly: tp/fp/fn equal and the
double-double IoU sums bitwise equal, across update splits, reads in between, merges, pickling and
refusals. ``accumulate.cu`` itself runs on CPU threads through the CUDA shim of
test_gpu_kernel.py and is compiled by nvcc/NVRTC. Tests marked ``gpu`` run the real thing.
"""

import ctypes
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastpq
from fastpq.gpu import device_state
from fastpq.datasets import synthetic
from fastpq.core.accumulator import PQAccumulator
from fastpq.gpu.device_state import RefusedUpdates
from fastpq.errors import InputError, SegmentError
from fastpq.kernels import gpu_layout
from fastpq.kernels.gpu_layout import (
    RECORD_FIELDS,
    STATUS_ID_OUT_OF_RANGE,
    STATUS_PAIR_TABLE_OVERFLOW,
    STATUS_PRED_ID_NOT_LISTED,
    MatchPartials,
)
from cuda_build import build_cpu_shim, nvcc_spills, nvrtc_log
from cuda_oracles import EmulatedBackend, accumulate_partials_host
from test_gpu_kernel import CUDA_SHIM, HAS_GPU

COCO = fastpq.Categories.coco_panoptic()
ACCUMULATE_SOURCE = os.path.join(os.path.dirname(gpu_layout.__file__), "accumulate.cu")
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA device")


@pytest.fixture(scope="module")
def images():
    """Crowd (two crowd segments of one class included) and void on both sides; mixed sizes."""
    same = synthetic.make_dataset(18, height=72, width=96, categories="coco", seed=11,
                                  crowd_prob=0.4)
    mixed = synthetic.make_dataset(6, height=(40, 70), width=(50, 90), categories="coco",
                                   seed=12, crowd_prob=0.4)
    return same + mixed


def columns(images):
    return tuple(list(x) for x in zip(*images))


def host_metric(images):
    metric = fastpq.PanopticQuality(COCO)
    gts, gsegs, preds, psegs = columns(images)
    metric.update(gts, preds, gt_segments=gsegs, pred_segments=psegs)
    assert metric._device is None
    return metric


def device_metric(*, histogram_options=None, **options):
    """A PanopticQuality whose updates all go through the device glue, host maps included, on
    the CPU emulation of the kernels (``histogram_options``: see ``EmulatedBackend``)."""
    backend = EmulatedBackend(**(histogram_options or {}))
    return fastpq.PanopticQuality(COCO, gpu_backend=backend, **options)


def assert_same_state(metric, expected):
    """tp/fp/fn and both halves of the double-double IoU sums bitwise equal."""
    got, want = metric.state_dict(), expected.state_dict()
    for key in ("tp", "fp", "fn", "n_images"):
        assert got[key] == want[key], key
    for key in ("iou", "iou_err"):
        np.testing.assert_array_equal(np.array(got[key]).view(np.int64),
                                      np.array(want[key]).view(np.int64), err_msg=key)
    assert metric.compute().to_dict() == expected.compute().to_dict()


def feed(metric, images, splits, *, stacked=False):
    start = 0
    for stop in splits:
        gts, gsegs, preds, psegs = columns(images[start:stop])
        if stacked:
            gts, preds = np.stack(gts), np.stack(preds)
        metric.update(gts, preds, gt_segments=gsegs, pred_segments=psegs)
        start = stop
    return metric


# -- the glue on the CPU emulation ----------------------------------------------------------------

@pytest.mark.parametrize("splits", [[24], list(range(1, 25)), [5, 10, 17, 18, 24], [7, 18, 24]])
def test_device_glue_equals_host_path(images, splits):
    metric = feed(device_metric(), images, splits)
    assert metric._device is not None  # the state lives on the (emulated) device
    expected = host_metric(images)
    assert metric._device.n_images == len(images)
    assert_same_state(metric, expected)


def test_stacked_batches_rgb_maps_and_kernel_work_splits(images):
    # small tiles and shared tables: the overflow paths
    metric = device_metric(histogram_options=dict(tile_pixels=388, shared_log2=3,
                                                  shared_max_probe=2))
    feed(metric, images[:18], [6, 12], stacked=True)
    gts, gsegs, preds, psegs = columns(images[12:18])
    rgb = [np.stack([(m >> s) & 255 for s in (0, 8, 16)], axis=-1).astype(np.uint8)
           for m in gts]
    metric.update(rgb[0], preds[0], gt_segments=gsegs[0], pred_segments=psegs[0])
    metric.update(np.stack(rgb[1:]), np.stack(preds[1:]), gt_segments=gsegs[1:],
                  pred_segments=psegs[1:])
    expected = feed(fastpq.PanopticQuality(COCO), images[:18] + images[12:18], [6, 12, 13, 18])
    assert_same_state(metric, expected)


def test_reads_in_between_keep_the_bits(images):
    metric = device_metric()
    start = 0
    for stop in (3, 9, 10, 16, 24):
        feed(metric, images[start:stop], [stop - start])
        if stop in (9, 16):
            metric.compute()  # the state comes back to the host, then goes to the device again
            assert metric._device is None
        start = stop
    expected = feed(fastpq.PanopticQuality(COCO), images, [3, 9, 10, 16, 24])
    assert_same_state(metric, expected)


def test_host_and_device_updates_mix(images):
    metric = feed(device_metric(), images[:10], [4, 10])
    assert metric._device is not None
    metric.gpu_backend.on_device = False  # host maps: the state comes back first
    feed(metric, images[10:15], [15 - 10])
    assert metric._device is None
    metric.gpu_backend.on_device = True
    feed(metric, images[15:], [24 - 15])
    assert metric._device is not None
    assert_same_state(metric, host_metric(images))


def test_merge_state_dict_pickle_reset(images):
    expected = host_metric(images)
    first = feed(device_metric(), images[:11], [5, 11])
    second = feed(device_metric(), images[11:], [24 - 11])
    assert first.merge(second) is first
    assert first.compute().to_dict() == expected.compute().to_dict()

    metric = feed(device_metric(), images[:13], [13])
    clone = pickle.loads(pickle.dumps(metric))
    assert clone._device is None and clone.pair_capacity == metric.pair_capacity
    feed(clone, images[13:], [24 - 13])
    assert clone._device is not None  # the unpickled metric keeps its backend
    assert_same_state(clone, expected)

    metric = feed(device_metric(), images[:13], [13])
    restored = device_metric()
    restored.load_state_dict(metric.state_dict())
    feed(restored, images[13:], [24 - 13])
    assert_same_state(restored, expected)

    metric.reset()
    assert metric._device is None and metric.compute().n_images == 0
    assert_same_state(feed(metric, images, [24]), expected)


# -- refusals --------------------------------------------------------------------------------------

def _without(segments, segment_id):
    return [s for s in segments if s["id"] != segment_id]


def test_overflow_is_raised_at_compute_naming_update_and_image(images):
    gts, gsegs, preds, psegs = columns(images[:6])
    assert max(len(np.unique(g.astype(np.int64) << 32 | p)) for g, p in zip(gts, preds)) <= 128
    noisy = preds[4].copy()
    listed = [s["id"] for s in psegs[4]]
    noisy.ravel()[:] = np.random.default_rng(0).choice(listed, noisy.size)
    assert len(np.unique(gts[4].astype(np.int64) << 32 | noisy)) > 128
    metric = device_metric(pair_capacity=100)  # 128 pairs
    metric.update(gts[:3], preds[:3], gt_segments=gsegs[:3], pred_segments=psegs[:3])
    metric.update(gts[3:], preds[3:4] + [noisy] + preds[5:6], gt_segments=gsegs[3:],
                  pred_segments=psegs[3:])
    with pytest.raises(InputError, match=r"image 1 of update 1 .*more distinct \(gt, pred\) "
                                         r"pairs than the pair table capacity.*added nothing.*"
                                         r"holds 128 distinct.*pair_capacity=") as error:
        metric.compute()
    assert not isinstance(error.value, SegmentError)
    result = metric.compute()  # raised once; the accepted update counts
    assert result.n_images == 3
    assert result.to_dict() == host_metric(images[:3]).compute().to_dict()


def test_segment_mismatches_are_segment_errors(images):
    gts, gsegs, preds, psegs = columns(images[:4])
    metric = device_metric()
    unlisted = psegs[2][0]["id"]
    metric.update(gts, preds, gt_segments=gsegs,
                  pred_segments=psegs[:2] + [_without(psegs[2], unlisted)] + psegs[3:])
    with pytest.raises(SegmentError, match="image 2 of update 0 .*non-zero predicted id in the "
                                           "map is not in the segment table.*names the segment"):
        metric.compute()

    absent = [*psegs[1], {"id": 999_999, "category_id": 1}]
    metric.update(gts, preds, gt_segments=gsegs, pred_segments=psegs[:1] + [absent] + psegs[2:])
    metric.update(gts[:1], preds[:1], gt_segments=gsegs[:1], pred_segments=psegs[:1])
    with pytest.raises(SegmentError, match="image 1 of update 1 .*predicted segment of the table "
                                           "has no pixel"):
        metric.sync()
    assert_same_state(metric, host_metric(images[:1]))


def test_several_refused_updates_and_ids_out_of_range(images):
    gts, gsegs, preds, psegs = columns(images[:3])
    negative = gts[1].astype(np.int64)
    negative[0, 0] = -5
    metric = device_metric()
    metric.update(gts[:1], preds[:1], gt_segments=gsegs[:1], pred_segments=psegs[:1])
    metric.update([gts[0], negative], preds[:2], gt_segments=gsegs[:2], pred_segments=psegs[:2])
    metric.update(gts[2:], preds[2:], gt_segments=gsegs[2:],
                  pred_segments=[_without(psegs[2], psegs[2][0]["id"])])
    with pytest.raises(InputError, match=r"image 1 of update 1 .*outside \[0, 2\*\*31\).*In all, "
                                         r"2 updates \(3 images\) were refused") as error:
        metric.compute()
    assert not isinstance(error.value, SegmentError)
    assert metric.compute().n_images == 1


def test_a_refused_image_refuses_its_whole_update_across_shapes(images):
    # images 18.. have other sizes: the update runs as several device batches
    gts, gsegs, preds, psegs = columns(images[16:22])
    psegs[4] = _without(psegs[4], psegs[4][0]["id"])
    metric = device_metric()
    metric.update(gts, preds, gt_segments=gsegs, pred_segments=psegs)
    with pytest.raises(SegmentError, match="image 4 of update 0"):
        metric.compute()
    assert metric.compute().n_images == 0 and metric.compute().tp.sum() == 0


def test_host_side_refusals_raise_at_update_and_add_nothing(images):
    gts, gsegs, preds, psegs = columns(images[:3])
    metric = feed(device_metric(), images[:2], [2])
    bad = [dict(s) for s in psegs[1]]
    bad[0]["category_id"] = 100_000
    with pytest.raises(SegmentError, match="image 1: .*unknown category_id 100000"):
        metric.update(gts, preds, gt_segments=gsegs, pred_segments=[psegs[0], bad, psegs[2]])
    with pytest.raises(InputError, match="image 2: .*dtype float32"):
        metric.update(gts, preds[:2] + [preds[2].astype(np.float32)], gt_segments=gsegs,
                      pred_segments=psegs)
    with pytest.raises(InputError, match="image 0: the ground truth is 72x96 but the prediction "
                                         "is 72x95"):
        metric.update([gts[0]], [preds[0][:, :95]], gt_segments=[gsegs[0]],
                      pred_segments=[psegs[0]])
    assert_same_state(metric, host_metric(images[:2]))


def test_refused_updates_merge():
    first = RefusedUpdates(1, 3, 2, STATUS_PRED_ID_NOT_LISTED, STATUS_PRED_ID_NOT_LISTED, 4)
    second = RefusedUpdates(2, 0, 1, STATUS_ID_OUT_OF_RANGE, STATUS_ID_OUT_OF_RANGE | 1, 5)
    merged = first.merge(second)
    assert merged == RefusedUpdates(3, 3, 2, STATUS_PRED_ID_NOT_LISTED,
                                    STATUS_PRED_ID_NOT_LISTED | STATUS_ID_OUT_OF_RANGE | 1, 9)
    assert first.merge(None) is first
    message = str(merged.error(8192))
    assert isinstance(merged.error(8192), SegmentError)
    assert "In all, 3 updates (9 images) were refused" in message
    assert "more distinct (gt, pred) pairs" in message  # among all reasons


def test_bad_pair_capacity_is_refused_at_construction():
    with pytest.raises(ValueError, match="capacity must lie in"):
        fastpq.PanopticQuality(COCO, pair_capacity=0)


# -- device selection, host copies -----------------------------------------------------------------

class FakeDeviceArray:
    """Stands for a CuPy array without a GPU: ``__cuda_array_interface__`` over host data."""

    def __init__(self, array):
        self.array = np.ascontiguousarray(array)
        self.shape, self.ndim, self.dtype = self.array.shape, self.array.ndim, self.array.dtype

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str,
                "data": (self.array.ctypes.data, False), "version": 3}


class FakeCupy:
    """The two CuPy calls of fastpq.core.inputs.to_host, counting host copies."""

    ndarray = FakeDeviceArray

    def __init__(self):
        self.copies = 0

    def asarray(self, x):
        return x

    def asnumpy(self, x):
        self.copies += 1
        return x.array.copy()


def test_device_backend_selection(images):
    gts, _, preds, _ = columns(images[:2])
    assert device_state.device_backend(gts, preds) is None
    assert device_state.device_backend(gts[0], preds[0]) is None
    with pytest.raises(InputError, match="image 1: the predicted map is in host memory while "
                                         "other maps of the update are on a GPU"):
        device_state.device_backend([FakeDeviceArray(g) for g in gts],
                                    [FakeDeviceArray(preds[0]), preds[1]])


def test_import_fastpq_loads_no_gpu_module_nor_oracle():
    """The GPU path is imported on first use; the CPU oracles of the kernels live in tests/."""
    code = ("import sys, fastpq; metric = fastpq.PanopticQuality('coco'); "
            "print(sorted(m for m in sys.modules if 'cuda' in m or 'cupy' in m "
            "or m.startswith('fastpq.gpu')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(fastpq.__file__)), timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    shipped = os.listdir(os.path.dirname(gpu_layout.__file__))
    assert not [name for name in shipped if "emulat" in name or "oracle" in name or
                name in ("pairs_cuda.py", "encode_cuda.py")]


def test_gpu_backend_is_passed_in(images):
    """``gpu_backend`` picks the path of each update: None from it is the host path."""
    gts, gsegs, preds, psegs = columns(images[:4])
    seen = []

    def host_only(gt, pred):
        seen.append((gt, pred))
        return None

    metric = fastpq.PanopticQuality(COCO, gpu_backend=host_only)
    metric.update(gts, preds, gt_segments=gsegs, pred_segments=psegs)
    assert seen == [(gts, preds)] and metric._device is None
    assert_same_state(metric, host_metric(images[:4]))
    metric = device_metric()
    metric.update(gts[:2], preds[:2], gt_segments=gsegs[:2], pred_segments=psegs[:2])
    assert metric._device is not None and metric._device.backend is metric.gpu_backend
    metric.update(gts[2:], preds[2:], gt_segments=gsegs[2:], pred_segments=psegs[2:],
                  per_image=True)  # the host path: the state comes back first
    assert metric._device is None
    assert_same_state(metric, host_metric(images[:4]))


def test_evaluate_copies_device_maps_to_the_host_once_per_batch(images, monkeypatch):
    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    gts, gsegs, preds, psegs = columns(images[:6])
    expected = fastpq.evaluate(gts, preds, gt_segments=gsegs, pred_segments=psegs,
                               categories=COCO).to_dict()
    got = fastpq.evaluate(FakeDeviceArray(np.stack(gts)), FakeDeviceArray(np.stack(preds)),
                          gt_segments=gsegs, pred_segments=psegs, categories=COCO)
    assert got.to_dict() == expected and fake.copies == 2
    got = fastpq.evaluate([FakeDeviceArray(g) for g in gts], preds, gt_segments=gsegs,
                          pred_segments=psegs, categories=COCO)
    assert got.to_dict() == expected and fake.copies == 2 + len(gts)
    # the metric's host path (here: per_image) takes device maps the same way
    metric = fastpq.PanopticQuality(COCO)
    metric.update(FakeDeviceArray(np.stack(gts)), FakeDeviceArray(np.stack(preds)),
                  gt_segments=gsegs, pred_segments=psegs, per_image=True)
    assert metric.compute().to_dict() == expected


def test_device_map_copy_failures_are_input_errors(images, monkeypatch):
    gts, gsegs, preds, psegs = columns(images[:1])
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    with pytest.raises(InputError, match=r"image 0: the predicted map is in GPU memory \(a "
                                         r"FakeDeviceArray\); copying it to the host needs "
                                         r"CuPy: pip install fastpq\[gpu\]"):
        fastpq.evaluate(gts, [FakeDeviceArray(preds[0])], gt_segments=gsegs,
                        pred_segments=psegs, categories=COCO)


# -- the accumulation kernel ----------------------------------------------------------------------

def random_partials(rng, n_images, n_categories, *, refused=()):
    scale = 10.0 ** rng.integers(-12, 3, (n_images, n_categories))
    iou = np.where(rng.random((n_images, n_categories)) < 0.3, 0.0,
                   rng.random((n_images, n_categories)) * scale)
    counts = [rng.integers(0, 5, (n_images, n_categories)).astype(np.int64) for _ in range(3)]
    status = np.zeros(n_images, np.int32)
    for b, bits in refused:
        status[b] = bits
    return MatchPartials(*counts, iou, None, None, status)


def empty_state(n_categories):
    return (np.zeros(n_categories, np.int64), np.zeros(n_categories, np.int64),
            np.zeros(n_categories, np.int64), np.zeros(n_categories), np.zeros(n_categories),
            np.zeros(RECORD_FIELDS, np.int64))


def test_host_twin_is_the_accumulator_bit_for_bit():
    rng = np.random.default_rng(3)
    acc = PQAccumulator(COCO)
    state = empty_state(len(COCO))
    for update in range(6):
        refused = [(1, STATUS_PAIR_TABLE_OVERFLOW)] if update == 2 else []
        partials = random_partials(rng, int(rng.integers(1, 9)), len(COCO), refused=refused)
        accumulate_partials_host(partials, state, update=update)
        if not refused:
            for b in range(partials.tp.shape[0]):
                acc.add_image(partials.tp[b], partials.fp[b], partials.fn[b],
                              partials.iou_sum[b])
    for got, want in zip(state[:5], (acc.tp, acc.fp, acc.fn, acc.iou, acc.iou_err)):
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))
    assert acc.iou_err.any()  # the error half is exercised
    assert state[5][:5].tolist() == [1, 2, 1, STATUS_PAIR_TABLE_OVERFLOW,
                                     STATUS_PAIR_TABLE_OVERFLOW]


ACCUMULATE_DRIVER = r"""
#include "cuda_shim.h"
#include "accumulate.cu"
extern "C" void run_accumulate(const long long* tp_b, const long long* fp_b,
                               const long long* fn_b, const double* iou_b, const int* status,
                               int n_images, int n_categories, long long update, long long* tp,
                               long long* fp, long long* fn, double* iou, double* iou_err,
                               long long* record) {
    dim3 grid; grid.x = (unsigned)((n_categories + FASTPQ_ACCUMULATE_THREADS - 1) /
                                   FASTPQ_ACCUMULATE_THREADS);
    dim3 block; block.x = FASTPQ_ACCUMULATE_THREADS;
    shim_launch(grid, block, [&] { accumulate_partials(tp_b, fp_b, fn_b, iou_b, status, n_images,
        n_categories, update, tp, fp, fn, iou, iou_err, record); });
}
"""


@pytest.fixture(scope="module")
def accumulate_shim(tmp_path_factory):
    return build_cpu_shim(tmp_path_factory.mktemp("accumulate"), CUDA_SHIM, ACCUMULATE_DRIVER,
                          os.path.dirname(ACCUMULATE_SOURCE),
                          ["-ffp-contract=off", "-DFASTPQ_ACCUMULATE_THREADS=32"], optimise="-O2")


def test_accumulate_cu_on_cpu_threads_equals_the_host_twin(accumulate_shim):
    rng = np.random.default_rng(4)
    n_categories = 70  # three blocks of 32 threads, the last one partly idle
    got, want = empty_state(n_categories), empty_state(n_categories)
    for update in range(5):
        refused = [(0, STATUS_PRED_ID_NOT_LISTED), (2, STATUS_ID_OUT_OF_RANGE)] \
            if update in (1, 3) else []
        partials = random_partials(rng, 4, n_categories, refused=refused)
        accumulate_partials_host(partials, want, update=update)
        c = [np.ascontiguousarray(a) for a in (partials.tp, partials.fp, partials.fn,
                                               partials.iou_sum, partials.status)]
        accumulate_shim.run_accumulate(
            *(ctypes.c_void_p(a.ctypes.data) for a in c), ctypes.c_int(4),
            ctypes.c_int(n_categories), ctypes.c_longlong(update),
            *(ctypes.c_void_p(a.ctypes.data) for a in got))
    for name, g, w in zip(("tp", "fp", "fn", "iou", "iou_err", "record"), got, want):
        np.testing.assert_array_equal(g.view(np.int64), w.view(np.int64), err_msg=name)
    assert want[5].tolist() == [2, 1, 0, STATUS_PRED_ID_NOT_LISTED,
                                STATUS_PRED_ID_NOT_LISTED | STATUS_ID_OUT_OF_RANGE, 8]


@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
def test_accumulate_cu_compiles_without_warnings_or_spills(tmp_path, arch):
    spills = nvcc_spills(ACCUMULATE_SOURCE, arch, tmp_path)
    assert spills and all(s == ("0", "0") for s in spills), spills


def test_accumulate_cu_compiles_with_nvrtc():
    from fastpq.gpu.cupy_kernels import accumulate_source

    options = ["-arch=compute_80", *gpu_layout.nvrtc_options()]
    assert nvrtc_log(accumulate_source(), "accumulate.cu", options) == ""


# -- on a GPU --------------------------------------------------------------------------------------

def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


@pytest.mark.gpu
@requires_gpu
def test_gpu_cupy_and_torch_updates_equal_the_host_path(images):
    import cupy as cp

    expected = host_metric(images)
    metric = fastpq.PanopticQuality(COCO)
    gts, gsegs, preds, psegs = columns(images)
    metric.update(cp.asarray(np.stack(gts[:9])), cp.asarray(np.stack(preds[:9])),
                  gt_segments=gsegs[:9], pred_segments=psegs[:9])
    metric.update([cp.asarray(g) for g in gts[9:20]], [cp.asarray(p) for p in preds[9:20]],
                  gt_segments=gsegs[9:20], pred_segments=psegs[9:20])
    assert metric._device is not None
    torch = _torch_cuda()
    metric.update([torch.from_numpy(g).cuda() for g in gts[20:]],
                  [torch.from_numpy(p.astype(np.int64)).cuda() for p in preds[20:]],
                  gt_segments=gsegs[20:], pred_segments=psegs[20:])
    assert_same_state(metric, expected)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # a non-default stream: the state follows it on the device
        metric = fastpq.PanopticQuality(COCO)
        for k in range(0, 18, 6):  # the first 18 images share one size: stacked batches
            metric.update(torch.from_numpy(np.stack(gts[k:k + 6])).cuda(),
                          torch.from_numpy(np.stack(preds[k:k + 6])).cuda(),
                          gt_segments=gsegs[k:k + 6], pred_segments=psegs[k:k + 6])
        metric.update([torch.from_numpy(g).cuda() for g in gts[18:]],
                      [torch.from_numpy(p).cuda() for p in preds[18:]],
                      gt_segments=gsegs[18:], pred_segments=psegs[18:])
    assert_same_state(metric, expected)
    got = fastpq.evaluate(torch.from_numpy(np.stack(gts[:18])).cuda(),
                          torch.from_numpy(np.stack(preds[:18])).cuda(), gt_segments=gsegs[:18],
                          pred_segments=psegs[:18], categories=COCO)
    assert got.to_dict() == host_metric(images[:18]).compute().to_dict()


@pytest.mark.gpu
@requires_gpu
def test_gpu_update_never_synchronises_torch(images):
    torch = _torch_cuda()
    gts, gsegs, preds, psegs = columns(images[:18])
    gt, pred = torch.from_numpy(np.stack(gts)).cuda(), torch.from_numpy(np.stack(preds)).cuda()
    metric = fastpq.PanopticQuality(COCO)
    metric.update(gt, pred, gt_segments=gsegs, pred_segments=psegs)  # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            metric.update(gt, pred, gt_segments=gsegs, pred_segments=psegs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert metric.compute().n_images == 4 * 18


@pytest.mark.gpu
@requires_gpu
def test_gpu_update_returns_before_the_device_finishes(images):
    import cupy as cp

    spin = cp.RawKernel(r"""extern "C" __global__ void spin(long long cycles) {
        const long long start = clock64(); while (clock64() - start < cycles) {} }""", "spin")
    gts, gsegs, preds, psegs = columns(images[:18])
    gt, pred = cp.asarray(np.stack(gts)), cp.asarray(np.stack(preds))
    metric = fastpq.PanopticQuality(COCO)
    metric.update(gt, pred, gt_segments=gsegs, pred_segments=psegs)  # compiles the kernels
    stream = cp.cuda.get_current_stream()
    stream.synchronize()
    spin((1,), (1,), (np.int64(4_000_000_000),))  # ~2 s of device time queued first
    metric.update(gt, pred, gt_segments=gsegs, pred_segments=psegs)
    assert not stream.done  # update() queued its work behind the spin and returned
    assert_same_state(metric, feed(fastpq.PanopticQuality(COCO), images[:18] * 2, [18, 36]))


@pytest.mark.gpu
@requires_gpu
def test_gpu_refusals_are_raised_at_compute(images):
    import cupy as cp

    gts, gsegs, preds, psegs = columns(images[:3])
    metric = fastpq.PanopticQuality(COCO, pair_capacity=64)
    noisy = np.random.default_rng(0).choice([s["id"] for s in psegs[1]], preds[1].shape)
    metric.update(cp.asarray(np.stack(gts)), cp.asarray(np.stack([preds[0], noisy, preds[2]])),
                  gt_segments=gsegs, pred_segments=psegs)
    metric.update(cp.asarray(gts[0]), cp.asarray(preds[0]), gt_segments=gsegs[0],
                  pred_segments=psegs[0])
    with pytest.raises(InputError, match="image 1 of update 0 .*pair_capacity="):
        metric.compute()
    assert_same_state(metric, host_metric(images[:1]))

"""The GPU path of the pairs and divisor conventions (kernels/encode.cu, DeviceAccumulator.
add_encoded): maps encoded to int32 ids on the device, segment tables derived from the pair tables.

On the CPU the glue runs on :class:`cuda_oracles.EmulatedBackend` (passed as ``gpu_backend=``)
and must give the host path's state bitwise;
encode.cu runs on CPU threads through the CUDA shim and must equal its emulation; nvcc and NVRTC
compile it. Tests marked ``gpu`` run the real kernels.
"""

import ctypes
import os

import numpy as np
import pytest

import fastpq
from fastpq.errors import InputError, SegmentError
from fastpq.gpu.device_state import category_lut
from fastpq.kernels import gpu_layout
from fastpq.kernels.gpu_layout import MODE_DIVISOR, MODE_PAIRS
from conventions import divisor_map, pairs_map
import test_device_state
from test_device_state import _torch_cuda, assert_same_state, device_metric
from cuda_build import build_cpu_shim, nvcc_spills, nvrtc_log
from cuda_oracles import derive_tables_emulated, encode_emulated, pair_histogram_emulated
from test_gpu_kernel import CUDA_SHIM, HAS_GPU, SHIM_DRIVER

COCO = fastpq.Categories.coco_panoptic()
ENCODE_SOURCE = os.path.join(os.path.dirname(gpu_layout.__file__), "encode.cu")
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs CuPy and a CUDA device")
images = test_device_state.images  # the fixtures of test_device_state.py, shared


def encoded(images, kind):
    """(gts, preds) of the images in the pairs or divisor convention."""
    convert = pairs_map if kind == "pairs" else divisor_map
    return ([convert(g, gs) for g, gs, _, _ in images], [convert(p, ps) for _, _, p, ps in images])


def options(kind, thing_instance_zero="crowd"):
    return dict(label_divisor=None if kind == "pairs" else 1000,
                thing_instance_zero=thing_instance_zero)


def host_metric(gts, preds, kind, **extra):
    metric = fastpq.PanopticQuality(COCO, **options(kind, **extra))
    metric.update(gts, preds)
    assert metric._device is None
    return metric


# -- the glue on the CPU emulation ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pairs", "divisor"])
@pytest.mark.parametrize("thing_instance_zero", ["crowd", "instance"])
def test_encoded_updates_equal_the_host_path(images, kind, thing_instance_zero):
    gts, preds = encoded(images, kind)
    want = host_metric(gts + gts[:1], preds + preds[:1], kind,
                       thing_instance_zero=thing_instance_zero)
    metric = device_metric(**options(kind, thing_instance_zero))
    metric.update(np.stack(gts[:10]), np.stack(preds[:10]))  # one stacked batch
    metric.update(gts[10:], preds[10:])  # a list of mixed sizes: several batches
    metric.update(gts[0], preds[0])  # one image
    assert metric._device is not None
    assert_same_state(metric, want)


def test_crowd_regions_and_void_come_from_the_ids():
    """Thing instance 0 in the GT is a crowd region (unmatched predictions over it are not
    false positives); void pixels, whatever their instance, count nowhere."""
    person, sky = 1, 187  # a thing and a stuff category of COCO panoptic
    gt = np.zeros((8, 12, 2), np.int64)
    gt[:, :6] = (person, 0)  # a crowd region
    gt[:, 6:10] = (person, 3)
    gt[:, 10:] = (0, 9)  # void
    pred = np.zeros_like(gt)
    pred[:, :6] = (person, 5)  # over the crowd: not a false positive
    pred[:, 6:10] = (person, 4)  # matches instance 3
    pred[:, 10:] = (sky, 0)  # over void only: ignored
    want = fastpq.evaluate(gt, pred, categories=COCO)
    metric = device_metric()
    metric.update(gt[None], pred[None])
    assert metric._device is not None
    got = metric.compute()
    assert got.to_dict() == want.to_dict()
    assert got.per_class[person].tp == 1 and got.per_class[person].fp == 0
    assert got.per_class[sky].fp == 0


@pytest.mark.parametrize("kind", ["pairs", "divisor"])
def test_unknown_categories_are_segment_errors_at_compute(images, kind):
    gts, preds = encoded(images[:4], kind)
    bad = preds[1].copy()
    if kind == "pairs":
        bad[:3, :3] = (999, 1)
    else:
        bad[:3, :3] = 999 * 1000 + 1
    metric = device_metric(**options(kind))
    metric.update(gts[:2], [preds[0], bad])  # refused as a whole
    metric.update(gts[2:], preds[2:])
    with pytest.raises(SegmentError, match="image 1 of update 0.*neither in the category table"):
        metric.compute()
    assert_same_state(metric, host_metric(gts[2:], preds[2:], kind))


def test_out_of_range_and_too_large_instances_are_input_errors(images):
    gts, preds = encoded(images[:2], "pairs")
    negative = gts[0].copy()
    negative[0, 0] = (1, -1)
    metric = device_metric()
    metric.update([negative], preds[:1])
    with pytest.raises(InputError, match="outside \\[0, 2\\*\\*31\\)"):
        metric.compute()
    large = gts[0].copy()
    large[0, 0] = (1, 1 << gpu_layout.instance_bits(len(COCO)))
    metric.update([large], preds[:1])
    with pytest.raises(InputError, match="too large for the GPU path"):
        metric.compute()
    assert metric.compute().n_images == 0


def test_bad_shapes_are_refused_at_update(images):
    gts, preds = encoded(images[:2], "pairs")
    metric = device_metric()
    with pytest.raises(InputError, match="\\(H, W, 2\\)"):
        metric.update(gts[0][..., :1], preds[0][..., :1])
    with pytest.raises(InputError, match="the ground truth is"):
        metric.update([gts[0]], [preds[0][:-1]])
    with pytest.raises(InputError, match="dtype float64"):
        metric.update(gts[0].astype(float), preds[0].astype(float))


def test_instance_bits_and_lookup_table():
    assert gpu_layout.instance_bits(133) == 23 and gpu_layout.instance_bits(19) == 26
    with pytest.raises(ValueError):
        gpu_layout.instance_bits(1 << 24)
    lut, is_thing = category_lut([3, 1, 7], [True, False, True])
    assert lut.tolist() == [-1, 1, -1, 0, -1, -1, -1, 2] and is_thing.tolist() == [1, 0, 1]
    assert category_lut([-1, 2], [0, 0]) is None


# -- encode.cu itself -----------------------------------------------------------------------------

ENCODE_DRIVER = SHIM_DRIVER + r"""
#include "encode.cu"
extern "C" {
void run_encoded_histogram(int wide, const void* gt, const void* pred, long long n_images,
                           long long n_pixels, long long tile, int mode, long long divisor,
                           long long void_label, const int* lut, long long lut_size,
                           int inst_bits, u64* keys, u64* counts, int cap_log2, int* status) {
    dim3 grid; grid.x = (unsigned)((n_pixels + tile - 1) / tile); grid.y = (unsigned)n_images;
    dim3 block; block.x = FASTPQ_BLOCK_THREADS;
    if (wide) shim_launch(grid, block, [&] { pair_histogram_encoded_i64((const long long*)gt,
        (const long long*)pred, n_pixels, tile, mode, divisor, void_label, lut, lut_size,
        inst_bits, keys, counts, cap_log2, status); });
    else shim_launch(grid, block, [&] { pair_histogram_encoded_i32((const int*)gt,
        (const int*)pred, n_pixels, tile, mode, divisor, void_label, lut, lut_size, inst_bits,
        keys, counts, cap_log2, status); });
}
void run_derive(long long n_images, const int* pair_gt, const int* pair_pred, const int* n_pairs,
                int cap_log2, int inst_bits, const int* is_thing, int crowd_rule, int* first,
                int* gt_id, int* gt_category, int* gt_iscrowd, int* n_gt, int* pred_id,
                int* pred_category, int* n_pred) {
    dim3 grid; grid.x = (unsigned)n_images; dim3 block; block.x = 32;
    shim_launch(grid, block, [&] { derive_segment_tables(pair_gt, pair_pred, n_pairs, cap_log2,
        inst_bits, is_thing, crowd_rule, first, gt_id, gt_category, gt_iscrowd, n_gt, pred_id,
        pred_category, n_pred); });
}
}
"""


@pytest.fixture(scope="module")
def encode_shim(tmp_path_factory):
    return build_cpu_shim(tmp_path_factory.mktemp("encode"), CUDA_SHIM, ENCODE_DRIVER,
                          os.path.dirname(ENCODE_SOURCE),
                          ["-DFASTPQ_BLOCK_THREADS=64", "-DFASTPQ_SHARED_LOG2=4",
                           "-DFASTPQ_SHARED_MAX_PROBE=4"])


def _p(array):
    return ctypes.c_void_p(array.ctypes.data)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("mode", [MODE_PAIRS, MODE_DIVISOR])
def test_fused_encoded_histogram_on_cpu_threads_equals_its_emulation(encode_shim, dtype, mode):
    """pair_histogram_encoded_* (small shared tables: the overflow paths too) against the
    emulation's encode-then-histogram, status bits included: unknown categories, values outside
    [0, 2**31), instances too large for the encoding."""
    rng = np.random.default_rng(8)
    lut, _ = category_lut([1, 2, 5, 9], [1, 0, 1, 0])
    inst_bits, n_images, n_pixels, tile = 9, 3, 37 * 29, 300
    categories = rng.choice([0, 1, 2, 5, 9], (n_images, n_pixels))
    instances = rng.integers(0, 6, (n_images, n_pixels))
    if mode == MODE_PAIRS:
        gt = np.stack([categories, instances], -1).reshape(n_images, -1).astype(dtype)
    else:
        gt = (categories * 1000 + instances).astype(dtype)
    pred = np.roll(gt, 8, axis=1)  # by whole [category, instance] pairs
    pred[1, :4] = [7, 1, 3, 2] if mode == MODE_PAIRS else [7000, 1, 3000, 2]  # unknown 7 and 3
    pred[2, 5] = -1  # out of range
    too_large = 1 << inst_bits
    if mode == MODE_PAIRS:
        gt[2, 8:10] = [1, too_large]
    else:
        gt[2, 9] = 2000 + too_large
    divisor = 1000 if mode == MODE_DIVISOR else 1
    g_ids, p_ids, enc_status = encode_emulated(gt, pred, mode, divisor, 0, lut,
                                                           inst_bits)
    want = pair_histogram_emulated(g_ids[:, None], p_ids[:, None], capacity=1024,
                                              tile_pixels=tile, vec4=False)
    cap_log2 = gpu_layout.capacity_log2(1024)
    keys = np.full((n_images, 1 << cap_log2), gpu_layout.EMPTY_KEY, np.uint64)
    counts = np.zeros_like(keys)
    status = np.zeros(n_images, np.int32)
    ll, i32 = ctypes.c_longlong, ctypes.c_int
    encode_shim.run_encoded_histogram(
        i32(int(gt.dtype == np.int64)), _p(gt), _p(pred), ll(n_images), ll(n_pixels), ll(tile),
        i32(mode), ll(divisor), ll(0), _p(lut), ll(lut.size), i32(inst_bits), _p(keys),
        _p(counts), i32(cap_log2), _p(status))
    out = [np.zeros(keys.shape, t) for t in (np.int32, np.int32, np.int64)]
    n_pairs = np.zeros(n_images, np.int32)
    scratch = [np.empty_like(keys), np.empty_like(keys)]  # alive during the call
    encode_shim.run_compact(ll(n_images), _p(keys), _p(counts), i32(cap_log2), _p(scratch[0]),
                            _p(scratch[1]), _p(out[0]), _p(out[1]), _p(out[2]), _p(n_pairs))
    np.testing.assert_array_equal(n_pairs, want.n_pairs)
    for b in range(n_images):
        n = n_pairs[b]
        for got, expected in zip(out, (want.gt, want.pred, want.count)):
            np.testing.assert_array_equal(got[b, :n], expected[b, :n])
    np.testing.assert_array_equal(status, want.status | enc_status)
    assert status.tolist() == [
        0, gpu_layout.STATUS_CATEGORY_UNKNOWN,
        gpu_layout.STATUS_ID_OUT_OF_RANGE | gpu_layout.STATUS_INSTANCE_TOO_LARGE]


def test_derive_cu_on_cpu_threads_equals_its_emulation(encode_shim):
    rng = np.random.default_rng(6)
    inst_bits = 9
    is_thing = np.array([1, 0, 1], np.int32)
    ids = np.array([0] + [((c + 1) << inst_bits) | i for c in range(3) for i in range(3)],
                   np.int32)
    gt = rng.choice(ids, (4, 40 * 30)).astype(np.int32)
    pred = rng.choice(ids, (4, 40 * 30)).astype(np.int32)
    pairs = pair_histogram_emulated(gt, pred, capacity=128)
    for crowd_rule in (True, False):
        want_gt, want_pred = derive_tables_emulated(pairs, inst_bits, is_thing,
                                                                crowd_rule)
        n_images, cap = pairs.gt.shape
        out = [np.full((n_images, cap), -7, np.int32) for _ in range(6)]
        n_gt, n_pred = np.zeros(n_images, np.int32), np.zeros(n_images, np.int32)
        encode_shim.run_derive(
            ctypes.c_longlong(n_images), _p(pairs.gt), _p(pairs.pred), _p(pairs.n_pairs),
            ctypes.c_int(cap.bit_length() - 1), ctypes.c_int(inst_bits), _p(is_thing),
            ctypes.c_int(int(crowd_rule)), _p(out[0]), _p(out[1]), _p(out[2]), _p(out[3]),
            _p(n_gt), _p(out[4]), _p(out[5]), _p(n_pred))
        np.testing.assert_array_equal(n_gt, want_gt.count)
        np.testing.assert_array_equal(n_pred, want_pred.count)
        for b in range(n_images):
            k, m = want_gt.count[b], want_pred.count[b]
            for got, want in ((out[1], want_gt.id), (out[2], want_gt.category),
                              (out[3], want_gt.iscrowd)):
                np.testing.assert_array_equal(got[b, :k], want[b, :k])
            for got, want in ((out[4], want_pred.id), (out[5], want_pred.category)):
                np.testing.assert_array_equal(got[b, :m], want[b, :m])
        assert want_gt.iscrowd.any() == crowd_rule


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_encode_cu_compiles_without_warnings_or_spills(tmp_path, arch):
    from fastpq.gpu.cupy_kernels import encoded_module_source

    module = tmp_path / "pairs_and_encode.cu"  # the module fastpq.gpu.cupy_kernels builds
    module.write_text(encoded_module_source())
    spills = nvcc_spills(str(module), arch, tmp_path)
    assert spills == [("0", "0")] * 8, spills


def test_encode_cu_compiles_with_nvrtc():
    from fastpq.gpu.cupy_kernels import encoded_module_source

    options = ["-arch=compute_80", *gpu_layout.nvrtc_options()]
    assert nvrtc_log(encoded_module_source(), "pairs_and_encode.cu", options) == ""


# -- on a GPU --------------------------------------------------------------------------------------

@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("kind", ["pairs", "divisor"])
def test_gpu_encoded_updates_equal_the_host_path(images, kind):
    import cupy as cp

    torch = _torch_cuda()
    gts, preds = encoded(images, kind)
    want = host_metric(gts, preds, kind)
    metric = fastpq.PanopticQuality(COCO, **options(kind))
    metric.update(cp.asarray(np.stack(gts[:10])), cp.asarray(np.stack(preds[:10])))
    metric.update([torch.from_numpy(g).cuda() for g in gts[10:]],
                  [torch.from_numpy(p.astype(np.int32)).cuda() for p in preds[10:]])
    assert metric._device is not None
    assert_same_state(metric, want)
    bad = preds[0].copy()
    bad[0, 0] = (999, 0) if kind == "pairs" else 999000
    metric.update(cp.asarray(gts[0]), cp.asarray(bad))
    with pytest.raises(SegmentError, match="neither in the category table"):
        metric.compute()


@pytest.mark.gpu
@requires_gpu
def test_gpu_encoded_update_never_synchronises_torch(images):
    torch = _torch_cuda()
    gts, preds = encoded(images[:18], "pairs")
    gt, pred = torch.from_numpy(np.stack(gts)).cuda(), torch.from_numpy(np.stack(preds)).cuda()
    metric = fastpq.PanopticQuality(COCO)
    metric.update(gt, pred)  # compiles the kernels, uploads the lookup table
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            metric.update(gt, pred)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert metric.compute().n_images == 4 * 18

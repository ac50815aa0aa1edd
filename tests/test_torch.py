"""torch CPU tensors in, the NumPy path's numbers out: every convention, batched, strided."""

import numpy as np
import pytest

import fastpq
from fastpq.datasets import synthetic
from fastpq.errors import InputError
from fastpq.core.arrays import as_array
from conventions import divisor_map, pairs_map

torch = pytest.importorskip("torch")

COCO = fastpq.Categories.coco_panoptic()


@pytest.fixture(scope="module")
def images():
    return synthetic.make_dataset(6, height=120, width=160, categories="coco", seed=21)


@pytest.fixture(scope="module")
def coco(images):
    gts, gsegs, preds, psegs = (list(x) for x in zip(*images))
    expected = fastpq.evaluate(gts, preds, gt_segments=gsegs, pred_segments=psegs,
                               categories=COCO).to_dict()
    return gts, gsegs, preds, psegs, expected


def tensors(arrays):
    return [torch.from_numpy(a) for a in arrays]


def test_coco_id_maps_as_tensors(coco):
    gts, gsegs, preds, psegs, expected = coco
    one_by_one = fastpq.evaluate(tensors(gts), tensors(preds), gt_segments=gsegs,
                                 pred_segments=psegs, categories=COCO)
    stacked = fastpq.evaluate(torch.from_numpy(np.stack(gts)), torch.from_numpy(np.stack(preds)),
                              gt_segments=gsegs, pred_segments=psegs, categories=COCO)
    assert one_by_one.to_dict() == expected
    assert stacked.to_dict() == expected


def test_coco_rgb_maps_as_tensors(coco):
    gts, gsegs, preds, psegs, expected = coco
    gt_rgb = torch.from_numpy(np.stack([synthetic.id2rgb(g) for g in gts]))
    pred_rgb = torch.from_numpy(np.stack([synthetic.id2rgb(p) for p in preds]))
    assert gt_rgb.dtype == torch.uint8 and gt_rgb.shape[-1] == 3
    batched = fastpq.evaluate(gt_rgb, pred_rgb, gt_segments=gsegs, pred_segments=psegs,
                              categories=COCO)
    assert batched.to_dict() == expected
    single = fastpq.evaluate(gt_rgb[0], pred_rgb[0], gt_segments=gsegs[0],
                             pred_segments=psegs[0], categories=COCO)
    assert single.to_dict() == fastpq.evaluate(gts[0], preds[0], gt_segments=gsegs[0],
                                               pred_segments=psegs[0], categories=COCO).to_dict()


@pytest.mark.parametrize("thing_instance_zero", ["crowd", "instance"])
def test_pairs_maps_as_tensors(images, thing_instance_zero):
    gt = np.stack([pairs_map(g, gs) for g, gs, _, _ in images])
    pred = np.stack([pairs_map(p, ps) for _, _, p, ps in images])
    expected = fastpq.evaluate(gt, pred, categories=COCO,
                               thing_instance_zero=thing_instance_zero).to_dict()
    for dtype in (torch.int32, torch.int64):
        got = fastpq.evaluate(torch.from_numpy(gt).to(dtype), torch.from_numpy(pred).to(dtype),
                              categories=COCO, thing_instance_zero=thing_instance_zero)
        assert got.to_dict() == expected
    assert fastpq.evaluate(list(torch.from_numpy(gt)), list(torch.from_numpy(pred)),
                           categories=COCO, thing_instance_zero=thing_instance_zero
                           ).to_dict() == expected


def test_divisor_maps_as_tensors(images):
    gt = np.stack([divisor_map(g, gs) for g, gs, _, _ in images])
    pred = np.stack([divisor_map(p, ps) for _, _, p, ps in images])
    expected = fastpq.evaluate(gt, pred, label_divisor=1000, categories=COCO).to_dict()
    got = fastpq.evaluate(torch.from_numpy(gt), torch.from_numpy(pred), label_divisor=1000,
                          categories=COCO)
    assert got.to_dict() == expected
    single = fastpq.evaluate(torch.from_numpy(gt[2]), torch.from_numpy(pred[2]),
                             label_divisor=1000, categories=COCO)
    assert single.to_dict() == fastpq.evaluate(gt[2], pred[2], label_divisor=1000,
                                               categories=COCO).to_dict()


def test_non_contiguous_views(images):
    """Transposed maps, every other pixel, channel-last views of channel-first tensors."""
    gt = np.stack([divisor_map(g, gs) for g, gs, _, _ in images])
    pred = np.stack([divisor_map(p, ps) for _, _, p, ps in images])
    views = {
        "transposed": lambda a: torch.from_numpy(a.swapaxes(1, 2).copy()).transpose(1, 2),
        "strided": lambda a: torch.from_numpy(a)[:, ::2, 1::3],
    }
    for name, view in views.items():
        g, p = view(gt), view(pred)
        assert not g.is_contiguous(), name
        expected = fastpq.evaluate(np.ascontiguousarray(g.numpy()), np.ascontiguousarray(p.numpy()),
                                   label_divisor=1000, categories=COCO)
        got = fastpq.evaluate(g, p, label_divisor=1000, categories=COCO)
        assert got.to_dict() == expected.to_dict(), name

    def channel_last(maps):
        category, instance = np.divmod(maps, 1000)
        return torch.from_numpy(np.stack([category, instance])).permute(1, 2, 3, 0)

    g, p = channel_last(gt), channel_last(pred)
    assert not g.is_contiguous() and g.shape[-1] == 2
    assert fastpq.evaluate(g, p, categories=COCO).to_dict() == fastpq.evaluate(
        gt, pred, label_divisor=1000, categories=COCO).to_dict()


def test_tensors_are_read_in_place():
    t = torch.arange(24, dtype=torch.int64).reshape(4, 6)[:, ::2]
    a = as_array(t, what="ground-truth", image_index=0)
    assert a.__array_interface__["data"][0] == t.data_ptr()
    assert a.strides == tuple(s * t.element_size() for s in t.stride())


def maps(dtype):
    g = torch.zeros((4, 6), dtype=dtype)
    g[:, 3:] = 1
    return g, [{"id": 1, "category_id": 1, "iscrowd": 0}], g.clone(), [{"id": 1, "category_id": 1}]


@pytest.mark.parametrize("dtype, message", [(torch.bool, "dtype bool"),
                                            (torch.float32, "dtype float32"),
                                            (torch.bfloat16, "has no NumPy view")])
def test_non_integer_tensors_are_refused(dtype, message):
    g, gs, p, ps = maps(dtype)
    with pytest.raises(InputError, match=message):
        fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps, categories={"things": [1]})
    with pytest.raises(InputError, match=message):
        fastpq.evaluate(g[None], p[None], gt_segments=[gs], pred_segments=[ps],
                        categories={"things": [1]})


def test_tensors_without_host_memory_are_refused():
    g, gs, p, ps = maps(torch.int32)
    meta = torch.empty((4, 6), dtype=torch.int32, device="meta")
    with pytest.raises(InputError, match="image 0.*ground-truth map.*has no NumPy view"):
        fastpq.evaluate([meta], [p], gt_segments=[gs], pred_segments=[ps],
                        categories={"things": [1]})


class DeviceArray:
    """Stands for a CuPy array (no GPU here): it only has ``__cuda_array_interface__``."""

    shape = (4, 6)
    ndim = 2
    dtype = np.dtype(np.int32)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": "<i4", "data": (0, False), "version": 3}


def test_device_arrays_that_cannot_be_copied_are_refused():
    """evaluate copies GPU maps to the host; one whose copy fails is an InputError naming it."""
    g, gs, p, ps = maps(torch.int32)
    with pytest.raises(InputError, match="image 0: the predicted map is in GPU memory"):
        fastpq.evaluate([g], [DeviceArray()], gt_segments=[gs], pred_segments=[ps],
                        categories={"things": [1]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_are_copied_by_evaluate():
    g, gs, p, ps = maps(torch.int32)
    expected = fastpq.evaluate(g, p, gt_segments=gs, pred_segments=ps,
                               categories={"things": [1]}).to_dict()
    assert fastpq.evaluate(g.cuda(), p.cuda(), gt_segments=gs, pred_segments=ps,
                           categories={"things": [1]}).to_dict() == expected


def test_metric_takes_tensors(coco):
    gts, gsegs, preds, psegs, expected = coco
    metric = fastpq.PanopticQuality(COCO)
    metric.update(torch.from_numpy(np.stack(gts[:4])), torch.from_numpy(np.stack(preds[:4])),
                  gt_segments=gsegs[:4], pred_segments=psegs[:4])
    metric.update(tensors(gts[4:]), tensors(preds[4:]), gt_segments=gsegs[4:],
                  pred_segments=psegs[4:])
    assert metric.compute().to_dict() == expected

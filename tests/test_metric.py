"""fastpq.PanopticQuality: streaming equals evaluate exactly; merge, state, pickling; gloo DDP."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastpq
from fastpq.datasets import synthetic
from fastpq.errors import InputError
from conventions import divisor_map, pairs_map
from gloo import run_ranks
from reference import assert_parity, reference_stat

COCO = fastpq.Categories.coco_panoptic()
COCO_LIST = COCO.to_coco()


@pytest.fixture(scope="module")
def images():
    return synthetic.make_dataset(24, height=120, width=160, categories="coco", seed=5)


@pytest.fixture(scope="module")
def expected(images):
    gts, gsegs, preds, psegs = (list(x) for x in zip(*images))
    return fastpq.evaluate(gts, preds, gt_segments=gsegs, pred_segments=psegs,
                           categories=COCO).to_dict()


def stream(metric, images, batch_size, *, stacked=False):
    for start in range(0, len(images), batch_size):
        gts, gsegs, preds, psegs = (list(x) for x in zip(*images[start:start + batch_size]))
        if stacked:
            gts, preds = np.stack(gts), np.stack(preds)
        metric.update(gts, preds, gt_segments=gsegs, pred_segments=psegs)
    return metric


@pytest.mark.parametrize("batch_size, stacked", [(1, False), (5, False), (24, False), (8, True)])
def test_streaming_equals_evaluate(images, expected, batch_size, stacked):
    metric = stream(fastpq.PanopticQuality(COCO), images, batch_size, stacked=stacked)
    assert metric.compute().to_dict() == expected
    assert metric.compute().n_images == len(images)


def test_single_image_updates(images, expected):
    metric = fastpq.PanopticQuality(COCO)
    for g, gs, p, ps in images:
        metric.update(g, p, gt_segments=gs, pred_segments=ps)
    assert metric.compute().to_dict() == expected


def test_matches_reference(images, tmp_path, panopticapi):
    metric = stream(fastpq.PanopticQuality(COCO_LIST), images, 7)
    assert_parity(metric.compute(), reference_stat(images, COCO_LIST, str(tmp_path)), COCO_LIST)


@pytest.mark.parametrize("thing_instance_zero", ["crowd", "instance"])
def test_pairs_and_divisor_conventions(images, thing_instance_zero):
    options = dict(categories=COCO, thing_instance_zero=thing_instance_zero)
    pairs = ([pairs_map(g, gs) for g, gs, _, _ in images],
             [pairs_map(p, ps) for _, _, p, ps in images])
    divisor = ([divisor_map(g, gs) for g, gs, _, _ in images],
               [divisor_map(p, ps) for _, _, p, ps in images])
    for (gts, preds), label_divisor in ((pairs, None), (divisor, 1000)):
        metric = fastpq.PanopticQuality(label_divisor=label_divisor, **options)
        metric.update(np.stack(gts[:10]), np.stack(preds[:10]))
        metric.update(gts[10:], preds[10:])
        assert metric.compute().to_dict() == fastpq.evaluate(
            gts, preds, label_divisor=label_divisor, **options).to_dict()


def test_compute_leaves_the_state_alone(images, expected):
    metric = stream(fastpq.PanopticQuality(COCO), images[:10], 4)
    first = metric.compute().to_dict()
    assert metric.compute().to_dict() == first
    stream(metric, images[10:], 4)
    assert metric.compute().to_dict() == expected


def test_failed_update_adds_nothing(images):
    metric = stream(fastpq.PanopticQuality(COCO), images[:3], 3)
    before = metric.state_dict()
    gts, gsegs, preds, psegs = (list(x) for x in zip(*images[3:6]))
    preds[2] = preds[2].astype(np.int64)
    preds[2][0, 0] = -1
    with pytest.raises(InputError, match="image 2.*negative id"):
        metric.update(gts, preds, gt_segments=gsegs, pred_segments=psegs)
    assert metric.state_dict() == before


def test_merge(images, expected):
    first = stream(fastpq.PanopticQuality(COCO), images[:9], 4)
    second = stream(fastpq.PanopticQuality(COCO), images[9:], 4)
    assert first.merge(second) is first
    assert first.compute().to_dict() == expected
    assert second.compute().n_images == len(images) - 9
    with pytest.raises(ValueError, match="different category tables"):
        first.merge(fastpq.PanopticQuality("cityscapes"))
    with pytest.raises(TypeError, match="PQAccumulator"):
        first.merge(fastpq.PQAccumulator(COCO))


def test_state_dict_round_trip(images, expected):
    metric = stream(fastpq.PanopticQuality(COCO), images[:11], 4)
    state = json.loads(json.dumps(metric.state_dict()))
    restored = fastpq.PanopticQuality(COCO)
    restored.load_state_dict(state)
    assert restored.compute().to_dict() == metric.compute().to_dict()
    stream(restored, images[11:], 4)
    assert restored.compute().to_dict() == expected
    with pytest.raises(ValueError, match="different category table"):
        fastpq.PanopticQuality("cityscapes").load_state_dict(state)


def test_pickling(images, expected):
    metric = stream(fastpq.PanopticQuality(COCO, process_group=object()), images[:13], 5)
    clone = pickle.loads(pickle.dumps(metric))
    assert clone.process_group is None
    assert clone.compute().to_dict() == metric.compute().to_dict()
    stream(clone, images[13:], 5)
    assert clone.compute().to_dict() == expected


def test_reset(images, expected):
    metric = stream(fastpq.PanopticQuality(COCO), images, 6)
    metric.reset()
    empty = metric.compute()
    assert empty.n_images == 0 and empty.all.n == 0 and empty.tp.sum() == 0
    assert stream(metric, images, 6).compute().to_dict() == expected


def test_bad_options_are_refused_at_construction():
    with pytest.raises(InputError, match="thing_instance_zero"):
        fastpq.PanopticQuality(COCO, thing_instance_zero="ignore")
    with pytest.raises(InputError, match="label_divisor"):
        fastpq.PanopticQuality(COCO, label_divisor=0)
    with pytest.raises(InputError, match="unknown category preset"):
        fastpq.PanopticQuality("kitti")


def test_works_without_torch():
    """The metric runs without torch; the distributed reduction names the extra to install."""
    code = """if True:
        import sys
        sys.modules["torch"] = None  # import torch -> ImportError
        import numpy as np
        import fastpq
        from fastpq.streaming.distributed import reduce_accumulator
        metric = fastpq.PanopticQuality({"things": [1], "stuff": [2]})
        gt = np.array([[1, 1, 2, 2]])
        metric.update(gt, gt, gt_segments=[{"id": 1, "category_id": 1, "iscrowd": 0},
                                           {"id": 2, "category_id": 2, "iscrowd": 0}],
                      pred_segments=[{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}])
        assert metric.compute().pq == 1.0
        try:
            reduce_accumulator(metric.sync())
        except ImportError as error:
            print(error)
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "pip install fastpq[torch]" in done.stdout


# -- torch.distributed ----------------------------------------------------------------------------

def _gloo_rank(rank, world_size, images):
    """One rank: its share of the images in batches of 3, then compute() (a collective)."""
    import torch

    share = np.array_split(np.arange(len(images)), world_size)[rank]
    metric = fastpq.PanopticQuality(COCO)
    for start in range(0, len(share), 3):
        gts, gsegs, preds, psegs = zip(*(images[k] for k in share[start:start + 3]))
        metric.update(torch.from_numpy(np.stack(gts)), torch.from_numpy(np.stack(preds)),
                      gt_segments=list(gsegs), pred_segments=list(psegs))
    results = [metric.compute().to_dict(), metric.compute().to_dict()]
    # a rank with the categories in another order is refused on every rank
    other = COCO if rank == 0 else fastpq.Categories.from_coco(COCO_LIST[::-1])
    try:
        fastpq.PanopticQuality(other).compute()
        mismatch = None
    except ValueError as error:
        mismatch = str(error)
    return {"results": results, "local": metric.state_dict(), "mismatch": mismatch}


def test_two_process_gloo(images, expected, tmp_path):
    outs = run_ranks(_gloo_rank, (images,), tmp_path)
    for out, share in zip(outs, np.array_split(np.arange(len(images)), 2)):
        assert out["results"] == [expected, expected]
        assert out["local"]["n_images"] == len(share)
        assert "different category table" in out["mismatch"]


@pytest.mark.gpu
def test_nccl_reduction_on_the_current_device(images, expected, tmp_path):
    """NCCL takes CUDA tensors only: the gathered vectors go to the current device (1 rank)."""
    torch = pytest.importorskip("torch")
    dist = torch.distributed
    if not torch.cuda.is_available() or not dist.is_available() or not dist.is_nccl_available():
        pytest.skip("needs a CUDA GPU and torch.distributed with NCCL")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        metric = stream(fastpq.PanopticQuality(COCO), images, 8)
        assert metric.compute().to_dict() == expected
    finally:
        dist.destroy_process_group()

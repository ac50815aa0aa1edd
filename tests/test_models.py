"""fastpq.models: the panoptic fusion heuristic (hand-made cases) and PanopticFPN on small CPU images."""

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from fastpq.errors import InputError  # noqa: E402
from fastpq.models import PanopticFPN, panoptic_fusion, sem_seg_targets_from_panoptic  # noqa: E402

THING_IDS = (10, 20, 30)
STUFF_IDS = (40, 50)
OTHER = len(STUFF_IDS)  # the semantic "thing/other" class


def fuse(masks, scores, labels=None, semantic=None, **kwargs):
    masks = torch.as_tensor(masks)
    if labels is None:
        labels = [1] * len(masks)
    if semantic is None:
        semantic = torch.full(masks.shape[-2:], OTHER)
    return panoptic_fusion(masks, torch.tensor(scores, dtype=torch.float32), torch.tensor(labels), semantic,
                           thing_ids=THING_IDS, stuff_ids=STUFF_IDS, **kwargs)


def box_mask(shape, rows, cols):
    mask = torch.zeros(shape, dtype=torch.float32)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    return mask


def assert_consistent(panoptic, segments_info):
    """ids unique and listed, areas equal pixel counts (no overlaps by construction of an id map)."""
    ids = [s["id"] for s in segments_info]
    assert ids == list(range(1, len(ids) + 1))
    present = set(torch.unique(panoptic).tolist()) - {0}
    assert present == set(ids)
    for s in segments_info:
        assert s["area"] == int((panoptic == s["id"]).sum())


# --- fusion: hand-made cases ---------------------------------------------------------------------

def test_fusion_overlap_more_than_half_is_skipped():
    shape = (10, 10)
    first = box_mask(shape, (0, 10), (0, 5))           # 50 px
    second = box_mask(shape, (0, 10), (2, 6))          # 40 px, 30 already painted: 0.75 > 0.5
    panoptic, info = fuse(torch.stack([first, second]), [0.9, 0.8])
    assert [s["instance_id"] for s in info] == [0]
    assert int((panoptic == 1).sum()) == 50
    assert_consistent(panoptic, info)


def test_fusion_overlap_at_most_half_keeps_only_free_pixels():
    shape = (10, 10)
    first = box_mask(shape, (0, 10), (0, 5))           # 50 px
    exactly_half = box_mask(shape, (0, 10), (3, 7))    # 40 px, 20 painted: 0.5 is not > 0.5
    below_half = box_mask(shape, (0, 10), (4, 10))     # 60 px, 10 painted by `first`
    panoptic, info = fuse(torch.stack([first, exactly_half, below_half]), [0.9, 0.8, 0.7], labels=[1, 2, 3])
    assert [(s["id"], s["instance_id"], s["category_id"], s["area"]) for s in info] == [
        (1, 0, 10, 50), (2, 1, 20, 20), (3, 2, 30, 30)]
    assert torch.equal(panoptic[0], torch.tensor([1, 1, 1, 1, 1, 2, 2, 3, 3, 3], dtype=torch.int32))
    assert_consistent(panoptic, info)


def test_fusion_instance_with_no_free_pixels_is_skipped():
    shape = (4, 4)
    first = box_mask(shape, (0, 4), (0, 4))
    inside = box_mask(shape, (1, 3), (1, 3))
    panoptic, info = fuse(torch.stack([first, inside]), [0.9, 0.8], overlap_thresh=1.0)
    assert [s["instance_id"] for s in info] == [0]
    assert_consistent(panoptic, info)


def test_fusion_score_threshold():
    shape = (6, 6)
    masks = torch.stack([box_mask(shape, (0, 3), (0, 3)), box_mask(shape, (3, 6), (3, 6))])
    panoptic, info = fuse(masks, [0.49, 0.5])
    assert [(s["instance_id"], s["score"]) for s in info] == [(1, 0.5)]
    assert int((panoptic != 0).sum()) == 9


def test_fusion_orders_by_score_and_ties_by_index():
    shape = (4, 4)
    same = box_mask(shape, (0, 4), (0, 4))
    panoptic, info = fuse(torch.stack([same, same, same]), [0.6, 0.9, 0.9])
    assert [s["instance_id"] for s in info] == [1]     # 0.9 first; of the tied pair the lower index
    panoptic, info = fuse(torch.stack([box_mask(shape, (0, 2), (0, 4)), box_mask(shape, (2, 4), (0, 4))]),
                          [0.6, 0.9])
    assert [s["instance_id"] for s in info] == [1, 0]
    assert panoptic[3, 0] == 1 and panoptic[0, 0] == 2


def test_fusion_empty_mask_and_mask_binarisation():
    shape = (4, 4)
    empty = torch.full(shape, 0.49)
    half = torch.zeros(shape)
    half[:2] = 0.5                                       # >= 0.5 is foreground
    panoptic, info = fuse(torch.stack([empty, half]), [0.9, 0.8])
    assert [(s["id"], s["instance_id"], s["area"]) for s in info] == [(1, 1, 8)]
    assert_consistent(panoptic, info)


def test_fusion_accepts_bool_masks_with_channel_dim():
    masks = box_mask((4, 4), (0, 2), (0, 2)).bool()[None, None]
    panoptic, info = fuse(masks, [0.7])
    assert panoptic.dtype == torch.int32 and info[0]["area"] == 4


def test_fusion_stuff_area_threshold():
    semantic = torch.full((64, 128), OTHER)
    semantic.view(-1)[:4096] = 0                         # stuff class 0: exactly 4096 px, kept
    semantic.view(-1)[4096:4096 + 4095] = 1              # stuff class 1: 4095 px, dropped
    panoptic, info = fuse(torch.zeros(0, 64, 128), [], semantic=semantic)
    assert info == [{"id": 1, "category_id": STUFF_IDS[0], "isthing": False, "area": 4096}]
    assert int((panoptic == 0).sum()) == 4096            # 4095 small stuff + 1 thing/other px stay void


def test_fusion_stuff_goes_after_things_and_loses_painted_pixels():
    semantic = torch.zeros(8, 8, dtype=torch.long)       # all stuff class 0
    semantic[:, 6:] = 1
    semantic[0, 0] = OTHER
    thing = box_mask((8, 8), (0, 4), (0, 4))
    panoptic, info = fuse(thing[None], [0.9], semantic=semantic, stuff_area_thresh=16)
    assert [(s["category_id"], s["isthing"], s["area"]) for s in info] == [
        (10, True, 16), (STUFF_IDS[0], False, 32), (STUFF_IDS[1], False, 16)]
    assert panoptic[0, 0] == 1                           # the thing keeps its pixel on 'other'
    assert_consistent(panoptic, info)


def test_fusion_thing_other_class_is_void():
    panoptic, info = fuse(torch.zeros(0, 5, 5), [], semantic=torch.full((5, 5), OTHER), stuff_area_thresh=0)
    assert info == [] and not panoptic.any()


def test_fusion_rejects_out_of_range_labels_and_classes():
    mask = box_mask((4, 4), (0, 2), (0, 2))[None]
    with pytest.raises(InputError, match="label 4"):
        fuse(mask, [0.9], labels=[4])
    with pytest.raises(InputError, match="semantic class 3"):
        fuse(mask, [0.9], semantic=torch.full((4, 4), 3))
    with pytest.raises(InputError, match="do not match"):
        fuse(mask, [0.9], semantic=torch.zeros(5, 4, dtype=torch.long))


# --- semantic targets ----------------------------------------------------------------------------

def test_sem_seg_targets_from_panoptic():
    panoptic = torch.tensor([[0, 7, 7], [9, 9, 3], [5, 5, 99]])
    segments_info = [{"id": 7, "category_id": 20}, {"id": 9, "category_id": 50},
                     {"id": 3, "category_id": 40}, {"id": 5, "category_id": 10, "iscrowd": 1}]
    target = sem_seg_targets_from_panoptic(panoptic, segments_info, thing_ids=THING_IDS, stuff_ids=STUFF_IDS)
    assert target.dtype == torch.int64
    assert target.tolist() == [[255, OTHER, OTHER], [1, 1, 0], [OTHER, OTHER, 255]]
    with pytest.raises(InputError, match="segment 7 has category 60"):
        sem_seg_targets_from_panoptic(panoptic, [{"id": 7, "category_id": 60}],
                                      thing_ids=THING_IDS, stuff_ids=STUFF_IDS)


# --- PanopticFPN on 128x160 CPU images -----------------------------------------------------------

SMALL = dict(num_things=3, num_stuff=2, min_size=128, max_size=160)


def make_images(seed=0):
    generator = torch.Generator().manual_seed(seed)
    # the second image is resized to 120x160 and padded to 128x160: exercises crop + resize back
    return [torch.rand(3, 128, 160, generator=generator), torch.rand(3, 96, 128, generator=generator)]


@pytest.fixture(scope="module")
def eval_outputs():
    torch.manual_seed(0)
    # A random-init detector scores poorly: lower every threshold so that things and stuff appear.
    model = PanopticFPN(**SMALL, thing_ids=THING_IDS, stuff_ids=STUFF_IDS, box_score_thresh=0.0,
                        box_detections_per_img=20, instance_score_thresh=0.0, stuff_area_thresh=64).eval()
    images = make_images()
    with torch.inference_mode():
        return images, model(images)


def test_eval_output_shapes_and_dtypes(eval_outputs):
    images, outputs = eval_outputs
    assert len(outputs) == len(images)
    for image, output in zip(images, outputs):
        h, w = image.shape[-2:]
        panoptic, segments_info = output["panoptic_seg"]
        assert panoptic.shape == (h, w) and panoptic.dtype == torch.int32 and panoptic.device == image.device
        assert output["sem_seg"].shape == (len(STUFF_IDS) + 1, h, w) and output["sem_seg"].is_floating_point()
        instances = output["instances"]
        n = len(instances["scores"])
        assert instances["boxes"].shape == (n, 4) and instances["masks"].shape == (n, 1, h, w)
        assert isinstance(segments_info, list)


def test_eval_ids_consistent_with_segments_info(eval_outputs):
    _, outputs = eval_outputs
    for output in outputs:
        panoptic, segments_info = output["panoptic_seg"]
        assert_consistent(panoptic, segments_info)
        things = [s for s in segments_info if s["isthing"]]
        stuff = [s for s in segments_info if not s["isthing"]]
        assert things and stuff                          # both branches contribute in this setup
        assert {s["category_id"] for s in things} <= set(THING_IDS)
        assert {s["category_id"] for s in stuff} <= set(STUFF_IDS)
        labels = output["instances"]["labels"]
        for s in things:
            assert THING_IDS[int(labels[s["instance_id"]]) - 1] == s["category_id"]
            assert s["score"] == pytest.approx(float(output["instances"]["scores"][s["instance_id"]]))
        assert all(s["area"] >= 64 for s in stuff)


def make_targets(images):
    targets = []
    for image in images:
        h, w = image.shape[-2:]
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 10:50, 10:60] = 1
        masks[1, 60:90, 70:120] = 1
        sem_seg = torch.zeros(h, w, dtype=torch.long)
        sem_seg[:, w // 2:] = 1
        sem_seg[masks.bool().any(0)] = OTHER
        sem_seg[:4] = 255
        targets.append({"boxes": torch.tensor([[10.0, 10, 60, 50], [70, 60, 120, 90]]),
                        "labels": torch.tensor([1, 3]), "masks": masks, "sem_seg": sem_seg})
    return targets


def test_train_losses_finite_and_backward():
    torch.manual_seed(0)
    model = PanopticFPN(**SMALL).train()
    images = make_images()
    losses = model(images, make_targets(images))
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert any("sem" in name for name in losses)
    assert all(math.isfinite(value.item()) for value in losses.values())
    sum(losses.values()).backward()
    assert model.semantic_head.predictor.weight.grad is not None
    assert model.semantic_head.scale_heads[3][0].weight.grad is not None
    assert model.backbone.body.conv1.weight.grad is not None
    assert model.backbone.fpn.layer_blocks[0][0].weight.grad is not None


def test_train_loss_weights_scale_losses():
    images = make_images()
    torch.manual_seed(0)
    base = PanopticFPN(**SMALL).train()
    torch.manual_seed(0)
    weighted = PanopticFPN(**SMALL, loss_weight_instance=2.0, loss_weight_semantic=1.0).train()
    torch.manual_seed(1)
    base_losses = base(images, make_targets(images))
    torch.manual_seed(1)
    weighted_losses = weighted(images, make_targets(images))
    for name, value in base_losses.items():
        assert weighted_losses[name].item() == pytest.approx(2 * value.item(), rel=1e-5)


def test_train_refuses_targets_without_sem_seg():
    model = PanopticFPN(**SMALL).train()
    images = make_images()
    targets = make_targets(images)
    del targets[1]["sem_seg"]
    with pytest.raises(InputError, match="image 1 has no 'sem_seg'"):
        model(images, targets)
    targets = make_targets(images)
    targets[0]["sem_seg"] = targets[0]["sem_seg"][:10]
    with pytest.raises(InputError, match="image 0 has shape"):
        model(images, targets)


def test_weights_file_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    options = dict(**SMALL, box_score_thresh=0.0, box_detections_per_img=10, instance_score_thresh=0.0,
                   stuff_area_thresh=64)
    original = PanopticFPN(**options).eval()
    path = tmp_path / "panoptic_fpn.pt"
    torch.save(original.state_dict(), path)
    torch.manual_seed(1)
    loaded = PanopticFPN(**options, weights=path).eval()
    images = make_images()
    with torch.inference_mode():
        expected, actual = original(images), loaded(images)
    for a, b in zip(expected, actual):
        assert torch.equal(a["panoptic_seg"][0], b["panoptic_seg"][0])
        assert a["panoptic_seg"][1] == b["panoptic_seg"][1]
        assert torch.equal(a["sem_seg"], b["sem_seg"])
        for key in ("boxes", "labels", "scores", "masks"):
            assert torch.equal(a["instances"][key], b["instances"][key])
    with pytest.raises(RuntimeError, match="does not fit PanopticFPN"):
        PanopticFPN(num_things=4, num_stuff=2, min_size=128, max_size=160, weights=path)


def test_constructor_validates_categories_and_size_divisible():
    with pytest.raises(ValueError, match="thing_ids has 2 ids"):
        PanopticFPN(**SMALL, thing_ids=[1, 2])
    with pytest.raises(ValueError, match="repeated: \\[3\\]"):
        PanopticFPN(**SMALL, thing_ids=[1, 2, 3], stuff_ids=[3, 4])
    with pytest.raises(ValueError, match="multiple of 32"):
        PanopticFPN(**SMALL, size_divisible=16)


def test_missing_torchvision_names_the_extra():
    code = ("import sys; sys.modules['torchvision'] = None\n"
            "try:\n    import fastpq.models\nexcept ImportError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install fastpq[model]" in result.stdout

"""fastpq.PanopticEvaluator: detectron2's process/evaluate calls, fastpq.evaluate's and the
reference's numbers; contiguous ids, divisor outputs, PanopticFPN end to end, gloo DDP, errors."""

import json
import os

import numpy as np
import pytest
from gloo import run_ranks
from reference import assert_parity, reference_stat

import fastpq
from fastpq.datasets import synthetic
from fastpq.errors import InputError, SegmentError

COCO = fastpq.Categories.coco_panoptic()
COCO_LIST = COCO.to_coco()
D2_KEYS = {"PQ": ("All", "pq"), "SQ": ("All", "sq"), "RQ": ("All", "rq"),
           "PQ_th": ("Things", "pq"), "SQ_th": ("Things", "sq"), "RQ_th": ("Things", "rq"),
           "PQ_st": ("Stuff", "pq"), "SQ_st": ("Stuff", "sq"), "RQ_st": ("Stuff", "rq")}


@pytest.fixture(scope="module")
def images():
    return synthetic.make_dataset(12, height=120, width=160, categories="coco", seed=17)


@pytest.fixture(scope="module")
def expected(images):
    gts, gsegs, preds, psegs = (list(x) for x in zip(*images))
    return fastpq.evaluate(gts, preds, gt_segments=gsegs, pred_segments=psegs,
                           categories=COCO).to_dict()


def dataset_dicts(images, first_id=100):
    inputs = [{"image_id": first_id + k, "file_name": f"{first_id + k}.jpg", "pan_seg": g,
               "segments_info": gs} for k, (g, gs, _, _) in enumerate(images)]
    outputs = [{"panoptic_seg": (p, ps)} for _, _, p, ps in images]
    return inputs, outputs


def run(evaluator, inputs, outputs, batch_size=3):
    evaluator.reset()
    for start in range(0, len(inputs), batch_size):
        evaluator.process(inputs[start:start + batch_size], outputs[start:start + batch_size])
    return evaluator.evaluate()


def assert_detectron2_dict(got, reference):
    """detectron2's layout: 100 x the reference's split scores."""
    assert list(got) == ["panoptic_seg"] and set(got["panoptic_seg"]) == set(D2_KEYS)
    for key, (split, score) in D2_KEYS.items():
        assert got["panoptic_seg"][key] == 100 * reference[split][score], key


def test_equals_evaluate_and_reference(images, expected, tmp_path, panopticapi):
    evaluator = fastpq.PanopticEvaluator(COCO_LIST)
    got = run(evaluator, *dataset_dicts(images))
    assert evaluator.result.to_dict() == expected
    assert evaluator.result.n_images == len(images)
    assert_detectron2_dict(got, expected)
    assert_parity(evaluator.result, reference_stat(images, COCO_LIST, str(tmp_path)), COCO_LIST)


def test_tensors_and_rgb_ground_truth(images, expected):
    torch = pytest.importorskip("torch")
    inputs, outputs = dataset_dicts(images)
    for image in inputs:
        image["pan_seg"] = torch.from_numpy(synthetic.id2rgb(image["pan_seg"]))
    outputs = [{"panoptic_seg": (torch.from_numpy(p.astype(np.int32)), ps)}
               for _, _, p, ps in images]
    evaluator = fastpq.PanopticEvaluator(COCO)
    run(evaluator, inputs, outputs, batch_size=5)
    assert evaluator.result.to_dict() == expected


def test_ground_truth_png_files_equal_pq_compute(tmp_path):
    paths = synthetic.write_coco_dataset(tmp_path, 5, height=96, width=128, seed=3, workers=1)
    images = synthetic.make_dataset(5, height=96, width=128, seed=3)
    with open(paths["gt_json"], encoding="utf-8") as f:
        gt_json = json.load(f)
    inputs = [{"image_id": ann["image_id"], "segments_info": ann["segments_info"],
               "pan_seg_file_name": os.path.join(paths["gt_folder"], ann["file_name"])}
              for ann in gt_json["annotations"]]
    outputs = [{"panoptic_seg": (p, ps)} for _, _, p, ps in images]
    evaluator = fastpq.PanopticEvaluator(gt_json["categories"])
    got = run(evaluator, inputs, outputs, batch_size=2)
    reference = fastpq.pq_compute(paths["gt_json"], paths["pred_json"])
    assert_detectron2_dict(got, reference)


def contiguous(segments, thing_map, stuff_map):
    """detectron2's dataset-dict conversion: contiguous category ids plus ``isthing``."""
    out = []
    for s in segments:
        isthing = s["category_id"] in thing_map
        table = thing_map if isthing else stuff_map
        out.append(dict(s, category_id=table[s["category_id"]], isthing=isthing))
    return out


def test_contiguous_ids_are_mapped_back(images, expected):
    things = [c for c, t in zip(COCO.ids, COCO.isthing) if t]
    stuff = [c for c, t in zip(COCO.ids, COCO.isthing) if not t]
    separate = ({c: k for k, c in enumerate(things)}, {c: k for k, c in enumerate(stuff)})
    shared = ({c: k for k, c in enumerate(COCO.ids)},) * 2   # register_coco_panoptic's layout
    for thing_map, stuff_map in (separate, shared):
        inputs, outputs = dataset_dicts(images)
        for image in inputs:
            image["segments_info"] = contiguous(image["segments_info"], thing_map, stuff_map)
        outputs = [{"panoptic_seg": (p, contiguous(ps, thing_map, stuff_map))}
                   for _, _, p, ps in images]
        evaluator = fastpq.PanopticEvaluator(
            COCO, contiguous_to_dataset_id={v: k for k, v in thing_map.items()},
            stuff_contiguous_to_dataset_id={v: k for k, v in stuff_map.items()})
        run(evaluator, inputs, outputs)
        assert evaluator.result.to_dict() == expected
        assert inputs[0]["segments_info"][0]["category_id"] in thing_map.values()  # not mutated


def test_segments_without_isthing_keep_dataset_ids(images, expected):
    evaluator = fastpq.PanopticEvaluator(COCO, contiguous_to_dataset_id={0: 1, 1: 2})
    run(evaluator, *dataset_dicts(images))
    assert evaluator.result.to_dict() == expected


def test_divisor_outputs_without_segments_info(images, expected):
    """detectron2's segments_info None: contiguous category * divisor + instance, -1 void."""
    to_contiguous = {c: k for k, c in enumerate(COCO.ids)}
    outputs = []
    for _, _, p, ps in images:
        labels = np.full(p.shape, -1, np.int32)
        for k, s in enumerate(ps):
            labels[p == s["id"]] = to_contiguous[s["category_id"]] * 1000 + k
        outputs.append({"panoptic_seg": (labels, None)})
    inputs, _ = dataset_dicts(images)
    evaluator = fastpq.PanopticEvaluator(COCO, label_divisor=1000, contiguous_to_dataset_id={
        k: c for c, k in to_contiguous.items()})
    run(evaluator, inputs, outputs)
    assert evaluator.result.to_dict() == expected
    with pytest.raises(InputError, match=r"image 0 \(id 100\): the output's segments_info is None"
                                         r".*label_divisor="):
        fastpq.PanopticEvaluator(COCO).process(inputs[:1], outputs[:1])


def test_torchmetrics_names(images, expected):
    inputs, outputs = dataset_dicts(images)
    evaluator = fastpq.PanopticEvaluator(COCO)
    evaluator.update(outputs[:7], inputs[:7])
    evaluator.update(outputs[7:], inputs[7:])
    assert evaluator.compute().to_dict() == expected
    assert evaluator.result.to_dict() == expected
    evaluator.reset()
    assert evaluator.result is None and evaluator.compute().n_images == 0


# -- PanopticFPN end to end ------------------------------------------------------------------------

THING_IDS = (10, 20, 30)
STUFF_IDS = (40, 50)
SMALL_CATEGORIES = {"things": THING_IDS, "stuff": STUFF_IDS}


def test_panoptic_fpn_end_to_end(tmp_path, panopticapi):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from fastpq.models import PanopticFPN

    torch.manual_seed(0)
    # random weights: every threshold lowered so that things and stuff are predicted
    model = PanopticFPN(3, 2, min_size=128, max_size=160, thing_ids=THING_IDS, stuff_ids=STUFF_IDS,
                        box_score_thresh=0.0, box_detections_per_img=20, instance_score_thresh=0.0,
                        stuff_area_thresh=64).eval()
    scenes = synthetic.make_dataset(3, height=128, width=160, categories=SMALL_CATEGORIES, seed=2)
    inputs = [{"image_id": k, "pan_seg": torch.from_numpy(g), "segments_info": gs,
               "image": torch.rand(3, 128, 160)} for k, (g, gs, _, _) in enumerate(scenes)]
    evaluator = fastpq.PanopticEvaluator(SMALL_CATEGORIES)
    evaluator.reset()
    predictions = []
    with torch.inference_mode():
        for start in (0, 2):
            batch = inputs[start:start + 2]
            outputs = model([image["image"] for image in batch])
            evaluator.process(batch, outputs)
            predictions += [output["panoptic_seg"] for output in outputs]
    got = evaluator.evaluate()
    assert all(info for _, info in predictions)  # the model predicted segments on every image
    assert evaluator.result.fp.sum() > 0

    oracle = [(g, gs, seg.numpy(), info) for (g, gs, _, _), (seg, info) in zip(scenes, predictions)]
    gts, gsegs, preds, psegs = (list(x) for x in zip(*oracle))
    direct = fastpq.evaluate(gts, preds, gt_segments=gsegs, pred_segments=psegs,
                             categories=SMALL_CATEGORIES)
    assert evaluator.result.to_dict() == direct.to_dict()
    assert_detectron2_dict(got, direct.to_dict())
    categories = fastpq.Categories.coerce(SMALL_CATEGORIES).to_coco()
    assert_parity(evaluator.result, reference_stat(oracle, categories, str(tmp_path)), categories)


# -- torch.distributed ----------------------------------------------------------------------------

def _gloo_rank(rank, world_size, images):
    """One rank: every other image (a DistributedSampler's split), in batches of 2."""
    inputs, outputs = dataset_dicts(images)
    mine = list(range(rank, len(images), world_size))
    evaluators = {"global": fastpq.PanopticEvaluator(COCO),
                  "local": fastpq.PanopticEvaluator(COCO, distributed=False)}
    results = {}
    for name, evaluator in evaluators.items():
        got = run(evaluator, [inputs[k] for k in mine], [outputs[k] for k in mine], 2)
        results[name] = (got, evaluator.result.to_dict())
    return results


def test_two_process_gloo(images, expected, tmp_path):
    outs = run_ranks(_gloo_rank, (images,), tmp_path)
    single = fastpq.PanopticEvaluator(COCO)
    single_dict = run(single, *dataset_dicts(images))
    for rank, out in enumerate(outs):
        assert out["global"] == (single_dict, expected)
        half = images[rank::2]
        gts, gsegs, preds, psegs = (list(x) for x in zip(*half))
        assert out["local"][1] == fastpq.evaluate(gts, preds, gt_segments=gsegs,
                                                  pred_segments=psegs, categories=COCO).to_dict()
        assert out["local"][1] != expected


# -- bad input --------------------------------------------------------------------------------------

def one_image(images, k=0):
    inputs, _ = dataset_dicts(images[k:k + 1], first_id=7)
    _, _, p, ps = images[k]
    return inputs[0], {"panoptic_seg": (p.copy(), [dict(s) for s in ps])}


def test_predicted_segment_absent_from_the_map(images):
    image, output = one_image(images)
    info = output["panoptic_seg"][1]
    info.append({"id": 424242, "category_id": 1})
    evaluator = fastpq.PanopticEvaluator(COCO)
    evaluator.process(*dataset_dicts(images[1:3]))
    with pytest.raises(SegmentError, match=r"^image 2 \(id 7\): predicted segment id 424242 is in "
                                           r"segments_info but covers no pixel") as caught:
        evaluator.process([image], [output])
    # rebuilt from the metric's fields (batch position 0) with the evaluator's location
    assert (caught.value.image_index, caught.value.image_id, caught.value.segment_id) == (2, 7, 424242)
    assert caught.value.message.startswith("predicted segment id 424242")


def test_predicted_id_in_the_map_but_not_listed(images):
    image, output = one_image(images)
    info = output["panoptic_seg"][1]
    missing = info.pop()["id"]
    with pytest.raises(SegmentError, match=rf"^image 0 \(id 7\): predicted segment id {missing} is "
                                           r"in the map but not in segments_info"):
        fastpq.PanopticEvaluator(COCO).process([image], [output])


def test_unknown_categories(images):
    image, output = one_image(images)
    _, info = output["panoptic_seg"]
    info[0]["category_id"] = 999
    with pytest.raises(SegmentError, match=rf"^image 0 \(id 7\): predicted segment {info[0]['id']} "
                                           r"has unknown category_id 999"):
        fastpq.PanopticEvaluator(COCO).process([image], [output])
    info[0].update(category_id=500, isthing=True)
    evaluator = fastpq.PanopticEvaluator(COCO, contiguous_to_dataset_id={
        k: c for k, c in enumerate(COCO.ids)})
    with pytest.raises(SegmentError, match=rf"^image 0 \(id 7\): predicted segment {info[0]['id']} "
                                           r"\(thing\) has contiguous category_id 500, which "
                                           r"contiguous_to_dataset_id does not map \(it maps 0..132\)"):
        evaluator.process([image], [output])
    with pytest.raises(InputError, match=r"maps to category ids \[1000\]"):
        fastpq.PanopticEvaluator(COCO, contiguous_to_dataset_id={0: 1, 1: 1000})


def test_refused_batch_adds_nothing_and_names_its_image(images):
    inputs, outputs = dataset_dicts(images[:3])
    bad = outputs[2]["panoptic_seg"][0].astype(np.int64)
    bad[0, 0] = -5
    outputs[2] = {"panoptic_seg": (bad, outputs[2]["panoptic_seg"][1])}
    evaluator = fastpq.PanopticEvaluator(COCO)
    evaluator.process(*dataset_dicts(images[3:4], first_id=50))
    with pytest.raises(InputError, match=r"^image 3 \(id 102\): the predicted map holds the "
                                         r"negative id -5"):
        evaluator.process(inputs, outputs)
    assert evaluator.compute().n_images == 1


def test_missing_keys_and_files(images, tmp_path):
    image, output = one_image(images)
    evaluator = fastpq.PanopticEvaluator(COCO)
    cases = [
        ({k: v for k, v in image.items() if k != "segments_info"}, output,
         r"image 0 \(id 7\): the input has no 'segments_info'"),
        ({k: v for k, v in image.items() if k != "pan_seg"}, output,
         r"image 0 \(id 7\): the input has neither 'pan_seg'.*nor 'pan_seg_file_name'"),
        (image, {"sem_seg": None}, r"image 0 \(id 7\): the model output has no 'panoptic_seg'"),
        (image, {"panoptic_seg": output["panoptic_seg"][0]}, r"must be a pair \(seg, segments_info\)"),
    ]
    for bad_input, bad_output, message in cases:
        with pytest.raises(InputError, match=message):
            evaluator.process([bad_input], [bad_output])
    with pytest.raises(InputError, match="got 2 inputs but 1 outputs"):
        evaluator.process([image, image], [output])
    missing = {**image, "pan_seg_file_name": str(tmp_path / "nope.png")}
    del missing["pan_seg"]
    with pytest.raises(FileNotFoundError, match=r"image 0 \(id 7\): the ground-truth PNG .*nope.png"):
        evaluator.process([missing], [output])
    small = {**image, "pan_seg": image["pan_seg"][:50]}
    with pytest.raises(InputError, match=r"image 0 \(id 7\): the ground truth is 50x160 but the "
                                         r"prediction is 120x160"):
        evaluator.process([small], [output])
    assert evaluator.compute().n_images == 0

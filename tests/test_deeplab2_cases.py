"""An outside check of the divisor convention: DeepLab2's PQ test cases and its expected values."""

import numpy as np
import pytest
from PIL import Image

import fastpq

GT_CLASS = {
    "team": {0: 0, 198: 2, **{v: 1 for v in (47, 97, 133, 150, 174, 215, 244, 255)}},
    "cat": {0: 0, 255: 6},
    "bird": {92: 5, 176: 3, 255: 4},
}
PRED_COLOURS = {(0, 0, 0): 0, (0, 0, 255): 1, (255, 0, 0): 2, (0, 255, 0): 3, (255, 0, 255): 4,
                (0, 255, 255): 5, (255, 255, 0): 6}


def load_case(folder, name, divisor):
    gt_inst = np.array(Image.open(folder / f"{name}_gt.png" if name != "team"
                                  else folder / "team_gt_instance.png").convert("L"), np.int64)
    gt_class = np.vectorize(GT_CLASS[name].__getitem__)(gt_inst)
    pred_inst = np.array(Image.open(folder / f"{name}_pred_instance.png").convert("L"), np.int64)
    rgb = np.array(Image.open(folder / f"{name}_pred_class.png").convert("RGB"))
    pred_class = np.zeros(rgb.shape[:2], np.int64)
    for colour, cls in PRED_COLOURS.items():
        pred_class[(rgb == colour).all(-1)] = cls
    return gt_class * divisor + gt_inst, pred_class * divisor + pred_inst


def test_team_case(shared_data):
    folder = shared_data / "deeplab2_pq_cases"
    gt, pred = load_case(folder, "team", 1000)
    # every class scored alike (no crowd): declare them stuff so instance 0 is never crowd
    r = fastpq.evaluate(gt, pred, label_divisor=1000, categories={"stuff": [1, 2]})
    assert (r.per_class[1].tp, r.per_class[1].fp, r.per_class[1].fn) == (7, 0, 1)
    assert (r.per_class[2].tp, r.per_class[2].fp, r.per_class[2].fn) == (1, 0, 0)
    assert r.pq == pytest.approx(0.62156284, abs=1e-7)
    assert r.sq == pytest.approx(0.64664984, abs=1e-7)
    assert r.rq == pytest.approx(0.9666667, abs=1e-7)


def test_three_images_one_evaluation(shared_data):
    folder = shared_data / "deeplab2_pq_cases"
    maps = [load_case(folder, name, 256) for name in ("bird", "cat", "team")]
    r = fastpq.evaluate([g for g, _ in maps], [p for _, p in maps], label_divisor=256,
                        categories={"stuff": [1, 2, 3, 4, 5, 6]})
    assert (r.per_class[1].tp, r.per_class[1].fp, r.per_class[1].fn) == (7, 0, 1)
    for c in range(2, 7):
        assert (r.per_class[c].tp, r.per_class[c].fp, r.per_class[c].fn) == (1, 0, 0)
    assert r.pq == pytest.approx(0.76855499, abs=1e-7)
    assert r.sq == pytest.approx(0.7769174, abs=1e-7)
    assert r.rq == pytest.approx(0.98888892, abs=1e-7)

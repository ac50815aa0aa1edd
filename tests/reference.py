"""The reference oracle: panopticapi's own per-image code, run on PNGs written from arrays.

Used by the parity tests only. The reference needs only NumPy and Pillow at run time
(``pip install --no-deps panopticapi-lite``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os

import numpy as np
from PIL import Image


def id2rgb(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def write_pair(folder, k, gt_ids, pred_ids):
    name = f"{k:06d}.png"
    os.makedirs(os.path.join(folder, "gt"), exist_ok=True)
    os.makedirs(os.path.join(folder, "pred"), exist_ok=True)
    Image.fromarray(id2rgb(gt_ids)).save(os.path.join(folder, "gt", name), compress_level=1)
    Image.fromarray(id2rgb(pred_ids)).save(os.path.join(folder, "pred", name), compress_level=1)
    return name


def reference_stat(images, categories, folder, *, json_areas=None):
    """panopticapi's PQStat over ``images`` = [(gt_ids, gt_segments, pred_ids, pred_segments)].

    GT segments without 'area' get their pixel count (what a correct JSON holds), unless
    ``json_areas`` overrides them.
    """
    from panopticapi.evaluation import pq_compute_single_core

    pairs = []
    for k, (g, gs, p, ps) in enumerate(images):
        name = write_pair(folder, k, g, p)
        gs = copy.deepcopy(gs)
        for s in gs:
            s.setdefault("area", int((np.asarray(g) == s["id"]).sum()))
        pairs.append(({"image_id": k, "file_name": name, "segments_info": gs},
                      {"image_id": k, "file_name": name, "segments_info": copy.deepcopy(ps)}))
    cats = {c["id"]: c for c in categories}
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute_single_core(0, pairs, os.path.join(folder, "gt"),
                                      os.path.join(folder, "pred"), cats)


def reference_average(stat, categories):
    """The reference's All/Things/Stuff dicts; a split with n == 0 -> None (it would raise)."""
    cats = {c["id"]: c for c in categories}
    out = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        try:
            out[name], per_class = stat.pq_average(cats, isthing=isthing)
        except ZeroDivisionError:
            out[name], per_class = None, None
        if name == "All":
            out["per_class"] = per_class
    return out


def assert_parity(result, stat, categories, tol=1e-12):
    """Every per-class tp/fp/fn exactly, iou/pq/sq/rq within tol, and the three splits."""
    for c in categories:
        ref = stat.pq_per_cat[c["id"]]
        row = result.per_class[c["id"]]
        assert (row.tp, row.fp, row.fn) == (ref.tp, ref.fp, ref.fn), (c["id"], row, vars(ref))
        assert abs(row.iou - ref.iou) <= tol, (c["id"], row.iou, ref.iou)
    ref = reference_average(stat, categories)
    for cid, r in (ref["per_class"] or {}).items():
        ours = result.per_class[cid]
        for k in ("pq", "sq", "rq"):
            assert abs(getattr(ours, k) - r[k]) <= tol, (cid, k, getattr(ours, k), r[k])
    for name in ("All", "Things", "Stuff"):
        ours = result.split(name)
        if ref[name] is None:
            assert ours.n == 0 and ours.pq == 0.0
            continue
        assert ours.n == ref[name]["n"]
        for k in ("pq", "sq", "rq"):
            assert abs(getattr(ours, k) - ref[name][k]) <= tol, (name, k)

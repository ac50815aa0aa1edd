"""Seeded synthetic panoptic data: ground truth, plausible predictions and COCO panoptic files.

The generator powers the parity tests, the README demo and the benchmarks, so its maps look like
real panoptic maps (a few large stuff regions, things of every size painted on top, crowd regions,
void lines and blobs, long horizontal runs) and it is fast: everything is vectorised NumPy, and
the whole-image steps work on the run-length view of a map (a few thousand runs) rather than on
its pixels.

Ids come in two styles:

``"coco"``
    Random distinct segment ids in ``[1, 2**24)``, as panopticapi's ``IdGenerator`` produces
    (colour-derived ids use all three bytes of the RGB encoding).
``"divisor"``
    The Cityscapes convention (SPEC §1.2): instance ``k`` (counted from 0) of thing class ``c``
    has id ``c * 1000 + k``; stuff segments and crowd regions carry the plain category id, so
    there is at most one crowd segment per class per image.

Every random draw comes from the ``numpy.random.Generator`` passed in, so a seed reproduces the
data exactly; :func:`make_dataset` and :func:`write_coco_dataset` derive one generator per image
from ``(seed, image index)`` and therefore produce the same images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fastpq.core.categories import Categories, load_packaged_json
from fastpq.core.arrays import rgb_to_ids
from fastpq.core.runner import ordered_map
from fastpq.errors import InputError

__all__ = ["make_scene", "make_prediction", "make_dataset", "write_coco_dataset", "write_cityscapes_dataset",
           "id2rgb", "rgb2id"]

ID_LIMIT = 2 ** 24
"""Exclusive upper bound of segment ids in the RGB PNG encoding (SPEC §1.1)."""

LABEL_DIVISOR = 1000
"""Instance divisor of ``id_style="divisor"`` (Cityscapes)."""

_MIN_THING_AREA = 24          # pixels: the smallest things are a few pixels wide
_MAX_THING_FRACTION = 0.2     # of the image area
_CROWD_FRACTION = (0.01, 0.12)
_SECOND_CROWD_PROB = 0.3      # a second crowd segment of the same class ('last crowd wins', SPEC §2.4)
_CROWD_PREDICTED_AS = 0.5     # share of spurious segments on a crowd region that take its class
_VOID_ONLY = 0.5              # share of spurious segments on GT void that stay within it
_NOISE_CELL = 48              # pixels: correlation length of the boundary jitter
_SHIFT_BLOCK = 32             # columns shifted together by the vertical jitter
_FILL = -1                    # run label: take the label of the neighbouring run (prediction only)


# -- id encoding ----------------------------------------------------------------------------------

def id2rgb(ids) -> np.ndarray:
    """Encode segment ids as RGB, ``R = id % 256``, ``G = id // 256 % 256``, ``B = id // 65536``.

    Parameters
    ----------
    ids : array_like of int
        Segment ids in ``[0, 2**24)``, any shape.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``ids.shape + (3,)``.

    Raises
    ------
    InputError
        If an id is negative or does not fit in 24 bits.
    """
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= ID_LIMIT):
        raise InputError(f"segment ids must lie in [0, 2**24) to be written as RGB; found ids from "
                         f"{ids.min()} to {ids.max()}")
    as_bytes = np.ascontiguousarray(ids, dtype="<u4").view(np.uint8).reshape(ids.shape + (4,))
    return np.ascontiguousarray(as_bytes[..., :3])


def rgb2id(rgb) -> np.ndarray:
    """Decode RGB colours into segment ids, ``id = R + 256 G + 256² B`` (panopticapi's ``rgb2id``).

    Parameters
    ----------
    rgb : array_like
        Array of shape ``(..., 3)``, or ``(..., 4)`` whose alpha channel is ignored as the
        reference ignores it; values in ``[0, 255]``.

    Returns
    -------
    numpy.ndarray
        ``uint32`` ids of shape ``rgb.shape[:-1]``.

    Raises
    ------
    InputError
        If the last axis does not hold 3 or 4 channels.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim == 0 or rgb.shape[-1] not in (3, 4):
        raise InputError(f"expected RGB values with 3 (or 4, RGBA) channels on the last axis, "
                         f"got an array of shape {rgb.shape}")
    return rgb_to_ids(rgb)


# -- run-length view of a label map -------------------------------------------------------------

def _runs(label_map: np.ndarray):
    """Maximal horizontal runs of equal values, row by row.

    Returns ``(starts, lengths, values)``: flat start index, length and value of each run, in
    raster order. A run never crosses the end of a row.
    """
    height, width = label_map.shape
    flat = np.ascontiguousarray(label_map).ravel()
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::width] = True
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=flat.size)
    return starts, lengths, flat[starts]


def _label_stats(starts, lengths, values, n_labels: int, width: int):
    """Pixel count and inclusive box ``(x0, y0, x1, y1)`` of every label in ``range(n_labels)``.

    Labels without pixels get area 0 and an empty box.
    """
    area = np.bincount(values, weights=lengths, minlength=n_labels).astype(np.int64)
    rows, cols = np.divmod(starts, width)
    box = _empty_boxes(n_labels)
    np.minimum.at(box[:, 0], values, cols)
    np.minimum.at(box[:, 1], values, rows)
    np.maximum.at(box[:, 2], values, cols + lengths - 1)
    np.maximum.at(box[:, 3], values, rows)
    return area, box


def _empty_boxes(n: int) -> np.ndarray:
    """``n`` boxes ``(x0, y0, x1, y1)`` ready for ``np.minimum.at`` / ``np.maximum.at``."""
    box = np.empty((n, 4), dtype=np.int64)
    box[:, :2] = np.iinfo(np.int64).max
    box[:, 2:] = -1
    return box


def _expand(lengths, values, shape) -> np.ndarray:
    """Pixel map of contiguous runs in raster order (the inverse of :func:`_runs`)."""
    return np.repeat(values, lengths).reshape(shape)


# -- smooth random curves and fields ------------------------------------------------------------

def _wave(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """A smooth random curve over ``n`` samples: three sines of 0.5 to 3 periods, peak ≈ amplitude."""
    t = np.arange(n) / max(n, 1)
    periods = rng.uniform(0.5, 3.0, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    weights = rng.dirichlet(np.ones(3)) * amplitude
    return (weights[:, None] * np.sin(2 * np.pi * periods[:, None] * t + phases[:, None])).sum(0)


class _NoiseField:
    """Smooth noise in [-1, 1]: a random grid of ``cell``-pixel cells, bilinearly interpolated."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, cell: int = _NOISE_CELL):
        self.cell = cell
        self.grid = rng.uniform(-1.0, 1.0, (height // cell + 2, width // cell + 2))

    def __call__(self, y, x) -> np.ndarray:
        fy, fx = np.asarray(y, np.float64) / self.cell, np.asarray(x, np.float64) / self.cell
        iy, ix = fy.astype(np.int64), fx.astype(np.int64)
        wy, wx = fy - iy, fx - ix
        g = self.grid
        top = g[iy, ix] * (1 - wx) + g[iy, ix + 1] * wx
        bottom = g[iy + 1, ix] * (1 - wx) + g[iy + 1, ix + 1] * wx
        return top * (1 - wy) + bottom * wy


# -- shapes --------------------------------------------------------------------------------------

def _ellipse(area: float, aspect: float, angle: float, dy: float = 0.0, dx: float = 0.0):
    """(top, left, mask) of a rotated ellipse of about ``area`` pixels centred at (dy, dx)."""
    a = np.sqrt(area * aspect / np.pi)
    b = np.sqrt(area / (aspect * np.pi))
    c, s = np.cos(angle), np.sin(angle)
    hy = int(np.ceil(np.hypot(a * s, b * c)))
    hx = int(np.ceil(np.hypot(a * c, b * s)))
    top, left = int(round(dy)) - hy, int(round(dx)) - hx
    ys = (np.arange(2 * hy + 1, dtype=np.float32) + (top - dy))[:, None]
    xs = (np.arange(2 * hx + 1, dtype=np.float32) + (left - dx))[None, :]
    u = (xs * c + ys * s) / a
    v = (ys * c - xs * s) / b
    return top, left, u * u + v * v <= 1.0


def _shape(rng: np.random.Generator, area: float):
    """(top, left, mask) of a random ellipse, rectangle or blob of about ``area`` pixels around 0."""
    area = max(area, 2.0)
    aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    kind = rng.integers(3)
    if kind == 0:
        return _ellipse(area, aspect, rng.uniform(0, np.pi))
    if kind == 1:
        w = max(1, int(round(np.sqrt(area * aspect))))
        h = max(1, int(round(area / w)))
        return -(h // 2), -(w // 2), np.ones((h, w), dtype=bool)
    # blob: a main ellipse with one to three overlapping lobes (a person, an animal, a plant)
    n_lobes = int(rng.integers(1, 4))
    shares = rng.dirichlet(np.full(n_lobes + 1, 2.0)) * 0.6 + np.r_[0.4, np.zeros(n_lobes)]
    radius = np.sqrt(area * shares[0] / np.pi)
    parts = [_ellipse(area * shares[0], aspect, rng.uniform(0, np.pi))]
    for share in shares[1:]:
        direction = rng.uniform(0, 2 * np.pi)
        parts.append(_ellipse(area * share, float(np.exp(rng.uniform(-1, 1))), rng.uniform(0, np.pi),
                              radius * np.sin(direction), radius * np.cos(direction)))
    top = min(p[0] for p in parts)
    left = min(p[1] for p in parts)
    mask = np.zeros((max(p[0] + p[2].shape[0] for p in parts) - top,
                     max(p[1] + p[2].shape[1] for p in parts) - left), dtype=bool)
    for t, l, m in parts:
        mask[t - top:t - top + m.shape[0], l - left:l - left + m.shape[1]] |= m
    return top, left, mask


def _paint(label_map: np.ndarray, shape, cy: int, cx: int, value: int, within=None) -> None:
    """Set the pixels of ``shape`` (from :func:`_shape`) centred at (cy, cx) to ``value``.

    The shape is clipped to the image, and to the True pixels of the boolean map ``within``.
    """
    top, left, mask = shape
    height, width = label_map.shape
    y0, x0 = cy + top, cx + left
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + mask.shape[0], height), min(x0 + mask.shape[1], width)
    if ya < yb and xa < xb:
        mask = mask[ya - y0:yb - y0, xa - x0:xb - x0]
        if within is not None:
            mask = mask & within[ya:yb, xa:xb]
        label_map[ya:yb, xa:xb][mask] = value


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    lo = max(lo, 1.0)
    return float(np.exp(rng.uniform(np.log(lo), np.log(max(hi, lo)))))


# -- ids and segment tables ------------------------------------------------------------------------

def _segment_ids(rng, category, crowd, isthing, id_style: str, shuffle_instances: bool) -> np.ndarray:
    """Segment id of each label (see the module docstring for the two styles)."""
    if id_style == "coco":
        return rng.choice(ID_LIMIT - 1, size=len(category), replace=False).astype(np.int64) + 1
    ids = category.astype(np.int64)
    for cat in np.unique(category[isthing & ~crowd]):
        members = np.flatnonzero((category == cat) & isthing & ~crowd)
        if len(members) > LABEL_DIVISOR:
            raise InputError(f"id_style='divisor' allows at most {LABEL_DIVISOR} instances of a class "
                             f"per image; category {cat} has {len(members)}")
        instances = rng.permutation(len(members)) if shuffle_instances else np.arange(len(members))
        ids[members] = cat * LABEL_DIVISOR + instances
    return ids


def _finalise(rng, label_map, label_category, label_crowd, categories: Categories, id_style: str,
              shuffle_instances: bool):
    """Turn a label map (0 = void) and per-label tables into an id map and ``segments_info``.

    Labels without pixels are dropped; labels that share an id (divisor style: one stuff class or
    one crowd class) become one segment. Segments keep label order.
    """
    height, width = label_map.shape
    starts, lengths, values = _runs(label_map)
    area, box = _label_stats(starts, lengths, values, len(label_category), width)
    labels = np.flatnonzero(area > 0)
    labels = labels[labels > 0]
    isthing = np.array([categories.isthing[categories.index(c)] for c in label_category[labels]], bool)
    ids = _segment_ids(rng, label_category[labels], label_crowd[labels], isthing, id_style,
                       shuffle_instances)

    unique_ids, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty(len(unique_ids), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(unique_ids))
    segment_of = rank[inverse]
    seg_area = np.bincount(segment_of, weights=area[labels], minlength=len(unique_ids)).astype(np.int64)
    seg_box = _empty_boxes(len(unique_ids))
    np.minimum.at(seg_box[:, :2], segment_of, box[labels, :2])
    np.maximum.at(seg_box[:, 2:], segment_of, box[labels, 2:])
    segments = [
        {"id": int(ids[k]), "category_id": int(label_category[labels[k]]),
         "iscrowd": int(label_crowd[labels[k]]), "area": int(a),
         "bbox": [int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)]}
        for k, a, (x0, y0, x1, y1) in zip(np.sort(first), seg_area, seg_box)
    ]
    id_of_label = np.zeros(len(label_category), dtype=np.uint32)
    id_of_label[labels] = ids
    return _expand(lengths, id_of_label[values], (height, width)), segments


# -- argument checks -----------------------------------------------------------------------------

def _check_id_style(id_style: str, categories: Categories) -> None:
    if id_style not in ("coco", "divisor"):
        raise InputError(f"id_style must be 'coco' or 'divisor', got {id_style!r}")
    if id_style == "divisor":
        bad = [c for c in categories.ids if not 0 < c < LABEL_DIVISOR]
        if bad:
            raise InputError(f"id_style='divisor' needs category ids in [1, {LABEL_DIVISOR}) so that "
                             f"stuff and crowd ids (the category id) are neither void nor instance "
                             f"ids; found {bad[:5]}")


def _check_fractions(**values) -> None:
    for name, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name} is a probability or a fraction and must lie in [0, 1], got {value!r}")


def _count(rng: np.random.Generator, spec, name: str) -> int:
    """Draw a count from an int or an inclusive ``(lo, hi)`` range."""
    lo, hi = (spec, spec) if np.isscalar(spec) else spec
    if not 0 <= lo <= hi:
        raise InputError(f"{name} must be a count or a (lo, hi) range with 0 <= lo <= hi, got {spec!r}")
    return int(rng.integers(lo, hi + 1))


# -- ground truth ---------------------------------------------------------------------------------

def _stuff_regions(rng: np.random.Generator, height: int, width: int, n_regions: int) -> np.ndarray:
    """Partition the image into ``n_regions`` smooth regions, labelled 0..n_regions-1.

    Horizontal bands with wavy borders (sky, buildings, road, ...), some of them split by a wavy
    vertical border (a wall beside a tree, grass beside a pavement).
    """
    n_bands = int(rng.integers(1, n_regions + 1))
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    bases = np.sort(rng.uniform(0.1, 0.9, n_bands - 1)) * height
    borders = np.sort([base + _wave(rng, width, rng.uniform(0.02, 0.12) * height) for base in bases],
                      axis=0).reshape(n_bands - 1, width)
    # band b lies between borders b-1 and b; rows wholly below a border take its increment at
    # once, only the rows a border crosses need a per-pixel comparison
    top = np.clip(np.floor(borders.min(axis=1)), 0, height).astype(np.int64)
    bottom = np.clip(np.ceil(borders.max(axis=1)), 0, height).astype(np.int64)
    below = np.zeros(height + 1, dtype=np.int32)
    np.add.at(below, bottom, 1)
    regions = np.repeat(np.cumsum(below[:height], dtype=np.int32), width).reshape(height, width)
    for border, lo, hi in zip(borders, top, bottom):
        regions[lo:hi] += rows[lo:hi] >= border[None, :]

    for new in range(n_bands, n_regions):
        band = int(rng.integers(n_bands))
        lo = top[band - 1] if band > 0 else 0
        hi = bottom[band] if band < n_bands - 1 else height
        split = rng.uniform(0.2, 0.8) * width + _wave(rng, height, rng.uniform(0.02, 0.1) * width)
        block = regions[lo:hi]
        block[(block == band) & (cols >= split[lo:hi, None])] = new
    return regions


def make_scene(rng: np.random.Generator, height: int, width: int, categories, *, n_things=(3, 12),
               n_stuff=(2, 6), crowd_prob=0.1, void_frac=0.05, id_style="coco"):
    """Generate one ground-truth panoptic map and its COCO ``segments_info``.

    Stuff is a partition of the image into a few large smooth regions; things (ellipses,
    rectangles and lobed blobs, log-uniform in area from a few pixels to a fifth of the image, so
    COCO-small, medium and large ones all occur) are painted on top, largest first. Each thing
    class present may also get a crowd region (``iscrowd=1``) behind its instances, and sometimes a
    second one (coco style), which exercises the reference's "last crowd wins" rule (SPEC §2.4).
    Void (id 0) is drawn as one-pixel lines on the borders between segments plus blobs.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw.
    height, width : int
        Size of the map in pixels.
    categories : Categories or preset name or COCO categories list
        Anything :meth:`fastpq.core.categories.Categories.coerce` accepts.
    n_things : int or (int, int), optional
        Number of thing instances to paint (inclusive range). Fully covered ones are dropped.
    n_stuff : int or (int, int), optional
        Number of stuff regions; regions that draw the same class form one segment.
    crowd_prob : float, optional
        Probability that a thing class present in the image also has a crowd region.
    void_frac : float, optional
        Approximate share of void pixels; 0 gives no void at all.
    id_style : {"coco", "divisor"}, optional
        How segment ids are made (module docstring).

    Returns
    -------
    ids : numpy.ndarray
        ``(height, width)`` ``uint32`` id map, 0 = void.
    segments_info : list of dict
        One ``{"id", "category_id", "iscrowd", "area", "bbox"}`` per id in the map (and only
        those); ``area`` is the exact pixel count and ``bbox`` is ``[x, y, w, h]``.

    Raises
    ------
    InputError
        On a non-positive size, a probability outside [0, 1], an unknown ``id_style``, or
        category ids unusable with ``id_style="divisor"``.
    """
    categories = Categories.coerce(categories)
    _check_id_style(id_style, categories)
    _check_fractions(crowd_prob=crowd_prob, void_frac=void_frac)
    if height < 1 or width < 1:
        raise InputError(f"the scene size must be positive, got {height}x{width}")
    thing_ids = np.array([c for c, t in zip(categories.ids, categories.isthing) if t], dtype=np.int64)
    stuff_ids = np.array([c for c, t in zip(categories.ids, categories.isthing) if not t], dtype=np.int64)
    image_area = height * width

    # stuff: regions drawing the same class share a label
    label_category, label_crowd = [0], [False]
    n_regions = _count(rng, n_stuff, "n_stuff") if len(stuff_ids) else 0
    if n_regions:
        region_category = rng.choice(stuff_ids, size=n_regions, replace=n_regions > len(stuff_ids))
        classes, region_label = np.unique(region_category, return_inverse=True)
        regions = _stuff_regions(rng, height, width, n_regions)
        label_map = np.take((region_label + 1).astype(np.int32), regions)
        label_category += classes.tolist()
        label_crowd += [False] * len(classes)
    else:
        label_map = np.zeros((height, width), dtype=np.int32)

    # things: a few classes per image, crowd regions behind the instances, largest painted first
    n_instances = _count(rng, n_things, "n_things") if len(thing_ids) else 0
    n_classes = min(len(thing_ids), int(rng.integers(1, 5))) if n_instances else 0
    present = rng.choice(thing_ids, size=n_classes, replace=False)
    for cat in present:
        if rng.random() >= crowd_prob:
            continue
        n_regions = 1 + (rng.random() < _SECOND_CROWD_PROB)
        for region in range(n_regions):
            # coco style: a second crowd segment of the class; divisor style: both regions carry
            # the class id, so they are one segment
            if region == 0 or id_style == "coco":
                label_category.append(int(cat))
                label_crowd.append(True)
            area = image_area * rng.uniform(*_CROWD_FRACTION)
            _paint(label_map, _shape(rng, area), int(rng.integers(height)), int(rng.integers(width)),
                   len(label_category) - 1)
    areas = sorted((_log_uniform(rng, _MIN_THING_AREA, _MAX_THING_FRACTION * image_area)
                    for _ in range(n_instances)), reverse=True)
    for area in areas:
        label_category.append(int(present[rng.integers(n_classes)]))
        label_crowd.append(False)
        _paint(label_map, _shape(rng, area), int(rng.integers(height)), int(rng.integers(width)),
               len(label_category) - 1)

    if void_frac > 0:
        border = np.zeros((height, width), dtype=bool)
        np.not_equal(label_map[:, 1:], label_map[:, :-1], out=border[:, :-1])
        border[:-1] |= label_map[1:] != label_map[:-1]
        np.copyto(label_map, 0, where=border)
        missing = void_frac * image_area - np.count_nonzero(border)
        if missing > _MIN_THING_AREA:
            for share in rng.dirichlet(np.ones(int(rng.integers(1, 4)))):
                _paint(label_map, _shape(rng, missing * share), int(rng.integers(height)),
                       int(rng.integers(width)), 0)

    return _finalise(rng, label_map, np.array(label_category, dtype=np.int64),
                     np.array(label_crowd, dtype=bool), categories, id_style, shuffle_instances=False)


# -- predictions ----------------------------------------------------------------------------------

def _lookup(segment_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Label of each value: 1 + its position in ``segment_ids``, or 0 when it is not listed."""
    if len(segment_ids) == 0:
        return np.zeros(len(values), dtype=np.int64)
    order = np.argsort(segment_ids, kind="stable")
    pos = np.minimum(np.searchsorted(segment_ids[order], values), len(order) - 1)
    return np.where(segment_ids[order][pos] == values, order[pos] + 1, 0)


def _fill_runs(labels: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Replace ``_FILL`` runs by the nearest other run on their row, left first; void if none."""
    keep = labels != _FILL
    index = np.arange(len(labels))
    left = np.maximum.accumulate(np.where(keep, index, -1))
    right = np.minimum.accumulate(np.where(keep, index, len(labels))[::-1])[::-1]
    row = starts // width
    left_ok = (left >= 0) & (row[np.maximum(left, 0)] == row)
    right_ok = (right < len(labels)) & (row[np.minimum(right, len(labels) - 1)] == row)
    fill = np.where(left_ok, labels[np.maximum(left, 0)],
                    np.where(right_ok, labels[np.minimum(right, len(labels) - 1)], 0))
    return np.where(keep, labels, fill)


def _jitter_borders(rng, starts, labels, grow, amplitude: int, height: int, width: int):
    """Move each border between two runs of a row sideways by smooth noise of up to ``amplitude``.

    A label with ``grow[label] = g`` also gains ``g`` pixels at both ends of each of its runs
    (loses them for negative ``g``). Returns the new ``(starts, lengths)``; runs may become empty.
    """
    rows, cols = np.divmod(starts, width)
    offset = np.rint(amplitude * _NoiseField(rng, height, width)(rows, cols)).astype(np.int64)
    offset[1:] += grow[labels[:-1]] - grow[labels[1:]]
    cols = np.where(cols > 0, np.clip(cols + offset, 1, width - 1), 0)
    starts = np.maximum.accumulate(rows * width + cols)
    return starts, np.diff(starts, append=height * width)


def _jitter_rows(rng, label_map: np.ndarray, amplitude: int) -> np.ndarray:
    """Shift columns up or down by smooth noise of up to ``amplitude`` pixels.

    The shift is constant over blocks of ``_SHIFT_BLOCK`` columns and varies smoothly from
    block to block, so each block is one gather of contiguous row pieces.
    """
    height, width = label_map.shape
    block = min(_SHIFT_BLOCK, width)
    n_blocks = width // block
    main = n_blocks * block
    centres = (np.arange(n_blocks) + 0.5) * block
    rows = np.arange(height)[:, None]
    shift = np.rint(amplitude * _NoiseField(rng, height, width)(rows, centres[None, :])).astype(np.int64)
    source = np.clip(rows + shift, 0, height - 1)
    shifted = np.empty_like(label_map)
    shifted[:, :main] = (label_map[:, :main].reshape(height, n_blocks, block)[source, np.arange(n_blocks)]
                         .reshape(height, main))
    shifted[:, main:] = label_map[source[:, -1], main:]
    return shifted


def make_prediction(rng, gt_ids, gt_segments, categories, *, missed=0.1, merged=0.05, spurious=0.1,
                    misclassified=0.05, boundary_noise=2, void_frac=0.03, id_style="coco"):
    """Generate a plausible model output for a ground-truth map.

    Each GT segment is copied, then damaged the way panoptic models damage it:

    * boundary jitter: every border moves by smooth noise of up to ``boundary_noise`` pixels,
      and each thing grows or shrinks sideways by ``ceil(boundary_noise / 2)`` pixels or keeps
      its width;
    * missed (``missed``): a thing is left void or absorbed by its neighbour on the row, a stuff
      or crowd region is absorbed; GT void is always absorbed (models predict everywhere);
    * merged (``merged``): a thing shares one segment with the nearest thing of its class;
    * misclassified (``misclassified``): another category of the same kind (thing or stuff);
    * spurious (``spurious``, per GT thing): extra segments anywhere, on GT void (half of them
      within it, which the reference ignores) and on crowd regions (half of them in the crowd's
      own class, which the reference ignores too);
    * void blobs (``void_frac``): low-confidence areas left unpredicted.

    With every rate, ``boundary_noise`` and ``void_frac`` at 0 the prediction matches every
    non-crowd GT segment with IoU 1 (crowd regions are predicted as one segment of their class).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random draw.
    gt_ids : array_like of int, shape (H, W)
        Ground-truth id map; ids absent from ``gt_segments`` are treated as void.
    gt_segments : list of dict
        Ground-truth ``segments_info`` (``id``, ``category_id``, optional ``iscrowd``).
    categories : Categories or preset name or COCO categories list
        The category table; every GT category must be in it.
    missed, merged, spurious, misclassified : float, optional
        Error rates in [0, 1] (see above).
    boundary_noise : int, optional
        Largest border displacement in pixels.
    void_frac : float, optional
        Approximate share of the image left void by the prediction.
    id_style : {"coco", "divisor"}, optional
        How segment ids are made; ids are drawn afresh, unrelated to the GT ids.

    Returns
    -------
    ids : numpy.ndarray
        ``(H, W)`` ``uint32`` id map, 0 = void (no segment).
    segments_info : list of dict
        One ``{"id", "category_id", "iscrowd": 0, "area", "bbox"}`` per id in the map, and only
        those.

    Raises
    ------
    InputError
        On a map that is not 2-D, a GT category missing from the table, a rate outside [0, 1], a
        negative ``boundary_noise`` or an unknown ``id_style``.
    """
    categories = Categories.coerce(categories)
    _check_id_style(id_style, categories)
    _check_fractions(missed=missed, merged=merged, spurious=spurious, misclassified=misclassified,
                    void_frac=void_frac)
    if boundary_noise < 0:
        raise InputError(f"boundary_noise is a distance in pixels and cannot be negative, "
                         f"got {boundary_noise}")
    gt_ids = np.asarray(gt_ids)
    if gt_ids.ndim != 2 or gt_ids.size == 0:
        raise InputError(f"gt_ids must be a non-empty 2-D id map, got an array of shape {gt_ids.shape}")
    height, width = gt_ids.shape
    isthing = dict(zip(categories.ids, categories.isthing))
    for s in gt_segments:
        if s["category_id"] not in isthing:
            raise InputError(f"GT segment {s['id']} has category_id {s['category_id']}, which is not in "
                             f"the category table")
    n = len(gt_segments)
    gt_category = np.array([s["category_id"] for s in gt_segments], dtype=np.int64)
    gt_crowd = np.array([s.get("iscrowd", 0) == 1 for s in gt_segments], dtype=bool)
    gt_thing = np.array([isthing[c] for c in gt_category.tolist()], dtype=bool)
    gt_starts, gt_lengths, run_ids = _runs(gt_ids)
    gt_label = _lookup(np.array([s["id"] for s in gt_segments], dtype=np.int64), run_ids.astype(np.int64))
    _, gt_box = _label_stats(gt_starts, gt_lengths, gt_label, n + 1, width)
    same_kind = {kind: [c for c, t in isthing.items() if t == kind] for kind in (True, False)}

    pred_category = [0]

    def new_label(category: int) -> int:
        pred_category.append(int(category))
        return len(pred_category) - 1

    pred_of_gt = np.full(n + 1, _FILL, dtype=np.int64)
    for j in range(n):
        if rng.random() < missed:
            pred_of_gt[j + 1] = 0 if gt_thing[j] and not gt_crowd[j] and rng.random() < 0.5 else _FILL
            continue
        category = gt_category[j]
        if not gt_crowd[j] and rng.random() < misclassified and len(same_kind[gt_thing[j]]) > 1:
            others = [c for c in same_kind[gt_thing[j]] if c != category]
            category = others[rng.integers(len(others))]
        pred_of_gt[j + 1] = new_label(category)

    # merges: a predicted thing takes over the nearest predicted thing of its GT class
    centre = (gt_box[1:, :2] + gt_box[1:, 2:]) / 2
    mergeable = [j for j in rng.permutation(n) if gt_thing[j] and not gt_crowd[j] and pred_of_gt[j + 1] > 0]
    taken = set()
    for j in mergeable:
        if rng.random() >= merged or j in taken:
            continue
        partners = [q for q in mergeable if q != j and q not in taken and gt_category[q] == gt_category[j]]
        if partners:
            q = min(partners, key=lambda q: float(np.hypot(*(centre[q] - centre[j]))))
            pred_of_gt[q + 1] = pred_of_gt[j + 1]
            taken.update((j, q))

    labels = _fill_runs(pred_of_gt[gt_label], gt_starts, width)
    starts, lengths = gt_starts, gt_lengths
    if boundary_noise > 0:
        grow = np.zeros(len(pred_category), dtype=np.int64)
        things = [k for k, c in enumerate(pred_category) if k and isthing[c]]
        grow[things] = rng.integers(-1, 2, len(things)) * ((boundary_noise + 1) // 2)
        starts, lengths = _jitter_borders(rng, starts, labels, grow, boundary_noise, height, width)
    label_map = _expand(lengths, labels.astype(np.int32), (height, width))
    if boundary_noise > 0:
        label_map = _jitter_rows(rng, label_map, boundary_noise)

    image_area = height * width
    on_crowd = gt_crowd[np.maximum(gt_label - 1, 0)] & (gt_label > 0)
    gt_void = None
    for _ in range(rng.binomial(max(1, int((gt_thing & ~gt_crowd).sum())), spurious)):
        place = rng.integers(3)     # 0: anywhere, 1: on GT void, 2: on a crowd region
        picked = (_random_run_pixel(rng, gt_starts, gt_lengths, gt_label == 0 if place == 1 else on_crowd)
                  if place else None)
        if picked is None:
            run, y, x = None, int(rng.integers(height)), int(rng.integers(width))
        else:
            run, (y, x) = picked[0], divmod(picked[1], width)
        if place == 2 and run is not None and rng.random() < _CROWD_PREDICTED_AS:
            category = gt_category[gt_label[run] - 1]
        else:
            thing = bool(same_kind[True]) and (not same_kind[False] or rng.random() < 0.75)
            category = same_kind[thing][rng.integers(len(same_kind[thing]))]
        area = (_log_uniform(rng, _MIN_THING_AREA, 0.05 * image_area) if isthing[category]
                else image_area * rng.uniform(0.01, 0.1))
        within = None
        if place == 1 and run is not None and rng.random() < _VOID_ONLY:
            if gt_void is None:
                gt_void = _expand(gt_lengths, gt_label == 0, (height, width))
            within = gt_void
        _paint(label_map, _shape(rng, area), y, x, new_label(category), within)

    if void_frac > 0:
        for share in rng.dirichlet(np.ones(int(rng.integers(1, 4)))):
            _paint(label_map, _shape(rng, void_frac * image_area * share), int(rng.integers(height)),
                   int(rng.integers(width)), 0)

    return _finalise(rng, label_map, np.array(pred_category, dtype=np.int64),
                     np.zeros(len(pred_category), dtype=bool), categories, id_style, shuffle_instances=True)


def _random_run_pixel(rng, starts, lengths, chosen):
    """(run index, flat position) of a uniformly random pixel in the chosen runs, or None."""
    weights = np.where(chosen, lengths, 0).astype(np.float64)
    total = weights.sum()
    if total == 0:
        return None
    run = int(rng.choice(len(starts), p=weights / total))
    return run, int(starts[run] + rng.integers(lengths[run]))


# -- datasets ------------------------------------------------------------------------------------

_SCENE_OPTIONS = ("n_things", "n_stuff", "crowd_prob", "void_frac")
_PREDICTION_OPTIONS = ("missed", "merged", "spurious", "misclassified", "boundary_noise")


def _split_options(options: dict):
    """Route dataset keyword arguments to make_scene and make_prediction."""
    scene, prediction = {}, {}
    for key, value in options.items():
        if key in _SCENE_OPTIONS:
            scene[key] = value
        elif key in _PREDICTION_OPTIONS:
            prediction[key] = value
        elif key == "pred_void_frac":
            prediction["void_frac"] = value
        elif key == "id_style":
            scene[key] = prediction[key] = value
        else:
            known = _SCENE_OPTIONS + _PREDICTION_OPTIONS + ("pred_void_frac", "id_style")
            raise TypeError(f"unknown option {key!r}; expected one of {sorted(known)}")
    return scene, prediction


def _size(rng: np.random.Generator, spec) -> int:
    return int(spec) if np.isscalar(spec) else int(rng.integers(spec[0], spec[1] + 1))


def _make_image(seed: int, index: int, height, width, categories: Categories, scene: dict, prediction: dict):
    """Image ``index`` of the dataset of ``seed``: (gt_ids, gt_segments, pred_ids, pred_segments)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    gt_ids, gt_segments = make_scene(rng, _size(rng, height), _size(rng, width), categories, **scene)
    return (gt_ids, gt_segments) + make_prediction(rng, gt_ids, gt_segments, categories, **prediction)


def make_dataset(n_images, *, height=480, width=640, categories="coco", seed=0, **kwargs):
    """Generate ``n_images`` (ground truth, prediction) pairs in memory.

    Parameters
    ----------
    n_images : int
        Number of images.
    height, width : int or (int, int), optional
        Image size, or an inclusive range drawn per image.
    categories : Categories or preset name or COCO categories list, optional
        The category table (``"coco"``, ``"cityscapes"``, ...).
    seed : int, optional
        Image ``i`` depends only on ``(seed, i)``, so datasets of one seed share their prefix.
    **kwargs
        Options of :func:`make_scene` (``n_things``, ``n_stuff``, ``crowd_prob``, ``void_frac``)
        and of :func:`make_prediction` (``missed``, ``merged``, ``spurious``, ``misclassified``,
        ``boundary_noise``, and ``pred_void_frac`` for its ``void_frac``); ``id_style`` goes to
        both.

    Returns
    -------
    list of tuple
        ``(gt_ids, gt_segments, pred_ids, pred_segments)`` per image, as returned by
        :func:`make_scene` and :func:`make_prediction`.

    Raises
    ------
    TypeError
        On an unknown keyword argument.
    """
    categories = Categories.coerce(categories)
    scene, prediction = _split_options(kwargs)
    return [_make_image(seed, i, height, width, categories, scene, prediction) for i in range(n_images)]


def _coco_category_list(categories: Categories) -> list[dict]:
    """COCO ``categories`` entries with a display colour (COCO's own for COCO classes)."""
    coco_colors = {(c["id"], c["name"]): c["color"] for c in load_packaged_json("coco_panoptic_categories.json")}
    return [dict(entry, color=coco_colors.get((entry["id"], entry["name"]))
                 or np.random.default_rng(entry["id"]).integers(0, 256, 3).tolist())
            for entry in categories.to_coco()]


def write_coco_dataset(root, n_images, *, height=480, width=640, categories="coco", seed=0, workers=None,
                       **kwargs) -> dict:
    """Write a generated dataset as COCO panoptic files (the input of ``pq_compute``).

    Layout: ``root/gt.json`` with ``images``, ``annotations`` and ``categories``,
    ``root/gt/<image_id:012d>.png``, ``root/pred.json`` with ``annotations`` only and
    ``root/pred/<image_id:012d>.png``. The folders are where panopticapi looks by default (the
    JSON path without ``.json``). PNGs are RGB with ``id = R + 256 G + 256² B``. Image ids are
    ``0 .. n_images - 1`` and the images are those of :func:`make_dataset` with the same arguments.

    Parameters
    ----------
    root : str or os.PathLike
        Output folder, created if needed; existing files of the same names are overwritten.
    n_images, height, width, categories, seed, **kwargs
        As in :func:`make_dataset`.
    workers : int, optional
        Threads generating and encoding images (default: up to 8, one per CPU). All threads are
        joined before returning.

    Returns
    -------
    dict
        ``{"gt_json", "gt_folder", "pred_json", "pred_folder"}`` as ``str`` paths, and
        ``"n_images"``.

    Raises
    ------
    ImportError
        If Pillow is not installed.
    TypeError
        On an unknown keyword argument.
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("write_coco_dataset needs Pillow: pip install fastpq[files]") from exc
    categories = Categories.coerce(categories)
    scene, prediction = _split_options(kwargs)
    root = Path(root)
    gt_folder, pred_folder = root / "gt", root / "pred"
    gt_folder.mkdir(parents=True, exist_ok=True)
    pred_folder.mkdir(parents=True, exist_ok=True)

    def write_image(index: int):
        gt_ids, gt_segments, pred_ids, pred_segments = _make_image(seed, index, height, width, categories,
                                                                   scene, prediction)
        name = f"{index:012d}.png"
        # compress_level 6 is Pillow's default, what panopticapi's converters write
        Image.fromarray(id2rgb(gt_ids)).save(gt_folder / name, compress_level=6)
        Image.fromarray(id2rgb(pred_ids)).save(pred_folder / name, compress_level=6)
        return ({"id": index, "file_name": f"{index:012d}.jpg", "height": int(gt_ids.shape[0]),
                 "width": int(gt_ids.shape[1])},
                {"image_id": index, "file_name": name, "segments_info": gt_segments},
                {"image_id": index, "file_name": name, "segments_info": pred_segments})

    records = list(ordered_map(write_image, n_images, workers or min(8, os.cpu_count() or 1)))

    gt_json = {"info": {"description": f"fastpq synthetic panoptic data, seed {seed}"},
               "images": [r[0] for r in records], "annotations": [r[1] for r in records],
               "categories": _coco_category_list(categories)}
    paths = {"gt_json": str(root / "gt.json"), "gt_folder": str(gt_folder),
             "pred_json": str(root / "pred.json"), "pred_folder": str(pred_folder)}
    with open(paths["gt_json"], "w", encoding="utf-8") as f:
        json.dump(gt_json, f)
    with open(paths["pred_json"], "w", encoding="utf-8") as f:
        json.dump({"annotations": [r[2] for r in records]}, f)
    return dict(paths, n_images=n_images)


# -- Cityscapes files -----------------------------------------------------------------------------

_CITYSCAPES_COLORS = {
    7: (128, 64, 128), 8: (244, 35, 232), 11: (70, 70, 70), 12: (102, 102, 156), 13: (190, 153, 153),
    17: (153, 153, 153), 19: (250, 170, 30), 20: (220, 220, 0), 21: (107, 142, 35), 22: (152, 251, 152),
    23: (70, 130, 180), 24: (220, 20, 60), 25: (255, 0, 0), 26: (0, 0, 142), 27: (0, 0, 70),
    28: (0, 60, 100), 31: (0, 80, 100), 32: (0, 0, 230), 33: (119, 11, 32),
}
"""Display colours of the evaluated Cityscapes classes (cityscapesScripts ``helpers/labels.py``)."""

_CITYSCAPES_CITIES = ("frankfurt", "lindau", "munster")


def write_cityscapes_dataset(root, n_images, *, height=1024, width=2048, seed=0, workers=None,
                             **kwargs) -> dict:
    """Write a generated dataset as Cityscapes panoptic files (cityscapesScripts' format).

    The ground truth is what ``csCreatePanopticImgs`` writes from ``*_gtFine_instanceIds.png``
    (SPEC §1.2): ``root/gtFine/cityscapes_panoptic_val.json`` (``images``, ``annotations`` and the
    19 evaluated ``categories`` with label ids, written with ``sort_keys=True, indent=4``) and
    ``root/gtFine/cityscapes_panoptic_val/<image_id>_gtFine_panoptic.png``. Image ids are strings
    ``<city>_<sequence>_<frame>`` (``frankfurt_000000_000019``), in sorted order. The segment id
    is the raw Cityscapes value: ``label_id * 1000 + k`` for instance ``k`` (from 0) of a thing
    class, the plain label id for a stuff class and for a thing class's crowd (group) region, so
    there is at most one crowd segment per class; segments are listed in ascending id order. The
    converter's colour ``[v % 256, v // 256, v // 65536]`` equals :func:`id2rgb` because the ids
    stay below 2**16.

    Predictions (what ``evalPanopticSemanticLabeling`` reads): ``root/results/
    cityscapes_panoptic_val.json`` with ``annotations`` only and PNGs
    ``root/results/cityscapes_panoptic_val/<image_id>_leftImg8bit.png`` (other names than the GT
    PNGs: images pair by ``image_id``). The images are those of :func:`make_dataset` with
    ``categories="cityscapes", id_style="divisor"`` and the same other arguments.

    Parameters
    ----------
    root : str or os.PathLike
        Output folder, created if needed; existing files of the same names are overwritten.
    n_images, height, width, seed, **kwargs
        As in :func:`make_dataset` (``id_style`` is always ``"divisor"``).
    workers : int, optional
        Threads generating and encoding images (default: up to 8, one per CPU). All threads are
        joined before returning.

    Returns
    -------
    dict
        ``{"gt_json", "gt_folder", "pred_json", "pred_folder"}`` as ``str`` paths,
        ``"n_images"`` and ``"image_ids"`` (image ``i`` of :func:`make_dataset` is
        ``image_ids[i]``).

    Raises
    ------
    ImportError
        If Pillow is not installed.
    TypeError
        On an unknown keyword argument, or ``id_style``.
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("write_cityscapes_dataset needs Pillow: pip install fastpq[files]") from exc
    if "id_style" in kwargs:
        raise TypeError("write_cityscapes_dataset always writes Cityscapes ids (id_style='divisor')")
    categories = Categories.cityscapes()
    scene, prediction = _split_options(dict(kwargs, id_style="divisor"))
    root = Path(root)
    gt_folder = root / "gtFine" / "cityscapes_panoptic_val"
    pred_folder = root / "results" / "cityscapes_panoptic_val"
    gt_folder.mkdir(parents=True, exist_ok=True)
    pred_folder.mkdir(parents=True, exist_ok=True)
    image_ids = [f"{_CITYSCAPES_CITIES[i % 3]}_{i // 3:06d}_000019" for i in range(n_images)]

    def write_image(index: int):
        gt_ids, gt_segments, pred_ids, pred_segments = _make_image(seed, index, height, width, categories,
                                                                   scene, prediction)
        image_id = image_ids[index]
        gt_name, pred_name = f"{image_id}_gtFine_panoptic.png", f"{image_id}_leftImg8bit.png"
        Image.fromarray(id2rgb(gt_ids)).save(gt_folder / gt_name)
        Image.fromarray(id2rgb(pred_ids)).save(pred_folder / pred_name)
        # the converter names the input image '<id>_gtFine_leftImg8bit.png' (the real file has no
        # '_gtFine'); only pq_compute's images list, which it never reads, holds it
        return ({"id": image_id, "width": int(gt_ids.shape[1]), "height": int(gt_ids.shape[0]),
                 "file_name": f"{image_id}_gtFine_leftImg8bit.png"},
                {"image_id": image_id, "file_name": gt_name,
                 "segments_info": sorted(gt_segments, key=lambda s: s["id"])},
                {"image_id": image_id, "file_name": pred_name, "segments_info": pred_segments})

    records = sorted(ordered_map(write_image, n_images, workers or min(8, os.cpu_count() or 1)),
                     key=lambda r: r[0]["id"])

    gt_json = {"images": [r[0] for r in records], "annotations": [r[1] for r in records],
               "categories": [dict(entry, color=list(_CITYSCAPES_COLORS[entry["id"]]))
                              for entry in categories.to_coco()]}
    paths = {"gt_json": str(root / "gtFine" / "cityscapes_panoptic_val.json"), "gt_folder": str(gt_folder),
             "pred_json": str(root / "results" / "cityscapes_panoptic_val.json"),
             "pred_folder": str(pred_folder)}
    with open(paths["gt_json"], "w", encoding="utf-8") as f:
        json.dump(gt_json, f, sort_keys=True, indent=4)
    with open(paths["pred_json"], "w", encoding="utf-8") as f:
        json.dump({"annotations": [r[2] for r in records]}, f)
    return dict(paths, n_images=n_images, image_ids=image_ids)

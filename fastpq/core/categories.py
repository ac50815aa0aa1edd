"""The category table: category ids, names, thing/stuff flags and a dense index.

Every accumulator array is indexed by the dense index of this table (its position, in the
order the categories were given — the order in which the reference sums class scores).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Mapping, Sequence

import numpy as np

from fastpq.errors import InputError


# Cityscapes panoptic evaluation classes (cityscapesScripts helpers/labels.py: label ids with
# ignoreInEval False); things are the classes with instances.
_CITYSCAPES = [
    (7, "road", 0, "flat"), (8, "sidewalk", 0, "flat"), (11, "building", 0, "construction"),
    (12, "wall", 0, "construction"), (13, "fence", 0, "construction"), (17, "pole", 0, "object"),
    (19, "traffic light", 0, "object"), (20, "traffic sign", 0, "object"),
    (21, "vegetation", 0, "nature"), (22, "terrain", 0, "nature"), (23, "sky", 0, "sky"),
    (24, "person", 1, "human"), (25, "rider", 1, "human"), (26, "car", 1, "vehicle"),
    (27, "truck", 1, "vehicle"), (28, "bus", 1, "vehicle"), (31, "train", 1, "vehicle"),
    (32, "motorcycle", 1, "vehicle"), (33, "bicycle", 1, "vehicle"),
]


@dataclass(frozen=True)
class Categories:
    """An ordered table of categories.

    Parameters
    ----------
    ids : sequence of int
        Category ids, in the order class scores are summed (the GT JSON order for COCO files).
    isthing : sequence of bool
        True for thing classes (countable instances), False for stuff.
    names : sequence of str, optional
        Display names; default ``str(id)``.
    supercategories : sequence of str, optional
    """

    ids: tuple
    isthing: tuple
    names: tuple
    supercategories: tuple

    def __init__(self, ids: Sequence[int], isthing: Sequence[bool], names: Sequence[str] | None = None,
                 supercategories: Sequence[str] | None = None):
        ids = tuple(int(i) for i in ids)
        if len(ids) == 0:
            raise InputError("the category table is empty: pass at least one category")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise InputError(f"duplicate category ids in the category table: {dup}")
        if any(i < 0 for i in ids):
            raise InputError(f"negative category id in the category table: {min(ids)}")
        isthing = tuple(bool(t) for t in isthing)
        if len(isthing) != len(ids):
            raise InputError("ids and isthing must have the same length")
        names = tuple(str(n) for n in names) if names is not None else tuple(str(i) for i in ids)
        supercategories = (tuple(str(s) for s in supercategories) if supercategories is not None
                           else tuple("" for _ in ids))
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "isthing", isthing)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "supercategories", supercategories)

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_coco(cls, categories: Iterable[Mapping]) -> "Categories":
        """From a COCO ``categories`` list (dicts with ``id``, ``isthing``, optional ``name``).

        As in the reference, ``isthing == 1`` (or True) is a thing and every other value is stuff;
        a repeated id keeps its first position and its last definition.
        """
        table: dict[int, Mapping] = {}
        for c in categories:
            if "id" not in c:
                raise InputError(f"category without an 'id': {dict(c)!r}")
            table[int(c["id"])] = c
        return cls(
            ids=list(table),
            isthing=[c.get("isthing", 0) == 1 for c in table.values()],
            names=[c.get("name", str(i)) for i, c in table.items()],
            supercategories=[c.get("supercategory", "") for c in table.values()],
        )

    @classmethod
    def from_lists(cls, things: Iterable[int] = (), stuff: Iterable[int] = (),
                   names: Mapping[int, str] | None = None) -> "Categories":
        """From thing and stuff id lists (ids sorted ascending in the table)."""
        things, stuff = [int(t) for t in things], [int(s) for s in stuff]
        both = set(things) & set(stuff)
        if both:
            raise InputError(f"categories {sorted(both)} are listed both as things and as stuff")
        ids = sorted(set(things) | set(stuff))
        names = names or {}
        return cls(ids, [i in set(things) for i in ids], [names.get(i, str(i)) for i in ids])

    @classmethod
    def coco_panoptic(cls) -> "Categories":
        """The 133 COCO panoptic categories (80 things, 53 stuff)."""
        return cls.from_coco(load_packaged_json("coco_panoptic_categories.json"))

    @classmethod
    def cityscapes(cls) -> "Categories":
        """The 19 Cityscapes panoptic categories (label ids, 11 stuff, 8 things)."""
        return cls([c[0] for c in _CITYSCAPES], [c[2] for c in _CITYSCAPES],
                   [c[1] for c in _CITYSCAPES], [c[3] for c in _CITYSCAPES])

    @classmethod
    def coerce(cls, categories) -> "Categories":
        """Accept a Categories, a COCO categories list, or a ``{'things': [...], 'stuff': [...]}``.

        A preset name, list or dict is turned into a table once: later calls with equal content
        get the same (immutable) table back from a small cache keyed on that content — the
        values read from the list when the call is made, so a list changed afterwards is a new
        key. Only lists and tuples of plain ``int``/``str``/``bool`` values are cached; anything
        else is coerced on every call.
        """
        if isinstance(categories, Categories):
            return categories
        table = _recent_table(categories)
        if table is not None:
            return table
        key = _coerce_key(categories)
        if key is None:
            return cls._coerce(categories)
        with _COERCED_LOCK:
            table = _COERCED.get(key)
            if table is not None:
                _COERCED.move_to_end(key)
        if table is None:
            table = cls._coerce(categories)
            with _COERCED_LOCK:
                _COERCED[key] = table
                while len(_COERCED) > COERCE_CACHE_SIZE:
                    _COERCED.popitem(last=False)
        _remember(categories, key, table)
        return table

    @classmethod
    def _coerce(cls, categories) -> "Categories":
        if isinstance(categories, str):
            presets = {"coco": cls.coco_panoptic, "coco_panoptic": cls.coco_panoptic,
                       "cityscapes": cls.cityscapes}
            if categories not in presets:
                raise InputError(f"unknown category preset {categories!r}; known: {sorted(presets)}")
            return presets[categories]()
        if isinstance(categories, Mapping) and ("things" in categories or "stuff" in categories):
            return cls.from_lists(categories.get("things", ()), categories.get("stuff", ()))
        if categories is None:
            raise InputError("categories is required: a fastpq.Categories, a COCO categories list, "
                             "or a preset name such as 'coco' or 'cityscapes'")
        return cls.from_coco(categories)

    # -- lookups --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def index(self, category_id) -> int:
        """Dense index of a category id, or -1 when it is not in the table."""
        return self.index_map().get(category_id, -1)

    def index_map(self) -> dict:
        """{category id: dense index}, built once per table (read-only: do not modify it)."""
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = {cid: k for k, cid in enumerate(self.ids)}
            object.__setattr__(self, "_cache", cache)
        return cache

    def index_array(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted category ids, their dense indices), for vectorised lookups; built once per
        table (do not modify them: writeable, because Numba compiles read-only arrays anew)."""
        arrays = self.__dict__.get("_index_arrays")
        if arrays is None:
            ids = np.asarray(self.ids, dtype=np.int64)
            order = np.argsort(ids, kind="stable")
            arrays = (ids[order], order.astype(np.int64))
            object.__setattr__(self, "_index_arrays", arrays)
        return arrays

    @property
    def thing_mask(self) -> np.ndarray:
        """True for thing classes, by dense index (a new array on each access)."""
        return np.asarray(self.isthing, dtype=bool)

    def to_coco(self) -> list[dict]:
        return [{"id": i, "name": n, "isthing": int(t), "supercategory": s}
                for i, n, t, s in zip(self.ids, self.names, self.isthing, self.supercategories)]

    def __getstate__(self):
        return {k: getattr(self, k) for k in ("ids", "isthing", "names", "supercategories")}

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def __eq__(self, other):
        if other is self:  # the usual case: one coerced table shared by every call
            return True
        return isinstance(other, Categories) and self.__getstate__() == other.__getstate__()

    def __hash__(self):
        return hash((self.ids, self.isthing))


#: Tables kept by :meth:`Categories.coerce` (least recently used dropped first).
COERCE_CACHE_SIZE = 16
_COERCED: OrderedDict = OrderedDict()
_COERCED_LOCK = threading.Lock()


class _Missing:
    """A key absent from a category entry (distinct from any value it could hold)."""


_MISSING = _Missing()
#: The value types a cache key may hold: among them, equal values are the same value (1, True
#: and 1.0 are equal, but their ``str`` differs, and names are kept as ``str``).
_KEY_TYPES = frozenset({int, str, _Missing})
#: ``isthing`` is only compared with 1: equal values of these types give the same flag.
_THING_TYPES = frozenset({int, bool})


def _coerce_key(categories):
    """The cache key of what :meth:`Categories.coerce` was given: a tuple of the values the table
    is built from, or None when they cannot be read as plain values (a one-shot iterable, an
    entry that is not a dict, a missing ``id``, a value of another type; the uncached path then
    builds the table, or raises what it raises)."""
    if isinstance(categories, str):
        return ("preset", categories)
    try:
        if isinstance(categories, Mapping):
            if not ("things" in categories or "stuff" in categories):
                return None
            things = categories.get("things", ())
            stuff = categories.get("stuff", ())
            if not isinstance(things, (list, tuple)) or not isinstance(stuff, (list, tuple)):
                return None
            key = ("lists", tuple(things), tuple(stuff))
            values = list(things) + list(stuff)
        elif isinstance(categories, (list, tuple)):
            ids = tuple([c["id"] for c in categories])
            names = tuple([c.get("name", _MISSING) for c in categories])
            supercategories = tuple([c.get("supercategory", "") for c in categories])
            isthing = tuple([c.get("isthing", 0) for c in categories])
            if not set(map(type, isthing)) <= _THING_TYPES:
                return None
            values = ids + names + supercategories
            key = ("coco", ids, isthing, names, supercategories)
        else:
            return None
    except (KeyError, TypeError, AttributeError, ValueError):
        return None
    if not set(map(type, values)) <= _KEY_TYPES:
        return None
    return key


#: How many recent COCO lists :func:`_recent_table` compares a list with.
RECENT_LISTS = 4
_RECENT: list = []  # [(snapshot, table)], most recent first; replaced whole, never mutated


def _recent_table(categories):
    """The table of a recent list equal to ``categories``, or None.

    A quicker test than building the key: ``==`` with a snapshot (a list of copies of the
    entries, taken when the table was built), which compares the entries in C. Equality of the
    snapshot means the same table: the fields it is built from were plain ``int``/``bool``
    (id, isthing) and ``str`` (name, supercategory) in the snapshot, and a value equal to one of
    those gives the same table; the other fields do not matter.
    """
    if type(categories) is not list:
        return None
    for snapshot, table in _RECENT:
        if len(snapshot) != len(categories):
            continue
        try:
            if snapshot == categories:
                return table
        except Exception:  # an entry's value with an unusual __eq__ (a NumPy array): no match
            continue
    return None


def _remember(categories, key, table) -> None:
    """Keep a snapshot of a COCO list for :func:`_recent_table` when its entries are plain dicts
    and its names are text."""
    global _RECENT
    if (type(categories) is not list or key[0] != "coco"
            or not all(type(c) is dict for c in categories)
            or not set(map(type, key[3] + key[4])) <= {str, _Missing}
            or not set(map(type, key[1])) <= {int}):
        return
    snapshot = [dict(c) for c in categories]
    with _COERCED_LOCK:
        _RECENT = [(snapshot, table)] + [r for r in _RECENT if r[1] is not table][:RECENT_LISTS - 1]


def load_packaged_json(name: str):
    with resources.files("fastpq.data").joinpath(name).open("r", encoding="utf-8") as f:
        return json.load(f)

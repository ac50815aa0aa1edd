"""Double-double sums: error-free TwoSum, so that partial sums merge in any order to one result."""

from __future__ import annotations


def two_sum(a, b):
    """``(s, err)`` with ``s = fl(a + b)`` and ``s + err == a + b`` exactly (Knuth's TwoSum).

    Works elementwise on float64 NumPy arrays as on Python floats.
    """
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return s, err

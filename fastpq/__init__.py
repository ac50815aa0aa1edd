"""fastpq: Panoptic Quality with the numbers of the COCO panoptic reference, fast.

``import fastpq`` needs only NumPy and Numba; the file path (Pillow, imagecodecs), torch, CuPy,
torchvision and Dask are imported where they are used.
"""

from fastpq.api import evaluate, evaluate_many, pq_compute
from fastpq.core.accumulator import PQAccumulator
from fastpq.core.categories import Categories
from fastpq.core.result import ClassScore, PQResult, SplitScore
from fastpq.errors import DecodeError, InputError, SegmentError
from fastpq.io.shim import install_as_panopticapi
from fastpq.streaming.evaluator import PanopticEvaluator
from fastpq.streaming.metric import PanopticQuality

__version__ = "0.1.0"

__all__ = [
    "Categories", "ClassScore", "DecodeError", "InputError", "PanopticEvaluator", "PanopticQuality",
    "PQAccumulator", "PQResult", "SegmentError", "SplitScore", "evaluate", "evaluate_many",
    "install_as_panopticapi", "pq_compute", "__version__",
]

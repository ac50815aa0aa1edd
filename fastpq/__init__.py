"""fastpq: Panoptic Quality with the numbers of the COCO panoptic reference, fast.

``import fastpq`` needs only NumPy and Numba; the file path (Pillow, imagecodecs), torch, CuPy,
torchvision and Dask are imported where they are used.
"""

from .accumulator import PQAccumulator
from .api import evaluate
from .categories import Categories
from .checkpoints import evaluate_many
from .coco import pq_compute
from .errors import DecodeError, InputError, SegmentError
from .evaluator import PanopticEvaluator
from .metric import PanopticQuality
from .result import ClassScore, PQResult, SplitScore
from .shim import install_as_panopticapi

__version__ = "0.1.0"

__all__ = [
    "Categories", "ClassScore", "DecodeError", "InputError", "PanopticEvaluator", "PanopticQuality",
    "PQAccumulator", "PQResult", "SegmentError", "SplitScore", "evaluate", "evaluate_many",
    "install_as_panopticapi", "pq_compute", "__version__",
]

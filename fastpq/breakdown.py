"""``fastpq.breakdown``, the documented path of :mod:`fastpq.analysis.breakdown`."""

from fastpq.analysis.breakdown import (COCO_SIZES, COST_KINDS, ErrorBreakdown, by_kind, by_size,
                                       by_supercategory, error_breakdown, worst_images)

__all__ = ["COCO_SIZES", "COST_KINDS", "ErrorBreakdown", "by_kind", "by_size", "by_supercategory",
           "error_breakdown", "worst_images"]

"""Models that produce panoptic predictions for fastpq to evaluate (extra ``model``).

:class:`PanopticFPN` is torchvision's Mask R-CNN (ResNet-50 FPN) with the semantic FPN branch of
Kirillov et al. 2019 and detectron2's fusion heuristic (:func:`panoptic_fusion`). Weights are
random unless the user passes a state-dict file; nothing is downloaded.

Needs torch and torchvision: ``pip install fastpq[model]``.
"""

try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError as exc:
    raise ImportError(f"fastpq.models needs torch and torchvision ({exc}); "
                      f"install them with: pip install fastpq[model]") from exc

from .fusion import panoptic_fusion
from .panoptic_fpn import PanopticFPN, SemanticFPNHead, sem_seg_targets_from_panoptic

__all__ = ["PanopticFPN", "SemanticFPNHead", "panoptic_fusion", "sem_seg_targets_from_panoptic"]

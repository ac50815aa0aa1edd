"""Generated panoptic datasets and the README demo."""

"""Data files shipped with fastpq: the COCO panoptic category table (JSON)."""

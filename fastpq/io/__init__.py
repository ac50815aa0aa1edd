"""Files: PNG reading, COCO panoptic folders (``pq_compute``), several checkpoints, the shim."""

"""More than one machine: COCO panoptic files scored on a Dask cluster."""

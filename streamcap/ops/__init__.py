"""Operating the pipeline: the part-queue snapshot and `streamcap status`."""

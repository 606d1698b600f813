"""Operating the pipeline: `streamcap status` (the part-queue snapshot it reads is `streamcap.bus.partqueue`)."""

"""The captioning model and everything that needs torch: config, encoder, decoder, decoding,
checkpoints, inference. Only `streamcap.model.config` is importable without torch."""

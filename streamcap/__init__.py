"""streamcap: train image-captioning models on web-scale (url, caption) data while it downloads.

This package is the shared core (settings, the Redis bus, the embedded Redis launcher, the
tokenizer, the model, decoding, checkpoints and the root CLI). Importing it loads no torch:
the downloader container has none.
"""

__version__ = "0.1.0"

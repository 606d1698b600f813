"""The evaluator: captioning metrics, eval-set loaders, the checkpoint watcher and reports."""

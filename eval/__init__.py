"""The evaluator: captioning metrics, eval-set loaders, the checkpoint watcher and reports.

    streamcap eval score predictions.json references.json      # or: python -m streamcap.eval score ...
    streamcap eval run CHECKPOINT --data dataset_flickr30k.json --images flickr30k-images
    streamcap eval watch --data dataset_flickr30k.json --images flickr30k-images

Modules: `ptb` (COCO caption normalisation), `metrics` (BLEU, CIDEr-D, ROUGE-L), `external`
(METEOR/SPICE via pycocoevalcap), `datasets` (Karpathy json, jsonl), `captioner` (beam search
over a set), `evaluate` (one checkpoint end to end), `outputs` (files), `report` (HTML, plot),
`watcher` (the `checkpoints` consumer), `wandb_log`, `service` (entry points), `config`, `cli`.
"""

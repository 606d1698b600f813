"""`python -m streamcap.eval ...` is `streamcap eval ...` (the evaluator container's entry point).

python -m streamcap.eval watch --data /data/flickr30k/dataset_flickr30k.json
"""

import sys

from streamcap.entrypoint import run_app
from streamcap.eval.cli import eval_app

if __name__ == "__main__":
    sys.exit(run_app(eval_app, prog_name="python -m streamcap.eval"))

"""`python -m eval ...` is `streamcap eval ...` (the evaluator container's entry point).

    python -m eval watch --data /data/flickr30k/dataset_flickr30k.json
"""

import sys

from eval.cli import eval_app
from streamcap.cliutil import run_app

if __name__ == "__main__":
    sys.exit(run_app(eval_app, prog_name="python -m eval"))

"""`python -m streamcap.model [PRESET ...]`: parameter counts of each preset, per part."""

import sys

from streamcap.model.caption_model import print_presets

sys.exit(print_presets(sys.argv[1:]))

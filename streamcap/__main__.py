"""python -m streamcap ... is the same as the `streamcap` command."""

from streamcap.cli import main

main()

"""``python -m edgebert``: the command line, as ``edgebert``."""

from edgebert.cli import main

main()

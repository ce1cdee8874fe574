"""The `protrans` command's first code (the console script's and `python -m protrans_cli`'s).

`protrans_cli.cli.main` answers Ctrl-C with one line and exit 130 from the moment it runs, but
the modules it needs (click, the command group) are imported before it: a Ctrl-C in that
window, a quarter of a second on a quiet machine and seconds on a cluster's loaded login node
with its packages on a network file system, printed Python's traceback of whatever import it
cut. Nothing has been read or written by then, so the stop is the line and the code alone.
"""

from __future__ import annotations

import importlib
import os
import sys

# (loaded with the package, before this module: no import of its own in the window)
from protrans_cli.errors import EXIT_INTERRUPTED


def main() -> None:
    try:
        from protrans_cli.cli import main as run
        # (cli.main imports the console before it sets its own Ctrl-C handling: imported here,
        # a Ctrl-C in that import is this line too, not a traceback from inside cli.main)
        importlib.import_module("protrans_cli.console")
    except KeyboardInterrupt:
        _interrupted()
    run()


def _interrupted() -> None:
    try:
        sys.stderr.write("protrans: error: interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # (no stderr, or one already closed)
        pass
    # os._exit: a KeyboardInterrupt caught late in an import leaves Python to kill itself by SIGINT
    # at exit (status -2, not 130), as cli.main's comments measured; nothing is open to flush.
    os._exit(EXIT_INTERRUPTED)

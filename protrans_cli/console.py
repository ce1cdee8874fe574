"""Messages on stderr, data on stdout: verbosity, progress bars only on a terminal, summaries.

rich is imported only when a table or summary is printed, so fast commands stay fast.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass
class _State:
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose
    debug: bool = False


state = _State()


def configure(verbosity: int = 0, debug: bool = False) -> None:
    state.verbosity = verbosity
    state.debug = debug


def error(message: str) -> None:
    """One line, prefixed, on stderr: the form every failure takes."""
    sys.stderr.write(f"protrans: error: {message}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    if state.verbosity >= 0:
        sys.stderr.write(f"protrans: warning: {message}\n")
        sys.stderr.flush()


def info(message: str) -> None:
    if state.verbosity >= 0:
        sys.stderr.write(f"{message}\n")
        sys.stderr.flush()


def debug(message: str) -> None:
    if state.verbosity >= 1:
        sys.stderr.write(f"[debug] {message}\n")
        sys.stderr.flush()


def show_progress() -> bool:
    """Progress bars only when stderr is a terminal or a notebook's, never when quiet or under CI logs."""
    return (state.verbosity >= 0 and (sys.stderr.isatty() or _in_notebook())
            and not os.environ.get("PROTRANS_NO_PROGRESS"))


def _in_notebook() -> bool:
    """Called from a Jupyter kernel, whose stderr is no terminal but shows bars (tqdm.auto draws
    a widget there); a long embed in a notebook showed nothing until its summary."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # an IPython too old or half-imported: no bars, as before
        return False
    return type(shell).__name__ == "ZMQInteractiveShell"


def progress(iterable=None, *, total=None, desc=None, unit="it", **kwargs):
    """A tqdm bar on stderr when `show_progress()`, else a disabled one (same interface)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not show_progress(), dynamic_ncols=True, **kwargs)


def stderr_console():
    """A rich Console on stderr, for tables and summaries."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_table(title: str, columns: list[str], rows: list[list], *, file_console=None) -> None:
    if state.verbosity < 0:
        return
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[str(x) for x in row])
    (file_console or stderr_console()).print(table)

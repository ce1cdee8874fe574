"""Messages on stderr, data on stdout: verbosity, progress bars on a terminal (a progress line
a minute in a log), summaries.

rich is imported only when a table or summary is printed, so fast commands stay fast.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import sys
from dataclasses import dataclass, field

from protrans_cli.errors import CONTROLS, bounded, brief


@dataclass
class _State:
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose
    debug: bool = False
    complete: str | None = None  # the command's output, once final (output_complete)
    complete_quietly: bool = False  # a signal after `complete` is no news here (output_complete(quiet=True))
    interim: int = 0  # open `interim_outputs` blocks: what they mark complete is a step, not the output
    records: list = field(default_factory=list)  # open `recording` lists (innermost last)
    held: int = 0  # open recordings that hold their messages back
    names: dict = field(default_factory=dict)  # a path -> what messages call it (`naming`)
    last_error: str | None = None  # the last `error` line said (for torchrun's summary)
    peer_stopped: bool = False  # that line is of an errors.PeerStopped (another process's failure the cause)
    command_line: bool = False  # messages are read at the command line (cli.main): `errors.option`
    said: set | None = None  # the warnings said inside `said_once`, which are not said again
    interval_said: str | None = None  # the PROTRANS_PROGRESS_INTERVAL value warned of (`_progress_interval`)


state = _State()


def list_failed(failed: dict, what: str, heading: str | None = None) -> None:
    """Warn of the proteins a run left without output (`failed`: id -> reason), the first 20 by
    name: `what` is what they lack ("embedding", "contact map"); `heading`, the line before them
    where the run keeps no file of its failures (esm-extract's folder of files)."""
    if not failed:
        return
    warn(heading or f"{len(failed):,} protein(s) have no {what} (listed in the file's 'failed' attribute):")
    for ident, reason in list(failed.items())[:20]:
        warn(f"  {brief(ident)}: {reason}")
    if len(failed) > 20:
        warn(f"  ... and {len(failed) - 20:,} more")


def counted(count: int, noun: str) -> str:
    """`1 protein`, `2 proteins`, `12,345 proteins`: a count (thousands separated) and its noun, in
    the singular for one."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def some_named(count: int, names) -> str:
    """`a, b, c and 12 more`: the first few of `count` things by name (`names`, those kept; a long
    name shortened, `errors.brief`)."""
    more = count - len(names)
    return ", ".join(brief(name) for name in names) + (f" and {more:,} more" if more else "")


NAMED = 3  # the things a warning names before "and N more"


class Named:
    """A count of things and the names of the first few, for a warning (`str`: some_named)."""

    def __init__(self, keep: int = NAMED):
        self.count, self.names, self.keep = 0, [], keep

    def add(self, name: str) -> None:
        self.count += 1
        if len(self.names) < self.keep:
            self.names.append(name)

    def __str__(self) -> str:
        return some_named(self.count, self.names)


def configure(verbosity: int = 0, debug: bool = False) -> None:
    state.verbosity = verbosity
    state.debug = debug
    state.complete = None
    state.complete_quietly = False
    state.interval_said = None


def output_complete(what, *, quiet: bool = False) -> None:
    """The command's output (`what`: a path, or `-`/None for standard output) is final: a Ctrl-C,
    SIGTERM or SIGHUP from now on stops nothing, and the CLI says so and exits 0 rather than report an
    interruption (with a traceback from wherever Python was cleaning up) for a result already
    whole. Outside the CLI, no effect. Inside `interim_outputs`, no effect either.
    `quiet`: this process's part of a run is done and another process reports how the run ended
    (a torchrun rank waiting for rank 0's merge): such a signal is said only with -v."""
    if state.interim:
        return
    state.complete = "standard output" if what is None or str(what) == "-" else str(what)
    state.complete_quietly = quiet


@contextlib.contextmanager
def interim_outputs():
    """Outputs finished inside the block are steps of the command, not its output (fit --search's
    trials): the first trial's head marked the command complete, and a Ctrl-C or SIGTERM in every
    later trial was then noted and ignored (the search ran on to its end, exit 0)."""
    state.interim += 1
    try:
        yield
    finally:
        state.interim -= 1


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` with its control characters escaped (`\\n`, `\\x1b`): a file or record name that
    holds a newline split a line of an output file in two (predict's FASTA headers, prep's
    rejects TSV). `newlines`: its own line breaks stay. (A message escapes more: `errors.escaped`.)"""
    if text.isprintable():
        return text
    return text.translate(CONTROLS if not newlines else {c: e for c, e in CONTROLS.items() if c != 0x0a})


def _shown(message: str, newlines: bool = False) -> str:
    """A message as it is written (`errors.bounded`): its control characters, Unicode's line and
    paragraph separators and format characters escaped (a right-to-left override showed the rest
    of the line reversed), then cut where it names something huge, so that no line is longer
    than the limit however hostile the name. A byte of a file name that is not UTF-8 (a surrogate
    escape to Python) shows as the byte, `\\xff`, as the HDF5 attributes spell it."""
    return bounded(message, newlines=newlines)


@contextlib.contextmanager
def naming(path, name: str | None = None):
    """Inside, messages say `name` where they would name `path`: a temporary file the user never
    sees (predict --fasta's embeddings), gone when the command ends. An error raised inside is
    renamed on its way out too. `path` may be a dict of several ({path: name}; esm-extract's
    flags): all are renamed in one pass, so that no name is renamed again, though it holds its
    own path or another's ("--invalid-policy skip" -> "protrans embed --invalid-policy skip" read
    "protrans embed protrans embed ... --invalid-policy skip", a context each renaming the error)."""
    from protrans_cli.errors import ProtransError

    ours = {str(key): value for key, value in path.items()} if isinstance(path, dict) else {str(path): name}
    before = dict(state.names)
    state.names.update(ours)
    try:
        yield
    except ProtransError as exc:  # (by this block's names alone: an enclosing block renames it by its own)
        exc.message = _named(exc.message, ours)
        if exc.path is not None:
            exc.path = _named(str(exc.path), ours)
        raise
    finally:
        state.names.clear()
        state.names.update(before)


def _named(message: str, names: dict | None = None) -> str:
    """`message` with each path of `names` (the open `naming` blocks' by default) said by its name,
    in one pass: the longest path first where two begin at one place, and no name read again."""
    names = state.names if names is None else names
    if not names:
        return message
    pattern = "|".join(re.escape(path) for path in sorted(names, key=len, reverse=True))
    return re.sub(pattern, lambda found: names[found.group(0)], message)


def error(message: str) -> None:
    """One line, prefixed, on stderr: the form every failure takes."""
    state.last_error = f"protrans: error: {_shown(message)}"
    _emit(f"{state.last_error}\n")


def _emit(text: str) -> None:
    """`text` on stderr, flushed. Where there is no stderr (None: pythonw, or a process started
    with descriptor 2 closed, in which a library call runs; the CLI opens one first), the line
    goes nowhere: the caller's embed or fit failed on an AttributeError at its first warning."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(text)
        stream.flush()
    except OSError as exc:
        stderr_gone(exc)


# How a stderr that went away mid-run fails a write: EIO, a terminal that hung up (a dropped ssh
# connection: a command stopping for its SIGHUP, or one left running with nohup or `disown` whose
# stderr is still that terminal), or EPIPE, a reader that left (`2>&1 | tee log`, whose tee the
# same hang-up ended).
_GONE = (errno.EIO, errno.EPIPE)


def stderr_gone(exc: OSError) -> None:
    """After a write to stderr failed with `exc`: where stderr went away (`_GONE`), its descriptor is
    pointed at /dev/null, so that this message and every later one (tqdm's, rich's, HDF5's) go
    nowhere, as with `2>/dev/null` (a closed stderr's way: cli._open_closed_standard_streams), and
    the command goes on, or stops as it was asked to, with its work. (The first message after a
    hang-up failed the command: train's stop for the SIGHUP lost its checkpoint, and a nohup'd run
    that had done its work exited 1 at its summary.) Any other error is raised again, and so is one
    of a stderr that is stdout's descriptor (a library caller's `sys.stderr = sys.stdout`): that is
    the data's failure, and discarding it lost the caller's output after it with exit 0."""
    if exc.errno not in _GONE:
        raise exc
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # (a stream of no descriptor: replaced instead)
        fd = None
    if fd is not None and fd in _stdout_descriptors():
        raise exc
    null = os.open(os.devnull, os.O_WRONLY)
    if fd is None:
        sys.stderr = os.fdopen(null, "w", encoding="utf-8")
        return
    os.dup2(null, fd)  # (what the failed write left in the stream's buffer goes there with the next flush)
    os.close(null)


def _stdout_descriptors() -> set[int]:
    """Descriptor 1 and sys.stdout's, where the data goes."""
    fds = {1}
    with contextlib.suppress(AttributeError, OSError, ValueError):
        fds.add(sys.stdout.fileno())
    return fds


def flush_standard_streams() -> None:
    """stdout and stderr flushed before an `os._exit`, which skips Python's own flush. An error
    (a reader that left, a closed stream, None where the process has none) is dropped: the exit
    must come all the same."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def warn(message: str) -> None:
    message = _named(message) if state.names else message
    if state.said is not None:
        if message in state.said:
            return
        state.said.add(message)
    if _recorded("warning", message):
        return
    if state.verbosity >= 0:
        _emit(f"protrans: warning: {_shown(message)}\n")


def info(message: str) -> None:
    message = _named(message) if state.names else message
    if _recorded("info", message):
        return
    if state.verbosity >= 0:
        _emit(f"{_shown(message, newlines=True)}\n")


def debug(message: str) -> None:
    # (escaped as info's lines are: the output's name in a torchrun rank's stop went raw to the log)
    if state.verbosity >= 1:
        _emit(f"[debug] {_shown(message, newlines=True)}\n")


def _recorded(kind: str, message: str) -> bool:
    """Add a message to the open recordings; whether one of them holds it back."""
    for records in state.records:
        records.append((kind, message))
    return state.held > 0


@contextlib.contextmanager
def said_once():
    """Inside, a warning said already inside is not said again: a command that runs two
    computations over one input (esm-extract's contact maps, then its hidden states), each of which
    warns of what it found in it (gap characters, DNA), said each of those twice."""
    outer = state.said
    state.said = set() if outer is None else outer
    try:
        yield
    finally:
        state.said = outer


@contextlib.contextmanager
def recording(*, hold: bool = False):
    """The warnings and info lines said inside, as a list of (kind, text) pairs. They are shown
    as they come, or with `hold` kept back for the caller to show (`say`) or drop: what torchrun's
    other ranks say of a set-up that rank 0 has described already."""
    records: list = []
    state.records.append(records)
    state.held += hold
    try:
        yield records
    finally:
        state.records[:] = [r for r in state.records if r is not records]  # (by identity)
        state.held -= hold


def say(kind: str, message: str) -> None:
    """Show one message that a `recording` held back."""
    (warn if kind == "warning" else info)(message)


def show_progress() -> bool:
    """Progress bars only when stderr is a terminal or a notebook's, never when quiet or under CI logs."""
    return (state.verbosity >= 0 and (_is_terminal(sys.stderr) or _in_notebook())
            and not os.environ.get("PROTRANS_NO_PROGRESS"))


def progress_wanted() -> bool:
    """Whether a long job shows where it is: a bar (`show_progress()`) or, in a log, a line every
    PROTRANS_PROGRESS_INTERVAL seconds (`progress`); not when quiet or PROTRANS_NO_PROGRESS is set.
    (prep and variants took `show_progress()` for it: a batch job's log got no line at all.)"""
    return state.verbosity >= 0 and not os.environ.get("PROTRANS_NO_PROGRESS")


def _in_notebook() -> bool:
    """Called from a Jupyter kernel, whose stderr is no terminal but shows bars (tqdm.auto draws
    a widget there); a long embed in a notebook showed nothing until its summary."""
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # an IPython too old or half-imported: no bars, as before
        return False
    return type(shell).__name__ == "ZMQInteractiveShell"


# Seconds between two progress lines in a log (stderr not a terminal); PROTRANS_PROGRESS_INTERVAL
# changes it, PROTRANS_NO_PROGRESS=1 (or -q) turns the lines off with the bars.
PROGRESS_INTERVAL = 60.0


def progress(iterable=None, *, total=None, desc=None, unit="it", **kwargs):
    """A tqdm bar on stderr when `show_progress()`; else, where stderr is a log (a batch job's,
    `2> log`), a `LogProgress` that writes one line every PROGRESS_INTERVAL seconds, so that an
    hours-long embed or a days-long training shows where it is without a bar's redraws; one that
    writes nothing when quiet or PROTRANS_NO_PROGRESS is set. The same interface in every case."""
    if not show_progress():
        # quiet (-q, PROTRANS_NO_PROGRESS): a LogProgress that never writes, not a disabled tqdm
        # (importing tqdm.auto, asyncio behind it, was 0.04 s of a 0.3 s `export -q`)
        quiet = state.verbosity < 0 or bool(os.environ.get("PROTRANS_NO_PROGRESS"))
        return LogProgress(iterable, total=total, desc=desc, unit=unit,
                           interval=math.inf if quiet else _progress_interval(),
                           unit_scale=kwargs.get("unit_scale", False), initial=kwargs.get("initial", 0))
    # (only here: tqdm.auto, asyncio behind it, is 0.04 s of a 0.2 s prep or export with stderr a log)
    from tqdm.auto import tqdm

    size = {"dynamic_ncols": True}
    told = _terminal_size(sys.stderr)
    if told is not None and not (told.columns and told.lines):
        # A terminal that tells no size, or its columns alone (a pseudo-terminal no one sized:
        # `script` or `unbuffer` in a CI job, `docker run -t`, `ssh -t` from a script; `stty cols
        # 100`): tqdm took 0 for -1 and drew nothing at all, from the first protein to the summary
        # (a bar is hidden below the last of its rows). What it tells, else COLUMNS and LINES, else
        # 80x24, less one of each as tqdm takes them (the last column left free: no wrap there).
        size = {"ncols": (told.columns or _size_from_environment("COLUMNS") or 80) - 1,
                "nrows": (told.lines or _size_from_environment("LINES") or 24) - 1}
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, **size, **kwargs)


def _terminal_size(stream) -> os.terminal_size | None:
    """The size the terminal `stream` writes to tells (0 columns and 0 lines: it tells none); None
    for no terminal, or a stream of no descriptor (a notebook's)."""
    try:
        return os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _size_from_environment(name: str) -> int | None:
    """COLUMNS or LINES as a positive number; None where it is unset or no such number."""
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def _progress_interval() -> float:
    raw = os.environ.get("PROTRANS_PROGRESS_INTERVAL", "")
    try:
        value = float(raw) if raw else PROGRESS_INTERVAL
    except ValueError:
        value = None
    # (a negative number or nan took the minute without a word, where text was said)
    if value is None or not value >= 0:
        # said once a run (a `configure`), not at each bar: fit's and finetune's bar of each epoch
        # and prep's of each pass said it again, a line an epoch in the log
        if state.interval_said != raw:
            state.interval_said = raw
            warn(f"PROTRANS_PROGRESS_INTERVAL={raw!r} is not a number of seconds, 0 or more: {PROGRESS_INTERVAL:g} used")
        return PROGRESS_INTERVAL
    return value


class LogProgress:
    """The part of tqdm's interface protrans uses (update, set_postfix, set_postfix_str, close,
    iteration), writing a plain line to stderr at most once per `interval` seconds:
    `embed: 482k/1.35M res (36%) [01:00<01:48, 8.03k res/s, 13.2 proteins/s]`. Nothing for a
    job shorter than the interval: its summary says the rest."""

    def __init__(self, iterable=None, *, total=None, desc=None, unit="it", interval=PROGRESS_INTERVAL,
                 unit_scale=False, initial=0):
        import time

        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval, self.unit_scale = interval, unit_scale
        self.n = self.initial = initial
        self.postfix = ""
        self._clock = time.monotonic
        self._start = self._last = self._clock()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __len__(self):
        return len(self.iterable) if self.iterable is not None else int(self.total or 0)

    def update(self, n=1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self.write_line(now)

    def skip(self, n) -> None:
        """Count `n` as done, not as done by this run (what a resumed output already holds): in
        the position and percentage, not in the rate or the time left."""
        self.n += n
        self.initial += n

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s="", refresh=True) -> None:
        self.postfix = str(s)

    def close(self) -> None:
        pass

    def write_line(self, now: float) -> None:
        from tqdm import tqdm

        elapsed = now - self._start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else None
        fmt = lambda x: tqdm.format_sizeof(x) if self.unit_scale and x >= 1000 else f"{x:,.0f}"  # noqa: E731
        unit = self.unit if self.unit == "B" else f" {self.unit}"  # 10.0MB, 1.35M res
        line = f"{self.desc}: {fmt(self.n)}"
        if self.total:
            line += f"/{fmt(self.total)}{unit} ({100 * self.n / self.total:.0f}%)"
            remaining = (self.total - self.n) / rate if rate else None
            times = f"{tqdm.format_interval(elapsed)}<{'?' if remaining is None else tqdm.format_interval(remaining)}"
        else:
            line += unit
            times = tqdm.format_interval(elapsed)
        shown_rate = "?" if rate is None else (tqdm.format_sizeof(rate) if self.unit_scale else f"{rate:.3g}")
        line += f" [{times}, {shown_rate}{unit}/s{', ' + self.postfix if self.postfix else ''}]"
        info(line)


def skip(bar, n) -> None:
    """Advance a `progress` bar by work done before this run (proteins a resumed file holds): a
    log's line leaves it out of its rate and time left (counted in them, a requeued job's log
    showed several times its real residues/s, and a time left too short for as long as its first
    run had taken); a terminal's bar smooths its rate over recent updates and soon forgets it."""
    if isinstance(bar, LogProgress):
        bar.skip(n)
    else:
        bar.update(n)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a notebook's stream; a closed one
        return False


def load_rich() -> None:
    """Import rich (before any `from rich... import`) leaving Python's `random` as the caller had it:
    rich.style draws random.getrandbits(24) at import, and a workflow that seeded `random` and then
    called main() in process saw its draws move after the first table."""
    if "rich.style" in sys.modules:
        return
    import importlib
    import random

    saved = random.getstate()
    try:
        importlib.import_module("rich.style")
    finally:
        random.setstate(saved)


def stderr_console():
    """A rich Console on stderr, for tables and summaries."""
    load_rich()
    from rich.console import Console

    class StderrConsole(Console):
        # A stderr that went away (`stderr_gone`): rich raised EIO, and answered EPIPE with exit 1
        # (and /dev/null on stdout, the data's).
        def _check_buffer(self) -> None:
            try:
                super()._check_buffer()
            except OSError as exc:
                stderr_gone(exc)

        def on_broken_pipe(self) -> None:
            stderr_gone(BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)))

    # Not a terminal (a log, a pipe): rich assumed 80 columns and cut paths in tables with "…"
    return StderrConsole(stderr=True, highlight=False, soft_wrap=True,
                         width=None if _is_terminal(sys.stderr) else 200)


def print_table(title: str, columns: list[str], rows: list[list], *, file_console=None) -> None:
    if state.verbosity < 0:
        return
    load_rich()
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    # On a narrow terminal rich cut every cell to "prot_t5_xl_unir…", the names a user must type
    # (`embed -m NAME`): the first column keeps its width, the others wrap whole rather than lose text.
    first = max([len(str(columns[0]))] + [len(str(row[0])) for row in rows]) if columns else 0
    for i, col in enumerate(columns):
        if i == 0:
            table.add_column(col, no_wrap=True, min_width=min(first, 48))
        else:
            table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*[str(x) for x in row])
    (file_console or stderr_console()).print(table)

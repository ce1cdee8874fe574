"""The `protrans` command: a click group whose subcommands are imported only when invoked.

`protrans --help`, `--version` and `protrans prep` never import torch or transformers; each
command module imports its heavy dependencies inside the command function.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.util  # (not loaded by `import importlib`: only 3.11's site module happened to)
import os
import re
import signal
import sys
import warnings

import click

from protrans_cli._version import __version__
from protrans_cli.errors import (EXIT_INTERRUPTED, STOP_WORDS, WARNING_SIGNALS, PeerStopped, ProtransError,
                                 gpu_out_of_memory, signal_exit_code)

# An input file argument: click checks nothing (a directory or an unreadable file would be a
# three-line usage error, exit 2); the reader says what is wrong in one line, exit 1. `-` is stdin.
INPUT_FILE = click.Path(allow_dash=True, readable=False)

# name -> (module, one-line help). The help is repeated here so that `protrans --help`
# lists every command without importing any command module.
COMMANDS = {
    "prep": ("protrans_cli.cli.prep", "FASTA to the ProtTrans pretraining corpus (one spaced protein per line)."),
    "train": ("protrans_cli.cli.train", "Pretrain a protein language model (one GPU, many GPUs or nodes via torchrun)."),
    "embed": ("protrans_cli.cli.embed", "FASTA to per-residue and per-protein embeddings in HDF5."),
    "models": ("protrans_cli.cli.models", "List model families, presets and published checkpoints."),
    "fit": ("protrans_cli.cli.fit", "Train a prediction head (ss3/ss8/loc/value/...) on embeddings."),
    "finetune": ("protrans_cli.cli.finetune", "Fine-tune a protein LM with LoRA together with a prediction head."),
    "predict": ("protrans_cli.cli.predict", "Apply a trained head to embeddings."),
    "merge": ("protrans_cli.cli.merge", "Merge embed outputs of one model and settings into one file (no computation)."),
    "import-esm": ("protrans_cli.cli.import_esm", "Import esm-extract's .pt files into one embeddings file (no computation)."),
    "esm-extract": ("protrans_cli.cli.esm_extract", "fair-esm's esm-extract command line: a FASTA to one ID.pt file a protein."),
    "contacts": ("protrans_cli.cli.contacts", "Residue-residue contact maps from ESM's contact head, into HDF5."),
    "variants": ("protrans_cli.cli.variants", "Zero-shot variant effects (masked marginals) from a masked language model."),
    "perplexity": ("protrans_cli.cli.perplexity", "Per-protein (pseudo-)perplexity of a FASTA under a language model."),
    "generate": ("protrans_cli.cli.generate", "Sample protein sequences from a language model (causal, or a masked LM filling a template)."),
    "translate": ("protrans_cli.cli.translate", "ProstT5's translations: amino acids to Foldseek 3Di strings, and back (inverse folding)."),
    "import-head": ("protrans_cli.cli.import_head", "Import a published prediction head (no training)."),
    "import-model": ("protrans_cli.cli.import_model", "Convert a fair-esm or ESM C checkpoint, or merge a peft LoRA adapter, into a model directory."),
    "knn": ("protrans_cli.cli.knn", "Nearest neighbours in embedding space; transfers and scores labels."),
    "project": ("protrans_cli.cli.project", "A map of embedding space (PCA, t-SNE, UMAP) as a table, picture and page."),
    "export": ("protrans_cli.cli.export", "An embeddings file as a TSV/CSV table, NumPy arrays (.npz) or esm-extract .pt files."),
    "info": ("protrans_cli.cli.info", "What an embeddings, contact-map or probabilities file, or a head, model or run folder holds."),
    "labels": ("protrans_cli.cli.labels", "Convert label files (NetSurfP, PISCES, FLIP, biotrainer, DeepLoc, CSV) to FASTA for embed."),
    "from-structure": ("protrans_cli.cli.from_structure", "PDB/mmCIF files to FASTA for embed (a letter a modelled residue), with a row-to-residue map."),
    "quickstart": ("protrans_cli.cli.quickstart", "Run the whole pipeline on the bundled example data (offline, CPU)."),
    "env": ("protrans_cli.cli.env", "Versions, devices and which fast paths run here (for bug reports)."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs."""

    def list_commands(self, ctx):
        return [name for name, (module, _) in COMMANDS.items() if _module_exists(module)]

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, _ = COMMANDS[name]
        if not _module_exists(module_name):
            return None
        if ctx is not None and ctx.resilient_parsing is False and _listing_help(ctx):
            return _HelpStub(name, help=COMMANDS[name][1])
        module = importlib.import_module(module_name)
        return _help_needs_stdout(_values_not_options(_with_output_flags(getattr(module, "command"))))

    def shell_complete(self, ctx, incomplete):
        # Tab after `protrans `: click's own asks get_command for every command, only to read its
        # short help, which imported every command module (and numpy behind half of them) on each
        # Tab press, 0.2 s where --help takes 0.08. The names and help come from COMMANDS, as --help's.
        from click.shell_completion import CompletionItem

        names = [CompletionItem(name, help=COMMANDS[name][1]) for name in self.list_commands(ctx)
                 if name.startswith(incomplete)]
        return names + click.Command.shell_complete(self, ctx, incomplete)  # (and the group's options)


def _needs_stdout(callback, what: str):
    """`callback` of --help or --version, refusing a closed stdout (`protrans --version >&-`):
    click's echo writes nothing there and the command exited 0 in silence, where every command
    that writes to stdout says so in one line, exit 1 (io.files.stdout_text, as models and env)."""
    def check(ctx, param, value):
        if not value or ctx.resilient_parsing:
            return callback(ctx, param, value)
        from protrans_cli.io.files import stdout_text

        with stdout_text(what):  # (and `> /dev/full` named: it said "No space left on device" alone)
            return callback(ctx, param, value)

    check._protrans_needs_stdout = True
    return check


def _help_needs_stdout(command: click.Command) -> click.Command:
    """--help (and, on the group, --version) of `command` refuse a closed stdout (_needs_stdout)."""
    if getattr(command, "_protrans_help_checked", False):
        return command
    made = command.get_help_option  # (click makes the option, with the context's names, when first asked)

    def get_help_option(ctx):
        option = made(ctx)
        if option is not None and not getattr(option.callback, "_protrans_needs_stdout", False):
            option.callback = _needs_stdout(option.callback, "--help")
        return option

    command.get_help_option = get_help_option
    for option in command.params:
        if isinstance(option, click.Option) and "--version" in option.opts:
            option.callback = _needs_stdout(option.callback, "--version")
    command._protrans_help_checked = True
    return command


def _set_quiet(ctx, param, value):
    if value:
        from protrans_cli import console

        console.state.verbosity = -1


def _set_verbose(ctx, param, value):
    if value:
        from protrans_cli import console

        console.state.verbosity = value
        console.state.debug = console.state.debug or value >= 2


def _set_debug(ctx, param, value):
    if value:
        from protrans_cli import console

        console.state.debug = True


def _with_output_flags(command: click.Command) -> click.Command:
    """-q, -v and --debug after the command name as well (`protrans embed x.fa -q`, as
    esm-extract and bio_embeddings take them): the group's options, repeated hidden on each
    command, applied after the group's own."""
    if not getattr(command, "_protrans_output_flags", False):
        command.params += [
            click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, hidden=True, callback=_set_quiet),
            click.Option(["-v", "--verbose"], count=True, expose_value=False, hidden=True, callback=_set_verbose),
            click.Option(["--debug"], is_flag=True, expose_value=False, hidden=True, callback=_set_debug),
        ]
        command._protrans_output_flags = True
    return command


def _values_not_options(command: click.Command) -> click.Command:
    """An option's value that is one of the command's own options is a usage error: `embed x.fa
    -o --per-protein` (the file name left out) wrote an HDF5 file named `--per-protein`, and `prep
    x.fa -o -q` a corpus named `-q`. Text and path options only (a number option already refuses
    it); a file really named so is given as `./--per-protein`."""
    if getattr(command, "_protrans_values_checked", False):
        return command
    for param in command.params:
        if (isinstance(param, click.Option) and not param.is_flag and not param.count
                and isinstance(param.type, (click.Path, click.types.StringParamType))):
            param.callback = _checked_value(param.callback)
    command._protrans_values_checked = True
    return command


def is_option(ctx, value) -> bool:
    """Whether `value` (as an option's value) is one of the command's own options (`--name=...` too)."""
    names = {name for p in ctx.command.get_params(ctx) if isinstance(p, click.Option)
             for name in (*p.opts, *p.secondary_opts)}
    return isinstance(value, str) and value.split("=", 1)[0] in names


def given_option(name: str, ctx=None) -> bool:
    """Whether the option `name` (its parameter name) was given on the command line, not left at
    its default (the running command's, or `ctx`'s): an option that does nothing is said so only
    where the user gave it."""
    from click.core import ParameterSource

    ctx = ctx or click.get_current_context()
    return ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE


@contextlib.contextmanager
def naming_default_model(command: str, default: str, alternatives: str, param: str = "model"):
    """A model that cannot be loaded (not cached, no network) where the user named none: the one-line
    error ends by saying that `default` is `command`'s default -m and what runs without it
    (`alternatives`). `protrans embed x.fa -o x.h5` offline was told only to download 2.4 GB of a
    model the user had not asked for."""
    from protrans_cli.errors import ModelError

    try:
        yield
    except ModelError as exc:
        if given_option(param) or not str(exc).startswith(f"cannot load model {default!r}:"):
            raise
        raise ModelError(f"{exc} ({default} is the default -m of protrans {command}; {alternatives})") from None


def _checked_value(callback):
    def check(ctx, param, value):
        if callback is not None:  # the option's own check first (it may say more)
            value = callback(ctx, param, value)
        given = value if isinstance(value, (tuple, list)) else [value]
        for item in (v for g in given for v in (g if isinstance(g, (tuple, list)) else [g])):
            if is_option(ctx, item):
                raise click.BadParameter(f"{item!r} is an option of this command, not a value: give "
                                         f"{param.opts[0]} its value first (a file named so: ./{item})", ctx, param)
        return value

    return check


class _HelpStub(click.Command):
    """Stands in for a command while the group's own --help lists it (no import needed)."""

    def __init__(self, name, help):
        super().__init__(name, help=help, short_help=help)


def _listing_help(ctx) -> bool:
    # True while click formats the group's own help page: it calls get_command for every
    # command only to read its short help.
    return getattr(ctx, "_protrans_listing", False)


def _module_exists(module_name: str) -> bool:
    return importlib.util.find_spec(module_name) is not None


class _Group(LazyGroup):
    def invoke(self, ctx):
        # click's own main() turns EPIPE into exit 1; catch it first so `prep x.fa | head`
        # exits 141 as documented (docs/troubleshooting.md).
        # Likewise click answers Ctrl-C with a blank line before re-raising it; _Stopped passes
        # through click untouched, so main() prints the one line alone.
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if getattr(exc, "errno", None) == errno.EPIPE:
                _quiet_broken_pipe()
            raise
        except KeyboardInterrupt as exc:
            raise _Stopped(_signum_of(exc)) from None

    def format_commands(self, ctx, formatter):
        ctx._protrans_listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            ctx._protrans_listing = False


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="protrans")
@click.option("-v", "--verbose", count=True, help="More messages; -vv also shows tracebacks (same as --debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress bars or summaries.")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx, verbose, quiet, debug):
    """protrans: protein language models from FASTA to predictions.

    \b
    protrans prep uniref50.fasta.gz -o corpus.txt.gz
    protrans train --family bert --preset tiny --corpus corpus.txt.gz -o runs/bert
    protrans embed proteome.fa -m prot_t5_xl_half -o proteome.h5
    protrans fit ss3 --embeddings train.h5 --labels Train_HHblits.csv -o heads/ss3
    protrans predict heads/ss3 --embeddings query.h5 -o query.ss3.fa
    """
    from protrans_cli import console

    console.configure(verbosity=-1 if quiet else verbose, debug=debug or verbose >= 2)


_help_needs_stdout(cli)  # (the group's own --help and --version)


# The signals a command stops for as it does for Ctrl-C (its work kept, one line, 128 + the
# signal's number as the exit status, as a shell reports a death by it): SIGTERM (a batch
# scheduler, `timeout`, torchrun stopping its ranks) and SIGHUP (the terminal hung up: an ssh
# connection that dropped under a command run without nohup or tmux, which SIGHUP killed on the
# spot: train lost every step since its last checkpoint). (Windows has no SIGHUP.)
_SIGHUP = getattr(signal, "SIGHUP", None)


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (`signum`), unwound like Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.signum = signum


def _signum_of(exc: BaseException) -> int:
    """The signal a KeyboardInterrupt stands for: Ctrl-C's, or a _Terminated's own."""
    return getattr(exc, "signum", signal.SIGINT)


class _Stopped(Exception):
    """Ctrl-C, SIGTERM or SIGHUP (`signum`) on its way from a command to main(), out of click's
    reach; `detail` says what was kept and how to continue."""

    def __init__(self, signum: int, detail: str | None = None):
        super().__init__(STOP_WORDS.get(signum, "terminated") + (f": {detail}" if detail else ""))
        self.signum = signum
        self.code = signal_exit_code(signum)


def stopped(exc: KeyboardInterrupt, detail: str | None = None) -> _Stopped:
    """For a command that kept partial work: raise stopped(exc, "... kept in X; --resume ...")
    from its `except KeyboardInterrupt`, and main() prints that one line and exits 130/143/129."""
    return _Stopped(_signum_of(exc), detail)


_SAME_WITH_RESUME = "the same command with --resume"


@contextlib.contextmanager
def finished_with_resume(force: bool, kept_of):
    """Around an embed or contacts run, which keeps its work in OUTPUT.partial: a Ctrl-C, SIGTERM
    or SIGHUP says where the work is (`kept_of(exc)`, when it exists) and to run the same command with
    --resume; given --force, beside which --resume is refused, "... with --resume instead of
    --force", which a full disk's advice ("the same command with --resume") is made to say too."""
    again = _SAME_WITH_RESUME + (" instead of --force" if force else "")
    try:
        yield
    except KeyboardInterrupt as exc:
        kept = kept_of(exc)
        # (`kept_in`: the exception's own words for work in several files, torchrun's shards)
        where = getattr(exc, "kept_in", None) or (kept if kept.exists() else None)
        raise stopped(exc, f"what was computed is in {where}; run {again} to finish"
                      if where else None) from None
    except ProtransError as exc:
        if not force or _SAME_WITH_RESUME not in exc.message:
            raise
        raise type(exc)(exc.message.replace(_SAME_WITH_RESUME, again), path=exc.path, record=exc.record,
                        line=exc.line) from None


@contextlib.contextmanager
def kept_in_partial(output, what: str = "what was computed is in"):
    """Around a run that keeps its finished work beside `-o FILE` in FILE.partial/ (variants'
    UnitStore: variants, perplexity, generate): a Ctrl-C, SIGTERM or SIGHUP, or an output that
    could not be written (a full disk), says where the work is ("`what` FILE.partial") and to run
    the same command with --resume (when the folder exists). An `-o` that is a link of the user's
    own keeps its work beside where the link leads (the UnitStore's `partial_folder(through_link())`),
    and that folder is the one named."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.files import through_link
    from protrans_cli.variants import partial_folder

    # (an empty -o is the run's own error to say, "the output path is empty": Path('') has no name
    # to add .partial to, and was a ValueError traceback here)
    kept = partial_folder(through_link(output)) if output not in (None, "-", "") else None
    try:
        yield
    except KeyboardInterrupt as exc:
        raise stopped(exc, f"{what} {kept}; run {_SAME_WITH_RESUME} to go on"
                      if kept is not None and kept.exists() else None) from None
    except RuntimeFailure as exc:
        # (a table, FASTA or heatmap that could not be written: the work stays kept for --resume,
        # and the same command without it is refused, "holds the work of an interrupted run")
        if kept is None or not kept.is_dir() or "cannot write" not in exc.message or "--resume" in exc.message:
            raise
        raise RuntimeFailure(f"{exc.message}; {what} {kept}: run {_SAME_WITH_RESUME} once the problem is solved",
                             path=exc.path, record=exc.record, line=exc.line) from None


def refuse_if_every_protein_failed(failed: dict, written: int, resumed: int, what: str, output) -> None:
    """Exit 1 when a run wrote nothing because every protein it computed failed (out of memory,
    NaN or infinity): the empty file is no result a pipeline's next step (or a scheduler's
    exit status) should take for one. Proteins left out by the run's own policy (`skipped:`,
    --long-policy skip, --invalid-policy skip) are what was asked for: exit 0 as before. Called
    after `console.list_failed` has named them; the file keeps the failures for --resume."""
    from protrans_cli.errors import RuntimeFailure

    if written or resumed or all(str(why).startswith("skipped:") for why in failed.values()):
        return
    raise RuntimeFailure(f"no {what} was written: every protein failed (listed above and in the file's 'failed' "
                         "attribute); --resume computes them again once the cause is fixed", path=str(output))


_TERMINATED: list[int] = []  # SIGTERMs and SIGHUPs the main process received
_INTERRUPTED: list[int] = []  # and SIGINTs (Ctrl-C)
_LATE: list[int] = []  # either, once the command's output was complete (console.output_complete)


# Stops raised and not dropped: their exception is on its way out, through the command's cleanup.
# A SIGTERM or SIGHUP then is a repeat (a hang-up's SIGHUP comes from the kernel and again from the
# shell; a scheduler or `kill` may send SIGTERM twice): raised too, it broke off that cleanup where it
# was (prep left its workers' hand-over folder in --tmp-dir). It is noted and the first stop goes on.
_IN_FLIGHT: list[int] = []


def _forget_stops() -> None:
    for noted in (_TERMINATED, _INTERRUPTED, _LATE, _IN_FLIGHT):
        noted.clear()


def raise_if_stopped() -> None:
    """Raise the stop a SIGTERM, SIGHUP or Ctrl-C asked for if Python dropped its exception (raised while a
    weakref callback ran: "Exception ignored in ..."). A loop that builds an output calls it as
    it goes: `export` interrupted so went on to the end, committed its output, then exited 130."""
    if _TERMINATED or _INTERRUPTED:
        _IN_FLIGHT.append((_TERMINATED or _INTERRUPTED)[0])
    if _TERMINATED:
        raise _Terminated(_TERMINATED[0])
    if _INTERRUPTED:
        raise KeyboardInterrupt


def _quiet_dropped_stops(previous):
    """An unraisable-exception hook that says nothing of a Ctrl-C's, SIGTERM's or SIGHUP's exception
    Python dropped (raised while a weakref callback or destructor ran, inside h5py's teardown
    of an object): the handlers noted the signal, and the command stops on it as if raised
    (`raise_if_stopped`, and main() at the end), with its own one line. Python printed
    "Exception ignored in: <function ...>" and a traceback above that line. Any other
    unraisable exception goes to `previous`, as before."""
    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and (_TERMINATED or _INTERRUPTED):
            if _IN_FLIGHT:  # (dropped, not on its way out: a repeat of the signal stops the command again)
                _IN_FLIGHT.pop()
            return
        previous(unraisable)

    return hook


def _on_sigterm(main_pid):
    """The handler of SIGTERM, and of SIGHUP where it would have killed the process."""
    def handler(signum, frame):
        if os.getpid() != main_pid:  # a forked worker: die as before, the main process cleans up
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if _after_completion(signum) or _deferred_past_torch_import(signum):
            return
        # Noted as well as raised: Python drops an exception raised while a weakref callback or
        # a destructor runs ("Exception ignored in ..."), and the command then ended with exit 0.
        _TERMINATED.append(signum)
        if _IN_FLIGHT:  # a repeat while the first stop unwinds: its cleanup runs to the end
            return
        _IN_FLIGHT.append(signum)
        raise _Terminated(signum)

    return handler


def _on_sigint(signum, frame):
    # Python's own handler raises KeyboardInterrupt, which is dropped the same way when it
    # lands in a weakref callback: `predict` went on to write its output and exit 0. Noted.
    if _after_completion(signum) or _deferred_past_torch_import(signum):
        return
    _INTERRUPTED.append(signum)
    _IN_FLIGHT.append(signum)  # (a second Ctrl-C still stops at once, the cleanup too)
    raise KeyboardInterrupt


_REDELIVERING: list[int] = []


def _deferred_past_torch_import(signum) -> bool:
    """Whether the signal came while torch was being imported, and is delivered again once it is.
    Raised there, the exception could land inside torch's C++ (pybind11) while it ran Python code:
    "terminate called after throwing an instance of 'pybind11::error_already_set'" and an abort
    (status -6), for about one Ctrl-C in fifteen in embed's first second."""
    if not _importing_torch():
        return False
    if not _REDELIVERING:
        import _thread
        import threading
        import time

        _REDELIVERING.append(signum)

        def redeliver():
            while _importing_torch():
                time.sleep(0.01)
            _REDELIVERING.clear()
            _thread.interrupt_main(signum)  # (runs this signal's handler in the main thread)

        threading.Thread(target=redeliver, name="protrans-signal", daemon=True).start()
    return True


def _importing_torch() -> bool:
    for name, module in list(sys.modules.items()):
        if (name == "torch" or name.startswith("torch.")) and getattr(getattr(module, "__spec__", None),
                                                                      "_initializing", False):
            return True
    return False


def _after_completion(signum) -> bool:
    """A signal after the command's output was complete: noted, not raised. It had been raised
    wherever Python was cleaning up (`fit`: a traceback from a weakref callback, then
    "interrupted" and exit 130 for a head already written; a Slurm job ended by its time limit
    at that moment was reported failed)."""
    from protrans_cli import console

    if console.state.complete is None:
        return False
    _LATE.append(signum)
    return True


def _exit_now(code: int):
    """A handler for the last moments of the program, once main() has its exit code: Python's
    teardown (atexit callbacks, threads) interrupted by Ctrl-C printed "Exception ignored in
    atexit callback" and a traceback. The code decided stands; the streams are flushed first."""
    from protrans_cli.console import flush_standard_streams  # (not in the handler: Python may be shutting down)

    def handler(signum, frame):
        flush_standard_streams()
        os._exit(code)

    return handler


def _open_closed_standard_streams() -> None:
    """A process started with a standard descriptor closed (`2>&-`, some schedulers' and
    daemons' set-up). /dev/null takes each closed descriptor, as daemons do: the next file opened
    would take it otherwise, and C libraries (HDF5's error stack, torch) write their messages to
    descriptor 2, into an output file then. A closed stdin or stdout stays closed to Python
    (sys.stdin/sys.stdout None: reading or writing there is one line saying so); a closed
    stderr discards the messages, as `2>/dev/null` (Python's None there failed the first message:
    exit 1, embed's output left .partial, prep's not written)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:  # (the lowest free descriptor: fd itself, unless a lower one is closed too)
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")


def _quiet_matplotlib_config_dir() -> None:
    """matplotlib, where the home's config folder cannot be made (clusters and containers:
    `docker run --user` with HOME=/, a read-only or full home), works from a temporary one and
    said so on every run that drew a plot: "mkdir -p failed for path /.config/matplotlib" and
    "Matplotlib created a temporary cache directory ...", two lines amid train's and fit's
    messages and under -q, for a plot drawn all the same. Left out for the command line (a
    library caller's logging is its own); an MPLCONFIGDIR the user set keeps matplotlib's word
    on it, and a temporary folder that cannot be made either is still an error."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    import logging

    logging.getLogger("matplotlib").addFilter(lambda record: record.funcName != "_get_config_or_cache_dir")


def _hub_warnings_as_ours(show):
    """warnings.showwarning, with huggingface_hub's own warnings to the user (the cache lacks room
    for a download as it begins, a cache folder without symlinks) as one `protrans: warning:`
    line: they were Python's two, "file_download.py:773: UserWarning: ..." and the source line
    `warnings.warn(`, amid protrans' messages and under -q. The command line's only (a library
    caller's warnings are its own); any other warning is shown as `show` shows it."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and f"{os.sep}huggingface_hub{os.sep}" in str(filename):
            from protrans_cli import console

            console.warn(f"huggingface_hub: {message}")
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def main(argv=None):
    """Entry point: runs the click group and maps every failure to one line and an exit code."""
    from protrans_cli import console

    if argv is None:
        _open_closed_standard_streams()
        _quiet_matplotlib_config_dir()
    # Without a handler SIGTERM killed the process on the spot: temporary outputs, the dedup
    # scratch directory and prep's worker processes were left behind.
    _forget_stops()  # an earlier call in this process (tests, notebooks) is not this one
    console.state.complete = None
    console.state.complete_quietly = False
    console.state.last_error = None
    console.state.peer_stopped = False
    # (-q, -v and --debug are this call's: an in-process caller's library calls after it keep
    # the caller's own, where `main(["-q", ...])` in a notebook left every later call quiet; and
    # their messages name settings as a library call takes them, not by this command's flags)
    caller_messages = console.state.verbosity, console.state.debug, console.state.command_line
    global _ARGV
    caller_argv, _ARGV = _ARGV, (None if argv is None else list(argv))  # (`command_args`; a nested call's own)
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm(os.getpid()))
        installed = True
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        installed = False
    # (a hang-up: only where it would kill the process now; an ignored SIGHUP (nohup) stays
    # ignored, and a caller's own handler stays in place)
    previous_hup = signal.getsignal(_SIGHUP) if installed and _SIGHUP is not None else None
    if previous_hup == signal.SIG_DFL:
        signal.signal(_SIGHUP, _on_sigterm(os.getpid()))
    # (a scheduler's warning, SIGUSR1/SIGUSR2, whose default action killed a command on the spot, its cleanup
    # and its "run ... --resume" line skipped: likewise only where it would kill the process now)
    warnings_taken = [s for s in WARNING_SIGNALS if installed and signal.getsignal(s) == signal.SIG_DFL]
    for s in warnings_taken:
        signal.signal(s, _on_sigterm(os.getpid()))
    # (Ctrl-C: only where it raises KeyboardInterrupt now; an ignored SIGINT stays ignored)
    previous_int = signal.getsignal(signal.SIGINT) if installed else None
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    previous_hook = sys.unraisablehook
    if installed:
        sys.unraisablehook = _quiet_dropped_stops(previous_hook)
    code = 1
    console.state.command_line = True  # (messages name settings by this command's flags)
    caller_showwarning = warnings.showwarning
    warnings.showwarning = _hub_warnings_as_ours(caller_showwarning)
    try:
        _main(console, argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if argv is None and code not in (0, *map(signal_exit_code, STOP_WORDS)):
            _tell_torchrun(console.state.last_error, console.state.peer_stopped)
        h5 = sys.modules.get("protrans_cli.io.h5")
        if argv is None and h5 is not None and h5.abandoned_files():
            # A write failed inside HDF5 and the file was left open: HDF5's own teardown at exit
            # would flush it and crash (a segmentation fault after the error line).
            _exit_now(code)(None, None)
        if argv is None and installed and _INTERRUPTED and code == EXIT_INTERRUPTED:
            # The command has unwound and said so. A Ctrl-C in the first second (while modules
            # were being imported) left Python to kill itself by SIGINT at exit, as for an
            # unhandled KeyboardInterrupt, whatever caught it: status -2, not 130, for about one
            # such Ctrl-C in five (a caller reading the status saw a death by signal). Measured:
            # 6 of 30 before, 0 of 30 after. The exit is taken here, the streams flushed first.
            _exit_now(code)(signal.SIGINT, None)
        raise
    finally:
        _ARGV = caller_argv
        if argv is not None:
            console.state.verbosity, console.state.debug, console.state.command_line = caller_messages
            warnings.showwarning = caller_showwarning
        if installed and argv is None:  # the program itself, about to exit: see _exit_now
            # SIGTERM ignored: Python's finalization (a second of torch's teardown) resets the
            # handlers Python set, and a scheduler's SIGTERM then killed a finished run (143);
            # one that hangs there still gets the scheduler's SIGKILL.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if previous_hup == signal.SIG_DFL:  # (likewise a hang-up, and a scheduler's warning)
                signal.signal(_SIGHUP, signal.SIG_IGN)
            for s in warnings_taken:
                signal.signal(s, signal.SIG_IGN)
            if previous_int is signal.default_int_handler:
                signal.signal(signal.SIGINT, _exit_now(code))
                # Python's finalization, after the atexit callbacks, resets the handlers Python
                # set: a Ctrl-C in the rest of it (torch's teardown, a second) killed the finished
                # command by SIGINT, status -2 after its success line (1 of 8 aimed Ctrl-Cs of
                # embed's kill sweep). Ignored from the atexit callbacks on, as SIGTERM is above.
                import atexit

                atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
        elif installed:  # in-process callers (tests, notebooks) get their handlers back
            # and nothing of this call's stops: a Ctrl-C noted here stopped the caller's next
            # library call that checks for one (export() raised KeyboardInterrupt at once)
            _forget_stops()
            sys.unraisablehook = previous_hook
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            if previous_hup == signal.SIG_DFL:
                signal.signal(_SIGHUP, previous_hup)
            for s in warnings_taken:
                signal.signal(s, signal.SIG_DFL)
            if previous_int is signal.default_int_handler:
                signal.signal(signal.SIGINT, previous_int)


def _tell_torchrun(line: str | None, peer_stopped: bool = False) -> None:
    """Under torchrun, this process's error line into the file torchrun reads it from
    (TORCHELASTIC_ERROR_FILE, as torch.distributed.elastic's @record writes it): the summary that
    ends a failed torchrun run showed, for every rank, "traceback : To enable traceback see:
    https://pytorch.org/docs/stable/elastic/errors.html" and no error, and its "Root Cause" now
    names the rank that failed first and its line. Not for a stop by a signal, nor a traceback.
    `peer_stopped`: the line is of an errors.PeerStopped, this process stopped because another did."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or not line:
        return
    import json
    import time

    # torchrun's Root Cause is the rank of the earliest timestamp, in whole seconds, rank 0 on a tie:
    # a rank stopping because another did (within the same second) was named the root cause, and the
    # rank with the real error ("missing.fa: no such file") only under Failures. A second later here.
    when = int(time.time()) + peer_stopped
    try:
        with open(path, "w", encoding="utf-8") as fh:  # (the "message" object torch's own ErrorHandler writes)
            json.dump({"message": {"message": line, "extraInfo": {"py_callstack": line,
                                                                  "timestamp": str(when)}}}, fh)
    except OSError:  # torchrun's summary without it, as before
        pass


# a group run without a command raises this (a UsageError holding the help page; click 8.2+)
_NO_ARGS_IS_HELP = click.exceptions.NoArgsIsHelpError


# click quotes the values it refuses with repr(): a byte of an argument that is not UTF-8 (Python's
# surrogateescape) read '\udcff', where protrans' own messages (console.printable) say '\xff'. An escape
# after an even run of backslashes is one (after an odd run, its backslash is one the user typed).
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def _bytes_as_bytes(message: str) -> str:
    """click's message with repr()'s escapes of surrogateescaped bytes (`\\udcff`) written as the bytes
    they stand for (`\\xff`), as the rest of protrans writes them."""
    return _SURROGATE_ESCAPE.sub(r"\1\\x\2", message)


# What to change when a command's GPU runs out of memory, in that command's own options: torch's
# message says what it tried to allocate, not what to lower. train's step says its own (the exception's
# `protrans_detail`: the step, a micro-batch size that fits the global batch, the checkpoint kept); this
# line is train's elsewhere (building the model, an evaluation). embed and variants split a batch that
# does not fit themselves, contacts too (what reaches here is the model itself not fitting).
_LESS_GPU_MEMORY = {
    "train": "lower --micro-batch-size (the global batch stays, by more accumulation steps) or add "
             "--activation-checkpointing (--resume takes either), or train with a shorter --max-length (a new run)",
    "fit": "lower --batch-size (FNN heads) or --max-residues (CNN, light-attention heads), with --force to start "
           "over, or go on with --resume on --device cpu",
    "finetune": "add --activation-checkpointing or use --device cpu (--resume continues with either), or lower "
                "--max-residues with --force to start over (a larger --accumulate keeps each step's proteins)",
    "predict": "lower --max-residues (CNN, light-attention heads), or predict on --device cpu",
    "knn": "search on --device cpu (a GPU holds the whole reference)",
    "contacts": "use --device cpu or a smaller model (-m); --resume keeps the proteins already written",
}
_TORCH_CHARACTERS = 240  # characters of torch's own message kept, in whole sentences


def _gpu_out_of_memory_line(exc: BaseException, argv) -> str:
    """The one line for a GPU out of memory (a RuntimeError, not a MemoryError: it was a traceback):
    torch's own sentences that fit in _TORCH_CHARACTERS (CUDA's message runs to 600, with allocator
    advice: the first ones say what it tried to allocate, the GPU's capacity, what was free and what
    this process held), then what to change in this command."""
    words = " ".join(str(exc).split()) or type(exc).__name__
    if len(words) > _TORCH_CHARACTERS:
        kept = ""
        for sentence in re.split(r"(?<=\.) ", words):
            if kept and len(kept) + 1 + len(sentence) > _TORCH_CHARACTERS:
                break
            kept = f"{kept} {sentence}" if kept else sentence
        words = kept
    if words.startswith("Invalid buffer size"):  # (MPS: one tensor past the GPU's largest buffer, said as no room)
        words = f"out of memory on Apple's GPU, one tensor larger than its largest buffer ({words})"
    command = _command_name(argv)
    # (train's step's own, in train's options: not quickstart's, whose train step has none of them)
    hint = (getattr(exc, "protrans_detail", None) if command == "train" else None) or _LESS_GPU_MEMORY.get(command)
    return f"{words.rstrip('.')}; {hint}" if hint else words


_ARGV: list | None = None  # the arguments main() was given by an in-process caller; None: sys.argv's


def command_args() -> list[str]:
    """The running command's arguments: main()'s argv where a caller gave one (a notebook's
    `main([...])`, whose sys.argv is the kernel launcher's: embed's and merge's files recorded
    `protrans -f kernel.json` as the command that wrote them), else sys.argv[1:]."""
    return [str(a) for a in (sys.argv[1:] if _ARGV is None else _ARGV)]


def invoked_as() -> str:
    """`protrans ARGS` of the running command (`command_args`), for an output's command_line."""
    import shlex

    return shlex.join(["protrans", *command_args()])


def _command_name(argv) -> str | None:
    """The command of a command line: its first word that is not an option (protrans' own
    options, -q, -v, --debug, take no value)."""
    args = sys.argv[1:] if argv is None else argv
    return next((str(a) for a in args if not str(a).startswith("-")), None)


def _main(console, argv):
    try:
        rc = cli.main(args=argv, prog_name="protrans", standalone_mode=False)
    except click.exceptions.Abort as exc:
        signum = _signum_of(exc.__cause__ or exc.__context__)
        console.error(STOP_WORDS[signum])
        sys.exit(signal_exit_code(signum))
    except _NO_ARGS_IS_HELP as exc:
        # `protrans` alone (click 8.2+ raises this usage error, whose message is the help page):
        # the page as it is, on stderr, exit 2, not squeezed into one error line
        click.echo(exc.format_message(), err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # One line, as every other failure: click's own form (usage, a "Try" line, a blank line,
        # then "Error: ...") took four, and a log's last line held only the message.
        message = " ".join(exc.format_message().split())  # "Choose from:" lists span lines
        message = _bytes_as_bytes(message)
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and ctx is not None:
            message = f"{message.rstrip('.')} (see '{ctx.command_path} --help')"
        console.error(message)
        sys.exit(exc.exit_code)
    except ProtransError as exc:
        if console.state.debug:
            raise
        console.state.peer_stopped = isinstance(exc, PeerStopped)
        console.error(exc.format())
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, _Stopped) as exc:
        signum = _signum_of(exc)
        console.error(str(exc) if isinstance(exc, _Stopped) else STOP_WORDS[signum])
        sys.exit(signal_exit_code(signum))
    except MemoryError as exc:  # (numpy's "Unable to allocate 23.8 GiB ..." was a traceback)
        if console.state.debug:
            raise
        # (a DataLoader worker's is "Caught MemoryError in DataLoader worker process 0." and its
        # whole traceback: the original message is its last line)
        text = str(exc).strip().splitlines()
        text = text[-1].removeprefix("MemoryError: ") if text and text[0].startswith("Caught ") else " ".join(text)
        console.error(f"out of memory ({text or 'MemoryError'})")
        sys.exit(1)
    except BrokenPipeError:
        _quiet_broken_pipe()
    except OSError as exc:
        if getattr(exc, "errno", None) == 32:  # EPIPE surfacing as a plain OSError
            _quiet_broken_pipe()
        if console.state.debug:
            raise
        if exc.errno == errno.ENAMETOOLONG and getattr(exc, "filename", None):  # (in bytes, as the limit)
            from protrans_cli.errors import name_too_long

            console.error(name_too_long(exc.filename))
            sys.exit(1)
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        console.error(f"{name}{exc.strerror or str(exc) or type(exc).__name__}")  # never an empty line
        sys.exit(1)
    except Exception as exc:
        if gpu_out_of_memory(exc) and not console.state.debug:
            console.error(_gpu_out_of_memory_line(exc, argv))
            sys.exit(1)
        # Ctrl-C, SIGTERM or SIGHUP inside an import that a library turned into another error (an
        # ImportError "during handling of KeyboardInterrupt"): a stop, not a bug to show.
        # (A noted SIGTERM, SIGHUP or Ctrl-C counts too: the failure is its consequence.)
        signal_exc = _signal_in_chain(exc)
        noted = bool(_TERMINATED or _INTERRUPTED)
        compile_failure = _compile_failure(exc) if signal_exc is None and not noted else None
        if compile_failure and not console.state.debug:
            console.error(compile_failure)
            sys.exit(1)
        if (signal_exc is None and not noted) or console.state.debug:
            raise
        signum = _signum_of(signal_exc) if signal_exc is not None else (_TERMINATED or [signal.SIGINT])[0]
        console.error(STOP_WORDS[signum])
        sys.exit(signal_exit_code(signum))
    if _LATE and not rc and not _TERMINATED and not _INTERRUPTED:
        late = next((s for s in _LATE if s != signal.SIGINT), signal.SIGINT)  # (SIGTERM or SIGHUP before Ctrl-C)
        if console.state.complete_quietly:  # (another process says how the run ended: not a line per process)
            console.debug(f"{STOP_WORDS[late]} once {console.state.complete} was complete; another process "
                          "reports how the run ended")
        else:
            console.warn(f"{STOP_WORDS[late]} once the output was complete ({console.state.complete}): "
                         "nothing was lost")
    if _TERMINATED and not rc:  # the SIGTERM's (SIGHUP's) exception was swallowed on its way out
        console.error(STOP_WORDS[_TERMINATED[0]])
        sys.exit(signal_exit_code(_TERMINATED[0]))
    if _INTERRUPTED and not rc:  # the same for Ctrl-C
        console.error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    # click returns the exit code of --help/--version (and of ctx.exit) in this mode.
    sys.exit(rc if isinstance(rc, int) else 0)


def _compile_failure(exc: BaseException) -> str | None:
    """One line for a kernel that torch.compile could not build (`--compile`, `embed --attention
    flex`): the compiler's own exception, whose traceback runs to screens of generated code
    (a C++ or Triton compile error, a missing compiler), says what to run instead; None for
    anything else (a bug: its traceback is shown)."""
    from protrans_cli.errors import compile_failure, described

    inner = compile_failure(exc)
    if inner is None:
        return None
    return (f"torch.compile could not build a kernel ({described(inner)}); run again with --no-compile "
            "(train), without --compile or with --attention sdpa (embed; with --resume, to keep what it "
            "wrote), or with --debug for the compiler's traceback")


def _signal_in_chain(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C/SIGTERM/SIGHUP among the exceptions `exc` was raised from or while handling."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _quiet_broken_pipe():
    # The reader went away (`protrans prep x.fa | head`): exit quietly, and point stdout at
    # /dev/null so the interpreter's final flush does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    sys.exit(141 if os.name != "nt" else 1)

"""The error family every command shares, and the exit code each maps to.

Library code raises these; the CLI turns them into one line on stderr and an exit code:
2 usage, 1 bad input or runtime failure, 130 interrupted.
"""

from __future__ import annotations

import contextlib
import signal

EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# The signals a command stops for, cleaning up first (their default action killed it on the spot):
# Ctrl-C, SIGTERM (a scheduler, torchrun, `timeout`), SIGHUP (a terminal that hung up) ...
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
# ... and a scheduler's warning that the job's time is nearly up (Slurm's `--signal=USR1@120`;
# submitit's job scripts ask for USR2@90): train takes it as a planned stop, as --time-limit's
WARNING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name))
# What a stop by each is called in its error line ("protrans: error: terminated: ...")
STOP_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated",
              **({signal.SIGHUP: "hung up"} if hasattr(signal, "SIGHUP") else {}),
              **{s: f"warned by {signal.Signals(s).name} (the job's time is nearly up)" for s in WARNING_SIGNALS}}


def signal_exit_code(signum: int) -> int:
    """The exit status of a stop by `signum`: 128 + its number, as a shell reports a death by it
    (Ctrl-C: EXIT_INTERRUPTED, 130)."""
    return EXIT_INTERRUPTED if signum == signal.SIGINT else 128 + signum


class ProtransError(Exception):
    """Base class: a failure the user can act on, reported as one line without a traceback."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, *, path: str | None = None, record: str | None = None,
                 line: int | None = None):
        self.message = message
        self.path = path
        self.record = record
        self.line = line
        super().__init__(self.format())

    def __str__(self) -> str:
        # (what it says now: a caller that renames what the message names on its way out
        # (console.naming, esm-extract's hidden working folder) changes `message` and `path`, and
        # str() of the error kept the text built at raise time, naming a removed temporary file)
        return self.format()

    def format(self) -> str:
        where = []
        if self.path is not None:
            # (an empty name, `protrans prep ''`, read "error: : no such file")
            where.append(brief_path(str(self.path) or "''", f":{self.line}" if self.line is not None else ""))
        if self.record is not None:
            where.append(f"record {brief_repr(self.record)}")
        return bounded((", ".join(where) + ": " if where else "") + self.message)


# A message shows a name (an id, a label value, a model's name) of up to SHOWN characters whole, and
# of a longer one its first SHOWN and its length; a path of up to LONGEST_WORD whole, and of a
# longer one its first and last SHOWN (the file's own name). A 200,000-character FASTA id was a
# 200 KB "one-line" error, echoed whole in every message that named it.
SHOWN = 100
# What a message is cut to where it was built without these (an id put in the text itself): a run
# of more than LONGEST_WORD characters without a space is shown as a long path is, and a line of
# more than LONGEST_LINE characters (a 1 MB label cell of words) loses its middle. (LONGEST_WORD
# is more than a shortened path and its line number: cut once, not again.)
LONGEST_WORD = 250
LONGEST_LINE = 5000


def brief(name) -> str:
    """`name` as a message shows it: whole, or its first SHOWN characters, '...' and its length
    ("MKVLA... (200,000 characters)")."""
    name = str(name)
    return name if len(name) <= SHOWN else f"{name[:SHOWN]}... ({len(name):,} characters)"


def brief_repr(name) -> str:
    """`brief`, quoted as repr quotes it (control characters escaped): "'MKV...' (200,000 characters)"."""
    name = str(name)
    return repr(name) if len(name) <= SHOWN else f"{name[:SHOWN] + '...'!r} ({len(name):,} characters)"


def brief_path(path, after: str = "") -> str:
    """A path as a message shows it: whole, or its first and last SHOWN characters around '...'
    and its length; `after` (":12", a line number) follows the path, before the length."""
    path = str(path)
    if len(path) <= LONGEST_WORD:
        return path + after
    return f"{path[:SHOWN]}...{path[-SHOWN:]}{after} ({len(path):,} characters)"


def name_max(directory) -> int:
    """The longest name, in bytes, the file system of `directory` takes (NAME_MAX; 255 where it
    does not say)."""
    import os

    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def name_too_long(path) -> str:
    """A path the file system refused as too long (ENAMETOOLONG), as a message says it: its length
    counted in bytes, as the limit is (a name of 255 bytes, NAME_MAX; a whole path of 4,096,
    PATH_MAX), where a long path's shortened form said "(263 characters)" and a name of
    accented letters, 137 characters and 263 bytes, no length at all."""
    import os

    path = str(path)
    name = os.path.basename(path.rstrip(os.sep)) or path
    limit, what, length = name_max(os.path.dirname(os.path.abspath(path)) or os.sep), "a name", len(os.fsencode(name))
    if length <= limit:  # (each name fits: the whole path is what is too long)
        what, length, limit = "a path", len(os.fsencode(path)), 4096
        with contextlib.suppress(OSError, ValueError):
            limit = os.pathconf(os.sep, "PC_PATH_MAX")
    shown = path if len(path) <= LONGEST_WORD else f"{path[:SHOWN]}...{path[-SHOWN:]}"
    return f"{shown}: File name too long ({what} of {length:,} bytes, more than the {limit:,} the file system takes)"


def bounded(message: str, *, newlines: bool = False) -> str:
    """`message` as a message line shows it: its control characters and hidden characters escaped
    (`escaped`), then any run of more than LONGEST_WORD characters without a space shown as
    `brief_path` shows a path, and any line still longer than LONGEST_LINE characters cut in the
    middle: what the text of a message built from a huge id, path or value is cut to. `newlines`:
    the message's own line breaks stay (each line is bounded). Bounding again changes nothing."""
    # (escaped first, so that what is measured is what is shown: cut first, a line of control
    # characters became four times the longest line once escaped, and \x1c-\x1f, which Python
    # counts as spaces, kept a run of them from being cut at all)
    message = escaped(message, newlines=newlines)
    if len(message) <= LONGEST_WORD:
        return message
    import re

    message = re.sub(rf"\S{{{LONGEST_WORD + 1},}}", _brief_word, message)
    lines = message.split("\n")
    for i, line in enumerate(lines):
        if len(line) > LONGEST_LINE:
            half = LONGEST_LINE // 2 - 30  # (room for the note: a line cut is not cut again)
            lines[i] = f"{line[:half]} ... ({len(line) - 2 * half:,} characters left out) ... {line[-half:]}"
    return "\n".join(lines)


def _brief_word(match) -> str:
    # (quotes and brackets kept around the cut, and its length before the punctuation that
    # follows: "'xx...xx' (1,000,000 characters): train, valid or test", not "'xx...xx': (1,000,002")
    word = match.group()
    lead = len(word) - len(word.lstrip("'\"([{"))
    rest = word.rstrip(":;,.")
    core = rest.rstrip("'\")]}")
    if len(core) - lead <= LONGEST_WORD:  # (a run of punctuation: cut whole)
        return brief_path(word)
    cut = word[:lead] + brief_path(core[lead:], rest[len(core):]) + word[len(rest):]
    # (so much punctuation kept around the cut that it is still too long a run, 200 quotes before
    # the word: cut whole, or the next bounding, of a message quoted in another, cut it again)
    return cut if all(len(run) <= LONGEST_WORD for run in cut.split(" ")) else brief_path(word)


# What a message escapes: control characters (a newline split a one-line error in two; a terminal
# escape sequence recoloured or rewrote the user's terminal), as repr escapes them
CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))} | {
    0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r"}
# and Unicode's line and paragraph separators (a line break for Python's splitlines and some log
# viewers), format characters (a right-to-left override showed the rest of the line reversed;
# zero-width ones hid in an id) and lone surrogates
_HIDDEN = {"Zl", "Zp", "Cf", "Cs"}


def escaped(text: str, *, newlines: bool = False) -> str:
    """`text` with its control characters escaped (`\\n`, `\\x1b`, `\\x1c`) and its hidden characters
    as repr escapes them (`\\u2028`, `\\u202e`): nothing left in it for which str.splitlines splits a
    line, nor that hides or rewrites part of it. `newlines`: its own line breaks (`\\n`) stay. (Not for
    output files: predict's FASTA keeps such an id as it is.)"""
    if text.isprintable():
        return text
    import unicodedata

    escapes = {}
    for c in set(text):  # (each distinct character looked at once: a message may hold megabytes)
        if ord(c) in CONTROLS and not (newlines and c == "\n"):
            escapes[c] = CONTROLS[ord(c)]
        elif 0xdc80 <= ord(c) <= 0xdcff:  # a file name's byte that is not UTF-8 (surrogateescape): the byte
            escapes[c] = f"\\x{ord(c) - 0xdc00:02x}"
        elif not c.isprintable() and unicodedata.category(c) in _HIDDEN:
            escapes[c] = f"\\u{ord(c):04x}" if ord(c) <= 0xffff else f"\\U{ord(c):08x}"
    if len(escapes) > 64:
        return text.translate({ord(c): e for c, e in escapes.items()})
    # (one str.replace a character, in any order, as no escape holds one: str.translate looks each
    # character of the text up in a dict, seconds for a label value of megabytes)
    for c, e in escapes.items():
        text = text.replace(c, e)
    return text


class UsageError(ProtransError):
    """Options that contradict each other or cannot be satisfied (exit 2)."""

    exit_code = EXIT_USAGE


class InputError(ProtransError):
    """Bad input data: unreadable file, malformed record, mismatched labels (exit 1)."""


class ModelError(ProtransError):
    """A model that cannot be found, loaded or used as asked (exit 1)."""


class RuntimeFailure(ProtransError):
    """A job that failed while running (exit 1)."""


class PeerStopped(RuntimeFailure):
    """This process of a torchrun run stopped because another one did: the other's error is the
    cause (torchrun's summary is told so: cli._tell_torchrun)."""


def a_or_an(word: str) -> str:
    """`word` after its indefinite article, as it is read aloud: "an electra", "an albert", "an esm",
    "an xlnet" (ex-el-net), "an FNN" (ef-), "a t5", "a bert" ("a electra pretraining model" was written);
    numpy's and Python's type names too: "an object", "an int", "a uint8" (you-), "an ndarray" (en-)."""
    acronym = word[:2].isupper()  # (FNN, CNN: read letter by letter; FitConfig is a word)
    vowel = word[:1].lower() in "aeiou" or word[:1] in ("AEFHILMNORSX" if acronym else "x")
    if word.lower().startswith(("uint", "uni", "use", "utf")):
        vowel = False
    elif word.startswith("nd"):
        vowel = True
    return f"{'an' if vowel else 'a'} {word}"


# torch.manual_seed takes an unsigned 64-bit seed (a larger one was "Overflow when unpacking long long")
TORCH_SEEDS = "2**64 - 1: torch's seeds are unsigned 64-bit"


def seed_in_range(seed, top: int | None = None, why: str = "", name: str | None = None) -> None:
    """A seed out of range refused in the one wording of every command that takes one (prep,
    train, fit, finetune and project used five): "--seed must be at least 0, got -1", "--seed
    must be at most TOP (WHY), got S". `name` by default: --seed at the command line, and to a
    library call its keyword, seed (`option`)."""
    name = option("--seed", "seed") if name is None else name
    if seed < 0:
        raise UsageError(f"{name} must be at least 0, got {seed}")
    if top is not None and seed > top:
        raise UsageError(f"{name} must be at most {top}{f' ({why})' if why else ''}, got {seed}")


def at_least(value, low, name: str, why: str = "", *, keyword: str | None = None) -> None:
    """A number below `low` refused in the one wording of every command's ranges (as `seed_in_range`
    and `check_threads` word theirs): "--max-length must be at least 1, got 0", and `why`, where it
    helps, after a semicolon. ("--max-length must be at least 1" without the value given, "--digits
    0: from 1 to 17", "--toks_per_batch 0: at least 1" and click's "0 is not in the range x>=1" were
    the same refusal worded four ways.) `keyword`: the setting as a library call gives it
    ("max_length"), named in place of the flag `name` away from the command line (`option`)."""
    if value < low:
        name = option(name, keyword) if keyword is not None else name
        raise UsageError(f"{name} must be at least {low}, got {value}{f'; {why}' if why else ''}")


def one_of(value, choices, name: str, why: str = "", *, keyword: str | None = None) -> None:
    """A setting that is none of `choices` refused in the one wording of every command's choices (as
    `at_least` words its ranges): "--long-policy must be one of error, skip, truncate, chunk, got 'cut'",
    and `why`, where it helps, after a semicolon. `keyword`: the setting as a library call gives it
    ("long_policy"), named in place of the flag `name` away from the command line (`option`). (A library
    caller was told "--long-policy must be one of ...", a flag it has no way to pass, and the same refusal
    was worded five ways: with the value given or without, "format 'x': one of ...", "unknown method
    'x': one of ...", the choices as a tuple's repr.) The choices are names: a value of another type (None, a
    list, an array, which `in` compares element by element) is none of them."""
    if not (isinstance(value, str) and value in choices):
        name = option(name, keyword) if keyword is not None else name
        shown = brief_repr(value) if isinstance(value, str) else f"{value!r:.60}"
        raise UsageError(f"{name} must be one of {', '.join(map(str, choices))}, got {shown}"
                         f"{f'; {why}' if why else ''}")


def option(flag: str, keyword: str) -> str:
    """A setting as the message's reader gives it: at the command line (`protrans ...`, whose
    `cli.main` says so) its flag, `flag` ("--invalid-policy skip", "--shards", "-m DIR"); to a
    library call its keyword or settings field, `keyword` ("invalid_policy='skip'", "num_shards",
    "model=DIR"). A library caller was advised to pass flags it had no way to give."""
    from protrans_cli import console  # (imports this module: not at the top)

    return flag if console.state.command_line else keyword


def given(flag: str, keyword: str, value) -> str:
    """A setting and its value as the message's reader gives them (`option`): "--device gpu" at the
    command line, "device='gpu'" to a library call."""
    return option(f"{flag} {value}", f"{keyword}={value!r}")


# What a run that keeps its work (embed, contacts, fit, finetune, variants, a search) is told to do
# about an output that exists or a run that stopped, as its reader gives it (`option`): a library
# caller was told "--resume finishes it", "give --force to replace it", "run the same command with
# --resume", "choose another -o", none of which a call can pass.
RESUME_WORDS = ("--resume", "resume=True")  # (either: what a caller that rewrites the advice looks for)


def resume_option() -> str:
    """--resume at the command line, resume=True to a library call."""
    return option("--resume", "resume=True")


def force_option() -> str:
    """--force at the command line, force=True to a library call."""
    return option("--force", "force=True")


def again_with_resume() -> str:
    """'run the same command with --resume' at the command line, 'call again with resume=True' to
    a library call (the same function, on the same input and output)."""
    return option("run the same command with --resume", "call again with resume=True")


def same_settings_with_resume() -> str:
    """For an unfinished run made with other settings or inputs: 'run the same command with
    --resume' (the command that made it), to a library call 'call again with the settings and
    inputs it was made with and resume=True'."""
    return option("run the same command with --resume",
                  "call again with the settings and inputs it was made with and resume=True")


def expect_options(value, cls: type, name: str) -> None:
    """A library call's settings object is `cls`: a dict or a task name in its place was a
    TypeError/AttributeError naming neither (`fit("loc", ...)`: 'str' object has no attribute).
    Its fields of plain types (bool, int, float, str, or None where allowed) hold such values
    (`type_problem`): `max_tokens="100"` (read from a YAML file as text) was a TypeError deep
    inside, and `per_residue="no"` counted as true without a word."""
    if not isinstance(value, cls):
        hint = f" ({cls.__name__}(**your_dict))" if isinstance(value, dict) else ""
        raise UsageError(f"{name} must be {a_or_an(cls.__name__)}{hint}, got {type(value).__name__} {value!r:.60}")
    import dataclasses

    if not dataclasses.is_dataclass(value):
        return
    for field in dataclasses.fields(value):
        current = getattr(value, field.name)
        if problem := type_problem(field.type, current):
            raise UsageError(f"{cls.__name__}.{field.name} must be {problem}, got {type(current).__name__} "
                             f"{current!r:.60}")


def expect_path(value, name: str, kind: str = "", hint: str = "") -> None:
    """A library call's file argument is a path (a str or os.PathLike): a list of files, None or
    an open file was a TypeError from deep inside (os.stat, open), or "['x.h5']: no such file".
    `kind` follows "a path" in the message (" (one file or directory)"); `hint` ends it."""
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{name} must be a path{kind}, got {type(value).__name__} {value!r:.60}{hint}")


def whole_number(value) -> bool:
    """Whether `value` is a whole number: a Python or numpy integer, not a bool (which Python
    counts as an Integral), a float or text."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def plain_numbers(settings) -> None:
    """A settings dataclass's numpy scalars (a value taken from an array or a data frame, which
    `type_problem` accepts) made the Python numbers they stand for, in place: np.int64 in a
    config was "Object of type int64 is not JSON serializable" where the config was saved (after
    a whole fit, in train_config.json, in prep's --stats), np.float32 failed range checks."""
    import dataclasses

    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
            setattr(settings, field.name, value.item())


_PLAIN = {"bool": bool, "int": int, "float": float, "str": str, "None": type(None)}
_ARTICLE = {bool: "a bool", int: "an int", float: "a float", str: "a str", type(None): "None"}


def type_problem(annotation, value) -> str | None:
    """What a setting annotated `annotation` must be ("an int", "an int or None"), where it is
    made of plain types (bool, int, float, str, None) and `value` is none of them; None where
    it is (or the annotation is another kind: lists, literals, classes are checked where used).
    A whole number serves a float; a bool serves nothing else; a path serves a str (a model
    directory); numpy's scalars count as Python's."""
    import numbers
    import os
    import types
    import typing

    if isinstance(annotation, str):  # (under `from __future__ import annotations`)
        names = [name.strip() for name in annotation.split("|")]
        if not all(name in _PLAIN for name in names):
            return None
        wanted = tuple(_PLAIN[name] for name in names)
    else:
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        wanted = typing.get_args(annotation) if union else (annotation,)
        if not all(t in _ARTICLE for t in wanted):
            return None
    if value is None:
        ok = type(None) in wanted
    elif isinstance(value, (str, os.PathLike)):
        ok = str in wanted
    elif isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):
        ok = bool in wanted
    elif isinstance(value, numbers.Integral):
        ok = int in wanted or float in wanted
    elif isinstance(value, numbers.Real):
        ok = float in wanted
    else:
        ok = False
    return None if ok else " or ".join(_ARTICLE[t] for t in wanted)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to many lines), or its
    type's name when it has none: what a one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def said_about(exc: BaseException, path) -> str:
    """first_line(exc) as a message about `path` quotes it: without the path in front where `exc` is
    an error of ours about that same path ("STEP: cannot write the checkpoint (STEP: cannot replace
    this folder: ...)" named it twice)."""
    import os

    if (isinstance(exc, ProtransError) and exc.path is not None and exc.line is None
            and os.path.abspath(str(exc.path)) == os.path.abspath(str(path))):
        return first_line(ProtransError(exc.message, record=exc.record))
    return first_line(exc)


def described(exc: BaseException) -> str:
    """`Type: first line` of an exception (the first line alone when it already starts with the
    type's name, as compiler errors wrapped by torch.compile do)."""
    first, name = first_line(exc), type(exc).__name__
    return first if first.startswith(name) else f"{name}: {first}"


def gpu_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a GPU running out of memory: torch's OutOfMemoryError (CUDA's), or on
    Apple's GPU the plain RuntimeError whose message starts with one of MPS_OUT_OF_MEMORY (torch's
    MPS allocator raises no OutOfMemoryError); never another RuntimeError (embed_retry's
    is_out_of_memory, which only decides whether to retry smaller, takes any that says out of
    memory). torch is only looked at if it was imported."""
    import sys

    oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", None)
    if isinstance(oom, type) and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and str(exc).startswith(MPS_OUT_OF_MEMORY)


# How torch's MPS allocator says it has no room, in a plain RuntimeError: past its memory limit, or
# one tensor larger than the GPU's largest buffer ("Invalid buffer size: 19.45 GB": a long protein's
# attention scores on a 16 GB Mac; pytorch/pytorch#141909)
MPS_OUT_OF_MEMORY = ("MPS backend out of memory", "Invalid buffer size")


def compile_failure(exc: BaseException) -> BaseException | None:
    """The compiler's own exception when `exc` is (or was raised from) a kernel torch.compile
    could not build (`--compile`, FlexAttention on CUDA: a C++ or Triton compile error, a missing
    compiler, an inductor bug), whose traceback runs to screens of generated code; None for
    anything else. torch is only looked at if it was imported."""
    import sys

    dynamo = sys.modules.get("torch._dynamo.exc")
    if dynamo is None:
        return None
    kinds = tuple(k for k in (getattr(dynamo, "BackendCompilerFailed", None),
                              getattr(dynamo, "InternalTorchDynamoError", None)) if isinstance(k, type))
    seen = set()
    while exc is not None and id(exc) not in seen and kinds:
        if isinstance(exc, kinds):
            return getattr(exc, "inner_exception", None) or exc.__cause__ or exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def located(path):
    """An error raised inside that does not say which file it is about names `path` (the task
    knows the record, not the file it came from)."""
    try:
        yield
    except ProtransError as exc:
        if exc.path is not None:
            raise
        raise type(exc)(exc.message, path=str(path), record=exc.record, line=exc.line) from None


def torch_load_problem(exc: BaseException) -> str | None:
    """What torch.load(weights_only=True) could not read, said without torch's advice to load it
    with weights_only=False (which would run whatever code it holds); None for other errors."""
    import pickle

    # torch's refusal of a pickle is an UnpicklingError "Weights only load failed ..."
    if isinstance(exc, pickle.UnpicklingError) or str(exc).startswith("Weights only load failed"):
        return ("it holds objects other than tensors and plain values, which protrans never unpickles: not a file "
                "protrans wrote, or one altered since")
    if "weights_only" in str(exc):  # (a file of zeros: a damaged file, which the same advice ends)
        return "torch cannot read it as a weights-only file: damaged, or not a file protrans wrote"
    return None

"""The error family every command shares, and the exit code each maps to.

Library code raises these; the CLI turns them into one line on stderr and an exit code:
2 usage, 1 bad input or runtime failure, 130 interrupted.
"""

from __future__ import annotations

import contextlib

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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

    def format(self) -> str:
        where = []
        if self.path is not None:
            # (an empty name, `protrans prep ''`, read "error: : no such file")
            where.append((str(self.path) or "''") + (f":{self.line}" if self.line is not None else ""))
        if self.record is not None:
            where.append(f"record {self.record!r}")
        return (", ".join(where) + ": " if where else "") + self.message


class UsageError(ProtransError):
    """Options that contradict each other or cannot be satisfied (exit 2)."""

    exit_code = EXIT_USAGE


class InputError(ProtransError):
    """Bad input data: unreadable file, malformed record, mismatched labels (exit 1)."""


class ModelError(ProtransError):
    """A model that cannot be found, loaded or used as asked (exit 1)."""


class RuntimeFailure(ProtransError):
    """A job that failed while running (exit 1)."""


def expect_options(value, cls: type, name: str) -> None:
    """A library call's settings object is `cls`: a dict or a task name in its place was a
    TypeError/AttributeError naming neither (`fit("loc", ...)`: 'str' object has no attribute).
    Its fields of plain types (bool, int, float, str, or None where allowed) hold such values
    (`type_problem`): `max_tokens="100"` (read from a YAML file as text) was a TypeError deep
    inside, and `per_residue="no"` counted as true without a word."""
    if not isinstance(value, cls):
        hint = f" ({cls.__name__}(**your_dict))" if isinstance(value, dict) else ""
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise UsageError(f"{name} must be {article} {cls.__name__}{hint}, got {type(value).__name__} {value!r:.60}")
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


def described(exc: BaseException) -> str:
    """`Type: first line` of an exception (the first line alone when it already starts with the
    type's name, as compiler errors wrapped by torch.compile do)."""
    first, name = first_line(exc), type(exc).__name__
    return first if first.startswith(name) else f"{name}: {first}"


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

"""Opening inputs and outputs the way seqkit and cutadapt do.

- `-` is stdin/stdout.
- Compression of an input is detected from its magic bytes (gzip, bz2, xz, zstd), not its name.
- Outputs are written to a temporary file beside the target and renamed only on success, so an
  interrupted or failed run never leaves a truncated file under the final name. The output's
  compression follows its extension (.gz, .bz2, .xz, .zst).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from protrans_cli.errors import (STOP_SIGNALS, STOP_WORDS, WARNING_SIGNALS, InputError, RuntimeFailure, UsageError,
                                 force_option, given, name_max, name_too_long, option, signal_exit_code)
from protrans_cli.io import disk

_MAGIC = [
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    # A zstd skippable frame (magic 0x184D2A50 to 0x184D2A5F) before the first frame: pzstd,
    # zstd's parallel compressor, starts every file with one (read as plain text, "not FASTA").
    *((bytes([0x50 + k]) + b"\x2a\x4d\x18", "zstd") for k in range(16)),
]


def same_file(a, b) -> bool:
    """True when `a` and `b` name one file: the same inode when both exist (links included),
    else the same resolved path, or two names for one entry of one folder: names that differ
    only in case or Unicode normalisation (`-o C.fa --valid-output c.fa`), where the folder
    holding them treats them as one (macOS, Windows; a probe asks the folder, since a Linux
    folder keeps them apart and refusing there would be untrue)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    (folder_a, name_a), (folder_b, name_b) = os.path.split(os.path.realpath(a)), os.path.split(os.path.realpath(b))
    if folder_a == folder_b and name_a == name_b:
        return True
    # (one of the two existing would make the other exist too in a folder that ignores case,
    # so neither does here)
    try:
        if not (os.path.isdir(folder_a) and os.path.samefile(folder_a, folder_b)):
            return False
    except OSError:
        return False
    return name_a == name_b or (caseless(name_a) == caseless(name_b) and _one_name(folder_a, name_a, name_b))


def names_stdout(path) -> bool:
    """Whether `path` names the file standard output is open on: /dev/stdout, /proc/self/fd/1, or
    the very file a shell's `> x` opened (not a terminal). A second output there is a second `-`:
    beside a `-` it overwrote the other's bytes in a file, or interleaved with them in a pipe."""
    import stat

    if str(path) == "-":
        return True
    try:
        out = os.fstat(1)
        # (a terminal takes both without loss: `--stats /dev/stderr` where stdout and stderr are
        # one terminal was refused)
        return not stat.S_ISCHR(out.st_mode) and os.path.samestat(os.stat(path), out)
    except (OSError, ValueError):  # no such file; stdout closed
        return False


def names_stdin(path) -> bool:
    """Whether `path` names the regular file standard input was redirected from (`- < x.fa`): an
    output there replaces the input, as `-o x.fa` for the input `x.fa` would (a pipe, a terminal
    or /dev/null cannot be replaced so)."""
    import stat

    try:
        src = os.fstat(0)
        return stat.S_ISREG(src.st_mode) and os.path.samestat(os.stat(path), src)
    except (OSError, ValueError):  # no such file; stdin closed
        return False


def caseless(name: str) -> str:
    """Unicode's canonical caseless form: what any folder that ignores case or normalisation can
    at most identify (it may identify less: HFS+ keeps `ß` and `SS` apart)."""
    import unicodedata

    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def _one_name(folder: str, name_a: str, name_b: str) -> bool:
    """Whether `folder` takes `name_a` and `name_b` for one entry: a probe file named by the first
    is looked up by the second, then removed. A folder that cannot be written answers no (the
    outputs cannot be written there either, which their writers report)."""
    import secrets

    stem = f".protrans-case-{os.getpid()}-{secrets.token_hex(4)}-"
    probe = os.path.join(folder, stem + name_a)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
    except OSError:  # read-only, or a name too long once prefixed
        return False
    try:
        return os.path.lexists(os.path.join(folder, stem + name_b))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def input_named_by(output, inputs, directories=()) -> str | None:
    """The input that `output` (not stdout) names, if any: writing that output would replace the
    input (`prep x.fa -o x.fa` lost the FASTA; stdin, `-`, where it was redirected from that file). An input directory (a model, a head),
    given in `directories`, is named by any path inside it (`embed -m run -o run/model.safetensors`
    replaced the weights it had just loaded). Every command checks its outputs so.

    A file input is named only by itself: a directory given where a file belongs (`prep data/ -o
    data/corpus.txt`) is the reader's error to report ("is a directory"), not "is also an input"."""
    if not output or str(output) == "-":
        return None
    # (`prep - -o x.fa < x.fa` replaced the FASTA it had just read with the corpus)
    if any(src is not None and str(src) == "-" for src in inputs) and names_stdin(output):
        return "the file on standard input"
    return next((str(src) for src in (*inputs, *directories) if src and str(src) != "-"
                 and (same_file(src, output) or (src in directories and is_inside(output, src)))), None)


def input_inside(directory, inputs) -> str | None:
    """The first of `inputs` (paths; None and stdin skipped) that lies in `directory`: an output
    folder replaced whole would delete it."""
    return next((str(p) for p in inputs if p is not None and str(p) != "-" and is_inside(p, directory)), None)


def is_inside(path, directory) -> bool:
    """Whether `path` is the existing directory `directory` or lies anywhere below it."""
    return parts_below(path, directory) is not None


def parts_below(path, directory) -> tuple[str, ...] | None:
    """The components of `path` below the existing directory `directory` (() for the directory
    itself, links resolved), or None where it does not lie there."""
    if not os.path.isdir(directory):
        return None
    base, target = os.path.realpath(directory), os.path.realpath(path)
    if target == base:
        return ()
    if target.startswith(base.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(target, base)).parts
    # Spelled otherwise but one folder (a file system that ignores case: `-o Runs/t5/x` beside
    # `-m runs/t5`; macOS's realpath keeps the case given): the path's existing folders, each
    # compared with the directory itself.
    for folder in (Path(target), *Path(target).parents):
        if os.path.isdir(folder) and os.path.samefile(folder, base):
            return Path(target).relative_to(folder).parts
    return None


def own_folder_output(out_dir, what: str, example: str) -> Path:
    """An -o that names a folder of a command's own (a head, a fine-tuning output), replaced whole
    by --force: not a pipe or device, not a file, not the working directory or a folder above it;
    a link to a folder is written through (the output, its .partial and the swap beside the
    folder it names). `what`: "a head directory"; `example`: "heads/ss3". (A library call names
    the folder `out_dir`, as fit, finetune and import_head do.)"""
    refuse_special_output(out_dir, "-o", what, keyword="out_dir")
    out_dir = Path(out_dir)
    if (nothing := link_to_nothing(out_dir)) is not None:
        # (the work done first, the folder then failed to take its place: ".HEAD.<host>.<pid>-XXXX.tmp:
        # Not a directory", naming a hidden temporary)
        raise UsageError(f"{nothing} (make that folder, or choose another {option('-o', 'out_dir')})",
                         path=str(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        # (--force trained every epoch and then failed on it: "Is a directory")
        raise UsageError(f"is a file, not {what} (choose another {option('-o', 'out_dir')})", path=str(out_dir))
    if holds_working_directory(out_dir):
        raise UsageError(f"{given('-o', 'out_dir', str(out_dir))}: {what} is a folder of its own, which "
                         f"{force_option()} replaces whole; name one, e.g. {given('-o', 'out_dir', example)}")
    return written_through(out_dir)


def empty_folder(path) -> bool:
    """Whether `path` is a folder (or a link to one) with nothing in it: one made before the job
    (a rule's `mkdir -p {output}`, a workflow engine's or a container's output folder). A command
    that writes a folder of its own takes it as a new one: it was "exists (--force replaces it)".
    An empty mount point is refused here, as check_replaceable refuses a full one."""
    try:
        with os.scandir(path) as entries:
            empty = next(entries, None) is None
    except OSError:  # (none, a file, or unreadable: the command's own checks say what is wrong)
        return False
    if empty:
        _refuse_mount_point(path)
    return empty


def _refuse_mount_point(directory) -> None:
    """An output folder is made beside its place and moved into it at the end, which a mount point
    (a container's bind mount of an output folder) cannot take: the command failed there, "cannot
    replace this folder ... Device or resource busy", after all its work. Refused before it."""
    if is_mount_point(os.path.realpath(directory)):
        raise UsageError(f"is a mount point: the output folder is written beside it and moved into its place at the "
                         f"end, which a mount point cannot take; give {option('-o', 'out_dir')} a folder inside it",
                         path=str(directory))


# Linux's table of this process's mounts: one line a mount, its mount point the fifth field, with
# space, tab, newline and backslash written as octal escapes (\040 ...)
MOUNTINFO = "/proc/self/mountinfo"


def is_mount_point(path: str) -> bool:
    """Whether `path` (resolved) is a mount point: os.path.ismount's test (another device than its
    parent's), and on Linux the mount table too, for a bind mount of a folder of the same file system
    (`mount --bind`, a container's volume from the disk its root is on), which ismount cannot tell."""
    if os.path.ismount(path):
        return True
    try:
        with open(MOUNTINFO, "rb") as table:
            points = {fields[4] for fields in map(bytes.split, table) if len(fields) > 4}
    except OSError:  # (not Linux, or no /proc)
        return False
    octal = re.compile(rb"\\([0-7]{3})")
    return os.fsencode(path) in {octal.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), point) for point in points}


def link_to_nothing(path) -> str | None:
    """"is a link to TARGET, which does not exist" where `path` is a symbolic link to nothing
    (no folder can be made under its name), else None."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"is a link to {os.readlink(path)}, which does not exist"
    return None


def written_through(out_dir) -> Path:
    """Where an output folder is written: a link to a folder, the folder it names (its .partial and
    the swap beside that folder); else the path as given."""
    out_dir = Path(out_dir)
    return Path(os.path.realpath(out_dir)) if out_dir.is_symlink() and out_dir.is_dir() else out_dir


def holds_working_directory(directory) -> bool:
    """Whether `directory` is the current directory or one above it (`-o .`, `-o ..`)."""
    try:
        target, cwd = Path(directory).resolve(), Path.cwd().resolve()
    except OSError:
        return False
    return target == cwd or target in cwd.parents


def check_replaceable(directory, what: str, ours, *, in_place: bool = False) -> None:
    """Before --force deletes `directory` as a whole: never the current directory or one above
    it, and only a folder holding nothing but `what`'s own output (`ours(entry)` for each of its
    entries). `quickstart -o project --force` deleted a project's own files with it, and `-o .`
    emptied the working directory. A mount point is refused unless the command empties the folder
    and writes in place (`in_place`: quickstart), rather than writing beside it."""
    if holds_working_directory(directory):
        raise UsageError(f"{directory}: {force_option()} would delete the current directory with everything in it; "
                         f"give {what} a folder of its own")
    if not in_place:
        _refuse_mount_point(directory)
    try:
        foreign = sorted(e.name for e in Path(directory).iterdir() if not ours(e))
    except OSError:
        return  # not a readable directory: the command's own checks say what is wrong
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(f"{directory} holds files that are not {what}'s ({shown}): {force_option()} replaces only "
                         f"{what}'s own output; choose another folder, or move them")


def kind_in_words(mode: int) -> str:
    """What a file of `mode` (an os.lstat's st_mode) is, for a message: "a named pipe", ..."""
    import stat

    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
             (stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a regular file"))
    return next((words for test, words in kinds if test(mode)), "a device")


def odd_kind(path, folder: bool = False, follow_symlinks: bool = True) -> str | None:
    """What is under `path`, in words (kind_in_words: "a named pipe", "a directory", ...), where it
    is not what a run keeps under that name: a regular file, or a folder where `folder`, looked at
    through a link; without `follow_symlinks` a link itself is no odd one (its caller replaces it,
    never follows it). None where it is, or where nothing is (a link to nothing is made as any new
    file is; what cannot be looked at, the open that follows says so). Named pipes there hung runs
    for ever as they read them; folders failed as "Is a directory" late, naming a temporary."""
    import stat

    try:
        mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode) or (not follow_symlinks and stat.S_ISLNK(mode)):
        return None
    return kind_in_words(mode)


def _flock_under_name(path: Path, open_fd, busy: str, shown: str, follow_symlinks: bool) -> tuple[int, OSError | None]:
    """An fd from `open_fd()` holding an exclusive flock on the file or folder now under `path`,
    and None; or, where the file system has no flock, the fd unlocked and flock's OSError (the
    caller cleans up, then asks `without_locks`). Another process holding it: RuntimeFailure(busy).
    Its holder removes `path` as it ends, so the lock just taken may be on a removed one while a
    third process locks a new one under the name: only the one under the name counts, and the
    loop tries again."""
    import fcntl

    while True:
        fd = open_fd()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # (the path is the holder's: left as it is)
            raise RuntimeFailure(busy, path=shown) from None
        except OSError as exc:
            return fd, exc
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=follow_symlinks)):
                return fd, None
        except OSError:
            pass
        os.close(fd)


_LOCKING_CHOICES = {"best_effort": "best_effort", "true": "true", "1": "true", "yes": "true", "on": "true",
                    "false": "false", "0": "false", "no": "false", "off": "false"}


def file_locking() -> str:
    """PROTRANS_FILE_LOCKING, HDF5_USE_FILE_LOCKING's three settings, as "best_effort" (unset or
    BEST_EFFORT: a file system that grants no locks is used without them, one warning per
    folder), "true" (TRUE, 1, yes, on: such a file system is refused) or "false" (FALSE, 0, no,
    off: used without them, no warning). Read where a lock is first asked for, before anything
    is made: any other value is a UsageError (exit 2)."""
    value = os.environ.get("PROTRANS_FILE_LOCKING", "")
    if not value.strip():
        return "best_effort"
    setting = _LOCKING_CHOICES.get(value.strip().lower())
    if setting is None:
        raise UsageError(f"PROTRANS_FILE_LOCKING must be BEST_EFFORT (the default: go on where the file system "
                         "grants no file locks, with a warning), TRUE (refuse such a file system) or FALSE (go on "
                         f"without a warning), got {value!r}")
    return setting


def _fsync_asked() -> bool:
    """PROTRANS_FSYNC set to anything but empty, 0, false, no or off ("PROTRANS_FSYNC=0" synced: any
    value did)."""
    return os.environ.get("PROTRANS_FSYNC", "").strip().lower() not in ("", "0", "false", "no", "off")


_WARNED_NO_LOCKS: set[str] = set()


def warn_no_locks(path) -> None:
    """The one warning for a folder whose file system grants no file locks, once a run goes on
    there without them (HDF5's lock on a file, protrans's on an output); none where
    PROTRANS_FILE_LOCKING=FALSE."""
    from protrans_cli import console

    if file_locking() == "false":
        return
    folder = str(Path(path).resolve().parent)
    if folder not in _WARNED_NO_LOCKS:
        _WARNED_NO_LOCKS.add(folder)
        console.warn(f"{folder}: the file system grants no file locks; files there are used without them, so a "
                     "second run on the same output is not refused (start one run per output; "
                     "PROTRANS_FILE_LOCKING=TRUE makes such a file system an error)")


def without_locks(path, shown: str, failure: OSError) -> None:
    """Where flock failed on `path` (Lustre mounted without -o flock: ENOSYS; NFS without a lock
    daemon: ENOLCK; some FUSE mounts: EOPNOTSUPP, EINVAL): the run goes on without the lock (the
    run lock, the output's, a head's), as HDF5 does with its own. PROTRANS_FILE_LOCKING decides
    what is said: unset or BEST_EFFORT, one warning per folder; FALSE, nothing; TRUE, a
    RuntimeFailure naming `shown`. (Refused by default, a Lustre user's train or embed stopped
    where HDF5 1.10's mandatory locks had stopped every h5py program.)"""
    setting = file_locking()
    if setting == "true":
        raise RuntimeFailure(f"cannot lock it: the file system grants no file locks ({failure.strerror or failure}; "
                             "Lustre mounted without -o flock, NFS without a lock daemon?) and PROTRANS_FILE_LOCKING="
                             "TRUE requires them: write it on a file system with locks, or unset "
                             "PROTRANS_FILE_LOCKING", path=shown)
    if setting == "best_effort":
        warn_no_locks(path)


@contextlib.contextmanager
def folder_lock(folder, busy: str):
    """An exclusive lock (flock) on `folder`, made if missing and removed again if it is left
    empty, held for the block; another process asking for it meets RuntimeFailure(busy). A file
    system without flock (NFS mounted nolock) goes unlocked, or is refused under
    PROTRANS_FILE_LOCKING=TRUE (`without_locks`). The block must not remove the folder (another
    process would lock a new one)."""
    file_locking()  # (a bad PROTRANS_FILE_LOCKING: said before the folder is made)
    if os.name != "posix":  # pragma: no cover - no flock: no lock
        yield
        return
    folder = Path(folder)

    def open_folder():
        try:
            folder.mkdir(exist_ok=True)
        except FileExistsError:  # (a link to a folder is one)
            # Something that is no folder under the name (a named pipe, a file, a link to nothing): it
            # said "<its parent folder>: cannot write here (File exists)", naming the wrong path.
            try:
                what = kind_in_words(os.lstat(folder).st_mode)
            except OSError:  # (gone since)
                what = "no folder"
            raise InputError(f"is {what}, not a folder: an unfinished run keeps its state in a folder of this name "
                             f"(move it away, or choose another {option('-o', 'out_dir')})", path=str(folder)) from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                # (a name the file system takes, up to 255 bytes, to which .partial is added: it said
                # ".: cannot write here (File name too long)", blaming the folder; said in
                # errors.name_too_long's words, as every other command says such a name)
                raise InputError(f"{name_too_long(folder)}; an unfinished run keeps its state in a folder of this "
                                 f"name, the output's with '{folder.suffix}' added (choose a shorter "
                                 f"{option('-o', 'out_dir')})") from None
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                # (fit's and finetune's words for a read-only folder were "cannot write here
                # (Permission denied)"; every other command's these)
                raise no_file_here(folder.parent) from None
            raise RuntimeFailure(f"cannot write here ({exc.strerror or exc})", path=str(folder.parent)) from None
        return os.open(folder, os.O_RDONLY)

    # (no flock here, as on NFS mounted nolock: unlocked and the folder kept open until the end, or refused)
    fd, failure = _flock_under_name(folder, open_folder, busy, str(folder), follow_symlinks=True)
    try:
        if failure is not None:
            without_locks(folder, str(folder), failure)
        yield
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty; still locked, so no other process took it meanwhile
        os.close(fd)


def hdf5_output_in_use() -> str:
    """What embed, contacts, merge and import-esm meet where another of them holds an HDF5 output's
    lock (the one `.OUT.lock` of the four: merge's message named "embed or merge", import-esm's left
    out contacts); a library call is told its `output`, not -o (`errors.option`)."""
    return ("is the output of another protrans run (embed, contacts, merge, import-esm) that is running now: wait "
            f"for it to end, or choose another {option('-o', 'output')}")


@contextlib.contextmanager
def output_lock(target, busy: str):
    """An exclusive lock (flock) on the hidden file `.NAME.lock` beside the output `target`, held
    for the block and removed after it; another process asking for it meets RuntimeFailure(busy).
    Two `embed -o out.h5` runs started together both passed the "exists" check before their models
    loaded, and the later one replaced the other's finished file (or removed its partial file).
    Where no lock file can be made (a read-only folder) the block runs unlocked: the command's own
    checks then say what is wrong. On a file system without flock the lock file is removed and the
    block runs unlocked, or is refused under PROTRANS_FILE_LOCKING=TRUE (`without_locks`). Anything
    but a regular file under the lock's name (a named pipe, a folder, a link) is refused, and left
    as it is."""
    file_locking()  # (a bad PROTRANS_FILE_LOCKING: said before the lock file is made)
    if os.name != "posix":  # pragma: no cover - no flock: no lock
        yield
        return
    import stat

    target = Path(target)
    lock = target.with_name(f".{target.name}.lock")

    def refuse(mode: int):
        # A named pipe of this name hung the run for ever (its open waits for a writer); a folder
        # or a link there (O_NOFOLLOW: never followed) let the run go on unlocked without a word.
        # (every caller's library function takes the file as `output`: `errors.option`)
        return InputError(f"is {kind_in_words(mode)}, not a lock file: protrans locks "
                          f"{given('-o', 'output', target.name)} with a file of this name (move it away, or choose "
                          f"another {option('-o', 'output')})", path=str(lock))

    def open_lock():  # (read-only is enough for flock; O_NOFOLLOW: never a link planted in a shared folder)
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o644)
        if not stat.S_ISREG(mode := os.fstat(fd).st_mode):  # (one made since the lstat below)
            os.close(fd)
            raise refuse(mode)
        return fd

    with contextlib.suppress(OSError):
        if not stat.S_ISREG(mode := os.lstat(lock).st_mode):
            raise refuse(mode)
    try:
        fd, failure = _flock_under_name(lock, open_lock, busy, str(target), follow_symlinks=False)
    except OSError:  # no lock file here (a read-only folder): unlocked
        yield
        return
    if failure is not None:  # no flock here (NFS mounted nolock): unlocked, or refused
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(lock)
        without_locks(lock, str(target), failure)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # (still held: whoever opened it meanwhile finds it gone and tries again)
        os.close(fd)


def stdin_binary() -> BinaryIO:
    """stdin's bytes. A closed stdin (`<&-`: sys.stdin is None) is one line, not an AttributeError."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:
        raise InputError("standard input is closed" if sys.stdin is None else "standard input gives no bytes to read",
                         path="<stdin>")
    return buffer


def stdin_digest(held: contextlib.ExitStack, inputs) -> str | None:
    """Where one of `inputs` is stdin ('-'): "sha256:<hex>" of its bytes, read whole now and given
    again to whatever reads '-' while `held` is open (sys.stdin replays them). A command that
    compares its inputs before reading them (fit's and finetune's --resume, which compare a file
    by its size and modification time) so compares labels piped in, which it compared not at all.
    None where no input is stdin."""
    import hashlib

    data = stdin_if_named(inputs)
    if data is None:
        return None
    replay_stdin(held, data)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def stdin_if_named(inputs) -> bytes | None:
    """stdin's bytes, read whole, where one of `inputs` is '-' (None otherwise): for a command that
    reads them more than once (replay_stdin gives them again)."""
    if not any(p is not None and str(p) == "-" for p in inputs):
        return None
    return stdin_binary().read()


def replay_stdin(held: contextlib.ExitStack, data: bytes) -> None:
    """sys.stdin gives `data` (bytes read from it before) while `held` is open, then is put back."""
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding=getattr(saved, "encoding", None) or "utf-8")
    held.callback(setattr, sys, "stdin", saved)


def display_name(path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


def sniff_compression(head: bytes) -> str | None:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


TORCH_KIND = "the file is a PyTorch checkpoint (model weights or tensors, such as torch.save writes)"
# torch.save's legacy format (_use_new_zipfile_serialization=False) is pickles, the first its
# MAGIC_NUMBER 0x1950A86A20F9469CFC6C: LONG1, 10 bytes, little-endian (torch/serialization.py)
_TORCH_PICKLE_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def torch_file(head: bytes) -> bool:
    """Whether a file's first bytes, `head`, are a PyTorch checkpoint's (a .pt or .pth): the zip
    torch.save writes, whose first member is ARCHIVE/data.pkl (the archive named after the file),
    or any zip of torch's writer (torch.jit.save's too), which pads every member's local header to
    a 64-byte boundary with an extra field 'FB', its length, then 'Z's; or the legacy pickles.
    `head` must be the file's bytes, not its first line: the zip header's sizes may hold a 0x0a
    (`m/data.pkl` is 10 bytes long), and the legacy pickle's fourth byte is one."""
    if head.startswith(b"PK\x03\x04") and len(head) >= 30:
        size, extra = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
        name, padding = head[30:30 + size], head[30 + size:30 + size + extra]
        if name.endswith(b"/data.pkl"):  # (torch writes every member in a folder: a bare data.pkl is a zipped pickle)
            return True
        return (len(padding) == extra >= 4 and padding.startswith(b"FB")
                and int.from_bytes(padding[2:4], "little") == extra - 4 and not padding[4:].strip(b"Z"))
    # (protocol 2 and 3: the magic follows the PROTO opcode; 4 and 5 put an 8-byte FRAME between)
    return head[:1] == b"\x80" and _TORCH_PICKLE_MAGIC in (head[2:14], head[11:23])


def archive_hint(head: bytes) -> str | None:
    """What to do with a zip or tar archive (FLIP's splits and DeepLoc ship as zip; a .tar.gz
    reads as a tar once gunzipped), which readers of one file refuse, or with a file compressed
    twice (`head` is what open_input gives, one layer already taken off); what a PyTorch checkpoint
    is (TORCH_KIND: a zip too, but none to extract): None for anything else."""
    if kind := sniff_compression(head):
        # A .gz that a web server compressed again on the fly (Content-Encoding: gzip) and wget or
        # curl without --compressed saved as sent: it was "not FASTA", though zcat showed binary
        return (f"the file is compressed twice (decompressed once, it is {kind} data again: a download a "
                "server compressed a second time): decompress it once and give that (zcat FILE > ONCE.gz)")
    if torch_file(head):  # (a zip archive too, or a pickle: nothing in it to extract or read as text)
        return TORCH_KIND
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return ("the file is a zip archive (extract the file to read: unzip -p ARCHIVE.zip MEMBER > FILE; gzip, "
                "bz2, xz and zstd files are read as they are)")
    if head[257:262] == b"ustar":
        return ("the file is a tar archive (extract the file to read: tar -xf ARCHIVE MEMBER; gzip, bz2, xz and "
                "zstd files are read as they are)")
    return None


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16 byte-order marks (little-, big-endian)

HDF5_KIND, BINARY_KIND = "an HDF5 file (such as embed writes)", "a binary file"  # (binary_kind's)


def binary_kind(head: bytes, *, sentence: bool = False) -> str | None:
    """What a file is where its first bytes, `head`, show it holds no text (embeddings or an
    archive given for a table, an id list, a corpus or a FASTA): HDF5_KIND, archive_hint's
    sentence, or BINARY_KIND for a NUL in the first 4,096 bytes; None for text, UTF-16 with its
    byte-order mark included (its ASCII holds NULs). Each reader words its refusal around it
    ("is KIND, not a label file"); `sentence`: all three as archive_hint's ("the file is ...")."""
    if head.startswith(b"\x89HDF"):
        return "the file is HDF5, such as embed writes" if sentence else HDF5_KIND
    if hint := archive_hint(head):
        return hint
    if b"\0" in head[:4096] and not head.startswith(UTF16_BOMS):
        return "the file is binary" if sentence else BINARY_KIND
    return None


def kind_refusal(kind: str, what: str, formats: str = "") -> str:
    """A reader's refusal of a file that binary_kind (or a look-alike hint) found to be `kind`,
    worded alike by every reader: "is an HDF5 file (such as embed writes), not WHAT (FORMATS)",
    "is a binary file (it holds NUL bytes), not WHAT", or, for an archive's sentence, "is not WHAT:
    the file is a zip archive (...)". (The labels, variants and --ids readers each worded it.)"""
    if kind in (HDF5_KIND, BINARY_KIND):
        why = " (it holds NUL bytes)" if kind == BINARY_KIND else ""
        return f"is {kind}{why}, not {what}" + (f" ({formats})" if formats else "")
    return f"is not {what}: {kind}"


def not_utf8(exc: UnicodeDecodeError) -> tuple[str, int]:
    """What to say of text that `exc` met as not UTF-8, and the line it is on: "is not UTF-8 text
    (byte 0xb5, column 4; save it as UTF-8)" (the variants table showed the byte as Python's
    b'\\xb5', a config file the codec's own "'utf-8' codec can't decode byte 0xb5 in position 40")."""
    data, start = exc.object, exc.start
    line_start = data.rfind(b"\n", 0, start) + 1
    return (f"is not UTF-8 text (byte 0x{data[start]:02x}, column {start - line_start + 1}; save it as UTF-8)",
            data.count(b"\n", 0, start) + 1)


def utf16_text(data: bytes, name: str) -> str | None:
    """The text of a UTF-16 file, with or without its byte-order mark; None for any other file."""
    # UTF-16 with its byte-order mark: Excel's "Unicode Text" export, PowerShell's `>`.
    # Read as latin-1, every other character was a NUL ("expected 'id,label'" on line 3).
    wide = "utf-16" if data.startswith(UTF16_BOMS) else utf16_codec(data)
    if wide is None:
        return None
    try:
        return data.decode(wide)
    except UnicodeDecodeError as exc:
        # (with its byte-order mark too: a file cut short at an odd byte, or a lone surrogate, was
        # a UnicodeDecodeError traceback from export --ids and variants)
        bom = "" if wide == "utf-16" else " without a byte-order mark"
        raise InputError(f"is UTF-16 text{bom} that does not decode ({exc.reason} at byte {exc.start}): save it as "
                         "UTF-8", path=name) from None


def utf16_codec(data: bytes) -> str | None:
    """"utf-16-le" or "utf-16-be" for UTF-16 text without a byte-order mark (pandas'
    `to_csv(encoding="utf-16-le")`, Python's utf-16-le codec): a label file is ASCII at heart, so
    most of the other bytes of its start are NUL, and no character is NUL (both its bytes); else
    None. (Every other byte NUL refused a file holding one character beyond Latin-1 in its first
    512, `P1,α-helix`, as "a binary file".)"""
    head = data[:1024]
    head = head[:len(head) // 2 * 2]
    if len(head) < 4:
        return None
    pairs = {head[i:i + 2] for i in range(0, len(head), 2)}
    if b"\0\0" in pairs:
        return None
    for codec, zeros in (("utf-16-le", head[1::2]), ("utf-16-be", head[0::2])):
        if zeros.count(0) * 4 >= len(zeros) * 3:
            return codec
    return None


def is_utf16(head: bytes) -> bool:
    """Whether a text file's first bytes (1,024 of them, or all there are) are UTF-16, with or
    without its byte-order mark."""
    return head.startswith(UTF16_BOMS) or utf16_codec(head) is not None


def _decompressor(raw: BinaryIO, kind: str | None) -> BinaryIO:
    if kind is None:
        return raw
    if kind == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bz2":
        import bz2

        return bz2.BZ2File(raw, mode="rb")
    if kind == "xz":
        import lzma

        return lzma.LZMAFile(raw, mode="rb")
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:  # pragma: no cover - zstandard is a dependency
            raise InputError("zstd input needs the 'zstandard' package") from None
        return io.BufferedReader(_ZstdReader(raw, zstandard), buffer_size=1 << 20)
    raise AssertionError(kind)


class _NamedErrors(io.RawIOBase):
    """A decompressing stream whose failures are InputErrors naming the input."""

    def __init__(self, stream: BinaryIO, name: str):
        self._stream, self._name = stream, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return self._stream.readinto(buffer)
        except BrokenPipeError:
            raise
        except Exception as exc:  # noqa: BLE001 - gzip, bz2, lzma, zlib and zstd raise their own kinds
            if "Frame requires too much memory" in str(exc):
                # `zstd --long=31` (a window above zstd's default limit of 128 MiB, which `zstd -d`
                # keeps too): an intact file, which was called "corrupt or truncated"
                raise InputError("zstd data compressed with a window above 128 MiB (zstd --long), which is "
                                 "not read (zstd -d refuses it too without --long=31): decompress it first, "
                                 "zstd -d --long=31, or compress it without --long", path=self._name) from None
            kind = type(exc).__name__
            kind = f"{type(exc).__module__}.{kind}" if kind == "error" else kind  # zlib.error
            detail = f"{kind}: {exc}" if str(exc) else kind
            raise InputError(f"corrupt or truncated compressed data ({detail})", path=self._name) from None


class _ZstdReader(io.RawIOBase):
    """Concatenated zstd frames as a raw stream that, like gzip/bz2/xz, fails on truncation.

    zstandard's own stream_reader cannot be iterated line by line and ends quietly in the
    middle of a cut frame, which silently dropped the rest of a truncated download.
    """

    def __init__(self, raw, zstandard):
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError
        self._obj = self._dctx.decompressobj()
        self._in_frame = False  # bytes of a frame seen, its end not yet
        self._buf = memoryview(b"")

    def readable(self):
        return True

    def readinto(self, b):
        while not self._buf:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                return 0
            out = []
            try:
                while chunk:
                    if self._obj.eof:
                        self._obj = self._dctx.decompressobj()
                    out.append(self._obj.decompress(chunk))
                    chunk = self._obj.unused_data if self._obj.eof else b""
                    self._in_frame = not self._obj.eof
            except self._error as exc:
                raise OSError(f"zstd compressed data is corrupt: {exc}") from None
            self._buf = memoryview(b"".join(out))
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class MemberReader(io.RawIOBase):
    """The text of concatenated gzip members or zstd frames (prep writes one per block of its
    input; bgzip writes them too), noting where each member begins: its byte in the file and
    the byte of the text it starts at. A reader made with `start`, a member's pair, reads the
    file from there, so that a place in the text far into a large file is reached by
    decompressing part of one member rather than everything before it. Like gzip and zstd's
    own readers, it fails on a cut member and takes zero bytes of padding after a member."""

    def __init__(self, raw: BinaryIO, kind: str, start: tuple[int, int] = (0, 0)):
        self._raw, self._kind = raw, kind
        self._read_at, self.text = start  # the file's next byte to read; the text's bytes given
        self.starts: collections.deque[tuple[int, int]] = collections.deque()  # (file byte, text byte)
        self._obj = None  # the decoder of the member under way
        self._buf = memoryview(b"")
        if kind == "zstd":
            import zstandard

            self._dctx, self._error = zstandard.ZstdDecompressor(), zstandard.ZstdError

    def readable(self) -> bool:
        return True

    def _decoder(self):
        if self._kind == "gzip":
            import zlib

            return zlib.decompressobj(31)
        return self._dctx.decompressobj()

    def readinto(self, b) -> int:
        while not self._buf:
            at = self._read_at
            chunk = self._raw.read(1 << 20)
            self._read_at += len(chunk)
            if not chunk:
                if self._obj is not None:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                return 0
            out, produced = [], self.text
            while chunk:
                if self._obj is None and self._kind == "gzip" and self.starts:
                    # After a member: zero bytes of padding may follow, then another member (as
                    # Python's gzip reads them), or nothing.
                    rest = chunk.lstrip(b"\0")
                    at, chunk = at + len(chunk) - len(rest), rest
                    if not chunk:
                        break
                    if chunk[:2] != b"\x1f\x8b"[:len(chunk[:2])]:
                        raise OSError(f"Not a gzipped file: {chunk[:8]!r}... after the last member (trailing data)")
                if self._obj is None:
                    self.starts.append((at, produced))
                    self._obj = self._decoder()
                try:
                    data = self._obj.decompress(chunk)
                except Exception as exc:  # noqa: BLE001 - zlib.error, zstandard.ZstdError
                    if self._kind == "zstd" and isinstance(exc, self._error):
                        raise OSError(f"zstd compressed data is corrupt: {exc}") from None
                    raise
                out.append(data)
                produced += len(data)
                if self._obj.eof:
                    rest = self._obj.unused_data
                    at += len(chunk) - len(rest)
                    chunk, self._obj = rest, None
                else:
                    at, chunk = at + len(chunk), b""
            joined = b"".join(out)
            self.text += len(joined)
            self._buf = memoryview(joined)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def member_before(self, offset: int) -> tuple[int, int] | None:
        """The member begun last before byte `offset` of the text (strictly before, so that the
        byte before `offset` can be checked on reopening), as (file byte, text byte); None when
        none is. Earlier members are forgotten: `offset` must not go back."""
        starts = self.starts
        while len(starts) > 1 and starts[1][1] < offset:
            starts.popleft()
        return starts[0] if starts and starts[0][1] < offset else None


@contextlib.contextmanager
def open_members(path, start: tuple[int, int] | None = None) -> Iterator[tuple[BinaryIO, MemberReader | None]]:
    """A file to read as open_input does, and, for a gzip or zstd file, its MemberReader (None
    otherwise). `start`: a member's (file byte, text byte), from `member_before`, to read from;
    the stream then begins at that byte of the text. A `start` that is not a member of the file
    (it has changed) is ValueError."""
    kind = None
    if str(path) != "-":
        with contextlib.suppress(OSError):  # (open_input names what is wrong)
            with open(path, "rb") as probe:
                kind = sniff_compression(probe.read(8))
    if kind not in ("gzip", "zstd"):
        if start is not None:
            raise ValueError(f"{display_name(path)}: not a gzip or zstd file")
        with open_input(path) as stream:
            yield stream, None
        return
    name = display_name(path)
    with open(path, "rb") as raw:
        begin = start or (0, 0)
        raw.seek(begin[0])
        if sniff_compression(raw.read(8)) != kind:
            raise ValueError(f"{name}: byte {begin[0]} does not begin a {kind} member")
        raw.seek(begin[0])
        reader = MemberReader(raw, kind, begin)
        yield io.BufferedReader(_NamedErrors(reader, name), buffer_size=1 << 20), reader


SYMLINK_LOOP = "a symbolic link loop (too many levels of symbolic links)"


def missing_file(path) -> str:
    """What to say of an input that is not there: "no such file", or, for a symbolic link whose
    target is gone (a data folder moved or unmounted), where the link points."""
    try:
        target = os.readlink(path)
    except (OSError, ValueError, TypeError):
        return "no such file" + _partial_beside(path)
    return f"a symbolic link to {target}, which does not exist"


def _partial_beside(path) -> str:
    """Where `path` is missing but `path.partial` is there (an embed or contacts run killed, or
    still running, before it renamed its output): a hint saying so; "" otherwise."""
    try:
        partial = f"{os.fspath(path)}.partial"
        if not os.path.isfile(partial):
            return ""
    except (OSError, ValueError, TypeError):
        return ""
    # (not "the same command": the command that met the missing file, export or predict, has no --resume)
    return (f" ({os.path.basename(partial)} beside it is the unfinished output of an embed or contacts run that "
            "was interrupted or is still running: "
            + option("that run's command with --resume finishes it)", "that run again with resume=True finishes it)"))


def unreachable_input(path) -> str | None:
    """Why the input `path` cannot be reached, or None where it can: "no such file", or what
    `os.path.exists` also took for a missing file: a symbolic link loop (ELOOP), a folder on the
    way that may not be entered (EACCES), a name too long..."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return missing_file(path)
    except ValueError:  # (a NUL in the name)
        return "no such file"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return SYMLINK_LOOP if exc.errno == errno.ELOOP else (exc.strerror or str(exc)).lower()
    return None


def json_object(path) -> dict:
    """The JSON object a file holds; {} for one that cannot be read, is not JSON or not an object
    (a folder's config.json read to tell what the folder is)."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def starts_like_hdf5(path) -> bool:
    """Whether the file at `path` begins with HDF5's signature (False where it cannot be read)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(4) == b"\x89HDF"
    except OSError:
        return False


def directory_kind(path) -> str:
    """What a folder given for an input file is, where protrans wrote it (a language model's, a
    train run's or a head's folder, with config.json): the two were swapped (`embed MODEL -m
    proteins.fa`), or a head was given for its labels; '' for any other folder."""
    config = json_object(Path(path) / "config.json")
    kind = config_kind(config)
    if kind == "model":
        return f" (it is a language model's directory, {config['model_type']}, which -m takes)"
    if kind == "head":
        return " (it is a prediction head's directory, which predict takes)"
    return ""


def config_kind(config: dict) -> str | None:
    """What wrote a config.json: "model" (a transformers model's, with its model_type), "head"
    (protrans fit's, with its task and hyperparameters), or None for anything else."""
    if isinstance(config.get("model_type"), str):
        return "model"
    if "task" in config and "hyperparameters" in config:
        return "head"
    return None


@contextlib.contextmanager
def open_input(path, name: str | None = None) -> Iterator[BinaryIO]:
    """Open a file (or `-` for stdin) for binary reading, decompressing transparently. Errors
    name `name` when given (stdin spooled to a temporary file is still `<stdin>` to the user)."""
    name = name or display_name(path)
    if str(path) == "-":
        raw = stdin_binary()
        own = False
    else:
        try:
            raw = open(path, "rb", buffering=1 << 20)
        except FileNotFoundError:
            raise InputError(missing_file(path), path=name) from None
        except IsADirectoryError:
            raise InputError("is a directory, expected a file" + directory_kind(path), path=name) from None
        except PermissionError:
            raise InputError("permission denied", path=name) from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise InputError(SYMLINK_LOOP, path=name) from None
        own = True
    opened = raw  # what `own` closes at the end
    try:
        if not isinstance(raw, io.BufferedReader):
            raw = io.BufferedReader(raw, buffer_size=1 << 20) if hasattr(raw, "readinto") else raw
        head = raw.peek(8)[:8] if hasattr(raw, "peek") else b""
        if hasattr(raw, "peek") and len(head) < 8:
            # A pipe whose writer is slow (ssh, a decompressor, `(head -c 1 x.gz; ...)`) gives its
            # first read short: the magic number was cut and gzip read as "not FASTA". Read on to
            # 8 bytes or the end, and put them back in front.
            head = raw.read(8)
            raw = io.BufferedReader(_Prefixed(head, raw), buffer_size=1 << 20)  # (closing it leaves `opened`)
        kind = sniff_compression(head)
        stream = _decompressor(raw, kind)
        if kind is not None:
            # Every failure of the decompressor (truncation, a CRC, zlib's and lzma's own errors)
            # becomes one line naming the input, raised from the read that met it, so that an
            # error of the caller's own (writing its output) is never mistaken for one.
            stream = io.BufferedReader(_NamedErrors(stream, name), buffer_size=1 << 20)
        yield stream
    finally:
        if own:
            opened.close()



class _Prefixed(io.RawIOBase):
    """`head` (bytes already read) and then the rest of `stream`."""

    def __init__(self, head: bytes, stream):
        self.head, self.stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.stream.readinto(buffer)

def compression_for_output(path) -> str | None:
    suffix = Path(str(path)).suffix.lower()
    return {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}.get(suffix)


def compress_bytes(data: bytes, kind: str | None, level: int | None = None) -> bytes:
    """`data` as one complete compressed stream (gzip member, zstd frame, ...) of `kind`.

    Concatenated, such streams decompress to the concatenated data, so parallel workers can
    compress blocks independently. Default levels as `atomic_output`.
    """
    if kind is None:
        return data
    if kind == "gzip":
        import gzip

        return gzip.compress(data, compresslevel=level or 6, mtime=0)
    if kind == "bz2":
        import bz2

        return bz2.compress(data, level or 9)
    if kind == "xz":
        import lzma

        return lzma.compress(data, preset=level)
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=level or 3).compress(data)
    raise AssertionError(kind)


def _compressor(raw: BinaryIO, kind: str | None, level: int | None = None) -> BinaryIO:
    if kind is None:
        return raw
    if kind == "gzip":
        import gzip

        # Level 6 is ~3x faster than the default 9 for a few percent in size; mtime=0 for
        # reproducible bytes.
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level or 6, mtime=0)
    if kind == "bz2":
        import bz2

        return bz2.BZ2File(raw, mode="wb", compresslevel=level or 9)
    if kind == "xz":
        import lzma

        return lzma.LZMAFile(raw, mode="wb", preset=level)
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=level or 3).stream_writer(raw, closefd=False)
    raise AssertionError(kind)


def output_directory(path, flag: str | None = None, keyword: str | None = None) -> Path:
    """The directory an output file goes to; a usage error (exit 2) when it does not exist:
    outputs never create directories, and nothing has been read yet when this is checked.
    `flag`, `keyword`: the option of an output beside the main one (`--plot`, `--residues`), which
    an empty path names: "the output path is empty" sent the reader to a -o given in full."""
    if str(path) == "":  # `-o "$OUT"` with OUT unset: a traceback from pathlib further on
        if flag is not None:
            raise UsageError(f"{option(flag, keyword or flag)} is empty: give the path of a file")
        raise UsageError("the output path is empty")
    if isinstance(path, str) and path.endswith(os.sep) and path.rstrip(os.sep):
        # `-o new.h5/` wrote a file named new.h5: a name that ends in / means a directory
        raise UsageError("ends with '/', which names a directory: an output file needs a file name", path=path)
    directory = Path(path).parent
    if not directory.is_dir():
        if directory.exists():
            raise UsageError("is not a directory, so no output can go inside it", path=str(directory))
        if directory.is_symlink():  # (said as "output directory does not exist", of a name that is there)
            raise UsageError(f"is a broken symbolic link (to {os.readlink(directory)}, which does not exist), so no "
                             "output can go inside it", path=str(directory))
        raise UsageError("output directory does not exist (it is not created)", path=str(directory))
    if not os.path.lexists(path) and not os.access(directory, os.W_OK | os.X_OK):
        # (a read-only mount, or another user's folder: found when the output was written, after
        # the work (a t-SNE map, a variant scan) was done)
        raise no_file_here(directory)
    return directory


def no_file_here(directory) -> RuntimeFailure:
    """A folder no file can be created in (a read-only mount, another user's folder), in the one
    wording of every command."""
    return RuntimeFailure("permission denied: no file can be created in this folder (read-only, or not yours to "
                          "write)", path=str(directory))


def bare_name(path) -> str:
    """An output's name in lower case, less a compression suffix (what its extension says it holds)."""
    name = str(path or "").lower()
    for compressed in (".gz", ".bz2", ".xz", ".zst", ".zstd"):  # (compression_for_output's suffixes)
        name = name.removesuffix(compressed)
    return name


def tsv_quoted(text: str) -> str:
    """A TSV field (its tabs and line breaks already dealt with) that starts with a quote, quoted as
    CSV quotes it, which pandas', R's and Python's csv TSV readers undo: read as it stands, their
    quote handling ate it, and the rows after it, up to the next quote. Any other field as it is."""
    return '"' + text.replace('"', '""') + '"' if text.startswith('"') else text


def header_delimiter(first_line: str) -> str:
    """The delimiter of a label or variants table, from its first non-blank line: a tab there makes
    it a TSV, whose fields may hold commas unquoted (`score (log2, norm)`); else commas."""
    return "\t" if "\t" in first_line else ","


def named_delimiter(path) -> str | None:
    """The delimiter a table's file name says (.tsv/.tab: a tab, .csv: a comma; compressed or
    not), None for any other name (stdout's '-' among them)."""
    name = bare_name(path)
    return "\t" if name.endswith((".tsv", ".tab")) else "," if name.endswith(".csv") else None


def folder_can_be_made(path) -> None:
    """A usage error (exit 2) where the output folder `path` (made when its files are written,
    parents too) cannot be: a file on its way (`--metrics afile/sub`), found only once the work
    was done."""
    target = Path(path).absolute()
    for ancestor in (target, *target.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UsageError("is not a directory, so no folder can go inside it", path=str(ancestor))
            return
        if (nothing := link_to_nothing(ancestor)) is not None:  # (was "File exists", once the work was done)
            raise UsageError(f"{nothing}, so no folder can be made there (make that folder, or choose another path)",
                             path=str(ancestor))


@contextlib.contextmanager
def folder_made(path) -> Iterator[None]:
    """Make the folder `path` and its missing parents for the `with` block; on leaving it, remove
    those made here that were left empty (a fit or finetune refused for its labels left the `-o`
    parent it had made, `heads/new/` of `-o heads/new/ss3`, empty behind). Folders that held
    anything by then (the head, a state kept for --resume) stay, and so does one that was there."""
    path = Path(path)
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        for folder in created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break


def _is_piped_stdin(path: Path) -> bool:
    """Whether `path` is this process's standard input, a pipe or a file (not a terminal)."""
    import stat

    try:
        st, stdin = os.stat(path), os.fstat(0)
    except OSError:
        return False
    return os.path.samestat(st, stdin) and not stat.S_ISCHR(stdin.st_mode)


def through_link(path) -> Path:
    """Where an output the user named goes when the name is a symbolic link of the user's own:
    where the link leads, as the shell's `>` writes it (a link onto scratch storage; renamed over,
    the link became a regular file beside it and its target was never written). A link someone
    else owns (planted in a shared folder) is not followed, and is replaced; names protrans
    chooses itself (metrics, checkpoints, shards) are never followed (AtomicFile's default)."""
    import stat

    path = Path(path)
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return path
    if stat.S_ISLNK(st.st_mode) and st.st_uid == os.geteuid():
        return Path(os.path.realpath(path))
    return path


def checked_hdf5_output(output, what: str, *, compressed_hint: str = "", directory_hint: str = "") -> Path:
    """An HDF5 file `-o` names, checked before anything is read (embed, merge, import-esm): not a
    pipe or device, not a `.gz` name, its folder there, the user's own link followed (where it
    leads is written), not a directory, not read-only. `what`: "the embeddings", ..."""
    refuse_special_output(output, "-o", "an HDF5 file", keyword="output")
    refuse_compressed_hdf5(output, "-o", compressed_hint, keyword="output")
    refuse_partial_name(output)
    output_directory(output)  # before anything is read or loaded
    output = through_link(output)  # (the user's own link: where it leads)
    output_directory(output)
    if output.is_dir():  # (was found only by the final rename, after the work)
        raise UsageError(f"is a directory: {what} are one HDF5 file{directory_hint}", path=str(output))
    writable_or_refused(output)
    return output


def refuse_partial_name(output, flag: str = "-o") -> None:
    """An HDF5 output named `*.partial` is refused (exit 2): that is the name of an unfinished
    run's file (a run writes OUTPUT.partial and renames it OUTPUT when complete), so a finished
    `-o x.h5.partial` was called unfinished by info and refused by merge ("finish it first"). The
    name as given, and where the user's own link leads (what is written). `flag` "-o": a library
    call's `output` (embed, contacts, merge, import_esm), which `errors.option` names there."""
    for path in dict.fromkeys((Path(str(output)), through_link(output))):
        if path.name.endswith(".partial"):
            name, stem = path.name, path.name[:-len(".partial")] or "out.h5"
            again = option(f"the same command with --resume and -o {stem}",
                           f"the same call with resume=True and output={stem!r}")
            raise UsageError(f"{option('-o', 'output') if flag == '-o' else flag} {path}: a name ending in .partial "
                             f"is an unfinished run's file (a run writes OUTPUT.partial and renames it OUTPUT once "
                             f"complete; info and merge take such a file for unfinished): name the output {stem}"
                             + (f" (an interrupted embed or contacts run's {name} is finished by {again})"
                                if flag == "-o" else ""))


def writable_or_refused(path: Path) -> None:
    """An existing file the user may not write is refused, as the shell's `>` refuses it (renamed
    over, a read-only file was replaced wherever its folder let us)."""
    if path.is_file() and not os.access(path, os.W_OK):
        raise RuntimeFailure("permission denied: the file exists and is read-only to you", path=str(path))


def special_output(path) -> str | None:
    """Why `path` cannot take an output that is renamed into place (an HDF5 file, a head or run
    directory), or None: an existing device, pipe or socket (a link to one included), or a path
    into /dev or /proc other than /dev/shm. Renamed over, /dev/null itself became a regular file
    (as root); text outputs write such paths in place instead (AtomicFile)."""
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # (through a link)
    except OSError:
        mode = None
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "is a device, pipe or socket"
    if _device_path(os.path.abspath(path)) or (path.is_symlink() and _device_path(os.readlink(path))):
        return "is in /dev or /proc"
    return None


def _output_named(flag: str, keyword: str | None) -> str:
    """An output setting as the message's reader gives it: `flag` ("-o", "--plot") at the command
    line, and to a library call its parameter, `keyword` ("output", "output_dir", "plot"), where the
    caller has one (`errors.option`): a library caller was told "-o x.h5.gz", "give -o a path"."""
    return option(flag, keyword) if keyword is not None else flag


def refuse_compressed_hdf5(path, flag: str, inside: str = "", *, keyword: str | None = None) -> None:
    """A usage error (exit 2) for an HDF5 output named like a compressed stream (`x.h5.gz`): the
    file is plain HDF5, which zcat and the readers of such a name then failed on (a FASTA or CSV
    output of that name is compressed). `inside`: how to compress inside the file, if there is one.
    `keyword`: the library call's parameter for `flag` (`_output_named`)."""
    if compression_for_output(path):
        flag = _output_named(flag, keyword)
        raise UsageError(f"{flag} {path}: an HDF5 file is written uncompressed{inside}: give a name without the "
                         f"{Path(str(path)).suffix} suffix (e.g. .h5)")


# names that promise another format than HDF5 (what they would hold, for the message)
_OTHER_FORMATS = {".csv": "CSV", ".tsv": "TSV", ".txt": "text", ".npz": "NumPy", ".npy": "NumPy", ".pt": "PyTorch",
                  ".pkl": "pickle", ".json": "JSON", ".parquet": "Parquet", ".fa": "FASTA", ".fasta": "FASTA",
                  ".faa": "FASTA"}


def refuse_other_format_name(path, flag: str, what: str, *, keyword: str | None = None) -> None:
    """A usage error (exit 2) for an HDF5 output named like another format (`-o out.csv`,
    `out.npz`): embed wrote HDF5 under that name, and the CSV reader or numpy.load a user then
    pointed at it failed on HDF5's bytes. The table or arrays are `protrans export`'s. Called
    after a command's own checks of its inputs (an -o that is the input is said as such), and for
    a new file only: an existing one is the command's to judge (a FASTA is not an earlier output
    to --force or --resume; an earlier output of such a name goes on). `keyword`: the library
    call's parameter for `flag` (`_output_named`)."""
    suffix = Path(str(path)).suffix.lower()
    if os.path.lexists(path):
        return
    if suffix in _OTHER_FORMATS:
        name = Path(str(path)).name
        export = option(f"`protrans export OUT.h5 -o {name}`", f"export('OUT.h5', {name!r})")
        hint = (f"; for {_OTHER_FORMATS[suffix]}, write the .h5 and then {export}"
                if suffix in (".csv", ".tsv", ".txt", ".npz") and "embeddings" in what else "")
        flag = _output_named(flag, keyword)
        raise UsageError(f"{flag} {path}: {what} are written as HDF5, not {_OTHER_FORMATS[suffix]}: name the file "
                         f".h5{hint}")


def refuse_special_output(path, flag: str, what: str, *, keyword: str | None = None) -> None:
    """A usage error (exit 2), before any work, for an output `special_output` refuses. `keyword`:
    the library call's parameter for `flag` (`_output_named`)."""
    flag = _output_named(flag, keyword)
    if str(path) == "-":
        raise UsageError(f"{flag} -: {what} cannot go to stdout; give a path")
    if problem := special_output(path):
        raise UsageError(f"{problem}: {what} is written under a temporary name and renamed into place, which "
                         f"would replace it (give {flag} a path of your own)", path=str(path))


def _in_place(path: Path) -> bool:
    """Whether an output is written where it is rather than renamed into place: a device or a
    pipe, and a link into /dev or /proc such as /dev/stdout, which leads to whatever the shell
    redirected (a regular file under `> log`: renaming over the link replaced /dev/stdout)."""
    # (a regular file in /dev/shm, a tmpfs, is an ordinary output: written atomically; in place
    # and appended to, a checkpoint's train_config.json held two JSON objects)
    return path.is_dir() or special_output(path) is not None


def _pipe_or_socket(path: Path) -> bool:
    """Whether `path` is a named pipe or a socket (through a link), not under /dev or /proc (where
    /dev/stdout leads to the shell's pipe)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) and not _device_path(os.path.abspath(path)) \
        and not (path.is_symlink() and _device_path(os.readlink(path)))


def _standard_descriptor_on(path: Path) -> int | None:
    """1 or 2 where `path` leads to the regular file stdout or stderr is open on (`--stats
    /dev/stderr 2> log`), else None. (Pipes and terminals have no offset to share.)"""
    import stat

    try:
        target = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(target.st_mode):
        return None
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            if os.path.samestat(target, os.fstat(fd)):
                with contextlib.suppress(Exception):
                    stream.flush()  # (what Python holds for it goes first)
                return fd
        except OSError:  # closed
            continue
    return None


def _device_path(name: str) -> bool:
    """Under /dev or /proc, but not in /dev/shm (a tmpfs of ordinary files)."""
    return name.startswith(("/dev/", "/proc/")) and not name.startswith("/dev/shm/")


class StagedRename:
    """A file written out under the temporary name `tmp`, renamed over `path` by `commit()` or
    removed by `abort()` (a failed commit aborts): one output of a job whose outputs are renamed
    together (staged_outputs). `tmp` None: written in place, nothing to rename."""

    def __init__(self, tmp: str | None, path):
        self.tmp, self.path, self._done = tmp, Path(path), False

    def commit(self) -> None:
        if self._done:
            return
        try:
            if self.tmp is not None:
                os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._release()
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)

    def _release(self) -> None:
        """What is let go before the temporary is removed (AtomicFile: its streams)."""


class StagedRemoval(StagedRename):
    """An earlier run's output that this run does not write again (predict --metrics --no-plots:
    the last run's figure of the scores it replaces), removed by `commit()` with the job's new
    outputs; `abort()` leaves it, as the files it went with stay."""

    def __init__(self, path):
        super().__init__(None, path)

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def remove_with_outputs(path, staged: list | None) -> None:
    """Remove `path`, an output of an earlier run that would be stale beside this run's, when the
    `staged` outputs are renamed (at once without a list); nothing when there is none."""
    path = Path(path)
    if not (path.is_file() or path.is_symlink()):
        return
    removal = StagedRemoval(path)
    if staged is None:
        removal.commit()
    else:
        staged.append(removal)


class AtomicFile(StagedRename):
    """One output file written under a temporary name and renamed by `commit()`.

    `stream` compresses by the target's extension. `abort()` (or a failed commit) removes the
    temporary file and leaves any existing file of the target's name as it was. Used directly
    where one job writes several files that must all appear or none (shards).
    """

    def __init__(self, path, compress: bool = True, level: int | None = None, follow_link: bool = False,
                 buffering: int = 1 << 20):
        """`compress=False`: the caller writes data already compressed for the extension;
        `level`: the compression level (default: as atomic_output); `follow_link`: a name the
        user gave, written where the user's own link leads (`through_link`); `buffering`: bytes
        held before a write to the file (a job with many files open at once gives less)."""
        self.path = Path(path)
        in_place = _in_place(self.path)  # (a link into /dev is in place as it is: never resolved)
        if in_place and not follow_link and _pipe_or_socket(self.path):
            # A name protrans chooses itself (a metrics folder's SET.json, RUN/loss_curve.png) is no
            # pipe the user opened for it: a named pipe there was written in place, and the run hung
            # for ever waiting for its reader. A link there is replaced, never followed.
            if not self.path.is_symlink():
                raise InputError(f"is {kind_in_words(os.stat(self.path).st_mode)}, not a regular file: protrans "
                                 "names this file itself and writes it here (move it away)", path=str(self.path))
            in_place = False
        if follow_link and not in_place:
            self.path = through_link(self.path)
        directory = output_directory(self.path)
        self.tmp = None
        if in_place:
            # /dev/null, /dev/stdout, a named pipe: written in place. Renaming a temporary file
            # over one would replace the device itself (as root: /dev/null becomes a file).
            if self.path.is_dir():
                raise InputError("is a directory, expected a file", path=str(self.path))
            if _is_piped_stdin(self.path):
                # `cat x.fa | protrans prep - -o /dev/stdin` hung: opened for writing, the pipe
                # never reached its end for the reader
                raise UsageError("is standard input: an output cannot go there", path=str(self.path))
            # Appended to: "wb" truncated what /dev/stdout or /dev/stderr leads to, so
            # `--stats /dev/stderr 2>> run.log` emptied the log first. The file the shell opened
            # for stdout or stderr is written through that descriptor (its offset shared): opened
            # anew, it kept an offset of its own, and under `2> log` (no `>>`) the summary printed
            # on stderr afterwards overwrote the JSON of `--stats /dev/stderr`.
            fd = _standard_descriptor_on(self.path)
            self._raw = open(self.path, "ab") if fd is None else os.fdopen(os.dup(fd), "ab")
        else:
            writable_or_refused(self.path)
            self.tmp = str(make_temporary(directory, f".{self.path.name}."))
            # Opened by descriptor: a named file object would put the temporary's name in a gzip header.
            # Not with O_TRUNC (it is new and empty): on ext4 a file truncated on opening is written
            # back when it is closed (auto_da_alloc), which made a 250 MB prep wait 0.13 s more.
            self._raw = os.fdopen(os.open(self.tmp, os.O_WRONLY), "wb", buffering=buffering)
        self.stream = _compressor(self._raw, compression_for_output(self.path) if compress else None, level)
        self._done = self._prepared = False

    def prepare(self) -> None:
        """Everything but the rename: the data written out and closed, so that a job with
        several files can find a full disk before any of them replaces its old version."""
        if self._done or self._prepared:
            return
        try:
            if self.stream is not self._raw:
                self.stream.close()
            self._raw.flush()
            if _fsync_asked() and self.tmp is not None:
                disk.sync(self._raw.fileno(), self.path)
            self._raw.close()
            if self.tmp is not None:
                os.chmod(self.tmp, _mode_for(self.path))
        except OSError as exc:  # a full disk, a quota: named by the output, not the hidden temporary
            self.abort()
            raise RuntimeFailure(f"cannot write: {exc.strerror or exc}", path=str(self.path)) from None
        except BaseException:
            self.abort()
            raise
        self._prepared = True

    def commit(self) -> None:
        if self._done:
            return
        self.prepare()
        super().commit()

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            if self.stream is not self._raw:
                self.stream.close()
        with contextlib.suppress(Exception):
            self._raw.close()


def _mode_for(path: Path) -> int:
    """The permissions of a replaced output: those of the file it replaces (a `chmod 640` result
    stayed 640 under the shell's `>`, and became 644 here), else the umask's default."""
    import stat

    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
        return stat.S_IMODE(st.st_mode) & 0o777
    return 0o666 & ~_umask()


class _TextStdout:
    """Bytes for a stdout that takes text only: a notebook's (ipykernel's OutStream) and the
    StringIO of contextlib.redirect_stdout have no `.buffer`. Decoded as UTF-8 as they come."""

    def __init__(self, text):
        import codecs

        self.text = text
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data) -> int:
        self.text.write(self.decoder.decode(bytes(data)))
        return len(data)

    def flush(self) -> None:
        self.text.write(self.decoder.decode(b"", final=True))
        self.text.flush()


class _WholeWrites:
    """stdout's binary buffer, every write made whole. Given more than its buffer holds, a
    BufferedWriter writes straight to the pipe and returns a short count, without an error, when
    the reader goes away in the middle (`predict | head -1` exited 0, not 141): the rest is
    written again, which meets the closed pipe and raises BrokenPipeError."""

    def __init__(self, buffer):
        self.buffer = buffer

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = self.buffer.write(view)
        while done < len(view):
            more = self.buffer.write(view[done:])
            if not more:
                raise BrokenPipeError(errno.EPIPE, "stdout accepts no more")
            done += more
        return len(view)

    def __getattr__(self, name):  # flush, fileno, isatty...
        return getattr(self.buffer, name)


def stdout_binary():
    """Where `-` writes bytes: stdout's binary buffer (every write whole), or stdout itself
    through a decoder when it has none (`sys.stdout.buffer` was an AttributeError in a notebook)."""
    if sys.stdout is None:  # `>&-`: one line, not an AttributeError (nothing can be written)
        raise RuntimeFailure("standard output is closed: "
                             + option("give -o FILE", "give a file's path, not '-' or None"))
    buffer = getattr(sys.stdout, "buffer", None)
    return _WholeWrites(buffer) if buffer is not None else _TextStdout(sys.stdout)


@contextlib.contextmanager
def staged_outputs(staged: list | None = None) -> Iterator[list]:
    """The list to give atomic_output(staged=...) for one job's outputs (project's table, picture
    and page; predict's predictions, probabilities and metrics; variants' table and heatmap),
    written out under temporary names inside the block and renamed together when it ends (SIGINT,
    SIGTERM and SIGHUP wait until all are renamed): a Ctrl-C while the last was drawn left the new first
    ones beside older files. On any exception every temporary is removed and existing files are
    left as they were. Given a larger job's list (`staged`), it is yielded and that job renames."""
    if staged is not None:
        yield staged
        return
    own: list = []
    try:
        yield own
        with signals_held():
            for handle in own:
                handle.commit()
    except BaseException:
        for handle in own:
            handle.abort()  # (one renamed already is done: left as it is)
        raise


@contextlib.contextmanager
def atomic_output(path, mode: str = "wb", *, follow_link: bool = False,
                  staged: list | None = None, stream_stdout: bool = False) -> Iterator[BinaryIO]:
    """Write `path` atomically (or stdout for `-`/None), compressing by extension.

    The data goes to a hidden temporary file in the target's directory and is renamed over
    the target only when the block exits without an exception; on failure the temporary
    file is removed and any existing file of that name is left as it was. For stdout, a
    temporary file in TMPDIR is copied out when the block exits without an exception (a
    failed or stopped run prints nothing; stdout's output needs its size free in TMPDIR), or with
    `stream_stdout` written to stdout as it goes (export: a conversion of a file that stays, whose
    `| head` wants its first rows at once, not after a spool of the whole table). With `staged` (a
    list), the file is written out but not renamed: its AtomicFile is appended, for the caller
    to commit with a job's other outputs (under signals_held) or abort.
    """
    if (path is None or str(path) == "-") and stream_stdout:
        out = NamedStdout(stdout_binary())
        yield out
        out.flush()
        return
    if path is None or str(path) == "-":
        # (a temporary file in TMPDIR, copied out once the block ends without an exception: a Ctrl-C
        # or SIGTERM while labels, knn or variants wrote their table gave a pipeline its
        # first 64 KB, a record cut in the middle, then exit 130)
        with _spooled_stdout() as out:
            yield out
        return
    handle = AtomicFile(path, follow_link=follow_link)
    try:
        yield handle.stream
    except OSError as exc:
        handle.abort()
        named = _named_if_full(exc, str(path))  # (a write into the temporary: named by the output)
        if named is exc:
            raise
        raise named from None
    except BaseException:
        handle.abort()
        raise
    if staged is None:
        handle.commit()
    else:
        handle.prepare()
        staged.append(handle)


# a full disk, a quota, the file-size limit
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _named_if_full(exc: OSError, where: str) -> Exception:
    """A write error that names no file and found no room, as one naming `where`; else `exc`."""
    if exc.filename is None and exc.errno in _FULL:
        return RuntimeFailure(f"cannot write: {exc.strerror}", path=where)
    return exc


@contextlib.contextmanager
def streamed_output(path, *, staged: list | None = None) -> Iterator[BinaryIO]:
    """The stream an output is written to as the work goes (from-structure, perplexity, generate:
    nothing held until the end): atomic_output's, following a link at `path`: its atomic temporary
    (renamed over it when the block exits without an exception, or left to `staged`), or for
    stdout (`-`, None) a temporary file in TMPDIR, copied to stdout when the block exits without
    one, so that a run that fails prints nothing."""
    with atomic_output(path, follow_link=True, staged=staged) as stream:
        yield stream


@contextlib.contextmanager
def _spooled_stdout() -> Iterator[BinaryIO]:
    """A temporary file in TMPDIR to write stdout's output to, copied to stdout when the block
    exits without an exception (nothing printed by a run that fails or is stopped). A full TMPDIR
    is one line naming it ("No space left on device" named nothing)."""
    try:
        spool = tempfile.TemporaryFile(prefix="protrans-stdout-")
    except OSError as exc:
        raise _spool_error(exc) from None
    with spool:
        yield NamedWrites(spool, _spool_error)  # (the temporary file's write errors name it)
        try:
            spool.flush()
            spool.seek(0)
        except OSError as exc:
            raise _spool_error(exc) from None
        stdout = NamedStdout(stdout_binary())
        shutil.copyfileobj(spool, stdout, 1 << 20)
        stdout.flush()


def _spool_error(exc: OSError) -> RuntimeFailure:
    return RuntimeFailure("cannot write the temporary file that standard output is written to first "
                          f"(TMPDIR): {exc.strerror or exc}", path=tempfile.gettempdir())


@contextlib.contextmanager
def stdout_text(command: str) -> Iterator:
    """sys.stdout for a command that prints its text there (models, env): a closed one (`>&-`) is
    one line saying so (it was an AttributeError traceback), and a full device names it (`>
    /dev/full` said "No space left on device", naming nothing)."""
    if sys.stdout is None:
        raise RuntimeFailure(f"standard output is closed: {command} writes there")
    try:
        yield sys.stdout
        sys.stdout.flush()
    except OSError as exc:
        named = _named_if_full(exc, "standard output")
        if named is exc:
            raise
        raise named from None


class NamedWrites:
    """A stream whose own write and flush errors are said as `named(exc)` says them, while other
    files' errors inside the same `with` keep theirs."""

    def __init__(self, stream, named):
        self._stream, self._named = stream, named

    def write(self, data):
        try:
            return self._stream.write(data)
        except OSError as exc:
            raise self._named(exc) from None

    def flush(self):
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._named(exc) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


class NamedStdout(NamedWrites):
    """stdout whose own full-disk errors name it (`> /dev/full`: "No space left on device" named
    nothing)."""

    def __init__(self, stream):
        super().__init__(stream, lambda exc: _named_if_full(exc, "standard output"))


def utf8_text(text: str) -> str:
    """`text` as HDF5 (and JSON readers) can hold it: a name that is not UTF-8 (a file name with
    byte 0xff, or any non-ASCII name under LC_ALL=C) reaches Python with surrogate escapes, which
    h5py refuses ("surrogates not allowed": embed failed with a traceback when the command line
    held one); the bytes are written as `\\xff` escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def utf8_path_problem(path) -> str | None:
    """Why `path` cannot be handed to the Rust libraries (tokenizers, safetensors' file calls),
    which write and open the UTF-8 spelling of a name: a name that is not UTF-8 (byte 0xff), or
    any non-ASCII name where the locale's file-system encoding is not UTF-8 (LC_ALL=C with
    PYTHONUTF8=0, a Latin-1 locale: they opened another file, or none). None when it can."""
    text = os.fspath(path)
    try:
        if os.fsencode(text) == text.encode("utf-8"):
            return None
    except UnicodeEncodeError:
        pass
    return ("its name is not UTF-8 here (the tokenizers library writes and reads UTF-8 names only): "
            "use an ASCII name, or a UTF-8 locale (LC_ALL=C.UTF-8)")


def disk_full(exc: BaseException | None) -> str | None:
    """The reason (`No space left on device`, a quota, the file-size limit) when `exc` or an error
    it was raised from is a write that found no room; else None. (A `raise ... from None` keeps
    the error it replaced as its __context__.) safetensors' writer, in Rust, raises no OSError: a
    SafetensorError "Error while serializing: I/O error: No space left on device (os error 28)"."""
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc.strerror or os.strerror(exc.errno)
        if (not isinstance(exc, OSError) and (found := re.search(r"\(os error (\d+)\)", str(exc)))
                and int(found[1]) in _FULL):
            return os.strerror(int(found[1]))
        exc = exc.__cause__ or exc.__context__
    return None


def create_fresh(path, mode: int = 0o666) -> int:
    """A descriptor, open for writing, of `path` created afresh under a fixed name (a spool, a
    state's temporary): what was there (left by a killed run, or a link planted under that
    predictable name in a shared folder) is removed first, and the file is created exclusively,
    never through a link (O_EXCL, O_NOFOLLOW). Someone else's link that cannot be removed (a
    sticky folder) makes the creation fail instead of being followed."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0),
                   mode)


@contextlib.contextmanager
def temporary_folder(directory, prefix: str) -> Iterator[str]:
    """A temporary folder in `directory` (None: $TMPDIR), removed on exit. Made by
    `make_temporary`, so that the next run removes one a killed run left (a plain
    TemporaryDirectory outlived a SIGKILL for ever: 112 MB of predict's embeddings)."""
    path = make_temporary(tempfile.gettempdir() if directory is None else directory, prefix, "", folder=True)
    try:
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


_SWEPT: set[tuple[str, str, str]] = set()  # (folder, prefix family, suffix) this process has swept


def make_temporary(directory, prefix: str, suffix: str = ".tmp", *, folder: bool = False) -> Path:
    """A new temporary file (or folder) `PREFIX<host>.<pid>-XXXX<suffix>` in `directory`, after
    removing the ones of that prefix that a killed run of this host left (its process is gone):
    nothing else ever removes them, and prep's dedup folder is as large as its input. The host
    is in the name so that on a shared file system another node's live run is never touched,
    and one untouched for an hour only is removed: containers that share a host name and a
    folder do not see each other's processes."""
    host = _host_tag()
    prefix = _fitting_prefix(directory, prefix, suffix)
    # One sweep per folder and family of prefixes a process: the prefix's numbers stand for any
    # (`.c.00001.txt.` sweeps every shard's), and a folder swept for a family is not scanned
    # again. Scanned for every temporary, 5000 shards took 15 s of rescans of a folder filling
    # with the run's own temporaries.
    family = re.sub(r"\d+", r"\\d+", re.escape(prefix))
    key = (os.path.realpath(directory), family, suffix)
    if key not in _SWEPT:
        _remove_dead(directory, family, suffix, untouched_for=STALE_SECONDS)
        _SWEPT.add(key)
    mine = f"{prefix}{host}.{os.getpid()}-"
    try:
        if folder:
            return Path(tempfile.mkdtemp(prefix=mine, suffix=suffix, dir=directory))
        fd, name = tempfile.mkstemp(prefix=mine, suffix=suffix, dir=directory)
    except OSError as exc:  # named by the folder the user chose, not by the temporary's name
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # not the folder's fault
            raise RuntimeFailure(f"cannot open another file: {exc.strerror} (the limit on open files, "
                                 "ulimit -n, is reached)", path=str(directory)) from None
        raise RuntimeFailure(f"cannot write in this folder: {exc.strerror or exc}", path=str(directory)) from None
    os.close(fd)
    return Path(name)


STALE_SECONDS = 3600


def _fitting_prefix(directory, prefix: str, suffix: str) -> str:
    """`prefix` cut (whole characters off its end) so that a temporary
    `PREFIX<host>.<pid>-XXXXXXXX<suffix>` fits the folder's longest name (NAME_MAX, 255 bytes on
    most file systems): prefixed with the output's own name, an output named with 200 bytes or
    more (a valid name) could not be written at all ("cannot write in this folder: File name too
    long"). Room is kept for a pid of 7 digits, so that every run of this host cuts a name alike
    and the sweep of dead runs' temporaries finds them."""
    room = name_max(directory) - len(os.fsencode(f"{_host_tag()}.{'9' * 7}-{'X' * 8}{suffix}"))
    while prefix and len(os.fsencode(prefix)) > room:
        prefix = prefix[:-1]
    return prefix


def _host_tag() -> str:
    """This host's name as temporaries carry it (letters, digits, _ and - only; 32 at most)."""
    import socket

    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32] or "host"


def remove_dead_temporaries(directory, prefix: str, suffix: str = ".tmp") -> list[str]:
    """Remove the temporaries `PREFIX<host>.<pid>-XXXX<suffix>` (make_temporary's, this exact
    prefix) that a process of this host that is gone left in `directory`, however recent: for a
    caller that holds the lock every writer of these temporaries holds (fit's on HEAD.partial/),
    so that none of them can belong to a live run, not even one in another container that shares
    the host name. make_temporary's own sweep waits an hour for lack of such a lock."""
    return _remove_dead(directory, re.escape(_fitting_prefix(directory, prefix, suffix)), suffix)


def _remove_dead(directory, prefix_pattern: str, suffix: str, *, untouched_for: float = 0) -> list[str]:
    """Remove from `directory` the temporaries `<prefix_pattern><host>.<pid>-XXXX<suffix>` (the
    prefix a regular expression) of this host whose process is gone, and with `untouched_for`
    only those last modified that many seconds ago: the paths removed."""
    stale = re.compile(prefix_pattern + re.escape(_host_tag()) + r"\.(\d+)-.*" + re.escape(suffix) + "$")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            match = stale.match(entry.name)
            if (match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1)))
                    and (not untouched_for or _untouched_for(entry.path, untouched_for))):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)  # (what can go, goes)
                    else:
                        os.unlink(entry.path)
                    if not os.path.lexists(entry.path):
                        removed.append(entry.path)
    return removed


def _untouched_for(path: str, seconds: float) -> bool:
    """Whether `path` (and, for a folder, what it holds directly) was last modified that long ago."""
    import time

    try:
        times = [os.stat(path, follow_symlinks=False).st_mtime]
        if os.path.isdir(path) and not os.path.islink(path):
            times += [e.stat(follow_symlinks=False).st_mtime for e in os.scandir(path)]
    except OSError:
        return False
    return time.time() - max(times) > seconds


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def default_permissions(path) -> None:
    """What a file (or every file and folder of a directory) written through mkstemp, mkdtemp or
    safetensors (0600) gets instead: the permissions of any output under the umask, so that a
    lab's other users can read a model, a head or probabilities."""
    mask = _umask()
    path = Path(path)
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in items:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def replace_directory(new, target) -> None:
    """Put the finished directory `new` in the place of `target` (which may exist): the old one
    is renamed aside, the new one renamed in, and only then is the old one deleted, with
    SIGINT/SIGTERM/SIGHUP held over the renames. Deleting first (a long rmtree) and renaming after lost
    both heads to a signal in between. A `target` that is no folder, or one the file system will not
    rename: a RuntimeFailure naming it, the old one left as it was (`new` is the caller's to remove); so
    is a `new` that cannot be renamed in once the old one is aside, which is moved back (or, where it
    cannot be, the error says where it now is)."""
    new, target = Path(new), Path(target)
    aside = None
    with signals_held():
        if target.is_dir() and not target.is_symlink() and exchange_paths(new, target):
            # one atomic swap: even a SIGKILL finds the old directory or the new one in place;
            # `new` is now the old one, deleted below with the signals let through again
            aside = new
        elif target.exists():
            if target.is_symlink() or not target.is_dir():  # (rename puts no file over the folder below)
                raise RuntimeFailure(f"is {kind_in_words(os.lstat(target).st_mode)}, not a folder: the new folder "
                                     "cannot take its place", path=str(target))
            # an empty folder of its own (rename may replace an empty directory), named so that
            # a killed run's is removed by the next (make_temporary)
            aside = make_temporary(target.parent, f".{target.name}.old.", "", folder=True)
            try:
                os.replace(target, aside)
            except OSError as exc:
                # A file system that renames no folder (gcsfuse without --rename-dir-limit: EXDEV,
                # ENOTSUP or EPERM): it said "OUT: Invalid cross-device link" and left the empty folder.
                with contextlib.suppress(OSError):
                    os.rmdir(aside)
                raise RuntimeFailure(f"cannot replace this folder: the file system refused to rename it aside "
                                     f"({exc.strerror or exc}; one that renames no folders, such as gcsfuse "
                                     "without --rename-dir-limit?); it is kept as it was", path=str(target)) from None
        if aside is not new:
            try:
                os.replace(new, target)
            except BaseException as exc:
                # said raw, "[Errno 13] Permission denied: '.NAME.XXXX' -> 'NAME'" named the hidden temporary
                why = f"cannot put the new folder in its place ({getattr(exc, 'strerror', None) or exc or type(exc).__name__})"
                if aside is not None:
                    try:
                        os.replace(aside, target)
                    except OSError as back:
                        # (the old one left under its hidden name, which the next run's sweep of
                        # .NAME.old.* deletes: where it is, said while it can still be recovered)
                        raise RuntimeFailure(f"{why}, nor the old one back ({back.strerror or back}): it is now "
                                             f"{aside}; rename it to {target.name} before the next run here, which "
                                             "would delete it", path=str(target)) from None
                if not isinstance(exc, OSError):  # (an interrupt, as it came)
                    raise
                raise RuntimeFailure(why + ("; the old one is kept as it was" if aside is not None else ""),
                                     path=str(target)) from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def exchange_paths(a, b) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE, on one file system);
    False where the system or the file system cannot, so that the caller renames in two steps."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it (glibc < 2.28, some musl)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def signals_held():
    """SIGINT, SIGTERM and SIGHUP (and SIGUSR1/SIGUSR2, a scheduler's warning: the CLI stops for them as
    for SIGTERM) wait until the block ends (the renames of a job's several outputs:
    a signal between two of them would leave a mix of new and old files). Python-level
    handlers that only note the signal, then the previous ones, to which a noted signal is sent
    again: a thread mask would not do, since the kernel hands a process signal to any thread
    that does not block it (torch's among them)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    noted: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: noted.append(signum))
                for s in (*STOP_SIGNALS, *WARNING_SIGNALS)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        # The first the process takes: an ignored one (nohup's SIGHUP) noted first stays ignored,
        # and a SIGTERM after it, sent on in its place, was lost
        if taken := [s for s in noted if previous[s] != signal.SIG_IGN]:
            os.kill(os.getpid(), taken[0])


def parent_death_signal(signum: int) -> bool:
    """Linux: have the kernel send this process `signum` when its parent dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG); True where it is set, False elsewhere or where libc refuses. The
    caller checks its parent after (one that died before the call sends nothing)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        return prctl(1, int(signum), 0, 0, 0) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def stop_with_launcher() -> bool:
    """Under torchrun (Linux): a SIGTERM reaches this rank when the launcher that started it dies,
    even by SIGKILL (`kill -9` of torchrun's PID, the OOM killer, a node agent's hard stop), so the
    rank stops as it does for torchrun's own SIGTERM (train: one checkpoint at the step under way;
    embed: its work kept for --resume) instead of running on to the end as an orphan, its GPU and
    the run's lock held. True where it is set. A launcher that died after protrans_cli was first
    imported and before this call (the rank adopted by init or a subreaper: its parent changed)
    gets the SIGTERM at once. (A parent of PID 1 is not that sign: torchrun as a container's
    command is PID 1, and its every rank stopped at once.)"""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    import signal

    from protrans_cli import _PARENT_AT_IMPORT

    if not parent_death_signal(signal.SIGTERM):
        return False
    if os.getppid() != _PARENT_AT_IMPORT:  # (adopted before prctl took effect: the launcher is gone)
        os.kill(os.getpid(), signal.SIGTERM)
    return True


@contextlib.contextmanager
def signals_end_wait(what: str):
    """SIGINT, SIGTERM and SIGHUP end the process at once while the block waits inside a C call that
    does not return for them: joining a torchrun process group waits for every rank, and a
    Ctrl-C there ran no Python handler until the join timed out (30 minutes; under torchrun the
    launcher killed the rank after its 30 s grace, without a word). The signal's byte reaches a
    thread through Python's wakeup fd, which writes "protrans: error: interrupted: `what`" and
    exits 130 (143 for SIGTERM, 129 for SIGHUP). Only for a block that has written nothing: no
    cleanup runs."""
    import select
    import signal
    import threading

    ends = {s: (word, signal_exit_code(s)) for s, word in STOP_WORDS.items()}
    # A signal reaches the wakeup fd only through a handler set in Python (not one that is
    # SIG_DFL, which kills the process anyway, or SIG_IGN); only the main thread can set the fd.
    # (Windows: the wakeup fd must be a socket, and select() takes no pipe)
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread() or not any(
            callable(signal.getsignal(s)) for s in ends):
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except (ValueError, OSError):
        os.close(read_end)
        os.close(write_end)
        yield
        return
    finished = threading.Event()

    def watch():
        while not finished.is_set():
            if not select.select([read_end], [], [], 0.1)[0]:
                continue
            for signum in os.read(read_end, 64):
                if signum in ends and callable(signal.getsignal(signum)) and not finished.is_set():
                    word, code = ends[signum]
                    with contextlib.suppress(OSError):
                        os.write(2, f"protrans: error: {word}: {what}\n".encode())
                    os._exit(code)

    watcher = threading.Thread(target=watch, name="protrans-wait-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        signal.set_wakeup_fd(previous)
        with contextlib.suppress(OSError):
            os.write(write_end, b"\0")  # (no signal's number: the watcher wakes and ends)
        watcher.join()
        os.close(read_end)
        os.close(write_end)


def _umask() -> int:
    # Read where the kernel shows it (Linux 4.7+): setting it to 0 and back left every other
    # thread of the process (a web app's, a notebook's) creating world-writable files meanwhile.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path, block: int = 1 << 24) -> str:
    """The sha256 of a file's bytes, read in 16 MiB blocks (hex, as `sha256sum` prints it)."""
    import hashlib

    digest = hashlib.sha256()
    buffer = bytearray(block)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()

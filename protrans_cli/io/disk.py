"""Room on the output's disk: a write refused before HDF5 meets it where the disk, the user's
quota or the file-size limit (ulimit -f) cannot take it; disk taken for real through Linux's
fallocate(2), and an unnamed (O_TMPFILE) file given a name.

A write that fails inside HDF5 leaves its metadata half written (h5py then crashed with the file at
risk), so io/h5.py and heads/predict.py ask `ensure_room` before each batch; io/h5.py's _MarkerRoom
keeps the disk for its list of untrusted proteins with `fallocate` and `link_fd`. Nothing here
opens an HDF5 file.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path

from protrans_cli.errors import RuntimeFailure

ROOM_MARGIN = 16 << 20  # room kept beside a write for HDF5's own metadata and the attributes


def ensure_room(path, nbytes: int, then: str, shown=None, what: str = "the next batch",
                reserve: int | None = None) -> int:
    """Refuse a write of about `nbytes` into the HDF5 file `path` that the disk or the file-size
    limit (ulimit -f) cannot take, before HDF5 meets it: a write that fails inside HDF5 leaves
    its metadata half written, and h5py then crashed (segmentation fault) with the file at risk.
    `then` says what the user has and does next; `shown` is the file the message names (`path`
    when it is not a hidden temporary). `reserve`: the bytes to take for real (`_reserve`;
    default: the write's, with a margin; 0: none; more than the write's: tried first, then the
    write's). Returns the bytes that were taken."""
    import resource

    path = Path(path)
    need = int(nbytes * 1.05) + ROOM_MARGIN
    try:
        stat = os.statvfs(path.parent)
    except OSError:
        stat = None
    free = free_bytes(stat)
    if stat is not None and getattr(stat, "f_flag", 0) & getattr(os, "ST_RDONLY", 1):
        return 0  # (a read-only mount counts 0 bytes free: the writing says "Read-only file system")
    if free is not None and free < need:
        free_text, need_text = _sizes(free, need)
        # (the margin named: "16.2 MiB needed" for a batch of 200 KB read as a miscount)
        raise RuntimeFailure(f"no room for {what}: {free_text} free on the output's disk, {need_text} needed "
                             f"({_size(int(nbytes * 1.05))} of data and {ROOM_MARGIN >> 20} MiB kept for HDF5's "
                             f"own); {then}", path=str(shown or path))
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        size = path.stat().st_size if path.exists() else 0
        # The file's growth, not the disk's slack: HDF5's own data grows with the file (16 MiB
        # kept for it refused a 22 KB output under a 10 MiB limit)
        grows = int(nbytes * 1.05) + min(ROOM_MARGIN, (2 << 20) + (size + nbytes) // 10)
        if size + grows > limit:
            # (the remedy is the limit, not free space)
            then = then.replace("free some space and", "raise the limit and").replace("once there is room",
                                                                                      "once the limit is raised")
            raise RuntimeFailure(f"no room for {what}: the file-size limit (ulimit -f) is "
                                 f"{limit / 2**20:.1f} MiB, the file {size / 2**20:.1f} MiB and {what} about "
                                 f"{grows / 2**20:.1f} MiB; {then}", path=str(shown or path))
    # The free space is the disk's, not the user's: a quota (the rule on cluster scratch) or
    # another process filling the disk met HDF5 in the middle of a write, after which it loses
    # data without a word and crashes on close (HDF5 2.0: "Slist already enabled?", a segmentation
    # fault). The room is taken for real in a file of no name, and given back for HDF5 to use:
    # a quota only this user's writes consume, and the race shrinks to the write itself.
    taken = room_for(nbytes) if reserve is None else reserve
    problem = _reserve(path.parent, taken) if taken else None
    if problem is not None and taken > room_for(nbytes):
        taken = room_for(nbytes)
        problem = _reserve(path.parent, taken)
    if problem is not None:
        raise RuntimeFailure(f"no room for {what}: {problem}; {then}", path=str(shown or path))
    return taken


def free_bytes(stat) -> int | None:
    """The bytes free to this user in a file system's `os.statvfs` result; None where it says
    nothing of its size (no result, or 0 blocks in all: a FUSE mount without statfs, which
    libfuse answers with zeros, sysfs, procfs). Counted as 0 free, such a folder was refused
    with "no room for a new output file: 0.0 MiB free on the output's disk"."""
    if stat is None or getattr(stat, "f_blocks", 1) == 0:  # (a stand-in result without the field: sized)
        return None
    return stat.f_bavail * stat.f_frsize


def room_for(nbytes: int) -> int:
    """What a write of `nbytes` into an HDF5 file takes on disk at most: the data, a tenth for
    HDF5's own, and a MiB."""
    return int(nbytes * 1.1) + (1 << 20)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _size(nbytes: int) -> str:
    """MiB with one decimal, or KiB below a tenth of a MiB."""
    return _mib(nbytes) if nbytes >= (1 << 20) // 10 else f"{-(-nbytes // 1024):,} KiB"


def _sizes(free: int, need: int) -> tuple[str, str]:
    """Free and needed bytes in MiB, or in KiB where MiB would print them equal (a shortfall
    of a few KiB read "16 MiB free on the output's disk, 16 MiB needed")."""
    if _mib(free) != _mib(need):
        return _mib(free), _mib(need)
    # (free rounded down, need up: rounded to the nearest, a shortfall under half a KiB read
    # "16,487 KiB free ..., 16,487 KiB needed" still)
    return f"{free // 1024:,} KiB", f"{-(-need // 1024):,} KiB"


def _reserve(folder: Path, nbytes: int) -> str | None:
    """Allocate `nbytes` of disk in `folder` and free them again: the reason ("Disk quota
    exceeded") when the disk or the quota cannot give them; None when it can, or when the file
    system cannot say (not Linux, or a file system without fallocate: NFS before 4.2, ZFS)."""
    import tempfile

    if native_fallocate() is None or nbytes <= 0:
        return None
    try:
        # (unnamed on Linux, O_TMPFILE: a kill leaves nothing behind; freed as it is closed)
        with tempfile.TemporaryFile(dir=folder, prefix=".protrans-room-") as fh:
            fallocate(fh.fileno(), nbytes)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # (not EFBIG: the file-size limit is checked above)
            return f"{exc.strerror or os.strerror(exc.errno)} (a reservation of {_mib(nbytes)} failed)"
    return None


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library through ctypes, errno kept, on Linux (fallocate(2), linkat(2)); else None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _errno_error(*path) -> OSError:
    """The OSError of the C call that just failed (`_libc`)."""
    import ctypes

    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), *map(str, path))


_AT_FDCWD, _AT_SYMLINK_FOLLOW = -100, 0x400


def sync(fd: int, shown) -> None:
    """fsync(2) of the file `fd` before it is renamed into place. EINVAL, ENOTSUP, EOPNOTSUPP or
    ENOSYS say the file cannot be synced at all (some FUSE mounts), not that a write was lost:
    its data went out with its writes, as far as that file system keeps any, and the run goes on
    (a stacked embed and merge stopped after all their work). Any other failure (EIO, ENOSPC)
    is raised naming `shown`, the output (it was "Input/output error", naming nothing)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            return
        raise OSError(exc.errno, exc.strerror, str(shown)) from None


def link_fd(fd: int, target: Path) -> None:
    """Give the open file `fd` (O_TMPFILE) the name `target`: linkat(2) following the /proc
    link (os.link calls link(2), which links the /proc symlink itself: EXDEV)."""
    libc = _libc()
    if libc is None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), str(target))
    if libc.linkat(_AT_FDCWD, f"/proc/self/fd/{fd}".encode(), _AT_FDCWD, os.fsencode(target),
                   _AT_SYMLINK_FOLLOW) != 0:
        raise _errno_error(target)


@functools.lru_cache(maxsize=1)
def native_fallocate():
    """Linux's fallocate(2) through ctypes, or None. Not os.posix_fallocate: where the file
    system has no fallocate, glibc writes a byte into every block instead, which on NFS or ZFS
    costs as much I/O as the room it takes (64 MiB written for each 64 MiB of room)."""
    import ctypes

    function = getattr(_libc(), "fallocate64", None)
    if function is not None:
        function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
        function.restype = ctypes.c_int
    return function


def fallocate(fd: int, nbytes: int) -> None:
    """Allocate the first `nbytes` of the file `fd` (OSError: ENOSPC, EDQUOT, EOPNOTSUPP, ...)."""
    function = native_fallocate()
    if function is None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    if function(fd, 0, 0, nbytes) != 0:
        raise _errno_error()

"""What an existing output already holds, for --resume: the ids and sequence checksums of its
complete proteins, read safely even from a file that a SIGKILL cut off in the middle of a write.

    done = _done_in(partial_path(output), writer_kw, input_ids, seal=True)
    done.members(window)  # the ids of a window's proteins that are not computed again

A file its writer closed cleanly has a sealed ledger (io.h5), read instead of the file. Any other
file is read whole, in a forked child: HDF5 does not check all the metadata it reads, and on a
file cut off mid-flush it crashed the process (a segmentation fault) where no Python error could
be caught. A child that dies by a signal leaves in its log the HDF5 call it was in; the next
child leaves that record out, or reads that group's records by name, and mends the file
(io.h5.repair_after_kill). Where there is no fork (Windows), the file is read in this process.
The pipeline (embed.py) compares the result with the input before computing anything.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protrans_cli import console
from protrans_cli.errors import RuntimeFailure, option
from protrans_cli.io.h5 import checksum64, digest128

if TYPE_CHECKING:
    from protrans_cli.embed import _Protein

_SAY_READ_BACK_BYTES = 64 << 20  # files from which reading their proteins back is announced


@dataclass
class _Done:
    """The proteins an output already holds (--resume), in 24 bytes each: sorted 16-byte digests
    of their ids and the first 8 bytes of their sequence checksums (0: not comparable)."""

    ids: np.ndarray        # (n,) S16, sorted
    sums: np.ndarray       # (n,) uint64, in the same order

    @classmethod
    def empty(cls) -> "_Done":
        return cls(np.empty(0, dtype="S16"), np.empty(0, dtype=np.uint64))

    @classmethod
    def union(cls, parts: list["_Done"]) -> "_Done":
        if not parts:
            return cls.empty()
        ids = np.concatenate([p.ids for p in parts])
        sums = np.concatenate([p.sums for p in parts])
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], sums[order])

    def __len__(self) -> int:
        return len(self.ids)

    def without(self, digests: np.ndarray) -> "_Done":
        """These proteins less those whose id digests are in `digests`."""
        if not len(digests) or not len(self.ids):
            return self
        keep = ~np.isin(self.ids, digests)
        return _Done(self.ids[keep], self.sums[keep])

    def _find(self, proteins: list[_Protein]) -> tuple[np.ndarray, np.ndarray]:
        query = np.frombuffer(b"".join(digest128(p.id) for p in proteins), dtype="S16")
        at = np.minimum(np.searchsorted(self.ids, query), max(len(self.ids) - 1, 0))
        hit = self.ids[at] == query if len(self.ids) else np.zeros(len(query), dtype=bool)
        return hit, at

    def members(self, proteins: list[_Protein]) -> set[str]:
        """The ids of `proteins` already done."""
        if not len(self.ids):
            return set()
        hit, _ = self._find(proteins)
        return {p.id for p, h in zip(proteins, hit) if h}

    def stored_checksums(self, proteins: list[_Protein]) -> list[int | None]:
        """Per protein: None when not done, else its stored checksum digest (0: not comparable)."""
        if not len(self.ids):
            return [None] * len(proteins)
        hit, at = self._find(proteins)
        return [int(self.sums[i]) if h else None for h, i in zip(hit, at)]


_CRASH_RETRIES = 64  # children a damaged file may crash (each teaches one record or index to avoid)


def _done_in(path: Path, writer_kw: dict, input_ids=None, *, seal: bool = False) -> _Done:
    """Proteins already complete in an existing output (for --resume), after checking that the
    file was made the same way; a file that a SIGKILL during a flush left unreadable is mended
    first when it can be (io.h5.repair_after_kill).

    HDF5 does not check all the metadata it reads: on some files a SIGKILL cut off mid-flush it
    crashed the process (a segmentation fault while iterating a group, opening a record or
    copying one into the mended file) where no Python error could be caught. So the file is read
    in a forked child: a child that dies by a signal leaves in its log the HDF5 call it was in,
    and the next child leaves that record out (or finds a crashing group's records by name) and
    copies the rest into a fresh file. Where there is no fork (Windows), it is read here.

    A file that its writer closed cleanly has a sealed ledger of its complete proteins
    (io.h5, "the ledger"), read instead when its seal matches the file as it is now. `seal`
    (a partial file, which the run goes on writing): a file read whole gets a sealed ledger of
    what was read, for the next resume."""
    from protrans_cli.io.h5 import read_ledger, untrusted_digests, write_ledger

    ledger = read_ledger(path)
    if ledger is not None:
        _check_made_alike(path, writer_kw)
        return _Done.union([_Done(*ledger)]).without(untrusted_digests(path))
    # Said before it starts: with no sealed ledger every protein is read back from the file, at
    # about 120 us each (some 2 minutes per million proteins), and nothing else was said
    # meanwhile: a resume of a large partial file looked hung for minutes, or hours.
    size = path.stat().st_size
    why = ("no sealed ledger: its run was killed, or the file changed since; about 2 minutes per million "
           "proteins" if path.name.endswith(".partial") else "a finished file, extended")
    if size >= _SAY_READ_BACK_BYTES:  # (a small file is read in seconds: no line)
        console.info(f"{path}: reading back the proteins it holds ({size / 2**20:,.0f} MiB; {why}) before "
                     "computing any")
    # (the proteins written after the last flush before a write failed: embedded again)
    done = _read_whole(path, writer_kw, input_ids).without(untrusted_digests(path))
    if seal:
        write_ledger(path, done.ids, done.sums)
    return done


def _read_whole(path: Path, writer_kw: dict, input_ids=None) -> _Done:
    """_done_in's reading of every protein of the file (in a forked child where there is fork)."""
    if not hasattr(os, "fork"):
        return _done_in_process(path, writer_kw, input_ids)
    from protrans_cli.io.h5 import UnreadableFile

    skip, no_iterate, seen = set(), set(), set()
    failed = None  # what the last reader did: "crashed", or "hung" (ended by the alarm)
    try:
        for _ in range(_CRASH_RETRIES):
            try:
                crashed, result = _done_in_child(path, writer_kw, input_ids, skip, no_iterate, failed)
            except _NoFork:  # (no memory for a fork under strict overcommit, with a model loaded)
                return _done_in_process(path, writer_kw, input_ids)
            if not crashed:
                return result
            result, hung = result
            failed = "hung" if hung else "crashed"
            if result is None or result in seen:  # no progress: the same call crashed again
                break
            seen.add(result)
            op, group, name = result
            if op == "iterate":
                no_iterate.add(group)
                what = f"iterating its group {group!r}; its records are looked up by the input's ids instead"
            else:
                skip.add((group, name))
                what = f"reading record {name.decode('utf-8', 'replace')!r}; it is left out"
            console.warn(f"{path}: HDF5 {failed} {what} (a SIGKILL cut the file off in the "
                         "middle of a write, or a write failed)")
    finally:
        path.with_name(path.name + ".salvage").unlink(missing_ok=True)  # (a crashed child's half-made copy)
    # (what the last reader did: a hang said "crashed" too)
    raise UnreadableFile(f"cannot resume: HDF5 {failed} reading this damaged file, and it could not be mended; delete "
                         "it to start again", path=str(path))


class _NoFork(Exception):
    pass


# What HDF5 crashing looks like, and SIGALRM: hanging (io.h5.CrashGuard.HANG_SECONDS); any
# other signal (the out-of-memory killer's SIGKILL, a SIGTERM) is no sign of a damaged file and
# is reported as it is.
_CRASH_SIGNALS = {getattr(signal, name) for name in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGILL", "SIGFPE", "SIGALRM")
                  if hasattr(signal, name)}


def _done_in_child(path: Path, writer_kw: dict, input_ids, skip: set, no_iterate: set, repair_first: str | None):
    """(False, _Done) from a forked child running _done_in_process; (False, ...) re-raises its
    error here; (True, (the HDF5 call it crashed or hung in, or None; whether it hung)) when it
    died by a signal."""
    import pickle

    from protrans_cli import errors
    from protrans_cli.corpus import _die_with_parent
    from protrans_cli.io import h5 as h5_module
    from protrans_cli.io.files import temporary_folder

    # (beside the output: for tens of millions of proteins the result takes hundreds of MB)
    with temporary_folder(path.parent, ".protrans-resume-") as tmp:
        log_path, result_path = os.path.join(tmp, "log"), os.path.join(tmp, "result")
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for stream in (sys.stdout, sys.stderr):  # (None in a process without them: nothing held)
            if stream is not None:
                stream.flush()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(log_fd)
            raise _NoFork() from None
        if pid == 0:  # the child: read, write the outcome, and leave without any cleanup of the parent's
            code = 1
            try:
                # Gone with its parent, even by SIGKILL (Linux): it read on alone, holding the
                # output's lock (the next --resume was refused as "running now") and leaving its
                # result beside the output (about 1.2 GB for 50 million proteins).
                _die_with_parent(parent)
                if hasattr(signal, "SIGALRM"):  # (its default action: the end of a hung child)
                    signal.signal(signal.SIGALRM, signal.SIG_DFL)
                h5_module._CRASH_GUARD = h5_module.CrashGuard(log_fd, skip, no_iterate)
                notes: list[str] = []  # (said by the parent: a child's stderr may be a copy of an in-memory one)
                try:
                    done = _done_in_process(path, writer_kw, input_ids, repair_first=repair_first, notes=notes)
                    outcome = ("ok", done.ids, done.sums, notes)
                except errors.ProtransError as exc:
                    outcome = ("error", type(exc).__name__, exc.message, exc.path, exc.record, exc.line)
                except KeyboardInterrupt:  # Ctrl-C reaches the child too
                    outcome = ("interrupted",)
                except BaseException as exc:  # noqa: BLE001 - reported by the parent
                    outcome = ("other", errors.described(exc))
                if hasattr(signal, "alarm"):
                    signal.alarm(0)  # (HDF5's part is over)
                with open(result_path + ".tmp", "wb") as fh:  # (whole, or not there: a full disk)
                    pickle.dump(outcome, fh, protocol=5)
                os.replace(result_path + ".tmp", result_path)
                code = 0
            finally:
                console.flush_standard_streams()  # (an error there must not keep the child from its exit)
                os._exit(code)
        os.close(log_fd)
        try:
            _, status = os.waitpid(pid, 0)
        except BaseException:  # Ctrl-C, SIGTERM, SIGHUP: the child goes too, before it replaces anything
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            if number not in _CRASH_SIGNALS:
                raise RuntimeFailure(f"reading it {option('for --resume', 'to resume')} was stopped by "
                                     f"{signal.Signals(number).name} (the out-of-memory killer sends SIGKILL)",
                                     path=str(path))
            with open(log_path, "rb") as fh:
                return True, (h5_module.CrashGuard.last(fh.read()), number == getattr(signal, "SIGALRM", None))
        try:
            with open(result_path, "rb") as fh:
                outcome = pickle.load(fh)
        except (OSError, EOFError, pickle.UnpicklingError):
            raise RuntimeFailure(f"reading it {option('for --resume', 'to resume')} failed: its child process returned "
                                 "no result (a full disk?)", path=str(path)) from None
    if outcome[0] == "interrupted":
        raise KeyboardInterrupt
    if outcome[0] == "ok":
        for note in outcome[3]:
            console.warn(note)
        return False, _Done(outcome[1], outcome[2])
    if outcome[0] == "error":
        _, name, message, where, record, line = outcome
        cls = getattr(h5_module, name, None) or getattr(errors, name, None) or errors.InputError
        raise cls(message, path=where, record=record, line=line)
    raise RuntimeFailure(f"reading it {option('for --resume', 'to resume')} failed: {outcome[1]}", path=str(path))


def _done_in_process(path: Path, writer_kw: dict, input_ids=None, *, repair_first: str | None = None,
                     notes: list[str] | None = None) -> _Done:
    """_done_in's work. `repair_first`: what an earlier reader did on this file ("crashed" or
    "hung"), so its readable proteins are copied into a fresh file before anything else is read.
    `notes`: where the warnings go (else said at once)."""
    from protrans_cli.io.h5 import UnreadableFile, repair_after_kill

    if not repair_first:
        try:
            return _read_done(path, writer_kw)
        except UnreadableFile as exc:
            error = exc
    else:
        error = UnreadableFile(f"cannot resume: HDF5 {repair_first} reading this damaged file, and it could not be "
                               "mended; delete it to start again", path=str(path))
    # (layout, kinds and storage dtype too: a file without them is not resumed)
    attrs = _writer_attributes(writer_kw)
    note = repair_after_kill(path, writer_kw["kinds"], writer_kw["layout"], attrs, input_ids, force=bool(repair_first))
    if note is None:
        raise error
    (notes.append if notes is not None else console.warn)(f"{path}: {note}")
    return _read_done(path, writer_kw)


def _writer_attributes(writer_kw: dict) -> dict:
    """The file attributes an EmbeddingsWriter(**writer_kw) writes (what a resume compares)."""
    from protrans_cli.io.h5 import run_attributes

    return run_attributes(writer_kw["attrs"], kinds=writer_kw["kinds"], layout=writer_kw["layout"],
                          storage_dtype=writer_kw["storage_dtype"])


def _check_made_alike(path: Path, writer_kw: dict) -> None:
    """Refuse to resume a file written with other settings than writer_kw's."""
    from protrans_cli.io.h5 import _check_resumable

    _check_resumable(path, _writer_attributes(writer_kw), writer_kw["resume_equal"])


def _read_done(path: Path, writer_kw: dict) -> _Done:
    from protrans_cli.io.h5 import UNREADABLE, h5_file, stored_proteins, unreadable_on_resume

    _check_made_alike(path, writer_kw)
    try:
        with h5_file(path, "r") as f:
            from protrans_cli.io.stacked import is_stacked, stacked_done

            if writer_kw["layout"] == "stacked" and is_stacked(f):  # a finished stacked file
                ids, sums = bytearray(), array("Q")
                for block_ids, block_sums in stacked_done(f):
                    ids += b"".join(map(digest128, block_ids))
                    sums.extend(checksum64(s or None) for s in block_sums)
                return _Done.union([_Done(np.frombuffer(bytes(ids), dtype="S16"), np.frombuffer(sums, dtype=np.uint64))])
            from protrans_cli.io.stacked import extension_base

            base = extension_base(f, path) if writer_kw["layout"] == "stacked" else None
            per_kind = []
            for kind in writer_kw["kinds"]:
                group = f if writer_kw["layout"] == "flat" else f.get(kind)
                if group is None:
                    return _Done.empty()
                ids, sums = bytearray(), array("Q")
                # a truncated protein's checksum is its kept prefix's: compared with the prefix
                # the same --max-length keeps of the FASTA's sequence (_check_before_compute)
                for ident, checksum in stored_proteins(group, prefixes=True):
                    ids += digest128(ident)
                    sums.append(checksum64(checksum))
                per_kind.append((np.frombuffer(bytes(ids), dtype="S16"), np.frombuffer(sums, dtype=np.uint64)))
    except UNREADABLE as exc:  # an object header damaged on disk
        raise unreadable_on_resume(path, exc) from None
    ids, sums = per_kind[0]
    keep = np.ones(len(ids), dtype=bool)
    for other, _ in per_kind[1:]:  # done only when every requested kind is there
        keep &= np.isin(ids, other)
    done = [_Done(ids[keep], sums[keep])]
    if base is not None:  # a partial file of the proteins a --resume adds to a finished stacked file
        done.append(_read_done(base, writer_kw))
    return _Done.union(done)

"""`protrans prep` as a library: FASTA in, the ProtTrans pretraining corpus out, streaming.

    from protrans_cli.corpus import CorpusOptions, build_corpus
    stats = build_corpus(["uniref50.fasta.gz"], CorpusOptions(output="corpus.txt.gz", threads=4))

The corpus is one protein per line, residues separated by single spaces, every protein followed
by an empty line (docs/corpus.md). Records are normalised by the rules of `protrans_cli.residues`
(docs/prep.md); a record that cannot be normalised is rejected with a reason.

How it is fast: the input is cut into blocks of whole records (1 MiB) and each block is
processed with a handful of whole-buffer operations (bytes.join / replace / translate, numpy on
the block) instead of per-residue Python; only per-record bookkeeping (a slice, a hash) runs in
Python. Blocks go to `threads` worker processes and their output is written in input order, with
a bounded number of blocks in flight, so memory does not grow with the input.

`--dedup` is exact and memory-bounded: a first pass writes a 128-bit digest of every accepted
sequence into on-disk partitions, each partition is sorted on its own to find the duplicates,
and the second pass drops them (docs/prep.md, "Deduplication"). Imports no torch.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import stat as _stat
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from protrans_cli.console import NAMED, printable
from protrans_cli.errors import (STOP_SIGNALS, WARNING_SIGNALS, InputError, RuntimeFailure, UsageError, at_least,
                                 expect_options, given, one_of, option, plain_numbers, seed_in_range)
from protrans_cli.io.fasta import NUL_HEADER, decode_word, not_fasta
from protrans_cli.io.files import (AtomicFile, NamedStdout, compress_bytes, compression_for_output, disk_full,
                                   display_name, input_named_by, make_temporary, names_stdout, open_input,
                                   output_directory, same_file, signals_held, special_output, stdin_binary,
                                   stdout_binary, tsv_quoted, unreachable_input, utf16_codec)
from protrans_cli.residues import (
    NUCLEOTIDE_LETTERS,
    NUCLEOTIDE_MIN_LENGTH,
    RARE,
    RARE_POLICIES,
    REASON_EMPTY,
    REASON_INTERNAL_STOP,
    REASON_INVALID,
    STANDARD,
    UNKNOWN,
    SequenceRejected,
    normalise,
)
from protrans_cli.threads import check_threads

# Reasons a record is left out, beyond the normalisation ones of residues.py.
REASON_NO_ID = "missing_id"
REASON_TOO_SHORT = "too_short"
REASON_TOO_LONG = "too_long"
REASON_DUPLICATE = "duplicate"
NORMALISATION_REASONS = (REASON_EMPTY, REASON_INTERNAL_STOP, REASON_INVALID, REASON_NO_ID)
ALL_REASONS = NORMALISATION_REASONS + (REASON_TOO_SHORT, REASON_TOO_LONG, REASON_DUPLICATE)

LONG_POLICIES = ("skip", "crop")

_SEP = b"\n"  # record separator in the joined sequences (every other newline is gone by then)
_DELETE = b" \t\r\v\f-."  # residues.normalise's set, but for the newline: it is _SEP here
_UPPER = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_RARE_TO_X = bytes.maketrans(RARE.encode(), b"X" * len(RARE))
_NUCLEOTIDE_LUT = np.zeros(256, dtype=bool)
_NUCLEOTIDE_LUT[list("".join(sorted(NUCLEOTIDE_LETTERS)).encode())] = True
_PLAIN = (STANDARD + UNKNOWN).encode() + _SEP  # letters that need no work at all
_RARE_LUT = np.zeros(256, dtype=bool)
_RARE_LUT[list(RARE.encode())] = True
_BLANK_LUT = np.zeros(256, dtype=bool)
_BLANK_LUT[list(b" \t\r\n\v\f")] = True
_HIST_CAP = 1 << 16  # lengths below this are counted exactly in an array, longer ones in a dict
# Spaced residues are a pathological case for zlib's lazy matching: level 6 runs at ~5 MB/s of
# text, level 1 at ~40 MB/s for a file only 5% bigger (zstd: 1 is 2x faster than 3, 5% bigger).
FAST_LEVELS = {"gzip": 1, "zstd": 1}  # corpus levels (bz2, xz: their default levels)


@dataclass
class CorpusOptions:
    """Everything `build_corpus` can be asked to do; the defaults are the ProtTrans corpus."""

    output: str | None = None          # None or "-": stdout; ".gz/.bz2/.xz/.zst": compressed
    rare: str = "x"                    # "x": U/Z/O/B become X (ProtTrans); "keep": left as they are
    strict: bool = False               # the first record that fails normalisation is an error
    rejects: str | None = None         # TSV of every record left out: id, reason, detail, file, line
    min_length: int = 1                # residues, after normalisation
    max_length: int | None = None      # residues; longer proteins are skipped or cropped (`long`)
    long: str = "skip"                 # "skip" or "crop" into consecutive windows of max_length
    dedup: bool = False                # drop exact duplicate sequences (first occurrence kept)
    valid_fraction: float = 0.0        # share of proteins, chosen by a hash of the id
    valid_output: str | None = None
    num_shards: int = 1                # proteins dealt round-robin into this many files
    shard_size: int | None = None      # or: start a new file when this many bytes are written
    threads: int = 1                   # worker processes for the CPU-bound part
    stats: str | None = None           # the run's summary as JSON ("-": stdout), written with the outputs
    tmp_dir: str | None = None         # dedup partitions, --shuffle buckets, -j hand-over files (see _spill_base)
    shuffle: bool = False              # the training proteins in a random order (seeded), not the input's
    seed: int = 0                      # --shuffle's seed: the same input and seed give the same corpus
    shuffle_bytes: int = 512 << 20     # --shuffle: text held in memory at a time (one bucket)
    clusters: str | None = None        # TSV of cluster id, member id: each cluster's members written together
    block_bytes: int = 1 << 20         # input block handed to a worker (1 MiB: its arrays stay in cache)
    progress: bool = False

    def __post_init__(self):
        # numpy's scalars, which expect_options accepts (a setting from an array or a data frame):
        # seed=np.int64(3) was refused as "not a whole number", and the --stats JSON of
        # np.int64(100) was "TypeError: Object of type int64 is not JSON serializable"
        plain_numbers(self)

    @property
    def sharded(self) -> bool:
        """Whether the corpus goes to several files named from -o (corpus.00000.txt ...)."""
        return self.num_shards > 1 or self.shard_size is not None

    def validate(self) -> None:
        one_of(self.rare, RARE_POLICIES, "--rare", keyword="rare")
        one_of(self.long, LONG_POLICIES, "--long", keyword="long")
        at_least(self.min_length, 1, "--min-length", keyword="min_length")
        if self.max_length is not None and self.max_length < self.min_length:
            raise UsageError(f"{option('--max-length', 'max_length')} must be at least "
                             f"{option('--min-length', 'min_length')} ({self.min_length}), got {self.max_length}")
        if self.clusters is not None:
            if str(self.clusters) in ("", "-"):
                raise UsageError(f"{option('--clusters', 'clusters')} needs a file (it is read before the FASTA), "
                                 f"got {str(self.clusters)!r}")
            if self.long == "crop":
                # (a protein's windows are lines of one document; a cluster's lines are its members)
                raise UsageError(f"{option('--clusters', 'clusters')} cannot be combined with "
                                 f"{given('--long', 'long', 'crop')}: a cluster's lines are its members, a "
                                 "cropped protein's lines its windows (use --long skip)")
        if self.long == "crop" and self.max_length is None:
            raise UsageError(f"{given('--long', 'long', 'crop')} needs {option('--max-length', 'max_length')} (the "
                             "window size)")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise UsageError(f"{option('--valid-fraction', 'valid_fraction')} must be in [0, 1), got "
                             f"{self.valid_fraction}")
        if self.valid_fraction > 0 and not self.valid_output:
            raise UsageError(option("--valid-fraction needs --valid-output FILE", "valid_fraction needs valid_output"))
        if self.valid_output and self.valid_fraction <= 0:
            raise UsageError(option("--valid-output needs --valid-fraction above 0",
                                    "valid_output needs valid_fraction above 0"))
        if self.num_shards < 1:
            raise UsageError(f"{option('--shards', 'num_shards')} must be at least 1, got {self.num_shards}")
        if self.shard_size is not None and self.shard_size < 1:
            raise UsageError(f"{option('--shard-size', 'shard_size')} must be positive, got {self.shard_size}")
        if self.num_shards > 1 and self.shard_size is not None:
            raise UsageError(f"{option('--shards and --shard-size', 'num_shards and shard_size')} cannot be combined: "
                             "choose one")
        if self.sharded:
            # (-o /dev/stdout: the shards were files /dev/stdout.00000.txt ..., nothing on stdout)
            to_stdout = self.output is None or str(self.output) == "-"
            problem = None if to_stdout else special_output(self.output)
            if to_stdout or problem:
                raise UsageError(f"sharding needs {option('-o FILE', 'output a file name')} (shard names are made "
                                 "from it)"
                                 + (f"; {self.output} {problem}" if problem else ""))
        main = option("-o", "output")
        outputs = {main: "-" if self.output is None else str(self.output),
                   option("--valid-output", "valid_output"): self.valid_output,
                   option("--rejects", "rejects"): self.rejects, option("--stats", "stats"): self.stats}
        outputs = {flag: str(path) for flag, path in outputs.items() if path is not None}
        # (`-o /dev/stdout --stats -` wrote the stats over the corpus's first bytes in `> file`)
        on_stdout = [flag if path == "-" else f"{flag} {path}" for flag, path in outputs.items()
                     if names_stdout(path) and os.path.realpath(path) != os.devnull]
        if len(on_stdout) > 1:
            raise UsageError(f"{' and '.join(on_stdout)} cannot {'both' if len(on_stdout) == 2 else 'all'} go to "
                             "stdout (-): give files")
        files = [(flag, path) for flag, path in outputs.items() if path != "-"]
        for i, (flag, path) in enumerate(files):
            output_directory(path)  # every output's directory, before anything is opened
            if os.path.isdir(path):  # (found once the output was opened: exit 1, as bad input)
                raise UsageError(f"{flag} {path} is a directory: give a file name")
            for other, path2 in files[:i]:
                # (/dev/null twice discards both: nothing there to replace)
                if same_file(path, path2) and os.path.realpath(path) != os.devnull:
                    raise UsageError(f"{other} and {flag} both name {path}: one would replace the other")
            if self.sharded and flag != main and Path(path).resolve().parent == Path(self.output).resolve().parent:
                # a shard of -o under that name replaced it (or it one), or it was removed with an
                # earlier run's shards beyond this run's count
                index = shard_index(self.output, Path(path).name)
                if index is not None:
                    raise UsageError(f"{flag} {path} has the name of shard {index} of {main} {self.output}: one "
                                     "would replace the other; choose another name")
        if self.tmp_dir is not None and not os.path.isdir(self.tmp_dir):
            # (exit 1, "cannot write in this folder: No such file or directory", as a failure of
            # the run: a folder that is not there is a usage error, as a missing -o folder is)
            raise UsageError(f"{option(f'--tmp-dir {self.tmp_dir}', f'tmp_dir {self.tmp_dir}')}: "
                             f"{'not a directory' if os.path.exists(self.tmp_dir) else 'no such directory'}")
        check_threads(self.threads)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UsageError(f"{option('--seed', 'seed')} must be a whole number, got {type(self.seed).__name__} "
                             f"{self.seed!r:.40}")
        seed_in_range(self.seed)  # (numpy's generator takes any size)
        if self.shuffle_bytes < 1024:
            raise UsageError("shuffle_bytes must be at least 1024")
        if self.block_bytes < 1024:
            raise UsageError("block_bytes must be at least 1024")


@dataclass
class CorpusStats:
    """What a run did: counts, each rejection reason, length percentiles, speed."""

    inputs: list[str] = field(default_factory=list)
    input_bytes: int = 0               # FASTA bytes read (after decompression)
    records_in: int = 0
    proteins_out: int = 0              # training + validation
    residues_out: int = 0
    lines_out: int = 0                 # equals proteins_out unless --long crop made windows
    valid_proteins: int = 0
    valid_residues: int = 0
    rare_to_x: int = 0                 # U/Z/O/B residues written as X
    nucleotide_like: int = 0           # proteins written that read as DNA or RNA (residues.looks_nucleotide)
    nucleotide_ids: list[str] = field(default_factory=list, repr=False)  # the first few of them
    crop_dropped: int = 0              # --long crop: residues of last windows shorter than --min-length
    shuffle_seed: int | None = None    # --shuffle's seed (None: the proteins in the input's order)
    clusters_out: int | None = None    # --clusters: clusters written (training + validation); None without it
    unclustered: int | None = None     # --clusters: proteins written whose id is no member in the TSV
    unclustered_ids: list[str] = field(default_factory=list, repr=False)  # the first few of them
    # --clusters: the training clusters of clusters_out (what --shards N deals round-robin); not in to_dict
    train_clusters: int | None = field(default=None, repr=False)
    rejected: dict[str, int] = field(default_factory=lambda: {r: 0 for r in ALL_REASONS})
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    length_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    long_lengths: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def add_lengths(self, counts: np.ndarray, long_lengths: dict[int, int]) -> None:
        if len(counts) > len(self.length_counts):
            counts = counts.copy()
            counts[: len(self.length_counts)] += self.length_counts
            self.length_counts = counts
        else:
            self.length_counts[: len(counts)] += counts
        for length, n in long_lengths.items():
            self.long_lengths[length] = self.long_lengths.get(length, 0) + n

    def length_percentiles(self, qs=(0, 5, 25, 50, 75, 95, 100)) -> dict[str, int]:
        """Nearest-rank percentiles of the lengths of the lines written (a protein's, or under
        --long crop each window's: what the model is trained on)."""
        total = int(self.length_counts.sum()) + sum(self.long_lengths.values())
        if total == 0:
            return {}
        values = np.concatenate([np.nonzero(self.length_counts)[0],
                                 np.array(sorted(self.long_lengths), dtype=np.int64)])
        counts = np.concatenate([self.length_counts[self.length_counts > 0],
                                 np.array([self.long_lengths[k] for k in sorted(self.long_lengths)],
                                          dtype=np.int64)])
        cum = np.cumsum(counts)
        out = {}
        for q in qs:
            rank = max(1, math.ceil(q / 100 * total))
            out[f"p{q}"] = int(values[np.searchsorted(cum, rank)])
        return out

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items()
                if k not in ("length_counts", "long_lengths", "nucleotide_ids", "unclustered_ids", "train_clusters")
                and not (k in ("clusters_out", "unclustered") and v is None)}  # (the JSON without --clusters: as before)
        data["rejected_total"] = self.rejected_total
        data["length_percentiles"] = self.length_percentiles()
        total_len = int((self.length_counts * np.arange(len(self.length_counts))).sum()) + sum(
            k * v for k, v in self.long_lengths.items())
        n = int(self.length_counts.sum()) + sum(self.long_lengths.values())
        data["mean_length"] = round(total_len / n, 2) if n else None
        data["mb_per_s"] = round(self.input_bytes / 1e6 / self.seconds, 1) if self.seconds else None
        return data


# --------------------------------------------------------------------------------------------
# Reading: whole records in blocks


@dataclass
class _Block:
    """Whole records: the bytes themselves, or where to read them in an uncompressed file.

    A worker reads a file block itself (`load`), so with -j N the main process never copies the
    input: for an uncompressed file it only finds the cut points.
    """

    data: bytes | None   # starts with b">" (load() adds a missing final newline)
    name: str            # the input, for messages
    line0: int           # line number of the block's first line if known when cut, else 0
    index: int           # block number over all inputs
    path: str | None = None
    offset: int = 0
    size: int = 0
    unlink: bool = False  # a copy left for a worker: deleted once read

    def load(self) -> bytes:
        data = self.data
        if data is None:
            with open(self.path, "rb") as handle:
                data = _pread_all(handle.fileno(), self.size, self.offset)
            if self.unlink:
                os.unlink(self.path)
            if len(data) != self.size:
                raise InputError("file changed while it was read", path=self.name)
        return data if data.endswith(b"\n") else data + b"\n"


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """`size` bytes of `fd` from byte `offset`, fewer only where the file ends first. One pread
    returns at most 0x7ffff000 bytes on Linux (2 GiB less 4 KiB, whatever was asked), so a block
    of a record over 2 GiB (one record is never cut) came back short and was called a "file
    changed while it was read"."""
    first = os.pread(fd, size, offset)
    if len(first) == size or not first:
        return first
    parts, done = [first], len(first)
    while done < size:
        more = os.pread(fd, min(size - done, 1 << 30), offset + done)
        if not more:
            break
        parts.append(more)
        done += len(more)
    return b"".join(parts)


_CR_ONLY = ("a carriage return inside the header line: lines that end in CR alone (old Mac line endings) "
            "are not read; convert them first (tr '\\r' '\\n')")
# A byte-order mark at the start of a line, before a header (blank lines may come between: a
# file that starts with a mark and a blank line, concatenated to another)
_BOM_HEADER = re.compile(rb"\n\xef\xbb\xbf(?=[ \t\r\n]*(?:>|\Z))")  # (\Z: a block cut at that header)


_BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark
# What may come before the first record: blank lines and byte-order marks, in any order (a file
# that starts with a blank line, concatenated to one that starts with a mark)
# (ASCII whitespace as bytes.strip() takes it, vertical tab and form feed too: embed's reader
# skips such lines before the first header, and prep called the file "not FASTA")
_LEADING = re.compile(rb"(?:\xef\xbb\xbf|[ \t\r\n\x0b\x0c])*")


def _plain_file(path: str) -> bool:
    """An uncompressed regular file, which workers can read by offset."""
    if path == "-" or not os.path.isfile(path):
        return False
    from protrans_cli.io.files import sniff_compression

    with open(path, "rb") as handle:
        return sniff_compression(handle.read(8)) is None


def _plain_blocks(path: str, block_bytes: int, index: int, name: str) -> Iterator[_Block]:
    """Cut points of an uncompressed file: seek ~block_bytes on, find the next record start."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        start, line = 0, 1
        while True:  # blank lines and byte-order marks before the first record
            handle.seek(start)  # (read again from there: a mark cut at the end of a read is whole next time)
            chunk = handle.read(1 << 16)
            if not chunk:
                return
            skipped = _LEADING.match(chunk).end()
            line += chunk.count(b"\n", 0, skipped)
            start += skipped
            if not skipped:
                stripped = chunk
                break
        if not stripped.startswith(b">") or utf16_codec(stripped):  # (UTF-16LE begins with `>` too)
            raise InputError(not_fasta(stripped), path=name, line=line)
        pos = start
        while pos < size:
            cut = size
            probe = pos + block_bytes - 1
            while probe < size - 1:
                handle.seek(probe)
                window = handle.read(1 << 16)
                found = window.find(b"\n>")
                if found >= 0:
                    cut = probe + found + 1
                    break
                probe += len(window) - 1
            yield _Block(None, name, line if pos == start else 0, index, path, pos, cut - pos)
            index += 1
            pos = cut


def _iter_blocks(paths: Sequence, block_bytes: int, names: Sequence[str] | None = None) -> Iterator[_Block]:
    """Cut every input into blocks of whole records (a record bigger than a block is one block).
    `names`: how messages name each input (stdin spooled for --dedup is still `<stdin>`).

    Only an input's first block knows its line number here (counting lines costs a pass over
    the data); the workers count the lines of each block and the caller adds them up.
    """
    index = 0
    for k, path in enumerate(paths):
        name = names[k] if names is not None else display_name(path)
        if _plain_file(path):
            for block in _plain_blocks(path, block_bytes, index, name):
                yield block
                index = block.index + 1
            continue
        with open_input(path, name) as stream:  # (a damaged --dedup spool of stdin is `<stdin>`)
            line = 1
            buf = b""
            search_from = 0
            started = False
            while True:
                more = stream.read(block_bytes)
                if not started:
                    buf += more
                    if more and len(buf) < 4:
                        continue
                    skipped = _LEADING.match(buf).end()
                    stripped = buf[skipped:]
                    if more and (not stripped or (len(stripped) < 3 and _BOM.startswith(stripped))):
                        continue  # only blank lines and marks so far, or a mark cut by the read
                    line += buf.count(b"\n", 0, skipped)
                    buf = stripped
                    if buf and (not buf.startswith(b">") or utf16_codec(buf)):  # (UTF-16LE: `>` too)
                        raise InputError(not_fasta(buf), path=name, line=line)
                    started = True
                    # (a bytearray: `bytes += more` copied the whole of a giant record at every
                    # read, 60 s for a 256 MiB record from gzip and quadratic beyond)
                    buf = bytearray(buf)
                    if more:
                        continue
                elif more:
                    # What is left after a cut holds no record start, so only the new bytes (and
                    # the one before them) are searched: a giant record costs linear time.
                    buf += more
                    cut = buf.rfind(b"\n>", search_from)
                    if cut < 0:
                        search_from = max(len(buf) - 1, 0)
                        continue
                    data = bytes(buf[: cut + 1])
                    del buf[: cut + 1]  # (from the front of a bytearray: no copy of the rest)
                    search_from = max(len(buf) - 1, 0)
                    yield _Block(data, name, line, index, size=len(data))
                    line = 0
                    index += 1
                    continue
                # end of this input
                if buf:  # (size: the bytes read, not the newline load() adds to a last line without one)
                    yield _Block(bytes(buf), name, line, index, size=len(buf))
                    index += 1
                break


# --------------------------------------------------------------------------------------------
# Processing one block (runs in worker processes)


@dataclass(frozen=True)
class _BlockConfig:
    rare: str
    min_length: int
    max_length: int | None
    long: str
    valid_fraction: float
    num_shards: int
    want_rejects: bool        # collect id/reason/detail of every record left out
    digests: bool             # dedup pass 1: return digests instead of output
    spill_dir: str | None = None  # workers hand their text over as files here (see _Spill)
    train_compression: str | None = None  # workers compress each block's text (gzip member...)
    valid_compression: str | None = None
    kept_ids: bool = False    # --clusters: return the id of every protein written (_BlockResult.kept_ids)


@dataclass
class _Spill:
    """A block's text left in a file by a worker: passing 8 MB through a Pool's pipe costs the
    main process ~30 ms of CPU, a file on tmpfs plus sendfile() about a third of that."""

    path: str
    size: int

    def read(self) -> bytes:
        with open(self.path, "rb") as handle:
            data = handle.read()
        os.unlink(self.path)
        return data

    def send_to(self, stream) -> bool:
        """Copy into `stream` in the kernel; False (and nothing done) when it has no file, or
        where sendfile cannot write to one: Linux's writes to any file, macOS's and the BSDs' to
        a socket only ("Socket operation on non-socket": prep with workers failed on a Mac)."""
        if not sys.platform.startswith("linux"):
            return False
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return False  # sendfile refuses a descriptor opened to append (/dev/stdout under `>> log`)
        stream.flush()
        with open(self.path, "rb") as handle:
            done = 0
            while done < self.size:
                try:
                    sent = os.sendfile(fd, handle.fileno(), done, self.size - done)
                except OSError as exc:
                    if done == 0 and exc.errno in _NO_SENDFILE:  # refused before a byte: written by the caller
                        return False
                    raise
                if sent == 0:
                    raise OSError(f"sendfile stopped at {done} of {self.size} bytes")
                done += sent
        os.unlink(self.path)
        return True


# what sendfile says where it cannot write to the output (a kernel or file system without it)
_NO_SENDFILE = {getattr(errno, name) for name in ("EINVAL", "ENOTSOCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS")
                if hasattr(errno, name)}


_spill_count = 0


def _spill(text: bytes, directory: str) -> _Spill:
    global _spill_count
    _spill_count += 1
    path = os.path.join(directory, f"{os.getpid()}-{_spill_count}")
    try:
        with open(path, "wb") as handle:
            handle.write(text)
    except OSError as exc:
        # (a full /dev/shm, $TMPDIR or --tmp-dir, raised in a worker: "No space left on device"
        # alone, naming no folder)
        if (reason := disk_full(exc)) is None:
            raise
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise RuntimeFailure(f"cannot write the -j workers' hand-over files: {reason} (--tmp-dir DIR puts them "
                             "elsewhere; -j 1 needs none)", path=os.path.dirname(directory)) from None
    return _Spill(path, len(text))


@dataclass
class _BlockResult:
    records: int = 0
    lines: int = 0
    outputs: dict[int, bytes] = field(default_factory=dict)  # shard index -> text (or a bytearray); -1 validation
    rejected: dict[str, int] = field(default_factory=dict)
    # line numbers here count from 1 at the block's first line
    rejects: list[tuple[str, str, str, int]] = field(default_factory=list)  # id, reason, detail, line
    first_invalid: tuple[str, str, int] | None = None  # (id, detail, line) of the first normalisation reject
    fatal: tuple[str, str, int] | None = None  # (id, detail, line): an input prep cannot read (stops the run)
    proteins_out: int = 0
    residues_out: int = 0
    lines_out: int = 0
    valid_proteins: int = 0
    valid_residues: int = 0
    rare_to_x: int = 0
    nucleotide_like: int = 0
    nucleotide_ids: list[str] = field(default_factory=list)  # the first few
    crop_dropped: int = 0
    length_counts: np.ndarray | None = None
    long_lengths: dict[int, int] = field(default_factory=dict)
    digests: np.ndarray | None = None   # (K, 3) uint64: digest hi, digest lo, record index in block
    kept_ids: list[str] | None = None   # --clusters: the ids of the proteins written, in their order
    kept_digests: np.ndarray | None = None  # --clusters: (K,) S16 of those ids (_id_digests), hashed in the worker


def _record_id(header: bytes) -> str:
    parts = header.split(None, 1)
    return decode_word(parts[0]) if parts else ""


def in_validation(record_id: str, fraction: float) -> bool:
    """The split of a protein: a hash of its id, so the same id lands in the same split anywhere."""
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8, person=b"protrans-split").digest()
    return int.from_bytes(digest, "big") < fraction * 2.0 ** 64


class _Headers:
    """Where the lines and the records' headers of a block are."""

    def __init__(self, data: bytes):
        self.data = data
        self.arr = arr = np.frombuffer(data, dtype=np.uint8)
        self.newlines = newlines = np.flatnonzero(arr == 10)      # (lines,)
        line_starts = np.concatenate(([0], newlines[:-1] + 1))    # (lines,)
        is_header = arr[line_starts] == 62                        # '>' at the start of a line
        self.line = np.flatnonzero(is_header)                     # (R,) line index of each header
        self.start = line_starts[self.line]                       # (R,) position of '>'
        self.end = newlines[self.line]                            # (R,) position of its newline

    def id_at(self, i: int) -> str:
        return _record_id(self.data[int(self.start[i]) + 1:int(self.end[i])])

    def line_of(self, i: int) -> int:
        return 1 + int(self.line[i])


def _process_block(block: _Block, cfg: _BlockConfig, drops: np.ndarray | None = None,
                   data: bytes | None = None) -> _BlockResult:
    """Normalise, filter, split and space the records of one block (`data`: its bytes, when
    they are not the block's own).

    `drops` holds the indices (within the block) of duplicates to leave out (dedup pass 2).
    """
    data = block.load() if data is None else data
    heads = _Headers(data)
    n = len(heads.start)
    result = _BlockResult(records=n, lines=len(heads.newlines))
    seq_end = np.append(heads.start[1:], len(data))           # (R,) one past each sequence's text
    s, odd = _joined_sequences(heads, seq_end)
    sa = np.frombuffer(s, dtype=np.uint8)
    if not odd:
        # s is every sequence's bytes but its line breaks, each after a separator: the lengths
        # follow from the header and line positions, without a pass over s for the separators
        lines = np.append(heads.line[1:], len(heads.newlines)) - heads.line  # (R,) each record's lines
        lengths = seq_end - heads.end - lines                 # (R,) its bytes but the newlines
        stops = np.cumsum(lengths + 1)                        # (R,) one past each record's last residue
        starts = stops - lengths                              # (R,) its first residue
    else:  # (normalised: gaps, blanks and stops gone)
        sep = np.flatnonzero(sa == 10)                        # (R + 1,) separators
        starts = sep[:-1] + 1
        stops = sep[1:]
        lengths = stops - starts
    nucleotide = _nucleotide_like(sa, starts, lengths)        # (before U becomes X)

    # Records that fail normalisation: empty, or holding a letter outside the alphabet.
    flagged = lengths == 0
    rare_positions = None  # where U/Z/O/B sit in s (--rare x)
    if odd:
        rest = s.translate(None, _PLAIN)
        if rest.translate(None, RARE.encode()):
            if _BOM_HEADER.search(data):
                # A file that starts with a byte-order mark, concatenated to another: its first
                # header sits in the record before it (which then holds invalid bytes, so only
                # such blocks pay for the search).
                return _process_block(block, cfg, drops, _BOM_HEADER.sub(b"\n", data))
            bad_lut = np.ones(256, dtype=bool)
            bad_lut[list(_PLAIN + RARE.encode())] = False
            bad_pos = np.flatnonzero(bad_lut[sa])
            flagged[np.searchsorted(stops, bad_pos)] = True
        if cfg.rare == "x" and set(rest) & set(RARE.encode()):
            rare_pos = np.flatnonzero(_RARE_LUT[sa])
            rare_positions = rare_pos  # (counted where written, after the crops)
            # before dedup digests: MUK and MXK are the same protein once normalised
            s = s.translate(_RARE_TO_X)
            sa = np.frombuffer(s, dtype=np.uint8)

    keep = ~flagged
    reasons: dict[int, str] = {}
    details: dict[int, str] = {}
    result.fatal = _normalisation_rejects(block, cfg, heads, seq_end, flagged, keep, reasons, details)
    if result.fatal:
        return result
    if reasons:
        first = min(reasons)
        result.first_invalid = (heads.id_at(first), details[first], heads.line_of(first))
    _length_rejects(cfg, lengths, keep, reasons, details)

    if cfg.digests:
        result.digests = _digests(s, starts, stops, keep)
        result.rejected = _count(reasons)
        return result

    if drops is not None and len(drops):
        _duplicate_rejects(drops, keep, reasons, details)

    result.rejected = _count(reasons)
    if cfg.want_rejects and reasons:
        result.rejects = [(heads.id_at(i), reasons[i], details[i], heads.line_of(i)) for i in sorted(reasons)]

    kept = np.flatnonzero(keep)
    like = np.flatnonzero(nucleotide & keep)
    result.nucleotide_like = len(like)
    result.nucleotide_ids = [heads.id_at(i) for i in like[:NAMED].tolist()]  # (the first few, for the warning)
    if cfg.kept_ids:
        result.kept_ids = [heads.id_at(i) for i in kept.tolist()]
        result.kept_digests = _id_digests(result.kept_ids)
    text, doc_end, lines_out, windows = _spaced(sa, starts, stops, lengths, kept, cfg)
    valid, dest = _destinations(heads, kept, cfg)
    result.outputs = _block_outputs(text, starts, stops, kept, doc_end, valid, dest, n, lines_out, cfg)
    result.lines_out = lines_out
    _count_written(result, starts[kept], lengths[kept], doc_end, valid, windows, rare_positions, cfg)
    return result


def _nucleotide_like(sa: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(R,) bool: the records that read as DNA or RNA (residues.looks_nucleotide). A letter at a
    time over the records still in question: a protein drops out at its first letter outside
    ACGTUN (most at the first), so the usual block costs about one gathered byte per record."""
    out = np.zeros(len(starts), dtype=bool)
    candidates = np.flatnonzero(lengths >= NUCLEOTIDE_MIN_LENGTH)
    for j in range(NUCLEOTIDE_MIN_LENGTH):
        if not len(candidates):
            return out
        candidates = candidates[_NUCLEOTIDE_LUT[sa[starts[candidates] + j]]]
    for i in candidates.tolist():  # the few left (all of them in a nucleotide FASTA): whole
        out[i] = _NUCLEOTIDE_LUT[sa[starts[i]:starts[i] + lengths[i]]].all()
    return out


def _joined_sequences(heads: _Headers, seq_end: np.ndarray) -> tuple[bytes, bytes]:
    """(s, odd): the sequences of a block, normalised in bulk, each after a separator; the bytes
    of the raw sequences outside the plain alphabet."""
    arr, newlines, header_start, header_end = heads.arr, heads.newlines, heads.start, heads.end
    n = len(header_start)
    # One buffer of all sequences, each after a separator (its header's newline, the only
    # newline kept), then whole-buffer normalisation. Headers and line breaks go in one
    # boolean compress.
    segments = np.empty(2 * n, dtype=np.int64)                # header, sequence, header, ...
    segments[0::2] = header_end - header_start
    segments[1::2] = seq_end - header_end
    alternate = np.zeros(2 * n, dtype=bool)
    alternate[1::2] = True
    take = np.repeat(alternate, segments)
    take[newlines] = False
    take[header_end] = True
    if header_end[-1] == len(arr) - 1:  # the last record has no sequence line
        s = arr[take].tobytes() + _SEP
    else:
        take[-1] = True  # the block's final newline closes the last record
        s = arr[take].tobytes()
    odd = s.translate(None, _PLAIN)
    if odd and odd.translate(None, RARE.encode() + b"*"):
        # lower case, gaps, whitespace, CR or an invalid letter somewhere: the general rule
        s = s.translate(_UPPER, _DELETE)
    if odd and b"*" in s:
        s = s.replace(b"*" + _SEP, _SEP)                      # one terminal stop per record
    return s, odd


def _tsv_field(text: str) -> str:
    """A --rejects field: control characters escaped (a tab or newline split its row), and one that
    starts with a quote quoted (tsv_quoted)."""
    return tsv_quoted(printable(text))


def _normalisation_rejects(block: _Block, cfg: _BlockConfig, heads: _Headers, seq_end: np.ndarray,
                           flagged: np.ndarray, keep: np.ndarray, reasons: dict, details: dict):
    """Record in `reasons`/`details` (and clear in `keep`) the records without an id, with a NUL
    byte in the header, or that normalise() rejects; the (id, detail, line) of an input prep
    cannot read at all, else None."""
    data, arr, header_start, header_end = heads.data, heads.arr, heads.start, heads.end
    # An empty id makes the record unusable for the split, the rejects file and messages. Only
    # headers whose first byte after '>' is blank can have one.
    blank_after = _BLANK_LUT[arr[header_start + 1]]
    for i in np.flatnonzero(blank_after).tolist():
        if not heads.id_at(i):
            keep[i] = False
            reasons[i] = REASON_NO_ID
            details[i] = "header has no id"
    if b"\x00" in data:  # (one memchr over the block: the usual block pays nothing more)
        # NUL bytes in a header: a damaged file (zeroed blocks after a crash). Taken whole, it
        # split the validation set by the damaged id; read_fasta (embed, labels) refuses it.
        nul = np.flatnonzero(arr == 0)
        owner = np.searchsorted(header_start, nul, side="right") - 1
        inside = (owner >= 0) & (nul < header_end[np.maximum(owner, 0)])
        for i in sorted(set(owner[inside].tolist())):
            if i not in reasons:
                keep[i] = False
                reasons[i] = REASON_INVALID
                details[i] = NUL_HEADER  # (embed's words: prep said "NUL byte in the header (a damaged file?)")
    for i in np.flatnonzero(flagged).tolist():
        if i in reasons:
            continue
        raw = data[int(header_end[i]) + 1:int(seq_end[i])]
        try:
            normalise(raw, rare=cfg.rare)
        except SequenceRejected as exc:
            if (exc.reason == REASON_EMPTY and not raw
                    and b"\r" in data[int(header_start[i]):int(header_end[i])].rstrip(b"\r")):
                # The whole file (or a part) read as one header line, with no line after it:
                # lines that end in CR alone. (A CR inside the header of a record rejected for
                # another reason, or empty but for blank lines, is that record's stray byte, as
                # read_fasta has it: it was the whole run's error.)
                # Named by the id before the first CR, as read_fasta names it: '>' then CR has
                # none, and the id read across the CR was the first sequence line.
                header = data[int(header_start[i]) + 1:int(header_end[i])]
                return (_record_id(header[:header.index(b"\r")]), _CR_ONLY, heads.line_of(i))
            reasons[i] = exc.reason
            details[i] = exc.detail
        else:  # pragma: no cover - the bulk rules and normalise() disagree
            raise AssertionError(f"{block.name}: record {i} flagged but normalise() accepts it")
    return None


def _length_rejects(cfg: _BlockConfig, lengths: np.ndarray, keep: np.ndarray, reasons: dict, details: dict) -> None:
    """Leave out (clear in `keep`, record why) the kept records below --min-length, and above
    --max-length where --long skip."""
    too_short = keep & (lengths < cfg.min_length)
    keep &= ~too_short
    too_long = np.zeros(len(keep), dtype=bool)
    if cfg.max_length is not None and cfg.long == "skip":
        too_long = keep & (lengths > cfg.max_length)
        keep &= ~too_long
    for i in np.flatnonzero(too_short).tolist():
        reasons[i] = REASON_TOO_SHORT
        details[i] = f"{int(lengths[i])} residues, below --min-length {cfg.min_length}"
    for i in np.flatnonzero(too_long).tolist():
        reasons[i] = REASON_TOO_LONG
        details[i] = f"{int(lengths[i])} residues, above --max-length {cfg.max_length}"


def _digests(s: bytes, starts: np.ndarray, stops: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(K, 3) uint64 of the kept records: digest hi, digest lo, record index in block (dedup pass 1)."""
    idx = np.flatnonzero(keep)
    mv = memoryview(s)
    raw_digests = b"".join(hashlib.blake2b(mv[a:b], digest_size=16).digest()
                           for a, b in zip(starts[idx].tolist(), stops[idx].tolist()))
    dig = np.frombuffer(raw_digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    return np.column_stack([dig, idx.astype(np.uint64)])


def _duplicate_rejects(drops: np.ndarray, keep: np.ndarray, reasons: dict, details: dict) -> None:
    """Leave out the kept records that dedup found duplicates of earlier ones (dedup pass 2)."""
    dup = np.zeros(len(keep), dtype=bool)
    dup[drops] = True
    dup &= keep
    keep &= ~dup
    for i in np.flatnonzero(dup).tolist():
        reasons[i] = REASON_DUPLICATE
        details[i] = "same sequence as an earlier record"


def _spaced(sa: np.ndarray, starts: np.ndarray, stops: np.ndarray, lengths: np.ndarray, kept: np.ndarray,
            cfg: _BlockConfig):
    """(text, doc_end, lines_out, windows): the spaced text of the whole buffer, where each kept
    protein's text ends, the lines written, and the line lengths of every cropped protein."""
    # Spaced text for the whole buffer at once: (residue, ' ') byte pairs as little-endian
    # uint16, then each line's last space becomes '\n'. (A bytearray: _block_outputs makes the
    # usual block's output from it without a copy to bytes first.)
    text = bytearray(2 * len(sa))
    spaced = np.frombuffer(text, dtype=np.uint16)
    spaced[:] = sa
    spaced |= 0x2000
    ends = stops[kept]                                        # (K,) one past each protein's last residue
    doc_end = ends.copy()
    lines_out = len(kept)
    windows: list[np.ndarray] = []  # the lengths of the lines a cropped protein wrote
    if cfg.max_length is not None and cfg.long == "crop":
        # Windows of max_length residues; a last window shorter than min_length is dropped.
        w = cfg.max_length
        long_idx = np.flatnonzero(lengths[kept] > w)
        for j in long_idx.tolist():
            a, length = int(starts[kept[j]]), int(lengths[kept[j]])
            num_windows = length // w + (1 if length % w >= cfg.min_length else 0)
            win_ends = a + np.minimum(np.arange(1, num_windows + 1) * w, length)
            spaced[win_ends - 1] = (spaced[win_ends - 1] & 0xFF) | 0x0A00
            doc_end[j] = win_ends[-1]
            lines_out += num_windows - 1
            windows.append(np.diff(win_ends, prepend=a))
    spaced[doc_end - 1] = (spaced[doc_end - 1] & 0xFF) | 0x0A00
    return text, doc_end, lines_out, windows


def _destinations(heads: _Headers, kept: np.ndarray, cfg: _BlockConfig) -> tuple[np.ndarray, np.ndarray]:
    """(valid, dest) of each kept protein: whether it is a validation one, and its output."""
    valid = np.zeros(len(kept), dtype=bool)
    if cfg.valid_fraction > 0:
        data = heads.data
        kept_ids = [_record_id(data[a + 1:b]) for a, b in
                    zip(heads.start[kept].tolist(), heads.end[kept].tolist())]
        valid = np.array([in_validation(rid, cfg.valid_fraction) for rid in kept_ids], dtype=bool)
    # Destination of each kept protein: -1 validation, else (its rank among the block's training
    # proteins) mod num_shards; the caller rotates that by the proteins written before the block,
    # which deals them round-robin over the whole run.
    dest = np.zeros(len(kept), dtype=np.int64)
    if cfg.num_shards > 1:
        train = np.flatnonzero(~valid)
        dest[train] = np.arange(len(train)) % cfg.num_shards
    dest[valid] = -1
    return valid, dest


def _block_outputs(spaced_text: bytearray, starts: np.ndarray, stops: np.ndarray, kept: np.ndarray,
                   doc_end: np.ndarray, valid: np.ndarray, dest: np.ndarray, n: int, lines_out: int,
                   cfg: _BlockConfig) -> dict:
    """Shard index (-1 validation) -> the text (or _Spill) of its proteins, each followed by an
    empty line, compressed as the output is (`spaced_text`: _spaced's)."""
    outputs = {}
    text = memoryview(spaced_text)
    kept_starts = 2 * starts[kept]
    kept_ends = 2 * doc_end
    groups = range(-1, cfg.num_shards)
    # (doc_end: a crop whose one window left a last one shorter than --min-length wrote that too,
    # as "F \n" where the empty line between proteins belongs: the next protein ran on into it)
    if (len(kept) == n and lines_out == n and cfg.num_shards == 1 and not valid.any()
            and np.array_equal(doc_end, stops)):
        # The usual block: every record goes to one file, uncropped. The separators between
        # proteins become ('\n', NUL) pairs and one replace drops the NULs: twice as fast as
        # joining a slice per protein (s holds no NUL here: every record passed the alphabet).
        spaced = np.frombuffer(spaced_text, dtype=np.uint16)
        spaced[stops] = 0x000A
        spaced[0] = 0  # (the separator before the first protein, ('\n', ' '): two NULs)
        out = spaced_text.replace(b"\x00", b"")
        out = compress_bytes(out, cfg.train_compression, FAST_LEVELS.get(cfg.train_compression))
        outputs[0] = _spill(out, cfg.spill_dir) if cfg.spill_dir else out
        groups = ()
    # (np.unique would import a numpy submodule that costs 0.1 s at start-up)
    for d in groups:
        sel = dest == d
        if not sel.any():
            continue
        # Every protein is followed by an empty line.
        pieces = [text[a:b] for a, b in zip(kept_starts[sel].tolist(), kept_ends[sel].tolist())]
        pieces.append(b"")  # the last protein's empty line, without copying the text again
        out = b"\n".join(pieces)
        kind = cfg.valid_compression if d == -1 else cfg.train_compression
        out = compress_bytes(out, kind, FAST_LEVELS.get(kind))
        outputs[d] = _spill(out, cfg.spill_dir) if cfg.spill_dir else out
    return outputs


def _count_written(result: _BlockResult, kept_starts: np.ndarray, kept_lengths: np.ndarray, doc_end: np.ndarray,
                   valid: np.ndarray, windows: list, rare_positions: np.ndarray | None, cfg: _BlockConfig) -> None:
    """The counts of what the kept proteins wrote (`kept_starts`: where each starts in the buffer)."""
    if rare_positions is not None:
        # U/Z/O/B written as X: within what each kept protein wrote (a crop's dropped last
        # window holds residues that were never written)
        result.rare_to_x = int((np.searchsorted(rare_positions, doc_end)
                                - np.searchsorted(rare_positions, kept_starts)).sum())
    written = np.minimum(doc_end - kept_starts, kept_lengths)
    line_lengths = kept_lengths
    if windows:  # each window a line of its own length
        line_lengths = np.concatenate([kept_lengths[kept_lengths <= cfg.max_length], *windows])
    result.proteins_out = len(kept_starts)
    result.residues_out = int(written.sum())
    # (a crop's last window shorter than --min-length is dropped: counted, so that the residues in
    # and out reconcile; residues_out alone said nothing of them)
    result.crop_dropped = int((kept_lengths - written).sum())
    result.valid_proteins = int(valid.sum())
    result.valid_residues = int(written[valid].sum())
    short = line_lengths[line_lengths < _HIST_CAP]
    result.length_counts = np.bincount(short) if len(short) else np.zeros(0, dtype=np.int64)
    result.long_lengths = dict(collections.Counter(line_lengths[line_lengths >= _HIST_CAP].tolist()))


def _count(reasons: dict[int, str]) -> dict[str, int]:
    return dict(collections.Counter(reasons.values()))


# (and a scheduler's warning, SIGUSR1/SIGUSR2, which the CLI stops for as for SIGTERM)
_STOP_SIGNALS = {*STOP_SIGNALS, *WARNING_SIGNALS}


@contextlib.contextmanager
def _stop_signals_held():
    """Ctrl-C, SIGTERM and SIGHUP blocked while a worker is forked: a signal sent to the group (a
    hang-up, `kill -TERM -PGID`) between the fork and the worker's _init_worker ran the handler it
    inherited there, the parent's or a library caller's own, in the worker. The child starts with them
    blocked and unblocks them once its own handlers are set; here they come once the fork is done."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows: no fork, no such race
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _init_worker(parent_pid: int | None = None) -> None:
    # Ctrl-C reaches the whole process group: the main process handles it (exit 130, outputs
    # removed) and stops the pool; workers printing their own tracebacks would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM and SIGHUP end a worker as they would without Python (the main process alone handles
    # them, reports the stop and cleans up; its proc.terminate() ends a worker): a forked worker
    # inherited the parent's Python handlers, and a library caller's own (an app's) ran in every
    # worker too, a sent signal and each terminate() alike. One ignored (nohup) stays ignored, as in
    # the main process.
    for number in _STOP_SIGNALS - {signal.SIGINT}:  # (SIGTERM, and SIGHUP where there is one)
        if callable(signal.getsignal(number)):
            signal.signal(number, signal.SIG_DFL)
    # (forked with them blocked, _stop_signals_held: one sent before this point waited, and reaches
    # the handlers set here, not the parent's inherited ones)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent(parent_pid)
    _tune_malloc()


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: end this worker when the main process dies, even by SIGKILL (the OOM killer, a
    scheduler's hard limit), instead of leaving it waiting on a pipe that a sibling still holds."""
    if parent_pid is None:
        return
    from protrans_cli.io.files import parent_death_signal

    if parent_death_signal(signal.SIGKILL) and os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)


def _tune_malloc() -> None:
    # glibc returns every block-sized buffer (> 128 KiB) to the OS on free and page-faults it
    # back on the next block; keeping them in the heap makes prep ~30% faster.
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def _worker_loop(conn, fn, args: tuple, parent_pid: int | None = None) -> None:
    """A worker process: (block, extra) in, ("ok", result) or ("error", exception) out.

    A thread drains the incoming pipe into a queue, so the main process never waits to send
    while this worker waits for it to take a large result: no deadlock whatever the sizes.
    """
    import queue
    import threading

    _init_worker(parent_pid)
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def drain():
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = None
            inbox.put(message)
            if message is None:
                return

    threading.Thread(target=drain, daemon=True).start()
    while True:
        message = inbox.get()
        if message is None:
            return
        block, extra = message
        try:
            reply = ("ok", fn(block, *args, extra))
        except Exception as exc:  # raised again in the main process
            reply = ("error", exc)
        try:
            conn.send(reply)
        except Exception as exc:  # an exception that cannot be pickled
            conn.send(("error", RuntimeFailure(f"{type(exc).__name__}: {exc}")))


def _run_blocks(blocks: Iterable, fn, args: tuple, threads: int, spill_dir: str | None = None) -> Iterator:
    """Yield (block, fn(block, *args, extra)) for every (block, extra), in order.

    With threads > 1, block k goes to worker k mod threads over its own pipe, so results come
    back in order without a dispatcher thread (multiprocessing.Pool's task and result threads
    cost the main process a third of its CPU in GIL hand-offs, and a Pool hangs when a worker
    is killed; here that is an error). Every message is small: blocks of uncompressed files are
    offsets, other blocks are left in `spill_dir`, and text comes back as _Spill files. At most
    8 * threads blocks are in flight, so memory stays bounded however fast the input is read; a
    deep queue keeps the workers busy when the machine is shared (2 * threads was half as fast on
    a loaded 2-core machine).
    """
    if threads <= 1:
        _tune_malloc()
        for block, extra in blocks:
            yield block, fn(block, *args, extra)
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    workers = []
    pending: collections.deque = collections.deque()
    try:
        for _ in range(threads):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_loop, args=(child, fn, args, os.getpid()), daemon=True)
            with _stop_signals_held():
                proc.start()
            child.close()
            workers.append((proc, parent))
        sent = 0
        for block, extra in blocks:
            if block.data is not None and spill_dir is not None:
                spill = _spill(block.data, spill_dir)
                block = _Block(None, block.name, block.line0, block.index, spill.path, 0, spill.size,
                               unlink=True)
            w = sent % threads
            try:
                workers[w][1].send((block, extra))
            except OSError:  # BrokenPipeError here is a dead worker, not a closed stdout
                raise _dead(workers[w][0], block) from None
            pending.append((w, block))
            sent += 1
            while len(pending) >= 8 * threads:
                yield _collect(workers, pending)
        while pending:
            yield _collect(workers, pending)
    finally:
        # Stopped early (an error, Ctrl-C, SIGTERM, SIGHUP): no reply will be read, and a worker blocked
        # on sending one into a full pipe kept the main process 5 s per worker in join().
        stopping = sys.exc_info()[0] is not None
        for proc, conn in workers:
            if stopping:
                proc.terminate()
            else:
                with contextlib.suppress(Exception):
                    conn.send(None)
            conn.close()
        for proc, _ in workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def _dead(proc, block) -> RuntimeFailure:
    proc.join(timeout=5)
    return RuntimeFailure(f"a worker process died (exit code {proc.exitcode}) while preparing a block of "
                          f"{block.name}; out of memory?")


def _collect(workers, pending):
    w, block = pending.popleft()
    proc, conn = workers[w]
    try:
        status, payload = conn.recv()
    except (EOFError, OSError):
        raise _dead(proc, block) from None
    if status == "error":
        raise payload
    return block, payload


# --------------------------------------------------------------------------------------------
# Outputs


def worker_compression(options: CorpusOptions) -> tuple[str | None, str | None]:
    """Compression the workers apply to (training, validation) text; None: none or by the writer."""
    train = None
    if options.output and str(options.output) != "-" and options.shard_size is None:
        train = compression_for_output(options.output)
    valid = None
    if options.valid_output and str(options.valid_output) != "-":
        valid = compression_for_output(options.valid_output)
    return train, valid


def shard_path(output, index: int) -> Path:
    """corpus.txt.gz, 3 -> corpus.00003.txt.gz (the compression extension stays last)."""
    path = Path(output)
    name = path.name
    comp = ""
    for ext in (".gz", ".bz2", ".xz", ".zst", ".zstd"):
        if name.lower().endswith(ext):
            name, comp = name[: -len(ext)], name[-len(ext):]
            break
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix = name, ""
    return path.with_name(f"{stem}.{index:05d}" + (f".{suffix}" if suffix else "") + comp)


def shard_index(output, name: str) -> int | None:
    """The index of the shard of `output` that a file of this name would be, else None (the
    digits are found where shard_path puts them, not at the first "00000" of the name:
    `sub100000.txt` has its own)."""
    first, second = shard_path(output, 0).name, shard_path(output, 1).name
    end = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b) + 1  # after the index's last digit
    head, tail = first[:end - 5], first[end:]
    if len(name) != len(first) or not (name.startswith(head) and name.endswith(tail)):
        return None
    digits = name[end - 5:end]
    return int(digits) if digits.isdigit() else None


class _Writers:
    """The training corpus (one file, stdout, or shards) and the validation file, all atomic."""

    def __init__(self, options: CorpusOptions):
        self.options = options
        self.files: list[AtomicFile] = []
        self.train: list = []
        self.train_files: list = []  # the AtomicFile (or _Stdout) behind each of `train`
        self.paths: list[str] = []
        self.valid = None
        self.current = 0
        self.current_bytes = 0
        # Blocks arrive compressed by the workers (one gzip member / zstd frame each), except
        # with --shard-size, whose cuts need the text: then the main process compresses.
        self.train_kind, self.valid_kind = worker_compression(options)
        # With --shard-size the main process compresses each piece of a block as a member of its
        # own all the same, so that a train --resume decompresses from its position's member,
        # not from the shard's beginning.
        self.sized_kind = None
        if options.shard_size is not None and options.output and str(options.output) != "-":
            self.sized_kind = compression_for_output(options.output)
        self.precompressed: dict[int, str] = {}  # id(AtomicFile) -> kind
        try:
            self._open_all(options)
        except BaseException:
            self.abort()  # the files opened before the one that failed
            raise

    def _open_all(self, options: CorpusOptions) -> None:
        out = options.output
        if out is None or str(out) == "-":
            self._open("-")
        elif options.num_shards > 1:
            # (every shard stays open to the end: build_corpus made room, _reserve_open_files)
            for k in range(options.num_shards):
                self._open(shard_path(out, k))
        elif options.shard_size is not None:
            self._open(shard_path(out, 0))
        else:
            self._open(Path(out), named=True)
        if options.valid_output:
            self.valid = self._handle(options.valid_output, self.valid_kind)

    def _open(self, path, named: bool = False) -> None:
        """One more training output (a file, a shard, or stdout)."""
        self.train.append(self._handle(path, self.train_kind or self.sized_kind, named))
        self.train_files.append(self.files[-1])
        self.paths.append(str(path))

    def _handle(self, path, kind: str | None, named: bool = True):
        """The stream of an output: stdout (`-`) as it comes, else an AtomicFile that compresses
        unless the workers already did (`kind`). `named`: the name is the user's (not a shard's)."""
        atomic = {}
        if self.options.num_shards > 1:
            # --shards N keeps N files open, each with its write buffer: at 1 MiB each, 256 shards
            # held 256 MiB of corpus text (peak RSS 301 MB instead of 55 for 2 shards). Together
            # they now hold 16 MiB (8 KiB each, Python's default, beyond 2,048 shards).
            atomic["buffering"] = max(1 << 13, min(1 << 20, (16 << 20) // self.options.num_shards))
        handle = _output(path, compress=kind is None, level=FAST_LEVELS.get(compression_for_output(path)),
                         follow_link=named, **atomic)
        if kind and isinstance(handle, AtomicFile):
            self.precompressed[id(handle)] = kind
        self.files.append(handle)
        return handle.stream

    def write(self, outputs: dict, train_before: int) -> None:
        """`train_before`: training proteins written before this block (round-robin offset)."""
        for dest, text in outputs.items():
            try:
                if dest == -1:
                    self._put(self.valid, text)
                elif self.options.shard_size is not None:
                    self._write_sized(text.read() if isinstance(text, _Spill) else text)
                else:
                    self._put(self.train[(dest + train_before) % len(self.train)], text)
            except OSError as exc:  # a write's error names no file: "No space left on device" alone
                if (reason := disk_full(exc)) is None:
                    raise
                # (read now: --shard-size may have gone on to the next shard)
                where = self.options.valid_output if dest == -1 else shard_path(self.options.output, self.current) \
                    if self.options.shard_size is not None else self.paths[(dest + train_before) % len(self.train)]
                raise RuntimeFailure(f"cannot write: {reason}",
                                     path="standard output" if str(where) == "-" else str(where)) from None

    @staticmethod
    def _put(stream, text) -> None:
        if isinstance(text, _Spill):
            # an uncompressed file or stdout: copy in the kernel; else through the compressor
            target = getattr(stream, "buffer", stream)  # stdout's buffer behind io.files' whole-write wrapper
            if isinstance(target, io.BufferedWriter) and text.send_to(target):
                return
            text = text.read()
        stream.write(text)

    def _write_sized(self, text: bytes) -> None:
        limit = self.options.shard_size
        while text:
            room = limit - self.current_bytes
            if len(text) <= room:
                self._write_piece(text)
                self.current_bytes += len(text)
                return
            cut = text.rfind(b"\n\n", 0, room) if room > 0 else -1
            if cut < 0 and self.current_bytes == 0:
                cut = text.find(b"\n\n")  # one protein bigger than a shard: it gets a shard alone
            if cut >= 0:
                self._write_piece(text[: cut + 2])
                text = text[cut + 2:]
            self.current_bytes = limit  # full: the next text opens the next shard
            if text:  # never a shard without a protein (the last one ended exactly at a cut)
                # written out and closed now, renamed with the others at the end: kept open, a
                # corpus of 1000 shards (BFD at 500M) failed with "Too many open files" mid-run
                self.train_files[self.current].prepare()
                self.current += 1
                self.current_bytes = 0
                self._open(shard_path(self.options.output, self.current))

    def _write_piece(self, text: bytes) -> None:
        self.train[self.current].write(compress_bytes(text, self.sized_kind, FAST_LEVELS.get(self.sized_kind))
                                       if self.sized_kind else text)

    def prepare(self) -> list[str]:
        """Every output written out (not renamed yet); the paths they will have."""
        for handle in self.files:
            kind = self.precompressed.get(id(handle))  # AtomicFiles only
            if kind and not handle.stream.closed and handle.stream.tell() == 0:  # (a full shard: prepared)
                handle.stream.write(compress_bytes(b"", kind, FAST_LEVELS.get(kind)))  # a valid empty .gz
            handle.prepare()
        paths = list(self.paths)
        if self.options.valid_output:
            paths.append(str(self.options.valid_output))
        return paths

    def commit(self) -> list[str]:
        """The renames; then the shards an earlier run with more of them left (a corpus pattern
        such as 'c.*.txt' would read them with the new ones)."""
        for handle in self.files:
            handle.commit()
        if not self.options.sharded:
            return []
        first = shard_path(self.options.output, 0)
        stale = sorted(p for p in first.parent.iterdir()
                       if (k := shard_index(self.options.output, p.name)) is not None and k >= len(self.paths)
                       and p.is_file())
        for path in stale:
            path.unlink()
        return [str(p) for p in stale]

    def abort(self) -> None:
        for handle in self.files:
            handle.abort()


# --------------------------------------------------------------------------------------------
# Dedup: digests into partitions on disk, duplicates found per partition


class _Buckets:
    """Scratch bucket files of --shuffle and --clusters (`FLAG`, for messages): each bucket's text
    held in memory (`_hold`) until 1/16 of the budget is, then written to its file (`_spill`),
    opened then: a small corpus needs no file, a big one is written in big pieces."""

    FLAG = ""

    def __init__(self, directory: Path, count: int, budget: int):
        self.directory = directory
        self.paths = [directory / f"bucket{k}" for k in range(count)]
        self.pending: list[list[bytes]] = [[] for _ in range(count)]
        self.pending_bytes = 0
        self.spill_at = budget // 16
        self.files: list = [None] * count

    def _failure(self, exc: OSError) -> RuntimeFailure:
        reason = disk_full(exc) or (exc.strerror or str(exc))
        return RuntimeFailure(f"{self.FLAG} cannot write its buckets: {reason} (they take about the corpus's "
                              "uncompressed size; --tmp-dir DIR puts them elsewhere)", path=str(self.directory))

    def _hold(self, k: int, text: bytes) -> None:
        self.pending[k].append(text)
        self.pending_bytes += len(text)

    def _spill(self) -> None:
        for k, parts in enumerate(self.pending):
            if parts:
                if self.files[k] is None:
                    self.files[k] = open(self.paths[k], "wb")
                self.files[k].write(b"".join(parts))
                parts.clear()
        self.pending_bytes = 0

    def close(self, quiet: bool = False) -> None:
        """The bucket files closed; `quiet` after a failure: a full disk's error on the buffered
        rest replaced the one line that named --tmp-dir with a bare "No space left on device"."""
        for f in self.files:
            if f is not None:
                with contextlib.suppress(OSError) if quiet else contextlib.nullcontext():
                    f.close()
        self.files = [None] * len(self.files)


class _Shuffle(_Buckets):
    """--shuffle: a uniformly random order of the training proteins in bounded memory. Each
    protein goes to one of 256 bucket files at random as the blocks come; then each bucket in
    turn is read whole, its proteins permuted, and written. A random bucket and a random place in
    it is a uniformly random permutation of the whole. A bucket that came out bigger than twice
    the budget (more than 256 budgets of text) is scattered again into smaller ones first. The
    random generators are seeded from the seed alone, each protein's bucket is drawn from one
    64-bit number in input order, and the number of buckets is fixed (not planned from the input's
    size, which a compressed file or stdin does not tell), so the corpus is the same for any -j
    and whatever form the input came in (a file, compressed or not, or a pipe)."""

    SEPARATOR = b"\n\n"  # every protein's text (its line, or its windows' lines) ends with one
    MAX_BUCKETS = 256  # files open at once; more text than 256 buckets hold is scattered again
    FLAG = "--shuffle"

    def __init__(self, directory: Path, seed: int, budget: int):
        # (a count planned from the input's size made the order depend on the input's form: a
        # file, its .gz, or the same proteins on stdin gave three different corpora for one seed)
        self.count = self.MAX_BUCKETS
        # (held until 1/16 of the budget, 32 MiB: a small corpus is shuffled without a file, 256 of
        # which cost more than its whole run; the order is the same either way)
        super().__init__(directory, self.count, budget)
        self.seed = seed
        self.budget = budget
        self.rng = np.random.default_rng([seed, 0])
        self.proteins = 0
        self.counts = np.zeros(self.count, dtype=np.int64)  # proteins in each bucket

    def add(self, text: bytes) -> None:
        """A block's training text (proteins each ending with an empty line)."""
        docs = text.split(self.SEPARATOR)[:-1]
        self.proteins += len(docs)
        try:
            # (one raw draw per protein: the same buckets however the proteins are cut into blocks)
            # (the top 32 bits times the count: for 256, the top 8 bits, exactly uniform)
            raw = self.rng.bit_generator.random_raw(len(docs))
            buckets = (((raw >> np.uint64(32)) * np.uint64(self.count)) >> np.uint64(32)).astype(np.int64)
            self.counts += self._scatter(docs, buckets, self.count, self._hold)
            if self.pending_bytes > self.spill_at:
                self._spill()
        except OSError as exc:
            raise self._failure(exc) from None

    def _stream(self, purpose: int, key: tuple):
        """The generator of one bucket's re-scatter (1) or permutation (2); `key`: its path of
        bucket numbers. The key's length is part of the seed: numpy pads a seed to four words with
        zeros, so bucket 3 and its sub-bucket 0 ([seed, 1, 3] and [seed, 1, 3, 0]) drew the same
        numbers."""
        return np.random.default_rng([self.seed, purpose, len(key), *key])

    def _scatter(self, docs: list, buckets: np.ndarray, count: int, put) -> np.ndarray:
        """put(k, text) for each bucket k of `count` with its proteins (`buckets`: their indices); how
        many went to each."""
        if not docs:
            return np.zeros(count, dtype=np.int64)
        order = np.argsort(buckets, kind="stable")
        counts = np.bincount(buckets, minlength=count)
        ends = np.cumsum(counts)
        start = 0
        for k, end in enumerate(ends.tolist()):
            if end > start:
                put(k, self.SEPARATOR.join([docs[i] for i in order[start:end].tolist()]) + self.SEPARATOR)
            start = end
        return counts

    def emit(self, write) -> None:
        """Calls write(list of proteins' texts) with every protein once, in the random order."""
        if not any(f is not None for f in self.files):  # all in memory: less than a file's worth
            for k in range(self.count):
                text = b"".join(self.pending[k])
                self.pending[k] = []
                self._emit_docs(text, (k,), write)
            return
        try:
            self._spill()
            self.close()  # (a full disk's last write shows here)
        except OSError as exc:
            raise self._failure(exc) from None
        for k, path in enumerate(self.paths):
            if self.counts[k]:
                self._emit_bucket(path, (k,), write, int(self.counts[k]))

    def _emit_bucket(self, path: Path, key: tuple, write, proteins: int) -> None:
        size = path.stat().st_size
        # (one protein bigger than that is read whole: scattered again, it came back whole into
        # one piece, again and again, until the piece's name grew too long)
        if size > 2 * self.budget and proteins > 1:  # scattered again, a piece at a time, into buckets of the budget
            count = min(self.MAX_BUCKETS, -(-size // self.budget))
            parts = [path.with_name(f"{path.name}.{k}") for k in range(count)]
            rng = self._stream(1, key)
            try:
                files = [open(p, "wb", buffering=1 << 16) for p in parts]
                put = lambda k, text: files[k].write(text)  # noqa: E731
                try:
                    counts = np.zeros(count, dtype=np.int64)
                    with open(path, "rb") as src:
                        rest = b""
                        while chunk := src.read(self.budget // 4 or 1 << 20):
                            rest += chunk
                            cut = rest.rfind(self.SEPARATOR)
                            if cut >= 0:
                                docs = rest[:cut + 2].split(self.SEPARATOR)[:-1]
                                counts += self._scatter(docs, rng.integers(count, size=len(docs)), count, put)
                                rest = rest[cut + 2:]
                        docs = rest.split(self.SEPARATOR)[:-1]
                        counts += self._scatter(docs, rng.integers(count, size=len(docs)), count, put)
                finally:
                    for f in files:
                        f.close()
            except OSError as exc:
                raise self._failure(exc) from None
            path.unlink()
            for k, part in enumerate(parts):
                self._emit_bucket(part, (*key, k), write, int(counts[k]))
            return
        text = path.read_bytes()
        path.unlink()  # (the disk it held is free for the outputs)
        self._emit_docs(text, key, write)

    def _emit_docs(self, text: bytes, key: tuple, write) -> None:
        """A bucket's proteins permuted, and written a piece at a time."""
        docs = text.split(self.SEPARATOR)[:-1]
        order = self._stream(2, key).permutation(len(docs))
        piece = 1 << 13  # (proteins: a few MB of text)
        for start in range(0, len(docs), piece):
            write([docs[i] for i in order[start:start + piece].tolist()])


# --------------------------------------------------------------------------------------------
# --clusters: the members of each cluster written together


def _id_digests(ids: Sequence[str]) -> np.ndarray:
    """(K,) S16: a 128-bit digest of each id (as prep reads it, UTF-8 else latin-1, decode_word)."""
    raw = b"".join(hashlib.blake2b(rid.encode("utf-8"), digest_size=16).digest() for rid in ids)
    return np.frombuffer(raw, dtype="S16")


def _member_twice(path: str, name: str, first: int, again: int):
    """Raise the error of a TSV member named on its `first`-th and `again`-th member lines (from
    0), found by reading the TSV again (the ids and the line numbers are not kept)."""
    lines, member, count = [], b"", -1
    try:
        with open_input(path, name) as stream:
            for number, line in enumerate(stream, 1):
                if line.strip():
                    count += 1
                    if count in (first, again):
                        lines.append(number)
                        member = line.rstrip(b"\r\n").split(b"\t")[1].strip()
                    if count == again:
                        break
    except (OSError, InputError):  # (a pipe, read once)
        pass
    if len(lines) == 2:
        raise InputError(f"member {printable(decode_word(member))!r} named again (it was on line {lines[0]}): a "
                         "member belongs to one cluster, listed once", path=name, line=lines[1])
    raise InputError(f"a member named twice (member lines {first + 1} and {again + 1}): a member belongs to one "
                     "cluster, listed once", path=name)


@dataclass
class _ClusterMap:
    """--clusters: which cluster each member id is in, as sorted 128-bit digests of the member ids
    and each one's cluster number (clusters numbered in the order the TSV first names them): 20
    bytes a member (24 with more than 2**32 clusters), and 1 byte a cluster for its split. The ids
    themselves are not kept."""

    name: str                 # the TSV, for messages
    members: np.ndarray       # (M,) S16 sorted member digests
    cluster: np.ndarray       # (M,) cluster number of each
    valid: np.ndarray         # (C,) bool: the cluster goes to validation (in_validation of its id)
    count: int                # C

    @classmethod
    def load(cls, path: str, valid_fraction: float) -> "_ClusterMap":
        """Read the TSV (compressed or not); InputError naming the file and line for a line that is
        not two columns, or a member named twice. Holds about 50 bytes a member while it reads
        (docs/prep.md, "Clusters")."""
        import array

        name = display_name(path)
        # A TSV lists a cluster's members on consecutive lines (mmseqs createtsv does): the
        # clusters are kept a run of lines at a time, the member ids a line at a time.
        members, runs, run_valid, run_lengths = bytearray(), bytearray(), bytearray(), array.array("q")
        previous = None
        with open_input(path, name) as stream:
            for number, line in enumerate(stream, 1):
                fields = line.rstrip(b"\r\n").split(b"\t")
                if len(fields) == 1 and not fields[0].strip():
                    continue  # a blank line (the last one of a file, say)
                if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                    got = f"{len(fields)} column(s)" if len(fields) != 2 else "an empty column"
                    raise InputError(f"expected 2 tab-separated columns, cluster id then member id (as mmseqs "
                                     f"createtsv writes), got {got}: {printable(decode_word(line.rstrip()))[:60]}",
                                     path=name, line=number)
                cluster_id = fields[0].strip()
                if cluster_id != previous:
                    previous = cluster_id
                    runs += hashlib.blake2b(cluster_id, digest_size=16).digest()
                    run_valid.append(valid_fraction > 0 and in_validation(decode_word(cluster_id), valid_fraction))
                    run_lengths.append(0)
                run_lengths[-1] += 1
                members += hashlib.blake2b(decode_word(fields[1].strip()).encode("utf-8"), digest_size=16).digest()
        unique, first, inverse = np.unique(np.frombuffer(runs, dtype="S16"), return_index=True, return_inverse=True)
        count = len(unique)
        order = np.argsort(first, kind="stable")  # clusters numbered in the order the TSV first names them
        rank = np.empty(count, dtype=np.int64)
        rank[order] = np.arange(count)
        valid = np.frombuffer(run_valid, dtype=bool)[first[order]]
        number_of = np.repeat(rank[inverse.reshape(-1)].astype(np.uint32 if count < 2 ** 32 else np.int64),
                              np.frombuffer(run_lengths, dtype=np.int64))
        del unique, first, inverse, rank, order, runs, run_lengths
        member = np.frombuffer(members, dtype="S16")
        sort = np.argsort(member, kind="stable")
        member = member[sort]
        del members
        same = np.flatnonzero(member[1:] == member[:-1])
        if len(same):  # the first line that names a member named before
            later = sort[same + 1]
            k = int(np.argmin(later))
            _member_twice(path, name, int(sort[same[k]]), int(later[k]))
        return cls(name, member, number_of[sort], valid, count)

    def lookup(self, query: np.ndarray) -> np.ndarray:
        """(K,) int64: the cluster number of each id (`query`: their _id_digests), -1 for an id
        that is no member."""
        out = np.full(len(query), -1, dtype=np.int64)
        if not len(query) or not len(self.members):
            return out
        order = np.argsort(query)  # (sorted queries: 7x faster than a block's in its order, cache misses)
        query = query[order]
        pos = np.minimum(np.searchsorted(self.members, query), len(self.members) - 1)
        hit = self.members[pos] == query
        out[order[hit]] = self.cluster[pos[hit]]
        return out

    def keys(self, shuffle: bool, seed: int) -> np.ndarray:
        """(C,) uint64: where each cluster goes in the output (in the order of the keys; bucket:
        the top 8 bits). In order: the cluster numbers spread over the range; shuffled: random."""
        if shuffle:
            return np.random.default_rng([seed, 5]).bit_generator.random_raw(self.count).astype(np.uint64)
        shift = 64 - max(1, int(self.count).bit_length())
        return np.arange(self.count, dtype=np.uint64) << np.uint64(shift)


class _Grouper(_Buckets):
    """--clusters: the proteins of one output grouped by cluster in bounded memory. Each protein
    goes to one of 256 bucket files by the top 8 bits of its cluster's key (_ClusterMap.keys), so
    a cluster lands whole in one bucket; then each bucket in turn is read whole, its proteins
    sorted by (key, cluster) (a stable sort: a cluster's members in the input's order), and
    written a cluster at a time. Proteins without a cluster, in order (not shuffled), wait in a
    file of their own and come last, in the input's order, each a cluster of one. Memory: one
    bucket (about 1/256 of the output's text) read at a time, a few times its size in objects."""

    SEPARATOR = b"\n\n"
    COUNT = 256
    DESC = "prep: clusters"
    FLAG = "--clusters"

    def __init__(self, directory: Path, budget: int):
        super().__init__(directory, self.COUNT + 1, budget)  # the last bucket: loose proteins
        self.counts = np.zeros(self.COUNT + 1, dtype=np.int64)
        self.proteins = None  # (the progress bar's total: clusters, counted as they are written)
        self.clusters = 0     # written

    def add(self, docs: list, keys: np.ndarray, units: np.ndarray) -> None:
        """Proteins (their text without the empty line) with their cluster's key and number."""
        if not docs:
            return
        buckets = (keys >> np.uint64(56)).astype(np.int64)
        order = np.argsort(buckets, kind="stable")
        sizes = np.bincount(buckets, minlength=self.COUNT)
        self.counts[:self.COUNT] += sizes
        keys, units = keys.tolist(), units.tolist()
        start = 0
        for k, end in enumerate(np.cumsum(sizes).tolist()):
            if end > start:
                self._hold(k, b"".join(b"%d\t%d\t%s\n\n" % (keys[i], units[i], docs[i])
                                       for i in order[start:end].tolist()))
            start = end

    def add_loose(self, docs: list) -> None:
        """Proteins without a cluster, written last in this order."""
        if docs:
            self.counts[self.COUNT] += len(docs)
            self._hold(self.COUNT, self.SEPARATOR.join(docs) + self.SEPARATOR)

    def _hold(self, k: int, text: bytes) -> None:
        super()._hold(k, text)
        if self.pending_bytes > self.spill_at:
            try:
                self._spill()
            except OSError as exc:
                raise self._failure(exc) from None

    def _text(self, k: int) -> bytes:
        text = b"".join(self.pending[k])
        self.pending[k] = []
        if self.paths[k].exists():
            text = self.paths[k].read_bytes() + text
            self.paths[k].unlink()
        return text

    def emit(self, write) -> None:
        """Calls write(list of clusters' texts: the members' lines joined by newlines) with every
        cluster once: the buckets' in key order, then the loose proteins."""
        try:
            self.close()  # (a full disk's last write shows here; the text still pending follows the files')
        except OSError as exc:
            raise self._failure(exc) from None
        piece = 1 << 13
        for k in range(self.COUNT):
            if not self.counts[k]:
                continue
            entries = [entry.split(b"\t", 2) for entry in self._text(k).split(self.SEPARATOR)[:-1]]
            rows = sorted(((int(key), int(unit), i) for i, (key, unit, _) in enumerate(entries)))
            groups: list[bytes] = []
            members: list[bytes] = []
            current = None
            for _, unit, i in rows:
                if unit != current and members:
                    groups.append(b"\n".join(members))
                    members = []
                current = unit
                members.append(entries[i][2])
            groups.append(b"\n".join(members))
            del entries, rows
            for start in range(0, len(groups), piece):
                self.clusters += len(groups[start:start + piece])
                write(groups[start:start + piece])
        if self.counts[self.COUNT]:
            self._emit_loose(write)

    def _emit_loose(self, write) -> None:
        path = self.paths[self.COUNT]
        tail = b"".join(self.pending[self.COUNT])
        self.pending[self.COUNT] = []
        rest = b""
        # (a chunk at a time: `(*self._chunks(path), tail)` read the whole file into memory first)
        for chunk in itertools.chain(self._chunks(path), (tail,)):
            rest += chunk
            cut = rest.rfind(self.SEPARATOR)
            if cut >= 0:
                docs = rest[:cut + 2].split(self.SEPARATOR)[:-1]
                rest = rest[cut + 2:]
                self.clusters += len(docs)
                write(docs)

    @staticmethod
    def _chunks(path: Path) -> Iterator[bytes]:
        """A file's bytes in pieces of 8 MiB, the file removed once read (none where it is not)."""
        if not path.exists():
            return
        with open(path, "rb") as src:
            while chunk := src.read(8 << 20):
                yield chunk
        path.unlink()


class _Clusters:
    """--clusters in a run: the map, the groupers (training; validation with --valid-fraction)
    and the keys of the TSV's clusters: random in a shuffled training output, else in order."""

    def __init__(self, cmap: _ClusterMap, directory: Path, options: CorpusOptions):
        self.map = cmap
        self.valid_fraction = options.valid_fraction
        self.train = _Grouper(directory / "train", options.shuffle_bytes)
        self.valid = _Grouper(directory / "valid", options.shuffle_bytes) if options.valid_fraction > 0 else None
        for grouper in (self.train, self.valid):
            if grouper is not None:
                grouper.directory.mkdir()
        self.shuffle = options.shuffle
        in_order = cmap.keys(False, 0)  # (8 bytes a cluster, 16 with --shuffle and a validation split)
        self.valid_keys = in_order if self.valid is not None else None
        self.train_keys = cmap.keys(True, options.seed) if options.shuffle else in_order
        self.rng = np.random.default_rng([options.seed, 6])  # keys of shuffled proteins without a cluster
        self.loose = 0  # proteins without a cluster so far (their numbers follow the TSV's clusters)

    def close(self) -> None:
        for grouper in (self.train, self.valid):
            if grouper is not None:
                grouper.close(quiet=True)

    def add(self, text, ids: list[str], digests: np.ndarray, stats: "CorpusStats") -> None:
        """A block's training text (every written protein, then an empty line), their ids and the
        ids' digests."""
        docs = text.split(_Grouper.SEPARATOR)[:-1] if text else []
        if len(docs) != len(ids):  # pragma: no cover - the worker's text and ids disagree
            raise AssertionError(f"--clusters: {len(docs)} proteins, {len(ids)} ids")
        if not docs:
            return
        number = self.map.lookup(digests)
        loose = np.flatnonzero(number < 0)
        if len(loose):
            stats.unclustered += len(loose)
            stats.unclustered_ids.extend(ids[i] for i in loose[:NAMED - len(stats.unclustered_ids)].tolist())
            number[loose] = self.map.count + self.loose + np.arange(len(loose))
            self.loose += len(loose)
        inside = number < self.map.count
        valid = np.zeros(len(docs), dtype=bool)
        if self.valid is not None:  # by the cluster's id, or a protein's own without one
            valid[inside] = self.map.valid[number[inside]]
            valid[loose] = [in_validation(ids[i], self.valid_fraction) for i in loose.tolist()]
        for side, grouper, keys in ((~valid, self.train, self.train_keys), (valid, self.valid, self.valid_keys)):
            if grouper is None:
                continue
            mine = np.flatnonzero(side & inside)
            if len(mine):
                grouper.add([docs[i] for i in mine.tolist()], keys[number[mine]], number[mine])
            rest = np.flatnonzero(side & ~inside)
            if not len(rest):
                continue
            if self.shuffle and grouper is self.train:  # (drawn in the input's order: the same corpus for any -j)
                grouper.add([docs[i] for i in rest.tolist()], self.rng.bit_generator.random_raw(len(rest))
                            .astype(np.uint64), number[rest])
            else:
                grouper.add_loose([docs[i] for i in rest.tolist()])
        if valid.any():
            stats.valid_proteins += int(valid.sum())
            stats.valid_residues += sum((len(docs[i]) + 1) // 2 for i in np.flatnonzero(valid).tolist())


def _dedup_failure(exc: OSError, directory: Path) -> BaseException:
    """A write of --dedup's scratch files (`directory`) that found no room, as one line naming the
    folder they are in ("No space left on device" alone named nothing); any other error as it is."""
    if (reason := disk_full(exc)) is None:
        return exc
    return RuntimeFailure(f"--dedup cannot write its scratch files: {reason} (they take 24 bytes a record, and a "
                          "copy of stdin or a pipe; --tmp-dir DIR puts them elsewhere)", path=str(directory.parent))


class _Dedup:
    """Exact dedup with bounded memory: pass 1 digests, per-partition sort, pass 2 drops.

    Pass 1 appends (digest_hi, digest_lo, ordinal) of every accepted record to one of P
    partition files chosen by the digest's top bits. Each partition is then loaded alone,
    sorted, and the ordinals of all but the first record of each digest are appended to one of
    the ordinal-range files. Pass 2 reads the range files in order. Memory: one partition
    (~24 bytes x records / P) plus one range of drop ordinals (at most RANGE x 8 bytes).
    """

    RANGE = 1 << 24  # ordinals per drop-list file: at most 128 MiB of drops in memory

    def __init__(self, directory: Path, expected_records: int):
        self.dir = directory
        # About 2 M records (48 MB) per partition, but at most 512 files open at once (BFD: ~4 M
        # records, ~230 MB while one is sorted).
        self.bits = min(9, max(4, math.ceil(math.log2(max(expected_records, 1) / (2 << 20) + 1))))
        _raise_open_file_limit((1 << self.bits) + 64)
        self.parts: dict[int, object] = {}
        self._range_index = -1
        self._range: np.ndarray = np.zeros(0, dtype=np.uint64)
        self.block_records: list[int] = []  # records per block in pass 1, to place pass 2's blocks

    def add(self, digests: np.ndarray) -> None:
        if not len(digests):
            return
        part = (digests[:, 0] >> np.uint64(64 - self.bits)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        part_sorted = part[order]
        bounds = np.flatnonzero(np.diff(part_sorted)) + 1
        try:
            for rows in np.split(order, bounds):
                p = int(part[rows[0]])
                handle = self.parts.get(p)
                if handle is None:
                    handle = self.parts[p] = open(self.dir / f"part{p:04d}.u64", "ab")
                handle.write(np.ascontiguousarray(digests[rows]).tobytes())
        except OSError as exc:
            raise _dedup_failure(exc, self.dir) from None

    def close(self) -> None:
        """The partition files closed after a failure, errors ignored (deleted with the temporary
        folder while still open, they held their disk space until the traceback was let go)."""
        for handle in self.parts.values():
            with contextlib.suppress(OSError):
                handle.close()

    def finish(self) -> int:
        """Find the duplicates; returns how many records will be dropped. The partition files
        are closed strictly: a last flush that meets a full disk is the run's error (ignored, a
        file cut short dropped digests: duplicates kept, exit 0)."""
        try:
            for handle in self.parts.values():
                handle.close()
        except OSError as exc:
            raise _dedup_failure(exc, self.dir) from None
        drop_files: dict[int, object] = {}
        total = 0
        try:
            for p in sorted(self.parts):
                path = self.dir / f"part{p:04d}.u64"
                rows = np.fromfile(path, dtype=np.uint64).reshape(-1, 3)
                path.unlink()
                order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))  # by digest, then ordinal
                rows = rows[order]
                same = (rows[1:, 0] == rows[:-1, 0]) & (rows[1:, 1] == rows[:-1, 1])
                dropped = rows[1:, 2][same]
                total += len(dropped)
                bucket = (dropped // np.uint64(self.RANGE)).astype(np.int64)
                for b in np.unique(bucket).tolist():
                    handle = drop_files.get(b)
                    if handle is None:
                        handle = drop_files[b] = open(self.dir / f"drops{b:06d}.u64", "ab")
                    handle.write(dropped[bucket == b].tobytes())
        except BaseException as exc:
            for handle in drop_files.values():
                with contextlib.suppress(OSError):
                    handle.close()
            if isinstance(exc, OSError):
                raise _dedup_failure(exc, self.dir) from None
            raise
        try:
            for handle in drop_files.values():
                handle.close()
        except OSError as exc:
            raise _dedup_failure(exc, self.dir) from None
        return total

    def drops_for(self, ordinal0: int, count: int) -> np.ndarray:
        """Sorted ordinals of duplicates in [ordinal0, ordinal0 + count); called in order."""
        out = []
        first, last = ordinal0 // self.RANGE, (ordinal0 + max(count, 1) - 1) // self.RANGE
        for b in range(first, last + 1):
            if b != self._range_index:
                path = self.dir / f"drops{b:06d}.u64"
                self._range = np.sort(np.fromfile(path, dtype=np.uint64)) if path.exists() else \
                    np.zeros(0, dtype=np.uint64)
                self._range_index = b
            lo = np.searchsorted(self._range, np.uint64(ordinal0))
            hi = np.searchsorted(self._range, np.uint64(ordinal0 + count))
            out.append(self._range[lo:hi])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def _raise_open_file_limit(needed: int) -> int | None:
    """Files that stay open together (dedup's partitions in pass 1, --shards): lift the soft
    limit if it is lower. The limit now, or None where it cannot be read (no `resource` module)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except Exception:
        return None
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None if soft == resource.RLIM_INFINITY else soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(Exception):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _spool(directory: Path, source: str, index: int) -> Path:
    """Dedup reads its input twice: stdin or a pipe is copied (as it came, compressed or not) to disk."""
    path = directory / f"input{index}"
    try:
        with open(path, "wb") as out:
            if source == "-":
                shutil.copyfileobj(stdin_binary(), out, 1 << 20)
            else:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    except OSError as exc:
        raise _dedup_failure(exc, directory) from None
    return path


class _Stdout:
    """stdout where an AtomicFile would go (`--rejects -`, `--stats -`): written as it comes."""

    def __init__(self):
        # (a full stdout named: `--stats - > /dev/full` said "No space left on device" alone)
        self.stream = NamedStdout(stdout_binary())

    def prepare(self) -> None:
        self.stream.flush()

    def commit(self) -> None:
        self.stream.flush()

    def abort(self) -> None:
        pass


def _output(path, **atomic):
    """stdout for `-`, else an AtomicFile (with `atomic`'s compression settings; a name the user
    gave follows the user's own link)."""
    return _Stdout() if str(path) == "-" else AtomicFile(path, **atomic)


def _is_shard_of(path: str, options: CorpusOptions) -> bool:
    """Whether `path` names a file that sharding -o would write (corpus.00003.txt.gz)."""
    if not options.sharded or path == "-" or not options.output:
        return False
    first = shard_path(options.output, 0)
    here = Path(os.path.realpath(path))
    if here.parent == Path(os.path.realpath(first.parent)) and shard_index(options.output, here.name) is not None:
        return True
    # A file system that ignores case (macOS's, Windows'): `-o C.fa --shards 2` writes C.00000.fa,
    # which is the input c.00000.fa there. Taken as such when the two names are one file.
    output = Path(options.output)
    k = shard_index(output.with_name(output.name.casefold()), Path(path).name.casefold())
    return k is not None and os.path.exists(path) and os.path.exists(shard_path(output, k)) \
        and same_file(path, shard_path(output, k))


# --------------------------------------------------------------------------------------------
# The job


def _spill_base(options: CorpusOptions) -> str | None:
    """--tmp-dir when given; else /dev/shm when it can hold every block in flight with room to
    spare (containers often give it 64 MB), else $TMPDIR (page cache all the same, until the
    kernel writes it back)."""
    if options.tmp_dir:
        return options.tmp_dir
    need = 8 * options.threads * 4 * options.block_bytes  # text is ~2x the block, x2 spare
    try:
        stat = os.statvfs("/dev/shm")
        if os.access("/dev/shm", os.W_OK) and stat.f_bavail * stat.f_frsize > need:
            return "/dev/shm"
    except OSError:
        pass
    return None


def _reserve_open_files(options: CorpusOptions) -> None:
    """Room for the files a run keeps open together: every shard of --shards N (proteins are
    dealt round-robin to the end; past the usual soft limit of 1024 files the 1000th failed with
    "Too many open files") and --shuffle's bucket files (up to MAX_BUCKETS; with the limit raised
    for the shards alone, --shards 1000 --shuffle failed once the buckets were opened). Room is
    asked for the other files too; refused (exit 2) only without room for a few of them."""
    buckets = _Shuffle.MAX_BUCKETS if options.shuffle and options.clusters is None else 0
    if options.clusters is not None:  # (a training grouper, and a validation one)
        buckets = (_Grouper.COUNT + 1) * (2 if options.valid_fraction > 0 else 1)
    if options.num_shards == 1 and not buckets:
        return
    files = options.num_shards + buckets
    limit = _raise_open_file_limit(files + 64)
    if limit is None or limit >= files + 16:
        return
    if buckets:
        raise UsageError(f"{'--clusters' if options.clusters is not None else '--shuffle'} keeps up to {buckets} "
                         f"scratch files open besides the {options.num_shards} "
                         f"shard(s), and this process may open {limit} files (ulimit -n): "
                         + ("use fewer shards, or --shard-size, which keeps one open" if options.num_shards > 1
                            else "raise the limit (ulimit -n)"))
    shards = option(f"--shards {options.num_shards}", f"num_shards={options.num_shards}")
    raise UsageError(f"{shards} keeps {options.num_shards} files open, and this process may open {limit} (ulimit -n): "
                     f"use fewer shards, or {option('--shard-size', 'shard_size')}, which keeps one open")


def _scratch_base(options: CorpusOptions) -> str:
    """Where --dedup, --shuffle and --clusters keep their files: --tmp-dir, else beside the output (a disk
    that holds the corpus), else $TMPDIR."""
    if options.tmp_dir:
        return options.tmp_dir
    # (not beside /dev/null, /dev/stdout or a pipe: /dev/fd/1's folder cannot hold one, "/dev/fd:
    # cannot write in this folder", and /dev is root's, and memory)
    if options.output and str(options.output) != "-" and not special_output(options.output):
        return str(Path(options.output).parent)
    return tempfile.gettempdir()


def _write_shuffled(shuffle: "_Shuffle | _Grouper", writers: "_Writers", options: CorpusOptions) -> None:
    """The shuffled proteins to the training outputs: dealt round-robin to --shards N as the
    unshuffled ones are, cut by --shard-size, or all to one file. A compressed output's pieces
    are compressed by -j threads (zlib, zstd, bz2 and lzma let go of the GIL), written in order."""
    from concurrent.futures import ThreadPoolExecutor

    from protrans_cli import console

    sep = _Shuffle.SEPARATOR
    kind = writers.train_kind  # (None with --shard-size: its writer compresses each piece itself)

    def text(docs: list) -> bytes:
        # a compressed output gets a gzip member (zstd frame, ...) per piece, as the workers
        # write one per block: train --resume decompresses from its position's member on
        joined = sep.join(docs) + sep
        return compress_bytes(joined, kind, FAST_LEVELS.get(kind)) if kind else joined

    bar = console.progress(total=shuffle.proteins, desc=getattr(shuffle, "DESC", "prep: shuffle"),
                           unit="protein" if shuffle.proteins is not None else "cluster") if options.progress else None
    pool = ThreadPoolExecutor(options.threads) if kind and options.threads > 1 else None
    pending: collections.deque = collections.deque()  # (destination, proteins before it, text or future)
    written = 0

    def drain(keep: int) -> None:
        while len(pending) > keep:
            dest, before, piece = pending.popleft()
            writers.write({dest: piece.result() if pool is not None else piece}, before)

    def write(docs: list) -> None:
        nonlocal written
        # writers.write puts destination j in shard (j + written) mod N: docs[j::N] are the
        # proteins numbered written + j, written + j + N, ... of the whole run
        n = options.num_shards
        for j in range(min(n, len(docs))):
            part = docs[j::n] if n > 1 else docs
            pending.append((j, written, pool.submit(text, part) if pool is not None else text(part)))
        drain(2 * options.threads if pool is not None else 0)
        written += len(docs)
        if bar is not None:
            bar.update(len(docs))

    try:
        shuffle.emit(write)
        drain(0)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()


def _bar(options: CorpusOptions, paths: Sequence[str], desc: str):
    """A progress bar in bytes of FASTA, with a total when every input is an uncompressed file."""
    if not options.progress:
        return None
    from protrans_cli import console

    total = sum(os.path.getsize(p) for p in paths) if all(_plain_file(p) for p in paths) else None
    return console.progress(total=total, desc=desc, unit="B", unit_scale=True)


def _refuse_a_stream_read_twice(inputs: Sequence[str]) -> None:
    """A pipe or other stream named twice (`- /dev/stdin`, `/dev/fd/3 /dev/fd/3`) is read once:
    the second name met its end and added nothing, a silently short corpus. A regular file may
    be named twice (it is read twice)."""
    seen: dict[tuple[int, int], str] = {}
    for path in inputs:
        try:
            st = os.fstat(0) if path == "-" else os.stat(path)
        except OSError:
            continue  # (a closed stdin: open_input names it)
        if not (_stat.S_ISFIFO(st.st_mode) or _stat.S_ISSOCK(st.st_mode)):
            continue  # (a file, or a device such as /dev/null, which reads the same each time)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise UsageError(f"{path} and {seen[key]} are one stream, which can be read only once")
        seen[key] = path


def build_corpus(inputs: Sequence, options: CorpusOptions | None = None) -> CorpusStats:
    """Turn FASTA files (`-` is stdin; compression detected) into the corpus; returns the stats.

    Raises InputError for unreadable input (and, with `strict`, for the first record that fails
    normalisation) and UsageError for contradictory options. Outputs appear only on success.
    """
    options = options or CorpusOptions()
    expect_options(options, CorpusOptions, "options")
    options.validate()
    inputs = _checked_inputs(inputs, options)
    stats = CorpusStats(inputs=[display_name(p) for p in inputs])
    cfg = _block_config(options)
    t0 = time.perf_counter()
    run = _PrepRun(options, inputs, cfg, threads=_threads_worth_starting(inputs, options))
    _reserve_open_files(options)
    try:
        if options.clusters is not None:  # (read whole before the FASTA: a bad line stops the run at once)
            run.cluster_map = _ClusterMap.load(str(options.clusters), options.valid_fraction)
        _open_outputs(run)
        if options.dedup:
            _find_duplicates(run)
        _write_corpus(run, stats)
        _commit_outputs(run, stats, t0)
    except BaseException:
        run.abort_outputs()
        raise
    finally:
        run.remove_scratch()
    return stats  # stats.seconds was set with the outputs, so --stats and the summary agree


def _checked_inputs(inputs, options: CorpusOptions) -> list[str]:
    """The inputs as a list of path strings, refused before anything is opened: no input, stdin
    or a stream named twice, an unreadable file, an input that an output would replace."""
    if isinstance(inputs, (str, os.PathLike)):  # one file, not a list of them (read letter by letter)
        inputs = [inputs]
    # (None was a TypeError, "'NoneType' object is not iterable"; a number was "1: no such file")
    if inputs is None or isinstance(inputs, bytes) or not hasattr(inputs, "__iter__"):
        raise UsageError(f"inputs must be a FASTA path or a list of them, got {type(inputs).__name__} {inputs!r:.60}")
    inputs = list(inputs)
    if not all(isinstance(p, (str, os.PathLike)) for p in inputs):
        raise UsageError(f"inputs must be a FASTA path or a list of them, got {inputs!r:.60}")
    inputs = [str(p) for p in inputs]
    if not inputs:
        raise UsageError("no input: give one or more FASTA files, or - for stdin")
    if inputs.count("-") > 1:
        raise UsageError("stdin (-) can be read only once")
    for path in inputs:
        if path != "-" and (problem := unreachable_input(path)):
            raise InputError(problem, path=path)
    _refuse_a_stream_read_twice(inputs)
    if options.clusters is not None and (problem := unreachable_input(str(options.clusters))):
        raise InputError(problem, path=str(options.clusters))
    read = inputs + ([str(options.clusters)] if options.clusters is not None else [])
    for out in (options.output, options.valid_output, options.rejects, options.stats):
        # `prep x.fa -o x.fa` replaced the FASTA with the corpus on success: the input was lost.
        if input_named_by(out, read):
            raise UsageError(f"{out} is also an input: writing it would replace the FASTA (choose another name)")
    for path in inputs:  # ... and `prep c.00000.fa -o c.fa --shards 2` by the first shard
        if _is_shard_of(path, options):
            raise UsageError(f"{path} is also an input: a shard of -o {options.output} would replace it "
                             "(choose another name)")
    return inputs


def _block_config(options: CorpusOptions) -> _BlockConfig:
    """What a worker needs to process a block (the spill folder is added once it exists)."""
    grouped = options.clusters is not None  # (the split by cluster is the main process's: _Clusters.add)
    return _BlockConfig(
        rare=options.rare, min_length=options.min_length, max_length=options.max_length,
        long=options.long, valid_fraction=0.0 if grouped else options.valid_fraction,
        # (--shuffle and --clusters deal the proteins to the shards themselves)
        num_shards=1 if options.shuffle or grouped else options.num_shards,
        want_rejects=bool(options.rejects), digests=False,
        # (--shuffle and --clusters cut the text into proteins after the workers, and compress it then)
        train_compression=None if options.shuffle or grouped else worker_compression(options)[0],
        valid_compression=None if grouped else worker_compression(options)[1],
        kept_ids=grouped,
    )


def _threads_worth_starting(inputs: Sequence[str], options: CorpusOptions) -> int:
    # (files only: a pipe's size is 0, and `prep <(zcat x.fa.gz) -j 8` ran in one process)
    if all(p != "-" and os.path.isfile(p) for p in inputs) and \
            sum(os.path.getsize(p) for p in inputs) < 2 * options.block_bytes:
        return 1  # starting workers would take longer than the whole job
    return options.threads


@dataclass
class _PrepRun:
    """What build_corpus's steps share: how the blocks are read and processed, the outputs being
    written (aborted on failure) and the scratch folders (removed however the run ends)."""

    options: CorpusOptions
    inputs: list[str]
    cfg: _BlockConfig
    threads: int
    paths: list[str] = field(init=False)  # what is read: the inputs, or --dedup's copies of streams
    names: list[str] = field(init=False)  # the inputs' names, for messages (--dedup reads copies of stdin and pipes)
    writers: _Writers | None = None
    rejects: AtomicFile | _Stdout | None = None
    summary: AtomicFile | _Stdout | None = None
    spill_dir: str | None = None
    dedup_dir: Path | None = None
    dedup: _Dedup | None = None
    shuffle_dir: Path | None = None
    shuffle: _Shuffle | None = None
    cluster_map: _ClusterMap | None = None
    clusters_dir: Path | None = None
    clusters: _Clusters | None = None

    def __post_init__(self):
        self.paths = self.inputs
        self.names = [display_name(p) for p in self.inputs]

    def abort_outputs(self) -> None:
        for handle in (self.writers, self.rejects, self.summary):
            if handle is not None:
                handle.abort()

    def remove_scratch(self) -> None:
        if self.dedup is not None:
            self.dedup.close()
        if self.dedup_dir is not None:
            shutil.rmtree(self.dedup_dir, ignore_errors=True)
        if self.shuffle is not None:
            self.shuffle.close(quiet=True)
        if self.shuffle_dir is not None:
            shutil.rmtree(self.shuffle_dir, ignore_errors=True)
        if self.clusters is not None:
            self.clusters.close()
        if self.clusters_dir is not None:
            shutil.rmtree(self.clusters_dir, ignore_errors=True)
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


def _open_outputs(run: _PrepRun) -> None:
    """Open the corpus, --rejects and --stats outputs (none is in place before the commit), and
    the workers' spill folder."""
    options = run.options
    run.writers = _Writers(options)
    run.rejects = _output(options.rejects, follow_link=True) if options.rejects else None
    run.summary = _output(options.stats, follow_link=True) if options.stats else None
    if run.threads > 1:
        # (signals held until the name is kept: a SIGHUP or SIGTERM between the folder's making and
        # the assignment left it behind, build_corpus's finally seeing None)
        with signals_held():
            run.spill_dir = str(make_temporary(_spill_base(options) or tempfile.gettempdir(), "protrans-prep.", "",
                                               folder=True))
        run.cfg = _BlockConfig(**{**asdict(run.cfg), "spill_dir": run.spill_dir})
    if run.rejects:
        run.rejects.stream.write(b"id\treason\tdetail\tfile\tline\n")


def _find_duplicates(run: _PrepRun) -> None:
    """--dedup's first pass: the digest of every accepted sequence, then the drop lists (run.dedup)."""
    options = run.options
    with signals_held():  # (as the spill folder's, in _open_outputs)
        run.dedup_dir = make_temporary(_scratch_base(options), ".protrans-dedup.", "", folder=True)
    # Read twice: stdin, pipes and process substitutions (<(zcat ...)) are copied first.
    run.paths = [p if p != "-" and os.path.isfile(p) else str(_spool(run.dedup_dir, p, k))
                 for k, p in enumerate(run.inputs)]
    size = sum(os.path.getsize(p) for p in run.paths)
    run.dedup = dedup = _Dedup(run.dedup_dir, expected_records=size // 100)
    pass1 = _BlockConfig(**{**asdict(run.cfg), "digests": True, "want_rejects": False})
    jobs = ((b, None) for b in _iter_blocks(run.paths, options.block_bytes, run.names))
    ordinal = 0
    line0 = 1
    bar = _bar(options, run.paths, "prep: dedup pass 1")
    for block, res in _run_blocks(jobs, _process_block, (pass1,), run.threads, run.spill_dir):
        if block.line0:
            line0 = block.line0
        if res.fatal is not None:  # (it has no digests: a TypeError traceback)
            rid, detail, line = res.fatal
            raise InputError(detail, path=block.name, record=rid or None, line=line0 + line - 1)
        line0 += res.lines
        res.digests[:, 2] += np.uint64(ordinal)
        dedup.add(res.digests)
        dedup.block_records.append(res.records)
        ordinal += res.records
        if bar is not None:
            bar.update(block.size)
    if bar is not None:
        bar.close()
    dedup.finish()


def _blocks_with_drops(run: _PrepRun) -> Iterator[tuple[_Block, np.ndarray | None]]:
    """The blocks to process, each with its records' --dedup drops (indices within the block)."""
    ordinal = 0
    dedup = run.dedup
    for block in _iter_blocks(run.paths, run.options.block_bytes, run.names):
        drops = None
        if dedup is not None:
            count = dedup.block_records[block.index]
            drops = (dedup.drops_for(ordinal, count) - np.uint64(ordinal)).astype(np.int64)
            ordinal += count
        yield block, drops


def _write_corpus(run: _PrepRun, stats: CorpusStats) -> None:
    """The pass that writes: each block's proteins to the outputs (the training ones through
    --shuffle's buckets), its rejects to --rejects, its counts to `stats`."""
    options = run.options
    if run.cluster_map is not None:
        with signals_held():  # (as the spill folder's, in _open_outputs)
            run.clusters_dir = make_temporary(_scratch_base(options), ".protrans-clusters.", "", folder=True)
        run.clusters = _Clusters(run.cluster_map, run.clusters_dir, options)
        stats.clusters_out, stats.unclustered = 0, 0
    elif options.shuffle:
        run.shuffle_dir = make_temporary(_scratch_base(options), ".protrans-shuffle.", "", folder=True)
        run.shuffle = _Shuffle(run.shuffle_dir, options.seed, options.shuffle_bytes)
    bar = _bar(options, run.paths, "prep")
    line0 = 1
    for block, res in _run_blocks(_blocks_with_drops(run), _process_block, (run.cfg,), run.threads, run.spill_dir):
        if block.line0:  # an input's first block
            line0 = block.line0
        if res.fatal is not None or (options.strict and res.first_invalid is not None):
            rid, detail, line = res.fatal or res.first_invalid
            raise InputError(detail, path=block.name, record=rid or None, line=line0 + line - 1)
        if run.shuffle is not None and 0 in res.outputs:
            train = res.outputs.pop(0)
            run.shuffle.add(train.read() if isinstance(train, _Spill) else train)
        elif run.clusters is not None:
            train = res.outputs.pop(0, b"")
            run.clusters.add(train.read() if isinstance(train, _Spill) else train, res.kept_ids or [],
                             res.kept_digests, stats)
        run.writers.write(res.outputs, stats.proteins_out - stats.valid_proteins)
        if run.rejects:
            _write_rejects(run.rejects, block, res, line0)
        line0 += res.lines
        _add_block_stats(stats, block, res)
        if bar is not None:
            bar.update(block.size)
    if bar is not None:
        bar.close()
    if run.shuffle is not None:
        _write_shuffled(run.shuffle, run.writers, options)
        stats.shuffle_seed = options.seed
    if run.clusters is not None:
        _write_clusters(run.clusters, run.writers, options)
        stats.train_clusters = run.clusters.train.clusters
        stats.clusters_out = run.clusters.train.clusters + (run.clusters.valid.clusters if run.clusters.valid else 0)
        stats.shuffle_seed = options.seed if options.shuffle else None


def _write_clusters(clusters: _Clusters, writers: _Writers, options: CorpusOptions) -> None:
    """The grouped proteins to the outputs: the training clusters as --shuffle's proteins are
    (dealt round-robin to --shards N a cluster at a time; --shard-size cuts only at an empty
    line, which ends a cluster), the validation clusters in order to --valid-output."""
    _write_shuffled(clusters.train, writers, options)
    if clusters.valid is None:
        return
    sep, kind = _Grouper.SEPARATOR, writers.valid_kind

    def write(docs: list) -> None:
        text = sep.join(docs) + sep
        writers.write({-1: compress_bytes(text, kind, FAST_LEVELS.get(kind)) if kind else text}, 0)

    clusters.valid.emit(write)


def _write_rejects(rejects, block: _Block, res: _BlockResult, line0: int) -> None:
    """A block's rejected records as --rejects rows (`line0`: the line the block starts at)."""
    shown_name = _tsv_field(block.name)  # a tab or newline in a file name split its row
    rejects.stream.write(b"".join(
        f"{_tsv_field(rid)}\t{reason}\t{printable(detail)}\t{shown_name}\t{line0 + line - 1}\n"
        .encode("utf-8", "replace")
        for rid, reason, detail, line in res.rejects))


def _add_block_stats(stats: CorpusStats, block: _Block, res: _BlockResult) -> None:
    stats.input_bytes += block.size
    stats.records_in += res.records
    stats.proteins_out += res.proteins_out
    stats.residues_out += res.residues_out
    stats.lines_out += res.lines_out
    stats.valid_proteins += res.valid_proteins
    stats.valid_residues += res.valid_residues
    stats.rare_to_x += res.rare_to_x
    stats.nucleotide_like += res.nucleotide_like
    stats.nucleotide_ids.extend(res.nucleotide_ids[:NAMED - len(stats.nucleotide_ids)])
    stats.crop_dropped += res.crop_dropped
    for reason, count in res.rejected.items():
        stats.rejected[reason] = stats.rejected.get(reason, 0) + count
    stats.add_lengths(res.length_counts, res.long_lengths)


def _commit_outputs(run: _PrepRun, stats: CorpusStats, t0: float) -> None:
    """Put every output in place, with the stats (timed from `t0`) in --stats."""
    from protrans_cli import console

    options = run.options
    # Two phases: every output written out (a full disk shows here, before any old file is
    # replaced), then the renames, which a signal cannot split.
    stats.outputs = run.writers.prepare()
    if run.rejects:
        stats.outputs.append(str(options.rejects))
    stats.seconds = time.perf_counter() - t0
    if run.summary:
        run.summary.stream.write(json.dumps(stats.to_dict(), indent=2).encode() + b"\n")
    handles = [h for h in (run.rejects, run.summary) if h is not None]
    for handle in handles:
        handle.prepare()
    with signals_held():
        stale = run.writers.commit()
        for handle in handles:
            handle.commit()
        console.output_complete(", ".join(map(str, run.writers.paths)) or "standard output")  # (before a held signal)
    if stale:
        console.warn(f"removed {len(stale)} shard(s) an earlier run left beyond this run's "
                     f"{len(run.writers.paths)} ({stale[0]}{', ...' if len(stale) > 1 else ''}): a corpus pattern "
                     "would have read them with the new ones")

"""Opening inputs (magic-byte decompression, stdin, errors) and atomic outputs; the FASTA reader."""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protrans_cli.errors import InputError, RuntimeFailure, UsageError
from protrans_cli.io.fasta import parse_fasta, read_fasta
from protrans_cli.io.files import AtomicFile, atomic_output, open_input

TEXT = b">a desc\nMKT\n"


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, bz2.compress, lzma.compress, "zstd"])
def test_open_input_detects_compression_from_bytes(tmp_path, compress):
    if compress == "zstd":
        import zstandard

        compress = zstandard.ZstdCompressor().compress
    path = tmp_path / "plain.txt"  # a misleading name
    path.write_bytes(compress(TEXT * 1000))
    with open_input(path) as stream:
        assert stream.read() == TEXT * 1000


def test_a_tables_delimiter_follows_its_name_compressed_or_not():
    """.tsv and .tab are tab-separated, .csv comma-separated, under every compression suffix an
    output is compressed for (.zstd as .zst: `predict -o p.tsv.zstd` wrote commas into a .tsv);
    stdout and other names say nothing."""
    from protrans_cli.io.files import compression_for_output, named_delimiter

    for name in ("p.tsv", "P.TAB", "p.tsv.gz", "p.tsv.bz2", "p.tsv.xz", "p.tsv.zst", "p.tsv.zstd", "p.tab.ZSTD"):
        assert named_delimiter(name) == "\t", name
    for name in ("p.csv", "p.csv.gz", "p.csv.zst", "p.csv.zstd"):
        assert named_delimiter(name) == ",", name
        assert compression_for_output(name) in (None, "gzip", "zstd")
    for name in ("-", "p.txt", "p.h5", "p.gz", None):
        assert named_delimiter(name) is None, name


def test_disk_full_is_said_of_a_full_disk_a_quota_or_the_size_limit_and_nothing_else():
    """An OSError ENOSPC/EDQUOT/EFBIG, or a library's "(os error 28)" text (safetensors' writer),
    however deep in the chain of errors, is a full disk; any other error (safetensors' "(os error
    13)", permission denied) is not called one."""
    import errno

    from protrans_cli.io.files import disk_full

    class SafetensorError(Exception):
        pass

    assert disk_full(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")) == "Disk quota exceeded"
    assert disk_full(SafetensorError("I/O error: No space left on device (os error 28)")) == os.strerror(28)
    assert disk_full(SafetensorError("I/O error: Permission denied (os error 13)")) is None
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("writing the head failed") from None  # (the cause kept as __context__)
    except RuntimeError as exc:
        assert disk_full(exc) == "File too large"
    assert disk_full(None) is None


def test_open_input_stdin(monkeypatch):
    fake = io.TextIOWrapper(io.BytesIO(gzip.compress(TEXT)))
    monkeypatch.setattr(sys, "stdin", fake)
    with open_input("-") as stream:
        assert stream.read() == TEXT


def test_truncated_gzip_is_input_error(tmp_path):
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(gzip.compress(TEXT * 5000)[:-20])
    with pytest.raises(InputError, match="corrupt or truncated"):
        with open_input(path) as stream:
            stream.read()


def test_missing_and_directory_inputs(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        with open_input(tmp_path / "nope"):
            pass
    with pytest.raises(InputError, match="directory"):
        with open_input(tmp_path):
            pass


def test_atomic_output_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as out:
            out.write(b"new, half written")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_output(target) as out:
        out.write(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_file_commit_abort_and_compression(tmp_path):
    kept = AtomicFile(tmp_path / "a.txt.gz")
    kept.stream.write(b"hello\n")
    dropped = AtomicFile(tmp_path / "b.txt")
    dropped.stream.write(b"never\n")
    assert not (tmp_path / "a.txt.gz").exists()
    kept.commit()
    dropped.abort()
    assert gzip.decompress((tmp_path / "a.txt.gz").read_bytes()) == b"hello\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt.gz"]
    with pytest.raises(UsageError, match="output directory does not exist"):
        AtomicFile(tmp_path / "missing" / "x.txt")
    # a file where the directory should be was reported as missing
    with pytest.raises(UsageError, match=r"a.txt.gz: is not a directory, so no output can go inside it"):
        AtomicFile(tmp_path / "a.txt.gz" / "x.txt")
    # a link to a folder that is gone was "output directory does not exist", of a name `ls` shows
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(UsageError, match=rf"link: is a broken symbolic link \(to {re.escape(str(tmp_path / 'gone'))}, "
                                         r"which does not exist\), so no output can go inside it"):
        AtomicFile(tmp_path / "link" / "x.h5")


@pytest.mark.parametrize("suffix,magic", [(".gz", b"\x1f\x8b"), (".bz2", b"BZh"), (".xz", b"\xfd7zXZ\x00"),
                                          (".zst", b"\x28\xb5\x2f\xfd"), (".ZSTD", b"\x28\xb5\x2f\xfd")])
def test_an_output_is_compressed_as_its_suffix_says_and_reads_back(tmp_path, suffix, magic):
    """`-o out.fa.xz` (and .gz, .bz2, .zst): the file is in that format, whole, both as one stream
    (atomic_output) and as blocks compressed apart and concatenated (compress_bytes: prep's
    workers), an empty block included."""
    from protrans_cli.io.files import compress_bytes, compression_for_output

    path = tmp_path / f"out.fa{suffix}"
    with atomic_output(path) as out:
        out.write(TEXT * 1000)
    assert path.read_bytes().startswith(magic)
    with open_input(path) as stream:
        assert stream.read() == TEXT * 1000
    kind = compression_for_output(path)
    blocks = tmp_path / f"blocks.fa{suffix}"
    blocks.write_bytes(b"".join(compress_bytes(b, kind) for b in (TEXT, b"", TEXT * 3)))
    assert blocks.read_bytes().startswith(magic)  # (open_input reads plain text under any name too)
    with open_input(blocks) as stream:
        assert stream.read() == TEXT * 4


def test_read_fasta_edge_cases(tmp_path):
    path = tmp_path / "edge.fa"
    # (spaces, tabs, vertical tabs and form feeds inside sequence lines, CR line ends: none of
    # them is a residue, as embed and prep read them)
    path.write_bytes(b"\xef\xbb\xbf>a first > second\r\nMK\r\nT\r\n\r\n>b\n\n>c\nAC DE\n>d\nA\tC\t\nD\vE\f\n")
    records = list(read_fasta(path))
    assert [(r.id, r.description, r.sequence, r.line) for r in records] == [
        ("a", "a first > second", "MKT", 1), ("b", "b", "", 5), ("c", "c", "ACDE", 7), ("d", "d", "ACDE", 9)]


def test_a_header_that_is_not_utf8_gives_the_description_a_utf8_one_gives(tmp_path):
    """A latin-1 byte in a header (`37\xb0C`, another tool's file) is read word by word: the
    description is still the header less the spaces around it (embed records it, export --format
    esm writes it as the label), as the same header in UTF-8 gives it."""
    path = tmp_path / "latin1.fa"
    path.write_bytes(b">  P1 grown at 37\xb0C \t\r\nMK\r\n>P2 at 37\xc2\xb0C \t\nGG\n")
    records = list(read_fasta(path))
    assert [(r.id, r.description, r.sequence) for r in records] == [
        ("P1", "P1 grown at 37\xb0C", "MK"), ("P2", "P2 at 37\xb0C", "GG")]


def test_a_full_disk_met_when_an_output_is_closed_is_one_line_naming_it(tmp_path, monkeypatch):
    """A disk (or an NFS server's quota) that refuses the data only as it is flushed and synced:
    one error naming the output, not the hidden temporary (or nothing); no temporary left, and an
    earlier file of that name kept."""
    import errno

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import files

    out = tmp_path / "corpus.txt.gz"
    out.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("PROTRANS_FSYNC", "1")
    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(RuntimeFailure) as raised:
        with atomic_output(out) as stream:
            stream.write(b"M K T\n" * 1000)
    assert str(raised.value) == f"{out}: cannot write: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt.gz"] and out.read_bytes() == b"old"


@pytest.mark.parametrize("value,synced", [("1", True), ("yes", True), ("0", False), ("off", False), ("", False)])
def test_protrans_fsync_zero_means_off(tmp_path, monkeypatch, value, synced):
    """PROTRANS_FSYNC=0 synced every file, as any other value did: 0, false, no and off leave it off."""
    from protrans_cli.io import files

    calls = []
    real = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    monkeypatch.setenv("PROTRANS_FSYNC", value)
    with atomic_output(tmp_path / "corpus.txt") as stream:
        stream.write(b"M K T\n")
    assert (tmp_path / "corpus.txt").read_bytes() == b"M K T\n" and bool(calls) is synced


def test_an_output_is_written_without_truncating_its_new_temporary(tmp_path, monkeypatch):
    """The temporary (new and empty) was opened again with O_TRUNC: on ext4 a file truncated on
    opening is written back to disk when it is closed (auto_da_alloc), and `prep` of 250 MB
    waited 0.13-0.2 s for it at the end of a 0.7 s run."""
    from protrans_cli.io import files

    flags = []
    real = os.open
    monkeypatch.setattr(files.os, "open", lambda path, flag, *a, **k: (flags.append(flag), real(path, flag, *a, **k))[1])
    with atomic_output(tmp_path / "corpus.txt") as stream:
        stream.write(b"M K T\n")
    assert (tmp_path / "corpus.txt").read_bytes() == b"M K T\n"
    assert flags and not any(flag & os.O_TRUNC for flag in flags)


def test_force_never_replaces_the_working_directory_or_a_folder_above_it(tmp_path, monkeypatch):
    """`-o .`, `-o ..` or the absolute path of a folder holding the working directory, given to a
    command whose --force replaces its -o folder whole (fit, finetune, quickstart): refused before
    anything is deleted; a sibling folder is not such a folder."""
    from protrans_cli.io.files import check_replaceable, holds_working_directory

    work = tmp_path / "project" / "work"
    work.mkdir(parents=True)
    (tmp_path / "project" / "other").mkdir()
    monkeypatch.chdir(work)
    for folder in (".", "..", "../..", tmp_path, work / "sub" / ".."):
        assert holds_working_directory(folder), folder
        with pytest.raises(UsageError, match="force=True would delete the current directory"):
            check_replaceable(folder, "fit", lambda entry: True)
    assert not holds_working_directory("../other") and not holds_working_directory("sub")


def test_atomic_file_writes_devices_and_pipes_in_place(tmp_path):
    """Renaming over /dev/null (as root) would replace the device with a file: never do that."""
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    handle = AtomicFile(fifo, follow_link=True)  # (a name the user gave: a name protrans chooses is refused)
    handle.stream.write(b"through the pipe\n")
    handle.commit()
    reader.join(timeout=10)
    assert got == [b"through the pipe\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    with pytest.raises(InputError, match="is a named pipe, not a regular file: protrans names this file itself"):
        AtomicFile(fifo)  # (a name protrans chooses: no reader is waiting, and it hung for ever)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with atomic_output(os.devnull) as out:
        out.write(b"discarded")
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, bz2.compress, lzma.compress, _zstd])
def test_every_compression_reads_line_by_line(tmp_path, compress):
    # read_fasta iterates lines: zstandard's own reader raised io.UnsupportedOperation here.
    path = tmp_path / "p.fa"
    path.write_bytes(compress(b">a x\nMKV\nLL\n>b\nMKK\n"))
    assert [(r.id, r.sequence) for r in read_fasta(path)] == [("a", "MKVLL"), ("b", "MKK")]


def test_concatenated_zstd_frames_read_as_one_stream(tmp_path):
    path = tmp_path / "two.zst"
    path.write_bytes(_zstd(TEXT * 300) + _zstd(b"") + _zstd(TEXT))
    with open_input(path) as stream:
        assert stream.read() == TEXT * 301


def _pzstd(*parts: bytes) -> bytes:
    """What pzstd writes: each zstd frame after a skippable frame holding its size."""
    import struct

    frames = [_zstd(part) for part in parts]
    return b"".join(struct.pack("<III", 0x184D2A50, 4, len(f)) + f for f in frames)


def test_zstd_starting_with_a_skippable_frame_is_zstd(tmp_path):
    # pzstd (zstd's parallel compressor) starts a file with a skippable frame: it was read as
    # plain text, and prep and embed said "not FASTA" of a file `zstd -d` reads.
    path = tmp_path / "p.fa.zst"
    path.write_bytes(_pzstd(TEXT * 300, TEXT))
    with open_input(path) as stream:
        assert stream.read() == TEXT * 301
    assert [r.id for r in read_fasta(path)] == ["a"] * 301


@pytest.mark.parametrize("cut", [-20, 200])
def test_truncated_zstd_is_input_error(tmp_path, cut):
    # zstandard's stream_reader ended quietly inside a cut frame: a half download read as complete.
    path = tmp_path / "cut.fa.zst"
    data = _zstd(bytes(range(256)) * 5000)
    path.write_bytes(data[:cut])
    with pytest.raises(InputError, match="corrupt or truncated"):
        with open_input(path) as stream:
            stream.read()


def test_zstd_with_a_long_window_is_not_called_corrupt(tmp_path):
    # `zstd --long=31` writes frames whose window is above zstd's default limit of 128 MiB, which
    # `zstd -d` refuses too without --long=31: an intact file was "corrupt or truncated"
    import zstandard

    params = zstandard.ZstdCompressionParameters(window_log=31)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()  # (streamed: no size)
    path = tmp_path / "long.fa.zst"
    path.write_bytes(compressor.compress(TEXT * 100) + compressor.flush())
    with pytest.raises(InputError) as info:
        with open_input(path) as stream:
            stream.read()
    message = str(info.value)
    assert "corrupt" not in message and "window above 128 MiB (zstd --long)" in message
    assert "zstd -d --long=31" in message and str(path) in message


def test_corrupt_zstd_is_input_error(tmp_path):
    path = tmp_path / "bad.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"x" * 40)
    with pytest.raises(InputError, match="corrupt or truncated"):
        with open_input(path) as stream:
            stream.read()


def test_input_named_by_an_output(tmp_path):
    from protrans_cli.io.files import input_named_by

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    link = tmp_path / "link.fa"
    link.symlink_to(fasta)
    assert input_named_by(tmp_path / "." / "x.fa", [fasta]) == str(fasta)
    assert input_named_by(link, ["-", None, fasta]) == str(fasta)  # the same inode through a link
    assert input_named_by(tmp_path / "new.txt", [fasta]) is None  # an output that does not exist yet
    assert input_named_by("-", [fasta]) is None and input_named_by(None, [fasta]) is None  # stdout / none
    assert input_named_by(fasta, ["-"]) is None  # stdin is not a file to overwrite
    # a model directory is named by any path inside it, not by a sibling whose name begins with
    # its own (`embed -m runs/bert -o runs/bert.h5`, `-o runs/bert2/x.h5`)
    model = tmp_path / "runs" / "bert"
    model.mkdir(parents=True)
    assert input_named_by(model / "model.safetensors", [fasta], [model]) == str(model)
    assert input_named_by(tmp_path / "runs" / "bert.h5", [fasta], [model]) is None
    assert input_named_by(tmp_path / "runs" / "bert2" / "x.h5", [fasta], [model]) is None


def test_an_output_that_is_the_file_stdin_was_redirected_from_is_refused(tmp_path):
    """`prep - -o x.fa < x.fa` replaced the FASTA it had just read with the corpus (exit 0), and
    so did labels, export --ids, variants ... with their stdin: the file stdin is open on is an
    input, as `prep x.fa -o x.fa` is. A pipe on stdin is no file to replace."""
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n>b\nMKTA\n")
    link = tmp_path / "link.fa"
    link.symlink_to(fasta)
    before = fasta.read_bytes()
    for command in (["prep", "-", "-o", str(fasta)], ["prep", "-", "-o", str(tmp_path / "c.txt"), "--stats", str(link)],
                    ["labels", "-", "-o", str(link)]):
        with open(fasta, "rb") as stdin:
            done = subprocess.run([sys.executable, "-m", "protrans_cli", *command], stdin=stdin,
                                  capture_output=True, text=True)
        assert done.returncode == 2 and "is also an input" in done.stderr, (command, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and fasta.read_bytes() == before
    assert not (tmp_path / "c.txt").exists()
    piped = subprocess.run([sys.executable, "-m", "protrans_cli", "prep", "-", "-o", str(tmp_path / "c.txt"), "-q"],
                           input=before, capture_output=True)
    assert piped.returncode == 0 and (tmp_path / "c.txt").read_text() == "M K V\n\nM K T A\n\n"



def test_a_directory_given_as_an_input_file_is_reported_as_one(run_cli, tmp_path):
    """`prep data/ -o data/corpus.txt` (a folder of FASTA files given as the FASTA) was refused with
    "data/corpus.txt is also an input: writing it would replace the FASTA" (exit 2): choosing
    another name only led to the real error. A file input is named only by itself; a model or
    head directory still by any path inside it."""
    from protrans_cli.io.files import input_named_by

    data = tmp_path / "data"
    data.mkdir()
    (data / "x.fa").write_text(">a\nMKV\n")
    assert input_named_by(data / "corpus.txt", [data]) is None
    assert input_named_by(data / "corpus.txt", [], directories=[data]) == str(data)
    for args in (["prep", data, "-o", data / "corpus.txt"], ["labels", data, "-o", data / "l.fa"],
                 ["embed", data, "-m", "onehot", "-o", data / "e.h5"]):
        r = run_cli(*args)
        assert r.exit_code == 1 and r.stderr == f"protrans: error: {data}: is a directory, expected a file\n"
    assert sorted(p.name for p in data.iterdir()) == ["x.fa"]


def test_a_model_or_head_folder_given_as_an_input_file_says_what_it_is(run_cli, tmp_path):
    """`embed MODEL -m proteins.fa` (the two swapped) or a head given as the labels: "is a
    directory, expected a file" and no more; the folder is now named for what it is."""
    model, head = tmp_path / "run", tmp_path / "ss3"
    model.mkdir()
    head.mkdir()
    (model / "config.json").write_text('{"model_type": "esm", "hidden_size": 8}')
    (head / "config.json").write_text('{"task": {}, "hyperparameters": {}}')
    (tmp_path / "x.fa").write_text(">a\nMKV\n")
    for args, said in ((["embed", model, "-m", tmp_path / "x.fa", "-o", tmp_path / "e.h5"],
                        f"{model}: is a directory, expected a file (it is a language model's directory, esm, "
                        "which -m takes)"),
                       (["prep", head, "-o", tmp_path / "c.txt"],
                        f"{head}: is a directory, expected a file (it is a prediction head's directory, which "
                        "predict takes)")):
        r = run_cli(*args)
        assert r.exit_code == 1 and r.stderr == f"protrans: error: {said}\n", r.stderr
    assert not (tmp_path / "e.h5").exists() and not (tmp_path / "c.txt").exists()


def _damaged(compress, data):
    """`data` compressed, then 64 bytes in its middle zeroed: corrupt, not merely cut short."""
    raw = bytearray(compress(data))
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    return bytes(raw)


def _bad_crc(data):
    raw = bytearray(gzip.compress(data))
    raw[-8] ^= 0xFF  # the CRC-32 of the gzip trailer
    return bytes(raw)


@pytest.mark.parametrize("name,make", [
    ("xz", lambda d: _damaged(lzma.compress, d)),      # lzma.LZMAError
    ("bz2", lambda d: _damaged(bz2.compress, d)),      # OSError: Invalid data stream
    ("gz", lambda d: _damaged(gzip.compress, d)),      # zlib.error
    ("gz", _bad_crc),                                  # BadGzipFile: CRC check failed
])
def test_corrupt_compressed_input_is_one_line_naming_the_file(tmp_path, name, make):
    """Every decompressor failure is an InputError naming the input (before: a traceback for
    lzma and zlib errors, and a message without the file for a CRC or a bad bz2 stream)."""
    text = b"".join(b">p%d\n%s\n" % (i, bytes(random.Random(i).choices(b"ACDEFGHIKLMNPQRSTVWY", k=300)))
                    for i in range(3000))
    path = tmp_path / f"bad.fa.{name}"
    path.write_bytes(make(text))
    with pytest.raises(InputError) as info:
        with open_input(path) as stream:
            while stream.read(1 << 16):
                pass
    assert str(info.value).startswith(f"{path}: corrupt or truncated compressed data (")


def test_an_error_of_the_caller_inside_open_input_is_not_blamed_on_the_input(tmp_path):
    path = tmp_path / "x.fa.gz"
    path.write_bytes(gzip.compress(TEXT))
    with pytest.raises(OSError, match="disk full"):
        with open_input(path) as stream:
            stream.read()
            raise OSError("disk full")  # e.g. writing the output


def test_atomic_file_writes_through_a_link_to_a_redirected_stream(tmp_path):
    """/dev/stdout under `> log` leads to a regular file: the link is written through, never
    replaced by a renamed temporary file (as root that replaced /dev/stdout itself)."""
    log = tmp_path / "log.txt"
    link = tmp_path / "stdout"
    with open(log, "wb") as redirected:
        fds = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"  # (macOS has the second)
        link.symlink_to(f"{fds}/{redirected.fileno()}")
        with atomic_output(link) as out:
            out.write(b"through the link\n")
    assert link.is_symlink() and log.read_bytes() == b"through the link\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "stdout"]


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_signals_held_delays_sigterm_to_the_end_of_the_block(signame):
    """The renames of a job's outputs: a SIGTERM (or a hang-up's SIGHUP) between two of them would
    leave new files beside old ones. It is noted during the block and delivered to the previous
    handler after it (a thread mask let another thread, e.g. one of torch's, take it)."""
    import signal
    import threading

    from protrans_cli.io.files import signals_held

    if not hasattr(signal, signame):
        pytest.skip(f"no {signame} on this platform")
    signum = getattr(signal, signame)
    got = []
    previous = signal.signal(signum, lambda signum, frame: got.append(signum))
    worker = threading.Thread(target=lambda: threading.Event().wait(0.5))
    worker.start()  # another thread, as torch's pools are
    try:
        with signals_held():
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # give the handler every chance to run inside the block
                pass
            assert got == []
        for _ in range(1000):
            if got:
                break
        assert got == [signum]
        assert signal.getsignal(signum) is not None
    finally:
        signal.signal(signum, previous)
        worker.join()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_signals_held_passes_on_a_sigterm_that_came_after_an_ignored_hang_up():
    """A nohup'd run (SIGHUP ignored) whose terminal hung up during the renames, then a scheduler's
    SIGTERM: only the first signal noted was sent again after the block, the SIGHUP, which the run
    ignores, and the SIGTERM was lost (the run went on to its end). The first one the process
    takes is sent now, and the ignored one stays ignored."""
    from protrans_cli.io.files import signals_held

    got = []
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            if got:
                break
        assert got == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous_hup)
        signal.signal(signal.SIGTERM, previous_term)


@pytest.mark.parametrize("data,expected", [
    (b"\xef\xbb\xbf\n\n>a\nMKTA\n", [("a", "MKTA")]),                      # a mark, then blank lines
    (b">a\nMK\n\xef\xbb\xbf>b x\nMKTA\n", [("a", "MK"), ("b", "MKTA")]),   # cat a.fa b.fa, b with a mark
    (b">a\xc2\xa0x\nMKTA\n>a\xc2\xa0y\nMKKL\n", [("a\xa0x", "MKTA"), ("a\xa0y", "MKKL")]),  # ids end at ASCII space
    (b">P1\xa0desc\nMK\n", [("P1\xa0desc", "MK")]),                        # latin-1: as prep reads it
    (b">\xc3\xbc1 37\xb0C\nMK\n", [("\xfc1", "MK")]),  # a latin-1 description leaves the UTF-8 id as it is
    (b">\xc3\xbc1\r37\xb0C\nMK\n", [("\xfc1", "MK")]),  # after a stray CR too (was Ã¼1; property test)
    (b">a\rb\nMKV\n>c\nMK\n", [("a", "MKV"), ("c", "MK")]),  # a stray CR ends the id (was refused as a Mac file)
    (b">a\nMK\n\xef\xbb\xbf\n>b\nGG\n", [("a", "MK"), ("b", "GG")]),   # a mark, a blank line, then a header
    (b">a\nMK\n\xef\xbb\xbf", [("a", "MK")]),                            # a mark at the end
    # an empty file with a mark, then one with a mark (cat): prep read it, embed said "not FASTA"
    (b"\xef\xbb\xbf\xef\xbb\xbf>a\nMK\n", [("a", "MK")]),                 # found by a property test
    # a mark before residues is a character of the sequence, as prep reads it (it rejects the
    # record): it was dropped, and embed read MKTA where prep left the record out
    (b">z\n\xef\xbb\xbfMK", [("z", "\xef\xbb\xbfMK")]),                 # found by fuzzing
    (b">a\nMK\n\xef\xbb\xbfTA\n", [("a", "MK\xef\xbb\xbfTA")]),
    (b">a\nMK\n\xef\xbb\xbf\nTA\n", [("a", "MK\xef\xbb\xbfTA")]),
])
def test_fasta_ids_and_byte_order_marks_as_prep_reads_them(tmp_path, data, expected):
    path = tmp_path / "x.fa"
    path.write_bytes(data)
    assert [(r.id, r.sequence) for r in read_fasta(path)] == expected


@pytest.mark.parametrize("data,message", [
    (b">a desc\rMKTA\rGGH\r>b\rMKKL\r", r"x.fa:1, record 'a': a carriage return inside the header line: lines that "
                                         r"end in CR alone \(old Mac line endings\) are not read"),
    (b">a\nMKTA\n>b\x00c\nMKKL\n", r"x.fa:3, record 'b\\x00c': the header holds a NUL byte"),
    (b">a desc\x00x\nMK\n", r"x.fa:1, record 'a': the header holds a NUL byte"),
])
def test_fasta_that_would_lose_records_or_break_hdf5_is_one_line(tmp_path, data, message):
    path = tmp_path / "x.fa"
    path.write_bytes(data)
    with pytest.raises(InputError, match=message):
        list(read_fasta(path))


def test_a_folder_that_cannot_be_written_is_named_not_the_temporary(tmp_path, monkeypatch):
    import tempfile

    from protrans_cli.errors import RuntimeFailure

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(RuntimeFailure) as caught:
        with atomic_output(tmp_path / "out.txt"):
            pass
    assert caught.value.format() == f"{tmp_path}: cannot write in this folder: Permission denied"


def test_replace_directory_swaps_in_one_step_where_the_system_can(tmp_path, monkeypatch):
    """Two renames (old aside, new in) left neither in place to a SIGKILL between them, and the
    next run's clean-up deleted both; one RENAME_EXCHANGE has no such moment. Where it is not
    available the two renames remain (and still give the same result)."""
    import shutil

    from protrans_cli.io import files

    def dirs():
        old, new = tmp_path / "head", tmp_path / ".head.new"
        old.mkdir()
        (old / "w").write_text("old")
        new.mkdir()
        (new / "w").write_text("new")
        return old, new

    old, new = dirs()
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    files.replace_directory(new, old)
    assert (old / "w").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head"]
    if sys.platform.startswith("linux"):
        assert renames == []  # swapped by renameat2, not by two renames
    shutil.rmtree(old)
    old, new = dirs()
    monkeypatch.setattr(files, "exchange_paths", lambda a, b: False)
    files.replace_directory(new, old)
    assert (old / "w").read_text() == "new" and len(renames) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head"]


def test_replace_directory_deletes_the_swapped_out_directory_with_signals_let_through(tmp_path, monkeypatch):
    """After the one-step swap the old directory was deleted inside signals_held: Ctrl-C (even a
    second one) waited for the whole rmtree of an old checkpoint or model, as the two-rename path
    never did (it deletes after the block)."""
    import shutil
    import signal

    from protrans_cli.io import files

    old, new = tmp_path / "ckpt", tmp_path / ".ckpt.tmp"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "w").write_text(text)
    handlers = []
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(files.shutil, "rmtree",
                        lambda path, **kw: (handlers.append(signal.getsignal(signal.SIGINT)), real_rmtree(path, **kw)))
    monkeypatch.setattr(files, "exchange_paths", lambda a, b: (os.rename(b, tmp_path / "x"), os.rename(a, b),
                                                               os.rename(tmp_path / "x", a), True)[-1])
    before = signal.getsignal(signal.SIGINT)
    files.replace_directory(new, old)
    assert (old / "w").read_text() == "new" and not new.exists() and handlers == [before]


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.EOPNOTSUPP, errno.EPERM])
def test_replace_directory_where_the_old_folder_cannot_be_renamed_keeps_it_and_says_so(tmp_path, monkeypatch, refusal):
    """A file system that renames no folder (gcsfuse without --rename-dir-limit, overlayfs's lower
    layer: no RENAME_EXCHANGE either) failed as "OUT: Invalid cross-device link", leaving the empty
    `.OUT.old.*` folder made to move the old one aside."""
    from protrans_cli.io import files

    old, new = tmp_path / "head", tmp_path / ".head.new"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "w").write_text(text)
    real_replace = os.replace

    def no_folder_renames(a, b):
        if os.path.isdir(a):
            raise OSError(refusal, os.strerror(refusal), str(a), None, str(b))
        real_replace(a, b)

    monkeypatch.setattr(files, "exchange_paths", lambda a, b: False)
    monkeypatch.setattr(files.os, "replace", no_folder_renames)
    with pytest.raises(RuntimeFailure) as caught:
        files.replace_directory(new, old)
    assert caught.value.format() == (
        f"{old}: cannot replace this folder: the file system refused to rename it aside ({os.strerror(refusal)}; "
        "one that renames no folders, such as gcsfuse without --rename-dir-limit?); it is kept as it was")
    assert (old / "w").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".head.new", "head"]  # (the caller's to remove)


@pytest.mark.parametrize("case", ["put back", "not back", "no old one"])
def test_replace_directory_that_cannot_put_the_new_folder_in_puts_the_old_one_back_or_says_where_it_is(
        tmp_path, monkeypatch, case):
    """The new folder refused its place (the old one renamed aside, or none there): the raw "[Errno
    13] Permission denied: '.head.new' -> 'head'" named the hidden temporary; and where the old folder
    could not be moved back either, nothing said that it now sat, as `.head.old.*`, where the next run
    removes it."""
    from protrans_cli.io import files

    old, new = tmp_path / "head", tmp_path / ".head.new"
    for folder, text in ((old, "old"), (new, "new")):
        if folder != old or case != "no old one":
            folder.mkdir()
            (folder / "w").write_text(text)
    real_replace = os.replace

    def refused(a, b):
        if Path(a) == new or (case == "not back" and Path(a).name.startswith(".head.old.")):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(a), None, str(b))
        real_replace(a, b)

    monkeypatch.setattr(files, "exchange_paths", lambda a, b: False)
    monkeypatch.setattr(files.os, "replace", refused)
    with pytest.raises(RuntimeFailure) as caught:
        files.replace_directory(new, old)
    said, why = caught.value.format(), os.strerror(errno.EACCES)
    assert (new / "w").read_text() == "new"  # (the caller's to remove)
    if case == "not back":
        [aside] = tmp_path.glob(".head.old.*")
        assert (aside / "w").read_text() == "old" and not old.exists()
        assert said == (f"{old}: cannot put the new folder in its place ({why}), nor the old one back ({why}): it "
                        f"is now {aside}; rename it to head before the next run here, which would delete it")
        return
    assert said == f"{old}: cannot put the new folder in its place ({why})" + (
        "; the old one is kept as it was" if case == "put back" else "")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".head.new"] + (["head"] if case == "put back" else [])
    assert case != "put back" or (old / "w").read_text() == "old"


@pytest.mark.parametrize("kind", ["file", "link"])
def test_replace_directory_refuses_a_target_that_is_no_folder_and_leaves_nothing(tmp_path, kind):
    # (it failed as "OUT: Is a directory", naming neither the problem nor the path it took aside)
    from protrans_cli.io import files

    new, target = tmp_path / ".out.new", tmp_path / "out"
    new.mkdir()
    (tmp_path / "elsewhere").mkdir()
    target.write_text("x") if kind == "file" else target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RuntimeFailure) as caught:
        files.replace_directory(new, target)
    what = "a regular file" if kind == "file" else "a symbolic link"
    assert caught.value.format() == f"{target}: is {what}, not a folder: the new folder cannot take its place"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.new", "elsewhere", "out"]
    assert target.is_symlink() if kind == "link" else target.read_text() == "x"


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable /dev/shm")
def test_a_file_in_dev_shm_is_replaced_not_appended_to():
    # /dev/shm counted as "in place" (devices, /dev/stdout): appended to, a run's
    # train_config.json held two JSON objects and its metrics.jsonl the old lines twice
    import tempfile

    from protrans_cli.io.files import atomic_output

    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        target = os.path.join(tmp, "x.json")
        for text in (b'{"a": 1}\n', b'{"b": 2}\n'):
            with atomic_output(target) as out:
                out.write(text)
        assert Path(target).read_bytes() == b'{"b": 2}\n'


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable /dev/shm")
def test_a_link_to_a_file_in_dev_shm_is_replaced_too(tmp_path):
    import tempfile

    from protrans_cli.io.files import atomic_output

    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        target = os.path.join(tmp, "x.txt")
        open(target, "wb").close()
        link = tmp_path / "link.txt"
        link.symlink_to(target)
        for text in (b"first\n", b"second\n"):
            with atomic_output(link) as out:
                out.write(text)
        assert link.read_bytes() == b"second\n"


def test_an_output_named_by_a_link_is_written_where_the_link_leads(tmp_path, run_cli):
    """A link onto scratch storage: the renamed temporary file replaced the link with a regular file
    beside it, and the link's target kept its old contents (prep, embed's HDF5 alike)."""
    import h5py

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "corpus.txt").write_text("old\n")
    (tmp_path / "corpus.txt").symlink_to(scratch / "corpus.txt")
    (tmp_path / "e.h5").symlink_to(scratch / "e.h5")  # (dangling: created where it leads)
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    assert run_cli("-q", "prep", fasta, "-o", tmp_path / "corpus.txt").exit_code == 0
    assert run_cli("-q", "embed", fasta, "-m", "onehot", "-o", tmp_path / "e.h5").exit_code == 0
    assert (tmp_path / "corpus.txt").is_symlink() and (scratch / "corpus.txt").read_text() == "M K V\n\n"
    assert (tmp_path / "e.h5").is_symlink()
    with h5py.File(scratch / "e.h5", "r") as f:
        assert f["per_residue/a"].shape[0] == 3
    assert sorted(p.name for p in scratch.iterdir()) == ["corpus.txt", "e.h5"]


def test_a_link_someone_else_owns_is_replaced_not_written_through(tmp_path, run_cli):
    """A link planted in a shared folder under the name an output will take: written through, it
    would overwrite the file it leads to (what the kernel's protected_symlinks stops for `>`)."""
    if os.geteuid() != 0:
        pytest.skip("giving a link to another user needs root")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    os.lchown(link, 65534, -1)
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    assert run_cli("-q", "prep", fasta, "-o", link).exit_code == 0
    assert victim.read_text() == "keep\n" and not link.is_symlink() and link.read_text() == "M K V\n\n"


def test_a_read_only_output_is_refused_as_the_shell_refuses_it(tmp_path, run_cli, monkeypatch):
    """A file the user may not write was replaced (renamed over) wherever its folder allowed it."""
    target = tmp_path / "c.txt"
    target.write_text("kept\n")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == target else real_access(p, mode, **kw))
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    r = run_cli("prep", fasta, "-o", target)
    assert r.exit_code == 1 and "c.txt: permission denied: the file exists and is read-only to you" in r.stderr
    assert target.read_text() == "kept\n" and sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "x.fa"]


def test_a_temporary_folder_a_killed_run_left_is_removed_by_the_next(tmp_path):
    """predict --fasta's embeddings and embed --resume's read-back folder were plain
    TemporaryDirectory folders: a SIGKILL left them (112 MB for 6000 proteins) for ever."""
    import time

    from protrans_cli.io.files import make_temporary, temporary_folder

    probe = make_temporary(tmp_path, ".probe.")
    host = probe.name.split(".")[2]
    probe.unlink()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dead = tmp_path / f".protrans-predict-{host}.{gone}-abcd"
    dead.mkdir()
    (dead / "e.h5").write_bytes(b"x" * 100)
    hours_ago = time.time() - 7200
    for path in (dead / "e.h5", dead):
        os.utime(path, (hours_ago, hours_ago))
    # a dead PID's folder touched within the hour is kept (another container sharing the host
    # name and the folder may be writing it): the folder itself, or a file it holds
    recent = tmp_path / f".protrans-predict-{host}.{gone}-efgh"
    written_into = tmp_path / f".protrans-predict-{host}.{gone}-ijkl"
    for folder in (recent, written_into):
        folder.mkdir()
        (folder / "e.h5").write_bytes(b"x")
    os.utime(written_into, (hours_ago, hours_ago))
    with temporary_folder(tmp_path, ".protrans-predict-") as tmp:
        assert Path(tmp).is_dir() and Path(tmp).parent == tmp_path and not dead.exists()
        (Path(tmp) / "e.h5").write_bytes(b"y")
    assert sorted(tmp_path.iterdir()) == [recent, written_into]


def test_an_output_that_is_the_piped_stdin_is_refused_not_a_hang(tmp_path):
    """`cat x.fa | protrans prep - -o /dev/stdin` waited forever: the output held the pipe's write end open."""
    if not os.path.exists("/dev/stdin"):
        pytest.skip("no /dev/stdin")
    r = subprocess.run([sys.executable, "-m", "protrans_cli", "prep", "-", "-o", "/dev/stdin"], input=b">a\nMK\n",
                       capture_output=True, timeout=60)
    assert r.returncode == 2 and b"/dev/stdin: is standard input: an output cannot go there" in r.stderr, r.stderr


def test_a_compressed_pipe_whose_first_read_is_short_is_still_decompressed(tmp_path):
    """A slow writer (ssh, a decompressor) gave a first read of one byte: the gzip magic number
    was cut, and the stream was read as plain text ("not FASTA")."""
    import gzip
    import os
    import threading
    import time

    from protrans_cli.io.fasta import read_fasta

    data = gzip.compress(b">p1\nMKTAY\n>p2\nMVL\n")
    fifo = tmp_path / "slow.fa"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "wb", buffering=0) as fh:
            fh.write(data[:1])
            time.sleep(0.3)
            fh.write(data[1:])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert [(r.id, r.sequence) for r in read_fasta(str(fifo))] == [("p1", "MKTAY"), ("p2", "MVL")]
    finally:
        writer.join()
    tiny = tmp_path / "tiny.fa"  # shorter than a magic number: read whole, and closed
    tiny.write_bytes(b">a\nM\n")
    assert [r.sequence for r in read_fasta(str(tiny))] == ["M"]


def test_is_inside_knows_a_folder_spelled_otherwise(tmp_path, monkeypatch):
    """On a file system that ignores case, `Runs/t5` is `runs/t5`, and macOS's realpath keeps the
    case given: a string comparison let `embed -m runs/t5 -o Runs/t5/model.safetensors` write
    over the weights it loaded. Simulated by a second name for the folder that realpath does not
    resolve."""
    from protrans_cli.io import files

    (tmp_path / "runs" / "t5").mkdir(parents=True)
    (tmp_path / "Runs").symlink_to(tmp_path / "runs")
    monkeypatch.setattr(files.os.path, "realpath", lambda p: os.path.abspath(p))
    assert files.is_inside(tmp_path / "Runs" / "t5" / "model.safetensors", tmp_path / "runs" / "t5")
    assert files.is_inside(tmp_path / "Runs" / "t5", tmp_path / "runs" / "t5")
    assert not files.is_inside(tmp_path / "Runs" / "other.h5", tmp_path / "runs" / "t5")
    assert not files.is_inside(tmp_path / "elsewhere" / "x.h5", tmp_path / "runs" / "t5")


def _ignore_case(monkeypatch, folder):
    """Lookups in `folder` behave as on macOS or Windows: a name finds an entry spelled in any case."""
    real = os.path.lexists

    def lexists(path):
        head, name = os.path.split(str(path))
        if real(path) or os.path.realpath(head) != os.path.realpath(folder):
            return real(path)
        return any(entry.casefold() == name.casefold() for entry in os.listdir(head))

    monkeypatch.setattr(os.path, "lexists", lexists)


def test_same_file_asks_the_folder_about_names_that_differ_in_case(tmp_path, monkeypatch):
    """`-o C.fa --valid-output c.fa`: two files on Linux, one on macOS, where the second output
    replaced the first. Neither exists yet, so the folder itself is asked (a probe it leaves
    nothing of)."""
    from protrans_cli.io.files import same_file

    assert not same_file(tmp_path / "C.fa", tmp_path / "c.fa")  # this folder keeps them apart
    assert not same_file(tmp_path / "C.fa", tmp_path / "d.fa")
    assert same_file(tmp_path / "c.fa", tmp_path / "." / "c.fa")
    assert same_file(tmp_path / "nodir" / "c.fa", tmp_path / "nodir" / "c.fa")
    _ignore_case(monkeypatch, tmp_path)
    assert same_file(tmp_path / "C.fa", tmp_path / "c.fa")
    assert same_file(tmp_path / "Stra\u00dfe.fa", tmp_path / "stra\u00dfe.fa")
    assert not same_file(tmp_path / "C.fa", tmp_path / "d.fa")
    assert not same_file(tmp_path / "C.fa", tmp_path / "sub" / "c.fa")
    assert os.listdir(tmp_path) == []


def test_prep_outputs_differing_in_case_are_refused_only_where_the_folder_ignores_case(
        run_cli, tmp_path, monkeypatch):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nMKVLAAG\n>c\nMSTNPKPQ\n")
    args = ["prep", fasta, "-o", tmp_path / "C.txt", "--valid-fraction", "0.5",
            "--valid-output", tmp_path / "c.txt"]
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["C.txt", "c.txt", "in.fa"]
    for name in ("C.txt", "c.txt"):
        (tmp_path / name).unlink()
    _ignore_case(monkeypatch, tmp_path)
    r = run_cli(*args)
    assert r.exit_code == 2 and "-o and --valid-output both name" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa"]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="pseudo-terminals are POSIX")
def test_names_stdout_means_the_same_file_not_the_same_terminal(tmp_path):
    # `prep --stats /dev/stderr` with stdout and stderr on one terminal was refused as a second
    # stdout; in a file (`> out 2>&1`) the two overwrite each other and are refused
    import subprocess

    probe = [sys.executable, "-c", "from protrans_cli.io.files import names_stdout; "
             "print(names_stdout('/dev/stderr'), names_stdout('-'), file=open(__import__('sys').argv[1], 'w'))"]
    master, slave = os.openpty()
    try:
        subprocess.run([*probe, str(tmp_path / "tty")], stdout=slave, stderr=slave, check=True)
    finally:
        os.close(slave)
        os.close(master)
    assert (tmp_path / "tty").read_text().split() == ["False", "True"]
    with open(tmp_path / "log", "w") as log:
        subprocess.run([*probe, str(tmp_path / "file")], stdout=log, stderr=log, check=True)
    assert (tmp_path / "file").read_text().split() == ["True", "True"]


def test_folder_lock_never_holds_a_removed_folder(tmp_path, monkeypatch):
    # The race: this process opened the folder just as its holder removed it on the way out and
    # a third process made and locked a new one under the name. Locking the removed folder would
    # let two processes both think they hold the lock; the lock is taken again on the new folder.
    import fcntl

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.files import folder_lock

    folder = tmp_path / "head.partial"
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:  # between our open and our flock: the holder leaves, a newcomer arrives
            folder.rmdir()
            folder.mkdir()
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with folder_lock(folder, "busy"):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        assert len(calls) == 2
        other = os.open(folder, os.O_RDONLY)  # the folder now under the name is the one held
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
        with pytest.raises(RuntimeFailure, match="busy"):
            with folder_lock(folder, "busy"):
                pass
    assert not folder.exists()  # left empty: removed


def test_folder_lock_through_a_link_to_a_folder(tmp_path):
    # A link to a folder is locked as the folder it names (the re-check follows it too).
    from protrans_cli.io.files import folder_lock

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with folder_lock(tmp_path / "link", "busy"):
        (tmp_path / "real" / "x").write_text("kept")
    assert (tmp_path / "real" / "x").read_text() == "kept"


def test_a_tab_or_other_ascii_space_ends_the_id():
    # prep's reader splits ids on any ASCII whitespace (bytes.split); embed and the label readers
    # must take the same id from a tab-separated header, or labels and embeddings stop matching
    records = list(parse_fasta([b">P1\tdesc x\n", b"MK\n", b">P2\x0bv\n", b"MK\n", b">P3\x0cw\n", b"MK\n"]))
    assert [r.id for r in records] == ["P1", "P2", "P3"]
    assert records[0].description == "P1\tdesc x"


def test_output_lock_never_holds_a_removed_lock_file(tmp_path, monkeypatch):
    # output_lock's twin of the race above: the holder unlinks .NAME.lock on the way out while a
    # newcomer makes and locks a new one; only the file under the name counts.
    import fcntl

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.files import output_lock

    target = tmp_path / "out.h5"
    lock = tmp_path / ".out.h5.lock"
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            lock.unlink()
            lock.touch()
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with output_lock(target, "busy"):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        assert len(calls) == 2
        with pytest.raises(RuntimeFailure, match="busy"):
            with output_lock(target, "busy"):
                pass
    assert not lock.exists()


ESM2 = Path(__file__).parent / "data" / "esm_reference"


@pytest.mark.parametrize("command", ["fit", "finetune", "import-head", "predict --metrics"])
def test_a_link_to_nothing_where_a_folder_goes_is_refused_before_any_work(run_cli, tmp_path, monkeypatch, command):
    """-o a link to nothing (fit, finetune, import-head) trained or imported the head first, then
    failed to rename it into place: ".HEAD.<host>.<pid>-XXXX.tmp: Not a directory", naming a hidden
    temporary; `predict --metrics` of one made every prediction, then said "File exists". Each is
    refused before anything is read now (exit 2), naming the link and where it leads."""
    (tmp_path / "l.fa").write_text(">a Nucleus-M\nMKT\n")
    (tmp_path / "e.h5").touch()  # (never read: the refusal comes first)
    (tmp_path / "ck.pt").touch()
    (tmp_path / "head").mkdir()
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    argv = {"fit": ["fit", "loc", "--embeddings", "e.h5", "--labels", "l.fa", "-o", link],
            "finetune": ["finetune", "loc", "-m", ESM2, "--labels", "l.fa", "-o", link],
            "import-head": ["import-head", "ck.pt", "-o", link],
            "predict --metrics": ["predict", "head", "--embeddings", "e.h5", "--labels", "l.fa", "-o", "p.csv",
                                  "--metrics", link]}[command]
    monkeypatch.chdir(tmp_path)  # (not contextlib.chdir: Python 3.11+, and 3.10 is supported)
    r = run_cli(*argv)
    said = ("so no folder can be made there (make that folder, or choose another path)" if command.startswith("predict")
            else "(make that folder, or choose another -o)")
    assert r.exit_code == 2 and r.stderr == (f"protrans: error: {link}: is a link to {tmp_path / 'nowhere'}, which "
                                             f"does not exist{',' if command.startswith('predict') else ''} {said}\n"
                                             ), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "e.h5", "head", "l.fa", "out"]


def _output_lock_run(command: str, tmp_path: Path) -> tuple[list[str], Path]:
    """A command line of `command` (one of the six that lock their -o with .OUT.lock), its inputs
    made in tmp_path/in, and its -o."""
    import torch

    inputs = tmp_path / "in"
    inputs.mkdir()
    fasta = inputs / "p.fa"
    fasta.write_text(">P1\nMKTAYIAKQR\n")
    if command == "variants":
        out = tmp_path / "v.csv"
        return ["variants", "--all-singles", "--sequence", "MKTAYIAKQR", "-m", str(ESM2), "-o", str(out)], out
    if command == "perplexity":
        out = tmp_path / "p.tsv"
        return ["perplexity", str(fasta), "-m", str(ESM2), "-o", str(out)], out
    out = tmp_path / "o.h5"
    if command == "merge":
        from protrans_cli import EmbedOptions, embed

        embed(fasta, inputs / "a.h5", EmbedOptions(model="onehot", threads=1))
        return ["merge", str(inputs / "a.h5"), "-o", str(out)], out
    if command == "import-esm":
        (inputs / "esm").mkdir()
        torch.save({"label": "P1", "mean_representations": {1: torch.zeros(4)}}, inputs / "esm" / "P1.pt")
        return ["import-esm", str(inputs / "esm"), "--fasta", str(fasta), "-o", str(out)], out
    model = ["-m", "onehot"] if command == "embed" else ["-m", str(ESM2)]
    return [command, str(fasta), *model, "-o", str(out)], out


@pytest.mark.parametrize("command", ["embed", "contacts", "merge", "import-esm", "variants", "perplexity"])
def test_a_fifo_named_like_the_lock_file_is_refused_in_one_line_not_waited_on(tmp_path, command):
    """A named pipe called .OUT.lock (the hidden lock beside -o OUT) hung each of the five commands
    that lock their output for ever: opening it waited for a writer. One line naming it now,
    exit 1, and nothing is written or removed."""
    argv, out = _output_lock_run(command, tmp_path)
    lock = out.with_name(f".{out.name}.lock")
    os.mkfifo(lock)
    # (a process of its own, with a timeout: a hang fails the test rather than blocking it)
    result = subprocess.run([sys.executable, "-m", "protrans_cli", *argv], capture_output=True, text=True, timeout=20,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.returncode == 1 and result.stderr == (
        f"protrans: error: {lock}: is a named pipe, not a lock file: protrans locks -o {out.name} with a file of this "
        "name (move it away, or choose another -o)\n"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [lock.name, "in"] and lock.is_fifo()


@pytest.mark.parametrize("kind", ["folder", "link", "link to nothing"])
def test_a_folder_or_link_named_like_the_lock_file_is_refused_not_run_unlocked(tmp_path, kind):
    """A folder or a symbolic link called .OUT.lock (never followed) made the run go on without
    the lock, without a word; refused now as a named pipe is, and left as it was."""
    from protrans_cli.io.files import output_lock

    lock = tmp_path / ".o.h5.lock"
    if kind == "folder":
        lock.mkdir()
    else:
        (tmp_path / "real").touch()
        lock.symlink_to(tmp_path / ("real" if kind == "link" else "nowhere"))
    words = "a directory" if kind == "folder" else "a symbolic link"
    with pytest.raises(InputError) as caught:
        with output_lock(tmp_path / "o.h5", "busy"):
            raise AssertionError("ran without the lock")
    assert str(caught.value) == (f"{lock}: is {words}, not a lock file: protrans locks output='o.h5' with a file of "
                                 "this name (move it away, or choose another output)")  # (a library call's words)
    assert lock.is_dir() if kind == "folder" else lock.is_symlink()


@pytest.mark.parametrize("code", ["ENOSYS", "ENOLCK", "EOPNOTSUPP", "EINVAL"])
@pytest.mark.parametrize("kind", ["folder", "output"])
def test_a_file_system_without_flock_goes_on_unlocked_as_protrans_file_locking_says(tmp_path, monkeypatch, capsys,
                                                                                     kind, code):
    """Lustre mounted without -o flock (ENOSYS), NFS without a lock daemon (ENOLCK), FUSE mounts
    (EOPNOTSUPP, EINVAL): the block ran unlocked without a word. HDF5's three settings now, as
    HDF5_USE_FILE_LOCKING has them: unset or BEST_EFFORT, it runs unlocked with one warning per
    folder (a Lustre user is not stopped); FALSE, unlocked and silent; TRUE, refused in one line
    naming the output, nothing left behind; any other value, a usage error before anything is made."""
    import errno
    import fcntl

    from protrans_cli.io import files as files_module
    from protrans_cli.io.files import folder_lock, output_lock

    def flock(fd, op):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", flock)

    def lock():
        return folder_lock(tmp_path / "x.partial", "busy") if kind == "folder" else output_lock(tmp_path / "x", "busy")

    def twice():  # (unlocked: a second holder is not refused)
        ran = []
        with lock():
            ran.append(True)
            with lock():
                ran.append(True)
        assert ran == [True, True] and list(tmp_path.iterdir()) == []
        return capsys.readouterr().err

    for setting in (None, "best_effort", " BEST_EFFORT "):
        monkeypatch.setattr(files_module, "_WARNED_NO_LOCKS", set())
        if setting is None:
            monkeypatch.delenv("PROTRANS_FILE_LOCKING", raising=False)
        else:
            monkeypatch.setenv("PROTRANS_FILE_LOCKING", setting)
        err = twice()
        assert err.count("grants no file locks") == 1, setting
        assert (f"{tmp_path}: the file system grants no file locks; files there are used without them, so a second "
                "run on the same output is not refused (start one run per output; PROTRANS_FILE_LOCKING=TRUE makes "
                "such a file system an error)") in err
    for setting in ("FALSE", "0", "no", "Off"):
        monkeypatch.setattr(files_module, "_WARNED_NO_LOCKS", set())
        monkeypatch.setenv("PROTRANS_FILE_LOCKING", setting)
        assert twice() == "", setting
    shown = tmp_path / ("x.partial" if kind == "folder" else "x")
    for setting in ("TRUE", "1", "yes", "on"):
        monkeypatch.setenv("PROTRANS_FILE_LOCKING", setting)
        with pytest.raises(RuntimeFailure) as caught:
            with lock():
                raise AssertionError("ran without the lock")
        assert str(caught.value) == (f"{shown}: cannot lock it: the file system grants no file locks "
                                     f"({os.strerror(getattr(errno, code))}; Lustre mounted without -o flock, NFS "
                                     "without a lock daemon?) and PROTRANS_FILE_LOCKING=TRUE requires them: write it "
                                     "on a file system with locks, or unset PROTRANS_FILE_LOCKING")
        assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("PROTRANS_FILE_LOCKING", "maybe")
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: None)  # (a bad value is said where locks work too)
    with pytest.raises(UsageError) as caught:
        with lock():
            raise AssertionError("ran with a bad PROTRANS_FILE_LOCKING")
    assert str(caught.value) == ("PROTRANS_FILE_LOCKING must be BEST_EFFORT (the default: go on where the file system "
                                 "grants no file locks, with a warning), TRUE (refuse such a file system) or FALSE "
                                 "(go on without a warning), got 'maybe'")
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().err == ""


# A rank's start: on SIGTERM it writes "terminated" to the flag file named by its argument.
_FLAG_ON_SIGTERM = """
import os, signal, sys, time
import protrans_cli
from protrans_cli.io.files import stop_with_launcher
flag = sys.argv[1]
def stop(*_):
    open(flag + ".tmp", "w").write("terminated")
    os.replace(flag + ".tmp", flag)  # (whole: the test polls for the file, and read it empty)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
"""
_RANK = _FLAG_ON_SIGTERM + """
print(stop_with_launcher(), flush=True)
time.sleep(60)
"""
_LAUNCHER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
child.wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("under_torchrun", [True, False])
def test_a_rank_is_sent_sigterm_when_its_launcher_is_killed(tmp_path, under_torchrun):
    """The launcher (torchrun) SIGKILLed: a rank it started gets SIGTERM (and checkpoints, as for
    torchrun's own SIGTERM) instead of running on as an orphan; outside torchrun nothing is set."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"}
    if under_torchrun:
        env["TORCHELASTIC_RUN_ID"] = "test"
    flag = tmp_path / "flag"
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, _RANK, str(flag)], env=env,
                                stdout=subprocess.PIPE, text=True)
    pid, was_set = launcher.stdout.readline().split()
    try:
        assert was_set == str(under_torchrun)
        launcher.kill()
        launcher.wait()
        deadline = time.time() + (20 if under_torchrun else 1)
        while not flag.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert flag.exists() == under_torchrun and (not under_torchrun or flag.read_text() == "terminated")
    finally:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        launcher.stdout.close()


_LATE_RANK = _FLAG_ON_SIGTERM + """
print(os.getpid(), flush=True)
parent = os.getppid()
deadline = time.time() + 20
while os.getppid() == parent and time.time() < deadline:  # (the launcher killed before the call)
    time.sleep(0.02)
stop_with_launcher()
time.sleep(5)
open(flag + ".tmp", "w").write("ran on")
os.replace(flag + ".tmp", flag)
"""
_PID1_LAUNCHER = """
import os, subprocess, sys
child = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], capture_output=True, text=True)
print(os.getpid(), child.returncode, child.stdout.strip(), flush=True)
"""
_PID1_RANK = """
import os, signal, sys
from protrans_cli.io.files import stop_with_launcher
signal.signal(signal.SIGTERM, lambda *_: (print("terminated", flush=True), sys.exit(3)))
print(os.getppid(), stop_with_launcher(), "ran on", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_rank_whose_launcher_died_before_it_asked_is_sent_sigterm_at_once(tmp_path):
    """The launcher killed after the rank started (protrans_cli imported) but before it set the
    death signal: its parent changed (init or a subreaper adopted it), and the SIGTERM comes at once."""
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test"}
    flag = tmp_path / "flag"
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, _LATE_RANK, str(flag)], env=env,
                                stdout=subprocess.PIPE, text=True)
    pid = launcher.stdout.readline().split()[0]
    try:
        launcher.kill()
        launcher.wait()
        deadline = time.time() + 30
        while not flag.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert flag.read_text() == "terminated"
    finally:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        launcher.stdout.close()


@pytest.mark.skipif(shutil.which("unshare") is None or not sys.platform.startswith("linux"),
                    reason="needs Linux's unshare")
def test_a_rank_of_a_launcher_that_is_pid_1_runs_on(tmp_path):
    """torchrun as a container's command is PID 1: its ranks' parent is PID 1 while it lives,
    and a rank read that as its launcher gone and stopped itself at once (every rank, every run)."""
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test"}
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _PID1_LAUNCHER,
                        _PID1_RANK, "x"], env=env, capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or not r.stdout.startswith("1 "):
        pytest.skip(f"no PID namespace here: {r.stderr.strip()[:200]}")
    assert r.stdout.split() == ["1", "0", "1", "True", "ran", "on"], r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_rank_forked_from_a_process_that_imported_protrans_runs_on(tmp_path):
    """A rank forked (multiprocessing's fork) by a launcher that had imported protrans_cli: its
    parent is the launcher, not the launcher's parent the package saw at import."""
    code = """
import multiprocessing as mp, os, signal, sys
import protrans_cli
from protrans_cli.io.files import stop_with_launcher
def rank(queue):
    signal.signal(signal.SIGTERM, lambda *_: (queue.put("terminated"), sys.exit(3)))
    queue.put(str(stop_with_launcher()))
    queue.put("ran on")
ctx = mp.get_context("fork")
queue = ctx.Queue()
child = ctx.Process(target=rank, args=(queue,))
child.start()
child.join(30)
print(queue.get(timeout=5), queue.get(timeout=5), child.exitcode)
"""
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TORCHELASTIC_RUN_ID": "test"},
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["True", "ran", "on", "0"], r.stdout + r.stderr


def test_a_missing_input_with_its_partial_beside_it_says_how_to_finish_it(tmp_path, run_cli):
    """`embed --resume` killed on a finished file leaves it as OUT.partial; every reader of OUT
    said only "no such file". The message says the unfinished output is there and how to finish it."""
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKV\n")
    assert run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "o.h5").exit_code == 0
    (tmp_path / "o.h5").rename(tmp_path / "o.h5.partial")
    for args in (("info", tmp_path / "o.h5"), ("export", tmp_path / "o.h5", "-o", tmp_path / "x.tsv")):
        r = run_cli(*args)
        assert r.exit_code == 1 and r.stderr == (f"protrans: error: {tmp_path / 'o.h5'}: no such file (o.h5.partial "
                                                 "beside it is the unfinished output of an embed or contacts run "
                                                 "that was interrupted or is still running: that run's command "
                                                 "with --resume finishes it)\n"), r.stderr
    from protrans_cli.io.files import missing_file

    assert missing_file(tmp_path / "other.h5") == "no such file"


def test_an_output_folder_no_file_can_be_created_in_is_refused_before_the_work(tmp_path, run_cli, monkeypatch):
    """A read-only mount (or another user's folder) was found when the output was written, after
    the work: a t-SNE map or a variant scan computed for nothing. (Root writes anywhere, so the
    folder's answer to access() is what the test changes; a read-only bind mount was checked by hand.)"""
    import os

    from protrans_cli.io import files

    (tmp_path / "q.fa").write_text(">a\nMKTAYIAKQR\n>b\nMAAGWLLK\n")
    closed = tmp_path / "ro"
    closed.mkdir()
    (closed / "old.txt").write_text("kept\n")
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode, **kw: False if Path(p) == closed else real(p, mode, **kw))
    r = run_cli("prep", tmp_path / "q.fa", "-o", closed / "c.txt")
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {closed}: permission denied: no file can be created in "
                                             "this folder (read-only, or not yours to write)\n"), r.stderr
    # an existing file there is not refused by this check (a writable file, a device: written in place)
    assert files.output_directory(closed / "old.txt") == closed
    with pytest.raises(files.RuntimeFailure):
        files.output_directory(closed / "new.txt")
    assert files.output_directory(tmp_path / "new.txt") == tmp_path


def test_config_kind_tells_a_models_config_from_a_heads():
    """A transformers model's config.json (model_type), protrans fit's (task and
    hyperparameters, both), or neither: a config holding only a task is no head's."""
    from protrans_cli.io.files import config_kind

    assert config_kind({"model_type": "bert", "task": "x"}) == "model"
    assert config_kind({"task": "ss3", "hyperparameters": {}}) == "head"
    assert config_kind({"task": "ss3"}) is None and config_kind({"hyperparameters": {}}) is None
    assert config_kind({"model_type": 3}) is None and config_kind({}) is None


@pytest.mark.parametrize("damage", [b"x", b"\x00\xd8" + "\nb\n".encode("utf-16-le")],
                         ids=["cut-at-an-odd-byte", "lone-surrogate"])
def test_utf16_with_its_byte_order_mark_that_does_not_decode_is_one_line(tmp_path, run_cli, damage):
    """A UTF-16 file with its byte-order mark cut short at an odd byte (a download stopped) or
    holding a lone surrogate was a UnicodeDecodeError traceback from export --ids and variants
    (and `labels` read it line by line: "expected 'id,label'" on line 3). It is said, as one without
    its mark is."""
    from protrans_cli.heads.labels import read_labels

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe" + "mutant\nM1A\n".encode("utf-16-le") + damage)
    said = f"protrans: error: {bad}: is UTF-16 text that does not decode ("
    done = run_cli("export", tmp_path / "e.h5", "--ids", bad, "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and done.stderr.startswith(said) and done.stderr.endswith(
        " at byte 24): save it as UTF-8\n") and done.stderr.count("\n") == 1, done.stderr
    done = run_cli("variants", bad, "--sequence", "MKV", "-m", tmp_path / "no-model", "-o", tmp_path / "v.csv")
    assert done.exit_code == 1 and done.stderr.startswith(said) and done.stderr.count("\n") == 1, done.stderr
    with pytest.raises(InputError, match=r"^.*bad.txt: is UTF-16 text that does not decode \(.* at byte 24\)"):
        read_labels(bad)


def test_utf16_without_its_mark_is_told_by_three_quarters_of_nuls_in_its_first_1024_bytes():
    """utf16_codec's rule, at its limits: text of four bytes or more whose first 1,024 have a NUL
    as at least three in four of their high bytes (and no NUL character) is UTF-16; a file with
    its byte-order mark is UTF-16 whatever its characters (ids in Greek or Chinese)."""
    from protrans_cli.io.files import is_utf16, utf16_codec

    assert utf16_codec("e\n".encode("utf-16-le")) == "utf-16-le" and utf16_codec(b"e\x00\n") is None
    assert utf16_codec("e\n".encode("utf-16-be")) == "utf-16-be"
    assert utf16_codec("aaa\u03b1".encode("utf-16-le")) == "utf-16-le"  # three in four
    assert utf16_codec("aa\u03b1\u03b1".encode("utf-16-le")) is None  # two in four: not told
    # (the first 1,024 bytes: 128 Greek characters, then ASCII, is three in four)
    assert utf16_codec(("\u03b1" * 128 + "a" * 384 + "\u03b1" * 400).encode("utf-16-le")) == "utf-16-le"
    for codec in ("utf-16", "utf-16-be"):
        wide = ("\ufeff" if codec != "utf-16" else "") + "\u6f22\u5b57\n" * 100
        assert is_utf16(wide.encode(codec)) and utf16_codec(wide.encode(codec)) is None


def test_binary_kind_tells_real_files_that_hold_no_text_from_text(tmp_path):
    """binary_kind, which the label, variants, --ids, corpus and FASTA readers word their refusals
    around, on the first bytes (as open_input gives them) of files written by their own tools."""
    import zipfile

    import h5py
    import torch

    from protrans_cli.io.files import BINARY_KIND, HDF5_KIND, binary_kind

    def head(path) -> bytes:
        with open_input(path) as stream:
            return stream.read(4096)

    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["P1"] = [[0.5, 1.0]]
    with zipfile.ZipFile(tmp_path / "splits.zip", "w") as archive:
        archive.writestr("labels.csv", "id,label\nP1,a\n")
    torch.save({"w": torch.zeros(3)}, tmp_path / "new.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "labels.csv.gz").write_bytes(gzip.compress(b"id,label\nP1,a\n"))
    (tmp_path / "twice.csv.gz").write_bytes(gzip.compress(gzip.compress(b"id,label\nP1,a\n")))
    (tmp_path / "bom.csv").write_bytes("id,label\nP1,a\n".encode("utf-16"))
    (tmp_path / "plain.csv").write_text("id,label\nP1,α-helix\n", encoding="utf-8")
    assert binary_kind(head(tmp_path / "e.h5")) == HDF5_KIND
    assert binary_kind(head(tmp_path / "e.h5"), sentence=True) == "the file is HDF5, such as embed writes"
    assert binary_kind(head(tmp_path / "splits.zip")).startswith("the file is a zip archive (extract")
    # (torch's zip, and its legacy pickles: a checkpoint, not an archive to unzip)
    for pt in ("new.pt", "old.pt"):
        assert binary_kind(head(tmp_path / pt)) == "the file is a PyTorch checkpoint (model weights or tensors, such " \
            "as torch.save writes)", pt
    assert binary_kind(head(tmp_path / "twice.csv.gz")).startswith("the file is compressed twice (")
    for text in ("labels.csv.gz", "bom.csv", "plain.csv"):
        assert binary_kind(head(tmp_path / text)) is None, text
    # (a NUL beyond the first 4,096 bytes is the line readers' to find; UTF-16 without its mark
    # is the callers', who ask utf16_codec first)
    assert binary_kind(b"x" * 4096 + b"\0") is None
    assert binary_kind("id,label\n".encode("utf-16-le")) == BINARY_KIND


def test_torch_file_tells_every_file_torch_writes_from_other_zips_and_pickles(tmp_path):
    """torch_file, binary_kind's test for a .pt or .pth: torch.save's zip under any file name and
    pickle protocol, its legacy pickles, torch.jit.save's zip (whose first member is data/0); not
    another zip (FLIP's splits: unzip them; a pickle zipped, whose member data.pkl torch's writer never
    writes without its archive's folder), a plain pickle or a zip header cut before its name."""
    import io
    import pickle
    import warnings
    import zipfile

    import torch

    from protrans_cli.io.files import binary_kind, torch_file

    def saved(**options) -> bytes:
        buffer = io.BytesIO()
        torch.save({"w": torch.zeros(3)}, buffer, **options)
        return buffer.getvalue()[:4096]

    torch.save(torch.ones(2), tmp_path / "m.pt")  # (member m/data.pkl: its length, 10, is a 0x0a byte)
    script = io.BytesIO()
    with warnings.catch_warnings():  # (recent torch deprecates TorchScript; its files are still about)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), script)
    for protocol in (2, 3, 4, 5):
        assert torch_file(saved(pickle_protocol=protocol)), protocol
        assert torch_file(saved(pickle_protocol=protocol, _use_new_zipfile_serialization=False)), protocol
    assert torch_file((tmp_path / "m.pt").read_bytes()[:4096]) and torch_file(script.getvalue()[:4096])
    assert binary_kind(saved(), sentence=True).startswith("the file is a PyTorch checkpoint (")
    for member in ("labels.csv", "data/0", "x/data.pkl.txt", "data.pkl"):
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr(member, "id,label\n")
        assert not torch_file(archive.getvalue()), member
        assert binary_kind(archive.getvalue()).startswith("the file is a zip archive (extract the file to read: unzip")
    assert not torch_file(pickle.dumps({"w": [0.0] * 3}, protocol=2)) and not torch_file(saved()[:28])


def test_a_bind_mount_of_the_same_file_system_is_a_mount_point(tmp_path, monkeypatch):
    """`mount --bind a b`, or a container's volume of a folder on the disk its root is on, has its
    parent's device, so os.path.ismount says no: fit, finetune, search and import-head trained to the
    end and then failed to move their folder into its place ("Device or resource busy"). The mount
    table names it (a space in its name written \\040), and the folder is refused before the work."""
    from protrans_cli.errors import UsageError
    from protrans_cli.io import files

    mount = tmp_path / "out dir"
    mount.mkdir()
    (tmp_path / "plain").mkdir()
    table = tmp_path / "mountinfo"
    escaped = os.fsencode(mount).replace(b" ", b"\\040")
    table.write_bytes(b"22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
                      b"95 22 8:1 /srv/a " + escaped + b" rw,relatime shared:1 - ext4 /dev/sda1 rw\n")
    monkeypatch.setattr(files, "MOUNTINFO", str(table))
    assert files.is_mount_point(str(mount)) and not os.path.ismount(mount)
    assert not files.is_mount_point(str(tmp_path / "plain"))
    with pytest.raises(UsageError, match="is a mount point"):
        files.empty_folder(mount)
    assert files.empty_folder(tmp_path / "plain")
    monkeypatch.setattr(files, "MOUNTINFO", str(tmp_path / "none"))  # (no /proc: ismount's answer alone)
    assert not files.is_mount_point(str(mount))


def test_a_name_too_long_is_counted_in_bytes_as_the_limit_is(run_cli, tmp_path, monkeypatch):
    """"X.partial (263 characters): File name too long" counted characters (the shortened path's
    note), and a name of accented letters (134 characters, 264 bytes) got no length at all: the
    file system's limit, NAME_MAX, is 255 bytes. The name's bytes are said, and the limit."""
    from protrans_cli.errors import name_too_long

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.fa").write_text(">a\nMKV\n")
    for name in ("é" * 130 + ".txt", "a" * 252 + ".txt"):
        r = run_cli("prep", "x.fa", "-o", name)
        shown = name if len(name) <= 250 else f"{name[:100]}...{name[-100:]}"
        assert r.exit_code == 1 and r.stderr == (f"protrans: error: {shown}: File name too long (a name of "
                                                 f"{len(os.fsencode(name))} bytes, more than the 255 the file system "
                                                 "takes)\n"), r.stderr
        assert "characters" not in r.stderr
    # each name within the limit, the whole path over PATH_MAX: the path's bytes
    deep = "/".join(["d" * 200] * 25)
    assert name_too_long(deep).endswith(f"(a path of {len(deep):,} bytes, more than the 4,096 the file system takes)")


def test_an_output_name_of_255_bytes_is_written_and_replaced(run_cli, tmp_path):
    """A temporary named `.NAME.<host>.<pid>-XXXXXXXX.tmp` beside an output of a long but valid
    name (200 bytes or more) passed the file system's 255: prep, labels, export, perplexity...
    said ".: cannot write in this folder: File name too long" (perplexity after all its work)."""
    from protrans_cli.io.files import make_temporary

    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKV\n")
    name = "é" * 125 + "a.fa"  # 254 bytes, 129 characters
    assert len(os.fsencode(name)) == 254
    labels = tmp_path / "l.csv"
    shutil.copy(Path(__file__).parent / "data" / "heads" / "pisces_small.csv", labels)
    for args in (("prep", fasta), ("labels", labels), ("prep", fasta)):  # (the last replaces the first's)
        r = run_cli(*args, "-o", tmp_path / name)
        assert r.exit_code == 0, r.stderr
    assert (tmp_path / name).read_text().split() == ["M", "K", "V"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "x.fa", "l.csv"])
    # the cut is the same in every run of this host, so that a killed run's temporary is swept
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    probe = make_temporary(tmp_path, f".{name}.")
    assert len(os.fsencode(probe.name)) <= 255 and probe.name.startswith(".éé")
    dead = probe.with_name(re.sub(r"\.\d+-$", f".{gone}-", probe.name[:-12]) + "abcdefgh.tmp")
    probe.unlink()
    dead.write_text("left by a killed run")
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    import protrans_cli.io.files as files

    files._SWEPT.clear()
    make_temporary(tmp_path, f".{name}.").unlink()
    assert not dead.exists()

"""The CPU paths on macOS, which CI (Linux) never runs: prep, embed, train, fit, merge and export in
a process made to look like a Mac in every way the code can observe. No O_TMPFILE, no
sched_getaffinity, no posix_fallocate and the other Linux-only os functions, no /proc, no /dev/shm,
a C library without prctl, fallocate64, renameat2 or mallopt, and sys.platform "darwin". Each
Linux-only measure (an unnamed file with disk kept for the untrusted list, a worker that dies with
its parent, the process's age for --time-limit, the mount table's bind mounts, an atomic swap of
folders) must fall back to a working path there, never a traceback."""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
SMALL = DATA / "embed" / "small.fa"
LEARNABLE = DATA / "train" / "learnable.txt"

# os functions Linux has and macOS's Python does not
_LINUX_ONLY_OS = ("O_TMPFILE", "O_DIRECT", "O_PATH", "O_NOATIME", "sched_getaffinity", "sched_setaffinity",
                  "posix_fallocate", "posix_fadvise", "fdatasync", "pipe2", "memfd_create", "copy_file_range",
                  "splice", "eventfd", "pidfd_open")
# C functions glibc has and macOS's libSystem does not (`ctypes.CDLL(None).prctl`: AttributeError)
_LINUX_ONLY_C = {"prctl", "fallocate", "fallocate64", "renameat2", "mallopt", "malloc_trim"}


def _linux_only(path) -> bool:
    try:
        name = os.fsdecode(path)
    except TypeError:  # an fd
        return False
    return name == "/proc" or name.startswith(("/proc/", "/dev/shm"))


@pytest.fixture
def macos_like(monkeypatch):
    """This process as a Mac's, as far as protrans can tell: the Linux-only calls fail as they fail on
    macOS (a missing attribute, FileNotFoundError, OSError). Yields the list of those tried (paths,
    C functions) and of the forks made, for the test to check that each path was taken."""
    from protrans_cli.io import disk

    seen: list[str] = []
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(tempfile, "_O_TMPFILE_WORKS", False)  # (tempfile's own look, made as it was imported)
    for name in _LINUX_ONLY_OS:
        monkeypatch.delattr(os, name, raising=False)

    real_open, real_os_open, real_statvfs, real_access = builtins.open, os.open, os.statvfs, os.access

    def missing(path):
        seen.append(os.fsdecode(path))
        return FileNotFoundError(2, "No such file or directory", os.fsdecode(path))

    def fake_open(file, *args, **kwargs):
        if _linux_only(file):
            raise missing(file)
        return real_open(file, *args, **kwargs)

    def fake_os_open(path, *args, **kwargs):
        if _linux_only(path):
            raise missing(path)
        return real_os_open(path, *args, **kwargs)

    def fake_statvfs(path):
        if _linux_only(path):
            raise missing(path)
        return real_statvfs(path)

    def fake_access(path, *args, **kwargs):
        return False if _linux_only(path) else real_access(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "statvfs", fake_statvfs)
    monkeypatch.setattr(os, "access", fake_access)

    real_getattr = ctypes.CDLL.__getattr__

    def c_function(self, name):
        if name in _LINUX_ONLY_C:
            seen.append(f"libc.{name}")
            raise AttributeError(f"dlsym(RTLD_DEFAULT, {name}): symbol not found")
        return real_getattr(self, name)

    monkeypatch.setattr(ctypes.CDLL, "__getattr__", c_function)

    def fake_cdll(name, *args, **kwargs):
        if name is not None and "libc.so" in str(name):  # (no such file on a Mac)
            seen.append(str(name))
            raise OSError(f"dlopen({name}, 0x0006): tried: '{name}' (no such file)")
        return real_cdll(name, *args, **kwargs)

    real_cdll = ctypes.CDLL
    monkeypatch.setattr(ctypes, "CDLL", fake_cdll)
    real_fork = os.fork

    def counted_fork():
        seen.append("fork")
        return real_fork()

    monkeypatch.setattr(os, "fork", counted_fork)
    disk._libc.cache_clear()
    disk.native_fallocate.cache_clear()
    yield seen
    disk._libc.cache_clear()
    disk.native_fallocate.cache_clear()


def _ok(result):
    assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
    return result


def test_prep_embed_fit_merge_export_run_on_a_mac(tmp_path, run_cli, macos_like):
    from protrans_cli.corpus import CorpusOptions, build_corpus
    from protrans_cli.io.h5 import EmbeddingsReader

    # prep: forked workers (fork is there on a Mac, though not its default), no /dev/shm, no prctl
    fasta = tmp_path / "in.fa"
    aa = "ACDEFGHIKLMNPQRSTVWY"
    fasta.write_text("".join(f">p{i}\nMKT{''.join(aa[int(d) + 5] for d in str(i))}W\n" for i in range(300))
                     + ">dup\nMKTGW\n")  # (p0's sequence)
    corpus = tmp_path / "corpus.txt"
    _ok(run_cli("prep", fasta, "-o", corpus, "-j", "2", "--dedup"))
    assert corpus.read_text().count("\n\n") == 300  # (the duplicate gone)
    # (a file this small is prepared in one process: workers for blocks of 1 KiB, through the library)
    build_corpus([str(fasta)], CorpusOptions(output=str(tmp_path / "j2.txt"), threads=2, dedup=True, block_bytes=1024))
    assert (tmp_path / "j2.txt").read_text() == corpus.read_text()
    assert "/dev/shm" in macos_like  # (the workers' hand-over files: $TMPDIR instead)
    forks = macos_like.count("fork")
    assert forks >= 2

    # embed: each layout, and a --resume (no O_TMPFILE, no fallocate: the untrusted list as a plain file;
    # what was written is read in a forked child, as on Linux)
    for layout in ("grouped", "flat", "stacked"):
        out = tmp_path / f"{layout}.h5"
        _ok(run_cli("embed", SMALL, "-m", "onehot", "--layout", layout, "--per-protein", "-o", out))
        with EmbeddingsReader(out) as r:
            assert r.layout == layout and len(list(r.ids())) == 6
    more = tmp_path / "more.fa"
    more.write_text(SMALL.read_text() + ">extra\nMMMKT\n")
    _ok(run_cli("embed", more, "-m", "onehot", "--layout", "stacked", "--per-protein", "-o", tmp_path / "stacked.h5",
                "--resume"))
    with EmbeddingsReader(tmp_path / "stacked.h5") as r:
        assert len(list(r.ids())) == 7
    assert macos_like.count("fork") == forks + 1

    # fit into an empty folder made for it (the mount table is looked for), then --force over it (no
    # renameat2: the old head renamed aside, the new one in); merge; export
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\nP1,A\nrare,B\none,A\nlower,B\nP1copy,A\nextra,B\n")
    (tmp_path / "head").mkdir()
    for extra in ((), ("--force",)):
        _ok(run_cli("fit", "protein", "--embeddings", tmp_path / "stacked.h5", "--labels", labels, "--max-epochs", "1",
                    "-o", tmp_path / "head", *extra))
    assert "/proc/self/mountinfo" in macos_like
    _ok(run_cli("merge", tmp_path / "grouped.h5", tmp_path / "stacked.h5", "-o", tmp_path / "merged.h5"))
    with EmbeddingsReader(tmp_path / "merged.h5") as r:
        assert len(list(r.ids())) == 7
    _ok(run_cli("export", tmp_path / "merged.h5", "-o", tmp_path / "e.tsv"))
    assert (tmp_path / "e.tsv").read_text().count("\n") == 8  # a header and 7 proteins


def test_train_and_resume_run_on_a_mac(tmp_path, run_cli, macos_like):
    # --time-limit without /proc (the limit counts from the start of the run), a forked data-loader
    # worker (fork is there on a Mac), the run's lock (flock), a checkpoint and --resume from it
    run = tmp_path / "run"
    args = ("train", "--family", "bert", "--preset", "tiny", "--corpus", LEARNABLE, "-o", run, "--global-batch-size",
            "4", "--micro-batch-size", "4", "--max-length", "64", "--time-limit", "10:00", "--num-workers", "1")
    _ok(run_cli(*args, "--num-steps", "1", "--save-every", "1"))
    _ok(run_cli(*args, "--num-steps", "2", "--resume"))
    assert "/proc/self/stat" in macos_like and macos_like.count("fork") >= 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"train/loss"' in line or '"loss"' in line]
    assert steps and steps[-1] == 2, steps


def test_a_time_limit_counts_the_imports_and_the_models_building_on_a_mac_too():
    """--time-limit counts from the process's start, which only Linux's /proc tells: elsewhere it
    counted from when the limit was asked for, after the model was built (seconds of imports and
    more of loading), and the run's last checkpoint landed that much after the limit. Now from
    when protrans_cli was first imported, as a command starts."""
    code = ("import builtins, time\n"
            "real = builtins.open\n"
            "def no_proc(f, *a, **k):\n"
            "    if str(f).startswith('/proc/'):\n"
            "        raise FileNotFoundError(2, 'No such file or directory', f)\n"
            "    return real(f, *a, **k)\n"
            "builtins.open = no_proc\n"
            "import protrans_cli\n"
            "time.sleep(1.0)  # (the imports and the model's building)\n"
            "from protrans_cli.training.timelimit import process_age\n"
            "print(process_age())\n")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert 1.0 <= float(out.stdout) <= time.monotonic() - started, out.stdout

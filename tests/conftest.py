"""Shared fixtures: an offline, isolated environment for every test, and the CLI runner.

Every test runs with the Hugging Face hub offline and its cache in a temporary directory, so a
test can never download weights or read the user's cache. `run_cli` runs the real `protrans`
entry point in-process (error mapping and exit codes included).
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

# A suite started in the background of a non-interactive shell (`pytest ... &` in a script, CI's
# `bash -c '... &'`) inherits SIGINT ignored, as POSIX shells start such commands; protrans keeps an
# ignored SIGINT ignored (as for nohup), so the tests of Ctrl-C, in this process and in the processes
# they start (which inherit an ignored signal), would test nothing of it: 16 failed. Ctrl-C as a
# terminal has it, for every test (tests of an ignored signal set it themselves).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The README's test command installs a CPU build of torch: on a machine with a GPU every command on
# --device auto would say "this machine has an NVIDIA GPU, but this torch ... is a CPU build"
# (embedders.warn_unused_gpu), in the stderr the tests compare. Such a build uses no GPU anyway: hidden
# from it (and from the commands the tests start), the suite's output is the GPU-less machine's.
with contextlib.suppress(Exception):
    import importlib.metadata
    import os

    if "+cpu" in importlib.metadata.version("torch"):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
        os.environ.setdefault("HIP_VISIBLE_DEVICES", "")


def heavy_imports_of(argvs: list[list[str]], modules: tuple[str, ...]):
    """Run each `protrans` command line of `argvs` (each must exit 0) in one fresh Python process;
    the process fails (returncode 1, the names on stderr) if any of `modules` was imported."""
    import subprocess
    import sys

    code = ("import sys\nfrom protrans_cli.cli import main\n"
            f"for argv in {argvs!r}:\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            f"heavy = [m for m in {tuple(modules)!r} if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def save_tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny random model directory per family of the registry (what `protrans train` would
    write), seeded: {family name: directory}."""
    import torch

    from protrans_cli.models import FAMILIES

    torch.manual_seed(0)
    return {name: save_tiny_model(tmp_path_factory, name, seed=None) for name in FAMILIES}


def save_tiny_model(tmp_path_factory, name: str, *, seed: int | None = 0) -> Path:
    """A tiny random model of family `name` saved as `protrans train` saves it (torch seeded with
    `seed` first; None: as the caller left it): its directory."""
    import torch

    from protrans_cli.models import FAMILIES

    if seed is not None:
        torch.manual_seed(seed)
    family = FAMILIES[name]
    tokenizer = family.build_tokenizer()
    model = family.pretraining_model(family.build_config("tiny", tokenizer)).eval()
    path = tmp_path_factory.mktemp(f"tiny_{name}")
    family.save_pretrained(model, tokenizer, path)
    return path


@contextlib.contextmanager
def another_process(setup: str):
    """A second Python process that runs `setup` (takes a lock, opens a file...) and holds on
    to what it took until the block ends: what a concurrent run of protrans looks like."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", f"import sys\n{setup}\nprint('ready', flush=True)\nsys.stdin.read()\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.communicate("")


def _hypothesis_profiles() -> None:
    """Property tests (tests/test_properties_*.py) run the same examples on every run and every
    machine ("ci", the default: a failure in CI is a failure here too, and nothing is written to
    a .hypothesis folder); HYPOTHESIS_PROFILE=fuzz searches far more inputs, at random, and
    remembers what failed. `isolated_env` is function-scoped and autouse: it only sets the
    environment, which every example of a test may share."""
    import os

    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # a suite run without the test extras: those modules skip themselves
        return
    # (too_slow, data_too_large: the properties that run the pipeline draw whole FASTA files)
    shared = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                        HealthCheck.data_too_large])
    settings.register_profile("ci", derandomize=True, database=None, max_examples=50, print_blob=True, **shared)
    settings.register_profile("fuzz", max_examples=2000, **shared)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()


def fewer(n: int):
    """Hypothesis settings for a property that runs the pipeline, a model or many files: n
    examples under the ci profile (50 for the others), as many more in proportion under another
    (HYPOTHESIS_PROFILE=fuzz: 40 n)."""
    from hypothesis import settings

    return settings(max_examples=max(1, n * settings.default.max_examples // 50))


@pytest.fixture(autouse=True)
def _no_hypothesis_gc_callback():
    """Hypothesis, once a property test has run in a process, keeps a callback in gc.callbacks
    for good (it times garbage collection for its deadlines, which the profiles turn off). A
    Ctrl-C that a later test sends itself and that lands while a collection runs that callback
    is then "ignored" there (an unraisable KeyboardInterrupt, seen once in a run of the suite):
    the test never gets its interrupt. Taken out after every test."""
    yield
    import gc

    gc.callbacks[:] = [callback for callback in gc.callbacks
                       if getattr(callback, "__qualname__", "") != "gc_cumulative_time.<locals>.gc_callback"]


def released_after_error(call, error_type) -> tuple[str, bool]:
    """Call `call(held)` with a fresh object that stands for what a library caller's frame holds
    (a model, an optimizer) and expect `error_type`. Returns the error's message and whether,
    once the caller has caught it and dropped the object, the object is gone without the garbage
    collector: an error re-raised from a local of a frame its own traceback holds is a cycle that
    keeps the caller's frames alive until gc runs."""
    import gc
    import weakref

    class Held:
        pass

    held = Held()
    ref = weakref.ref(held)
    gc.collect()
    gc.disable()
    try:
        try:  # (not pytest.raises: its ExceptionInfo holds the traceback)
            call(held)
        except error_type as exc:
            message = str(exc)
        else:
            raise AssertionError(f"no {error_type.__name__} raised")
        del held
        return message, ref() is None
    finally:
        gc.enable()


SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("PROTRANS_NO_PROGRESS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("PROTRANS_THREADS", raising=False)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    from protrans_cli import console

    console.configure()
    yield


class _Entry(click.Command):
    """Lets CliRunner drive `protrans_cli.cli.main`, so errors map to exit codes as in a shell."""

    def main(self, args=None, prog_name=None, **extra):  # noqa: D102
        from protrans_cli.cli import main

        main(list(args or ()))


@pytest.fixture
def run_cli():
    """run_cli("prep", "x.fa", input=b"...") -> click Result (exit_code, stdout, stderr)."""

    def run(*args, input=None):
        runner = CliRunner()
        return runner.invoke(_Entry("protrans"), [str(a) for a in args], input=input, catch_exceptions=False)

    return run


@pytest.fixture
def shared_data():
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED


def pytest_collection_modifyitems(config, items):
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None and any("gpu" in i.keywords for i in items):
        import torch

        has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def pytest_collection_finish(session):
    """The objects of the imports so far (torch, transformers, every test module: a few million) are
    moved out of the garbage collector's sight: each full collection walked them all, a tenth of a
    second each, and embed's retry after an out-of-memory error collects on purpose. Objects made
    later, the tests' own, are collected as before."""
    import gc

    gc.collect()
    gc.freeze()


def pytest_sessionfinish(session, exitstatus):
    """A test that abandons an HDF5 file after a failed write (io.h5.abandon) registers the exit
    handler that ends a library caller's process without HDF5's teardown, with status 1: pytest
    then exited 1 with every test passed (`pytest tests/test_h5.py`). The teardown is still
    skipped, with pytest's own status."""
    import atexit
    import os
    import sys

    h5 = sys.modules.get("protrans_cli.io.h5")
    if h5 is None or not h5.abandoned_files():
        return
    atexit.unregister(h5._exit_before_hdf5_teardown)
    status = int(exitstatus)

    def exit_with_pytests_status():
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # (coverage.py saves its data at exit, after this handler: a process measured under
        # coverage lost its whole measurement, an xdist worker's included)
        coverage = sys.modules.get("coverage")
        measuring = getattr(getattr(coverage, "Coverage", None), "current", lambda: None)()
        if measuring is not None:
            with contextlib.suppress(Exception):
                measuring.stop()
                measuring.save()
        os._exit(status)

    atexit.register(exit_with_pytests_status)


def flat_files_with_an_empty_protein(whole, flat, n: int) -> None:
    """Two files in another tool's flat layout of per-residue arrays `p0`..`p{n-1}` (5 + i rows
    of 4 values each): `whole`, and `flat`, which also holds `empty`, a (0, 4) array (a protein
    of no residue: it has no mean and nothing to pool)."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    for name, empty in ((whole, False), (flat, True)):
        with h5py.File(name, "w") as f:
            for i in range(n):
                f.create_dataset(f"p{i}", data=rng.normal(size=(5 + i, 4)).astype(np.float32))
            if empty:
                f.create_dataset("empty", data=np.zeros((0, 4), np.float32))


def hung_up(command, ready, *, stdin=None, nohup=False, cwd=None, timeout=60):
    """Run `command` on a pseudo-terminal of its own, the controlling terminal of its session (an
    ssh login's foreground job; stdout and stderr there, stdin too unless given), wait until
    `ready()`, then hang it up as a dropped connection does: the terminal's master side closed (the
    kernel sends SIGHUP to the session; every later write there fails with EIO) and SIGHUP sent to
    the command's process group, as the login shell sends it to its jobs. `nohup`: started with
    SIGHUP ignored (output left on the terminal, as `disown` leaves it). Returns the exit status
    (-1: killed by the SIGHUP). Skips where there is no pseudo-terminal or SIGHUP."""
    import os
    import select
    import signal
    import subprocess
    import time

    if not hasattr(signal, "SIGHUP"):
        pytest.skip("no SIGHUP on this platform")
    try:
        import fcntl
        import pty
        import termios

        master, slave = pty.openpty()
    except (ImportError, OSError) as exc:
        pytest.skip(f"no pseudo-terminal: {exc}")

    def start():  # (in the child, a session leader: the terminal on its stderr becomes its own)
        fcntl.ioctl(2, termios.TIOCSCTTY, 0)
        if nohup:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen(command, stdin=slave if stdin is None else stdin, stdout=slave, stderr=slave, cwd=cwd,
                            start_new_session=True, preexec_fn=start)
    os.close(slave)
    try:
        deadline = time.time() + timeout
        while not ready() and proc.poll() is None and time.time() < deadline:
            # (what the command says is read: a full terminal would hold it up)
            with contextlib.suppress(OSError):
                while select.select([master], [], [], 0.01)[0] and os.read(master, 65536):
                    pass
        assert proc.poll() is None, "the command ended before the hang-up"
    finally:
        os.close(master)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGHUP)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def signal_when_said(monkeypatch, prefix: str, signum=None) -> None:
    """Deliver `signum` (SIGTERM) to this process as the command says an info line starting with
    `prefix` (its summary, once its output is written): for the tests that a signal then stops
    nothing (exit 0, "nothing was lost")."""
    import signal

    from protrans_cli import console

    real = console.info

    def info(message, *args, **kwargs):
        if str(message).startswith(prefix):
            signal.raise_signal(signum or signal.SIGTERM)
        return real(message, *args, **kwargs)

    monkeypatch.setattr(console, "info", info)


@pytest.fixture
def log_progress_lines(monkeypatch):
    """(position, this run's work) at each progress line a log gets (stderr no terminal), one line
    per update (PROTRANS_PROGRESS_INTERVAL=0): what a requeued batch job's log shows."""
    from protrans_cli import console

    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "0")
    seen = []
    write_line = console.LogProgress.write_line
    monkeypatch.setattr(console.LogProgress, "write_line",
                        lambda self, now: (seen.append((self.n, self.n - self.initial)), write_line(self, now))[1])
    return seen


@pytest.fixture
def progress_bars(monkeypatch):
    """Every progress bar a run makes (console.progress), in order, made as if stderr were a
    terminal or a log (progress_wanted): a test reads a bar's total and position at the end."""
    from protrans_cli import console

    bars = []
    real = console.progress

    def recorded(*args, **kwargs):
        bars.append(real(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(console, "progress", recorded)
    monkeypatch.setattr(console, "progress_wanted", lambda: True)
    return bars


# What a tensor on Apple's GPU (MPS) refuses, for the paths no machine here can run there: MPS has
# no float64 ("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support
# float64"), and a device tensor is no numpy array ("can't convert mps:0 device type tensor to
# numpy. Use Tensor.cpu() ..."). `.cpu()`, `.to("cpu")`, `.item()`, `.tolist()` and float() give
# host values, as they do there; `.to("mps")` keeps it where it is (a CPU build has no MPS device).
_MPS_LIKE = None


def mps_like(tensor):
    """`tensor` as a tensor on the MPS device: results of ops on it stay such tensors, and an op
    that makes or converts one to float64, or .numpy() of one, raises TypeError as MPS does."""
    global _MPS_LIKE
    import torch

    if _MPS_LIKE is None:
        def on_host(value):
            return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value

        def moved_to(args, kwargs) -> str | None:
            where = [a for a in args[1:] if isinstance(a, (str, torch.device))] + [kwargs.get("device")]
            return next((torch.device(w).type for w in where if w is not None), None)

        class MPSLike(torch.Tensor):
            @classmethod
            def __torch_function__(cls, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is torch.Tensor.numpy:
                    raise TypeError("can't convert mps:0 device type tensor to numpy. Use Tensor.cpu() to copy "
                                    "the tensor to host memory first.")
                if func is torch.Tensor.cpu or (func is torch.Tensor.to and moved_to(args, kwargs) == "cpu"):
                    with torch._C.DisableTorchFunctionSubclass():
                        return on_host(func(*args, **kwargs))
                if func is torch.Tensor.to and moved_to(args, kwargs) == "mps":  # (there already: a dtype at most)
                    args = [a for a in args if not isinstance(a, (str, torch.device))]
                    kwargs = {k: v for k, v in kwargs.items() if k != "device"}
                    if len(args) == 1 and not kwargs:
                        return args[0]
                result = super().__torch_function__(func, types, args, kwargs)
                for value in result if isinstance(result, (tuple, list)) else (result,):
                    if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                        raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't "
                                        "support float64. Please use float32 instead.")
                return result

        _MPS_LIKE = MPSLike
    return tensor.as_subclass(_MPS_LIKE)


def sparse_file(path, at: int, data: bytes, head: bytes = b"") -> str:
    """A file of `head`, a hole up to byte `at` and `data` there, written in a few KiB (skipped
    where the file system has no sparse files: the hole would be written out). For offsets past
    2 GiB and 4 GiB (prep's blocks, train's resume positions) without writing gigabytes."""
    import os

    with open(path, "wb") as f:
        f.write(head)
        f.truncate(at)
        f.seek(at)
        f.write(data)
    if os.stat(path).st_blocks * 512 > 1 << 24:
        os.unlink(path)
        pytest.skip("no sparse files on this file system")
    return str(path)


def mkdir_refused_in(monkeypatch, folder: Path) -> None:
    """Path.mkdir of anything directly in `folder` raises EACCES, as in a read-only folder (root
    writes anywhere: refusing the mkdir is how a test sees a folder no file can be created in)."""
    import errno

    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)

"""`-j/--threads`: default min(cores, 4) (the cores shared among torchrun's local processes),
overridden by PROTRANS_THREADS."""

from __future__ import annotations

import contextlib
import os
import threading

from protrans_cli.errors import UsageError, option, whole_number


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# More threads than any machine has cores: 32768 crashed torch's thread pool (a segmentation
# fault once the work was done, or libgomp's "Thread creation failed").
MAX_THREADS = 4096


def check_threads(value: int, name: str | None = None) -> int:
    """`value` as a thread count, or a usage error naming `name`: by default --threads at the
    command line, and to a library call its keyword, threads (`errors.option`)."""
    name = option("--threads", "threads") if name is None else name
    # (predict(..., threads="2") from Python: a TypeError comparing a str with an int; 2.0 one
    # from torch.set_num_threads)
    if not whole_number(value):
        raise UsageError(f"{name} must be a whole number, got {type(value).__name__} {value!r:.60}")
    value = int(value)
    if value < 1:
        raise UsageError(f"{name} must be at least 1, got {value}")
    if value > MAX_THREADS:
        raise UsageError(f"{name} must be at most {MAX_THREADS}, got {value} (this machine has "
                         f"{available_cores()} cores)")
    return value


def resolve_threads(requested: int | None, *, small_work: bool = False) -> int:
    """-j, else $PROTRANS_THREADS, else min(cores, 4); `small_work` (operations of a few thousand
    numbers: an FNN head's, on one vector a protein) takes one thread by default, as more only wait on
    each other."""
    if requested is not None:
        return check_threads(requested)
    env = os.environ.get("PROTRANS_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise UsageError(f"PROTRANS_THREADS must be a whole number, got {env!r}") from None
        return check_threads(value, "PROTRANS_THREADS")
    # (fit loc on DeepLoc's 1,678 one-hot proteins: 0.04 s an epoch on one thread, 1.9-2.2 s on
    # two with the machine's other core busy, torch's threads spinning at every small operation)
    return 1 if small_work else default_threads()


def local_processes() -> int:
    """How many processes of one job share this machine's cores: torchrun's LOCAL_WORLD_SIZE
    (the ranks of this node), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "") or 1))
    except ValueError:
        return 1


def default_threads() -> int:
    """min(cores, 4), the cores divided among torchrun's local ranks first: each rank taking
    min(cores, 4) oversubscribed the CPU (`torchrun --nproc-per-node 2 -m protrans_cli embed` on
    2 cores: 4 threads, 37-49 s where one thread a rank took 10.5-11 s)."""
    return max(1, min(available_cores() // local_processes(), 4))


class SharedSetting:
    """A process-wide setting (torch's thread count, a library's log level) that overlapping
    calls change: the first call in saves the caller's value, the last one out puts it back.
    Saved and restored per call instead, two calls in two threads whose spans overlap left the
    process on the value the first one set (the second saved it as "the caller's")."""

    def __init__(self, read, write):
        self._read, self._write = read, write
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = None

    @contextlib.contextmanager
    def held(self):
        with self._lock:
            if self._depth == 0:
                self._saved = self._read()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._write(self._saved)
                    self._saved = None


def _get_torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


# (made here, at import, without torch: made lazily, two first calls at once made one each)
_TORCH_THREADS = SharedSetting(_get_torch_threads, _set_torch_threads)


@contextlib.contextmanager
def torch_threads(count: int | None = None):
    """torch computes on `count` threads inside the block (None: the count the block sets, if
    any), and on the caller's count again after it, also after an error: torch's count is the
    whole process's, and a library call (a notebook's fit, a web app's embed) left the caller on
    -j's. As a decorator, `@torch_threads()`, for a function that sets the count itself. Calls
    that overlap in several threads share the one count (the last one set holds for them all);
    the caller's count is back once the last of them ends."""
    import torch

    with _TORCH_THREADS.held():
        if count is not None:
            torch.set_num_threads(count)
        yield

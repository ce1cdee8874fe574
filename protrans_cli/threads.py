"""`-j/--threads`: default min(cores, 4), overridden by PROTRANS_THREADS."""

from __future__ import annotations

import contextlib
import os

from protrans_cli.errors import UsageError


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_threads(requested: int | None) -> int:
    if requested is not None:
        if requested < 1:
            raise UsageError(f"--threads must be at least 1, got {requested}")
        return requested
    env = os.environ.get("PROTRANS_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise UsageError(f"PROTRANS_THREADS must be a whole number, got {env!r}") from None
        if value < 1:
            raise UsageError(f"PROTRANS_THREADS must be at least 1, got {value}")
        return value
    return min(available_cores(), 4)


@contextlib.contextmanager
def torch_threads(count: int | None = None):
    """torch computes on `count` threads inside the block (None: the count the block sets, if
    any), and on the caller's count again after it, also after an error: torch's count is the
    whole process's, and a library call (a notebook's fit, a web app's embed) left the caller on
    -j's. As a decorator, `@torch_threads()`, for a function that sets the count itself."""
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

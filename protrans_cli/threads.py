"""`-j/--threads`: default min(cores, 4), overridden by PROTRANS_THREADS."""

from __future__ import annotations

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

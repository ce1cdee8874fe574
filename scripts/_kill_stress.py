"""What the kill stresses in scripts/ share: the environment of the commands they kill (all four:
train_kill_stress.py, fit_kill_stress.py, torchrun_kill_stress.py, train_torchrun_kill_stress.py),
and, for train_kill_stress.py and fit_kill_stress.py, waiting for a moment to kill at and running
the trials side by side."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict:
    """No progress bars, one thread, this checkout's protrans first."""
    return {**os.environ, "PROTRANS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def wait_for(proc, predicate, timeout: float) -> bool:
    """Poll until `predicate()` holds (True), or `proc` ends or `timeout` passes (False)."""
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.0005)
    return False


def run_trials(trial, calls: list[tuple], jobs: int, log) -> None:
    """`trial(*args)` for each of `calls`, `jobs` at a time; a trial that raises is logged."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [(args, pool.submit(trial, *args)) for args in calls]
    for args, future in futures:
        if future.exception() is not None:
            log(f"trial {args[:2]} raised {future.exception()!r}")

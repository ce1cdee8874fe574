"""What the benchmarks that time a command in a process of its own share (not a benchmark)."""

from __future__ import annotations

import os
from pathlib import Path


def bytecode_env(work: Path) -> dict:
    """The environment for a timed child process: modules loaded from bytecode, as an installed
    package is (pip compiles it at install). Under PYTHONDONTWRITEBYTECODE=1 (set by some CI
    images and containers) every child compiled protrans's sources anew, 0.05-0.2 s a run, which
    a baseline made of installed libraries (Biopython, h5py, numpy) never paid. The bytecode goes
    to a cache folder under `work` (PYTHONPYCACHEPREFIX), not into the source tree; run one
    untimed child first to fill it."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(work) / "pycache")
    return env

"""`train --time-limit`: stop with a checkpoint before a job's wall time runs out.

A batch scheduler ends a job at its time limit (Slurm: SIGTERM, then SIGKILL 30 s later by
default), and the steps since the last `--save-every` checkpoint are lost unless the last
checkpoint lands in time. With `--time-limit 23:45:00` the run stops after the last step whose
successor, the checkpoint after that and the process's exit (`EXIT_SECONDS`) would not end in
time, saves a checkpoint there and exits 0; `--resume` continues from there (a requeued or
chained job).

The budget counts from the start of the process (Python's imports and the model's building
included), not from the first step. Each decision is made before a step, from what this
invocation has measured: the longest of the recent steps, the longest checkpoint save and the
longest evaluation (before the first save, its time is estimated from the checkpoint's size at
`ASSUMED_WRITE_RATE`). Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import deque

# Bytes per second a checkpoint is taken to be written (and hashed) at before one is measured:
# a slow shared file system's. Once a save is measured its own time is used.
ASSUMED_WRITE_RATE = 100e6
# The least a checkpoint is taken to cost (directory, config, tokenizer, SHA256SUMS, fsyncs).
SAVE_FLOOR_SECONDS = 1.0
MAX_DURATION = 365 * 86400
RECENT_STEPS = 20  # steps whose longest duration stands for the next ones
# Left after the checkpoint for what a stopped run does before it exits (the loss curve, the
# interpreter's teardown: about a second for a tiny model on a CPU)
EXIT_SECONDS = 2.0

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_WITH_UNITS = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
# Slurm's forms with a colon or a day (sbatch --time): M:SS, H:MM:SS, D-H, D-H:MM, D-H:MM:SS. Two
# numbers without a day are minutes and seconds, as Slurm reads them ("30:00" is half an hour)
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+):(\d+)(?::(\d+(?:\.\d+)?))?|(\d+)-(\d+)")


def parse_duration(text) -> float:
    """Seconds of a duration written as 23:45:00, 1-12:00:00, 2-0 or 45:00 (Slurm's H:MM:SS,
    D-H[:MM[:SS]] and M:SS: two numbers without a day are minutes and seconds), or with units:
    90m, 1h30m, 2d, 45s. A bare number is refused: Slurm reads it as minutes, most tools as seconds. Raises ValueError saying what is accepted."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"a duration is text such as '23:45:00' or '90m', got {text!r}")
    value = text.strip().lower().replace(" ", "")
    seconds = None
    clock = _CLOCK.fullmatch(value)
    if clock:
        days, hours, minutes, secs, day_only, day_hours = clock.groups()
        if day_only is not None:
            seconds = int(day_only) * 86400 + int(day_hours) * 3600
        elif days is None and secs is None:  # M:SS (Slurm's "minutes:seconds")
            seconds = int(hours) * 60 + int(minutes)
        else:
            seconds = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(secs or 0)
    elif value and (units := _WITH_UNITS.fullmatch(value)) and any(units.groups()):
        seconds = sum(float(amount) * _UNITS[unit] for amount, unit in zip(units.groups(), "dhms") if amount)
    if seconds is None:
        hint = " (a bare number: give its unit, e.g. 90m or 5400s)" if re.fullmatch(r"\d+(\.\d+)?", value) else ""
        raise ValueError(f"not a duration: {text!r}{hint}; write 23:45:00, 1-12:00:00, 90m or 1h30m")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be more than 0, got {text!r}")
    if seconds > MAX_DURATION:  # (a timedelta of 99999999999d overflowed, a traceback under torchrun)
        raise ValueError(f"a duration must be at most 365 days, got {text!r}")
    return float(seconds)


AUTO = "auto"
# Slurm's job environment: the job's end time and start time, seconds since the epoch
SLURM_END = "SLURM_JOB_END_TIME"
SLURM_START = "SLURM_JOB_START_TIME"
# `--time-limit auto` plans to have saved this long before Slurm's end time: the node's clock
# against the controller's, and a step slower than those measured
AUTO_MARGIN = 60.0
# Slurm gives a job without a time limit the end `UNLIMITED_END` after its start. Without
# SLURM_JOB_START_TIME to compare with, an end more than UNLIMITED_AFTER from now is taken for
# one (the process starts after the job: the end is less than a year from it, never more).
UNLIMITED_END = 365 * 86400
UNLIMITED_AFTER = 300 * 86400


def is_auto(text) -> bool:
    """Whether a time_limit setting is "auto" (`slurm_limit`), as written: any case, spaces around."""
    return isinstance(text, str) and text.strip().lower() == AUTO


def slurm_limit(environ=None, *, now=time.time, started_ago: float | None = None) -> float | None:
    """`--time-limit auto`: the seconds from this process's start to AUTO_MARGIN before the end of
    its Slurm job (`SLURM_JOB_END_TIME`); None for a job without a time limit (Slurm puts its end
    a year after its start: `SLURM_JOB_START_TIME` + 365 days, or an end more than
    UNLIMITED_AFTER away). Raises ValueError, saying why, outside a Slurm job or when the end has
    passed."""
    environ = os.environ if environ is None else environ
    value = environ.get(SLURM_END, "").strip()
    if not value:
        raise ValueError(f"{SLURM_END} is not set: this is not a Slurm job (or its Slurm does not export "
                         "the job's end time); give the job's wall time less a margin, e.g. 23:45:00")
    try:
        end = float(value)
    except ValueError:
        end = math.nan
    if not math.isfinite(end) or end <= 0:  # ("0", "-5", "inf", "nan": no time Slurm writes)
        raise ValueError(f"{SLURM_END}={value!r} is not a time (seconds since 1970)")
    try:
        start = float(environ.get(SLURM_START, "").strip())
    except ValueError:
        start = math.nan
    current = now()
    if (math.isfinite(start) and end - start >= UNLIMITED_END) or end - current > UNLIMITED_AFTER:
        return None  # a job without a time limit
    age = process_age() if started_ago is None else started_ago
    limit = end - (current - age) - AUTO_MARGIN
    if limit <= 0:
        ago = current - end
        raise ValueError(f"the Slurm job {'ends in ' + format(-ago, '.0f') + ' s' if ago < 0 else 'has ended'}"
                         f" ({SLURM_END}={value}), less than the {AUTO_MARGIN:.0f} s kept before it")
    return min(limit, MAX_DURATION)


def process_age() -> float:
    """Seconds since this process started (Linux: /proc); where that cannot be read (macOS: no
    /proc), since protrans_cli was first imported, which a command does as it starts."""
    try:
        with open("/proc/self/stat", encoding="utf-8") as f:
            stat = f.read()
        with open("/proc/uptime", encoding="utf-8") as f:
            uptime = float(f.read().split()[0])
        # field 22, starttime in clock ticks since boot (after the command name, which may hold spaces)
        started = int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        from protrans_cli import _IMPORTED_AT

        return max(0.0, time.monotonic() - _IMPORTED_AT)
    return max(0.0, uptime - started)


class Deadline:
    """When to stop a run so that its last checkpoint ends before `limit` seconds have passed
    since the process started.

        deadline = Deadline(limit, checkpoint_bytes=...)
        ... before each step:  stop_after_it = deadline.stop_after_next(saves_after_it, evaluates)
        ... after a save:      deadline.saved(seconds)      (after an evaluation: evaluated(seconds))

    A step's time is measured between two decisions, less the saves and evaluations reported
    in between. `clock`: time.monotonic (tests give their own)."""

    def __init__(self, limit: float, *, checkpoint_bytes: float = 0.0, clock=time.monotonic,
                 started_ago: float | None = None):
        self.limit = float(limit)
        self.clock = clock
        age = process_age() if started_ago is None else started_ago
        self.end = clock() - age + self.limit
        self.save_seconds = max(SAVE_FLOOR_SECONDS, checkpoint_bytes / ASSUMED_WRITE_RATE)
        self.save_measured = False
        self.eval_seconds: float | None = None
        self.steps: deque[float] = deque(maxlen=RECENT_STEPS)
        self._last: float | None = None  # the clock at the previous decision
        self._paused = 0.0  # seconds of saves and evaluations since then

    def saved(self, seconds: float) -> None:
        """A checkpoint took `seconds`: the longest measured stands for the next one."""
        self._paused += seconds
        self.save_seconds = max(seconds, self.save_seconds if self.save_measured else 0.0)
        self.save_measured = True

    def evaluated(self, seconds: float) -> None:
        self._paused += seconds
        self.eval_seconds = max(seconds, self.eval_seconds or 0.0)

    def rescale(self, factor: float) -> None:
        """The steps measured so far stand for steps `factor` times as large (a new phase)."""
        self.steps = deque((s * factor for s in self.steps), maxlen=RECENT_STEPS)

    @property
    def step_seconds(self) -> float:
        return max(self.steps, default=0.0)

    def stop_after_next(self, *, saves_after: bool = False, evaluates: int = 0,
                        eval_guess: float = 0.0, exports: bool = False) -> bool:
        """Whether the step about to run must be the last: True when, after it, the step after
        it and a checkpoint (with what falls between: a periodic save, `saves_after`; the
        evaluations, `evaluates` of them (True: one), each timed as measured, else `eval_guess`)
        would not end before the limit; `exports`: the step after it is the run's last, and the
        final model (timed as a checkpoint) is written after its checkpoint."""
        now = self.clock()
        if self._last is not None:
            self.steps.append(max(0.0, now - self._last - self._paused))
        self._last, self._paused = now, 0.0
        step = self.step_seconds
        evaluation = (self.eval_seconds if self.eval_seconds is not None else eval_guess) * int(evaluates)
        need = 2 * step + self.save_seconds * (1 + saves_after + exports) + evaluation + EXIT_SECONDS
        return now + need > self.end


def checkpoint_bytes(num_params: int, optimizer: str) -> float:
    """About what a checkpoint writes: float32 weights and the optimizer's state (AdamW and
    LAMB: two moments a parameter; Adafactor: factored, about a tenth of one)."""
    per_param = 4 * (3 if optimizer in ("adamw", "lamb") else 1.1)
    return float(num_params) * per_param


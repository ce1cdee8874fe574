"""A run directory as it lies on disk, read without torch: its checkpoints (`checkpoints/step_N/`),
the files a run writes at its root, and what a new run or a resume refuses of what the directory
holds. train() says these refusals before any model; `protrans train` says them before it imports
torch as well (seconds on a loaded login node: `train -o RUN` on a run's directory without --resume
was told to add it once torch was loaded). One module, one copy of each check, for both."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from protrans_cli.errors import (InputError, RuntimeFailure, UsageError, first_line, given, option, resume_option,
                                 torch_load_problem)

STATE_FILE = "training_state.pt"
CONFIG_FILE = "train_config.json"
BEST_FILE = "best_checkpoint.json"  # at the run's root with --keep-best: record_best
# in each checkpoint: its step and the run's tokens up to it (training_state.pt's, for info, which never unpickles)
PROGRESS_FILE = "progress.json"
COMPLETE_FILE = "complete.json"  # at the run's root once its last step's model is written: record_complete
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_step(directory) -> int | None:
    """The step of a `step_N` checkpoint directory (None for another name)."""
    m = _STEP_DIR.match(Path(directory).name)
    return int(m.group(1)) if m else None


def _step_dirs(run_dir) -> list[Path]:
    """Every `step_N` directory of a run's checkpoints/, oldest first, complete or not."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if (step := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


def list_checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return [p for p in _step_dirs(run_dir) if (p / STATE_FILE).is_file()]


def find_checkpoint(path) -> Path:
    """A checkpoint directory itself, or the latest checkpoint of a run directory."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    if checkpoint_step(path) is not None and path.is_dir() and path.parent.name == "checkpoints":
        # --resume-from RUN/checkpoints/step_N without its state: "no checkpoint to resume from
        # (expected checkpoints/step_*/)" named what the user gave as if it were no checkpoint
        raise _damaged(path, STATE_FILE, FileNotFoundError(_STATE_MISSING))
    refuse_incomplete_latest(path)
    found = list_checkpoints(path)
    if not found:
        raise InputError("no checkpoint to resume from (expected checkpoints/step_*/)", path=str(path))
    return found[-1]


_STATE_MISSING = "it is missing: deleted to save space, or the checkpoint copied without it"


def refuse_incomplete_latest(run_dir) -> None:
    """A damaged-checkpoint error when a run's latest `step_N/` lacks its training_state.pt.
    Checkpoints are renamed into place whole, and set aside before they are deleted, so only a
    file deleted or lost since leaves one: --resume went back to the checkpoint before without a
    word (or started from step 0 where it was the only one) and wrote over it."""
    steps = [p for p in _step_dirs(run_dir) if p.is_dir()]
    if steps and not (steps[-1] / STATE_FILE).is_file():
        raise _damaged(steps[-1], STATE_FILE, FileNotFoundError(_STATE_MISSING))


def run_dir_option() -> str:
    """The run directory as the message's reader gives it: -o at the command line, and to a library
    call TrainConfig's output_dir (`errors.option`: "choose another -o" was said to both)."""
    return option("-o", "output_dir")


def run_dir_in_use(run_dir) -> RuntimeFailure:
    """The refusal of a run directory whose lock (checkpoint.run_lock) another process holds."""
    # (the holder may be a run or a range test, from the command line or from Python, whoever
    # reads this: "another protrans train" was said to a find_lr() call that met a train())
    return RuntimeFailure("is in use by another training run or learning-rate range test (protrans train, train() or "
                          "find_lr(): it holds the run directory's lock): wait for it to end, or choose another "
                          f"{run_dir_option()}", path=str(run_dir))


def refuse_run_dir_in_use(run_dir) -> None:
    """run_dir_in_use where another process holds the run directory's lock now; nothing where none
    does, the directory is not there or the file system grants no locks. Asked before the refusals
    of what the directory holds where those are made without the lock (`protrans train`, before it
    imports torch): a run's directory while the run trained was told to "add --resume"."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return
    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (let go at once: closing the descriptor releases it)
    except BlockingIOError:
        raise run_dir_in_use(run_dir) from None
    except OSError:  # (no locks on this file system: run_lock says so, where it applies)
        pass
    finally:
        os.close(fd)


def _damaged(directory, name: str, exc: BaseException) -> InputError:
    """A checkpoint file that cannot be read: one line, with the checkpoint to go back to."""
    directory = Path(directory)
    step = checkpoint_step(directory)  # None: a directory given to --resume-from by another name
    earlier = [] if step is None else [p for p in list_checkpoints(directory.parent.parent)
                                       if checkpoint_step(p) < step]
    hint = (f"continue from the one before with {given('--resume-from', 'resume', str(earlier[-1]))}, after moving "
            "this one away"
            if earlier else "no earlier checkpoint to go back to")
    why = torch_load_problem(exc) or first_line(exc)
    return InputError(f"damaged checkpoint: cannot read {name} ({why}); {hint}", path=str(directory))


# What a run writes at the root of its directory besides checkpoints and the final model.
_RUN_FILES = (CONFIG_FILE, "metrics.jsonl", "loss_curve.png", BEST_FILE, COMPLETE_FILE, "wandb_run.json")
_MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _refuse_odd_run_files(run_dir) -> None:
    """Anything but a regular file (through a link) under the name of a file a run writes at the
    root of its directory, or a folder called checkpoints or checkpoints/step_N: refused before
    any model, and left as it is. A named pipe called metrics.jsonl or config.json hung the run for ever as it started
    (read first), one called loss_curve.png once every step was done (written in place); a folder
    there was "Is a directory" once the model was built; a named pipe called checkpoints failed the
    first save."""
    from protrans_cli.io.files import link_to_nothing, odd_kind

    if (nothing := link_to_nothing(Path(run_dir) / "checkpoints")) is not None:  # (no folder can be made there)
        raise InputError(f"{nothing}: a run keeps its checkpoints in a folder of this name (make that folder, move "
                         f"the link away, or choose another {option('-o', 'output_dir')})",
                         path=str(Path(run_dir) / "checkpoints"))
    for name in (*_RUN_FILES, *_MODEL_FILES, "checkpoints"):
        path = Path(run_dir) / name
        folder = name == "checkpoints"
        if (kind := odd_kind(path, folder=folder)) is not None:  # (a link to nothing: made as any new file is)
            what = "not a folder: a run keeps its checkpoints in a folder" if folder else \
                "not a regular file: a run writes a file"
            raise InputError(f"is {kind}, {what} of this name (move it away, or choose another "
                             f"{option('-o', 'output_dir')})", path=str(path))
    # A named pipe or a file called checkpoints/step_N failed that step's save, once every step
    # before it was trained: the folder it is swapped with cannot take its place. (Inside a step
    # folder nothing odd matters: the whole folder is replaced; a link to nothing is replaced too.)
    with contextlib.suppress(OSError):  # (no checkpoints folder: nothing there)
        for step in sorted(os.scandir(Path(run_dir) / "checkpoints"), key=lambda entry: entry.name):
            if checkpoint_step(step.name) is not None and (kind := odd_kind(step.path, folder=True)) is not None:
                raise InputError(f"is {kind}, not a folder: a run keeps each checkpoint in a folder of this name (move "
                                 f"it away, or choose another {option('-o', 'output_dir')})", path=step.path)


def _held_model(run_dir) -> str | None:
    """The name of a model file at the root of `run_dir` (a run's final model, or any HF model
    directory), else None. Only a run's last step writes them there, so a run killed before its
    first checkpoint leaves none."""
    return next((name for name in _MODEL_FILES if (Path(run_dir) / name).exists()), None)


def refuse_what_the_run_dir_holds(run_dir, resume, *, main: bool = True) -> None:
    """What a run refuses of its directory before any model, in this order: odd files under a run's
    names (`main`: the rank that writes them), another run's checkpoints for a new run (they would
    mix), a latest checkpoint without its state for `resume=True`, a model and no checkpoint (a new
    run would write over it). `resume` as train() takes it (None or False: a new run)."""
    if main:
        _refuse_odd_run_files(run_dir)
    if not resume and list_checkpoints(run_dir):
        # A fresh run here would mix its checkpoints with the old ones, and a later
        # --resume would pick whichever step number is highest (checked before any model).
        latest = list_checkpoints(run_dir)[-1].name
        raise UsageError(f"{run_dir} already holds a run ({latest}): add {resume_option()} to "
                         f"continue it, or choose another {run_dir_option()}")
    if resume is True:
        # (before the model check: a finished run whose only checkpoint lost its state was told it
        # held "a model and no checkpoint to resume from", exit 2, of a checkpoint it lists)
        refuse_incomplete_latest(run_dir)  # (the only one: not "none yet")
    if not list_checkpoints(run_dir) and (model := _held_model(run_dir)):
        # A finished run whose checkpoints were deleted to save space, or a model
        # downloaded there: a new run (or --resume, which found no checkpoint and
        # started from step 0, or --resume-from another run's checkpoint) wrote its
        # own weights over it without a word, and left another family's files
        # (vocab.txt, generator/) beside its own.
        from protrans_cli.io.files import config_kind, json_object

        # (a head's folder, from fit, was "already holds a model (config.json)")
        head = config_kind(json_object(Path(run_dir) / "config.json")) == "head"
        held = "a prediction head" if head else "a model"
        raise UsageError(
            f"{run_dir} already holds {held} ({model}) and no checkpoint"
            + (" to resume from" if resume is True else "")
            + f": a new run would overwrite it; choose another {run_dir_option()} (or move the "
              f"{held.split()[-1]} away)")

"""Checkpoints: written atomically every N steps, the last K kept, restored exactly on resume.

A checkpoint `RUN/checkpoints/step_00001000/` is an HF model directory (the family's
save_pretrained: config.json, model.safetensors, tokenizer files; `protrans embed -m` and
`AutoModel.from_pretrained` read it) plus what resuming needs:
  pretraining_model.safetensors  every weight of the pretraining model (heads, ELECTRA's
                                 generator), so training continues from exactly these weights;
                                 only where the HF directory's model.safetensors does not
                                 already hold every one of them (ELECTRA's generator lives
                                 elsewhere): a ProtBert-sized checkpoint held its 1.7 GB twice
  training_state.pt              step, optimizer, scheduler, data position, RNG states, each
                                 invocation's processes (first step, world size, strategy,
                                 precision: the card's history)
                                 (read back with torch.load(weights_only=True))
  train_config.json              the config of the run (as given, and what its automatic settings meant)
                                 (with --keep-best, training_state.pt also holds the best so far)
  README.md                      a model card (training/card.py): the model, its training, its
                                 results, how to use it
  progress.json                  the step, the run's tokens up to it and its processes
                                 (training_state.pt's, as JSON: `protrans info` reads it,
                                 never the pickle)
  SHA256SUMS                     the sha256 of every other file (`sha256sum -c SHA256SUMS`
                                 checks it by hand); --resume checks it before reading
It is written into a hidden temporary directory and renamed into place, so a crash never
leaves a half-written checkpoint under a step name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from protrans_cli.errors import (InputError, RuntimeFailure, UsageError, a_or_an, again_with_resume, first_line,
                                 said_about, type_problem)
from protrans_cli.io.files import (default_permissions, disk_full, refuse_special_output, replace_directory,
                                   file_locking, sha256_file, without_locks)
# (a run directory's layout, read without torch: `protrans train` refuses what it holds before importing torch)
from protrans_cli.training.rundir import (BEST_FILE, COMPLETE_FILE, CONFIG_FILE, PROGRESS_FILE, STATE_FILE, _damaged,
                                          checkpoint_step, list_checkpoints, run_dir_in_use, run_dir_option)
from protrans_cli.training.card import may_write as may_write_card
from protrans_cli.training.card import write_card

if TYPE_CHECKING:
    from protrans_cli.training.config import TrainConfig

WEIGHTS_FILE = "pretraining_model.safetensors"
HF_WEIGHTS = "model.safetensors"  # the HF directory's weights: every weight too, for most families
SUMS_FILE = "SHA256SUMS"


def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def rng_state(device=None) -> dict:
    """The random generators' states. With `device` (a run's torch.device): a CUDA device's own
    generator only, under "cuda_device" (a checkpoint: every visible GPU's, saved on an 8-GPU node,
    did not restore on a machine with fewer, an IndexError); without, every CUDA device's (the
    caller's own process, restored in it: `callers_rng`)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if device is not None:
        if getattr(device, "type", None) == "cuda":
            state["cuda_device"] = torch.cuda.get_rng_state(device)
    elif torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device=None) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    on_cuda = getattr(device, "type", None) == "cuda"
    if "cuda_device" in state and on_cuda:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif "cuda" in state and torch.cuda.is_available():
        if on_cuda:  # a checkpoint of before: every visible device's; this run's device's, where it had one
            index = device.index or 0
            if index < len(state["cuda"]):
                torch.cuda.set_rng_state(state["cuda"][index], device)
        else:
            for index, saved in enumerate(state["cuda"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(saved, index)


@contextlib.contextmanager
def callers_rng():
    """The caller's random generators (Python, numpy, torch, CUDA) as they were, after a block
    that seeds them (a run is reproducible from its seed): `train` called from a notebook left
    its seeded random numbers moved, and numpy's and Python's reset by a resumed run."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def _to_tuple(x):
    return tuple(_to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


@contextlib.contextmanager
def _quiet_transformers():
    # save_pretrained draws a "Writing model shards" bar on every checkpoint; the loop has its own.
    # The switch is transformers' own, for the whole process: put back after the save, or a
    # notebook's later from_pretrained/save_pretrained showed no bars for the rest of the session.
    # (One process-wide setting with model loading's, models.TRANSFORMERS_LOGGING: saved and
    # restored per call, a save overlapping a load in another thread left the bars off for good.)
    from transformers.utils import logging

    from protrans_cli.models import TRANSFORMERS_LOGGING

    with TRANSFORMERS_LOGGING.held():
        logging.disable_progress_bar()
        yield


def _run_dir_problem(run_dir: Path, exc: OSError) -> Exception:
    """The error for a run directory that could not be made: the part of the path in the way (a
    file where a folder must be) or the system's reason, with -o named."""
    for parent in run_dir.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return UsageError(f"is not a directory, so the run directory {run_dir} cannot go inside it "
                                  f"(choose another {run_dir_option()})", path=str(parent))
            break
    if disk_full(exc):
        return RuntimeFailure("the disk is full: the run directory could not be made", path=str(run_dir))
    reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    kind = UsageError if isinstance(exc, (PermissionError, FileExistsError, NotADirectoryError)) else RuntimeFailure
    return kind(f"cannot make the run directory ({reason}; choose another {run_dir_option()})", path=str(run_dir))


@contextlib.contextmanager
def run_lock(run_dir, active: bool = True):
    """Hold an exclusive lock on the run directory for a whole run (rank 0): two runs started
    together on one directory both passed the "already holds a run" check and wrote every
    metrics line twice, and checkpoints from both. A directory created here and left empty (the
    run failed before writing anything) is removed again. Yields whether this call created the
    run directory (False where inactive: only rank 0 makes and unmakes it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        fcntl = None
    # (a bad PROTRANS_FILE_LOCKING: said before the run directory is made, and by every rank, as any
    # usage error is; read by rank 0 alone, it left the others "rank(s) 0 stopped before starting")
    file_locking()
    if not active or fcntl is None:
        yield False
        return
    refuse_special_output(run_dir, "-o", "a run directory", keyword="output_dir")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"is a file, not a run directory (choose another {run_dir_option()})", path=str(run_dir))
    if run_dir.is_symlink() and not run_dir.exists():
        raise UsageError(f"is a link to {os.readlink(run_dir)}, which does not exist (make that folder, or "
                         f"choose another {run_dir_option()})", path=str(run_dir))
    # The folders made here, deepest first: removed again when they are left empty.
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # (was the bare "X/run: Not a directory" of the OSError)
        raise _run_dir_problem(run_dir, exc) from None
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # (the folders made here are the holder's now: removed as they were left empty, the
            # directory of a run started at the same moment went from under it)
            created = []
            raise run_dir_in_use(run_dir) from None
        except OSError as exc:  # a file system without flock (Lustre without it, NFS mounted nolock)
            without_locks(run_dir, str(run_dir), exc)  # (no lock, or refused: PROTRANS_FILE_LOCKING=TRUE)
        yield run_dir in created
    finally:
        os.close(fd)  # the lock goes with it
        for folder in created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break


def discard_unfinished_run(run_dir, files) -> bool:
    """After a failed run: delete its own `files` (train_config.json, ...) and an empty
    checkpoints/ folder when the run kept nothing (no checkpoint, no final model, no metrics
    line: the loss curve of a run that diverged before its first save is what tells a better
    learning rate), so that run_lock removes the directory it made. Only the run's own files by
    name, never a tree: what anything else put there stays, and with it the directory. True when
    something was deleted."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if list_checkpoints(run_dir) or (run_dir / "config.json").exists() or \
            (metrics.is_file() and metrics.stat().st_size > 0):
        return False
    removed = False
    for name in files:
        path = run_dir / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed = True
    with contextlib.suppress(OSError):
        (run_dir / "checkpoints").rmdir()  # only when empty (a first save that failed)
    return removed


def _temporary(final: Path) -> Path:
    """Where `final` is written before its rename: `.NAME.tmp-PID` beside it (what
    `remove_stale_temporaries` looks for)."""
    return final.parent / f".{final.name}.tmp-{os.getpid()}"


def _no_room(folder: Path) -> str | None:
    """What a write into `folder` that failed met, when its disk is full or a file reached the
    file-size limit (ulimit -f): torch's writer says "[enforce fail at inline_container.cc:672]
    . unexpected pos 285184 vs 285072" there, which names no cause (asked for that error only:
    another one on a nearly full disk keeps its own words). Read before the partial checkpoint
    is removed, which frees its room."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        with contextlib.suppress(OSError):
            largest = max((entry.stat().st_size for entry in os.scandir(folder) if entry.is_file()), default=0)
            if largest + (64 << 10) >= limit:
                return f"File too large: the file-size limit (ulimit -f) is {limit / 2**20:.1f} MiB"
    from protrans_cli.io.disk import free_bytes

    try:
        free = free_bytes(os.statvfs(folder))
    except OSError:
        return None
    return f"No space left on device: {free / 1024:.0f} KiB free" if free is not None and free < 1 << 20 else None


def save_checkpoint(directory, *, family, model, tokenizer, training_state: dict, config,
                    keep_last: int | None = None, resolved: dict | None = None, best: dict | None = None,
                    card: str | None = None) -> Path:
    """Write one checkpoint atomically (call on rank 0 with full, unsharded weights); then record
    `best` (--keep-best's {"step", "eval_loss"}, this checkpoint's possibly: record_best) and prune
    all but the last `keep_last` and the best. In that order: the record never names a checkpoint
    not yet written, nor one already pruned (a kill between the two left it naming the best before,
    pruned once this one became the best). `card`: its README.md (training/card.py), written with
    the rest, so that it appears with the checkpoint."""
    from safetensors.torch import save_model

    directory = Path(directory)
    run_dir = directory.parent.parent
    if not run_dir.is_dir():
        # (checkpoints/ was made with its parents: a run directory removed during the run came
        # back with checkpoints alone, and the run went on to exit 0 without its config)
        raise RuntimeFailure("the run directory was removed or moved during the run", path=str(run_dir))
    tmp = _temporary(directory)
    try:
        directory.parent.mkdir(exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()  # (in the try: a folder refused here named the hidden temporary, not the checkpoint)
        with _quiet_transformers():
            family.save_pretrained(model, tokenizer, tmp)
        if not _holds_every_weight(tmp / HF_WEIGHTS, model):
            save_model(model, str(tmp / WEIGHTS_FILE))
        torch.save(training_state, tmp / STATE_FILE)
        if is_count(training_state.get("step")) and is_count(training_state.get("tokens")):
            # (the count `protrans info RUN` gives of a run not complete, and the run's process
            # history up to here: info reads JSON only)
            progress = {"step": training_state["step"], "tokens": int(training_state["tokens"])}
            if isinstance(training_state.get("processes"), list):
                progress["processes"] = training_state["processes"]
            (tmp / PROGRESS_FILE).write_text(json.dumps(progress) + "\n", encoding="utf-8")
        config.save(tmp / CONFIG_FILE, resolved=resolved)
        if card is not None:
            write_card(tmp, card)
        _write_sums(tmp)
        default_permissions(tmp)  # safetensors writes 0600
        # (it exists where a folder of this step lost its training_state.pt and the run went --resume-from
        # an earlier checkpoint: a complete later one is refused, loop._refuse_later_checkpoints)
        replace_directory(tmp, directory)
    except Exception as exc:  # a full disk, a quota: one line; the checkpoints before stay as they were
        reason = (disk_full(exc) or (_no_room(tmp) if "unexpected pos" in str(exc) else None)
                  or said_about(exc, directory))
        shutil.rmtree(tmp, ignore_errors=True)
        kept = [p.name for p in list_checkpoints(directory.parent.parent) if p != directory]
        raise RuntimeFailure(f"cannot write the checkpoint ({reason}); "
                             + (f"the last one is {kept[-1]}" if kept else "no earlier checkpoint"),
                             path=str(directory)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if best is not None:
        record_best(run_dir, best)
    prune_checkpoints(run_dir, keep_last, keep_step=best and best["step"])
    return directory


def prune_checkpoints(run_dir, keep_last: int | None, *, keep_step: int | None = None) -> None:
    """Delete all but the last `keep_last` checkpoints and the one of step `keep_step` (the best
    so far, --keep-best). Each is first renamed to a hidden
    `.step_N.old.PID` (what `remove_stale_temporaries` removes): deleted in place, a SIGKILL in the
    middle of the rmtree left `step_N/` without its training_state.pt, which no later run counted
    as a checkpoint or removed."""
    if not keep_last:
        return
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if keep_step is not None and checkpoint_step(old) == keep_step:
            continue
        aside = old.parent / f".{old.name}.old.{os.getpid()}"
        try:
            os.replace(old, aside)
        except OSError:
            aside = old
        shutil.rmtree(aside, ignore_errors=True)


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.int8: "I8", torch.bool: "BOOL"}


def _holds_every_weight(path: Path, model) -> bool:
    """Whether safetensors' load_model(model, path, strict=True) restores every weight of `model`
    exactly as it is: each of its tensors (or one tying its storage) under its own name, with its
    dtype, shape and first row; no name the model lacks. Then the checkpoint needs no second copy."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():  # (a sharded save: model-00001-of-N.safetensors)
        return False
    state = model.state_dict()
    tied: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride())) if tensor.numel() else (name,)
        tied.setdefault(key, []).append(name)
    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            saved = set(f.keys())
            if not saved <= state.keys():
                return False
            for names in tied.values():
                present = [n for n in names if n in saved]
                if not present:
                    return False
                for name in present:
                    tensor, stored = state[name], f.get_slice(name)
                    if (stored.get_dtype() != _SAFETENSORS_DTYPES.get(tensor.dtype)
                            or list(stored.get_shape()) != list(tensor.shape)):
                        return False
                    first = stored[0:1] if tensor.dim() else f.get_tensor(name)
                    if not torch.equal(first, (tensor[0:1] if tensor.dim() else tensor).detach().cpu()):
                        return False
    except (SafetensorError, OSError, RuntimeError, ValueError):
        return False
    return True


def remove_stale_temporaries(run_dir) -> list[Path]:
    """Remove what a killed save left: `.step_*.tmp-PID` under checkpoints/ and `.final.tmp-PID`
    in the run directory (SIGKILL or a node failure in the middle of a save cannot clean up, and
    a checkpoint with optimizer state is as large as three models). Called on rank 0 before a run
    writes anything; two runs writing to one run directory at once are not supported anyway."""
    run_dir = Path(run_dir)
    stale = []
    # _temporary(checkpoint_dir(run_dir, N)) and _temporary(run_dir / "final") of any process
    for folder, name in ((run_dir / "checkpoints", "step_*"), (run_dir, "final")):
        if folder.is_dir():
            stale += [p for p in folder.glob(f".{name}.tmp-*") if p.is_dir() and not p.is_symlink()]
    # a checkpoint set aside by prune_checkpoints or replace_directory, killed before it was
    # deleted (the final model is replaced file by file; its generator/ folder's old copy, where
    # the two cannot be swapped, is removed by the next replace_directory)
    if (run_dir / "checkpoints").is_dir():
        stale += [p for p in (run_dir / "checkpoints").glob(".step_*.old.*") if p.is_dir() and not p.is_symlink()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _write_sums(directory: Path) -> None:
    """SHA256SUMS in `sha256sum`'s format: files whose bytes change on disk afterwards (bit rot,
    a copy between clusters cut short, a bad network file system) are found before a resume
    reads them; neither torch.load nor safetensors checks the bytes of the tensors."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != SUMS_FILE)
    (directory / SUMS_FILE).write_text("".join(f"{sha256_file(p)}  {p.relative_to(directory).as_posix()}\n"
                                               for p in files), encoding="utf-8")


def check_sums(directory) -> str | None:
    """The one-line problem of a checkpoint whose files no longer match its SHA256SUMS, or None
    (checkpoints of earlier versions have none: nothing to compare). Costs one read of the
    checkpoint (about 1.8 GB/s of sha256 on one core, plus the disk)."""
    directory = Path(directory)
    try:
        listed = (directory / SUMS_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return str(_damaged(directory, SUMS_FILE, exc))
    for line in listed:
        digest, sep, name = line.partition("  ")
        if not sep or ".." in Path(name).parts or Path(name).is_absolute():
            return str(_damaged(directory, SUMS_FILE, ValueError(f"not a sha256sum line: {line[:60]!r}")))
        if not (directory / name).exists():
            return str(_damaged(directory, name, FileNotFoundError("missing")))
        if not (directory / name).is_file():  # a link to /dev/zero or a FIFO: hashed for ever
            return str(_damaged(directory, name, ValueError("not a regular file")))
        try:
            same = sha256_file(directory / name) == digest
        except OSError as exc:
            return str(_damaged(directory, name, exc))
        if not same:
            return str(_damaged(directory, name, ValueError(f"it no longer matches its line in {SUMS_FILE}: one of "
                                                            "the two changed on disk")))
    return None


# What every training state holds (loop._save), with the type a resume relies on.
_STATE_ENTRIES = {"step": int, "data_phase": int, "data_state": dict, "optimizer": dict, "scheduler": dict,
                  "rng": list}


def load_training_state(directory, num_phases: int | None = None) -> dict:
    """A checkpoint's training_state.pt, every entry the resume reads checked; `num_phases`: the
    resumed run's phases, which its data_phase must fall in."""
    try:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or damaged zip, a refused pickle: the same problem
        raise _damaged(directory, STATE_FILE, exc) from None
    # (a state that loads but lacks an entry was a KeyError traceback in the middle of the resume)
    missing = [k for k, kind in _STATE_ENTRIES.items() if not isinstance(state, dict) or not isinstance(state.get(k), kind)]
    if missing or not state["rng"]:
        raise _damaged(directory, STATE_FILE, ValueError(f"no usable {', '.join(missing) or 'rng'} entry: not a "
                                                         "training state protrans wrote"))
    problem = _data_state_problem(state["data_state"])
    if problem:
        raise _damaged(directory, STATE_FILE, ValueError(f"data_state: {problem}"))
    best = state.get("best")  # (--keep-best's; absent otherwise and in earlier versions' states)
    if best is not None and not (isinstance(best, dict) and is_count(best.get("step"))
                                 and isinstance(best.get("eval_loss"), float)):
        raise _damaged(directory, STATE_FILE, ValueError(f"best: {best!r:.60}: not a step and an eval loss"))
    if problem := _state_entries_problem(directory, state, num_phases):
        raise _damaged(directory, STATE_FILE, ValueError(problem))
    return state


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _state_entries_problem(directory, state: dict, num_phases: int | None) -> str | None:
    """What is wrong with the training state's entries that the resume reads as they are (its step
    and phase, the corpus fingerprint, the metrics interval under way, the process count), or
    None. A hand-edited or foreign state was a KeyError or TypeError traceback (a corpus entry
    without its size), an IndexError at the first step (a data_phase past the run's phases), or a
    refusal that blamed the run's later checkpoints (a step of -1)."""
    step, data_phase = state["step"], state["data_phase"]
    for key, value in (("step", step), ("data_phase", data_phase)):
        if not is_count(value):
            return f"{key} is {value!r}, not a count"
    if num_phases is not None and data_phase >= num_phases:
        return f"data_phase is {data_phase}, past the run's {num_phases} phase(s)"
    named = checkpoint_step(directory)
    if named is not None and step != named:
        return f"step is {step}, in the checkpoint of step {named}"
    expected = saved_data_phase(directory, step)
    if expected is not None and data_phase != expected:
        return f"data_phase is {data_phase}, and step {step} is in phase {expected} of its {CONFIG_FILE}"
    corpus = state.get("corpus")  # (none in earlier versions' states: nothing to compare)
    if corpus is not None:
        if not isinstance(corpus, list):
            return f"corpus is {corpus!r:.40}, not a list of file fingerprints"
        for i, entry in enumerate(corpus):
            if not (isinstance(entry, dict) and is_count(entry.get("size")) and isinstance(entry.get("ends_sha256"), str)):
                return f"corpus[{i}] is {entry!r:.40}, not a file's size and ends_sha256"
    if "world_size" in state and not (is_count(state["world_size"]) and state["world_size"] >= 1):
        return f"world_size is {state['world_size']!r:.40}, not a number of processes"
    processes = state.get("processes")  # (each invocation's, for the card; none in earlier versions' states)
    if processes is not None:
        if not isinstance(processes, list):
            return f"processes is {processes!r:.40}, not a list of invocations"
        for i, entry in enumerate(processes):
            if not (isinstance(entry, dict) and is_count(entry.get("first_step")) and entry["first_step"] >= 1
                    and is_count(entry.get("world_size")) and entry["world_size"] >= 1
                    and isinstance(entry.get("strategy"), str) and isinstance(entry.get("precision"), str)):
                return (f"processes[{i}] is {entry!r:.60}, not an invocation's first_step, world_size, strategy "
                        "and precision")
    # the run's history that its later checkpoints and cards carry on (none in earlier versions' states):
    # a count taken as int() and a list taken as list() passed a string or a table on as a record
    if "nonfinite_steps" in state and not is_count(state["nonfinite_steps"]):
        return f"nonfinite_steps is {state['nonfinite_steps']!r:.40}, not a count"
    skipped = state.get("skipped_data")  # (--skip-data's passes: each one's after_step, steps, proteins)
    if skipped is not None:
        if not isinstance(skipped, list):
            return f"skipped_data is {skipped!r:.60}, not a list of --skip-data passes"
        for i, entry in enumerate(skipped):
            if not (isinstance(entry, dict) and is_count(entry.get("after_step")) and entry["after_step"] <= step
                    and is_count(entry.get("steps")) and entry["steps"] >= 1 and is_count(entry.get("proteins"))):
                return f"skipped_data[{i}] is {entry!r:.60}, not a pass's after_step, steps and proteins"
    log = state.get("log")  # (the metrics interval under way; read only where it is not empty)
    if log:
        if not isinstance(log, dict):
            return f"log is {log!r:.40}, not a table of the metrics interval"
        sums = log.get("sums")
        if not isinstance(sums, dict) or not all(
                isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)) for v in sums.values()):
            return f"log.sums is {sums!r:.40}, not a table of sums and counts"
        for key in ("tokens", "grad_norm", "seconds"):
            if (key != "seconds" or key in log) and not _is_number(log.get(key)):
                return f"log.{key} is {log.get(key)!r:.40}, not a number"
        for key in ("steps", "norm_steps"):
            if (key == "steps" or key in log) and not is_count(log.get(key)):
                return f"log.{key} is {log.get(key)!r:.40}, not a count"
    if state.get("loss_scale") is not None and not isinstance(state["loss_scale"], dict):
        return f"loss_scale is {state['loss_scale']!r:.40}, not a loss scaler's state"
    best = state.get("best")
    if best is not None:
        val = best.get("val_corpus")
        if val is not None and not (isinstance(val, list) and all(isinstance(x, str) for x in val)):
            return f"best.val_corpus is {val!r:.40}, not a list of paths"
        if "num_eval_batches" in best and not is_count(best["num_eval_batches"]):
            return f"best.num_eval_batches is {best['num_eval_batches']!r:.40}, not a count"
    return None


_STREAM_FIELDS = ("epoch", "buffer_start", "batches_done", "plan", "width")


def _cursor_fields() -> tuple[str, ...]:
    from protrans_cli.training.data import Cursor

    return tuple(f.name for f in dataclasses.fields(Cursor))


def _data_state_problem(data_state: dict) -> str | None:
    """What is wrong with a saved data position (data.StreamState.to_dict), or None. Checked
    here because a bad one fails only later, inside the corpus reader: a negative byte offset
    stopped the resume with a bare "Invalid argument" from seek, naming no file."""
    at = data_state.get("at")
    fields = [(k, data_state.get(k, 0)) for k in _STREAM_FIELDS]
    if at is not None:
        if not isinstance(at, dict):
            return f"at is {json.dumps(at)[:40]}, not a cursor (a table of positions)"
        names = _cursor_fields()
        fields += [(f"at.{k}", at.get(k, 0)) for k in names]
        unknown = set(at) - set(names)
    else:
        unknown = set()
    unknown |= set(data_state) - {*_STREAM_FIELDS, "at"}
    if unknown:
        return f"unknown field {sorted(map(str, unknown))[0]!r}"
    for key, value in fields:
        if not is_count(value):
            return f"{key} is {value!r}, not a count"
    from protrans_cli.training.data import PLANS

    if data_state.get("width", 1) < 1:  # (the length buckets' width: at least one token)
        return f"width is {data_state['width']!r}, not a width of at least 1"
    if data_state.get("plan", 1) not in PLANS:
        return (f"plan {data_state['plan']!r} is not one this protrans knows ({', '.join(map(str, PLANS))}: a newer "
                "version's checkpoint?)")
    return None


def is_count(value) -> bool:
    """Whether a restored value is a whole number of at least 0 (not a bool, a float or text)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@contextlib.contextmanager
def restoring(directory, entry: str | None = None):
    """Around putting a checkpoint's training state back (optimizer, scheduler, random generators,
    data position): an entry of the wrong form (a tampered or foreign training_state.pt that
    torch.load still reads) is the damaged-checkpoint error naming the file, not a traceback from
    deep inside random.setstate or the optimizer. Running out of memory is not the file's fault.
    `entry`: the training state's entry being put back, which the error names."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RuntimeError) as exc:
        if entry is not None:
            # (a KeyError's message is the key alone: "('param_groups')" named neither entry nor problem)
            why = f"no {exc.args[0]!r} in it" if isinstance(exc, KeyError) and exc.args else first_line(exc)
            exc = ValueError(f"{entry}: {why}")
        raise _damaged(directory, STATE_FILE, exc) from None


def check_optimizer_state(directory, optimizer) -> None:
    """Refuse optimizer statistics whose shapes are not those of the parameters they belong to:
    load_state_dict takes them as they are, and the first step then failed with a shape error
    (or, for a tensor that broadcasts, trained on with wrong statistics)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                shape = tuple(param.shape)
                # Adafactor's factored second moments: a row and a column mean of a matrix
                expected = {"exp_avg_sq_row": shape[:-1], "exp_avg_sq_col": shape[:-2] + shape[-1:]}.get(key, shape)
                if key == "step" and (isinstance(value, (int, float)) or torch.is_tensor(value) and value.numel() == 1):
                    continue
                if not torch.is_tensor(value) or tuple(value.shape) != expected:
                    got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise _damaged(directory, STATE_FILE, ValueError(
                        f"optimizer state {key!r} is {got} for a parameter of shape {shape}"))


def load_weights(directory, model) -> None:
    """Every weight of the pretraining model, as saved (strict: the architecture must match):
    from pretraining_model.safetensors, or, in a checkpoint without one (its HF directory held
    every weight), from model.safetensors."""
    from safetensors.torch import load_model

    name = WEIGHTS_FILE if (Path(directory) / WEIGHTS_FILE).is_file() else HF_WEIGHTS
    path = Path(directory) / name
    if not path.is_file():
        raise InputError(f"checkpoint has no {WEIGHTS_FILE} (nor {HF_WEIGHTS})", path=str(directory))
    from safetensors import SafetensorError

    try:
        load_model(model, str(path), strict=True, device="cpu")
    except SafetensorError as exc:  # cut short (a full disk, a copy interrupted)
        raise _damaged(directory, name, exc) from None
    except RuntimeError as exc:
        # torch's message is a header line and then every missing key: keep the first key line,
        # and name the family/preset the checkpoint was trained as (the usual cause).
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
        if len(detail) > 160:
            detail = detail[:157] + "..."
        saved = ""
        try:
            cfg = json.loads((Path(directory) / "train_config.json").read_text(encoding="utf-8"))
            source = f"/{cfg['preset']}" if cfg.get("preset") else f" (from {cfg['init_from']})" \
                if cfg.get("init_from") else ""
            saved = f"it holds {a_or_an(str(cfg['family']))}{source} model; "
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if name == HF_WEIGHTS and saved and "Missing key(s)" in str(exc):
            # Its settings are this run's (resumed_config compared them first: family, preset,
            # model_overrides), so its model.safetensors was saved from this very model and, not
            # holding every weight of it (ELECTRA's generator, ESM's renamed LayerNorms), came
            # with the second copy save_checkpoint writes then: that file is gone (removed, or
            # not copied along), not a model of another shape. (Weights missing: a file with
            # extra ones alone, an edited BERT's, which never has that second copy, does not match.)
            raise InputError(f"checkpoint has no {WEIGHTS_FILE}, the weights of the pretraining model that its "
                             f"{HF_WEIGHTS} lacks ({detail}): copy the file back from where the checkpoint was "
                             "written, or resume from another checkpoint", path=str(directory)) from None
        raise InputError(f"checkpoint does not match the model being trained: {saved}{detail}",
                         path=str(directory)) from None


def saved_vocabulary(directory) -> dict[str, int] | None:
    """The token ids of the tokenizer a checkpoint saved (tokenizer.json, or ESM's vocab.txt), or
    None where it saved neither."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    try:
        if path.is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
        path = directory / "vocab.txt"
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                return {line.rstrip("\n"): i for i, line in enumerate(f)}
    except Exception as exc:  # a damaged file: a tokenizers parse error, bad UTF-8
        raise _damaged(directory, path.name, exc) from None
    return None


def check_vocabulary(directory, tokenizer) -> None:
    """Refuse to resume with a tokenizer whose ids differ from those the checkpoint was trained
    with (a protrans release that changed a family's vocabulary): every id would mean another
    token to the trained embeddings, and nothing else would tell. For a run built from the family's
    own tokenizer (an --init-from run resumes with the checkpoint's tokenizer itself)."""
    saved = saved_vocabulary(directory)
    if saved is None:
        return
    built = tokenizer.get_vocab()
    if saved == built:
        return
    moved = sorted(t for t in saved.keys() & built.keys() if saved[t] != built[t])
    what = (f"{len(moved)} token(s) have other ids (e.g. {moved[0]!r}: {saved[moved[0]]} there, "
            f"{built[moved[0]]} here)" if moved else
            f"{len(saved.keys() ^ built.keys())} token(s) are in one vocabulary only")
    raise InputError(f"the checkpoint was trained with another vocabulary than this protrans builds for its "
                     f"family: {what}; resume it with the protrans version that started the run, or start a new "
                     "run with --init-from this checkpoint (which keeps its tokenizer)", path=str(directory))


# Settings a resumed run must share with its checkpoint: what the model, the data, the order of
# the batches, the masks and the optimizer's path depend on. The rest may change on a resume
# (longer runs: num_steps and phase steps; logging, checkpoints, workers, threads, distribution,
# kernels, recomputation and compilation, which change no result).
RESUME_SETTINGS = ("family", "preset", "init_from", "objective", "model_overrides", "corpus", "max_length",
                   "global_batch_size", "bucket_batches", "mask_prob", "sop", "noise_density", "mean_span_length",
                   "plm_prob", "electra_disc_weight", "segment_length", "optimizer", "lr", "weight_decay",
                   "adam_beta1", "adam_beta2", "adam_eps", "warmup_steps", "schedule", "min_lr_ratio", "decay_fraction",
                   "decay_steps", "grad_clip", "seed", "precision", "sample_clusters")


_PHASES_SHOWN = "phases (LEN:GLOBAL_BATCH)"


def _same_file(saved_path: str, path: str) -> bool:
    """Whether a path in a checkpoint's config and one of this run name the same file: the same
    real path; or, for a saved path that does not exist from here (a relative path from where the
    first run started, or a run moved to another machine or file system), the same file name."""
    if os.path.realpath(saved_path) == os.path.realpath(path):
        return True
    return (not os.path.exists(saved_path)
            and os.path.basename(os.path.normpath(saved_path)) == os.path.basename(os.path.normpath(path)))


def same_validation(saved, paths) -> bool:
    """Whether a best checkpoint's validation corpus (--keep-best's record; None: recorded by a
    version that did not record it) is this run's, file by file as `_same_file` compares."""
    if saved is None:
        return True
    paths = list(paths or [])
    return isinstance(saved, list) and len(saved) == len(paths) and all(
        isinstance(a, str) and _same_file(a, str(b)) for a, b in zip(saved, paths))


def _phase_shapes(side: dict) -> list[tuple]:
    """(max length, global batch) of each phase a config gives (a phase without a global batch
    has the run's); none for a config without phases."""
    return [(p.get("max_length"), p.get("global_batch_size") or side.get("global_batch_size"))
            for p in side.get("phases") or []]


def _single_phase(side: dict) -> tuple:
    """(max length, global batch) of a config without phases: its one phase."""
    return side.get("max_length"), side.get("global_batch_size")


def _saved_config_problem(saved) -> str | None:
    """Why a checkpoint's train_config.json cannot be compared with a run's settings (not an
    object; a value `resumed_config` computes with, or takes over, of another type), or None."""
    from protrans_cli.training.config import RESOLVED

    if not isinstance(saved, dict):
        return f"it holds {type(saved).__name__}, not a JSON object of settings"
    phases = saved.get("phases") or []
    if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
        return f"phases is {phases!r:.40}, not a list of tables"
    resolved = saved.get(RESOLVED) if isinstance(saved.get(RESOLVED), dict) else {}
    values = [("num_steps", saved.get("num_steps"), "int | None"),
              ("warmup_steps", saved.get("warmup_steps"), "int | None"),
              (f"{RESOLVED}.warmup_steps", resolved.get("warmup_steps"), "int | None"),
              ("init_from", saved.get("init_from"), "str | None")]
    values += [(f"phases[{i}].{key}", p.get(key), "int | None") for i, p in enumerate(phases)
               for key in ("max_length", "num_steps", "global_batch_size")]
    for name, value, annotation in values:
        if problem := type_problem(annotation, value):
            return f"{name} is {value!r:.40}, not {problem}"
    for key in ("corpus", "val_corpus"):
        paths = saved.get(key)
        if paths is not None and (not isinstance(paths, list) or not all(isinstance(x, str) for x in paths)):
            return f"{key} is {paths!r:.40}, not a list of paths"
    return None


def resumed_config(config: "TrainConfig", where: Path, *, family=None, device="cpu",
                   refusal=None) -> "TrainConfig":
    """`config`, checked against the checkpoint's train_config.json: a resumed run with another
    corpus, batch, seed or optimizer setting went on silently (the saved data position applied to
    another corpus; --lr overridden by the restored scheduler). A setting left at None
    (warmup_steps) takes the checkpoint's value; one that an older checkpoint lacks is not compared.
    Defaults are compared as what they mean: no objective is the family's (`family`), precision
    auto is what it is on this `device` (a torch.device or its type). `refusal`: the error's
    message made of the settings that differ (by default "cannot resume from WHERE ...")."""
    from protrans_cli.training.config import DEFAULT_MAX_WARMUP, RESOLVED, resolve_precision

    path = where / CONFIG_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return config  # an older checkpoint without it, or unreadable: nothing to compare
    if problem := _saved_config_problem(saved):
        # (an edited file of a checkpoint without SHA256SUMS: a ValueError or AttributeError
        # traceback from the comparison below)
        raise _damaged(where, CONFIG_FILE, ValueError(problem))
    resolved = saved.pop(RESOLVED, None)
    resolved = resolved if isinstance(resolved, dict) else {}
    if saved.get("warmup_steps") is None:
        # what the run ramped up over: recorded under "resolved" (the setting is saved as given),
        # saved resolved by the versions before, or, by older ones still, a tenth of that run
        warmup = resolved.get("warmup_steps")
        if warmup is None and ("num_steps" in saved or saved.get("phases")):
            total = sum(p.get("num_steps", 0) for p in saved["phases"]) if saved.get("phases") else saved["num_steps"]
            warmup = min(DEFAULT_MAX_WARMUP, max(1, int(total) // 10))
        if warmup is not None:
            saved["warmup_steps"] = warmup
    if config.warmup_steps is None and saved.get("warmup_steps") is not None:
        config = dataclasses.replace(config, warmup_steps=saved["warmup_steps"])
    if "schedule" in saved:
        # (written before decay_steps existed: its linear or cosine decay ended at the last step)
        saved.setdefault("decay_steps", None)
    if saved.get("precision") == "auto" and resolved.get("precision"):
        saved["precision"] = resolved["precision"]  # what auto meant where the run ran
    # (read by lines before --sample-clusters was a setting: resumed by clusters, its data position
    # counted proteins where the stream would count clusters)
    saved.setdefault("sample_clusters", False)
    now = config.to_dict()
    default_objective = getattr(family, "objective", None)
    auto_precision = resolve_precision("auto", device)
    for side in (saved, now):
        if side.get("objective") is None and default_objective is not None:
            side["objective"] = default_objective
        if side.get("precision") == "auto":
            side["precision"] = auto_precision
    for key in ("corpus", "val_corpus", "init_from"):  # paths: compared as files, not as text
        old, new = saved.get(key), now[key]
        if key == "init_from":
            same = old == new or (old is not None and new is not None and _same_file(old, new))
        else:
            # (or the file the run recorded as read, under "resolved": its relative `c.txt` found
            # another c.txt from the working directory, and --corpus naming the run's own file
            # was refused as "other settings")
            recorded = resolved.get(key) if isinstance(resolved.get(key), list) else []
            recorded = recorded if len(recorded) == len(new) else [None] * len(new)
            same = len(old or []) == len(new) and all(
                _same_file(a, b) or (isinstance(r, str) and os.path.realpath(r) == os.path.realpath(b))
                for a, b, r in zip(old or [], new, recorded))
        if same:
            saved[key] = new
    if now["init_from"] and saved.get("init_from"):
        saved["preset"] = now["preset"]  # meaningless there; earlier versions recorded the default
    differ = [k for k in RESUME_SETTINGS if k in saved and saved[k] != now[k]]
    if "phases" in saved and (saved["phases"] or now["phases"]):
        # Phases on one side at least: compared as the lengths and global batches they train at,
        # a run without phases being one phase of its max_length and global batch (a run started
        # without phases and resumed with the same one as --phase was refused). The single-phase
        # max_length is then a default nobody gave (it read "max_length: 64 there, 512 here" for
        # --phase 64:2 --phase 32:2); name the phases instead.
        differ = [k for k in differ if k not in ("max_length", "global_batch_size")]
        saved_phases, now_phases = _phase_shapes(saved), _phase_shapes(now)
        if (saved_phases or [_single_phase(saved)]) != (now_phases or [_single_phase(now)]):
            for side, phases in ((saved, saved_phases), (now, now_phases)):
                side[_PHASES_SHOWN] = (", ".join(f"{n}:{g}" for n, g in phases)
                                       or "{}:{} (no phases)".format(*_single_phase(side)))
            differ.append(_PHASES_SHOWN)
    if differ:
        shown = "; ".join(f"{k}: {saved[k]!r} there, {now[k]!r} here" if k in now else k for k in differ[:4])
        if refusal is not None:
            raise UsageError(refusal(shown))
        raise UsageError(f"cannot resume from {where} with other settings ({shown}): use the run's settings "
                         "(its train_config.json), or start a new run with --init-from that checkpoint")
    return config


def saved_objective_revision(where: Path) -> int:
    """The objective revision (objectives.OBJECTIVE_REVISION) a checkpoint was written under: 1
    for checkpoints from before it was recorded (or an unreadable train_config.json)."""
    from protrans_cli.training.config import RESOLVED

    try:
        resolved = json.loads((where / CONFIG_FILE).read_text(encoding="utf-8")).get(RESOLVED) or {}
        return int(resolved.get("objective_revision", 1))
    except (OSError, ValueError, AttributeError, TypeError):
        return 1


def given_settings(where: Path, given: dict) -> dict:
    """The automatic settings as given for a resumed run (saved so in its train_config.json):
    this invocation's where it set them, else the checkpoint's. A first run's explicit
    `--warmup-steps 3 --precision fp32` became null and auto in the file after a `--resume`
    that did not repeat them, and the file as a template then meant a tenth of the run and bf16."""
    automatic = {"precision": "auto", "warmup_steps": None}
    try:
        saved = json.loads((where / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return given
    if not isinstance(saved, dict):
        return given
    return {key: saved.get(key, value) if key in automatic and value == automatic[key] else value
            for key, value in given.items()}


def check_phase_position(where: Path, phases, step: int, data_phase: int) -> None:
    """A resumed run may change the steps of the phase its checkpoint is in (not below the steps
    it ran) and of later phases; the phases before it ran as they ran. Lengthened on a resume,
    a finished phase sent the run back to it after steps of the next one (and skipped a buffer
    of data); shortened, the steps it ran were left out of the count."""
    try:
        saved = json.loads((where / CONFIG_FILE).read_text(encoding="utf-8")).get("phases") or []
    except (OSError, ValueError, AttributeError):
        saved = []
    name = Path(where).name

    def shown(i: int) -> str:
        return f"phase {i + 1} (max length {phases[i].max_length})"

    for i in range(min(data_phase, len(phases), len(saved))):
        ran = saved[i].get("num_steps") if isinstance(saved[i], dict) else None
        if ran is not None and ran != phases[i].num_steps:
            raise UsageError(f"{shown(i)} ended before {name} after {ran} steps, and is given {phases[i].num_steps} "
                             f"here: a finished phase cannot change on --resume; give it {ran} steps (a later phase "
                             "may change), or start a new run with --init-from that checkpoint")
    start = sum(p.num_steps for p in phases[:data_phase])
    if data_phase < len(phases) and step > start + phases[data_phase].num_steps:
        # (the last phase too: the run "ended" at the checkpoint's step, its config saying fewer)
        if len(phases) == 1:
            raise UsageError(f"--num-steps {phases[0].num_steps} is below the {step} steps {name} has run: give "
                             f"at least {step}, or use that checkpoint as it is")
        raise UsageError(f"{shown(data_phase)} has run {step - start} steps by {name}, and is given "
                         f"{phases[data_phase].num_steps} here: give it at least {step - start}")


def saved_data_phase(where: Path, step: int) -> int | None:
    """The phase (0-based) whose steps hold `step`, by the checkpoint's train_config.json: the
    `data_phase` its training_state.pt records (a checkpoint is written in the phase of its step,
    the last step of a phase included), read without that file. None where it cannot be told."""
    try:
        saved = json.loads((Path(where) / CONFIG_FILE).read_text(encoding="utf-8")).get("phases") or []
        counts = [p.get("num_steps") if isinstance(p, dict) else None for p in saved]
    except (OSError, ValueError, AttributeError):
        return None
    if not saved:
        return 0
    end = 0
    for i, count in enumerate(counts):
        if not isinstance(count, int) or isinstance(count, bool):
            return None
        end += count
        if step <= end:
            return i
    return None


def record_best(run_dir, best: dict | None) -> None:
    """RUN/best_checkpoint.json (--keep-best), written atomically: the step and eval loss of the
    checkpoint with the lowest eval loss so far, and its folder relative to the run; removed for
    `best` None (a run resumed without --keep-best no longer keeps that checkpoint)."""
    from protrans_cli.io.files import atomic_output

    path = Path(run_dir) / BEST_FILE
    if best is None:
        path.unlink(missing_ok=True)
        return
    # (the validation corpus it was evaluated on stays in the training state: resume compares it)
    record = {"step": best["step"], "eval_loss": best["eval_loss"],
              "checkpoint": checkpoint_dir(".", best["step"]).as_posix()}
    with atomic_output(path) as out:
        out.write((json.dumps(record, indent=2) + "\n").encode())


def record_complete(run_dir, step: int | None, *, tokens: int | None = None) -> None:
    """RUN/complete.json, written atomically once the run's final model is (`step`: its last
    step), removed (`step` None) as an invocation starts training: a job script tells a finished
    run from one that --stop-after or --time-limit stopped (both exit 0, so that chained jobs
    go on) by this file alone (`[ -e RUN/complete.json ] || scontrol requeue $SLURM_JOB_ID`). The
    final model's files do not tell: a finished run lengthened by --resume keeps the old ones.
    `tokens`: the real tokens the run trained (metrics.jsonl's count, every step's), recorded
    with the step for `protrans info`."""
    from protrans_cli.io.files import atomic_output

    path = Path(run_dir) / COMPLETE_FILE
    if step is None:
        path.unlink(missing_ok=True)
        return
    with atomic_output(path) as out:
        out.write((json.dumps({"step": step, **({} if tokens is None else {"tokens": tokens})}, indent=2)
                   + "\n").encode())


def export_model(run_dir, *, family, model, tokenizer, card: str | None = None) -> None:
    """The final model as an HF directory at the root of the run (file by file, atomically);
    `card`: its README.md (training/card.py), moved in with the other files, unless the run
    directory holds a README.md that is not protrans's own (the user's: kept as it is)."""
    run_dir = Path(run_dir)
    tmp = _temporary(run_dir / "final")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with _quiet_transformers():
            family.save_pretrained(model, tokenizer, tmp)
        if card is not None and may_write_card(run_dir):
            write_card(tmp, card)
        default_permissions(tmp)  # safetensors writes 0600
        for item in sorted(tmp.iterdir()):
            target = run_dir / item.name
            if item.is_dir():  # ELECTRA's generator/: swapped as fit's head and a re-saved checkpoint are
                replace_directory(item, target)
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    except Exception as exc:  # a full disk, a quota: one line; the checkpoints stay as they were
        kept = list_checkpoints(run_dir)
        raise RuntimeFailure(f"cannot write the final model ({first_line(exc)}); "
                             + (f"the run's steps are kept in {kept[-1]}: {again_with_resume()} once there is "
                                "room" if kept else "no checkpoint was kept"),
                             path=str(run_dir)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Stop `protrans embed` under 1, 2 or 3 processes at random moments, resume with another count.

Each trial starts a run with a random process count (torchrun for more than one), sends it
SIGKILL, SIGTERM or SIGINT (to every process, or to the launcher alone: a SIGKILLed launcher's
ranks must stop by themselves, with their work kept, before the next attempt) after 0.5-10 s, and resumes with a random count until a run completes; the final file
must equal an uninterrupted one-process run's (ids, arrays, means, attributes, `failed`), with
no partial, ledger, untrusted or shard file left. The one-process counterpart is
scripts/sigkill_stress.py.

    python scripts/torchrun_kill_stress.py --trials 20 --seed 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _kill_stress import ROOT, env  # (scripts/, beside this file)

sys.path.insert(0, str(ROOT / "tests"))

OPTIONS = ["-m", "onehot", "--window", "100", "--max-batch-size", "4", "--max-length", "110",
           "--long-policy", "skip"]


def _command(fasta: Path, out: Path, processes: int, resume: bool) -> list[str]:
    embed = ["embed", str(fasta), *OPTIONS, "-o", str(out)] + (["--resume"] if resume else [])
    if processes == 1:
        return [sys.executable, "-m", "protrans_cli", *embed]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "-m", "protrans_cli", *embed]


def _stat(path: Path) -> list[str]:
    """The fields of a /proc/PID/stat after the command's name (state, parent, ...); [] when gone."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants: torchrun starts its workers in sessions of their own, so a
    signal to the launcher's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(stat)
        if len(fields) < 2 or not fields[1].isdigit():
            continue
        parent = int(fields[1])
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def _alive(pid: int) -> bool:
    """Running, not gone or a zombie (an orphan's exit is reaped by init, a moment later)."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    return bool(fields) and fields[0] != "Z"


def _attempt(rng, command, environment, may_stop: bool, *, cwd=ROOT, at=(0.5, 10),
             timeout: float = 180, chance: float = 0.85) -> tuple[int, str | None, str]:
    """Run `command` in `cwd`, perhaps stopped by a random signal after `at` (a range of seconds);
    (exit code, the signal sent, stderr). A run still going `timeout` s after is killed (hung)."""
    signum = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGINT, signal.SIGTERM]) \
        if may_stop and rng.random() < chance else None
    at = rng.uniform(*at)
    proc = subprocess.Popen(command, env=environment, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    sent = None
    if signum is not None:
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            every = rng.random() < 0.5
            tree = _tree(proc.pid)
            for pid in tree if every else [proc.pid]:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
            sent = signum.name + ("" if every else " to the launcher")
            if signum == signal.SIGKILL and not every and len(tree) > 1:
                # (its ranks, orphans now, are sent SIGTERM by the kernel and must stop by themselves)
                proc.wait()
                deadline = time.time() + 60
                while any(_alive(pid) for pid in tree[1:]):
                    if time.time() > deadline:
                        for pid in tree[1:]:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                        return proc.returncode, sent, "(orphans: the ranks ran on 60 s after their launcher was killed)"
                    time.sleep(0.1)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in _tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, err = proc.communicate()
        err += f"\n(hung: killed after {timeout} s)"
    return proc.returncode, sent, err


def main(argv=None) -> None:
    from test_embed import assert_same_content, file_content, generated_fasta

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--proteins", type=int, default=3000)
    args = p.parse_args(argv)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # (a background job's is ignored: its ranks' too)
    rng = random.Random(args.seed)
    environment = env()
    passed = stops = other_counts = 0
    with tempfile.TemporaryDirectory(prefix="torchrun_kill_stress.") as tmp:
        tmp = Path(tmp)
        fasta = generated_fasta(tmp / "g.fa", args.proteins, repeat_every=7, long_every=3)
        reference = tmp / "reference.h5"
        subprocess.run(_command(fasta, reference, 1, False), env=environment, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        full = dict(file_content(reference))
        for trial in range(args.trials):
            folder = tmp / f"trial{trial}"
            folder.mkdir()
            out, history, previous, code, orphaned = folder / "k.h5", [], None, None, False
            for attempt in range(8):
                processes = rng.choice([1, 2, 3])
                other_counts += previous is not None and processes != previous
                code, sent, err = _attempt(rng, _command(fasta, out, processes, attempt > 0), environment,
                                         attempt < 5)
                stops += sent is not None
                history.append(f"{processes} process(es)" + (f", {sent}" if sent else "") + f": exit {code}")
                orphaned = orphaned or "(orphans:" in err
                previous = processes
                if code == 0:
                    break
                if sent is None:
                    print(f"trial {trial}: exit {code} without a signal: {err.strip()[-500:]}", flush=True)
            problem = None if code == 0 else "never completed"
            if orphaned:
                problem = "a SIGKILLed launcher's ranks ran on (orphans)"
            if problem is None:
                try:
                    assert_same_content(file_content(out), dict(full))  # (it pops 'failed' from both)
                except AssertionError as exc:
                    problem = f"content differs: {str(exc)[:300] or 'ids or failed'}"
                # (a resume's reading folder whose process was killed waits an hour, untouched, for
                # the next run to remove it: another container may share the host name)
                left = sorted(p.name for p in folder.iterdir()
                              if p != out and not p.name.startswith(".protrans-resume-"))
                if left:
                    problem = f"left {left}"
            passed += problem is None
            print(f"trial {trial}: {'ok' if problem is None else problem}; " + "; ".join(history), flush=True)
    print(f"{args.trials} trials, {stops} runs stopped by a signal, {other_counts} resumes with another "
          f"process count; {passed} ended equal to the uninterrupted run, {args.trials - passed} did not")


if __name__ == "__main__":
    main()

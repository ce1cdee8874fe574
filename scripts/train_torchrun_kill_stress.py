"""Stop `protrans train` under 1, 2 or 3 processes at random moments, resume with a random count.

Each trial starts a run (tiny preset, global batch 12 of micro-batches of 2, so that 1, 2 and 3
processes divide it) with a random process count (torchrun for more than one), sends it SIGKILL,
SIGTERM or SIGINT (to every process, or to the launcher alone: a SIGKILLed launcher's ranks must
stop by themselves) at a random moment, and resumes with a random count until a run completes. Where the count never
changed, the result must equal an uninterrupted run with that count (as scripts/train_kill_stress.py
checks: weights, kept checkpoints, metrics.jsonl without tokens_per_s); where it changed, the run
must reach its last step with every logging step once, in order, finite losses, no temporaries,
half checkpoints, locks or resume folders, and a final model that `AutoModel.from_pretrained`
loads. Every command has a timeout: a rank that waits forever for a dead peer is a finding.

    python scripts/train_torchrun_kill_stress.py --family bert --family t5 --trials 6 --seed 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _kill_stress import ROOT, env  # (scripts/, beside this file)
from torchrun_kill_stress import _attempt
from train_kill_stress import compare, leftovers, train_args

STEPS, SAVE_EVERY, KEEP_LAST, LOG_EVERY = 30, 4, 2, 3


def command(corpus: Path, family: str, processes: int, resume: bool) -> list[str]:
    args = train_args(corpus, family, STEPS, SAVE_EVERY, KEEP_LAST, LOG_EVERY,
                      ["--global-batch-size", "12", "--micro-batch-size", "2"])
    args = args[3:] + (["--resume"] if resume else [])  # (after `python -m protrans_cli`)
    if processes == 1:
        return [sys.executable, "-m", "protrans_cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
            "-m", "protrans_cli", *args]


def run_checks(run: Path) -> list[str]:
    """What must hold of any completed run, whatever its process counts."""
    problems = [f"left behind: {x}" for x in leftovers(run)]
    problems += [f"left beside the run: {p.name}" for p in run.parent.iterdir()
                 if p.name not in ("run", "stderr.txt")]
    problems += [f"left in the run: {p.name}" for p in run.iterdir() if "lock" in p.name or "resume" in p.name]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    want = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)) + ([STEPS] if STEPS % LOG_EVERY else [])
    if steps != want:
        problems.append(f"metrics steps {steps} != {want}")
    if not all(r.get("loss") is not None and math.isfinite(r["loss"]) for r in rows if "loss" in r):
        problems.append("a loss is not finite")
    try:
        from transformers import AutoModel
        from transformers.utils import logging

        logging.set_verbosity_error()  # (the heads' weights, which AutoModel leaves out, listed)
        logging.disable_progress_bar()
        AutoModel.from_pretrained(run, use_kernels=False)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"AutoModel.from_pretrained: {exc!r}"[:200])
    return problems


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", action="append")
    p.add_argument("--trials", type=int, default=6, help="per family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="keep the trial directories here")
    opts = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(opts.seed)
    environment = env()
    tmp = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="train_torchrun_kill_stress."))
    tmp.mkdir(parents=True, exist_ok=True)
    corpus = tmp / "corpus.txt"
    subprocess.run([sys.executable, "-m", "protrans_cli", "prep", str(ROOT / "protrans_cli/example_data/proteins.fasta"),
                    "-o", str(corpus)], env=environment, check=True, capture_output=True)
    refs: dict = {}

    def reference(family: str, processes: int) -> Path:  # (made when a trial needs it)
        if (family, processes) not in refs:
            cwd = tmp / f"ref_{family}_{processes}"
            cwd.mkdir(exist_ok=True)
            t0 = time.monotonic()
            subprocess.run(command(corpus, family, processes, False), cwd=cwd, env=environment, check=True,
                           capture_output=True, timeout=900)
            refs[family, processes] = cwd / "run"
            print(f"reference {family} x{processes}: {time.monotonic() - t0:.1f} s", flush=True)
        return refs[family, processes]

    results = []
    for family in opts.family or ["bert", "t5"]:
        for trial in range(opts.trials):
            cwd = tmp / f"trial{trial:02d}_{family}"
            cwd.mkdir()
            history, counts, stopped_cleanly, code, problems = [], [], False, None, []
            for attempt in range(8):
                processes = rng.choice([1, 2, 3])
                counts.append(processes)
                t0 = time.monotonic()
                # (stopped within the run's time: 15 s in one process, 25 in two, 35 in three on 2 cores)
                code, sent, err = _attempt(rng, command(corpus, family, processes, attempt > 0), environment,
                                           attempt < 4, cwd=cwd, at=(1.0, 5.0 + 9 * processes), timeout=600,
                                           chance=1.0 if attempt == 0 else 0.85)
                (cwd / "stderr.txt").open("a").write(f"--- {processes} {sent}\n{err}")
                history.append(f"{processes}p" + (f" {sent}" if sent else "") + f" rc={code}"
                               f" {time.monotonic() - t0:.0f}s")
                if "(orphans:" in err:
                    problems.append(f"attempt {attempt} ({processes}p, {sent}): the ranks ran on as orphans")
                if "hung" in err:
                    problems.append(f"attempt {attempt} ({processes}p, {sent}) hung: {err.strip()[-300:]}")
                stopped_cleanly |= bool(sent and "KILL" not in sent and code != 0 and
                                        "checkpoint" in err and "continue with" in err)
                if code == 0:
                    break
                if sent is None:
                    problems.append(f"attempt {attempt}: exit {code} without a signal: {err.strip()[-400:]}")
            run = cwd / "run"
            if code != 0:
                problems.append("never completed")
            else:
                problems += run_checks(run)
                if len(set(counts)) == 1:
                    problems += [x for x in compare(reference(family, counts[0]), run, stopped=stopped_cleanly)
                                 if not x.startswith("left behind")]
            results.append(problems)
            print(f"trial {trial} {family}: {'; '.join(history)} -> "
                  f"{'OK' if not problems else 'FAIL ' + ' | '.join(problems)}", flush=True)
    failed = sum(1 for x in results if x)
    print(f"{len(results)} trials (seed {opts.seed}), {len(results) - failed} passed, {failed} failed; "
          f"directories in {tmp}", flush=True)


if __name__ == "__main__":
    main()

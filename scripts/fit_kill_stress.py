"""Kill `protrans fit` at random moments (SIGKILL, SIGTERM, SIGINT), continue it with --resume,
and compare the head with an uninterrupted fit's: weights, metrics.jsonl (timings aside),
metrics.json, metrics/*.json, config.json; and nothing left over (HEAD.partial/, temporaries).
Kills are aimed too: at the state's temporary (state.pt.tmp), at the head's temporary folder,
and early in a --resume.

    python scripts/fit_kill_stress.py --trials 20 --seed 1

One-hot embeddings of the example data (ss3, ss8: a CNN, loc: an FNN), two ensemble members.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _kill_stress import ROOT, env, run_trials, wait_for  # (scripts/, beside this file)

DATA = ROOT / "protrans_cli" / "example_data"
MODES = ("random", "state_tmp", "head_tmp", "resume_early", "term", "int")
TIMING = ("train_seconds", "train_cpu_seconds", "seconds")


def protrans(*args, cwd=None) -> None:
    subprocess.run([sys.executable, "-m", "protrans_cli", *map(str, args)], env=env(), cwd=cwd, check=True,
                   capture_output=True)


def fit_args(task: str, tmp: Path) -> list[str]:
    common = ["-o", "head", "-j", "1", "--bootstrap", "100", "--ensemble", "2"]
    if task in ("ss3", "ss8"):
        return [sys.executable, "-m", "protrans_cli", "fit", task, "--embeddings", str(tmp / "ss_train.h5"),
                "--labels", str(DATA / "ss_train.csv"), "--test", str(tmp / "ss_test.h5"), str(DATA / "ss_test.csv"),
                "--max-epochs", "12", *common]
    return [sys.executable, "-m", "protrans_cli", "fit", "loc", "--embeddings", str(tmp / "loc_train.h5"),
            "--labels", str(DATA / "loc_train.fasta"), "--test", str(tmp / "loc_test.h5"), str(DATA / "loc_test.fasta"),
            "--max-epochs", "60", *common]


def content(head: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for p in sorted(head.rglob("*")):
        rel = str(p.relative_to(head))
        if p.suffix == ".safetensors":
            out[rel] = {k: v.tolist() for k, v in load_file(str(p)).items()}
        elif p.name == "metrics.jsonl":
            rows = [json.loads(line) for line in p.read_text().splitlines()]
            out[rel] = [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
        elif p.suffix == ".json":
            out[rel] = json.loads(p.read_text())
        elif p.is_file():
            out[rel] = "present"
    cfg = out.get("config.json", {})
    cfg.get("fingerprint", {}).pop("resume", None)
    return out


def leftovers(cwd: Path) -> list[str]:
    return sorted(p.name for p in cwd.iterdir() if p.name not in ("head", "stderr.txt"))


def one_kill(args_, cwd: Path, mode: str, rng: random.Random, duration: float, resume: bool) -> tuple[int, str]:
    err = open(cwd / "stderr.txt", "ab")
    proc = subprocess.Popen(args_ + (["--resume"] if resume else []), cwd=cwd, env=env(), stdout=subprocess.DEVNULL,
                            stderr=err, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    sig = signal.SIGKILL
    partial = cwd / "head.partial"
    if mode == "random":
        time.sleep(rng.uniform(0.5, duration))
    elif mode == "state_tmp":
        skip = rng.randint(0, 15)

        def seen():
            nonlocal skip
            if (partial / "state.pt.tmp").exists():
                skip -= 1
                return skip < 0
            return False
        wait_for(proc, seen, duration * 2)
    elif mode == "head_tmp":
        wait_for(proc, lambda: any(n.startswith(".head.") for n in os.listdir(cwd)), duration * 2)
        time.sleep(rng.choice([0, 0.001, 0.01, 0.05, 0.2, 0.5]))
    elif mode == "resume_early":
        time.sleep(rng.uniform(0.3, 4.0))
    else:
        sig = signal.SIGTERM if mode == "term" else signal.SIGINT
        time.sleep(rng.uniform(1.0, duration))
    alive = proc.poll() is None
    proc.send_signal(sig)
    rc = proc.wait()
    err.close()
    return rc, f"{mode}{'' if alive else '(already exited)'}:rc={rc}"


def trial(i, task, refs, tmp, seed, out, log):
    rng = random.Random(seed * 1000 + i)
    cwd = tmp / f"trial{i:03d}_{task}"
    cwd.mkdir()
    args_ = fit_args(task, tmp)
    history, problems = [], []
    for k in range(rng.randint(1, 3)):
        mode = rng.choice(MODES if k else [m for m in MODES if m != "resume_early"])
        rc, what = one_kill(args_, cwd, mode, rng, refs[task][1], k > 0)
        history.append(what)
        if mode == "term" and rc not in (143, 0) or mode == "int" and rc not in (130, 0):
            problems.append(f"{what}: unexpected exit status")
    proc = subprocess.run(args_ + ["--resume"], cwd=cwd, env=env(), capture_output=True, text=True)
    history.append(f"final:rc={proc.returncode}")
    if proc.returncode != 0:
        problems.append(f"final exit {proc.returncode}: {proc.stderr.strip().splitlines()[-2:]}")
    else:
        a, b = refs[task][0], content(cwd / "head")
        if a.keys() != b.keys():
            problems.append(f"files differ: {sorted(a.keys() ^ b.keys())}")
        problems += [f"{k} differs" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
        problems += [f"left behind: {x}" for x in leftovers(cwd)]
    out.append((i, task, history, problems))
    log(f"trial {i} {task}: {' '.join(history)} -> {'OK' if not problems else 'FAIL ' + '; '.join(problems)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", action="append", choices=["ss3", "ss8", "loc"])
    p.add_argument("--trials", type=int, default=10, help="per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--keep", help="keep the trial directories here")
    opts = p.parse_args(argv)
    tasks = opts.task or ["ss3", "loc"]
    lock = threading.Lock()

    def log(msg):
        with lock:
            print(msg, flush=True)

    tmp = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="fit_kill_stress."))
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("ss_train", "ss_test"):
        protrans("labels", DATA / f"{name}.csv", "-o", tmp / f"{name}.fa")
        protrans("embed", tmp / f"{name}.fa", "-m", "onehot", "--per-residue", "-o", tmp / f"{name}.h5")
    for name in ("loc_train", "loc_test"):
        protrans("embed", DATA / f"{name}.fasta", "-m", "onehot", "-o", tmp / f"{name}.h5")
    refs = {}
    for task in tasks:
        cwd = tmp / f"ref_{task}"
        cwd.mkdir(exist_ok=True)
        t0 = time.monotonic()
        subprocess.run(fit_args(task, tmp), cwd=cwd, env=env(), check=True, capture_output=True)
        refs[task] = (content(cwd / "head"), time.monotonic() - t0)
        log(f"reference {task}: {refs[task][1]:.1f} s")
    out: list = []
    run_trials(trial, [(i, task, refs, tmp, opts.seed, out, log) for task in tasks for i in range(opts.trials)],
               opts.jobs, log)
    failed = [x for x in out if x[3]]
    log(f"{len(out)} trials ({', '.join(tasks)}), {len(out) - len(failed)} matched the uninterrupted fit, "
        f"{len(failed)} failed; directories in {tmp}")


if __name__ == "__main__":
    main()

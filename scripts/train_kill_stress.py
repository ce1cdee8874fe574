"""Kill `protrans train` at random moments (SIGKILL, SIGTERM, SIGINT), resume it, and compare
the result with an uninterrupted run: final weights, every kept checkpoint, metrics.jsonl (the
same lines, tokens_per_s aside), train_config.json and nothing left over (no temporaries, no
half checkpoints). Kills are aimed too: at a checkpoint's temporary folder, at a new checkpoint
(the pruning of old ones follows it), at the final model's export, and early in a --resume
(loading the checkpoint, repositioning the data).

    python scripts/train_kill_stress.py --family bert --family electra --trials 20 --seed 1

A tiny preset on a CPU: a trial takes 20-60 s, two run side by side (--jobs).
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

ROOT = Path(__file__).resolve().parent.parent
MODES = ("random", "ckpt_tmp", "ckpt_new", "final_tmp", "resume_early", "term", "int")


def train_args(corpus: Path, family: str, steps: int, save_every: int, keep_last: int, log_every: int) -> list[str]:
    return [sys.executable, "-m", "protrans_cli", "train", "--family", family, "--preset", "tiny",
            "--corpus", str(corpus), "-o", "run", "--num-steps", str(steps), "--save-every", str(save_every),
            "--keep-last", str(keep_last), "--log-every", str(log_every), "--global-batch-size", "8",
            "--micro-batch-size", "4", "--max-length", "64", "-j", "1"]


def env() -> dict:
    return {**os.environ, "PROTRANS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def weights(run: Path) -> dict:
    """Every safetensors file under `run` (checkpoints included), by relative path."""
    from safetensors.torch import load_file

    return {str(p.relative_to(run)): load_file(str(p)) for p in sorted(run.rglob("*.safetensors"))}


def metrics(run: Path) -> list[dict]:
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n"), "metrics.jsonl does not end with a newline"
    rows = [json.loads(line) for line in text.splitlines()]
    for row in rows:
        row.pop("tokens_per_s", None)
    return rows


def leftovers(run: Path) -> list[str]:
    """Temporaries, set-aside folders and half checkpoints."""
    bad = [str(p.relative_to(run)) for p in run.rglob(".*") if ".tmp" in p.name or ".old." in p.name]
    ck = run / "checkpoints"
    if ck.is_dir():
        bad += [f"checkpoints/{p.name} (no training_state.pt)" for p in ck.iterdir()
                if p.name.startswith("step_") and not (p / "training_state.pt").is_file()]
    return bad


def compare(ref: Path, run: Path, stopped: bool = False) -> list[str]:
    import torch

    problems = []
    a, b = weights(ref), weights(run)
    if a.keys() != b.keys():
        problems.append(f"weight files differ: {sorted(a.keys() ^ b.keys())}")
    for name in a.keys() & b.keys():
        for key in a[name]:
            if key not in b[name] or not torch.equal(a[name][key], b[name][key]):
                problems.append(f"{name}:{key} differs")
                break
    ma, mb = metrics(ref), metrics(run)
    if [r["step"] for r in ma] != [r["step"] for r in mb]:
        problems.append(f"metrics steps {[r['step'] for r in mb]} != {[r['step'] for r in ma]}")
    elif ma != mb:
        diff = [(x["step"], k) for x, y in zip(ma, mb) for k in x if x.get(k) != y.get(k)]
        problems.append(f"metrics values differ at {diff[:5]}")
    ca = json.loads((ref / "train_config.json").read_text())
    cb = json.loads((run / "train_config.json").read_text())
    for c in (ca, cb):
        c.pop("resolved", None)
    if ca != cb:
        problems.append(f"train_config.json differs: {sorted(k for k in ca.keys() | cb.keys() if ca.get(k) != cb.get(k))}")
    names_a = sorted(p.name for p in (ref / "checkpoints").iterdir())
    names_b = sorted(p.name for p in (run / "checkpoints").iterdir())
    if stopped:  # a stop saves at its step whatever --save-every says: the last ones kept may differ
        names_a, names_b = (len(names_a), names_a[-1]), (len(names_b), names_b[-1])
    if names_a != names_b:
        problems.append(f"checkpoints {names_b} != {names_a}")
    if not (run / "loss_curve.png").is_file():
        problems.append("no loss_curve.png")
    problems += [f"left behind: {x}" for x in leftovers(run)]
    return problems


def wait_for(proc, predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.0005)
    return False


def one_kill(args_, cwd: Path, mode: str, rng: random.Random, duration: float, resume: bool, log) -> tuple[int, str]:
    run = cwd / "run"
    ck = run / "checkpoints"
    before = set(os.listdir(ck)) if ck.is_dir() else set()
    err = open(cwd / "stderr.txt", "ab")
    # (SIGINT back to its default: a script started with `&` or nohup passes it on ignored, and train
    # keeps it so)
    proc = subprocess.Popen(args_ + (["--resume"] if resume else []), cwd=cwd, env=env(),
                            stdout=subprocess.DEVNULL, stderr=err,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    sig = signal.SIGKILL
    if mode == "random":
        time.sleep(rng.uniform(0.5, duration))
    elif mode == "ckpt_tmp":  # a checkpoint being written
        skip = rng.randint(0, 3)

        def seen():
            nonlocal skip
            if ck.is_dir() and any(n.startswith(".step_") and n not in before for n in os.listdir(ck)):
                if skip == 0:
                    return True
                skip -= 1
                before.update(os.listdir(ck))
            return False
        wait_for(proc, seen, duration * 2)
        time.sleep(rng.choice([0, 0, 0.001, 0.003, 0.01]))
    elif mode == "ckpt_new":  # a checkpoint just renamed into place: the old ones are being pruned
        skip = rng.randint(0, 3)

        def seen():
            nonlocal skip
            new = ck.is_dir() and [n for n in os.listdir(ck) if n.startswith("step_") and n not in before]
            if new:
                if skip == 0:
                    return True
                skip -= 1
                before.update(new)
            return False
        wait_for(proc, seen, duration * 2)
        time.sleep(rng.choice([0, 0, 0.0005, 0.002]))
    elif mode == "final_tmp":  # the final model being written, or the plot after it
        wait_for(proc, lambda: any(n.startswith(".final.tmp") for n in os.listdir(run)) if run.is_dir() else False,
                 duration * 3)
        time.sleep(rng.choice([0, 0, 0.001, 0.005, 0.02, 0.1]))
    elif mode == "resume_early":  # loading the checkpoint, fast-forwarding the data
        time.sleep(rng.uniform(0.3, 4.0))
    else:
        sig = signal.SIGTERM if mode == "term" else signal.SIGINT
        time.sleep(rng.uniform(1.0, duration))
    alive = proc.poll() is None
    proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        log(f"  {mode}: did not stop within 120 s of {sig.name}")
    err.close()
    return rc, f"{mode}{'' if alive else '(already exited)'}:rc={rc}"


def trial(i: int, family: str, refs: dict, corpus: Path, tmp: Path, opts, seed: int, out: list, log) -> None:
    rng = random.Random(seed * 1000 + i)
    cwd = tmp / f"trial{i:03d}_{family}"
    cwd.mkdir()
    args_ = train_args(corpus, family, opts.steps, opts.save_every, opts.keep_last, opts.log_every)
    duration = refs[family][1]
    history = []
    problems = []
    started = False
    for k in range(rng.randint(1, 3)):
        mode = rng.choice(MODES if started else ("random", "ckpt_tmp", "ckpt_new", "term", "int"))
        rc, what = one_kill(args_, cwd, mode, rng, duration, started, log)
        history.append(what)
        if mode in ("term", "int") and rc not in (0, 130, 143, 1) and rc >= 0:
            problems.append(f"{what}: unexpected exit status")
        if mode == "term" and rc == 130 or mode == "int" and rc == 143:
            problems.append(f"{what}: the other signal's exit status")
        started = started or (cwd / "run" / "train_config.json").exists()
    proc = subprocess.run(args_ + (["--resume"] if started else []), cwd=cwd, env=env(), capture_output=True,
                          text=True)
    history.append(f"final:rc={proc.returncode}")
    if proc.returncode != 0:
        problems.append(f"final run exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}")
    else:
        problems += compare(refs[family][0], cwd / "run",
                            stopped=any(h.startswith(("term", "int")) and "rc=1" in h for h in history))
    out.append((i, family, history, problems))
    log(f"trial {i} {family}: {' '.join(history)} -> {'OK' if not problems else 'FAIL ' + '; '.join(problems)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", action="append")
    p.add_argument("--trials", type=int, default=10, help="per family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--log-every", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--keep", help="keep the trial directories here")
    opts = p.parse_args(argv)
    families = opts.family or ["bert"]
    lock = threading.Lock()

    def log(msg):
        with lock:
            print(msg, flush=True)

    tmp = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="train_kill_stress."))
    tmp.mkdir(parents=True, exist_ok=True)
    corpus = tmp / "corpus.txt"
    subprocess.run([sys.executable, "-m", "protrans_cli", "prep", str(ROOT / "protrans_cli/example_data/proteins.fasta"),
                    "-o", str(corpus)], env=env(), check=True, capture_output=True)
    refs = {}
    for family in families:
        cwd = tmp / f"ref_{family}"
        cwd.mkdir(exist_ok=True)
        t0 = time.monotonic()
        subprocess.run(train_args(corpus, family, opts.steps, opts.save_every, opts.keep_last, opts.log_every),
                       cwd=cwd, env=env(), check=True, capture_output=True)
        refs[family] = (cwd / "run", time.monotonic() - t0)
        assert not leftovers(cwd / "run")
        log(f"reference {family}: {refs[family][1]:.1f} s")
    out: list = []
    jobs = [(i, f) for f in families for i in range(opts.trials)]
    threads: list[threading.Thread] = []
    for i, family in jobs:
        while len([t for t in threads if t.is_alive()]) >= opts.jobs:
            time.sleep(0.2)
        t = threading.Thread(target=trial, args=(i, family, refs, corpus, tmp, opts, opts.seed, out, log))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    failed = [x for x in out if x[3]]
    log(f"{len(out)} trials ({', '.join(families)}), {len(out) - len(failed)} matched the uninterrupted run, "
        f"{len(failed)} failed; directories in {tmp}")


if __name__ == "__main__":
    main()

"""Kill `protrans train` at random moments (SIGKILL, SIGTERM, SIGINT), resume it, and compare
the result with an uninterrupted run: final weights, every kept checkpoint, metrics.jsonl (the
same lines, tokens_per_s aside), train_config.json and nothing left over (no temporaries, no
half checkpoints). Kills are aimed too: at a checkpoint's temporary folder, at a new checkpoint
(the pruning of old ones follows it), at the final model's export, and early in a --resume
(loading the checkpoint, repositioning the data).

    python scripts/train_kill_stress.py --family bert --family electra --trials 20 --seed 1

A tiny preset on a CPU: a trial takes 20-60 s, two run side by side (--jobs).

Other settings: `--extra=--sop` (repeatable; with the `=`) passes flags on to train (with a `--phase`, the
script's --num-steps and --max-length are left out); `--val-corpus` adds a validation corpus with
`--eval-every`, so that the eval losses in metrics.jsonl are compared too; `--corpus-mb 6 --gzip`
trains on a few MB of long random proteins that prep writes as `corpus.txt.gz` (a gzip member per
block: resumes start inside a later member); `--aim-step N` adds a mode that kills (SIGKILL or
SIGTERM) around step N's checkpoint, e.g. a phase boundary.

    python scripts/train_kill_stress.py --family bert "--extra=--phase 32:12 --phase 64:12" --aim-step 12
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _kill_stress import ROOT, env, run_trials, wait_for  # (scripts/, beside this file)

MODES = ("random", "ckpt_tmp", "ckpt_new", "final_tmp", "resume_early", "term", "int")
AIM_STEP = None  # --aim-step: the "aim" mode kills around this step's checkpoint


def train_args(corpus: Path, family: str, steps: int, save_every: int, keep_last: int, log_every: int,
               extra: list[str] = ()) -> list[str]:
    phased = "--phase" in extra
    return [sys.executable, "-m", "protrans_cli", "train", "--family", family, "--preset", "tiny",
            "--corpus", str(corpus), "-o", "run", *([] if phased else ["--num-steps", str(steps)]),
            "--save-every", str(save_every), "--keep-last", str(keep_last), "--log-every", str(log_every),
            "--global-batch-size", "8", "--micro-batch-size", "4", *([] if phased else ["--max-length", "64"]),
            "-j", "1", *extra]


def random_fasta(path: Path, megabytes: float, seed: int) -> None:
    """Random proteins of 2,000-20,000 residues (cropped in training: a few hundred of them span
    several of prep's 1 MiB blocks, gzip members), `megabytes` of FASTA."""
    rng = random.Random(seed)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    with open(path, "w") as f:
        n, size = 0, 0
        while size < megabytes * 1e6:
            seq = "".join(rng.choices(letters, k=rng.randint(2000, 20000)))
            text = f">p{n}\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n"
            f.write(text)
            n, size = n + 1, size + len(text)


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


def differences(a, b, where: str = "") -> list[str]:
    """Where two loaded training states differ (tensors exactly)."""
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        # (the log's seconds are timing; Python's and numpy's global generators are never seeded,
        # so that a fresh process's differ, and training draws nothing from them)
        return [d for k in a if not (k == "seconds" and where.endswith("log"))
                and not (k in ("python", "numpy") and where.startswith(".rng["))
                for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    return [] if a == b else [f"{where}: {str(b)[:80]} != {str(a)[:80]}"]


def same_files(ref: Path, run: Path, stopped: bool) -> list[str]:
    """The run's files (the kept checkpoints' too), their JSON and their training states."""
    import torch

    def files(d: Path) -> set[str]:
        return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}

    problems = []
    fa, fb = files(ref), files(run)
    last = sorted(p.name for p in (ref / "checkpoints").iterdir())[-1]
    if stopped:  # (the checkpoints before the last one kept may differ)
        fa = {f for f in fa if not f.startswith("checkpoints/") or f.startswith(f"checkpoints/{last}/")}
        fb = {f for f in fb if not f.startswith("checkpoints/") or f.startswith(f"checkpoints/{last}/")}
    if fa != fb:
        problems.append(f"files differ: {sorted(fa ^ fb)[:8]}")
    for name in sorted(fa & fb):
        if name.endswith(".json") and not name.endswith("train_config.json"):
            if json.loads((ref / name).read_text()) != json.loads((run / name).read_text()):
                problems.append(f"{name} differs")
        elif name.endswith("training_state.pt"):
            d = differences(torch.load(ref / name, weights_only=False), torch.load(run / name, weights_only=False))
            if d:
                problems.append(f"{name} differs at {d[:4]}")
    return problems


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
    if stopped:  # (as below: only the last checkpoint kept is the same one)
        last = sorted(p.name for p in (ref / "checkpoints").iterdir())[-1]
        a, b = ({k: v for k, v in w.items() if not k.startswith("checkpoints/") or k.startswith(f"checkpoints/{last}/")}
                for w in (a, b))
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
    problems += same_files(ref, run, stopped)
    problems += [f"left behind: {x}" for x in leftovers(run)]
    return problems


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
    elif mode == "aim":  # around a chosen step's checkpoint (a phase boundary, say)
        name = f"step_{AIM_STEP:08d}"  # (as checkpoints are named)
        # (new ones only: a resume from that checkpoint finds it there)
        wait_for(proc, lambda: ck.is_dir() and any(n in (name, "." + name) or n.startswith(("." + name + ".",
                                                                                          name + "."))
                                                     for n in os.listdir(ck) if n not in before), duration * 3)
        sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM])
        time.sleep(rng.choice([0, 0, 0.001, 0.01, 0.05, 0.2, 0.5]))
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
    if mode == "aim":
        mode = f"aim-{sig.name}"
    return rc, f"{mode}{'' if alive else '(already exited)'}:rc={rc}"


def trial(i: int, family: str, refs: dict, corpus: Path, tmp: Path, opts, seed: int, out: list, log) -> None:
    rng = random.Random(seed * 1000 + i)
    cwd = tmp / f"trial{i:03d}_{family}"
    cwd.mkdir()
    args_ = train_args(corpus, family, opts.steps, opts.save_every, opts.keep_last, opts.log_every, opts.extra_args)
    duration = refs[family][1]
    modes = MODES
    history = []
    problems = []
    started = False
    for k in range(rng.randint(1, 3)):
        mode = rng.choice(modes if started else ("random", "ckpt_tmp", "ckpt_new", "term", "int"))
        if AIM_STEP is not None and rng.random() < 0.5:  # (half the kills, with --aim-step)
            mode = "aim"
        rc, what = one_kill(args_, cwd, mode, rng, duration, started, log)
        history.append(what)
        if what.startswith("aim-SIGTERM"):
            mode = "term"
        if mode in ("term", "int") and rc not in (0, 130, 143, 1) and rc >= 0:
            problems.append(f"{what}: unexpected exit status")
        if mode == "term" and rc == 130 or mode == "int" and rc == 143:
            problems.append(f"{what}: the other signal's exit status")
        started = started or (cwd / "run" / "train_config.json").exists()
    proc = subprocess.run(args_ + (["--resume"] if started else []), cwd=cwd, env=env(), capture_output=True,
                          text=True)
    with open(cwd / "stderr.txt", "a") as fh:  # (where it resumed from: "train: resuming from ...")
        fh.write(proc.stderr)
    history.append(f"final:rc={proc.returncode}")
    if proc.returncode != 0:
        problems.append(f"final run exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}")
    else:
        problems += compare(refs[family][0], cwd / "run",
                            stopped=any(h.startswith(("term", "int", "aim-SIGTERM")) and "rc=1" in h for h in history))
        # beside the run too (a lock file, a temporary of the run folder)
        problems += [f"left behind: {p.name}" for p in cwd.iterdir() if p.name not in ("run", "stderr.txt")]
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
    p.add_argument("--extra", action="append", default=[], help="flags passed on to train (shell words)")
    p.add_argument("--val-corpus", action="store_true", help="with a validation corpus, evaluated every 4 steps")
    p.add_argument("--corpus-mb", type=float, help="train on this many MB of random proteins")
    p.add_argument("--gzip", action="store_true", help="prep writes the corpus as corpus.txt.gz")
    p.add_argument("--aim-step", type=int, help="a mode that kills around this step's checkpoint")
    opts = p.parse_args(argv)
    global AIM_STEP
    AIM_STEP = opts.aim_step
    opts.extra_args = [w for x in opts.extra for w in shlex.split(x)]
    families = opts.family or ["bert"]
    lock = threading.Lock()

    def log(msg):
        with lock:
            print(msg, flush=True)

    tmp = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="train_kill_stress."))
    tmp.mkdir(parents=True, exist_ok=True)
    corpus = tmp / ("corpus.txt.gz" if opts.gzip else "corpus.txt")
    fasta = ROOT / "protrans_cli/example_data/proteins.fasta"
    if opts.corpus_mb:
        fasta = tmp / "random.fasta"
        random_fasta(fasta, opts.corpus_mb, opts.seed)
    subprocess.run([sys.executable, "-m", "protrans_cli", "prep", str(fasta), "-o", str(corpus)], env=env(),
                   check=True, capture_output=True)
    if opts.val_corpus:
        val = tmp / "val.txt"
        subprocess.run([sys.executable, "-m", "protrans_cli", "prep",
                        str(ROOT / "protrans_cli/example_data/loc_test.fasta"), "-o", str(val)], env=env(),
                       check=True, capture_output=True)
        opts.extra_args += ["--val-corpus", str(val), "--eval-every", "4"]
    refs = {}
    for family in families:
        cwd = tmp / f"ref_{family}"
        cwd.mkdir(exist_ok=True)
        t0 = time.monotonic()
        subprocess.run(train_args(corpus, family, opts.steps, opts.save_every, opts.keep_last, opts.log_every,
                                  opts.extra_args), cwd=cwd, env=env(), check=True, capture_output=True)
        refs[family] = (cwd / "run", time.monotonic() - t0)
        assert not leftovers(cwd / "run")
        log(f"reference {family}: {refs[family][1]:.1f} s")
    out: list = []
    run_trials(trial, [(i, family, refs, corpus, tmp, opts, opts.seed, out, log)
                       for family in families for i in range(opts.trials)], opts.jobs, log)
    failed = [x for x in out if x[3]]
    log(f"{len(out)} trials ({', '.join(families)}), {len(out) - len(failed)} matched the uninterrupted run, "
        f"{len(failed)} failed; directories in {tmp}")


if __name__ == "__main__":
    main()

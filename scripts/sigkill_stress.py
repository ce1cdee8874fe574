"""SIGKILL `protrans embed` at random moments, resume each time, compare with an uninterrupted run.

The slow test `test_sigkill_at_random_moments_loses_nothing_resume_completes` does this 4 times
on every run of the suite; this script does it as often as asked, for figures such as those in
docs/embed.md ("Long jobs"). The run is write-bound on purpose (onehot, batches of 4). embed
flushes once a second at most, so most kills land between flushes, with a second of proteins
written since; `--flush-seconds 0` flushes after every batch, as embed did before 2026-12-02,
so that kills often land inside HDF5's flush, where the partial file needs repair.

    python scripts/sigkill_stress.py --trials 120 --seed 11
    python scripts/sigkill_stress.py --trials 120 --seed 11 --flush-seconds 0
    python scripts/sigkill_stress.py --trials 20 --proteins 30000 --kill-within 4 --layout stacked

A large group (thousands of proteins written between two kills) is what met HDF5's metadata
cache writing half an index between flushes (io.h5._MetadataHold): `--proteins 30000
--kill-within 4`. "kept" counts the proteins --resume found already embedded. `--extend N`: each
killed run is a --resume that adds the other proteins to a finished file of the first N (for the
stacked layout, the partial file of the new proteins and its link to the finished file, merged
at the end):

    python scripts/sigkill_stress.py --trials 20 --proteins 6000 --extend 4000 --layout stacked --kill-within 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None) -> None:
    from test_embed import _run, assert_same_content, file_content, generated_fasta

    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.io.h5 import partial_path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--proteins", type=int, default=3000)
    p.add_argument("--kill-within", type=float, default=0.6,
                   help="seconds after the partial file appears within which the kill lands (uniform)")
    p.add_argument("--layout", choices=("grouped", "flat", "stacked"), default="grouped")
    p.add_argument("--flush-seconds", type=float, default=None,
                   help="the killed runs' io.h5.FLUSH_SECONDS (0: a flush after every batch); default embed's")
    p.add_argument("--extend", type=int, default=0, metavar="N",
                   help="kill --resume runs that extend a finished file of the first N proteins")
    args = p.parse_args(argv)

    rng = random.Random(args.seed)
    command = [sys.executable, "-m", "protrans_cli"]
    if args.flush_seconds is not None:
        command = [sys.executable, "-c", "import sys, protrans_cli.io.h5 as h5; "
                   f"h5.FLUSH_SECONDS = {args.flush_seconds!r}; from protrans_cli.cli import main; main(sys.argv[1:])"]
    env = {**os.environ, "PROTRANS_NO_PROGRESS": "1"}
    with tempfile.TemporaryDirectory(prefix="sigkill_stress.") as tmp:
        tmp = Path(tmp)
        fasta = generated_fasta(tmp / "g.fa", args.proteins, repeat_every=0, long_every=3)
        kinds = {"per_residue": False} if args.layout != "grouped" else {}
        full = file_content(_run(tmp / "full.h5", fasta=fasta, max_batch_size=4, layout=args.layout, **kinds))
        layout = ["--layout", args.layout, "--per-protein"] if args.layout != "grouped" else []
        finished = None
        if args.extend:
            first = tmp / "first.fa"
            first.write_text("".join(">" + r for r in fasta.read_text().split(">")[1:args.extend + 1]))
            finished = _run(tmp / "finished.h5", fasta=first, max_batch_size=4, layout=args.layout, **kinds)
            layout.append("--resume")
        killed = repaired = failed = crashes = hangs = kept = 0
        for trial in range(args.trials):
            out = tmp / "k.h5"
            for path in out.parent.glob(out.name + "*"):
                path.unlink(missing_ok=True)
            if finished is not None:
                shutil.copy(finished, out)
            proc = subprocess.Popen([*command, "embed", str(fasta), "-m", "onehot",
                                     "--max-batch-size", "4", *layout, "-o", str(out)], env=env,
                                    stderr=subprocess.DEVNULL)
            while not partial_path(out).exists() and proc.poll() is None:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, args.kill_within))
            killed += proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            messages = io.StringIO()
            try:
                with contextlib.redirect_stderr(messages):
                    summary = embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, resume=True,
                                                             layout=args.layout, **kinds))
                kept += summary.num_resumed
                assert_same_content(file_content(out), dict(full))
            except Exception as exc:  # noqa: BLE001 - counted and shown, the next trial goes on
                failed += 1
                print(f"trial {trial}: {type(exc).__name__}: {exc}", flush=True)
            # (HDF5 crashing the forked reader of the partial file, or hanging in it until its alarm
            # ended it: embed_resume._read_whole's warnings)
            crashes += messages.getvalue().count("HDF5 crashed")
            hangs += messages.getvalue().count("HDF5 hung")
            if "repaired the damaged file" in messages.getvalue():
                repaired += 1
                print(f"trial {trial}: {messages.getvalue().strip().splitlines()[-1]}", flush=True)
    print(f"{args.trials} trials, {killed} killed while running, {repaired} repaired "
          f"({crashes} crashes and {hangs} hangs of HDF5 in the resume reader survived), "
          f"{args.trials - failed} resumed to the uninterrupted content, {failed} failed; "
          f"{kept:,} proteins kept from the killed runs")


if __name__ == "__main__":
    main()

"""Under torchrun every rank must be started alike (multi-node: one command per node).

Ranks started with different settings trained silently on mixed batches, wrote a finished file
lacking proteins or kinds, or waited for good in a collective the other rank never reached.
Each rank here gets its own flags through `sh -c` and $RANK, as two nodes given different
commands would.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import DATA, ROOT

FASTA = str(ROOT / "protrans_cli" / "example_data" / "proteins.fasta")
LEARNABLE = str(DATA / "train" / "learnable.txt")


def _torchrun_per_rank(script: str, timeout=240):
    """Two ranks running `script` (sh), $RANK telling them apart."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1", PY=sys.executable)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--no-python", "sh", "-c", script]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _embed_another_fasta_on_rank_1(other, out):
    """`embed` of FASTA per protein on rank 0, of `other` on rank 1, into `out`."""
    return _torchrun_per_rank(f'F={FASTA}; [ "$RANK" = 1 ] && F={other}; '
                              f'exec "$PY" -m protrans_cli embed "$F" -m onehot --per-protein -o {out}')


@pytest.mark.slow
def test_embed_ranks_asking_for_different_kinds_are_refused(tmp_path):
    out = tmp_path / "e.h5"
    proc = _torchrun_per_rank(f'exec "$PY" -m protrans_cli embed {FASTA} -m onehot --per-protein -o {out} '
                              '$([ "$RANK" = 1 ] && echo --per-residue)')
    assert proc.returncode != 0
    assert "the ranks were not started alike: per_residue True on rank 1, False on rank 0" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # (it wrote a file with half the per-residue arrays, exit 0)


@pytest.mark.slow
def test_embed_ranks_given_different_fastas_are_refused(tmp_path):
    half = tmp_path / "half.fa"
    with open(FASTA, encoding="utf-8") as fh:
        half.write_text("".join(fh.readlines()[:20]))
    out = tmp_path / "e.h5"
    proc = _embed_another_fasta_on_rank_1(half, out)
    assert proc.returncode != 0
    assert "not started alike: input (records, residues, longest)" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_embed_rank_whose_fasta_is_missing_stops_the_others(tmp_path):
    out = tmp_path / "e.h5"
    # (rank 0 waited for rank 1 in the group's set-up, for up to 24 hours)
    proc = _torchrun_per_rank(f'F={FASTA}; [ "$RANK" = 1 ] && F={tmp_path}/missing.fa; '
                              f'exec "$PY" -m protrans_cli embed "$F" -m onehot --per-protein -o {out}',
                              timeout=120)
    assert proc.returncode != 0
    assert "missing.fa: no such file" in proc.stderr
    assert "rank(s) 1 stopped before starting" in proc.stderr
    # torchrun's Root Cause is rank 1 and its line, not rank 0 stopped by it (a tie in the same second)
    root = proc.stderr.split("Root Cause (first observed failure):", 1)[1]
    assert "rank      : 1" in root and "traceback : protrans: error: " in root and "missing.fa: no such file" in root
    assert not out.exists()


@pytest.mark.slow
def test_train_ranks_with_different_global_batch_sizes_are_refused(tmp_path):
    out = tmp_path / "run"
    args = (f"--family bert --corpus {LEARNABLE} --num-steps 4 --max-length 64 --micro-batch-size 4 "
            f"--warmup-steps 1 -j 1 -o {out}")
    proc = _torchrun_per_rank(f'B=16; [ "$RANK" = 1 ] && B=32; '
                              f'exec "$PY" -m protrans_cli train {args} --global-batch-size "$B"')
    assert proc.returncode != 0
    # (it trained to the end, exit 0, each rank accumulating its own number of micro-batches)
    assert "not started alike: global_batch_size 32 on rank 1, 16 on rank 0" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_train_resume_on_a_rank_that_sees_no_checkpoint_is_refused(tmp_path):
    out, other = tmp_path / "run", tmp_path / "other"
    args = f"--family bert --corpus {LEARNABLE} --num-steps 4 --max-length 64 --micro-batch-size 4 -j 1"
    first = _torchrun_per_rank(f'exec "$PY" -m protrans_cli train {args} -o {out} --stop-after 2 --save-every 2')
    assert first.returncode == 0, first.stderr[-2000:]
    # A run directory one node does not see (not on a shared file system): that rank started at
    # step 0, the other resumed at step 2, and both hung in their last collectives.
    proc = _torchrun_per_rank(f'O={out}; [ "$RANK" = 1 ] && O={other}; '
                              f'exec "$PY" -m protrans_cli train {args} -o "$O" --resume')
    assert proc.returncode != 0
    assert "protrans: error: the ranks were not started alike" in proc.stderr and f"'{other}' on rank 1" in proc.stderr


@pytest.mark.slow
def test_train_run_directory_held_by_another_run_stops_every_rank(tmp_path):
    # Rank 0 alone takes the run directory's lock: refused it ("in use by another protrans
    # train"), rank 0 stopped while rank 1 waited for it at its first collective (30 minutes).
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    args = f"--family bert --corpus {LEARNABLE} --num-steps 4 --max-length 64 --micro-batch-size 4 -j 1"
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the other run holds
        proc = _torchrun_per_rank(f'exec "$PY" -m protrans_cli train {args} -o {out}', timeout=120)
    finally:
        os.close(fd)
    assert proc.returncode != 0
    assert "is in use by another training run" in proc.stderr
    assert "rank(s) 0 stopped before starting" in proc.stderr


@pytest.mark.slow
def test_embed_ranks_given_the_same_records_in_another_order_are_refused(tmp_path):
    # Same count, residues and longest protein: the ranks shared out the proteins by their own
    # order, and some were embedded twice and others never.
    records = open(FASTA).read().split(">")[1:]
    swapped = tmp_path / "swapped.fa"
    swapped.write_text("".join(">" + r for r in [records[1], records[0], *records[2:]]))
    out = tmp_path / "e.h5"
    proc = _embed_another_fasta_on_rank_1(swapped, out)
    assert proc.returncode != 0
    assert "not started alike: input's ids and sequences (digest)" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_rank_failing_alone_in_training_leaves_the_others_one_line_and_torchrun_its_message(tmp_path):
    # Rank 1 meets a bad line in its share of the corpus at step 2: it said so in one line, and
    # rank 0 then failed in its next all_reduce with gloo's 40-line traceback ("Connection closed
    # by peer ... GLHF"); torchrun's summary said "To enable traceback see: <url>" for both.
    wrapper = tmp_path / "rank1_fails.py"
    wrapper.write_text(
        f"import os, sys\nsys.path.insert(0, {str(ROOT)!r})\nimport protrans_cli.training.loop as L\n"
        "from protrans_cli.errors import InputError\n"
        "step, calls = L.train_step, []\n"
        "def failing(*a, **k):\n    calls.append(1)\n"
        "    if os.environ['RANK'] == '1' and len(calls) == 2:\n"
        "        raise InputError('bad residue', path='shard.txt', line=7)\n"
        "    return step(*a, **k)\n"
        "L.train_step = failing\nfrom protrans_cli.cli import main\nsys.argv[0] = 'protrans'\nmain()\n")
    args = (f"--family bert --corpus {LEARNABLE} --num-steps 4 --max-length 64 --global-batch-size 8 "
            f"--micro-batch-size 4 -j 1 -o {tmp_path / 'run'}")
    proc = _torchrun_per_rank(f'exec "$PY" {wrapper} train {args}', timeout=120)
    assert proc.returncode != 0
    assert "protrans: error: shard.txt:7: bad residue" in proc.stderr
    assert "[rank0]: Traceback" not in proc.stderr and "Connection closed by peer" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("protrans: error:")]
    assert len(lines) <= 2 and all("bad residue" in line or "another process of this torchrun run stopped" in line
                                   for line in lines), lines
    # (rank 0 may be stopped by torchrun before its own line; rank 1's is the root cause)
    assert "traceback : protrans: error: shard.txt:7: bad residue" in proc.stderr


@pytest.mark.slow
def test_torchrun_summary_quotes_each_ranks_error_line(tmp_path):
    proc = _torchrun_per_rank(f'exec "$PY" -m protrans_cli train --family bert --corpus {LEARNABLE} --num-steps 2 '
                              f'--global-batch-size 10 --micro-batch-size 4 -j 1 -o {tmp_path / "run"}', timeout=120)
    assert proc.returncode != 0
    said = "global batch size 10 is not divisible by micro batch size 4 x 2 process(es)"
    assert proc.stderr.count(f"traceback : protrans: error: training: {said}") == 2, proc.stderr[-3000:]
    assert "To enable traceback see" not in proc.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["embed", "train", "find-lr"])
def test_a_bad_file_locking_setting_is_said_by_every_rank_as_a_usage_error(tmp_path, command):
    # Rank 0 alone takes the output's lock, and read PROTRANS_FILE_LOCKING there: rank 1 of embed
    # said "protrans: error: terminated" (exit 143, torchrun's SIGTERM), rank 1 of train "rank(s) 0
    # stopped before starting" (exit 1), where every other usage error is said alike by every rank.
    # Under torchrun the first rank to say it exits and torchrun's SIGTERM may stop the other before
    # its own check (a race no code removes), so rank 1 runs alone here, as torchrun starts it: it
    # must say the usage error itself, at once (a usage error never waits for the peers; one read
    # after the rendezvous, or by rank 0 alone, left it waiting for a rank 0 that never comes).
    out = tmp_path / "out"
    args = {"embed": ["embed", FASTA, "-m", "onehot", "--per-protein", "-o", f"{out}.h5"],
            "train": ["train", "--family", "bert", "--corpus", LEARNABLE, "--num-steps", "2",
                      "--micro-batch-size", "4", "-j", "1", "-o", str(out)],
            "find-lr": ["train", "--find-lr", "--family", "bert", "--corpus", LEARNABLE, "--num-steps", "10",
                        "--micro-batch-size", "4", "-j", "1", "-o", str(out)]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC_")}
    env.update(PROTRANS_FILE_LOCKING="maybe", RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1",
               PROTRANS_NO_PROGRESS="1")
    # (a rank 1 waiting for its peer would outlive the timeout: TimeoutExpired fails the test)
    proc = subprocess.run([sys.executable, "-m", "protrans_cli", *args[command]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90)
    said = "protrans: error: PROTRANS_FILE_LOCKING must be BEST_EFFORT"
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr[-3000:]
    assert "waiting for the other processes" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
    # Both ranks under torchrun: whichever is first says it (exit 2), torchrun fails, nothing is written.
    proc = _torchrun_per_rank(f'PROTRANS_FILE_LOCKING=maybe exec "$PY" -m protrans_cli {" ".join(args[command])}',
                              timeout=120)
    assert proc.returncode != 0
    assert f"traceback : {said}" in proc.stderr and "exitcode  : 2 " in proc.stderr, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []

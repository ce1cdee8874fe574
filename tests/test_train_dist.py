"""`torchrun --nproc-per-node 2 -m protrans_cli train` on CPU (gloo) against one process.

The same global batch split over two ranks must give the losses of one process (dropout off):
each global batch holds the same proteins with the same masks (and ELECTRA replacements), and
the loss is normalised by the predicted tokens of all ranks together.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, ROOT
from protrans_cli.training.config import TrainConfig
from protrans_cli.training.loop import train
from protrans_cli.training.metrics import read_metrics

LEARNABLE = str(DATA / "train" / "learnable.txt")
ARGS = ["--family", "bert", "--corpus", LEARNABLE, "--num-steps", "6", "--max-length", "64",
        "--global-batch-size", "16", "--micro-batch-size", "4", "--warmup-steps", "2", "--lr", "2e-3",
        "--log-every", "1", "-j", "1", "--set", "hidden_dropout_prob=0", "--set",
        "attention_probs_dropout_prob=0", "--save-every", "100"]


def _single(tmp_path, family="bert", **kw):
    cfg = TrainConfig(family=family, corpus=[LEARNABLE], output_dir=str(tmp_path / "one"), num_steps=6,
                      max_length=64, global_batch_size=16, micro_batch_size=4, warmup_steps=2, lr=2e-3,
                      log_every=1, threads=1, save_every=100,
                      model_overrides={"hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0}, **kw)
    return train(cfg).losses


def _torchrun(*args, base=ARGS):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "-v", "train", *base, *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:  # say where it stood: the ranks' last lines
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"torchrun {' '.join(map(str, args))} still running after 300 s; stderr so far:\n{err[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "electra"])
def test_torchrun_ddp_matches_one_process(tmp_path, family):
    # ELECTRA too: its replacements are drawn from each protein's own generator, not per rank.
    out = tmp_path / "ddp"
    proc = _torchrun("-o", out, "--family", family)
    assert "2 process(es) on cpu, strategy ddp" in proc.stderr
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(losses) == 6
    np.testing.assert_allclose(losses, _single(tmp_path, family), rtol=1e-5)


@pytest.mark.slow
def test_keep_best_under_torchrun_keeps_and_records_what_one_process_does(tmp_path):
    """--keep-best under DDP: every rank takes the same eval loss, rank 0 alone prunes and writes
    best_checkpoint.json, and the run keeps the checkpoints one process keeps."""
    import json

    from test_train_loop import _unlike_the_corpus

    config = tmp_path / "eval.toml"
    config.write_text("num_eval_batches = 2\n")
    extra = ["--num-steps", "20", "--lr", "3e-3", "--warmup-steps", "3", "--val-corpus", _unlike_the_corpus(tmp_path),
             "--config", str(config), "--eval-every", "5", "--save-every", "5", "--keep-last", "1", "--keep-best"]
    _torchrun("-o", tmp_path / "two", *extra)
    one = subprocess.run([sys.executable, "-m", "protrans_cli", "train", *ARGS, "-o", tmp_path / "one", *extra],
                         cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    recorded = {n: json.loads((tmp_path / n / "best_checkpoint.json").read_text()) for n in ("one", "two")}
    assert recorded["two"]["step"] == recorded["one"]["step"] not in (5, 20), recorded  # (not the last: kept by it)
    assert recorded["two"]["checkpoint"] == recorded["one"]["checkpoint"]
    np.testing.assert_allclose(recorded["two"]["eval_loss"], recorded["one"]["eval_loss"], rtol=1e-5)
    kept = {n: sorted(p.name for p in (tmp_path / n / "checkpoints").iterdir()) for n in ("one", "two")}
    assert kept["two"] == kept["one"] == [f"step_{recorded['one']['step']:08d}", "step_00000020"]


@pytest.mark.slow
def test_torchrun_fsdp_with_resume_matches_one_process(tmp_path):
    out = tmp_path / "fsdp"
    _torchrun("-o", out, "--strategy", "fsdp", "--stop-after", "3")
    proc = _torchrun("-o", out, "--strategy", "fsdp", "--resume")
    assert "strategy fsdp" in proc.stderr and "resuming from" in proc.stderr
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    np.testing.assert_allclose(losses, _single(tmp_path), rtol=1e-5)
    from protrans_cli.models import load_model

    assert load_model(out).family.name == "bert"


@pytest.mark.slow
@pytest.mark.parametrize("family, no_dropout", [
    ("t5", {"dropout_rate": 0}),
    # one-row matrices (ELECTRA's dense_prediction, token_type_embeddings): FSDP puts the row on one
    # rank, and the update came out replicated against the sharded weight
    ("electra", {"hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0}),
])
def test_torchrun_fsdp_with_adafactor_and_resume_matches_one_process(tmp_path, family, no_dropout):
    # transformers' Adafactor stopped at FSDP's first step ("got mixed torch.Tensor and DTensor"),
    # and T5 with Adafactor is the docs' ProtT5-XL recipe, FSDP chosen above 1e9 parameters
    out = tmp_path / family
    args = ["--family", family, "--corpus", LEARNABLE, "--num-steps", "6", "--max-length", "64", "--global-batch-size",
            "16", "--micro-batch-size", "4", "--warmup-steps", "2", "--lr", "2e-3", "--log-every", "1", "-j", "1",
            "--save-every", "100", "--optimizer", "adafactor"]
    for key, value in no_dropout.items():
        args += ["--set", f"{key}={value}"]
    _torchrun("-o", out, "--strategy", "fsdp", "--stop-after", "3", base=args)
    proc = _torchrun("-o", out, "--strategy", "fsdp", "--resume", base=args)
    assert "strategy fsdp" in proc.stderr and "resuming from" in proc.stderr
    assert "returned a view tensor" not in proc.stderr  # T5's position bias: a warning 12 times a step
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    cfg = TrainConfig(family=family, optimizer="adafactor", corpus=[LEARNABLE], output_dir=str(tmp_path / "one"),
                      num_steps=6, max_length=64, global_batch_size=16, micro_batch_size=4, warmup_steps=2,
                      lr=2e-3, log_every=1, threads=1, save_every=100, model_overrides=no_dropout)
    np.testing.assert_allclose(losses, train(cfg).losses, rtol=1e-5)


@pytest.mark.slow
def test_torchrun_fsdp_transformer_xl_whose_ranks_hold_other_segment_counts_matches_one_process(tmp_path):
    # A rank whose micro-batch had fewer segments made fewer model calls, each a gather of the
    # blocks' shards: gloo failed "Received data size doesn't match expected size" at step 1
    (tmp_path / "segments.toml").write_text("segment_length = 8\n")
    out = tmp_path / "fsdp"
    args = ["--family", "transfo_xl", "--corpus", LEARNABLE, "--val-corpus", LEARNABLE, "--num-steps", "4",
            "--max-length", "64", "--global-batch-size", "16", "--micro-batch-size", "4", "--warmup-steps", "2",
            "--lr", "2e-3", "--log-every", "1", "-j", "1", "--save-every", "100", "--set", "dropout=0",
            "--config", str(tmp_path / "segments.toml")]
    proc = _torchrun("-o", out, "--strategy", "fsdp", base=args)
    assert "strategy fsdp" in proc.stderr
    rows = read_metrics(out / "metrics.jsonl")
    cfg = TrainConfig(family="transfo_xl", corpus=[LEARNABLE], val_corpus=[LEARNABLE], output_dir=str(tmp_path / "one"),
                      num_steps=4, max_length=64, global_batch_size=16, micro_batch_size=4, warmup_steps=2, lr=2e-3,
                      log_every=1, threads=1, save_every=100, segment_length=8, model_overrides={"dropout": 0})
    one = train(cfg)
    np.testing.assert_allclose([r["loss"] for r in rows], one.losses, rtol=1e-5)
    one_eval = read_metrics(one.run_dir / "metrics.jsonl")[-1]["eval_loss"]
    assert rows[-1]["eval_loss"] == pytest.approx(one_eval, rel=1e-5)



@pytest.mark.slow
def test_a_script_under_torchrun_that_calls_train_twice_trains_both_runs(tmp_path):
    # The second train's process group read the first one's addresses from torchrun's store:
    # rank 1 failed with gloo's "Connection reset by peer" (or both hung)
    script = tmp_path / "twice.py"
    script.write_text("import sys\nfrom protrans_cli.training.config import TrainConfig\n"
                      "from protrans_cli.training.loop import train\n"
                      "for name in ('a', 'b'):\n"
                      f"    train(TrainConfig(family='bert', corpus=[{LEARNABLE!r}],\n"
                      "                      output_dir=sys.argv[1] + '/' + name, num_steps=1, max_length=32,\n"
                      "                      global_batch_size=4, micro_batch_size=2, threads=1, save_every=100))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(len(read_metrics(tmp_path / name / "metrics.jsonl")) == 1 for name in "ab")

def _stopped_one_process_run(out, step: int):
    """A one-process run of ARGS in `out`, stopped with a checkpoint after `step`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "protrans_cli", "train", *ARGS, "-o", str(out), "--stop-after", str(step)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_under_fsdp(tmp_path):
    # The strategy may change on --resume: one process (or DDP) to FSDP was a KeyError
    # ('state.0.step') from set_optimizer_state_dict on every rank.
    out = _stopped_one_process_run(tmp_path / "moved", 3)
    proc = _torchrun("-o", out, "--strategy", "fsdp", "--resume")
    assert "strategy fsdp" in proc.stderr and "resuming from" in proc.stderr
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    np.testing.assert_allclose(losses, _single(tmp_path), rtol=1e-5)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumed_by_two_gives_rank_1_its_own_random_stream(tmp_path):
    # A job requeued on more GPUs: rank 1, which the checkpoint has no RNG state for, took rank
    # 0's, and both ranks drew the same dropout masks for the rest of the run (every later
    # checkpoint saving the two equal states).
    import torch

    out = _stopped_one_process_run(tmp_path / "grown", 2)
    proc = _torchrun("-o", out, "--resume", "--stop-after", "3")
    state = torch.load(out / "checkpoints" / "step_00000003" / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert "step_00000002 was written by 1 process(es), resumed by 2" in proc.stderr
    # the checkpoint's card says the run's process history, not only this invocation's
    card = (out / "checkpoints" / "step_00000003" / "README.md").read_text()
    assert "- Processes: 1 for steps 1-2, 2 (ddp) for step 3\n" in card
    assert [(p["first_step"], p["world_size"], p["strategy"]) for p in state["processes"]] == [(1, 1, "none"),
                                                                                               (3, 2, "ddp")]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("flag, said", [
    # Ranks whose shares cut into different numbers of micro-batches would leave FSDP's
    # collective gathers unmatched (a hang): every rank makes as many as the one that needs most.
    ("--token-micro-batches", "micro-batches cut by tokens"),
    # Each block compiled in place before DDP/FSDP2 wrap the model: their hooks (FSDP2 gathers a
    # block's shards around its forward) stay outside the compiled region.
    ("--compile", "process(es) on cpu"),
    # The blocks' recomputation sits inside DDP's and FSDP2's per-block hooks (FSDP2 gathers a
    # block's shards again for it).
    ("--activation-checkpointing", "activation checkpointing of 2 blocks"),
])
def test_torchrun_with_a_block_or_batch_option_matches_one_process(tmp_path, strategy, flag, said):
    out = tmp_path / strategy
    proc = _torchrun("-o", out, "--strategy", strategy, flag)
    assert f"strategy {strategy}" in proc.stderr and said in proc.stderr
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    np.testing.assert_allclose(losses, _single(tmp_path), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_fp16_with_loss_scaling_matches_one_process(tmp_path, strategy):
    # The loss scale's decision comes from the global gradient norm, the same on every rank.
    out = tmp_path / strategy
    proc = _torchrun("-o", out, "--strategy", strategy, "--precision", "fp16")
    assert f"strategy {strategy}, fp16 autocast with loss scaling" in proc.stderr
    rows = read_metrics(out / "metrics.jsonl")
    assert all(r["loss_scale"] == 2.0 ** 16 and r["skipped_steps"] == 0 for r in rows)
    np.testing.assert_allclose([r["loss"] for r in rows], _single(tmp_path, precision="fp16"), rtol=1e-4)


_NAN_ON_ONE_RANK = """
import os
if os.environ.get("RANK") == os.environ.get("PROTRANS_TEST_NAN_RANK"):
    import torch
    from protrans_cli.training import loop

    forward, calls = loop.LossModule.forward, []

    def poisoned(self, batch):
        sum_loss, count, metrics = forward(self, batch)
        calls.append(1)
        at = int(os.environ["PROTRANS_TEST_NAN_CALL"])
        return (sum_loss * float("nan") if len(calls) == at else sum_loss), count, metrics

    loop.LossModule.forward = poisoned
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_skip_nonfinite_under_torchrun_skips_a_step_poisoned_on_one_rank_on_every_rank(tmp_path, monkeypatch,
                                                                                       strategy):
    """A NaN loss on rank 1 alone at step 3: the gradient norm both ranks check is of the shared
    gradients, so both skip the step, and the run's losses are those of one process that skipped it."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_NAN_ON_ONE_RANK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("PROTRANS_TEST_NAN_RANK", "1")
    # step 3's first micro-batch: 2 a step on each rank, after DDP's probe for unused parameters (one forward)
    monkeypatch.setenv("PROTRANS_TEST_NAN_CALL", "6" if strategy == "ddp" else "5")
    out = tmp_path / strategy
    _torchrun("-o", out, "--strategy", strategy, "--skip-nonfinite", "1")
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1.0, 0, 0, 0] and rows[2]["loss"] is None
    import torch

    from protrans_cli.training import loop

    real, clips = torch.nn.utils.clip_grad_norm_, []

    def clip(parameters, max_norm, *args, **kwargs):  # one process: a NaN gradient at step 3
        parameters = list(parameters)
        clips.append(1)
        if len(clips) == 3:
            parameters[0].grad.view(-1)[0] = float("nan")
        return real(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", clip)
    single = _single(tmp_path, skip_nonfinite=1)
    assert single[2] is None
    np.testing.assert_allclose([r["loss"] for i, r in enumerate(rows) if i != 2],
                               [x for i, x in enumerate(single) if i != 2], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["albert", "electra", "t5", "xlnet", "transfo_xl", "esm", "roberta"])
def test_every_family_trains_under_torchrun(tmp_path, family):
    # ALBERT (unused sentence-order head), ELECTRA (two models in one loss), T5, XLNet, TXL:
    # each objective through DDP's forward, two steps with gradient accumulation.
    out = tmp_path / family
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "train", "--family", family, "--corpus", LEARNABLE, "--num-steps", "2",
           "--max-length", "64", "--global-batch-size", "16", "--micro-batch-size", "4", "-j", "1",
           "--log-every", "1", "-o", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])  # (SIGHUP: the terminal of its ssh login hung up)
def test_sigterm_to_torchrun_saves_one_checkpoint_of_all_ranks_and_resume_matches(tmp_path, signame):
    import signal

    if not hasattr(signal, signame):
        pytest.skip(f"no {signame} on this platform")

    out = tmp_path / "stopped"
    steps = ["--num-steps", "40"]
    proc, metrics = _two_ranks_past_step_3(out, steps)
    proc.send_signal(getattr(signal, signame))  # what a scheduler's pre-emption does; torchrun passes it on
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    stopped = [r["step"] for r in read_metrics(metrics)][-1]
    assert 3 <= stopped < 40, stderr[-2000:]
    assert f"stopped at step {stopped}/40" in stderr
    assert stderr.count("protrans: error:") == 1, stderr[-2000:]  # rank 0's line only
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{stopped:08d}"]
    _torchrun("-o", out, *steps, "--resume")
    losses = [r["loss"] for r in read_metrics(metrics)]
    np.testing.assert_allclose(losses, _one_process_losses(tmp_path / "one"), rtol=1e-5)


def _two_ranks_past_step_3(out, steps: list[str]):
    """A 2-rank torchrun train of ARGS into `out`, under way: (its Popen, metrics.jsonl) once 3 steps are logged."""
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "train", *ARGS, *steps, "-o", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.05)
    return proc, metrics


def _one_process_losses(out) -> list:
    """The losses of ARGS' run of 40 steps in one process (what a stopped and resumed torchrun run must equal)."""
    cfg = TrainConfig(family="bert", corpus=[LEARNABLE], output_dir=str(out), num_steps=40,
                      max_length=64, global_batch_size=16, micro_batch_size=4, warmup_steps=2, lr=2e-3,
                      log_every=1, threads=1, save_every=100,
                      model_overrides={"hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0})
    return train(cfg).losses


def _processes_naming(text: str) -> list[int]:
    """PIDs of the processes whose command line holds `text` (Linux's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_schedulers_warning_signal_to_one_rank_stops_all_after_one_step_with_exit_0(tmp_path):
    """Slurm's `--signal=USR1@N` reaches the ranks (not always all at once): SIGUSR1 killed the rank
    it reached, and torchrun ended the others. It is a planned stop now, told to every rank in the
    step's exchange as --time-limit's is: all stop after the same step, one checkpoint, exit 0."""
    import signal

    out = tmp_path / "warned"
    steps = ["--num-steps", "40"]
    proc, metrics = _two_ranks_past_step_3(out, steps)
    ranks = []
    for pid in _processes_naming(str(out)):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if b"\0RANK=1\0" in b"\0" + fh.read():
                    ranks.append(pid)
        except OSError:
            pass
    assert len(ranks) == 1, ranks
    os.kill(ranks[0], signal.SIGUSR1)  # rank 1 only: rank 0 learns of it in the step's exchange
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    stopped = [r["step"] for r in read_metrics(metrics)][-1]
    assert 3 <= stopped < 40, stderr[-2000:]
    assert f"a scheduler's warning signal (the job's time is nearly up): stopped after step {stopped} of 40" in stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{stopped:08d}"]
    assert not (out / "complete.json").exists()
    _torchrun("-o", out, *steps, "--resume")
    losses = [r["loss"] for r in read_metrics(metrics)]
    np.testing.assert_allclose(losses, _one_process_losses(tmp_path / "one"), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_to_torchrun_stops_its_ranks_with_a_checkpoint_and_resume_matches(tmp_path):
    """`kill -9` of the launcher alone: its ranks used to train on to the end as orphans; each now
    gets SIGTERM as the launcher dies, so they stop together after one step with one checkpoint."""
    import signal
    import time

    out = tmp_path / "killed"
    steps = ["--num-steps", "40"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "train", *ARGS, *steps, "-o", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 120
    while _processes_naming(str(out)) and time.time() < deadline:
        time.sleep(0.1)
    left = _processes_naming(str(out))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the ranks ran on after their launcher was killed"
    stopped = [r["step"] for r in read_metrics(metrics)][-1]
    assert 3 <= stopped < 40
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{stopped:08d}"]
    _torchrun("-o", out, *steps, "--resume")
    losses = [r["loss"] for r in read_metrics(metrics)]
    np.testing.assert_allclose(losses, _one_process_losses(tmp_path / "one"), rtol=1e-5)


@pytest.mark.slow
def test_fsdp_checkpoints_leave_the_random_stream_alone(tmp_path):
    # rank 0 built its full copy of the model for every save from the global generator: with
    # dropout on, --save-every 1 gave other losses than --save-every 100, and a resumed FSDP run
    # other losses than an uninterrupted one
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["--family", "bert", "--corpus", LEARNABLE, "--num-steps", "4", "--max-length", "64",
            "--global-batch-size", "16", "--micro-batch-size", "4", "--log-every", "1", "-j", "1",
            "--strategy", "fsdp", "--seed", "1"]  # dropout left on
    losses = []
    for every in ("1", "100"):
        out = tmp_path / f"every{every}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "protrans_cli", "train", *base, "--save-every", every, "-o", str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses.append([r["loss"] for r in read_metrics(out / "metrics.jsonl")])
    assert losses[0] == losses[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(*args, rdzv_id: str):
    """The documented multi-node command, as two nodes of one process each on this machine:
    every rank is LOCAL_RANK 0 of its node, so anything that took the node's first process for
    rank 0 (writing, logging, merging) would run twice. `--nproc-per-node 2` never shows that."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--rdzv-id", rdzv_id, "-m", "protrans_cli", *map(str, args)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    return [err for _, err in outputs]


@pytest.mark.slow
def test_two_nodes_through_c10d_rendezvous_train_and_embed_as_one_process(tmp_path):
    out = tmp_path / "nodes"
    errs = _two_nodes("train", *ARGS, "-o", out, rdzv_id="protrans-train")
    assert "2 process(es) on cpu, strategy ddp" in errs[0] and "train: done, 6 steps" in errs[0]
    assert "train:" not in errs[1]  # rank 1 (its node's first process) logs nothing
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    np.testing.assert_allclose(losses, _single(tmp_path), rtol=1e-5)

    import h5py

    fasta = ROOT / "protrans_cli" / "example_data" / "proteins.fasta"
    errs = _two_nodes("embed", fasta, "-m", out, "-o", tmp_path / "two.h5", "-j", 1, rdzv_id="protrans-embed")
    assert "embedded" in errs[0] and "embedded" not in errs[1]
    subprocess.run([sys.executable, "-m", "protrans_cli", "-q", "embed", fasta, "-m", out, "-o", tmp_path / "one.h5",
                    "-j", "1"], cwd=ROOT, check=True)
    with h5py.File(tmp_path / "two.h5") as two, h5py.File(tmp_path / "one.h5") as one:
        for kind in ("per_residue", "per_protein"):
            assert sorted(two[kind]) == sorted(one[kind]) and len(one[kind]) > 100
            for key in one[kind]:
                np.testing.assert_allclose(two[kind][key][()], one[kind][key][()], atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nodes", "one", "one.h5", "two.h5"]


def _rank_processes(launcher: int, rank: int) -> list[int]:
    """PIDs of the launcher's children started as `rank` (their RANK in /proc/PID/environ)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    environ = fh.read().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if parent == launcher and f"RANK={rank}".encode() in environ:
                found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_rank_killed_under_max_restarts_resumes_and_matches(tmp_path):
    """`torchrun --max-restarts 1 ... --resume` with one rank SIGKILLed mid-run (a node's OOM
    killer): torchrun restarts the group, which resumes from the last checkpoint. The restarted
    ranks used to read the previous attempt's addresses from the launcher's store and fail to
    connect (gloo: "Connection refused"), so the restart never trained."""
    import signal
    import time

    out = tmp_path / "restarted"
    steps = ["--num-steps", "30", "--save-every", "4"]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts",
           "1", "-m", "protrans_cli", "train", *ARGS, *steps, "-o", str(out), "--resume"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 6) and time.time() < deadline:
        time.sleep(0.05)
    victims = _rank_processes(proc.pid, 1)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    try:
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert victims and proc.returncode == 0, stderr[-3000:]
    assert "resuming from" in stderr
    rows = read_metrics(metrics)
    assert [r["step"] for r in rows] == list(range(1, 31))  # the lines after the checkpoint written once
    cfg = TrainConfig(family="bert", corpus=[LEARNABLE], output_dir=str(tmp_path / "one"), num_steps=30,
                      max_length=64, global_batch_size=16, micro_batch_size=4, warmup_steps=2, lr=2e-3,
                      log_every=1, threads=1, save_every=100,
                      model_overrides={"hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0})
    np.testing.assert_allclose([r["loss"] for r in rows], train(cfg).losses, rtol=1e-5)


def _torchrun_on(nproc: int, *args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "protrans_cli", "-v", "train", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_three_ranks_match_one_process_and_resume_on_two_with_another_micro_batch(tmp_path):
    # An odd number of ranks (every other torchrun test runs 2): global batch 12 = 4 x 3 ranks
    # gives one process's losses; stopped at step 3 and requeued on 2 ranks, whose share (6) micro
    # batch 4 does not divide (a usage error saying which to use), micro batch 3 continues it.
    at = ARGS.index("--global-batch-size") + 1
    args = [*ARGS[:at], "12", *ARGS[at + 1:]]
    odd = _torchrun_on(3, *ARGS, "-o", tmp_path / "odd", check=False)
    assert odd.returncode != 0
    assert ("global batch size 16 is not divisible by micro batch size 4 x 3 process(es) = 12: "
            "use a number of processes that divides 16") in odd.stderr
    out = tmp_path / "three"
    _torchrun_on(3, *args, "-o", out, "--stop-after", "3")
    refused = _torchrun_on(2, *args, "-o", out, "--resume", check=False)
    assert refused.returncode != 0 and "use a micro batch size that divides 6, e.g. 3" in refused.stderr
    proc = _torchrun_on(2, *args, "-o", out, "--resume", "--micro-batch-size", "3")
    assert "step_00000003 was written by 3 process(es), resumed by 2" in proc.stderr
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(losses) == 6
    np.testing.assert_allclose(losses, _single12(tmp_path), rtol=1e-5)


def _single12(tmp_path):
    cfg = TrainConfig(family="bert", corpus=[LEARNABLE], output_dir=str(tmp_path / "one12"), num_steps=6,
                      max_length=64, global_batch_size=12, micro_batch_size=4, warmup_steps=2, lr=2e-3,
                      log_every=1, threads=1, save_every=100,
                      model_overrides={"hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0})
    return train(cfg).losses


@pytest.mark.slow
def test_torchrun_sample_clusters_matches_one_process(tmp_path):
    """--sample-clusters over two ranks: each global batch holds the same members as in one
    process (the member a function of seed, epoch and cluster), split without a cluster twice."""
    proteins = [line for line in open(LEARNABLE).read().splitlines() if line.strip()]
    corpus = tmp_path / "clusters.txt"
    # clusters of 1, 2 and 3 members in turn: 150 clusters, 9 global batches of 16 an epoch
    blocks, at = [], 0
    while at + 6 <= len(proteins):
        for size in (1, 2, 3):
            blocks.append("".join(p + "\n" for p in proteins[at:at + size]) + "\n")
            at += size
    corpus.write_text("".join(blocks))
    base = [str(corpus) if a == LEARNABLE else a for a in ARGS]
    base[base.index("--num-steps") + 1] = "11"  # into the second epoch
    out = tmp_path / "ddp"
    proc = _torchrun("-o", out, "--sample-clusters", base=base)
    assert "one member of every cluster an epoch" in proc.stderr
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    cfg = TrainConfig(family="bert", corpus=[str(corpus)], output_dir=str(tmp_path / "one"), num_steps=11,
                      max_length=64, global_batch_size=16, micro_batch_size=4, warmup_steps=2, lr=2e-3,
                      log_every=1, threads=1, save_every=100, sample_clusters=True,
                      model_overrides={"hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0})
    assert len(losses) == 11
    np.testing.assert_allclose(losses, train(cfg).losses, rtol=1e-5)

"""`train --time-limit`: a run stops, its checkpoint saved, before the job's wall time is up, and
`--resume` continues it as if it had never stopped; `--dist-timeout`, how long ranks wait for each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import DATA, ROOT
from protrans_cli.errors import UsageError
from protrans_cli.training import timelimit
from protrans_cli.training.config import TrainConfig
from protrans_cli.training.loop import train
from protrans_cli.training.metrics import read_metrics
from protrans_cli.training.timelimit import EXIT_SECONDS, Deadline, parse_duration

LEARNABLE = str(DATA / "train" / "learnable.txt")


@pytest.mark.parametrize("text, seconds", [
    ("23:45:00", 23 * 3600 + 45 * 60), ("0:30:00", 1800), ("1-12:00:00", 36 * 3600), ("2-0", 48 * 3600),
    ("2-12", 60 * 3600),
    ("1-2:30", 26.5 * 3600), ("90m", 5400), ("1h30m", 5400), ("2d", 172800), ("45s", 45), ("1.5h", 5400),
    (" 1H 30M ", 5400), ("0:00:01.5", 1.5),
])
def test_durations_are_read_as_slurm_and_people_write_them(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, seconds", [("45:00", 45 * 60), ("0:30", 30), ("30:30", 30 * 60 + 30),
                                           ("1-2:30", 26.5 * 3600)])
def test_two_numbers_without_a_day_are_minutes_and_seconds_as_slurm_reads_them(text, seconds):
    """sbatch --time: "minutes:seconds", but "days-hours:minutes". `--time-limit 45:00` (Slurm's
    45 minutes) was read as 45 hours: the limit never came and the job was killed unsaved."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, said", [
    ("90", "a bare number: give its unit"), ("1:2:3:4", "not a duration"), ("soon", "not a duration"),
    ("", "not a duration"), ("0m", "more than 0"), ("0:00:00", "more than 0"), ("h", "not a duration"),
    ("99999999999d", "at most 365 days"), ("366d", "at most 365 days"),
    (90, "a duration is text"), (True, "a duration is text"),
])
def test_what_is_not_a_duration_is_refused_saying_what_is(text, said):
    with pytest.raises(ValueError, match=said):
        parse_duration(text)


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_last_step_is_the_one_after_which_a_step_and_a_checkpoint_no_longer_fit():
    clock = _Clock()
    # 100 s from now; a save measured at 5 s; steps of 10 s
    deadline = Deadline(100, clock=clock, started_ago=0, checkpoint_bytes=0)
    deadline.saved(5.0)
    decisions = []
    for _ in range(9):
        decisions.append(deadline.stop_after_next())
        clock.now += 10.0
    # before the step at t: it runs, then another (10 s) and a save (5 s) and the exit must end by 100
    # t=0: no step measured yet (need 5 + exit): go on; t=k*10 with step 10: t + 20 + 5 + 2 > 100 from t=80
    assert decisions == [False] * 8 + [True]
    assert deadline.step_seconds == pytest.approx(10.0)


def test_the_longest_of_the_recent_steps_stands_for_the_next_ones():
    """A slow step (a longer batch, a pause of the file system) among fast ones: the decision
    reserves the longest of the last RECENT_STEPS steps, not the last one, and forgets it once
    RECENT_STEPS faster steps have followed. Reserving the last step's time passed every test."""
    clock = _Clock()
    deadline = Deadline(99, clock=clock, started_ago=0)  # a save of 1 s (the floor), the exit 2 s
    decisions = [deadline.stop_after_next()]
    for seconds in (2.0, 30.0, 2.0, 3.0):
        clock.now += seconds
        decisions.append(deadline.stop_after_next())
    # at t=37, after the 3-s step: two steps of 30 s, the save and the exit end at 100 > 99
    assert decisions == [False, False, False, False, True]
    assert deadline.step_seconds == pytest.approx(30.0)
    for _ in range(timelimit.RECENT_STEPS - 3):  # the 30-s step is still one of the last RECENT_STEPS
        clock.now += 2.0
        deadline.stop_after_next()
    assert deadline.step_seconds == pytest.approx(30.0)
    clock.now += 2.0
    deadline.stop_after_next()
    assert deadline.step_seconds == pytest.approx(3.0)


def test_before_the_runs_last_step_the_final_model_is_reserved_too():
    answers = []
    for exports in (False, True):
        clock = _Clock()
        deadline = Deadline(50, clock=clock, started_ago=0)
        deadline.saved(10.0)
        deadline.stop_after_next()
        clock.now += 10.0
        # 40 s left: two steps (20), a checkpoint (10) and the exit (2) fit; the final model after
        # them (timed as a checkpoint, 10) does not
        answers.append(deadline.stop_after_next(exports=exports))
    assert answers == [False, True]


def test_saves_and_evaluations_between_steps_are_not_counted_as_step_time_but_reserved():
    clock = _Clock()
    deadline = Deadline(60, clock=clock, started_ago=0)
    assert deadline.save_seconds == timelimit.SAVE_FLOOR_SECONDS  # nothing measured, a tiny checkpoint
    deadline.stop_after_next()
    clock.now += 2.0
    deadline.stop_after_next()  # one step of 2 s measured
    clock.now += 2.0 + 8.0
    deadline.saved(8.0)  # a save of 8 s after that step
    assert not deadline.stop_after_next()
    assert deadline.step_seconds == pytest.approx(2.0)
    # 48 s left: a step, another and a save fit (12 s) but not with a periodic save between (20 s) and
    # an evaluation not measured yet, guessed at 30 s
    assert deadline.end - clock() == pytest.approx(48.0)  # (the seconds left)
    clock.now += 2.0
    assert deadline.stop_after_next(saves_after=True, evaluates=True, eval_guess=30.0)
    # once an evaluation is measured (1 s, after that step), its time stands for the next one
    deadline.evaluated(1.0)
    clock.now += 1.0
    assert deadline.end - clock() == pytest.approx(45.0)
    assert not deadline.stop_after_next(saves_after=True, evaluates=True, eval_guess=30.0)


def test_the_first_save_is_estimated_from_the_checkpoints_size_and_the_clock_from_the_process_start():
    clock = _Clock()
    big = Deadline(3600, clock=clock, started_ago=600, checkpoint_bytes=timelimit.checkpoint_bytes(3_000_000_000, "adamw"))
    assert big.save_seconds == pytest.approx(3e9 * 12 / timelimit.ASSUMED_WRITE_RATE)
    assert big.end - clock() == pytest.approx(3000.0)  # the process started 10 minutes ago
    big.saved(20.0)  # measured: the estimate gives way to it
    assert big.save_seconds == 20.0
    big.saved(10.0)  # the longest measured stands
    assert big.save_seconds == 20.0
    # a new phase of steps four times the tokens: the steps measured stand for steps four times as long
    big.stop_after_next()
    clock.now += 3.0
    big.stop_after_next()
    big.rescale(4.0)
    assert big.step_seconds == pytest.approx(12.0)


def test_the_process_age_is_the_time_since_this_process_started():
    script = "import time; time.sleep(1.0); from protrans_cli.training.timelimit import process_age; print(process_age())"
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - started
    assert 1.0 <= float(out) <= wall + 0.05


def _config(path, **kw):
    args = dict(family="bert", corpus=[LEARNABLE], output_dir=str(path), num_steps=12, max_length=64,
                global_batch_size=16, micro_batch_size=8, lr=3e-3, warmup_steps=3, log_every=4, save_every=1000,
                threads=1, bucket_batches=4)
    args.update(kw)
    return TrainConfig(**args)


def test_a_run_out_of_time_stops_with_a_checkpoint_and_resumes_as_the_uninterrupted_run(tmp_path, monkeypatch):
    whole = train(_config(tmp_path / "whole"))
    # the process started an hour and a minute ago: a limit of one hour is past, and the run
    # stops after its first step (at least one step each time: a job always makes progress)
    monkeypatch.setattr(timelimit, "process_age", lambda: 3660.0)
    stopped = train(_config(tmp_path / "parts", time_limit="1h"))
    assert (stopped.completed, stopped.step, stopped.stopped_by) == (False, 1, "time_limit")
    run = tmp_path / "parts"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]
    assert stopped.last_checkpoint == run / "checkpoints" / "step_00000001"
    assert not (run / "config.json").exists()  # no final model: the run is not done
    assert not (run / "complete.json").exists() and (tmp_path / "whole" / "complete.json").is_file()
    # the limit belongs to one invocation: the run's own config resumes it without one
    assert json.loads((run / "train_config.json").read_text())["time_limit"] is None
    again = train(_config(run, time_limit="1h"), resume=True)
    assert again.step == 2 and again.stopped_by == "time_limit"
    monkeypatch.setattr(timelimit, "process_age", lambda: 0.0)
    done = train(_config(run, time_limit="1h"), resume=True)  # an hour is plenty for the rest
    assert done.completed and done.step == 12 and done.stopped_by is None
    np.testing.assert_allclose([r["loss"] for r in read_metrics(run / "metrics.jsonl")], whole.losses, rtol=1e-6)
    # What tells a job script (both exit 0) a finished run from a stopped one: RUN/complete.json,
    # written last; the final model's files do not (a finished run lengthened keeps the old ones)
    # (with the run's tokens, every step's: those of its metrics lines, the last step's included)
    assert json.loads((run / "complete.json").read_text()) == {
        "step": 12, "tokens": sum(r["tokens"] for r in read_metrics(run / "metrics.jsonl"))}
    monkeypatch.setattr(timelimit, "process_age", lambda: 3660.0)
    longer = train(_config(run, num_steps=14, time_limit="1h"), resume=True)
    assert (longer.completed, longer.step) == (False, 13) and (run / "config.json").exists()
    assert not (run / "complete.json").exists()


def test_time_limit_on_the_command_line(tmp_path, monkeypatch, run_cli):
    monkeypatch.setattr(timelimit, "process_age", lambda: 7200.0)
    out = tmp_path / "run"
    args = ["train", "--family", "bert", "--corpus", LEARNABLE, "--num-steps", "20", "--max-length", "64",
            "--global-batch-size", "8", "--micro-batch-size", "8", "-j", "1", "-o", out]
    res = run_cli(*args, "--time-limit", "1:00:00")
    assert res.exit_code == 0, res.stderr
    assert "train: --time-limit 1:00:00: stopped after step 1 of 20, its checkpoint saved" in res.stderr
    assert "continue with --resume" in res.stderr and res.stdout == ""
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]
    # a bad duration: exit 2 naming the flag, before any model is built
    res = run_cli(*args[:-2], "-o", tmp_path / "bad", "--time-limit", "90")
    assert res.exit_code == 2 and "--time-limit (time_limit): not a duration: '90' (a bare number" in res.stderr
    assert not (tmp_path / "bad").exists()
    # a config file's value is checked and named as the file's
    cfg = tmp_path / "c.toml"
    cfg.write_text('time_limit = "soon"\n')
    res = run_cli(*args[:-2], "-o", tmp_path / "bad", "--config", cfg)
    assert res.exit_code == 2 and str(cfg) in res.stderr and "not a duration: 'soon'" in res.stderr
    res = run_cli(*args[:-2], "-o", tmp_path / "lr", "--find-lr", "--time-limit", "1h")
    assert res.exit_code == 2 and "--time-limit cannot go with it" in res.stderr
    with pytest.raises(UsageError, match="time_limit"):
        _config(tmp_path / "x", time_limit="1:2:3:4").check_values()


def test_auto_is_the_slurm_jobs_end_less_a_margin_counted_from_the_process_start():
    env = {"SLURM_JOB_END_TIME": "100000"}
    # the process started 300 s ago, at 99000 - 300; the job ends 1000 s from now
    assert timelimit.slurm_limit(env, now=lambda: 99000.0, started_ago=300.0) == pytest.approx(
        1000 + 300 - timelimit.AUTO_MARGIN)
    # a job without a time limit (Slurm puts its end a year on): no limit
    assert timelimit.slurm_limit({"SLURM_JOB_END_TIME": str(99000 + 366 * 86400)}, now=lambda: 99000.0,
                                 started_ago=0.0) is None


@pytest.mark.parametrize("job_age", [5.0, 3600.0, 3 * 86400.0])
def test_auto_in_a_job_without_a_time_limit_is_no_limit(job_age):
    """Slurm puts the end of a job without a time limit 365 days after its start, so the end less
    the margin, counted from a process that started after the job, was always under the 365 days
    taken for "no limit": the run printed an end a year on instead of "no time limit"."""
    now, started_ago = 99000.0, 2.0
    job_start = now - started_ago - job_age
    end = str(int(job_start + 365 * 86400))
    assert timelimit.slurm_limit({"SLURM_JOB_END_TIME": end, "SLURM_JOB_START_TIME": str(int(job_start))},
                                 now=lambda: now, started_ago=started_ago) is None
    assert timelimit.slurm_limit({"SLURM_JOB_END_TIME": end}, now=lambda: now, started_ago=started_ago) is None
    # a 30-day job is one with a limit, with or without its start time
    end = str(int(job_start + 30 * 86400))
    for env in ({"SLURM_JOB_END_TIME": end}, {"SLURM_JOB_END_TIME": end, "SLURM_JOB_START_TIME": str(int(job_start))}):
        assert timelimit.slurm_limit(env, now=lambda: now, started_ago=started_ago) == pytest.approx(
            int(end) - (now - started_ago) - timelimit.AUTO_MARGIN)


@pytest.mark.parametrize("env, said", [
    ({}, "SLURM_JOB_END_TIME is not set: this is not a Slurm job"),
    ({"SLURM_JOB_END_TIME": " "}, "SLURM_JOB_END_TIME is not set"),
    ({"SLURM_JOB_END_TIME": "tomorrow"}, "SLURM_JOB_END_TIME='tomorrow' is not a time"),
    ({"SLURM_JOB_END_TIME": "99030"}, r"the Slurm job ends in 30 s \(SLURM_JOB_END_TIME=99030\), less than the 60 s"),
    ({"SLURM_JOB_END_TIME": "98000"}, r"the Slurm job has ended \(SLURM_JOB_END_TIME=98000\)"),
    # no time Slurm writes: it was "the Slurm job ends now" (0, -5, nan) or "ends in inf s"
    ({"SLURM_JOB_END_TIME": "0"}, "SLURM_JOB_END_TIME='0' is not a time"),
    ({"SLURM_JOB_END_TIME": "-5"}, "SLURM_JOB_END_TIME='-5' is not a time"),
    ({"SLURM_JOB_END_TIME": "1e309"}, "SLURM_JOB_END_TIME='1e309' is not a time"),
    ({"SLURM_JOB_END_TIME": "nan"}, "SLURM_JOB_END_TIME='nan' is not a time"),
])
def test_auto_outside_a_slurm_job_or_at_its_end_is_refused_saying_why(env, said):
    with pytest.raises(ValueError, match=said):
        timelimit.slurm_limit(env, now=lambda: 99000.0, started_ago=10.0)


def test_time_limit_auto_on_the_command_line(tmp_path, monkeypatch, run_cli):
    """`--time-limit auto` in a job script: the limit is the Slurm job's end (less AUTO_MARGIN),
    counted from the process start like a written duration; outside Slurm, exit 2 before anything
    is built."""
    monkeypatch.setattr(timelimit, "process_age", lambda: 7200.0)
    out = tmp_path / "run"
    args = ["train", "--family", "bert", "--corpus", LEARNABLE, "--num-steps", "20", "--max-length", "64",
            "--global-batch-size", "8", "--micro-batch-size", "8", "-j", "1", "--time-limit", "auto"]
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    res = run_cli(*args, "-o", tmp_path / "bad")
    assert res.exit_code == 2 and "--time-limit (time_limit): SLURM_JOB_END_TIME is not set" in res.stderr
    assert not (tmp_path / "bad").exists()
    # the process started 2 h ago in a job that ends in 30 min: plenty for 20 tiny steps
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 1800))
    res = run_cli(*args, "-o", out)
    assert res.exit_code == 0, res.stderr
    assert "train: --time-limit auto: the Slurm job ends at " in res.stderr and "train: done, 20 steps" in res.stderr
    assert json.loads((out / "train_config.json").read_text())["time_limit"] is None
    # a job that ends 61 s from now: after the first step, the next one and its checkpoint would
    # come later than 1 s from now by the pace measured (the first save, estimated, takes 1 s)
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(time.time() + timelimit.AUTO_MARGIN + 1.0))
    res = run_cli(*args, "-o", tmp_path / "short")
    assert res.exit_code == 0, res.stderr
    assert "train: --time-limit auto: stopped after step 1 of 20, its checkpoint saved" in res.stderr
    # a job without a time limit
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 400 * 86400))
    res = run_cli(*args, "-o", tmp_path / "unlimited")
    assert res.exit_code == 0 and "the Slurm job has no time limit" in res.stderr


@pytest.mark.slow
def test_a_real_time_limit_ends_the_process_in_time(tmp_path):
    """The real clock, the real process: `--time-limit 15s` of a run that would take minutes ends
    before 15 s have passed since its start, with a checkpoint at the step it stopped after."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "protrans_cli", "train", "--family", "bert", "--corpus", LEARNABLE,
           "--num-steps", "100000", "--max-length", "64", "--global-batch-size", "16", "--micro-batch-size", "8",
           "-j", "1", "--save-every", "40", "-o", str(out), "--time-limit", "15s"]
    started, started_clock = time.monotonic(), time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    step = int(proc.stderr.split("stopped after step ")[1].split()[0])
    checkpoint = out / "checkpoints" / f"step_{step:08d}"
    assert checkpoint.is_dir()
    # What a scheduler's kill would cost is the checkpoint: its last file (SHA256SUMS, written
    # after the rest) landed within the limit with the exit's reserve still left. The exit itself
    # is a reserve of EXIT_SECONDS, an estimate that a loaded machine can overrun by a little.
    landed = max(f.stat().st_mtime for f in checkpoint.rglob("*") if f.is_file()) - started_clock
    assert landed < 15 - EXIT_SECONDS + 0.5, (landed, wall, step)  # (the process started after `started`)
    assert wall < 15 + 2.0, (wall, step)
    assert wall > 15 - EXIT_SECONDS - 10, (wall, step)  # it did not stop at once either


@pytest.mark.slow
def test_torchrun_ranks_out_of_time_stop_after_the_same_step(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "protrans_cli", "train", "--family", "bert", "--corpus", LEARNABLE, "--num-steps", "100000",
           "--max-length", "64", "--global-batch-size", "16", "--micro-batch-size", "4", "-j", "1",
           "--save-every", "100000", "-o", str(out), "--time-limit", "25s"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("train: --time-limit 25s: stopped after step") == 1, proc.stderr[-3000:]  # rank 0's
    step = int(proc.stderr.split("stopped after step ")[1].split()[0])
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{step:08d}"]
    import torch

    state = torch.load(out / "checkpoints" / f"step_{step:08d}" / "training_state.pt", weights_only=True)
    assert state["step"] == step and state["world_size"] == 2 and len(state["rng"]) == 2


def test_the_process_group_waits_as_long_as_dist_timeout_says(monkeypatch):
    """Under torchrun the ranks wait in a collective while rank 0 writes a checkpoint: NCCL's own
    10 minutes were short of a large model's save to a slow file system, and the job failed
    there. The group gets --dist-timeout (30 minutes unless given)."""
    import datetime

    import torch
    import torch.distributed as tdist

    from protrans_cli.training import dist

    real = tdist.init_process_group
    seen = []

    def one_rank(backend, **kwargs):  # the group of a world of one: the settings are what is tested
        seen.append(kwargs.get("timeout"))
        real(backend, rank=0, world_size=1, store=tdist.HashStore(), **kwargs)

    monkeypatch.setattr(tdist, "init_process_group", one_rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    for given, seconds in ((None, 1800), ("2h", 7200)):
        config = TrainConfig() if given is None else TrainConfig(dist_timeout=given)
        dist.setup(timeout=config.duration("dist_timeout"))
        try:
            group = tdist.distributed_c10d._get_default_group()
            assert group._get_backend(torch.device("cpu")).options._timeout == datetime.timedelta(seconds=seconds)
        finally:
            dist.cleanup()
    assert seen == [datetime.timedelta(seconds=1800), datetime.timedelta(seconds=7200)]
    with pytest.raises(UsageError, match=r"--dist-timeout \(dist_timeout\): not a duration: '10'"):
        TrainConfig(dist_timeout="10").check_values()


def _third_exchange_sets(monkeypatch, slot: int) -> None:
    """The step's exchange (_shared_counts: predicted tokens, then signal, time up, warning) of
    the third step returns `slot` set, as when another torchrun rank set it."""
    from protrans_cli.training import loop

    real = loop._shared_counts
    calls = []

    def another_rank(micro_batches, info, *flags):
        counts = list(real(micro_batches, info, *flags))
        calls.append(1)
        if len(calls) == 3:
            counts[slot] = True
        return tuple(counts)

    monkeypatch.setattr(loop, "_shared_counts", another_rank)


def test_a_signal_on_another_rank_stops_every_rank_as_a_signal_not_as_the_time_limit(tmp_path, monkeypatch):
    """Under torchrun a signal on one rank reaches the others through the step's exchange. With
    --time-limit given, the ranks without the signal took the stop for the time limit's: they
    printed "--time-limit ...: stopped after step N" and exited 0 while the signalled rank exited
    143 (seen with two torchrun ranks, SIGTERM to rank 1 only). Here one process, its exchange
    bringing another rank's signal at step 3."""
    _third_exchange_sets(monkeypatch, 1)  # a signal on another rank (none here, no time out either)
    monkeypatch.setattr(timelimit, "process_age", lambda: 0.0)  # an hour is plenty
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path / "run", time_limit="1h"))
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000003"]


def test_another_ranks_warning_stops_a_rank_with_a_time_limit_as_the_warning(tmp_path, monkeypatch):
    """A scheduler's warning (SIGUSR1) on one torchrun rank reaches the others in the step's
    exchange as a planned stop. A rank given --time-limit took it for its own time limit and said
    "--time-limit 1h: stopped after step 3" an hour early; it is the warning's stop now. Here one
    process, its exchange bringing another rank's warning at step 3."""
    _third_exchange_sets(monkeypatch, 3)  # a warning on another rank (no signal, no time out here)
    monkeypatch.setattr(timelimit, "process_age", lambda: 0.0)  # an hour is plenty
    result = train(_config(tmp_path / "run", time_limit="1h"))
    assert not result.completed and result.step == 3 and result.stopped_by == "warning"
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000003"]


def test_a_new_phase_scales_the_measured_steps_and_each_evaluation_is_timed(tmp_path, monkeypatch):
    """Within a run: at a phase of four times the tokens a step (twice the length, twice the
    batch) the steps measured stand for steps four times as long, and every evaluation's time is
    recorded (else the last step was chosen from the short steps of the phase before, or with no
    room for the evaluations, and the job outlived its limit)."""
    from protrans_cli.training.config import Phase

    seen = []

    class Recorded(Deadline):
        def rescale(self, factor):
            seen.append(("rescale", factor, bool(self.steps)))
            super().rescale(factor)

        def evaluated(self, seconds):
            seen.append(("evaluated", seconds >= 0))
            super().evaluated(seconds)

    monkeypatch.setattr(timelimit, "Deadline", Recorded)
    monkeypatch.setattr(timelimit, "process_age", lambda: 0.0)  # an hour is plenty
    phases = [Phase(max_length=32, num_steps=3, global_batch_size=8),
              Phase(max_length=64, num_steps=3, global_batch_size=16)]
    result = train(_config(tmp_path, num_steps=1000, phases=phases, micro_batch_size=8, val_corpus=[LEARNABLE],
                           eval_every=2, log_every=2, time_limit="1h"))
    assert result.completed and result.step == 6
    assert seen == [("evaluated", True), ("rescale", 4.0, True), ("evaluated", True), ("evaluated", True)], seen


def test_two_evaluations_between_the_decision_and_the_next_steps_checkpoint_are_both_reserved(tmp_path):
    """With --eval-every 1 an evaluation follows this step and another the next: only one was
    reserved, and a run of 1 s steps and 10 s evaluations saved its last checkpoint as the 100 s
    limit came (and exited 2 s after it)."""
    from protrans_cli.training.loop import _out_of_time

    config = _config(tmp_path, val_corpus=[LEARNABLE], eval_every=1, num_steps=100)
    clock = _Clock()
    deadline = Deadline(100, clock=clock, started_ago=0)
    deadline.saved(1.0)
    start, step = clock.now, 0
    while True:
        step += 1
        stop = _out_of_time(deadline, config, step, 100)
        clock.now += 1.0 + 10.0  # the step, then its evaluation
        deadline.evaluated(10.0)
        if stop:
            clock.now += 1.0  # its checkpoint
            break
    assert clock.now - start + EXIT_SECONDS <= 100, step


def test_dist_timeout_none_is_pytorchs_default_as_validate_accepts_it():
    # validate() let dist_timeout=None through (from Python, or null in a JSON config), and
    # train() then refused it: "--dist-timeout (dist_timeout): a duration is text ..., got None"
    from protrans_cli.training.config import TrainConfig

    config = TrainConfig(corpus=["c.txt"], dist_timeout=None)
    config.validate()
    assert config.duration("dist_timeout") is None and config.duration("time_limit") is None
    assert TrainConfig(corpus=["c.txt"]).duration("dist_timeout") == 1800


def test_the_step_before_a_periodic_save_budgets_that_save_too():
    """--save-every: the step after which a checkpoint is saved anyway has that save in its budget
    beside the stop's own (`saves_after`); the other steps have only the stop's. Asked of a deadline
    that records what it is told, over steps 1-12 of a 20-step run saving every 5."""
    from protrans_cli.training.loop import _out_of_time

    told = []

    class Recording:
        step_seconds = 1.0

        def stop_after_next(self, **kwargs):
            told.append(kwargs)
            return False

    config = TrainConfig(save_every=5)
    for step in range(1, 13):
        assert not _out_of_time(Recording(), config, step, total_steps=20)
    assert [t["saves_after"] for t in told] == [step % 5 == 0 for step in range(1, 13)]
    assert not any(t["exports"] for t in told)


def test_process_age_counts_from_the_process_start():
    """A time limit counts from the start of the process (Python's imports and the model's building
    included): process_age reads it from /proc, which every other test here stands in for with
    `started_ago`. A wrong field of /proc/self/stat read the age as 0 (the budget counted from the
    first step, and the last checkpoint landed after the job's end) or as a huge age (a run that
    stopped at once)."""
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("needs Linux's /proc")
    code = ("import time; time.sleep(1.5); from protrans_cli.training.timelimit import process_age; "
            "print(process_age())")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    age = float(out.stdout)
    assert 1.5 <= age <= time.monotonic() - started + 0.5, age  # (clock ticks: 1/100 s)
    assert timelimit.process_age() > 0  # (pytest's own process, seconds old at least)

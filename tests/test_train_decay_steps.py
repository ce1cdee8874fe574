"""train --decay-steps: where a linear or cosine decay reaches lr x min_lr_ratio (then held),
ESM-2's recipe (a tenth of the peak at step 450,000 of 500,000)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from conftest import DATA
from protrans_cli.errors import UsageError
from protrans_cli.training.config import TrainConfig
from protrans_cli.training.optim import LRLambda, build_scheduler

LEARNABLE = str(DATA / "train" / "learnable.txt")

# warmup 2 of 10 steps, the decay to 0.1 ending at step 6, written out by hand: the warmup's
# (step + 1) / 2, then progress (step - 2) / 4 (0, 1/4, 1/2, 3/4, 1), the floor held after it
LINEAR = [0.5, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1, 0.1, 0.1, 0.1, 0.1]
# cosine: 0.1 + 0.9 x (1 + cos(pi x progress)) / 2; cos(pi/4) = 0.70710678...
COSINE = [0.5, 1.0, 1.0, 0.1 + 0.45 * 1.7071067811865475, 0.55, 0.1 + 0.45 * 0.2928932188134524, 0.1, 0.1, 0.1,
          0.1, 0.1]


@pytest.mark.parametrize("schedule,expected", [("linear", LINEAR), ("cosine", COSINE)])
def test_the_decay_ends_at_decay_steps_and_holds_the_floor(schedule, expected):
    fn = LRLambda(schedule, 2, 10, 0.1, decay_steps=6)
    assert [fn(s) for s in range(11)] == pytest.approx(expected, rel=1e-12)
    assert all(fn(s) == pytest.approx(0.1) for s in range(6, 1000))  # (held, also past the run's end)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_no_decay_steps_is_the_decay_over_the_whole_run_as_before(schedule):
    """None (the default): every multiplier of a small run as the schedule computed them before
    decay_steps existed (the formulas written out here), and as decay_steps = the run's steps."""
    def before(step):
        if step < 2:
            return (step + 1) / 2
        progress = min(1.0, (step - 2) / 8)
        return (1 - 0.9 * progress if schedule == "linear"
                else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    fn = LRLambda(schedule, 2, 10, 0.1)
    assert fn.decay_steps is None
    assert [fn(s) for s in range(12)] == [before(s) for s in range(12)]
    assert [LRLambda(schedule, 2, 10, 0.1, decay_steps=10)(s) for s in range(12)] == [before(s) for s in range(12)]


def test_a_decay_that_ends_after_the_run_is_a_slower_one():
    """decay_steps beyond the run's steps is taken with the same formula (train warns): at the
    last step the lr is still above the floor."""
    fn = LRLambda("linear", 2, 10, 0.1, decay_steps=18)
    assert fn(10) == pytest.approx(1 - 0.9 * 8 / 16) and fn(18) == pytest.approx(0.1)


def test_a_scheduler_state_saved_before_decay_steps_resumes_as_it_was():
    """LambdaLR's state_dict keeps the lambda's fields: one written before decay_steps existed has
    none, and loads into today's lambda (decay_steps None), or into a lambda without the field."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    old = torch.optim.lr_scheduler.LambdaLR(optimizer, LRLambda("linear", 2, 10, 0.1))
    for _ in range(4):
        optimizer.step()
        old.step()
    state = old.state_dict()
    del state["lr_lambdas"][0]["decay_steps"]
    config = TrainConfig(family="bert", lr=1.0, warmup_steps=2, min_lr_ratio=0.1)
    new = build_scheduler(optimizer, config, 10)
    new.load_state_dict(state)
    assert new.last_epoch == 4 and new.lr_lambdas[0](4) == pytest.approx(1 - 0.9 * 2 / 8)
    bare = LRLambda("linear", 2, 10, 0.1)
    del bare.decay_steps
    assert [bare(s) for s in range(11)] == [LRLambda("linear", 2, 10, 0.1)(s) for s in range(11)]


def test_build_scheduler_takes_the_configs_decay_steps():
    config = TrainConfig(family="bert", lr=1e-3, warmup_steps=2, min_lr_ratio=0.1, decay_steps=6)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, 10)
    seen = []
    for _ in range(11):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1e-3 * m for m in LINEAR], rel=1e-12)


@pytest.mark.parametrize("settings,message", [
    (dict(decay_steps=3, warmup_steps=3), r"^--decay-steps \(decay_steps\) must be after the warmup: above "
                                          r"--warmup-steps 3, got 3$"),
    (dict(decay_steps=0, warmup_steps=0), r"must be after the warmup: above --warmup-steps 0, got 0$"),
    (dict(decay_steps=10, num_steps=1000), r"must be after the warmup: above the warmup steps \(a tenth of the "
                                           r"run, at most 2000\) 100, got 10$"),
    (dict(decay_steps=50, schedule="wsd"), r"^--decay-steps \(decay_steps\) goes with --schedule linear or cosine "
                                           r"\(where their decay ends\), not wsd: wsd's decay is the last "
                                           r"--decay-fraction of the steps$"),
    (dict(decay_steps=50, schedule="constant"), r"goes with --schedule linear or cosine \(where their decay "
                                                r"ends\), not constant$"),
    (dict(decay_steps=50, schedule="inverse_sqrt"), r"not inverse_sqrt$"),
    (dict(decay_steps=5.5), r"^--decay-steps \(decay_steps\) must be a number of steps, got 5.5$"),
])
def test_decay_steps_is_checked(settings, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(family="bert", **settings).check_values()
    TrainConfig(family="bert", decay_steps=101, num_steps=1000).check_values()
    TrainConfig(family="bert", decay_steps=5000, num_steps=1000, schedule="cosine").check_values()


def test_a_config_file_with_decay_steps_names_the_file(tmp_path, run_cli):
    config = tmp_path / "run.toml"
    config.write_text('schedule = "wsd"\ndecay_steps = 40\n')
    res = run_cli("train", "--config", config, "--corpus", LEARNABLE, "-o", tmp_path / "a")
    assert res.exit_code == 2 and str(config) in res.stderr and "goes with --schedule linear" in res.stderr
    config.write_text('decay_steps = "40"\n')
    res = run_cli("train", "--config", config, "--corpus", LEARNABLE, "-o", tmp_path / "a")
    assert res.exit_code == 2 and "decay_steps must be" in res.stderr, res.stderr


def test_resume_refuses_another_decay_steps_and_one_a_checkpoint_did_not_have(tmp_path):
    """As --schedule and --min-lr-ratio: another decay_steps on a resume is refused; a checkpoint
    written before decay_steps existed decayed to the last step (None), and resumes so."""
    from protrans_cli.training.checkpoint import resumed_config

    where = tmp_path / "step_00000002"
    where.mkdir()
    config = TrainConfig(family="bert", corpus=[LEARNABLE], num_steps=30, warmup_steps=3, decay_steps=20,
                         precision="fp32")
    config.save(where / "train_config.json")
    assert resumed_config(dataclasses.replace(config, num_steps=60), where).decay_steps == 20
    for other in (10, None):
        with pytest.raises(UsageError, match=f"with other settings \\(decay_steps: 20 there, {other} here"):
            resumed_config(dataclasses.replace(config, decay_steps=other), where)
    saved = json.loads((where / "train_config.json").read_text())
    del saved["decay_steps"]
    (where / "train_config.json").write_text(json.dumps(saved))
    assert resumed_config(dataclasses.replace(config, decay_steps=None), where).decay_steps is None
    with pytest.raises(UsageError, match="with other settings \\(decay_steps: None there, 20 here"):
        resumed_config(config, where)


def _lrs(run_dir):
    return [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "lr" in json.loads(line)]


def test_cli_decay_steps_holds_the_floor_in_metrics_and_across_a_resume(tmp_path, run_cli):
    """`protrans train --decay-steps 5`: metrics.jsonl's lr column (step s trains at the
    multiplier of s - 1) decays to the floor after 5 steps and holds it; a run stopped at step 4
    and resumed logs the same lrs; the model card says where the decay ends."""
    args = ["train", "--corpus", LEARNABLE, "--num-steps", 8, "--max-length", 32, "--global-batch-size", 4,
            "--micro-batch-size", 4, "--save-every", 100, "-j", 1, "--warmup-steps", 2, "--decay-steps", 5,
            "--log-every", 1, "--lr", "1e-3"]
    res = run_cli(*args, "-o", tmp_path / "a")
    assert res.exit_code == 0, res.stderr
    assert _lrs(tmp_path / "a") == pytest.approx([5e-4, 1e-3, 1e-3, 7e-4, 4e-4, 1e-4, 1e-4, 1e-4], rel=1e-9)
    assert "linear decay to 0.1 of the peak at step 5, held after it" in (tmp_path / "a" / "README.md").read_text()
    res = run_cli(*args, "--stop-after", 4, "-o", tmp_path / "b")
    assert res.exit_code == 0, res.stderr
    res = run_cli("train", "--resume", "-o", tmp_path / "b", "-j", 1)
    assert res.exit_code == 0, res.stderr
    assert _lrs(tmp_path / "b") == pytest.approx(_lrs(tmp_path / "a"), rel=1e-12)
    res = run_cli("train", "--resume", "-o", tmp_path / "b", "-j", 1, "--num-steps", 10, "--decay-steps", 6)
    assert res.exit_code == 2 and "decay_steps: 5 there, 6 here" in res.stderr, res.stderr


def test_cli_decay_steps_after_the_run_is_warned_about(tmp_path, run_cli):
    res = run_cli("train", "--corpus", LEARNABLE, "--num-steps", 3, "--max-length", 32, "--global-batch-size", 4,
                  "--micro-batch-size", 4, "--save-every", 100, "-j", 1, "--warmup-steps", 1, "--decay-steps", 5,
                  "--log-every", 1, "--lr", "1e-3", "-o", tmp_path / "a")
    assert res.exit_code == 0, res.stderr
    # (the last step trains at the multiplier of step 2: 1 - 0.9 x 1/4, a quarter of the decay from 1 to 5)
    assert ("protrans: warning: --decay-steps 5 is after the run's 3 steps: its last step trains at 0.775 x --lr 0.001, "
            "above the floor (--min-lr-ratio 0.1), which the linear decay reaches at step 5") in res.stderr


def test_decay_steps_counts_the_steps_of_every_phase_together(tmp_path, run_cli):
    """With --phase, decay_steps is a step of the whole run (the schedule spans every phase): the
    floor is reached in the second phase."""
    res = run_cli("train", "--corpus", LEARNABLE, "--phase", "32:3:4:4", "--phase", "64:3:4:4", "--save-every",
                  100, "-j", 1, "--warmup-steps", 1, "--decay-steps", 4, "--log-every", 1, "--lr", "1e-3",
                  "-o", tmp_path / "a")
    assert res.exit_code == 0, res.stderr
    assert _lrs(tmp_path / "a") == pytest.approx([1e-3, 1e-3, 7e-4, 4e-4, 1e-4, 1e-4], rel=1e-9)

"""train --wandb: metrics.jsonl's lines logged to Weights & Biases, against a stand-in `wandb`
module that records what it is given and refuses, as W&B does, a step that goes back; and, where
the wandb package is installed, a real offline run."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from conftest import DATA
from protrans_cli.training.config import TrainConfig
from protrans_cli.training.loop import train
from protrans_cli.training.metrics import TensorBoardLog, read_metrics

LEARNABLE = str(DATA / "train" / "learnable.txt")
KW = dict(family="bert", corpus=[LEARNABLE], num_steps=6, max_length=32, global_batch_size=4, micro_batch_size=4,
          lr=3e-3, warmup_steps=1, log_every=1, save_every=2, threads=1, bucket_batches=4, wandb=True)


class FakeWandb:
    """What wandb.init/run.log/run.finish were given, by run id; a step not above the id's last
    one is refused (W&B: "step must only increase")."""

    def __init__(self, fail_init=False):
        self.inits, self.logs, self.finished, self.fail_init = [], {}, {}, fail_init
        module = types.ModuleType("wandb")
        module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        module.init = self.init
        self.module = module

    def init(self, **kw):
        if self.fail_init:
            raise RuntimeError("api_key not configured (no-tty)\ncall wandb.login(key=[your_api_key])")
        self.inits.append(kw)
        fake, run_id = self, kw["id"]

        class Run:
            def log(self, values, step):
                seen = fake.logs.setdefault(run_id, [])
                if seen and step <= seen[-1][0]:
                    raise AssertionError(f"W&B refuses step {step} after {seen[-1][0]} in run {run_id}")
                seen.append((step, values))

            def finish(self, exit_code=0):
                fake.finished[run_id] = exit_code

        return Run()


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake.module)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    return fake


def _expected(rows):
    """metrics.jsonl's lines as the W&B values (TensorBoard's names)."""
    return [(r["step"], {TensorBoardLog.tag(k): v for k, v in r.items()
                         if k not in ("step", "phase") and isinstance(v, (int, float)) and not isinstance(v, bool)})
            for r in rows]


def test_wandb_logs_each_metrics_line_and_a_resume_continues_the_same_run(tmp_path, fake_wandb):
    out = str(tmp_path / "run")
    kw = dict(KW, output_dir=out, val_corpus=[LEARNABLE], eval_every=3, num_eval_batches=1)
    train(TrainConfig(**kw, stop_after=4))
    (first,) = fake_wandb.inits
    assert first["project"] == "protrans" and first["name"] == "run" and first["resume"] == "allow"
    assert first["dir"] == out and first["notes"] is None
    # the resolved settings, a plain dict (JSON), as the run saved them
    assert first["config"]["lr"] == 3e-3 and first["config"]["wandb"] is True and first["config"]["warmup_steps"] == 1
    assert first["config"]["corpus"] == [os.path.abspath(LEARNABLE)] and json.dumps(first["config"])
    run_id = first["id"]
    assert fake_wandb.finished == {run_id: 0}
    assert json.loads((tmp_path / "run" / "wandb_run.json").read_text())["last_step"] == 4
    train(TrainConfig(**kw), resume=True)
    assert [i["id"] for i in fake_wandb.inits] == [run_id, run_id] and fake_wandb.inits[1]["name"] == "run"
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [s for s, _ in fake_wandb.logs[run_id]] == [1, 2, 3, 4, 5, 6]
    assert fake_wandb.logs[run_id] == _expected(rows)
    assert [s for s, v in fake_wandb.logs[run_id] if "eval/loss" in v] == [3, 6]
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/epoch"} <= set(fake_wandb.logs[run_id][0][1])


def test_a_resume_behind_what_wandb_saw_starts_a_new_run_with_the_whole_curve(tmp_path, fake_wandb):
    """Killed after logging step 5, resumed from its step-4 checkpoint: W&B would refuse steps 5
    and 6 in the same run; a new W&B run NAME-resumed-4 gets metrics.jsonl's lines 1-4, then 5-6.
    The same after a resume without --wandb went back behind what W&B saw."""
    for between in (None, "off"):
        out = tmp_path / f"run_{between}"
        kw = dict(KW, output_dir=str(out))
        train(TrainConfig(**kw, stop_after=5))
        shutil.rmtree(out / "checkpoints" / "step_00000005")
        first = fake_wandb.inits[-1]["id"]
        if between == "off":  # from step 4, to 6, without W&B; its step-6 checkpoint removed
            train(TrainConfig(**dict(kw, wandb=False)), resume=True)
            shutil.rmtree(out / "checkpoints" / "step_00000006")
            assert json.loads((out / "wandb_run.json").read_text())["abandoned"] is True
        train(TrainConfig(**kw), resume=True)
        again = fake_wandb.inits[-1]
        assert again["id"] != first and again["name"] == f"run_{between}-resumed-4"
        assert f"W&B run {first} had steps after it (up to 5)" in again["notes"]
        rows = read_metrics(out / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
        assert fake_wandb.logs[again["id"]] == _expected(rows)
        assert [s for s, _ in fake_wandb.logs[first]] == [1, 2, 3, 4, 5]
        assert fake_wandb.finished[again["id"]] == 0


def test_wandb_turned_on_at_a_resume_gets_the_lines_before_it(tmp_path, fake_wandb):
    out = tmp_path / "run"
    train(TrainConfig(**dict(KW, wandb=False), output_dir=str(out), stop_after=4))
    assert not (out / "wandb_run.json").exists() and not fake_wandb.inits
    train(TrainConfig(**KW, output_dir=str(out)), resume=True)
    (init,) = fake_wandb.inits
    assert init["name"] == "run" and init["notes"] is None
    assert fake_wandb.logs[init["id"]] == _expected(read_metrics(out / "metrics.jsonl"))
    assert [s for s, _ in fake_wandb.logs[init["id"]]] == [1, 2, 3, 4, 5, 6]


def test_a_failed_run_finishes_its_wandb_run_with_the_failure(tmp_path, fake_wandb, monkeypatch):
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.training import loop

    real, calls = loop.train_step, []

    def diverging(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise loop.NonFiniteGradient(float("nan"))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", diverging)
    with pytest.raises(RuntimeFailure):
        train(TrainConfig(**KW, output_dir=str(tmp_path / "run")))
    (run_id,) = fake_wandb.logs
    assert [s for s, _ in fake_wandb.logs[run_id]] == [1, 2, 3] and fake_wandb.finished == {run_id: 1}
    # a second Ctrl-C (stops at once, no checkpoint): finished with 130, as the process exits
    calls.clear()

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**KW, output_dir=str(tmp_path / "ctrl_c")))
    assert fake_wandb.finished[fake_wandb.inits[-1]["id"]] == 130 and len(fake_wandb.finished) == 2


def test_a_wandb_failure_is_a_warning_and_training_goes_on(tmp_path, monkeypatch, capsys):
    fake = FakeWandb(fail_init=True)
    monkeypatch.setitem(sys.modules, "wandb", fake.module)
    result = train(TrainConfig(**KW, output_dir=str(tmp_path / "run")))
    assert result.completed and result.step == 6
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    err = capsys.readouterr().err
    assert err.count("--wandb: wandb.init failed (RuntimeError: api_key not configured (no-tty)): training goes on "
                     "without W&B (metrics.jsonl has every line)") == 1, err


def test_wandb_on_the_command_line(tmp_path, run_cli, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    res = run_cli("train", "--family", "bert", "--preset", "tiny", "--corpus", LEARNABLE, "-o", tmp_path / "cli",
                  "--num-steps", "2", "--log-every", "1", "--wandb", "--wandb-name", "first try")
    assert res.exit_code == 0, res.stderr
    (init,) = fake_wandb.inits
    assert init["project"] == "from-env" and init["name"] == "first try"
    assert (f"train: logging to W&B project from-env, run first try (id {init['id']}; files in "
            f"{tmp_path / 'cli' / 'wandb'})") in res.stderr
    saved = json.loads((tmp_path / "cli" / "train_config.json").read_text())
    assert saved["wandb"] is True and saved["wandb_name"] == "first try"
    # --resume (for more steps) takes --wandb from the run's settings: the same W&B run
    res = run_cli("train", "--resume", "-o", tmp_path / "cli", "--num-steps", "3", "--wandb-project", "other")
    assert res.exit_code == 0, res.stderr
    # (another project: W&B cannot continue the run there; a new one, with the whole curve)
    assert fake_wandb.inits[1]["project"] == "other" and fake_wandb.inits[1]["id"] != init["id"]
    assert [s for s, _ in fake_wandb.logs[fake_wandb.inits[1]["id"]]] == [1, 2, 3]


def test_wandb_without_the_package_is_a_usage_error_before_any_model(tmp_path, run_cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    res = run_cli("train", "--family", "bert", "--preset", "tiny", "--corpus", LEARNABLE, "-o", tmp_path / "none",
                  "--num-steps", "2", "--wandb")
    assert res.exit_code == 2, res.stderr
    assert "--wandb needs the wandb package, which is not installed: pip install wandb" in res.stderr
    assert "parameters" not in res.stderr and not (tmp_path / "none").exists()


def test_help_imports_no_wandb():
    from conftest import heavy_imports_of

    done = heavy_imports_of([["--help"], ["train", "--help"]], ("wandb", "torch"))
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_real_offline_wandb_run(tmp_path):
    """The wandb package itself (skipped where it is not installed), WANDB_MODE=offline: the run's
    files land in RUN/wandb/offline-run-*, and a resume continues the same run id."""
    pytest.importorskip("wandb")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("WANDB_DIR", None)
    base = [sys.executable, "-m", "protrans_cli", "train", "--family", "bert", "--preset", "tiny", "--corpus",
            LEARNABLE, "-o", str(tmp_path / "run"), "--log-every", "1", "--save-every", "2", "-j", "1"]
    done = subprocess.run([*base, "--num-steps", "2", "--wandb"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--wandb:" not in done.stderr, done.stderr
    record = json.loads((tmp_path / "run" / "wandb_run.json").read_text())
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith("-" + record["id"]), runs
    assert (runs[0] / f"run-{record['id']}.wandb").is_file()
    resume = [sys.executable, "-m", "protrans_cli", "train", "--resume", "-o", str(tmp_path / "run"), "--num-steps", "3"]
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "wandb_run.json").read_text()) == {**record, "last_step": 3}


def test_find_lr_ignores_wandb_with_a_word_and_needs_no_package(tmp_path, run_cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    res = run_cli("train", "--corpus", LEARNABLE, "--find-lr", "--max-length", 32, "-j", 1, "--num-steps", 10,
                  "--wandb", "--wandb-project", "p", "-o", tmp_path / "a")
    assert res.exit_code == 0, res.stderr
    assert "--find-lr trains no run: --wandb, --wandb-project ignored" in res.stderr, res.stderr

"""`protrans train` end to end on CPU with tiny presets: every family learns, saves an HF directory
that load_model / AutoModel / `protrans embed` read back, resumes exactly, and the CLI honours
config files, flags and its errors."""

from __future__ import annotations

import dataclasses

import itertools
import json
import math
import os
import re
import signal
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA, another_process
from protrans_cli.errors import InputError, RuntimeFailure, UsageError
from protrans_cli.models import FAMILIES
from protrans_cli.training.config import Phase, TrainConfig
from protrans_cli.training.loop import train
from protrans_cli.training.lr_finder import find_lr
from protrans_cli.training.metrics import read_metrics

TRAIN = DATA / "train"
LEARNABLE = str(TRAIN / "learnable.txt")
GOLDEN = TRAIN / "golden_bert_tiny.json"

torch.set_num_threads(1)


def _config(tmp_path, family="bert", **kw):
    args = dict(family=None if kw.get("init_from") else family, corpus=[LEARNABLE], output_dir=str(tmp_path / f"run_{family}"),
                num_steps=30, max_length=64, global_batch_size=16, micro_batch_size=8, lr=3e-3,
                warmup_steps=3, log_every=5, save_every=1000, threads=1, bucket_batches=4)
    args.update(kw)
    return TrainConfig(**args)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_learns_and_round_trips(tmp_path, family, run_cli):
    result = train(_config(tmp_path, family))
    run = result.run_dir
    assert result.completed and result.step == 30
    assert len(result.losses) == 6
    assert result.losses[-1] < 0.9 * result.losses[0], result.losses  # it learns
    # The run directory is an HF model directory: load_model, Auto classes and embed read it.
    from transformers import AutoConfig, AutoTokenizer

    from protrans_cli.models import load_model

    loaded = load_model(run)
    assert loaded.family.name == family
    assert AutoConfig.from_pretrained(run).model_type in FAMILIES[family].model_types
    from protrans_cli import __version__

    stamped = json.loads((run / "config.json").read_text())  # the versions that wrote it
    assert stamped["protrans_version"] == __version__ and stamped["torch_version"] == torch.__version__.split("+")[0]
    tokenizer = AutoTokenizer.from_pretrained(run)
    original = FAMILIES[family].build_tokenizer()
    probe = FAMILIES[family].prepare("MKTAYIAKQR")
    assert tokenizer(probe)["input_ids"] == original(probe)["input_ids"]
    inputs, residue_mask = loaded.family.encode(loaded.tokenizer, ["MKTAYIAKQR", "GSSG"])
    (hidden,) = loaded.family.hidden_states(loaded.model, inputs, [-1])
    assert residue_mask.sum().item() == 14 and torch.isfinite(hidden).all()
    # The final checkpoint holds the same weights as the exported model.
    from safetensors.torch import load_file

    final_ckpt = result.last_checkpoint
    exported, in_ckpt = load_file(run / "model.safetensors"), load_file(final_ckpt / "model.safetensors")
    assert exported.keys() == in_ckpt.keys() and len(exported) > 0
    assert all(torch.equal(exported[k], in_ckpt[k]) for k in exported)
    # `protrans embed -m RUN` reads it too.
    fasta = tmp_path / "q.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nGSSGSSGHHH\n")
    out = tmp_path / "q.h5"
    res = run_cli("embed", fasta, "-m", run, "-o", out, "--per-protein")
    assert res.exit_code == 0, res.stderr
    assert out.is_file()
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert {"loss", "lr", "tokens_per_s", "accuracy", "grad_norm"} <= set(rows[0])
    assert (run / "loss_curve.png").stat().st_size > 1000
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["family"] == family and saved["num_steps"] == 30


@pytest.mark.parametrize("family, num_workers", [("bert", 0), ("electra", 0), ("bert", 1)])
def test_resume_matches_an_uninterrupted_run(tmp_path, family, num_workers):
    # Two phases (64 then 96 tokens), dropout on, interrupted inside each phase; with a
    # DataLoader worker too (its creation must not draw from the restored global RNG).
    kw = dict(num_steps=0, phases=[Phase(64, 6), Phase(96, 6, 8, 4)], log_every=1, save_every=100,
              bucket_batches=2, seed=5, num_workers=num_workers)
    whole = train(_config(tmp_path / "whole", family, **kw))
    part1 = train(_config(tmp_path / "parts", family, stop_after=4, **kw))
    assert not part1.completed and part1.last_checkpoint.name == "step_00000004"
    assert (part1.run_dir / "loss_curve.png").is_file()  # a stopped run's curve so far (was: only at the end)
    part2 = train(_config(tmp_path / "parts", family, stop_after=9, **kw), resume=True)
    part3 = train(_config(tmp_path / "parts", family, **kw), resume=True)
    assert part3.completed and part3.step == 12
    assert part1.losses + part2.losses + part3.losses == whole.losses  # bit for bit on CPU
    assert len(whole.losses) == 12
    from safetensors.torch import load_file

    a = load_file(whole.run_dir / "model.safetensors")
    b = load_file(part3.run_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = read_metrics(part3.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))  # no step logged twice


def test_golden_losses_of_a_tiny_bert_run(tmp_path):
    cfg = _config(tmp_path, num_steps=10, log_every=1, seed=0)
    losses = train(cfg).losses
    if os.environ.get("PROTRANS_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"config": "tests/test_train_loop.py::test_golden_losses_of_a_tiny_bert_run",
                                      "losses": losses}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["losses"]
    assert len(golden) == len(losses) == 10
    np.testing.assert_allclose(losses, golden, rtol=2e-4)


def test_checkpoints_keep_last_k_and_eval_loss(tmp_path):
    cfg = _config(tmp_path, num_steps=8, save_every=2, keep_last=2, log_every=2, eval_every=4,
                  val_corpus=[str(TRAIN / "learnable_shard2.txt.gz")], num_eval_batches=2)
    result = train(cfg)
    ckpts = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_00000006", "step_00000008"]  # no temporary directory left behind
    for p in (result.run_dir / "checkpoints").iterdir():
        saved = json.loads((p / "train_config.json").read_text())
        assert saved == json.loads((result.run_dir / "train_config.json").read_text())
    state = torch.load(result.last_checkpoint / "training_state.pt", weights_only=True)
    assert state["step"] == 8 and {"optimizer", "scheduler", "data_state", "rng"} <= set(state)
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]  # every 4 steps; the final evaluation is step 8's, once
    assert all("loss" in r for r in rows)  # no line of its own for the final evaluation
    assert all(0 < r["eval_loss"] < 10 for r in evals)


def _unlike_the_corpus(tmp_path):
    """A validation corpus of random proteins: a model trained on learnable.txt's motifs gets
    better at it for about 10 steps, then worse (a small domain corpus that overfits)."""
    import random

    rng = random.Random(0)
    path = tmp_path / "random_val.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(20, 50)))
                            + "\n\n" for _ in range(64)))
    return str(path)


def _keep_best_config(tmp_path, **kw):
    return _config(tmp_path, num_steps=20, save_every=5, eval_every=5, keep_last=1, keep_best=True,
                   val_corpus=[_unlike_the_corpus(tmp_path)], num_eval_batches=2, **kw)


def _checkpoints(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_keep_best_keeps_the_lowest_eval_loss_checkpoint_past_keep_last(tmp_path, run_cli):
    """--keep-last 1 deleted the checkpoint with the best eval loss, and nothing said which step
    it was: --keep-best keeps it besides the last, records it, and the model in RUN stays the last
    step's. Set from a config file here, as every other setting."""
    cfg = _keep_best_config(tmp_path)
    config_file = tmp_path / "kb.toml"
    config_file.write_text("keep_best = true\nnum_eval_batches = 2\n")
    res = run_cli("train", "--config", config_file, "--corpus", LEARNABLE, "--val-corpus", cfg.val_corpus[0],
                  "-o", cfg.output_dir, "--num-steps", 20, "--max-length", 64, "--global-batch-size", 16,
                  "--micro-batch-size", 8, "--lr", 3e-3, "--warmup-steps", 3, "--log-every", 5,
                  "--save-every", 5, "--eval-every", 5, "--keep-last", 1, "-j", 1)
    assert res.exit_code == 0, res.stderr
    run = Path(cfg.output_dir)
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(run / "metrics.jsonl") if "eval_loss" in r}
    assert sorted(evals) == [5, 10, 15, 20]  # every checkpoint evaluated
    best_step = min(evals, key=lambda s: (evals[s], s))  # the lowest, the earliest of equals
    assert best_step not in (5, 20), evals  # (what the test is about: neither the first nor the last)
    recorded = json.loads((run / "best_checkpoint.json").read_text())
    assert recorded == {"step": best_step, "eval_loss": evals[best_step],
                        "checkpoint": f"checkpoints/step_{best_step:08d}"}
    # kept besides the last (--keep-last 1); every other checkpoint pruned
    assert _checkpoints(run) == [f"step_{best_step:08d}", "step_00000020"]
    assert (f"; best eval loss {evals[best_step]:.4f} at step {best_step}: {run / recorded['checkpoint']}"
            in res.stderr.splitlines()[-1])
    # a complete HF directory, as every checkpoint
    from safetensors.torch import load_file
    from transformers import AutoModel

    best = run / recorded["checkpoint"]
    assert AutoModel.from_pretrained(best) is not None
    fasta = tmp_path / "q.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    assert run_cli("embed", fasta, "-m", best, "-o", tmp_path / "q.h5", "--per-protein").exit_code == 0
    # the final model is the last step's, not swapped for the best
    last, final, kept = (load_file(p / "model.safetensors") for p in (run / "checkpoints" / "step_00000020", run, best))
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert not all(torch.equal(final[k], kept[k]) for k in final)
    assert torch.load(best / "training_state.pt", weights_only=True)["best"] == {
        "step": best_step, "eval_loss": evals[best_step], "val_corpus": [os.path.abspath(cfg.val_corpus[0])],
        "num_eval_batches": 2}


def test_keep_best_ties_keep_the_earlier_checkpoint_and_a_failed_evaluation_is_none(tmp_path, monkeypatch):
    from protrans_cli.training import loop

    scripted = iter([3.0, 2.0, math.nan, 2.0])  # the eval losses of steps 2, 4, 6, 8
    monkeypatch.setattr(loop, "evaluate", lambda run, phase: next(scripted))
    result = train(_config(tmp_path, num_steps=8, save_every=2, eval_every=2, keep_last=1, keep_best=True,
                           val_corpus=[LEARNABLE]))
    assert (result.best_checkpoint, result.best_eval_loss) == (result.run_dir / "checkpoints" / "step_00000004", 2.0)
    assert _checkpoints(result.run_dir) == ["step_00000004", "step_00000008"]
    assert json.loads((result.run_dir / "best_checkpoint.json").read_text())["step"] == 4


def test_keep_best_records_a_new_best_before_it_prunes_the_old_one(tmp_path, monkeypatch):
    """The record was written after the pruning: a kill between the two left it naming the best
    before, already pruned. Every pruning now finds the record naming a checkpoint that is there."""
    from protrans_cli.training import checkpoint as ckpt
    from protrans_cli.training import loop

    scripted = iter([3.0, 2.0, 1.0, 4.0])  # the eval losses of steps 2, 4, 6, 8: a new best twice
    monkeypatch.setattr(loop, "evaluate", lambda run, phase: next(scripted))
    real, seen = ckpt.prune_checkpoints, []

    def prune(run_dir, keep_last, *, keep_step=None):  # (a kill right after it: what the record names)
        real(run_dir, keep_last, keep_step=keep_step)
        record = Path(run_dir) / "best_checkpoint.json"
        if record.is_file():
            named = json.loads(record.read_text())
            seen.append((named["step"], (Path(run_dir) / named["checkpoint"]).is_dir()))

    monkeypatch.setattr(ckpt, "prune_checkpoints", prune)
    result = train(_config(tmp_path, num_steps=8, save_every=2, eval_every=2, keep_last=1, keep_best=True,
                           val_corpus=[LEARNABLE]))
    assert seen[:4] == [(2, True), (4, True), (6, True), (6, True)], seen  # the newest best, kept, each time
    assert _checkpoints(result.run_dir) == ["step_00000006", "step_00000008"]


def test_keep_best_resumed_mid_run_keeps_the_uninterrupted_runs_best(tmp_path):
    """The best so far travels in each checkpoint's training state: a run stopped between two
    saves (its stop checkpoint is no candidate: the uninterrupted run has none there) and resumed
    keeps, records and reports the same best, its record removed before the resume or not."""
    whole = train(_keep_best_config(tmp_path / "whole"))
    part1 = train(_keep_best_config(tmp_path / "parts", stop_after=12))
    assert not part1.completed and part1.best_checkpoint is not None
    (part1.run_dir / "best_checkpoint.json").unlink()
    part2 = train(_keep_best_config(tmp_path / "parts"), resume=True)
    assert part2.completed
    assert part2.best_eval_loss == whole.best_eval_loss
    assert part2.best_checkpoint.name == whole.best_checkpoint.name != "step_00000020"
    assert _checkpoints(part2.run_dir) == _checkpoints(whole.run_dir)
    assert (json.loads((part2.run_dir / "best_checkpoint.json").read_text())
            == json.loads((whole.run_dir / "best_checkpoint.json").read_text()))


def test_keep_best_without_an_eval_loss_at_every_checkpoint_is_refused(tmp_path, run_cli):
    base = ["train", "--corpus", LEARNABLE, "--num-steps", 4, "--keep-best", "-j", 1]
    val = ["--val-corpus", LEARNABLE]
    for i, (args, message) in enumerate([
            ([], "--keep-best (keep_best) needs --val-corpus (val_corpus)"),
            ([*val, "--save-every", 2], "got no --eval-every (eval_every 0: only at the end)"),
            ([*val, "--save-every", 5, "--eval-every", 3],
             "--save-every 5 (save_every) must be a multiple of --eval-every (eval_every), got --eval-every 3")]):
        out = tmp_path / f"r{i}"
        res = run_cli(*base, *args, "-o", out)
        assert res.exit_code == 2 and message in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
    # --no-keep-best over a config file's keep_best
    config_file = tmp_path / "kb.json"
    config_file.write_text('{"keep_best": true}')
    res = run_cli("train", "--config", config_file, "--no-keep-best", "--corpus", LEARNABLE, "--num-steps", 2,
                  "--max-length", 32, "--global-batch-size", 8, "-j", 1, "-o", tmp_path / "off")
    assert res.exit_code == 0, res.stderr


def test_a_new_run_removes_an_earlier_runs_best_checkpoint_record(tmp_path, monkeypatch):
    """A run directory whose checkpoints were deleted (as "already holds a run" tells) started a
    new run that left the earlier run's best_checkpoint.json naming its step: another run's
    checkpoint, or one of the new run's that was never the best."""
    from protrans_cli.training import loop

    monkeypatch.setattr(loop, "evaluate", lambda run, phase: 2.0)
    cfg = _config(tmp_path, num_steps=4, save_every=2, eval_every=2, keep_last=1, val_corpus=[LEARNABLE])
    run = Path(cfg.output_dir)
    run.mkdir(parents=True)
    (run / "best_checkpoint.json").write_text('{"step": 2, "eval_loss": 1.5, "checkpoint": "checkpoints/step_00000002"}')
    train(cfg)
    assert not (run / "best_checkpoint.json").exists()


def test_keep_best_resumed_where_its_best_checkpoint_is_not_tracks_it_anew(tmp_path, monkeypatch, capsys):
    """A run's last checkpoint copied into another run directory (-o, --resume-from): its
    training state's best named a checkpoint that is not there; recorded and reported so, and
    with a lower eval loss than any to come, no checkpoint was kept as the best."""
    import shutil

    from protrans_cli.training import loop

    scripted = iter([3.0, 1.0, 2.0, 2.5, 2.2])  # the eval losses of steps 2, 4, 6, 8, 10
    monkeypatch.setattr(loop, "evaluate", lambda run, phase: next(scripted))
    cfg = _config(tmp_path, num_steps=10, save_every=2, eval_every=2, keep_last=1, keep_best=True,
                  val_corpus=[LEARNABLE])
    first = train(dataclasses.replace(cfg, stop_after=6))
    assert first.best_checkpoint.name == "step_00000004"
    copied = tmp_path / "copied" / "step_00000006"
    shutil.copytree(first.run_dir / "checkpoints" / "step_00000006", copied)
    moved = dataclasses.replace(cfg, output_dir=str(tmp_path / "moved"))
    result = train(moved, resume=copied)
    assert "the best checkpoint as of step 6 (step 4, eval loss 1.0000) is not in" in capsys.readouterr().err
    assert (result.best_checkpoint, result.best_eval_loss) == (result.run_dir / "checkpoints" / "step_00000010", 2.2)
    assert _checkpoints(result.run_dir) == ["step_00000010"]
    assert json.loads((result.run_dir / "best_checkpoint.json").read_text())["step"] == 10


def test_without_keep_best_keep_last_prunes_as_before(tmp_path):
    cfg = dataclasses.replace(_keep_best_config(tmp_path), keep_best=False)
    result = train(cfg)
    assert _checkpoints(result.run_dir) == ["step_00000020"]
    assert result.best_checkpoint is None and not (result.run_dir / "best_checkpoint.json").exists()
    assert "best" not in torch.load(result.last_checkpoint / "training_state.pt", weights_only=True)


@pytest.mark.parametrize("family, sop", [("bert", False), ("electra", False), ("albert", True)])
def test_loss_is_normalised_by_predicted_tokens_not_micro_batches(tmp_path, family, sop):
    # The same global batch split into 1 or 4 micro-batches gives the same losses. ELECTRA's
    # detection term is a mean over the real tokens of the whole step (it was per micro-batch),
    # ALBERT's sentence-order term a mean over the proteins of the whole step (it was per
    # micro-batch, weighted by the micro-batch's masked tokens).
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if sop:
        no_dropout["classifier_dropout_prob"] = 0.0  # the sentence-order head's
    a = train(_config(tmp_path / "a", family, num_steps=6, log_every=1, micro_batch_size=16,
                      model_overrides=no_dropout, sop=sop))
    b = train(_config(tmp_path / "b", family, num_steps=6, log_every=1, micro_batch_size=4,
                      model_overrides=no_dropout, sop=sop))
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)


@pytest.mark.parametrize("family, model_class, no_dropout", [
    ("bert", "BertForMaskedLM", {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}),
    ("t5", "T5ForConditionalGeneration", {"dropout_rate": 0.0})])
def test_the_logged_step_loss_is_the_plain_transformers_models_loss_over_the_step(tmp_path, monkeypatch, family,
                                                                                   model_class, no_dropout):
    """metrics.jsonl's first loss, accuracy and tokens against an independent reference: the plain
    transformers class with the run's initial weights, each protein of the step's four micro-batches
    alone and unpadded through its own `labels=` loss, summed over the step's predicted tokens and
    divided by their number (not a mean of micro-batch means)."""
    import transformers

    from protrans_cli.training import loop

    captured = []
    step = loop.train_step

    def capturing(run, optimizer, micro_batches, **kw):
        if not captured:
            captured.append((run.model.config, {k: v.clone() for k, v in run.model.state_dict().items()},
                             [dict(b) for b in micro_batches]))
        return step(run, optimizer, micro_batches, **kw)

    monkeypatch.setattr(loop, "train_step", capturing)
    result = train(_config(tmp_path, family, num_steps=1, log_every=1, micro_batch_size=4, model_overrides=no_dropout))
    (row,) = read_metrics(result.run_dir / "metrics.jsonl")
    config, weights, micro_batches = captured[0]
    model = getattr(transformers, model_class)(config).eval()
    model.load_state_dict(weights)
    assert len(micro_batches) == 4
    total = correct = predicted = tokens = 0
    with torch.no_grad():
        for batch in micro_batches:
            for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
                # (T5's labels are the whole protein and </s>, shorter than its input's padded row)
                keep = labels != -100 if family == "t5" else mask.bool()
                ids, labels = ids[mask.bool()][None], labels[keep][None]
                out = model(input_ids=ids, labels=labels)
                n = int((labels != -100).sum())
                total += out.loss.double().item() * n
                correct += int(((out.logits.argmax(-1) == labels) & (labels != -100)).sum())
                predicted += n
                tokens += ids.shape[1]
    assert row["loss"] == pytest.approx(total / predicted, rel=1e-6)
    assert row["accuracy"] == pytest.approx(correct / predicted, rel=1e-9)
    assert row["tokens"] == tokens


@pytest.mark.parametrize("family, extra", [("bert", {}), ("bert", {"packing": True}), ("electra", {}),
                                           ("t5", {})])
def test_token_micro_batches_train_exactly_as_fixed_ones(tmp_path, family, extra):
    """--token-micro-batches cuts a step's proteins by padded tokens instead of by count: other
    micro-batches, the same losses (every protein's masks are its own; the loss is per predicted
    token of the step)."""
    no_dropout = ({"dropout_rate": 0.0} if family == "t5"
                  else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    kw = dict(num_steps=5, log_every=1, micro_batch_size=4, model_overrides=no_dropout, **extra)
    fixed = train(_config(tmp_path / "fixed", family, **kw))
    tokens = train(_config(tmp_path / "tokens", family, token_micro_batches=True, **kw))
    np.testing.assert_allclose(tokens.losses, fixed.losses, rtol=1e-5)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_a_plain_model(tmp_path):
    """--compile (torch.compile of the forward, dynamic shapes) gives eager's losses with dropout
    off (compiled dropout draws other masks), and saves
    the same HF directory: no `_orig_mod.` prefixes, loadable by from_pretrained and resumable."""
    from transformers import AutoModelForMaskedLM

    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    kw = dict(num_steps=4, log_every=1, model_overrides=no_dropout, save_every=2)
    eager = train(_config(tmp_path / "eager", **kw))
    compiled = train(_config(tmp_path / "compiled", compile=True, **kw))
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-5)
    model = AutoModelForMaskedLM.from_pretrained(compiled.run_dir, use_kernels=False)
    assert not [k for k in model.state_dict() if "_orig_mod" in k]
    longer = train(_config(tmp_path / "compiled", compile=True, **{**kw, "num_steps": 6}), resume=True)
    assert longer.step == 6


def test_compile_compiles_the_forwards_the_objective_calls(tmp_path, monkeypatch):
    """--compile compiles each transformer block (one compilation serves blocks of one code):
    every block of ELECTRA's generator and discriminator (the objective calls the two one by one;
    compiling the pair's forward compiled nothing that ran), and the compiled forwards are what
    the run calls."""
    from protrans_cli.models import get_family
    from protrans_cli.training.recompute import transformer_blocks

    compiled, called = [], set()

    def record(fn, **kwargs):
        block = fn.__self__
        compiled.append(block)

        def run(*args, **kw):
            called.add(id(block))
            return fn(*args, **kw)
        return run

    monkeypatch.setattr(torch, "compile", record)
    result = train(_config(tmp_path, "electra", num_steps=1, compile=True))
    family = get_family("electra")
    expected = transformer_blocks(family.pretraining_model(family.build_config("tiny", family.build_tokenizer())))
    assert [type(m).__name__ for m in compiled] == [type(m).__name__ for m in expected]
    assert len(compiled) == len(expected) > 2 and called == {id(m) for m in compiled}
    assert result.completed


def test_find_lr_compiles_as_the_run_does(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn.__self__) or fn)
    find_lr(_config(tmp_path, compile=True), num_steps=3)
    assert [type(m).__name__ for m in compiled] == ["BertLayer"] * 2  # the tiny preset's 2 blocks


def test_find_lr_tells_ddp_of_unused_parameters(tmp_path, monkeypatch):
    """ALBERT without --sop never uses its sentence-order head: under torchrun (DDP) the range test
    failed at its second step ("Expected to have finished reduction in the prior iteration")."""
    from protrans_cli.training import dist

    import contextlib

    told = []

    def wrap(module, strategy, info, **kw):
        told.append(kw)
        module.no_sync = contextlib.nullcontext  # one process stands for DDP here
        return module

    monkeypatch.setattr(dist, "choose_strategy", lambda *args: "ddp")
    monkeypatch.setattr(dist, "wrap", wrap)
    find_lr(_config(tmp_path, "albert"), num_steps=2)
    assert told == [{"find_unused_parameters": True, "param_dtype": None}]  # (fp32 on the CPU: FSDP gathers fp32)


def test_find_lr_plots_and_suggests(tmp_path):
    result = find_lr(_config(tmp_path), min_lr=1e-5, max_lr=1.0, num_steps=25)
    assert 1e-5 <= result.lr_suggestion <= 1.0
    assert (result.run_dir / "lr_find.png").stat().st_size > 1000
    data = json.loads((result.run_dir / "lr_find.json").read_text())
    assert data["suggested_lr"] == result.lr_suggestion and len(data["lr"]) == result.step > 3
    assert not (result.run_dir / "checkpoints").exists()


def test_find_lr_writes_its_plot_and_table_whole_never_through_a_planted_link(tmp_path):
    """lr_find.png and lr_find.json were written in place: through a link planted under either name
    (a shared run folder) the file it pointed to was overwritten, and a kill mid-write left half
    a file. Written as loss_curve.png is: a temporary renamed over the name."""
    run_dir = tmp_path / "run_bert"
    run_dir.mkdir()
    victims = {name: tmp_path / f"victim_{name}" for name in ("lr_find.png", "lr_find.json")}
    for name, victim in victims.items():
        victim.write_text("keep me")
        (run_dir / name).symlink_to(victim)
    result = find_lr(_config(tmp_path), min_lr=1e-5, max_lr=1.0, num_steps=12)
    assert all(victim.read_text() == "keep me" for victim in victims.values())
    assert not (run_dir / "lr_find.png").is_symlink() and (run_dir / "lr_find.png").stat().st_size > 1000
    assert json.loads((run_dir / "lr_find.json").read_text())["suggested_lr"] == result.lr_suggestion


def test_the_suggested_lr_comes_before_the_loss_minimum():
    """A short range test: the smoothed loss falls to its minimum, spikes, and falls back a
    little; the steepest fall over the whole curve was that recovery, already in divergence
    (seen: 1.9e-1, the minimum at 8.4e-2)."""
    from protrans_cli.training.lr_finder import suggest_lr

    lrs = [10 ** (-7 + 7 * i / 39) for i in range(40)]
    smoothed = [3.3 - 0.01 * i for i in range(20)] + [3.1 - 0.03 * i for i in range(14)]  # minimum at 33
    smoothed += [3.69, 3.67, 3.5, 3.9, 4.1, 4.3]  # a spike, then a steep fall back
    assert smoothed.index(min(smoothed)) == 33
    suggestion = suggest_lr(lrs, smoothed)
    assert lrs[20] <= suggestion <= lrs[32], suggestion  # the steepest part of the descent
    rising = [3.0 + 0.1 * i for i in range(40)]  # no descent at all: the smallest lr's neighbourhood
    assert suggest_lr(lrs, rising) == lrs[0]


def test_the_suggested_lr_is_where_the_smoothed_loss_falls_fastest_against_log_lr():
    """The suggestion is the lr of the steepest descent itself (numpy's central differences of the
    smoothed loss against log(lr), before the minimum, past the first tenth), not a neighbour."""
    from protrans_cli.training.lr_finder import suggest_lr

    lrs = np.logspace(-6, 0, 50)
    falls = 1.0 / (1.0 + np.exp(-(np.arange(50) - 21.3) / 2.5))  # steepest between steps 21 and 22
    smoothed = (3.0 - falls + np.where(np.arange(50) > 40, 0.5 * (np.arange(50) - 40), 0.0)).tolist()
    lowest = int(np.argmin(smoothed))
    slopes = np.gradient(np.array(smoothed), np.log(lrs))
    expected = 5 + int(np.argmin(slopes[5:lowest + 1]))
    assert expected == 21
    assert suggest_lr(lrs.tolist(), smoothed) == lrs[expected]


def test_find_lr_reads_the_data_through_the_runs_workers(tmp_path, monkeypatch):
    """--find-lr ignored --num-workers (the range test read the corpus in the main process, so
    it could not show whether the run's data loading keeps up); the losses are the same."""
    from protrans_cli.training import lr_finder

    asked = []
    real = lr_finder.step_batches
    monkeypatch.setattr(lr_finder, "step_batches", lambda stream, n: asked.append(n) or real(stream, n))
    plain = find_lr(_config(tmp_path / "a"), min_lr=1e-5, max_lr=1.0, num_steps=6)
    workers = find_lr(_config(tmp_path / "b", num_workers=2), min_lr=1e-5, max_lr=1.0, num_steps=6)
    assert asked == [0, 2]
    assert workers.losses == plain.losses and len(plain.losses) == 6


def test_find_lr_ends_its_range_where_the_gradient_blows_up(tmp_path, monkeypatch):
    """A step whose gradient is not finite raised out of the range test (a traceback) instead of
    ending the range there, which is what a blown-up gradient at a high lr means."""
    from protrans_cli.training import lr_finder
    from protrans_cli.training.loop import NonFiniteGradient

    real, calls = lr_finder.train_step, []

    def blows_up_at_the_tenth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise NonFiniteGradient(float("nan"))
        return real(*args, **kwargs)

    monkeypatch.setattr(lr_finder, "train_step", blows_up_at_the_tenth)
    result = find_lr(_config(tmp_path), min_lr=1e-5, max_lr=1.0, num_steps=25)
    assert result.step == 9 and 1e-5 <= result.lr_suggestion <= 1.0


def test_find_lr_ends_its_range_once_the_smoothed_loss_exceeds_four_times_its_best(tmp_path, monkeypatch):
    """The range test stops where the loss has clearly diverged (smoothed, four times its lowest),
    not after all its steps: the curve and lr_find.json end at that step, the step included."""
    from protrans_cli.training import lr_finder

    losses = [4.0, 3.0, 2.0, 1.0, 0.5, 0.5, 2.0, 8.0, 30.0, 100.0, 300.0, 1000.0]

    seen = []

    def step_with_loss(*args, **kwargs):  # (sum, count): the loss times 10 predicted tokens
        seen.append(1)
        return {"loss": (losses[len(seen) - 1] * 10, 10.0)}

    monkeypatch.setattr(lr_finder, "train_step", step_with_loss)
    result = find_lr(_config(tmp_path), min_lr=1e-5, max_lr=1.0, num_steps=len(losses))
    smoothed, avg, best = [], 0.0, float("inf")
    for n, loss in enumerate(losses, 1):  # the bias-corrected running mean lr_finder keeps
        avg = 0.9 * avg + 0.1 * loss
        smoothed.append(avg / (1 - 0.9 ** n))
        best = min(best, smoothed[-1])
        if smoothed[-1] > 4 * best:
            break
    assert n < len(losses) and result.step == n == len(seen)
    saved = json.loads((tmp_path / "run_bert" / "lr_find.json").read_text())
    assert saved["loss"] == losses[:n] and saved["smoothed_loss"] == pytest.approx(smoothed)
    assert len(saved["lr"]) == n and saved["suggested_lr"] == result.lr_suggestion


@pytest.mark.parametrize("fp16, said", [(True, "--precision fp32"), (False, "its step 1 (lr 1.0e-05) is not finite")])
def test_find_lr_that_measures_nothing_says_why(tmp_path, monkeypatch, fp16, said):
    """A range test whose first step already blew up (float16 overflowing in the activations at
    every loss scale, as T5's do on a V100) plotted an empty curve: a matplotlib traceback ("Data
    cannot be log-scaled"), where the run itself says to use --precision fp32."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.training import lr_finder
    from protrans_cli.training.loop import NonFiniteGradient

    def blows_up(*args, **kwargs):
        raise NonFiniteGradient(float("nan"), fp16=fp16)

    monkeypatch.setattr(lr_finder, "train_step", blows_up)
    with pytest.raises(RuntimeFailure, match="--find-lr measured no loss") as caught:
        find_lr(_config(tmp_path), min_lr=1e-5, max_lr=1.0, num_steps=10)
    assert said in str(caught.value)
    assert not (tmp_path / "run_bert" / "lr_find.png").exists()
    # the directory it made for the plot, left empty, goes with it (with the parents it made)
    with pytest.raises(RuntimeFailure, match="--find-lr measured no loss"):
        find_lr(_config(tmp_path, output_dir=str(tmp_path / "new" / "lr")), min_lr=1e-5, max_lr=1.0, num_steps=10)
    assert not (tmp_path / "new").exists()


def test_valid_corpus_is_val_corpus(tmp_path, run_cli):
    """`prep --valid-output` writes the validation corpus and `fit` calls its set `--valid`:
    `train --valid-corpus` was 'No such option' (found by a new user); it is --val-corpus."""
    args = ["train", "--corpus", LEARNABLE, "--num-steps", 2, "--max-length", 32, "-j", 1, "--log-every", 1]
    res = run_cli(*args, "--valid-corpus", LEARNABLE, "-o", tmp_path / "run")
    assert res.exit_code == 0, res.stderr
    assert "eval loss" in res.stderr
    assert "eval_loss" in read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]


def test_find_lr_says_which_run_flags_it_ignores(tmp_path, run_cli):
    """--find-lr trains no run: --val-corpus, --save-every, --tensorboard ... given beside it did
    nothing without a word (and --eval-every warned of a missing --val-corpus); found in review.
    A config file's (the run's own, as a template) are not warned about."""
    args = ["train", "--corpus", LEARNABLE, "--find-lr", "--num-steps", 10, "--max-length", 32, "-j", 1]
    res = run_cli(*args, "--val-corpus", LEARNABLE, "--eval-every", 3, "--save-every", 2, "-o", tmp_path / "a")
    assert res.exit_code == 0, res.stderr
    assert ("--find-lr trains no run: --val-corpus, --eval-every, --save-every ignored (it writes lr_find.png "
            "and lr_find.json: no evaluation, metrics or checkpoint)") in res.stderr
    assert "without --val-corpus" not in res.stderr
    # (--eval-every 0, the default's value, given: it was taken without a word; --no-tensorboard
    # is what the range test does)
    res = run_cli(*args, "--eval-every", 0, "--no-tensorboard", "-o", tmp_path / "z")
    assert res.exit_code == 0 and "--find-lr trains no run: --eval-every ignored" in res.stderr, res.stderr
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"val_corpus": [LEARNABLE], "eval_every": 3, "save_every": 2}))
    res = run_cli(*args, "--config", config, "-o", tmp_path / "b")
    assert res.exit_code == 0 and "warning" not in res.stderr, res.stderr


def test_find_lr_says_the_learning_rate_flags_it_ignores(tmp_path, run_cli):
    """The range test sets every step's lr itself (1e-7 to 1): --lr, --warmup-steps and --schedule
    beside it changed nothing without a word. A config file's are not warned about."""
    args = ["train", "--corpus", LEARNABLE, "--find-lr", "--num-steps", 10, "--max-length", 32, "-j", 1]
    res = run_cli(*args, "--lr", 1e-3, "--warmup-steps", 5, "--schedule", "cosine", "-o", tmp_path / "a")
    assert res.exit_code == 0, res.stderr
    assert ("--find-lr raises the learning rate from 1e-7 to 1 itself: --lr, --warmup-steps, --schedule ignored"
            in res.stderr)
    assert json.loads((tmp_path / "a" / "lr_find.json").read_text())["lr"][0] == pytest.approx(1e-7)
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"lr": 1e-3, "warmup_steps": 5, "schedule": "cosine"}))
    res = run_cli(*args, "--config", config, "-o", tmp_path / "b")
    assert res.exit_code == 0 and "warning" not in res.stderr, res.stderr


def test_find_lr_says_the_schedules_decay_flags_it_ignores(tmp_path, run_cli):
    """--min-lr-ratio and --decay-fraction shape the schedule's decay, which the range test does
    not run: beside --find-lr they changed nothing without a word, where --lr and --schedule are
    said to be ignored."""
    args = ["train", "--corpus", LEARNABLE, "--find-lr", "--num-steps", 10, "--max-length", 32, "-j", 1]
    res = run_cli(*args, "--min-lr-ratio", 0.5, "--decay-fraction", 0.3, "-o", tmp_path / "a")
    assert res.exit_code == 0, res.stderr
    assert ("--find-lr raises the learning rate from 1e-7 to 1 itself: --min-lr-ratio, --decay-fraction ignored"
            in res.stderr)


def test_find_lr_says_which_of_its_steps_met_a_bad_corpus_line(tmp_path, run_cli):
    """A run's corpus error says which step's batch met it; the range test's said only the line,
    and left the user to guess whether the test or the check before it had read that far."""
    corpus = tmp_path / "bad.txt"
    corpus.write_text(Path(LEARNABLE).read_text() + "\nM K J K\n")
    res = run_cli("train", "--corpus", corpus, "--find-lr", "--num-steps", 100, "--max-length", 32, "-j", 1,
                  "-o", tmp_path / "lr")
    assert res.exit_code == 1, res.stderr
    assert re.search(r"bad.txt:\d+: .*J.* \(met reading --find-lr's step \d+ of 100: fix the corpus", res.stderr), res.stderr
    assert not (tmp_path / "lr").exists()


def test_find_lr_takes_the_run_directorys_lock(tmp_path, run_cli):
    """A range test wrote its plot into a directory a run was training in (found in review)."""
    out = tmp_path / "busy"
    out.mkdir()
    with another_process(f"import fcntl, os\nfd = os.open({str(out)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)"):
        res = run_cli("train", "--corpus", LEARNABLE, "-o", out, "--find-lr", "--num-steps", 10, "-j", 1)
        assert res.exit_code == 1 and "is in use by another training run" in res.stderr, res.stderr
        assert list(out.iterdir()) == []


def test_find_lr_that_met_nothing_to_predict_says_so(tmp_path, monkeypatch):
    """Steps without a token to predict, then a gradient that blew up: the message named "its
    first step" and its lr. Without a token in any step (float16 too, where such a step is
    skipped without lowering the loss scale), it blamed a float16 overflow."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.training import lr_finder
    from protrans_cli.training.loop import NonFiniteGradient

    calls = []

    def nothing_then_blows_up(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise NonFiniteGradient(float("inf"))
        return {"loss": (0.0, 0.0)}

    monkeypatch.setattr(lr_finder, "train_step", nothing_then_blows_up)
    with pytest.raises(RuntimeFailure, match=r"its step 3 \(lr 1.0e-04\) is not finite \(loss inf\), and the 2 "
                                             r"step\(s\) before it had no token to predict"):
        find_lr(_config(tmp_path), min_lr=1e-5, max_lr=1e-3, num_steps=5)
    monkeypatch.setattr(lr_finder, "train_step", lambda *a, **k: {"loss": (0.0, 0.0)})
    with pytest.raises(RuntimeFailure, match="none of its 4 steps had a token to predict"):
        find_lr(_config(tmp_path, precision="fp16"), min_lr=1e-5, max_lr=1e-3, num_steps=4)


def test_find_lr_whose_every_fp16_step_overflowed_says_so_with_the_scale_reached(tmp_path, monkeypatch):
    """float16 steps all skipped as overflows, the loss scale halved each time but still above 1:
    no lr was measured, and the range test says why and what to do (not an empty plot)."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.training import optim

    class Huge(optim.LossScale):  # far too high: each of the few steps overflows float16
        def __init__(self):
            super().__init__(scale=2.0 ** 30, interval=4)

    monkeypatch.setattr(loop_module(), "LossScale", Huge)
    with pytest.raises(RuntimeFailure) as caught:
        find_lr(_config(tmp_path, precision="fp16"), min_lr=1e-5, max_lr=1e-3, num_steps=3)
    assert str(caught.value) == (
        f"--find-lr measured no loss: each of its 3 steps overflowed float16 and was skipped (loss scale now "
        f"{2.0 ** 27:g}); more steps (--num-steps), or float16 may overflow in this model's activations: "
        "--precision fp32 (or bf16 on a GPU that has it)")
    assert not (tmp_path / "run_bert").exists()


# --- CLI ---------------------------------------------------------------------------------

def test_cli_config_file_and_flag_override(tmp_path, run_cli):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'family = "bert"\ncorpus = ["{LEARNABLE}"]\nnum_steps = 50\nmax_length = 48\n'
                   'global_batch_size = 8\nmicro_batch_size = 4\nlr = 0.001\n[model_overrides]\n'
                   'num_hidden_layers = 1\n')
    out = tmp_path / "run"
    res = run_cli("train", "--config", cfg, "-o", out, "--num-steps", 4, "--lr", "0.002",
                  "--set", "hidden_size=16", "--log-every", 2, "-j", 1)
    assert res.exit_code == 0, res.stderr
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["num_steps"] == 4 and saved["lr"] == 0.002 and saved["max_length"] == 48
    assert saved["model_overrides"] == {"num_hidden_layers": 1, "hidden_size": 16}
    model_config = json.loads((out / "config.json").read_text())
    assert model_config["num_hidden_layers"] == 1 and model_config["hidden_size"] == 16
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [2, 4]
    # the last line sums the run up: steps, time, tokens/s, the last loss logged, where the files are
    last = read_metrics(out / "metrics.jsonl")[-1]["loss"]
    assert re.search(rf"train: done, 4 steps; model in .*run \(4 steps in \d+ s, [\d,]+ tokens/s, last train loss "
                     rf"{last:.4f}; metrics.jsonl and loss_curve.png in it\)\n$", res.stderr), res.stderr


def test_default_warmup_is_a_tenth_of_the_run_so_a_short_run_peaks_and_decays(tmp_path, run_cli):
    """Without --warmup-steps the warmup is a tenth of the run (at most 2000): a 20-step run
    reaches --lr at step 2 and decays; before, 2000 warmup steps left any run of up to 2000
    steps ramping up only (a README example peaked at 5% of its lr). An explicit warmup that
    does not end before the run is kept, with a warning."""
    assert TrainConfig(num_steps=1000).resolved_warmup_steps == 100
    assert TrainConfig(num_steps=5).resolved_warmup_steps == 1
    assert TrainConfig(num_steps=10**6).resolved_warmup_steps == 2000
    assert TrainConfig(phases=[Phase(64, 300), Phase(128, 700)]).resolved_warmup_steps == 100
    assert TrainConfig(num_steps=1000, warmup_steps=0).resolved_warmup_steps == 0
    out = tmp_path / "run"
    res = run_cli("train", "--corpus", LEARNABLE, "-o", out, "--num-steps", 20, "--lr", "0.002", "--max-length", 48,
                  "--global-batch-size", 8, "--micro-batch-size", 8, "--set", "hidden_size=16", "--log-every", 1,
                  "-j", 1)
    assert res.exit_code == 0, res.stderr
    assert "--warmup-steps" not in res.stderr
    lrs = [r["lr"] for r in read_metrics(out / "metrics.jsonl")]
    assert max(lrs) == pytest.approx(0.002) and lrs.index(max(lrs)) == 1  # lr after step 2
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.2 * 0.002  # decaying to lr x 0.1
    res = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "ramp", "--num-steps", 4, "--warmup-steps", 8,
                  "--max-length", 48, "--global-batch-size", 8, "--micro-batch-size", 8, "--set", "hidden_size=16",
                  "-j", 1)
    assert res.exit_code == 0, res.stderr
    assert "--warmup-steps 8 is not below the run's 4 steps" in res.stderr and "50% of" in res.stderr


def test_saved_weights_are_as_readable_as_any_output(tmp_path):
    # safetensors writes 0600: a lab's other users could not read the model or its checkpoints.
    mask = os.umask(0)
    os.umask(mask)
    result = train(_config(tmp_path, num_steps=2, save_every=2))
    files = [p for p in result.run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~mask) for p in files}


def test_a_file_system_without_flock_still_trains_and_a_renamed_checkpoint_is_one_line(tmp_path, monkeypatch,
                                                                                        capsys):
    """On Lustre without flock or NFS mounted nolock, flock fails with ENOLCK/ENOSYS: train ran
    nothing (found in review). It trains, unlocked, with one warning (PROTRANS_FILE_LOCKING unset,
    as HDF5_USE_FILE_LOCKING's BEST_EFFORT) or none (FALSE); TRUE refuses it in one line, no
    directory left; another value is a usage error before the directory is made. A damaged
    checkpoint given to --resume-from under another name gave a TypeError traceback."""
    import errno
    import fcntl
    import shutil

    from protrans_cli.io import files as files_module
    from protrans_cli.training import checkpoint as ckpt

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(files_module, "_WARNED_NO_LOCKS", set())
    for setting, problem in (("TRUE", RuntimeFailure), ("sometimes", UsageError)):
        monkeypatch.setenv("PROTRANS_FILE_LOCKING", setting)
        with pytest.raises(problem, match=r"/run: cannot lock it: the file system grants no file locks \(No locks "
                                          r"available; .*unset PROTRANS_FILE_LOCKING$" if setting == "TRUE" else
                                          r"^PROTRANS_FILE_LOCKING must be BEST_EFFORT .*got 'sometimes'$"):
            train(_config(tmp_path, num_steps=2, save_every=2, output_dir=str(tmp_path / "sub" / "run")))
        assert list(tmp_path.iterdir()) == []
    monkeypatch.delenv("PROTRANS_FILE_LOCKING")
    capsys.readouterr()
    result = train(_config(tmp_path, num_steps=2, save_every=2))
    assert result.step == 2
    assert capsys.readouterr().err.count("grants no file locks") == 1
    monkeypatch.setattr(files_module, "_WARNED_NO_LOCKS", set())
    monkeypatch.setenv("PROTRANS_FILE_LOCKING", "FALSE")
    assert train(_config(tmp_path, num_steps=1, output_dir=str(tmp_path / "quiet"))).step == 1
    assert "grants no file locks" not in capsys.readouterr().err
    mine = tmp_path / "mine"
    shutil.copytree(result.run_dir / "checkpoints" / "step_00000002", mine)
    (mine / ckpt.STATE_FILE).write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"damaged checkpoint: cannot read training_state.pt .*no earlier checkpoint"):
        train(_config(tmp_path, num_steps=3, output_dir=str(tmp_path / "other")), resume=str(mine))


def test_a_run_directory_in_use_is_refused(tmp_path, run_cli):
    """Two runs started together on one directory both passed the "already holds a run" check
    and wrote every metrics line twice; now the run directory is locked for a run's duration."""
    out = tmp_path / "busy"
    out.mkdir()
    with another_process(f"import fcntl, os\nfd = os.open({str(out)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)"):
        res = run_cli("train", "--corpus", LEARNABLE, "-o", out, "--num-steps", 2, "-j", 1)
        assert res.exit_code == 1
        assert res.stderr.strip().endswith(f"{out}: is in use by another training run or learning-rate range test "
                                           "(protrans train, train() or find_lr(): it holds the run directory's "
                                           "lock): wait for it to end, or choose another -o")
        assert list(out.iterdir()) == []
    # a run refused before it wrote anything leaves no directory behind
    res = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "new", "--global-batch-size", 7, "-j", 1)
    assert res.exit_code == 2 and not (tmp_path / "new").exists()


def test_cli_errors(tmp_path, run_cli):
    res = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "r", "--global-batch-size", 10,
                  "--micro-batch-size", 4)
    assert res.exit_code == 2 and "global batch size 10 is not divisible by micro batch size 4" in res.stderr
    res = run_cli("train", "-o", tmp_path / "r")
    assert res.exit_code == 2 and "no training corpus" in res.stderr
    # --resume before the first checkpoint (a requeued job that always passes it) starts the run
    res = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "r", "--resume", "--num-steps", 2,
                  "--max-length", 64, "--global-batch-size", 8, "--micro-batch-size", 8, "-j", 1)
    assert res.exit_code == 0 and "no checkpoint yet, so --resume starts the run from step 0" in res.stderr
    (tmp_path / "empty").mkdir()
    res = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "r1", "--resume-from", tmp_path / "empty")
    assert res.exit_code == 1 and "no checkpoint to resume from" in res.stderr
    assert "train: bert/" not in res.stderr  # refused before the model was built
    res = run_cli("train", "--corpus", LEARNABLE, "--resume-from", tmp_path / "nowhere" / "checkpoints" / "step_9")
    assert res.exit_code == 1 and "nowhere/checkpoints/step_9: no checkpoint to resume from" in res.stderr, res.stderr
    res = run_cli("train", "--corpus", str(TRAIN / "too_few_proteins.txt"), "-o", tmp_path / "r2",
                  "--global-batch-size", 8, "--micro-batch-size", 8)
    assert res.exit_code == 1 and "fewer than one global batch" in res.stderr
    res = run_cli("train", "--family", "bert", "--objective", "plm", "--corpus", LEARNABLE, "-o", tmp_path / "r4")
    assert res.exit_code == 2 and "objective plm does not fit the bert family (use mlm)" in res.stderr
    res = run_cli("train", "--family", "electra", "--sop", "--corpus", LEARNABLE, "-o", tmp_path / "r5")
    assert res.exit_code == 2 and "sop" in res.stderr
    res = run_cli("train", "--family", "nope", "--corpus", LEARNABLE, "-o", tmp_path / "r3")
    assert res.exit_code == 2 and "unknown model family 'nope'" in res.stderr


@pytest.mark.parametrize("args, said", [
    (["--family", "bertt"], "unknown model family 'bertt'"),
    (["--preset", "tinny"], "unknown preset 'tinny' for family 'bert'"),
    (["--family", "bert", "--objective", "clm"], "objective clm does not fit the bert family"),
])
def test_a_setting_naming_no_family_preset_or_fitting_objective_is_refused_before_the_corpus(tmp_path, run_cli,
                                                                                            args, said):
    """A typo in --family or --preset, or an objective the family has not, is a usage error said
    before the corpus is read: with a corpus too small for one batch (or a missing shard) it was
    the corpus's error, exit 1, and the typo showed only once the corpus was fixed."""
    for corpus in (TRAIN / "too_few_proteins.txt", tmp_path / "missing.txt"):
        res = run_cli("train", *args, "--corpus", corpus, "-o", tmp_path / "r")
        assert res.exit_code == 2 and said in res.stderr and "corpus" not in res.stderr, res.stderr


@pytest.mark.parametrize("args, said", [
    (["--config", "{tmp}/c.yaml"], "{tmp}/c.yaml: a config file is JSON (.json) or TOML (.toml), not .yaml"),
    (["--config", "{tmp}/settings"], "{tmp}/settings: a config file is JSON (.json) or TOML (.toml), not a file "
                                     "without a suffix"),
    (["--config", "{tmp}/list.json"], "{tmp}/list.json: config must be a table/object of settings"),
    (["--config", "{tmp}/missing.toml"], "{tmp}/missing.toml: no such config file"),
    (["--config", "{tmp}/folder.toml"], "{tmp}/folder.toml: is a directory, expected a config file (.json or .toml)"),
    (["--config", "{tmp}/phase.json"], "{tmp}/phase.json: bad phase 512"),
    (["--corpus", LEARNABLE, "--phase", "32"], "--phase '32': expected LEN:STEPS[:GLOBAL_BATCH[:MICRO_BATCH]]"),
    (["--corpus", LEARNABLE, "--phase", "32:x"], "--phase '32:x': every field must be a whole number"),
    # a phase's own batch size by its name; one the phase takes from the run by the flag
    (["--corpus", LEARNABLE, "--phase", "32:2:4:0"], "phase 1 (32:2:4:0): micro_batch_size must be at least 1, got 0"),
    (["--corpus", LEARNABLE, "--phase", "32:2:0"], "phase 1 (32:2:0): global_batch_size must be at least 1, got 0"),
    (["--corpus", LEARNABLE, "--phase", "32:2", "--micro-batch-size", "0"],
     "phase 1 (32:2): --micro-batch-size (micro_batch_size) must be at least 1, got 0"),
    (["--corpus", LEARNABLE, "--set", "num_hidden_layers"], "--set 'num_hidden_layers': expected KEY=VALUE"),
    (["--corpus", LEARNABLE, "--set", "=2"], "--set '=2': expected KEY=VALUE"),
    (["--corpus", LEARNABLE, "--accept-corpus-change"], "--accept-corpus-change goes with --resume or --resume-from"),
    (["--corpus", LEARNABLE, "--family", "albert", "--sop", "--objective", "t5"],
     "sop (sentence-order prediction) goes with the mlm objective only"),
])
def test_cli_refuses_a_bad_config_file_or_flag_in_one_line_before_any_run(tmp_path, run_cli, args, said):
    """A config file protrans cannot read, or a malformed --phase / --set, is exit 2 with one line
    naming the file or the flag, and leaves no run directory behind."""
    (tmp_path / "c.yaml").write_text(f"corpus: [{LEARNABLE}]\n")
    (tmp_path / "settings").write_text(json.dumps({"corpus": [LEARNABLE]}))
    (tmp_path / "list.json").write_text(json.dumps([{"corpus": [LEARNABLE]}]))
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "phase.json").write_text(json.dumps({"corpus": [LEARNABLE], "phases": [512]}))
    out = tmp_path / "run"
    res = run_cli("train", *[a.replace("{tmp}", str(tmp_path)) for a in args], "-o", out, "-j", 1)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == "protrans: error: " + said.replace("{tmp}", str(tmp_path))
    assert not out.exists()


def test_a_run_directory_that_is_a_file_or_inside_one_is_refused(tmp_path, run_cli):
    """-o naming a file, or a folder under a file: exit 2 naming the file, and the file as it was."""
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    flags = ["--corpus", LEARNABLE, "--num-steps", 1, "--max-length", 32, "--global-batch-size", 4,
             "--micro-batch-size", 4, "-j", 1]
    for out, said in ((taken, f"{taken}: is a file, not a run directory (choose another -o)"),
                      (taken / "run", f"{taken}: is not a directory, so the run directory {taken / 'run'} cannot go "
                                      "inside it (choose another -o)")):
        res = run_cli("train", *flags, "-o", out)
        assert res.exit_code == 2, res.output
        assert res.stderr.strip().splitlines()[-1] == f"protrans: error: {said}"
        assert taken.read_text() == "mine\n" and sorted(tmp_path.iterdir()) == [taken]


@pytest.mark.parametrize("name, kind, said", [
    ("metrics.jsonl", "fifo", "is a named pipe, not a regular file: a run writes a file"),
    ("loss_curve.png", "fifo", "is a named pipe, not a regular file: a run writes a file"),
    ("metrics.jsonl", "folder", "is a directory, not a regular file: a run writes a file"),
    ("config.json", "fifo", "is a named pipe, not a regular file: a run writes a file"),
    ("checkpoints", "fifo", "is a named pipe, not a folder: a run keeps its checkpoints in a folder"),
    ("checkpoints", "link to nothing", "is a link to nowhere, which does not exist: a run keeps its checkpoints in a "
                                       "folder"),
])
def test_a_fifo_or_folder_under_a_run_files_name_is_refused_before_any_model(tmp_path, name, kind, said):
    """A named pipe called RUN/metrics.jsonl or RUN/config.json hung train for ever as it started
    (the file is read first), one called RUN/loss_curve.png once every step was done (the curve written into it); a
    folder called metrics.jsonl was "Is a directory" once the model was built, a named pipe called
    checkpoints (or a link to nothing) failed the first save naming step_N. Each is refused before
    any model now, and left as it is."""
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    if kind == "link to nothing":
        (run / name).symlink_to("nowhere")
    else:
        os.mkfifo(run / name) if kind == "fifo" else (run / name).mkdir()
    # (a process of its own, with a timeout: a hang fails the test rather than blocking it)
    result = subprocess.run([sys.executable, "-m", "protrans_cli", "train", "--corpus", LEARNABLE, "--num-steps", "1",
                             "--max-length", "32", "--global-batch-size", "4", "--micro-batch-size", "4", "-j", "1",
                             "-o", str(run)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    remedy = "(make that folder, move the link away, or choose another -o)" if kind == "link to nothing" else \
        "(move it away, or choose another -o)"
    assert result.returncode == 1 and result.stderr.splitlines()[-1] == (
        f"protrans: error: {run / name}: {said} of this name {remedy}"), result.stderr
    assert os.listdir(run) == [name]


@pytest.mark.parametrize("kind, words", [("fifo", "a named pipe"), ("file", "a regular file")])
def test_a_fifo_or_file_called_checkpoints_step_n_is_refused_before_any_model(tmp_path, run_cli, kind, words):
    """A named pipe or a file called RUN/checkpoints/step_00000002 failed that step's save once the
    steps before it were trained, "cannot write the checkpoint ([Errno 21] Is a directory: ... ->
    .step_00000002.old...)", and left that hidden folder behind. Refused before any model now, and
    left as it is. (Odd files inside a step folder are no matter: the folder is replaced whole.)"""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    step = run / "checkpoints" / "step_00000002"
    os.mkfifo(step) if kind == "fifo" else step.write_text("mine\n")
    res = run_cli("train", "--corpus", LEARNABLE, "--num-steps", 2, "--save-every", 1, "--max-length", 32,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1, "-o", run)
    assert res.exit_code == 1 and res.stderr.splitlines()[-1] == (
        f"protrans: error: {step}: is {words}, not a folder: a run keeps each checkpoint in a folder of this name "
        "(move it away, or choose another -o)"), res.stderr
    assert "train:" not in res.stderr and os.listdir(run / "checkpoints") == [step.name]
    assert step.is_fifo() if kind == "fifo" else step.read_text() == "mine\n"


def test_settings_one_process_cannot_honour_are_warned_and_resume_takes_one_checkpoint(tmp_path, run_cli):
    """--strategy ddp without torchrun, --eval-every without --val-corpus and --sdpa-kernels torch
    on the CPU train on with a warning each (not silently); --resume together with --resume-from is refused, not one of them
    taken."""
    out = tmp_path / "run"
    flags = ["--corpus", LEARNABLE, "--num-steps", 1, "--max-length", 32, "--global-batch-size", 4,
             "--micro-batch-size", 4, "--save-every", 1, "-j", 1, "-o", out]
    res = run_cli("train", *flags, "--strategy", "ddp", "--eval-every", 1, "--sdpa-kernels", "torch")
    assert res.exit_code == 0, res.output
    warned = [line for line in res.stderr.splitlines() if line.startswith("protrans: warning:")]
    assert warned == ["protrans: warning: strategy ddp ignored: one process (start with torchrun for several)",
                      "protrans: warning: --eval-every 1 without --val-corpus: no evaluation",
                      "protrans: warning: --sdpa-kernels torch ignored on cpu: it chooses among a CUDA GPU's "
                      "attention kernels"]
    assert not any("eval_loss" in line for line in read_metrics(out / "metrics.jsonl"))
    res = run_cli("train", *flags, "--num-steps", 2, "--resume", "--resume-from", out / "checkpoints" / "step_00000001")
    assert res.exit_code == 2 and res.stderr.strip().splitlines()[-1] == (
        "protrans: error: give --resume or --resume-from, not both")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001"]


def test_a_directory_holding_a_model_but_no_checkpoint_is_not_trained_over(tmp_path, run_cli):
    """A finished run whose checkpoints/ was deleted to save space (or any HF model directory) as
    -o: a new run, or --resume (no checkpoint: "starts the run from step 0"), replaced its final
    model with a new one without a word, and left the other model's files beside it."""
    import shutil

    args = ["--corpus", LEARNABLE, "--num-steps", 2, "--max-length", 64, "--global-batch-size", 8,
            "--micro-batch-size", 8, "-j", 1]
    run = tmp_path / "done"
    assert run_cli("train", "--family", "esm", *args, "-o", run).exit_code == 0
    shutil.rmtree(run / "checkpoints")
    weights = (run / "model.safetensors").read_bytes()
    metrics = (run / "metrics.jsonl").read_text()
    for extra in ([], ["--resume"]):
        res = run_cli("train", "--family", "bert", *args, "-o", run, *extra)
        assert res.exit_code == 2, res.stderr
        assert res.stderr.strip().splitlines()[-1] == (
            f"protrans: error: {run} already holds a model (config.json) and no checkpoint"
            + (" to resume from" if extra else "") + ": a new run would overwrite it; choose another -o "
            "(or move the model away)")
        assert "train: bert/" not in res.stderr  # refused before a model was built
    # nor with --resume-from another run's checkpoint and -o this directory (a continued run
    # wrote its final model over it all the same)
    other = tmp_path / "other"
    assert run_cli("train", "--family", "esm", *args, "-o", other).exit_code == 0
    res = run_cli("train", "--resume-from", other / "checkpoints" / "step_00000002", "--num-steps", 4, "-o", run)
    assert res.exit_code == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {run} already holds a model (config.json) and no checkpoint: a new run would overwrite "
        "it; choose another -o (or move the model away)")
    assert "resuming from" not in res.stderr  # refused before a model was built
    assert (run / "model.safetensors").read_bytes() == weights and (run / "vocab.txt").exists()
    assert (run / "metrics.jsonl").read_text() == metrics and not (run / "checkpoints").exists()
    # a run killed before its first checkpoint left no model: --resume still starts it
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "metrics.jsonl").write_text('{"step": 1}\n')
    res = run_cli("train", *args, "-o", tmp_path / "killed", "--resume")
    assert res.exit_code == 0 and "no checkpoint yet, so --resume starts the run from step 0" in res.stderr


def test_a_head_directory_as_train_output_is_named_a_head(tmp_path, run_cli):
    """`train --resume -o HEAD_DIR` (a head fit wrote) said it "already holds a model
    (config.json)": the folder is named as the prediction head it is."""
    head = tmp_path / "ss3"
    head.mkdir()
    (head / "config.json").write_text('{"task": {"name": "ss3"}, "hyperparameters": {}}')
    (head / "weights.safetensors").write_bytes(b"keep")
    args = ["--corpus", LEARNABLE, "--num-steps", 2, "--max-length", 64, "--global-batch-size", 8,
            "--micro-batch-size", 8, "-j", 1]
    for extra in ([], ["--resume"]):
        res = run_cli("train", *args, "-o", head, *extra)
        assert res.exit_code == 2, res.stderr
        assert res.stderr.strip().splitlines()[-1] == (
            f"protrans: error: {head} already holds a prediction head (config.json) and no checkpoint"
            + (" to resume from" if extra else "") + ": a new run would overwrite it; choose another -o "
            "(or move the head away)")
    assert sorted(p.name for p in head.iterdir()) == ["config.json", "weights.safetensors"]


def test_an_unquoted_corpus_pattern_the_shell_expanded_is_named_with_the_remedy(tmp_path, run_cli):
    """`--corpus shards.*.txt` unquoted: the shell gives --corpus the first shard and leaves the
    others as extra arguments, which were "Got unexpected extra arguments (...)" and no more."""
    for i in range(3):
        (tmp_path / f"shards.{i:05d}.txt").write_text("M K T\n\n")
    rest = [tmp_path / "shards.00001.txt", tmp_path / "shards.00002.txt"]
    for flag, before in (("--corpus", []), ("--val-corpus", ["--corpus", LEARNABLE])):
        res = run_cli("train", *before, flag, tmp_path / "shards.00000.txt", *rest, "-o", tmp_path / "r")
        assert res.exit_code == 2 and not (tmp_path / "r").exists()
        assert res.stderr.strip() == (
            f"protrans: error: Got unexpected extra arguments ({rest[0]} {rest[1]}): files after {flag} "
            f"{tmp_path / 'shards.00000.txt'}, as when the shell expands an unquoted pattern; {flag} takes one "
            f"file: quote the pattern ({flag} 'corpus.*.txt.gz') or repeat {flag} before each file "
            "(see 'protrans train --help')")
    # files out of sorted order are no shell's expansion: no word of a pattern
    res = run_cli("train", "--corpus", tmp_path / "shards.00002.txt", tmp_path / "shards.00000.txt", "-o", tmp_path / "r")
    assert res.exit_code == 2 and res.stderr.strip() == (
        f"protrans: error: Got unexpected extra argument ({tmp_path / 'shards.00000.txt'}) (see 'protrans train --help')")
    # other extra arguments are refused as before
    res = run_cli("train", "--corpus", LEARNABLE, "typo", "-o", tmp_path / "r")
    assert res.exit_code == 2
    assert res.stderr.strip() == "protrans: error: Got unexpected extra argument (typo) (see 'protrans train --help')"


def test_cli_usage_errors_come_before_any_training(tmp_path, run_cli):
    small = ["--corpus", LEARNABLE, "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1]
    cases = [
        (["--family", "bert", "--sop", "--num-steps", 2, "--max-length", 32],
         "--sop needs a model with a sentence-order head (albert), not the bert family"),
        (["--phase", "32:2", "--num-steps", 3],
         "--num-steps cannot go with --phase: each phase sets its own length and steps"),
        (["--phase", "32:2", "--max-length", 48],
         "--max-length cannot go with --phase"),
        (["--num-steps", 2, "--max-length", 32, "--stop-after", 0], "--stop-after (stop_after) must be at least 1, got 0"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"r{i}"
        res = run_cli("train", *small, *args, "-o", out)
        assert res.exit_code == 2 and message in res.stderr, (args, res.stderr)
        assert not (out / "metrics.jsonl").exists()
    # Phases from a config file conflict with the flags the same way.
    cfg = tmp_path / "phases.toml"
    cfg.write_text("[[phases]]\nmax_length = 32\nnum_steps = 2\n")
    res = run_cli("train", "--config", cfg, *small, "--num-steps", 3, "-o", tmp_path / "rc")
    assert res.exit_code == 2 and f"--num-steps cannot go with the phases of {cfg}" in res.stderr


def test_cli_config_from_stdin_and_its_refusal_under_torchrun(tmp_path, run_cli, monkeypatch):
    """`--config -` under torchrun: every rank shares stdin, the first to read it took the
    settings and another stopped with "no training corpus", a rank at random."""
    settings = (f'corpus = ["{LEARNABLE}"]\nnum_steps = 2\nmax_length = 64\nglobal_batch_size = 8\n'
                'micro_batch_size = 8\nthreads = 1\n').encode()
    res = run_cli("train", "--config", "-", "-o", tmp_path / "one", input=settings)
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "one" / "train_config.json").read_text())["num_steps"] == 2
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = run_cli("train", "--config", "-", "-o", tmp_path / "two", input=settings)
    assert res.exit_code == 2
    assert res.stderr.strip() == ("protrans: error: <stdin>: --config - under torchrun: stdin goes to one of the 2 "
                                  "processes, the others read nothing; give the config file's path (every process "
                                  "reads it)")
    assert not (tmp_path / "two").exists()


def test_cli_threads_from_the_config_file_unless_given(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("PROTRANS_THREADS", "3")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'corpus = ["{LEARNABLE}"]\nnum_steps = 1\nmax_length = 32\nglobal_batch_size = 4\n'
                   'micro_batch_size = 4\nthreads = 1\n')
    try:
        res = run_cli("train", "--config", cfg, "-o", tmp_path / "a")
        assert res.exit_code == 0, res.stderr
        assert json.loads((tmp_path / "a" / "train_config.json").read_text())["threads"] == 1
        res = run_cli("train", "--config", cfg, "-o", tmp_path / "b", "-j", 2)
        assert res.exit_code == 0, res.stderr
        assert json.loads((tmp_path / "b" / "train_config.json").read_text())["threads"] == 2
    finally:
        torch.set_num_threads(1)


def test_cli_threads_left_out_are_saved_as_not_given(tmp_path, run_cli, monkeypatch):
    """Neither -j nor the file's threads: PROTRANS_THREADS (or the default) runs, and
    train_config.json records threads as not given; saved as the number, the file as a template
    (or a --resume on another machine) overrode that machine's PROTRANS_THREADS and default."""
    monkeypatch.setenv("PROTRANS_THREADS", "1")
    try:
        res = run_cli("train", "--corpus", LEARNABLE, "--num-steps", 1, "--max-length", 32, "--global-batch-size", 4,
                      "--micro-batch-size", 4, "-o", tmp_path / "a")
        assert res.exit_code == 0, res.stderr
        assert json.loads((tmp_path / "a" / "train_config.json").read_text())["threads"] is None
        assert TrainConfig.from_file(tmp_path / "a" / "train_config.json").threads is None
    finally:
        torch.set_num_threads(1)


def test_cli_list_presets(run_cli):
    res = run_cli("train", "--list-presets")
    assert res.exit_code == 0
    rows = [line.split() for line in res.stdout.splitlines()[1:]]
    assert {r[0] for r in rows} == set(FAMILIES)
    assert all(any(r[:2] == [f, "tiny"] for r in rows) for f in FAMILIES)
    prot_bert = next(r for r in rows if r[:2] == ["bert", "prot_bert"])
    assert prot_bert[2] == "420M"  # ProtBert: ~420M, as `protrans models` writes it
    assert next(r for r in rows if r[:2] == ["bert", "tiny"])[2] == "84.9K"  # (it said 0.08M)


def test_albert_with_sentence_order_prediction_learns(tmp_path):
    result = train(_config(tmp_path, "albert", sop=True, num_steps=30))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert "sop_accuracy" in rows[0] and "sop_loss" in rows[0]
    assert result.losses[-1] < 0.9 * result.losses[0]
    with pytest.raises(Exception, match="sentence-order head"):
        train(_config(tmp_path / "b", "bert", sop=True, num_steps=2))


def test_without_eval_every_the_validation_loss_is_on_the_last_line_once(tmp_path, capsys):
    result = train(_config(tmp_path, num_steps=4, log_every=2, num_eval_batches=2,
                           val_corpus=[str(TRAIN / "learnable_shard2.txt.gz")]))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4] and all("loss" in r for r in rows)
    assert "eval_loss" not in rows[0] and 0 < rows[1]["eval_loss"] < 10
    assert f"eval loss {rows[1]['eval_loss']:.4f}" in capsys.readouterr().err


def test_the_summary_says_the_last_steps_eval_loss_and_none_where_that_evaluation_failed(tmp_path, monkeypatch,
                                                                                        capsys):
    """The summary's eval loss is the final evaluation's (the last step's), not the latest one
    logged: where the final one has no loss (a validation file changed during the run), the
    summary names none rather than an earlier step's as the run's."""
    from protrans_cli.training import loop

    kw = dict(num_steps=4, log_every=2, eval_every=2, val_corpus=[LEARNABLE])
    for scripted, said in (([1.5, 1.25], "1.2500"), ([1.5, math.nan], None)):
        losses = iter(scripted)
        monkeypatch.setattr(loop, "evaluate", lambda run, phase: next(losses))
        result = train(_config(tmp_path / str(said), **kw))
        assert [r.get("eval_loss") for r in read_metrics(result.run_dir / "metrics.jsonl")] == [1.5, scripted[1]
                                                                                                if said else None]
        summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: done")]
        assert len(summary) == 1
        if said:
            assert f", eval loss {said};" in summary[0]
        else:
            assert "eval loss" not in summary[0]


def test_metrics_and_the_summary_say_which_pass_over_the_corpus_a_step_was_in(tmp_path, capsys):
    # HF's Trainer logs an epoch next to the loss; train logged steps only, so 50 steps of 8 over
    # a corpus of 40 proteins were 10 passes over it, which no line and no summary said.
    corpus = tmp_path / "forty.txt"
    lines = Path(LEARNABLE).read_text().splitlines(keepends=True)
    corpus.write_text("".join(lines[:80]))  # 40 proteins, a blank line after each
    result = train(_config(tmp_path, corpus=[str(corpus)], num_steps=50, global_batch_size=8,
                           micro_batch_size=8, log_every=10))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [(r["step"], r["epoch"]) for r in rows] == [(10, 2), (20, 4), (30, 6), (40, 8), (50, 10)]
    assert ", in epoch 10 of the corpus; metrics.jsonl" in capsys.readouterr().err
    # within the first pass: 1 on every line, and the summary says nothing of it
    result = train(_config(tmp_path, num_steps=4, log_every=2, output_dir=str(tmp_path / "one")))
    assert [r["epoch"] for r in read_metrics(result.run_dir / "metrics.jsonl")] == [1, 1]
    assert "of the corpus" not in capsys.readouterr().err


@pytest.mark.parametrize("num_eval_batches, val_proteins, evaluated_first", [
    (2, 300, 32),    # 2 evaluation steps of the global batch, 16
    (18, 300, 288),  # the 12 proteins after them joined the buffer: a random 288 of all 300 (until 2026-12-04)
    (20, 100, 96),   # a file of fewer than 20 steps: its whole steps, not a random 96 of its 100
    (20, 10, 8)])    # fewer than one global batch: the whole micro-batches, 2 of 4 proteins
def test_evaluation_takes_the_first_proteins_of_the_validation_corpus(tmp_path, monkeypatch, num_eval_batches,
                                                                      val_proteins, evaluated_first):
    # Its buffer was bucket_batches evaluation batches sorted by length: with fewer evaluation
    # batches than that, the evaluation saw only the buffer's shortest proteins.
    from protrans_cli.training import loop

    evaluated = []

    class Recording(loop.CorpusStream):
        def _sample(self, buffer, pos, state):
            sample = super()._sample(buffer, pos, state)
            if self.max_epochs == 1:
                evaluated.append(sample.index)
            return sample

    monkeypatch.setattr(loop, "CorpusStream", Recording)
    val = tmp_path / "val.txt"
    val.write_text("".join(Path(LEARNABLE).read_text().strip().split("\n\n")[i] + "\n\n" for i in range(val_proteins)))
    train(_config(tmp_path, num_steps=2, eval_every=1, micro_batch_size=4, num_eval_batches=num_eval_batches,
                  bucket_batches=4, val_corpus=[str(val)]))
    # the same proteins at every evaluation
    assert evaluated == 2 * evaluated[:len(evaluated) // 2]
    assert sorted(evaluated[:len(evaluated) // 2]) == list(range(evaluated_first))


def test_a_corpus_error_met_in_training_leaves_no_half_made_run_directory(tmp_path, run_cli):
    """A bad line found when the stream reaches it (protein 250: step 49 at 4 proteins a step)
    stops the run with exit 1 and one line. The run directory it made, holding only
    train_config.json, was left behind; now it goes, with the parent it made. A run that logged
    metrics lines (a loss curve to look at), a directory that was there before, a run with a
    checkpoint and a --resume run keep theirs."""
    lines = Path(LEARNABLE).read_text().splitlines()
    lines[498] = "M K T 7 A Y"
    corpus = tmp_path / "late_error.txt"
    corpus.write_text("\n".join(lines) + "\n")
    args = ["train", "--corpus", corpus, "--num-steps", 100, "--max-length", 32, "--global-batch-size", 4,
            "--micro-batch-size", 4, "--log-every", 60, "-j", 1]  # no metrics line before step 49
    error = "late_error.txt:499: invalid residue '7' at residue 4"

    res = run_cli("-q", *args, "-o", tmp_path / "runs" / "fresh")
    assert res.exit_code == 1 and error in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "runs").exists()
    res = run_cli(*args, "-o", tmp_path / "fresh")
    assert res.exit_code == 1 and f"train: removed what this run wrote in {tmp_path / 'fresh'}" in res.stderr, res.stderr
    assert not (tmp_path / "fresh").exists()

    logged = tmp_path / "logged"
    res = run_cli(*args, "--log-every", 5, "-o", logged)
    assert res.exit_code == 1 and error in res.stderr
    assert len((logged / "metrics.jsonl").read_text().splitlines()) == 9  # steps 5..45: kept, with the config
    assert (logged / "train_config.json").is_file()

    before = tmp_path / "before"
    before.mkdir()
    res = run_cli(*args, "-o", before)
    assert res.exit_code == 1 and error in res.stderr
    assert (before / "train_config.json").is_file()  # left as it was: the directory was there before

    saved = tmp_path / "saved"
    res = run_cli(*args, "--save-every", 20, "-o", saved)
    assert res.exit_code == 1 and error in res.stderr
    assert sorted(p.name for p in (saved / "checkpoints").iterdir()) == ["step_00000020", "step_00000040"]
    assert (saved / "train_config.json").is_file()

    resumed = tmp_path / "resumed"
    res = run_cli(*args, "--resume", "-o", resumed)
    assert res.exit_code == 1 and error in res.stderr
    assert (resumed / "train_config.json").is_file()


def test_a_gpu_out_of_memory_in_a_step_is_one_line(tmp_path, run_cli, monkeypatch):
    """A step that runs out of GPU memory (simulated: torch's OutOfMemoryError, a RuntimeError and
    no MemoryError) was a traceback of the step's whole call stack: one line now, torch's own (what
    it tried to allocate, and how much the GPU has; not the 600 characters of each process's memory
    and allocator advice), then what to change: the step, a micro-batch size that still divides the
    global batch, activation checkpointing, and what --resume continues from. Exit 1; the half-made
    run directory removed, a run with a checkpoint kept."""
    from protrans_cli.training import loop

    says = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 14.75 GiB of which "
            "1.06 GiB is free. Including non-PyTorch memory, this process has 13.68 GiB memory in use.")
    advice = (" Of the allocated memory 13.50 GiB is allocated by PyTorch, and 27.88 MiB is reserved by PyTorch but "
              "unallocated. If reserved but unallocated memory is large try setting "
              "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
              "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
    step = loop.train_step
    steps = []

    def no_room_at(fails):
        def train_step(*args, **kwargs):
            steps.append(None)
            if len(steps) == fails:
                raise torch.OutOfMemoryError(says + advice)
            return step(*args, **kwargs)
        return train_step

    monkeypatch.setattr(loop, "train_step", no_room_at(1))
    res = run_cli("-q", "train", "--corpus", LEARNABLE, "--num-steps", 2, "--max-length", 32, "--global-batch-size", 12,
                  "--micro-batch-size", 4, "-j", 1, "-o", tmp_path / "run")
    assert res.exit_code == 1 and res.stderr.strip() == (
        f"protrans: error: {says[:-1]}; step 1 (max length 32, 4 proteins a forward pass): lower --micro-batch-size "
        "from 4 to 3 (the global batch stays 12, by more accumulation steps) or add --activation-checkpointing; no "
        "checkpoint was written yet; a shorter --max-length is a new run"), res.stderr
    assert not (tmp_path / "run").exists()

    steps.clear()
    monkeypatch.setattr(loop, "train_step", no_room_at(2))
    res = run_cli("-q", "train", "--corpus", LEARNABLE, "--num-steps", 3, "--max-length", 32, "--global-batch-size", 4,
                  "--micro-batch-size", 2, "--save-every", 1, "-j", 1, "-o", tmp_path / "run")
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert res.exit_code == 1 and res.stderr.strip() == (
        f"protrans: error: {says[:-1]}; step 2 (max length 32, 2 proteins a forward pass): lower --micro-batch-size "
        "from 2 to 1 (the global batch stays 4, by more accumulation steps) or add --activation-checkpointing; "
        f"--resume continues from the last checkpoint, {kept[-1]}, with either; a shorter --max-length is a new "
        "run"), res.stderr
    monkeypatch.setattr(loop, "train_step", step)  # the advice taken: the run goes on from its checkpoint
    res = run_cli("-q", "train", "--corpus", LEARNABLE, "--num-steps", 3, "--max-length", 32, "--global-batch-size", 4,
                  "--micro-batch-size", 1, "--activation-checkpointing", "--save-every", 1, "-j", 1,
                  "-o", tmp_path / "run", "--resume")
    assert res.exit_code == 0, res.stderr


def test_a_gpu_out_of_memory_suggests_a_micro_batch_size_every_phase_taking_it_accepts(tmp_path):
    """The micro-batch size a phase without its own shares with the others: the smaller one the
    out-of-memory line suggested divided the failing phase's global batch alone (6 of phase 2's 24),
    and --resume with it was refused by phase 1 (32 is not divisible by 6). It divides each one's now."""
    from protrans_cli.training.loop import _less_memory

    config = TrainConfig(corpus=["c.txt"], output_dir=str(tmp_path / "run"), micro_batch_size=8,
                         phases=[Phase(64, 10, 32), Phase(128, 10, 24), Phase(256, 10, 24, 6)])
    said = _less_memory(config, 1, 15, 1, "none")
    assert "micro_batch_size from 8 to 4 (the global batch stays 24" in said, said  # (Python's names: no CLI here)
    config.micro_batch_size = 4
    config.validate()  # (the advice taken: every phase accepts it)
    # a phase's own micro-batch size (MICRO of --phase) is that phase's alone
    assert "the phase's micro-batch size (MICRO of phases 256:10:24:6) from 6 to 4" in _less_memory(
        config, 2, 25, 1, "none")
    # with 2 processes, of each one's share (16 and 12): 4 there too
    config.micro_batch_size = 8
    assert "from 8 to 4 (the global batch stays 24" in _less_memory(config, 1, 15, 2, "ddp")


def test_an_unusable_validation_corpus_fails_before_training(tmp_path, run_cli):
    (tmp_path / "empty.txt").write_text("\n\n")
    cases = [(tmp_path / "missing.txt", "missing.txt: no such file"),
             (tmp_path / "empty.txt", "empty.txt: the validation corpus holds no protein"),
             (TRAIN / "too_few_proteins.txt", "too_few_proteins.txt: the validation corpus holds 3 protein(s), "
                                             "fewer than one evaluation batch of 4 (micro batch size 4 x 1 process(es))")]
    for i, (val, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        res = run_cli("train", "--corpus", LEARNABLE, "--val-corpus", val, "-o", out, "--num-steps", 2,
                      "--max-length", 32, "--global-batch-size", 8, "--micro-batch-size", 4, "-j", 1)
        assert res.exit_code == 1, res.stderr
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (out / "metrics.jsonl").exists()  # nothing trained
    # A bad line among the proteins an evaluation reads, after the first evaluation batch: the
    # run trained, warned "no eval loss" at each evaluation and ended with exit 0.
    lines = Path(LEARNABLE).read_text().splitlines()
    lines[20] = "M K T J Z 1 2"  # protein 11: in the evaluation (20 steps of 8), not in its first batch
    bad = tmp_path / "bad_val.txt"
    bad.write_text("\n".join(lines[:200]) + "\n")
    res = run_cli("train", "--corpus", LEARNABLE, "--val-corpus", bad, "-o", tmp_path / "bad", "--num-steps", 2,
                  "--max-length", 32, "--global-batch-size", 8, "--micro-batch-size", 4, "-j", 1)
    assert res.exit_code == 1 and "bad_val.txt:21: invalid residue 'J' at residue 4" in res.stderr, res.stderr
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_data_loader_workers_give_the_same_losses(tmp_path):
    # Dropout on: the DataLoader draws nothing from the global RNG, so 0, 1 or 2 workers give
    # the same dropout masks as well as the same batches.
    kw = dict(num_steps=4, log_every=1)
    a = train(_config(tmp_path / "a", **kw))
    b = train(_config(tmp_path / "b", num_workers=1, **kw))
    c = train(_config(tmp_path / "c", num_workers=2, **kw))
    assert a.losses == b.losses == c.losses and len(a.losses) == 4


def test_cli_phases(tmp_path, run_cli):
    out = tmp_path / "run"
    res = run_cli("train", "--corpus", LEARNABLE, "-o", out, "--phase", "48:3", "--phase", "96:2:8:4",
                  "--global-batch-size", 16, "--micro-batch-size", 8, "--log-every", 1, "-j", 1)
    assert res.exit_code == 0, res.stderr
    rows = read_metrics(out / "metrics.jsonl")
    assert [(r["step"], r["phase"]) for r in rows] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert "global batch 8 = 4 x 1 process(es) x 2 accumulation" in res.stderr
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["phases"][1] == {"max_length": 96, "num_steps": 2, "global_batch_size": 8, "micro_batch_size": 4}
    assert "ignored" not in res.stderr  # (phase 1 takes both flags' sizes)


def test_cli_batch_size_flags_that_every_phase_overrides_are_said_to_be_ignored(tmp_path, run_cli):
    """--global-batch-size / --micro-batch-size are the sizes of the phases that set none: where
    every phase sets its own, the flag changed nothing without a word."""
    res = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "r", "--phase", "32:1:4:2",
                  "--global-batch-size", 8, "--micro-batch-size", 4, "-j", 1)
    assert res.exit_code == 0, res.stderr
    assert ("protrans: warning: --global-batch-size 8 and --micro-batch-size 4 ignored: every phase sets its own "
            "(32:1:4:2)") in res.stderr
    assert "global batch 4 = 2 x 1 process(es) x 2 accumulation" in res.stderr
    # a phase without a micro-batch size of its own takes the flag's: only the global one is ignored
    res = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "s", "--phase", "32:1:4", "--phase", "32:1:4:4",
                  "--global-batch-size", 8, "--micro-batch-size", 2, "-j", 1)
    assert res.exit_code == 0, res.stderr
    assert "protrans: warning: --global-batch-size 8 ignored: every phase sets its own (32:1:4, 32:1:4:4)" in res.stderr
    assert "global batch 4 = 2 x 1 process(es) x 2 accumulation" in res.stderr


def test_cli_decay_flags_that_the_schedule_does_not_use_are_said_to_be_ignored(tmp_path, run_cli):
    """--decay-fraction shapes only wsd's and wsd_sqrt's decay, --min-lr-ratio only the schedules that
    decay to a floor: beside another schedule (`--decay-fraction 0.1` without `--schedule wsd`) the
    flag changed nothing without a word. A config file's value is not warned about (the template)."""
    args = ["train", "--corpus", LEARNABLE, "--num-steps", 1, "--max-length", 32, "--global-batch-size", 4,
            "--micro-batch-size", 4, "--save-every", 100, "-j", 1]
    res = run_cli(*args, "-o", tmp_path / "a", "--decay-fraction", 0.1)
    assert res.exit_code == 0, res.stderr
    assert ("protrans: warning: --decay-fraction 0.1 ignored: --schedule linear does not use it (wsd and wsd_sqrt "
            "decay over that last fraction of the steps)") in res.stderr
    res = run_cli(*args, "-o", tmp_path / "b", "--schedule", "constant", "--min-lr-ratio", 0.5)
    assert res.exit_code == 0, res.stderr
    assert ("protrans: warning: --min-lr-ratio 0.5 ignored: --schedule constant does not decay to a floor "
            "(linear, cosine, wsd and wsd_sqrt do)") in res.stderr
    res = run_cli(*args, "-o", tmp_path / "c", "--schedule", "wsd", "--min-lr-ratio", 0.5, "--decay-fraction", 0.1)
    assert res.exit_code == 0 and "ignored" not in res.stderr, res.stderr
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"schedule": "inverse_sqrt", "decay_fraction": 0.1, "min_lr_ratio": 0.5}))
    res = run_cli(*args, "-o", tmp_path / "d", "--config", config)
    assert res.exit_code == 0 and "ignored" not in res.stderr, res.stderr


def test_a_new_phase_reads_on_from_the_next_buffer_not_the_proteins_the_last_one_read(tmp_path, monkeypatch):
    """Phase 2 continues the stream at the next buffer (docs/train.md: "a new `--phase` starts at
    the next buffer"), not at the start of the buffer phase 1 was in: that read phase 1's
    proteins again in the same epoch."""
    from protrans_cli.training.data import CorpusStream

    read: dict[int, list[int]] = {}
    original = CorpusStream._sample

    def recording(self, buffer, pos, state):
        sample = original(self, buffer, pos, state)
        read.setdefault(self.max_residues, []).append(sample.index)
        return sample

    monkeypatch.setattr(CorpusStream, "_sample", recording)
    train(_config(tmp_path, phases=[Phase(48, 2), Phase(64, 2)], log_every=1))
    first, second = (set(read[k]) for k in sorted(read))
    assert len(first) == len(second) == 32  # 2 steps of 16 proteins each
    # phase 1's buffer: 4 batches of 16 from protein 0; phase 2's starts after it
    assert max(first) < 64 <= min(second)


def test_a_new_phase_after_the_buffer_that_took_the_corpus_tail_trains_no_protein_twice(tmp_path, monkeypatch):
    """70 proteins, global batch 16, 4 batches a buffer: the tail of 6 joins the first buffer (70
    proteins, 64 kept). Phase 2 started 64 proteins on, at that tail, and trained again in
    epoch 0 proteins phase 1's batches of the buffer had held; it starts at the next epoch."""
    from protrans_cli.training.data import CorpusStream

    corpus = tmp_path / "c.txt"
    rng = np.random.default_rng(0)
    corpus.write_text("".join(" ".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)) + "\n\n"
                              for n in rng.integers(10, 40, 70)))
    read: list[tuple[int, int]] = []
    original = CorpusStream._sample

    def recording(self, buffer, pos, state):
        sample = original(self, buffer, pos, state)
        read.append((sample.epoch, sample.index))
        return sample

    monkeypatch.setattr(CorpusStream, "_sample", recording)
    train(_config(tmp_path, corpus=[str(corpus)], phases=[Phase(48, 2), Phase(64, 2, 4, 4)], log_every=1))
    assert len(read) == 2 * 16 + 2 * 4
    assert len(set(read)) == len(read), "a protein trained twice in one epoch"
    assert {epoch for epoch, _ in read[32:]} == {1}  # phase 2 begins the next epoch


@pytest.mark.gpu
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_trains_on_the_gpu_in_bf16(tmp_path, family):
    result = train(_config(tmp_path, family, num_steps=20))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert result.losses[-1] < result.losses[0]
    from protrans_cli.models import load_model

    assert load_model(result.run_dir).family.name == family


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["bert", "electra", "esm"])
def test_fp16_with_loss_scaling_trains_on_the_gpu(tmp_path, family):
    # What a V100 or T4 runs (auto there); forced here on any CUDA GPU.
    result = train(_config(tmp_path, family, num_steps=20, log_every=2, precision="fp16"))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    applied = [r["loss"] for r in rows if r["loss"] is not None]
    assert applied and all(np.isfinite(applied)) and applied[-1] < applied[0]
    assert all(r["loss_scale"] >= 1 for r in rows)


def test_t5_span_corruption_learns(tmp_path):
    result = train(_config(tmp_path, "t5", objective="t5_span", num_steps=30))
    assert result.losses[-1] < 0.9 * result.losses[0], result.losses
    assert json.loads((result.run_dir / "train_config.json").read_text())["objective"] == "t5_span"


def test_a_fresh_run_into_a_used_run_directory_is_refused(tmp_path, run_cli):
    # Training again into a run directory used to add this run's checkpoints beside the old ones,
    # and a later --resume then picked the old run's higher step.
    cfg = _config(tmp_path, num_steps=4, save_every=2, log_every=2)
    train(cfg)
    res = run_cli("train", "--corpus", LEARNABLE, "-o", cfg.output_dir, "--num-steps", 2)
    assert res.exit_code == 2 and "already holds a run (step_00000004)" in res.stderr
    assert "--resume" in res.stderr
    # a bad value there is named first, not hidden behind "add --resume"
    res = run_cli("train", "--corpus", LEARNABLE, "-o", cfg.output_dir, "--global-batch-size", 0)
    assert res.exit_code == 2 and "--global-batch-size (global_batch_size) must be at least 1, got 0" in res.stderr
    assert sorted(p.name for p in (tmp_path / "run_bert" / "checkpoints").iterdir()) == \
        ["step_00000002", "step_00000004"]


def test_resume_removes_what_a_killed_save_left(tmp_path, capsys):
    """A SIGKILL in the middle of a save leaves `.step_*.tmp-PID` (as large as a checkpoint) and
    `.final.tmp-PID`, one in the middle of pruning `.step_*.old.PID`; the next run on the directory
    removes them, says so, and keeps the rest."""
    first = train(_config(tmp_path, num_steps=2, save_every=1))
    stale = [first.run_dir / "checkpoints" / ".step_00000003.tmp-4242", first.run_dir / ".final.tmp-4242",
             first.run_dir / "checkpoints" / ".step_00000000.old.4242"]
    for path in stale:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half written")
    capsys.readouterr()
    resumed = train(_config(tmp_path, num_steps=3, save_every=1), resume=True)
    assert resumed.step == 3 and not any(p.exists() for p in stale)
    assert sorted(p.name for p in (first.run_dir / "checkpoints").iterdir()) == \
        ["step_00000001", "step_00000002", "step_00000003"]
    err = capsys.readouterr().err
    assert all(f"removed {p}: a save that was killed" in err for p in stale), err


class _Killed(BaseException):
    pass


def test_a_kill_while_old_checkpoints_are_pruned_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    """--keep-last deleted an old checkpoint in place: a SIGKILL in that rmtree, once it had
    removed training_state.pt, left `step_N/` with the rest of its files, which no later run counted
    as a checkpoint or removed (found by scripts/train_kill_stress.py). It is renamed aside first."""
    from protrans_cli.training import checkpoint as ckpt

    rmtree = ckpt.shutil.rmtree

    def killed_half_way(path, ignore_errors=False):
        state = os.path.join(path, "training_state.pt")
        if os.path.exists(state):
            os.unlink(state)
            raise _Killed
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_half_way)
    with pytest.raises(_Killed):
        train(_config(tmp_path, num_steps=2, save_every=1, keep_last=1))
    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    result = train(_config(tmp_path, num_steps=3, save_every=1, keep_last=1), resume=True)
    assert result.step == 3
    assert sorted(p.name for p in (result.run_dir / "checkpoints").iterdir()) == ["step_00000003"]


def test_a_complete_run_resumed_keeps_only_the_last_checkpoints(tmp_path):
    """A kill between the last checkpoint's rename and the pruning after it, or a --keep-last
    lowered on resume: the resumed run had no save left to prune at, and kept them all."""
    train(_config(tmp_path, num_steps=4, save_every=1, keep_last=3))
    result = train(_config(tmp_path, num_steps=4, save_every=1, keep_last=2), resume=True)
    assert result.completed
    assert sorted(p.name for p in (result.run_dir / "checkpoints").iterdir()) == \
        ["step_00000003", "step_00000004"]
    # (it said last_checkpoint=None beside the checkpoint it had resumed from)
    assert result.last_checkpoint == result.run_dir / "checkpoints" / "step_00000004"


def test_complete_json_marks_a_finished_run_only_and_a_lengthened_one_once_it_finishes(tmp_path):
    """RUN/complete.json, which docs/train.md's requeue loop reads alone to tell a finished run from
    one --stop-after or --time-limit stopped (both exit 0): {"step": N} once the final model is
    written; absent after a stop; removed as a resumed invocation starts training, so a finished run
    lengthened with --resume is not complete while its old final model stays."""
    stopped = train(_config(tmp_path, num_steps=4, save_every=2, stop_after=2))
    marker = stopped.run_dir / "complete.json"
    assert not stopped.completed and not marker.exists()
    done = train(_config(tmp_path, num_steps=4, save_every=2), resume=True)
    # (with every step's tokens: those of the one metrics line, steps 1-2 trained before the stop)
    tokens = sum(r["tokens"] for r in read_metrics(done.run_dir / "metrics.jsonl"))
    assert done.completed and json.loads(marker.read_text()) == {"step": 4, "tokens": tokens}
    assert marker.stat().st_mtime_ns >= (done.run_dir / "model.safetensors").stat().st_mtime_ns  # written last
    longer = train(_config(tmp_path, num_steps=8, save_every=2, stop_after=6), resume=True)
    assert not longer.completed and not marker.exists() and (longer.run_dir / "model.safetensors").is_file()
    finished = train(_config(tmp_path, num_steps=8, save_every=2), resume=True)
    tokens = sum(r["tokens"] for r in read_metrics(done.run_dir / "metrics.jsonl"))
    assert finished.completed and json.loads(marker.read_text()) == {"step": 8, "tokens": tokens}


def test_a_run_resumed_for_more_steps_decays_over_its_new_length(tmp_path):
    """The restored scheduler kept the checkpoint's total steps: a 20-step run resumed to 40 sat
    at the minimum lr from step 20 on (found in review). Same length: the same lrs as before."""
    train(_config(tmp_path, num_steps=20, log_every=1, save_every=10))
    train(_config(tmp_path, num_steps=40, log_every=1, save_every=10), resume=True)
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run_bert" / "metrics.jsonl")}
    fresh = train(_config(tmp_path / "fresh", num_steps=40, log_every=1, save_every=100))
    expected = {r["step"]: r["lr"] for r in read_metrics(fresh.run_dir / "metrics.jsonl")}
    assert all(lrs[s] == pytest.approx(expected[s], rel=1e-9) for s in range(21, 41))  # the 40-step schedule
    assert lrs[30] > lrs[40] > 0.1 * 3e-3 * 0.99




def test_a_decayed_run_resumed_for_more_steps_says_its_lr_goes_back_up(tmp_path, capsys):
    """Lengthened after it had decayed, a run's lr rises at once (the schedule decays over the new
    length): said with both lrs, where it went on without a word (found in review). A run
    lengthened during its warmup, or resumed at its own length, says nothing."""
    # (the resumed runs stop soon after the resume, with stop_after: what is said, is said as they resume)
    train(_config(tmp_path, num_steps=20, save_every=10))
    capsys.readouterr()
    train(_config(tmp_path, num_steps=40, save_every=10, stop_after=25), resume=True)
    err = capsys.readouterr().err
    assert "the schedule now spans 40 steps (step_00000020's run had 20): the learning rate goes back up" in err, err
    rows = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run_bert" / "metrics.jsonl")}
    assert f"from {rows[20]:.3g} at step 20" in err and rows[25] > rows[20]

    train(_config(tmp_path / "warm", num_steps=20, warmup_steps=10, stop_after=5, save_every=100))
    train(_config(tmp_path / "warm", num_steps=40, warmup_steps=10, save_every=100, stop_after=6), resume=True)
    train(_config(tmp_path / "same", num_steps=20, stop_after=10, save_every=100))
    train(_config(tmp_path / "same", num_steps=20, save_every=100, stop_after=11), resume=True)
    assert "the schedule now spans" not in capsys.readouterr().err

class _RunsCode:  # a pickle that would run code when loaded
    def __reduce__(self):
        return (print, ("unpickled",))


def test_crafted_checkpoints_are_refused_in_one_line(tmp_path):
    """A checkpoint from elsewhere: SHA256SUMS naming a link to /dev/zero was hashed for ever;
    a state without its optimizer was a KeyError traceback; a refused pickle passed on torch's
    advice to load it with weights_only=False."""
    import os
    import shutil

    from protrans_cli.training import checkpoint as ckpt

    first = train(_config(tmp_path, num_steps=2, save_every=1))
    last = first.run_dir / "checkpoints" / "step_00000002"
    shutil.copytree(last, tmp_path / "good")
    state = torch.load(last / ckpt.STATE_FILE, weights_only=True)

    def no_optimizer():
        torch.save({k: v for k, v in state.items() if k != "optimizer"}, last / ckpt.STATE_FILE)

    def unsafe():
        torch.save({**state, "extra": _RunsCode()}, last / ckpt.STATE_FILE)

    def endless():
        os.symlink("/dev/zero", last / "z")

    for craft, said in ((endless, "cannot read z (not a regular file)"),
                        (no_optimizer, "no usable optimizer entry: not a training state protrans wrote"),
                        (unsafe, "holds objects other than tensors and plain values, which protrans never unpickles")):
        craft()
        ckpt._write_sums(last)
        if craft is endless:
            with open(last / ckpt.SUMS_FILE, "a") as fh:
                fh.write("0" * 64 + "  z\n")
        with pytest.raises(InputError) as info:
            train(_config(tmp_path, num_steps=3, save_every=1), resume=True)
        assert said in str(info.value) and "weights_only=False" not in str(info.value), str(info.value)
        shutil.rmtree(last)
        shutil.copytree(tmp_path / "good", last)


def test_a_tampered_training_state_that_loads_is_refused_on_resume_in_one_line(tmp_path):
    """training_state.pt rewritten with entries of the wrong form, its SHA256SUMS line updated
    (a run directory shipped whole): torch.load reads it, and the resume stopped with a traceback
    from random.setstate, a bare "Invalid argument" from the corpus reader's seek, or a shape
    error at the first step."""
    import shutil

    from protrans_cli.training import checkpoint as ckpt

    first = train(_config(tmp_path, num_steps=2, save_every=1))
    last = first.run_dir / "checkpoints" / "step_00000002"
    shutil.copytree(last, tmp_path / "good")
    state = torch.load(last / ckpt.STATE_FILE, weights_only=True)
    moment = next(iter(state["optimizer"]["state"]))

    def python_rng(s):
        s["rng"][0]["python"] = [1, 2]

    def negative_offset(s):
        s["data_state"]["at"]["offset"] = -5

    def optimizer_shape(s):
        s["optimizer"]["state"][moment]["exp_avg"] = torch.zeros(7)

    def scheduler_lambdas(s):
        s["scheduler"]["lr_lambdas"] = [5]

    def best_loss_text(s):  # (--keep-best's record: its eval loss compared with the next ones)
        s["best"] = {"step": 1, "eval_loss": "0.5"}

    def cursor_list(s):
        s["data_state"]["at"] = [0, 5]

    def unknown_position(s):  # (a newer version's data position: not read as if it were this one's)
        s["data_state"]["shuffle_pass"] = 1

    def scheduler_before_start(s):
        s["scheduler"]["last_epoch"] = -3

    def no_bucket_width(s):  # (the length buckets' width, which the stream divides lengths by)
        s["data_state"]["width"] = 0

    def unknown_plan(s):  # (a newer version's plan of batches)
        s["data_state"]["plan"] = 99

    def no_rng(s):  # (a list of no rank's generators: the resume took the state of rank min(0, -1))
        s["rng"] = []

    for craft, said in ((python_rng, "passed to Random.setstate()"), (negative_offset, "at.offset is -5, not a count"),
                        (cursor_list, "data_state: at is [0, 5], not a cursor (a table of positions)"),
                        (unknown_position, "data_state: unknown field 'shuffle_pass'"),
                        (no_bucket_width, "data_state: width is 0, not a width of at least 1"),
                        (unknown_plan, "data_state: plan 99 is not one this protrans knows"),
                        (no_rng, "no usable rng entry"),
                        (scheduler_before_start, "scheduler: last_epoch is -3, not a step"),
                        (optimizer_shape, "optimizer state 'exp_avg' is (7,) for a parameter of shape"),
                        (scheduler_lambdas, "not iterable"),
                        (best_loss_text, "best: {'step': 1, 'eval_loss': '0.5'}: not a step and an eval loss")):
        crafted = torch.load(tmp_path / "good" / ckpt.STATE_FILE, weights_only=True)
        craft(crafted)
        torch.save(crafted, last / ckpt.STATE_FILE)
        ckpt._write_sums(last)
        with pytest.raises(InputError, match=r"damaged checkpoint: cannot read training_state.pt \(.*\); continue "
                                             r"from the one before with resume='.*step_00000001'") as info:  # (a call's words)
            train(_config(tmp_path, num_steps=3, save_every=1), resume=True)
        assert said in str(info.value) and "\n" not in info.value.format(), str(info.value)
        shutil.rmtree(last)
        shutil.copytree(tmp_path / "good", last)
    assert train(_config(tmp_path, num_steps=3, save_every=1), resume=True).step == 3


_TINY_RUN_FLAGS = ("--corpus", LEARNABLE, "--max-length", 32, "--global-batch-size", 4, "--micro-batch-size", 4,
                   "--save-every", 1, "-j", 1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step `protrans train` run with a checkpoint at each step, made once for the module's
    resume tests (each copies it before changing it)."""
    from click.testing import CliRunner

    from conftest import _Entry

    run = tmp_path_factory.mktemp("tiny") / "run"
    res = CliRunner().invoke(_Entry("protrans"), ["train", *map(str, (*_TINY_RUN_FLAGS, "--num-steps", 2, "-o", run))],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return run


def _set(*path, to=None, drop=False):
    """A change of the training state: the entry at `path` set `to` a value, or dropped."""
    def change(state):
        for key in path[:-1]:
            state = state[key]
        if drop:
            del state[path[-1]]
        else:
            state[path[-1]] = to
    return change


@pytest.mark.parametrize("change, said", [
    (_set("corpus", to=[{}]), "corpus[0] is {}, not a file's size and ends_sha256"),
    (_set("corpus", to=[{"size": "12", "ends_sha256": "ab"}]), "corpus[0] is {'size': '12', 'ends_sha256': 'ab'}"),
    (_set("corpus", to=[None]), "corpus[0] is None, not a file's size and ends_sha256"),
    (_set("corpus", to={"size": 1}), "corpus is {'size': 1}, not a list of file fingerprints"),
    (_set("corpus", to="c.txt"), "corpus is 'c.txt', not a list of file fingerprints"),
    (_set("step", to=-1), "step is -1, not a count"),
    (_set("step", to=True), "step is True, not a count"),
    (_set("step", to=1), "step is 1, in the checkpoint of step 2"),
    (_set("data_phase", to=-1), "data_phase is -1, not a count"),
    (_set("data_phase", to=5), "data_phase is 5, past the run's 1 phase(s)"),
    (_set("world_size", to="2"), "world_size is '2', not a number of processes"),
    (_set("world_size", to=0), "world_size is 0, not a number of processes"),
    (_set("skipped_data", to={"after_step": 1, "steps": 3}),
     "skipped_data is {'after_step': 1, 'steps': 3}, not a list of --skip-data passes"),
    (_set("skipped_data", to=[{"after_step": 1, "steps": "3", "proteins": 12}]),
     "skipped_data[0] is {'after_step': 1, 'steps': '3', 'proteins': 12}, not a pass's after_step, steps and proteins"),
    (_set("skipped_data", to=[{"after_step": 1, "steps": 0, "proteins": 0}]), "skipped_data[0] is {'after_step': 1"),
    (_set("skipped_data", to=[None]), "skipped_data[0] is None, not a pass's after_step, steps and proteins"),
    (_set("nonfinite_steps", to="1"), "nonfinite_steps is '1', not a count"),
    (_set("nonfinite_steps", to=-1), "nonfinite_steps is -1, not a count"),
    (_set("log", to=5), "log is 5, not a table of the metrics interval"),
    (_set("log", "sums", drop=True), "log.sums is None, not a table of sums and counts"),
    (_set("log", "seconds", to="1.5"), "log.seconds is '1.5', not a number"),
    (_set("log", "steps", to=-2), "log.steps is -2, not a count"),
    (_set("loss_scale", to=[1.0]), "loss_scale is [1.0], not a loss scaler's state"),
    (_set("optimizer", "param_groups", drop=True), "optimizer: no 'param_groups' in it"),
    (_set("scheduler", to={}), "scheduler: no 'lr_lambdas' in it"),
    (_set("rng", to=[{}]), "rng: no 'python' in it"),
    (_set("rng", 0, "torch", to=5), "rng: expected a torch.ByteTensor"),
    (_set("data_state", to=None), "no usable data_state entry"),
])
def test_a_malformed_training_state_entry_is_named_in_one_line_on_resume(tiny_run, tmp_path, run_cli, change, said):
    """A hand-edited or foreign training_state.pt (its SHA256SUMS line updated) whose entries torch
    reads but the resume cannot use: a corpus fingerprint without its size was a KeyError traceback,
    a data_phase past the run's phases an IndexError at the first step, a log entry of another form a
    TypeError, and a step of -1 was refused as "holds checkpoints after step -1". Now one line
    naming the checkpoint, training_state.pt and the entry, exit 1, and nothing trained."""
    import shutil

    from protrans_cli.training import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    last = run / "checkpoints" / "step_00000002"
    state = torch.load(last / ckpt.STATE_FILE, weights_only=True)
    change(state)
    torch.save(state, last / ckpt.STATE_FILE)
    ckpt._write_sums(last)
    res = run_cli("train", *_TINY_RUN_FLAGS, "--num-steps", 3, "-o", run, "--resume")
    said_line = res.stderr.strip().splitlines()[-1]
    assert res.exit_code == 1 and said_line.startswith(
        f"protrans: error: {last}: damaged checkpoint: cannot read training_state.pt ("), res.stderr
    assert said in said_line and "Traceback" not in res.stderr, res.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]


def test_a_run_directory_in_use_with_checkpoints_is_refused_as_in_use_not_as_needing_resume(tiny_run, tmp_path, run_cli):
    """`protrans train -o RUN` on a run's directory while that run is training: it was told to "add
    --resume" (the check made before torch is imported, which takes no lock), and the --resume that
    followed was then refused as in use. The run in progress is the first thing to say."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with another_process(f"import fcntl, os\nfd = os.open({str(run)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)"):
        res = run_cli("train", *_TINY_RUN_FLAGS, "--num-steps", 3, "-o", run)
    assert res.exit_code == 1 and res.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {run}: is in use by another training run or learning-rate range test (protrans train, "
        "train() or find_lr(): it holds the run directory's lock): wait for it to end, or choose another -o"), res.stderr
    assert "--resume" not in res.stderr and sorted(p.relative_to(run) for p in run.rglob("*")) == before
    # the lock released, the run's checkpoints are what is said (the probe took no lock it kept)
    res = run_cli("train", *_TINY_RUN_FLAGS, "--num-steps", 3, "-o", run)
    assert res.exit_code == 2 and "already holds a run (step_00000002): add --resume" in res.stderr, res.stderr


def test_every_checkpoint_file_is_in_its_sha256sums_which_sha256sum_checks(tmp_path):
    import shutil
    import subprocess

    from protrans_cli.training import checkpoint as ckpt

    result = train(_config(tmp_path, "electra", num_steps=2, save_every=2))
    last = result.run_dir / "checkpoints" / "step_00000002"
    listed = [line.split("  ", 1)[1] for line in (last / ckpt.SUMS_FILE).read_text().splitlines()]
    files = sorted(p.relative_to(last).as_posix() for p in last.rglob("*") if p.is_file() and p.name != ckpt.SUMS_FILE)
    assert listed == files and "generator/model.safetensors" in listed
    assert ckpt.check_sums(last) is None
    if shutil.which("sha256sum"):
        done = subprocess.run(["sha256sum", "--quiet", "-c", ckpt.SUMS_FILE], cwd=last, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_sha256sums_naming_a_file_outside_the_checkpoint_is_refused(tmp_path):
    """A SHA256SUMS line naming `../x` or an absolute path (a checkpoint from elsewhere) is
    refused as not a line protrans writes, whatever the file there holds: without the check a
    checkpoint's sums vouched for files outside it, and passed every test."""
    from protrans_cli.io.files import sha256_file
    from protrans_cli.training import checkpoint as ckpt

    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    step.mkdir(parents=True)
    (step / "config.json").write_text("{}")
    outside = tmp_path / "run" / "checkpoints" / "x.bin"
    outside.write_bytes(b"not the checkpoint's")
    own = f"{sha256_file(step / 'config.json')}  config.json\n"
    (step / ckpt.SUMS_FILE).write_text(own)
    assert ckpt.check_sums(step) is None
    for name in ("../x.bin", str(outside)):
        (step / ckpt.SUMS_FILE).write_text(own + f"{sha256_file(outside)}  {name}\n")
        problem = ckpt.check_sums(step)
        assert problem is not None and "not a sha256sum line" in problem and "SHA256SUMS" in problem, problem


def test_damaged_checkpoints_and_a_full_disk_are_one_line_and_metrics_survive_a_cut_line(tmp_path, monkeypatch):
    """A checkpoint cut short (state or weights), a save that meets a full disk, and a metrics
    line cut short were tracebacks (the last one stopped every resume)."""
    import shutil

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.training import checkpoint as ckpt

    first = train(_config(tmp_path, num_steps=2, save_every=1, log_every=1))
    last = first.run_dir / "checkpoints" / "step_00000002"
    shutil.copytree(last, tmp_path / "good")
    weights = ckpt.HF_WEIGHTS  # (bert: its HF directory holds every weight, the checkpoint no second copy)
    assert not (last / ckpt.WEIGHTS_FILE).exists()

    def flip_a_byte(data):  # in the tensors, not the header: the file still loads, with other weights
        return data[:-100] + bytes([data[-100] ^ 0x10]) + data[-99:]

    # cut short, with and without SHA256SUMS (a checkpoint of an earlier version); a flipped bit,
    # which only the sums find
    for name, damage, sums in ((ckpt.STATE_FILE, lambda d: d[:300], True), (weights, lambda d: d[:300], True),
                               (ckpt.STATE_FILE, lambda d: d[:300], False), (weights, lambda d: d[:300], False),
                               (weights, flip_a_byte, True)):
        (last / name).write_bytes(damage((last / name).read_bytes()))
        if not sums:
            (last / ckpt.SUMS_FILE).unlink()
        with pytest.raises(InputError, match=rf"damaged checkpoint: cannot read {name} \((its bytes no longer "
                                             rf"match SHA256SUMS\)|(?!its).*\)); continue from the one before with "
                                             rf"resume='.*step_00000001', after moving this one away") as info:
            train(_config(tmp_path, num_steps=3, save_every=1), resume=True)
        assert "\n" not in info.value.format()
        assert ("SHA256SUMS" in str(info.value)) == sums
        shutil.copytree(tmp_path / "good", last, dirs_exist_ok=True)
    with open(first.run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')  # a line cut by a full disk
    original = torch.save

    def full(obj, f, *a, **k):
        if str(f).endswith(ckpt.STATE_FILE):
            raise OSError(28, "No space left on device")
        return original(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(RuntimeFailure, match=r"cannot write the checkpoint \(No space left on device\); "
                                              r"the last one is step_00000002"):
        train(_config(tmp_path, num_steps=3, save_every=1, log_every=1), resume=True)

    # torch's zip writer on a full disk names no cause: the disk's free room says it
    def enforce_fail(obj, f, *a, **k):
        if str(f).endswith(ckpt.STATE_FILE):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 285184 vs 285072")
        return original(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", enforce_fail)
    statvfs = os.statvfs
    monkeypatch.setattr(ckpt.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=12, f_frsize=1024))
    with pytest.raises(RuntimeFailure, match=r"cannot write the checkpoint \(No space left on device: 12 KiB free\); "):
        train(_config(tmp_path, num_steps=3, save_every=1, log_every=1), resume=True)
    monkeypatch.setattr(ckpt.os, "statvfs", statvfs)
    with pytest.raises(RuntimeFailure, match=r"cannot write the checkpoint \(\[enforce fail at"):
        train(_config(tmp_path, num_steps=3, save_every=1, log_every=1), resume=True)
    assert not list((first.run_dir / "checkpoints").glob(".step_*"))
    monkeypatch.setattr(torch, "save", original)
    resumed = train(_config(tmp_path, num_steps=3, save_every=1, log_every=1), resume=True)
    assert [r["step"] for r in read_metrics(first.run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert resumed.step == 3
    # a line damaged before the last (not a write cut short) is named, and the file left as it is
    metrics = first.run_dir / "metrics.jsonl"
    damaged = "\n".join(["{\"step\": 1, \"lo", *metrics.read_text().splitlines()[1:]]) + "\n"
    metrics.write_text(damaged)
    with pytest.raises(InputError) as info:
        train(_config(tmp_path, num_steps=3, save_every=1, log_every=1), resume=True)
    assert info.value.format() == f"{metrics}: line 1 is not JSON (a damaged metrics file)"
    assert metrics.read_text() == damaged


def test_resume_with_other_settings_is_refused_and_operational_ones_may_change(tmp_path):
    """A resumed run with another corpus, global batch, seed or lr went on silently (the saved
    data position applied to the other corpus, --lr overridden by the restored scheduler); now
    refused, naming what differs. Logging, checkpointing, threads and a longer run may change."""
    import shutil

    other = tmp_path / "other.txt"
    shutil.copy(LEARNABLE, other)
    train(_config(tmp_path, stop_after=2, warmup_steps=None))
    for change, named in ((dict(corpus=[str(other)]), "corpus"), (dict(global_batch_size=8), "global_batch_size"),
                          (dict(seed=7), "seed: 0 there, 7 here"), (dict(lr=0.05), "lr: 0.003 there, 0.05 here"),
                          (dict(warmup_steps=9), "warmup_steps")):
        with pytest.raises(UsageError, match=f"cannot resume from .*step_00000002 with other settings \\({named}"):
            train(_config(tmp_path, stop_after=3, **{"warmup_steps": None, **change}), resume=True)
    result = train(_config(tmp_path, num_steps=40, stop_after=4, log_every=2, save_every=3, warmup_steps=None,
                           corpus=[os.path.relpath(LEARNABLE)]), resume=True)
    assert result.step == 4


@pytest.mark.parametrize("change", [
    dict(optimizer="lamb"), dict(lr=1e-3), dict(weight_decay=0.0), dict(adam_beta1=0.8), dict(adam_beta2=0.999),
    dict(adam_eps=1e-6), dict(warmup_steps=5), dict(schedule="cosine"), dict(min_lr_ratio=0.0), dict(grad_clip=0.5),
    dict(decay_fraction=0.5), dict(decay_steps=20),
    dict(mask_prob=0.2), dict(bucket_batches=8), dict(seed=1), dict(precision="bf16"), dict(max_length=128),
    dict(global_batch_size=32), dict(model_overrides={"hidden_dropout_prob": 0.0}), dict(sample_clusters=True),
])
def test_resume_refuses_each_optimizer_schedule_and_data_setting_it_documents(tmp_path, change):
    """docs/train.md: --resume refuses other values of what the result depends on (model and
    objective settings, corpus, lengths and batch sizes, optimizer, learning rate and schedule,
    seed and precision), naming the setting, before any model is built: each one here, checked
    against a checkpoint's train_config.json alone."""
    from protrans_cli.training.checkpoint import resumed_config

    config = _config(tmp_path, precision="fp32")
    tmp_path.joinpath("step_00000002").mkdir()
    config.save(tmp_path / "step_00000002" / "train_config.json")
    assert resumed_config(dataclasses.replace(config, num_steps=60, log_every=1), tmp_path / "step_00000002")
    (name, value), = change.items()
    with pytest.raises(UsageError, match=f"with other settings \\({name}: .* there, .* here"):
        resumed_config(dataclasses.replace(config, **change), tmp_path / "step_00000002")


@pytest.mark.parametrize("family,extra,said", [
    ("electra", {}, "the generator's input is masked as ELECTRA's own code masks it"),
    ("albert", {"sop": True}, "first residue is left out of the sentence-order pair"),
    ("bert", {}, None),  # its objective did not change
])
def test_a_run_resumed_across_an_objective_change_says_so(tmp_path, capsys, family, extra, said):
    """A checkpoint written before an objective changed (no objective_revision in its
    train_config.json: before 2026-12-02) resumed with the new one without a word."""
    import json

    from protrans_cli.training.objectives import OBJECTIVE_REVISION

    train(_config(tmp_path, family=family, stop_after=2, **extra))
    saved = tmp_path / f"run_{family}" / "checkpoints" / "step_00000002" / "train_config.json"
    assert json.loads(saved.read_text())["resolved"]["objective_revision"] == OBJECTIVE_REVISION
    train(_config(tmp_path, family=family, stop_after=3, **extra), resume=True)  # today's: nothing said
    assert "objective differed" not in capsys.readouterr().err
    saved = tmp_path / f"run_{family}" / "checkpoints" / "step_00000003" / "train_config.json"
    data = json.loads(saved.read_text())
    del data["resolved"]["objective_revision"]
    saved.write_text(json.dumps(data))
    (saved.parent / "SHA256SUMS").unlink(missing_ok=True)  # (an older checkpoint may have none)
    result = train(_config(tmp_path, family=family, stop_after=4, **extra), resume=True)
    assert result.step == 4
    err = capsys.readouterr().err
    if said:
        assert "step_00000003 was written by an earlier protrans, whose objective differed" in err and said in err
        assert "The steps after 3 train with today's" in err
    else:
        assert "objective differed" not in err


def test_resume_with_phases_added_names_the_phases_not_a_default_length(tmp_path):
    """--phase on a resumed single-phase run read "max_length: 64 there, 512 here": 512 is the
    default of a flag nobody gave."""
    train(_config(tmp_path, stop_after=2))
    with pytest.raises(UsageError) as info:
        train(_config(tmp_path, phases=[Phase(64, 20), Phase(32, 20)]), resume=True)
    message = info.value.message
    assert "phases (LEN:GLOBAL_BATCH): '64:16 (no phases)' there, '64:16, 32:16' here" in message, message
    # (not "512" alone: the checkpoint's path in the message may hold it, as in /tmp/pytest-512/)
    assert "512 here" not in message and "max_length:" not in message, message
    # the run's own length and global batch as its one phase is the same run (it was refused:
    # "'64:16 (no phases)' there, '64:16' here"), and ends where the run without phases ends
    resumed = train(_config(tmp_path, phases=[Phase(64, 30)]), resume=True)
    assert resumed.completed and resumed.step == 30
    straight = train(_config(tmp_path / "straight"))
    from safetensors.torch import load_file

    a, b = (load_file(r.run_dir / "model.safetensors") for r in (resumed, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
    train(_config(tmp_path / "again", stop_after=2))
    with pytest.raises(UsageError, match="'64:16 \\(no phases\\)' there, '64:8' here"):
        train(_config(tmp_path / "again", phases=[Phase(64, 30, 8)]), resume=True)


def test_a_run_resumed_at_the_end_of_a_phase_starts_with_the_next_one(tmp_path, capsys):
    """A checkpoint at phase 1's last step: the resumed run's first line is phase 2's, its steps
    from the checkpoint's step on (not "phase 1/2: ... steps 3-2", a phase with nothing to run)."""
    config = dict(phases=[Phase(48, 2), Phase(64, 2)], log_every=1, save_every=1)
    train(_config(tmp_path, stop_after=2, **config))
    capsys.readouterr()
    assert train(_config(tmp_path, **config), resume=True).step == 4
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: phase")]
    assert len(said) == 1 and said[0].startswith("train: phase 2/2: max length 64, steps 3-4,"), said


def test_resume_may_change_the_current_phase_but_not_a_finished_one(tmp_path):
    # Lengthening phase 1 after the run had moved on to phase 2 sent it back to phase 1 (metrics'
    # phase went 1,1,2,2,1,1,2...) and skipped a buffer of data, with exit 0.
    def config(*steps, **kw):
        return _config(tmp_path, phases=[Phase(48, steps[0]), Phase(64, steps[1]), Phase(96, steps[2])],
                       log_every=1, save_every=1, **kw)

    train(config(2, 3, 2, stop_after=3))
    with pytest.raises(UsageError, match=r"phase 1 \(max length 48\) ended before step_00000003 after 2 steps, "
                                         r"and is given 4 here: a finished phase cannot change"):
        train(config(4, 3, 2), resume=True)
    # the phase the checkpoint is in may be lengthened, and later ones changed
    result = train(config(2, 4, 1, stop_after=5), resume=True)
    assert result.step == 5
    assert [r["phase"] for r in read_metrics(tmp_path / "run_bert" / "metrics.jsonl")] == [1, 1, 2, 2, 2]
    # ...but not cut below what it ran
    with pytest.raises(UsageError, match=r"phase 2 \(max length 64\) has run 3 steps by step_00000005, and is "
                                         r"given 2 here: give it at least 3"):
        train(config(2, 2, 1), resume=True)
    assert train(config(2, 4, 1), resume=True).step == 7
    # the last phase too (the run ended "done" at the checkpoint's step, its config saying fewer)
    assert train(config(2, 4, 3, stop_after=9), resume=True).step == 9
    with pytest.raises(UsageError, match=r"phase 3 \(max length 96\) has run 3 steps by step_00000009, and is "
                                         r"given 2 here"):
        train(config(2, 4, 2), resume=True)
    single = tmp_path / "single"
    train(_config(tmp_path, output_dir=str(single), num_steps=6, stop_after=4, save_every=1))
    with pytest.raises(UsageError, match=r"--num-steps 3 is below the 4 steps step_00000004 has run"):
        train(_config(tmp_path, output_dir=str(single), num_steps=3), resume=True)


def test_resume_with_fewer_steps_than_run_is_refused_before_any_model_is_built(tmp_path, monkeypatch):
    """`--resume --num-steps N` below the checkpoint's step (or a phase cut below what it ran),
    `--resume-from` an earlier checkpoint of a run holding later ones, and a `--stop-after` not
    after the checkpoint's step were refused only after the model was built (a minute and 11 GB
    for a ProtT5-XL preset on a CPU), where the settings the resume compares are refused before."""
    from protrans_cli.training import loop

    single = tmp_path / "single"
    train(_config(tmp_path, output_dir=str(single), num_steps=6, stop_after=4, save_every=1))
    phased = tmp_path / "phased"

    def config(*steps, **kw):
        return _config(tmp_path, output_dir=str(phased), phases=[Phase(48, steps[0]), Phase(64, steps[1])],
                       save_every=1, **kw)

    train(config(2, 3, stop_after=4))

    def built(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(loop, "build_run", built)
    with pytest.raises(UsageError, match=r"--num-steps 3 is below the 4 steps step_00000004 has run"):
        train(_config(tmp_path, output_dir=str(single), num_steps=3), resume=True)
    with pytest.raises(UsageError, match=r"phase 2 \(max length 64\) has run 2 steps by step_00000004, and is "
                                         r"given 1 here"):
        train(config(2, 1), resume=True)
    with pytest.raises(UsageError, match=r"phase 1 \(max length 48\) ended before step_00000004 after 2 steps"):
        train(config(3, 3), resume=True)
    # --resume-from an earlier checkpoint of a run that holds later ones: refused before too
    with pytest.raises(UsageError, match=r"holds checkpoints after step 2 \(step_00000003, step_00000004\)"):
        train(config(2, 3), resume=str(phased / "checkpoints" / "step_00000002"))
    # --stop-after not after the checkpoint's step: refused before too
    with pytest.raises(UsageError, match=r"--stop-after 4 \(stop_after\) is not after .*step_00000004's step 4: "
                                         r"nothing to train"):
        train(config(2, 3, stop_after=4), resume=True)
    # (what may change still gets as far as building the model)
    with pytest.raises(AssertionError, match="a model was built"):
        train(config(2, 5), resume=True)


def test_resume_from_another_directory_finds_the_same_corpus(tmp_path, monkeypatch):
    # A corpus saved as a relative path was resolved from the resume's directory and refused.
    import shutil

    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    shutil.copy(LEARNABLE, first / "corpus.txt")
    monkeypatch.chdir(first)
    train(_config(tmp_path, corpus=["corpus.txt"], stop_after=2, output_dir=str(tmp_path / "run")))
    monkeypatch.chdir(later)
    result = train(_config(tmp_path, corpus=[str(first / "corpus.txt")], stop_after=3,
                           output_dir=str(tmp_path / "run")), resume=True)
    assert result.step == 3
    # a run moved to another machine: its saved absolute path is not there; the same name is
    first.rename(tmp_path / "elsewhere")
    result = train(_config(tmp_path, corpus=[str(tmp_path / "elsewhere" / "corpus.txt")], stop_after=4,
                           output_dir=str(tmp_path / "run")), resume=True)
    assert result.step == 4


def test_resume_refuses_a_corpus_file_changed_since_the_checkpoint(tmp_path):
    # The saved data position counts proteins of the corpus: a file appended to, cut short or
    # rewritten (same size, same mtime) under the same name resumed silently with other batches.
    import shutil

    corpus = tmp_path / "corpus.txt"
    shutil.copy(LEARNABLE, corpus)
    kw = dict(corpus=[str(corpus)], output_dir=str(tmp_path / "run"))
    train(_config(tmp_path, stop_after=2, **kw))
    original = corpus.read_bytes()
    stat = corpus.stat()
    for changed, said in ((original + b"M K T\n\n", f"{len(original):,} bytes then, {len(original) + 7:,} now"),
                          (original[:-100], f"{len(original):,} bytes then, {len(original) - 100:,} now"),
                          (original[:-7] + b"M K T\n\n", "the same size, other content")):
        corpus.write_bytes(changed)
        os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        with pytest.raises(InputError, match=f"the corpus changed since .*step_00000002 was saved \\({corpus}: {said}"):
            train(_config(tmp_path, stop_after=3, **kw), resume=True)
    corpus.unlink()
    corpus.write_bytes(original)  # the same content again (another inode, another mtime): resumes
    assert train(_config(tmp_path, stop_after=3, **kw), resume=True).step == 3


def test_a_corpus_error_met_mid_run_says_the_step_and_the_checkpoint_to_resume_from(tmp_path, monkeypatch):
    """A gzip shard found truncated at step 220 said only the file's problem; and once repaired
    (a whole copy: another size), --resume refused the changed corpus with no way on but a new
    run. The error names the step and the last checkpoint; --accept-corpus-change resumes."""
    import shutil

    from protrans_cli.training import loop as loop_module

    corpus = tmp_path / "corpus.txt"
    shutil.copy(LEARNABLE, corpus)
    kw = dict(corpus=[str(corpus)], output_dir=str(tmp_path / "run"), save_every=2, num_steps=6)
    real = loop_module.step_batches

    def damaged(stream, num_workers=0):  # the shard's bytes end after four steps' batches
        for k, batch in enumerate(real(stream, num_workers)):
            if k == 4:
                raise InputError("corrupt or truncated compressed data (EOFError)", path=str(corpus))
            yield batch

    monkeypatch.setattr(loop_module, "step_batches", damaged)
    with pytest.raises(InputError, match=r"corpus.txt: corrupt or truncated compressed data \(EOFError\) \(met "
                                         r"reading step 5's batch; the last checkpoint is step_00000004: repair the "
                                         r"file, then resume=True \(accept_corpus_change=True if its size or "
                                         r"contents changed\)\)"):  # (a library call's words)
        train(_config(tmp_path, **kw))
    monkeypatch.setattr(loop_module, "step_batches", real)
    corpus.write_bytes(corpus.read_bytes() + b"M K T A\n\n")  # the repaired file: another size
    with pytest.raises(InputError, match=r"add accept_corpus_change=True"):  # (a library call's words)
        train(_config(tmp_path, **kw), resume=True)
    result = train(_config(tmp_path, **kw), resume=True, accept_corpus_change=True)
    assert result.completed and result.step == 6


def test_resume_into_another_family_names_the_checkpoint_model(tmp_path):
    # The error used to end in torch's bare header "(Error(s) in loading state_dict for ...:)"; then it
    # named the weights the checkpoint holds (exit 1); the settings are compared first now (exit 2).
    train(_config(tmp_path, num_steps=2, save_every=2, log_every=1))
    with pytest.raises(UsageError, match=r"family: 'bert' there, 't5' here") as info:
        train(_config(tmp_path, family="t5", num_steps=4, output_dir=str(tmp_path / "run_bert")), resume=True)
    assert "\n" not in info.value.format()
    # A checkpoint without its train_config.json (written by hand) is met by its weights.
    checkpoint = next((tmp_path / "run_bert" / "checkpoints").iterdir())
    (checkpoint / "train_config.json").unlink()
    sums = (checkpoint / "SHA256SUMS").read_text().splitlines()
    (checkpoint / "SHA256SUMS").write_text("".join(f"{l}\n" for l in sums if not l.endswith("train_config.json")))
    with pytest.raises(InputError, match=r"checkpoint does not match the model being trained: Missing key") as info:
        train(_config(tmp_path, family="t5", num_steps=4, output_dir=str(tmp_path / "run_bert")), resume=True)
    assert "\n" not in info.value.format()


def test_a_checkpoint_missing_its_pretraining_weights_file_says_so(tmp_path):
    """ELECTRA's checkpoints keep the generator in pretraining_model.safetensors (model.safetensors
    holds the discriminator alone). Without that file and SHA256SUMS (a checkpoint copied without
    it, of an earlier version) the resume loaded model.safetensors and said "checkpoint does not
    match the model being trained: it holds a electra/tiny model; Missing key(s)": the very model
    being resumed. It names the missing file now; with SHA256SUMS the sums name it, as before."""
    from protrans_cli.training import checkpoint as ckpt

    train(_config(tmp_path, "electra", num_steps=2, save_every=2, log_every=1))
    where = tmp_path / "run_electra" / "checkpoints" / "step_00000002"
    assert (where / ckpt.WEIGHTS_FILE).is_file()
    (where / ckpt.WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match=rf"cannot read {ckpt.WEIGHTS_FILE} \(missing\)"):
        train(_config(tmp_path, "electra", num_steps=4, save_every=2, log_every=1), resume=True)
    (where / ckpt.SUMS_FILE).unlink()
    with pytest.raises(InputError) as info:
        train(_config(tmp_path, "electra", num_steps=4, save_every=2, log_every=1), resume=True)
    message = info.value.format()
    assert message.startswith(f"{where}: checkpoint has no {ckpt.WEIGHTS_FILE}, the weights of the pretraining "
                              f"model that its {ckpt.HF_WEIGHTS} lacks (Missing key"), message
    assert message.endswith("): copy the file back from where the checkpoint was written, or resume from another "
                            "checkpoint") and "does not match" not in message and "\n" not in message, message
    # a model.safetensors holding a weight the model lacks (BERT writes every weight there and no
    # second copy) is no missing file: it does not match
    from safetensors.torch import load_file, save_file

    train(_config(tmp_path, num_steps=2, save_every=2, log_every=1))
    where = tmp_path / "run_bert" / "checkpoints" / "step_00000002"
    weights = load_file(where / ckpt.HF_WEIGHTS)
    weights["bert.extra.weight"] = next(iter(weights.values())).clone()
    save_file(weights, where / ckpt.HF_WEIGHTS)
    (where / ckpt.SUMS_FILE).unlink()
    with pytest.raises(InputError, match=r"checkpoint does not match the model being trained: it holds a bert/tiny "
                                         r"model; Unexpected key") as info:
        train(_config(tmp_path, num_steps=4, save_every=2, log_every=1), resume=True)
    assert ckpt.WEIGHTS_FILE not in info.value.format()
    # neither file (both deleted to save space): named as such, not a traceback from safetensors
    (where / ckpt.HF_WEIGHTS).unlink()
    with pytest.raises(InputError) as info:
        train(_config(tmp_path, num_steps=4, save_every=2, log_every=1), resume=True)
    assert info.value.format() == f"{where}: checkpoint has no {ckpt.WEIGHTS_FILE} (nor {ckpt.HF_WEIGHTS})"


def test_resume_with_another_vocabulary_than_the_checkpoints_is_refused(tmp_path):
    """A resumed run rebuilds its family's tokenizer: had a protrans release renumbered it, every
    id would mean another token to the trained embeddings, silently. The ids the checkpoint saved
    are compared (here the checkpoint's tokenizer.json has two residues swapped)."""
    from protrans_cli.training import checkpoint as ckpt

    train(_config(tmp_path, num_steps=4, save_every=2, stop_after=2))
    where = tmp_path / "run_bert" / "checkpoints" / "step_00000002"
    tokenizer = json.loads((where / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["A"], vocab["L"] = vocab["L"], vocab["A"]
    (where / "tokenizer.json").write_text(json.dumps(tokenizer))
    ckpt._write_sums(where)
    with pytest.raises(InputError, match=r"trained with another vocabulary than this protrans builds for its "
                                         r"family: 2 token\(s\) have other ids \(e.g. 'A': ") as info:
        train(_config(tmp_path, num_steps=4, save_every=2), resume=True)
    assert "\n" not in info.value.format()
    (where / "tokenizer.json").write_text(json.dumps(tokenizer)[:-20])  # cut short: its sums line updated
    ckpt._write_sums(where)
    with pytest.raises(InputError, match=r"damaged checkpoint: cannot read tokenizer.json \(.*\); no earlier "
                                         r"checkpoint to go back to") as info:
        train(_config(tmp_path, num_steps=4, save_every=2), resume=True)
    assert "\n" not in info.value.format()
    vocab["A"], vocab["L"] = vocab["L"], vocab["A"]  # as saved: resumes
    (where / "tokenizer.json").write_text(json.dumps(tokenizer))
    ckpt._write_sums(where)
    assert train(_config(tmp_path, num_steps=4, save_every=2), resume=True).step == 4
    # ESM saves its vocabulary as vocab.txt, one token a line: compared the same way
    train(_config(tmp_path, "esm", num_steps=4, save_every=2, stop_after=2))
    where = tmp_path / "run_esm" / "checkpoints" / "step_00000002"
    assert not (where / "tokenizer.json").exists()
    with open(where / "vocab.txt", "a", encoding="utf-8") as fh:
        fh.write("\n<extra>")  # (the file ends without a newline)
    ckpt._write_sums(where)
    with pytest.raises(InputError, match=r"trained with another vocabulary than this protrans builds for its "
                                         r"family: 1 token\(s\) are in one vocabulary only"):
        train(_config(tmp_path, "esm", num_steps=4, save_every=2), resume=True)


def _signal_in_step_4(tmp_path, monkeypatch, signum):
    """(the settings of a 10-step run, its uninterrupted result, the real append_metrics), `signum`
    raised in the middle of step 4 (after step 3's metrics line) of the next run of those settings."""
    from protrans_cli.training import loop

    kw = dict(num_steps=10, log_every=1, save_every=100, bucket_batches=2, seed=3)
    whole = train(_config(tmp_path / "whole", **kw))
    append = loop.append_metrics

    def append_and_signal(path, record):
        append(path, record)
        if record.get("step") == 3:
            signal.raise_signal(signum)

    monkeypatch.setattr(loop, "append_metrics", append_and_signal)
    return kw, whole, append


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM,
                                    *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])])  # (a terminal that hung up)
def test_a_signal_saves_a_checkpoint_at_the_step_under_way_and_resume_loses_nothing(tmp_path, monkeypatch, capsys,
                                                                                     signum):
    from protrans_cli.training import loop

    class Stopped(Exception):
        pass

    def previous_handler(sig, frame):  # what the CLI installs: it turns SIGTERM into exit 143, SIGHUP into 129
        raise Stopped(sig)

    kw, whole, append = _signal_in_step_4(tmp_path, monkeypatch, signum)
    old = signal.signal(signum, previous_handler)
    try:
        with pytest.raises(Stopped):
            train(_config(tmp_path / "parts", **kw))
        # The run's own handler is gone again.
        assert signal.getsignal(signum) is previous_handler
    finally:
        signal.signal(signum, old)
    # Its one warning offers a second Ctrl-C ("again" only after a first one), except after a
    # hang-up, which left no terminal to press it on: that says why the run stopped instead.
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protrans: warning:")]
    assert warned == ["protrans: warning: " + {
        signal.SIGINT: "stopping after this step to save a checkpoint (Ctrl-C again stops at once, losing the steps "
                       "since the last one)",
        signal.SIGTERM: "stopping after this step to save a checkpoint (Ctrl-C stops at once, losing the steps since "
                        "the last one)",
    }.get(signum, "the terminal hung up: stopping after this step to save a checkpoint")]
    run_dir = tmp_path / "parts" / "run_bert"
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["step_00000003"]
    monkeypatch.setattr(loop, "append_metrics", append)
    rest = train(_config(tmp_path / "parts", **kw), resume=True)
    assert rest.completed and rest.step == 10
    assert [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")] == whole.losses  # bit for bit on CPU


@pytest.mark.parametrize("nohup", [False, True], ids=["hung-up", "nohup"])
def test_a_terminal_that_hangs_up_stops_train_with_a_checkpoint_and_a_nohup_run_goes_on(tmp_path, run_cli, nohup):
    """An ssh connection that drops under `protrans train` run without nohup or tmux: the SIGHUP
    killed it on the spot, every step since its last checkpoint lost. It stops as for SIGTERM
    now: the step under way finished, a checkpoint saved there, exit 129; --resume then ends as
    an uninterrupted run. Started under nohup (SIGHUP ignored) it trains on to the end, exit 0,
    its messages discarded where the terminal is gone (EIO: its last line had failed it, exit 1)."""
    import sys

    from conftest import ROOT, hung_up

    args = ["train", "--family", "bert", "--corpus", LEARNABLE, "--num-steps", "10", "--max-length", "64",
            "--global-batch-size", "16", "--micro-batch-size", "8", "--lr", "3e-3", "--warmup-steps", "3",
            "--log-every", "1", "--save-every", "1000", "-j", "1"]
    run_dir, whole = tmp_path / "parts", tmp_path / "whole"
    metrics = run_dir / "metrics.jsonl"
    code = hung_up([sys.executable, "-m", "protrans_cli", *args, "-o", str(run_dir)],
                   lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, nohup=nohup, cwd=ROOT)
    reached = [r["step"] for r in read_metrics(metrics)][-1]
    if nohup:
        assert code == 0 and reached == 10 and (run_dir / "complete.json").exists()
        return
    assert code == 129 and 3 <= reached < 10
    assert _checkpoints(run_dir) == [f"step_{reached:08d}"]  # the step it had reached
    assert run_cli(*args, "-o", run_dir, "--resume").exit_code == 0
    assert run_cli(*args, "-o", whole).exit_code == 0
    assert [r["loss"] for r in read_metrics(metrics)] == [r["loss"] for r in read_metrics(whole / "metrics.jsonl")]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_a_hang_up_sent_to_the_whole_job_is_one_warning_and_one_line_in_its_log(tmp_path):
    """`protrans train ... --num-workers 2 2> train.log` over ssh, the connection dropped: the shell
    sends SIGHUP to the whole job, DataLoader workers included, which said the run's warning again
    each ("stopping after this step ..." three times in the log). They leave it to the trainer, as
    Ctrl-C and SIGTERM: one warning, then the line that says where the checkpoint is, exit 129."""
    import subprocess
    import sys
    import time

    from conftest import ROOT

    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    metrics = run_dir / "metrics.jsonl"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "protrans_cli", "train", "--family", "bert", "--corpus", LEARNABLE,
                                 "--num-steps", "30", "--max-length", "64", "--global-batch-size", "16",
                                 "--micro-batch-size", "8", "--log-every", "1", "--save-every", "1000", "-j", "1",
                                 "--num-workers", "2", "-o", str(run_dir)], stdin=subprocess.DEVNULL, stderr=err,
                                cwd=ROOT, start_new_session=True)
    deadline = time.time() + 60
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGHUP)
    assert proc.wait(timeout=60) == 129
    reached = [r["step"] for r in read_metrics(metrics)][-1]
    said = [line for line in log.read_text().splitlines() if line.startswith("protrans:")]
    assert said == ["protrans: warning: the terminal hung up: stopping after this step to save a checkpoint",
                    f"protrans: error: hung up: train stopped at step {reached}/30; checkpoint "
                    f"{run_dir / 'checkpoints' / f'step_{reached:08d}'}; continue with the same command and --resume"]


_WARNINGS = [getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name)]


@pytest.mark.parametrize("signum", _WARNINGS, ids=lambda s: signal.Signals(s).name)
def test_a_schedulers_warning_signal_stops_after_the_step_with_a_checkpoint_as_planned(tmp_path, monkeypatch, capsys,
                                                                                      signum):
    """Slurm's `--signal=USR1@120` (Lightning's and many lab templates' way) warns the job before
    its time limit: SIGUSR1's default action killed the run on the spot, every step since its last
    checkpoint lost. It is a planned stop now, as --time-limit's: the step under way finished, its
    checkpoint saved, train() returns (the CLI exits 0); --resume goes on as if uninterrupted."""
    from protrans_cli.training import loop

    kw, whole, append = _signal_in_step_4(tmp_path, monkeypatch, signum)
    before = signal.getsignal(signum)
    result = train(_config(tmp_path / "parts", **kw))
    assert signal.getsignal(signum) is before
    assert not result.completed and result.step == 3 and result.stopped_by == signal.Signals(signum).name
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protrans: warning:")]
    assert warned == [f"protrans: warning: {signal.Signals(signum).name}, the scheduler's warning that the job's time "
                      "is nearly up: stopping after this step to save a checkpoint"]
    run_dir = tmp_path / "parts" / "run_bert"
    assert _checkpoints(run_dir) == ["step_00000003"] and not (run_dir / "complete.json").exists()
    monkeypatch.setattr(loop, "append_metrics", append)
    rest = train(_config(tmp_path / "parts", **kw), resume=True)
    assert rest.completed and rest.step == 10
    assert [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")] == whole.losses  # bit for bit on CPU


@pytest.mark.skipif(not _WARNINGS, reason="no SIGUSR1 on this platform")
def test_slurms_warning_signal_to_the_whole_job_step_exits_0_with_a_checkpoint(tmp_path, run_cli):
    """`#SBATCH --signal=USR1@120` sends SIGUSR1 to every process of the job step, DataLoader workers
    included: the run (and each worker) died of it at once (exit -10). Now the workers leave it to
    the trainer, which saves a checkpoint at the step under way and exits 0, as --time-limit's
    planned stop does, so that a requeue script's `&& { [ -e RUN/complete.json ] || scontrol
    requeue ...; }` requeues it; --resume then ends as the uninterrupted run."""
    import subprocess
    import sys
    import time

    from conftest import ROOT

    args = ["train", "--family", "bert", "--corpus", LEARNABLE, "--num-steps", "30", "--max-length", "64",
            "--global-batch-size", "16", "--micro-batch-size", "8", "--log-every", "1", "--save-every", "1000",
            "-j", "1", "--num-workers", "2"]
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    metrics = run_dir / "metrics.jsonl"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "protrans_cli", *args, "-o", str(run_dir)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT,
                                start_new_session=True)
    deadline = time.time() + 60
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=60) == 0, log.read_text()
    reached = [r["step"] for r in read_metrics(metrics)][-1]
    assert 3 <= reached < 30 and _checkpoints(run_dir) == [f"step_{reached:08d}"]
    assert not (run_dir / "complete.json").exists()
    said = [line for line in log.read_text().splitlines() if line.startswith("protrans:")]
    assert said == ["protrans: warning: SIGUSR1, the scheduler's warning that the job's time is nearly up: stopping "
                    "after this step to save a checkpoint"]
    assert (f"train: SIGUSR1 (the job's time is nearly up): stopped after step {reached} of 30, its checkpoint saved; "
            "continue with --resume") in log.read_text()
    assert run_cli(*args, "-o", run_dir, "--resume").exit_code == 0
    assert run_cli(*args, "-o", tmp_path / "whole").exit_code == 0
    assert [r["loss"] for r in read_metrics(metrics)] == [r["loss"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl")]


def test_a_second_ctrl_c_stops_at_once_without_the_checkpoint(tmp_path, monkeypatch, capsys):
    """The first Ctrl-C's warning says "Ctrl-C again stops at once, losing the steps since the last
    one": the second raises KeyboardInterrupt right there (the caller's SIGINT handler back in
    place), and no checkpoint of the step under way is written."""
    from protrans_cli.training import loop

    append = loop.append_metrics

    def append_and_press_twice(path, record):
        append(path, record)
        if record.get("step") == 3:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(loop, "append_metrics", append_and_press_twice)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, num_steps=10, log_every=1, save_every=100, bucket_batches=2))
    assert signal.getsignal(signal.SIGINT) is before
    run_dir = tmp_path / "run_bert"
    assert not list((run_dir / "checkpoints").glob("step_*")) and not (run_dir / "config.json").exists()
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("protrans: warning:")]
    assert warned == ["protrans: warning: stopping after this step to save a checkpoint (Ctrl-C again stops at once, "
                      "losing the steps since the last one)"]


def test_train_called_from_another_thread_runs_without_signal_handlers(tmp_path):
    """A notebook's or a service's worker thread may call train(): Python installs signal handlers
    in the main thread only, and the run neither fails for it nor touches the main thread's."""
    import threading

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    outcome = {}

    def work():
        try:
            outcome["result"] = train(_config(tmp_path, num_steps=2, log_every=1, save_every=1))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].completed and outcome["result"].step == 2
    assert {sig: signal.getsignal(sig) for sig in before} == before


def _same_weights(model, state):
    own = model.state_dict()
    assert set(state) <= set(own)
    return all(torch.equal(own[k].float(), state[k].float()) for k in state)


@pytest.mark.parametrize("family", ["bert", "electra", "t5"])
def test_init_from_a_run_starts_from_its_exact_weights_and_resumes(tmp_path, family):
    from safetensors.torch import load_file

    from protrans_cli.training import loop

    first = train(_config(tmp_path / "a", family, num_steps=8))
    saved = load_file(next(first.last_checkpoint / name for name in ("pretraining_model.safetensors", "model.safetensors")
                           if (first.last_checkpoint / name).is_file()))
    kw = dict(init_from=str(first.run_dir), num_steps=6, log_every=1, seed=4, lr=1e-3)
    got_family, tokenizer, model = loop._initial_model(_config(tmp_path / "b", **kw), None)
    assert got_family.name == family and _same_weights(model, saved)
    whole = train(_config(tmp_path / "whole", **kw))
    assert whole.completed and json.loads((whole.run_dir / "train_config.json").read_text())["family"] == family
    # Continued pretraining starts where the first run ended, not from random weights.
    fresh = train(_config(tmp_path / "fresh", family, **{**kw, "init_from": None}))
    assert whole.losses[0] < fresh.losses[0]
    # A continued run resumes like any other, without reading the original model again.
    part = train(_config(tmp_path / "parts", stop_after=3, **kw))
    (first.run_dir / "config.json").unlink()
    olds = list(part.run_dir.glob("checkpoints/*/train_config.json"))
    assert olds
    for saved in olds:  # as earlier versions wrote it (without SHA256SUMS)
        saved.write_text(json.dumps({**json.loads(saved.read_text()), "preset": "tiny"}))
        (saved.parent / "SHA256SUMS").unlink()
    rest = train(_config(tmp_path / "parts", **kw), resume=True)
    assert part.losses + rest.losses == whole.losses


def test_electra_init_from_with_set_reaches_the_generator_and_resumes_exactly(tmp_path):
    # --set reached the discriminator only, and a resumed run derived the generator again from
    # the discriminator's config (other dropout): its losses drifted from the uninterrupted run's
    first = train(_config(tmp_path / "a", "electra", num_steps=2))
    kw = dict(init_from=str(first.run_dir), num_steps=4, log_every=1,
              model_overrides={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    whole = train(_config(tmp_path / "whole", **kw))
    generator = json.loads((whole.run_dir / "generator" / "config.json").read_text())
    assert generator["hidden_dropout_prob"] == 0.0 and generator["attention_probs_dropout_prob"] == 0.0
    before = json.loads((first.run_dir / "generator" / "config.json").read_text())
    assert before["hidden_dropout_prob"] > 0 and generator["hidden_size"] == before["hidden_size"]
    part = train(_config(tmp_path / "parts", stop_after=2, **kw))
    rest = train(_config(tmp_path / "parts", **kw), resume=True)
    assert part.losses + rest.losses == whole.losses


def test_init_from_a_plain_transformers_checkpoint(tmp_path, capsys):
    """What the published ProtBert is: a BertForMaskedLM directory that transformers wrote."""
    from transformers import BertForMaskedLM, BertModel, T5EncoderModel

    from protrans_cli.models import FAMILIES
    from protrans_cli.training import loop

    bert = FAMILIES["bert"]
    tokenizer = bert.build_tokenizer()
    torch.manual_seed(1)
    reference = BertForMaskedLM(bert.build_config("tiny", tokenizer))
    reference.save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    _, _, model = loop._initial_model(_config(tmp_path / "r1", init_from=str(tmp_path / "mlm")), None)
    assert type(model) is BertForMaskedLM and _same_weights(model, reference.state_dict())
    assert "start from random" not in capsys.readouterr().err

    # An encoder without the MLM head: the head starts from random, with a warning.
    BertModel(reference.config).save_pretrained(tmp_path / "encoder")
    tokenizer.save_pretrained(tmp_path / "encoder")
    loop._initial_model(_config(tmp_path / "r2", init_from=str(tmp_path / "encoder")), None)
    assert "start from random (e.g. cls.predictions" in capsys.readouterr().err

    # An encoder-only T5 (like the published prot_t5_xl_half) has no decoder to continue with.
    t5 = FAMILIES["t5"]
    t5_tokenizer = t5.build_tokenizer()
    T5EncoderModel(t5.build_config("tiny", t5_tokenizer)).save_pretrained(tmp_path / "t5enc")
    t5_tokenizer.save_pretrained(tmp_path / "t5enc")
    with pytest.raises(Exception, match="holds only .* of the weights of a t5 pretraining model"):
        loop._initial_model(_config(tmp_path / "r3", init_from=str(tmp_path / "t5enc")), None)

    # Weights without the tokenizer files: transformers would make a tokenizer that maps every
    # residue to [UNK], and the run would train on nothing; it is refused, naming the directory.
    reference.save_pretrained(tmp_path / "no_tokenizer")
    with pytest.raises(Exception, match="no_tokenizer.*(no tokenizer files|unknown token)"):
        loop._initial_model(_config(tmp_path / "r4", init_from=str(tmp_path / "no_tokenizer")), None)


def test_init_from_errors_are_one_line(tmp_path, run_cli):
    r = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "x", "--init-from", tmp_path / "nowhere")
    assert r.exit_code == 1 and "no such model directory" in r.stderr and "Traceback" not in r.stderr
    train(_config(tmp_path / "a", num_steps=2))
    r = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "y", "--init-from", tmp_path / "a" / "run_bert",
                "--set", "no_such_field=1", "--num-steps", "1")
    assert r.exit_code == 2 and "--set no_such_field" in r.stderr


def test_init_from_a_damaged_model_or_heads_that_do_not_fit_it_are_named(tmp_path, run_cli):
    """--init-from a model whose tokenizer.json or weights file is cut short is exit 1 naming the
    model and what failed, with or without --set: a --set of a setting such as dropout over a
    weights file cut short was exit 2 blaming --set ("the weights do not have that model's shapes;
    --set can change settings such as dropout, not sizes"). --set heads that do not divide the
    model's width are named before any loading."""
    import shutil

    source = train(_config(tmp_path / "a", num_steps=1, global_batch_size=4, micro_batch_size=4)).run_dir
    flags = ["--corpus", LEARNABLE, "--num-steps", 1, "--max-length", 32, "--global-batch-size", 4,
             "--micro-batch-size", 4, "-j", 1, "-o", tmp_path / "run"]
    r = run_cli("train", *flags, "--init-from", source, "--set", "num_attention_heads=3")
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: --set / model_overrides with --init-from {source}: hidden_size 32 is not a multiple of "
        "num_attention_heads 3")
    tokenizer = tmp_path / "tokenizer_cut"
    shutil.copytree(source, tokenizer, ignore=shutil.ignore_patterns("checkpoints"))
    (tokenizer / "tokenizer.json").write_text((source / "tokenizer.json").read_text()[:100])
    r = run_cli("train", *flags, "--init-from", tokenizer)
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1].startswith(
        f"protrans: error: --init-from {tokenizer}: cannot load the tokenizer: {tokenizer / 'tokenizer.json'}: not "
        "valid JSON (Expecting value: "), r.stderr
    weights = tmp_path / "weights_cut"
    shutil.copytree(source, weights, ignore=shutil.ignore_patterns("checkpoints"))
    data = (source / "model.safetensors").read_bytes()
    (weights / "model.safetensors").write_bytes(data[:len(data) // 2])
    for extra in ([], ["--set", "hidden_dropout_prob=0.2"]):
        r = run_cli("train", *flags, "--init-from", weights, *extra)
        said = r.stderr.strip().splitlines()[-1]
        assert r.exit_code == 1 and said.startswith(
            f"protrans: error: --init-from {weights}: cannot load the weights: "), (extra, r.stderr)
        assert "--set" not in said and "Traceback" not in r.stderr
    # a pickled pytorch_model.bin cut short is a RuntimeError from torch.load, as a shape that
    # does not fit is: still the file's problem under --set, not --set's
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "bin_cut"
    shutil.copytree(weights, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(load_file(source / "model.safetensors"), pickled / "pytorch_model.bin")
    data = (pickled / "pytorch_model.bin").read_bytes()
    (pickled / "pytorch_model.bin").write_bytes(data[:len(data) // 2])
    r = run_cli("train", *flags, "--init-from", pickled, "--set", "hidden_dropout_prob=0.2")
    said = r.stderr.strip().splitlines()[-1]
    # (torch's sentences after the first, "This is an internal miniz error. If you are seeing this error, ...", left out)
    assert r.exit_code == 1 and said == (
        f"protrans: error: --init-from {pickled}: cannot load the weights: the weights file is damaged or cut short "
        "(PytorchStreamReader failed reading zip archive: failed finding central directory): copy or download the "
        "model again"), r.stderr
    assert not (tmp_path / "run").exists()


def test_init_from_a_vocab_without_a_mask_token_is_one_line(tmp_path, run_cli):
    """ProtBert's layout (vocab.txt, no tokenizer.json) whose vocabulary lacks [MASK]:
    BertTokenizer adds its default mask token with id 30, one past the model's 30 rows, and the
    first step died with an IndexError traceback. Refused before training, naming the token."""
    import json

    from transformers import BertConfig, BertForMaskedLM

    model = tmp_path / "prot_bert_nomask"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(model)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[UNUSED]", *"LAGVESIKRDTPNQFYMHCWXUBZO"]
    (model / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (model / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    r = run_cli("train", "--init-from", model, "--corpus", LEARNABLE, "-o", tmp_path / "run", "--num-steps", 1,
                "--global-batch-size", 4, "--micro-batch-size", 4, "--max-length", 32)
    assert r.exit_code == 1 and "Traceback" not in r.stderr, r.stderr
    assert "its mask token ('[MASK]', id 30) is beyond the model's vocabulary of 30 entries" in r.stderr
    # with the [MASK] entry where ProtBert has it, the same weights train
    vocab[4] = "[MASK]"
    (model / "vocab.txt").write_text("\n".join(vocab) + "\n")
    r = run_cli("train", "--init-from", model, "--corpus", LEARNABLE, "-o", tmp_path / "run2", "--num-steps", 1,
                "--global-batch-size", 4, "--micro-batch-size", 4, "--max-length", 32)
    assert r.exit_code == 0, r.stderr


def test_eval_every_is_honoured_off_the_logging_grid(tmp_path):
    """--eval-every 3 with --log-every 2 evaluated only at step 6 (a step both divide) and at the end."""
    val = tmp_path / "val.txt"
    val.write_text(Path(LEARNABLE).read_text())
    result = train(_config(tmp_path / "ev", num_steps=7, log_every=2, eval_every=3, val_corpus=[str(val)]))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval_loss" in r] == [3, 6, 7]
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 7]
    assert all("loss" in r and r["tokens_per_s"] > 0 for r in rows)



def test_the_last_step_writes_a_line_off_the_logging_grid_without_a_validation_corpus(tmp_path):
    """A run whose length is no multiple of --log-every still logs its last steps (the loss the
    summary line and the curve end on): 5 steps logged every 2 write lines at steps 2, 4 and 5,
    the last one for step 5 alone."""
    result = train(_config(tmp_path / "ev", num_steps=5, log_every=2))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 5]
    assert all(r["loss"] is not None and r["tokens"] > 0 for r in rows) and len(result.losses) == 3

def test_resume_from_an_earlier_checkpoint_with_later_ones_is_refused(tmp_path):
    from protrans_cli.errors import UsageError

    cfg = _config(tmp_path / "r", num_steps=4, save_every=2, keep_last=3)
    train(cfg)
    earlier = cfg.output_dir + "/checkpoints/step_00000002"
    with pytest.raises(UsageError, match=r"checkpoints after step 2 \(step_00000004\)"):
        train(cfg, resume=earlier)


@pytest.mark.parametrize("text,message", [
    ('{"corpus": 5}', "corpus must be a path or a list of paths"),
    ('{"corpus": "c.txt", "model_overrides": [1, 2]}', "model_overrides must be a table"),
    ('{"corpus": "c.txt", "phases": "64:2"}', "phases must be a list"),
    ('{"corpus": "c.txt", "phases": [{"max_length": "64", "num_steps": 1}]}', "phase max_length must be a whole number"),
    ('{"corpus": "c.txt", "phases": [{"max_length": 64, "num_steps": 1.5}]}', "phase num_steps must be a whole number"),
    ('{"corpus": "c.txt", "num_steps": 5, "phases": ["64:2"]}', "num_steps cannot go with phases"),
    ('{"corpus": "c.txt", "warmup_steps": -5}', r"warmup_steps\) must be 0 or more"),
    ('{"corpus": "c.txt", "lr": NaN}', r"--lr \(lr\) must be positive, got nan"),
    ('{"corpus": "c.txt", "lr": Infinity}', r"--lr \(lr\) must be positive, got inf"),
    ('{"corpus": "c.txt", "weight_decay": NaN}', r"weight_decay\) must be 0 or more, got nan"),
    ('{"corpus": "c.txt", "grad_clip": NaN}', r"grad_clip\) must be 0 or more \(0: no clipping\), got nan"),
    ('{"corpus": "c.txt", "min_lr_ratio": -5.0}', r"--min-lr-ratio \(min_lr_ratio\) must be in \[0, 1\]"),
    ('{"corpus": "c.txt", "adam_beta1": 1.5}', r"adam_beta1 must be in \[0, 1\)"),
    # (a beta of exactly 1: Adam's bias correction 1 - beta**t is 0, and the first step is NaN)
    ('{"corpus": "c.txt", "adam_beta2": 1.0}', r"adam_beta2 must be in \[0, 1\), got 1.0"),
    ('{"corpus": "c.txt", "adam_beta1": 1}', r"adam_beta1 must be in \[0, 1\), got 1.0"),
    ('{"corpus": "c.txt", "adam_eps": -1.0}', "adam_eps must be positive"),
    ('{"corpus": "c.txt", "seed": -1}', r"--seed \(seed\) must be at least 0"),
    ('{"corpus": "c.txt", "mean_span_length": 0.0}', "mean_span_length must be at least 1"),
    ('{"corpus": "c.txt", "noise_density": 1.5}', "noise_density must be between 0 and 1"),
    ('{"corpus": "c.txt", "segment_length": 0}', "segment_length must be at least 1"),
    ('{"corpus": "c.txt", "electra_disc_weight": -50}', "electra_disc_weight must be positive"),
    ('{"corpus": "c.txt", "phases": [{"max_length": 64, "num_steps": 2, "global_batch_size": 0}]}',
     r"phase 1 \(64:2:0\): global_batch_size must be at least 1, got 0"),  # (the table's own, not the flag)
    ('{"corpus": "c.txt", "model_overrides": {"num_hidden_layers": -1}}',
     r"--set num_hidden_layers=-1 \(model_overrides\): must be at least 1"),
])
def test_config_file_values_of_the_wrong_kind_are_usage_errors(tmp_path, text, message):
    from protrans_cli.errors import UsageError

    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        TrainConfig.from_file(path).validate()


def test_metrics_of_a_stopped_and_resumed_run_are_the_uninterrupted_runs(tmp_path):
    """A stop between two metrics lines used to write a line of its own, and the resumed run's
    next line averaged only the steps after the stop; the checkpoint now keeps the interval."""
    kw = dict(num_steps=8, log_every=4)
    whole = read_metrics(train(_config(tmp_path / "whole", **kw)).run_dir / "metrics.jsonl")
    cfg = _config(tmp_path / "parts", stop_after=3, **kw)
    train(cfg)
    parts = read_metrics(train(_config(tmp_path / "parts", **kw), resume=True).run_dir / "metrics.jsonl")
    assert [r["step"] for r in parts] == [r["step"] for r in whole] == [4, 8]
    for a, b in zip(parts, whole):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["tokens"] == b["tokens"]
    # tokens/s of the line after the resume: the tokens of steps 1-4 over the training time of
    # steps 1-3 (kept in the checkpoint) and of step 4; it divided them by step 4's time alone
    run = tmp_path / "parts" / "run_bert"
    state = torch.load(run / "checkpoints" / "step_00000003" / "training_state.pt", weights_only=True)
    assert state["log"]["seconds"] > 0
    assert parts[0]["tokens"] / parts[0]["tokens_per_s"] > state["log"]["seconds"]
    # stop_after belongs to one invocation: not saved, so the run's own config resumes it
    assert json.loads((run / "train_config.json").read_text())["stop_after"] is None
    # a stop at or before the checkpoint's step: refused (it trained one step and saved nothing)
    train(_config(tmp_path / "again", stop_after=3, **kw))
    for stop in (3, 2):  # (3, the checkpoint's own step: it trained step 4, kept none of it, and said to resume)
        with pytest.raises(UsageError, match=f"--stop-after {stop} .* is not after .*step_00000003's step 3: "
                                             "nothing to train"):
            train(_config(tmp_path / "again", stop_after=stop, **kw), resume=True)


def test_tokens_of_every_step_are_counted_past_the_last_metrics_line_and_wsd_resumes_exactly(tmp_path, run_cli):
    """A checkpoint between metrics lines (step 5 of 7, lines every 3): its card, the stopped
    run's training state and, once resumed, complete.json, the final card and `protrans info`
    count every step's tokens, as a run logging each step does (the cards summed metrics.jsonl's
    lines and left out steps 4-5). The run decays warmup-stable-decay, and resumed inside its
    decay (decay_fraction 0.4 of 7: from step 4) it trains and schedules as the whole run."""
    from protrans_cli.training.optim import LRLambda

    kw = dict(num_steps=7, warmup_steps=2, schedule="wsd", decay_fraction=0.4, min_lr_ratio=0.05)
    every = read_metrics(train(_config(tmp_path / "every", log_every=1, **kw)).run_dir / "metrics.jsonl")
    per_step = [r["tokens"] for r in every]
    assert len(per_step) == 7 and len(set(per_step)) > 1
    assert [r["lr"] for r in every] == pytest.approx([3e-3 * LRLambda("wsd", 2, 7, 0.05, 0.4)(s) for s in range(7)])
    assert [r["lr"] for r in every][2:5] == [3e-3] * 3 and every[6]["lr"] < every[5]["lr"] < 3e-3
    whole = train(_config(tmp_path / "whole", log_every=3, save_every=5, **kw))
    run = tmp_path / "parts" / "run_bert"
    train(_config(tmp_path / "parts", log_every=3, save_every=5, stop_after=5, **kw))
    state = torch.load(run / "checkpoints" / "step_00000005" / "training_state.pt", weights_only=True)
    assert state["tokens"] == sum(per_step[:5])
    card = (run / "checkpoints" / "step_00000005" / "README.md").read_text()
    assert f"proteins seen, {sum(per_step[:5]):,} tokens\n" in card
    # the stopped run: metrics.jsonl's lines end at step 3, its checkpoint at step 5; `info` gives the
    # checkpoint's count (progress.json), and metrics.jsonl's sum where a checkpoint has none
    assert run_cli("info", run, "--json").exit_code == 0
    facts = json.loads(run_cli("info", run, "--json").stdout)
    assert (facts["tokens"], facts["tokens_up_to"], facts["tokens_from"]) == (sum(per_step[:5]), 5, "checkpoint")
    assert f"{sum(per_step[:5]):,} trained on up to step 5 (its last checkpoint's count)" in run_cli("info", run).stdout
    (run / "checkpoints" / "step_00000005" / "progress.json").rename(tmp_path / "progress.json")
    facts = json.loads(run_cli("info", run, "--json").stdout)
    assert (facts["tokens"], facts["tokens_up_to"], facts["tokens_from"]) == (sum(per_step[:3]), 3, "metrics.jsonl")
    assert f"{sum(per_step[:3]):,} trained on up to step 3 (metrics.jsonl's last line)" in run_cli("info", run).stdout
    (tmp_path / "progress.json").rename(run / "checkpoints" / "step_00000005" / "progress.json")
    # the checkpoint itself says the run's tokens up to it
    ckpt = json.loads(run_cli("info", run / "checkpoints" / "step_00000005", "--json").stdout)
    assert (ckpt["kind"], ckpt["tokens"], ckpt["tokens_up_to"]) == ("checkpoint", sum(per_step[:5]), 5)
    assert f"tokens        {sum(per_step[:5]):,} trained on by the run up to this step\n" in run_cli(
        "info", run / "checkpoints" / "step_00000005").stdout
    parts = train(_config(tmp_path / "parts", log_every=3, save_every=5, **kw), resume=True)
    assert parts.completed and parts.losses == whole.losses[1:] and len(whole.losses) == 3
    rows = read_metrics(run / "metrics.jsonl")
    assert [(r["step"], r["lr"]) for r in rows] == [(r["step"], r["lr"]) for r in read_metrics(
        whole.run_dir / "metrics.jsonl")] == [(s, every[s - 1]["lr"]) for s in (3, 6, 7)]
    assert json.loads((run / "complete.json").read_text()) == {"step": 7, "tokens": sum(per_step)}
    assert f"proteins seen, {sum(per_step):,} tokens\n" in (run / "README.md").read_text()
    facts = json.loads(run_cli("info", run, "--json").stdout)
    assert facts["tokens"] == sum(per_step) and "tokens_up_to" not in facts
    assert f"tokens        {sum(per_step):,} trained on\n" in run_cli("info", run).stdout


def _board(run_dir) -> dict[str, list[tuple[int, float]]]:
    """The TensorBoard scalars of a run directory as TensorBoard itself reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_mirrors_metrics_and_a_resume_hides_what_came_after_the_checkpoint(tmp_path, run_cli):
    """--tensorboard writes metrics.jsonl's lines as scalars (train/*, eval/*). A run killed after
    logging steps its last checkpoint does not hold logs them again when resumed: TensorBoard must
    show them once (purge_step), as metrics.jsonl drops the lines after the checkpoint."""
    pytest.importorskip("tensorboard")  # in the [test] extra: present in CI
    kw = dict(num_steps=6, log_every=1, save_every=2, tensorboard=True, val_corpus=[LEARNABLE], eval_every=3,
              num_eval_batches=1)
    whole = train(_config(tmp_path / "whole", **kw)).run_dir
    board, rows = _board(whole), read_metrics(whole / "metrics.jsonl")
    assert board["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    assert board["train/lr"] == [(r["step"], pytest.approx(r["lr"], rel=1e-6)) for r in rows]
    assert board["eval/loss"] == [(r["step"], pytest.approx(r["eval_loss"], rel=1e-6)) for r in rows if "eval_loss" in r]
    assert [s for s, _ in board["eval/loss"]] == [3, 6]
    # killed after logging step 5 (stopped there, its checkpoint removed): resumed from step 4
    parts = train(_config(tmp_path / "parts", stop_after=5, **kw)).run_dir
    import shutil

    shutil.rmtree(parts / "checkpoints" / "step_00000005")
    import time

    # (TensorBoard reads event files in the order of their names: whole seconds, then a counter of
    # the process's writers, whose 10 sorts before 9)
    time.sleep(1.05)
    train(_config(tmp_path / "parts", **kw), resume=True)
    resumed = _board(parts)
    assert [s for s, _ in resumed["train/loss"]] == [1, 2, 3, 4, 5, 6]
    for tag in ("train/loss", "eval/loss"):
        assert resumed[tag] == [(s, pytest.approx(v, rel=1e-5)) for s, v in board[tag]], tag
    # nothing logged (a run that fails before its first line): no folder, so its directory goes
    from protrans_cli.training.metrics import TensorBoardLog

    TensorBoardLog(tmp_path / "empty").close()
    assert not (tmp_path / "empty").exists()
    # the CLI says where the events go
    result = run_cli("train", "--family", "bert", "--preset", "tiny", "--corpus", LEARNABLE, "-o", tmp_path / "cli",
                     "--num-steps", "1", "--tensorboard")
    assert result.exit_code == 0, result.stderr
    assert (f"train: TensorBoard scalars in {tmp_path / 'cli' / 'tensorboard'} (tensorboard --logdir "
            f"{tmp_path / 'cli'})") in result.stderr
    # without the package: one line before any model is built
    import importlib.util

    real = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
        result = run_cli("train", "--family", "bert", "--preset", "tiny", "--corpus", LEARNABLE, "-o",
                         tmp_path / "none", "--num-steps", "2", "--tensorboard")
    assert result.exit_code == 2 and "--tensorboard needs the tensorboard package" in result.stderr, result.stderr
    assert "parameters" not in result.stderr and not (tmp_path / "none").exists()


def test_tensorboard_hides_an_abandoned_runs_events_however_the_resumed_runs_log(tmp_path):
    """Events an earlier run logged after the checkpoint are hidden as soon as a run resumes from
    it: they stayed on view for good where the resumed run wrote no line before its own next
    checkpoint (another --log-every, a stop) or ran without --tensorboard, though metrics.jsonl had
    dropped their lines. TensorBoard shows metrics.jsonl's lines, none of another's."""
    pytest.importorskip("tensorboard")
    import shutil
    import time

    kw = dict(num_steps=8, save_every=2, global_batch_size=4, micro_batch_size=4, max_length=32)

    def same(run_dir, steps):
        board, rows = _board(run_dir), {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
        assert [s for s, _ in board["train/tokens_per_s"]] == steps
        assert all(v == pytest.approx(rows[s]["tokens_per_s"], rel=1e-5) for s, v in board["train/tokens_per_s"])

    for name, between in (("log_every", dict(log_every=4, tensorboard=True)), ("off", dict(log_every=1))):
        run_dir = tmp_path / name / "run_bert"
        # killed after logging step 5: its last checkpoint is step 4
        train(_config(tmp_path / name, stop_after=5, log_every=1, tensorboard=True, **kw))
        shutil.rmtree(run_dir / "checkpoints" / "step_00000005")
        time.sleep(1.05)  # (TensorBoard reads event files in the order of their names: whole seconds)
        train(_config(tmp_path / name, stop_after=6, **between, **kw), resume=True)
        same(run_dir, [1, 2, 3, 4])
        time.sleep(1.05)
        train(_config(tmp_path / name, log_every=1, tensorboard=True, **kw), resume=True)
        same(run_dir, [1, 2, 3, 4, 7, 8])


def test_tensorboard_of_a_new_run_hides_a_failed_runs_events_in_its_directory(tmp_path, monkeypatch):
    """A run that diverges before its first checkpoint keeps its directory (its loss curve tells a
    better --lr); a new run there empties metrics.jsonl and must hide the old events too: the
    diverged run's line showed beside the new run's at the same step."""
    pytest.importorskip("tensorboard")
    import time

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.training import loop

    kw = dict(num_steps=6, log_every=3, tensorboard=True, global_batch_size=4, micro_batch_size=4, max_length=32)
    real, calls = loop.train_step, []

    def diverging(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise loop.NonFiniteGradient(float("nan"))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", diverging)
    with pytest.raises(RuntimeFailure):
        train(_config(tmp_path, lr=1.0, **kw))
    monkeypatch.setattr(loop, "train_step", real)
    time.sleep(1.05)  # (TensorBoard reads event files in the order of their names: whole seconds)
    run_dir = train(_config(tmp_path, **kw)).run_dir
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert _board(run_dir)["train/loss"] == [(r["step"], pytest.approx(r["loss"], rel=1e-5)) for r in rows]


def test_a_corpus_without_proteins_is_refused_before_a_model_is_built(tmp_path, run_cli):
    empty, other = tmp_path / "empty.txt", tmp_path / "empty2.txt.gz"
    empty.write_text("")
    import gzip

    other.write_bytes(gzip.compress(b""))
    res = run_cli("train", "--corpus", empty, "--corpus", other, "-o", tmp_path / "r", "--num-steps", "2")
    assert res.exit_code == 1 and "the corpus holds no protein" in res.stderr
    assert "parameters" not in res.stderr and not (tmp_path / "r").exists()  # no model was built
    # one empty shard among others trains from the others, with a warning naming it (a 0-byte
    # shard left by a failed copy went unnoticed)
    res = run_cli("train", "--corpus", empty, "--corpus", LEARNABLE, "-o", tmp_path / "ok", "--num-steps", "1",
                  "--global-batch-size", "4", "--micro-batch-size", "4", "--max-length", "32")
    assert res.exit_code == 0, res.stderr
    assert (f"corpus file {empty} holds no protein (an empty file, a copy that failed?): trained from the other "
            "1 file") in res.stderr.replace("\n", " ")


def test_a_corpus_smaller_than_a_later_phases_batch_is_refused_before_a_model_is_built(tmp_path, run_cli):
    """8 proteins, phase 1 batches of 8, phase 2 of 16: phase 1 trained, then step 3 failed
    ("met reading step 3's batch"; after the checkpoints of a long phase 1, advice to repair the
    file and --resume, which fails again)."""
    corpus = tmp_path / "eight.txt"
    corpus.write_text("".join(" ".join("MKTAYIAKQR"[: 3 + i]) + "\n\n" for i in range(8)))
    res = run_cli("train", "--corpus", corpus, "-o", tmp_path / "r", "--phase", "32:2:8:4", "--phase", "32:2:16:4")
    assert res.exit_code == 1, res.stderr
    assert ("eight.txt: the corpus holds 8 protein(s), fewer than one global batch (16 of phase 2, 32:2)"
            in res.stderr), res.stderr
    assert "parameters" not in res.stderr and not (tmp_path / "r").exists()  # no model was built


def test_init_from_with_a_size_changed_by_set_is_named_as_such(tmp_path, run_cli):
    """--set hidden_size / vocab_size with --init-from: the weights cannot take it. That was exit 1
    with "cannot load the weights ... see the above report" (no report shown), or a tokenizer said
    to be another model's."""
    from transformers import BertForMaskedLM

    from protrans_cli.models import FAMILIES

    bert = FAMILIES["bert"]
    tokenizer = bert.build_tokenizer()
    BertForMaskedLM(bert.build_config("tiny", tokenizer)).save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    # A depth keeps every tensor's shape: one layer fewer dropped the checkpoint's last layer
    # without a word (exit 0), one more trained a random layer.
    layers = bert.build_config("tiny", tokenizer).num_hidden_layers
    for bad in ("hidden_size=64", "vocab_size=5", "vocab_size=64", f"num_hidden_layers={layers - 1}",
                f"num_hidden_layers={layers + 1}"):
        res = run_cli("train", "--init-from", tmp_path / "mlm", "--corpus", LEARNABLE, "-o", tmp_path / "no",
                      "--set", bad, "--num-steps", 1)
        assert res.exit_code == 2, (bad, res.stderr)
        assert f"--set / model_overrides ({bad})" in res.stderr and "not sizes" in res.stderr, res.stderr
    assert "1 of its tensors would be left out" not in res.stderr and "would start from random" in res.stderr
    assert not (tmp_path / "no").exists()
    # a length beyond its learned positions: lower it (the remedy of a preset, --set
    # max_position_embeddings, is the size change just refused)
    res = run_cli("train", "--init-from", tmp_path / "mlm", "--corpus", LEARNABLE, "-o", tmp_path / "no",
                  "--max-length", 4096, "--num-steps", 1)
    assert res.exit_code == 2 and "--max-length 4096 (tokens, special tokens included) is beyond the model's 2048 " \
        "positions: lower it (the positions are those of --init-from" in res.stderr, res.stderr
    assert "--set max_position" not in res.stderr and "raise max_position_embeddings" not in res.stderr, res.stderr
    assert not (tmp_path / "no").exists()
    # a setting that keeps the weights still goes
    res = run_cli("train", "--init-from", tmp_path / "mlm", "--corpus", LEARNABLE, "-o", tmp_path / "yes",
                  "--set", "hidden_dropout_prob=0.0", "--num-steps", 1, "-j", 1)
    assert res.exit_code == 0, res.stderr


def test_init_from_set_values_are_typed_as_for_a_preset(tmp_path, run_cli):
    """`--set hidden_dropout_prob=0` reached ESM's strictly validated config as an int and was a
    traceback with --init-from (a preset run already gave it as a float)."""
    base = train(_config(tmp_path / "esm", "esm", num_steps=1))
    res = run_cli("train", "--init-from", base.run_dir, "--corpus", LEARNABLE, "-o", tmp_path / "more",
                  "--num-steps", "1", "--set", "hidden_dropout_prob=0", "-j", "1", "--max-length", "32",
                  "--global-batch-size", "4", "--micro-batch-size", "4")
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "more" / "config.json").read_text())["hidden_dropout_prob"] == 0.0
    res = run_cli("train", "--init-from", base.run_dir, "--corpus", LEARNABLE, "-o", tmp_path / "bad",
                  "--num-steps", "1", "--set", "hidden_dropout_prob=true")
    assert res.exit_code == 2 and "--set hidden_dropout_prob: invalid esm config: hidden_dropout_prob expects a " \
        "float, got true (a boolean)" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "<class" not in res.stderr
    saved = json.loads((tmp_path / "more" / "train_config.json").read_text())
    assert (saved["family"], saved["preset"]) == ("esm", None)  # it recorded the default preset, tiny
    # --preset and another --family than the model's were silently ignored
    for extra, message in ((["--preset", "small"], "preset 'small' cannot go with init_from"),
                           (["--family", "bert"], "--family bert (family) does not go with --init-from")):
        res = run_cli("train", "--init-from", base.run_dir, "--corpus", LEARNABLE, "-o", tmp_path / "no", *extra)
        assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "no").exists()
    res = run_cli("train", "--init-from", base.run_dir, "--family", "esm", "--corpus", LEARNABLE, "-o",
                  tmp_path / "same", "--num-steps", "1", "-j", "1", "--max-length", "32",
                  "--global-batch-size", "4", "--micro-batch-size", "4")
    assert res.exit_code == 0, res.stderr


def test_init_from_a_text_for_a_number_in_set_is_a_usage_error(tmp_path, run_cli):
    """`--set hidden_dropout_prob=abc` is exit 2 naming --set without --init-from; with it, the
    same value was exit 1 ('invalid bert config: ...', no --set named). true/false for a number is
    said alike (transformers' validation said "doesn't match any type in (<class 'float'>, ...)")."""
    base = train(_config(tmp_path / "bert", "bert", num_steps=1))
    for init in ([], ["--init-from", base.run_dir]):
        for value, said in (("abc", "got 'abc'"), ("true", "got true (a boolean)")):
            res = run_cli("train", *init, "--corpus", LEARNABLE, "-o", tmp_path / "bad", "--num-steps", "1",
                          "--set", f"hidden_dropout_prob={value}")
            assert res.exit_code == 2, res.stderr
            assert "--set" in res.stderr and f"hidden_dropout_prob expects a float, {said}" in res.stderr, res.stderr
            assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("setting,message", [
    ("hidden_dropout_prob=1", "hidden_dropout_prob is a probability of dropping, from 0 up to (not including) 1, "
                              "got 1.0"),
    ("attention_probs_dropout_prob=-0.1", "attention_probs_dropout_prob is a probability of dropping"),
    ("layer_norm_eps=-1", "layer_norm_eps must be greater than 0, got -1.0"),
    ("dtype=float16", "dtype is not a model setting here: --precision sets the training precision"),
])
def test_set_values_a_config_takes_but_training_cannot_are_usage_errors(tmp_path, run_cli, setting, message):
    """A dropout of 1 or a negative epsilon passed the config class and stopped at step 1 with
    "the gradient is not finite ... lower --lr"; --set dtype=float16 was ignored (fp32 run)."""
    res = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "bad", "--num-steps", "1", "--set", setting)
    assert res.exit_code == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("value", ["0", "-0.5", "1e400"])
def test_an_electra_generator_size_that_is_no_share_of_the_discriminator_is_a_usage_error(tmp_path, run_cli,
                                                                                            value):
    """generator_size is the generator's share of the discriminator's sizes (0.25): 0 was refused
    as "must be at least 1" (a generator larger than the discriminator), -0.5 trained a generator
    one unit wide without a word, infinity failed inside the model's building."""
    res = run_cli("train", "--family", "electra", "--corpus", LEARNABLE, "-o", tmp_path / "bad", "--num-steps", "1",
                  "--set", f"generator_size={value}")
    assert res.exit_code == 2, res.stderr
    assert "generator_size must be a number above 0 (the generator's share of the discriminator's" in res.stderr
    assert not (tmp_path / "bad").exists()
    from protrans_cli.models.electra import generator_config

    half = generator_config(FAMILIES["electra"].build_config("tiny", generator_size=0.5))  # (a share still is)
    assert (half.hidden_size, half.num_attention_heads, half.intermediate_size) == (16, 2, 32)


def test_transformer_xls_attention_dropout_of_1_is_a_usage_error(tmp_path, run_cli):
    """Transformer-XL names its attention dropout `dropatt`, which the rule for dropouts (a name
    with "dropout" or ending "_prob") missed: --set dropatt=1 trained a model whose every attention
    output was zero (no token saw another) without a word, where dropout=1 was refused."""
    res = run_cli("train", "--family", "transfo_xl", "--corpus", LEARNABLE, "-o", tmp_path / "bad", "--num-steps", "1",
                  "--set", "dropatt=1")
    assert res.exit_code == 2, res.stderr
    assert "dropatt is a probability of dropping, from 0 up to (not including) 1, got 1.0" in res.stderr
    assert not (tmp_path / "bad").exists()


def test_a_negative_transformer_xl_memory_is_a_usage_error(tmp_path, run_cli):
    """mem_len is the tokens of memory each layer keeps (0: none); a negative one trained without
    segment memory, as 0 does, without a word."""
    res = run_cli("train", "--family", "transfo_xl", "--corpus", LEARNABLE, "-o", tmp_path / "bad", "--num-steps", "1",
                  "--set", "mem_len=-5")
    assert res.exit_code == 2, res.stderr
    assert "mem_len -5 is negative: give the tokens of memory kept per layer (0: none)" in res.stderr
    assert not (tmp_path / "bad").exists()


def _non_finite_gradient_at(step: int, monkeypatch) -> None:
    """The gradient norm of the `step`-th clipping from now on is NaN (a diverged step)."""
    import protrans_cli.training.loop as loop

    real = getattr(torch.nn.utils.clip_grad_norm_, "__wrapped__", torch.nn.utils.clip_grad_norm_)
    calls = []

    def clip(parameters, max_norm, *args, **kwargs):
        norm = real(parameters, max_norm, *args, **kwargs)
        calls.append(1)
        return norm * float("nan") if len(calls) == step else norm

    clip.__wrapped__ = real  # (called again, it counts afresh on the real one)
    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", clip)


@pytest.mark.parametrize("save_every", [2, 1000])
def test_a_non_finite_gradient_stops_with_the_step_and_where_to_go_on_from(tmp_path, monkeypatch, save_every):
    """The step is not applied (the weights stay those of the step before) and the one line names
    the step, its loss and the last checkpoint (or says there is none)."""
    from protrans_cli.errors import RuntimeFailure

    _non_finite_gradient_at(5, monkeypatch)
    cfg = _config(tmp_path, num_steps=8, save_every=save_every)
    with pytest.raises(RuntimeFailure) as caught:
        train(cfg)
    message = caught.value.message
    assert message.startswith("step 5: the gradient is not finite (loss ")
    if save_every == 2:
        from protrans_cli.training.checkpoint import checkpoint_dir

        assert (f"continue from the last checkpoint, {checkpoint_dir(cfg.output_dir, 4)}, past this step's batch with "
                "resume=True, skip_data=1 (or more: PaLM skipped 200-500 batches around a spike), or skip_nonfinite N "
                "skips such steps, or start a new run from it with init_from and a lower lr") in message
    else:
        assert ("no checkpoint was written yet: lower lr or lengthen warmup_steps, or skip_nonfinite N skips such "
                "steps") in message  # (a call's words)


def _nan_in_a_gradient_at(steps, monkeypatch) -> None:
    """A NaN written into a real gradient at the `steps`-th clippings from now on (1-based), so that
    the step's gradient norm is NaN and an optimizer step would put NaN into the weights."""
    import protrans_cli.training.loop as loop

    real = getattr(torch.nn.utils.clip_grad_norm_, "__wrapped__", torch.nn.utils.clip_grad_norm_)
    calls = []

    def clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        calls.append(1)
        if len(calls) in steps:
            next(p for p in parameters if p.grad is not None).grad.view(-1)[0] = float("nan")
        return real(parameters, max_norm, *args, **kwargs)

    clip.__wrapped__ = real
    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", clip)


def _weights(checkpoint) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(checkpoint) / "model.safetensors")


def _state(checkpoint) -> dict:
    return torch.load(Path(checkpoint) / "training_state.pt", map_location="cpu", weights_only=True)


def test_skip_nonfinite_skips_the_step_without_touching_weights_or_optimizer_and_the_run_finishes(tmp_path,
                                                                                                  monkeypatch, capsys):
    """--skip-nonfinite 1 and a NaN in a gradient at step 3: the run completes; the checkpoint of
    step 3 holds step 2's weights and optimizer moments (nothing applied), the schedule and the
    data moved on; metrics.jsonl says the step was skipped, a warning names it; later steps train."""
    from protrans_cli.training.checkpoint import checkpoint_dir

    _nan_in_a_gradient_at({3}, monkeypatch)
    cfg = _config(tmp_path, num_steps=6, log_every=1, save_every=1, keep_last=10, skip_nonfinite=1)
    result = train(cfg)
    assert result.completed and result.step == 6
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert [(r["step"], r["skipped_steps"]) for r in rows] == [(1, 0), (2, 0), (3, 1.0), (4, 0), (5, 0), (6, 0)]
    assert rows[2]["loss"] is None and rows[2]["grad_norm"] is None
    assert all(math.isfinite(r["loss"]) for r in rows if r["step"] != 3)
    assert "step 3: the gradient is not finite (loss " in capsys.readouterr().err
    two, three, four = (checkpoint_dir(cfg.output_dir, k) for k in (2, 3, 4))
    w2, w3, w4 = _weights(two), _weights(three), _weights(four)
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # step 3 not applied
    assert all(torch.isfinite(v).all() for v in w4.values()) and any(not torch.equal(w3[k], w4[k]) for k in w3)
    s2, s3 = _state(two), _state(three)
    moments = [(a["exp_avg"], b["exp_avg"]) for a, b in zip(s2["optimizer"]["state"].values(),
                                                          s3["optimizer"]["state"].values())]
    assert moments and all(torch.equal(a, b) for a, b in moments)
    assert s3["scheduler"]["last_epoch"] == 3 and s3["data_state"] != s2["data_state"]
    assert "nonfinite_steps" not in s2 and s3["nonfinite_steps"] == 1 and _state(checkpoint_dir(cfg.output_dir, 6))[
        "nonfinite_steps"] == 1


def test_the_model_card_says_which_steps_were_skipped_and_which_data_passed_over(tmp_path, monkeypatch):
    """A run with a step skipped (--skip-nonfinite) and a --skip-data pass: its card said "Steps: 4
    of 4" as for a run that trained every step on the data in order."""
    _nan_in_a_gradient_at({3}, monkeypatch)
    cfg = _config(tmp_path, num_steps=4, log_every=1, save_every=2, skip_nonfinite=1, max_length=32, warmup_steps=1)
    assert train(dataclasses.replace(cfg, stop_after=2)).step == 2
    assert "skipped" not in (Path(cfg.output_dir) / "checkpoints" / "step_00000002" / "README.md").read_text()
    assert train(cfg, resume=True, skip_data=1).completed
    for where in (Path(cfg.output_dir), Path(cfg.output_dir) / "checkpoints" / "step_00000004"):
        text = (where / "README.md").read_text()
        assert ("- Steps: 4 of 4; 1 skipped, its gradient not finite (`--skip-nonfinite`); the data of 1 step "
                "passed over after step 2 (`--skip-data`)\n") in text, text
        assert "- Learning rate: 0.003 peak, 1 warmup step, linear decay" in text  # (it said "1 warmup steps")


def test_skip_nonfinite_stops_once_more_steps_than_allowed_are_not_finite(tmp_path, monkeypatch):
    from protrans_cli.errors import RuntimeFailure

    _nan_in_a_gradient_at({2, 4}, monkeypatch)
    with pytest.raises(RuntimeFailure) as caught:
        train(_config(tmp_path, num_steps=6, skip_nonfinite=1, save_every=3))
    message = caught.value.message
    assert message.startswith("step 4: the gradient is not finite (loss "), message
    assert "(1 such step skipped before it, as many as skip_nonfinite 1 allows)" in message
    assert ("continue from the last checkpoint, " + str(tmp_path / "run_bert" / "checkpoints" / "step_00000003")
            + ", past this step's batch with resume=True, skip_data=1 (or more") in message
    assert "a higher skip_nonfinite skips more such steps" in message


def test_the_count_of_skipped_steps_goes_on_across_a_resume(tmp_path, monkeypatch):
    """One step skipped before the checkpoint, the one allowed: a NaN after the resume stops the run."""
    from protrans_cli.errors import RuntimeFailure

    cfg = _config(tmp_path, num_steps=6, skip_nonfinite=1)
    _nan_in_a_gradient_at({2}, monkeypatch)
    assert train(dataclasses.replace(cfg, stop_after=3)).stopped_by == "stop_after"
    _nan_in_a_gradient_at({2}, monkeypatch)  # the 5th step of the run
    with pytest.raises(RuntimeFailure, match=r"^step 5: .* \(1 such step skipped before it"):
        train(cfg, resume=True)


def _batches_trained(monkeypatch) -> list:
    """The input ids of each step's micro-batches, as train_step is given them from now on."""
    import protrans_cli.training.loop as loop

    real, seen = loop.train_step, []

    def spy(run, optimizer, micro_batches, *args, **kwargs):
        seen.append([b["input_ids"].clone() for b in micro_batches])
        return real(run, optimizer, micro_batches, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", spy)
    return seen


def test_skip_data_trains_the_batches_an_uninterrupted_run_trains_after_the_skipped_ones(tmp_path, monkeypatch,
                                                                                         capsys):
    """Resumed at step 4 with --skip-data 15, steps 5-12 train the batches the uninterrupted run
    trains at steps 20-27 (masks included), past an epoch's end (18 batches of 16 of its 300
    proteins); the position is in the next checkpoint, so that a plain --resume from it goes on
    exactly; the pass is recorded."""
    reference = _batches_trained(monkeypatch)
    train(_config(tmp_path, num_steps=27, output_dir=str(tmp_path / "a")))
    assert len(reference) == 27
    cfg = _config(tmp_path, num_steps=12, output_dir=str(tmp_path / "b"), save_every=2)
    train(dataclasses.replace(cfg, stop_after=4))
    seen = _batches_trained(monkeypatch)
    result = train(dataclasses.replace(cfg, stop_after=8), resume=True, skip_data=15)
    assert result.step == 8
    assert "skip_data 15: passed over the data of 15 steps (240 proteins, not trained) after step 4: step 5 trains " \
           "the batch that step 20 would have (the data position moved on by 1 epoch)" in capsys.readouterr().err
    state = _state(result.last_checkpoint)
    assert state["skipped_data"] == [{"after_step": 4, "steps": 15, "proteins": 240}] and state["step"] == 8
    train(cfg, resume=True)
    assert len(seen) == 8
    for got, want in zip(seen, reference[19:27]):
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
    rows = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 12]


def _bert_stream(state=None):
    """A bert CorpusStream of the learnable corpus (length 64, 16 a step in micro-batches of 8)."""
    from protrans_cli.models import get_family
    from protrans_cli.training.data import CorpusStream, TokenLayout

    family = get_family("bert")
    layout = TokenLayout.from_tokenizer(family.build_tokenizer(), family.prepare)
    return CorpusStream([LEARNABLE], layout, max_length=64, global_batch_size=16, micro_batch_size=8,
                        bucket_batches=4, state=state)


def test_passed_over_moves_the_stream_as_its_batches_would(tmp_path):
    """CorpusStream.passed_over(n) is the state after the n-th batch, without making any."""
    stream = _bert_stream
    batches = list(itertools.islice(iter(stream()), 40))
    for n in (0, 1, 3, 4, 5, 17, 40):
        want = batches[n - 1].state_after if n else stream().state
        assert stream().passed_over(n) == want, n


def test_skip_data_that_ends_on_an_epochs_last_batch_says_the_epoch_was_passed(capsys):
    """A pass ending on an epoch's last batch is at that epoch's end, whose state keeps its number:
    the line said nothing of the epoch passed, though the next step trains the next epoch's first
    batch. Counted by the epoch of the batches trained next (one from an epoch's end is past it)."""
    from protrans_cli.training.loop import _pass_over_data

    stream = _bert_stream
    # the reference: the batches a plain stream makes, and where its second epoch begins
    batches = list(itertools.islice(iter(stream()), 40))
    per_epoch = next(i for i, b in enumerate(batches) if b.state_after.epoch == 1)  # (the first of epoch 1, 0-based)
    assert per_epoch == 18 and batches[per_epoch - 1].state_after.epoch == 0
    for after, steps, said in [(4, per_epoch - 4, True), (4, per_epoch - 5, False), (4, per_epoch - 3, True),
                               (per_epoch, 3, False), (per_epoch, per_epoch, True), (0, per_epoch, True)]:
        s = stream(batches[after - 1].state_after if after else None)
        _pass_over_data(s, steps, after, [])
        assert s.state == batches[after + steps - 1].state_after
        err = capsys.readouterr().err
        assert ("(the data position moved on by 1 epoch)" in err) == said, (after, steps, err)


def test_skip_data_on_a_complete_run_says_it_passed_over_nothing(tmp_path, capsys):
    cfg = _config(tmp_path, num_steps=2)
    train(cfg)
    assert train(cfg, resume=True, skip_data=5).step == 2
    assert "skip_data 5 ignored: the run has no step left after step 2" in capsys.readouterr().err


@pytest.mark.parametrize("resume", [False, True])
def test_skip_data_without_a_checkpoint_to_resume_is_refused(tmp_path, run_cli, resume):
    cfg = _config(tmp_path, num_steps=4)
    with pytest.raises(UsageError, match="skip_data goes with resume" if not resume else "no checkpoint yet, so "
                       "skip_data has no data position"):
        train(cfg, resume=resume or None, skip_data=2)
    args = ["train", "--corpus", LEARNABLE, "-o", str(tmp_path / "c"), "--skip-data", "2"]
    done = run_cli(*args, *(["--resume"] if resume else []))
    assert done.exit_code == 2
    assert ("--skip-data goes with --resume or --resume-from" if not resume else
            "no checkpoint yet, so --skip-data has no data position to move on from") in done.stderr


def test_fp16_steps_that_overflow_down_to_a_loss_scale_below_1_stop_saying_float16_overflows(tmp_path, monkeypatch):
    """float16 whose every step overflows (T5's activations on a V100): the steps are skipped, the
    scale halved each time, and below 1 the run stops naming the step and float16 as the cause,
    with no step applied."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.training import optim

    class Low(optim.LossScale):  # two halvings from below 1
        def __init__(self):
            super().__init__(scale=2.0, interval=100)

    monkeypatch.setattr(loop_module(), "LossScale", Low)
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(loop_module().torch.nn.utils, "clip_grad_norm_",  # every step's gradient overflows
                        lambda *args, **kwargs: real(*args, **kwargs) * float("inf"))
    cfg = _config(tmp_path, num_steps=8, log_every=1, precision="fp16")
    with pytest.raises(RuntimeFailure) as caught:
        train(cfg)
    message = caught.value.message
    assert message.startswith("step 2: the gradient is not finite (loss "), message
    assert ("no checkpoint was written yet: lower lr or lengthen warmup_steps; the steps before it were skipped "
            "as float16 overflows, down to a loss scale below 1: float16 may overflow in this model's activations: "
            "precision='fp32'") in message
    rows = read_metrics(tmp_path / "run_bert" / "metrics.jsonl")
    assert [(r["step"], r["skipped_steps"], r["loss"]) for r in rows] == [(1, 1.0, None)]


def test_a_run_that_fails_mid_run_draws_its_loss_curve_as_a_stopped_one_does(tmp_path, monkeypatch):
    """A diverged run kept metrics.jsonl but no loss_curve.png: only a completed or stopped run
    drew it, and the diverged run's curve is the one that tells a better --lr."""
    from protrans_cli.errors import RuntimeFailure

    _non_finite_gradient_at(7, monkeypatch)
    cfg = _config(tmp_path, num_steps=10, log_every=2, save_every=4)
    with pytest.raises(RuntimeFailure, match="^step 7: the gradient is not finite"):
        train(cfg)
    run = tmp_path / "run_bert"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [2, 4, 6]
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one that failed before its first line still leaves nothing behind
    _non_finite_gradient_at(7, monkeypatch)
    cfg = _config(tmp_path, num_steps=10, log_every=8, save_every=8, output_dir=str(tmp_path / "early"))
    with pytest.raises(RuntimeFailure, match="^step 7: "):
        train(cfg)
    assert not (tmp_path / "early").exists()


def test_a_signal_while_the_final_model_is_written_stops_after_it_with_the_model_complete(tmp_path, monkeypatch):
    """Ctrl-C during the export was answered "stopping after this step" and then ignored (exit 0)."""
    import protrans_cli.training.loop as loop

    real = loop.ckpt.export_model

    def export(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # handled by StopRequest: noted, not raised here
        return real(*args, **kwargs)

    monkeypatch.setattr(loop.ckpt, "export_model", export)
    cfg = _config(tmp_path, num_steps=2, save_every=2)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(cfg)
    assert caught.value.protrans_detail == f"the run is complete (2 steps; model in {tmp_path / 'run_bert'})"
    assert (tmp_path / "run_bert" / "model.safetensors").is_file()
    monkeypatch.setattr(loop.ckpt, "export_model", real)
    assert train(cfg, resume=True).completed  # nothing left to do but export again


def test_resume_compares_defaults_as_what_they_mean_and_keeps_the_warmup(tmp_path):
    """--objective mlm and --precision fp32 (on a CPU) were refused against a run started without
    them ("None there"), and a run resumed for more steps ramped up again to a tenth of the new length."""
    first = train(_config(tmp_path, num_steps=20, stop_after=10, log_every=1, lr=1e-3, warmup_steps=None))
    saved = json.loads((first.run_dir / "train_config.json").read_text())
    # warmup a tenth of 20, recorded as resolved beside the setting as given (null: a tenth of
    # whichever run the file starts next), and the family's objective, saved resolved (the
    # objective was saved as null: the file alone did not say what was trained)
    assert saved["warmup_steps"] is None and saved["resolved"]["warmup_steps"] == 2 and saved["objective"] == "mlm"
    # ...and the file still serves as a template for another family: the default it records is
    # that family's default, not an objective the other family would refuse
    template = TrainConfig.from_file(first.run_dir / "train_config.json").override(family="t5")
    assert template.objective is None
    assert TrainConfig.from_file(first.run_dir / "train_config.json").override(family="t5",
                                                                              objective="t5_span").objective == "t5_span"
    longer = _config(tmp_path, num_steps=200, log_every=1, lr=1e-3, warmup_steps=None, objective="mlm",
                     precision="fp32", stop_after=14)
    train(longer, resume=True)
    lrs = [m["lr"] for m in read_metrics(first.run_dir / "metrics.jsonl")]
    assert lrs[10:14] == sorted(lrs[10:14], reverse=True), lrs  # decaying, not warming up again
    assert json.loads((first.run_dir / "train_config.json").read_text())["resolved"]["warmup_steps"] == 2
    # resumed again (the resumed run's own file): still the first run's warmup
    train(dataclasses.replace(longer, stop_after=16), resume=True)
    lrs = [m["lr"] for m in read_metrics(first.run_dir / "metrics.jsonl")]
    assert lrs[13:16] == sorted(lrs[13:16], reverse=True), lrs


@pytest.mark.parametrize("phases", [False, True])
def test_resume_of_an_older_checkpoint_without_a_resolved_warmup_keeps_a_tenth_of_its_run(tmp_path, phases):
    """A checkpoint of a version that recorded no "resolved" settings (and no SHA256SUMS): its
    default warmup was a tenth of that run's steps (of its phases' together), which a resume for
    more steps keeps rather than ramping up again to a tenth of the new length."""
    from protrans_cli.training import checkpoint as ckpt

    shape = ({"phases": [Phase(max_length=32, num_steps=10), Phase(max_length=64, num_steps=10)]} if phases
             else {"num_steps": 20})
    first = train(_config(tmp_path, **shape, stop_after=10, log_every=1, lr=1e-3, warmup_steps=None))
    where = first.run_dir / "checkpoints" / "step_00000010"
    saved = json.loads((where / ckpt.CONFIG_FILE).read_text())
    del saved["resolved"]
    (where / ckpt.CONFIG_FILE).write_text(json.dumps(saved))
    (where / ckpt.SUMS_FILE).unlink()
    longer = ({"phases": [Phase(max_length=32, num_steps=10), Phase(max_length=64, num_steps=190)]} if phases
              else {"num_steps": 200})
    train(_config(tmp_path, **longer, stop_after=13, log_every=1, lr=1e-3, warmup_steps=None), resume=True)
    lrs = [m["lr"] for m in read_metrics(first.run_dir / "metrics.jsonl")]
    # past its warmup of 2 and decaying over the new length, not ramping up over 20 steps again
    assert len(lrs) == 13 and lrs[10] > 9e-4 and lrs[10:13] == sorted(lrs[10:13], reverse=True), lrs
    assert json.loads((first.run_dir / ckpt.CONFIG_FILE).read_text())["resolved"]["warmup_steps"] == 2


def test_a_runs_config_as_a_template_resolves_its_defaults_anew(tmp_path, run_cli):
    """RUN/train_config.json reused for another run kept what the first run's defaults had
    resolved to: a 20-step CPU smoke run's 2 warmup steps and fp32 went on into a long GPU run."""
    first = train(_config(tmp_path, num_steps=20, stop_after=2, warmup_steps=None))
    template = first.run_dir / "train_config.json"
    saved = json.loads(template.read_text())
    assert saved["precision"] == "auto" and saved["resolved"]["precision"] == "fp32"
    assert saved["warmup_steps"] is None and saved["resolved"]["warmup_steps"] == 2
    again = train(dataclasses.replace(TrainConfig.from_file(template), num_steps=200, stop_after=2,
                                      output_dir=str(tmp_path / "again")))
    resolved = json.loads((again.run_dir / "train_config.json").read_text())["resolved"]
    assert resolved["warmup_steps"] == 20 and resolved["compile"] is False


def test_resume_with_another_preset_is_named_as_a_setting(tmp_path, monkeypatch):
    """... before the other preset's model is built (a prot_t5_xl took a minute and 11 GB of
    memory to be refused)."""
    from protrans_cli.errors import UsageError
    from protrans_cli.training import loop

    train(_config(tmp_path, num_steps=2, save_every=2))

    def built(*args, **kw):
        raise AssertionError("a model was built")

    monkeypatch.setattr(loop, "_pretraining_model", built)
    for change, named in ((dict(preset="small"), "preset: 'tiny' there, 'small' here"),
                          (dict(family="t5", output_dir=str(tmp_path / "run_bert")), "family: 'bert' there, 't5' here")):
        with pytest.raises(UsageError, match=named):
            train(_config(tmp_path, num_steps=4, **change), resume=True)
        with pytest.raises(UsageError, match=named):  # a checkpoint named as --resume's path
            train(_config(tmp_path, num_steps=4, **change), resume=tmp_path / "run_bert" / "checkpoints" / "step_00000002")


def test_refused_runs_leave_no_folders_behind(tmp_path, run_cli):
    out = tmp_path / "a" / "b" / "c"
    res = run_cli("train", "--corpus", LEARNABLE, "-o", out, "--family", "bret")
    assert res.exit_code == 2
    res = run_cli("train", "--corpus", LEARNABLE, "-o", out, "--max-length", 4096, "--num-steps", 1,
                  "--global-batch-size", 4, "--micro-batch-size", 4)
    assert res.exit_code == 2 and "--max-length 4096 (tokens" in res.stderr, res.stderr
    assert "beyond the model's 2048 positions" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []
    # a phase's length is named as the phase the user gave, not as a --max-length never typed
    res = run_cli("train", "--corpus", LEARNABLE, "-o", out, "--phase", "64:1:4:4", "--phase", "4096:1:4:4")
    assert res.exit_code == 2 and "--phase 2's length 4096 (tokens" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []
    for bad in ("num_attention_heads=3", "vocab_size=5", "foo=1"):
        res = run_cli("train", "--corpus", LEARNABLE, "-o", out, "--set", bad, "--num-steps", 1)
        assert res.exit_code == 2 and f"--set / model_overrides ({bad})" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", ["albert", "electra"])
def test_heads_that_do_not_divide_the_width_are_refused(tmp_path, run_cli, family):
    """ALBERT's and ELECTRA's configs take such a width: the run failed at step 1 with a traceback."""
    out = tmp_path / "run"
    res = run_cli("train", "--family", family, "--corpus", LEARNABLE, "-o", out, "--set", "hidden_size=30",
                  "--num-steps", 1, "--global-batch-size", 4, "--micro-batch-size", 4)
    assert res.exit_code == 2, res.stderr
    assert "hidden_size 30 is not a multiple of num_attention_heads 4" in res.stderr, res.stderr
    assert not out.exists()


def test_pad_multiple_beyond_the_position_table_is_refused(tmp_path, run_cli):
    """Rows rounded up to --pad-multiple past a learned position table were a traceback at step 1."""
    out = tmp_path / "run"
    res = run_cli("train", "--corpus", LEARNABLE, "-o", out, "--set", "max_position_embeddings=64",
                  "--max-length", 64, "--pad-multiple", 48, "--num-steps", 1, "--global-batch-size", 4,
                  "--micro-batch-size", 4)
    assert res.exit_code == 2 and "--pad-multiple 48 (pad_multiple) pads rows of --max-length 64 to 96" \
        in res.stderr, res.stderr
    assert not out.exists()


def _small_toml(path, settings: str):
    """A TOML config: the learnable corpus, batches of 4, and `settings`."""
    path.write_text(f'corpus = ["{LEARNABLE}"]\nglobal_batch_size = 4\nmicro_batch_size = 4\n{settings}')
    return path


def test_switches_set_in_a_config_file_can_be_turned_off_and_find_lr_refuses_resume(tmp_path, run_cli):
    cfg = _small_toml(tmp_path / "c.toml", 'num_steps = 1\nmax_length = 32\nactivation_checkpointing = true\n'
                                           'sop = true\nfamily = "albert"\n')
    out = tmp_path / "r"
    res = run_cli("train", "--config", cfg, "--no-activation-checkpointing", "--no-sop", "-j", 1, "-o", out)
    assert res.exit_code == 0, res.stderr
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["activation_checkpointing"] is False and saved["sop"] is False
    res = run_cli("train", "--config", cfg, "--find-lr", "--resume", "-o", out)
    assert res.exit_code == 2 and "--resume cannot go with it" in res.stderr
    # --num-steps sets the range test's steps (it ran 100 whatever was given)
    res = run_cli("train", "--corpus", LEARNABLE, "--find-lr", "--num-steps", 12, "--max-length", 32,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1, "-o", tmp_path / "lr")
    assert res.exit_code == 0, res.stderr
    points = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    # 1e-7 to 1 in 12 steps (the test stops early if the loss diverges)
    assert 2 <= len(points["lr"]) <= 12 and points["lr"][1] == pytest.approx(1e-7 * 1e7 ** (1 / 11))
    res = run_cli("train", "--corpus", LEARNABLE, "--find-lr", "--num-steps", 3, "-o", tmp_path / "lr3")
    assert res.exit_code == 2 and "--find-lr needs at least 10 steps" in res.stderr


def test_phase_flags_over_a_config_with_one_length_save_a_config_that_reads_back(tmp_path, run_cli):
    cfg = _small_toml(tmp_path / "single.toml", "num_steps = 5000\nmax_length = 256\n")
    out = tmp_path / "r"
    res = run_cli("train", "--config", cfg, "--phase", "32:1", "-j", 1, "-o", out)
    assert res.exit_code == 0, res.stderr
    saved = TrainConfig.from_file(out / "train_config.json")  # refused before: num_steps with phases
    assert saved.total_steps == 1 and saved.resolved_phases()[0].max_length == 32


def test_a_setting_of_another_objective_is_said_to_be_unused(tmp_path, run_cli):
    cfg = _small_toml(tmp_path / "c.toml", 'num_steps = 1\nmax_length = 32\nnoise_density = 0.3\nplm_prob = 0.15\n')
    res = run_cli("train", "--config", cfg, "-j", 1, "-o", tmp_path / "r")
    assert res.exit_code == 0, res.stderr
    assert "noise_density = 0.3 is a setting of the t5_span objective(s): the mlm objective does not use it" \
        in res.stderr
    assert "plm_prob" not in res.stderr  # left at its default: nothing to say


def test_a_stopped_run_says_where_its_checkpoint_is_in_its_error_line_also_quiet(tmp_path, monkeypatch, run_cli):
    """The stop line was an info message: `protrans -q train` (a batch job's log) said only
    "terminated", not which checkpoint to continue from."""
    from protrans_cli.training import loop

    append = loop.append_metrics

    def append_and_signal(path, record):
        append(path, record)
        if record.get("step") == 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(loop, "append_metrics", append_and_signal)
    out = tmp_path / "run"
    res = run_cli("-q", "train", "--corpus", LEARNABLE, "-o", out, "--num-steps", 6, "--log-every", 1,
                  "--max-length", 48, "-j", 1)
    assert res.exit_code == 143
    assert res.stderr.strip() == (f"protrans: error: terminated: train stopped at step 2/6; checkpoint "
                                  f"{out / 'checkpoints' / 'step_00000002'}; continue with the same command and "
                                  "--resume")


def test_loss_scale_halves_on_overflow_and_doubles_after_its_interval():
    from protrans_cli.training.optim import LossScale

    scale = LossScale(scale=8.0, interval=3)
    assert scale.update(False) is False and scale.scale == 4.0
    assert [scale.update(True) for _ in range(3)] == [True] * 3 and scale.scale == 8.0
    assert scale.update(True) and scale.update(False) is False and scale.good_steps == 0 and scale.scale == 4.0
    for _ in range(3):
        scale.update(False)
    assert scale.scale == 0.5 and scale.diverged
    again = LossScale()
    again.load_state_dict(scale.state_dict())
    assert again.state_dict() == scale.state_dict()


def test_loss_scale_starts_and_grows_as_torchs_grad_scaler_does():
    """docs/train.md: fp16's loss scale is what torch.amp.GradScaler does, doubling after 2000
    applied steps in a row: its initial scale, interval, growth and back-off are GradScaler's
    defaults."""
    from protrans_cli.training.optim import LossScale

    theirs = torch.amp.GradScaler("cpu")
    ours = LossScale()
    assert (ours.scale, ours.interval) == (theirs._init_scale, theirs.get_growth_interval()) == (2.0 ** 16, 2000)
    for _ in range(theirs.get_growth_interval() - 1):
        ours.update(True)
    assert ours.scale == 2.0 ** 16
    ours.update(True)
    assert ours.scale == 2.0 ** 16 * theirs.get_growth_factor()
    ours.update(False)
    assert ours.scale == 2.0 ** 16 * theirs.get_growth_factor() * theirs.get_backoff_factor()


def test_fp16_skips_overflowed_steps_lowers_the_scale_learns_and_resumes_identically(tmp_path, monkeypatch):
    """float16 autocast (a V100 or T4 has no bfloat16): overflowed steps are skipped with the scale
    halved, the weights stay finite, the model still learns, and a resumed run (the scale is in
    the checkpoint) matches an uninterrupted one. Run on the CPU, whose autocast has float16 too."""
    from safetensors.torch import load_file

    from protrans_cli.training import optim

    class Huge(optim.LossScale):  # start far too high: the first steps overflow float16
        def __init__(self):
            super().__init__(scale=2.0 ** 30, interval=4)

    monkeypatch.setattr(loop_module(), "LossScale", Huge)
    kw = dict(num_steps=30, log_every=2, save_every=100, seed=4, precision="fp16", lr=3e-3)
    whole = train(_config(tmp_path / "whole", **kw))
    rows = read_metrics(whole.run_dir / "metrics.jsonl")
    assert rows[0]["skipped_steps"] == 1.0 and rows[0]["loss"] is None and rows[0]["grad_norm"] is None
    assert sum(r["skipped_steps"] for r in rows) >= 4  # 2^30 down to float16's range, one halving a step
    assert all(r["loss_scale"] < 2.0 ** 30 for r in rows)
    applied = [r["loss"] for r in rows if r["loss"] is not None]
    assert len(applied) >= 3 and applied[-1] < applied[0]
    weights = load_file(whole.run_dir / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    part1 = train(_config(tmp_path / "parts", stop_after=20, **kw))
    part2 = train(_config(tmp_path / "parts", **kw), resume=True)
    assert part1.losses + part2.losses == whole.losses
    b = load_file(part2.run_dir / "model.safetensors")
    assert all(torch.equal(weights[k], b[k]) for k in weights)


def loop_module():
    from protrans_cli.training import loop

    return loop


def test_precision_auto_means_fp16_on_a_gpu_without_bfloat16(monkeypatch):
    import protrans_cli.embedders as embedders
    from protrans_cli.training.config import resolve_precision
    from protrans_cli.training.loop import _diverged

    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(embedders, "native_bf16", lambda device: False)
    monkeypatch.setattr(embedders, "fast_fp16", lambda device: True)
    assert resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(embedders, "native_bf16", lambda device: True)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    message = str(_diverged(TrainConfig(corpus=["x"], output_dir="nowhere"), 7, float("inf"), fp16=True))
    assert "step 7" in message and "precision='fp32'" in message  # (a library call's words: errors.option)


@pytest.mark.parametrize("family, extra", [("electra", {}), ("albert", {"sop": True})])
def test_eval_loss_of_a_two_term_objective_does_not_depend_on_the_micro_batch_size(tmp_path, family, extra):
    """ELECTRA's detection loss and ALBERT's sentence order were weighted per evaluation
    micro-batch: the same 16 proteins gave other eval losses in 8 batches of 2 than in 2 of 8.
    And the proteins evaluated were the first num_eval_batches x micro-batch size x processes,
    so that a run resumed with another micro-batch size (allowed) evaluated other proteins."""
    from protrans_cli.training import dist, loop

    cfg = _config(tmp_path, family, val_corpus=[LEARNABLE], num_eval_batches=2, micro_batch_size=2, **extra)
    info = dist.setup()
    try:
        run = loop.build_run(cfg, info)
        run.wrapped = loop.LossModule(run.model, run.objective)
        small = loop.evaluate(run, Phase(64, 1, 16, 2))
        large = loop.evaluate(run, Phase(64, 1, 16, 8))
    finally:
        dist.cleanup()
    assert math.isfinite(small) and small == pytest.approx(large, rel=1e-6, abs=0)  # float32 sums


def test_precision_auto_is_saved_as_what_it_meant_so_a_moved_run_is_not_switched(tmp_path, monkeypatch):
    """auto is bf16 on an A100 and fp16 on a T4: a run started on one and resumed on the other
    switched precision without a word (and its loss scale started anew)."""
    from protrans_cli.errors import UsageError
    from protrans_cli.training import config as config_module  # read by checkpoint.resumed_config
    from protrans_cli.training import loop  # resolves the run's own precision

    first = train(_config(tmp_path, num_steps=4, stop_after=2))
    assert json.loads((first.run_dir / "train_config.json").read_text())["resolved"]["precision"] == "fp32"
    assert train(_config(tmp_path, num_steps=4, stop_after=3), resume=True).step == 3  # same machine: fine
    # the same run "moved" to a machine where auto means fp16
    on_a_t4 = lambda precision, device: "fp16" if precision == "auto" else precision  # noqa: E731
    monkeypatch.setattr(config_module, "resolve_precision", on_a_t4)
    monkeypatch.setattr(loop, "resolve_precision", on_a_t4)
    with pytest.raises(UsageError, match=r"precision: 'fp32' there, 'fp16' here"):
        train(_config(tmp_path, num_steps=4), resume=True)


@pytest.mark.parametrize("precision,dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_fsdp_gathers_parameters_in_the_runs_precision(tmp_path, monkeypatch, precision, dtype):
    # FSDP on a GPU gathered bfloat16 parameters whatever --precision said (fp32 computed in bf16)
    from protrans_cli.training import dist

    told = []

    def wrap(module, strategy, info, **kw):
        told.append(kw["param_dtype"])
        return module

    monkeypatch.setattr(dist, "wrap", wrap)
    find_lr(_config(tmp_path, precision=precision), num_steps=2)
    assert told == [dtype]


@pytest.mark.parametrize("family, settings, problem", [
    ("esm", ["hidden_size=120", "num_attention_heads=8"],
     "the head size 15 (hidden_size 120 / num_attention_heads 8) is odd: rotary positions need an even one"),
    ("esm", ["position_embedding_type=relative_key"],  # (a model without positions, trained silently)
     "position_embedding_type 'relative_key': ESM has 'rotary' (ESM-2) or 'absolute' (ESM-1b/1v"),
    ("transfo_xl", ["d_model=33"], "d_model 33 is odd: the sinusoidal relative positions need an even one"),
    ("xlnet", ["d_model=33", "n_head=3", "d_head=11"],
     "d_model 33 is odd: the sinusoidal relative positions need an even one"),
])
def test_shapes_the_positions_cannot_take_are_refused(tmp_path, run_cli, family, settings, problem):
    """ESM's rotary positions rotate pairs of a head's features, Transformer-XL's sinusoid has a
    sine and a cosine per frequency: an odd size passed every check and failed at step 1 with a
    shape traceback."""
    out = tmp_path / "run"
    sets = [a for s in settings for a in ("--set", s)]
    res = run_cli("train", "--family", family, "--corpus", LEARNABLE, "-o", out, *sets,
                  "--num-steps", 1, "--global-batch-size", 4, "--micro-batch-size", 4)
    assert res.exit_code == 2, res.stderr
    assert problem in res.stderr, res.stderr
    assert not out.exists()


def test_find_lr_num_steps_goes_with_phases(tmp_path, run_cli):
    """--num-steps sets the range test's steps; with phases (ProtTrans' 512 then 1024 recipe) it
    was refused as if it set the phases' steps, and the test could only run 100."""
    res = run_cli("train", "--corpus", LEARNABLE, "--phase", "32:1000:4:4", "--phase", "64:500:4:4", "--find-lr",
                  "--num-steps", 10, "-j", 1, "-o", tmp_path / "lr")
    assert res.exit_code == 0, res.stderr
    assert len(json.loads((tmp_path / "lr" / "lr_find.json").read_text())["lr"]) <= 10
    res = run_cli("train", "--corpus", LEARNABLE, "--phase", "32:1000:4:4", "--find-lr", "--max-length", 64,
                  "-o", tmp_path / "lr2")
    assert res.exit_code == 2 and "--max-length cannot go with --phase" in res.stderr


def test_resume_without_config_reads_the_runs_own_settings(tmp_path, run_cli):
    """`train --resume -o RUN` refused "no training corpus"; with --corpus alone, every other
    setting the run was started with differed from a default ("max_length: 64 there, 512 here").
    The run's train_config.json is the base, and the flags given override it (more steps)."""
    run = tmp_path / "run"
    res = run_cli("train", "--corpus", LEARNABLE, "-o", run, "--num-steps", 6, "--stop-after", 2, "--max-length", 64,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "--save-every", 2, "-j", 1)
    assert res.exit_code == 0, res.stderr
    res = run_cli("train", "--resume", "-o", run, "--num-steps", 8)
    assert res.exit_code == 0, res.stderr
    assert f"the run's settings from {run / 'train_config.json'}" in res.stderr
    assert "done, 8 steps" in res.stderr
    latest = sorted((run / "checkpoints").iterdir())[-1]  # (a checkpoint's own settings, without -o)
    res = run_cli("train", "--resume-from", latest, "--max-length", 32)
    assert res.exit_code == 2 and "max_length: 64 there, 32 here" in res.stderr, res.stderr


def test_resume_reads_a_checkpoints_settings_and_stays_in_the_directory_it_read(tmp_path, run_cli, monkeypatch):
    """A run directory holding only checkpoints/ (synced to another machine without the files
    beside it) was refused: "holds no run to resume (no train_config.json) ... give its settings
    without --resume", which refused a directory holding checkpoints. And `train --resume`
    without -o read runs/protrans's settings, then trained a new run from step 0 in the
    output_dir they record (the run's first place, before it was moved there)."""
    import shutil

    first = tmp_path / "first"
    res = run_cli("train", "--corpus", LEARNABLE, "-o", first, "--num-steps", 4, "--stop-after", 2, "--max-length", 64,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "--save-every", 2, "-j", 1)
    assert res.exit_code == 0, res.stderr
    synced = tmp_path / "synced"
    shutil.copytree(first / "checkpoints", synced / "checkpoints")
    res = run_cli("train", "--resume", "-o", synced)
    assert res.exit_code == 0, res.stderr
    assert f"the run's settings from {synced / 'checkpoints' / 'step_00000002' / 'train_config.json'}" in res.stderr
    assert "resuming from" in res.stderr and "done, 4 steps" in res.stderr
    assert [m["step"] for m in read_metrics(synced / "metrics.jsonl")] == [4]
    # the default run directory, a run moved there: --resume without -o continues it there
    monkeypatch.chdir(tmp_path)
    shutil.copytree(first, tmp_path / "runs" / "protrans")
    shutil.rmtree(first)
    res = run_cli("train", "--resume")
    assert res.exit_code == 0, res.stderr
    assert "resuming from runs/protrans/checkpoints/step_00000002" in res.stderr, res.stderr
    assert not first.exists() and (tmp_path / "runs" / "protrans" / "checkpoints" / "step_00000004").is_dir()
    saved = json.loads((tmp_path / "runs" / "protrans" / "train_config.json").read_text())
    assert saved["output_dir"] == "runs/protrans"


def test_resume_without_config_of_a_run_whose_config_an_earlier_version_saved_stop_after_in(tmp_path, run_cli):
    """Versions before 2026-11-30 saved the first invocation's --stop-after in train_config.json:
    `train --resume -o RUN` of such a run read it back and was refused ("--stop-after 2 ... is not
    after ... step 2"). The run's own file gives the run's settings, not one invocation's."""
    run = tmp_path / "run"
    res = run_cli("train", "--corpus", LEARNABLE, "-o", run, "--num-steps", 4, "--stop-after", 2, "--max-length", 64,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "--save-every", 2, "-j", 1)
    assert res.exit_code == 0, res.stderr
    for path in (run / "train_config.json", run / "checkpoints" / "step_00000002" / "train_config.json"):
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({**saved, "stop_after": 2}))  # as those versions wrote it
    (run / "checkpoints" / "step_00000002" / "SHA256SUMS").unlink()  # (nor did they write sums)
    import shutil

    shutil.copytree(run, tmp_path / "copy")
    res = run_cli("train", "--resume", "-o", run)
    assert res.exit_code == 0 and "done, 4 steps" in res.stderr, res.stderr
    res = run_cli("train", "--resume-from", tmp_path / "copy" / "checkpoints" / "step_00000002")  # (its own file)
    assert res.exit_code == 0 and "done, 4 steps" in res.stderr, res.stderr


def test_a_resumed_run_keeps_the_explicit_settings_of_the_first_in_its_config(tmp_path):
    """--warmup-steps 3 --precision fp32 given to the first run became null and auto in
    train_config.json after a --resume that did not repeat them."""
    train(_config(tmp_path, num_steps=10, stop_after=2, save_every=2, warmup_steps=3, precision="fp32"))
    result = train(_config(tmp_path, num_steps=10, stop_after=4, save_every=2, warmup_steps=None), resume=True)
    for path in (result.run_dir / "train_config.json",
                 result.run_dir / "checkpoints" / "step_00000004" / "train_config.json"):
        saved = json.loads(path.read_text())
        assert (saved["warmup_steps"], saved["precision"]) == (3, "fp32"), path


def test_a_runs_config_as_a_template_takes_init_from(tmp_path, run_cli):
    """--init-from over a run's train_config.json was refused ("preset 'tiny' cannot go with
    init_from"): the file records the preset its run was built from, a default nobody gave."""
    first = tmp_path / "first"
    res = run_cli("train", "--corpus", LEARNABLE, "-o", first, "--num-steps", 2, "--max-length", 64,
                  "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1)
    assert res.exit_code == 0, res.stderr
    res = run_cli("train", "--config", first / "train_config.json", "--init-from", first, "-o", tmp_path / "second",
                  "--num-steps", 2)
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "second" / "train_config.json").read_text())["preset"] is None


@pytest.mark.parametrize("family, settings, problem", [
    ("bert", ["hidden_act=\"swiglu\""], "unknown name 'swiglu'"),
    ("albert", ["type_vocab_size=1"], "sop (sentence-order prediction) needs at least 2 token types"),
    ("t5", ["relative_attention_num_buckets=2"], "relative_attention_num_buckets 2 is below 4"),
    ("t5", ["relative_attention_max_distance=16"], "relative_attention_max_distance 16 must exceed half"),
    ("transfo_xl", ["d_head=0"], "--set d_head=0 (model_overrides): must be at least 1"),
    ("xlnet", ["n_layer=0"], "--set n_layer=0 (model_overrides): must be at least 1"),
])
def test_set_values_that_crashed_at_step_one_are_refused(tmp_path, run_cli, family, settings, problem):
    """Each of these passed every check and failed at the first step with a traceback (exit 1),
    or for a layer or head count of 0 trained a model without layers and exited 0."""
    sets = [a for s in settings for a in ("--set", s)]
    extra = ["--sop"] if family == "albert" else []
    res = run_cli("train", "--family", family, "--corpus", LEARNABLE, "-o", tmp_path / "run", *sets, *extra,
                  "--num-steps", 1, "--global-batch-size", 4, "--micro-batch-size", 4, "--max-length", 64)
    assert res.exit_code == 2 and problem in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()


def test_esm_odd_head_size_is_refused_only_under_rotary_positions():
    from protrans_cli.models import FAMILIES

    esm = FAMILIES["esm"]
    tokenizer = esm.build_tokenizer()
    rotary = esm.build_config("tiny", tokenizer, hidden_size=36, num_attention_heads=4)
    absolute = esm.build_config("tiny", tokenizer, hidden_size=36, num_attention_heads=4,
                                position_embedding_type="absolute")
    assert "rotary positions need an even one" in esm.shape_problem(rotary)
    assert esm.shape_problem(absolute) is None
    for preset in ("tiny", "esm2_t6_8M", "esm1b_t33_650M", "esm1v_t33_650M"):
        assert esm.shape_problem(esm.build_config(preset, tokenizer)) is None, preset
    none = esm.build_config("tiny", tokenizer, position_embedding_type="foo")
    assert "any other value builds a model without positions" in esm.shape_problem(none)


def _stopped_run_started_in(start, run_cli, monkeypatch, num_steps: int, stop_after: int):
    """A run started in `start` with the relative corpus `c.txt` and `-o run`, stopped at
    `stop_after` (checkpoints every 2 steps); the working directory is then start's parent."""
    import shutil

    start.mkdir()
    shutil.copy(LEARNABLE, start / "c.txt")
    monkeypatch.chdir(start)
    res = run_cli("train", "--corpus", "c.txt", "-o", "run", "--num-steps", num_steps, "--stop-after", stop_after,
                  "--save-every", 2, "--max-length", 64, "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1)
    assert res.exit_code == 0, res.stderr
    monkeypatch.chdir(start.parent)


def test_resume_from_a_moved_run_or_another_directory_stays_in_the_run(tmp_path, run_cli, monkeypatch):
    """`--resume-from RUN/checkpoints/step_N` without -o went on in the run directory its config
    recorded as typed: a moved run was continued in a second folder (past the check for the later
    checkpoints of the run abandoned), and a relative corpus was "no such file" from elsewhere."""
    import shutil

    start = tmp_path / "start"
    _stopped_run_started_in(start, run_cli, monkeypatch, num_steps=8, stop_after=6)
    shutil.move(start / "run", tmp_path / "moved")
    res = run_cli("train", "--resume-from", tmp_path / "moved" / "checkpoints" / "step_00000004")
    assert res.exit_code == 2 and "holds checkpoints after step 4 (step_00000006)" in res.stderr, res.stderr
    assert not (start / "run").exists()
    res = run_cli("train", "--resume", "-o", tmp_path / "moved")  # the corpus found where the run recorded it
    assert res.exit_code == 0, res.stderr
    assert "done, 8 steps" in res.stderr and not (tmp_path / "run").exists()


def test_resume_of_a_run_whose_corpus_moved_says_how_to_name_its_new_place(tmp_path, run_cli, monkeypatch):
    """A run and its corpus moved (scratch restored to another path, the project folder renamed):
    `--resume -o NEW/run` said only "c.txt: no such file"; now one line names the run's recorded
    file and the flag that gives its new place, and that flag continues the run."""
    import shutil

    start = tmp_path / "start"
    _stopped_run_started_in(start, run_cli, monkeypatch, num_steps=4, stop_after=2)
    shutil.move(start, tmp_path / "moved")
    res = run_cli("train", "--resume", "-o", tmp_path / "moved" / "run")
    assert res.exit_code == 2, res.stderr
    assert ("the run's corpus file c.txt (relative to this directory), as " in res.stderr
            and "is not there: if it moved, give its new place with --corpus NEW_PATH" in res.stderr), res.stderr
    res = run_cli("train", "--resume", "-o", tmp_path / "moved" / "run", "--corpus", tmp_path / "moved" / "c.txt")
    assert res.exit_code == 0 and "done, 4 steps" in res.stderr, res.stderr


def test_resume_where_the_runs_relative_corpus_names_another_file_says_which_and_both_ways_on(
        tmp_path, run_cli, monkeypatch):
    """A run started with the relative corpus `c.txt`, resumed from a directory holding another
    `c.txt`: the refusal named only "c.txt", not that it was found from this directory, and
    advised --accept-corpus-change, which would train on the wrong file. It names the file as
    found (absolute), the one the run read, and both ways on; --corpus the run's file resumes."""
    start = tmp_path / "start"
    _stopped_run_started_in(start, run_cli, monkeypatch, num_steps=4, stop_after=2)
    (tmp_path / "c.txt").write_bytes((start / "c.txt").read_bytes() + b"M K T A\n\n")  # another corpus, here
    res = run_cli("train", "--resume", "-o", start / "run")
    assert res.exit_code == 1, res.stderr
    err = " ".join(res.stderr.split())
    assert f"({tmp_path / 'c.txt'} (c.txt, relative to this directory): " in err, err
    assert f"give the run's own with --corpus PATH (it read {start / 'c.txt'})" in err, err
    assert "where the change is meant (a damaged shard replaced by a whole copy) add --accept-corpus-change" in err
    res = run_cli("train", "--resume", "-o", start / "run", "--corpus", start / "c.txt")
    assert res.exit_code == 0 and "done, 4 steps" in res.stderr, res.stderr


def test_resume_where_the_runs_relative_corpus_finds_a_short_file_says_the_corpus_changed(
        tmp_path, run_cli, monkeypatch):
    """The other `c.txt` found from this directory too short for one batch: the resume was refused
    "c.txt: the corpus holds 1 protein(s), fewer than one global batch (4)", naming neither the file
    found nor the one the run read, before the corpus-change check that says both and the ways on."""
    start = tmp_path / "start"
    _stopped_run_started_in(start, run_cli, monkeypatch, num_steps=4, stop_after=2)
    (tmp_path / "c.txt").write_text("M K T A\n")  # another corpus, here: one protein
    res = run_cli("train", "--resume", "-o", start / "run")
    assert res.exit_code == 1, res.stderr
    err = " ".join(res.stderr.split())
    assert f"the corpus changed since {start / 'run'}" in err and "fewer than one global batch" not in err, err
    assert f"({tmp_path / 'c.txt'} (c.txt, relative to this directory): " in err, err
    assert f"give the run's own with --corpus PATH (it read {start / 'c.txt'})" in err, err


def test_resume_paths_name_the_run_and_keep_its_recorded_corpus(tmp_path, run_cli, monkeypatch):
    """`--resume-from .` inside a checkpoint started a run inside it; a checkpoint copied out of
    its run started a second run wherever the command ran; `--resume` where no run is said "no
    training corpus"; and a corpus found from another directory was saved as the run's setting."""
    import shutil

    start = tmp_path / "start"
    _stopped_run_started_in(start, run_cli, monkeypatch, num_steps=10, stop_after=4)
    res = run_cli("train", "--resume-from", start / "run" / "checkpoints" / "step_00000004", "--stop-after", 6)
    assert res.exit_code == 0, res.stderr
    assert json.loads((start / "run" / "train_config.json").read_text())["corpus"] == ["c.txt"]  # as the run had it
    monkeypatch.chdir(start / "run" / "checkpoints" / "step_00000006")
    res = run_cli("train", "--resume-from", ".", "--stop-after", 8)
    assert res.exit_code == 0, res.stderr
    assert not (start / "run" / "checkpoints" / "step_00000006" / "run").exists()
    shutil.copytree(start / "run" / "checkpoints" / "step_00000008", tmp_path / "copied")
    monkeypatch.chdir(tmp_path)
    res = run_cli("train", "--resume-from", tmp_path / "copied")
    assert res.exit_code == 2 and "is not in a run's checkpoints/ folder: give -o" in res.stderr, res.stderr
    # the run directory itself: named as one, with the command that continues it ("give -o" said nothing of it)
    res = run_cli("train", "--resume-from", start / "run")
    assert res.exit_code == 2 and (f"--resume-from {start / 'run'} is a run directory, not one of its checkpoints: "
                                   f"--resume -o {start / 'run'} continues its latest checkpoint") in res.stderr, res.stderr
    res = run_cli("train", "--resume", "-o", tmp_path / "nothing")
    # (not "give -o" to a user who had given it)
    assert res.exit_code == 2 and "holds no run to resume (no train_config.json): -o names the run directory " \
        "to resume" in res.stderr and "without --resume" in res.stderr, res.stderr
    monkeypatch.chdir(tmp_path / "copied")  # (no run in the default -o here either)
    res = run_cli("train", "--resume")
    assert res.exit_code == 2 and "holds no run to resume (no train_config.json): give -o, the run directory" \
        in res.stderr, res.stderr


def test_stop_after_trains_no_step_past_it(tmp_path, monkeypatch):
    """--stop-after 3: three steps trained, the checkpoint of the third, and the result says step 3
    (a step past it would be trained for nothing: the resume goes on from the checkpoint)."""
    from protrans_cli.training import loop

    steps = []
    real_step = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda *a, **kw: steps.append(1) or real_step(*a, **kw))
    result = train(_config(tmp_path, num_steps=8, stop_after=3))
    assert (len(steps), result.step, result.stopped_by) == (3, 3, "stop_after")
    assert result.last_checkpoint.name == "step_00000003" and _checkpoints(result.run_dir) == ["step_00000003"]


def test_a_stop_after_at_or_beyond_the_last_step_says_the_run_trains_to_the_end(tmp_path, run_cli):
    # --num-steps 2 --stop-after 5 ran to the end without a word (a time-limited job's
    # arithmetic gone wrong goes unseen until the job is killed).
    res = run_cli("train", "--corpus", LEARNABLE, "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1,
                  "--num-steps", 2, "--max-length", 32, "--stop-after", 5, "-o", tmp_path / "r")
    assert res.exit_code == 0, res.stderr
    assert "--stop-after 5 is not before the run's last step (2): it trains to the end" in res.stderr
    assert (tmp_path / "r" / "config.json").exists()
    res = run_cli("train", "--corpus", LEARNABLE, "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1,
                  "--num-steps", 2, "--max-length", 32, "--stop-after", 1, "-o", tmp_path / "s")
    assert res.exit_code == 0 and "trains to the end" not in res.stderr, res.stderr
    # at the last step itself (docs/train.md: "at or after"): the same
    res = run_cli("train", "--corpus", LEARNABLE, "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1,
                  "--num-steps", 2, "--max-length", 32, "--stop-after", 2, "-o", tmp_path / "t")
    assert res.exit_code == 0, res.stderr
    assert "--stop-after 2 is not before the run's last step (2): it trains to the end" in res.stderr
    assert (tmp_path / "t" / "config.json").exists()


@pytest.mark.parametrize("family", ["bert", "electra"])
def test_init_from_a_config_with_more_layers_than_its_weights_is_refused(tmp_path, run_cli, family):
    """A config.json edited (or another model's) to give one layer more than the weights hold:
    the extra layer trained from random, with "usually a pretraining head" as the only word."""
    from protrans_cli.models import FAMILIES

    fam = FAMILIES[family]
    tokenizer = fam.build_tokenizer()
    torch.manual_seed(0)
    model = fam.pretraining_model(fam.build_config("tiny", tokenizer))
    fam.save_pretrained(model, tokenizer, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    r = run_cli("train", "--init-from", tmp_path / "m", "--corpus", LEARNABLE, "-o", tmp_path / "run",
                "--num-steps", "1")
    assert r.exit_code == 1, r.stderr
    assert f"gives {config['num_hidden_layers']} layers (num_hidden_layers), more than its weights hold" in r.stderr
    assert "start from random" not in r.stderr and not (tmp_path / "run").exists()


def test_resume_from_another_runs_checkpoint_into_a_directory_holding_a_run_is_refused(tmp_path):
    """`--resume-from T5_RUN/checkpoints/step_N -o BERT_RUN` went on in BERT_RUN: BERT's and T5's
    checkpoints side by side, metrics.jsonl with lines of both runs, train_config.json replaced."""
    bert = _config(tmp_path, "bert", num_steps=4, save_every=1, stop_after=1)
    t5 = _config(tmp_path, "t5", num_steps=4, save_every=2, stop_after=2)
    train(bert)
    train(t5)
    before = sorted(p.name for p in (tmp_path / "run_bert" / "checkpoints").iterdir())
    with pytest.raises(UsageError, match=r"run_bert holds another run than .*step_00000002's \(family: 'bert' "
                                         r"there, 't5' here.*give an output_dir that holds no run"):
        train(dataclasses.replace(t5, output_dir=bert.output_dir, stop_after=None),
              resume=t5.output_dir + "/checkpoints/step_00000002")
    assert sorted(p.name for p in (tmp_path / "run_bert" / "checkpoints").iterdir()) == before
    assert json.loads((tmp_path / "run_bert" / "train_config.json").read_text())["family"] == "bert"
    # A checkpoint of the run itself, copied out and back, still resumes there.
    import shutil

    shutil.move(t5.output_dir + "/checkpoints/step_00000002", tmp_path / "kept")
    result = train(dataclasses.replace(t5, stop_after=None), resume=str(tmp_path / "kept"))
    assert result.completed and result.step == 4


def test_keep_best_resumed_with_another_validation_corpus_tracks_it_anew(tmp_path, monkeypatch, capsys):
    """Eval losses on another --val-corpus are not comparable with the best's: a resumed run with
    another one warns and tracks the best from the resumed step (it kept the old one, lower on the
    other file, and never took a checkpoint of the new file's losses); with the same file, by
    another path, it goes on."""
    import shutil

    from protrans_cli.training import loop

    other = tmp_path / "other_valid.txt"
    shutil.copyfile(LEARNABLE, other)
    link = tmp_path / "link_valid.txt"
    link.symlink_to(LEARNABLE)
    losses = {}  # the eval losses of steps 2, 4, 6, 8, 10 in each run
    monkeypatch.setattr(loop, "evaluate", lambda run, phase: next(losses[run.run_dir.parent.name]))
    for name, val in (("changed", other), ("same", link)):
        losses[name] = iter([3.0, 1.0, 2.0, 2.5, 2.2])
        cfg = _config(tmp_path / name, num_steps=10, save_every=2, eval_every=2, keep_last=1, keep_best=True,
                      val_corpus=[LEARNABLE])
        first = train(dataclasses.replace(cfg, stop_after=6))
        assert first.best_checkpoint.name == "step_00000004"
        capsys.readouterr()
        result = train(dataclasses.replace(cfg, val_corpus=[str(val)]), resume=True)
        said = capsys.readouterr().err
        if name == "changed":
            assert ("the best checkpoint as of step 6 (step 4, eval loss 1.0000) was evaluated on another "
                    "validation corpus") in said
            assert (result.best_checkpoint.name, result.best_eval_loss) == ("step_00000010", 2.2)
            assert _checkpoints(result.run_dir) == ["step_00000010"]
        else:
            assert "another validation corpus" not in said
            assert (result.best_checkpoint.name, result.best_eval_loss) == ("step_00000004", 1.0)
            assert _checkpoints(result.run_dir) == ["step_00000004", "step_00000010"]


def test_keep_best_resumed_with_another_number_of_evaluation_batches_tracks_it_anew(tmp_path, monkeypatch, capsys):
    """num_eval_batches may change on --resume (it is not compared), and the evaluations then take
    other proteins: the best's eval loss, over 4 batches, was compared with the resumed run's over
    1 (a checkpoint kept as the best for a lower loss on another set of proteins). Tracked anew,
    with a warning, as for another --val-corpus; the same number goes on."""
    from protrans_cli.training import loop

    losses = {}  # the eval losses of steps 2, 4, 6, 8, 10 in each run
    monkeypatch.setattr(loop, "evaluate", lambda run, phase: next(losses[run.run_dir.parent.name]))
    for name, batches in (("changed", 1), ("same", 4)):
        losses[name] = iter([3.0, 1.0, 2.0, 2.5, 2.2])
        cfg = _config(tmp_path / name, num_steps=10, save_every=2, eval_every=2, keep_last=1, keep_best=True,
                      val_corpus=[LEARNABLE], num_eval_batches=4)
        assert train(dataclasses.replace(cfg, stop_after=6)).best_checkpoint.name == "step_00000004"
        capsys.readouterr()
        result = train(dataclasses.replace(cfg, num_eval_batches=batches), resume=True)
        said = capsys.readouterr().err
        if name == "changed":
            assert ("the best checkpoint as of step 6 (step 4, eval loss 1.0000) was evaluated on 4 evaluation "
                    "batch(es), this run evaluates 1: the best is tracked from step 6 on") in said
            assert (result.best_checkpoint.name, result.best_eval_loss) == ("step_00000010", 2.2)
            assert _checkpoints(result.run_dir) == ["step_00000010"]
        else:
            assert "evaluation batch(es)" not in said
            assert (result.best_checkpoint.name, result.best_eval_loss) == ("step_00000004", 1.0)
            assert _checkpoints(result.run_dir) == ["step_00000004", "step_00000010"]


@pytest.mark.parametrize("saved", ['{"num_steps": "x"}', "[1]", '{"phases": [5]}', '{"corpus": [3]}',
                                   '{"resolved": {"warmup_steps": "a"}}'])
def test_resume_from_a_checkpoint_whose_train_config_holds_other_types_is_one_line(tmp_path, run_cli, saved):
    """A checkpoint's train_config.json edited into valid JSON of another shape (and SHA256SUMS
    written again, or a checkpoint of a version without sums) was a ValueError or AttributeError
    traceback from the comparison of the settings; it is a damaged checkpoint, exit 1."""
    from protrans_cli.training import checkpoint as ckpt

    out = tmp_path / "run"
    flags = ["--corpus", LEARNABLE, "-o", out, "--max-length", 32, "--global-batch-size", 8, "--micro-batch-size", 8,
             "--save-every", 1, "-j", 1]
    assert run_cli("train", *flags, "--num-steps", 2).exit_code == 0
    last = out / "checkpoints" / "step_00000002"
    (last / ckpt.CONFIG_FILE).write_text(saved)
    ckpt._write_sums(last)
    result = run_cli("train", *flags, "--num-steps", 3, "--resume")
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1].startswith(
        f"protrans: error: {last}: damaged checkpoint: cannot read train_config.json (")
    assert "Traceback" not in result.stderr and "step_00000001" in result.stderr.splitlines()[-1]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]


@pytest.mark.parametrize("left", ["some files", "nothing", "the only checkpoint", "the only one, beside the model"])
def test_resume_when_the_latest_checkpoint_lost_its_training_state_is_one_line(tmp_path, run_cli, left):
    """A latest step_N/ whose training_state.pt was deleted (to save space) or never copied: --resume
    went back to the checkpoint before without a word, and wrote over the later one (or, with no
    other, started from step 0); it is a damaged checkpoint naming the one to go back to, exit 1."""
    import shutil

    from protrans_cli.training import checkpoint as ckpt

    out = tmp_path / "run"
    flags = ["--corpus", LEARNABLE, "-o", out, "--max-length", 32, "--global-batch-size", 8, "--micro-batch-size", 8,
             "--save-every", 1, "-j", 1]
    assert run_cli("train", *flags, "--num-steps", 2).exit_code == 0
    last = out / "checkpoints" / "step_00000002"
    if left == "nothing":
        shutil.rmtree(last)
        last.mkdir()
    else:
        (last / ckpt.STATE_FILE).unlink()
    if left.startswith("the only"):
        shutil.rmtree(out / "checkpoints" / "step_00000001")
    if left == "the only checkpoint":
        for name in ("config.json", "model.safetensors"):  # (a run dir of checkpoints only)
            (out / name).unlink()
    # ("the only one, beside the model": a finished run's; --resume said it "already holds a model
    # (config.json) and no checkpoint to resume from", exit 2, though its checkpoint was there)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for resume in (["--resume"], ["--resume-from", last]):
        result = run_cli("train", *flags, "--num-steps", 3, *resume)
        assert result.exit_code == 1, result.output
        said = result.stderr.splitlines()[-1]
        assert said.startswith(f"protrans: error: {last}: damaged checkpoint: cannot read training_state.pt (it is "
                               "missing"), said
        assert ("step_00000001, after moving this one away" in said) == (not left.startswith("the only")), said
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_only_a_shape_error_while_loading_init_from_weights_is_put_down_to_set():
    """The refusal that blames --set is for a tensor that does not fit (torch's and transformers'
    "size mismatch" text); torch.load's RuntimeError for a file cut short names the file."""
    from protrans_cli.training.loop import _names_a_shape

    assert _names_a_shape(RuntimeError(
        "Error(s) in loading state_dict for BertForMaskedLM:\n\tsize mismatch for bert.embeddings.word_embeddings."
        "weight: copying a param with shape torch.Size([30, 32]) from checkpoint, the shape in current model is "
        "torch.Size([31, 32])."))
    assert not _names_a_shape(RuntimeError(
        "PytorchStreamReader failed reading zip archive: failed finding central directory"))


def _slowed(monkeypatch, function: str, seconds: float, clock_stands_still: bool = False) -> list[float]:
    """The training loop's clock moved on by `seconds` at each call of loop.`function` (and, with
    `clock_stands_still`, by nothing else); the list holds the seconds added so far."""
    import time

    from protrans_cli.training import loop

    skew = [0.0]
    clock = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    clock.perf_counter = (lambda: skew[0]) if clock_stands_still else (lambda: time.perf_counter() + skew[0])
    real = getattr(loop, function)

    def slow(*args, **kwargs):
        skew[0] += seconds
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(loop, function, slow)
    return skew


def test_tokens_per_s_leaves_out_the_time_of_checkpoint_saves(tmp_path, monkeypatch):
    """docs/train.md: `tokens_per_s` is the training steps' own rate, checkpoint saves not counted
    in it. Each save here takes 1000 s on the loop's clock: every line's rate stays that of its
    steps (a rate over the saves too would put the tokens over more than 1000 s)."""
    skew = _slowed(monkeypatch, "_save", 1000.0)
    rows = read_metrics(train(_config(tmp_path, num_steps=4, log_every=2, save_every=1)).run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4] and skew[0] == 4000.0  # (a save at every step)
    for row in rows:
        assert row["tokens"] / row["tokens_per_s"] < 100, row


def test_tokens_per_s_of_a_resumed_interval_leaves_out_the_saves_before_its_checkpoint(tmp_path, monkeypatch):
    """The checkpoint of a stop between two lines keeps the interval's training time for the
    resumed run's next line: the time of the saves before it (each 1000 s on the loop's clock
    here, at steps 1 and 2) is not training time, in the resumed line as in an uninterrupted one."""
    _slowed(monkeypatch, "_save", 1000.0)
    kw = dict(num_steps=4, log_every=4, save_every=1)
    train(_config(tmp_path, stop_after=3, **kw))
    run = train(_config(tmp_path, **kw), resume=True).run_dir
    state = torch.load(run / "checkpoints" / "step_00000003" / "training_state.pt", weights_only=True)
    assert 0 < state["log"]["seconds"] < 100
    (row,) = read_metrics(run / "metrics.jsonl")
    assert row["step"] == 4 and row["tokens"] / row["tokens_per_s"] < 100, row


def test_the_summary_of_a_resumed_run_gives_the_tokens_per_s_of_its_own_steps(tmp_path, monkeypatch, capsys):
    """docs/train.md: the summary line's tokens/s is this process's part of the run, "a resumed run
    counts from its checkpoint". A checkpoint taken between two metrics lines keeps the tokens of
    its steps for the next line; the summary counted them too, over the resumed process's time
    only. Here the loop's clock moves by 0.01 s in each step alone: the summary's rate is the tokens
    of steps 4-8 (the lines' tokens less the checkpoint's) over their 0.05 s."""
    kw = dict(num_steps=8, log_every=4)
    train(_config(tmp_path, stop_after=3, **kw))
    capsys.readouterr()
    skew = _slowed(monkeypatch, "train_step", 0.01, clock_stands_still=True)
    result = train(_config(tmp_path, **kw), resume=True)
    assert result.completed and skew[0] == pytest.approx(0.05)
    state = torch.load(result.run_dir / "checkpoints" / "step_00000003" / "training_state.pt", weights_only=True)
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    resumed_tokens = sum(r["tokens"] for r in rows) - state["log"]["tokens"]
    said = re.search(r"train: done, 8 steps; .*\(5 steps in 0 s, ([\d,]+) tokens/s",
                     capsys.readouterr().err)
    assert said, "no summary line"
    assert int(said.group(1).replace(",", "")) == pytest.approx(resumed_tokens / 0.05, rel=1e-3)


def test_a_learned_position_table_after_a_padding_index_takes_its_rows_less_the_offset(tmp_path, run_cli):
    """ESM-1b's absolute positions (RoBERTa's too) are numbered from padding_idx + 1: a table of
    66 rows takes 64 tokens, as a plain forward pass of the model shows. A --max-length of 65 is
    refused before training (one more passed, and the first step was an IndexError traceback)."""
    from protrans_cli.models import get_family
    from protrans_cli.training.loop import _position_limit

    family = get_family("esm")
    tokenizer = family.build_tokenizer()
    model = family.pretraining_model(family.build_config(
        "tiny", tokenizer, position_embedding_type="absolute", max_position_embeddings=66)).eval()
    with torch.no_grad():
        model(input_ids=torch.full((1, 64), 5))
        with pytest.raises(IndexError):
            model(input_ids=torch.full((1, 65), 5))
    assert _position_limit(model) == 64
    out = tmp_path / "run"
    res = run_cli("train", "--family", "esm", "--corpus", LEARNABLE, "-o", out, "--set",
                  "position_embedding_type=absolute", "--set", "max_position_embeddings=66", "--max-length", 65,
                  "--num-steps", 1, "--global-batch-size", 4, "--micro-batch-size", 4)
    assert res.exit_code == 2, res.stderr
    assert "--max-length 65 (tokens, special tokens included) is beyond the model's 64 positions" in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("micro_batch_size", [16, 4])
def test_an_electra_steps_loss_is_the_generators_mean_plus_the_weighted_detection_mean(tmp_path, micro_batch_size):
    """The step's loss as objectives.Electra documents it: the generator's loss per masked residue
    plus electra_disc_weight times the detection loss per real token, each of them also on the
    line (`gen_loss`, `disc_loss`), whatever the split into micro-batches. (A step's weight of the
    detection sum is masked / real tokens of the whole step.)"""
    result = train(_config(tmp_path, "electra", num_steps=2, log_every=1, micro_batch_size=micro_batch_size,
                           electra_disc_weight=7.0))
    rows = read_metrics(result.run_dir / "metrics.jsonl")
    assert len(rows) == 2
    for row in rows:
        assert row["loss"] == pytest.approx(row["gen_loss"] + 7.0 * row["disc_loss"], rel=1e-5), row


def test_accept_corpus_change_resumes_with_a_warning_naming_the_change(tmp_path, capsys):
    """--help: --accept-corpus-change goes on although a corpus file changed since the checkpoint;
    "warns". The run resumed and its batches may differ from an uninterrupted one's: said once."""
    import shutil

    corpus = tmp_path / "corpus.txt"
    shutil.copy(LEARNABLE, corpus)
    kw = dict(corpus=[str(corpus)], output_dir=str(tmp_path / "run"), save_every=2, num_steps=2)
    train(_config(tmp_path, **kw))
    corpus.write_bytes(corpus.read_bytes() + b"M K T A\n\n")
    capsys.readouterr()
    result = train(_config(tmp_path, **{**kw, "num_steps": 4}), resume=True, accept_corpus_change=True)
    assert result.completed and result.step == 4
    err = capsys.readouterr().err
    assert err.count("resumed at its data position anyway (accept_corpus_change=True)") == 1, err
    assert "the corpus changed since" in err and "corpus.txt" in err
    # an unchanged corpus: no word of it
    result = train(_config(tmp_path, **{**kw, "num_steps": 6}), resume=True, accept_corpus_change=True)
    assert result.step == 6 and "--accept-corpus-change" not in capsys.readouterr().err


@pytest.mark.parametrize("stop", [4, 6])
def test_accept_corpus_change_with_a_shard_cut_short_before_the_position_trains_every_protein_after_it(
        tmp_path, monkeypatch, capsys, stop):
    """Shards of 4, 4 and 8 proteins, 2 a step, buffers of 4; the run stopped after step 4 (its
    position the third shard's first protein) or 6 (that shard's fifth), then the second shard
    cut short. The resumed steps train the third shard's proteins from the position on, as the
    uninterrupted run did (it skipped as many of them as the second shard lost, "the batches
    may differ"), and the warning names the shard and where the run resumed."""
    from protrans_cli.training.data import CorpusStream

    def shard(name, letter, n):
        (tmp_path / name).write_text("".join(" ".join(letter + "ACDEFGHIKLMNPQRSTVWY"[i] * (8 + i)) + "\n\n"
                                             for i in range(n)))
        return str(tmp_path / name)

    corpus = [shard("a.txt", "A", 4), shard("b.txt", "B", 4), shard("c.txt", "C", 8)]
    kw = dict(corpus=corpus, output_dir=str(tmp_path / "run"), num_steps=8, stop_after=stop, save_every=stop,
              max_length=32, global_batch_size=2, micro_batch_size=2, bucket_batches=2, log_every=1)
    train(_config(tmp_path, **kw))
    shard("b.txt", "B", 2)
    read: list[str] = []
    original = CorpusStream._sample

    def recording(self, buffer, pos, state):
        read.append(buffer[pos][2])
        return original(self, buffer, pos, state)

    monkeypatch.setattr(CorpusStream, "_sample", recording)
    capsys.readouterr()
    result = train(_config(tmp_path, **{**kw, "stop_after": None}), resume=True, accept_corpus_change=True)
    assert result.completed and result.step == 8
    trained = 2 * (stop - 4)  # of the third shard, before the stop
    assert sorted(read) == sorted("C" + "ACDEFGHIKLMNPQRSTVWY"[i] * (8 + i) for i in range(trained, 8))
    err = capsys.readouterr().err
    assert f"the corpus changed since {tmp_path / 'run' / 'checkpoints' / f'step_0000000{stop}'} was saved " \
           f"({corpus[1]}: 88 bytes then, 40 now)" in err, err
    if stop == 4:  # the cursor at the second shard's end: its change may move it
        assert ("resumed at its data position anyway (accept_corpus_change=True), protein 9 of epoch 1: line 1 of "
                f"{corpus[2]} now") in err, err  # (a library call: its keyword, not the flag)
    else:  # in the third: the rest of the epoch is the uninterrupted run's
        assert (f"before the run's data position: resumed there (protein 13 of epoch 1: line 9 of {corpus[2]}), "
                "reading on as the uninterrupted run would") in err, err


def test_resume_of_a_run_holding_only_checkpoints_reads_its_latest_checkpoints_settings(tmp_path, run_cli):
    """A run lengthened by a resume (--num-steps 4, then 8) and synced without the files beside
    checkpoints/: its latest checkpoint holds the run's settings as they are now (8 steps), the
    first one the settings it had then (4), with which it would stop at step 4, its work undone."""
    import shutil

    run = tmp_path / "run"
    small = ["--max-length", 64, "--global-batch-size", 4, "--micro-batch-size", 4, "--save-every", 2, "-j", 1]
    res = run_cli("train", "--corpus", LEARNABLE, "-o", run, "--num-steps", 4, "--stop-after", 2, *small)
    assert res.exit_code == 0, res.stderr
    res = run_cli("train", "--resume", "-o", run, "--num-steps", 8, "--stop-after", 4)
    assert res.exit_code == 0, res.stderr
    synced = tmp_path / "synced"
    shutil.copytree(run / "checkpoints", synced / "checkpoints")
    res = run_cli("train", "--resume", "-o", synced)
    assert res.exit_code == 0, res.stderr
    assert f"the run's settings from {synced / 'checkpoints' / 'step_00000004' / 'train_config.json'}" in res.stderr
    assert "done, 8 steps" in res.stderr, res.stderr


def test_a_config_files_stop_after_stops_the_run_and_only_the_runs_own_file_drops_it(tmp_path, run_cli):
    """The --stop-after an earlier version saved in a run's train_config.json is dropped when that
    file is read back for --resume; one set in a config file given with --config (a time-limited
    job's settings) still stops the run."""
    cfg = _small_toml(tmp_path / "c.toml", "num_steps = 4\nmax_length = 32\nstop_after = 2\nsave_every = 2\n")
    res = run_cli("train", "--config", cfg, "-j", 1, "-o", tmp_path / "run")
    assert res.exit_code == 0, res.stderr
    assert "stopped after step 2; continue with --resume" in res.stderr, res.stderr
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000002"]


def test_train_takes_protrans_threads_when_neither_j_nor_the_config_file_gives_threads(tmp_path, run_cli,
                                                                                       monkeypatch):
    """PROTRANS_THREADS (else min(cores, 4)) is the run's thread count when -j and the file's
    threads are left out, as in every command; it is saved as not given (null), not left to torch's
    own default of every core."""
    monkeypatch.setenv("PROTRANS_THREADS", "2")
    set_to = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (set_to.append(n), real(n)))
    try:
        res = run_cli("train", "--corpus", LEARNABLE, "--num-steps", 1, "--max-length", 32, "--global-batch-size", 4,
                      "--micro-batch-size", 4, "-o", tmp_path / "a")
        assert res.exit_code == 0, res.stderr
    finally:
        real(1)
    assert set_to and set_to[0] == 2, set_to
    assert json.loads((tmp_path / "a" / "train_config.json").read_text())["threads"] is None


def test_find_lr_refuses_stop_after_and_fewer_than_10_steps_and_names_every_run_flag_it_ignores(tmp_path, run_cli):
    """--stop-after stops a run, which --find-lr does not train (refused as --time-limit is);
    --num-steps 9 is below the 10 steps a descent needs; and each flag of a run given beside it is
    named (--keep-best, --tensorboard...), a --warmup-steps of 0 too."""
    args = ["train", "--corpus", LEARNABLE, "--find-lr", "--max-length", 32, "-j", 1]
    res = run_cli(*args, "--stop-after", 5, "-o", tmp_path / "s")
    assert res.exit_code == 2 and "--stop-after cannot go with it" in res.stderr, res.stderr
    # without --corpus (the run's own, as --resume reads it): the same refusal, not "no training corpus"
    res = run_cli("train", "--find-lr", "--resume", "-o", tmp_path / "s")
    assert res.exit_code == 2 and "--resume cannot go with it" in res.stderr, res.stderr
    res = run_cli(*args, "--num-steps", 9, "-o", tmp_path / "n")
    assert res.exit_code == 2 and "--find-lr needs at least 10 steps to find a descent, got --num-steps 9" in res.stderr
    res = run_cli(*args, "--num-steps", 10, "--log-every", 5, "--keep-last", 2, "--keep-best", "--tensorboard",
                  "--warmup-steps", 0, "-o", tmp_path / "a")
    assert res.exit_code == 0, res.stderr
    assert "--find-lr trains no run: --log-every, --keep-last, --keep-best, --tensorboard ignored" in res.stderr
    assert "--find-lr raises the learning rate from 1e-7 to 1 itself: --warmup-steps ignored" in res.stderr


def test_accept_corpus_change_on_the_command_line_resumes_a_run_whose_corpus_changed(tmp_path, run_cli):
    """`train --resume --accept-corpus-change` (a damaged shard replaced by a whole copy) goes on,
    with a warning; without it, the changed corpus is refused."""
    import shutil

    corpus = tmp_path / "corpus.txt"
    shutil.copy(LEARNABLE, corpus)
    run = tmp_path / "run"
    res = run_cli("train", "--corpus", corpus, "-o", run, "--num-steps", 4, "--stop-after", 2, "--save-every", 2,
                  "--max-length", 64, "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1)
    assert res.exit_code == 0, res.stderr
    corpus.write_bytes(corpus.read_bytes() + b"M K T A\n\n")
    res = run_cli("train", "--resume", "-o", run)
    assert res.exit_code == 1 and "add --accept-corpus-change" in res.stderr, res.stderr
    res = run_cli("train", "--resume", "-o", run, "--accept-corpus-change")
    assert res.exit_code == 0, res.stderr
    assert "the corpus changed since" in res.stderr and "done, 4 steps" in res.stderr, res.stderr


def test_an_unquoted_pattern_expanded_for_val_corpus_names_val_corpus_and_other_arguments_no_pattern(tmp_path,
                                                                                                     run_cli):
    """Both --corpus and --val-corpus given files that sort before the extra ones: the flag named
    is the one whose file shares the longer prefix with them (the pattern's first file); extra
    arguments some of which are no file are no shell's expansion."""
    (tmp_path / "a.txt").write_text("M K T\n\n")
    for i in range(3):
        (tmp_path / f"val.{i:05d}.txt").write_text("M K T\n\n")
    rest = [tmp_path / "val.00001.txt", tmp_path / "val.00002.txt"]
    res = run_cli("train", "--corpus", tmp_path / "a.txt", "--val-corpus", tmp_path / "val.00000.txt", *rest,
                  "-o", tmp_path / "r")
    assert res.exit_code == 2 and f"files after --val-corpus {tmp_path / 'val.00000.txt'}" in res.stderr, res.stderr
    res = run_cli("train", "--corpus", tmp_path / "a.txt", tmp_path / "val.00001.txt", tmp_path / "zz", "-o",
                  tmp_path / "r")
    assert res.exit_code == 2 and res.stderr.strip() == (
        f"protrans: error: Got unexpected extra arguments ({tmp_path / 'val.00001.txt'} {tmp_path / 'zz'}) "
        "(see 'protrans train --help')")


def test_phases_that_set_their_own_batch_sizes_warn_of_no_flag_left_out(tmp_path, run_cli):
    # (the warning names the flags given: none given, none named, no "--global-batch-size None")
    res = run_cli("train", "--corpus", LEARNABLE, "-o", tmp_path / "r", "--phase", "32:1:4:4", "-j", 1)
    assert res.exit_code == 0 and "warning" not in res.stderr, res.stderr


def test_init_from_a_model_directory_without_its_weights_is_one_line_and_leaves_no_run(tmp_path, run_cli):
    """--init-from a folder holding a model's config.json and tokenizer but no weights file (a
    download or a copy cut short, `save_pretrained` of the config alone): exit 1, one line naming the
    folder and the weights file looked for, not a traceback from transformers, and the run directory
    it would have made is not left behind."""
    from transformers import BertForMaskedLM

    bert = FAMILIES["bert"]
    tokenizer = bert.build_tokenizer()
    BertForMaskedLM(bert.build_config("tiny", tokenizer)).save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    (tmp_path / "mlm" / "model.safetensors").unlink()

    def refused(model, said):
        res = run_cli("train", "--init-from", model, "--corpus", LEARNABLE, "-o", tmp_path / "r", "--num-steps", 1)
        assert res.exit_code == 1 and res.stderr == f"protrans: error: --init-from {model}: {said}\n", res.stderr
        assert not (tmp_path / "r").exists()

    # (one line of ours, as embed -m words it: transformers' "Error no file named model.safetensors,
    # or pytorch_model.bin, found in directory ..." was repeated inside it)
    refused(tmp_path / "mlm", "the model directory has no weights file (model.safetensors or pytorch_model.bin)")
    # an ELECTRA pair whose generator/ lacks its weights: that folder is named, where transformers
    # named the pair's directory, whose weights were there
    electra = FAMILIES["electra"]
    tokenizer = electra.build_tokenizer()
    pair = electra.pretraining_model(electra.build_config("tiny", tokenizer))
    pair.discriminator.save_pretrained(tmp_path / "pair")
    tokenizer.save_pretrained(tmp_path / "pair")
    pair.generator.save_pretrained(tmp_path / "pair" / "generator")
    (tmp_path / "pair" / "generator" / "model.safetensors").unlink()
    refused(tmp_path / "pair", f"its generator folder {tmp_path / 'pair' / 'generator'} has no weights file "
            "(model.safetensors or pytorch_model.bin)")


def test_accept_corpus_change_on_a_corpus_that_shrank_below_the_position_says_the_run_goes_on_at_the_next_epoch(
        tmp_path, run_cli):
    """A corpus cut short (a shard replaced by a shorter copy) that now ends before the saved data
    position: the resume finds no protein there and goes on from the next epoch's beginning, and
    says so, rather than "resumed at its data position", a place no longer in the corpus. A gzip
    file of fewer proteins than the position (decompressed to its end short of the saved byte),
    and a plain one of just as many as the position counts, without its blank lines (sought past
    its end, then read whole for the position's protein)."""
    import gzip

    lines = Path(LEARNABLE).read_text().splitlines(keepends=True)
    for name, shorter in (("corpus.txt.gz", lines[:40]), ("corpus.txt", [x for x in lines[:64] if x.strip()])):
        corpus, run = tmp_path / name, tmp_path / f"run_{name}"

        def put(text):
            corpus.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())

        put("".join(lines))
        # 2 proteins a step, buffers of 32: stopped after step 17, in the second buffer (protein 33 on)
        res = run_cli("train", "--corpus", corpus, "-o", run, "--num-steps", 20, "--stop-after", 17,
                      "--save-every", 17, "--log-every", 1, "--max-length", 32, "--global-batch-size", 2,
                      "--micro-batch-size", 2, "-j", 1)
        assert res.exit_code == 0, res.stderr
        put("".join(shorter))
        res = run_cli("train", "--resume", "-o", run, "--accept-corpus-change")
        assert res.exit_code == 0, res.stderr
        assert ("it now ends before the run's data position (protein 33 of epoch 1); resumed from the beginning "
                "of epoch 2 (--accept-corpus-change)") in res.stderr, res.stderr
        assert "resumed at its data position anyway" not in res.stderr
        rows = read_metrics(run / "metrics.jsonl")
        assert [(row["step"], row["epoch"]) for row in rows[16:]] == [(17, 1), (18, 2), (19, 2), (20, 2)]


def test_init_from_a_directory_is_recorded_by_its_absolute_path_and_weights(tmp_path, monkeypatch):
    """train_config.json kept --init-from as given (`a/final`, relative to where train ran): its
    `resolved` section records the directory's absolute path and weights fingerprint."""
    from protrans_cli.models import weights_fingerprint

    first = train(_config(tmp_path / "a", num_steps=2))
    assert weights_fingerprint(first.run_dir)  # (the run's final model at its root)
    monkeypatch.chdir(tmp_path)
    given = os.path.relpath(first.run_dir, tmp_path)
    second = train(_config(tmp_path / "b", init_from=given, num_steps=1))
    saved = json.loads((second.run_dir / "train_config.json").read_text())
    assert saved["init_from"] == given and not os.path.isabs(given)  # (as given: what a resume compares)
    assert saved["resolved"]["init_from"] == str(first.run_dir.resolve())
    assert saved["resolved"]["init_from_weights_fingerprint"] == weights_fingerprint(first.run_dir)

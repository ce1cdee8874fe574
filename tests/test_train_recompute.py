"""`train --activation-checkpointing`: every family trains to the same losses and weights with it
as without (dropout on: the recomputation must draw the same masks), its blocks really are
recomputed, far less is kept for the backward pass, and the saved model is the plain one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import DATA
from protrans_cli.models import FAMILIES
from protrans_cli.training import recompute
from protrans_cli.training.config import TrainConfig
from protrans_cli.training.loop import train
from protrans_cli.training.metrics import read_metrics

LEARNABLE = str(DATA / "train" / "learnable.txt")

torch.set_num_threads(1)


def _config(out, family, **kw):
    args = dict(family=family, corpus=[LEARNABLE], output_dir=str(out), num_steps=4, max_length=64,
                global_batch_size=8, micro_batch_size=4, lr=3e-3, warmup_steps=1, log_every=1,
                save_every=1000, threads=1, bucket_batches=2,
                # dropout everywhere (the tiny presets' defaults, set here so that it is certain)
                model_overrides=_dropout(family))
    args.update(kw)
    return TrainConfig(**args)


def _dropout(family: str) -> dict:
    # (ESM C has no dropout: its config has no such field, and an unknown one is refused)
    return {"t5": {"dropout_rate": 0.1}, "xlnet": {"dropout": 0.1}, "transfo_xl": {"dropout": 0.1}, "esmc": {}}.get(
        family, {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1})


def _weights(run_dir) -> dict[str, torch.Tensor]:
    with safe_open(str(run_dir / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_losses_and_weights_with_and_without(tmp_path, family):
    plain = train(_config(tmp_path / "plain", family))
    again = train(_config(tmp_path / "recomputed", family, activation_checkpointing=True))
    assert plain.completed and again.completed
    losses = [r["loss"] for r in read_metrics(plain.run_dir / "metrics.jsonl")]
    assert len(losses) == 4
    assert [r["loss"] for r in read_metrics(again.run_dir / "metrics.jsonl")] == pytest.approx(losses, rel=1e-5)
    # the saved model: the same tensor names (no wrapper in them) and the same values
    want, got = _weights(plain.run_dir), _weights(again.run_dir)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6)
    saved = json.loads((again.run_dir / "train_config.json").read_text())
    assert saved["activation_checkpointing"] is True


def _tiny(family):
    fam = FAMILIES[family]
    tokenizer = fam.build_tokenizer()
    torch.manual_seed(0)
    return fam.pretraining_model(fam.build_config("tiny", tokenizer)).train(), tokenizer


@pytest.mark.parametrize("family,expected", [("bert", 2), ("t5", 4), ("albert", 1), ("electra", 4),
                                             ("xlnet", 2), ("transfo_xl", 2), ("esm", 2), ("esmc", 2)])
def test_the_blocks_are_the_outermost_layer_lists(family, expected):
    model, _ = _tiny(family)
    blocks = recompute.transformer_blocks(model)
    assert len(blocks) == expected
    inner = {id(m) for b in blocks for m in b.modules() if m is not b}
    assert not any(id(b) in inner for b in blocks)  # none inside another
    assert recompute.checkpoint_blocks(model) == expected
    assert recompute.checkpoint_blocks(model) == expected  # twice: still one wrapper each
    assert all(b.forward.__wrapped__.__self__ is b for b in blocks)


@pytest.mark.parametrize("family", ["t5", "albert"])
def test_fsdp_shards_the_blocks_checkpointing_recomputes(family):
    """One rule defines a transformer block: FSDP shards the items of the outermost layer lists
    with more than one block, as --activation-checkpointing recomputes them. T5's per-block
    `layer` lists (self-attention, feed-forward) became shard units of their own before, two
    more all-gathers per block; ALBERT's shared group (a list of one) stays with the root."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    from protrans_cli.training.dist import DistInfo, wrap

    model, _ = _tiny(family)
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        wrapped = wrap(model, "fsdp", DistInfo(initialised=True))
        units = [m for m in wrapped.modules() if isinstance(m, FSDPModule)]
    finally:
        dist.destroy_process_group()
    blocks = [] if family == "albert" else recompute.transformer_blocks(model)
    assert {id(m) for m in units} == {id(model), *map(id, blocks)}
    assert len(units) == 1 + (4 if family == "t5" else 0)


def _step_statistics(model, tokenizer, length=200, batch=4):
    """(bytes kept for the backward pass, calls of the first block's sublayers) over one step."""
    ids = torch.randint(5, len(tokenizer), (batch, length))
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    calls = []
    first = recompute.transformer_blocks(model)[0]
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in first.children()]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    for h in hooks:
        h.remove()
    return sum(kept), len(calls)


def test_less_is_kept_and_the_block_runs_twice():
    model, tokenizer = _tiny("bert")
    kept_plain, calls_plain = _step_statistics(model, tokenizer)
    recompute.checkpoint_blocks(model)
    kept, calls = _step_statistics(model, tokenizer)
    # forward, then again inside the backward pass (which stops once it has recomputed what
    # the backward needs: the block's last sublayer may not run again)
    assert calls_plain < calls <= 2 * calls_plain
    assert kept < 0.25 * kept_plain, (kept, kept_plain)


def test_evaluation_runs_the_plain_forward():
    model, tokenizer = _tiny("bert")
    recompute.checkpoint_blocks(model)
    model.eval()
    ids = torch.randint(5, len(tokenizer), (2, 20))
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        with torch.no_grad():
            model(input_ids=ids)
    assert kept == []


def test_cli_flag_and_message(tmp_path, run_cli):
    out = tmp_path / "cli"
    result = run_cli("train", "--family", "t5", "--preset", "tiny", "--corpus", LEARNABLE, "-o", out,
                     "--num-steps", "2", "--global-batch-size", "4", "--micro-batch-size", "2",
                     "--max-length", "32", "--activation-checkpointing")
    assert result.exit_code == 0, result.stderr
    assert "activation checkpointing of 4 blocks" in result.stderr
    assert json.loads((out / "train_config.json").read_text())["activation_checkpointing"] is True


def test_with_packing(tmp_path):
    plain = train(_config(tmp_path / "plain", "bert", packing=True))
    again = train(_config(tmp_path / "recomputed", "bert", packing=True, activation_checkpointing=True))
    assert again.losses == pytest.approx(plain.losses, rel=1e-5)


@pytest.mark.slow
def test_compiled_with_activation_checkpointing(tmp_path):
    """torch.compile traces through the recomputed blocks (dropout off: compiled dropout draws
    other masks than eager)."""
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    eager = train(_config(tmp_path / "eager", "bert", model_overrides=no_dropout))
    both = train(_config(tmp_path / "both", "bert", model_overrides=no_dropout, compile=True,
                         activation_checkpointing=True))
    assert both.losses == pytest.approx(eager.losses, rel=1e-5)


def test_cli_compile_failure_is_one_line(tmp_path, run_cli, monkeypatch):
    """`train --compile` where torch.compile cannot build the blocks' kernels: one line naming
    the compiler's error and what to run instead, exit 1, no run directory left behind (it
    failed before its first metrics line)."""
    real_compile = torch.compile

    def broken(graph, example_inputs):
        raise RuntimeError("inductor: no C compiler found")

    monkeypatch.setattr(torch, "compile", lambda fn=None, **kw: real_compile(fn, **{**kw, "backend": broken}))
    out = tmp_path / "run"
    result = run_cli("train", "--family", "bert", "--preset", "tiny", "--corpus", LEARNABLE, "-o", out,
                     "--num-steps", "2", "--global-batch-size", "4", "--micro-batch-size", "2",
                     "--max-length", "32", "--compile")
    assert result.exit_code == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "torch.compile could not build a kernel (RuntimeError: inductor: no C compiler found)" in last
    assert "--no-compile" in last and "Traceback" not in result.stderr
    assert not out.exists()


def test_compile_by_default_only_for_bert_like_models_on_a_cuda_gpu(monkeypatch, capsys):
    """compile = None (train's default): the blocks of a BERT or RoBERTa model (what was measured
    1.58x on an H200) are compiled on a CUDA GPU whose torch.compile builds a small kernel; a
    machine whose compiler fails gets one warning (from the rank told to warn) and eager blocks;
    other families and the CPU stay eager; an explicit setting is kept as given. The check draws
    no number from the run's generator. The GPU is faked: the choice reads the device's type and
    the compile check."""
    from protrans_cli import environment

    checks = []
    result = {"ok": True, "seconds": 1.0}

    def check(device):
        checks.append(device)
        torch.randn(3)  # as the real check does
        return dict(result)

    monkeypatch.setattr(environment, "compile_check", check)
    real_fork = torch.random.fork_rng
    forked = []
    # (no CUDA here: the CPU generator is forked alone, which is what the check draws from below)
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices=None: forked.append(devices) or real_fork(devices=[]))
    cuda = torch.device("cuda", 1)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    assert recompute.resolve_compile(None, "bert", cuda) and checks == ["cuda:1"]
    assert forked == [[cuda]] and torch.equal(torch.rand(1), expected)  # the run's numbers untouched
    assert recompute.resolve_compile(None, "roberta", cuda)
    for family in ("albert", "electra", "esm", "t5", "xlnet", "transfo_xl"):
        assert not recompute.resolve_compile(None, family, cuda)
    assert not recompute.resolve_compile(None, "bert", torch.device("cpu"))
    assert recompute.resolve_compile(True, "t5", torch.device("cpu"))
    assert not recompute.resolve_compile(False, "bert", cuda)
    assert len(checks) == 2  # only where auto had to decide on a GPU
    capsys.readouterr()
    result.update(ok=False, error="RuntimeError: no C compiler")
    assert not recompute.resolve_compile(None, "bert", cuda, warn=False)
    assert capsys.readouterr().err == ""
    assert not recompute.resolve_compile(None, "bert", cuda)
    err = capsys.readouterr().err
    assert "torch.compile cannot build a kernel on this machine (RuntimeError: no C compiler)" in err
    assert "--no-compile" in err


def test_the_saved_config_keeps_compile_as_given(tmp_path, monkeypatch):
    """The saved config says what was asked (None: auto), not what auto meant on the machine
    that wrote it: a run started from that config elsewhere decides again, with the compile
    check, rather than compiling unchecked (a resolved True on a GPU did). Given, it is kept."""
    decided = []
    real = recompute.resolve_compile
    monkeypatch.setattr(recompute, "resolve_compile", lambda *a, **k: decided.append(a[0]) or real(*a, **k))
    out = tmp_path / "run"
    train(_config(out, "bert", num_steps=1))
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["compile"] is None and decided == [None]
    step = json.loads(next((out / "checkpoints").iterdir()).joinpath("train_config.json").read_text())
    assert step["compile"] is None
    assert TrainConfig.from_file(out / "train_config.json").compile is None  # read back as auto: decided anew
    off = tmp_path / "off"
    train(_config(off, "bert", num_steps=1, compile=False))
    assert json.loads((off / "train_config.json").read_text())["compile"] is False

"""The README.md model card of the model directories `protrans train` writes (training/card.py):
its front matter parses, its figures are the run's own, its transformers snippet runs and gives
`protrans embed`'s rows, it is rewritten on --resume, and a user's own README.md is kept."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import yaml

from conftest import DATA
from protrans_cli.errors import InputError
from protrans_cli.io.h5 import PER_RESIDUE, EmbeddingsReader
from protrans_cli.training.card import MARK
from protrans_cli.training.config import TrainConfig
from protrans_cli.training.loop import train
from protrans_cli.training.metrics import read_metrics

LEARNABLE = str(DATA / "train" / "learnable.txt")

torch.set_num_threads(1)


def _config(tmp_path, family, **kw):
    args = dict(family=family, corpus=[LEARNABLE], val_corpus=[LEARNABLE], output_dir=str(tmp_path / f"run_{family}"),
                num_steps=6, max_length=64, global_batch_size=8, micro_batch_size=8, lr=3e-3, warmup_steps=2,
                log_every=3, save_every=3, threads=1, bucket_batches=2, num_eval_batches=1)
    args.update(kw)
    return TrainConfig(**args)


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _python_block(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_the_card_holds_the_runs_figures_and_its_snippet_gives_embeds_rows(tmp_path, family, run_cli, monkeypatch):
    result = train(_config(tmp_path, family))
    run = result.run_dir
    text = (run / "README.md").read_text()
    front = _front_matter(text)
    assert front["library_name"] == "transformers"
    assert {"protein language model", family} <= set(front["tags"])
    # a pipeline transformers 5 runs (it removed text2text-generation: T5 has none); each tag once
    assert front.get("pipeline_tag") == {"bert": "fill-mask", "t5": None}[family]
    assert len(front["tags"]) == len(set(front["tags"]))
    assert MARK in text and "TODO" not in text
    # the figures are the run's: its config and its metrics.jsonl
    rows = read_metrics(run / "metrics.jsonl")
    assert "- Steps: 6 of 6\n" in text
    assert "- Global batch: 8 proteins; max length 64 tokens\n" in text
    assert "- Learning rate: 0.003 peak, 2 warmup steps, linear decay to 0.1 of the peak\n" in text
    assert "- Corpus: `learnable.txt`; 48 proteins seen, " + f"{sum(r['tokens'] for r in rows):,} tokens\n" in text
    assert f"- Training loss: {rows[-1]['loss']:.4g} (step 6)\n" in text
    eval_loss = rows[-1]["eval_loss"]
    assert f"- Eval loss: {eval_loss:.4g} (step 6; perplexity {math.exp(eval_loss):.4g}) on `learnable.txt`\n" in text
    from protrans_cli.models import load_model

    loaded = load_model(run)
    params = sum(p.numel() for p in loaded.family.load_pretraining_model(run).parameters())
    assert f"- Parameters: {params:,}" in text
    # each checkpoint has its own card, of its step (inside the SHA256SUMS of the checkpoint)
    ckpt = run / "checkpoints" / "step_00000003"
    ckpt_text = (ckpt / "README.md").read_text()
    assert "(step 3)" in ckpt_text and "- Steps: 3 of 6\n" in ckpt_text
    assert f"- Training loss: {rows[0]['loss']:.4g} (step 3)\n" in ckpt_text
    assert "README.md" in (ckpt / "SHA256SUMS").read_text()
    # THE SNIPPET RUNS, in the model directory, offline, and gives embed's per-residue rows
    _snippet_gives_embeds_rows(run, text, tmp_path, run_cli, monkeypatch)


def _snippet_gives_embeds_rows(run, text, tmp_path, run_cli, monkeypatch):
    from protrans_cli.models import load_model

    loaded = load_model(run)
    code = _python_block(text)
    monkeypatch.chdir(run)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    sequence, per_residue = scope["sequence"], scope["per_residue"].numpy()
    assert per_residue.shape == (len(sequence), loaded.family.embedding_dim(loaded.model.config))
    fasta, out = tmp_path / "q.fa", tmp_path / "q.h5"
    fasta.write_text(f">q\n{sequence}\n")
    res = run_cli("embed", fasta, "-m", run, "-o", out, "--per-residue")
    assert res.exit_code == 0, res.stderr
    with EmbeddingsReader(out) as r:
        (ident,) = r.ids(PER_RESIDUE)
        embedded = np.asarray(r.get(ident, PER_RESIDUE), dtype=np.float32)
    np.testing.assert_allclose(per_residue, embedded, atol=1e-5)


@pytest.mark.parametrize("family", ["esm", "xlnet", "electra", "albert", "roberta"])
def test_every_transformers_familys_snippet_gives_embeds_rows(tmp_path, family, run_cli, monkeypatch):
    result = train(_config(tmp_path, family, num_steps=3, val_corpus=[], save_every=100))
    text = (result.run_dir / "README.md").read_text()
    assert _front_matter(text)["library_name"] == "transformers"
    _snippet_gives_embeds_rows(result.run_dir, text, tmp_path, run_cli, monkeypatch)


@pytest.mark.parametrize("family", ["transfo_xl", "esmc"])
def test_a_family_with_protrans_model_code_gets_no_transformers_snippet(tmp_path, family):
    result = train(_config(tmp_path, family, num_steps=2, val_corpus=[], save_every=100, log_every=1))
    text = (result.run_dir / "README.md").read_text()
    front = _front_matter(text)
    assert "library_name" not in front and family in front["tags"]
    assert "```python" not in text and "protrans embed -m ." in text

def test_the_snippet_maps_rare_residues_as_the_family_does(tmp_path, monkeypatch):
    result = train(_config(tmp_path, "bert", num_steps=3, val_corpus=[]))
    text = (result.run_dir / "README.md").read_text()
    assert "## Results" in text and "Eval loss" not in text  # (no val corpus: no eval line)
    code = _python_block(text).replace('sequence = "MKTAYIAKQRQISFVKSHFSRQ"', 'sequence = "MKUZOBAK"')
    monkeypatch.chdir(result.run_dir)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    from protrans_cli.models import load_model

    loaded = load_model(result.run_dir)
    inputs, mask = loaded.family.encode(loaded.tokenizer, ["MKUZOBAK"])
    (hidden,) = loaded.family.hidden_states(loaded.model, inputs, [-1])
    torch.testing.assert_close(scope["per_residue"], hidden[0][mask[0]], atol=1e-5, rtol=0)


def test_a_resumed_run_rewrites_its_card_and_a_users_readme_is_kept(tmp_path):
    part = train(_config(tmp_path, "bert", stop_after=3))
    run = part.run_dir
    assert not (run / "README.md").exists()  # (no final model yet: the checkpoint has the card)
    assert (run / "checkpoints" / "step_00000003" / "README.md").is_file()
    whole = train(_config(tmp_path, "bert"), resume=True)
    assert whole.completed
    text = (run / "README.md").read_text()
    assert text.count(MARK) == 1 and text.count("## Training") == 1 and "- Steps: 6 of 6\n" in text
    # lengthened by --resume: protrans's own card is replaced, not added to
    train(_config(tmp_path, "bert", num_steps=9), resume=True)
    text = (run / "README.md").read_text()
    assert text.count(MARK) == 1 and "- Steps: 9 of 9\n" in text
    assert "- Steps: 9 of 9\n" in (run / "checkpoints" / "step_00000009" / "README.md").read_text()
    # the user's own README.md (no mark) is never replaced
    (run / "README.md").write_text("# my model\n")
    train(_config(tmp_path, "bert", num_steps=12), resume=True)
    assert (run / "README.md").read_text() == "# my model\n"
    assert json.loads((run / "complete.json").read_text())["step"] == 12
    assert "- Steps: 12 of 12\n" in (run / "checkpoints" / "step_00000012" / "README.md").read_text()


def test_a_new_run_in_a_folder_with_the_users_readme_keeps_it(tmp_path):
    run = tmp_path / "run_bert"
    run.mkdir()
    (run / "README.md").write_text("notes\n")
    train(_config(tmp_path, "bert", num_steps=3, val_corpus=[]))
    assert (run / "README.md").read_text() == "notes\n"
    assert (run / "config.json").is_file()


def test_a_card_that_cannot_be_made_is_warned_and_the_models_are_saved_without_it(tmp_path, monkeypatch, capsys):
    """made_card, the one wrapper of train's, finetune's and import's cards: a bug in the card is a
    warning naming what it was for, and the checkpoints and the final model are written whole."""
    from protrans_cli.training import card

    def broken(**kwargs):
        raise KeyError("no such figure")

    monkeypatch.setattr(card, "train_card", broken)
    result = train(_config(tmp_path, "bert"))
    run = result.run_dir
    assert (run / "model.safetensors").is_file() and not (run / "README.md").exists()
    step_6 = run / "checkpoints" / "step_00000006"
    assert (step_6 / "training_state.pt").is_file() and not (step_6 / "README.md").exists()
    err = capsys.readouterr().err
    assert "no model card (README.md) for step 3: 'no such figure'" in err
    assert "no model card (README.md) for step 6: 'no such figure'" in err
    assert card.made_card(lambda: "# card\n", "x") == "# card\n"


def test_the_card_line_of_a_runs_processes_says_each_stretch_of_steps():
    from protrans_cli.training.card import process_lines

    def inv(first, world_size, strategy="none", precision="bf16"):
        return {"first_step": first, "world_size": world_size, "strategy": strategy, "precision": precision}

    # none recorded (a caller's card, or an older version's): the current invocation's, as before
    assert process_lines(None, 20, "bf16", 2, "ddp") == ["- Precision: bf16; 2 processes, strategy ddp"]
    assert process_lines([], 20, "fp32") == ["- Precision: fp32; 1 process"]
    # never changed, resumed or not: one line, the recorded setting's (not the arguments')
    assert process_lines([inv(1, 1), inv(11, 1)], 20, "bf16", 2, "ddp") == ["- Precision: bf16; 1 process"]
    assert process_lines([inv(1, 4, "fsdp")], 20, "bf16") == ["- Precision: bf16; 4 processes, strategy fsdp"]
    # an older checkpoint resumed: only this invocation is known, and the line reads as it did
    assert process_lines([inv(11, 1)], 20, "bf16") == ["- Precision: bf16; 1 process"]
    # changed: each stretch, invocations in a row with the same setting merged
    history = [inv(1, 2, "ddp"), inv(6, 2, "ddp"), inv(11, 1), inv(21, 2, "fsdp")]
    assert process_lines(history, 20, "bf16") == ["- Precision: bf16",
                                                  "- Processes: 2 (ddp) for steps 1-10, 1 for steps 11-20"]
    assert process_lines(history, 21, "bf16")[1] == ("- Processes: 2 (ddp) for steps 1-10, 1 for steps 11-20, "
                                                     "2 (fsdp) for step 21")
    # (a checkpoint's card at step 8: the later invocations are not its history)
    assert process_lines(history, 8, "bf16") == ["- Precision: bf16; 2 processes, strategy ddp"]
    # the steps before the first recorded invocation are said to be unknown, not guessed
    assert process_lines([inv(11, 1), inv(21, 2, "ddp")], 30, "bf16")[1] == (
        "- Processes: 1 for steps 11-20, 2 (ddp) for steps 21-30 (steps 1-10: not recorded)")
    # a precision that differed is said by stretch
    assert process_lines([inv(1, 1, precision="fp16"), inv(5, 1)], 9, "bf16") == [
        "- Precision: fp16 for steps 1-4, bf16 for steps 5-9", "- Processes: 1 for steps 1-4, 1 for steps 5-9"]


def _edit_state(ckpt_dir, edit):
    """The checkpoint's training_state.pt changed by `edit` (its SHA256SUMS rewritten to match)."""
    from protrans_cli.training.checkpoint import _write_sums

    path = ckpt_dir / "training_state.pt"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    _write_sums(ckpt_dir)


def test_the_card_says_the_process_history_a_resumed_runs_checkpoints_carry(tmp_path):
    ckpts = tmp_path / "run_bert" / "checkpoints"
    one = {"world_size": 1, "strategy": "none", "precision": "fp32"}

    def state(step):
        return torch.load(ckpts / f"step_{step:08d}" / "training_state.pt", weights_only=True)

    train(_config(tmp_path, "bert", val_corpus=[], stop_after=2))
    assert state(2)["processes"] == [{"first_step": 1, **one}]
    # a checkpoint of a version that did not record them: this invocation alone, the line as it was
    _edit_state(ckpts / "step_00000002", lambda s: s.pop("processes"))
    train(_config(tmp_path, "bert", val_corpus=[], stop_after=4), resume=True)
    assert state(4)["processes"] == [{"first_step": 3, **one}]
    assert "- Precision: fp32; 1 process\n" in (ckpts / "step_00000004" / "README.md").read_text()
    # steps 1-4 on two ranks under DDP (as torchrun records them), resumed by one process
    _edit_state(ckpts / "step_00000004", lambda s: s.update(
        processes=[{"first_step": 1, **one, "world_size": 2, "strategy": "ddp"},
                   {"first_step": 3, **one, "world_size": 2, "strategy": "ddp"}]))
    result = train(_config(tmp_path, "bert", val_corpus=[]), resume=True)
    assert result.completed
    assert [p["first_step"] for p in state(6)["processes"]] == [1, 3, 5]
    for text in ((result.run_dir / "README.md").read_text(), (ckpts / "step_00000006" / "README.md").read_text()):
        assert "- Precision: fp32\n- Processes: 2 (ddp) for steps 1-4, 1 for steps 5-6\n" in text
    # a damaged record is refused on --resume, naming it
    _edit_state(ckpts / "step_00000006", lambda s: s.update(processes=[{"first_step": 0}]))
    with pytest.raises(InputError, match=r"training_state\.pt.*processes\[0\] is \{'first_step': 0\}"):
        train(_config(tmp_path, "bert", val_corpus=[], num_steps=8), resume=True)

"""`protrans finetune`: LoRA adapters that start as a no-op and merge exactly, gradients only where
they belong, a learnable synthetic task (labels that follow from the residues, as test_heads_fit
builds them), `predict --fasta` on the head it writes, and its refusals. Tiny random models."""

from __future__ import annotations

import csv
import functools
import json
import os

import numpy as np
import pytest
import torch

from protrans_cli.errors import InputError, UsageError
from protrans_cli.heads.lora import LoRALinear, add_lora, lora_modules, merged_copy
from protrans_cli.heads.tasks import SS3, ss8_to_ss3
from protrans_cli.models import FAMILIES

from conftest import mkdir_refused_in
from test_heads_fit import RULE8, _netsurfp, _piped, _seqs, write_loc_fastas

torch.set_num_threads(1)
LORA_FAMILIES = [name for name, family in FAMILIES.items() if family.lora_targets]
FAST = ["--max-residues", "600", "-j", "1", "--bootstrap", "100"]


def _tiny(family_name: str, path):
    family = FAMILIES[family_name]
    tokenizer = family.build_tokenizer()
    torch.manual_seed(0)
    family.save_pretrained(family.pretraining_model(family.build_config("tiny", tokenizer)).eval(), tokenizer, path)
    return path


def _embedder(path):
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.models import load_model

    return TransformerEmbedder(load_model(path, device="cpu"), (-1,), "cpu", "float32")


def _stop_at_validation(monkeypatch, n: int):
    """Ctrl-C at the n-th validation (after epoch n - 1's state was saved); returns the real one."""
    import protrans_cli.heads.fit as fit

    real, calls = fit._validate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit, "_validate", interrupted)
    return real


def _scripted_validation(monkeypatch, scores: list) -> None:
    """Each validation returns the next (loss, ss3 score) of `scores` (then the real loss alone)."""
    import protrans_cli.heads.fit as fit

    steps, real = iter(scores), fit._validate

    def validate(*args, **kwargs):
        loss, _ = real(*args, **kwargs)
        step = next(steps, None)
        return (loss, {}) if step is None else (step[0], {"ss3": step[1]})

    monkeypatch.setattr(fit, "_validate", validate)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    _tiny("bert", root / "bert")
    rng = np.random.default_rng(0)
    _netsurfp(root / "train.csv", _seqs(rng, 60))
    _netsurfp(root / "test.csv", _seqs(rng, 15))
    return root


@pytest.fixture(scope="module")
def finetuned(data, tmp_path_factory):
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("run") / "out"
    config = FinetuneConfig(task="ss3", model=str(data / "bert"), max_epochs=5, lr=0.01, max_residues=600, threads=1,
                            n_bootstrap=100, device="cpu")
    finetune(config, data / "train.csv", out, tests=[data / "test.csv"])
    return out


@pytest.mark.parametrize("family_name", LORA_FAMILIES)
def test_fresh_adapters_change_nothing_and_merge_exactly(family_name, tmp_path):
    from protrans_cli.heads.finetune import FineTuned
    from protrans_cli.heads.model import build_head
    from protrans_cli.heads.tasks import get_task

    embedder = _embedder(_tiny(family_name, tmp_path / "base"))
    seqs = ["MKTAYIAKQRQISFVKSH", "AELVIYGPND", "MSEQUZ"]
    base = [a.copy() for a in embedder.embed_batch(seqs)]
    names = add_lora(embedder.model, embedder.family_impl, rank=4, alpha=8.0)
    assert names and all(isinstance(m, LoRALinear) for m in lora_modules(embedder.model).values())
    # (1) B starts at zero: exactly the base model's rows
    for a, b in zip(base, embedder.embed_batch(seqs)):
        assert np.array_equal(a, b)
    # (2) a non-zero update, merged and saved as an ordinary model: embed's rows of it equal
    # the adapted model's forward pass
    torch.manual_seed(1)
    for module in lora_modules(embedder.model).values():
        torch.nn.init.normal_(module.lora_b, std=0.2)
    task = get_task("ss3")
    model = FineTuned(embedder, build_head(task, embedder.embedding_dim), True).eval()
    with torch.no_grad():
        x, mask = model.residue_rows(seqs)
    merged = merged_copy(embedder.model)
    assert not lora_modules(merged) and set(merged.state_dict()) == set(_embedder(tmp_path / "base").model.state_dict())
    embedder.family_impl.save_pretrained(merged, embedder.tokenizer, tmp_path / "merged")
    rows = _embedder(tmp_path / "merged").embed_batch(seqs)
    compared = 0
    for i, seq in enumerate(seqs):
        assert not np.allclose(rows[i][0], base[i][0], atol=1e-3)  # the update did something
        np.testing.assert_allclose(rows[i][0], x[i, :len(seq)].numpy(), atol=1e-5, rtol=1e-5)
        compared += len(seq)
    assert compared == sum(map(len, seqs))


def test_only_adapters_and_head_get_gradients(data):
    from protrans_cli.heads.finetune import FineTuned
    from protrans_cli.heads.fit import _loss
    from protrans_cli.heads.model import build_head
    from protrans_cli.heads.tasks import get_task

    embedder = _embedder(data / "bert")
    before = {k: v.clone() for k, v in embedder.model.state_dict().items()}
    add_lora(embedder.model, embedder.family_impl)
    task = get_task("ss3")
    model = FineTuned(embedder, build_head(task, embedder.embedding_dim), True).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    seqs = ["AELVIYGPND", "MKTAYIAKQR"]
    codes = {c: i for i, c in enumerate(SS3)}
    targets = {"ss3": torch.tensor([[codes[ss8_to_ss3(RULE8.get(c, "C"))] for c in s] for s in seqs])}
    for _ in range(3):
        optimizer.zero_grad()
        loss, _ = _loss(task, model(seqs), targets, None)
        loss.backward()
        graded = {n for n, p in model.named_parameters() if p.grad is not None}
        assert graded and all(".lora_" in n or n.startswith("head.") for n in graded)
        optimizer.step()
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n and
               not n.startswith("head."))
    # the base weights are untouched; the merge alone changes the adapted ones, by B @ A * alpha / r
    after = {k.replace(".base.", "."): v for k, v in embedder.model.state_dict().items() if ".lora_" not in k}
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    merged = merged_copy(embedder.model).state_dict()
    changed = 0
    for name, module in lora_modules(embedder.model).items():
        key = f"{name}.weight"
        torch.testing.assert_close(merged[key], before[key] + module.delta().detach())
        changed += int(not torch.equal(merged[key], before[key]))
    assert changed == len(lora_modules(embedder.model))
    assert all(torch.equal(merged[k], before[k]) for k in before if k[:-len(".weight")] not in lora_modules(embedder.model)
               and not any(k.startswith(n + ".") for n in lora_modules(embedder.model)))


def test_finetune_learns_a_synthetic_task(finetuned):
    report = json.loads((finetuned / "finetune.json").read_text())
    history = report["history"]
    assert len(history) == 5 and history[-1]["train_loss"] < history[0]["train_loss"]
    best = max(h["valid_ss3"] for h in history)
    assert best > 0.45  # chance: the largest class is ~35% of the residues
    metrics = json.loads((finetuned / "head" / "metrics.json").read_text())
    # validation scored through the saved, merged model and embed's code: the in-process figure
    assert metrics["valid"]["ss3"]["accuracy"] == pytest.approx(best, abs=1e-9)
    assert metrics["test"]["ss3"]["accuracy"] > 0.45
    config = json.loads((finetuned / "head" / "config.json").read_text())
    assert config["embedding"]["model"] == str(finetuned / "model")
    assert (finetuned / "model" / "config.json").is_file() and not (finetuned.parent / "out.partial").exists()
    # (of the saved model's files: predict refuses OUT/model replaced since by other weights)
    from protrans_cli.models import weights_fingerprint

    assert config["embedding"]["weights_fingerprint"] == weights_fingerprint(finetuned / "model")



def test_the_merged_model_has_a_card_whose_snippet_gives_embeds_rows(finetuned, data, run_cli, tmp_path, monkeypatch):
    import re

    import yaml

    from protrans_cli.io.h5 import EmbeddingsReader

    text = (finetuned / "model" / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "transformers" and "base_model" not in front  # (a local base: no Hub id)
    assert {"protein language model", "bert", "lora"} <= set(front["tags"])
    report = json.loads((finetuned / "head" / "config.json").read_text())
    assert f"- Base model: `{data / 'bert'}`\n" in text
    assert f"- Task: ss3 (per-residue), {report['training']['proteins']:,} training proteins\n" in text
    assert "- LoRA: rank 4, alpha 8, dropout 0" in text
    assert re.search(r"at most 5 epochs \(patience \d+\)", text)
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(finetuned / "model")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    fasta, out = tmp_path / "q.fa", tmp_path / "q.h5"
    fasta.write_text(f">q\n{scope['sequence']}\n")
    res = run_cli("embed", fasta, "-m", finetuned / "model", "-o", out, "--per-residue")
    assert res.exit_code == 0, res.stderr
    with EmbeddingsReader(out) as r:
        (ident,) = r.ids("per_residue")
        embedded = np.asarray(r.get(ident, "per_residue"), dtype=np.float32)
    np.testing.assert_allclose(scope["per_residue"].numpy(), embedded, atol=1e-5)

def _predicted_q3(run_cli, head, records, tmp_path) -> tuple[int, int]:
    """`predict HEAD --fasta` of `records` (label records with sequences): (right, total) residues."""
    with open(tmp_path / "q.fa", "w") as fh:
        for rec in records:
            fh.write(f">{rec.id}\n{rec.sequence}\n")
    r = run_cli("predict", head, "--fasta", tmp_path / "q.fa", "-o", tmp_path / "p.txt")
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "p.txt").read_text().split()
    predicted = dict(zip([x[1:] for x in lines[::2]], lines[1::2]))
    right = sum(a == b for rec in records for a, b in zip(predicted[rec.id], rec.labels["ss3"]))
    return right, sum(len(rec.labels["ss3"]) for rec in records)


def test_predict_fasta_on_the_head_scores_what_finetune_reported(finetuned, data, run_cli, tmp_path):
    from protrans_cli.heads.labels import read_labels

    right, total = _predicted_q3(run_cli, finetuned / "head", read_labels(data / "test.csv").records, tmp_path)
    metrics = json.loads((finetuned / "head" / "metrics.json").read_text())
    assert total == metrics["test"]["ss3"]["n"] and right / total == pytest.approx(metrics["test"]["ss3"]["accuracy"])


def test_a_per_residue_linear_head_is_finetuned_and_predicts_from_fasta(data, run_cli, tmp_path):
    """--architecture linear per residue: the head is one affine map of each residue's hidden state
    (no convolution), and predict --fasta on it scores what finetune reported."""
    out = tmp_path / "out"
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--test", data / "test.csv",
                "--architecture", "linear", "--max-epochs", "2", "--lr", "0.01", *FAST, "-o", out)
    assert r.exit_code == 0, r.stderr
    config = json.loads((out / "head" / "config.json").read_text())
    assert config["architecture"] == "linear" and config["format_version"] == 3
    from safetensors.torch import load_file

    assert set(load_file(str(out / "head" / "weights.safetensors"))) == {"members.0.heads.ss3.weight",
                                                                        "members.0.heads.ss3.bias"}
    from protrans_cli.heads.labels import read_labels

    right, total = _predicted_q3(run_cli, out / "head", read_labels(data / "test.csv").records, tmp_path)
    metrics = json.loads((out / "head" / "metrics.json").read_text())
    assert total == metrics["test"]["ss3"]["n"] and right / total == pytest.approx(metrics["test"]["ss3"]["accuracy"])


def test_the_held_out_ids_are_recorded_and_are_the_validation_set(finetuned, data, run_cli, tmp_path):
    """--valid-fraction's proteins are in the head's config.json, as fit records them: predicting
    exactly those gives the validation score finetune reported."""
    from protrans_cli.heads.labels import read_labels

    config = json.loads((finetuned / "head" / "config.json").read_text())
    held = config["training"]["held_out"]
    records = {r.id: r for r in read_labels(data / "train.csv").records}
    assert len(held) == 6 and set(held) <= set(records) and config["training"]["proteins"] == 54
    right, total = _predicted_q3(run_cli, finetuned / "head", [records[i] for i in held], tmp_path)
    metrics = json.loads((finetuned / "head" / "metrics.json").read_text())
    assert right / total == pytest.approx(metrics["valid"]["ss3"]["accuracy"])


def test_a_model_not_there_is_refused_before_the_labels_are_read(run_cli, tmp_path):
    """`finetune loc -m nope_model` printed the labels' line ("train: N proteins; validation: ...")
    and then failed on the model, as if work had been done: the name is checked first (its config,
    not its weights), one line, nothing written."""
    labels = tmp_path / "loc.fa"
    labels.write_text("".join(f">p{i} {'Nucleus' if i % 2 else 'Cytoplasm'}-S\nMKTAYIAKQR{'AG' * i}\n"
                              for i in range(12)))
    r = run_cli("finetune", "loc", "-m", "nope_model", "--labels", labels, "-o", tmp_path / "fx")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("protrans: error: cannot load model 'nope_model'"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loc.fa"]


def test_a_read_only_output_folder_is_said_in_every_commands_words(data, run_cli, tmp_path, monkeypatch):
    """finetune said "<folder>: cannot write here (Permission denied)" where every other command
    says "permission denied: no file can be created in this folder" (fit's lock of OUT.partial/).
    (Root writes anywhere: the folder's mkdir is what the test refuses.)"""
    closed = tmp_path / "ro"
    closed.mkdir()
    mkdir_refused_in(monkeypatch, closed)
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--max-epochs", "1", *FAST,
                "-o", closed / "ft")
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {closed}: permission denied: no file can be created "
                                             "in this folder (read-only, or not yours to write)\n"), r.stderr
    assert os.listdir(closed) == []


def test_refusals(finetuned, data, run_cli, tmp_path):
    base = ["-m", data / "bert", "--max-epochs", "1", *FAST]
    r = run_cli("finetune", "nope", "--labels", data / "train.csv", "-o", tmp_path / "a", *base)
    assert r.exit_code == 2 and "nope" in r.stderr
    with open(tmp_path / "table.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "label"], ["p1", "a"], ["p2", "b"], ["p3", "a"]])
    r = run_cli("finetune", "protein", "--labels", tmp_path / "table.csv", "-o", tmp_path / "b", *base)
    assert r.exit_code == 1 and "without a sequence" in r.stderr and "--fasta" in r.stderr
    # the folders it made for the output are not left behind, empty, by the refusal
    r = run_cli("finetune", "protein", "--labels", tmp_path / "table.csv", "-o", tmp_path / "new" / "sub" / "b", *base)
    assert r.exit_code == 1 and "without a sequence" in r.stderr and not (tmp_path / "new").exists()
    r = run_cli("finetune", "ss3", "--labels", data / "train.csv", "-o", finetuned, *base)
    assert r.exit_code == 2 and "exists" in r.stderr
    # a --test file that cannot be scored is refused before the epochs, not after them
    r = run_cli("finetune", "ss3", "--labels", data / "train.csv", "--test", tmp_path / "table.csv", "-o",
                tmp_path / "c", *base)
    assert r.exit_code == 1 and "without a sequence" in r.stderr and "epoch 1" not in r.stderr, r.stderr
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_per_protein_task_with_fasta_sequences(data, run_cli, tmp_path):
    rng = np.random.default_rng(3)
    seqs = _seqs(rng, 40, 20, 40)
    # the class follows from the composition: more of AELMQKR (helix formers) than of the rest
    labels = ["helix" if sum(c in "AELMQKR" for c in s) > len(s) * 7 / 20 else "other" for s in seqs]
    with open(tmp_path / "t.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "label"], *[[f"p{i}", lab] for i, lab in enumerate(labels)]])
    with open(tmp_path / "s.fa", "w") as fh:
        fh.writelines(f">p{i}\n{s}\n" for i, s in enumerate(seqs))
    out = tmp_path / "out"
    r = run_cli("finetune", "protein", "-m", data / "bert", "--labels", tmp_path / "t.csv", "--fasta",
                tmp_path / "s.fa", "--max-epochs", "2", "--lr", "0.01", *FAST, "-o", out)
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", out / "head", "--fasta", tmp_path / "s.fa", "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 41


def test_resume_after_an_interrupted_epoch_gives_the_uninterrupted_run(data, tmp_path, monkeypatch):
    import protrans_cli.heads.fit as fit
    from protrans_cli.heads.finetune import FinetuneConfig, finetune, partial_path

    kw = dict(task="ss3", model=str(data / "bert"), lr=0.01, max_residues=600, threads=1, n_bootstrap=100,
              device="cpu", max_epochs=3, patience=5)
    whole = finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "a")
    real = _stop_at_validation(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "b")
    monkeypatch.setattr(fit, "_validate", real)
    assert (partial_path(tmp_path / "b") / "state.pt").is_file() and not (tmp_path / "b").exists()
    # bytes changed on disk (bit rot) are refused, never resumed into another model
    state = partial_path(tmp_path / "b") / "state.pt"
    good = state.read_bytes()
    damaged = bytearray(good)
    damaged[-200] ^= 0x01
    state.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=r"state.pt: the saved finetune state is damaged \(its bytes no longer"):
        finetune(FinetuneConfig(resume=True, **kw), data / "train.csv", tmp_path / "b")
    state.write_bytes(good)
    resumed = finetune(FinetuneConfig(resume=True, **kw), data / "train.csv", tmp_path / "b")
    assert [h["valid_loss"] for h in resumed.history] == [h["valid_loss"] for h in whole.history]
    assert resumed.metrics == whole.metrics
    # the same command with --resume once it finished: nothing to do (a job script may always add
    # it, as to fit); with other settings, refused naming them
    again = finetune(FinetuneConfig(resume=True, **kw), data / "train.csv", tmp_path / "b")
    assert again.metrics == resumed.metrics and [h["epoch"] for h in again.history] == [1, 2, 3]
    assert not partial_path(tmp_path / "b").exists()
    with pytest.raises(UsageError, match=r"finished finetune made with other settings or inputs \(lr\)"):
        finetune(FinetuneConfig(resume=True, **{**kw, "lr": 0.02}), data / "train.csv", tmp_path / "b")


# --- the output folder: --force, -o ., an input's folder, a link; one run at a time ---------------

def test_force_never_replaces_a_folder_of_other_files_nor_an_inputs(data, run_cli, tmp_path, monkeypatch):
    """--force replaced any -o whole: a project folder given as -o lost its files, and `-o .` the
    working directory (inputs given by absolute path). Each is refused before any work."""
    base = ["--labels", data / "train.csv", "-m", data / "bert", "--max-epochs", "1", *FAST]
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "notes.txt").write_text("mine")
    r = run_cli("finetune", "ss3", *base, "-o", project, "--force")
    assert r.exit_code == 2 and "holds files that are not finetune's (notes.txt, sub)" in r.stderr, r.stderr
    assert (project / "notes.txt").read_text() == "mine" and (project / "sub").is_dir()
    monkeypatch.chdir(project)
    for where in (".", project, project / "sub" / ".."):
        r = run_cli("finetune", "ss3", *base, "-o", where, "--force")
        assert r.exit_code == 2 and "a folder of its own" in r.stderr, r.stderr
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "sub"]
    monkeypatch.chdir(tmp_path)
    # the folder of an input (the labels; the model being fine-tuned), also named through `..`
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "train.csv").write_bytes((data / "train.csv").read_bytes())
    r = run_cli("finetune", "ss3", "--labels", "in/../in/train.csv", "-m", data / "bert", "-o", "in", "--force", *FAST)
    assert r.exit_code == 2 and "holds the input" in r.stderr and (tmp_path / "in" / "train.csv").is_file()
    r = run_cli("finetune", "ss3", *base[:2], "-m", data / "bert", "-o", data, "--force")
    assert r.exit_code == 2 and "holds the input" in r.stderr
    # an input named through `..` that is not inside -o is no reason to refuse it
    (tmp_path / "wd").mkdir()
    monkeypatch.chdir(tmp_path / "wd")
    r = run_cli("finetune", "ss3", "--labels", tmp_path / "wd" / ".." / "in" / "train.csv", "-m", data / "bert",
                "--max-epochs", "1", *FAST, "-o", "out")
    assert r.exit_code == 0, r.stderr


def test_an_output_link_is_written_through(finetuned, data, run_cli, tmp_path):
    """-o a link to a folder: the folder it names gets the output (the link stays a link), and
    OUT.partial sits beside that folder; replace_directory renamed the link aside and put a
    folder in its place."""
    import shutil

    real = tmp_path / "scratch" / "ft"
    shutil.copytree(finetuned, real)
    link = tmp_path / "ft"
    link.symlink_to(real, target_is_directory=True)
    r = run_cli("-q", "finetune", "ss3", "--labels", data / "train.csv", "-m", data / "bert", "--max-epochs", "1",
                *FAST, "--seed", "7", "-o", link, "--force")
    assert r.exit_code == 0 and "Writing model shards" not in r.stderr, r.stderr  # (transformers' bar under -q)
    assert link.is_symlink() and json.loads((real / "finetune.json").read_text())["config"]["seed"] == 7
    assert not (tmp_path / "ft.partial").exists() and not (tmp_path / "scratch" / "ft.partial").exists()


def test_an_empty_output_folder_is_taken_as_a_new_one(data, run_cli, tmp_path):
    """A rule's `mkdir -p {output}` or a workflow engine makes -o's folder before the job:
    finetune refused it, "exists (--force replaces it)". An empty one gets the output."""
    (tmp_path / "ft").mkdir()
    r = run_cli("-q", "finetune", "ss3", "--labels", data / "train.csv", "-m", data / "bert", "--max-epochs", "1",
                *FAST, "-o", tmp_path / "ft")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["finetune.json", "head", "model"]


def test_the_trained_model_is_let_go_before_the_saved_one_is_loaded_to_score(data, run_cli, tmp_path, monkeypatch):
    """The sets are scored with the saved model, loaded anew: the trained encoder (and its merged
    copy) stayed in memory meanwhile, twice the model on the GPU, where a finetune that fitted ran
    out of memory after all its epochs (and at each --resume). Gone by then, the scores the same."""
    import gc

    from protrans_cli import models
    from protrans_cli.heads.finetune import FineTuned

    held = []
    real = models.load_model

    def load_model(*args, **kwargs):
        # (type(), not isinstance: the latter asks torch.distributed.reduce_op, which warns it is deprecated)
        tuned = [o for o in gc.get_objects() if type(o) is FineTuned]
        held.append(sum(p.numel() for t in tuned for p in t.encoder.parameters() if p.device.type != "meta"))
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", load_model)
    r = run_cli("-q", "finetune", "ss3", "--labels", data / "train.csv", "-m", data / "bert", "--max-epochs", "1",
                *FAST, "-o", tmp_path / "ft")
    assert r.exit_code == 0, r.stderr
    assert held[-1] == 0, held  # (the last load: the saved model's, to score the sets)
    assert json.loads((tmp_path / "ft" / "head" / "metrics.json").read_text())


def test_a_second_finetune_on_one_output_is_refused(data, run_cli, tmp_path):
    from protrans_cli.heads.finetune import partial_path
    from protrans_cli.io.files import folder_lock

    out = tmp_path / "ft"
    args = ["finetune", "ss3", "--labels", data / "train.csv", "-m", data / "bert", "--max-epochs", "1", *FAST, "-o", out]
    with folder_lock(partial_path(out), "busy"):  # what the first run holds while it trains
        for extra in ([], ["--force"], ["--resume"]):
            r = run_cli(*args, *extra)
            assert r.exit_code == 1 and "is in use by another protrans fit, fit --search or finetune" in r.stderr, r.stderr
    assert not out.exists() and not partial_path(out).exists()


# --- --resume: the same inputs, compared as files -------------------------------------------------

@pytest.mark.gpu
def test_a_finetune_resumed_on_the_gpu_draws_the_dropout_masks_an_uninterrupted_one_draws(data, tmp_path, monkeypatch):
    # only the CPU generator was kept: on a GPU the resumed epochs replayed the first epoch's
    # dropout masks (manual_seed reset the device's generator), as fit's once did
    import protrans_cli.heads.fit as fit
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    kw = dict(task="ss3", model=str(data / "bert"), lr=0.01, max_residues=600, threads=1, n_bootstrap=10,
              device="cuda", max_epochs=3, patience=5, lora_dropout=0.3)
    whole = finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "a")
    real = _stop_at_validation(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "b")
    monkeypatch.setattr(fit, "_validate", real)
    resumed = finetune(FinetuneConfig(resume=True, **kw), data / "train.csv", tmp_path / "b")
    assert [h["valid_loss"] for h in resumed.history] == pytest.approx([h["valid_loss"] for h in whole.history],
                                                                      rel=1e-5)


def test_a_finetune_on_piped_labels_says_it_cannot_be_resumed(data, tmp_path, monkeypatch, run_cli):
    """Labels from a pipe (`<(zcat train.csv.gz)`, a named pipe): a resume was refused as "made
    with other inputs (labels): run the same command with --resume", the command just run, and
    the Ctrl-C line before it sent the user there too."""
    import os
    import threading
    from dataclasses import replace

    import protrans_cli.heads.fit as fit
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    def pipe(name):  # a named pipe that one writer fills with the training labels
        path = tmp_path / name
        os.mkfifo(path)
        threading.Thread(target=lambda: path.write_bytes((data / "train.csv").read_bytes()), daemon=True).start()
        return path

    real = _stop_at_validation(monkeypatch, 2)
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", pipe("a"), "--max-epochs", "3", "-j", "1",
                "--bootstrap", "10", "-o", tmp_path / "out")
    assert r.exit_code == 130 and "--resume" not in r.stderr, r.stderr
    assert r.stderr.replace("\n", " ").endswith(f"a finetune whose inputs come from a pipe ({tmp_path / 'a'}) cannot "
                                                "be resumed: give them as files next time "), r.stderr
    monkeypatch.setattr(fit, "_validate", real)
    config = FinetuneConfig(task="ss3", model=str(data / "bert"), max_epochs=3, threads=1, n_bootstrap=10)
    again = pipe("b")
    with pytest.raises(UsageError, match=rf"out.partial cannot be resumed: its inputs come from a pipe \({again}\), "
                                         "which can be read once .* the interrupted finetune read; give them as files"):
        finetune(replace(config, resume=True), again, tmp_path / "out")  # (which read the pipe: labels first)


def test_resume_refuses_changed_inputs_and_accepts_them_named_otherwise(data, tmp_path, monkeypatch):
    """--resume compared the settings and the paths as typed: labels rewritten at the same path
    resumed into a head trained on two label sets (and --fasta was not compared at all), while the
    same files named from another folder were refused."""
    import os

    import protrans_cli.heads.fit as fit
    from protrans_cli.errors import UsageError
    from protrans_cli.heads.finetune import FinetuneConfig, finetune, partial_path

    (tmp_path / "in").mkdir()
    labels = tmp_path / "in" / "train.csv"
    labels.write_bytes((data / "train.csv").read_bytes())
    kw = dict(task="ss3", model=str(data / "bert"), lr=0.01, max_residues=600, threads=1, n_bootstrap=20,
              device="cpu", max_epochs=3, patience=5)
    real = fit._validate

    def interrupted(*args, **kwargs):
        if interrupted.calls == 1:
            raise KeyboardInterrupt
        interrupted.calls += 1
        return real(*args, **kwargs)

    interrupted.calls = 0
    monkeypatch.setattr(fit, "_validate", interrupted)
    monkeypatch.chdir(tmp_path / "in")
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(**kw), "train.csv", "../out")  # relative paths
    monkeypatch.setattr(fit, "_validate", real)
    state = partial_path(tmp_path / "out") / "state.pt"
    assert state.is_file()
    monkeypatch.chdir(tmp_path)
    # rewritten at the same path: refused, the file named
    info = labels.stat()
    labels.write_bytes(labels.read_bytes() + b"\n")
    with pytest.raises(UsageError, match=r"other settings or inputs \(labels_file\)"):
        finetune(FinetuneConfig(resume=True, **kw), labels, tmp_path / "out")
    labels.write_bytes(labels.read_bytes()[:-1])
    os.utime(labels, ns=(info.st_atime_ns, info.st_mtime_ns))
    # another setting that changes the training: refused
    with pytest.raises(UsageError, match=r"\(lr\)"):
        finetune(FinetuneConfig(resume=True, **{**kw, "lr": 0.02}), labels, tmp_path / "out")
    # the same files named from another folder (and another -j, --bootstrap): resumed
    result = finetune(FinetuneConfig(resume=True, **{**kw, "n_bootstrap": 30}), labels, tmp_path / "out")
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and not state.exists()


def test_train_loss_is_the_mean_of_the_epochs_batch_losses(data, tmp_path, monkeypatch):
    # finetune.json's train_loss of an epoch: the mean of its batches' losses (each batch's own
    # mean), recorded here as the loop computes them; with --accumulate 2 too (not summed by step)
    import protrans_cli.heads.finetune as ft
    import protrans_cli.heads.fit as fit
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    losses: list[list[float]] = []
    real = ft._loss

    def recorded(*args, **kwargs):
        loss, counts = real(*args, **kwargs)
        if any(counts.values()):
            losses[-1].append(float(loss.detach()))
        return loss, counts

    real_validate = fit._validate

    def validate(*args, **kwargs):  # (an epoch's batches end where its validation begins)
        losses.append([])
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(ft, "_loss", recorded)
    monkeypatch.setattr(fit, "_validate", validate)
    losses.append([])
    config = FinetuneConfig(task="ss3", model=str(data / "bert"), max_epochs=2, lr=0.01, max_residues=300, threads=1,
                            n_bootstrap=10, device="cpu", accumulate=2)
    result = finetune(config, data / "train.csv", tmp_path / "out")
    per_epoch = [batch for batch in losses if batch]
    assert len(per_epoch) == 2 and all(len(batch) > 2 for batch in per_epoch)
    assert [h["train_loss"] for h in result.history] == pytest.approx([np.mean(b) for b in per_epoch], rel=1e-6)


# --- per-protein tasks: loc (two outputs) and value, with predict --fasta ----------------------------

@pytest.fixture(scope="module")
def loc_fasta(tmp_path_factory):
    """DeepLoc-style FASTA whose location follows from the composition (test_heads_fit's loc_data, smaller)."""
    root = tmp_path_factory.mktemp("ftloc")
    write_loc_fastas(root, (("train", 60), ("test", 21)), background=20, rich=10)
    return root


@pytest.mark.parametrize("architecture", ["fnn", "light-attention", "linear"])
def test_loc_two_outputs_membrane_unknown_left_out(data, loc_fasta, run_cli, tmp_path, architecture):
    out = tmp_path / "loc"
    r = run_cli("finetune", "loc", "-m", data / "bert", "--labels", loc_fasta / "train.fasta", "--test",
                loc_fasta / "test.fasta", "--architecture", architecture, "--max-epochs", "2", "--lr", "0.01",
                *FAST, "-o", out)
    assert r.exit_code == 0, r.stderr
    report = json.loads((out / "finetune.json").read_text())
    assert all({"valid_loc", "valid_membrane"} <= set(h) for h in report["history"])
    metrics = json.loads((out / "head" / "metrics.json").read_text())
    kept = report["history"][report["best_epoch"] - 1]
    # validation scored through the saved model: the in-process figures of the kept epoch
    for name in ("loc", "membrane"):
        assert metrics["valid"][name]["accuracy"] == pytest.approx(kept[f"valid_{name}"], abs=1e-9)
    assert metrics["test"]["loc"]["n"] == 21 and metrics["test"]["membrane"]["n"] == 14  # U left out
    assert json.loads((out / "head" / "config.json").read_text())["architecture"] == architecture
    r = run_cli("predict", out / "head", "--fasta", loc_fasta / "test.fasta", "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert len(rows) == 21 and {"loc", "membrane"} <= set(rows[0])
    truth = {}
    for line in (loc_fasta / "test.fasta").read_text().splitlines()[::2]:
        ident, tag = line[1:].split()[:2]
        truth[ident] = tag.split("-")
    right = sum(row["loc"] == truth[row["id"]][0] for row in rows)
    assert right / 21 == pytest.approx(metrics["test"]["loc"]["accuracy"])
    known = [row for row in rows if truth[row["id"]][1] != "U"]
    assert sum(row["membrane"] == truth[row["id"]][1] for row in known) / len(known) == \
        pytest.approx(metrics["test"]["membrane"]["accuracy"])


def test_loc_from_a_table_has_no_membrane_output_and_says_what_fit_says(data, loc_fasta, run_cli, tmp_path):
    """As fit: an output no training protein has a label for (a loc table has no membrane) is left
    out of the head, not kept untrained; the dual label is counted aloud; the kept epoch's score is printed."""
    rows, seqs = [["id", "label"]], []
    for i, (header, seq) in enumerate(zip(*[iter((loc_fasta / "train.fasta").read_text().splitlines())] * 2)):
        ident, tag = header[1:].split()[:2]
        rows.append([ident, "Cytoplasm-Nucleus" if i == 0 else tag.split("-")[0]])
        seqs.append(f">{ident}\n{seq}\n")
    with open(tmp_path / "t.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    (tmp_path / "s.fa").write_text("".join(seqs))
    out = tmp_path / "out"
    r = run_cli("finetune", "loc", "-m", data / "bert", "--labels", tmp_path / "t.csv", "--fasta", tmp_path / "s.fa",
                "--max-epochs", "1", *FAST, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "no training protein has a membrane label; the head has no membrane output" in r.stderr
    assert "1 record(s) labelled Cytoplasm-Nucleus count as Cytoplasm" in r.stderr
    assert "best validation epoch 1 (mean Q10 " in r.stderr
    head = json.loads((out / "head" / "config.json").read_text())
    assert [o["name"] for o in head["task"]["outputs"]] == ["loc"]
    assert set(json.loads((out / "head" / "metrics.json").read_text())["valid"]) == {"loc"}


def test_value_task_end_to_end_with_predict_fasta(data, run_cli, tmp_path):
    from protrans_cli.heads.metrics import spearman

    rng = np.random.default_rng(3)
    rows = ["sequence,target,set,validation"]
    for i in range(80):
        seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(rng.integers(20, 40))))
        target = 10 * (seq.count("K") + seq.count("R")) / len(seq)
        split = "test" if i >= 60 else "train"
        rows.append(f"{seq},{target:.4f},{split},{'True' if split == 'train' and i % 5 == 0 else 'False'}")
    labels = tmp_path / "flip.csv"
    labels.write_text("\n".join(rows) + "\n")
    out = tmp_path / "value"
    r = run_cli("finetune", "value", "-m", data / "bert", "--labels", labels, "--max-epochs", "2", "--lr", "0.01",
                *FAST, "-o", out)
    assert r.exit_code == 0, r.stderr
    metrics = json.loads((out / "head" / "metrics.json").read_text())
    assert metrics["test"]["value"]["metric"] == "Spearman" and metrics["test"]["value"]["n"] == 20
    config = json.loads((out / "head" / "config.json").read_text())
    mean, std = config["task"]["outputs"][0]["scale"]
    assert std > 0 and 0 < mean < 10
    assert run_cli("labels", labels, "-o", tmp_path / "all.fa").exit_code == 0
    r = run_cli("predict", out / "head", "--fasta", tmp_path / "all.fa", "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "id,value" and len(lines) == 81
    from protrans_cli.heads.labels import read_labels

    records = [rec for rec in read_labels(labels).records if rec.split == "test"]
    predicted = {line.split(",")[0]: float(line.split(",")[1]) for line in lines[1:]}
    rho = spearman(np.array([predicted[rec.id] for rec in records]),
                   np.array([float(rec.labels["label"]) for rec in records]))
    assert rho == pytest.approx(metrics["test"]["value"]["spearman"], abs=1e-6)


# --- determinism, dropout at evaluation, refused families, the head after OUT moves ------------------

def test_same_seed_same_result_and_no_dropout_at_evaluation(data, tmp_path):
    """Two runs with one seed give the same epochs and the same merged weights (CPU); with the
    adapters' and the head's dropout on, the in-process validation score still equals the saved
    (dropout-free, merged) model's: evaluation runs with dropout off."""
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    kw = dict(task="ss3", model=str(data / "bert"), lr=0.01, max_residues=600, threads=1, n_bootstrap=20,
              device="cpu", max_epochs=2, lora_dropout=0.3, dropout=0.5, seed=3)
    a = finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "a")
    b = finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "b")
    drop = lambda h: [{k: v for k, v in line.items() if k != "seconds"} for line in h]  # noqa: E731
    assert drop(a.history) == drop(b.history)
    assert (tmp_path / "a" / "model" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model" / "model.safetensors").read_bytes()
    kept = max(h["valid_ss3"] for h in a.history)
    assert a.metrics["valid"]["ss3"]["accuracy"] == pytest.approx(kept, abs=1e-9)


@pytest.mark.parametrize("family_name", [n for n, f in FAMILIES.items() if not f.lora_targets
                                         and n in ("xlnet", "transfo_xl")])
def test_families_without_linear_attention_projections_are_refused(family_name, data, run_cli, tmp_path):
    model = _tiny(family_name, tmp_path / family_name)
    r = run_cli("finetune", "ss3", "-m", model, "--labels", data / "train.csv", "--max-epochs", "1", *FAST,
                "-o", tmp_path / "out")
    assert r.exit_code == 2 and f"the {family_name} family has no LoRA targets" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.glob("*out*"))


def test_the_head_finds_its_model_after_out_moves(finetuned, data, run_cli, tmp_path, monkeypatch):
    """OUT/head records OUT/model as an absolute path (a relative -o too): predict works from any
    folder; OUT moved whole, the model beside the head is used (and --embeddings of it match);
    the head alone, without its model, says so and what to give."""
    import shutil

    from protrans_cli.heads.labels import read_labels

    with open(tmp_path / "q.fa", "w") as fh:
        fh.writelines(f">{r.id}\n{r.sequence}\n" for r in read_labels(data / "test.csv").records)
    monkeypatch.chdir(tmp_path)
    r = run_cli("predict", finetuned / "head", "--fasta", "q.fa", "-o", "before.txt")
    assert r.exit_code == 0, r.stderr
    shutil.copytree(finetuned, tmp_path / "moved")
    config = tmp_path / "moved" / "head" / "config.json"
    recorded = json.loads(config.read_text())
    recorded["embedding"]["model"] = str(tmp_path / "gone" / "model")  # (as if OUT had been moved away)
    config.write_text(json.dumps(recorded))
    r = run_cli("predict", "moved/head", "--fasta", "q.fa", "-o", "after.txt")
    assert r.exit_code == 0 and "using" in r.stderr and "the one beside the head" in r.stderr, r.stderr
    assert (tmp_path / "after.txt").read_text() == (tmp_path / "before.txt").read_text()
    assert run_cli("embed", "q.fa", "-m", "moved/model", "--per-residue", "-o", "q.h5").exit_code == 0
    r = run_cli("predict", "moved/head", "--embeddings", "q.h5", "-o", "after2.txt")
    assert r.exit_code == 0 and "mismatch" not in r.stderr, r.stderr
    shutil.rmtree(tmp_path / "moved" / "model")
    r = run_cli("predict", "moved/head", "--fasta", "q.fa", "-o", "x.txt")
    assert r.exit_code == 2 and "is gone" in r.stderr and "--model" in r.stderr, r.stderr


def test_help_and_a_usage_error_import_no_torch(tmp_path):
    from conftest import heavy_imports_of

    out = heavy_imports_of([["finetune", "--help"]], ("torch", "transformers", "protrans_cli.models"))
    assert out.returncode == 0, out.stderr


def test_a_protein_longer_than_the_model_accepts_is_refused_before_training(data, run_cli, tmp_path):
    # (a traceback from inside BERT's embeddings at its batch; here one line naming file and record)
    limit = _embedder(data / "bert").max_residues
    rng = np.random.default_rng(5)
    _netsurfp(tmp_path / "test.csv", [*_seqs(rng, 3), "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), limit + 1))])
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--test", tmp_path / "test.csv",
                "-o", tmp_path / "out", "--max-epochs", "1", *FAST)
    assert r.exit_code == 1 and "test.csv, record 'seq-" in r.stderr, r.stderr
    assert f"{limit + 1:,} residues, longer than the {limit:,} residues the model accepts" in r.stderr
    assert "Traceback" not in r.stderr and "epoch 1" not in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_protein_exactly_as_long_as_the_model_accepts_is_finetuned_on(data, run_cli, tmp_path):
    """The refusal above starts one residue past the model's limit: a protein of exactly the limit
    fits the position table (special tokens included) and is trained and scored, not refused."""
    limit = _embedder(data / "bert").max_residues
    rng = np.random.default_rng(5)
    _netsurfp(tmp_path / "test.csv", [*_seqs(rng, 3), "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), limit))])
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--test", tmp_path / "test.csv",
                "-o", tmp_path / "out", "--max-epochs", "1", *FAST)
    assert r.exit_code == 0 and "Traceback" not in r.stderr, r.stderr
    metrics = json.loads((tmp_path / "out" / "head" / "metrics.json").read_text())
    assert metrics["test"]["ss3"]["n_proteins"] == 4 and metrics["test"]["ss3"]["n"] >= limit, metrics["test"]


@pytest.mark.parametrize("how", ["pipe", "stdin"])
def test_a_piped_test_set_is_named_test(data, run_cli, tmp_path, how):
    """`--test <(zcat test.csv.gz)`: its scores were named after the descriptor the shell picked
    ("63 ss3: Q3 ...", metrics/63.json, another number each run); a piped set is "test" now."""
    labels = (data / "test.csv").read_bytes()
    assert len(labels) < 65536  # (what a pipe holds without a reader)
    read_end, write_end = os.pipe()
    os.write(write_end, labels)
    os.close(write_end)
    given, stdin = (f"/dev/fd/{read_end}", None) if how == "pipe" else ("-", labels)
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--test", given,
                "-o", tmp_path / "out", "--max-epochs", "1", *FAST, input=stdin)
    os.close(read_end)
    assert r.exit_code == 0, r.stderr
    assert set(json.loads((tmp_path / "out" / "head" / "metrics.json").read_text())) == {"valid", "test"}
    assert str(read_end) + " ss3" not in r.stderr and "- ss3" not in r.stderr


def test_one_protein_and_stdin_twice_are_refused_naming_the_file(data, run_cli, tmp_path):
    _netsurfp(tmp_path / "one.csv", _seqs(np.random.default_rng(6), 1))
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", tmp_path / "one.csv", "-o", tmp_path / "out", *FAST)
    assert r.exit_code == 1 and "one.csv: too few training proteins (1)" in r.stderr, r.stderr
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", "-", "--test", "-", "-o", tmp_path / "out", *FAST)
    assert r.exit_code == 2 and "stdin ('-') can be one input at most" in r.stderr, r.stderr


def test_resume_compares_labels_read_from_stdin_by_their_bytes(data, run_cli, tmp_path):
    """--labels - was not compared: a finished run resumed with other labels piped in said
    "complete: nothing to resume". They are compared as the sha256 of the bytes read."""
    labels = (data / "train.csv").read_bytes()
    args = ("finetune", "ss3", "-m", data / "bert", "--labels", "-", "--max-epochs", "1", *FAST, "--bootstrap",
            "10", "-o", tmp_path / "out")
    assert run_cli(*args, input=labels).exit_code == 0
    r = run_cli(*args, "--resume", input=b"".join(labels.splitlines(keepends=True)[:30]))
    assert r.exit_code == 2 and "other settings or inputs (labels_file)" in r.stderr, r.stderr
    r = run_cli(*args, "--resume", input=labels)
    assert r.exit_code == 0 and "is complete: nothing to resume" in r.stderr, r.stderr


def _flip_set(root, rng, n=40):
    """FLIP-style ss3 labels (SET=/VALIDATION=), their sequences and a mask FASTA whose 0s mark
    residues labelled against the rule (what the mask leaves out is what a model must not learn)."""
    seqs = _seqs(rng, n)
    labels, fasta, mask = [], [], []
    for i, seq in enumerate(seqs):
        truth = ss8_to_ss3("".join(RULE8.get(c, "C") for c in seq))
        keep = rng.random(len(seq)) > 0.3
        shown = "".join(t if k else "H" for t, k in zip(truth, keep))  # wrong where masked
        split = "test" if i >= n - 8 else "train"
        valid = "True" if split == "train" and i % 5 == 0 else "False"
        labels.append(f">p{i} SET={split} VALIDATION={valid}\n{shown}\n")
        fasta.append(f">p{i}\n{seq}\n")
        mask.append(f">p{i}\n{''.join('1' if k else '0' for k in keep)}\n")
    (root / "flip.fasta").write_text("".join(labels))
    (root / "seqs.fasta").write_text("".join(fasta))
    (root / "mask.fasta").write_text("".join(mask))


def test_a_piped_mask_read_for_several_label_files_is_refused_before_the_model_loads(data, run_cli, tmp_path):
    """As fit's: the training labels' read took the pipe's bytes, and a --test FLIP file was read
    without the mask ("which holds none of its ids")."""
    _flip_set(tmp_path, np.random.default_rng(3))
    piped = _piped((tmp_path / "mask.fasta").read_bytes())
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", tmp_path / "flip.fasta", "--fasta",
                tmp_path / "seqs.fasta", "--test", tmp_path / "flip.fasta", "--mask", piped, "--max-epochs", "1",
                *FAST, "-o", tmp_path / "out")
    assert r.exit_code == 2 and f"--mask {piped} is a pipe, which can be read once, and it is read for each label " \
        "file" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["stdin", "pipe"])
def test_sequences_from_stdin_or_a_pipe_serve_every_label_file(data, run_cli, tmp_path, how):
    """--fasta was read again for each label file: from stdin the --test file's read was a
    ValueError traceback (I/O operation on closed file), from a pipe it found it empty ("10
    record(s) without a sequence: neither the file nor --fasta /dev/fd/N gives")."""
    _flip_set(tmp_path, np.random.default_rng(3), n=12)
    sequences = (tmp_path / "seqs.fasta").read_bytes()
    fasta = "-" if how == "stdin" else _piped(sequences)
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", tmp_path / "flip.fasta", "--fasta", fasta,
                "--test", tmp_path / "flip.fasta", "--max-epochs", "1", *FAST, "-o", tmp_path / "out",
                input=sequences if how == "stdin" else None)
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "out" / "finetune.json").read_text())["metrics"]["flip"]["ss3"]["n"] > 0


def test_per_residue_labels_for_a_per_protein_task_are_refused(data, run_cli, tmp_path):
    """FLIP's per-residue labels given to `finetune protein`: each protein's string of states was
    a class of its own (fit refuses them alike: test_heads_fit)."""
    _flip_set(tmp_path, np.random.default_rng(3))
    r = run_cli("finetune", "protein", "-m", data / "bert", "--labels", tmp_path / "flip.fasta", "--fasta",
                tmp_path / "seqs.fasta", "--max-epochs", "1", "-o", tmp_path / "out", *FAST)
    assert r.exit_code == 1 and not (tmp_path / "out").exists(), r.stderr
    assert f"{tmp_path / 'flip.fasta'}: holds per-residue labels (flip: one letter a residue); the protein task" \
        in r.stderr, r.stderr


def test_per_protein_labels_for_a_per_residue_task_are_refused(data, run_cli, tmp_path):
    """An `id,value` table given to `finetune ss3`: its first record was "5 labels for 38 residues";
    the file is named as holding one label a protein, with the task that takes them."""
    (tmp_path / "seqs.fasta").write_text(">p1\nMKTAYIAKQRQISFVKSHF\n>p2\nMAAGWKTAYQ\n")
    (tmp_path / "tm.csv").write_text("id,value\np1,63.25\np2,48.5\n")
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", tmp_path / "tm.csv", "--fasta",
                tmp_path / "seqs.fasta", "--max-epochs", "1", "-o", tmp_path / "out", *FAST)
    assert r.exit_code == 1 and not (tmp_path / "out").exists(), r.stderr
    assert r.stderr == (f"protrans: error: {tmp_path / 'tm.csv'}: holds one label a protein (p1: '63.25' for 19 "
                        "residues), not one a residue: the ss3 task takes one label a residue; fit these with the "
                        "value task (protrans fit value), which takes one number a protein\n"), r.stderr


def test_resume_with_the_inputs_the_model_and_the_output_moved(data, tmp_path, monkeypatch):
    """An interrupted finetune's project folder renamed (or copied with its times to another
    cluster): `--resume` with the new paths was refused "made with other settings or inputs
    (fasta, mask, model)" although the files were the same (fit's labels and embeddings resume
    so). The same size and time at another path is the same file, the model folder's files
    likewise; a file rewritten there is still refused."""
    import shutil

    import protrans_cli.heads.fit as fit
    from protrans_cli.heads.finetune import FinetuneConfig, finetune, partial_path

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    shutil.copytree(data / "bert", old / "bert")
    _flip_set(old, np.random.default_rng(3), n=16)

    def config(root, **more):
        return FinetuneConfig(task="ss3", model=str(root / "bert"), mask_path=str(root / "mask.fasta"), max_epochs=2,
                              max_residues=600, threads=1, n_bootstrap=10, device="cpu", **more)

    real = _stop_at_validation(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        finetune(config(old), old / "flip.fasta", old / "out", fasta=old / "seqs.fasta")
    monkeypatch.setattr(fit, "_validate", real)
    old.rename(new)
    assert (partial_path(new / "out") / "state.pt").is_file()
    seqs = new / "seqs.fasta"
    os.utime(seqs, ns=(seqs.stat().st_atime_ns, seqs.stat().st_mtime_ns + 10**9))  # rewritten: refused
    with pytest.raises(UsageError, match=r"other settings or inputs \(fasta, fasta_file\)"):
        finetune(config(new, resume=True), new / "flip.fasta", new / "out", fasta=seqs)
    os.utime(seqs, ns=(seqs.stat().st_atime_ns, seqs.stat().st_mtime_ns - 10**9))
    result = finetune(config(new, resume=True), new / "flip.fasta", new / "out", fasta=seqs)
    assert [h["epoch"] for h in result.history] == [1, 2] and not partial_path(new / "out").exists()
    # and the finished run's --resume (a job script may always add it): nothing to do
    again = finetune(config(new, resume=True), new / "flip.fasta", new / "out", fasta=seqs)
    assert again.metrics == result.metrics


def test_flip_mask_and_mask_columns_as_fit_reads_them(data, run_cli, tmp_path):
    from protrans_cli.heads.finetune import FinetuneConfig, read_sequence_data, to_data
    from protrans_cli.heads.tasks import IGNORE, get_task

    _flip_set(tmp_path, np.random.default_rng(3))
    task = get_task("ss3")
    config = FinetuneConfig(task="ss3", model=str(data / "bert"), mask_path=str(tmp_path / "mask.fasta"))
    label_set = read_sequence_data(tmp_path / "flip.fasta", task, fasta=tmp_path / "seqs.fasta", config=config)
    lines = (tmp_path / "mask.fasta").read_text().splitlines()
    masks = {lines[i][1:]: np.array([c == "1" for c in lines[i + 1]]) for i in range(0, len(lines), 2)}
    data_set = to_data(task.with_classes_from(label_set.records), label_set.records, tmp_path / "flip.fasta")
    for item in data_set.items:
        targets = item.targets["ss3"]
        assert np.array_equal(targets == IGNORE, ~masks[item.id])  # every masked residue, and only those, left out
    base = ["finetune", "ss3", "-m", data / "bert", "--labels", tmp_path / "flip.fasta", "--fasta",
            tmp_path / "seqs.fasta", "--max-epochs", "1", *FAST]
    r = run_cli(*base, "-o", tmp_path / "unmasked")
    assert r.exit_code == 0, r.stderr
    assert "FLIP labels without a mask" in r.stderr
    r = run_cli(*base, "--mask", tmp_path / "mask.fasta", "-o", tmp_path / "masked")
    assert r.exit_code == 0, r.stderr
    assert "without a mask" not in r.stderr
    fingerprint = json.loads((tmp_path / "masked" / "finetune.json").read_text())
    assert "mask.fasta" in json.dumps(fingerprint)
    # a mask for labels it does not apply to (NetSurfP's), as fit says
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--mask",
                tmp_path / "mask.fasta", "-o", tmp_path / "x", *FAST)
    assert r.exit_code == 2 and "a mask file is only read with FLIP-style labels, not netsurfp" in r.stderr
    # NetSurfP's mask column is fit's: a column the file lacks is named
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--mask-column",
                "cb513_mask", "-o", tmp_path / "y", *FAST)
    assert r.exit_code == 1 and "has no mask column cb513_mask" in r.stderr
    # and with no NetSurfP file at all (FLIP labels), it was read without a word, as fit's was
    r = run_cli(*base, "--mask-column", "cb513_mask", "-o", tmp_path / "z")
    assert r.exit_code == 2, r.stderr
    assert ("--mask-column cb513_mask: none of the label files is a NetSurfP CSV (flip), the only ones whose "
            "columns it picks") in r.stderr
    assert not (tmp_path / "z").exists()


def test_valid_fraction_beside_a_files_own_validation_records_is_not_compared_on_resume(data, tmp_path, capsys):
    """The FLIP file's VALIDATION=True records are the validation set: --valid-fraction holds
    nothing out, yet the same finetune resumed without it was refused "other settings or inputs
    (valid_fraction)" (exit 2), as fit's was."""
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    _flip_set(tmp_path, np.random.default_rng(3), n=16)
    kw = dict(task="ss3", model=str(data / "bert"), max_epochs=1, max_residues=600, threads=1, n_bootstrap=10,
              device="cpu")
    args = (tmp_path / "flip.fasta", tmp_path / "out")
    done = finetune(FinetuneConfig(valid_fraction=0.3, **kw), *args, fasta=tmp_path / "seqs.fasta")
    assert "--valid-fraction does nothing with" in capsys.readouterr().err  # (it was ignored without a word)
    again = finetune(FinetuneConfig(resume=True, **kw), *args, fasta=tmp_path / "seqs.fasta")
    assert again.metrics == done.metrics
    # beside --valid too (fit's command warned, finetune said nothing)
    finetune(FinetuneConfig(valid_fraction=0.3, **kw), data / "train.csv", tmp_path / "v", valid=data / "test.csv")
    assert "--valid-fraction does nothing with --valid" in capsys.readouterr().err


def test_class_weights_are_the_inverse_training_frequencies(data, run_cli, tmp_path):
    from protrans_cli.heads.labels import read_labels

    out = tmp_path / "w"
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--valid", data / "test.csv",
                "--class-weights", "--max-epochs", "1", "-o", out, *FAST)
    assert r.exit_code == 0, r.stderr
    head = json.loads((out / "head" / "config.json").read_text())
    counts = np.zeros(3)
    for record in read_labels(data / "train.csv").records:  # (every record: validation is --valid)
        counts += [record.labels["ss3"].count(c) for c in SS3]
    np.testing.assert_allclose(head["hyperparameters"]["class_weights"]["ss3"], counts.sum() / (3 * counts),
                               rtol=1e-5)
    # and the loss is weighted: the same run without them has another training loss
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--valid", data / "test.csv",
                "--max-epochs", "1", "-o", tmp_path / "plain", *FAST)
    assert r.exit_code == 0, r.stderr

    def first_loss(run):
        return json.loads((run / "head" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]

    assert json.loads((tmp_path / "plain" / "head" / "config.json").read_text())["hyperparameters"][
        "class_weights"] is None
    assert abs(first_loss(out) - first_loss(tmp_path / "plain")) > 1e-3
    r = run_cli("finetune", "value", "-m", data / "bert", "--labels", data / "train.csv", "--class-weights",
                "-o", tmp_path / "v", *FAST)
    assert r.exit_code == 2 and "--class-weights is for classification" in r.stderr


def test_predict_scores_with_the_mask_columns_the_head_was_finetuned_with(data, run_cli, tmp_path):
    """fit records --mask-column in the head's config and `predict --labels` scores with it; the
    head finetune wrote recorded none, so predict scored on disorder alone: other positions than
    finetune's --test, without a word."""
    from protrans_cli.heads.labels import read_labels

    rng = np.random.default_rng(5)
    for name in ("train", "test"):
        with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
            fh.write("input, dssp3, dssp8, disorder, cb513_mask\n")
            writer = csv.writer(fh)
            for record in read_labels(data / f"{name}.csv").records:
                n = len(record.labels["ss3"])
                writer.writerow([" ".join(record.sequence), " ".join(record.labels["ss3"]),
                                 " ".join(record.labels["ss8"]), " ".join(["1.0"] * n),
                                 " ".join(rng.choice(["0.0", "1.0"], n))])
    out = tmp_path / "out"
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", tmp_path / "train.csv", "--mask-column",
                "disorder", "--mask-column", "cb513_mask", "--test", tmp_path / "test.csv", "--max-epochs", "1",
                "-o", out, *FAST)
    assert r.exit_code == 0, r.stderr
    assert json.loads((out / "head" / "config.json").read_text())["config"]["mask_columns"] == ["disorder",
                                                                                               "cb513_mask"]
    finetuned = json.loads((out / "head" / "metrics.json").read_text())["test"]["ss3"]
    with open(tmp_path / "test.fa", "w") as fh:
        for record in read_labels(tmp_path / "test.csv").records:
            fh.write(f">{record.id}\n{record.sequence}\n")
    r = run_cli("predict", out / "head", "--fasta", tmp_path / "test.fa", "--labels", tmp_path / "test.csv",
                "--metrics", tmp_path / "m", "--no-plots")
    assert r.exit_code == 0, r.stderr
    scored = json.loads((tmp_path / "m" / "test.json").read_text())["outputs"]["ss3"]
    assert scored["n"] == finetuned["n"] and scored["accuracy"] == pytest.approx(finetuned["accuracy"])


def test_activation_checkpointing_trains_the_same_and_saves_a_plain_model(data, tmp_path, monkeypatch):
    """--activation-checkpointing recomputes each block in the backward pass (training/recompute.py):
    the same losses and the same merged weights as without it, and OUT/model is an ordinary model
    (the merged copy does not keep wrappers that would run the training model's blocks)."""
    from safetensors.torch import load_file

    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    settings = dict(task="ss3", model=str(data / "bert"), max_epochs=2, lr=0.01, max_residues=600, threads=1,
                    n_bootstrap=50, device="cpu")
    import torch.utils.checkpoint as torch_checkpoint

    calls = []
    original = torch_checkpoint.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_checkpoint, "checkpoint", counted)
    plain = finetune(FinetuneConfig(**settings), data / "train.csv", tmp_path / "plain")
    assert not calls
    recomputed = finetune(FinetuneConfig(**settings, activation_checkpointing=True), data / "train.csv",
                          tmp_path / "rc")
    assert calls  # (the blocks were recomputed)
    for a, b in zip(plain.history, recomputed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-7)
    merged_a = load_file(tmp_path / "plain" / "model" / "model.safetensors")
    merged_b = load_file(tmp_path / "rc" / "model" / "model.safetensors")
    assert merged_a.keys() == merged_b.keys()
    for key in merged_a:
        torch.testing.assert_close(merged_a[key], merged_b[key], atol=1e-6, rtol=1e-5)
    rows_a = _embedder(tmp_path / "plain" / "model").embed_batch(["MKTAYIAKQRQISFVKSH"])[0]
    rows_b = _embedder(tmp_path / "rc" / "model").embed_batch(["MKTAYIAKQRQISFVKSH"])[0]
    np.testing.assert_allclose(rows_a, rows_b, atol=1e-5)
    base = _embedder(data / "bert").embed_batch(["MKTAYIAKQRQISFVKSH"])[0]
    assert np.abs(rows_b - base).max() > 1e-4  # (the adapters were merged into the weights)


def test_a_valid_or_test_file_of_other_splits_only_is_refused(data, run_cli, tmp_path):
    """As fit: a file of train and test records given as --valid was used whole, and the epoch was
    chosen on its test proteins; refused before the model loads."""
    from protrans_cli.heads.tasks import ss8_to_ss3

    rng = np.random.default_rng(1)
    lines = []
    for i, seq in enumerate(_seqs(rng, 6)):
        target = ss8_to_ss3("".join(RULE8.get(c, "C") for c in seq))
        lines.append(f">p{i} TARGET={target} SET={'train' if i % 2 else 'test'} VALIDATION=False\n{seq}\n")
    (tmp_path / "both.fasta").write_text("".join(lines))
    for option, split in (("--valid", "valid"), ("--test", None)):
        args = [option, tmp_path / "both.fasta"]
        r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", *args, *FAST,
                    "--max-epochs", "1", "-o", tmp_path / "out")
        if split is None:  # (its test records are taken, as before)
            assert r.exit_code == 0, r.stderr
            continue
        assert r.exit_code == 1 and "assigns its records to test, train and none to valid" in r.stderr
        assert "finetune holds out --valid-fraction" in r.stderr and not (tmp_path / "out").exists()


def test_test_proteins_that_are_training_or_validation_proteins_are_named(data, run_cli, tmp_path):
    """As fit: --test naming the training labels (or the validation set) scored those proteins as
    an independent test set without a word; a warning counts them."""
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--valid",
                data / "test.csv", "--test", data / "train.csv", "--test", data / "test.csv", *FAST,
                "--max-epochs", "1", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert "train: 60 of its 60 proteins are in the training set too (60 by id: " in r.stderr, r.stderr
    assert "test: 15 of its 15 proteins are in the validation set too (15 by id: " in r.stderr, r.stderr


def test_lora_linear_is_base_plus_alpha_over_rank_times_b_a_with_dropout_on_the_adapter_path():
    """LoRALinear against plain torch: y = x W^T + b + (alpha / r) dropout(x) A^T B^T, merged
    W + (alpha / r) B A; dropout (--lora-dropout) on the adapter's input only."""
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    W, b = base.weight.detach().clone(), base.bias.detach().clone()
    lora = LoRALinear(base, rank=3, alpha=12.0, dropout=0.5)
    with torch.no_grad():
        lora.lora_b.normal_(std=0.3)
    A, B = lora.lora_a.detach(), lora.lora_b.detach()
    x = torch.randn(4, 6)
    with torch.no_grad():
        lora.eval()
        torch.testing.assert_close(lora(x), x @ W.T + b + 4.0 * (x @ A.T @ B.T))
        torch.testing.assert_close(lora.merged().weight, W + 4.0 * (B @ A))
        torch.testing.assert_close(lora.merged()(x), lora(x))
        lora.train()
        torch.manual_seed(7)
        got = lora(x)
        torch.manual_seed(7)
        dropped = torch.nn.functional.dropout(x, 0.5, training=True)
        torch.testing.assert_close(got, x @ W.T + b + 4.0 * (dropped @ A.T @ B.T))
        assert not torch.allclose(got, x @ W.T + b + 4.0 * (x @ A.T @ B.T))


def test_a_merged_copy_of_a_recomputed_model_runs_its_own_blocks(tmp_path):
    """merged_copy of a model whose blocks recompute (--activation-checkpointing): the copy's
    blocks must run the copy's merged Linears, not the original's adapted ones (a deep copy
    shares the wrappers, which call the original blocks): changing the original's adapters
    after the merge leaves the copy's output as it was."""
    from protrans_cli.training.recompute import checkpoint_blocks

    embedder = _embedder(_tiny("bert", tmp_path / "base"))
    model = embedder.model
    add_lora(model, embedder.family_impl, rank=2, alpha=4.0)
    assert checkpoint_blocks(model) > 0
    torch.manual_seed(1)
    for module in lora_modules(model).values():
        torch.nn.init.normal_(module.lora_b, std=0.2)
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10, 3]])
    merged = merged_copy(model).eval()  # (the wrapper calls the block it wrapped in either mode)
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).last_hidden_state
        before = merged(input_ids=ids).last_hidden_state
        torch.testing.assert_close(before, adapted, atol=1e-5, rtol=1e-5)
        for module in lora_modules(model).values():
            module.lora_b.zero_()
        torch.testing.assert_close(merged(input_ids=ids).last_hidden_state, before)
        assert not torch.allclose(model(input_ids=ids).last_hidden_state, before, atol=1e-3)


# docs/heads.md, "Model": the Linear modules each family's adapters go on, in every layer
DOCUMENTED_TARGETS = {
    "bert": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
    "roberta": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
    "electra": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
    "albert": ("attention.query", "attention.key", "attention.value", "attention.dense"),
    "t5": ("SelfAttention.q", "SelfAttention.k", "SelfAttention.v", "SelfAttention.o"),
    "esm": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "esmc": ("attn.layernorm_qkv.1", "attn.out_proj"),
}


@pytest.mark.parametrize("family_name", LORA_FAMILIES)
def test_adapters_go_on_the_documented_projections_of_every_layer(family_name, tmp_path):
    embedder = _embedder(_tiny(family_name, tmp_path / "base"))
    config = embedder.model.config
    layers = (config.num_hidden_groups * config.inner_group_num if family_name == "albert"
              else config.num_hidden_layers)
    names = add_lora(embedder.model, embedder.family_impl, rank=2, alpha=4.0)
    targets = DOCUMENTED_TARGETS[family_name]
    counts = {t: sum(name.endswith("." + t) for name in names) for t in targets}
    assert counts == {t: layers for t in targets} and len(names) == layers * len(targets)
    assert set(lora_modules(embedder.model)) == set(names)


def test_lora_rank_alpha_and_dropout_options_reach_the_adapters_and_finetune_json(data, run_cli, tmp_path,
                                                                                  monkeypatch):
    import protrans_cli.heads.lora as lora

    seen = []
    real = lora.LoRALinear.__init__

    def recording(self, base, rank, alpha, dropout=0.0):
        seen.append((rank, alpha, dropout))
        real(self, base, rank, alpha, dropout)

    monkeypatch.setattr(lora.LoRALinear, "__init__", recording)
    out = tmp_path / "o"
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--max-epochs", "1",
                "--lora-rank", "2", "--lora-alpha", "3", "--lora-dropout", "0.25", *FAST, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert seen and set(seen) == {(2, 3.0, 0.25)}
    report = json.loads((out / "finetune.json").read_text())
    assert report["lora"] == {"rank": 2, "alpha": 3.0, "dropout": 0.25, "targets": list(FAMILIES["bert"].lora_targets)}


@pytest.mark.parametrize("args, message", [
    (["--lora-rank", "0"], "--lora-rank must be at least 1, got 0"),
    (["--accumulate", "0"], "--accumulate must be at least 1, got 0"),
    (["--lr", "nan"], "--lr must be positive, got nan"),
    (["--weight-decay", "-0.1"], "--weight-decay must be 0 or more, got -0.1"),
    (["--valid-fraction", "1"], "--valid-fraction must be between 0 and 1, got 1.0"),
    (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
    (["--kernel", "4"], "--kernel must be odd (every residue keeps its position), got 4"),
    # (a "95% CI" of 1 resample was reported, outside its own accuracy: fit and knn refused it)
    (["--bootstrap", "5"], "--bootstrap must be at least 10"),
    # (it was "--n-bootstrap must be at least 1, got 0": a flag finetune has not, and a bound 1 to 9 is refused by)
    (["--bootstrap", "0"], "--bootstrap must be at least 10 (a 95% interval needs resamples beyond its 2.5% tails; "
     "1000 is the default), got 0"),
    # (numpy's and torch's seeds are 0 .. 2**64 - 1: a ValueError traceback after the labels were read)
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--seed", str(2**64)], "--seed must be at most 18446744073709551615 (2**64 - 1: torch's seeds are unsigned "
     "64-bit), got 18446744073709551616"),
    (["-m", "onehot"], "-m onehot has no weights to fine-tune"),
    (["-m", ""], "finetune needs a model (-m)"),
    (["--mask", "-"], "--mask cannot be stdin ('-')"),
])
def test_bad_options_are_refused_before_anything_is_read_or_written(data, run_cli, tmp_path, args, message):
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "-o", tmp_path / "out",
                *FAST, *args)
    assert r.exit_code == 2 and message in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_inputs_that_cannot_train_as_given_are_refused_before_the_model_loads(data, run_cli, tmp_path, monkeypatch):
    import protrans_cli.models as models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    base = ["finetune", "ss3", "-m", data / "bert", *FAST]
    # --fasta giving an id of the label file another sequence than the file's: refused naming the record
    from protrans_cli.heads.labels import read_labels

    first = read_labels(data / "train.csv").records[0]
    (tmp_path / "other.fa").write_text(f">{first.id}\nMKV{first.sequence}\n")
    r = run_cli(*base, "--labels", data / "train.csv", "--fasta", tmp_path / "other.fa", "-o", tmp_path / "a")
    assert r.exit_code == 1 and f"record '{first.id}'" in r.stderr, r.stderr
    assert "--fasta" in r.stderr and "gives another sequence for this id" in r.stderr, r.stderr
    # proteins that all share one sequence: the --valid-fraction hold-out (identical sequences kept
    # together) would leave nothing to train on
    _netsurfp(tmp_path / "same.csv", [first.sequence] * 5)
    r = run_cli(*base, "--labels", tmp_path / "same.csv", "-o", tmp_path / "b")
    assert r.exit_code == 1 and "same.csv: the --valid-fraction hold-out leaves no training protein" in r.stderr, \
        r.stderr
    # a FLIP mask beside NetSurfP training labels (read without it: it may be meant for the test
    # set) that holds none of the FLIP test set's ids either applies to nothing: refused, not ignored
    _flip_set(tmp_path, np.random.default_rng(4))
    (tmp_path / "elsewhere.fasta").write_text(">q1\n1110\n")
    r = run_cli(*base, "--labels", data / "train.csv", "--test", tmp_path / "flip.fasta", "--fasta",
                tmp_path / "seqs.fasta", "--mask", tmp_path / "elsewhere.fasta", "-o", tmp_path / "c")
    assert r.exit_code == 2 and "none of the label files is FLIP-style labels whose ids it holds" in r.stderr, r.stderr
    # a FLIP file whose records are all SET=test has nothing to train on
    (tmp_path / "tests_only.fasta").write_text((tmp_path / "flip.fasta").read_text().replace("SET=train", "SET=test"))
    r = run_cli(*base, "--labels", tmp_path / "tests_only.fasta", "--fasta", tmp_path / "seqs.fasta", "-o",
                tmp_path / "d")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1].endswith(
        "tests_only.fasta: no training records: the file assigns every record to test (give the training labels "
        "as --labels)"), r.stderr
    assert not any((tmp_path / f"{name}{end}").exists() for name in "abcd" for end in ("", ".partial"))


def test_an_interrupted_run_is_neither_overwritten_without_force_nor_resumed_from_nothing(data, run_cli, tmp_path):
    from protrans_cli.heads.finetune import partial_path

    base = ["finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--max-epochs", "1", *FAST]
    state = partial_path(tmp_path / "out") / "state.pt"
    state.parent.mkdir()
    state.write_bytes(b"an interrupted run's epochs")
    # the same command without --resume: refused, the saved epochs kept (they were overwritten)
    r = run_cli(*base, "-o", tmp_path / "out")
    assert r.exit_code == 2 and "holds an interrupted finetune: --resume continues it, --force starts again" \
        in r.stderr, r.stderr
    assert state.read_bytes() == b"an interrupted run's epochs" and not (tmp_path / "out").exists()
    # --force starts again: the old state is never read, and gone with the finished run
    r = run_cli(*base, "-o", tmp_path / "out", "--force")
    assert r.exit_code == 0 and "resuming" not in r.stderr, r.stderr
    assert (tmp_path / "out" / "finetune.json").is_file() and not state.parent.exists()
    # --resume with nothing saved starts from the beginning, and says so
    r = run_cli(*base, "-o", tmp_path / "new", "--resume")
    assert r.exit_code == 0 and "nothing to resume in" in r.stderr and "starting from the beginning" in r.stderr, \
        r.stderr
    assert (tmp_path / "new" / "finetune.json").is_file()


def test_an_interrupted_finetune_says_where_its_epochs_are_kept_and_how_to_continue(data, run_cli, tmp_path,
                                                                                    monkeypatch):
    import protrans_cli.heads.fit as fit

    real = _stop_at_validation(monkeypatch, 2)  # after epoch 1 was saved
    base = ["finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--max-epochs", "2", *FAST,
            "-o", tmp_path / "out"]
    r = run_cli(*base)
    assert r.exit_code == 130 and f"the epochs finished so far are kept in {tmp_path / 'out.partial'}; run the same " \
        "command with --resume to continue" in r.stderr, r.stderr
    monkeypatch.setattr(fit, "_validate", real)
    r = run_cli(*base, "--resume")
    assert r.exit_code == 0 and "resuming" in r.stderr and "after epoch 1" in r.stderr, r.stderr


def test_a_full_disk_names_the_state_or_the_output_and_resume_finishes(data, run_cli, tmp_path, monkeypatch):
    """A full disk at the state's save was "error: No space left on device", naming no file; at
    the model's save (safetensors) a traceback. Now fit's lines, and the state kept for --resume."""
    import safetensors.torch
    from safetensors import SafetensorError

    from protrans_cli.io import files

    out = tmp_path / "out"
    base = ["finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--max-epochs", "1", *FAST,
            "-o", out]
    with monkeypatch.context() as m:
        m.setattr(files, "create_fresh", lambda path, mode=0o666: os.open("/dev/full", os.O_WRONLY))
        r = run_cli(*base)
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == \
        f"protrans: error: {out}.partial/state.pt: cannot save the finetune's state: No space left on device"

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", full)
        r = run_cli(*base)
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {out}: cannot write the finetune: No space left on device (its state is kept: "
        "--resume finishes it)"), r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    r = run_cli(*base, "--resume")
    assert r.exit_code == 0 and "after epoch 1" in r.stderr and (out / "finetune.json").is_file(), r.stderr


def test_an_output_below_a_file_is_a_usage_error_naming_the_file(data, run_cli, tmp_path):
    """`-o afile/out` was "afile: File exists", exit 1."""
    (tmp_path / "afile").write_text("x")
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--max-epochs", "1", *FAST,
                "-o", tmp_path / "afile" / "out")
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == \
        f"protrans: error: {tmp_path / 'afile'}: is not a directory, so no folder can go inside it", r.stderr


def test_resume_of_a_finished_finetune_that_recorded_no_fingerprint_is_a_usage_error(finetuned, data, run_cli,
                                                                                      tmp_path):
    """A finished output of a version that did not record what it was made with: --resume cannot
    tell whether it is this command's, and says --force trains it again (nothing is replaced)."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finetuned, out)
    record = json.loads((out / "finetune.json").read_text())
    del record["fingerprint"]
    (out / "finetune.json").write_text(json.dumps(record))
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--resume", "-o", out, *FAST)
    assert r.exit_code == 2 and f"{out} is a finished finetune: nothing to resume (--force trains it again)" \
        in r.stderr, r.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files


def test_accumulate_steps_the_optimizer_once_every_n_batches(data, tmp_path, monkeypatch):
    """--accumulate N: one AdamW step per N batches (and one for the last, partial group), so the
    adapters see N batches' gradients at a time; 1 steps after every batch."""
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    steps = []
    real_step = torch.optim.AdamW.step

    def counted(self, *args, **kwargs):
        steps[-1] += 1
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    kw = dict(task="ss3", model=str(data / "bert"), lr=0.01, max_residues=300, threads=1, n_bootstrap=10,
              device="cpu", max_epochs=1)
    for n in (1, 3):
        steps.append(0)
        finetune(FinetuneConfig(accumulate=n, **kw), data / "train.csv", tmp_path / f"a{n}")
    batches = steps[0] - 1  # (one step a batch, and the no-op one after the last)
    assert batches >= 6 and steps[1] == batches // 3 + 1, (batches, steps)


def test_accumulate_counts_the_batches_that_have_a_loss(data, tmp_path, monkeypatch):
    """--accumulate N steps the optimizer every N batches with a loss: a batch with nothing to
    score (skipped) was counted, so where every other batch had none no step was taken before the
    epoch's end (all its batches' gradients summed into one step, each scaled by 1 / N)."""
    import protrans_cli.heads.finetune as ft
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    calls, steps = [], []
    real_loss, real_step = ft._loss, torch.optim.AdamW.step

    def loss(task, logits, targets, weights, *args):
        value, counts = real_loss(task, logits, targets, weights, *args)
        calls.append(1)
        return value, (counts if len(calls) % 2 else {k: 0 for k in counts})  # every 2nd batch: nothing to score

    def step(self, *args, **kwargs):
        steps.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ft, "_loss", loss)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    config = FinetuneConfig(task="ss3", model=str(data / "bert"), max_epochs=1, lr=0.01, max_residues=300,
                            threads=1, n_bootstrap=10, device="cpu", accumulate=2)
    finetune(config, data / "train.csv", tmp_path / "out")
    kept = (len(calls) + 1) // 2
    assert kept >= 3
    assert len(steps) == kept // 2 + 1  # every 2 batches with a loss, and the epoch's last partial step


def test_finetune_puts_back_the_callers_random_generators(data, tmp_path):
    """finetune() seeded torch's generator with --seed and left it so: a notebook seeded before
    it drew other numbers after it (fit and train put the caller's back)."""
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    finetune(FinetuneConfig(task="ss3", model=str(data / "bert"), max_epochs=1, lr=0.01, max_residues=600, threads=1,
                            n_bootstrap=10, device="cpu"), data / "train.csv", tmp_path / "out")
    assert torch.equal(torch.rand(3), expected)


def test_the_head_written_is_the_best_validation_epochs_not_the_last(data, tmp_path, monkeypatch):
    """fit's rule, as docs/heads.md says: the epoch with the best validation score is kept. Here
    epoch 1 scores best and the loss keeps falling (so patience never stops the run): the head
    written is epoch 1's state as the run saved it, not epoch 3's."""
    from safetensors.torch import load_file

    import protrans_cli.heads.finetune as ft
    import protrans_cli.heads.fit as fit
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    scores, saved = iter([(1.0, 0.9), (0.9, 0.5), (0.8, 0.4)]), []
    real_validate, real_write = fit._validate, ft._write_state

    def validate(*args, **kwargs):
        loss, _ = real_validate(*args, **kwargs)
        step = next(scores, None)
        return (loss, {}) if step is None else (step[0], {"ss3": step[1]})

    def write_state(path, state):
        saved.append({k: v.clone() for k, v in state["model"].items() if k.startswith("head.")})
        return real_write(path, state)

    monkeypatch.setattr(fit, "_validate", validate)
    monkeypatch.setattr(ft, "_write_state", write_state)
    kw = dict(task="ss3", model=str(data / "bert"), lr=0.01, max_residues=600, threads=1, n_bootstrap=10,
              device="cpu", max_epochs=3, patience=5)
    result = finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "out")
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and len(saved) == 3
    written = load_file(str(tmp_path / "out" / "head" / "weights.safetensors"))
    assert json.loads((tmp_path / "out" / "finetune.json").read_text())["best_epoch"] == 1
    for key, value in saved[0].items():
        torch.testing.assert_close(written["members.0." + key[len("head."):]], value)
    assert any(not torch.equal(saved[0][k], saved[2][k]) for k in saved[0])  # (the epochs did differ)


def test_a_tie_with_a_higher_loss_is_no_progress_and_patience_stops_the_finetune(data, tmp_path, monkeypatch):
    """fit's rule: epoch 2 ties epoch 1's score with a higher validation loss, so it improves
    neither: with --patience 1 the run stops after it, keeping epoch 1."""
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    _scripted_validation(monkeypatch, [(1.0, 0.5), (1.1, 0.5), (0.5, 0.9), (0.4, 0.95)])
    kw = dict(task="ss3", model=str(data / "bert"), lr=0.01, max_residues=600, threads=1, n_bootstrap=10,
              device="cpu", max_epochs=4, patience=1)
    result = finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "out")
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert json.loads((tmp_path / "out" / "finetune.json").read_text())["best_epoch"] == 1


def test_patience_counts_from_the_lowest_validation_loss_of_any_epoch(data, tmp_path, monkeypatch):
    """An epoch is progress when its loss is below every earlier epoch's, not merely below the
    one before: epoch 2 lowers the loss to 0.8, epochs 3 (0.9) and 4 (0.85) do not go below it, so
    --patience 2 stops the run after epoch 4 with epoch 1 (the best score) kept."""
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    _scripted_validation(monkeypatch, [(1.0, 0.5), (0.8, 0.4), (0.9, 0.4), (0.85, 0.4), (0.7, 0.4)])
    kw = dict(task="ss3", model=str(data / "bert"), lr=0.01, max_residues=600, threads=1, n_bootstrap=10,
              device="cpu", max_epochs=5, patience=2)
    result = finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "out")
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "out" / "finetune.json").read_text())["best_epoch"] == 1


def test_dual_for_a_task_without_locations_is_said_to_do_nothing(data, run_cli, tmp_path):
    """--dual is DeepLoc's dual location label: given to ss3 it changed nothing without a word
    (fit warned of it)."""
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--dual", "skip",
                "--max-epochs", "1", *FAST, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert "protrans: warning: --dual does nothing for ss3 (DeepLoc's dual location label, per protein): ignored" \
        in r.stderr


def test_lr_and_weight_decay_options_reach_adamw(data, run_cli, tmp_path, monkeypatch):
    """--lr and --weight-decay are AdamW's (a finetune that dropped --weight-decay passed every test)."""
    seen = []
    real = torch.optim.AdamW.__init__

    def recording(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *args, **kwargs):
        seen.append((lr, weight_decay))
        real(self, params, lr, betas, eps, weight_decay, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", recording)
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--max-epochs", "1",
                "--lr", "0.002", "--weight-decay", "0.3", *FAST, "-o", tmp_path / "o")
    assert r.exit_code == 0, r.stderr
    assert seen == [(0.002, 0.3)]


def test_accumulate_checkpointing_and_dropout_options_reach_the_run(data, run_cli, tmp_path, monkeypatch):
    """--accumulate, --activation-checkpointing and --dropout are the run's (a CLI handing
    FinetuneConfig the defaults, 1, False and 0.25, whatever the user gave, passed every test)."""
    import protrans_cli.training.recompute as recompute

    checkpointed = []
    real = recompute.checkpoint_blocks
    monkeypatch.setattr(recompute, "checkpoint_blocks", lambda model: checkpointed.append(1) or real(model))
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "--max-epochs", "1",
                "--accumulate", "3", "--activation-checkpointing", "--dropout", "0.1", *FAST, "-o", tmp_path / "o")
    assert r.exit_code == 0, r.stderr
    assert checkpointed == [1]
    config = json.loads((tmp_path / "o" / "finetune.json").read_text())["config"]
    assert (config["accumulate"], config["activation_checkpointing"], config["dropout"]) == (3, True, 0.1)


def test_a_per_protein_head_reads_the_mean_of_each_proteins_own_residue_rows(data):
    """FineTuned's pooled input is embed's per-protein mean (what its test sets and predict --fasta
    are embedded to): over the protein's own residues, not over the batch's padded length."""
    from protrans_cli.heads.finetune import FineTuned

    embedder = _embedder(data / "bert")
    seqs = ["MKTAYIAKQRQISFVKSH", "AELVIYGPND", "MSEQ"]
    seen = []

    class Recording(torch.nn.Module):  # (a head taking (B, D): what it is given)
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, mask):
            seen.append(x)
            return {}

    with torch.no_grad():
        FineTuned(embedder, Recording(), False).eval()(seqs)
    pooled = embedder.embed_batch(seqs, pooled=True)
    for i in range(len(seqs)):
        np.testing.assert_allclose(seen[0][i].numpy(), pooled[i][0], atol=1e-5, rtol=1e-5)


def test_layer_is_the_hidden_state_the_head_reads_and_records(data, tmp_path):
    """--layer -2: the head reads (and its config.json records) that hidden state, as embed
    numbers it, for predict --fasta to embed with (a finetune that always read the last passed)."""
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(task="ss3", model=str(data / "bert"), max_epochs=1, lr=0.01, max_residues=600, threads=1,
                            n_bootstrap=10, device="cpu", layer=-2)
    finetune(config, data / "train.csv", tmp_path / "out")
    head = json.loads((tmp_path / "out" / "head" / "config.json").read_text())
    assert head["layer"] == -2 and head["embedding"]["layers"] == [-2]


def test_the_head_is_built_with_its_options_under_the_seed(data, tmp_path, monkeypatch):
    """--hidden, --kernel and --dropout build the head, and --seed seeds torch before it is
    built (a finetune that built it with the default dropout, or seeded 0, passed every test)."""
    import protrans_cli.heads.model as model_module
    from protrans_cli.heads.finetune import FinetuneConfig, finetune

    seen = []
    real = model_module.build_head

    def recording(*args, **kwargs):
        seen.append((torch.initial_seed(), {k: kwargs[k] for k in ("hidden", "kernel", "dropout")}))
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module, "build_head", recording)
    config = FinetuneConfig(task="ss3", model=str(data / "bert"), max_epochs=1, lr=0.01, max_residues=600, threads=1,
                            n_bootstrap=10, device="cpu", seed=11, hidden=8, kernel=3, dropout=0.4)
    finetune(config, data / "train.csv", tmp_path / "out")
    assert seen == [(11, {"hidden": 8, "kernel": 3, "dropout": 0.4})]


@pytest.mark.parametrize("fraction, held", [(0.11, 7), (0.09, 5), (0.01, 1), (0.99, 59)])
def test_valid_fraction_holds_out_the_rounded_share_at_least_one_and_leaves_one_to_train(fraction, held):
    """--valid-fraction: round(share x proteins), at least one, never all (--help), as fit's: 0.11 of
    60 is 7 (6.6 rounded; a mutant flooring it to 6 passed every test)."""
    from protrans_cli.heads.data import Matched
    from protrans_cli.heads.finetune import FinetuneConfig, SequenceData, _hold_out

    seqs = _seqs(np.random.default_rng(2), 60)
    data = SequenceData([Matched(f"p{i}", f"p{i}", len(s), {}) for i, s in enumerate(seqs)], seqs, True)
    train, valid, _ = _hold_out(FinetuneConfig(valid_fraction=fraction), data, "train.csv")
    assert len(valid.items) == held and len(train.items) == 60 - held
    assert {m.id for m in train.items}.isdisjoint(m.id for m in valid.items)


def test_training_batches_are_shuffled_every_epoch_and_hold_each_protein_once(data, run_cli, tmp_path, monkeypatch):
    """Each epoch draws its own order of the training proteins (seeded by --seed); evaluation sets
    are read in order. Recorded from the batches the run takes of its largest set, the training one."""
    from protrans_cli.heads import finetune as finetune_module

    orders = {}
    real = finetune_module.SequenceData.batches

    def recorded(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            orders.setdefault(id(self), [[]])[-1].extend(int(i) for i in batch.index)
            yield batch
        orders[id(self)].append([])

    monkeypatch.setattr(finetune_module.SequenceData, "batches", recorded)
    r = run_cli("finetune", "ss3", "-m", data / "bert", "--labels", data / "train.csv", "-o", tmp_path / "out",
                "--max-epochs", "2", "--patience", "5", *FAST)
    assert r.exit_code == 0, r.stderr
    epochs = [order for order in max(orders.values(), key=lambda o: len(o[0])) if order]
    assert len(epochs) == 2 and sorted(epochs[0]) == sorted(epochs[1]) == list(range(len(epochs[0])))
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("task, given, architecture, kernel", [("ss3", [], "cnn", 7), ("loc", [], "fnn", 7),
                                                                ("loc", ["--architecture", "light-attention"],
                                                                 "light-attention", 9)])
def test_the_head_left_to_the_defaults_is_the_one_the_help_names(data, loc_fasta, run_cli, tmp_path, monkeypatch,
                                                                 task, given, architecture, kernel):
    """finetune --help: --architecture "[default: cnn per residue, fnn per protein]", --kernel
    "[default: 7, light-attention 9]": no test left them out (a kernel of 7 for every head passed)."""
    import protrans_cli.heads.model as model_module

    class Built(Exception):
        pass

    def recording(*args, **kwargs):
        raise Built(kwargs["architecture"], kwargs["kernel"])

    monkeypatch.setattr(model_module, "build_head", recording)
    labels = data / "train.csv" if task == "ss3" else loc_fasta / "train.fasta"
    with pytest.raises(Built) as built:
        run_cli("finetune", task, "-m", data / "bert", "--labels", labels, *given, *FAST, "-o", tmp_path / "out")
    assert built.value.args == (architecture, kernel)


def test_a_value_label_of_minus_100_is_a_label(tmp_path):
    """finetune kept a protein whose value label was exactly -100 out of training (it compared
    equal to the class tasks' ignore marker); fit keeps it, and a value is left out only when NaN."""
    from protrans_cli.heads.finetune import to_data
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    labels = tmp_path / "values.csv"
    labels.write_text("id,sequence,target\nA,MKTAYIAK,-100\nB,MKTAYIAR,1.5\nC,MKTAYIAL,\n")
    task = get_task("value")
    data = to_data(task, read_labels(labels).records, labels)
    assert data.sequences == ["MKTAYIAK", "MKTAYIAR"]
    assert data.targets["value"].tolist() == [-100.0, 1.5]


def test_the_label_files_own_test_records_with_nothing_to_score_are_named_as_fit_names_them(tmp_path):
    """finetune's test set of the label file's own SET=test records, every residue of which is
    masked, stopped with "FILE: no labelled proteins", as if the training set had none; fit names
    the records, how many and why (its _load_split). finetune's error now says what fit's says,
    read from the same file before any model is loaded."""
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.finetune import FinetuneConfig, _read_label_sets
    from protrans_cli.heads.fit import FitConfig, fit
    from protrans_cli.heads.tasks import get_task

    labels, mask, seqs = tmp_path / "ft.fasta", tmp_path / "mask.fasta", tmp_path / "seqs.fasta"
    labels.write_text(">A SET=train\nHHHCC\n>B SET=train\nCCEEH\n>C SET=train\nHHHHH\n"
                      ">D SET=train VALIDATION=True\nCCCCC\n>T SET=test\nHHHHH\n")
    mask.write_text(">A\n11111\n>B\n11111\n>C\n11111\n>D\n11111\n>T\n00000\n")
    seqs.write_text(">A\nMKVLA\n>B\nMKVLE\n>C\nAAAAA\n>D\nGGGGG\n>T\nWWWWW\n")
    expected = (f"{labels}: none of its 1 label record(s) gives a usable label (empty or nan, every residue masked, "
                "or a dual location under --dual skip): nothing to train on or score (the test records of "
                f"{labels}, used as the test set since no --test is given; --test ")
    with pytest.raises(InputError) as caught:
        _read_label_sets(FinetuneConfig(task="ss3", model="x", mask_path=str(mask)), get_task("ss3"), labels, seqs,
                         None, [])
    assert str(caught.value) == expected + "LABELS names another)"
    embed(seqs, tmp_path / "seqs.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    with pytest.raises(InputError) as caught:  # (fit's, the reference)
        fit(FitConfig(task="ss3", max_epochs=1, threads=1, mask_path=str(mask)), tmp_path / "seqs.h5", labels,
            tmp_path / "head")
    assert str(caught.value) == expected + "EMBEDDINGS LABELS names another)"
    mask.write_text(mask.read_text().replace(">D\n11111", ">D\n00000").replace(">T\n00000", ">T\n11111"))
    with pytest.raises(InputError, match=r"\(the valid records of .*ft.fasta, used as the valid set since no --valid"):
        _read_label_sets(FinetuneConfig(task="ss3", model="x", mask_path=str(mask)), get_task("ss3"), labels, seqs,
                         None, [])


def test_the_label_files_own_test_records_without_a_sequence_are_named_as_its_test_records(tmp_path):
    """finetune's label file whose SET=test records --fasta gives no sequence for stopped with
    "FILE: 2 record(s) without a sequence" as if its training records lacked them: now they are named
    as its test records, used as the test set since no --test is given; with --test given (they are
    never read) and for its validation records likewise."""
    from protrans_cli.heads.finetune import FinetuneConfig, _read_label_sets
    from protrans_cli.heads.tasks import get_task

    labels, seqs, other = tmp_path / "ft.fasta", tmp_path / "seqs.fasta", tmp_path / "other.fasta"
    labels.write_text(">A SET=train\nHHHCC\n>B SET=train\nCCEEH\n>C SET=train\nHHHHH\n"
                      ">D SET=train VALIDATION=True\nCCCCC\n>T SET=test\nHHHHH\n>U SET=test\nCCHHH\n")
    seqs.write_text(">A\nMKVLA\n>B\nMKVLE\n>C\nAAAAA\n>D\nGGGGG\n")
    other.write_text(">O\nHHCCE\n")
    read = functools.partial(_read_label_sets, FinetuneConfig(task="ss3", model="x"), get_task("ss3"), labels, seqs)
    with pytest.raises(InputError) as caught:
        read(None, [])
    assert str(caught.value) == (f"{labels}: 2 record(s) without a sequence: neither the file nor --fasta {seqs} gives "
                                 f"(T, U...) (the test records of {labels}, used as the test set since no --test is "
                                 "given; --test LABELS names another)")
    other_seqs = tmp_path / "all.fasta"
    other_seqs.write_text(seqs.read_text() + ">O\nMKVLA\n")
    sets = _read_label_sets(FinetuneConfig(task="ss3", model="x"), get_task("ss3"), labels, other_seqs, None, [other])
    assert [name for name, *_ in sets.eval_sets] == ["valid", "other"]
    seqs.write_text(seqs.read_text().replace(">D\nGGGGG\n", "") + ">T\nWWWWW\n>U\nMKVLA\n")
    with pytest.raises(InputError, match=r": 1 record\(s\) without a sequence: .* \(D\.\.\.\) \(the valid records of "
                                         r".*ft\.fasta, used as the valid set since no --valid is given"):
        read(None, [])
    # a training record without one is named as before (the whole file)
    seqs.write_text(seqs.read_text().replace(">A\nMKVLA\n", ""))
    with pytest.raises(InputError, match=r"ft\.fasta: 1 record\(s\) without a sequence: .* \(A\.\.\.\)$"):
        read(None, [])


def test_a_valid_or_test_file_of_several_splits_needs_sequences_only_for_the_records_used(tmp_path):
    """A --valid (--test) file that declares several splits (FLIP's SET=/VALIDATION=) is used for its
    validation (test) records alone, yet --fasta had to give a sequence for every record of it, those of
    the splits never read included: "FILE: 4 record(s) without a sequence". Only the records used need
    one now; a used record without one is still refused, and so is any of a file of one split."""
    from protrans_cli.heads.finetune import FinetuneConfig, _read_label_sets
    from protrans_cli.heads.tasks import get_task

    labels, valid, test, seqs = (tmp_path / name for name in ("train.fasta", "valid.fasta", "test.fasta", "s.fasta"))
    labels.write_text(">A\nHHHCC\n>B\nCCEEH\n>C\nHHHHH\n")
    flip = ">{0}1 SET=train\nHHHCC\n>{0}2 SET=train VALIDATION=True\nCCEEH\n>{0}3 SET=test\nHHHEE\n>{0}4 SET=train\nCCCCC\n"
    valid.write_text(flip.format("V"))
    test.write_text(flip.format("T"))
    # sequences for the training records, --valid's validation record and --test's test record alone
    seqs.write_text(">A\nMKVLA\n>B\nMKVLE\n>C\nAAAAA\n>V2\nGGGGG\n>T3\nWWWWW\n")
    sets = _read_label_sets(FinetuneConfig(task="ss3", model="x"), get_task("ss3"), labels, seqs, valid, [test])
    assert [(name, [item.id for item in data.items]) for name, data, _ in sets.eval_sets] == [
        ("valid", ["V2"]), ("test", ["T3"])]
    assert [data.sequences for _, data, _ in sets.eval_sets] == [["GGGGG"], ["WWWWW"]]
    # a record used without a sequence: refused, naming it
    seqs.write_text(">A\nMKVLA\n>B\nMKVLE\n>C\nAAAAA\n>V2\nGGGGG\n")
    with pytest.raises(InputError) as caught:
        _read_label_sets(FinetuneConfig(task="ss3", model="x"), get_task("ss3"), labels, seqs, valid, [test])
    assert str(caught.value) == (f"{test}: 1 record(s) without a sequence: neither the file nor --fasta {seqs} gives "
                                 "(T3...)")
    # a file of one split is used whole: every record of it needs one
    test.write_text(">T1\nHHHCC\n>T3\nHHHEE\n")
    seqs.write_text(">A\nMKVLA\n>B\nMKVLE\n>C\nAAAAA\n>V2\nGGGGG\n>T3\nWWWWW\n")
    with pytest.raises(InputError, match=r"test\.fasta: 1 record\(s\) without a sequence: .* \(T1\.\.\.\)$"):
        _read_label_sets(FinetuneConfig(task="ss3", model="x"), get_task("ss3"), labels, seqs, valid, [test])

"""`protrans finetune`: LoRA adapters that start as a no-op and merge exactly, gradients only where
they belong, a learnable synthetic task (labels that follow from the residues, as test_heads_fit
builds them), `predict --fasta` on the head it writes, and its refusals. Tiny random models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from protrans_cli.heads.lora import LoRALinear, add_lora, lora_modules, merged_copy
from protrans_cli.heads.tasks import SS3, ss8_to_ss3
from protrans_cli.models import FAMILIES

from test_heads_fit import RULE8, _netsurfp, _seqs

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


def test_predict_fasta_on_the_head_scores_what_finetune_reported(finetuned, data, run_cli, tmp_path):
    from protrans_cli.heads.labels import read_labels

    records = read_labels(data / "test.csv").records
    with open(tmp_path / "test.fa", "w") as fh:
        for r in records:
            fh.write(f">{r.id}\n{r.sequence}\n")
    r = run_cli("predict", finetuned / "head", "--fasta", tmp_path / "test.fa", "-o", tmp_path / "p.txt")
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "p.txt").read_text().split()
    predicted = dict(zip([x[1:] for x in lines[::2]], lines[1::2]))
    right = total = 0
    for rec in records:
        truth = rec.labels["ss3"]
        right += sum(a == b for a, b in zip(predicted[rec.id], truth))
        total += len(truth)
    metrics = json.loads((finetuned / "head" / "metrics.json").read_text())
    assert total == metrics["test"]["ss3"]["n"] and right / total == pytest.approx(metrics["test"]["ss3"]["accuracy"])


def test_refusals(finetuned, data, run_cli, tmp_path):
    base = ["-m", data / "bert", "--max-epochs", "1", *FAST]
    r = run_cli("finetune", "nope", "--labels", data / "train.csv", "-o", tmp_path / "a", *base)
    assert r.exit_code == 2 and "nope" in r.stderr
    with open(tmp_path / "table.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "label"], ["p1", "a"], ["p2", "b"], ["p3", "a"]])
    r = run_cli("finetune", "protein", "--labels", tmp_path / "table.csv", "-o", tmp_path / "b", *base)
    assert r.exit_code == 1 and "without a sequence" in r.stderr and "--fasta" in r.stderr
    r = run_cli("finetune", "ss3", "--labels", data / "train.csv", "-o", finetuned, *base)
    assert r.exit_code == 2 and "exists" in r.stderr
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
    real, calls = fit._validate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fit, "_validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(**kw), data / "train.csv", tmp_path / "b")
    monkeypatch.setattr(fit, "_validate", real)
    assert (partial_path(tmp_path / "b") / "state.pt").is_file() and not (tmp_path / "b").exists()
    resumed = finetune(FinetuneConfig(resume=True, **kw), data / "train.csv", tmp_path / "b")
    assert [h["valid_loss"] for h in resumed.history] == [h["valid_loss"] for h in whole.history]
    assert resumed.metrics == whole.metrics

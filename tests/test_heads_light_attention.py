"""The Light Attention head (`fit loc --architecture light-attention`): a per-protein task whose
head reads per-residue embeddings. Its network alone (invariant to batching and padding), then
`protrans fit` -> `protrans predict` on a synthetic DeepLoc-style set whose location is decided by
the residue at the N-terminus, with every protein of one composition: the mean embedding cannot
see the rule (the FNN stays at chance), attention over the residues can."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from protrans_cli.heads.fit import FitConfig, fit
from protrans_cli.heads.light_attention import LightAttention
from protrans_cli.heads.tasks import LOCATIONS
from protrans_cli.io.h5 import EmbeddingsReader

torch.set_num_threads(1)

AA = "ACDEFGHIKLMNPQRSTVWY"
MARKERS = {"Nucleus": "K", "Extracellular": "C", "Cell.membrane": "L"}  # the residue at position 0
FAST = ["-j", "1", "--bootstrap", "100", "--lr", "0.01", "--no-plots"]


@pytest.fixture(scope="module")
def terminus_data(tmp_path_factory):
    """DeepLoc FASTA + one-hot per-residue embeddings: every protein holds K, C and L once each
    and 17 other residues, its location named by the one at the N-terminus (membrane U: no Q2)."""
    from protrans_cli.embed import EmbedOptions, embed

    root = tmp_path_factory.mktemp("terminus")
    rng = np.random.default_rng(0)
    rest = [a for a in AA if a not in MARKERS.values()]
    for name, n in (("train", 240), ("test", 60)):
        with open(root / f"{name}.fasta", "w") as fh:
            for i in range(n):
                loc = list(MARKERS)[i % 3]
                body = rng.choice(rest, size=17).tolist() + [m for m in MARKERS.values() if m != MARKERS[loc]]
                rng.shuffle(body)
                fh.write(f">{name}{i} {loc}-U{' test' if name == 'test' else ''}\n{MARKERS[loc]}{''.join(body)}\n")
        embed(root / f"{name}.fasta", root / f"{name}.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    return root


def _fit_la(run_cli, data, head, *extra):
    return run_cli("fit", "loc", "--architecture", "light-attention", "--embeddings", data / "train.h5",
                   "--labels", data / "train.fasta", "--test", data / "test.h5", data / "test.fasta", *FAST,
                   *extra, "-o", head)


def test_light_attention_is_invariant_to_batching_and_padding():
    torch.manual_seed(0)
    model = LightAttention(6, {"loc": 10, "membrane": 2}, hidden=8, kernel=9).eval()
    lengths = [3, 11, 1, 7]
    proteins = [torch.randn(n, 6) for n in lengths]
    x = torch.randn(len(lengths), 14, 6)  # padding holds noise: it must count for nothing
    mask = torch.zeros(len(lengths), 14, dtype=torch.bool)
    for i, p in enumerate(proteins):
        x[i, :len(p)] = p
        mask[i, :len(p)] = True
    with torch.no_grad():
        batched = model(x, mask)
        for i, p in enumerate(proteins):
            alone = model(p[None], torch.ones(1, len(p), dtype=torch.bool))
            for name in batched:
                assert alone[name].shape == (1, {"loc": 10, "membrane": 2}[name])
                torch.testing.assert_close(batched[name][i:i + 1], alone[name], rtol=0, atol=1e-6)
    # trains on a batch of one protein (BatchNorm cannot take statistics of one: the running ones)
    model.train()
    model(proteins[0][None], torch.ones(1, 3, dtype=torch.bool))["loc"].sum().backward()
    with pytest.raises(ValueError, match="odd"):
        LightAttention(6, {"loc": 10}, kernel=8)


def test_fit_loc_light_attention_then_predict_round_trip(run_cli, terminus_data, tmp_path):
    head = tmp_path / "la"
    r = _fit_la(run_cli, terminus_data, head)
    assert r.exit_code == 0, r.stderr
    config = json.loads((head / "config.json").read_text())
    assert config["architecture"] == "light-attention" and config["kind"] == "per_protein"
    assert config["format_version"] == 2 and config["hyperparameters"]["kernel"] == 9
    assert config["hyperparameters"]["standardise"] is False
    assert [o["name"] for o in config["task"]["outputs"]] == ["loc"]  # every membrane label is U
    summary = json.loads((head / "metrics.json").read_text())
    assert summary["test"]["loc"]["metric"] == "Q10" and summary["test"]["loc"]["n"] == 60

    out = tmp_path / "la.tsv"
    r = run_cli("predict", head, "--embeddings", terminus_data / "test.h5", "-o", out,
                "--labels", terminus_data / "test.fasta", "--metrics", tmp_path / "m", "--no-plots")
    assert r.exit_code == 0, r.stderr
    with out.open() as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    assert len(rows) == 60 and list(rows[0])[:3] == ["id", "loc", f"loc:{LOCATIONS[0]}"]
    for row in rows:
        assert sum(float(row[f"loc:{c}"]) for c in LOCATIONS) == pytest.approx(1, abs=2e-5)
    # predict --labels scores what fit --test scored, CI and all
    scored = json.loads((tmp_path / "m" / "test.json").read_text())["outputs"]["loc"]
    assert scored["accuracy"] == summary["test"]["loc"]["accuracy"] and scored["ci95"] == summary["test"]["loc"]["ci95"]
    headers = [line[1:].split() for line in (terminus_data / "test.fasta").read_text().splitlines()[::2]]
    truth = {ident: label.split("-")[0] for ident, label, *_ in headers}
    assert np.mean([row["loc"] == truth[row["id"]] for row in rows]) == pytest.approx(scored["accuracy"])

    # predict --fasta embeds per residue (the head's input, not its task's kind) and writes the same
    r = run_cli("predict", head, "--fasta", terminus_data / "test.fasta", "-o", tmp_path / "fasta.tsv")
    assert r.exit_code == 0, r.stderr
    with (tmp_path / "fasta.tsv").open() as table:
        by_id = {row["id"]: row for row in csv.DictReader(table, delimiter="\t")}
    assert by_id == {row["id"]: row for row in rows}  # (in the FASTA's order, the file's rows in its own)

    # the Python API on arrays in memory gives what predict wrote
    from protrans_cli import predict_embeddings

    with EmbeddingsReader(terminus_data / "test.h5") as reader:
        arrays = {i: reader.get(i) for i in reader.ids()}
    found = predict_embeddings(head, arrays)
    for row in rows:
        assert found[row["id"]]["loc"].labels == row["loc"]
        np.testing.assert_allclose(found[row["id"]]["loc"].probabilities,
                                   [float(row[f"loc:{c}"]) for c in LOCATIONS], rtol=1e-5, atol=1e-6)
    from protrans_cli.errors import UsageError

    with pytest.raises(UsageError, match=r"the head takes \(L, D\)"):  # one vector: nothing to attend over
        predict_embeddings(head, {"P": np.zeros(21, np.float32)})


def test_a_light_attention_head_reloads_to_identical_predictions(terminus_data, tmp_path):
    """Built on the meta device and given the stored tensors (BatchNorm's running statistics too):
    the reloaded ensemble predicts what the fitted one did, bit for bit."""
    from protrans_cli.heads.data import ResidueData
    from protrans_cli.heads.fit import predict_data
    from protrans_cli.heads.model import load_head
    from protrans_cli.heads.predict import _all_items

    result = fit(FitConfig(task="loc", architecture="light-attention", max_epochs=3, ensemble=2, lr=0.01,
                           threads=1, n_bootstrap=10, plots=False),
                 terminus_data / "train.h5", terminus_data / "train.fasta", tmp_path / "la")
    ensemble, task, config = load_head(result.head_dir)
    assert len(ensemble.members) == 2 and type(ensemble.members[0]).__name__ == "LightAttention"
    norm = ensemble.members[0].norm
    assert norm.num_batches_tracked.item() > 0 and not torch.equal(norm.running_var, torch.ones_like(norm.running_var))
    with EmbeddingsReader(terminus_data / "test.h5") as reader:
        items, _ = _all_items(reader, "per_residue")
    data = ResidueData(terminus_data / "test.h5", items)
    first = predict_data(ensemble, task, data, max_residues=100)
    again = predict_data(load_head(result.head_dir)[0], task, data, max_residues=5000)  # other batches
    for a, b in zip(first["loc"], again["loc"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_light_attention_learns_a_rule_the_mean_cannot_see(run_cli, terminus_data, tmp_path):
    """The location is the N-terminal residue's, and every protein has one composition: the FNN on
    the mean embedding sits at chance (1/3), Light Attention's convolution sees the terminus
    (the zeros past the sequence's start) and learns it."""
    assert _fit_la(run_cli, terminus_data, tmp_path / "la").exit_code == 0
    r = run_cli("fit", "loc", "--embeddings", terminus_data / "train.h5", "--labels", terminus_data / "train.fasta",
                "--test", terminus_data / "test.h5", terminus_data / "test.fasta", *FAST, "-o", tmp_path / "fnn")
    assert r.exit_code == 0, r.stderr
    la = json.loads((tmp_path / "la" / "metrics.json").read_text())["test"]["loc"]["accuracy"]
    fnn = json.loads((tmp_path / "fnn" / "metrics.json").read_text())["test"]["loc"]["accuracy"]
    assert la >= 0.75 and fnn <= 0.55 and la - fnn >= 0.3, (la, fnn)  # (seeds 0-4 here: LA 0.85-0.97, FNN 0.27-0.48)


def test_the_architecture_is_refused_where_it_does_not_fit(run_cli, terminus_data, tmp_path):
    r = run_cli("fit", "ss3", "--architecture", "light-attention", "--embeddings", terminus_data / "train.h5",
                "--labels", terminus_data / "train.fasta", "-o", tmp_path / "h")
    assert r.exit_code == 2 and "ss3 is a per-residue task, whose head is cnn" in r.stderr, r.stderr
    r = run_cli("fit", "loc", "--architecture", "cnn", "--embeddings", terminus_data / "train.h5",
                "--labels", terminus_data / "train.fasta", "-o", tmp_path / "h")
    assert r.exit_code == 2 and "loc is a per-protein task, whose head is fnn or light-attention" in r.stderr
    assert not (tmp_path / "h").exists() and not (tmp_path / "h.partial").exists()


def test_light_attention_on_per_protein_embeddings_says_to_embed_per_residue(run_cli, terminus_data, tmp_path):
    from protrans_cli.embed import EmbedOptions, embed

    pooled = tmp_path / "pooled.h5"
    embed(terminus_data / "train.fasta", pooled, EmbedOptions(model="onehot", per_residue=False, threads=1))
    r = run_cli("fit", "loc", "--architecture", "light-attention", "--embeddings", pooled,
                "--labels", terminus_data / "train.fasta", "-o", tmp_path / "h")
    assert r.exit_code == 1, r.stderr
    assert "has no per_residue embeddings" in r.stderr and "light-attention head reads every residue" in r.stderr
    assert "embed without --per-protein" in r.stderr
    # and predict with a light-attention head on such a file says the same
    fit(FitConfig(task="loc", architecture="light-attention", max_epochs=1, threads=1, n_bootstrap=10, plots=False),
        terminus_data / "train.h5", terminus_data / "train.fasta", tmp_path / "la")
    r = run_cli("predict", tmp_path / "la", "--embeddings", pooled, "-o", tmp_path / "p.csv")
    assert r.exit_code == 1 and "embed without --per-protein" in r.stderr, r.stderr


def test_an_older_protrans_refuses_a_light_attention_head_and_older_heads_load_as_fnn(terminus_data, tmp_path,
                                                                                       monkeypatch):
    from protrans_cli.errors import ModelError
    from protrans_cli.heads import model

    common = dict(task="loc", max_epochs=1, threads=1, n_bootstrap=10, plots=False)
    fit(FitConfig(architecture="light-attention", **common), terminus_data / "train.h5",
        terminus_data / "train.fasta", tmp_path / "la")
    fit(FitConfig(**common), terminus_data / "train.h5", terminus_data / "train.fasta", tmp_path / "fnn")
    fnn_config = json.loads((tmp_path / "fnn" / "config.json").read_text())
    assert fnn_config["format_version"] == 1 and fnn_config["architecture"] == "fnn"
    # a head written before heads recorded their architecture: its task's default
    del fnn_config["architecture"]
    (tmp_path / "fnn" / "config.json").write_text(json.dumps(fnn_config))
    assert type(model.load_head(tmp_path / "fnn")[0].members[0]).__name__ == "ProteinFNN"
    # a protrans that reads format 1 only refuses the LA head, naming the remedy
    monkeypatch.setattr(model, "FORMAT_VERSION", 1)
    with pytest.raises(ModelError, match="format_version 2: this protrans reads heads of formats? (up to )?1 "):
        model.load_head(tmp_path / "la")


def test_an_interrupted_light_attention_fit_resumes_to_the_uninterrupted_head(terminus_data, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from protrans_cli.heads import fit as fit_module

    cfg = dict(task="loc", architecture="light-attention", max_epochs=4, patience=10, lr=0.01, threads=1,
               n_bootstrap=10, plots=False)
    fit(FitConfig(**cfg), terminus_data / "train.h5", terminus_data / "train.fasta", tmp_path / "whole")
    real = fit_module.FitState.save_epoch

    def stop_after_two(self, current):
        real(self, current)
        if current["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_module.FitState, "save_epoch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit(FitConfig(**cfg), terminus_data / "train.h5", terminus_data / "train.fasta", tmp_path / "cut")
    monkeypatch.setattr(fit_module.FitState, "save_epoch", real)
    with pytest.raises(Exception, match="other settings or inputs \\(architecture"):
        fit(FitConfig(**{**cfg, "architecture": "fnn"}, resume=True), terminus_data / "train.h5",
            terminus_data / "train.fasta", tmp_path / "cut")
    fit(FitConfig(**cfg, resume=True), terminus_data / "train.h5", terminus_data / "train.fasta", tmp_path / "cut")
    whole, cut = load_file(str(tmp_path / "whole" / "weights.safetensors")), load_file(str(tmp_path / "cut" /
                                                                                           "weights.safetensors"))
    assert whole.keys() == cut.keys() and any("norm.running_mean" in k for k in whole)
    for key in whole:
        assert torch.equal(whole[key], cut[key]), key


def test_a_protein_of_no_residue_is_refused_not_trained_on_as_nan(tmp_path):
    """Another tool's flat file may hold an (0, D) array: a softmax over no residue is NaN. fit
    trained on it (train loss nan: every weight NaN, a head written all the same) and predict
    wrote it a class and NaN probabilities; both now name the protein, as the FNN's error does."""
    from protrans_cli.errors import InputError
    from conftest import flat_files_with_an_empty_protein

    from protrans_cli.heads.predict import evaluate_head, predict

    path, whole = tmp_path / "flat.h5", tmp_path / "whole.h5"
    flat_files_with_an_empty_protein(whole, path, 8)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"p{i},{'ab'[i % 2]}\n" for i in range(8)) + "empty,a\n")
    cfg = dict(task="protein", architecture="light-attention", max_epochs=1, threads=1, n_bootstrap=10, plots=False)
    with pytest.raises(InputError, match="'empty'.*no residue.*nothing to pool"):
        fit(FitConfig(**cfg), path, labels, tmp_path / "h")
    head = fit(FitConfig(**cfg, on_mismatch="missing"), whole, labels, tmp_path / "ok").head_dir
    with pytest.raises(InputError, match="'empty'.*no residue"):
        predict(head, path, tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(InputError, match="'empty'.*no residue"):  # predict --labels' scoring too
        evaluate_head(head, path, labels, n_boot=10)
    # in memory too: a (0, D) array among others is named (it was argmax of an empty sequence)
    from protrans_cli import predict_embeddings
    from protrans_cli.errors import UsageError

    with pytest.raises(UsageError, match=r"protein 'e': an embedding of no residue has nothing to attend to"):
        predict_embeddings(head, {"p": np.ones((3, 4), np.float32), "e": np.zeros((0, 4), np.float32)})


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_threads_help_says_what_a_light_attention_head_gets(run_cli, command, monkeypatch):
    """A Light Attention head is per-protein but convolves every residue: it takes min(cores, 4)
    threads as the CNN does (resolve_threads' small_work is the FNN's alone); -j's help said "1
    for a per-protein one"."""
    import re

    from protrans_cli.threads import resolve_threads

    monkeypatch.delenv("PROTRANS_THREADS", raising=False)
    r = run_cli(command, "--help")
    text = " ".join(r.stdout.split())
    helped = re.search(r"-j, --threads INTEGER (.*?)\]", text).group(1)
    assert "light-attention" in helped and "1 for an FNN" in helped and "per-protein one" not in helped
    assert resolve_threads(None, small_work=False) >= 1 and resolve_threads(None, small_work=True) == 1


def test_an_architecture_its_task_cannot_take_is_said_as_load_head_says_it_by_predict_sequences(tmp_path):
    """predict_sequences (and predict --fasta's embedding options) of a head whose config names an
    architecture its task cannot take said "not a readable head directory (ValueError)";
    load_head, and so `predict --embeddings`, said which architecture and task."""
    from protrans_cli.errors import ModelError
    from protrans_cli.heads.arrays import predict_sequences
    from protrans_cli.heads.tasks import get_task

    head = tmp_path / "head"
    head.mkdir()
    (head / "config.json").write_text(json.dumps({"task": get_task("loc").to_json(), "kind": "per_protein",
                                                   "architecture": "cnn", "embedding": {"model": "onehot"}}))
    with pytest.raises(ModelError) as caught:
        predict_sequences(head, {"a": "MKV"})
    assert caught.value.path == str(head / "config.json")
    assert caught.value.message == ("head config is incomplete or unreadable (architecture 'cnn' is not one of "
                                    "fnn, light-attention, linear (a per_protein task))")


def test_a_training_batch_of_one_is_normalised_as_evaluation_normalises_it():
    # BatchNorm has no statistics of one protein: the running ones, and the layer's own scale and
    # shift (learnt: not 1 and 0 after training), as in eval mode
    torch.manual_seed(0)
    model = LightAttention(6, {"loc": 10}, hidden=8, kernel=3, dropout=0.0)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 2.0)
        model.norm.bias.normal_()
        model.norm.running_mean.normal_()
        model.norm.running_var.uniform_(0.5, 2.0)
    x, mask = torch.randn(1, 5, 6), torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        trained = model.train()(x, mask)["loc"]
        evaluated = model.eval()(x, mask)["loc"]
    torch.testing.assert_close(trained, evaluated, rtol=0, atol=1e-6)

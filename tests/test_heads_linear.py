"""The linear probe (`fit --architecture linear`): one affine map of each residue's row (per-residue
tasks) or of the standardised per-protein vector (per-protein tasks, `value` a linear regression).
Checked against torch.nn.functional.linear of the saved weights, against scikit-learn's
LogisticRegression and LinearRegression on the same standardised inputs, and on linearly separable
synthetic sets (one-hot embeddings whose secondary structure is a function of the residue)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protrans_cli.heads.fit import FitConfig, fit
from protrans_cli.heads.linear import LinearHead
from protrans_cli.heads.model import load_head
from protrans_cli.heads.tasks import SS3, SS8
from protrans_cli.io.h5 import EmbeddingsReader, EmbeddingsWriter

torch.set_num_threads(1)

AA = "ACDEFGHIKLMNPQRSTVWY"
FAST = ["-j", "1", "--bootstrap", "50", "--no-plots"]


@pytest.fixture(scope="module")
def ss_data(tmp_path_factory):
    """NetSurfP CSVs whose 8 states follow the residue, with one-hot per-residue embeddings:
    linearly separable residue by residue."""
    from test_heads_fit import _netsurfp, _seqs

    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.labels import read_labels, write_embed_fasta

    root = tmp_path_factory.mktemp("linear_ss")
    rng = np.random.default_rng(0)
    for name, n in (("train", 60), ("test", 20)):
        _netsurfp(root / f"{name}.csv", _seqs(rng, n))
        with open(root / f"{name}.fa", "wb") as fh:
            write_embed_fasta(read_labels(root / f"{name}.csv"), fh)
        embed(root / f"{name}.fa", root / f"{name}.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    return root


def _protein_sets(root, *, dim=12, classes=3, sizes=(("train", 600), ("valid", 300), ("test", 200)), noise=1.0,
                  seed=0, value=False):
    """Per-protein vectors (features of unequal scales and offsets) with id,label tables: the label
    is the argmax of a random linear map plus Gumbel noise (multinomial logistic regression's own
    model), or for `value` the map's first column plus Gaussian noise. Returns {set: (ids, X, y)}."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(dim, classes))
    scales, offsets = np.linspace(0.2, 5, dim), rng.normal(size=dim) * 3
    sets = {}
    for name, n in sizes:
        x = (rng.normal(size=(n, dim)) * scales + offsets).astype(np.float32)
        z = ((x - offsets) / scales) @ weights
        if value:
            y = [f"{v:.6f}" for v in 10 + 4 * (z[:, 0] + noise * rng.normal(size=n))]
        else:
            y = ["ABCDEFGH"[c] for c in (z + noise * rng.gumbel(size=z.shape)).argmax(1)]
        ids = [f"{name}{i}" for i in range(n)]
        with EmbeddingsWriter(root / f"{name}.h5", kinds=("per_protein",), attrs={"model": "synthetic"}) as w:
            for ident, v in zip(ids, x):
                w.write(ident, ident, "MKV", per_protein=v)
        (root / f"{name}.csv").write_text("id,label\n" + "".join(f"{i},{label}\n" for i, label in zip(ids, y)))
        sets[name] = (ids, x, y)
    return sets


def test_linear_head_is_one_affine_map_of_each_residue_row():
    """Per residue: logits of residue i = W x_i + b, whatever the other rows (and padding) hold."""
    torch.manual_seed(0)
    head = LinearHead(6, {"ss3": 3, "ss8": 8}, per_residue=True).eval()
    x, mask = torch.randn(2, 9, 6), torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    out = head(x, mask)
    for name, n in (("ss3", 3), ("ss8", 8)):
        assert out[name].shape == (2, 9, n)
        torch.testing.assert_close(out[name], F.linear(x, head.heads[name].weight, head.heads[name].bias))
    changed = x.clone()
    changed[0, 4] = torch.randn(6) * 100  # row j = 4 of protein 0
    again = head(changed, mask)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[0, 4] = False
    torch.testing.assert_close(again["ss3"][keep], out["ss3"][keep], rtol=0, atol=0)
    assert not torch.equal(again["ss3"][0, 4], out["ss3"][0, 4])
    assert {k for k, _ in head.named_parameters()} == {"heads.ss3.weight", "heads.ss3.bias", "heads.ss8.weight",
                                                        "heads.ss8.bias"}
    assert not list(head.buffers())  # (no standardisation per residue)
    with pytest.raises(ValueError, match="per-residue"):
        head.standardise_with(torch.randn(4, 6))


def test_fit_ss3_ss8_linear_separable_then_predict_is_f_linear(run_cli, ss_data, tmp_path):
    """On one-hot embeddings whose states follow the residue the probe reaches Q3 = Q8 = 1 on test,
    and predict's probabilities are softmax(F.linear(x, W, b)) of the saved weights."""
    from safetensors.torch import load_file

    head = tmp_path / "probe"
    r = run_cli("fit", "ss3+ss8", "--architecture", "linear", "--embeddings", ss_data / "train.h5", "--labels",
                ss_data / "train.csv", "--test", ss_data / "test.h5", ss_data / "test.csv", "--lr", "0.05",
                "--max-epochs", "40", "--kernel", "5", "--hidden", "8", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    assert ("--kernel, --hidden do nothing for a linear head (one affine map of each residue's row): ignored"
            in r.stderr)
    config = json.loads((head / "config.json").read_text())
    assert config["architecture"] == "linear" and config["format_version"] == 3
    assert config["hyperparameters"]["standardise"] is False
    summary = json.loads((head / "metrics.json").read_text())
    assert summary["test"]["ss3"]["accuracy"] == 1.0 and summary["test"]["ss8"]["accuracy"] == 1.0
    weights = load_file(str(head / "weights.safetensors"))
    assert set(weights) == {f"members.0.heads.{o}.{p}" for o in ("ss3", "ss8") for p in ("weight", "bias")}
    probs = tmp_path / "p.h5"
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "p.fa", "--probabilities",
                probs)
    assert r.exit_code == 0, r.stderr
    import h5py

    with EmbeddingsReader(ss_data / "test.h5") as reader, h5py.File(probs) as h5:
        for output, classes in (("ss3", SS3), ("ss8", SS8)):
            assert h5.attrs[f"classes_{output}"] == "".join(classes)
            for ds in h5[output].values():
                x = torch.from_numpy(reader.get(ds.attrs["id"]))
                want = torch.softmax(F.linear(x, weights[f"members.0.heads.{output}.weight"],
                                              weights[f"members.0.heads.{output}.bias"]), dim=-1)
                np.testing.assert_allclose(ds[()], want.numpy(), rtol=1e-4, atol=1e-5)


def test_fit_protein_linear_agrees_with_sklearn_logistic_regression(tmp_path):
    """The fitted per-protein probe's test predictions agree with scikit-learn's LogisticRegression
    on the same standardised training vectors at the same L2 penalty (Adam's weight decay wd on the
    mean loss is C = 1 / (wd N)) on >= 95% of proteins; its logits are F.linear of the standardised
    input with the saved weights."""
    from safetensors.torch import load_file
    from sklearn.linear_model import LogisticRegression

    sets = _protein_sets(tmp_path)
    _, x_train, y_train = sets["train"]
    ids, x_test, y_test = sets["test"]
    wd = 1e-3
    config = FitConfig(task="protein", architecture="linear", lr=0.02, weight_decay=wd, threads=1, n_bootstrap=10,
                       plots=False)
    fit(config, tmp_path / "train.h5", tmp_path / "train.csv", tmp_path / "head",
        valid=(tmp_path / "valid.h5", tmp_path / "valid.csv"))
    ensemble, task, head_config = load_head(tmp_path / "head")
    assert head_config["hyperparameters"]["standardise"] is True
    probs = ensemble.probabilities(torch.from_numpy(x_test), None)["label"].numpy()
    ours = np.array(task.outputs[0].classes)[probs.argmax(1)]

    weights = load_file(str(tmp_path / "head" / "weights.safetensors"))
    shift, scale = weights["members.0.shift"], weights["members.0.scale"]
    torch.testing.assert_close(shift, torch.from_numpy(x_train.mean(0)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scale, torch.from_numpy(x_train.std(0, ddof=1)), rtol=1e-4, atol=1e-5)
    logits = F.linear((torch.from_numpy(x_test) - shift) / scale, weights["members.0.heads.label.weight"],
                      weights["members.0.heads.label.bias"])
    np.testing.assert_allclose(probs, torch.softmax(logits, -1).numpy(), rtol=1e-4, atol=1e-6)

    mean, std = x_train.mean(0), x_train.std(0, ddof=1)
    reference = LogisticRegression(C=1 / (wd * len(x_train)), max_iter=5000).fit((x_train - mean) / std, y_train)
    theirs = reference.predict((x_test - mean) / std)
    # (0.985 here: 197 of 200; both about 0.79 right, the labels being noisy)
    assert np.mean(ours == theirs) >= 0.95, (np.mean(ours == theirs), np.mean(ours == y_test),
                                             np.mean(theirs == y_test))


def test_fit_value_linear_is_linear_regression(tmp_path):
    """`value` with the probe: least squares on z-scored targets, predictions scaled back; close to
    scikit-learn's LinearRegression on the test proteins."""
    from sklearn.linear_model import LinearRegression

    sets = _protein_sets(tmp_path, value=True, noise=0.3, sizes=(("train", 400), ("valid", 200), ("test", 100)))
    _, x_train, y_train = sets["train"]
    _, x_test, _ = sets["test"]
    config = FitConfig(task="value", architecture="linear", lr=0.02, threads=1, n_bootstrap=10, plots=False)
    result = fit(config, tmp_path / "train.h5", tmp_path / "train.csv", tmp_path / "head",
                 valid=(tmp_path / "valid.h5", tmp_path / "valid.csv"))
    ensemble, task, _ = load_head(tmp_path / "head")
    ours = ensemble.probabilities(torch.from_numpy(x_test), None)["value"].numpy().ravel()
    theirs = LinearRegression().fit(x_train, np.asarray(y_train, dtype=float)).predict(x_test)
    spread = np.ptp(theirs)
    assert np.max(np.abs(ours - theirs)) < 0.05 * spread, np.max(np.abs(ours - theirs)) / spread
    assert result.metrics["valid"]["value"]["spearman"] > 0.95


def test_fit_loc_linear_predict_and_options(run_cli, tmp_path):
    """loc (two outputs) with the probe through the CLI: predict reads it back; the CNN's
    --max-residues and the FNN's --hidden, --dropout are said to do nothing for it, and --resume
    does not compare them; a search over --hidden alone is refused; predict --max-residues names
    the head."""
    rng = np.random.default_rng(3)
    from protrans_cli.heads.tasks import LOCATIONS

    for name, n in (("train", 90), ("test", 30)):
        with EmbeddingsWriter(tmp_path / f"{name}.h5", kinds=("per_protein",), attrs={"model": "synthetic"}) as w, \
                open(tmp_path / f"{name}.fasta", "w") as fh:
            for i in range(n):
                loc = i % 3
                v = rng.normal(size=8).astype(np.float32)
                v[loc] += 4
                w.write(f"{name}{i}", f"{name}{i}", "MKV", per_protein=v)
                fh.write(f">{name}{i} {LOCATIONS[loc]}-{'MS'[i % 2]}\nMKV\n")
    base = ("fit", "loc", "--embeddings", tmp_path / "train.h5", "--labels", tmp_path / "train.fasta", "--lr", "0.05",
            *FAST)
    r = run_cli(*base, "--architecture", "linear", "--max-residues", "100", "--hidden", "8", "--dropout", "0.1",
                "--test", tmp_path / "test.h5", tmp_path / "test.fasta", "-o", tmp_path / "head")
    assert r.exit_code == 0, r.stderr
    assert ("--max-residues, --hidden, --dropout do nothing for a linear head (one affine map of the protein's "
            "vector): ignored") in r.stderr
    assert json.loads((tmp_path / "head" / "metrics.json").read_text())["test"]["loc"]["accuracy"] > 0.9
    # (options it does not read are not compared by --resume: the finished head is taken as it is)
    r = run_cli(*base, "--architecture", "linear", "--test", tmp_path / "test.h5", tmp_path / "test.fasta",
                "--resume", "-o", tmp_path / "head")
    assert r.exit_code == 0 and "other settings" not in r.stderr, r.stderr
    r = run_cli("predict", tmp_path / "head", "--embeddings", tmp_path / "test.h5", "--max-residues", "10",
                "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    assert "--max-residues does nothing for a per-protein linear head" in r.stderr
    rows = list(csv.DictReader((tmp_path / "p.csv").read_text().splitlines()))
    assert len(rows) == 30 and {"loc", "membrane"} <= set(rows[0])
    r = run_cli(*base, "--architecture", "linear", "--search", "hidden=8,16", "-o", tmp_path / "search")
    assert r.exit_code == 2 and "a linear head does not read it" in r.stderr, r.stderr
    r = run_cli(*base, "--search", "architecture=fnn,linear", "--search", "hidden=8,16", "--max-epochs", "2",
                "-o", tmp_path / "search")
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("architecture, recorded", [("linear", {"hidden": None, "kernel": None, "dropout": None}),
                                                    ("fnn", {"hidden": 8, "kernel": None, "dropout": 0.1})])
def test_a_head_records_only_the_sizes_its_network_has_and_older_heads_still_load(tmp_path, architecture, recorded):
    """A linear head recorded `"hidden": 32, "kernel": 7` and an FNN `"kernel": 7`, sizes neither
    network has: they are null now. A head written before (the values recorded) loads as before and
    gives the same probabilities; a CNN-only size missing from an FNN's config is not needed."""
    sets = _protein_sets(tmp_path, sizes=(("train", 60), ("test", 20)))
    config = FitConfig(task="protein", architecture=architecture, hidden=8, kernel=5, dropout=0.1, max_epochs=2,
                       threads=1, n_bootstrap=10, plots=False)
    fit(config, tmp_path / "train.h5", tmp_path / "train.csv", tmp_path / "head")
    head_config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert {k: head_config["hyperparameters"][k] for k in recorded} == recorded
    assert head_config["format_version"] == (3 if architecture == "linear" else 1)
    x = torch.from_numpy(sets["test"][1])
    ensemble, _, _ = load_head(tmp_path / "head")
    want = ensemble.probabilities(x, None)["label"]
    old = json.loads(json.dumps(head_config))
    old["hyperparameters"].update(hidden=8 if architecture == "fnn" else 32, kernel=7, dropout=0.1 if architecture ==
                                  "fnn" else 0.25)
    (tmp_path / "head" / "config.json").write_text(json.dumps(old))
    ensemble, _, _ = load_head(tmp_path / "head")
    torch.testing.assert_close(ensemble.probabilities(x, None)["label"], want, rtol=0, atol=0)
    if architecture == "linear":  # (and none of the three at all)
        for key in recorded:
            del old["hyperparameters"][key]
        (tmp_path / "head" / "config.json").write_text(json.dumps(old))
        ensemble, _, _ = load_head(tmp_path / "head")
        torch.testing.assert_close(ensemble.probabilities(x, None)["label"], want, rtol=0, atol=0)

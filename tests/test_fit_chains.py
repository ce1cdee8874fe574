"""`protrans fit` on complexes (embed --chains separate: a record's chains joined by ':'): a
per-residue head trains, validates and is tested on each chain as a protein of its own, as
`protrans predict` reads them; compared with a fit on the same chains written as separate proteins
(the same batches, so the same weights), and with one on the chains joined into one sequence
(a CNN sliding across the chain break: other weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

AA = "ACDEFGHIKLMNPQRSTVWY"


def _ss3(seq: str) -> str:
    return "".join("H" if c in "AELMQKR" else "E" if c in "VIYFWT" else "C" for c in seq)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Each set three ways: complexes (`train00` with chains `train00a`, `train00b`...), the chains as separate
    proteins, and each complex's chains joined into one sequence; one-hot rows, ss3 labels."""
    from protrans_cli.embed import EmbedOptions, embed

    root = tmp_path_factory.mktemp("fit_chains")
    rng = np.random.default_rng(3)
    for name, n in (("train", 14), ("valid", 4), ("test", 5)):
        complexes = [["".join(rng.choice(list(AA), size=int(rng.integers(8, 30))))
                      for _ in range(int(rng.integers(1, 4)))] for _ in range(n)]
        for way in ("complex", "chains", "joined"):
            fasta, labels = [], []
            for k, chains in enumerate(complexes):
                if way == "chains":
                    for c, chain in zip("abc", chains):
                        fasta.append(f">{name}{k:02d}{c}\n{chain}\n")
                        labels.append(f">{name}{k:02d}{c}\n{_ss3(chain)}\n")
                else:
                    glue = ":" if way == "complex" else ""
                    fasta.append(f">{name}{k:02d}\n{glue.join(chains)}\n")
                    labels.append(f">{name}{k:02d}\n{glue.join(map(_ss3, chains))}\n")
            (root / way).mkdir(exist_ok=True)
            (root / way / f"{name}.seq.fa").write_text("".join(fasta))
            (root / way / f"{name}.fa").write_text("".join(labels))
            embed(root / way / f"{name}.seq.fa", root / way / f"{name}.h5",
                  EmbedOptions(model="onehot", per_protein=False, threads=1,
                               **({"chains": "separate"} if way == "complex" else {})))
        (root / f"{name}.complexes.json").write_text(json.dumps(complexes))
    return root


def _fit(root, way: str, out, **settings):
    from protrans_cli.heads.fit import FitConfig, fit

    config = FitConfig(task="ss3", max_epochs=2, max_residues=120, lr=0.02, threads=1, n_bootstrap=10, **settings)
    pair = (lambda name: (root / way / f"{name}.h5", root / way / f"{name}.fa"))
    return fit(config, *pair("train"), out, valid=pair("valid"), tests=[pair("test")])


def test_fit_reads_a_complex_chain_by_chain(sets, tmp_path):
    from safetensors.torch import load_file

    got = _fit(sets, "complex", tmp_path / "complex")
    ref = _fit(sets, "chains", tmp_path / "chains")
    _fit(sets, "joined", tmp_path / "joined")
    weights = {k: load_file(str(tmp_path / k / "weights.safetensors")) for k in ("complex", "chains", "joined")}
    # the same batches of the same rows and labels: the same training, epoch by epoch
    assert [h["train_loss"] for h in got.history] == [h["train_loss"] for h in ref.history]
    for name, w in weights["complex"].items():
        torch.testing.assert_close(w, weights["chains"][name], rtol=0, atol=0)
    # streamed from the file (no cache: each chain's rows cut from its complex's dataset as read)
    streamed = _fit(sets, "complex", tmp_path / "streamed", cache_bytes=0)
    assert [h["train_loss"] for h in streamed.history] == [h["train_loss"] for h in got.history]
    for name, w in load_file(str(tmp_path / "streamed" / "weights.safetensors")).items():
        torch.testing.assert_close(w, weights["complex"][name], rtol=0, atol=0)
    # the chains joined into one sequence (a CNN sliding across the break): another training
    assert any(not torch.equal(w, weights["joined"][name]) for name, w in weights["complex"].items())

    complexes = json.loads((sets / "test.complexes.json").read_text())
    residues = sum(len(c) for chains in complexes for c in chains)
    for name in ("valid", "test"):
        g, r = got.metrics[name]["ss3"], ref.metrics[name]["ss3"]
        assert g["accuracy"] == r["accuracy"] and g["n"] == r["n"]  # every chain's residues, pooled
    assert got.metrics["test"]["ss3"]["n"] == residues
    # a complex is scored as one protein of all its chains' residues, as predict --labels scores it
    assert got.metrics["test"]["ss3"]["n_proteins"] == len(complexes)
    assert ref.metrics["test"]["ss3"]["n_proteins"] == sum(map(len, complexes))
    config = json.loads((tmp_path / "complex" / "config.json").read_text())
    assert config["training"]["proteins"] == 14


def test_predict_labels_scores_what_fit_scored(sets, tmp_path, run_cli):
    """predict --labels on the test complexes reports the test score and CI fit reported (both read
    the complexes chain by chain, and score each complex whole)."""
    result = _fit(sets, "complex", tmp_path / "head")
    r = run_cli("predict", tmp_path / "head", "--embeddings", sets / "complex" / "test.h5",
                "--labels", sets / "complex" / "test.fa")
    assert r.exit_code == 0, r.stderr
    m = result.metrics["test"]["ss3"]
    assert f"Q3 {m['accuracy']:.4f} (95% CI {m['ci95'][0]:.4f}-{m['ci95'][1]:.4f})" in r.stderr, r.stderr
    assert f"{m['n']} positions in {m['n_proteins']} proteins" in r.stderr


def test_held_out_and_folds_keep_a_complexs_chains_together(sets, tmp_path):
    from protrans_cli.heads.fit import FitConfig, fit

    base = dict(task="ss3", max_epochs=1, max_residues=120, threads=1, n_bootstrap=10)
    train = (sets / "complex" / "train.h5", sets / "complex" / "train.fa")
    fit(FitConfig(**base, valid_fraction=0.3), *train, tmp_path / "held")
    config = json.loads((tmp_path / "held" / "config.json").read_text())
    held = config["training"]["held_out"]
    assert len(held) == len(set(held)) == round(0.3 * 14)  # complexes, each once

    from protrans_cli.heads.data import ChainRows
    from protrans_cli.heads.fit import _load, _proteins, cv_folds
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    task = get_task("ss3").with_classes_from(read_labels(train[1]).records)
    data, _ = _load(FitConfig(**base), train[0], read_labels(train[1]), task)
    assert any(isinstance(m, ChainRows) for m in data.items)
    units = _proteins(data.items)
    assert len(units) == 14 and all(len({data.items[i].id for i in u}) == 1 for u in units)
    folds = cv_folds(FitConfig(**base, folds=3), task, data, train[1])
    fold_of = {i: k for k, fold in enumerate(folds) for i in fold}
    assert sorted(fold_of) == list(range(len(data.items)))
    for u in units:  # each complex's chains in one fold
        assert len({fold_of[i] for i in u}) == 1
    result = fit(FitConfig(**base, folds=3), *train, tmp_path / "cv")
    assert result.metrics["cv"]["ss3"]["n_proteins"] == 14
    recorded = json.loads((tmp_path / "cv" / "config.json").read_text())["training"]["folds"]
    assert sorted(i for fold in recorded for i in fold) == [f"train{k:02d}" for k in range(14)]


def test_finetune_refuses_a_complex_by_default(tmp_path):
    from protrans_cli.errors import InputError
    from protrans_cli.heads.finetune import read_sequence_data
    from protrans_cli.heads.tasks import get_task

    labels = tmp_path / "l.fa"
    labels.write_text(">a\nHHH:CC\n")
    fasta = tmp_path / "s.fa"
    fasta.write_text(">a\nAEL:GP\n")
    # (one line naming the file the sequence came from, the record, and the options that read it)
    with pytest.raises(InputError, match=r"s\.fa, record 'a': ':' at residue 4 is a chain break .*"
                                         r"chains='linker' or chains='separate' reads it"):
        read_sequence_data(labels, get_task("ss3"), fasta=fasta)


@pytest.mark.parametrize("layout", ["like its labels", "one digit per residue"])
def test_a_complexs_mask_in_fit_predict_and_finetune(sets, tmp_path, run_cli, layout):
    """--mask beside a complex's labels (`HHH:EE`), laid out like them (':' between the chains) or one
    digit per residue: it was checked against the labels' length counting the ':'s, and refused either
    way. fit on the complexes with it equals fit on their chains written as separate proteins with
    the same mask (the same weights), predict --labels --mask scores what fit scored, and finetune
    reads the same targets."""
    from safetensors.torch import load_file

    from protrans_cli.heads.finetune import FinetuneConfig, read_sequence_data, to_data
    from protrans_cli.heads.tasks import IGNORE, get_task

    rng = np.random.default_rng(5)
    masks = {"complex": [], "chains": []}
    for name in ("train", "valid", "test"):
        for k, chains in enumerate(json.loads((sets / f"{name}.complexes.json").read_text())):
            bits = ["".join(rng.choice(["0", "1", "1"], size=len(c))) for c in chains]
            masks["complex"].append(f">{name}{k:02d}\n{(':' if layout == 'like its labels' else '').join(bits)}\n")
            masks["chains"] += [f">{name}{k:02d}{c}\n{b}\n" for c, b in zip("abc", bits)]
    for way, records in masks.items():
        (tmp_path / f"{way}.mask.fa").write_text("".join(records))
    got = _fit(sets, "complex", tmp_path / "complex", mask_path=str(tmp_path / "complex.mask.fa"))
    ref = _fit(sets, "chains", tmp_path / "chains", mask_path=str(tmp_path / "chains.mask.fa"))
    assert [h["train_loss"] for h in got.history] == [h["train_loss"] for h in ref.history]
    for name, w in load_file(str(tmp_path / "complex" / "weights.safetensors")).items():
        torch.testing.assert_close(w, load_file(str(tmp_path / "chains" / "weights.safetensors"))[name], rtol=0, atol=0)
    m = got.metrics["test"]["ss3"]
    assert m["n"] == ref.metrics["test"]["ss3"]["n"] == sum(r.split("\n")[1].count("1") for r in masks["chains"]
                                                            if r.startswith(">test"))
    r = run_cli("predict", tmp_path / "complex", "--embeddings", sets / "complex" / "test.h5",
                "--labels", sets / "complex" / "test.fa", "--mask", tmp_path / "complex.mask.fa")
    assert r.exit_code == 0, r.stderr
    assert f"Q3 {m['accuracy']:.4f} (95% CI {m['ci95'][0]:.4f}-{m['ci95'][1]:.4f})" in r.stderr, r.stderr
    assert f"{m['n']} positions in {m['n_proteins']} proteins" in r.stderr
    # finetune: the same residues left out of the complexes' targets
    task = get_task("ss3")
    config = FinetuneConfig(task="ss3", model="x", chains="separate", mask_path=str(tmp_path / "complex.mask.fa"))
    label_set = read_sequence_data(sets / "complex" / "test.fa", task, fasta=sets / "complex" / "test.seq.fa",
                                   config=config)
    data = to_data(task, label_set.records, sets / "complex" / "test.fa", chains="separate")
    kept = "".join(r.split("\n")[1] for r in masks["chains"] if r.startswith(">test"))
    targets = np.concatenate([t["ss3"] for t in (item.targets for item in data.items)])
    assert ((targets != IGNORE) == np.array([c == "1" for c in kept])).all()


def test_a_generic_residue_task_takes_no_class_from_a_complexs_chain_breaks(sets, tmp_path):
    """The generic `residue` task discovers its classes from the training labels: a complex's ':'
    between chains was taken as a fourth class (an output no residue has, trained towards none)."""
    from protrans_cli.heads.fit import FitConfig, fit

    config = FitConfig(task="residue", max_epochs=1, max_residues=120, threads=1, n_bootstrap=10)
    pair = (lambda way, name: (sets / way / f"{name}.h5", sets / way / f"{name}.fa"))
    fit(config, *pair("complex", "train"), tmp_path / "complex")
    fit(config, *pair("chains", "train"), tmp_path / "chains")
    classes = {way: json.loads((tmp_path / way / "config.json").read_text())["task"]["outputs"][0]["classes"]
               for way in ("complex", "chains")}
    assert classes["complex"] == classes["chains"] == ["C", "E", "H"]

"""The `disorder` task: NetSurfP-2.0's disorder column as per-residue labels (0.0 -> D, 1.0 -> O),
not masked by itself (`--mask-column cb513_mask` leaves CB513's other residues out, as for any task),
MCC beside accuracy and the kept epoch by MCC, D/O predictions."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from protrans_cli.errors import InputError, UsageError
from protrans_cli.heads.labels import read_labels
from protrans_cli.heads.tasks import DISORDER, IGNORE, get_task

torch.set_num_threads(1)

AA = "ACDEFGHIKLMNPQRSTVWY"
DISORDERED = set("PGSEK")  # the rule: these residues are disordered, so a one-hot CNN can learn it
FAST = ["--max-residues", "300", "--lr", "0.02", "-j", "1", "--bootstrap", "100"]


def _netsurfp(path, seqs, *, cb513=None):
    """A NetSurfP CSV; `cb513`: per protein the residues whose cb513_mask is 0.0 (None: no column)."""
    with open(path, "w", newline="") as fh:
        fh.write("input, dssp3, dssp8, disorder" + (", cb513_mask" if cb513 is not None else "") + "\n")
        writer = csv.writer(fh)
        for i, seq in enumerate(seqs):
            row = [" ".join(seq), " ".join("C" * len(seq)), " ".join("C" * len(seq)),
                   " ".join("0.0" if c in DISORDERED else "1.0" for c in seq)]
            if cb513 is not None:
                row.append(" ".join("0.0" if j in cb513[i] else "1.0" for j in range(len(seq))))
            writer.writerow(row)


def _truth(seq, hidden=()):
    return "".join("-" if j in hidden else ("D" if c in DISORDERED else "O") for j, c in enumerate(seq))


def test_labels_are_read_from_the_disorder_column(tmp_path):
    path = tmp_path / "x.csv"
    _netsurfp(path, ["MPKAG", "SAAV"], cb513=[{1}, set()])
    records = read_labels(path, mask_columns=()).records
    assert [r.labels["disorder"] for r in records] == ["ODDOD", "DOOO"]
    assert all(r.mask.all() for r in records)  # no mask column: every residue labelled and scored
    d, o = DISORDER.index("D"), DISORDER.index("O")
    assert DISORDER == ("D", "O")
    assert get_task("disorder").residue_targets(records[0])["disorder"].tolist() == [o, d, d, o, d]
    # cb513_mask, asked for, leaves its 0.0 residues out (it was applied whether asked or not)
    masked = read_labels(path, mask_columns=("cb513_mask",)).records[0]
    assert masked.labels["disorder"] == "ODDOD" and masked.mask.tolist() == [True, False, True, True, True]
    assert get_task("disorder").residue_targets(masked)["disorder"].tolist() == [o, IGNORE, d, o, d]
    # a file without cb513_mask: every residue labelled
    _netsurfp(tmp_path / "y.csv", ["MPKAG"])
    assert read_labels(tmp_path / "y.csv", mask_columns=()).records[0].labels["disorder"] == "ODDOD"


def test_d_o_letters_of_a_flip_file_are_read(tmp_path):
    (tmp_path / "f.fasta").write_text(">a SET=train VALIDATION=False\nDDOX\n")
    record = read_labels(tmp_path / "f.fasta").records[0]
    with pytest.raises(InputError, match="label letter\\(s\\) 'X' are not disorder classes \\(DO\\)"):
        get_task("disorder").residue_targets(record)
    record.labels["label"] = "DDOo"
    assert get_task("disorder").residue_targets(record)["disorder"].tolist() == [0, 0, 1, 1]


def test_pisces_has_no_disorder_and_is_refused():
    from pathlib import Path

    records = read_labels(Path(__file__).parent / "data" / "heads" / "pisces_small.csv").records
    with pytest.raises(InputError, match="has no disorder labels .*NetSurfP CSV's disorder column"):
        get_task("disorder").residue_targets(records[0])


def test_the_disorder_column_as_a_mask_is_refused(run_cli, tmp_path):
    from protrans_cli.heads.fit import FitConfig, fit

    _netsurfp(tmp_path / "x.csv", ["MPKAG"])
    r = run_cli("fit", "disorder", "--embeddings", tmp_path / "x.h5", "--labels", tmp_path / "x.csv",
                "--mask-column", "disorder", "-o", tmp_path / "head")
    assert r.exit_code == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--mask-column disorder: the disorder column is the disorder " \
        "task's label, not a mask" in r.stderr
    with pytest.raises(UsageError, match="mask_columns disorder: the disorder column is"):
        fit(FitConfig(task="disorder", mask_columns=("disorder", "cb513_mask")), tmp_path / "x.h5",
            tmp_path / "x.csv", tmp_path / "head")


@pytest.fixture(scope="module")
def disorder_data(tmp_path_factory):
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.labels import write_embed_fasta

    root = tmp_path_factory.mktemp("disorder")
    rng = np.random.default_rng(0)
    seqs = {}
    for name, n in (("train", 60), ("test", 20)):
        seqs[name] = ["".join(rng.choice(list(AA), size=rng.integers(15, 45))) for _ in range(n)]
        hidden = [set(range(5)) for _ in seqs[name]]  # cb513_mask 0.0 on each protein's first 5 residues
        _netsurfp(root / f"{name}.csv", seqs[name], cb513=hidden)
        with open(root / f"{name}.fa", "wb") as fh:
            write_embed_fasta(read_labels(root / f"{name}.csv"), fh)
        embed(root / f"{name}.fa", root / f"{name}.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    return root, seqs


def test_fit_and_predict_disorder(run_cli, disorder_data, tmp_path):
    from sklearn.metrics import matthews_corrcoef

    root, seqs = disorder_data
    head = tmp_path / "head"
    r = run_cli("fit", "disorder", "--embeddings", root / "train.h5", "--labels", root / "train.csv",
                "--test", root / "test.h5", root / "test.csv", "--class-weights", "--max-epochs", "15", *FAST,
                "--mask-column", "cb513_mask", "--no-plots", "-o", head)
    assert r.exit_code == 0, r.stderr
    config = json.loads((head / "config.json").read_text())
    assert config["task"]["outputs"][0]["classes"] == ["D", "O"]
    assert config["config"]["mask_columns"] == ["cb513_mask"]  # asked for; the disorder column is no mask of it
    m = json.loads((head / "metrics.json").read_text())["test"]["disorder"]
    truth = "".join(_truth(s, range(5)) for s in seqs["test"])
    assert m["n"] == sum(c != "-" for c in truth)  # D residues counted; cb513_mask 0.0 ones not
    assert m["mcc"] > 0.9 and "MCC" in r.stderr
    # the kept epoch goes by validation MCC (accuracy kept the epochs that said O everywhere)
    assert "best validation epoch" in r.stderr and "(mean MCC " in r.stderr
    history = [json.loads(line) for line in (head / "metrics.jsonl").read_text().splitlines()]
    best = max(line["valid_disorder"] for line in history)  # (MCC: a tie goes to the lower loss)
    kept = int(r.stderr.split("best validation epoch ")[1].split()[0])
    assert f"(mean MCC {best:.4f})" in r.stderr and history[kept - 1]["valid_disorder"] == best

    out, probs = tmp_path / "pred.fa", tmp_path / "probs.h5"
    r = run_cli("predict", head, "--embeddings", root / "test.h5", "--labels", root / "test.csv",
                "-o", out, "--probabilities", probs)
    assert r.exit_code == 0, r.stderr
    lines = out.read_text().splitlines()
    pred = dict(zip([line[1:] for line in lines[::2]], lines[1::2]))
    assert set("".join(pred.values())) == {"D", "O"}
    masked = {rec.id: rec for rec in read_labels(root / "test.csv", mask_columns=("cb513_mask",)).records}
    t = "".join(masked[i].labels["disorder"] for i in pred)
    p = "".join(pred[i] for i in pred)
    keep = np.flatnonzero(np.concatenate([masked[i].mask for i in pred]))
    # metrics.json's MCC against scikit-learn's on the letters predict wrote
    assert m["mcc"] == pytest.approx(matthews_corrcoef([t[j] for j in keep], [p[j] for j in keep]), abs=1e-9)
    with h5py.File(probs) as h5:
        assert h5.attrs["classes_disorder"] == "DO"
        for ds in h5["disorder"].values():
            assert "".join(DISORDER[i] for i in ds[()].argmax(1)) == pred[ds.attrs["id"]]

    r = run_cli("predict", head, "--embeddings", root / "test.h5", "--labels", root / "test.csv",
                "--mask-column", "disorder", "-o", tmp_path / "again.fa")
    assert r.exit_code == 2 and "the disorder column is the disorder task's label" in r.stderr


def test_validation_scores_disorder_by_mcc_and_a_search_chooses_by_it():
    """An all-O head is 95% accurate and of MCC 0 on a set with 5% D: what early stopping, the kept
    epoch and `--search` go by for the disorder task is MCC (Output.select), for ss3 accuracy."""
    import numpy as np
    import torch

    from protrans_cli.heads.fit import FitConfig, _validate
    from protrans_cli.heads.search import _score
    from protrans_cli.heads.tasks import IGNORE, Task, get_task

    task = get_task("disorder")
    assert [o.select for o in task.outputs] == ["mcc"] and get_task("ss3").outputs[0].select == "accuracy"
    assert Task.from_json(task.to_json()) == task  # (a head's config.json keeps it)
    assert "select" not in get_task("ss3").to_json()["outputs"][0]  # (other heads' config.json as before)

    targets = torch.ones(1, 100, dtype=torch.long)  # O
    targets[0, :5] = 0  # D
    targets[0, 98:] = IGNORE

    class Batch:
        x, mask = torch.zeros(1, 100, 3), torch.ones(1, 100, dtype=torch.bool)

        def __init__(self):
            self.targets = {"disorder": targets}

        def to(self, device):
            return self

    class AllOrdered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, mask):
            return {"disorder": torch.tensor([-1.0, 1.0]).expand(1, 100, 2) + 0 * self.w}

    import protrans_cli.heads.fit as fit_module
    original = fit_module._batches
    fit_module._batches = lambda data, config, shuffle, rng=None: [Batch()]
    try:
        _, scores = _validate(AllOrdered(), task, None, FitConfig(task="disorder"))
        _, ss_scores = _validate(AllOrdered(), replace_outputs(task), None, FitConfig(task="disorder"))
    finally:
        fit_module._batches = original
    assert scores == {"disorder": 0.0} and np.isclose(ss_scores["disorder"], 93 / 98)
    metrics = {"valid": {"disorder": {"accuracy": 0.95, "mcc": 0.1}}}
    assert _score(metrics, "valid", frozenset({"disorder"})) == 0.1 and _score(metrics, "valid") == 0.95


def replace_outputs(task):
    """The task with its outputs kept by accuracy."""
    from dataclasses import replace

    return replace(task, outputs=tuple(replace(o, select="accuracy") for o in task.outputs))

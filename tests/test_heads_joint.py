"""The `ss3+ss8+disorder` task: one CNN, three outputs (NetSurfP-2.0's), each with its own residue
mask: the ss outputs masked by the mask columns (NetSurfP's `disorder` by default), the disorder
output by the others only, so it learns and is scored on the residues the ss outputs leave out.
And a bad value in the disorder column is refused only where the column is read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from protrans_cli.errors import InputError
from protrans_cli.heads.labels import read_labels
from protrans_cli.heads.tasks import DISORDER, IGNORE, SS3, SS8, get_task, ss8_to_ss3

torch.set_num_threads(1)

HEADS = Path(__file__).parent / "data" / "heads"
AA = "ACDEFGHIKLMNPQRSTVWY"
RULE8 = {**dict.fromkeys("AEL", "H"), **dict.fromkeys("MQKR", "G"), **dict.fromkeys("VIY", "E"),
         **dict.fromkeys("FW", "B")}
DISORDERED = set("PGSD")  # disorder 0.0; their ss labels contradict the rule (never scored for ss)
FAST = ["--max-residues", "300", "--lr", "0.02", "-j", "1", "--bootstrap", "100", "--no-plots"]


def test_each_output_has_its_own_mask():
    """Fixture rows: residues 2, 3 and 6 of the first protein are disordered (0.0), residue 3 also
    cb513_mask 0.0. The ss outputs leave the disordered ones out; the disorder output scores them."""
    task = get_task("ss3+ss8+disorder")
    assert task.output_names == ["ss3", "ss8", "disorder"]
    assert [o.select for o in task.outputs] == ["accuracy", "accuracy", "mcc"]
    d, o = DISORDER.index("D"), DISORDER.index("O")
    ss3 = [SS3.index(c) for c in "CHEHCC"]
    ss8 = [SS8.index(c) for c in "CHEGTS"]
    x = IGNORE
    record = read_labels(HEADS / "netsurfp_disordered_rows.csv").records[0]  # (the default mask: disorder)
    t = task.residue_targets(record)
    assert t["ss3"].tolist() == [ss3[0], x, x, ss3[3], ss3[4], x]
    assert t["ss8"].tolist() == [ss8[0], x, x, ss8[3], ss8[4], x]
    assert t["disorder"].tolist() == [o, d, d, o, o, d]  # every residue, D ones included
    # the single-output tasks as before
    assert get_task("ss3").residue_targets(record)["ss3"].tolist() == t["ss3"].tolist()
    # --mask-column cb513_mask: every output leaves residue 3 out; ss is not masked by disorder
    record = read_labels(HEADS / "netsurfp_disordered_rows.csv", mask_columns=("cb513_mask",)).records[0]
    t = task.residue_targets(record)
    assert t["ss3"].tolist() == [ss3[0], ss3[1], x, ss3[3], ss3[4], ss3[5]]
    assert t["disorder"].tolist() == [o, d, x, o, o, d]
    # both columns: ss by both, disorder by cb513_mask alone
    record = read_labels(HEADS / "netsurfp_disordered_rows.csv", mask_columns=("disorder", "cb513_mask")).records[0]
    t = task.residue_targets(record)
    assert t["ss3"].tolist() == [ss3[0], x, x, ss3[3], ss3[4], x]
    assert t["disorder"].tolist() == [o, d, x, o, o, d]


def test_a_single_label_file_is_no_disorder_source_for_the_joint_task(tmp_path):
    (tmp_path / "f.fasta").write_text(">a SET=train VALIDATION=False\nHHEC\n")
    record = read_labels(tmp_path / "f.fasta").records[0]
    with pytest.raises(InputError, match="has no disorder labels .*ss3\\+ss8\\+disorder task reads them from a "
                                         "NetSurfP CSV's disorder column"):
        get_task("ss3+ss8+disorder").residue_targets(record)


@pytest.mark.parametrize("value", ["2.0", "x", "nan"])
def test_a_bad_disorder_value_is_refused_only_where_the_column_is_read(tmp_path, value):
    bad = tmp_path / "bad.csv"
    bad.write_text(f"input,dssp3,dssp8,disorder,cb513_mask\nM K,C C,C C,1.0 {value},1 1\n")
    # neither mask nor label: read (it was refused: "disorder holds ...")
    record = read_labels(bad, mask_columns=("cb513_mask",)).records[0]
    assert get_task("ss3").residue_targets(record)["ss3"].tolist() == [2, 2]
    # read as labels: refused, naming the file, line, record and value
    for task in ("disorder", "ss3+ss8+disorder"):
        with pytest.raises(InputError, match=rf"disorder holds '{value}': a value is 1 or 0"):
            get_task(task).residue_targets(record)
    # as a mask: refused where read, as before
    with pytest.raises(InputError, match=rf"bad.csv:2.*disorder holds '{value}': a mask value is 1 \(evaluated\)"):
        read_labels(bad)


def _netsurfp(path, seqs):
    with open(path, "w", newline="") as fh:
        fh.write("input, dssp3, dssp8, disorder\n")
        writer = csv.writer(fh)
        for seq in seqs:
            ss8 = "".join("E" if c in DISORDERED else RULE8.get(c, "C") for c in seq)
            writer.writerow([" ".join(seq), " ".join(ss8_to_ss3(ss8)), " ".join(ss8),
                             " ".join("0.0" if c in DISORDERED else "1.0" for c in seq)])


@pytest.fixture(scope="module")
def joint_data(tmp_path_factory):
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.labels import write_embed_fasta

    root = tmp_path_factory.mktemp("joint")
    rng = np.random.default_rng(0)
    seqs = {}
    for name, n in (("train", 70), ("test", 20)):
        seqs[name] = ["".join(rng.choice(list(AA), size=rng.integers(15, 45))) for _ in range(n)]
        _netsurfp(root / f"{name}.csv", seqs[name])
        with open(root / f"{name}.fa", "wb") as fh:
            write_embed_fasta(read_labels(root / f"{name}.csv"), fh)
        embed(root / f"{name}.fa", root / f"{name}.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    return root, seqs


def test_fit_and_predict_the_joint_head(run_cli, joint_data, tmp_path):
    from sklearn.metrics import matthews_corrcoef

    root, seqs = joint_data
    head = tmp_path / "head"
    r = run_cli("fit", "ss3+ss8+disorder", "--embeddings", root / "train.h5", "--labels", root / "train.csv",
                "--test", root / "test.h5", root / "test.csv", "--max-epochs", "15", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    config = json.loads((head / "config.json").read_text())
    assert [o["name"] for o in config["task"]["outputs"]] == ["ss3", "ss8", "disorder"]
    assert config["config"]["mask_columns"] == ["disorder"]  # (the ss outputs'; the disorder output: none)
    # the kept epoch: the mean of Q3, Q8 and the disorder MCC
    assert "(mean Q3/Q8/MCC " in r.stderr
    m = json.loads((head / "metrics.json").read_text())["test"]
    test = "".join(seqs["test"])
    observed = sum(c not in DISORDERED for c in test)
    assert m["ss3"]["n"] == m["ss8"]["n"] == observed < len(test)  # the disordered residues are not ss-scored
    assert m["disorder"]["n"] == len(test)  # ... and are disorder-scored
    assert m["ss3"]["accuracy"] > 0.9 and m["disorder"]["mcc"] > 0.9  # (the D residues' ss labels contradict the rule)

    out, probs = tmp_path / "pred.fa", tmp_path / "probs.h5"
    r = run_cli("predict", head, "--embeddings", root / "test.h5", "--labels", root / "test.csv", "--head-output",
                "disorder", "-o", out, "--probabilities", probs, "--metrics", tmp_path / "metrics")
    assert r.exit_code == 0, r.stderr
    lines = out.read_text().splitlines()
    pred = dict(zip([line[1:] for line in lines[::2]], lines[1::2]))
    assert set("".join(pred.values())) == {"D", "O"}
    records = {rec.id: rec for rec in read_labels(root / "test.csv").records}
    truth = "".join(records[i].labels["disorder"] for i in pred)
    p = "".join(pred.values())
    scored = json.loads((tmp_path / "metrics" / "test.json").read_text())["outputs"]
    assert scored["disorder"]["n"] == len(test) and scored["ss3"]["n"] == observed
    # the disorder MCC against scikit-learn's on the letters predict wrote, over every residue
    assert scored["disorder"]["mcc"] == pytest.approx(matthews_corrcoef(list(truth), list(p)), abs=1e-9)
    with h5py.File(probs) as h5:
        assert h5.attrs["classes_disorder"] == "DO" and h5.attrs["classes_ss8"] == "".join(SS8)
        ss3 = {}
        for ds in h5["disorder"].values():
            assert "".join(DISORDER[i] for i in ds[()].argmax(1)) == pred[ds.attrs["id"]]
        for ds in h5["ss3"].values():
            ss3[ds.attrs["id"]] = "".join(SS3[i] for i in ds[()].argmax(1))
    # Q3 over the observed residues from the probabilities predict wrote
    t3 = "".join(records[i].labels["ss3"] for i in pred)
    p3 = "".join(ss3[i] for i in pred)
    keep = [j for j, c in enumerate(truth) if c == "O"]
    assert scored["ss3"]["accuracy"] == pytest.approx(np.mean([t3[j] == p3[j] for j in keep]), abs=1e-9)

    r = run_cli("info", head)
    assert r.exit_code == 0, r.stderr
    assert "disorder" in r.stdout and "ss8" in r.stdout


def test_finetune_takes_the_joint_task(joint_data, run_cli, tmp_path):
    """finetune reads the same tasks: the three outputs, each scored on its own residues."""
    from test_finetune import _tiny

    root, seqs = joint_data
    out = tmp_path / "out"
    r = run_cli("finetune", "ss3+ss8+disorder", "-m", _tiny("bert", tmp_path / "bert"), "--labels",
                root / "train.csv", "--test", root / "test.csv", "--max-epochs", "1", "--max-residues", "600",
                "-j", "1", "--bootstrap", "100", "-o", out)
    assert r.exit_code == 0, r.stderr
    m = json.loads((out / "head" / "metrics.json").read_text())["test"]
    test = "".join(seqs["test"])
    assert m["ss3"]["n"] == m["ss8"]["n"] == sum(c not in DISORDERED for c in test)
    assert m["disorder"]["n"] == len(test)

"""The heads on the real label files in ../shared/data, read in place (skipped when absent).

Fast: every distributed label file parses with the documented counts, and a smoke fit on a
subset of NetSurfP train / DeepLoc beats the majority class. Slow (`-m slow`): the acceptance
runs with one-hot embeddings: ss3 on all of NetSurfP train reaches Q3 >= 0.62 on CB513, and loc
trained on the DeepLoc validation split beats the test set's majority class by a clear margin.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
import torch

from protrans_cli.heads.labels import read_labels, write_embed_fasta
from protrans_cli.heads.tasks import get_task

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _slow_only_when_asked(request):
    # The acceptance runs take minutes: run them only when selected (`-m slow`) or PROTRANS_SLOW=1.
    import os

    if request.node.get_closest_marker("slow") and "slow" not in (request.config.option.markexpr or "") \
            and not os.environ.get("PROTRANS_SLOW"):
        pytest.skip("slow acceptance run: select with -m slow")

NETSURFP_COUNTS = {"Train_HHblits.csv.gz": 10792, "CB513_HHblits.csv": 511, "TS115_HHblits.csv": 115,
                   "CASP12_HHblits.csv": 20, "NEW364.csv": 364}


def _embed(label_set, tmp_path, name, *, per_residue=True):
    from protrans_cli.embed import EmbedOptions, embed

    fasta = tmp_path / f"{name}.fa"
    with open(fasta, "wb") as fh:
        write_embed_fasta(label_set, fh)
    out = tmp_path / f"{name}.h5"
    embed(fasta, out, EmbedOptions(model="onehot", per_residue=per_residue, per_protein=not per_residue, threads=1))
    return out


@pytest.mark.parametrize("name", sorted(NETSURFP_COUNTS))
def test_netsurfp_files_parse(shared_data, name):
    ls = read_labels(shared_data / "netsurfp2" / name)
    assert len(ls.records) == NETSURFP_COUNTS[name]
    assert len({r.id for r in ls.records}) == len(ls.records)  # CB513's repeated sequences get distinct ids
    task = get_task("ss3+ss8")
    for record in ls.records[:50]:
        targets = task.residue_targets(record)
        assert len(targets["ss3"]) == len(record.sequence)


def test_cb513_mask_counts(shared_data):
    ls = read_labels(shared_data / "netsurfp2" / "CB513_HHblits.csv")
    assert sum(int(r.mask.sum()) for r in ls.records) == 140_486  # disorder == 1.0 (SOURCES.md)
    both = read_labels(shared_data / "netsurfp2" / "CB513_HHblits.csv", mask_columns=("disorder", "cb513_mask"))
    assert sum(int(r.mask.sum()) for r in both.records) <= 83_991


def test_flip_splits_and_mask(shared_data):
    root = shared_data / "flip_secondary_structure"
    ls = read_labels(root / "sampled.fasta.gz", mask_path=root / "mask.fasta.gz")
    assert Counter(r.split for r in ls.records) == {"train": 9712, "valid": 1080, "test": 364}
    assert sum(int(r.mask.sum()) for r in ls.records) == 2_658_218


def test_deeploc_files(shared_data):
    root = shared_data / "deeploc_light_attention"
    val = read_labels(root / "deeploc_our_val_set.fasta")
    assert len(val.records) == 1678
    assert Counter(r.labels["loc"] for r in val.records)["Cytoplasm-Nucleus"] == 23
    hard = read_labels(root / "setHARD.fasta")  # headers end in a space
    assert len(hard.records) == 490 and {r.labels["membrane"] for r in hard.records} == {"U"}
    test = read_labels(root / "deeploc_test_set.fasta")
    assert len(test.records) == 2768 and all(r.split == "test" for r in test.records)
    table = read_labels(root / "deeploc_annotations_bio_embeddings.csv")
    assert len(table.records) == 14004 and Counter(r.split for r in table.records)["test"] == 2773


def _netsurfp_subset(src, dst, n):
    opener = gzip.open if str(src).endswith(".gz") else open
    with opener(src, "rt") as fh, open(dst, "w", newline="") as out:
        for i, line in enumerate(fh):
            if i > n:
                break
            out.write(line)


def test_smoke_ss3_on_subset(shared_data, tmp_path):
    from protrans_cli.heads.fit import FitConfig, fit

    train_csv = tmp_path / "train.csv"
    _netsurfp_subset(shared_data / "netsurfp2" / "Train_HHblits.csv.gz", train_csv, 400)
    train = _embed(read_labels(train_csv), tmp_path, "train")
    casp = shared_data / "netsurfp2" / "CASP12_HHblits.csv"
    test = _embed(read_labels(casp), tmp_path, "casp")
    result = fit(FitConfig(task="ss3", max_epochs=4, lr=3e-3, max_residues=4096, threads=1, n_bootstrap=200),
                 train, train_csv, tmp_path / "head", tests=[(test, casp)])
    q3 = result.metrics["CASP12_HHblits"]["ss3"]["accuracy"]
    coil = 0.45  # share of C among CASP12's evaluated residues is below this: a head must beat always-C
    assert q3 > coil + 0.05, q3


def test_smoke_loc_on_subset(shared_data, tmp_path):
    from protrans_cli.heads.fit import FitConfig, fit
    root = shared_data / "deeploc_light_attention"
    val = root / "deeploc_our_val_set.fasta"
    records = read_labels(root / "deeploc_test_set.fasta").records[::4]  # every 4th, written to tmp
    test_labels = tmp_path / "deeploc_test_subset.fasta"
    test_labels.write_text("".join(f">{r.id} {r.labels['loc']}-{r.labels['membrane']} test\n{r.sequence}\n"
                                   for r in records))
    train = _embed(read_labels(val), tmp_path, "val", per_residue=False)
    test = _embed(read_labels(test_labels), tmp_path, "test", per_residue=False)
    result = fit(FitConfig(task="loc", max_epochs=60, threads=1, n_bootstrap=200), train, val, tmp_path / "head",
                 tests=[(test, test_labels)])
    locations = [r.labels["loc"] for r in records]
    majority = Counter(locations).most_common(1)[0][1] / len(locations)
    assert result.metrics["deeploc_test_subset"]["loc"]["n"] == 692
    assert result.metrics["deeploc_test_subset"]["loc"]["accuracy"] > majority + 0.08


@pytest.mark.slow
def test_acceptance_ss3_onehot_full_netsurfp(shared_data, tmp_path):
    from protrans_cli.heads.fit import FitConfig, fit

    nsp = shared_data / "netsurfp2"
    train = _embed(read_labels(nsp / "Train_HHblits.csv.gz"), tmp_path, "train")
    tests = [(_embed(read_labels(nsp / f), tmp_path, f.split(".")[0]), nsp / f)
             for f in ("CB513_HHblits.csv", "TS115_HHblits.csv", "CASP12_HHblits.csv", "NEW364.csv")]
    result = fit(FitConfig(task="ss3", threads=1), train, nsp / "Train_HHblits.csv.gz", tmp_path / "ss3", tests=tests)
    print(json.dumps(result.metrics, indent=1))
    assert result.metrics["CB513_HHblits"]["ss3"]["accuracy"] >= 0.62


@pytest.mark.slow
def test_acceptance_loc_onehot_deeploc(shared_data, tmp_path):
    from protrans_cli.heads.fit import FitConfig, fit

    root = shared_data / "deeploc_light_attention"
    val = root / "deeploc_our_val_set.fasta"
    train = _embed(read_labels(val), tmp_path, "val", per_residue=False)
    tests = [(_embed(read_labels(root / f), tmp_path, f.split(".")[0], per_residue=False), root / f)
             for f in ("deeploc_test_set.fasta", "setHARD.fasta")]
    result = fit(FitConfig(task="loc", ensemble=3, threads=1), train, val, tmp_path / "loc", tests=tests)
    print(json.dumps(result.metrics, indent=1))
    labels = [r.labels["loc"] for r in read_labels(root / "deeploc_test_set.fasta").records]
    majority = Counter(labels).most_common(1)[0][1] / len(labels)
    assert result.metrics["deeploc_test_set"]["loc"]["accuracy"] >= majority + 0.10

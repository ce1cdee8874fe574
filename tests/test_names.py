"""File names that are not UTF-8 (byte 0xff; any non-ASCII name under LC_ALL=C PYTHONUTF8=0) and
ids with Unicode whitespace: what cluster jobs and other locales give the commands."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import pytest

from conftest import DATA

EXAMPLE = DATA.parent.parent / "protrans_cli" / "example_data"
ODD = b"x\xff"  # a byte that is not UTF-8: Python sees the name with a surrogate escape


def _protrans(*args, cwd):
    return subprocess.run([sys.executable, "-m", "protrans_cli", *args], cwd=cwd, capture_output=True)


@pytest.fixture
def odd_dir(tmp_path):
    folder = os.path.join(os.fsencode(tmp_path), ODD)
    try:
        os.mkdir(folder)
    except OSError:  # a file system that takes UTF-8 names only (macOS's APFS)
        pytest.skip("this file system refuses names that are not UTF-8")
    return os.fsdecode(folder)


def test_embed_records_a_command_line_holding_a_name_that_is_not_utf8(tmp_path, odd_dir):
    """h5py refuses surrogate escapes: embed failed with a traceback ("surrogates not allowed")
    when a file name on its command line was not UTF-8, and left a hidden file behind."""
    fasta = os.path.join(odd_dir, "in.fa")
    with open(fasta, "w") as fh:
        fh.write(">a\nMKV\n>b\nMKLA\n")
    out = os.path.join(odd_dir, "out.h5")
    r = _protrans("embed", os.fsencode(fasta), "-m", "onehot", "-o", os.fsencode(out), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    with h5py.File(out, "r") as f:
        assert "x\\xff/in.fa" in f.attrs["command_line"]
    assert sorted(os.listdir(odd_dir)) == ["in.fa", "out.h5"]
    r = _protrans("embed", os.fsencode(fasta), "-m", "onehot", "-o", os.fsencode(out), "-q", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode(errors="replace")


def test_train_refuses_a_run_directory_the_tokenizer_cannot_be_saved_into_before_any_step(tmp_path, odd_dir):
    """The tokenizers library writes the UTF-8 spelling of a name: a run directory whose name is
    not UTF-8 trained every step up to the first checkpoint and then failed there."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("M K V L A A G\n\nM K L A\n\n" * 8)
    run = os.path.join(odd_dir, "run")
    r = _protrans("train", "--family", "bert", "--preset", "tiny", "--corpus", str(corpus), "-o", os.fsencode(run),
                  "--num-steps", "2", "--max-length", "32", "--global-batch-size", "4", "--micro-batch-size", "4",
                  cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.decode().strip().splitlines()[-1] == (
        f"protrans: error: the run directory {tmp_path}/x\\xff/run: its name is not UTF-8 here (the tokenizers "
        "library writes and reads UTF-8 names only): use an ASCII name, or a UTF-8 locale (LC_ALL=C.UTF-8)")
    assert os.listdir(odd_dir) == []


def test_train_init_from_a_model_in_a_folder_whose_name_is_not_utf8_says_why_before_loading(tmp_path, odd_dir,
                                                                                             run_cli):
    """--init-from such a folder: the tokenizers library cannot read its tokenizer there; the
    error names the flag, the folder and the remedy (exit 1), and no run directory is made."""
    from protrans_cli.models import FAMILIES

    family = FAMILIES["bert"]
    tokenizer = family.build_tokenizer()
    model = os.path.join(odd_dir, "model")
    family.save_pretrained(family.pretraining_model(family.build_config("tiny", tokenizer)), tokenizer,
                           os.path.join(tmp_path, "ascii"))
    os.rename(os.path.join(tmp_path, "ascii"), model)  # (saved under an ASCII name: the tokenizer writes UTF-8 ones)
    corpus = tmp_path / "c.txt"
    corpus.write_text("M K V L A A G\n\nM K L A\n\n" * 8)
    r = run_cli("train", "--corpus", corpus, "--num-steps", 1, "--max-length", 32, "--global-batch-size", 4,
                "--micro-batch-size", 4, "-j", 1, "--init-from", model, "-o", tmp_path / "run")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: --init-from {tmp_path}/x\\xff/model: cannot load the tokenizer: its name is not UTF-8 "
        "here (the tokenizers library writes and reads UTF-8 names only): use an ASCII name, or a UTF-8 locale "
        "(LC_ALL=C.UTF-8)")
    assert not (tmp_path / "run").exists()


def test_a_head_in_a_folder_whose_name_is_not_utf8_is_read_back(tmp_path, odd_dir, run_cli):
    """fit wrote the head; predict could not read its weights ("Path ... is not valid UTF-8")."""
    emb = tmp_path / "loc.h5"
    assert run_cli("embed", EXAMPLE / "loc_train.fasta", "-m", "onehot", "--per-protein", "-o", emb, "-q").exit_code == 0
    head = os.path.join(odd_dir, "head")
    r = run_cli("fit", "loc", "--embeddings", emb, "--labels", EXAMPLE / "loc_train.fasta", "-o", head,
                "--max-epochs", "1", "-q")
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", head, "--embeddings", emb, "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "p.csv").read_text().count("\n") > 100


def test_ids_ending_in_a_no_break_space_match_between_fasta_and_label_tables(tmp_path, run_cli):
    """The FASTA id ends at ASCII whitespace only; the label readers stripped or split at any
    Unicode whitespace (a no-break space), so every such label missed its embedding."""
    fasta = tmp_path / "t.fa"
    fasta.write_bytes(b">T0\xc2\xa0 d\nMKVLA\n>T1\xe2\x80\xa8\nMKLAA\n>T2\nMKKLA\n>T3\nMKVVA\n")
    labels = tmp_path / "t.csv"
    labels.write_bytes(b"id,label\nT0\xc2\xa0,1.5\nT1\xe2\x80\xa8,2.0\nT2,1.0\nT3,0.5\n")
    deeploc = tmp_path / "d.fasta"
    deeploc.write_bytes(b">P1\xc2\xa0x Cytoplasm-S\nMKV\n")
    emb = tmp_path / "t.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "--per-protein", "-o", emb, "-q").exit_code == 0
    r = run_cli("fit", "value", "--embeddings", emb, "--labels", labels, "-o", tmp_path / "head",
                "--max-epochs", "1", "--valid-fraction", "0.25", "-q")
    assert r.exit_code == 0, r.stderr
    from protrans_cli.heads.labels import read_labels

    assert [r.id for r in read_labels(deeploc).records] == ["P1\xa0x"]


def test_env_prints_a_path_its_output_encoding_cannot_hold(tmp_path):
    """`protrans env` (what bug reports ask for) failed with UnicodeEncodeError under
    PYTHONIOENCODING=ascii when the Hugging Face cache's path was not ASCII."""
    env = dict(os.environ, PYTHONIOENCODING="ascii", HF_HOME=str(tmp_path / "josé"))
    r = subprocess.run([sys.executable, "-m", "protrans_cli", "env"], capture_output=True, env=env)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert f"Hugging Face cache: {tmp_path}/jos\\xe9/hub".encode() in r.stdout


def test_an_embeddings_file_with_dataset_names_that_are_not_utf8_is_one_line(tmp_path, run_cli):
    """Another tool's file written with bytes keys: fit and predict failed with a UnicodeDecodeError
    traceback."""
    import numpy as np

    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(b"Pl\xe90", data=np.zeros(21, np.float32))
        f.create_dataset("K2", data=np.zeros(21, np.float32))
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\nK2,1.0\n")
    r = run_cli("fit", "value", "--embeddings", path, "--labels", labels, "-o", tmp_path / "head")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert f"{path}: a dataset name that is not UTF-8 (b'Pl\\xe90')" in r.stderr


def test_label_values_and_words_after_the_id_still_lose_unicode_whitespace(tmp_path):
    """Only ids end at ASCII whitespace: a class name, a set name or a DeepLoc location followed
    by a no-break space read as before (a third class, an unknown set, a refused header)."""
    from protrans_cli.heads.labels import read_labels

    table = tmp_path / "t.csv"
    table.write_bytes(b"id,label\nP1,Cytoplasm\xc2\xa0\nP2\xc2\xa0,Nucleus\n")
    assert [(r.id, r.labels["label"]) for r in read_labels(table).records] == [("P1", "Cytoplasm"),
                                                                              ("P2\xa0", "Nucleus")]
    deeploc = tmp_path / "d.fasta"
    deeploc.write_bytes(b">P1 Cytoplasm-S\xc2\xa0test\nMKV\n")
    (record,) = read_labels(deeploc).records
    assert (record.id, record.labels, record.split) == ("P1", {"loc": "Cytoplasm", "membrane": "S"}, "test")
    flip = tmp_path / "f.fasta"
    flip.write_bytes(b">P1 SET=train\xc2\xa0VALIDATION=False\nCCH\n")
    assert [(r.id, r.split) for r in read_labels(flip, "flip").records] == [("P1", "train")]


def test_info_prints_a_file_name_that_is_not_utf8_as_its_command_line_does(tmp_path, odd_dir, run_cli):
    """info failed with a UnicodeEncodeError traceback ("surrogates not allowed") on a file whose
    name is not UTF-8, and under LC_ALL=C PYTHONUTF8=0 on any non-ASCII name (é)."""
    out = os.path.join(odd_dir, "out.h5")
    assert run_cli("embed", EXAMPLE / "proteins.fasta", "-m", "onehot", "-o", out, "-q").exit_code == 0
    r = run_cli("info", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith(f"file:          {tmp_path}/x\\xff/out.h5 (")  # (embed's command_line attribute spells it so)
    os.rename(out, tmp_path / "é.h5")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    r = subprocess.run([sys.executable, "-m", "protrans_cli", "info", "é.h5"], cwd=tmp_path, capture_output=True,
                       env=env)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.splitlines()[0].startswith("file:          é.h5 (".encode())


def test_messages_spell_a_byte_that_is_not_utf8_as_the_byte(tmp_path, odd_dir, run_cli):
    """Messages named such a file `x\\udcff/in.fa` (Python's surrogate escape, no character of the
    name) and, under LC_ALL=C PYTHONUTF8=0, `\\udcc3\\udca9` for an é: the bytes are spelled as the
    HDF5 attributes and train's errors spell them, `x\\xff`, `\\xc3\\xa9`."""
    r = run_cli("embed", os.path.join(odd_dir, "in.fa"), "-m", "onehot", "-o", tmp_path / "o.h5")
    assert r.exit_code == 1 and r.stderr == f"protrans: error: {tmp_path}/x\\xff/in.fa: no such file\n"
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    r = subprocess.run([sys.executable, "-m", "protrans_cli", "embed", "é.fa", "-m", "onehot", "-o", "o.h5"],
                       cwd=tmp_path, capture_output=True, env=env)
    assert r.returncode == 1 and r.stderr == b"protrans: error: \\xc3\\xa9.fa: no such file\n"


def test_fit_draws_the_figure_of_a_test_set_whose_file_name_is_not_utf8(tmp_path, odd_dir, run_cli):
    """The set is named after its label file: fit trained, scored it and then failed with a
    TypeError traceback from matplotlib ("incompatible function arguments") drawing its figure,
    leaving an interrupted fit behind; the title spells the byte `\\xff`."""
    fasta, table = tmp_path / "t.fa", os.path.join(odd_dir, os.fsdecode(ODD) + ".csv")
    fasta.write_text("".join(f">P{i}\n{'MKVLA'[i % 5:] + 'ACDEFGHIK'[:i % 9 + 2]}\n" for i in range(16)))
    with open(table, "w", encoding="utf-8") as fh:
        fh.write("id,label\n" + "".join(f"P{i},{i / 16:.3f}\n" for i in range(16)))
    emb = tmp_path / "t.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "--per-protein", "-o", emb, "-q").exit_code == 0
    r = run_cli("fit", "value", "--embeddings", emb, "--labels", table, "--test", emb, table, "-o", tmp_path / "head",
                "--max-epochs", "1", "--valid-fraction", "0.25")
    assert r.exit_code == 0, r.stderr
    assert "x\\xff value: Spearman" in r.stderr and os.path.isfile(tmp_path / "head" / "metrics" / "x\udcff.value.png")


def test_import_esm_reads_pt_files_in_a_folder_whose_name_is_not_utf8(tmp_path, odd_dir, run_cli):
    """torch maps a file by the UTF-8 spelling of its name: every .pt file there was refused as
    "torch cannot read it (damaged, or not a file torch.save wrote)"."""
    import torch

    torch.save({"label": "P1", "representations": {6: torch.ones(3, 4)}, "mean_representations": {6: torch.ones(4)}},
               os.path.join(odd_dir, "P1.pt"))
    r = run_cli("import-esm", odd_dir, "-o", tmp_path / "e.h5")
    assert r.exit_code == 0, r.stderr
    with h5py.File(tmp_path / "e.h5", "r") as f:
        assert f["per_protein"]["P1"].shape == (4,) and f["per_residue"]["P1"].shape == (3, 4)


def test_figures_draw_dollar_signs_in_set_names_and_classes_literally(tmp_path):
    """A label file named `a$\\frac{b$.csv` (its set's figure title), or a generic head's class
    named so, was read as mathtext: a ParseSyntaxException from savefig after training."""
    import numpy as np

    from protrans_cli.heads.metrics import save_confusion_png, save_scatter_png

    hostile = r"a$\frac{b$.csv"
    save_scatter_png(np.arange(5.0), np.arange(5.0), tmp_path / "s.png", f"{hostile} value")
    save_confusion_png({"confusion": [[2, 1], [0, 3]], "classes": [r"$x^$", "b"]}, tmp_path / "c.png",
                       f"{hostile} label")
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "c.png").stat().st_size > 0

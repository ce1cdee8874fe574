"""`protrans esm-extract`: esm-extract's command line, and its files.

Against three references: fair-esm 2.0.0's own esm-extract outputs of the tiny ESM-2 in
tests/data/esm_reference (rows, means, contacts; its README), a plain transformers forward pass
(rows, and the <cls> row for bos), and `protrans embed` / `protrans contacts` run on the same input.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "esm_reference"
KEPT = [0, 1, 2, 3, -4, -3, -2, -1]  # rows of the long protein the reference keeps
PARTIAL = ".protrans-esm-extract.partial"  # (where a stopped run's work is kept, for --resume)
INPUT = ">P1 first protein\nMKTAYIAKQRQISFV\n>P2\nMAAGW\n>P3 a/slash\nWKVLAAG\n"


@pytest.fixture
def model_dir(tmp_path):
    to = tmp_path / "esm2_tiny"
    shutil.copytree(REFERENCE, to, ignore=shutil.ignore_patterns("reference.safetensors", "input.fa", "*.md"))
    return to


def _files(folder) -> dict:
    """{file name: its dict}, loaded as esm-extract's readers should (weights_only: tensors and plain values)."""
    return {p.name: torch.load(p, weights_only=True) for p in sorted(Path(folder).glob("*.pt"))}


def _hidden_states(model_dir, sequences: dict[str, str]) -> dict[str, list[np.ndarray]]:
    """A plain transformers forward pass of each protein (upper-cased, as embed reads it): every
    hidden state, (T, D) with <cls> and <eos>."""
    from transformers import EsmModel, EsmTokenizer

    model = EsmModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    tokenizer = EsmTokenizer.from_pretrained(str(model_dir))
    states = {}
    with torch.no_grad():
        for ident, sequence in sequences.items():
            ids = tokenizer(sequence.upper(), return_tensors="pt")["input_ids"]
            states[ident] = [s[0].numpy() for s in model(input_ids=ids, output_hidden_states=True).hidden_states]
    return states


@pytest.mark.parametrize("argv, layers, include", [
    # esm-extract's own command line (argparse's nargs="+"), as fair-esm's README gives it
    (["--repr_layers", "0", "32", "33", "--include", "mean", "per_tok"], (0, 32, 33), ("mean", "per_tok")),
    (["--include", "mean", "per_tok", "bos", "contacts", "--repr_layers", "-1", "-2", "--nogpu"], (-1, -2),
     ("mean", "per_tok", "bos", "contacts")),
    (["--repr_layers=33", "0", "--include=per_tok", "--toks_per_batch", "10"], (33, 0), ("per_tok",)),
    (["--repr-layers", "1", "--repr-layers", "2", "--include", "mean", "--include", "bos"], (1, 2), ("mean", "bos")),
    (["--include", "mean"], (-1,), ("mean",)),
])
def test_esm_extracts_command_line_is_read_as_argparse_reads_it(argv, layers, include):
    from protrans_cli.cli import cli

    ctx = cli.make_context("protrans", ["esm-extract", "esm2_t33_650M_UR50D", "proteins.fasta", "out_dir", *argv])
    command = cli.get_command(ctx, "esm-extract")
    sub = command.make_context("esm-extract", ["esm2_t33_650M_UR50D", "proteins.fasta", "out_dir", *argv], parent=ctx)
    assert sub.params["repr_layers"] == layers and sub.params["include"] == include
    assert (sub.params["model_location"], sub.params["fasta_file"], sub.params["output_dir"]) == \
        ("esm2_t33_650M_UR50D", "proteins.fasta", "out_dir")


@pytest.mark.parametrize("given, layers", [((-1, 33), [33]), ((33, 0, -34, 32, -2), [0, 32, 33]), ((-1,), [33])])
def test_repr_layers_naming_one_layer_twice_give_it_once(given, layers):
    """esm-extract's `--repr_layers -1 33` on a 33-layer model is one layer, one key of each dict,
    the keys in order (its dicts hold the layers in the model's order)."""
    from protrans_cli.errors import UsageError
    from protrans_cli.esm_extract import esm_layers

    assert esm_layers(given, 33) == layers
    for outside in (34, -35):
        with pytest.raises(UsageError, match=f"^repr_layers {outside}: m has 33 layers, so its layers run from -34 "
                                             "to 33"):
            esm_layers((0, outside), 33, "m")


def test_files_equal_fair_esms_own_and_a_plain_forward_pass(run_cli, tmp_path, model_dir):
    """The reference proteins (rare residues, lowercase, one residue, a padded batch), every
    --include, esm-extract's layers 0 1 2 given as it takes them; then import-esm reads the folder
    back. (The reference's 1,100-residue protein: the next test.)"""
    from safetensors.numpy import load_file

    reference = load_file(REFERENCE / "reference.safetensors")
    records = {i: s for i, s in _records() if i != "long"}
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in records.items()))
    out = tmp_path / "out"
    r = run_cli("esm-extract", model_dir, fasta, out, "--repr_layers", "0", "-2", "2",
                "--include", "mean", "per_tok", "bos", "contacts", "--nogpu")
    assert r.exit_code == 0, r.stderr
    assert "longer than" not in r.stderr
    files = _files(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # (no working folder left)
    assert sorted(files) == sorted(f"{i}.pt" for i in records)
    forward = _hidden_states(model_dir, records)
    for name, entry in files.items():
        pid = name.removesuffix(".pt")
        assert list(entry) == ["label", "representations", "mean_representations", "bos_representations", "contacts"]
        assert entry["label"] == pid
        for key in ("representations", "mean_representations", "bos_representations"):
            assert list(entry[key]) == [0, 1, 2] and all(t.dtype == torch.float32 for t in entry[key].values())
        for k in range(3):
            rows = entry["representations"][k].numpy()
            np.testing.assert_allclose(rows, reference[f"rows/{pid}/{k}"], atol=1e-5, rtol=0)
            np.testing.assert_allclose(rows, forward[pid][k][1:len(rows) + 1], atol=1e-5, rtol=0)
            mean = entry["mean_representations"][k].numpy()
            np.testing.assert_allclose(mean, reference[f"mean/{pid}/{k}"], atol=1e-5, rtol=0)
            np.testing.assert_allclose(mean, rows.astype(np.float64).mean(axis=0), atol=1e-6, rtol=0)
            np.testing.assert_allclose(entry["bos_representations"][k].numpy(), forward[pid][k][0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(entry["contacts"].numpy(), reference[f"contacts/{pid}"], atol=1e-5, rtol=0)
    back = run_cli("import-esm", out, "--fasta", fasta, "-m", model_dir, "--layer", "0", "--layer", "2",
                   "-o", tmp_path / "back.h5")
    assert back.exit_code == 0, back.stderr
    from protrans_cli.io.h5 import PER_RESIDUE, EmbeddingsReader

    with EmbeddingsReader(tmp_path / "back.h5") as reader:
        assert sorted(reader.ids(PER_RESIDUE)) == sorted(records)
        np.testing.assert_array_equal(reader.get("mixed_40", PER_RESIDUE)[1],
                                      files["mixed_40.pt"]["representations"][2])


def test_a_protein_past_1022_residues_is_cut_there_by_default_and_said(run_cli, tmp_path, model_dir):
    """esm-extract's default --truncation_seq_length 1022, which it applies without a word."""
    from safetensors.numpy import load_file

    reference = load_file(REFERENCE / "reference.safetensors")
    fasta = tmp_path / "long.fa"
    fasta.write_text(f">long\n{dict(_records())['long']}\n")
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / "out", "--include", "per_tok", "mean")
    assert r.exit_code == 0, r.stderr
    assert ("1 protein of 1 is longer than --truncation_seq_length 1022: its file holds the first 1,022 residues, "
            "as esm-extract's (long)") in r.stderr
    entry = _files(tmp_path / "out")["long.pt"]
    assert list(entry["representations"]) == [2] and entry["representations"][2].shape == (1022, 8)
    np.testing.assert_allclose(entry["representations"][2].numpy()[KEPT], reference["long_truncated_rows/2"],
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(entry["mean_representations"][2].numpy(), reference["long_truncated_mean/2"],
                               atol=1e-5, rtol=0)


def test_the_model_is_loaded_once_for_contacts_and_rows(tmp_path, model_dir, monkeypatch):
    """Contacts and rows of one run: the model loaded once, not for each (ESM-2 15B: minutes and
    twice the memory), the rows those of the model as loaded (its attention, which the contact head
    switches, put back): equal to a run that computes rows alone."""
    import protrans_cli.models as models
    from protrans_cli.esm_extract import ExtractOptions, esm_extract

    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    loads = []
    load_model = models.load_model

    def counted(*args, **kwargs):
        loads.append(args[0] if args else kwargs.get("model"))
        return load_model(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", counted)
    esm_extract(fasta, tmp_path / "all", ExtractOptions(model=str(model_dir), repr_layers=(0, -1),
                                                        include=("mean", "per_tok", "bos", "contacts")))
    assert loads == [str(model_dir)]
    esm_extract(fasta, tmp_path / "rows", ExtractOptions(model=str(model_dir), repr_layers=(0, -1),
                                                         include=("per_tok", "bos")))
    both, rows = _files(tmp_path / "all"), _files(tmp_path / "rows")
    assert sorted(both) == sorted(rows) == ["P1.pt", "P2.pt", "P3.pt"]
    for name in rows:
        for key in ("representations", "bos_representations"):
            for layer in (0, 2):
                assert torch.equal(both[name][key][layer], rows[name][key][layer]), (name, key, layer)


def _records():
    text = (REFERENCE / "input.fa").read_text()
    for block in text.split(">")[1:]:
        header, *lines = block.splitlines()
        yield header.split()[0], "".join(lines)


def test_files_equal_embeds_and_contacts_truncated_as_asked(run_cli, tmp_path, model_dir):
    """--truncation_seq_length 5: five rows, the mean and contacts of those (as `protrans embed
    --max-length 5 --long-policy truncate` and `protrans contacts` give them), said on stderr;
    the FASTA from stdin (read by both computations); labels are the header lines, files the ids."""
    from protrans_cli.io.h5 import escape_key, h5_file

    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    out = tmp_path / "out"
    r = run_cli("esm-extract", model_dir, "-", out, "--repr_layers", "-1", "0", "--include", "per_tok", "mean",
                "contacts", "--truncation_seq_length", "5", input=INPUT.encode())
    assert r.exit_code == 0, r.stderr
    assert ("2 proteins of 3 are longer than --truncation_seq_length 5: their files hold the first 5 residues"
            in r.stderr)
    assert "esm-extract: 3 files (mean, per_tok, contacts; layers 0, 2) into" in r.stderr
    files = _files(out)
    assert sorted(files) == ["P1.pt", "P2.pt", "P3.pt"]
    assert [files[f"P{i}.pt"]["label"] for i in (1, 2, 3)] == ["P1 first protein", "P2", "P3 a/slash"]
    assert r.stdout == ""
    e = run_cli("embed", fasta, "-m", model_dir, "-o", tmp_path / "e.h5", "--layer", "0", "--layer", "-1",
                "--max-length", "5", "--long-policy", "truncate", "--per-residue")
    c = run_cli("contacts", fasta, "-m", model_dir, "-o", tmp_path / "c.h5", "--max-length", "5", "--long-policy",
                "truncate", "--storage-dtype", "float32")
    assert e.exit_code == c.exit_code == 0, e.stderr + c.stderr
    with h5_file(tmp_path / "e.h5") as embedded, h5_file(tmp_path / "c.h5") as maps:
        for ident, entry in files.items():
            key = escape_key(ident.removesuffix(".pt"))
            rows = embedded["per_residue"][key][()]  # (layers 0 and -1, L, D)
            assert entry["representations"][0].shape == (min(5, rows.shape[1]), 8)
            for k, layer in enumerate((0, 2)):
                np.testing.assert_allclose(entry["representations"][layer].numpy(), rows[k], atol=1e-6, rtol=0)
                np.testing.assert_allclose(entry["mean_representations"][layer].numpy(), rows[k].mean(axis=0),
                                           atol=1e-6, rtol=0)
            np.testing.assert_allclose(entry["contacts"].numpy(), maps["contacts"][key][()], atol=1e-6, rtol=0)


def test_contacts_and_hidden_states_warn_of_the_input_once(run_cli, tmp_path, model_dir):
    """Both computations read the FASTA and warn of what they find in it: an aligned protein's gaps
    and a DNA record were each said twice, word for word."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(">gapped\nMK-TA.YIAK\n>dna\nACGTTGCAACGTTGCAACGTTGCAACGTTGCA\n>P2\nMAAGW\n")
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / "out", "--include", "mean", "contacts")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("held gap characters ('-', '.'), removed: gapped") == 1, r.stderr
    assert r.stderr.count("as nucleotide sequences do: dna") == 1, r.stderr
    assert len(r.stderr.splitlines()) == 3, r.stderr  # (the two warnings, and the summary line)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["P2.pt", "dna.pt", "gapped.pt"]


def test_quiet_says_nothing_and_stdout_stays_empty(run_cli, tmp_path, model_dir):
    """esm-extract prints its progress on stdout; here stdout stays empty, and `protrans -q` quiets
    the summary and the warnings (a protein cut, gaps) on stderr too."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT + ">gapped\nMK-TA\n")
    r = run_cli("-q", "esm-extract", model_dir, fasta, tmp_path / "out", "--include", "mean", "contacts",
                "--truncation_seq_length", "5")
    assert r.exit_code == 0 and r.stdout == r.stderr == "", r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["P1.pt", "P2.pt", "P3.pt", "gapped.pt"]


def test_an_existing_folder_keeps_its_other_files_and_a_same_named_file_is_replaced(run_cli, tmp_path, model_dir):
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    out = tmp_path / "out"
    out.mkdir()
    (out / "P2.pt").write_bytes(b"an earlier run's")
    (out / "other.pt").write_bytes(b"another chunk's")
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean")
    assert r.exit_code == 0, r.stderr
    assert "1 file of the same name replaced" in r.stderr
    assert (out / "other.pt").read_bytes() == b"another chunk's"
    assert sorted(p.name for p in out.iterdir()) == ["P1.pt", "P2.pt", "P3.pt", "other.pt"]
    assert list(torch.load(out / "P2.pt", weights_only=True)) == ["label", "mean_representations"]


@pytest.mark.parametrize("args, code, message", [
    (["{missing}", "{out}", "--include", "mean"], 1, "missing.fa: no such file"),
    (["{fasta}", "{out}", "--include", "mean", "--repr_layers", "3"], 2,
     "--repr_layers 3: {model} has 2 layers, so its layers run from -3 to 2"),
    (["{fasta}", "{out}", "--include", "means"], 2, "'means' is not one of"),
    (["{fasta}", "{out}", "--repr_layers", "1"], 2, "Missing option '--include'"),
    (["{fasta}", "{out}", "--include", "mean", "--truncation_seq_length", "0"], 2,
     "--truncation_seq_length must be at least 1, got 0"),
    (["{fasta}", "{file}", "--include", "mean"], 2, "is a file"),
])
def test_refusals_are_one_line_and_make_no_folder(run_cli, tmp_path, model_dir, args, code, message):
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    (tmp_path / "afile").write_text("")
    names = {"missing": tmp_path / "missing.fa", "out": tmp_path / "new" / "out", "fasta": fasta,
             "file": tmp_path / "afile", "model": model_dir}
    r = run_cli("esm-extract", model_dir, *[a.format(**names) for a in args])
    assert r.exit_code == code and message.format(**names) in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("location, message", [
    ("elsewhere/esm1v_t33_650M_UR90S_1.pt", "no such file; fair-esm's weights of esm1v_t33_650M_UR90S_1 (a PyTorch "
     "file, which is not loaded); give the short name esm1v_t33_650M_UR90S_1"),
    ("checkpoints/esm2_t6_8M_UR50D.pt", "no such file; fair-esm's weights of esm2_t6_8M_UR50D"),  # (no hub id)
    ("esm2_t6_8M_UR50D.pt", "no such file; fair-esm's weights of esm2_t6_8M_UR50D"),
])
def test_a_fair_esm_checkpoint_as_model_location_names_the_model_to_give(run_cli, tmp_path, monkeypatch, location,
                                                                       message):
    """esm-extract's MODEL_LOCATION is also a path to fair-esm's own .pt (~/.cache/torch/hub/checkpoints/):
    one that is not there (a script's path from another machine) is no hub id either; the one line
    names the short name of the same weights, not a list of 26. (One that is there is converted for
    the run: tests/test_import_model.py.)"""
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a .pt given as the model was opened"))
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    monkeypatch.chdir(tmp_path)  # (as a script gives it: relative, `owner/name`-like, and no hub id either)
    r = run_cli("esm-extract", location, fasta, tmp_path / "out", "--include", "mean")
    assert r.exit_code == 1 and r.stderr.startswith(f"protrans: error: {location}: {message}"), r.stderr
    assert len(r.stderr.splitlines()) == 1 and "prot_t5" not in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("location, code, advice", [
    ("someone/esm_model", 1, "download it where there is network (`hf download someone/esm_model --local-dir DIR`) "
                             "and give the directory as MODEL_LOCATION"),
    ("run", 1, "its latest checkpoint, run/checkpoints/step_2, is a model directory (give it as MODEL_LOCATION)"),
    ("run/checkpoints", 1, "each step_N inside is one; give run/checkpoints/step_2 for the latest"),
    ("adapter", 1, "merge a LoRA adapter into its base model with `protrans import-model adapter -o DIR` (--base MODEL "
                 "for a local copy of the base) and give that directory as MODEL_LOCATION"),
    ("no_weights", 1, "no_weights: the model directory has no weights file"),
    ("onehot", 2, "MODEL_LOCATION onehot is embed's one-hot encoding"),
])
def test_the_advice_on_a_model_names_model_location_not_embeds_m(run_cli, tmp_path, model_dir, monkeypatch,
                                                                 location, code, advice):
    """esm-extract takes the model as its first argument, MODEL_LOCATION, and has no -m: embed's advice
    "pass the directory: -m DIR" (a hub id offline), "give it to -m" (a run without its final model),
    "give -m that directory" (a PEFT adapter) told the user to give an option it refuses."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    step = tmp_path / "run" / "checkpoints" / "step_2"
    step.mkdir(parents=True)
    (step / "config.json").write_text((model_dir / "config.json").read_text())
    (step / "training_state.pt").write_bytes(b"")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"base_model_name_or_path": "esm2_t6_8M_UR50D"}')
    shutil.copytree(model_dir, tmp_path / "no_weights", ignore=shutil.ignore_patterns("*.safetensors"))
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    r = run_cli("esm-extract", location, fasta, tmp_path / "out", "--include", "mean")
    assert r.exit_code == code and advice in r.stderr, r.stderr
    assert "-m " not in r.stderr.replace("protrans embed -m onehot", ""), r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("include", [["mean"], ["per_tok", "contacts"]])
def test_two_headers_of_one_id_are_refused_saying_the_id_names_the_file(run_cli, tmp_path, model_dir, include):
    """esm-extract names a file by the whole header, so `P1 first` and `P1 second` were two files
    there; here the id names it: refused before any work, the reason said in those terms (embed's
    "they are the keys of the output" meant nothing to a folder of .pt files)."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(">P1 first\nMKTAYIAKQR\n>P1 second\nMAAGW\n")
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / "out", "--include", *include)
    assert r.exit_code == 1 and r.stderr == (
        f"protrans: error: {fasta}:3, record 'P1': duplicate id (first seen on line 1); ids must be unique because "
        "each names its file, ID.pt (ID: the header up to its first space, where esm-extract names it by the whole "
        "line)\n"), r.stderr
    assert not (tmp_path / "out").exists()


def test_contacts_of_a_model_without_esms_contact_head_is_refused_before_any_work(run_cli, tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    bert = Path(__file__).parent / "data" / "tf4_reference" / "bert"
    r = run_cli("esm-extract", bert, fasta, tmp_path / "out", "--include", "mean", "contacts")
    assert r.exit_code == 1 and "--include contacts reads ESM's contact head, and this is a bert model" in r.stderr
    assert not (tmp_path / "out").exists()


def test_contacts_of_esm_1v_are_refused_before_any_work_in_esm_extracts_terms(run_cli, tmp_path, monkeypatch):
    """ESM-1v was released without a fitted contact regression (fair-esm's esm-extract wrote maps of
    its head as initialised): refused before anything is computed; the line names the models to
    give as esm-extract takes them, not as `-m`, which this command has not."""
    import protrans_cli.embed as embed

    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    model = tmp_path / "esm1v_t33_650M_UR90S_1"
    shutil.copytree(Path(__file__).parent / "data" / "esm1b_reference", model)
    monkeypatch.setattr(embed, "embed", lambda *a, **k: pytest.fail("embed ran"))
    r = run_cli("esm-extract", model, fasta, tmp_path / "out", "--include", "mean", "contacts")
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {model}: ESM-1v was released without a fitted contact "
                                             "regression; use ESM-2 or ESM-1b (e.g. esm2_t33_650M_UR50D or "
                                             "esm1b_t33_650M_UR50S)\n"), r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, regression, args, code, message", [
    ("esm2_t2_tiny", True, ["--repr_layers", "5", "--include", "mean"], 2,
     "--repr_layers 5: {ckpt} has 2 layers, so its layers run from -3 to 2 (0 the embedding layer, 2 or -1 the last)"),
    ("esm2_t2_tiny", True, ["--repr_layers", "0", "-4", "--include", "per_tok", "contacts"], 2,
     "--repr_layers -4: {ckpt} has 2 layers, so its layers run from -3 to 2 (0 the embedding layer, 2 or -1 the "
     "last)"),
    ("esm2_t2_tiny", False, ["--include", "mean", "contacts"], 1,
     "{ckpt}: the model has no contact head (no esm2_t2_tiny-contact-regression.pt beside it)"),
    ("esm1v_t2_tiny", True, ["--include", "contacts"], 1,
     "{ckpt}: ESM-1v was released without a fitted contact regression; use ESM-2 or ESM-1b (e.g. esm2_t33_650M_UR50D "
     "or esm1b_t33_650M_UR50S)"),
])
@pytest.mark.parametrize("legacy", [False, True])
def test_a_fair_esm_files_bad_layers_or_contacts_are_refused_before_it_is_converted(run_cli, tmp_path, monkeypatch,
                                                                                   name, regression, args, code,
                                                                                   message, legacy):
    """MODEL_LOCATION a fair-esm .pt: --repr_layers and --include contacts were checked once the file
    was converted (ESM-2 15B's 60 GB: minutes before a typo was refused); now from its config and
    tensors' shapes (mapped, not read), before any folder is made, with a model directory's messages.
    A file in torch's older format (`legacy`, a pickle torch.load reads whole) too: its tensors read
    as fake ones (it was checked once converted)."""
    from protrans_cli.models import fair_esm
    from tests.test_import_model import save_fair_esm

    ckpt = save_fair_esm(tmp_path / f"{name}.pt", "esm1b" if "esm1" in name else "esm2", regression=regression)
    if legacy:
        torch.save(torch.load(ckpt, weights_only=False), ckpt, _use_new_zipfile_serialization=False)
        assert not fair_esm.mapped(ckpt)
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    monkeypatch.setattr(fair_esm, "import_fair_esm", lambda *a, **k: pytest.fail("the checkpoint was converted"))
    r = run_cli("esm-extract", ckpt, fasta, tmp_path / "out", *args)
    assert r.exit_code == code and r.stderr == f"protrans: error: {message.format(ckpt=ckpt)}\n", r.stderr
    assert not (tmp_path / "out").exists()
    if code == 2:  # (the message a model directory of the same model gets)
        monkeypatch.undo()
        converted = tmp_path / name
        assert run_cli("import-model", ckpt, "-o", converted).exit_code == 0
        r = run_cli("esm-extract", converted, fasta, tmp_path / "out", *args)
        assert r.exit_code == 2 and r.stderr == f"protrans: error: {message.format(ckpt=converted)}\n", r.stderr


def test_a_fair_esm_file_in_torchs_older_format_is_checked_from_fake_tensors_named_as_given(run_cli, tmp_path,
                                                                                            monkeypatch):
    """A file torch.save wrote in its older (pickle) format is read whole by torch.load, not mapped:
    it was checked once converted. Its shapes now come from its tensors read as fake ones (no
    value read: FakeTensors), the same architecture as the zip archive's; the refusal names the
    file as given. Where that read fails (here: made to), the conversion checks it, as before."""
    from torch._subclasses.fake_tensor import FakeTensor

    from protrans_cli.models import fair_esm
    from tests.test_import_model import save_fair_esm

    (tmp_path / "zipped").mkdir()
    zipped = save_fair_esm(tmp_path / "zipped" / "esm2_t2_tiny.pt", "esm2", regression=False)
    ckpt = tmp_path / "esm2_t2_tiny.pt"
    torch.save(torch.load(zipped, weights_only=False), ckpt, _use_new_zipfile_serialization=False)
    assert fair_esm.checkpoint_shape(ckpt) == fair_esm.checkpoint_shape(zipped)
    _, state = fair_esm.read_fair_esm(ckpt, shapes_only=True)
    assert all(isinstance(t, FakeTensor) for t in state.values())
    _, whole = fair_esm.read_fair_esm(ckpt)
    assert not any(isinstance(t, FakeTensor) for t in whole.values())
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    r = run_cli("esm-extract", ckpt, fasta, tmp_path / "out", "--repr_layers", "3", "--include", "mean")
    message = (f"protrans: error: --repr_layers 3: {ckpt} has 2 layers, so its layers run from -3 to 2 (0 the embedding "
               "layer, 2 or -1 the last)\n")
    assert r.exit_code == 2 and r.stderr == message, r.stderr
    # the fake read failing: checked once converted (its message the model directory's)
    real = fair_esm._fake_tensors

    def failing(wanted):
        if wanted:
            raise RuntimeError("no FakeTensorMode in this torch")
        return real(wanted)

    monkeypatch.setattr(fair_esm, "_fake_tensors", failing)
    r = run_cli("esm-extract", ckpt, fasta, tmp_path / "out", "--include", "mean", "contacts")
    assert r.exit_code == 1 and r.stderr.endswith(
        f"protrans: error: {ckpt}: the checkpoint holds no contact head weights (a model saved without them): use a "
        "published ESM-2 or ESM-1b checkpoint\n"), r.stderr
    assert not (tmp_path / "out").exists()
    r = run_cli("esm-extract", ckpt, fasta, tmp_path / "out", "--repr_layers", "3", "--include", "mean")
    assert r.exit_code == 2 and r.stderr.endswith(message), r.stderr


@pytest.mark.parametrize("existing", [False, True])
def test_a_run_stopped_while_writing_leaves_no_file_of_its_own(run_cli, tmp_path, model_dir, monkeypatch, existing):
    """Ctrl-C at the second file: the folder as it was (an earlier run's file kept, none of this
    run's files) but for the hidden folder that keeps the proteins computed, for --resume."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "P1.pt").write_bytes(b"an earlier run's")
    saved, original = [], torch.save

    def save(entry, handle):
        saved.append(entry["label"])
        if len(saved) == 2:
            raise KeyboardInterrupt
        original(entry, handle)

    monkeypatch.setattr(torch, "save", save)
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean")
    assert r.exit_code == 130 and len(saved) == 2, r.stderr
    assert r.stderr == (f"protrans: error: interrupted: 3 of 3 proteins computed are kept in {out / PARTIAL}; run the "
                        "same command with --resume\n"), r.stderr
    assert sorted(p.name for p in out.iterdir()) == [PARTIAL, *(["P1.pt"] if existing else [])]
    if existing:
        assert (out / "P1.pt").read_bytes() == b"an earlier run's"


@pytest.mark.parametrize("step", ["contacts", "embed"])
def test_ctrl_c_while_computing_says_what_is_kept(run_cli, tmp_path, model_dir, monkeypatch, step):
    """Ctrl-C at the first batch of either computation: embed's and contacts' "what was computed is
    in X.partial" would name a file inside the hidden working folder. Nothing computed (contacts):
    the line is "interrupted", exit 130, the folder as it was; the contact maps computed (embed):
    they are kept, and said, for --resume."""
    import protrans_cli.contacts as contacts
    from protrans_cli.models import FAMILIES

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    if step == "contacts":
        monkeypatch.setattr(contacts.ContactPredictor, "predict", stop)
    else:
        monkeypatch.setattr(type(FAMILIES["esm"]), "hidden_states", stop)
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    out = tmp_path / "out"
    out.mkdir()
    (out / "P1.pt").write_bytes(b"an earlier run's")
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean", "contacts")
    if step == "contacts":
        assert r.exit_code == 130 and r.stderr == "protrans: error: interrupted\n", r.stderr
        assert [p.name for p in out.iterdir()] == ["P1.pt"]
    else:
        assert r.exit_code == 130 and r.stderr == (
            f"protrans: error: interrupted: contact maps of 3 and hidden states of 0 of 3 proteins computed are kept "
            f"in {out / PARTIAL}; run the same command with --resume\n"), r.stderr
        assert sorted(p.name for p in out.iterdir()) == [PARTIAL, "P1.pt"]
    assert (out / "P1.pt").read_bytes() == b"an earlier run's"


@pytest.mark.parametrize("model, args, message", [
    ("tf4_reference/t5_enc_half", ["--include", "bos"], "has no cls token (T5 models have none): use --include mean"),
    ("esm1b_reference", ["--include", "mean", "--truncation_seq_length", "2000"],
     "--truncation_seq_length 2000 is more than the model accepts (1022 residues"),
])
def test_embeds_refusals_name_esm_extracts_options(run_cli, tmp_path, model, args, message):
    """What embed says of its settings, said of the esm-extract options that made them (no
    --pooling or --max-length, which this command does not have)."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    r = run_cli("esm-extract", Path(__file__).parent / "data" / model, fasta, tmp_path / "out", *args)
    assert r.exit_code == 2 and message in r.stderr and "--pooling" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_the_remedy_for_proteins_beyond_training_names_what_esm_extract_has(run_cli, tmp_path, model_dir):
    """ESM-2 with --truncation_seq_length past the 1,022 residues it was trained on: embed's warning
    advised `--long-policy chunk`, an option esm-extract lacks."""
    fasta = tmp_path / "long.fa"
    fasta.write_text(f">long\n{dict(_records())['long']}\n")
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / "out", "--include", "mean", "--truncation_seq_length", "2000")
    assert r.exit_code == 0, r.stderr
    assert ("rows beyond them come from positions it never learned. --truncation_seq_length 1022 keeps every protein "
            "within them, the rest cut off; protrans embed --long-policy chunk keeps every residue, in windows within "
            "them") in r.stderr, r.stderr
    assert "--max-length" not in r.stderr and "chunk keeps every window" not in r.stderr


@pytest.mark.parametrize("include", ["per_tok", "contacts"])
def test_a_full_disk_names_the_output_folder_and_no_resume(run_cli, tmp_path, model_dir, monkeypatch, include):
    """A disk that filled at the first batch: embed's (and contacts') advice named a file inside
    the hidden working folder, and `--resume`, though no protein had been computed: the folder is
    removed, and nothing kept said."""
    import types

    from protrans_cli.io import disk, h5

    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    room = h5.EmbeddingsWriter.ensure_room

    def full(self, *args, **kwargs):  # (the file made; the disk full at its first batch)
        monkeypatch.setattr(disk.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=4 << 10, f_frsize=1))
        return room(self, *args, **kwargs)

    monkeypatch.setattr(h5.EmbeddingsWriter, "ensure_room", full)
    out = tmp_path / "out"
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", include)
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"protrans: error: {out}: no room for the next batch: 0.0 MiB free on the output's disk")
    assert r.stderr.endswith("; nothing was kept (no protein had been computed): free some space and run it "
                             "again\n"), r.stderr
    assert "esm-extract." not in r.stderr and ".partial" not in r.stderr
    assert not out.exists()


def test_a_library_caller_is_told_what_the_command_line_is(tmp_path, model_dir, monkeypatch):
    """esm_extract() called from Python: str() of its error is the message the command prints. It
    kept the text built where embed raised it, naming the hidden working file (removed by then)
    and a --resume that esm-extract lacks, once the error had been put in esm-extract's terms."""
    import types

    from protrans_cli.errors import ProtransError
    from protrans_cli.esm_extract import ExtractOptions, esm_extract
    from protrans_cli.io import disk, h5

    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    room = h5.EmbeddingsWriter.ensure_room

    def full(self, *args, **kwargs):
        monkeypatch.setattr(disk.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=4 << 10, f_frsize=1))
        return room(self, *args, **kwargs)

    monkeypatch.setattr(h5.EmbeddingsWriter, "ensure_room", full)
    out = tmp_path / "out"
    with pytest.raises(ProtransError) as caught:
        esm_extract(fasta, out, ExtractOptions(model=str(model_dir), include=("per_tok",)))
    assert str(caught.value) == caught.value.format()
    assert str(caught.value).startswith(f"{out}: no room for the next batch"), str(caught.value)
    assert "nothing was kept" in str(caught.value) and "esm-extract." not in str(caught.value)


def test_a_folder_in_the_place_of_a_file_refuses_the_run_before_any_file_moves_in(run_cli, tmp_path, model_dir):
    """OUTPUT_DIR/P2.pt a folder: the run fails, and leaves none of its files (P1.pt had been moved
    in before P2.pt was met, a failed run's file beside the earlier run's); the proteins computed
    are kept for --resume."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    out = tmp_path / "out"
    (out / "P2.pt").mkdir(parents=True)
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean")
    assert r.exit_code == 1 and "P2.pt: is a folder: the protein's .pt file cannot take its place" in r.stderr, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [PARTIAL, "P2.pt"]


def test_a_fifo_in_the_place_of_a_file_is_refused_not_deleted(run_cli, tmp_path, model_dir):
    """OUTPUT_DIR/P2.pt a named pipe: it was replaced as a file of that name is, deleted, though
    no run of protrans had made it. Refused as a folder there is, the run's files kept out."""
    import os

    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "P2.pt")
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean")
    assert r.exit_code == 1 and r.stderr.splitlines()[-1] == (
        f"protrans: error: {out / 'P2.pt'}: is a named pipe: the protein's .pt file cannot take its place; 3 of 3 "
        f"proteins computed are kept in {out / PARTIAL}; run the same command with --resume"), r.stderr
    assert sorted(p.name for p in out.iterdir()) == [PARTIAL, "P2.pt"] and (out / "P2.pt").is_fifo()


def _nan_for_tryptophan(monkeypatch, model_dir):
    """ESM's hidden states NaN for the proteins holding a W (embed records them as failed)."""
    from transformers import EsmTokenizer

    from protrans_cli.models import FAMILIES

    w = EsmTokenizer.from_pretrained(str(model_dir)).convert_tokens_to_ids("W")
    family_class = type(FAMILIES["esm"])
    original = family_class.hidden_states

    def hidden_states(self, model, inputs, layers):
        states = original(self, model, inputs, layers)
        hit = (inputs["input_ids"] == w).any(dim=1)
        for s in states:
            s[hit] = float("nan")
        return states

    monkeypatch.setattr(family_class, "hidden_states", hidden_states)


def test_one_protein_that_fails_is_said_in_the_singular(run_cli, tmp_path, model_dir, monkeypatch):
    """"1 protein could not be computed and have no file" was written."""
    _nan_for_tryptophan(monkeypatch, model_dir)
    fasta = tmp_path / "in.fa"
    fasta.write_text(">P1\nMKTAYIAKQR\n>W1\nMAAGW\n")
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / "out", "--include", "mean")
    assert r.exit_code == 0, r.stderr
    assert "1 protein could not be computed and has no file:" in r.stderr and "  W1: " in r.stderr, r.stderr


def test_proteins_that_fail_have_no_file_and_are_named_and_none_written_is_exit_1(run_cli, tmp_path, model_dir,
                                                                                monkeypatch):
    """P2 and P3 hold a W: their embeddings are NaN (their contacts are not): P1 alone gets a file,
    the others are named; a FASTA of such proteins alone writes nothing, exit 1."""
    _nan_for_tryptophan(monkeypatch, model_dir)
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / "out", "--include", "mean", "contacts")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["P1.pt"]
    assert "2 proteins could not be computed and have no file:" in r.stderr and "  P2: " in r.stderr, r.stderr
    fasta.write_text(">W1\nMAAGW\n>W2\nWKV\n")
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / "none", "--include", "per_tok", "contacts")
    assert r.exit_code == 1 and "no file was written: every protein failed" in r.stderr, r.stderr
    assert not (tmp_path / "none").exists()  # (the folder it made, left empty, is removed)


@pytest.mark.parametrize("count", [1, 25])
def test_the_proteins_without_a_file_are_listed_20_by_name_then_counted(run_cli, tmp_path, monkeypatch, count):
    """The failed proteins' lines on stderr: a heading in esm-extract's terms (no file of the failures
    is kept), the first 20 by name with their reasons, then the rest counted."""
    import protrans_cli.esm_extract
    from protrans_cli.esm_extract import ExtractSummary

    failed = {f"P{i}": "out of memory" for i in range(count)}
    monkeypatch.setattr(protrans_cli.esm_extract, "esm_extract", lambda fasta, out, options: ExtractSummary(
        output=Path(out), layers=[2], num_written=3, failed=failed))
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    r = run_cli("esm-extract", "esm2_t33_650M_UR50D", fasta, tmp_path / "out", "--include", "mean")
    assert r.exit_code == 0, r.stderr
    have = "has" if count == 1 else "have"
    assert r.stderr.splitlines()[1:] == [
        f"protrans: warning: {count} protein{'s' if count > 1 else ''} could not be computed and {have} no file:",
        *[f"protrans: warning:   P{i}: out of memory" for i in range(min(count, 20))],
        *(["protrans: warning:   ... and 5 more"] if count > 20 else [])], r.stderr


@pytest.mark.parametrize("where", ["afile", "afile/sub", "locked"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_the_model_runs(run_cli, tmp_path, model_dir,
                                                                                  monkeypatch, where):
    """A file in the place of OUTPUT_DIR or on its way, or a folder this user cannot write in:
    one line before the model is loaded or any protein computed (not once every file was)."""
    import os

    import protrans_cli.contacts
    import protrans_cli.embed

    for module, name in ((protrans_cli.embed, "embed"), (protrans_cli.contacts, "predict_contacts")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("computed before OUTPUT_DIR was checked"))
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    (tmp_path / "afile").write_text("")
    (tmp_path / "locked").mkdir()
    access = os.access  # (a folder root could write in: not writable to this user)
    monkeypatch.setattr(os, "access", lambda p, mode, **k: access(p, mode, **k) and not (
        str(p).endswith("locked") and mode & os.W_OK))
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / where, "--include", "mean", "contacts")
    said = {"afile": "is a file", "afile/sub": f"{tmp_path / 'afile'}: is not a directory, so no folder can go inside",
            "locked": f"{tmp_path / 'locked'}: permission denied: no file can be created in this folder"}[where]
    assert r.exit_code in (1, 2) and said in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "esm2_tiny", "in.fa", "locked"]
    assert not any((tmp_path / "locked").iterdir())


@pytest.mark.parametrize("record, problem", [("", "empty sequence"), ("MK1T", "invalid character '1' at residue 3")])
def test_a_bad_record_names_embeds_skip_once(run_cli, tmp_path, model_dir, record, problem):
    """embed's advice for a bad record, `--invalid-policy skip`, is said as protrans embed's once: the
    rule's name holds the flag, and each of a dozen renaming blocks renamed it again ("protrans embed
    protrans embed ... x8 --invalid-policy skip")."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(f">P1\nMKT\n>EX0291\n{record}\n")
    r = run_cli("esm-extract", model_dir, fasta, tmp_path / "out", "--include", "mean")
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {fasta}:3, record 'EX0291': {problem} (protrans embed "
                                             "--invalid-policy skip leaves such records out)\n"), r.stderr
    assert not (tmp_path / "out").exists()


def test_each_of_embeds_flags_is_renamed_once_in_esm_extracts_terms():
    """Every rule of `_FLAGS` on an error and a warning that names all of embed's flags at once: each
    said once in esm-extract's terms, none renamed twice (a rule's name may hold its own flag)."""
    from protrans_cli import console
    from protrans_cli.errors import InputError
    from protrans_cli.esm_extract import _FLAGS, _in_esm_extract_terms

    message = " | ".join(_FLAGS)
    with pytest.raises(InputError) as raised, _in_esm_extract_terms():
        assert console._named(message) == " | ".join(_FLAGS.values())
        raise InputError(message)
    assert raised.value.message == " | ".join(_FLAGS.values())
    assert "protrans embed protrans embed" not in raised.value.message and not console.state.names


@pytest.mark.parametrize("inside", ["", "checkpoints"])
def test_an_output_folder_in_the_model_directory_is_refused(run_cli, tmp_path, model_dir, inside):
    """OUTPUT_DIR the model directory (or a folder of it that its training run uses): embed refused
    its work file there, in words esm-extract cut away ("error: ; nothing was kept (no protein had
    been computed)"). A new folder of its own in the model directory is harmless: written."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(INPUT)
    before = sorted(p.name for p in model_dir.iterdir())
    out = model_dir / inside if inside else model_dir
    r = run_cli("esm-extract", model_dir, fasta, out, "--include", "mean")
    what = "is the model directory " + str(model_dir) + ": the .pt files would go among the model's files" \
        if not inside else "is the folder of the training run's checkpoints: writing it could replace its files"
    assert r.exit_code == 2 and r.stderr.strip() == f"protrans: error: {out} {what} (choose another OUTPUT_DIR)", \
        r.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == before
    r = run_cli("esm-extract", model_dir, fasta, model_dir / "pt", "--include", "mean")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([*before, "pt"]) and _files(model_dir / "pt")

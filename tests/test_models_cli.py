"""`protrans models`: tables and JSON listing families, presets and checkpoints."""

from __future__ import annotations

import json
import os

from protrans_cli.models import CHECKPOINTS, FAMILIES


def test_json_lists_every_family_preset_and_checkpoint(run_cli):
    result = run_cli("models", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [f["name"] for f in data["families"]] == list(FAMILIES)
    assert {c["name"] for c in data["checkpoints"]} == set(CHECKPOINTS)
    assert sum(c["default"] for c in data["checkpoints"]) == 1
    rows = {(p["family"], p["name"]): p for p in data["presets"]}
    assert len(rows) == sum(len(f.presets) for f in FAMILIES.values())
    bert = rows[("bert", "prot_bert")]
    assert bert["embedding_dim"] == 1024 and bert["num_layers"] == 30
    assert 400e6 < bert["num_params"] < 440e6
    t5 = next(c for c in data["checkpoints"] if c["name"] == "prot_t5_xl_half")
    assert t5["hub_id"] == "Rostlab/prot_t5_xl_half_uniref50-enc" and t5["embedding_dim"] == 1024
    layouts = {f["name"]: f["input_layout"] for f in data["families"]}
    assert layouts["bert"] == "[CLS] M K T [SEP]"
    assert layouts["t5"] == "M K T </s>"
    assert layouts["esm"] == layouts["esmc"] == "<cls> MKT <eos>"
    assert layouts["xlnet"].startswith("M K T <sep> <cls>")
    packs = {f["name"]: f["packing"] for f in data["families"]}
    assert packs == {name: name in ("bert", "roberta", "albert", "electra", "esm") for name in FAMILIES}
    assert {f["name"] for f in data["families"] if f["flex_attention"]} == {"t5"}


def test_the_esm_row_says_saprot_refuses_packing(run_cli):
    """The esm family packs, but SaProt (an ESM checkpoint whose vocabulary pairs residues with 3Di
    states) refuses --packing: the table said "yes" for the whole family."""
    from protrans_cli.models.saprot import SaProtFamily

    assert SaProtFamily.packable is False and SaProtFamily.variant == "SaProt"
    data = json.loads(run_cli("models", "--families", "--json").stdout)
    excepted = {f["name"]: f["packing_except"] for f in data["families"]}
    assert excepted == {name: ["SaProt"] if name == "esm" else [] for name in FAMILIES}
    result = run_cli("models", "--families")
    assert result.exit_code == 0, result.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[4].strip() for line in result.stdout.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    assert rows["esm"] == "yes (not SaProt)" and rows["bert"] == "yes" and rows["xlnet"] == "no", rows
    assert rows["t5"] == "embed --attention flex"


def test_the_builtin_encodings_are_listed_with_what_they_embed_to(run_cli, tmp_path):
    """`embed -m` takes `onehot` and `blosum62` besides the checkpoints: `protrans models` lists
    them (table and JSON), with the width of the arrays `embed` writes for each, one layer and no
    weights; with the checkpoints (--checkpoints), not under --family (they belong to none)."""
    import h5py

    from protrans_cli.embedders import WEIGHTLESS

    (tmp_path / "a.fa").write_text(">a\nMKTAYUBZX\n")
    widths = {}
    for name in WEIGHTLESS:  # the reference: what embed writes
        result = run_cli("embed", tmp_path / "a.fa", "-m", name, "-o", tmp_path / f"{name}.h5")
        assert result.exit_code == 0, result.stderr
        with h5py.File(tmp_path / f"{name}.h5", "r") as f:
            datasets = []
            f.visititems(lambda key, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
            widths[name] = {d.shape[-1] for d in datasets if d.ndim >= 2}
    assert widths == {"onehot": {21}, "blosum62": {20}}
    for args in (["models", "--json"], ["models", "--checkpoints", "--json"]):
        data = json.loads(run_cli(*args).stdout)
        assert [(e["name"], e["embedding_dim"], e["num_layers"], e["weights"]) for e in data["encodings"]] == [
            ("onehot", 21, 1, False), ("blosum62", 20, 1, False)]
        assert "composition" in data["encodings"][0]["description"]
        assert "BLOSUM62" in data["encodings"][1]["description"]
    assert "encodings" not in json.loads(run_cli("models", "--families", "--presets", "--json").stdout)
    assert "encodings" not in json.loads(run_cli("models", "--family", "esm", "--json").stdout)
    for args in (["models"], ["models", "--checkpoints"]):
        result = run_cli(*args)
        assert result.exit_code == 0, result.stderr
        assert "Built-in encodings (protrans embed -m NAME; no weights)" in result.stdout
        rows = {cells[0]: cells[1:3] for line in result.stdout.splitlines()
                if line.startswith("│") and (cells := [c.strip() for c in line.split("│")[1:-1]])}
        assert rows["onehot"] == ["21", "1"] and rows["blosum62"] == ["20", "1"], rows
    assert "Built-in encodings" not in run_cli("models", "--family", "t5").stdout
    assert "Built-in encodings" not in run_cli("models", "--presets").stdout


def test_the_stored_catalog_is_what_the_models_give():
    """`protrans models` and `train --list-presets` read protrans_cli/catalog.json; it must hold
    what the families, presets and checkpoints give now (parameter counts built on the meta
    device). If this fails, regenerate it:
    python -m protrans_cli.models.listing > protrans_cli/catalog.json"""
    from protrans_cli.catalog import PATH
    from protrans_cli.models.listing import describe

    assert json.loads(PATH.read_text()) == json.loads(json.dumps(describe())), \
        "stale catalog: python -m protrans_cli.models.listing > protrans_cli/catalog.json"


def test_listing_imports_no_model_code(tmp_path):
    """The listings read the stored catalog: no torch, transformers or model registry (they took
    about 6 s, counting 40 presets' parameters on the meta device)."""
    from conftest import heavy_imports_of

    argvs = [["models"], ["models", "--json", "--family", "t5"], ["train", "--list-presets"],
             ["train", "--list-presets", "--family", "esm"]]
    out = heavy_imports_of(argvs, ("torch", "transformers", "protrans_cli.models"))
    assert out.returncode == 0, out.stderr


def test_train_lists_one_familys_presets_and_refuses_an_unknown_one(run_cli):
    result = run_cli("train", "--list-presets", "--family", "esm")
    assert result.exit_code == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert {r[0] for r in rows} == {"esm"} and [r[1] for r in rows] == list(FAMILIES["esm"].presets)
    assert ("esm2_t33_650M", "651M") in {(r[1], r[2]) for r in rows}
    result = run_cli("train", "--list-presets", "--family", "gpt7")
    assert result.exit_code == 2 and "unknown model family 'gpt7'" in result.stderr


def test_family_filter_and_sections(run_cli):
    result = run_cli("models", "--checkpoints", "--family", "esm", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"checkpoints"}
    assert [c["embedding_dim"] for c in data["checkpoints"]] == [320, 480, 640, 1280, 2560, 5120] + [480, 1280, 1280] + [1280] * 6
    assert {c["family"] for c in data["checkpoints"]} == {"esm"}


def test_a_family_without_published_checkpoints_says_so_not_an_empty_table(run_cli):
    """Transformer-XL has presets and no published checkpoint in the catalog: a line saying so
    (with how to get one), where a table of headers alone was printed."""
    result = run_cli("models", "--family", "transfo_xl")
    assert result.exit_code == 0, result.stderr
    assert "Published checkpoints: none listed for transfo_xl (train one: protrans train --family transfo_xl)" \
        in result.stdout and "hub id" not in result.stdout
    # --checkpoints alone (no presets table to read the name from) names the family all the same
    result = run_cli("models", "--checkpoints", "--family", "transfo_xl")
    assert result.exit_code == 0 and result.stdout.strip() == (
        "Published checkpoints: none listed for transfo_xl (train one: protrans train --family transfo_xl)")
    assert json.loads(run_cli("models", "--checkpoints", "--family", "transfo_xl", "--json").stdout) == {
        "checkpoints": []}


def test_tables_name_the_default_checkpoint(run_cli):
    result = run_cli("models", "--checkpoints")
    assert result.exit_code == 0
    assert "prot_t5_xl_half (default)" in result.stdout
    assert "Rostlab/prot_t5_xl_half_uniref50-enc" in result.stdout
    assert "facebook/esm2_t33_650M_UR50D" in result.stdout


def test_unknown_family_is_one_line_error(run_cli):
    result = run_cli("models", "--family", "gpt7")
    assert result.exit_code == 2  # a flag value: a usage error
    assert "unknown model family 'gpt7'" in result.stderr and "Traceback" not in result.stderr



def test_tables_into_a_closed_pipe_exit_141_quietly(monkeypatch):
    # rich's own broken-pipe handling exited 1; every other command exits 141 (troubleshooting.md).
    import io
    import sys

    import pytest

    from protrans_cli.cli import main

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):  # the quiet exit points this descriptor at /dev/null
            return self._fd

    closed = ClosedPipe()
    closed._fd = os.dup(1)
    monkeypatch.setattr(sys, "stdout", closed)
    try:
        with pytest.raises(SystemExit) as info:
            main(["models"])
    finally:
        os.close(closed._fd)
    assert info.value.code == 141


def test_the_families_table_says_where_each_family_packs(run_cli):
    """T5 packs in embed under --attention flex; the table said "no" (the JSON's `packing` is
    the --packing of train and embed's default attention, unchanged)."""
    result = run_cli("models", "--families")
    assert result.exit_code == 0, result.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:]]
            for line in result.stdout.splitlines() if line.startswith("│") and line.split("│")[1].strip()}
    assert rows["t5"][2] == "embed --attention flex"
    assert rows["bert"][2] == "yes" and rows["xlnet"][2] == "no" and rows["transfo_xl"][2] == "no"


def test_an_encoder_only_checkpoint_is_not_listed_as_part_of_a_larger_model(run_cli):
    """Rostlab/prot_t5_xl_half_uniref50-enc holds ProtT5-XL's encoder alone (1.2B): it was listed
    as "1.2B of 2.8B", as if its download held the decoder too, where the full checkpoints do."""
    data = json.loads(run_cli("models", "--checkpoints", "--family", "t5", "--json").stdout)
    rows = {c["name"]: c for c in data["checkpoints"]}
    assert rows["prot_t5_xl_half"]["total_params"] is None
    assert rows["prot_t5_xl_uniref50"]["total_params"] > 2e9  # encoder + decoder
    table = run_cli("models", "--checkpoints", "--family", "t5").stdout
    half = next(line for line in table.splitlines() if "prot_t5_xl_half" in line)
    assert "1.2B" in half and " of " not in half, half

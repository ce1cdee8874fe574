"""`protrans import-model`: fair-esm `.pt` checkpoints (ESM-2, ESM-1b) as transformers model directories.

The checkpoints are made here from the tiny models of tests/data/esm_reference (ESM-2) and
esm1b_reference (ESM-1b), their weights renamed back to fair-esm's and saved as fair-esm's files
are (`{"model": ..., "cfg": {"model": Namespace(...)}}`, `{"model": ..., "args": Namespace(
arch="roberta_large", ...)}`, the contact regression in NAME-contact-regression.pt); the converted
models must give esm-extract's rows and fair-esm's contacts in their reference.safetensors.
tests/data/fair_esm_dictconfig.pt (scripts/make_fair_esm_fixture.py) holds a real omegaconf
DictConfig as its config; omegaconf is not needed here.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from protrans_cli.io.h5 import PER_RESIDUE, EmbeddingsReader

DATA = Path(__file__).parent / "data"
REFERENCES = {"esm2": DATA / "esm_reference", "esm1b": DATA / "esm1b_reference"}
LAYERS, DIM, HEADS = 2, 8, 2
SHORT = ("rare", "one", "lower", "mixed_40")  # (the reference's long protein needs --long-policy)
REGRESSION = ("contact_head.regression.weight", "contact_head.regression.bias")


def fair_esm_names(esm1b: bool, layers: int = LAYERS) -> list[str]:
    """The parameter names of fair-esm's ESM2 (or ProteinBertModel roberta_large) as its files hold them."""
    names = ["embed_tokens.weight", "emb_layer_norm_after.weight", "emb_layer_norm_after.bias", *REGRESSION,
             "lm_head.weight", "lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias",
             "lm_head.layer_norm.weight", "lm_head.layer_norm.bias"]
    if esm1b:
        names += ["embed_positions.weight", "emb_layer_norm_before.weight", "emb_layer_norm_before.bias"]
    for n in range(layers):
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm"):
            names += [f"layers.{n}.{part}.weight", f"layers.{n}.{part}.bias"]
    return names


def fair_esm_state(arch: str) -> dict:
    """The tiny model's weights under fair-esm's names (and prefixes), rotary inv_freq included
    as fair-esm's ESM-2 stores it."""
    from transformers import EsmForMaskedLM

    from protrans_cli.models.fair_esm import hf_name

    esm1b = arch == "esm1b"
    hf = EsmForMaskedLM.from_pretrained(REFERENCES[arch]).state_dict()
    state = {}
    for name in fair_esm_names(esm1b):
        prefix = "encoder." if name.startswith(("lm_head.", "contact_head.")) else "encoder.sentence_encoder."
        state[prefix + name] = hf[hf_name(name)].clone()
    if not esm1b:
        head_dim = DIM // HEADS
        for n in range(LAYERS):
            state[f"encoder.sentence_encoder.layers.{n}.self_attn.rot_emb.inv_freq"] = \
                1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    return state


def save_fair_esm(path: Path, arch: str, *, regression: bool = True, config=True) -> Path:
    """A fair-esm checkpoint of the tiny `arch` at `path` (and its contact regression beside it)."""
    state = fair_esm_state(arch)
    head = {k: state.pop("encoder." + k) for k in REGRESSION}
    if arch == "esm1b":
        args = argparse.Namespace(arch="roberta_large", encoder_layers=LAYERS, encoder_embed_dim=DIM,
                                  encoder_ffn_embed_dim=4 * DIM, encoder_attention_heads=HEADS,
                                  max_positions=1024, token_dropout=True, dropout=0.1)
        data = {"model": state, "args": args}
    else:
        cfg = argparse.Namespace(encoder_layers=LAYERS, encoder_embed_dim=DIM, encoder_ffn_embed_dim=4 * DIM,
                                 encoder_attention_heads=HEADS, token_dropout=True, _name="ESM2")
        data = {"model": state, "cfg": {"model": cfg, "task": argparse.Namespace(_name="masked_lm")}}
    if not config:
        data = {"model": state}
    elif config == "fairseq":  # (fairseq's checkpoints hold both keys, the one not used None)
        data = {**data, "args": data.get("args"), "cfg": data.get("cfg")}
    torch.save(data, path)
    if regression:
        torch.save({"model": head}, path.with_name(path.stem + "-contact-regression.pt"))
    return path


def _rows(run_cli, tmp_path, model_dir, arch) -> dict:
    out, fasta = tmp_path / f"{arch}.h5", tmp_path / "short.fa"
    fasta.write_text("".join(f">{i}\n{_sequence(arch, i)}\n" for i in SHORT))
    r = run_cli("embed", fasta, "-m", model_dir, "-o", out, "--device", "cpu", "-j", "1",
                "--layer", "-1", "--layer", "0")
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(out) as reader:
        return {i: a for i, a, _ in reader.items(PER_RESIDUE)}


@pytest.mark.parametrize("arch", sorted(REFERENCES))
def test_converted_model_gives_esm_extract_rows(run_cli, tmp_path, arch):
    """embed with the converted model: esm-extract's rows (fair-esm's own model) to 1e-5."""
    from safetensors.numpy import load_file

    ckpt = save_fair_esm(tmp_path / f"{arch}_t2_tiny.pt", arch)
    out = tmp_path / "converted"
    r = run_cli("import-model", ckpt, "-o", out)
    assert r.exit_code == 0, r.stderr
    kind = "ESM-1b" if arch == "esm1b" else "ESM-2"
    assert r.stderr == f"imported {kind} (2 layers, 8 dimensions, 2 heads, contact head: yes) into {out}\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # (no partial left)
    ref = load_file(REFERENCES[arch] / "reference.safetensors")
    rows = _rows(run_cli, tmp_path, out, arch)
    for ident in SHORT:
        got = rows[ident]  # (2, L, D): layers -1 and 0 as asked
        np.testing.assert_allclose(got[0], ref[f"rows/{ident}/{LAYERS}"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got[1], ref[f"rows/{ident}/0"], atol=1e-5, rtol=0)
    from safetensors.torch import load_file as load_tensors

    embed = load_tensors(out / "model.safetensors")["esm.embeddings.word_embeddings.weight"]
    # ESM-1b's <mask> row zeroed as fair-esm's loader zeroes it ("for token drop"); ESM-2's kept
    assert (embed[32] == 0).all() == (arch == "esm1b")


@pytest.mark.parametrize("arch", sorted(REFERENCES))
def test_contact_regression_beside_the_file_gives_fair_esm_contacts(run_cli, tmp_path, arch):
    from safetensors.numpy import load_file

    ckpt = save_fair_esm(tmp_path / f"{arch}_t2_tiny.pt", arch)
    assert run_cli("import-model", ckpt, "-o", tmp_path / "m").exit_code == 0
    fasta = tmp_path / "few.fa"
    fasta.write_text(">mixed_20\n" + _sequence(arch, "mixed_20") + "\n")
    r = run_cli("contacts", fasta, "-m", tmp_path / "m", "-o", tmp_path / "c.h5", "--storage-dtype", "float32")
    assert r.exit_code == 0, r.stderr
    import h5py

    with h5py.File(tmp_path / "c.h5", "r") as f:
        (key,) = list(f["contacts"])
        got = f["contacts"][key][()]
    np.testing.assert_allclose(got, load_file(REFERENCES[arch] / "reference.safetensors")["contacts/mixed_20"],
                               atol=1e-5, rtol=0)


def _sequence(arch: str, ident: str) -> str:
    lines = (REFERENCES[arch] / "input.fa").read_text().split(">")
    return next(block.split("\n", 1)[1].replace("\n", "") for block in lines if block.startswith(ident + "\n"))


def test_without_regression_file_the_model_has_no_contact_head(run_cli, tmp_path):
    """As fair-esm's ESM-1v: no regression file, no head (contacts refuses the model rather than
    drawing maps from transformers' initial head)."""
    ckpt = save_fair_esm(tmp_path / "esm2_tiny.pt", "esm2", regression=False)
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "contact head: no" in r.stderr
    fasta = tmp_path / "one.fa"
    fasta.write_text(">p\nMKTAYIAK\n")
    r = run_cli("contacts", fasta, "-m", tmp_path / "m", "-o", tmp_path / "c.h5")
    assert r.exit_code == 1 and "no contact head" in r.stderr


def test_state_dict_alone_is_read_from_its_shapes(run_cli, tmp_path):
    """`{"model": ...}` without cfg or args (a fine-tuned model saved alone): layers, widths and the
    heads (from the contact regression: one weight per layer and head) from the tensors."""
    ckpt = save_fair_esm(tmp_path / "tuned.pt", "esm2", config=False)
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "imported ESM-2 (2 layers, 8 dimensions, 2 heads, contact head: yes)" in r.stderr


def test_half_precision_file_stays_half(run_cli, tmp_path):
    from safetensors import safe_open

    ckpt = save_fair_esm(tmp_path / "esm2_tiny.pt", "esm2")
    data = torch.load(ckpt, weights_only=False)
    data["model"] = {k: v.half() for k, v in data["model"].items()}
    torch.save(data, ckpt)
    assert run_cli("import-model", ckpt, "-o", tmp_path / "m").exit_code == 0
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys() if "inv_freq" not in k} == {"F16"}
    assert '"dtype": "float16"' in (tmp_path / "m" / "config.json").read_text()


def test_torch_legacy_format_is_read_too(run_cli, tmp_path):
    """A checkpoint in torch's format before 1.6 (no zip archive), whose globals torch does not list:
    learnt one refusal at a time, each read as a stand-in (a class that would write a file included)."""
    ckpt = save_fair_esm(tmp_path / "esm1b_old.pt", "esm1b")
    data = torch.load(ckpt, weights_only=False)
    evil = Pwned()
    evil.path = str(tmp_path / "PWNED")
    data["args"].extra = [evil, {"getattr": getattr}]
    torch.save(data, ckpt, _use_new_zipfile_serialization=False)
    assert ckpt.read_bytes()[:1] == b"\x80"
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "imported ESM-1b (2 layers, 8 dimensions, 2 heads, contact head: yes)" in r.stderr
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("arch", sorted(REFERENCES))
def test_fairseq_checkpoint_with_args_or_cfg_none(run_cli, tmp_path, arch):
    ckpt = save_fair_esm(tmp_path / f"{arch}.pt", arch, config="fairseq")
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert f"imported {'ESM-1b' if arch == 'esm1b' else 'ESM-2'} (2 layers" in r.stderr


def test_dictconfig_fixture_is_read_without_omegaconf(run_cli, tmp_path):
    """A real omegaconf DictConfig as cfg["model"] (scripts/make_fair_esm_fixture.py): its values are
    read from the stand-ins (the heads, 2, are in the config alone: no regression file, and 8
    dimensions are in no published table)."""
    import sys

    assert "omegaconf" not in sys.modules
    r = run_cli("import-model", DATA / "fair_esm_dictconfig.pt", "-o", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "imported ESM-2 (2 layers, 8 dimensions, 2 heads, contact head: no)" in r.stderr
    assert "omegaconf" not in sys.modules


class Pwned:
    """A class whose unpickling would write a file (its __setstate__) if it were ever run."""

    marker = None

    def __setstate__(self, state):
        Path(state["path"]).write_text("pwned")


class System:
    """Unpickles as os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickled_code_never_runs(run_cli, tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = save_fair_esm(tmp_path / "esm2_tiny.pt", "esm2")
    data = torch.load(ckpt, weights_only=False)
    evil = Pwned()
    evil.path = str(marker)  # (pickled state: {"path": ...}, given to __setstate__ on load)
    data["cfg"]["model"].extra = evil
    torch.save(data, ckpt)
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m")
    assert r.exit_code == 0, r.stderr  # (the stand-in took the state and did nothing)
    assert not marker.exists()

    data["cfg"]["model"].extra = System(f"touch {marker}")
    torch.save(data, ckpt)
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m2")
    assert r.exit_code == 1 and not marker.exists() and not (tmp_path / "m2").exists()
    assert r.stderr.count("\n") == 1 and "esm2_tiny.pt" in r.stderr and "Traceback" not in r.stderr


def _refusal(run_cli, tmp_path, path, *expected, code=1):
    out = tmp_path / "out"
    r = run_cli("import-model", path, "-o", out)
    assert r.exit_code == code, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for text in expected:
        assert text in r.stderr, r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return r.stderr


def test_bad_inputs_one_line_each(run_cli, tmp_path):
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint\n")
    _refusal(run_cli, tmp_path, text, "text.pt", "not a torch checkpoint")
    good = save_fair_esm(tmp_path / "esm2_tiny.pt", "esm2")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:2000])
    _refusal(run_cli, tmp_path, cut, "cut.pt", "cannot read the checkpoint")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    _refusal(run_cli, tmp_path, tmp_path / "other.pt", "other.pt", "has no `model` state dict")
    torch.save({"model": fair_esm_state("esm1b"), "args": argparse.Namespace(arch="msa_transformer")},
               tmp_path / "msa.pt")
    _refusal(run_cli, tmp_path, tmp_path / "msa.pt", "msa.pt", "msa_transformer", "MSA Transformer")
    torch.save({"model": fair_esm_state("esm1b"), "cfg": {"model": argparse.Namespace(encoder_layers=LAYERS)}},
               tmp_path / "mixed.pt")
    _refusal(run_cli, tmp_path, tmp_path / "mixed.pt", "mixed.pt", "holds embed_positions")
    state = fair_esm_state("esm2")
    state["encoder.sentence_encoder.layers.1.fc2.weight"] = torch.zeros(8, 16)  # (layer 0's fc1 makes 32)
    torch.save({"model": state}, tmp_path / "shapes.pt")
    _refusal(run_cli, tmp_path, tmp_path / "shapes.pt", "shapes.pt", "do not make one ESM-2 model")
    h5 = tmp_path / "e.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    _refusal(run_cli, tmp_path, h5, "e.h5", "an HDF5 file")
    (tmp_path / "folder").mkdir()
    _refusal(run_cli, tmp_path, tmp_path / "folder", "folder", "is a directory")
    _refusal(run_cli, tmp_path, tmp_path / "esm2_tiny-contact-regression.pt", "give esm2_tiny.pt")
    _refusal(run_cli, tmp_path, tmp_path / "absent.pt", "absent.pt", "no such file")
    _refusal(run_cli, tmp_path, "-", "not stdin", code=2)  # (README: read in place, exit 2)
    assert "`import-model`'s, which are read in place" in (Path(__file__).parents[1] / "README.md").read_text()


def test_existing_output_needs_force(run_cli, tmp_path):
    ckpt = save_fair_esm(tmp_path / "esm2_tiny.pt", "esm2")
    assert run_cli("import-model", ckpt, "-o", tmp_path / "m").exit_code == 0
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m")
    assert r.exit_code == 2 and "--force" in r.stderr
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m", "--force")
    assert r.exit_code == 0, r.stderr


def test_the_imported_model_carries_a_card_and_a_users_readme_is_kept(run_cli, tmp_path):
    """README.md: what it was converted from, the family, the parameters (those transformers'
    own EsmForMaskedLM loads from the directory) and the transformers snippet; a README.md of the
    user's own in the folder --force replaces is kept, protrans's own is rewritten."""
    from transformers import EsmForMaskedLM

    from protrans_cli.training.card import MARK

    ckpt = save_fair_esm(tmp_path / "esm2_t2_tiny.pt", "esm2")
    out = tmp_path / "m"
    assert run_cli("import-model", ckpt, "-o", out).exit_code == 0
    card = (out / "README.md").read_text()
    params = sum(p.numel() for p in EsmForMaskedLM.from_pretrained(out).parameters())
    assert MARK in card and "library_name: transformers" in card and "- esm\n" in card
    assert "ESM-2 from fair-esm's checkpoint `esm2_t2_tiny.pt`" in card
    assert f"- Parameters: {params:,}\n" in card and "- Architecture: 2 layers x hidden 8 x 2 attention heads" in card
    assert "- Contact head: from `esm2_t2_tiny-contact-regression.pt`" in card
    assert "protrans embed -m . proteins.fasta" in card and "from transformers import AutoTokenizer, EsmModel" in card
    (out / "README.md").write_text(card.replace("tiny", "small"))  # (still protrans's: rewritten)
    assert run_cli("import-model", ckpt, "-o", out, "--force").exit_code == 0
    assert (out / "README.md").read_text() == card
    (out / "README.md").write_text("# my ESM-2\n")
    assert run_cli("import-model", ckpt, "-o", out, "--force").exit_code == 0
    assert (out / "README.md").read_text() == "# my ESM-2\n"
    bare = save_fair_esm(tmp_path / "esm2_bare.pt", "esm2", regression=False)
    assert run_cli("import-model", bare, "-o", tmp_path / "bare").exit_code == 0
    assert "- Contact head: none" in (tmp_path / "bare" / "README.md").read_text()


@pytest.mark.parametrize("kind", ["esm2", "esm1b", "esmc"])
def test_conversion_builds_no_model_with_weights_of_its_own(run_cli, tmp_path, monkeypatch, kind):
    """The converted model is built with its parameters on the meta device and given the
    checkpoint's tensors themselves: one built with (randomly initialised) weights of its own held
    the weights twice over. Every model the import builds, the one read back included, is recorded
    as its construction ends (post_init)."""
    from transformers import PreTrainedModel

    built = []
    post_init = PreTrainedModel.post_init

    def recording(self):
        post_init(self)
        built.append((type(self).__name__, {p.device.type for p in self.parameters()}))

    ckpt = DATA / "esmc_reference" / "esmc_tiny.pth" if kind == "esmc" else save_fair_esm(tmp_path / f"{kind}.pt", kind)
    monkeypatch.setattr(PreTrainedModel, "post_init", recording)
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    top = "EsmCForMaskedLM" if kind == "esmc" else "EsmForMaskedLM"
    assert [name for name, _ in built].count(top) >= 2  # (the converted model, the one read back)
    assert all(devices == {"meta"} for _, devices in built), built


def test_the_converted_model_is_freed_before_the_directory_is_read_back(run_cli, tmp_path, monkeypatch):
    """One model in memory at a time: when load_model reads the written directory back, the
    converted model and the checkpoint's tensors it was given are gone, and the file torch.load
    mapped is no longer mapped (its mapping is held in reference cycles of torch.load's until the
    collector runs: the collector is left here to run when it may, as in a long import)."""
    import gc
    import weakref

    import protrans_cli.models
    import protrans_cli.models.imported as imported

    maps = Path("/proc/self/maps")
    ckpt = save_fair_esm(tmp_path / "esm2_tiny.pt", "esm2")
    given, alive, mapped = [], [], []
    assign, load_model = imported.assign, protrans_cli.models.load_model

    def recording(model, weights, dtype):
        given.extend(weakref.ref(t) for t in [model, *weights.values()])
        if maps.exists():
            mapped.append(str(ckpt) in maps.read_text())
        return assign(model, weights, dtype)

    def loading(*args, **kwargs):
        alive.append(sum(ref() is not None for ref in given))
        if maps.exists():
            mapped.append(str(ckpt) in maps.read_text())
        return load_model(*args, **kwargs)

    monkeypatch.setattr(imported, "assign", recording)
    monkeypatch.setattr(protrans_cli.models, "load_model", loading)
    gc.disable()
    try:
        r = run_cli("import-model", ckpt, "-o", tmp_path / "m")
    finally:
        gc.enable()
    assert r.exit_code == 0, r.stderr
    assert len(given) > 20 and alive == [0]
    assert mapped in ([True, False], [])  # (mapped while converted; Linux only)


def test_a_weight_read_back_otherwise_fails_the_import(run_cli, tmp_path, monkeypatch):
    """The converted model is freed before the directory is read back: the check compares the
    weights read back with digests of the converted ones, and still names the first that differs."""
    import protrans_cli.models

    load_model = protrans_cli.models.load_model

    def altered(*args, **kwargs):
        loaded = load_model(*args, **kwargs)
        with torch.no_grad():
            loaded.model.esm.encoder.layer[1].intermediate.dense.weight[0, 0] += 1e-6
        return loaded

    monkeypatch.setattr(protrans_cli.models, "load_model", altered)
    ckpt = save_fair_esm(tmp_path / "esm2_tiny.pt", "esm2")
    r = run_cli("import-model", ckpt, "-o", tmp_path / "m")
    assert r.exit_code == 1
    assert "the model read back differs in esm.encoder.layer.1.intermediate.dense.weight" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ckpt.name, "esm2_tiny-contact-regression.pt"])


def test_embed_with_a_pt_file_names_import_model(run_cli, tmp_path):
    ckpt = save_fair_esm(tmp_path / "mine.pt", "esm2")
    fasta = tmp_path / "one.fa"
    fasta.write_text(">p\nMKTAYIAK\n")
    r = run_cli("embed", fasta, "-m", ckpt, "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and f"protrans import-model {ckpt} -o" in r.stderr, r.stderr


def test_esm_extract_converts_a_pt_path_for_the_run(run_cli, tmp_path, monkeypatch):
    """fair-esm's esm-extract takes MODEL.pt: so does the drop-in, through a model directory in its
    working folder that is gone afterwards (none under TMPDIR); its files hold esm-extract's rows and means."""
    import tempfile

    from safetensors.numpy import load_file

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ckpt = save_fair_esm(tmp_path / "esm2_t2_tiny.pt", "esm2")
    fasta = tmp_path / "short.fa"
    fasta.write_text("".join(f">{i}\n{_sequence('esm2', i)}\n" for i in SHORT))
    r = run_cli("esm-extract", ckpt, fasta, tmp_path / "out", "--repr_layers", "0", "2", "--include", "mean",
                "per_tok")
    assert r.exit_code == 0, r.stderr
    assert f"converting {ckpt} for this run (`protrans import-model {ckpt} -o DIR`" in r.stderr
    def converted():  # (torch's compiler caches may be made there too)
        return [p for p in scratch.iterdir() if p.name.startswith("protrans-import-model")]

    assert converted() == []
    ref = load_file(REFERENCES["esm2"] / "reference.safetensors")
    for ident in SHORT:
        got = torch.load(tmp_path / "out" / f"{ident}.pt", weights_only=True)
        for layer in (0, 2):
            np.testing.assert_allclose(got["representations"][layer].numpy(), ref[f"rows/{ident}/{layer}"],
                                       atol=1e-5, rtol=0)
            np.testing.assert_allclose(got["mean_representations"][layer].numpy(), ref[f"mean/{ident}/{layer}"],
                                       atol=1e-5, rtol=0)

    r = run_cli("esm-extract", ckpt, tmp_path / "missing.fa", tmp_path / "out2", "--include", "mean")
    assert r.exit_code == 1 and "missing.fa: no such file" in r.stderr, r.stderr
    assert "converting" not in r.stderr  # (said before minutes of converting a 650M model, not after)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[:2000])
    r = run_cli("esm-extract", cut, fasta, tmp_path / "out2", "--include", "mean")
    assert r.exit_code == 1 and "cut.pt: cannot read the checkpoint" in r.stderr, r.stderr
    assert not (tmp_path / "out2").exists() and converted() == []
    r = run_cli("esm-extract", tmp_path / "esm2_t2_tiny-contact-regression.pt", fasta, tmp_path / "out2",
                "--include", "mean")
    assert r.exit_code == 1 and "give esm2_t2_tiny.pt" in r.stderr, r.stderr


def test_esm_extract_reads_a_short_names_weights_from_fair_esms_download(run_cli, tmp_path, monkeypatch):
    """fair-esm's esm-extract finds a short name's weights in torch hub's checkpoints folder, where
    it downloaded them, and runs there without network; the drop-in failed offline ("not in the
    local Hugging Face cache") with the same file on the node. The Hugging Face cache is read first."""
    import tempfile

    import torch.hub
    from safetensors.numpy import load_file

    from protrans_cli.models import fair_esm

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    fasta = tmp_path / "short.fa"
    fasta.write_text("".join(f">{i}\n{_sequence('esm2', i)}\n" for i in SHORT))
    r = run_cli("esm-extract", "esm2_t6_8M_UR50D", fasta, tmp_path / "out", "--include", "mean")
    assert r.exit_code == 1 and "not in the local Hugging Face cache" in r.stderr, r.stderr  # (no file there)
    download = save_fair_esm(tmp_path / "hub" / "checkpoints" / "esm2_t6_8M_UR50D.pt", "esm2")
    r = run_cli("esm-extract", "esm2_t6_8M_UR50D", fasta, tmp_path / "out", "--repr_layers", "2", "--include", "mean")
    assert r.exit_code == 0, r.stderr
    assert (f"esm2_t6_8M_UR50D is not in the Hugging Face cache; fair-esm's download of it, {download}, is used\n"
            f"esm-extract: converting {download} for this run") in r.stderr
    ref = load_file(REFERENCES["esm2"] / "reference.safetensors")
    for ident in SHORT:
        got = torch.load(tmp_path / "out" / f"{ident}.pt", weights_only=True)
        np.testing.assert_allclose(got["mean_representations"][2].numpy(), ref[f"mean/{ident}/2"], atol=1e-5, rtol=0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("protrans-import-model")]
    monkeypatch.setattr(fair_esm, "hub_cached", lambda name: True)  # (the Hugging Face model, as before)
    r = run_cli("esm-extract", "esm2_t6_8M_UR50D", fasta, tmp_path / "out2", "--include", "mean")
    assert "converting" not in r.stderr and "not in the local Hugging Face cache" in r.stderr, r.stderr


def test_esm_extract_outputs_given_to_import_model_name_import_esm(run_cli, tmp_path):
    """import-model and import-esm read .pt files of fair-esm's: a protein's embeddings (esm-extract's
    ID.pt) given to the model import is said to be one, with the command that reads them."""
    folder = tmp_path / "reps"
    folder.mkdir()
    torch.save({"label": "P1 first", "mean_representations": {2: torch.zeros(8)}}, folder / "P1.pt")
    _refusal(run_cli, tmp_path, folder / "P1.pt", "an esm-extract output (one protein's embeddings), not a model: "
             f"protrans import-esm {folder} -o OUT.h5 reads a folder of them")
    _refusal(run_cli, tmp_path, folder, "is a directory, expected a fair-esm checkpoint file",
             f"if it holds esm-extract's outputs (one .pt a protein), protrans import-esm {folder} -o OUT.h5")


def test_a_model_continued_from_one_imported_without_regression_is_refused_contacts(run_cli, tmp_path):
    """Imported without NAME-contact-regression.pt, the model has no contact head weights (refused);
    a model trained further or fine-tuned from it saves the head as initialised, and was taken for
    one holding the published model's head (a warning, noise maps). The chain is followed to it."""
    import json

    from protrans_cli.models import load_model

    model = tmp_path / "esm2n"
    assert run_cli("import-model", save_fair_esm(tmp_path / "esm2n.pt", "esm2", regression=False),
                   "-o", model).exit_code == 0
    loaded = load_model(model)
    loaded.family.save_pretrained(loaded.model, loaded.tokenizer, tmp_path / "ft" / "model")
    (tmp_path / "ft" / "finetune.json").write_text(json.dumps({"format": "protrans-finetune", "model": str(model)}))
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    r = run_cli("contacts", fasta, "-m", tmp_path / "ft" / "model", "-o", tmp_path / "c.h5")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert (f"it was fine-tuned by protrans finetune from {model}, whose checkpoint holds no contact head "
            "weights") in r.stderr
    assert not (tmp_path / "c.h5").exists()

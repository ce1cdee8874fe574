"""`protrans import-head`: the ProtTrans secondary-structure CNN (secstruct_checkpoint.pt) as a head.

The reference is the network as the ProtTrans notebook defines it (Conv2d layers of (7, 1) kernels,
its class orders: 3 states H, E, L; 8 states G, H, I, B, E, S, T, C), written out here, with random
weights saved in the checkpoint's layout ({"state_dict": ..., "epoch": ...}); predictions through
the imported head must be its argmax, letter for letter, and its softmax, class for class.
"""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch import nn

D = 32  # the tiny T5's width, so that `predict --fasta --model` runs end to end


class NotebookConvNet(nn.Module):
    """The ProtTrans notebook's ConvNet, in its own layout and names."""

    def __init__(self, dim=D):
        super().__init__()
        self.elmo_feature_extractor = nn.Sequential(nn.Conv2d(dim, 32, kernel_size=(7, 1), padding=(3, 0)), nn.ReLU(),
                                                    nn.Dropout(0.25))
        self.dssp3_classifier = nn.Sequential(nn.Conv2d(32, 3, kernel_size=(7, 1), padding=(3, 0)))
        self.dssp8_classifier = nn.Sequential(nn.Conv2d(32, 8, kernel_size=(7, 1), padding=(3, 0)))
        self.diso_classifier = nn.Sequential(nn.Conv2d(32, 2, kernel_size=(7, 1), padding=(3, 0)))

    def forward(self, x):  # (B, L, D) -> (B, L, 3), (B, L, 8)
        x = self.elmo_feature_extractor(x.permute(0, 2, 1).unsqueeze(dim=-1))
        return (self.dssp3_classifier(x).squeeze(dim=-1).permute(0, 2, 1),
                self.dssp8_classifier(x).squeeze(dim=-1).permute(0, 2, 1))


NOTEBOOK_SS3 = {0: "H", 1: "E", 2: "C"}  # (its L, coil, is protrans's C)
NOTEBOOK_SS8 = dict(enumerate("GHIBESTC"))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("secstruct")
    torch.manual_seed(0)
    net = NotebookConvNet().eval()
    torch.save({"state_dict": net.state_dict(), "epoch": 17}, root / "secstruct_checkpoint.pt")
    return root, net


def _notebook(net, rows: np.ndarray):
    with torch.no_grad():
        d3, d8 = net(torch.from_numpy(rows)[None])
    return d3[0], d8[0]


def test_imported_head_predicts_the_notebooks_states_and_probabilities(published, tmp_path):
    from protrans_cli import predict_embeddings
    from protrans_cli.heads.imported import import_head
    from protrans_cli.heads.tasks import SS8

    root, net = published
    imported = import_head(root / "secstruct_checkpoint.pt", tmp_path / "head")
    assert imported.epoch == 17 and imported.input_dim == D
    rng = np.random.default_rng(0)
    arrays = {f"p{i}": rng.normal(size=(n, D)).astype(np.float32) for i, n in enumerate((1, 5, 40, 121))}
    found = predict_embeddings(tmp_path / "head", arrays)
    for ident, rows in arrays.items():
        d3, d8 = _notebook(net, rows)
        assert found[ident]["ss3"].labels == "".join(NOTEBOOK_SS3[i] for i in d3.argmax(-1).tolist())
        assert found[ident]["ss8"].labels == "".join(NOTEBOOK_SS8[i] for i in d8.argmax(-1).tolist())
        np.testing.assert_allclose(found[ident]["ss3"].probabilities, torch.softmax(d3, -1).numpy(), atol=1e-5)
        order = ["GHIBESTC".index(c) for c in SS8]  # protrans's columns are its ss8 order
        np.testing.assert_allclose(found[ident]["ss8"].probabilities, torch.softmax(d8, -1)[:, order].numpy(),
                                   atol=1e-5)
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["embedding"]["model"] == "Rostlab/prot_t5_xl_half_uniref50-enc"
    assert config["training"]["source"] == "prottrans-secstruct" and len(config["training"]["sha256"]) == 64


@pytest.mark.parametrize("layout", ["model_state_dict", "bare"])
def test_a_checkpoint_of_the_weights_under_model_state_dict_or_bare_imports_the_same_head(published, layout,
                                                                                          tmp_path):
    """The weights are read from `state_dict`, else `model_state_dict` (a training script's own
    checkpoint), else the file's dict itself (a bare state_dict): each gives the notebook's network."""
    from protrans_cli import predict_embeddings
    from protrans_cli.heads.imported import import_head

    root, net = published
    state = net.state_dict()
    torch.save({"model_state_dict": state, "epoch": 4} if layout != "bare" else state, tmp_path / "c.pt")
    imported = import_head(tmp_path / "c.pt", tmp_path / "head")
    assert imported.input_dim == D and imported.epoch == (4 if layout != "bare" else None)
    rows = np.random.default_rng(1).normal(size=(30, D)).astype(np.float32)
    found = predict_embeddings(tmp_path / "head", {"p": rows})["p"]
    d3, _ = _notebook(net, rows)
    assert found["ss3"].labels == "".join(NOTEBOOK_SS3[i] for i in d3.argmax(-1).tolist())
    np.testing.assert_allclose(found["ss3"].probabilities, torch.softmax(d3, -1).numpy(), atol=1e-5)


def test_cli_import_then_predict_fasta_with_a_model(published, run_cli, tmp_path):
    """predict --fasta embeds with the model given (here a tiny T5 of the same width) and applies
    the imported head: the notebook's network on embed's rows of that model."""
    from protrans_cli.models import FAMILIES

    root, net = published
    t5 = FAMILIES["t5"]
    tokenizer = t5.build_tokenizer()
    torch.manual_seed(1)
    t5.save_pretrained(t5.pretraining_model(t5.build_config("tiny", tokenizer)).eval(), tokenizer, tmp_path / "t5")
    head = tmp_path / "prott5_ss"
    r = run_cli("import-head", root / "secstruct_checkpoint.pt", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "prottrans-secstruct (32-d input, epoch 17)" in r.stderr
    fasta = tmp_path / "q.fa"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMAAGW\n")
    r = run_cli("predict", head, "--fasta", fasta, "--model", tmp_path / "t5", "--head-output", "ss8", "-o",
                tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    r = run_cli("embed", fasta, "-m", tmp_path / "t5", "--per-residue", "-o", tmp_path / "e.h5")
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "p.fa").read_text().split()
    got = dict(zip([x[1:] for x in lines[::2]], lines[1::2]))
    with h5py.File(tmp_path / "e.h5") as f:
        for ident in ("a", "b"):
            _, d8 = _notebook(net, f["per_residue"][ident][()])
            assert got[ident] == "".join(NOTEBOOK_SS8[i] for i in d8.argmax(-1).tolist())
    # without --head-output: the first output, ss3 (the module's and docs' default)
    r = run_cli("predict", head, "--fasta", fasta, "--model", tmp_path / "t5", "-o", tmp_path / "p3.fa")
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "p3.fa").read_text().split()
    got = dict(zip([x[1:] for x in lines[::2]], lines[1::2]))
    with h5py.File(tmp_path / "e.h5") as f:
        for ident in ("a", "b"):
            d3, _ = _notebook(net, f["per_residue"][ident][()])
            assert got[ident] == "".join(NOTEBOOK_SS3[i] for i in d3.argmax(-1).tolist())


def test_refusals(published, run_cli, tmp_path):
    root, net = published
    ckpt = root / "secstruct_checkpoint.pt"
    (tmp_path / "h").mkdir()  # (empty, as `mkdir -p {output}` makes it: taken as new, was "exists")
    assert run_cli("import-head", ckpt, "-o", tmp_path / "h").exit_code == 0
    r = run_cli("import-head", ckpt, "-o", tmp_path / "h")
    assert r.exit_code == 2 and "exists (--force replaces it)" in r.stderr
    assert run_cli("import-head", ckpt, "-o", tmp_path / "h", "--force").exit_code == 0
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    r = run_cli("import-head", ckpt, "-o", tmp_path / "project", "--force")
    assert r.exit_code == 2 and (tmp_path / "project" / "notes.txt").exists()
    # another network's weights; a file that is no checkpoint; pickled code
    other = {"state_dict": {"fc.weight": torch.zeros(3, 3)}, "epoch": 1}
    torch.save(other, tmp_path / "other.pt")
    r = run_cli("import-head", tmp_path / "other.pt", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "not the ProtTrans secondary-structure CNN" in r.stderr and r.stderr.count("\n") == 1
    state = net.state_dict()
    state["dssp8_classifier.0.weight"] = state["dssp8_classifier.0.weight"][:5]
    torch.save({"state_dict": state}, tmp_path / "cut.pt")
    r = run_cli("import-head", tmp_path / "cut.pt", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "dssp8_classifier.0.weight has shape (5, 32, 7, 1), expected (8, 32, 7, 1)" in r.stderr
    (tmp_path / "text.pt").write_text("not a checkpoint")
    r = run_cli("import-head", tmp_path / "text.pt", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "not a torch checkpoint" in r.stderr
    with open(tmp_path / "code.pt", "wb") as fh:
        pickle.dump({"state_dict": NotebookConvNet()}, fh)  # a module object: code to unpickle
    r = run_cli("import-head", tmp_path / "code.pt", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "weights-only" in r.stderr
    assert not (tmp_path / "o").exists()


class BioEmbeddingsLightAttention(nn.Module):
    """bio_embeddings' LightAttention (Staerk et al. 2021), in its own layout and names."""

    def __init__(self, dim=D, output_dim=10):
        super().__init__()
        self.feature_convolution = nn.Conv1d(dim, dim, 9, stride=1, padding=4)
        self.attention_convolution = nn.Conv1d(dim, dim, 9, stride=1, padding=4)
        self.softmax = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(0.25)
        self.linear = nn.Sequential(nn.Linear(2 * dim, 32), nn.Dropout(0.25), nn.ReLU(), nn.BatchNorm1d(32))
        self.output = nn.Linear(32, output_dim)

    def forward(self, x, mask):  # x (B, D, L)
        state = self.dropout(self.feature_convolution(x))
        attention = self.attention_convolution(x).masked_fill(mask[:, None, :] == False, -1e9)  # noqa: E712
        pooled = torch.sum(state * self.softmax(attention), dim=-1)
        peak, _ = torch.max(state, dim=-1)
        return self.output(self.linear(torch.cat([pooled, peak], dim=-1)))


BIO_EMBEDDINGS_LOCATIONS = {0: "Cell.membrane", 1: "Cytoplasm", 2: "Endoplasmic.reticulum", 3: "Golgi.apparatus",
                            4: "Lysosome/Vacuole", 5: "Mitochondrion", 6: "Nucleus", 7: "Peroxisome", 8: "Plastid",
                            9: "Extracellular"}


@pytest.mark.parametrize("source,outputs,name", [("la-location", 10, "loc"), ("la-membrane", 2, "membrane")])
def test_light_attention_models_predict_as_bio_embeddings(source, outputs, name, run_cli, tmp_path):
    from protrans_cli import predict_embeddings
    from protrans_cli.heads.tasks import LOCATIONS, MEMBRANE

    torch.manual_seed(2)
    net = BioEmbeddingsLightAttention(output_dim=outputs)
    with torch.no_grad():  # running statistics away from 0 and 1, so that they count
        net.linear[3].running_mean.normal_()
        net.linear[3].running_var.uniform_(0.5, 2.0)
    net.eval()
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, tmp_path / "la.pt")
    r = run_cli("import-head", tmp_path / "la.pt", "--from", source, "-o", tmp_path / "head")
    assert r.exit_code == 0, r.stderr
    rng = np.random.default_rng(3)
    arrays = {f"p{i}": rng.normal(size=(n, D)).astype(np.float32) for i, n in enumerate((1, 7, 60))}
    found = predict_embeddings(tmp_path / "head", arrays)
    labels = BIO_EMBEDDINGS_LOCATIONS if name == "loc" else {0: "M", 1: "S"}
    ours = LOCATIONS if name == "loc" else MEMBRANE
    for ident, rows in arrays.items():
        x = torch.from_numpy(rows).T[None]
        with torch.no_grad():
            logits = net(x, torch.ones(1, rows.shape[0], dtype=torch.bool))[0]
        assert set(found[ident]) == {name}
        assert found[ident][name].labels == labels[int(logits.argmax())]
        want = torch.softmax(logits, -1).numpy()[[list(labels.values()).index(c) for c in ours]]
        np.testing.assert_allclose(found[ident][name].probabilities, want, atol=1e-5)
    # the other model's checkpoint for this kind: its output width says which it is
    other = "la-membrane" if source == "la-location" else "la-location"
    r = run_cli("import-head", tmp_path / "la.pt", "--from", other, "-o", tmp_path / "wrong")
    assert r.exit_code == 1 and "give --from it" in r.stderr and not (tmp_path / "wrong").exists()


def test_a_head_folder_whose_parents_are_missing_is_made_with_them(published, run_cli, tmp_path):
    """docs/troubleshooting.md: the commands whose -o is a folder (fit, import-head ...) make its
    missing parents, where a file output's missing folder is exit 2."""
    root, _ = published
    r = run_cli("import-head", root / "secstruct_checkpoint.pt", "-o", tmp_path / "a" / "b" / "head")
    assert r.exit_code == 0 and (tmp_path / "a" / "b" / "head" / "config.json").is_file(), r.stderr


def test_the_head_directory_has_the_permissions_fits_heads_have(published, tmp_path):
    """The head was written through mkdtemp (0700) and safetensors (0600): a lab's other users could
    not read an imported head, where fit's heads get the umask's permissions."""
    import os

    from protrans_cli.heads.imported import import_head

    root, _ = published
    old = os.umask(0o022)
    try:
        import_head(root / "secstruct_checkpoint.pt", tmp_path / "head")
    finally:
        os.umask(old)
    assert (tmp_path / "head").stat().st_mode & 0o777 == 0o755
    for name in ("config.json", "weights.safetensors"):
        assert (tmp_path / "head" / name).stat().st_mode & 0o777 == 0o644


def test_a_local_model_directory_is_recorded_as_its_absolute_path(published, tmp_path, monkeypatch):
    """`-m t5` (a folder in the current directory) was recorded as "t5": `predict --fasta` run
    from another folder looked it up as a hub id. embed records a directory's absolute path."""
    from protrans_cli.heads.imported import import_head

    root, _ = published
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    import_head(root / "secstruct_checkpoint.pt", tmp_path / "head", model="t5")
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["embedding"]["model"] == str((tmp_path / "t5").resolve())
    import_head(root / "secstruct_checkpoint.pt", tmp_path / "hub", model="Rostlab/prot_t5_xl_uniref50")
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["embedding"]["model"] == \
        "Rostlab/prot_t5_xl_uniref50"


class _Code:
    """A pickled call: what a weights-only load must refuse, and say why."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_a_refused_file_is_named_for_its_reason_not_torchs_advice(run_cli, tmp_path):
    """torch's message for every weights-only refusal starts with the same line, which advises
    re-running with weights_only=False ("will likely succeed"): for a CSV given by mistake that is
    wrong, for pickled code it is what must never be done. The reason is further down."""
    (tmp_path / "labels.csv").write_text("input, dssp3\nM K, C C\n")
    r = run_cli("import-head", tmp_path / "labels.csv", "-o", tmp_path / "o")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "not a torch checkpoint (neither the zip archive torch.save writes nor a pickle)" in r.stderr
    torch.save({"state_dict": _Code()}, tmp_path / "code.pt")
    r = run_cli("import-head", tmp_path / "code.pt", "-o", tmp_path / "o")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "weights-only" in r.stderr and "unsupported GLOBAL posix.getcwd" in r.stderr
    assert "weights_only` set to `False`" not in r.stderr and "will likely succeed" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_missing_checkpoint_is_said_as_every_command_says_a_missing_input(run_cli, tmp_path):
    """"no such file", as prep, embed, fit, knn... say it (it was "cannot read the checkpoint: No
    such file or directory"), and a link whose target is gone says where it points."""
    r = run_cli("import-head", tmp_path / "secstruct_checkpoint.pt", "-o", tmp_path / "o")
    assert r.exit_code == 1 and r.stderr == f"protrans: error: {tmp_path}/secstruct_checkpoint.pt: no such file\n"
    (tmp_path / "link.pt").symlink_to("/gone/secstruct_checkpoint.pt")
    r = run_cli("import-head", tmp_path / "link.pt", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "link.pt: a symbolic link to /gone/secstruct_checkpoint.pt, which does not " \
        "exist" in r.stderr
    assert not (tmp_path / "o").exists()


def test_checkpoints_that_are_not_the_named_network_are_refused_in_one_line(published, run_cli, tmp_path):
    """The wrong --from, a damaged checkpoint (NaN weights), a file of another shape, stdin or an -o
    that holds the checkpoint: each one line naming what is wrong, and no head written."""
    root, net = published
    ckpt = root / "secstruct_checkpoint.pt"
    state = net.state_dict()
    state["dssp3_classifier.0.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    torch.save({"state_dict": state}, tmp_path / "nan.pt")
    la = BioEmbeddingsLightAttention().state_dict()
    la["output.bias"] = torch.full_like(la["output.bias"], float("inf"))
    torch.save({"state_dict": la}, tmp_path / "la_inf.pt")
    la_even = {**BioEmbeddingsLightAttention().state_dict(), "feature_convolution.weight": torch.zeros(D, D, 8)}
    torch.save({"state_dict": la_even}, tmp_path / "la_even.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"state_dict": [torch.zeros(2)]}, tmp_path / "list_state.pt")
    cases = [
        ([tmp_path / "nan.pt"], "nan.pt: holds NaN or infinite weights"),
        ([tmp_path / "la_inf.pt", "--from", "la-location"], "la_inf.pt: holds NaN or infinite weights"),
        ([ckpt, "--from", "la-location"], "secstruct_checkpoint.pt: not bio_embeddings' Light Attention model: no "
                                          "tensor feature_convolution.weight (its state_dict holds diso_classifier"),
        ([tmp_path / "la_even.pt", "--from", "la-membrane"],
         "not bio_embeddings' Light Attention model: feature_convolution.weight has shape (32, 32, 8), expected "
         "(D, D, odd kernel)"),
        ([tmp_path / "list.pt"], "list.pt: holds a list, not a checkpoint dict"),
        ([tmp_path / "list_state.pt"], "list_state.pt: its state_dict is not a dict of tensors"),
        (["-"], "the checkpoint is read in place: give a file, not stdin"),  # (exit 2: a usage error)
        ([root], "is a directory, expected the checkpoint file (secstruct_checkpoint.pt)"),
    ]
    for args, message in cases:
        r = run_cli("import-head", *args, "-o", tmp_path / "o")
        assert r.exit_code == (2 if args == ["-"] else 1) and message in r.stderr and r.stderr.count("\n") == 1, \
            (args, r.stderr)
        assert not (tmp_path / "o").exists()
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "secstruct_checkpoint.pt").write_bytes(ckpt.read_bytes())
    r = run_cli("import-head", tmp_path / "h" / "secstruct_checkpoint.pt", "-o", tmp_path / "h", "--force")
    assert r.exit_code == 2 and "holds the checkpoint" in r.stderr and "--force would delete it" in r.stderr, r.stderr
    assert (tmp_path / "h" / "secstruct_checkpoint.pt").is_file()


def test_a_full_disk_is_one_line_naming_the_head_and_leaves_nothing(published, run_cli, tmp_path, monkeypatch):
    """safetensors' writer on a full disk raises a SafetensorError "... (os error 28)": that was a
    traceback. Now one line naming the head, exit 1, and no head or temporary folder left."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    root, _ = published
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    r = run_cli("import-head", root / "secstruct_checkpoint.pt", "-o", tmp_path / "head")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == \
        f"protrans: error: {tmp_path / 'head'}: cannot write the head: No space left on device", r.stderr
    assert list(tmp_path.iterdir()) == []


def test_force_where_the_old_head_cannot_be_renamed_is_one_line_and_keeps_it(published, run_cli, tmp_path,
                                                                              monkeypatch):
    # (gcsfuse without --rename-dir-limit: "HEAD: Operation not supported", and an empty .HEAD.old.*
    # folder left beside the head)
    import errno
    import os

    from protrans_cli.io import files

    root, _ = published
    head = tmp_path / "head"
    assert run_cli("import-head", root / "secstruct_checkpoint.pt", "-o", head).exit_code == 0
    before = {p.name: p.read_bytes() for p in head.iterdir()}
    real_replace = os.replace

    def no_folder_renames(a, b):
        if os.path.isdir(a):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), str(a))
        real_replace(a, b)

    monkeypatch.setattr(files, "exchange_paths", lambda a, b: False)
    monkeypatch.setattr(files.os, "replace", no_folder_renames)
    r = run_cli("import-head", root / "secstruct_checkpoint.pt", "-o", head, "--force")
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        f"protrans: error: {head}: cannot replace this folder: the file system refused to rename it aside "
        f"({os.strerror(errno.EOPNOTSUPP)}; one that renames no folders, such as gcsfuse without "
        "--rename-dir-limit?); it is kept as it was"], r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["head"]
    assert {p.name: p.read_bytes() for p in head.iterdir()} == before


def test_an_output_below_a_file_is_a_usage_error_naming_the_file(published, run_cli, tmp_path):
    """`-o afile/head` was "afile: File exists", exit 1."""
    root, _ = published
    (tmp_path / "afile").write_text("x")
    r = run_cli("import-head", root / "secstruct_checkpoint.pt", "-o", tmp_path / "afile" / "head")
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == \
        f"protrans: error: {tmp_path / 'afile'}: is not a directory, so no folder can go inside it", r.stderr


def test_the_readme_names_the_inputs_that_stdin_cannot_be(run_cli, tmp_path):
    """The README said every command that reads a file once reads `-` as stdin, naming only
    `train --corpus` as an exception; `import-head -` (and any HDF5 input) is refused, exit 2.
    The sentence names both, and the refusal is what it says."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("Every command that reads a file once reads `-` as stdin")
    sentence = readme[start:readme.index(" and writes to stdout", start)]
    assert "`import-head`'s checkpoint" in sentence and "HDF5 input" in sentence and "exit 2" in sentence, sentence
    r = run_cli("import-head", "-", "-o", tmp_path / "o", input=b"")
    assert r.exit_code == 2 and "not stdin" in r.stderr, r.stderr


def test_info_on_an_imported_head_says_what_it_was_imported_from(published, run_cli, tmp_path):
    """`protrans info HEAD` of an imported head said nothing of where it came from; it names the
    checkpoint import-head recorded (its path, kind, epoch) and the file's sha256."""
    import hashlib
    import re

    root, _ = published
    ckpt = root / "secstruct_checkpoint.pt"
    head = tmp_path / "prott5_ss"
    assert run_cli("import-head", ckpt, "-o", head).exit_code == 0
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    r = run_cli("info", head)
    assert r.exit_code == 0, r.stderr
    assert re.search(rf"^imported from +{re.escape(str(ckpt.resolve()))} \(prottrans-secstruct, epoch 17\)$",
                     r.output, re.M), r.output
    assert re.search(rf"^checkpoint sha256 +{digest}$", r.output, re.M), r.output
    assert "trained on" not in r.output and "None" not in r.output, r.output
    r = run_cli("info", head, "--json")
    assert r.exit_code == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["imported"] == {"from": str(ckpt.resolve()), "source": "prottrans-secstruct", "sha256": digest,
                                 "epoch": 17}

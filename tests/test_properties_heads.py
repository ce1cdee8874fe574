"""Property tests of the prediction heads (docs/heads.md): a head's prediction for a protein is
the same alone as in any padded batch with any other proteins (the CNN per residue, the FNN and
Light Attention per protein, and their ensembles); a fit interrupted after any epoch of any
member (or as its head is written) and resumed gives the head an uninterrupted fit gives; and
what `predict` writes (CSV, TSV, FASTA-like states of either output of an ss3+ss8 head, the
probabilities' HDF5, a value head's values) reads back to the classes, probabilities and values
the head gives each protein alone."""

from __future__ import annotations

import contextlib
import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis")
torch = pytest.importorskip("torch")
from hypothesis import given, strategies as st  # noqa: E402

from conftest import fewer  # noqa: E402
from protrans_cli.heads.model import Ensemble, build_head  # noqa: E402
from protrans_cli.heads.tasks import get_task  # noqa: E402

AA = "ACDEFGHIKLMNPQRSTVWY"

torch.set_num_threads(1)


# --- a prediction does not depend on the batch ---------------------------------------------

@st.composite
def heads(draw):
    """(an ensemble of 1-2 members of random weights in eval mode, whether it reads residues)."""
    # (the linear head per residue, for ss3, and per protein, for loc)
    choice = draw(st.sampled_from(["cnn", "fnn", "light-attention", "linear ss3", "linear loc"]))
    architecture = choice.split()[0]
    task = get_task("ss3" if choice in ("cnn", "linear ss3") else "loc")
    dim = draw(st.integers(1, 8))
    kernel = draw(st.sampled_from([1, 3, 5, 7, 9, 11]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    hidden = draw(st.integers(1, 12))
    members = [build_head(task, dim, architecture=architecture, hidden=hidden, kernel=kernel)
               for _ in range(draw(st.integers(1, 2)))]
    for member in members:
        if architecture == "light-attention":  # running statistics other than BatchNorm's 0 and 1
            member.norm.running_mean.normal_()
            member.norm.running_var.uniform_(0.5, 2.0)
        if architecture == "fnn" or choice == "linear loc":
            member.shift.normal_()
            member.scale.uniform_(0.5, 2.0)
    return Ensemble(members, task).eval(), architecture != "fnn" and choice != "linear loc", dim


@fewer(50)
@given(head=heads(), lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6), extra=st.integers(0, 12),
       noise=st.sampled_from([0.0, 1.0, 1e3]), seed=st.integers(0, 2**16))
def test_a_prediction_is_the_same_alone_as_in_any_padded_batch(head, lengths, extra, noise, seed):
    """Reference: each protein alone, unpadded, as a batch of one. The padding of the batch holds
    `noise` (collation writes zeros; a head must not read it either way)."""
    ensemble, per_residue, dim = head
    rng = np.random.default_rng(seed)
    proteins = [torch.from_numpy(rng.normal(size=(n, dim)).astype(np.float32)) for n in lengths]
    if per_residue:
        width = max(lengths) + extra
        x = torch.from_numpy((rng.normal(size=(len(lengths), width, dim)) * noise).astype(np.float32))
        mask = torch.zeros(len(lengths), width, dtype=torch.bool)
        for i, p in enumerate(proteins):
            x[i, :len(p)], mask[i, :len(p)] = p, True
        alone = [ensemble.probabilities(p[None], torch.ones(1, len(p), dtype=torch.bool)) for p in proteins]
    else:  # one vector a protein: the batch is the others
        x = torch.stack([p.mean(0) for p in proteins])
        mask = None
        alone = [ensemble.probabilities(v[None], None) for v in x]
    batched = ensemble.probabilities(x, mask)
    for i, (n, one) in enumerate(zip(lengths, alone)):
        for name, probs in batched.items():
            got = probs[i, :n] if probs.ndim == 3 else probs[i]
            torch.testing.assert_close(got, one[name][0], rtol=1e-5, atol=1e-6)
            assert torch.isfinite(got).all()


# --- fit --resume ------------------------------------------------------------------------

RULE3 = {**dict.fromkeys("AELMQKR", "H"), **dict.fromkeys("VIYFWT", "E")}  # the rest coil
LOCS = {"K": "Nucleus", "C": "Extracellular", "L": "Cell.membrane"}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """{architecture: (embeddings, labels)} of small one-hot sets whose labels follow from the
    residues: ss3/ss8 (NetSurfP CSV, per residue), loc (DeepLoc FASTA, per residue and per protein),
    and a value per protein (biotrainer FASTA, for the FNN)."""
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.labels import read_labels, write_embed_fasta

    root = tmp_path_factory.mktemp("heads")
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list(AA), size=rng.integers(5, 30))) for _ in range(30)]
    with open(root / "ss.csv", "w", newline="") as fh:
        fh.write("input, dssp3, dssp8, disorder\n")
        for seq in seqs:
            ss3 = "".join(RULE3.get(c, "C") for c in seq)
            csv.writer(fh).writerow([" ".join(seq), " ".join(ss3), " ".join(ss3.replace("E", "B")),
                                     " ".join(["1.0"] * len(seq))])
    with open(root / "ss.fa", "wb") as fh:
        write_embed_fasta(read_labels(root / "ss.csv"), fh)
    with open(root / "loc.fasta", "w") as fh:
        for i, seq in enumerate(seqs):
            marker = "KCL"[i % 3]
            fh.write(f">p{i} {LOCS[marker]}-{'MS'[i % 2]}\n{marker}{seq}\n")
    with open(root / "value.fasta", "w") as fh:  # biotrainer's sequence_to_value: the share of K
        for i, seq in enumerate(seqs):
            fh.write(f">v{i} TARGET={seq.count('K') / len(seq):.4f} SET=train\n{seq}\n")
    options = dict(model="onehot", threads=1)
    embed(root / "ss.fa", root / "ss.h5", EmbedOptions(per_protein=False, **options))
    embed(root / "loc.fasta", root / "loc_residues.h5", EmbedOptions(per_protein=False, **options))
    embed(root / "loc.fasta", root / "loc_proteins.h5", EmbedOptions(per_protein=True, **options))
    embed(root / "value.fasta", root / "value.h5", EmbedOptions(per_protein=True, **options))
    return {"cnn": (root / "ss.h5", root / "ss.csv"), "light-attention": (root / "loc_residues.h5", root / "loc.fasta"),
            "fnn": (root / "loc_proteins.h5", root / "loc.fasta"), "value": (root / "value.h5", root / "value.fasta")}


@st.composite
def fits(draw):
    """FitConfig keyword arguments of a small fit: an ensemble or cross-validation, early stopping."""
    architecture = draw(st.sampled_from(["cnn", "fnn", "light-attention"]))
    kw = dict(task="ss3" if architecture == "cnn" else "loc", architecture=architecture,
              max_epochs=draw(st.integers(1, 4)), patience=draw(st.integers(1, 3)),
              lr=draw(st.sampled_from([0.01, 0.1])), seed=draw(st.integers(0, 2**16)), hidden=draw(st.integers(2, 8)),
              dropout=draw(st.sampled_from([0.0, 0.25])),
              class_weights=draw(st.booleans()), max_residues=draw(st.sampled_from([40, 300])),
              batch_size=draw(st.sampled_from([4, 64])), threads=1, n_bootstrap=10, plots=False, device="cpu")
    if draw(st.booleans()):
        kw["folds"] = kw["ensemble"] = draw(st.integers(2, 3))
    else:
        kw["ensemble"] = draw(st.integers(1, 2))
    return kw


@contextlib.contextmanager
def _interrupted_after(member: int, epoch: int):
    """A Ctrl-C right after the fit's state of `member`'s `epoch` is saved."""
    from protrans_cli.heads.fit import FitState

    save_epoch = FitState.save_epoch

    def save_then_stop(self, current):
        save_epoch(self, current)
        if (current["member"], current["epoch"]) == (member, epoch):
            raise KeyboardInterrupt

    FitState.save_epoch = save_then_stop
    try:
        yield
    finally:
        FitState.save_epoch = save_epoch


@contextlib.contextmanager
def _interrupted_writing():
    """A Ctrl-C as the finished head is written (every member trained, the evaluation done)."""
    from protrans_cli.heads import model

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    save_head = model.save_head
    model.save_head = interrupted
    try:
        yield
    finally:
        model.save_head = save_head


TIMING = ("train_seconds", "train_cpu_seconds", "seconds")


@fewer(6)
@given(kw=fits(), data=st.data())
def test_a_fit_interrupted_after_any_epoch_resumes_to_the_uninterrupted_head(sets, kw, data):
    from safetensors.torch import load_file

    from protrans_cli.heads.fit import FitConfig, fit, partial_path

    inputs = sets[kw["architecture"]]
    with tempfile.TemporaryDirectory() as folder:
        whole = fit(FitConfig(**kw), *inputs, Path(folder) / "whole")
        epochs = [(line["member"], line["epoch"]) for line in whole.history]
        stops = sorted(data.draw(st.sets(st.sampled_from(epochs), min_size=1, max_size=2), label="stops"))
        out = Path(folder) / "parts"
        for k, (member, epoch) in enumerate(stops):
            with _interrupted_after(member, epoch), pytest.raises(KeyboardInterrupt):
                fit(FitConfig(**kw, resume=bool(k)), *inputs, out)
            assert not out.exists() and (partial_path(out) / "state.pt").is_file()
        if data.draw(st.booleans(), label="and while the head is written"):
            with _interrupted_writing(), pytest.raises(KeyboardInterrupt):
                fit(FitConfig(**kw, resume=True), *inputs, out)
            assert not out.exists() and (partial_path(out) / "state.pt").is_file()
        parts = fit(FitConfig(**kw, resume=True), *inputs, out)
        assert not partial_path(out).exists()
        a = load_file(str(whole.head_dir / "weights.safetensors"))
        b = load_file(str(parts.head_dir / "weights.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit on the CPU
        strip = [{k: v for k, v in line.items() if k not in TIMING} for line in whole.history]
        assert [{k: v for k, v in line.items() if k not in TIMING} for line in parts.history] == strip
        assert parts.metrics == whole.metrics


# --- predict's files read back ---------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(sets, tmp_path_factory):
    """{architecture: head directory} fit for two epochs on `sets`."""
    from protrans_cli.heads.fit import FitConfig, fit

    root = tmp_path_factory.mktemp("fitted")
    out = {}
    for architecture, inputs in sets.items():
        task = {"cnn": "ss3+ss8", "value": "value"}.get(architecture, "loc")
        config = FitConfig(task=task, architecture=None if architecture == "value" else architecture, max_epochs=2,
                           ensemble=2, lr=0.05, threads=1, n_bootstrap=10, plots=False, device="cpu")
        out[architecture] = fit(config, *inputs, root / architecture).head_dir
    return out


# ids as a FASTA header's first word gives them: printable, no white space; commas, quotes,
# '>' and '/' and letters of any script included
_IDS = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Co", "Cn", "Cf")),
               min_size=1, max_size=10).filter(lambda s: s.isprintable() and not any(c.isspace() for c in s))


def _reference(head, embeddings: Path) -> dict:
    """({id: {output: probabilities}} of each protein alone through the loaded head, the task):
    its rows read with h5py (every dataset of the file's group of its kind, docs/formats.md: the
    `id` attribute names the protein)."""
    import h5py

    from protrans_cli.heads.model import load_head, head_input_kind

    ensemble, task, config = load_head(head)
    per_residue = head_input_kind(config, task) == "per_residue"
    out = {}
    with h5py.File(embeddings, "r") as f:
        for ds in f["per_residue" if per_residue else "per_protein"].values():
            x = torch.from_numpy(ds[()].astype(np.float32))
            mask = torch.ones(1, len(x), dtype=torch.bool) if per_residue else None
            probs = ensemble.probabilities(x[None], mask)
            out[ds.attrs["id"]] = {name: p[0].numpy() for name, p in probs.items()}
    return out, task


def _near_argmax(letter_or_class, classes, probs) -> bool:
    """The class written is the most probable one (or within float rounding of it)."""
    return probs[..., classes.index(letter_or_class)] >= probs.max(-1) - 1e-5


@pytest.mark.parametrize("architecture", ["cnn", "fnn", "light-attention", "value"])
@fewer(4)
@given(proteins=st.lists(st.tuples(_IDS, st.text(AA + "XUZOB", min_size=1, max_size=40)), min_size=1, max_size=6,
                         unique_by=lambda p: p[0]),
       suffix=st.sampled_from([".csv", ".tsv", ".tab", ".txt", ""]), max_residues=st.sampled_from([1, 30, 8192]),
       which=st.sampled_from([None, 0, 1]))
def test_predict_files_read_back_to_the_heads_classes_and_probabilities(fitted, architecture, proteins, suffix,
                                                                        max_residues, which):
    """`which`: the output of a two-output head (ss3+ss8) the FASTA-like file holds (None: the
    first)."""
    import h5py

    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.predict import predict
    from protrans_cli.io.h5 import escape_key

    head = fitted[architecture]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        fasta = folder / "q.fa"
        fasta.write_text("".join(f">{ident} a description\n{seq}\n" for ident, seq in proteins), encoding="utf-8")
        embeddings = folder / "q.h5"
        embed(fasta, embeddings, EmbedOptions(model="onehot", per_protein=architecture in ("fnn", "value"), threads=1))
        reference, task = _reference(head, embeddings)
        assert sorted(reference) == sorted(i for i, _ in proteins)
        if architecture == "cnn":
            out, probabilities = folder / "pred.fa", folder / "pred.h5"
            with contextlib.redirect_stderr(io.StringIO()):
                predict(head, embeddings, out, probabilities=probabilities, max_residues=max_residues,
                        output=None if which is None else task.outputs[which].name)
            lines = out.read_text(encoding="utf-8").split("\n")
            assert lines[-1] == "" and len(lines) == 2 * len(proteins) + 1
            states = dict(zip([line[1:] for line in lines[:-1:2]], lines[1::2]))
            assert [line[0] for line in lines[:-1:2]] == [">"] * len(proteins) and sorted(states) == sorted(reference)
            written = task.outputs[which or 0]
            classes = list(written.classes)
            for ident, probs in reference.items():
                ref = probs[written.name]
                assert len(states[ident]) == len(ref)
                assert all(_near_argmax(c, classes, row) for c, row in zip(states[ident], ref)), ident
            with h5py.File(probabilities, "r") as f:
                for o in task.outputs:
                    assert f.attrs[f"classes_{o.name}"] == "".join(o.classes)
                    group = f[o.name]
                    assert sorted(ds.attrs["id"] for ds in group.values()) == sorted(reference)
                    for ident, probs in reference.items():
                        ds = group[escape_key(ident)]
                        assert ds.attrs["id"] == ident and ds.dtype == np.float32
                        np.testing.assert_allclose(ds[()], probs[o.name], rtol=1e-5, atol=1e-6)
        else:
            out = folder / f"pred{suffix}"
            with contextlib.redirect_stderr(io.StringIO()):
                predict(head, embeddings, out, max_residues=max_residues)
            delimiter = "\t" if suffix in (".tsv", ".tab") else ","
            with open(out, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh, delimiter=delimiter))
            header = ["id"] + [c for o in task.outputs for c in [o.name, *(f"{o.name}:{k}" for k in o.classes)]]
            assert rows[0] == header
            assert sorted(row[0] for row in rows[1:]) == sorted(reference) and len(rows) == len(proteins) + 1
            for row in rows[1:]:
                at = 1
                for o in task.outputs:
                    ref = reference[row[0]][o.name]
                    if o.is_value:  # its value alone, scaled back from the z-score
                        np.testing.assert_allclose(float(row[at]), ref[0], rtol=1e-5, atol=1e-6)
                        at += 1
                        continue
                    written = np.array([float(v) for v in row[at + 1:at + 1 + len(o.classes)]])
                    np.testing.assert_allclose(written, ref, rtol=1e-5, atol=1e-6)
                    assert _near_argmax(row[at], list(o.classes), ref), row
                    at += 1 + len(o.classes)

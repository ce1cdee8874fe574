"""`protrans finetune --chains linker|separate` on complexes (one record, chains joined by ':'):
the rows the head reads against a plain transformers forward of the joined sequence without its
linker rows (linker) or of each chain alone (separate), gradients to the adapters through them, a
per-residue head on each chain alone, a run on a tiny complexes set whose head `predict --fasta`
reads complexes the same way by default, --resume with the new settings, and the default error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import save_tiny_model
from protrans_cli.errors import InputError, UsageError
from protrans_cli.models import FAMILIES

torch = pytest.importorskip("torch")
from test_embed_models import reference_rows  # noqa: E402
from test_embed_chains import _linked  # noqa: E402

torch.set_num_threads(1)
AA = "ACDEFGHIKLMNPQRSTVWY"
HEAVY, LIGHT = "MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ"
TRIMER = ("ACDEFGHIK", "LMNPQRSTVWY", "MKV")


def _ss3(seq: str) -> str:
    return "".join("H" if c in "AELMQKR" else "E" if c in "VIYFWT" else "C" for c in seq)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return {name: save_tiny_model(tmp_path_factory, name) for name in ("esm", "bert")}


def _model(path, chains: str, linker_length: int = 25, task_name: str = "ss3"):
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.heads.finetune import FineTuned
    from protrans_cli.heads.lora import add_lora
    from protrans_cli.heads.model import build_head
    from protrans_cli.heads.tasks import get_task
    from protrans_cli.models import load_model

    embedder = TransformerEmbedder(load_model(path, device="cpu"), (-1,), "cpu", "float32")
    add_lora(embedder.model, embedder.family_impl, rank=4, alpha=8.0)  # (B = 0: the base model's rows)
    task = get_task(task_name)
    torch.manual_seed(0)
    head = build_head(task, embedder.embedding_dim)
    return FineTuned(embedder, head, True, chains=chains, linker_length=linker_length,
                     per_chain=task_name == "ss3").eval()


@pytest.mark.parametrize("family_name", ["esm", "bert"])
@pytest.mark.parametrize("linker", [25, 4])
def test_linker_rows_are_the_joined_forward_without_the_linker(tiny, family_name, linker):
    family, path = FAMILIES[family_name], tiny[family_name]
    model = _model(path, "linker", linker)
    seqs = [f"{HEAVY}:{LIGHT}", "MKVLAYGPN", ":".join(TRIMER)]
    with torch.no_grad():
        x, residue = model.residue_rows(seqs)
    refs = [_linked(family, path, (HEAVY, LIGHT), linker), reference_rows(family, path, "MKVLAYGPN")[0],
            _linked(family, path, TRIMER, linker)]
    assert residue.sum(dim=1).tolist() == [len(r) for r in refs]
    for i, ref in enumerate(refs):
        np.testing.assert_allclose(x[i, :len(ref)].numpy(), ref, atol=1e-5, rtol=0)
        assert not x[i, len(ref):].any()


@pytest.mark.parametrize("family_name", ["esm", "bert"])
def test_separate_rows_are_each_chain_alone(tiny, family_name):
    family, path = FAMILIES[family_name], tiny[family_name]
    model = _model(path, "separate")
    seqs = [":".join(TRIMER), f"{HEAVY}:{LIGHT}"]
    with torch.no_grad():
        x, residue = model.residue_rows(seqs)
    for i, chains in enumerate((TRIMER, (HEAVY, LIGHT))):
        ref = np.concatenate([reference_rows(family, path, c)[0] for c in chains])
        assert int(residue[i].sum()) == len(ref)
        np.testing.assert_allclose(x[i, :len(ref)].numpy(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chains", ["linker", "separate"])
def test_per_residue_head_reads_each_chain_alone_and_gradients_reach_the_adapters(tiny, chains):
    from protrans_cli.heads.fit import _loss
    from protrans_cli.heads.tasks import get_task

    model = _model(tiny["esm"], chains, 5)
    seqs = [f"{HEAVY}:{LIGHT}", "MKVLAYGPN"]
    with torch.no_grad():
        x, _ = model.residue_rows(seqs)
        out = model(seqs)["ss3"]
        # the head on each chain as a protein of its own (a CNN across the break mixes the chains)
        heavy = model.head(x[:1, :len(HEAVY)], torch.ones(1, len(HEAVY), dtype=torch.bool))["ss3"][0]
        light = model.head(x[:1, len(HEAVY):len(HEAVY) + len(LIGHT)],
                           torch.ones(1, len(LIGHT), dtype=torch.bool))["ss3"][0]
        whole = model.head(x[:1, :len(HEAVY) + len(LIGHT)],
                           torch.ones(1, len(HEAVY) + len(LIGHT), dtype=torch.bool))["ss3"][0]
        alone = model.head(x[1:, :9], torch.ones(1, 9, dtype=torch.bool))["ss3"][0]
    torch.testing.assert_close(out[0, :len(HEAVY) + len(LIGHT)], torch.cat([heavy, light]), atol=1e-6, rtol=0)
    assert not torch.allclose(out[0, :len(HEAVY) + len(LIGHT)], whole, atol=1e-4)
    torch.testing.assert_close(out[1, :9], alone, atol=1e-6, rtol=0)
    # training: the loss reaches every adapter through the kept rows (no numpy round trip)
    model.train()
    task = get_task("ss3")
    targets = torch.full((2, len(HEAVY) + len(LIGHT)), -100, dtype=torch.long)
    targets[0] = torch.tensor([{"H": 0, "E": 1, "C": 2}[c] for c in _ss3(HEAVY + LIGHT)])
    loss, _ = _loss(task, model(seqs), {"ss3": targets}, None)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_b" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_per_protein_mean_leaves_the_linker_out(tiny):
    from protrans_cli.heads.finetune import FineTuned

    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, mask):
            seen.append(x)
            return {"v": x[:, :1]}

    base = _model(tiny["bert"], "linker", 6, task_name="value")
    model = FineTuned(base.embedder, Recording(), False, chains="linker", linker_length=6).eval()
    with torch.no_grad():
        model([f"{HEAVY}:{LIGHT}"])
    ref = _linked(FAMILIES["bert"], tiny["bert"], (HEAVY, LIGHT), 6).mean(0)
    np.testing.assert_allclose(seen[0][0].numpy(), ref, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def complexes(tmp_path_factory):
    """A train/test set of complexes (1 to 3 chains) with ss3 labels: FASTA of labels with ':'
    between the chains (as predict writes them) and the sequences in a FASTA of their own."""
    root = tmp_path_factory.mktemp("ft_chains")
    rng = np.random.default_rng(5)
    for name, n in (("train", 24), ("test", 6)):
        fasta, labels = [], []
        for k in range(n):
            chains = ["".join(rng.choice(list(AA), size=int(rng.integers(8, 25)))) for _ in range(int(rng.integers(1, 4)))]
            fasta.append(f">{name}{k:02d}\n{':'.join(chains)}\n")
            # (half the records' labels without the ':'s: the complex's residues in order)
            glue = ":" if k % 2 else ""
            labels.append(f">{name}{k:02d}\n{glue.join(map(_ss3, chains))}\n")
        (root / f"{name}.seq.fa").write_text("".join(fasta))
        (root / f"{name}.fa").write_text("".join(labels))
    (root / "all.seq.fa").write_text((root / "train.seq.fa").read_text() + (root / "test.seq.fa").read_text())
    return root


def _config(tiny, **settings):
    from protrans_cli.heads.finetune import FinetuneConfig

    return FinetuneConfig(task="ss3", model=str(tiny["esm"]), max_epochs=3, lr=0.01, max_residues=300, threads=1,
                          n_bootstrap=10, device="cpu", **settings)


@pytest.mark.parametrize("chains", ["linker", "separate"])
def test_finetune_on_complexes_and_predict_fasta(tiny, complexes, chains, tmp_path, run_cli):
    from protrans_cli.heads.finetune import finetune

    out = tmp_path / "ft"
    result = finetune(_config(tiny, chains=chains, linker_length=7), complexes / "train.fa", out,
                      fasta=complexes / "all.seq.fa", tests=[complexes / "test.fa"])
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    config = json.loads((out / "head" / "config.json").read_text())
    assert config["embedding"]["chains"] == chains and config["embedding"]["linker_length"] == 7
    test = result.metrics["test"]["ss3"]
    assert test["n_proteins"] == 6 and test["n"] == sum(
        len(s.replace(":", "")) for s in (complexes / "test.seq.fa").read_text().split()[1::2])
    # predict --fasta with the head: the complexes read as finetune read them (its recorded
    # --chains, no option given), a ':' between the chains' states; its Q3 what finetune reported
    r = run_cli("predict", out / "head", "--fasta", complexes / "test.seq.fa", "-o", tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    assert f"--chains {chains}" in r.stderr
    lines = (tmp_path / "p.fa").read_text().split()
    predicted = dict(zip([x[1:] for x in lines[::2]], lines[1::2]))
    seqs = dict(zip([x[1:] for x in (complexes / "test.seq.fa").read_text().split()[::2]],
                    (complexes / "test.seq.fa").read_text().split()[1::2]))
    right = total = 0
    for ident, seq in seqs.items():
        assert [len(c) for c in predicted[ident].split(":")] == [len(c) for c in seq.split(":")]
        right += sum(a == b for a, b in zip(predicted[ident].replace(":", ""), _ss3(seq.replace(":", ""))))
        total += len(seq.replace(":", ""))
    assert right / total == pytest.approx(test["accuracy"], abs=1e-9)
    # the library's predict_sequences likewise: the head's chains by default
    from protrans_cli.heads.arrays import predict_sequences

    ident = next(i for i, s in seqs.items() if ":" in s)
    assert predict_sequences(out / "head", {ident: seqs[ident]})[ident]["ss3"].labels == predicted[ident]
    # --chains given to predict replaces the recorded one
    r = run_cli("predict", out / "head", "--fasta", complexes / "test.seq.fa", "-o", tmp_path / "q.fa",
                "--chains", "error")
    assert r.exit_code == 1 and "chain break" in r.stderr


def test_resume_with_chains(tiny, complexes, tmp_path, monkeypatch):
    import protrans_cli.heads.fit as fit
    from protrans_cli.heads.finetune import finetune

    args = (complexes / "train.fa", tmp_path / "ft")
    kwargs = dict(fasta=complexes / "train.seq.fa")
    real, calls = fit._validate, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(fit, "_validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(tiny, chains="linker", linker_length=3), *args, **kwargs)
    monkeypatch.setattr(fit, "_validate", real)
    with pytest.raises(UsageError, match="linker_length"):  # (another linker: other settings)
        finetune(_config(tiny, chains="linker", linker_length=4, resume=True), *args, **kwargs)
    resumed = finetune(_config(tiny, chains="linker", linker_length=3, resume=True), *args, **kwargs)
    whole = finetune(_config(tiny, chains="linker", linker_length=3), complexes / "train.fa", tmp_path / "again",
                     **kwargs)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in whole.history],
                                                                       abs=1e-6)


def test_default_error_and_checks(tiny, complexes, tmp_path):
    from protrans_cli.heads.finetune import finetune, read_sequence_data
    from protrans_cli.heads.tasks import get_task

    with pytest.raises(InputError, match=r"train\.seq\.fa, record 'train\d\d': ':' at residue \d+ is a chain break.*"
                                         r"chains='linker' or chains='separate' reads it"):
        finetune(_config(tiny), complexes / "train.fa", tmp_path / "ft", fasta=complexes / "train.seq.fa")
    with pytest.raises(UsageError, match="chains"):
        _config(tiny, chains="joined").check()
    with pytest.raises(UsageError, match="linker_length"):
        _config(tiny, chains="linker", linker_length=-1).check()
    labels, fasta = tmp_path / "l.fa", tmp_path / "s.fa"
    labels.write_text(">a\nHH:HCC\n")
    fasta.write_text(">a\nAEL:GP\n")
    with pytest.raises(InputError, match=r"record 'a': its labels have chains of 2, 3 residues .* of 3, 2"):
        read_sequence_data(labels, get_task("ss3"), fasta=fasta, config=_config(tiny, chains="linker"))
    fasta.write_text(">a\nAEL::GP\n")
    labels.write_text(">a\nHHHCC\n")
    with pytest.raises(InputError, match="an empty chain"):
        read_sequence_data(labels, get_task("ss3"), fasta=fasta, config=_config(tiny, chains="separate"))


def test_cli(tiny, complexes, tmp_path, run_cli):
    common = ("finetune", "ss3", "-m", tiny["esm"], "--labels", complexes / "train.fa", "--fasta",
              complexes / "all.seq.fa", "--max-epochs", "1", "--max-residues", "300", "-j", "1", "--bootstrap", "10",
              "--device", "cpu")
    r = run_cli(*common, "-o", tmp_path / "no")
    assert r.exit_code == 1 and "is a chain break" in r.stderr and "--chains linker or --chains separate" in r.stderr
    assert not (tmp_path / "no").exists()
    r = run_cli(*common, "-o", tmp_path / "bad", "--chains", "linker", "--linker-length", "-1")
    assert r.exit_code == 2 and "--linker-length" in r.stderr
    r = run_cli(*common, "-o", tmp_path / "ft", "--chains", "separate")
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "ft" / "head" / "config.json").read_text())["embedding"]["chains"] == "separate"
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["config"]["chains"] == "separate"

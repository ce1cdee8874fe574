"""`protrans translate`: ProstT5's translations (amino acids -> 3Di, 3Di -> amino acids) with a
tiny ProstT5-like T5 (test_embed_models' `_prefixed_t5`), compared with plain `model.generate`
calls made here with the model card's input layout."""

from __future__ import annotations

import pytest

from conftest import save_tiny_models
from protrans_cli.io.fasta import read_fasta
from protrans_cli.residues import STANDARD

torch = pytest.importorskip("torch")
from test_embed_models import _prefixed_t5  # noqa: E402

PROTEINS = {"p1": "MKTAYIAKQRQISFVKSHFSRQ", "p2": "MSEQ", "p3": "GAVLIPFWYCMSTNQDEKRH" * 2, "p4": "MKXAU"}
STATES = {"s1": "DVVLVVCCPPLDPVNLVSLVQ", "s2": "dpvq", "s3": "A" * 13 + "wy"}


@pytest.fixture(scope="module")
def prostt5_like(tmp_path_factory):
    models = save_tiny_models(tmp_path_factory)
    return _prefixed_t5(tmp_path_factory.mktemp("translate") / "prostt5_like", models), models


def _fasta(path, records):
    path.write_text("".join(f">{k} a description\n{v}\n" for k, v in records.items()))
    return path


def _reference(model_dir, records, to, **settings):
    """Each protein alone, as ProstT5's model card feeds it ("<AA2fold> M K T ..." or "<fold2AA> d v v
    ..."), decoded by `model.generate` restricted to the target's 20 letters (bad_words_ids) for
    exactly its length."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = T5ForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    letters = STANDARD.lower() if to == "3di" else STANDARD
    allowed = set(tokenizer.convert_tokens_to_ids(list(letters)))
    bad = [[i] for i in range(model.config.vocab_size) if i not in allowed]
    out = {}
    for pid, seq in records.items():
        source = ("<AA2fold> " + " ".join(seq.upper().replace("U", "X")) if to == "3di"
                  else "<fold2AA> " + " ".join(seq.lower()))
        ids = tokenizer([source], return_tensors="pt")
        assert ids["input_ids"].shape[1] == len(seq) + 2  # prefix, a token a residue, </s>
        with torch.no_grad():
            got = model.generate(**ids, max_new_tokens=len(seq), min_new_tokens=len(seq), bad_words_ids=bad,
                                 **settings)
        rows = [tokenizer.convert_ids_to_tokens(row[1:].tolist()) for row in got]
        out[pid] = ["".join(row).upper() for row in rows]
    return out


def _read(path):
    return {r.id: (r.description, r.sequence) for r in read_fasta(path)}


@pytest.mark.parametrize("to,records", [("3di", PROTEINS), ("aa", STATES)], ids=["aa_to_3di", "3di_to_aa"])
def test_greedy_translation_equals_a_plain_generate_call(run_cli, tmp_path, prostt5_like, to, records):
    """Greedy: each protein's letters equal plain transformers' generate over the model card's
    input, restricted to the target alphabet; one letter a residue, upper-case, ids kept, headers
    saying what they are; the same whether the proteins share batches or not (fp32)."""
    model_dir, _ = prostt5_like
    fasta = _fasta(tmp_path / "in.fa", records)
    reference = _reference(model_dir, records, to)
    outputs = []
    for i, budget in enumerate(("4096", "30")):  # all in one batch; one protein a batch
        out = tmp_path / f"out{i}.fa"
        result = run_cli("translate", fasta, "-m", model_dir, "--to", to, "-o", out, "--device", "cpu",
                         "--max-tokens", budget, "-j", "1")
        assert result.exit_code == 0, result.stderr
        outputs.append(out.read_text())
        got = _read(out)
        assert list(got) == list(records)  # input order
        what = "3Di predicted by" if to == "3di" else "designed from 3Di by"
        for pid, seq in records.items():
            description, letters = got[pid]
            assert description == f"{pid} {what} {model_dir}"
            assert len(letters) == len(seq) and set(letters) <= set(STANDARD)
            assert letters == reference[pid][0], pid
    assert outputs[0] == outputs[1]
    # the restriction is no no-op: this random decoder, unrestricted, writes sentinels and the like
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = T5ForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    pid, seq = next(iter(records.items()))
    prefix = "<AA2fold> " if to == "3di" else "<fold2AA> "
    with torch.no_grad():
        free = model.generate(**tokenizer([prefix + " ".join(seq.lower() if to == "aa" else seq)], return_tensors="pt"),
                              max_new_tokens=len(seq))
    target = set(tokenizer.convert_tokens_to_ids(list(STANDARD.lower() if to == "3di" else STANDARD)))
    assert not set(free[0, 1:].tolist()) <= target
    assert len({v[1] for v in _read(tmp_path / "out0.fa").values()}) > 1  # not one letter for everything


def test_beam_search_and_sampling(run_cli, tmp_path, prostt5_like):
    """--num-beams: the best beam equals plain generate's beam search (the batch's shorter proteins
    end at their own length, their beams' scores their letters' alone); --sample -n N: N designs a
    protein (ID_1 ... ID_N), each of its length and letters, the same again for the same --seed."""
    model_dir, _ = prostt5_like
    fasta = _fasta(tmp_path / "in.fa", STATES)
    out = tmp_path / "beams.fa"
    result = run_cli("translate", fasta, "-m", model_dir, "--to", "aa", "--num-beams", "3", "-n", "2", "-o", out,
                     "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    got = _read(out)
    reference = _reference(model_dir, STATES, "aa", num_beams=3, num_return_sequences=2, early_stopping=True)
    for pid in STATES:
        assert [got[f"{pid}_{k}"][1] for k in (1, 2)] == reference[pid], pid
        assert got[f"{pid}_2"][0].endswith("(design 2 of 2)")
    draws = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.fa.gz"
        result = run_cli("translate", fasta, "-m", model_dir, "--to", "aa", "--sample", "-n", "3", "--top-p", "0.9",
                         "--temperature", "1.5", "--seed", "7", "-o", out, "--device", "cpu", "-j", "1")
        assert result.exit_code == 0, result.stderr
        draws.append(_read(out))
    assert draws[0] == draws[1]
    assert sorted(draws[0]) == sorted(f"{pid}_{k}" for pid in STATES for k in (1, 2, 3))
    for name, (_, letters) in draws[0].items():
        assert len(letters) == len(STATES[name.rsplit("_", 1)[0]]) and set(letters) <= set(STANDARD)
    assert len({draws[0][f"s1_{k}"][1] for k in (1, 2, 3)}) > 1  # designs differ


def test_a_model_that_cannot_translate_is_refused_before_its_weights_are_read(run_cli, tmp_path, prostt5_like,
                                                                             monkeypatch):
    """A ProtT5 or an ESM-2 given to translate was refused after a whole load (a 3B ProtT5: 11 GB
    read for a one-line refusal): its config and tokenizer say it first (load_model's before_weights)."""
    from protrans_cli.models import FAMILIES

    _, models = prostt5_like
    for family in FAMILIES.values():
        monkeypatch.setattr(family, "load_masked_lm", lambda *a, **k: pytest.fail("the weights were read"))
    fasta = _fasta(tmp_path / "in.fa", {"a": "MKTAY"})
    for bad_model in (models["t5"], models["esm"]):
        result = run_cli("translate", fasta, "-m", bad_model, "--to", "3di", "-o", tmp_path / "o.fa", "--device", "cpu")
        assert result.exit_code == 2 and "translat" in result.stderr, result.stderr


def test_refusals(run_cli, tmp_path, prostt5_like):
    model_dir, models = prostt5_like
    fasta = _fasta(tmp_path / "in.fa", {"a": "MKTAY"})
    out = tmp_path / "out.fa"

    def run(*args, model=model_dir):
        return run_cli("translate", fasta, "-m", model, "-o", out, "--device", "cpu", "-j", "1", *args)

    result = run()
    assert result.exit_code == 2 and "--to is required" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for bad_model, words in ((models["t5"], "its vocabulary has no <AA2fold> or <fold2AA>: not a translation model"),
                             (models["esm"], "not an encoder-decoder (esm): translating needs ProstT5's")):
        result = run("--to", "3di", model=bad_model)
        assert result.exit_code == 2 and words in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # ProstT5's encoder saved alone (as ProtT5's -enc checkpoints are): no decoder to translate with
    import shutil

    from transformers import T5EncoderModel

    encoder_only = tmp_path / "encoder_only"
    shutil.copytree(model_dir, encoder_only)
    for weights in encoder_only.glob("model*.safetensors"):
        weights.unlink()
    T5EncoderModel.from_pretrained(str(model_dir)).save_pretrained(encoder_only)
    result = run("--to", "3di", model=encoder_only)
    assert result.exit_code == 2 and "an encoder saved without its decoder" in result.stderr, result.stderr
    result = run("--to", "3di", model="onehot")
    assert result.exit_code == 2 and "-m onehot is an encoding, not a model" in result.stderr, result.stderr
    result = run("--to", "3di", "--temperature", "0.5")
    assert result.exit_code == 2 and "--temperature shapes sampling: give --sample" in result.stderr
    result = run("--to", "aa", "-n", "2")
    assert result.exit_code == 2 and "-n 2 designs a protein need --sample" in result.stderr
    # letters that are no 3Di state: one line naming file, record and letter; nothing written
    bad = _fasta(tmp_path / "bad.fa", {"ok": "DVVL", "x": "DVXL"})
    result = run_cli("translate", bad, "-m", model_dir, "--to", "aa", "-o", out, "--device", "cpu", "-j", "1")
    assert result.exit_code == 1 and "'X' at residue 3 is not a 3Di letter" in result.stderr, result.stderr
    assert "bad.fa" in result.stderr and "x" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    twice = tmp_path / "twice.fa"
    twice.write_text(">a\nMKT\n>b\nMSE\n>a\nGAV\n")
    result = run_cli("translate", twice, "-m", model_dir, "--to", "3di", "-o", out, "--device", "cpu", "-j", "1")
    assert result.exit_code == 1 and "duplicate id (first seen on line 1)" in result.stderr, result.stderr
    assert "twice.fa:5, record 'a'" in result.stderr and not out.exists()
    result = run_cli("translate", bad, "-m", model_dir, "--to", "aa", "-o", out, "--invalid-policy", "skip",
                     "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    assert list(_read(out)) == ["ok"] and "'x' left out" in result.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_on_a_gpu_greedy_translation_is_the_cpus(run_cli, tmp_path, prostt5_like, dtype):
    """On cuda: both directions write one target letter a residue in bfloat16 and float32, and
    greedy float32 on the GPU equals greedy on the CPU (a random decoder's near ties may flip in
    bfloat16: there only the form is checked)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model_dir, _ = prostt5_like
    for to, records in (("3di", PROTEINS), ("aa", STATES)):
        fasta = _fasta(tmp_path / f"{to}.fa", records)
        texts = {}
        for device, precision in (("cpu", "float32"), ("cuda", dtype)):
            out = tmp_path / f"{to}.{device}.fa"
            result = run_cli("translate", fasta, "-m", model_dir, "--to", to, "-o", out, "--device", device,
                             "--dtype", precision)
            assert result.exit_code == 0, result.stderr
            texts[device] = _read(out)
        for pid, seq in records.items():
            letters = texts["cuda"][pid][1]
            assert len(letters) == len(seq) and set(letters) <= set(STANDARD)
        if dtype == "float32":
            assert {k: v[1] for k, v in texts["cuda"].items()} == {k: v[1] for k, v in texts["cpu"].items()}

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


MANY = {"a1": "MKTAYIAKQRQISFVKSHFSRQ", "a2": "MSEQ", "a3": "GAVLIPFWYCMSTNQDEKRH", "a4": "MKXAU", "a5": "PEPTIDE",
        "a6": "WWYYKKLL"}


@pytest.mark.parametrize("mode", [[], ["--sample", "--top-k", "5", "--seed", "3"],
                                  ["--sample", "--num-beams", "2", "--seed", "3"]], ids=["greedy", "sample", "beam_sample"])
def test_an_interrupted_run_goes_on_with_resume_to_the_same_bytes(run_cli, tmp_path, prostt5_like, monkeypatch,
                                                                   mode):
    """A Ctrl-C in the second of three batches: exit 130 naming --resume and OUT.partial, no
    FASTA, one batch kept; without --resume the folder is refused, under another setting the
    letters depend on too (one line naming the option); --resume to stdout is refused; --resume
    translates the last two batches only and writes the uninterrupted run's bytes."""
    from protrans_cli.translate import Translator

    model_dir, _ = prostt5_like
    fasta = _fasta(tmp_path / "in.fa", MANY)
    args = [fasta, "-m", model_dir, "--to", "3di", "--max-batch-size", "2", "--device", "cpu", "-j", "1", *mode]
    whole = tmp_path / "whole.fa"
    r = run_cli("translate", *args, "-o", whole)
    assert r.exit_code == 0, r.stderr
    original, calls = Translator.translate_batch, []
    interrupt = True

    def counting(self, sequences, options, ids=None):
        calls.append(list(sequences))
        if len(calls) == 2 and interrupt:
            raise KeyboardInterrupt
        return original(self, sequences, options, ids)

    monkeypatch.setattr(Translator, "translate_batch", counting)
    out = tmp_path / "o.fa"
    r = run_cli("translate", *args, "-o", out)
    assert r.exit_code == 130 and "--resume" in r.stderr and "o.fa.partial" in r.stderr, r.stderr
    assert not out.exists() and len(list((tmp_path / "o.fa.partial").glob("*.npy"))) == 1
    assert (tmp_path / "o.fa.partial" / "translate-settings.json").is_file()
    interrupt = False
    r = run_cli("translate", *args, "-o", out)
    assert r.exit_code == 2 and "--resume goes on with it" in r.stderr, r.stderr
    changed = [(["--num-beams", "3"], "--num-beams"), (["--repetition-penalty", "1.2"], "--repetition-penalty")]
    changed += [(["--seed", "4"], "--seed")] if mode else [(["--sample"], "--sample")]
    for other, flag in changed:
        r = run_cli("translate", *args, *other, "-o", out, "--resume")
        assert r.exit_code == 2 and f"with {flag} " in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "translations made" in r.stderr
    r = run_cli("translate", *args, "-o", "-", "--resume")
    assert r.exit_code == 2 and "stdout keeps none" in r.stderr
    calls.clear()
    r = run_cli("translate", *args, "-o", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert "1 unit of work kept" in r.stderr and len(calls) == 2, (r.stderr, calls)
    assert out.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "o.fa.partial").exists()


def test_a_failure_keeps_the_finished_batches_and_stdout_gets_nothing(run_cli, tmp_path, prostt5_like, monkeypatch):
    """A failure in the third batch: the two finished ones stay in OUT.partial/, the FASTA is
    unwritten; to stdout nothing is printed."""
    from protrans_cli.translate import Translator

    model_dir, _ = prostt5_like
    fasta = _fasta(tmp_path / "in.fa", MANY)
    original, calls = Translator.translate_batch, []

    def failing(self, sequences, options, ids=None):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("injected")
        return original(self, sequences, options, ids)

    monkeypatch.setattr(Translator, "translate_batch", failing)
    out = tmp_path / "o.fa"
    args = [fasta, "-m", model_dir, "--to", "3di", "--max-batch-size", "2", "--device", "cpu", "-j", "1"]
    from protrans_cli.translate import TranslateOptions, translate

    with pytest.raises(MemoryError):
        translate(fasta, out, TranslateOptions(model=str(model_dir), to="3di", max_batch_size=2, device="cpu"))
    assert not out.exists() and len(list((tmp_path / "o.fa.partial").glob("*.npy"))) == 2
    calls.clear()
    r = run_cli("translate", *args, "-o", "-")
    assert r.exit_code != 0 and r.stdout == ""


def test_a_repeated_sequence_is_translated_once_and_written_under_each_id(run_cli, tmp_path, prostt5_like,
                                                                          monkeypatch):
    """Greedy and beams: records whose sequences the encoder reads alike (case, U read as X) are
    translated once, the letters written under each id in input order, the same as a run over
    the distinct records; --sample: each record draws its own (not merged)."""
    from protrans_cli.translate import TranslateOptions, Translator, translate

    model_dir, _ = prostt5_like
    records = {"a": "MKTAYIAKQ", "b": "MSEQ", "c": "mktayiakq", "d": "MKXAU", "e": "MKXAX", "f": "MKTAYIAKQ"}
    fasta = _fasta(tmp_path / "in.fa", records)
    original, seen = Translator.translate_batch, []

    def spying(self, sequences, options, ids=None):
        seen.extend(sequences)
        return original(self, sequences, options, ids)

    monkeypatch.setattr(Translator, "translate_batch", spying)
    for beams in ("1", "2"):
        seen.clear()
        out = tmp_path / f"o{beams}.fa"
        r = run_cli("translate", fasta, "-m", model_dir, "--to", "3di", "--num-beams", beams,
                    "--max-batch-size", "1", "-o", out, "--device", "cpu", "-j", "1")
        assert r.exit_code == 0, r.stderr
        assert sorted(s.upper().replace("U", "X") for s in seen) == ["MKTAYIAKQ", "MKXAX", "MSEQ"], seen
        assert "3 records repeating an earlier record's sequence (translated once)" in r.stderr, r.stderr
        # across windows (two records read at a time) too: once a run
        seen.clear()
        translate(fasta, tmp_path / "w.fa", TranslateOptions(model=str(model_dir), to="3di", num_beams=int(beams),
                                                             window=2, device="cpu"))
        assert len(seen) == 3 and (tmp_path / "w.fa").read_bytes() == out.read_bytes()
        got = _read(out)
        assert list(got) == list(records)
        assert got["a"][1] == got["c"][1] == got["f"][1] and got["d"][1] == got["e"][1]
        assert got["c"][0] == f"c 3Di predicted by {model_dir}"
        distinct = _fasta(tmp_path / "distinct.fa", {k: records[k] for k in ("a", "b", "d")})
        r = run_cli("translate", distinct, "-m", model_dir, "--to", "3di", "--num-beams", beams, "-o", "-",
                    "--device", "cpu", "-j", "1")
        assert r.exit_code == 0, r.stderr
        assert {k: v[1] for k, v in _read_text(r.stdout).items()} == {k: got[k][1] for k in ("a", "b", "d")}
    seen.clear()
    r = run_cli("translate", fasta, "-m", model_dir, "--to", "3di", "--sample", "-o", tmp_path / "s.fa",
                "--device", "cpu", "-j", "1")
    assert r.exit_code == 0, r.stderr
    assert len(seen) == len(records) and "repeating" not in r.stderr


def _read_text(text):
    lines = text.splitlines()
    return {h[1:].split()[0]: (h[1:], s) for h, s in zip(lines[::2], lines[1::2])}


@pytest.mark.parametrize("to,records", [("3di", PROTEINS), ("aa", STATES)], ids=["aa_to_3di", "3di_to_aa"])
def test_sampling_is_the_same_whatever_the_batching_and_equals_a_plain_loop(run_cli, tmp_path, prostt5_like, to,
                                                                            records):
    """--sample: a record's designs are the same in batches of one, in one batch, and among other
    records in another order; each equals a plain decoder loop here (the whole prefix read again
    each step, no cache): repetition penalty, the 20 letters, temperature, top-k, top-p, then the
    record's own generator's uniform number (seed, id digest, design)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from protrans_cli.threads import torch_threads

    model_dir, _ = prostt5_like
    settings = ["--sample", "-n", "2", "--temperature", "1.3", "--top-k", "6", "--top-p", "0.9",
                "--repetition-penalty", "1.2", "--seed", "11"]
    texts = []
    for i, (batch, subset) in enumerate((("1", list(records)), ("64", list(records)),
                                          ("64", list(reversed(records))[:2]))):
        fasta = _fasta(tmp_path / f"in{i}.fa", {k: records[k] for k in subset})
        r = run_cli("translate", fasta, "-m", model_dir, "--to", to, *settings, "--max-batch-size", batch, "-o", "-",
                    "--device", "cpu", "-j", "1")
        assert r.exit_code == 0, r.stderr
        texts.append({k: v[1] for k, v in _read_text(r.stdout).items()})
    assert texts[0] == texts[1]
    assert all(texts[0][k] == v for k, v in texts[2].items())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = T5ForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    letters = STANDARD.lower() if to == "3di" else STANDARD
    allowed = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    allowed[tokenizer.convert_tokens_to_ids(list(letters))] = True
    with torch_threads(1):
        _plain_loop(model, tokenizer, allowed, list(records.items())[:2], to, texts[0])


def _plain_loop(model, tokenizer, allowed, records, to, got):
    import numpy as np

    from protrans_cli.generate import draw, filtered_log_probs
    from protrans_cli.translate import record_stream

    for pid, seq in records:  # (a step a residue, the whole prefix each time: two will do)
        source = ("<AA2fold> " + " ".join(seq.upper().replace("U", "X")) if to == "3di"
                  else "<fold2AA> " + " ".join(seq.lower()))
        ids = tokenizer([source], return_tensors="pt")
        with torch.no_grad():
            ids["encoder_outputs"] = model.get_encoder()(**ids)
        for k in range(2):
            state = np.random.SeedSequence((11, record_stream(pid), k)).generate_state(1, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(state))
            decoder = [model.config.decoder_start_token_id]
            for _ in range(len(seq)):
                with torch.no_grad():
                    scores = model(**ids, decoder_input_ids=torch.tensor([decoder])).logits[0, -1].clone()
                for t in set(decoder):
                    scores[t] = scores[t] * 1.2 if scores[t] < 0 else scores[t] / 1.2
                log_probs = filtered_log_probs(scores[None], allowed[None], temperature=1.3, top_k=6, top_p=0.9)
                decoder.append(int(draw(log_probs, torch.rand(1, generator=generator, dtype=torch.float64))[0]))
            want = "".join(tokenizer.convert_ids_to_tokens(decoder[1:])).upper()
            assert got[f"{pid}_{k + 1}"] == want, (pid, k)


@pytest.mark.parametrize("to,unit", [("3di", "protein"), ("aa", "structure")])
def test_the_progress_bar_has_the_records_total_and_the_inputs_unit(tmp_path, prostt5_like, monkeypatch, to, unit):
    """The bar had no total and said "protein" translating 3Di strings: its total is the file's
    records (repeats and left-out ones counted as done, so it ends at the total), its unit what
    the records are; for a .gz file too; none for stdin (read once)."""
    import gzip

    from protrans_cli import console
    from protrans_cli.translate import TranslateOptions, _count_records, translate

    model_dir, _ = prostt5_like
    records = dict(PROTEINS if to == "3di" else STATES)
    records["again"] = next(iter(records.values()))  # a repeat: translated once
    records["bad"] = "MK1Q" if to == "3di" else "dv1q"  # left out (--invalid-policy skip)
    fasta = _fasta(tmp_path / "in.fa", records)
    bars = []
    real = console.progress

    def spy(*args, **kw):
        bars.append((kw, real(*args, **kw)))
        return bars[-1][1]

    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setattr(console, "progress", spy)
    translate(fasta, tmp_path / "o.fa", TranslateOptions(model=str(model_dir), to=to, device="cpu",
                                                         invalid_policy="skip", window=2))
    (kw, bar), = bars
    assert (kw["total"], kw["unit"], bar.n) == (len(records), unit, len(records))
    gz = tmp_path / "in.fa.gz"
    gz.write_bytes(gzip.compress(fasta.read_bytes()))
    assert _count_records(gz) == len(records) and _count_records("-") is None


def test_an_output_inside_the_model_directory_is_refused(run_cli, tmp_path, prostt5_like):
    """`translate -m DIR -o DIR/config.json` replaced the model's config with the translations
    (perplexity, generate and variants alike; tests/test_generate.py)."""
    model_dir, _ = prostt5_like
    before = (model_dir / "config.json").read_bytes()
    fasta = _fasta(tmp_path / "in.fa", {"a": "MKTAYIAK"})
    r = run_cli("translate", fasta, "-m", model_dir, "--to", "3di", "-o", model_dir / "config.json", "--device", "cpu")
    assert r.exit_code == 2 and r.stderr.strip() == (
        f"protrans: error: {model_dir / 'config.json'} is one of the model directory's files (its config): writing "
        "it would replace it (choose another -o)"), r.stderr
    assert (model_dir / "config.json").read_bytes() == before

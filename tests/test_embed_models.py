"""`protrans embed` with every family in the registry: tiny random models built and saved locally,
compared row by row with a plain transformers forward pass over each protein alone."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import DATA, save_tiny_models
from protrans_cli.io.fasta import read_fasta
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

torch = pytest.importorskip("torch")
from protrans_cli.models import FAMILIES  # noqa: E402

SMALL = DATA / "embed" / "small.fa"
# Where the residue rows sit in a single unpadded sequence, per the published conventions
# ([CLS] x [SEP]; T5's trailing </s>; ESM's <cls> x <eos>; XLNet's trailing <sep> <cls>):
# (tokens before, tokens after). A family not listed is checked by token matching only.
KNOWN_LAYOUT = {"bert": (1, 1), "roberta": (1, 1), "albert": (1, 1), "electra": (1, 1), "t5": (0, 1),
                "esm": (1, 1), "transfo_xl": (1, 1),
                "xlnet": (0, 2)}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """One tiny random model directory per family (what `protrans train` would write)."""
    return save_tiny_models(tmp_path_factory)


def reference_rows(family, model_dir, sequence: str, layers=(-1,)) -> np.ndarray:
    """Plain transformers: the tokenizer and encoder from the directory, one protein, no padding;
    the residue rows are found by matching the residue token ids in the input ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoder = family.encoder_class.from_pretrained(str(model_dir), dtype=torch.float32, use_kernels=False).eval()
    letters = sequence.upper()
    if family.rare_to == "X":
        letters = letters.translate(str.maketrans("UZOB", "XXXX"))
    text = " ".join(letters) if family.spaced else letters
    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (1, T)
    residue_ids = tokenizer.convert_tokens_to_ids(list(letters))
    row = ids[0].tolist()
    starts = [i for i in range(len(row) - len(residue_ids) + 1) if row[i:i + len(residue_ids)] == residue_ids]
    assert len(starts) == 1, f"residue tokens not found once in {row}"
    start = starts[0]
    if family.name in KNOWN_LAYOUT:
        before, after = KNOWN_LAYOUT[family.name]
        assert (start, len(row) - start - len(residue_ids)) == (before, after), row
    with torch.no_grad():
        out = encoder(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    states = [out.hidden_states[i] if i != -1 else out.last_hidden_state for i in layers]
    rows = torch.stack([s[0, start:start + len(residue_ids)] for s in states])  # (n_layers, L, D)
    return rows.numpy()


def _read(path, kind=PER_RESIDUE):
    with EmbeddingsReader(path) as r:
        return {i: a for i, a, _ in r.items(kind)}


FAMILY_NAMES = sorted(FAMILIES)


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_embed_equals_plain_forward_of_each_protein(run_cli, tmp_path, tiny_models, family_name):
    family = FAMILIES[family_name]
    out = tmp_path / "e.h5"
    result = run_cli("embed", SMALL, "-m", tiny_models[family_name], "-o", out, "--max-tokens", "64",
                     "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    res, prot = _read(out), _read(out, PER_PROTEIN)
    records = list(read_fasta(SMALL))
    assert sorted(res) == sorted(r.id for r in records)
    for rec in records:
        seq = rec.sequence.replace("-", "").replace(".", "")
        ref = reference_rows(family, tiny_models[family_name], seq)[0]
        assert res[rec.id].shape == (len(seq), ref.shape[-1])  # one row per residue, X/U/Z/O/B included
        np.testing.assert_allclose(res[rec.id], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(prot[rec.id], ref.mean(0), atol=1e-5, rtol=0)
    with EmbeddingsReader(out) as r:
        assert r.attrs["family"] == family_name and r.attrs["compute_dtype"] == "float32"
        assert "input_prefix" not in r.attrs


def _protbert_layout(tiny_bert, path):
    """A BERT directory laid out as the published Rostlab/prot_bert and prot_bert_bfd are: a
    config.json without model_type (nor layer_norm_eps, pad_token_id), vocab.txt and a
    tokenizer_config.json without tokenizer_class."""
    import json
    import shutil

    shutil.copytree(tiny_bert, path)
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (path / name).unlink(missing_ok=True)
    (path / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    (path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}))
    config = json.loads((path / "config.json").read_text())
    for key in ("model_type", "layer_norm_eps", "pad_token_id", "transformers_version"):
        config.pop(key, None)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_a_t5_tokenizer_that_does_not_split_on_spaces_gets_one_residue_per_word(run_cli, tmp_path, tiny_models):
    """Ankh (ElnaggarLab/ankh-base, ankh-large: T5 models) is fed `list(sequence)` with
    `is_split_into_words=True` by its own scripts, which keep every row but the trailing `</s>`.
    A T5 tokenizer with no whitespace pre-tokenizer makes one unknown token of spaced text; embed
    then gives it one residue per word, and the rows equal that plain transformers forward pass."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from protrans_cli.models.base import residue_layout

    model_dir = tmp_path / "ankh_like"
    shutil.copytree(tiny_models["t5"], model_dir)
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = None  # no splitting on spaces: "M K T" is one word, unknown
    (model_dir / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    family = FAMILIES["t5"]
    assert len(tokenizer("M K T", add_special_tokens=False)["input_ids"]) != 3  # spaced text fails
    assert residue_layout(family, tokenizer) is not None  # the fast path, through words
    seqs = [r.sequence.replace("-", "").replace(".", "") for r in read_fasta(SMALL)]
    fast, fast_mask = family.encode(tokenizer, seqs)
    slow, slow_mask = family.encode_with_tokenizer(tokenizer, seqs)
    assert torch.equal(fast["input_ids"], slow["input_ids"]) and torch.equal(fast_mask, slow_mask)

    out = tmp_path / "e.h5"
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", out, "--max-tokens", "64", "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    rows = _read(out)
    encoder = family.encoder_class.from_pretrained(str(model_dir), dtype=torch.float32, use_kernels=False).eval()
    for rec in read_fasta(SMALL):
        letters = rec.sequence.replace("-", "").replace(".", "").upper().translate(str.maketrans("UZOB", "XXXX"))
        ids = tokenizer([list(letters)], is_split_into_words=True, return_tensors="pt")["input_ids"]
        assert ids.shape[1] == len(letters) + 1 and int(ids[0, -1]) == tokenizer.eos_token_id
        with torch.no_grad():
            ref = encoder(input_ids=ids).last_hidden_state[0, :-1].numpy()  # Ankh's rows: all but </s>
        np.testing.assert_allclose(rows[rec.id], ref, atol=1e-5, rtol=0)


def _prefixed_t5(model_dir, tiny_models, prefix="<AA2fold>", words=False, special=False):
    """The tiny T5 model given ProstT5's extra tokens (lower-case 3Di letters, `prefix` and
    <fold2AA>), its embedding table grown to them; `words`: a tokenizer that does not split on
    spaces (Ankh's)."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from protrans_cli.models.tokenizers import save_tokenizer

    family = FAMILIES["t5"]
    shutil.copytree(tiny_models["t5"], model_dir)
    if words:  # no splitting on spaces, as Ankh's tokenizers
        spec = json.loads((model_dir / "tokenizer.json").read_text())
        spec["pre_tokenizer"] = None
        (model_dir / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert family.prefix_ids(tokenizer) == []
    # (ProstT5's sentencepiece has them as "\u2581a"...; this word-level tokenizer's residues are bare letters)
    tokenizer.add_tokens(list("acdefghiklmnpqrstvwy") + [prefix, "<fold2AA>"], special_tokens=special)
    torch.manual_seed(1)
    model = family.pretraining_model(family.build_config("tiny", tokenizer))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(model_dir)
    save_tokenizer(tokenizer, model_dir)
    return model_dir


@pytest.mark.parametrize("prefix,words,special", [("<AA2fold>", False, False), ("<AA2fold>", False, True),
                                                  ("[NLU]", True, True)],
                         ids=["prostt5_added", "prostt5_added_special", "ankh3_like"])
def test_a_vocabulary_with_an_input_prefix_gets_it_and_no_row_for_it(run_cli, tmp_path, tiny_models, prefix, words,
                                                                     special):
    """ProstT5 (Rostlab/ProstT5: ProtT5-XL fine-tuned on 3Di) reads amino acids after a
    `<AA2fold>` token: its authors' code embeds "<AA2fold> M K ..." and keeps rows 1..L; Ankh3
    (ElnaggarLab/ankh3-*: an Ankh-style tokenizer that does not split on spaces) embeds after
    `[NLU]`. A T5 directory whose vocabulary has such a token gets it before every protein (and
    every chunked window), whether its tokenizer calls the token special or not, and its row is
    in no output; the rows equal the plain transformers forward pass of prefix, residues, `</s>`
    (and differ from the one without the prefix). tests/test_embed_tf4_reference.py checks a
    spiece.model holding `<AA2fold>` against transformers 4."""
    from transformers import AutoTokenizer

    from protrans_cli.models.base import residue_layout

    family = FAMILIES["t5"]
    model_dir = _prefixed_t5(tmp_path / "prefixed", tiny_models, prefix, words, special)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    lead = tokenizer.convert_tokens_to_ids(prefix)
    assert family.prefix_ids(tokenizer) == [lead]

    seqs = [r.sequence.replace("-", "").replace(".", "") for r in read_fasta(SMALL)]
    layout = residue_layout(family, tokenizer)
    assert layout is not None and layout.prefix == [lead]  # the fast path, prefix included
    fast, fast_mask = family.encode(tokenizer, seqs, multiple=8)
    slow, slow_mask = family.encode_with_tokenizer(tokenizer, seqs, multiple=8)
    assert torch.equal(fast["input_ids"], slow["input_ids"]) and torch.equal(fast_mask, slow_mask)
    assert torch.equal(fast["attention_mask"], slow["attention_mask"]) and fast["input_ids"].shape[1] % 8 == 0
    assert (fast["input_ids"][:, 0] == lead).all() and not fast_mask[:, 0].any()
    assert fast_mask.sum(1).tolist() == [len(s) for s in seqs]

    out = tmp_path / "e.h5"
    result = run_cli("embed", SMALL, "-m", model_dir, "-o", out, "--max-tokens", "64", "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    rows, means = _read(out), _read(out, PER_PROTEIN)
    with EmbeddingsReader(out) as r:
        assert r.attrs["input_prefix"] == prefix
    encoder = family.encoder_class.from_pretrained(str(model_dir), dtype=torch.float32, use_kernels=False).eval()
    for rec in read_fasta(SMALL):
        letters = rec.sequence.replace("-", "").replace(".", "").upper().translate(str.maketrans("UZOB", "XXXX"))
        if words:  # prefix and residues one word each
            ids = tokenizer([[prefix] + list(letters)], is_split_into_words=True, return_tensors="pt")["input_ids"]
        else:  # as ProstT5's model card writes it: prefix, space, spaced residues
            ids = tokenizer([f"{prefix} " + " ".join(letters)], return_tensors="pt")["input_ids"]
        assert ids[0].tolist() == [lead] + tokenizer.convert_tokens_to_ids(list(letters)) + [tokenizer.eos_token_id]
        with torch.no_grad():
            ref = encoder(input_ids=ids).last_hidden_state[0, 1:-1].numpy()  # rows 1..L
            bare = encoder(input_ids=ids[:, 1:]).last_hidden_state[0, :-1].numpy()
        np.testing.assert_allclose(rows[rec.id], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(means[rec.id], ref.mean(0), atol=1e-5, rtol=0)
        assert np.abs(rows[rec.id] - bare).max() > 1e-3  # the prefix is not a no-op

    # a chunked protein: every window starts with the prefix, as a whole protein does
    windows = []
    real_encode = type(family).encode
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(family), "encode", lambda self, tok, s, multiple=1: windows.append(s) or real_encode(
            self, tok, s, multiple))
        chunked = tmp_path / "c.h5"
        result = run_cli("embed", SMALL, "-m", model_dir, "-o", chunked, "--max-length", "12", "--long", "chunk",
                         "--chunk-overlap", "4", "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    assert {k: v.shape for k, v in _read(chunked).items()} == {k: v.shape for k, v in rows.items()}
    pieces = [s for batch in windows for s in batch]
    assert sum(len(s) == 12 for s in pieces) >= 4  # windows of the longer proteins were embedded
    inputs, mask = family.encode(tokenizer, pieces)
    assert (inputs["input_ids"][:, 0] == lead).all() and mask.sum(1).tolist() == [len(s) for s in pieces]


def test_3di_strings_are_read_lower_case_after_fold2aa(run_cli, tmp_path, tiny_models):
    """`embed --3di` (ProstT5's other input: Foldseek 3Di strings): every letter becomes its
    lower-case 3Di token, `<fold2AA>` goes before every protein, and the rows equal the plain
    forward pass of that (as the model card's "<fold2AA> d v v ..."); letters that are no 3Di
    state are refused (or skipped), a model without 3Di tokens is a usage error, and a file of
    amino-acid embeddings is not resumed with 3Di ones."""
    from transformers import AutoTokenizer

    model_dir = _prefixed_t5(tmp_path / "prostt5_like", tiny_models)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    fold = tokenizer.convert_tokens_to_ids("<fold2AA>")
    states = {"s1": "DVVLVVCCPPLDPVNLVSLVQ", "s2": "dpvq", "s3": "A" * 13 + "wy"}  # as foldseek writes them, or not
    fasta = tmp_path / "3di.fa"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in states.items()))
    out = tmp_path / "s.h5"
    result = run_cli("embed", fasta, "-m", model_dir, "-o", out, "--3di", "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    rows, means = _read(out), _read(out, PER_PROTEIN)
    with EmbeddingsReader(out) as r:
        assert r.attrs["input_prefix"] == "<fold2AA>"
    encoder = FAMILIES["t5"].encoder_class.from_pretrained(str(model_dir), dtype=torch.float32, use_kernels=False).eval()
    for pid, letters in states.items():
        ids = tokenizer(["<fold2AA> " + " ".join(letters.lower())], return_tensors="pt")["input_ids"]
        assert ids[0].tolist() == [fold] + tokenizer.convert_tokens_to_ids(list(letters.lower())) + [
            tokenizer.eos_token_id]
        assert not set(ids[0].tolist()) & set(tokenizer.convert_tokens_to_ids(list(letters.upper())))
        with torch.no_grad():
            ref = encoder(input_ids=ids).last_hidden_state[0, 1:-1].numpy()
        np.testing.assert_allclose(rows[pid], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(means[pid], ref.mean(0), atol=1e-5, rtol=0)
    # a head fit on such embeddings has `predict --fasta` embed its FASTA as 3Di strings too
    import json

    from protrans_cli.heads.predict import embed_for_head

    head = tmp_path / "head"
    head.mkdir()
    from protrans_cli.heads.tasks import get_task

    embedding = {"model": str(model_dir), "input_prefix": "<fold2AA>"}
    (head / "config.json").write_text(json.dumps({"kind": "per_protein", "task": get_task("loc").to_json(),
                                                  "layer": -1, "embedding": embedding}))
    (tmp_path / "work").mkdir()
    again, ids = embed_for_head(head, fasta, tmp_path / "work", device="cpu")
    assert ids == list(states)
    for pid, mean in _read(again, PER_PROTEIN).items():
        np.testing.assert_allclose(mean, means[pid], atol=1e-5, rtol=0)
    # the same letters as amino acids are other rows (and another file: no resume across)
    aa = tmp_path / "aa.h5"
    assert run_cli("embed", fasta, "-m", model_dir, "-o", aa, "--device", "cpu", "-j", "1").exit_code == 0
    assert np.abs(_read(aa)["s1"] - rows["s1"]).max() > 1e-3
    result = run_cli("embed", fasta, "-m", model_dir, "-o", aa, "--3di", "--resume", "--device", "cpu", "-j", "1")
    assert result.exit_code == 2 and "input_prefix" in result.stderr, result.stderr
    # X (or a rare letter) is no 3Di state
    bad = tmp_path / "bad.fa"
    bad.write_text(">ok\nDVVL\n>x\nDVXL\n")
    result = run_cli("embed", bad, "-m", model_dir, "-o", tmp_path / "b.h5", "--3di", "--device", "cpu", "-j", "1")
    assert result.exit_code == 1 and "'X' at residue 3 is not a 3Di letter" in result.stderr and "x" in result.stderr
    assert not (tmp_path / "b.h5").exists()
    result = run_cli("embed", bad, "-m", model_dir, "-o", tmp_path / "b.h5", "--3di", "--invalid-policy", "skip",
                     "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(tmp_path / "b.h5") as r:
        assert sorted(i for i, _, _ in r.items(PER_PROTEIN)) == ["ok"] and "x" in r.failed()
    # models that do not read 3Di strings
    result = run_cli("embed", fasta, "-m", tiny_models["t5"], "-o", tmp_path / "n.h5", "--3di", "--device", "cpu")
    assert result.exit_code == 2 and "does not read 3Di strings" in result.stderr
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "n.h5", "--3di")
    assert result.exit_code == 2 and "--3di is for a model that reads 3Di strings" in result.stderr


def test_one_tokenizer_read_as_amino_acids_then_as_3di_strings_gets_the_layout_of_each(tmp_path, tiny_models):
    # the fast path's layout is cached per tokenizer object: the same tokenizer given to
    # `embed --3di` after an amino-acid run (a library caller, or predict with two heads) must
    # not reuse the amino-acid layout (<AA2fold> and upper-case tokens), nor the reverse
    from transformers import AutoTokenizer

    from protrans_cli.models.base import residue_layout, three_di_input

    model_dir = _prefixed_t5(tmp_path / "prostt5_like", tiny_models)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    seqs = ["DVVLVVCC", "dpvq", "ACDEFGHIKLMNPQRSTVWY"]
    amino, three_di = FAMILIES["t5"], three_di_input(FAMILIES["t5"])
    for family, lead, case in ((amino, "<AA2fold>", str.upper), (three_di, "<fold2AA>", str.lower),
                               (amino, "<AA2fold>", str.upper)):
        layout = residue_layout(family, tokenizer)
        assert layout is not None and layout.prefix == [tokenizer.convert_tokens_to_ids(lead)]
        ids, mask = family.encode(tokenizer, seqs)
        for i, s in enumerate(seqs):  # as the model card writes it: prefix, space, spaced residues
            plain = tokenizer([f"{lead} " + " ".join(case(s))])["input_ids"][0]
            assert ids["input_ids"][i, :len(plain)].tolist() == plain, (lead, s)
            assert mask[i].nonzero()[:, 0].tolist() == list(range(1, len(s) + 1))


def test_3di_and_amino_acid_embeddings_are_told_apart(run_cli, tmp_path, tiny_models):
    """An embedder given to `embed` in memory must read what `options.three_di` says (one built
    without three_di embedded 3Di strings as amino acids, one built with it amino acids with X
    as unknown tokens, without a word); and where a 3Di file meets an amino-acid one (--resume,
    predict, fit's evaluation sets), the message says so instead of blaming protrans versions."""
    from protrans_cli.embed import EmbedOptions, build_embedder, embed
    from protrans_cli.embedders import OneHotEmbedder
    from protrans_cli.errors import ModelError, UsageError
    from protrans_cli.heads.predict import check_compatible

    model_dir = _prefixed_t5(tmp_path / "prostt5_like", tiny_models)
    fasta = tmp_path / "3di.fa"
    fasta.write_text(">s1\nDVVLVVCC\n>s2\nDPVQ\n")
    plain = EmbedOptions(model=str(model_dir), device="cpu", per_residue=False)
    three_di = EmbedOptions(model=str(model_dir), device="cpu", per_residue=False, three_di=True)
    for options, embedder, reads in ((three_di, build_embedder(plain), "amino acids"),
                                     (plain, build_embedder(three_di), "3Di strings"),
                                     (three_di, OneHotEmbedder((-1,)), "amino acids")):
        with pytest.raises(UsageError, match=f"the embedder given reads {reads}"):
            embed(fasta, tmp_path / "x.h5", options, embedder=embedder)
        assert not (tmp_path / "x.h5").exists()
    embed(fasta, tmp_path / "3di.h5", three_di)
    embed(fasta, tmp_path / "aa.h5", plain)
    result = run_cli("embed", fasta, "-m", model_dir, "-o", tmp_path / "3di.h5", "--per-protein", "--resume",
                     "--device", "cpu")
    assert result.exit_code == 2 and "the file holds embeddings of 3Di strings (embed --3di)" in result.stderr, \
        result.stderr
    from protrans_cli.heads.tasks import get_task

    config = {"kind": "per_protein", "task": get_task("loc").to_json(), "input_dim": 32, "layer": -1,
              "embedding": {"model": str(model_dir), "input_prefix": "<fold2AA>"}}
    with EmbeddingsReader(tmp_path / "aa.h5") as reader, pytest.raises(ModelError) as raised:
        check_compatible(config, reader)
    assert "these are embeddings of amino acids (embed without --3di), the head's of 3Di strings" in str(raised.value)
    assert "protrans version" not in str(raised.value)


def test_the_published_protbert_layout_loads_without_model_type(run_cli, tmp_path, tiny_models):
    """transformers 5 no longer guesses a missing model_type from the repository name, so
    `-m prot_bert` failed ("unsupported model"): the family now comes from `architectures`.
    Rows equal BertTokenizer + BertModel, as ProtBert's model card loads it; --init-from
    continues pretraining from it."""
    from transformers import BertModel, BertTokenizer

    model = _protbert_layout(tiny_models["bert"], tmp_path / "prot_bert")
    out = tmp_path / "pb.h5"
    result = run_cli("embed", SMALL, "-m", model, "--device", "cpu", "-o", out)
    assert result.exit_code == 0, result.stderr
    tokenizer = BertTokenizer.from_pretrained(str(model), do_lower_case=False)
    encoder = BertModel.from_pretrained(str(model), use_kernels=False).eval()
    rows = _read(out)
    for rec in read_fasta(SMALL):
        seq = rec.sequence.replace("-", "").replace(".", "").upper().translate(str.maketrans("UZOB", "XXXX"))
        ids = tokenizer(" ".join(seq), return_tensors="pt")["input_ids"]
        assert ids.shape[1] == len(seq) + 2
        with torch.no_grad():
            ref = encoder(input_ids=ids).last_hidden_state[0, 1:-1].numpy()
        np.testing.assert_allclose(rows[rec.id], ref, atol=1e-5, rtol=0)
    corpus = tmp_path / "c.txt"
    corpus.write_text("M K V L A A G\n\nA C D E F G H I K L\n\n" * 8)
    result = run_cli("train", "--init-from", model, "--corpus", corpus, "-o", tmp_path / "run", "--num-steps", 1,
                     "--global-batch-size", 4, "--micro-batch-size", 4, "-j", 1)
    assert result.exit_code == 0, result.stderr
    # vocab.txt without tokenizer_config.json: BertTokenizer's default lower-cases, and every
    # residue was [UNK] (refused as "the directory lacks this model's tokenizer")
    (model / "tokenizer_config.json").unlink()
    result = run_cli("embed", SMALL, "-m", model, "--device", "cpu", "-o", tmp_path / "bare.h5")
    assert result.exit_code == 0, result.stderr
    bare = _read(tmp_path / "bare.h5")
    assert all(np.array_equal(bare[k], rows[k]) for k in rows)


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_several_layers(tmp_path, tiny_models, family_name):
    from protrans_cli.embed import EmbedOptions, embed

    family = FAMILIES[family_name]
    out = tmp_path / "layers.h5"
    embed(SMALL, out, EmbedOptions(model=str(tiny_models[family_name]), layers=(0, -2, -1), device="cpu"))
    res = _read(out)
    seq = "ACDEFGHIKLMNPQRSTVWY"
    ref = reference_rows(family, tiny_models[family_name], seq, layers=(0, -2, -1))
    assert res["sp|Q9/slash"].shape == ref.shape
    np.testing.assert_allclose(res["sp|Q9/slash"], ref, atol=1e-5, rtol=0)
    with EmbeddingsReader(out) as r:
        assert list(r.attrs["layers"]) == [-3, -2, -1]  # stored as negative indices


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_batching_invariance_and_chunking(tmp_path, tiny_models, family_name):
    from protrans_cli.embed import EmbedOptions, embed

    model = str(tiny_models[family_name])
    one = _read(embed(SMALL, tmp_path / "one.h5", EmbedOptions(model=model, max_batch_size=1, device="cpu")).output)
    big = _read(embed(SMALL, tmp_path / "big.h5", EmbedOptions(model=model, max_tokens=10_000, device="cpu")).output)
    for k in one:
        np.testing.assert_allclose(one[k], big[k], atol=1e-5, rtol=0)
    # Chunking: a protein longer than the window comes back with all its rows; the rows of
    # each window's interior match a forward pass over that window alone.
    chunked = _read(embed(SMALL, tmp_path / "c.h5", EmbedOptions(model=model, max_length=8, long_policy="chunk",
                                                                 chunk_overlap=4, device="cpu")).output)
    seq = "MKTAYIAKQRQISFVKSHFSRQ"
    assert chunked["P1"].shape[0] == len(seq)
    first_window = reference_rows(FAMILIES[family_name], model, seq[:8])[0]
    np.testing.assert_allclose(chunked["P1"][:6], first_window[:6], atol=1e-5, rtol=0)
    np.testing.assert_allclose(chunked["one"], one["one"], atol=1e-5, rtol=0)  # short ones untouched


def test_oom_on_a_real_model_splits_and_still_matches(tmp_path, tiny_models, monkeypatch):
    from protrans_cli.embed import EmbedOptions, TransformerEmbedder, embed

    name = FAMILY_NAMES[0]
    model = str(tiny_models[name])
    ref = _read(embed(SMALL, tmp_path / "ref.h5", EmbedOptions(model=model, device="cpu")).output)
    original = TransformerEmbedder.embed_arrays
    sizes = []

    def fake_oom(self, seqs, **kw):
        sizes.append(len(seqs))
        if len(seqs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return original(self, seqs, **kw)

    monkeypatch.setattr(TransformerEmbedder, "embed_arrays", fake_oom)
    summary = embed(SMALL, tmp_path / "oom.h5", EmbedOptions(model=model, device="cpu", max_tokens=10_000))
    assert max(sizes) > 1 and summary.failed == {}
    got = _read(tmp_path / "oom.h5")
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-5, rtol=0)


def test_embed_never_writes_over_its_model_and_damaged_weights_are_one_line(run_cli, tmp_path, tiny_models):
    """`embed -m RUN -o RUN/model.safetensors` replaced the weights it had loaded (exit 0): a name of
    the model's files, or a folder its run uses, is refused; any other name in the directory is
    harmless (`cd run && protrans embed x.fa -m . -o x.h5`): written, and the model is the same
    model after it (--resume and a second file accept it). Weights cut short by an interrupted copy
    or download then gave a safetensors traceback."""
    import shutil

    import h5py

    model = tmp_path / "model"
    shutil.copytree(tiny_models[FAMILY_NAMES[0]], model)
    files = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    (model / "checkpoints").mkdir()  # (a training run's)
    for out, said in ((model / "model.safetensors", "is one of the model directory's files (its weights)"),
                      (model / "config.json", "is one of the model directory's files (its config)"),
                      (model / "checkpoints" / "x.h5", "is in " + str(model / "checkpoints") + ", the training "
                                                         "run's checkpoints"),
                      (model / "." / "tokenizer.h5", "is a name the model directory's files go under (its tokenizer)")):
        result = run_cli("embed", SMALL, "-m", model, "-o", out)
        assert result.exit_code == 2 and f"{out} {said}" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "(choose another -o)" in result.stderr
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()} == files
    assert sorted(p.name for p in model.iterdir()) == sorted([*files, "checkpoints"])
    assert not any((model / "checkpoints").iterdir())
    first = run_cli("embed", SMALL, "-m", model, "-o", model / "x.h5")
    assert first.exit_code == 0, first.stderr
    resumed = run_cli("embed", SMALL, "-m", model, "-o", model / "x.h5", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    second = run_cli("embed", SMALL, "-m", model, "-o", model / "." / "y.h5")
    assert second.exit_code == 0, second.stderr
    with h5py.File(model / "x.h5", "r") as x, h5py.File(model / "y.h5", "r") as y:
        assert x.attrs["weights_fingerprint"] == y.attrs["weights_fingerprint"]
        assert sorted(x.keys()) == sorted(y.keys()) and len(x.keys()) > 0
    assert {p.name: p.read_bytes() for p in model.iterdir() if p.name in files} == files
    weights = model / "model.safetensors"
    weights.write_bytes(files["model.safetensors"][:1000])
    result = run_cli("embed", SMALL, "-m", model, "-o", tmp_path / "x.h5")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"protrans: error: {model}: cannot load the weights")
    assert not (tmp_path / "x.h5").exists()


def test_a_model_directory_without_its_weights_is_one_line_naming_the_file(run_cli, tmp_path, tiny_models):
    """A model directory copied without its weights (config and tokenizer alone): one line naming
    the directory and the weights file it lacks, no traceback, nothing written."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_models["bert"], model)
    (model / "model.safetensors").unlink()
    result = run_cli("embed", SMALL, "-m", model, "-o", tmp_path / "x.h5", "--device", "cpu")
    # (transformers' "Error no file named model.safetensors, or pytorch_model.bin, found in
    # directory ..." was repeated inside our line)
    assert result.exit_code == 1 and result.stderr == (f"protrans: error: {model}: the model directory has no "
                                                       "weights file (model.safetensors or pytorch_model.bin)\n"), \
        result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # a Hugging Face cache snapshot whose weights link points at a blob no longer there (a download
    # cut short, a cache cleaned): said so, not "has no weights file"
    (model / "model.safetensors").symlink_to("../../blobs/0f3a")
    result = run_cli("embed", SMALL, "-m", model, "-o", tmp_path / "x.h5", "--device", "cpu")
    assert result.exit_code == 1 and result.stderr == (
        f"protrans: error: {model}: the model directory has a model.safetensors that is a broken link (to "
        "../../blobs/0f3a: a download cut short or a cache cleaned? download the model again)\n"), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_refused_pickles_and_cut_weights_are_one_line_for_embed_and_init_from(run_cli, tmp_path, tiny_models):
    """A pytorch_model.bin that weights_only=True refuses (a pickled object that is not a
    tensor) and a model.safetensors cut short gave tracebacks, the first ending in torch's advice
    to load with weights_only=False; the pickle's code never runs."""
    import argparse
    import shutil

    from safetensors.torch import load_file

    corpus = tmp_path / "c.txt"
    corpus.write_text("M K V L A A G\n\n" * 8)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_models["bert"], pickled)
    state = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save({**state, "extra": argparse.Namespace(x=1)}, pickled / "pytorch_model.bin")
    cut = tmp_path / "cut"
    shutil.copytree(tiny_models["bert"], cut)
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    for model, problem in ((pickled, "holds objects other than tensors"), (cut, "cannot load the weights")):
        for args, prefix in ((["embed", SMALL, "-m", model, "-o", tmp_path / "x.h5"], f"{model}:"),
                             (["train", "--init-from", model, "--corpus", corpus, "-o", tmp_path / "run",
                               "--num-steps", 1, "--global-batch-size", 4, "--micro-batch-size", 4], f"--init-from {model}:")):
            result = run_cli(*args)
            assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
            line = result.stderr.strip().splitlines()[-1]
            assert line.startswith(f"protrans: error: {prefix} cannot load the weights") and problem in line, line
            assert "weights_only=False" not in result.stderr
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "run" / "config.json").exists()


def test_half_precision_on_cpu_is_refused(run_cli, tmp_path, tiny_models):
    result = run_cli("embed", SMALL, "-m", tiny_models[FAMILY_NAMES[0]], "--device", "cpu",
                     "--dtype", "float16", "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and "half precision" in result.stderr


@pytest.mark.parametrize("layer", ["99", "3", "-4"])
def test_missing_layer_is_a_usage_error(run_cli, tmp_path, tiny_models, layer):
    # (the tiny models have 2 layers: 0..2 and -3..-1 exist; 3, one past the last, was the
    # embedding layer's index once made negative, 3 - 3 = 0, where the bound let it through)
    result = run_cli("embed", SMALL, "-m", tiny_models[FAMILY_NAMES[0]], "--layer", layer, "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and f"--layer {layer} does not exist" in result.stderr, result.stderr
    assert "(valid indices -3..2; 0 is the embedding layer)" in result.stderr
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("layers", [("2", "-1"), ("-3", "0"), ("-1", "-2", "2")])
def test_a_layer_named_twice_by_positive_and_negative_index_is_a_usage_error(run_cli, tmp_path, tiny_models,
                                                                            monkeypatch, layers):
    """The tiny models have 2 layers: 2 and -1 are the last, 0 and -3 the embedding layer. The
    file would hold the same array twice; refused once the layer count is known, before any batch."""
    from protrans_cli.embed import TransformerEmbedder

    def no_batch(self, seqs, **kw):
        raise AssertionError("computed before the layers were checked")

    monkeypatch.setattr(TransformerEmbedder, "embed_batch", no_batch)
    out = tmp_path / "x.h5"
    result = run_cli("embed", SMALL, "-m", tiny_models["bert"], *[a for x in layers for a in ("--layer", x)],
                     "-o", out, "--device", "cpu")
    assert result.exit_code == 2, result.stderr
    assert "are the same hidden state" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not out.with_name("x.h5.partial").exists()


def _without_tokenizer(model_dir, to):
    """A copy of a model directory with config and weights only (what copying just
    config.json + model.safetensors from a training run leaves)."""
    import shutil

    to.mkdir()
    for f in model_dir.iterdir():
        if f.is_file() and not f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, to / f.name)
    return to


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_model_directory_without_tokenizer_files_is_refused(run_cli, tmp_path, tiny_models, family_name):
    """transformers then builds a default tokenizer that maps every residue to [UNK] (bert, albert,
    electra, xlnet embedded that without a word), or fails with an unrelated message."""
    model = _without_tokenizer(tiny_models[family_name], tmp_path / f"{family_name}_weights_only")
    out = tmp_path / "x.h5"
    result = run_cli("embed", SMALL, "-m", model, "-o", out, "--device", "cpu")
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"protrans: error: {model}: ")
    assert "tokenizer" in lines[0] and "copy the tokenizer files" in lines[0]
    assert not out.exists() and not out.with_name("x.h5.partial").exists()


@pytest.mark.parametrize("family_name", ["bert", "esm", "xlnet"])
def test_a_tokenizer_config_without_its_vocabulary_is_named_as_such(run_cli, tmp_path, tiny_models, family_name):
    """A copy that kept tokenizer_config.json (small, a JSON file like config.json) but not the
    vocabulary it describes counted as having tokenizer files, and was "its tokenizer files are
    damaged or of a kind transformers does not read (TypeError: expected str, bytes or os.PathLike
    object, not NoneType)" for ESM, "(ValueError: Couldn't instantiate the backend tokenizer from one
    of: )" for BERT and XLNet."""
    import shutil

    model = _without_tokenizer(tiny_models[family_name], tmp_path / f"{family_name}_settings_only")
    shutil.copy(tiny_models[family_name] / "tokenizer_config.json", model / "tokenizer_config.json")
    out = tmp_path / "x.h5"
    result = run_cli("embed", SMALL, "-m", model, "-o", out, "--device", "cpu")
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"protrans: error: {model}: the model directory has its tokenizer_config.json but no vocabulary"), lines
    assert "damaged" not in lines[0] and "copy the tokenizer files" in lines[0]
    assert not out.exists() and not out.with_name("x.h5.partial").exists()


def test_tokenizer_that_does_not_know_the_residues_is_refused(run_cli, tmp_path, tiny_models):
    """Tokenizer files of another model (here a vocabulary without residue letters): every
    residue is [UNK], so the message lists them."""
    from protrans_cli.models.tokenizers import residue_tokenizer

    model = _without_tokenizer(tiny_models["bert"], tmp_path / "other_tokenizer")
    residue_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"], unk_token="[UNK]",
                      single="[CLS] $A [SEP]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                      mask_token="[MASK]").save_pretrained(model)
    result = run_cli("embed", SMALL, "-m", model, "-o", tmp_path / "x.h5", "--device", "cpu")
    assert result.exit_code == 1, result.stderr
    assert (f"{model}: the tokenizer maps the residue(s) ACDEFGHIKLMNPQRSTVWY to its unknown token '[UNK]'"
            in result.stderr)


def _sentencepiece_model(path):
    """A ProtT5/ProtXLNet-style sentencepiece model: one `▁X` piece per residue letter."""
    spm = pytest.importorskip("sentencepiece")
    import io
    import random

    rng = random.Random(0)
    lines = [" ".join(rng.choice("LAGVESIKRDTPNQFYMHCWX") for _ in range(50)) for _ in range(200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=24,
                                   model_type="word", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
                                   eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0,
                                   minloglevel=2)
    path.write_bytes(model.getvalue())


@pytest.mark.parametrize("convention", ["own", "prot_bert_vocab", "prot_t5_spiece", "prot_xlnet_spiece"])
def test_published_tokenizer_conventions_know_every_residue(tmp_path, convention):
    """The check above must not refuse a real checkpoint: the tokenizers every family builds for
    its trained run directories, ProtBert/ProtElectra's vocab.txt and the sentencepiece models of
    ProtT5 and ProtXLNet (ESM's EsmTokenizer is the family's own) map every residue to a token."""
    import json

    from protrans_cli.models.base import unknown_residues

    if convention == "own":
        for family in FAMILIES.values():
            tokenizer = family.build_tokenizer()
            tokenizer.save_pretrained(tmp_path / family.name)
            assert unknown_residues(family, family.load_tokenizer(tmp_path / family.name)) == [], family.name
        return
    if convention == "prot_bert_vocab":
        (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                       *"LAGVESIKRDTPNQFYMHCWXUBZO"]) + "\n")
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                                   "do_lower_case": False}))
        names = ("bert", "electra")
    else:
        _sentencepiece_model(tmp_path / "spiece.model")
        cls = "T5Tokenizer" if convention == "prot_t5_spiece" else "XLNetTokenizer"
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls, "do_lower_case": False}))
        names = ("t5",) if convention == "prot_t5_spiece" else ("xlnet",)
    for name in names:
        tokenizer = FAMILIES[name].load_tokenizer(tmp_path)
        assert tokenizer(FAMILIES[name].prepare("MKV"), add_special_tokens=False)["input_ids"]
        assert unknown_residues(FAMILIES[name], tokenizer) == [], name
    assert unknown_residues(FAMILIES["bert"], None) == list("ACDEFGHIKLMNPQRSTVWY")  # no tokenizer at all


def test_resume_finds_a_model_directory_however_it_is_named(tmp_path, tiny_models, monkeypatch):
    """The file stores a model directory as its absolute path: --resume from another working
    directory, or with ./dir for dir, is the same model; another directory is not."""
    import shutil

    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.errors import UsageError

    work = tmp_path / "work"
    shutil.copytree(tiny_models["bert"], work / "runs" / "bert")
    first = tmp_path / "first.fa"
    first.write_text(">a\nMKV\n")
    out = tmp_path / "e.h5"
    monkeypatch.chdir(work)
    embed(first, out, EmbedOptions(model="runs/bert", device="cpu"))
    with EmbeddingsReader(out) as r:
        assert r.attrs["model"] == str((work / "runs" / "bert").resolve())
    monkeypatch.chdir(tmp_path)  # elsewhere, the same directory by another name
    summary = embed(SMALL, out, EmbedOptions(model="./work/runs/bert", device="cpu", resume=True))
    assert summary.num_resumed == 0 and summary.num_embedded == 6
    monkeypatch.chdir(work / "runs")
    with pytest.raises(UsageError, match="cannot resume.*model="):
        embed(SMALL, out, EmbedOptions(model=str(tiny_models["esm"]), device="cpu", resume=True))
    assert embed(SMALL, out, EmbedOptions(model="bert", device="cpu", resume=True)).num_resumed == 6


def test_resume_refuses_to_mix_rows_with_and_without_an_input_prefix(tmp_path, tiny_models):
    """A file of a model whose vocabulary holds <AA2fold> written before embed put it in has no
    `input_prefix` and unprefixed rows: --resume extended it with prefixed rows (0.4 apart) and
    labelled the whole file input_prefix=<AA2fold>. A missing attribute is no prefix."""
    import shutil

    import h5py
    from transformers import AutoTokenizer

    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.errors import UsageError
    from protrans_cli.models.tokenizers import save_tokenizer

    family = FAMILIES["t5"]
    model_dir = tmp_path / "prefixed"
    shutil.copytree(tiny_models["t5"], model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.add_tokens(["<AA2fold>"])
    model = family.pretraining_model(family.build_config("tiny", tokenizer))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(model_dir)
    save_tokenizer(tokenizer, model_dir)
    first = tmp_path / "first.fa"
    first.write_text(">a\nMKV\n")
    out = tmp_path / "e.h5"
    embed(first, out, EmbedOptions(model=str(model_dir), device="cpu"))
    with EmbeddingsReader(out) as r:
        assert r.attrs["input_prefix"] == "<AA2fold>"
    # the same model and file: resumed as before
    assert embed(first, out, EmbedOptions(model=str(model_dir), device="cpu", resume=True)).num_resumed == 1
    with h5py.File(out, "r+") as f:  # as a file written before the prefix
        del f.attrs["input_prefix"]
    with pytest.raises(UsageError, match="cannot resume.*no token before each protein.*input_prefix='<AA2fold>'"):
        embed(SMALL, out, EmbedOptions(model=str(model_dir), device="cpu", resume=True))
    with EmbeddingsReader(out) as r:
        assert "input_prefix" not in r.attrs and len(r.keys(PER_RESIDUE)) == 1


def test_a_revision_ignored_for_a_directory_is_not_recorded(tmp_path, tiny_models, run_cli):
    # Warned "ignored" but recorded in the file, so a resume without it was refused (exit 2)
    out = tmp_path / "r.h5"
    r = run_cli("embed", SMALL, "-m", tiny_models["bert"], "--revision", "v9", "-o", out)
    assert r.exit_code == 0 and "--revision v9 is ignored for the local directory" in r.stderr
    with EmbeddingsReader(out) as reader:
        assert reader.attrs["revision"] == ""
    r = run_cli("embed", SMALL, "-m", tiny_models["bert"], "-o", out, "--resume")
    assert r.exit_code == 0 and "6 already there" in r.stderr, r.stderr
    import h5py

    with h5py.File(out, "a") as f:  # as earlier versions wrote it: no resume matched such a file
        f.attrs["revision"] = "v9"
    for extra in ([], ["--revision", "v9"]):
        r = run_cli("embed", SMALL, "-m", tiny_models["bert"], "-o", out, "--resume", *extra)
        assert r.exit_code == 0 and "6 already there" in r.stderr, r.stderr
    r = run_cli("embed", SMALL, "-m", "onehot", "--revision", "v9", "-o", tmp_path / "o.h5")
    assert r.exit_code == 0 and "the onehot embedder has no weights: --revision v9 ignored" in r.stderr


def test_resume_of_a_file_that_stored_a_relative_model_path(tmp_path, tiny_models, monkeypatch):
    """Files written before absolute paths were stored hold `-m` as given: resumed from the
    directory they were started in, the path resolves to the same model whatever its spelling;
    from anywhere else the path names nothing, and the weights (`weights_fingerprint`, as for a
    model directory moved since) tell that it is the same model. (Other weights are refused:
    test_embed.py's test_resume_with_the_model_directory_moved_goes_on.)"""
    import shutil

    import h5py

    from protrans_cli.embed import EmbedOptions, embed

    shutil.copytree(tiny_models["bert"], tmp_path / "bert")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "old.h5"
    embed(SMALL, out, EmbedOptions(model="bert", device="cpu"))
    with h5py.File(out, "a") as f:
        f.attrs["model"] = "./bert"  # what the previous version wrote for `-m ./bert`
    assert embed(SMALL, out, EmbedOptions(model=str(tmp_path / "bert"), device="cpu", resume=True)).num_resumed == 6
    with h5py.File(out, "a") as f:
        f.attrs["model"] = "./bert"
    monkeypatch.chdir(tmp_path.parent)
    assert embed(SMALL, out, EmbedOptions(model=str(tmp_path / "bert"), device="cpu", resume=True)).num_resumed == 6


def test_resume_compares_the_length_limit_that_applied(tmp_path, tiny_models):
    """The file records the length at which --long-policy applied: --max-length given as the
    model's own limit and left out are the same run. Files of earlier versions hold 0 for "not
    given" and resume either way; another limit is refused, and so is 0 for T5 (no limit of its
    own) against an explicit one."""
    import h5py
    from transformers import AutoConfig

    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.errors import UsageError

    model = str(tiny_models["bert"])
    limit = AutoConfig.from_pretrained(model).max_position_embeddings - 2  # [CLS] and [SEP]
    out = tmp_path / "m.h5"
    embed(SMALL, out, EmbedOptions(model=model, device="cpu", long_policy="skip"))
    with EmbeddingsReader(out) as r:
        assert r.attrs["max_length"] == limit
    again = dict(model=model, device="cpu", long_policy="skip", resume=True)
    assert embed(SMALL, out, EmbedOptions(max_length=limit, **again)).num_resumed == 6
    with h5py.File(out, "a") as f:
        f.attrs["max_length"] = 0  # an earlier version, --max-length not given
    assert embed(SMALL, out, EmbedOptions(**again)).num_resumed == 6
    with h5py.File(out, "a") as f:
        f.attrs["max_length"] = 0
    with pytest.raises(UsageError, match=f"no max_length \\(the model takes any length\\), this run uses "
                                         f"max_length={limit - 1}"):
        embed(SMALL, out, EmbedOptions(max_length=limit - 1, **again))
    t5 = tmp_path / "t5.h5"
    embed(SMALL, t5, EmbedOptions(model=str(tiny_models["t5"]), device="cpu"))
    with EmbeddingsReader(t5) as r:
        assert r.attrs["max_length"] == 0
    # (stored 0: no limit, said so rather than as a setting of 0)
    with pytest.raises(UsageError, match=r"written with no max_length \(the model takes any length\), this run "
                                         "uses max_length=50"):
        embed(SMALL, t5, EmbedOptions(model=str(tiny_models["t5"]), device="cpu", max_length=50,
                                      long_policy="skip", resume=True))


def test_a_short_name_and_its_hub_id_are_the_same_model(tmp_path, monkeypatch):
    from protrans_cli.embed import model_attr, same_model

    monkeypatch.chdir(tmp_path)
    assert same_model("prot_bert", "Rostlab/prot_bert") and same_model("Rostlab/prot_bert", "prot_bert")
    assert not same_model("prot_bert", "prot_bert_bfd") and not same_model("onehot", "prot_bert")
    assert model_attr("prot_bert") == "prot_bert" and model_attr("Rostlab/prot_bert") == "Rostlab/prot_bert"
    assert model_attr("onehot") == "onehot"


def test_a_misspelt_model_name_is_named_as_such(run_cli, tmp_path, tiny_models, monkeypatch):
    # `-m prot_bertt` and `-m runs/bert-tnyi` were told to `hf download` them; a head directory
    # given as the model got transformers' "Unrecognized model ... should have a model_type key"
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_models["bert"], tmp_path / "runs" / "bert-tiny")
    (tmp_path / "runs" / "notes").mkdir()
    for model, said in (("prot_bertt", "not a short name: did you mean prot_bert? (`protrans models` lists them)"),
                        # fair-esm's name of ESM-1v's model 1: of five equally close names, _1
                        ("esm1v_t33_650M_UR90S", "did you mean esm1v_t33_650M_UR90S_1? (`protrans models`"),
                        ("runs/bert-tnyi", "no model directory of that name: did you mean runs/bert-tiny?"),
                        ("runs/esm", "no model directory of that name in runs (the model directories there: "
                                     "bert-tiny)")):
        r = run_cli("embed", SMALL, "-m", model, "-o", tmp_path / "x.h5")
        assert r.exit_code == 1 and said in r.stderr and "hf download" not in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1
    (tmp_path / "heads" / "ss3").mkdir(parents=True)
    (tmp_path / "heads" / "ss3" / "config.json").write_text('{"kind": "per_residue", "task": {"name": "ss3"}}')
    r = run_cli("embed", SMALL, "-m", "heads/ss3", "-o", tmp_path / "x.h5")
    assert r.exit_code == 1 and "heads/ss3: a prediction head, not a language model: apply it with `protrans " \
        "predict heads/ss3 --fasta FILE`" in r.stderr, r.stderr


def test_a_default_model_missing_offline_names_the_way_without_weights(run_cli, tmp_path, monkeypatch):
    # `protrans embed x.fa -o x.h5` offline, the user having named no model, was told only to
    # download ProtT5 (2.4 GB), not that it was embed's default nor that onehot needs no weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli("embed", SMALL, "-o", tmp_path / "x.h5")
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("protrans: error: cannot load model 'prot_t5_xl_half': ") and "hf download" in r.stderr
    assert r.stderr.rstrip().endswith("(prot_t5_xl_half is the default -m of protrans embed; -m onehot and -m blosum62 need "
                                      "no weights, and -m RUN takes a model that protrans train wrote)"), r.stderr
    assert not (tmp_path / "x.h5").exists()
    # a model the user named is theirs: the message says nothing of defaults
    r = run_cli("embed", SMALL, "-m", "prot_t5_xl_half", "-o", tmp_path / "x.h5")
    assert r.exit_code == 1 and "hf download" in r.stderr and "default" not in r.stderr, r.stderr
    # variants' default, ESM-2 650M, alike
    r = run_cli("variants", "--all-singles", "--sequence", "MKTAYIAK")
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1 and "hf download" in r.stderr, r.stderr
    assert r.stderr.rstrip().endswith("(esm2_t33_650M_UR50D is the default -m of protrans variants; -m RUN takes "
                                      "a masked LM that protrans train wrote, and protrans import-model converts "
                                      "fair-esm's own .pt files)"), r.stderr
    r = run_cli("variants", "--all-singles", "--sequence", "MKTAYIAK", "-m", "esm2_t33_650M_UR50D")
    assert r.exit_code == 1 and "hf download" in r.stderr and "default" not in r.stderr, r.stderr


@pytest.mark.parametrize("model", ["prot_bert", "./no/such/dir"])
def test_offline_missing_model_is_one_line_error(run_cli, tmp_path, model):
    result = run_cli("embed", SMALL, "-m", model, "-o", tmp_path / "x.h5", "--device", "cpu")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "-m DIR" in lines[0] or "no such model directory" in lines[0]
    assert not (tmp_path / "x.h5").exists()


def test_model_position_limit_is_enforced_before_compute(run_cli, tmp_path, tiny_models):
    """BERT-like models have a learned position table: a longer protein is refused with advice,
    or chunked to the model's limit when asked, never a crash inside the model."""
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.errors import InputError, UsageError

    name = next((n for n in ("bert", "albert", "electra", "roberta") if n in FAMILIES), None)
    if name is None:
        pytest.skip("no family with a learned position table")
    model = str(tiny_models[name])
    long_fa = tmp_path / "long.fa"
    long_fa.write_text(">long\n" + "MKV" * 700 + "\n>short\nMKV\n")  # 2100 residues > 2046
    with pytest.raises(InputError, match="record 'long'.*model accepts"):
        embed(long_fa, tmp_path / "x.h5", EmbedOptions(model=model, device="cpu"))
    with pytest.raises(UsageError, match="more than the model accepts"):
        embed(long_fa, tmp_path / "x.h5", EmbedOptions(model=model, device="cpu", max_length=5000))
    # chunks of the model's limit: an overlap as long as the window would never advance
    with pytest.raises(UsageError, match=r"^chunk_overlap must be smaller than the window "
                                         r"\(2046, the model's limit\), got 2046$"):
        embed(long_fa, tmp_path / "o.h5", EmbedOptions(model=model, device="cpu", long_policy="chunk",
                                                       chunk_overlap=2046))
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.partial").exists()
    summary = embed(long_fa, tmp_path / "c.h5", EmbedOptions(model=model, device="cpu", long_policy="chunk",
                                                           per_protein=False))
    assert summary.failed == {}
    assert _read(tmp_path / "c.h5")["long"].shape[0] == 2100
    # Skipped at the model's limit, not at a --max-length the user never gave.
    summary = embed(long_fa, tmp_path / "s.h5", EmbedOptions(model=model, device="cpu", long_policy="skip"))
    assert summary.failed == {"long": "skipped: 2100 residues > the 2046 residues the model accepts"}


@pytest.mark.gpu
@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_embed_on_the_gpu_in_bf16_matches_the_fp32_reference(run_cli, tmp_path, tiny_models, family_name):
    """The default GPU run (auto device, bf16, embed's own token budget) gives the rows of a plain
    fp32 transformers forward pass to bf16 accuracy, one row per residue."""
    family = FAMILIES[family_name]
    out = tmp_path / "e.h5"
    result = run_cli("embed", SMALL, "-m", tiny_models[family_name], "-o", out)
    assert result.exit_code == 0, result.stderr
    from protrans_cli.io.h5 import EmbeddingsReader as Reader

    with Reader(out) as r:
        assert r.attrs["compute_dtype"] in ("bfloat16", "float16") and str(r.attrs["device"]).startswith("cuda")
    got, pooled = _read(out), _read(out, PER_PROTEIN)
    for rec in read_fasta(SMALL):
        seq = rec.sequence.replace("-", "").replace(".", "")
        ref = reference_rows(family, tiny_models[family_name], seq)[0]
        assert got[rec.id].shape == ref.shape == (len(seq), ref.shape[-1])
        err = np.linalg.norm(got[rec.id] - ref) / np.linalg.norm(ref)
        assert err < 2e-2, (rec.id, err)
        np.testing.assert_allclose(pooled[rec.id], got[rec.id].mean(0), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_the_gpu_token_budget_grows_with_free_memory():
    from protrans_cli.embed import GPU_MAX_TOKENS, GPU_MIN_TOKENS, default_max_tokens

    free, _ = torch.cuda.mem_get_info()
    budget = default_max_tokens("cuda")
    assert GPU_MIN_TOKENS <= budget <= GPU_MAX_TOKENS and budget % GPU_MIN_TOKENS == 0
    assert budget == max(GPU_MIN_TOKENS, min(GPU_MAX_TOKENS, GPU_MIN_TOKENS * int(free // (10 * 2**30))))
    assert default_max_tokens("cpu") == 512


def test_the_gpu_budget_follows_the_models_memory_per_token(monkeypatch, tiny_models):
    """A model whose attention keeps no (L, L) scores gets a quarter of the free memory over its
    per-token estimate (within 4000..32000): a 16 GB card's ~14 GiB free gives a ProtBert-sized
    model the 32000 tokens an H200 measured fastest, where the rule by free memory alone gave
    4000. T5 with its own attention (scores materialised, memory growing with the length) keeps
    that rule; under FlexAttention it has no scores and follows the estimate. The GPU is faked:
    the budget reads only the free memory."""
    import protrans_cli.embed as embed_mod
    from protrans_cli.embed import GPU_MAX_TOKENS, GPU_MIN_TOKENS, EmbedOptions, build_embedder, default_max_tokens

    free = {"bytes": 14 * 2**30}
    monkeypatch.setattr(embed_mod, "_free_accelerator_bytes", lambda device: free["bytes"])
    bert = build_embedder(EmbedOptions(model=str(tiny_models["bert"]), device="cpu"))
    t5 = build_embedder(EmbedOptions(model=str(tiny_models["t5"]), device="cpu"))
    t5_flex = build_embedder(EmbedOptions(model=str(tiny_models["t5"]), device="cpu", attention="flex"))
    xlnet = build_embedder(EmbedOptions(model=str(tiny_models["xlnet"]), device="cpu"))
    for e in (bert, t5, t5_flex, xlnet):
        e.compute_dtype = "bfloat16"  # as on the GPU
    assert t5.activation_bytes_per_token() is None and xlnet.activation_bytes_per_token() is None
    # the tiny BERT (hidden 32, inner 64): 2 x (64 + 6 x 32) x 2 + 32 x 2 + 32 x 4 bytes
    assert bert.activation_bytes_per_token() == 2 * (64 + 6 * 32) * 2 + 32 * 2 + 32 * 4
    assert default_max_tokens("cuda", bert) == GPU_MAX_TOKENS
    assert default_max_tokens("cuda", t5_flex) == GPU_MAX_TOKENS
    assert default_max_tokens("cuda", t5) == GPU_MIN_TOKENS == default_max_tokens("cuda")  # 14 GiB: 4000
    # the estimate of a ProtBert-sized model (hidden 1024, inner 4096, bf16): 47 KB per token
    bert.embedding_dim, bert.model.config.intermediate_size = 1024, 4096
    assert bert.activation_bytes_per_token() == 47104
    free["bytes"] = 4 * 2**30  # a small card: 4 GiB x 0.25 / 47104 bytes
    assert default_max_tokens("cuda", bert) == 22795
    free["bytes"] = 2**29      # 0.5 GiB: below the floor
    assert default_max_tokens("cuda", bert) == GPU_MIN_TOKENS
    # several layers keep every hidden state, and each layer's sums or rows: more per token
    several = build_embedder(EmbedOptions(model=str(tiny_models["bert"]), device="cpu", layers=(-1, 0)))
    several.compute_dtype = "bfloat16"
    states = several.num_hidden_states
    assert states > 2
    assert several.activation_bytes_per_token() == 2 * (64 + 6 * 32) * 2 + states * 32 * 2 + 2 * 32 * 4
    assert default_max_tokens("cpu", bert) == 512


def _spy_on_embed_arrays(monkeypatch) -> list[dict]:
    """The list that gets what the pipeline asks each embed_arrays call for (rows, means, dtype)."""
    from protrans_cli.embed import TransformerEmbedder

    asked = []
    original = TransformerEmbedder.embed_arrays

    def spy(self, seqs, **want):
        asked.append(want)
        return original(self, seqs, **want)

    monkeypatch.setattr(TransformerEmbedder, "embed_arrays", spy)
    return asked


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_per_protein_only_is_pooled_beside_the_model_and_equals_the_full_run(tmp_path, tiny_models, family_name,
                                                                            monkeypatch):
    """A --per-protein run asks the embedder for means (no L x D rows cross to the host) and
    stores what a run that also writes per-residue arrays stores for each protein."""
    from protrans_cli.embed import EmbedOptions, embed

    model = str(tiny_models[family_name])
    full = _read(embed(SMALL, tmp_path / "full.h5", EmbedOptions(model=model, device="cpu")).output, PER_PROTEIN)
    asked = _spy_on_embed_arrays(monkeypatch)
    only = _read(embed(SMALL, tmp_path / "only.h5", EmbedOptions(model=model, device="cpu", per_residue=False,
                                                                 max_tokens=40)).output, PER_PROTEIN)
    assert asked and all(not w["rows"] and w["means"] for w in asked)
    assert sorted(only) == sorted(full)
    for ident, vec in full.items():
        assert only[ident].shape == vec.shape
        np.testing.assert_allclose(only[ident], vec, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family_name", ["bert", "t5"])
def test_one_pass_gives_rows_in_the_storage_dtype_and_the_same_means(tmp_path, tiny_models, family_name,
                                                                     monkeypatch):
    """Both kinds: one forward pass hands back rows already in the storage dtype and means taken
    beside the model. float16 rows are exactly the float32 run's rows rounded by numpy; the
    means are bit for bit those of a --per-protein run over the same batches; a per-residue run
    asks for no means."""
    from protrans_cli.embed import EmbedOptions, embed

    model = str(tiny_models[family_name])
    asked = _spy_on_embed_arrays(monkeypatch)

    def run(name, **kw):
        asked.clear()
        out = embed(SMALL, tmp_path / name, EmbedOptions(model=model, device="cpu", max_tokens=64, **kw)).output
        return out, list(asked)

    f32, asked32 = run("f32.h5", per_protein=True)
    f16, asked16 = run("f16.h5", per_protein=True, storage_dtype="float16")
    only, _ = run("only.h5", per_residue=False, per_protein=True)
    rows_only, asked_rows = run("rows.h5", per_protein=False)
    assert all(w == {"rows": True, "means": True, "dtype": "float32"} for w in asked32)
    assert all(w == {"rows": True, "means": True, "dtype": "float16"} for w in asked16)
    assert all(w == {"rows": True, "means": False, "dtype": "float32"} for w in asked_rows)
    rows32, rows16 = _read(f32), _read(f16)
    assert sorted(rows16) == sorted(rows32)
    for ident, rows in rows32.items():
        assert rows16[ident].dtype == np.float16
        np.testing.assert_array_equal(rows16[ident], rows.astype(np.float16))
    means32, means_only = _read(f32, PER_PROTEIN), _read(only, PER_PROTEIN)
    for ident, mean in means32.items():
        np.testing.assert_array_equal(means_only[ident], mean)
        np.testing.assert_allclose(mean, rows32[ident].mean(0, dtype=np.float64), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(_read(f16, PER_PROTEIN)[ident], mean.astype(np.float16))
    assert _read(rows_only).keys() == rows32.keys()
    for ident, rows in _read(rows_only).items():
        np.testing.assert_array_equal(rows, rows32[ident])


def test_pooled_per_protein_with_several_layers_and_the_flat_and_stacked_layouts(tmp_path, tiny_models):
    from protrans_cli.embed import EmbedOptions, embed

    model = str(tiny_models["t5"])
    full = embed(SMALL, tmp_path / "full.h5", EmbedOptions(model=model, device="cpu", layers=(0, -1)))
    only = embed(SMALL, tmp_path / "only.h5", EmbedOptions(model=model, device="cpu", layers=(0, -1),
                                                           per_residue=False, layout="flat"))
    with EmbeddingsReader(full.output) as r:
        want = {i: a for i, a, _ in r.items(PER_PROTEIN)}
    stacked = embed(SMALL, tmp_path / "stacked.h5", EmbedOptions(model=model, device="cpu", layers=(0, -1),
                                                                 per_residue=False, layout="stacked"))
    with EmbeddingsReader(only.output) as r:
        got = {i: a for i, a, _ in r.items(PER_PROTEIN)}
    with EmbeddingsReader(stacked.output) as r:
        ids, matrix = r.matrix()
    assert sorted(got) == sorted(want) == ids and matrix.shape == (len(ids), 2, matrix.shape[-1])
    for ident, vec in want.items():
        assert vec.shape == got[ident].shape == (2, vec.shape[-1])
        np.testing.assert_allclose(got[ident], vec, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(matrix[ids.index(ident)], vec, rtol=1e-5, atol=1e-6)


def test_pooled_means_ignore_whatever_padding_positions_hold(tiny_models, monkeypatch):
    """Kernels may leave NaN or garbage in the hidden states of padding positions; the pooled
    means read residue positions only, like the per-residue rows do."""
    from protrans_cli.embed import TransformerEmbedder
    from protrans_cli.models import load_model

    embedder = TransformerEmbedder(load_model(str(tiny_models["bert"])), (-1,), "cpu", "float32")
    family = embedder.family_impl
    original = type(family).hidden_states

    def poisoned(self, model, inputs, layers):
        states = original(self, model, inputs, layers)
        pad = ~inputs["attention_mask"].bool()
        return [s.masked_fill(pad[:, :, None], float("nan")) for s in states]

    monkeypatch.setattr(type(family), "hidden_states", poisoned)
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "ACD", "M"]
    rows = embedder.embed_batch(sequences)
    pooled = embedder.embed_batch(sequences, pooled=True)
    for r, p in zip(rows, pooled):
        assert np.isfinite(r).all() and np.isfinite(p).all()
        np.testing.assert_allclose(p, r.mean(axis=1), rtol=1e-5, atol=1e-6)


PACKABLE = [name for name in FAMILY_NAMES if FAMILIES[name].packable]


@pytest.mark.parametrize("family_name", PACKABLE)
def test_packed_batches_equal_the_plain_forward_of_each_protein(run_cli, tmp_path, tiny_models, family_name):
    """--packing: one row per batch, attention kept inside each protein. Every protein's rows (two
    layers) and means equal the plain transformers forward pass over it alone; per-protein-only
    runs (segment sums beside the model) store the same means."""
    family = FAMILIES[family_name]
    out, only = tmp_path / "p.h5", tmp_path / "only.h5"
    common = ["-m", tiny_models[family_name], "--max-tokens", "200", "--device", "cpu", "-j", "1",
              "--packing", "--layer", "-2", "--layer", "-1"]
    result = run_cli("embed", SMALL, "-o", out, *common)
    assert result.exit_code == 0, result.stderr
    result = run_cli("embed", SMALL, "-o", only, "--per-protein", *common)
    assert result.exit_code == 0, result.stderr
    res, prot, prot_only = _read(out), _read(out, PER_PROTEIN), _read(only, PER_PROTEIN)
    for rec in read_fasta(SMALL):
        seq = rec.sequence.replace("-", "").replace(".", "")
        ref = reference_rows(family, tiny_models[family_name], seq, layers=(-2, -1))
        assert res[rec.id].shape == ref.shape
        np.testing.assert_allclose(res[rec.id], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(prot[rec.id], ref.mean(1), atol=1e-5, rtol=0)
        np.testing.assert_allclose(prot_only[rec.id], ref.mean(1), atol=1e-5, rtol=0)
    with EmbeddingsReader(out) as r:
        assert bool(r.attrs["packing"]) is True


def test_packed_esm1b_learned_positions_number_each_protein_as_esm_does(tmp_path):
    """ESM-1b/1v have a learned position table (ESM-2's rotary positions are relative, blind to
    where the numbering starts): in a packed row every protein's positions restart where ESM starts
    them (after the padding index), so its rows equal the plain forward pass over it alone."""
    from protrans_cli.embed import EmbedOptions, build_embedder

    family = FAMILIES["esm"]
    tokenizer = family.build_tokenizer()
    torch.manual_seed(0)
    config = family.build_config("tiny", tokenizer, position_embedding_type="absolute", max_position_embeddings=64)
    family.save_pretrained(family.pretraining_model(config).eval(), tokenizer, tmp_path / "esm1b")
    embedder = build_embedder(EmbedOptions(model=str(tmp_path / "esm1b"), device="cpu", packing=True))
    assert embedder.packed
    sequences = ["MKTAYIAKQRQISFVKSHFSRQ", "MKVLAAGIV", "QLEERLGLIEVQAPILSRV"]
    for sequence, rows in zip(sequences, embedder.embed_batch(sequences)):
        np.testing.assert_allclose(rows, reference_rows(family, tmp_path / "esm1b", sequence), atol=1e-5, rtol=0)


def test_packing_is_on_by_default_only_where_it_was_measured_faster(monkeypatch, tiny_models):
    """Neither --packing nor --no-packing: packed where the H200 measured it faster (a CUDA GPU with
    the Flash varlen kernel, batches of 32000 tokens or more, a family that packs; T5 under
    FlexAttention in bfloat16), padded
    elsewhere. The GPU is faked: the decision reads the device name, its compute capability and
    whether the varlen kernel exists."""
    import torch

    from protrans_cli.embed import EmbedOptions, build_embedder, packing_by_default
    from protrans_cli.models import packing

    bert = build_embedder(EmbedOptions(model=str(tiny_models["bert"]), device="cpu"))
    t5 = build_embedder(EmbedOptions(model=str(tiny_models["t5"]), device="cpu"))
    t5_flex = build_embedder(EmbedOptions(model=str(tiny_models["t5"]), device="cpu", attention="flex"))
    assert not bert.packed and not t5.packed and not t5_flex.packed  # on the CPU: padded, as before
    assert t5_flex.packing_problem() is None  # T5 can pack under flex
    assert not packing_by_default(bert, 32000)
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    monkeypatch.setattr(packing, "varlen_available", lambda device: True)
    bert.device = t5.device = t5_flex.device = "cuda:0"
    assert not packing_by_default(bert, 32000)                 # float32: the varlen kernel takes half precision
    bert.compute_dtype = t5.compute_dtype = t5_flex.compute_dtype = "bfloat16"
    assert packing_by_default(bert, 32000)
    assert packing_by_default(t5_flex, 32000)                  # flex's packed rows: 1.18x its padded ones
    assert not packing_by_default(t5_flex, 16000)
    t5_flex.compute_dtype = "float16"
    assert not packing_by_default(t5_flex, 32000)              # float16 flex: not measured
    t5_flex.compute_dtype = "bfloat16"
    assert not packing_by_default(bert, 16000)                 # 4000 tokens measured slower
    assert not packing_by_default(bert, 32000, compiled=True)  # --compile does not combine yet
    assert not packing_by_default(t5, 32000)                   # relative-position bias: does not pack
    capability["value"] = (7, 5)                               # a T4: no Flash kernel
    assert not packing_by_default(bert, 32000)
    capability["value"] = (8, 0)
    monkeypatch.setattr(packing, "varlen_available", lambda device: False)
    assert not packing_by_default(bert, 32000)


def test_build_embedder_packs_when_the_default_says_so_and_never_against_no_packing(monkeypatch, tiny_models):
    import protrans_cli.embed as embed_mod
    from protrans_cli.embed import EmbedOptions, build_embedder

    monkeypatch.setattr(embed_mod, "packing_by_default", lambda embedder, max_tokens, compiled=False: True)
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "MA"]
    auto = build_embedder(EmbedOptions(model=str(tiny_models["bert"]), device="cpu"))
    off = build_embedder(EmbedOptions(model=str(tiny_models["bert"]), device="cpu", packing=False))
    assert auto.packed and not off.packed
    for a, b in zip(auto.embed_batch(seqs), off.embed_batch(seqs)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family_name", [n for n in FAMILY_NAMES if not FAMILIES[n].packable])
def test_packing_is_refused_for_families_it_would_change(run_cli, tmp_path, tiny_models, family_name):
    out = tmp_path / "p.h5"
    result = run_cli("embed", SMALL, "-m", tiny_models[family_name], "-o", out, "--device", "cpu", "--packing")
    assert result.exit_code == 2
    assert "--packing" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_packing_with_cls_pooling_is_refused_before_any_output(run_cli, tmp_path, tiny_models):
    """--pooling cls finds each protein's cls token in a padded batch: asked for together with
    --packing (a family that packs otherwise), one usage error naming both, nothing written; the
    default (--packing unset) pools by cls without packing."""
    model = tiny_models[PACKABLE[0]]
    out = tmp_path / "p.h5"
    result = run_cli("embed", SMALL, "-m", model, "-o", out, "--device", "cpu", "--packing", "--pooling", "cls")
    assert result.exit_code == 2 and result.stderr == ("protrans: error: --pooling cls reads each protein's cls token "
                                                       "from padded batches: no --packing\n"), result.stderr
    assert not out.exists() and not (tmp_path / "p.h5.partial").exists()
    result = run_cli("embed", SMALL, "-m", model, "-o", out, "--device", "cpu", "--pooling", "cls")
    assert result.exit_code == 0, result.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("family_name", PACKABLE)
def test_packed_embedding_on_the_gpu_matches_the_fp32_reference(run_cli, tmp_path, tiny_models, family_name):
    """On a CUDA GPU a packed batch runs the fused varlen kernel; its rows match the fp32 plain
    forward pass to bf16 accuracy."""
    family = FAMILIES[family_name]
    out = tmp_path / "e.h5"
    result = run_cli("embed", SMALL, "-m", tiny_models[family_name], "-o", out, "--packing")
    assert result.exit_code == 0, result.stderr
    got = _read(out)
    for rec in read_fasta(SMALL):
        seq = rec.sequence.replace("-", "").replace(".", "")
        ref = reference_rows(family, tiny_models[family_name], seq)[0]
        assert got[rec.id].shape == ref.shape
        assert np.linalg.norm(got[rec.id] - ref) / np.linalg.norm(ref) < 2e-2, rec.id


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_extra_padding_to_a_multiple_changes_no_row(tiny_models, family_name):
    """On a GPU batch lengths are rounded up to a multiple of 8; here (CPU, float32) a multiple
    of 64 must leave every residue row as it is."""
    from protrans_cli.embed import TransformerEmbedder
    from protrans_cli.models import load_model

    embedder = TransformerEmbedder(load_model(str(tiny_models[family_name]), device="cpu", dtype="float32"),
                                   (-1, 0), "cpu", "float32")
    assert embedder.pad_multiple == 1
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "A", "GSSGUZOBX"]
    plain = embedder.embed_batch(seqs)
    embedder.pad_multiple = 64
    padded = embedder.embed_batch(seqs)
    for a, b in zip(plain, padded):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_heads_accept_the_same_model_named_another_way(tmp_path, monkeypatch):
    """A head trained on embeddings whose file named the model `./bert` (as earlier files did) or
    by its short name predicts on embeddings that name it by absolute path or hub id; another
    model is still refused."""
    from protrans_cli.errors import ModelError
    from protrans_cli.heads.predict import check_compatible
    from protrans_cli.heads.tasks import get_task
    from protrans_cli.io.h5 import EmbeddingsWriter

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    for recorded, written in [("./bert", str(tmp_path / "bert")), ("prot_bert", "Rostlab/prot_bert"),
                              ("./bert", "prot_bert")]:
        path = tmp_path / "e.h5"
        with EmbeddingsWriter(path, kinds=(PER_PROTEIN,), attrs={"model": written}) as w:
            w.write("a", "a", "MKV", per_protein=np.zeros(3, np.float32))
        config = {"kind": PER_PROTEIN, "task": get_task("loc").to_json(), "input_dim": 3,
                  "embedding": {"model": recorded}}
        with EmbeddingsReader(path) as reader:
            if written == "prot_bert" and recorded == "./bert":
                with pytest.raises(ModelError, match="the head was trained on './bert'"):
                    check_compatible(config, reader)
            else:
                check_compatible(config, reader)
        path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize("family_name, packed", [("bert", False), ("t5", False), ("bert", True)])
def test_compiled_embed_equals_the_plain_forward(run_cli, tmp_path, tiny_models, family_name, packed):
    """`--compile` (with `--packing` too): the same rows as plain transformers, through batches of
    several shapes (one graph with dynamic shapes; the CPU compiles too, slowly: a slow test)."""
    from torch._dynamo.utils import counters

    family = FAMILIES[family_name]
    out = tmp_path / "c.h5"
    counters.clear()
    result = run_cli("embed", SMALL, "-m", tiny_models[family_name], "-o", out, "--max-tokens", "64",
                     "--device", "cpu", "-j", "1", "--compile", *(["--packing"] if packed else []))
    assert result.exit_code == 0, result.stderr
    res = _read(out)
    for rec in read_fasta(SMALL):
        seq = rec.sequence.replace("-", "").replace(".", "")
        np.testing.assert_allclose(res[rec.id], reference_rows(family, tiny_models[family_name], seq)[0],
                                   atol=1e-5, rtol=0)
    assert counters["stats"]["unique_graphs"] >= 1  # it did go through torch.compile
    with EmbeddingsReader(out) as r:
        assert r.attrs["compiled"] and bool(r.attrs["packing"]) == packed  # bool(np.True_)


def test_compile_compiles_each_block_and_the_cpu_twin_runs_plain_blocks(monkeypatch, tiny_models):
    """--compile compiles every transformer block in place (one compilation serves them all); the
    CPU twin (--cpu-fallback) is a deep copy, which shares the original blocks' compiled
    functions (functions copy by reference) and would run the original's blocks: it drops them
    and gives the plain rows. torch.compile is replaced by a recorder (the real one: the slow
    test above); the twin is built as `on_cpu` builds it, without the moves between devices."""
    import torch

    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.models import load_model
    from protrans_cli.training.recompute import transformer_blocks

    calls = []

    def fake_compile(fn, **kwargs):
        block = fn.__self__

        def run(*args, **kw):
            calls.append(block)
            return fn(*args, **kw)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    loaded = load_model(str(tiny_models["bert"]), device="cpu", dtype="float32")
    embedder = TransformerEmbedder(loaded, (-1,), "cpu", "float32", compile=True)
    blocks = transformer_blocks(embedder.model)
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MSTNPKPQRKTKRNTNRRPQDVKFPGG"]
    rows = embedder.embed_batch(seqs)
    assert embedder.compiled and len(blocks) == 2 and calls == blocks  # each block, through its compiled forward
    monkeypatch.setattr(embedder, "device", "cuda:0")
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    twin = TransformerEmbedder.on_cpu(embedder)
    calls.clear()
    for a, b in zip(twin.embed_batch(seqs), rows):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert calls == [] and not twin.compiled  # neither the original's blocks nor compiled ones
    assert all("forward" not in block.__dict__ for block in transformer_blocks(twin.model))


def test_a_tokenizer_whose_ids_the_model_does_not_have_is_refused():
    """Another model's tokenizer that still knows the residues: its ids must exist in the model's
    embedding table (the XLNet tokenizer's <cls> is id 29; a 29-entry vocabulary has no row for it)."""
    from protrans_cli.errors import ModelError
    from protrans_cli.models import _check_tokenizer

    xlnet = FAMILIES["xlnet"]
    tokenizer = xlnet.build_tokenizer()
    _check_tokenizer("run", xlnet, tokenizer, True, vocab_size=len(tokenizer))  # its own model: fine
    with pytest.raises(ModelError, match="token id 29, but the model's vocabulary has 29 entries"):
        _check_tokenizer("run", xlnet, tokenizer, True, vocab_size=29)


def test_embed_sequences_in_memory_equals_the_plain_forward(tiny_models, monkeypatch, tmp_path):
    """The notebook API: a dict in, a dict out (a list in, a list out, in order), the arrays of a
    plain transformers forward pass; a protein that cannot be embedded is left out with a warning."""
    from dataclasses import replace

    from protrans_cli.embed import EmbedOptions, embed_sequences
    from protrans_cli.errors import UsageError

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the temporary file goes and is removed
    family = FAMILIES["bert"]
    seqs = {"sp|P1|a/b": "MKTAYIAKQR", "p2": "acdefU", "p3": "MKTAYIAKQR"}
    opts = EmbedOptions(model=str(tiny_models["bert"]), device="cpu", threads=1)
    rows = embed_sequences(seqs, opts, kind="per_residue")
    assert list(rows) == list(seqs)
    for ident, seq in seqs.items():
        np.testing.assert_allclose(rows[ident], reference_rows(family, tiny_models["bert"], seq)[0], atol=1e-5, rtol=0)
    means = embed_sequences(list(seqs.values()), opts, kind="per_protein")
    assert [m.shape for m in means] == [(rows["p2"].shape[-1],)] * 3
    np.testing.assert_allclose(means[1], rows["p2"].mean(0), atol=1e-6)
    long = embed_sequences(["MKT", "M" * 50], replace(opts, max_length=20, long_policy="skip"), kind="per_protein")
    assert long[0] is not None and long[1] is None
    assert embed_sequences([], opts, kind="per_residue") == []
    with pytest.raises(UsageError, match="without whitespace"):
        embed_sequences({"a b": "MKT"}, opts, kind="per_residue")
    with pytest.raises(UsageError, match="kind must be"):
        embed_sequences(["MKT"], opts, kind="both")
    assert not list(tmp_path.glob("protrans-embed-*"))


def test_damaged_tokenizer_files_and_weights_of_other_shapes_are_one_line(run_cli, tmp_path, tiny_models):
    # tokenizer.json `{}` was a KeyError traceback; weights of other shapes than config.json said
    # "For details look at the above report!" with no report shown
    import json
    import shutil

    empty = tmp_path / "empty_tokenizer"
    shutil.copytree(tiny_models["bert"], empty)
    (empty / "tokenizer.json").write_text("{}")
    reshaped = tmp_path / "reshaped"
    shutil.copytree(tiny_models["bert"], reshaped)
    config = json.loads((reshaped / "config.json").read_text())
    (reshaped / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2}))
    for model, problem in ((empty, "cannot load the tokenizer: its tokenizer files are damaged or of a kind "
                                   "transformers does not read (KeyError"),
                           (reshaped, "cannot load the weights: some of its tensors have other shapes than its "
                                      "config.json gives")):
        result = run_cli("embed", SMALL, "-m", model, "-o", tmp_path / "x.h5", "--device", "cpu")
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert problem in result.stderr, result.stderr


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "albert"])  # (ALBERT's layers share weights)
def test_a_config_deeper_than_its_weights_is_refused_before_the_model_is_built(run_cli, tmp_path, tiny_models,
                                                                               monkeypatch, name):
    # num_hidden_layers: 2000 in a tiny model's config.json: from_pretrained built and initialised
    # every layer before the missing weights were noticed (a minute; 20000 ran for more than five)
    import json
    import shutil

    deep = tmp_path / "deep"
    shutil.copytree(tiny_models[name], deep)
    config = json.loads((deep / "config.json").read_text())
    key = next(k for k in ("num_hidden_layers", "num_layers", "n_layer") if k in config)
    (deep / "config.json").write_text(json.dumps({**config, key: 20000}))

    def built(*args, **kwargs):
        raise AssertionError("from_pretrained was called: the model was built before the check")

    monkeypatch.setattr(FAMILIES[name].encoder_class, "from_pretrained", classmethod(built))
    result = run_cli("embed", SMALL, "-m", deep, "-o", tmp_path / "x.h5", "--device", "cpu")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "its config.json gives 20000 layers (num_hidden_layers), more than its weights hold: none for " \
        in result.stderr, result.stderr


def test_a_deep_config_is_refused_early_when_a_tied_weight_is_saved_under_its_other_name(run_cli, tmp_path,
                                                                                        tiny_models, monkeypatch):
    # T5's embedding is one tensor named shared.weight and encoder.embed_tokens.weight; a
    # checkpoint may hold it under either (protrans and transformers write the first). Saved under
    # the second, it is not missing, and a config deeper than the weights is still refused early.
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    family = FAMILIES["t5"]
    deep = tmp_path / "deep"
    shutil.copytree(tiny_models["t5"], deep)
    weights = load_file(str(deep / "model.safetensors"))
    weights["encoder.embed_tokens.weight"] = weights.pop("shared.weight")
    save_file(weights, str(deep / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((deep / "config.json").read_text())
    (deep / "config.json").write_text(json.dumps({**config, "num_layers": 20000}))

    def built(*args, **kwargs):
        raise AssertionError("from_pretrained was called: the model was built before the check")

    monkeypatch.setattr(family.encoder_class, "from_pretrained", classmethod(built))
    result = run_cli("embed", SMALL, "-m", deep, "-o", tmp_path / "x.h5", "--device", "cpu")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "its config.json gives 20000 layers (num_hidden_layers), more than its weights hold: none for encoder." \
        "block.2." in result.stderr, result.stderr


def test_weights_missing_every_layer_are_named_as_missing_not_as_a_config_too_deep(run_cli, tmp_path, tiny_models):
    # A checkpoint holding the embeddings and none of its layers is not a config edited deeper than
    # its weights (layer 0 is absent too): the load names the parameters missing, not a depth.
    import shutil

    from safetensors.torch import load_file, save_file

    cut = tmp_path / "cut"
    shutil.copytree(tiny_models["bert"], cut)
    weights = load_file(str(cut / "model.safetensors"))
    kept = {k: v for k, v in weights.items() if ".encoder.layer." not in f".{k}"}
    assert len(kept) < len(weights)
    save_file(kept, str(cut / "model.safetensors"), metadata={"format": "pt"})
    result = run_cli("embed", SMALL, "-m", cut, "-o", tmp_path / "x.h5", "--device", "cpu")
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
    assert "more than its weights hold" not in result.stderr and "encoder.layer.0." in result.stderr, result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_offline_hub_model_with_only_its_config_cached_is_named_as_such(tmp_path, tiny_models):
    # transformers made an empty tokenizer from the cached config, and the message said the
    # published model "is not a protein tokenizer this tool can use"
    import shutil

    snapshot = tmp_path / "hf" / "hub" / "models--Rostlab--prot_bert_bfd" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("b" * 40)
    shutil.copy(tiny_models["bert"] / "config.json", snapshot / "config.json")
    import subprocess
    import sys

    # (a process of its own: huggingface_hub reads the cache location when it is imported)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "protrans_cli", "embed", str(SMALL), "-m", "prot_bert_bfd", "-o",
                             str(tmp_path / "x.h5"), "--device", "cpu"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    assert ("its tokenizer files of the hub model Rostlab/prot_bert_bfd are not in the local Hugging Face cache"
            in result.stderr), result.stderr


def test_a_cached_hub_model_records_its_commit_and_a_resume_after_main_moved_is_refused(tmp_path, tiny_models):
    """transformers 5 keeps no `_commit_hash` on a config: every file recorded `commit` empty, and
    `--resume` after the hub's `main` moved on mixed rows of two models in one file."""
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "hf" / "hub" / "models--someone--tiny"
    for commit in ("a" * 40, "b" * 40):
        shutil.copytree(tiny_models["bert"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    out = tmp_path / "x.h5"

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "protrans_cli", "embed", str(SMALL), "-m", "someone/tiny", "-o",
                               str(out), "--device", "cpu", *extra], capture_output=True, text=True, env=env,
                              timeout=120)

    assert run().returncode == 0
    with EmbeddingsReader(out) as r:
        assert r.attrs["commit"] == "a" * 40
    (repo / "refs" / "main").write_text("b" * 40)
    result = run("--resume")
    assert result.returncode == 2 and f"this run uses commit='{'b' * 40}'" in result.stderr, result.stderr


def _tiny_embedder(family_name: str, path, *, positions: int):
    """The embedder of a tiny random model of `family_name` with a table of `positions`, saved at `path`."""
    from protrans_cli.embed import EmbedOptions, build_embedder

    family = FAMILIES[family_name]
    tokenizer = family.build_tokenizer()
    torch.manual_seed(0)
    model = family.pretraining_model(family.build_config("tiny", tokenizer, max_position_embeddings=positions)).eval()
    family.save_pretrained(model, tokenizer, path)
    return build_embedder(EmbedOptions(model=str(path), device="cpu"))


def test_rounding_a_batch_up_stays_inside_a_learned_position_table(tmp_path):
    # a BERT whose table (100 positions) is no multiple of 8: on a GPU (pad_multiple 8) a batch of
    # 95-98 residues was rounded to 104 tokens, past the table, and the run died
    embedder = _tiny_embedder("bert", tmp_path / "bert100", positions=100)
    embedder.pad_multiple = 8  # what a CUDA device sets
    assert embedder.max_residues == 98
    # 96 residues: 96 rounds to 96, inside, but its 98 tokens (with [CLS] and [SEP]) round to 104
    for length in (98, 96):
        sequence = ("MKTAYIAKQRQISFVKSHFSRQ" * 5)[:length]
        rows = embedder.embed_batch([sequence, sequence[:40]])[0]  # (n_layers, L, D)
        np.testing.assert_allclose(rows, reference_rows(FAMILIES["bert"], tmp_path / "bert100", sequence), atol=1e-5,
                                   rtol=0)


def test_half_precision_casts_parameters_only_as_from_pretrained_does(tiny_models):
    # `.to(dtype)` also cast ESM's rotary inv_freq (float32 in transformers) to bfloat16, and the
    # float32 retry and the CPU twin cast the rounded values back; under float16 it cast T5's
    # `wo`, which transformers keeps in float32
    from protrans_cli.embed import EmbedOptions, build_embedder

    esm = build_embedder(EmbedOptions(model=str(tiny_models["esm"]), device="cpu"))
    frequencies = {n: b.clone() for n, b in esm.model.named_buffers() if n.endswith("inv_freq")}
    assert frequencies
    from protrans_cli.embedders import cast_weights

    cast_weights(esm.model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in esm.model.parameters())
    with esm.in_float32():
        for name, buffer in esm.model.named_buffers():
            if name in frequencies:
                assert buffer.dtype == torch.float32 and torch.equal(buffer, frequencies[name])
    t5 = build_embedder(EmbedOptions(model=str(tiny_models["t5"]), device="cpu"))
    cast_weights(t5.model, torch.float16)
    kept = {n: p.dtype for n, p in t5.model.named_parameters() if ".wo." in n}
    assert kept and set(kept.values()) == {torch.float32}
    assert {p.dtype for n, p in t5.model.named_parameters() if ".wo." not in n} == {torch.float16}


def test_resume_with_other_layers_names_them_as_the_user_gave_them(run_cli, tmp_path, tiny_models):
    # "this run uses layers=[-3]" for `--layer 0`: the stored form only
    out = tmp_path / "l.h5"
    assert run_cli("embed", SMALL, "-m", tiny_models["bert"], "-o", out, "-j", "1").exit_code == 0
    r = run_cli("embed", SMALL, "-m", tiny_models["bert"], "-o", out, "--resume", "--layer", "0", "-j", "1")
    assert r.exit_code == 2 and "this run uses layers=[-3] (--layer 0 = -3)" in r.stderr, r.stderr


def test_a_stopped_training_run_given_as_the_model_names_its_latest_checkpoint(tmp_path, run_cli):
    """`embed -m runs/bert` on a run stopped before its end (only checkpoints/ inside) said "not
    a model directory", and nothing said that each checkpoint is one."""
    from protrans_cli.training.config import TrainConfig
    from protrans_cli.training.loop import train

    run = tmp_path / "run"
    train(TrainConfig(corpus=[str(DATA / "train" / "learnable.txt")], output_dir=str(run), num_steps=6, stop_after=4,
                      save_every=2, max_length=64, global_batch_size=4, micro_batch_size=4, threads=1))
    fasta = tmp_path / "p.fa"
    fasta.write_text(">p1\nMKTAYIAK\n")
    r = run_cli("embed", fasta, "-m", run, "-o", tmp_path / "e.h5")
    latest = run / "checkpoints" / "step_00000004"
    assert r.exit_code == 1, r.stderr
    assert r.stderr.strip() == (f"protrans: error: {run}: a training run without its final model (it stopped "
                                f"before its last step): its latest checkpoint, {latest}, is a model directory "
                                f"(give it to -m), or `protrans train --resume -o {run}` finishes the run")
    # the run's checkpoints/ folder itself (what a user lists to find them) names the latest too
    r = run_cli("embed", fasta, "-m", run / "checkpoints", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1, r.stderr
    assert r.stderr.strip() == (f"protrans: error: {run / 'checkpoints'}: a training run's checkpoints folder, not "
                                f"a model directory: each step_N inside is one; give -m {latest} for the latest")
    assert not list(tmp_path.glob("e.h5*"))
    (run / "other").mkdir()  # another folder of the run is not its checkpoints
    r = run_cli("embed", fasta, "-m", run / "other", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and "checkpoints folder" not in r.stderr and "has no config.json" in r.stderr, r.stderr
    r = run_cli("embed", fasta, "-m", latest, "-o", tmp_path / "e.h5")
    assert r.exit_code == 0, r.stderr


def test_proteins_longer_than_the_training_crops_are_warned_about(tiny_models, tmp_path, run_cli):
    """A model of `protrans train --max-length 128` keeps a table of 2048 positions, and embed took
    proteins of 1,148 residues without a word: their rows beyond 126 come from positions training
    never reached. embed now says so, once, with the remedy; ESM-2's rotary positions the same
    for its crops of 1024 tokens."""
    import json
    import shutil
    import types

    from protrans_cli.embedders import _trained_residues

    model = tmp_path / "bert"
    shutil.copytree(tiny_models["bert"], model)
    (model / "train_config.json").write_text(json.dumps({"max_length": 32, "phases": [], "init_from": None}))
    fasta = tmp_path / "x.fa"
    fasta.write_text(">short\n" + "MKTAY" * 4 + "\n>long\n" + "MKTAYIAKQR" * 5 + "\n")
    r = run_cli("embed", fasta, "-m", model, "-o", tmp_path / "a.h5")
    assert r.exit_code == 0, r.stderr
    assert (f"its longest protein has 50 residues, more than the 30 that {model} saw whole in training (crops of 32 "
            "tokens, train_config.json); rows beyond them come from positions it never learned. --max-length 30 "
            "--long-policy chunk --chunk-overlap 7 keeps every window within them") in r.stderr
    assert r.stderr.count("saw whole in training") == 1, r.stderr  # (once: the call was made twice)
    r = run_cli("embed", fasta, "-m", model, "-o", tmp_path / "b.h5", "--max-length", "30", "--long-policy", "chunk",
                "--chunk-overlap", "7")
    assert r.exit_code == 0 and "saw whole in training" not in r.stderr
    # a --max-length between the two: what is embedded reaches it, not the longest protein
    r = run_cli("embed", fasta, "-m", model, "-o", tmp_path / "e.h5", "--max-length", "40", "--long-policy", "chunk",
                "--chunk-overlap", "8")
    assert r.exit_code == 0, r.stderr
    assert "its longest protein has 50 residues (40 at most under --max-length 40), more than the 30" in r.stderr
    assert r.stderr.count("saw whole in training") == 1, r.stderr
    # phases: the longest; a run that began from another model: not known
    (model / "train_config.json").write_text(json.dumps({"max_length": 32, "phases": [
        {"max_length": 16, "num_steps": 1}, {"max_length": 64, "num_steps": 1}]}))
    assert "saw whole in training" not in run_cli("embed", fasta, "-m", model, "-o", tmp_path / "c.h5").stderr
    (model / "train_config.json").write_text(json.dumps({"max_length": 32, "phases": [], "init_from": "prot_bert"}))
    assert "saw whole in training" not in run_cli("embed", fasta, "-m", model, "-o", tmp_path / "d.h5").stderr
    # ESM-2's published config: 1026 positions, padding index 1 -> 1024 tokens, 1022 residues
    config = types.SimpleNamespace(position_embedding_type="rotary", max_position_embeddings=1026, pad_token_id=1)
    loaded = types.SimpleNamespace(path_or_hub_id="facebook/esm2_t33_650M_UR50D",
                                   model=types.SimpleNamespace(config=config))
    assert _trained_residues(loaded, 2) == (1022, "crops of 1024 tokens")


def test_a_run_begun_from_a_run_of_protrans_warns_with_the_crops_of_its_chain(tiny_models, tmp_path, run_cli):
    """`train --init-from` a run of 64-token crops took proteins of 100 residues without a word
    (a run that began from another model was taken as "not known"): the chain of origins is
    followed, as contacts does, to the run from scratch it ends at, and the longest crops of the
    chain are what the model saw whole. A chain that reaches a published model stays unknown."""
    import json
    import shutil

    from protrans_cli.embedders import _trained_residues

    def run(name, train_config):
        model = tmp_path / name
        shutil.copytree(tiny_models["bert"], model)
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "protrans_version": "0.1.0"}))
        (model / "train_config.json").write_text(json.dumps(train_config))
        return model

    scratch = run("scratch", {"max_length": 64, "phases": [], "init_from": None})
    further = run("further", {"max_length": 32, "phases": [], "init_from": "scratch",
                              "resolved": {"init_from": str(scratch)}})
    fasta = tmp_path / "x.fa"
    fasta.write_text(">long\n" + "MKTAYIAKQR" * 10 + "\n")
    r = run_cli("embed", fasta, "-m", further, "-o", tmp_path / "a.h5")
    assert r.exit_code == 0, r.stderr
    assert (f"its longest protein has 100 residues, more than the 62 that {further} saw whole in training (crops of "
            f"64 tokens, {scratch / 'train_config.json'}, a run it was trained further from)") in r.stderr
    # two steps back; the continuation's own crops where they are the longest
    again = run("again", {"max_length": 80, "phases": [], "init_from": str(further)})
    loaded = types_namespace(path_or_hub_id=str(again))
    assert _trained_residues(loaded, 2) == (78, "crops of 80 tokens, train_config.json")
    # a chain that reaches a published model (or a folder no longer there): not known, as before
    (scratch / "train_config.json").write_text(json.dumps({"max_length": 64, "init_from": "prot_bert"}))
    assert _trained_residues(types_namespace(path_or_hub_id=str(further)), 2) is None
    shutil.rmtree(scratch)
    assert _trained_residues(types_namespace(path_or_hub_id=str(further)), 2) is None
    assert "saw whole in training" not in run_cli("embed", fasta, "-m", further, "-o", tmp_path / "b.h5").stderr


def types_namespace(**fields):
    import types

    return types.SimpleNamespace(model=types.SimpleNamespace(config=None), **fields)


def test_the_training_crops_warning_names_max_length_only_when_given(capsys):
    """Without --max-length the limit a protein is cut at is the model's own (a BERT's table): the
    warning said "(2,046 at most under --max-length 2046)" to a user who gave no --max-length."""
    import types

    from protrans_cli.embed import _warn_beyond_training

    embedder = types.SimpleNamespace(trained_residues=(30, "crops of 32 tokens, train_config.json"), name="m")
    scan = types.SimpleNamespace(longest=50)
    _warn_beyond_training(embedder, scan, 40, "x.fa", True, given=False)
    err = capsys.readouterr().err
    assert "its longest protein has 50 residues (40 at most: the model's own limit), more than the 30" in err, err
    assert "--max-length 40" not in err
    _warn_beyond_training(embedder, scan, 40, "x.fa", True, given=True)
    assert "(40 at most under --max-length 40)" in capsys.readouterr().err


@pytest.mark.parametrize("family_name", ["bert", "t5"])
def test_loading_a_model_leaves_the_callers_random_numbers_alone(tiny_models, family_name):
    # A notebook seeds torch, loads a model, then draws: it must draw what it would have drawn
    # without the load (BERT's encoder initialised the pooler an MLM checkpoint lacks from the
    # global generator).
    from protrans_cli.models import load_model

    torch.manual_seed(1)
    expected = torch.rand(4)
    torch.manual_seed(1)
    load_model(tiny_models[family_name])
    assert torch.equal(torch.rand(4), expected)


def test_a_roberta_table_counts_its_positions_after_the_padding_index(tmp_path):
    # RoBERTa/ESM-1b tables start counting at padding_idx + 1: a 40-position table holds 38
    # tokens, 36 residues. Counted from the padding index, a 37-residue protein was let through
    # and ran past the table (an index error on the CPU, a device assert on a GPU).
    embedder = _tiny_embedder("roberta", tmp_path / "roberta40", positions=40)
    assert embedder.max_residues == 36
    sequence = ("MKTAYIAKQRQISFVKSHFSRQ" * 2)[:36]
    rows = embedder.embed_batch([sequence])[0]
    np.testing.assert_allclose(rows, reference_rows(FAMILIES["roberta"], tmp_path / "roberta40", sequence), atol=1e-5, rtol=0)


def test_tokenizer_code_named_by_auto_map_never_runs_even_when_stdin_says_yes(run_cli, tmp_path):
    """A tokenizer_config.json naming its own code (auto_map) in a model transformers maps no
    tokenizer to (ProtTXL's config): AutoTokenizer, not told trust_remote_code=False, asked
    "Do you wish to run the custom code? [y/N]" on stdin, and a "y" there ran the directory's
    Python. Now it is refused, whatever stdin holds, and the code does not run."""
    import json

    family = FAMILIES["transfo_xl"]
    tokenizer = family.build_tokenizer()
    config = family.build_config("tiny", tokenizer)
    model_dir = tmp_path / "hostile"
    family.save_pretrained(family.pretraining_model(config).eval(), tokenizer, model_dir)
    marker = tmp_path / "ran"
    settings = json.loads((model_dir / "tokenizer_config.json").read_text())
    settings.update(tokenizer_class="HostileTokenizer",
                    auto_map={"AutoTokenizer": ["hostile_mod.HostileTokenizer", "hostile_mod.HostileTokenizer"]})
    (model_dir / "tokenizer_config.json").write_text(json.dumps(settings))
    (model_dir / "hostile_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class HostileTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    result = run_cli("embed", SMALL, "-m", model_dir, "--device", "cpu", "-o", tmp_path / "x.h5", input="y\ny\n")
    assert not marker.exists(), "the model directory's tokenizer code ran"
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    assert "cannot load the tokenizer" in result.stderr
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("member", ["a link to /dev/zero", "a FIFO"])
def test_a_model_directory_holding_a_device_or_fifo_is_refused_before_anything_reads_it(tmp_path, member):
    """A downloaded model directory whose tokenizer_config.json (or train_config.json) was a link
    to /dev/zero was read until the kernel killed the run for its memory; a FIFO hung for ever."""
    from protrans_cli.errors import ModelError
    from protrans_cli.models import resolve_model

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "esm"}')
    (model_dir / "sub").mkdir()  # (folders and regular files are what a model directory holds)
    if member == "a FIFO":
        os.mkfifo(model_dir / "tokenizer_config.json")
    else:
        (model_dir / "tokenizer_config.json").symlink_to("/dev/zero")
    with pytest.raises(ModelError, match="tokenizer_config.json is not a regular file"):
        resolve_model(str(model_dir))
    (model_dir / "tokenizer_config.json").unlink()
    (model_dir / "tokenizer_config.json").symlink_to(model_dir / "config.json")  # a link to a file is one
    assert resolve_model(str(model_dir)) == (str(model_dir), None, True)


def reference_cls(family, model_dir, sequence: str, layers=(-1,)) -> np.ndarray:
    """Plain transformers: the hidden states at the tokenizer's cls token of one protein, (n_layers, D)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    encoder = family.encoder_class.from_pretrained(str(model_dir), dtype=torch.float32, use_kernels=False).eval()
    letters = sequence.upper()
    if family.rare_to == "X":
        letters = letters.translate(str.maketrans("UZOB", "XXXX"))
    ids = tokenizer(" ".join(letters) if family.spaced else letters, return_tensors="pt")["input_ids"]
    where = (ids[0] == tokenizer.cls_token_id).nonzero().flatten().tolist()
    assert len(where) == 1, ids
    with torch.no_grad():
        out = encoder(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    states = [out.hidden_states[i] if i != -1 else out.last_hidden_state for i in layers]
    return torch.stack([s[0, where[0]] for s in states]).numpy()


CLS_FAMILIES = [name for name in FAMILY_NAMES if name not in ("t5", "transfo_xl")]


@pytest.mark.parametrize("family_name", CLS_FAMILIES)
def test_pooling_cls_is_the_cls_tokens_hidden_state_in_any_batching(run_cli, tmp_path, tiny_models, family_name):
    """embed --pooling cls (esm-extract's --include bos): each per-protein vector is the hidden
    state at the tokenizer's cls token of a plain forward pass of that protein alone ([CLS] first
    for BERT-likes, <cls> for ESM, XLNet's <cls> last in its left-padded rows), whatever the batch."""
    family = FAMILIES[family_name]
    records = list(read_fasta(SMALL))
    for budget in ("64", "10000"):
        out = tmp_path / f"cls{budget}.h5"
        r = run_cli("embed", SMALL, "-m", tiny_models[family_name], "--pooling", "cls", "--layer", "-1", "--layer",
                    "1", "-o", out, "--max-tokens", budget, "--device", "cpu", "-j", "1")
        assert r.exit_code == 0, r.stderr
        prot = _read(out, PER_PROTEIN)
        for rec in records:
            seq = rec.sequence.replace("-", "").replace(".", "")
            ref = reference_cls(family, tiny_models[family_name], seq, layers=(-1, 1))
            np.testing.assert_allclose(prot[rec.id], ref, atol=1e-5, rtol=0, err_msg=f"{budget} {rec.id}")
        with EmbeddingsReader(out) as reader:
            assert reader.attrs["pooling"].startswith("cls: the hidden state of the")
            # the rows are the same as with mean pooling: only the per-protein vector changes
            rows = {i: a for i, a, _ in reader.items(PER_RESIDUE)}
    mean_out = tmp_path / "mean.h5"
    assert run_cli("embed", SMALL, "-m", tiny_models[family_name], "--layer", "-1", "--layer", "1", "-o", mean_out,
                   "--device", "cpu", "-j", "1").exit_code == 0
    for ident, values in _read(mean_out).items():
        np.testing.assert_allclose(rows[ident], values, atol=1e-6, rtol=0)
    # a file of one pooling is not resumed, nor merged, with the other
    r = run_cli("embed", SMALL, "-m", tiny_models[family_name], "--layer", "-1", "--layer", "1", "-o", mean_out,
                "--device", "cpu", "--pooling", "cls", "--resume")
    assert r.exit_code == 2 and "pooling" in r.stderr


def test_an_embedder_given_must_pool_as_the_options_say(tmp_path, tiny_models):
    """An embedder built for --pooling cls, given to embed with options of mean pooling (or the
    reverse), wrote its vectors under the other pooling's name: refused before any output, and
    per-residue arrays alone (no pooling) are written by either."""
    from protrans_cli.embed import EmbedOptions, build_embedder, embed
    from protrans_cli.errors import UsageError

    model = str(tiny_models["bert"])
    cls = build_embedder(EmbedOptions(model=model, device="cpu", pooling="cls"))
    mean = build_embedder(EmbedOptions(model=model, device="cpu"))
    for options, embedder, pools in ((EmbedOptions(model=model, device="cpu"), cls, "cls"),
                                     (EmbedOptions(model=model, device="cpu", pooling="cls"), mean, "mean")):
        with pytest.raises(UsageError, match=f"options.pooling is '{options.pooling}' but the embedder given pools by "
                                             f"'{pools}': build it with these options"):
            embed(SMALL, tmp_path / "x.h5", options, embedder=embedder)
        assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()
    embed(SMALL, tmp_path / "r.h5", EmbedOptions(model=model, device="cpu", per_protein=False), embedder=cls)
    assert len(_read(tmp_path / "r.h5")) == len(list(read_fasta(SMALL)))


def test_an_embedder_built_for_positive_layer_indices_is_taken_with_the_same_options(tmp_path, tiny_models):
    """build_embedder(options) then embed(..., options, embedder=it) with `--layer 0` (positive
    indices, which the embedder keeps as negative ones): the same layers, accepted, and the
    embedding layer's and the last layer's rows written."""
    from protrans_cli.embed import EmbedOptions, build_embedder, embed

    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    options = EmbedOptions(model=str(tiny_models["bert"]), device="cpu", layers=(0, -1), per_protein=False)
    embedder = build_embedder(options)
    embed(fasta, tmp_path / "a.h5", options, embedder=embedder)
    np.testing.assert_allclose(_read(tmp_path / "a.h5")["a"],
                               reference_rows(FAMILIES["bert"], tiny_models["bert"], "MKTAYIAKQR", layers=(0, -1)),
                               atol=1e-5, rtol=0)


def test_pooling_cls_of_esm_is_warned_about_once(run_cli, tmp_path, tiny_models):
    """ESM's <cls> was never trained as a summary (masked-LM alone): --pooling cls wrote its hidden
    state without a word. One line, once; a BERT's [CLS] (sentence-level objectives train it in some
    checkpoints) and a file without per-protein vectors say nothing."""
    r = run_cli("embed", SMALL, "-m", tiny_models["esm"], "--pooling", "cls", "-o", tmp_path / "e.h5",
                "--device", "cpu", "-j", "1")
    assert r.exit_code == 0, r.stderr
    line = (f"protrans: warning: --pooling cls: {tiny_models['esm']}: ESM is pretrained by masked-LM alone, so its "
            "<cls> (esm-extract's bos) was never trained as a summary of the protein; --pooling mean (the default) "
            "averages the residue rows instead\n")
    assert line in r.stderr and r.stderr.count("--pooling cls") == 1, r.stderr
    for model, extra in ((tiny_models["esm"], ["--per-residue"]), (tiny_models["esm"], []), (tiny_models["bert"], [])):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}.h5"
        pooling = ["--pooling", "cls"] if extra or model == tiny_models["bert"] else []
        r = run_cli("embed", SMALL, "-m", model, *pooling, *extra, "-o", out, "--device", "cpu", "-j", "1")
        assert r.exit_code == 0 and "warning: --pooling cls:" not in r.stderr, (model, extra, r.stderr)
        # (per-residue arrays only: the option is said to be ignored, as the style's rule for an option
        # that does nothing; it was ignored without a word)
        ignored = ("protrans: warning: --pooling cls ignored: it makes the per-protein vectors, and this run writes "
                   "per-residue arrays only\n")
        assert r.stderr.count(ignored) == (extra == ["--per-residue"]), (model, extra, r.stderr)


@pytest.mark.parametrize("family_name", ["t5", "transfo_xl", "onehot"])
def test_pooling_cls_is_refused_where_there_is_no_cls_token_to_read(run_cli, tmp_path, tiny_models, family_name):
    model = "onehot" if family_name == "onehot" else tiny_models[family_name]
    r = run_cli("embed", SMALL, "-m", model, "--pooling", "cls", "-o", tmp_path / "x.h5", "--device", "cpu")
    assert r.exit_code == 2 and "--pooling cls" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()


def test_pooling_cls_of_a_causal_model_is_refused_even_with_a_cls_token():
    """A causal model's (Transformer-XL's) first token has seen nothing of the protein: refused
    for that reason even where its tokenizer has a cls token (one copied from a BERT), not read."""
    from protrans_cli.embedders import cls_problem

    with_cls = FAMILIES["bert"].build_tokenizer()
    assert cls_problem(FAMILIES["bert"], with_cls) is None
    problem = cls_problem(FAMILIES["transfo_xl"], with_cls)
    assert problem is not None and problem.startswith("a causal model (transfo_xl)"), problem


def test_pooling_cls_with_chunks_or_packing_is_refused(run_cli, tmp_path, tiny_models):
    model = tiny_models["esm"]
    for extra in (["--long-policy", "chunk", "--max-length", "200"], ["--packing"]):
        r = run_cli("embed", SMALL, "-m", model, "--pooling", "cls", "-o", tmp_path / "x.h5", *extra)
        assert r.exit_code == 2 and "--pooling cls" in r.stderr, (extra, r.stderr)


def test_pooling_cls_is_not_recorded_in_a_file_without_per_protein_vectors(run_cli, tmp_path, tiny_models):
    """--per-residue --pooling cls writes the rows --pooling mean writes: the file says mean, as fit,
    predict and knn pool its rows (a head fit on it recorded cls, and predict --fasta then fed it cls
    vectors where it had learned the mean of the rows), and --resume with either pooling goes on."""
    out = tmp_path / "rows.h5"
    r = run_cli("embed", SMALL, "-m", tiny_models["bert"], "--per-residue", "--pooling", "cls", "-o", out,
                "--device", "cpu", "-j", "1")
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(out) as reader:
        assert reader.attrs["pooling"] == "mean over residue tokens (special tokens excluded)"
    r = run_cli("embed", SMALL, "-m", tiny_models["bert"], "--per-residue", "-o", out, "--device", "cpu", "--resume")
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("family_name", ["bert", "transfo_xl"])
def test_chunked_and_truncated_rows_equal_the_plain_forward_of_the_residues_computed(tmp_path, tiny_models,
                                                                                    family_name):
    """--long-policy chunk end to end: every row of a stitched protein is the row of a plain
    transformers forward pass over the window that owns it (docs/embed.md: in each overlap the
    first half of the rows from the left window, the middle one of an odd overlap included, the
    rest from the right; for Transformer-XL, causal, the whole overlap from the left window),
    and the per-protein vector is the mean of the stitched rows. --long-policy truncate: the rows
    of the first max_length residues computed alone, with `length`, `truncated_from` and the md5
    of the kept prefix as embed read it (upper-cased, gaps and the terminal '*' removed)."""
    import hashlib

    from protrans_cli.embed import EmbedOptions, embed

    family, model = FAMILIES[family_name], tiny_models[family_name]
    seq = "".join("ACDEFGHIKLMNPQRSTVWY"[(i * 7 + i // 5) % 20] for i in range(75))
    written = seq[:40].lower() + "-" + seq[40:60] + "." + seq[60:] + "*"
    fasta = tmp_path / "long.fa"
    fasta.write_text(f">long a protein\n{written}\n>short\nMKTAYIAK\n")
    # windows (0, 30), (20, 50), (40, 70) and (45, 75): overlaps of 10, 10 and 25 residues
    window, overlap = 30, 10
    windows = [(0, 30), (20, 50), (40, 70), (45, 75)]
    owner = []
    for row in range(len(seq)):
        inside = [k for k, (s, e) in enumerate(windows) if s <= row < e]
        k = inside[0]
        if family_name != "transfo_xl":
            # past the first half of its overlap with the next window: the next one's (-(-n // 2): ceil)
            while k + 1 in inside and row >= windows[k + 1][0] + -(-(windows[k][1] - windows[k + 1][0]) // 2):
                k += 1
        owner.append(k)
    refs = [reference_rows(family, model, seq[s:e], layers=(-1, 0)) for s, e in windows]
    expected = np.stack([refs[k][:, row - windows[k][0]] for row, k in enumerate(owner)], axis=1)  # (2, L, D)
    out = embed(fasta, tmp_path / "c.h5", EmbedOptions(model=str(model), layers=(-1, 0), device="cpu", max_tokens=64,
                                                       max_length=window, long_policy="chunk",
                                                       chunk_overlap=overlap)).output
    with EmbeddingsReader(out) as r:
        attrs = {i: a for i, _, a in r.items(PER_RESIDUE)}
        rows, pooled = r.get("long", PER_RESIDUE), r.get("long", PER_PROTEIN)
        short = r.get("short", PER_RESIDUE)
    assert attrs["long"]["chunks"] == len(windows) and attrs["long"]["length"] == len(seq)
    assert attrs["long"]["checksum"] == "md5:" + hashlib.md5(seq.encode()).hexdigest()
    np.testing.assert_allclose(rows, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(pooled, expected.mean(1), atol=1e-5, rtol=0)
    np.testing.assert_allclose(short, reference_rows(family, model, "MKTAYIAK", layers=(-1, 0)), atol=1e-5, rtol=0)

    out = embed(fasta, tmp_path / "t.h5", EmbedOptions(model=str(model), device="cpu", max_length=window,
                                                       long_policy="truncate")).output
    with EmbeddingsReader(out) as r:
        attrs = {i: a for i, _, a in r.items(PER_RESIDUE)}
        rows, pooled = r.get("long", PER_RESIDUE), r.get("long", PER_PROTEIN)
    expected = reference_rows(family, model, seq[:window])[0]
    np.testing.assert_allclose(rows, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(pooled, expected.mean(0), atol=1e-5, rtol=0)
    assert (attrs["long"]["length"], attrs["long"]["truncated_from"]) == (window, len(seq))
    assert attrs["long"]["checksum"] == "md5:" + hashlib.md5(seq[:window].encode()).hexdigest()
    assert "truncated_from" not in attrs["short"]


@pytest.mark.parametrize("beside_a_model", [False, True], ids=["adapter alone", "adapter beside config.json"])
def test_a_peft_adapter_directory_is_one_line_saying_to_merge_it(run_cli, tmp_path, tiny_models, beside_a_model):
    """A LoRA adapter saved by peft (adapter_config.json + adapter_model.safetensors). Alone it
    was "no config.json, so it is not a model directory (give the directory ... save_pretrained
    wrote)", which peft's save_pretrained had written; beside a model's config.json the base
    weights were embedded and the adapter left out without a word (transformers applies one only
    where peft is installed)."""
    import json
    import shutil

    model_dir = tmp_path / "lora"
    if beside_a_model:
        shutil.copytree(tiny_models["esm"], model_dir)
    else:
        model_dir.mkdir()
    (model_dir / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "facebook/esm2_t6_8M_UR50D", "peft_type": "LORA", "r": 4,
         "target_modules": ["query", "value"]}))
    (model_dir / "adapter_model.safetensors").write_bytes(b"")
    out, corpus = tmp_path / "x.h5", tmp_path / "corpus.txt"
    corpus.write_text("M K T A Y I A K Q R\n\nM V L S P A D K\n\n")
    for args in (("embed", SMALL, "-m", model_dir, "-o", out, "--device", "cpu"),
                 ("train", "--init-from", model_dir, "--corpus", corpus, "-o", tmp_path / "run",
                  "--global-batch-size", "2", "--micro-batch-size", "2")):
        result = run_cli(*args)
        assert result.exit_code == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"protrans: error: {model_dir}: a PEFT adapter"), lines
        assert "of the base model facebook/esm2_t6_8M_UR50D" in lines[0] and "merge_and_unload" not in lines[0]
        assert f"`protrans import-model {model_dir} -o DIR` (--base MODEL for a local copy of the base)" in lines[0]
        assert f"give {args[2 if args[0] == 'embed' else 1]} that directory" in lines[0]
    assert not out.exists() and not out.with_name("x.h5.partial").exists() and not (tmp_path / "run").exists()


def test_a_tokenizer_that_splits_residues_is_refused_when_loaded_before_any_output(run_cli, tmp_path, tiny_models):
    """A T5 directory whose spiece.model is of sentencepiece's "char" type: "M K T" becomes
    `▁ M ▁ K ▁ T`, two tokens a residue. Refused at the first batch, the message named no model
    and an empty OUTPUT.partial was left, which the same command run again (with the tokenizer
    fixed) refused as "the work of an interrupted run". Now refused when the model is loaded."""
    spm = pytest.importorskip("sentencepiece")
    import io
    import random

    model = _without_tokenizer(tiny_models["t5"], tmp_path / "t5_char_spiece")
    rng = random.Random(0)
    lines = [" ".join(rng.choice("LAGVESIKRDTPNQFYMHCWX") for _ in range(50)) for _ in range(200)]
    pieces = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=pieces, vocab_size=25,
                                   model_type="char", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
                                   eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0, minloglevel=2)
    (model / "spiece.model").write_bytes(pieces.getvalue())
    out = tmp_path / "x.h5"
    result = run_cli("embed", SMALL, "-m", model, "-o", out, "--device", "cpu")
    assert result.exit_code == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"protrans: error: {model}: the t5 tokenizer made 42 residue tokens of a sequence of 21 "
                           "residues"), line
    assert not out.exists() and not out.with_name("x.h5.partial").exists()


def test_a_hugging_face_cache_folder_names_its_snapshot_and_hub_id(run_cli, tmp_path, tiny_models):
    """`-m ~/.cache/huggingface/hub/models--facebook--esm2_t6_8M_UR50D`, the folder the cache keeps a
    model in (blobs/, refs/main, snapshots/COMMIT/), was "no config.json, so it is not a model directory
    (give the directory that ... save_pretrained wrote)", which says nothing of the model inside it."""
    import shutil

    folder = tmp_path / "hub" / "models--facebook--esm2_t6_8M_UR50D"
    (folder / "refs").mkdir(parents=True)
    (folder / "blobs").mkdir()
    shutil.copytree(tiny_models["esm"], folder / "snapshots" / "0123abcd")
    (folder / "refs" / "main").write_text("0123abcd")
    out = tmp_path / "x.h5"
    result = run_cli("embed", SMALL, "-m", folder, "-o", out, "--device", "cpu")
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"protrans: error: {folder}: the Hugging Face cache's folder of facebook/esm2_t6_8M_UR50D, not a "
                     f"model directory: give -m {folder / 'snapshots' / '0123abcd'} (the model's files), or -m "
                     "facebook/esm2_t6_8M_UR50D where this is the cache that Hugging Face reads (HF_HOME, "
                     "HF_HUB_CACHE)"], lines
    assert not out.exists()
    result = run_cli("embed", SMALL, "-m", folder / "snapshots" / "0123abcd", "-o", out, "--device", "cpu")
    assert result.exit_code == 0 and out.exists(), result.stderr


@pytest.mark.parametrize("model", ["onehot", "bert"])
def test_gpu_only_options_on_the_cpu_are_said_to_change_nothing(tmp_path, tiny_models, run_cli, model):
    # --cpu-fallback and --sdpa-kernels torch on a CPU run changed nothing without a word
    model = tiny_models.get(model, model)
    r = run_cli("embed", SMALL, "-m", model, "--device", "cpu", "--cpu-fallback", "--sdpa-kernels", "torch",
                "-o", tmp_path / "o.h5")
    assert r.exit_code == 0, r.stderr
    assert "--cpu-fallback ignored: the run is on the CPU already" in r.stderr
    assert "--sdpa-kernels torch ignored on cpu" in r.stderr
    r = run_cli("embed", SMALL, "-m", model, "--device", "cpu", "-o", tmp_path / "p.h5")
    assert r.exit_code == 0 and "ignored" not in r.stderr, r.stderr


def test_several_layers_make_the_arrays_embeds_help_names(run_cli, tmp_path, tiny_models):
    """embed --help said "(L, D) per-residue arrays" and "(D,) per-protein arrays" alone: with
    several --layer they are (layers, L, D) and (layers, D), which --layer's help now says."""
    import re

    from protrans_cli.cli.embed import command

    (layer_help,) = [p.help for p in command.params if p.name == "layers"]
    assert re.search(r"repeat for several: arrays \(layers, L, D\) and \(layers, D\)", layer_help), layer_help
    out = tmp_path / "two.h5"
    r = run_cli("embed", SMALL, "-m", tiny_models["bert"], "--layer", "0", "--layer", "-1", "--device", "cpu",
                "-o", out)
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(out) as reader:
        for ident, rows, attrs in reader.items(PER_RESIDUE):
            assert rows.shape[:2] == (2, attrs["length"]), (ident, rows.shape)
        assert {vector.shape[0] for _, vector, _ in reader.items(PER_PROTEIN)} == {2}


def test_sdpa_kernels_on_any_device_but_a_cuda_gpu_are_said_to_change_nothing():
    # (mps and xpu have no such kernels to choose: `not cuda`, not `cpu`, is the rule)
    from protrans_cli.embed import EmbedOptions, _warn_gpu_only

    said = []
    for device in ("mps", "cuda:1", "cuda"):
        _warn_gpu_only(EmbedOptions(sdpa_kernels="torch", cpu_fallback=True), device, said.append)
    assert said == ["--sdpa-kernels torch ignored on mps: it chooses among a CUDA GPU's attention kernels"]

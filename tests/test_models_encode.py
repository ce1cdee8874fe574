"""Fast encode (table lookup) gives exactly what calling each family's tokenizer gives."""

from __future__ import annotations

import json
import random

import pytest
import torch

from protrans_cli.models import FAMILIES
from protrans_cli.models.base import residue_layout
from protrans_cli.residues import ALPHABET


def _random_seqs(seed=0):
    rng = random.Random(seed)
    seqs = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40))) for _ in range(30)]
    return seqs + ["W", "mkUZOBx"]


def _assert_same(family, tokenizer, seqs, multiple=1):
    fast_inputs, fast_mask = family.encode(tokenizer, seqs, multiple)
    slow_inputs, slow_mask = family.encode_with_tokenizer(tokenizer, seqs, multiple)
    assert torch.equal(fast_inputs["input_ids"], slow_inputs["input_ids"])
    assert torch.equal(fast_inputs["attention_mask"], slow_inputs["attention_mask"])
    assert torch.equal(fast_mask, slow_mask)
    assert fast_mask.sum(dim=1).tolist() == [len(s) for s in seqs]
    assert fast_mask.shape[1] % multiple == 0


@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_fast_encode_equals_the_tokenizer(name, multiple):
    """Also with lengths rounded up to a multiple of 8 (what embed does on a GPU): the extra
    padding sits where the tokenizer's pad_to_multiple_of puts it (left for XLNet)."""
    family = FAMILIES[name]
    tokenizer = family.build_tokenizer()
    assert residue_layout(family, tokenizer) is not None  # the fast path is the one tested
    _assert_same(family, tokenizer, _random_seqs(), multiple)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_letter_outside_the_alphabet_is_left_to_the_tokenizer(name):
    # J (Leu or Ile) and * (a stop) are in no family's table: the batch that holds one goes
    # through the tokenizer (its unknown token there), not a row with id -1
    family = FAMILIES[name]
    tokenizer = family.build_tokenizer()
    seqs = ["MKJA", "MK", "AC*D"]
    inputs, _ = family.encode(tokenizer, seqs)
    assert (inputs["input_ids"] >= 0).all()
    _assert_same(family, tokenizer, seqs)
    unk = tokenizer.unk_token_id
    assert unk is not None and (inputs["input_ids"] == unk).sum() == 2


def test_fast_encode_of_a_protbert_style_vocab_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"LAGVESIKRDTPNQFYMHCWXUBZO"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False,
                                                                "tokenizer_class": "BertTokenizer"}))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    family = FAMILIES["bert"]
    assert residue_layout(family, tokenizer) is not None
    _assert_same(family, tokenizer, _random_seqs(1))


def test_a_tokenizer_that_does_not_map_one_token_per_residue_is_refused():
    from protrans_cli.errors import ModelError

    class UnspacedBert(type(FAMILIES["bert"])):
        spaced = False  # a whitespace tokenizer fed unspaced text: "MKA" is one unknown word

    family = UnspacedBert()
    tokenizer = family.build_tokenizer()
    assert residue_layout(family, tokenizer) is None  # unspaced text could merge: no fast path
    with pytest.raises(ModelError, match="made 1 residue tokens of a sequence of 3 residues"):
        family.encode(tokenizer, ["MKA"])


def test_a_tokenizer_that_flags_a_residue_token_special_gets_no_fast_path():
    """The probe compares the tokenizer's own special-tokens mask too, not only its ids: one that
    flags a residue's token as special (here X's) would have the table lookup count X as a
    residue where calling the tokenizer leaves it out, so the two paths would disagree. Such a
    tokenizer goes through the tokenizer itself, which refuses the sequence in one line."""
    from protrans_cli.errors import ModelError

    base = FAMILIES["bert"]
    tokenizer = base.build_tokenizer()
    x_id = tokenizer.convert_tokens_to_ids("X")

    class FlagsX(type(base)):
        def tokenize(self, tokenizer, sequences, words=False, **kwargs):
            enc = super().tokenize(tokenizer, sequences, words, **kwargs)
            if "special_tokens_mask" in enc:
                enc["special_tokens_mask"] = [[int(flag or t == x_id) for flag, t in zip(mask, ids)]
                                              for mask, ids in zip(enc["special_tokens_mask"], enc["input_ids"])]
            return enc

    family = FlagsX()
    assert residue_layout(family, tokenizer) is None
    assert residue_layout(base, base.build_tokenizer()) is not None  # (the same tokenizer, unflagged: fast)
    with pytest.raises(ModelError, match="made 3 residue tokens of a sequence of 4 residues"):
        family.encode(tokenizer, ["MKXA"])

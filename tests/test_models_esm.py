"""ESM's table-lookup encode gives exactly what its (pure-Python) EsmTokenizer gives."""

from __future__ import annotations

import random

import torch

from protrans_cli.models import FAMILIES
from protrans_cli.models.base import Family
from protrans_cli.residues import ALPHABET

FAMILY = FAMILIES["esm"]


def test_fast_encode_equals_the_tokenizer():
    tokenizer = FAMILY.build_tokenizer()
    rng = random.Random(0)
    seqs = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 40))) for _ in range(30)]
    seqs += ["W", "mkUZOBx"]
    fast_inputs, fast_mask = FAMILY.encode(tokenizer, seqs)
    slow_inputs, slow_mask = Family.encode(FAMILY, tokenizer, seqs)  # through the tokenizer itself
    assert torch.equal(fast_inputs["input_ids"], slow_inputs["input_ids"])
    assert torch.equal(fast_inputs["attention_mask"], slow_inputs["attention_mask"])
    assert torch.equal(fast_mask, slow_mask)
    assert fast_mask.sum(dim=1).tolist() == [len(s) for s in seqs]

"""The normalisation rules of residues.normalise, one case per rule and per rejection reason."""

from __future__ import annotations

import pytest

from protrans_cli.errors import UsageError
from protrans_cli.residues import (
    REASON_EMPTY,
    REASON_INTERNAL_STOP,
    REASON_INVALID,
    SequenceRejected,
    looks_nucleotide,
    normalise,
)


@pytest.mark.parametrize("raw, expected", [
    ("MKTAYI", "MKTAYI"),
    ("mktayi", "MKTAYI"),                    # upper-case
    ("MK TA\tYI\r\n", "MKTAYI"),             # whitespace removed
    ("MK\vTA\fYI", "MKTAYI"),                # ... vertical tab and form feed too
    ("MK-TA..YI", "MKTAYI"),                 # gap characters removed
    ("MKTAYI*", "MKTAYI"),                   # one terminal stop removed
    ("MKTAYI* \n", "MKTAYI"),                # ... also before trailing whitespace
    ("MKTAYI*-", "MKTAYI"),                  # ... and before a trailing gap
    ("MUZOBK", "MXXXXK"),                    # rare residues become X
    ("muzobk", "MXXXXK"),
    ("MXK", "MXK"),                          # X is kept
    (b"MKT", "MKT"),                         # bytes in, str out
])
def test_normalise_rules(raw, expected):
    assert normalise(raw) == expected


def test_rare_keep():
    assert normalise("muzobx", rare="keep") == "MUZOBX"


@pytest.mark.parametrize("raw, reason, detail", [
    ("", REASON_EMPTY, "empty sequence"),
    ("*", REASON_EMPTY, "empty sequence"),
    ("-- ..", REASON_EMPTY, "empty sequence"),
    ("MK*T", REASON_INTERNAL_STOP, "internal stop '*' at residue 3"),
    ("MKT**", REASON_INTERNAL_STOP, "internal stop '*' at residue 4"),
    ("MKJT", REASON_INVALID, "invalid character 'J' at residue 3"),
    ("MK1T", REASON_INVALID, "invalid character '1' at residue 3"),
    ("MK\x00T", REASON_INVALID, "invalid character '\\x00' at residue 3"),  # the backslash once
    ("MK#T\x01", REASON_INVALID, "invalid character '#' at residue 3"),  # the first, not the lowest byte
    ("MKJ*T", REASON_INVALID, "invalid character 'J' at residue 3"),
    ("MKé", REASON_INVALID, "invalid character '\\xe9' at residue 3"),  # (latin-1: a lone byte)
    # the character, not its first byte ('\xc3'): a UTF-8 file's bytes (read_fasta's str is them
    # decoded as latin-1), bytes, and a str with characters beyond latin-1
    ("MKÃ\x84T", REASON_INVALID, "invalid character 'Ä' at residue 3"),
    (b"MK\xc3\x84T", REASON_INVALID, "invalid character 'Ä' at residue 3"),
    ("MK\u200bT", REASON_INVALID, "invalid character '\\u200b' at residue 3"),
    ("MK\U0001f9ecT", REASON_INVALID, "invalid character '\U0001f9ec' at residue 3"),  # 4 UTF-8 bytes
    (b"MK\x80T", REASON_INVALID, "invalid character '\\x80' at residue 3"),  # no character: the byte
])
def test_rejections_carry_reason_and_position(raw, reason, detail):
    with pytest.raises(SequenceRejected) as info:
        normalise(raw)
    assert info.value.reason == reason
    if detail is not None:
        assert info.value.detail == detail


def test_unknown_rare_policy_is_an_error():
    from protrans_cli.errors import UsageError

    with pytest.raises(UsageError, match="^rare must be one of x, keep, got 'drop'$"):
        normalise("MKT", rare="drop")


@pytest.mark.parametrize("seq", [5, None, ["M", "K"], 1.5])
def test_a_sequence_that_is_not_text_is_a_usage_error(seq):
    """normalise(5) made five zero bytes and said "invalid character '\\x00' at residue 1"; None
    and a list of letters were a TypeError from bytes()."""
    with pytest.raises(UsageError, match="a sequence is a str or bytes, got "):
        normalise(seq)
    assert normalise(bytearray(b"mkv")) == normalise(memoryview(b"MKV")) == "MKV"


def test_a_rejected_sequence_is_a_library_error_and_still_a_value_error():
    """README: the library raises ProtransError and its subclasses; `normalise`, exported by the
    package, raised a bare ValueError subclass that `except ProtransError` let through."""
    import protrans_cli

    for bad in ("MK1T", "", "MK*T"):
        with pytest.raises(protrans_cli.ProtransError) as info:
            protrans_cli.normalise(bad)
        assert isinstance(info.value, ValueError) and info.value.exit_code == 1
        assert str(info.value) == info.value.detail


@pytest.mark.parametrize("seq, expected", [
    ("ACGT" * 8, True),                       # DNA
    ("ACGU" * 8, True),                       # RNA (U kept: embed reads with rare="keep")
    ("ACGTN" * 6, True),                      # with unknown bases
    ("ACGT" * 7 + "A", False),                # 29 letters: a peptide may be so
    ("ACGT" * 8 + "M", False),                # one amino acid that is no nucleotide letter
    ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", False),
    ("ACGT" * 4 + ":" + "ACGT" * 4, True),    # a complex of nucleotide chains (embed/perplexity/variants --chains)
    ("ACGT" * 4 + ":" + "MKTAYIAKQR", False),
])
def test_looks_nucleotide(seq, expected):
    assert looks_nucleotide(seq) is expected

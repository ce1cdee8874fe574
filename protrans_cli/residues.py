"""The residue alphabet and the normalisation rules every command applies to sequences.

Rules (documented in docs/prep.md):
- upper-case; whitespace, gap characters (`-`, `.`) and one terminal stop `*` are removed;
- the 20 standard residues and X are kept; the rare residues U (selenocysteine),
  O (pyrrolysine), B (D/N) and Z (E/Q) become X by default, as ProtTrans did (`rare="keep"`
  keeps them);
- anything else (J, digits, an internal `*`, punctuation) rejects the record with a reason.
"""

from __future__ import annotations

import contextlib

from protrans_cli.errors import InputError, UsageError, one_of

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
RARE = "UZOB"
UNKNOWN = "X"
ALPHABET = STANDARD + RARE + UNKNOWN  # every letter a sequence may hold after normalisation

RARE_POLICIES = ("x", "keep")

# `embed --3di`: ProstT5 also reads Foldseek's 3Di strings (a structure's states, one letter per
# residue from the same 20 letters as amino acids), lower-case, after "<fold2AA>" (models.base's
# three_di_input). Here, not there, so that reading a file's attributes imports no model code.
THREE_DI_PREFIX = "<fold2AA>"
THREE_DI = STANDARD

# Rejection reasons: stable keys used in summaries, --rejects files and JSON stats.
REASON_EMPTY = "empty"
REASON_INTERNAL_STOP = "internal_stop"
REASON_INVALID = "invalid_character"

_DELETE = b" \t\r\n\v\f-."
_UPPER = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_RARE_TO_X = bytes.maketrans(b"UZOB", b"XXXX")
_VALID = set(ALPHABET.encode())

# A protein of only these letters, and at least this long, reads as a nucleotide sequence: a
# genome's .fna or a transcript FASTA given where proteins were meant (A, C, G, T and N are amino
# acids too, so a model embeds it without a word). Short peptides of them (GAGA repeats) exist,
# and protein databases hold a few longer ones: warned about, never refused.
NUCLEOTIDE_LETTERS = frozenset("ACGTUN")
NUCLEOTIDE_MIN_LENGTH = 30
# the rule as warnings say it ("N proteins <NUCLEOTIDE_RULE>: ids"), in embed's and prep's alike
NUCLEOTIDE_RULE = (f"hold only the letters A, C, G, T, U and N (at least {NUCLEOTIDE_MIN_LENGTH} residues), "
                   "as nucleotide sequences do")


class SequenceRejected(InputError, ValueError):
    """A sequence that cannot be normalised; `reason` is one of the REASON_* keys. An InputError
    (`except protrans_cli.ProtransError` catches it, as it does every library error), and a
    ValueError as before."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


def _shown_byte(data: bytes, at: int) -> str:
    """The offending byte at `at` as the character it stands for, quoted once: the character a
    UTF-8 sequence starting there spells ('Ä' in a UTF-8 file, or a str given to embed_sequences,
    was shown as its first byte, '\\xc3'; a zero-width space is '\\u200b'), else the byte as it
    is in the file ('\\xef': a latin-1 letter guessed from a lone byte could mislead)."""
    char = data[at]
    size = 2 if 0xC2 <= char <= 0xDF else 3 if 0xE0 <= char <= 0xEF else 4 if 0xF0 <= char <= 0xF4 else 0
    if size:
        with contextlib.suppress(UnicodeDecodeError):
            return repr(data[at:at + size].decode("utf-8"))
    return f"'\\x{char:02x}'"


def looks_nucleotide(seq: str) -> bool:
    """Whether a normalised sequence (rare residues kept) reads as DNA or RNA, not a protein; a
    complex's chains (joined by ':') are read together (the ':' made every complex a protein)."""
    if ":" in seq:
        seq = seq.replace(":", "")
    return len(seq) >= NUCLEOTIDE_MIN_LENGTH and NUCLEOTIDE_LETTERS.issuperset(seq)


def normalise(seq: bytes | str, rare: str = "x") -> str:
    """Return the normalised sequence, or raise SequenceRejected with the reason."""
    if isinstance(seq, str):
        try:  # read_fasta's sequences are the file's bytes decoded as latin-1: these bytes again
            raw = seq.encode("latin-1")
        except UnicodeEncodeError:
            raw = seq.encode()
    elif isinstance(seq, (bytes, bytearray, memoryview)):
        raw = bytes(seq)
    else:  # (5 made five zero bytes, "invalid character '\x00'"; a list of letters a TypeError)
        raise UsageError(f"a sequence is a str or bytes, got {type(seq).__name__} {seq!r:.60}")
    data = raw.translate(_UPPER, _DELETE)
    if data.endswith(b"*"):
        data = data[:-1]
    if not data:
        raise SequenceRejected(REASON_EMPTY, "empty sequence")
    if rare == "x":
        data = data.translate(_RARE_TO_X)
    else:
        one_of(rare, RARE_POLICIES, "--rare", keyword="rare")
    bad = set(data) - _VALID
    if bad:  # the first offending residue
        pos, char = next((i + 1, c) for i, c in enumerate(data) if c in bad)
        if char == b"*"[0]:
            raise SequenceRejected(REASON_INTERNAL_STOP, f"internal stop '*' at residue {pos}")
        shown = repr(chr(char)) if 32 < char < 127 else _shown_byte(data, pos - 1)
        raise SequenceRejected(REASON_INVALID, f"invalid character {shown} at residue {pos}")
    return data.decode("ascii")


# SaProt's residue-and-3Di tokens (models/saprot.py): inside embed a residue given with its 3Di
# state is one character of Unicode's private use area, so that windows, parts and repeats cut
# and compare the 3Di string with the residues; `residue_text` gives the amino acids back.
PAIR_UNKNOWN = "#"
_BASE = 0xE000  # Unicode's private use area: no FASTA letter
PAIR_RESIDUES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_STATES = PAIR_UNKNOWN + "abcdefghijklmnopqrstuvwxyz"
_LAST = _BASE + len(PAIR_RESIDUES) * len(_STATES)


def pair_char(residue: str, state: str) -> str:
    """One character for residue `residue` (upper case) in 3Di state `state` (lower case or `#`)."""
    return chr(_BASE + PAIR_RESIDUES.index(residue) * len(_STATES) + _STATES.index(state))


def split_char(char: str) -> tuple[str, str]:
    """(residue, 3Di state) of one character of a sequence: a plain letter is of unknown structure."""
    code = ord(char)
    if _BASE <= code < _LAST:
        r, s = divmod(code - _BASE, len(_STATES))
        return PAIR_RESIDUES[r], _STATES[s]
    return char, PAIR_UNKNOWN


def residue_text(sequence: str) -> str:
    """The amino acids of a sequence that may hold `pair_char` characters."""
    if not any(_BASE <= ord(c) < _LAST for c in sequence):
        return sequence
    return "".join(split_char(c)[0] if _BASE <= ord(c) < _LAST else c for c in sequence)

"""SaProt (Su et al., ICLR 2024; westlake-repl/SaProt_*): an ESM-2 (`EsmForMaskedLM`,
`EsmTokenizer`) whose vocabulary pairs every residue with a Foldseek 3Di state. A token is two
letters: the residue (upper case, `#` for a masked residue) and the 3Di state (lower case, `#`
where the structure is unknown): `Md` is residue M in state d, `M#` residue M of unknown
structure, `#d` a masked residue in state d. Sequence-only input is every residue followed by
`#` (SaProt's README: "M#E#V#Q#L#V#Q#Y#K#").

Both alphabets are read from the loaded vocabulary, not assumed: the residue letters are the
first letters of its `R#` tokens, the 3Di letters the second letters of its `#s` tokens. One
token per residue, so exactly one row per residue comes out. A residue letter the vocabulary
lacks (U, Z, O, B, X in SaProt's) becomes `#`, the vocabulary's masked residue (ESM's other
models map such letters to X or <unk>); a 3Di letter it lacks, `#` (unknown structure).

Inside embed a residue given with its 3Di state travels as one character of Unicode's private
use area (`residues.pair_char`), so that everything that cuts, counts or compares sequences (chunked
windows, --part, repeated proteins) cuts the 3Di string with its residues; `residues.residue_text`
gives the amino acids back (checksums are of the amino-acid sequence).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from protrans_cli.errors import InputError, ModelError, UsageError, option
from protrans_cli.models.esm import EsmFamily
from protrans_cli.residues import PAIR_RESIDUES, pair_char, split_char
from protrans_cli.residues import PAIR_UNKNOWN as UNKNOWN

# what a 3Di string may hold besides letters: unknown structure (Foldseek's convert2fasta has
# none; an alignment's gap and `#` are read as unknown)
UNKNOWN_STATES = "#-?."


def structure_aware(tokenizer) -> bool:
    """Whether the vocabulary holds a residue-and-3Di token for every residue (`A#` ... `Y#`,
    SaProt's: each residue paired with a Foldseek state, `#` where the structure is unknown)."""
    from protrans_cli.residues import STANDARD

    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, TypeError, ValueError, NotImplementedError):
        return False
    return all(f"{residue}#" in vocab for residue in STANDARD)


def check_structure_aware(name: str, family, what: str) -> None:
    """3Di strings given (`what`: the option or keyword that gave them, as errors name it) to the
    model `name` of `family`: a UsageError unless the family reads them (SaProt's). The one check
    of embed, variants and perplexity (`structure_checks`) and of the scorer's `structure=`."""
    if not getattr(family, "structure_aware", False):
        raise UsageError(f"{what}: {name} is not a structure-aware model (its vocabulary has no residue-and-3Di "
                         "tokens such as SaProt's 'M#', 'Md')")


def warn_unknown_structure(name: str, family, flag: str | None, warn=None) -> None:
    """Said once a model where a structure-aware model (SaProt) is read without 3Di strings: every
    residue with `#`, unknown structure. `flag`: the option that would give them (embed, variants,
    perplexity), None for a command that takes none (contacts). `warn`: console.warn by default."""
    if not getattr(family, "structure_aware", False):
        return
    if warn is None:
        from protrans_cli import console

        warn = console.warn
    if flag is None:
        warn(f"{name} is a structure-aware model (SaProt): this command takes no 3Di strings, so every residue is "
             "read with an unknown structure ('M#')")
    else:
        warn(f"{name} is a structure-aware model (SaProt): without {flag} every residue is read with an unknown "
             "structure ('M#'); the 3Di strings of the proteins' structures (Foldseek, or protrans translate "
             "--to 3di) improve what it computes")


def structure_checks(given: bool, flag: str, warn=None):
    """load_model's `before_weights` hook for a command that reads 3Di strings through `flag`
    (`given`: whether they were): `check_structure_aware`, or `warn_unknown_structure` without
    them, both before the weights are read."""
    def check(name, family, config=None, tokenizer=None) -> None:
        if given:
            check_structure_aware(name, family, flag)
        else:
            warn_unknown_structure(name, family, flag, warn)

    return check


class _Checked(Exception):
    """Raised by `check_before_loading`'s hook: the weights are not read."""


def check_before_loading(names, check, **load_kw) -> None:
    """`check(name, family, config, tokenizer)` of each model in `names` before any of them is
    loaded: each model's config and tokenizer read as load_model reads them (its errors too),
    never its weights (variants -m A -m B --structure-tokens: B not SaProt refused before A scored)."""
    from protrans_cli.models import load_model

    def hook(name, family, config, tokenizer):
        check(name, family, config, tokenizer)
        raise _Checked

    for name in names:
        try:
            load_model(name, before_weights=hook, **load_kw)
        except _Checked:
            pass
        else:  # pragma: no cover - load_model calls before_weights before the weights
            raise AssertionError("load_model read the weights before calling before_weights")


def combine(sequence: str, states: str, path: str, ident: str, line: int | None = None) -> str:
    """`sequence` (normalised; a complex's chains joined by ':') with each residue paired with
    its 3Di state from `states` (lower case, `#` unknown; any ':' left out). A length mismatch
    is an InputError naming the structure file, the record's line there and the record."""
    residues = len(sequence) - sequence.count(":")
    if residues != len(states):
        raise InputError(f"the 3Di string has {len(states)} letters for a sequence of {residues} residues (one "
                         "3Di letter per residue)", path=path, line=line, record=ident)
    out, at = [], 0
    for char in sequence:
        if char == ":":
            out.append(char)
            continue
        # (normalised letters are A-Z; anything else is kept as it is, and read as unknown)
        out.append(pair_char(char, states[at]) if char in PAIR_RESIDUES else char)
        at += 1
    return "".join(out)


def read_structure_tokens(path) -> "StructureTokens":
    """The 3Di strings of a FASTA file (`embed --structure-tokens`), checked: every letter one
    of Foldseek's 20 states (either case) or an unknown one (`#`, `-`, `?`, `.`); ids unique."""
    import stat as stat_module

    # (a pipe, `<(zcat x.3di.fa.gz)`, was read to its end for the digest and then parsed empty:
    # "no FASTA records"; `-` was "No such file or directory")
    regular_only = "the 3Di strings are read from a regular file (a .gz one is read as it is), not a pipe or stdin"
    named = f"{option('--structure-tokens', 'structure_tokens')} {path}"  # (a pipe's /dev/fd/63 alone said little)
    if str(path) == "-":
        raise UsageError(regular_only, path=named)
    path = Path(path)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot read the 3Di strings: {exc.strerror or exc}", path=str(path)) from None
    if not stat_module.S_ISREG(stat.st_mode):
        raise UsageError(regular_only, path=named)
    return _read(str(path), stat.st_mtime_ns, stat.st_size)


def clean_states(text: str, *, path, record=None, line: int | None = None) -> str:
    """A 3Di string as SaProt's tokens take it: white space and a complex's ':' left out, lower
    case, `#` for unknown (`#`, `-`, `?`, `.`). A letter that is no 3Di state is an InputError
    naming it, its position, `path` and `record` (the --structure-tokens file's, or a string given
    to the scorer)."""
    from protrans_cli.residues import THREE_DI

    text = "".join(text.split()).replace(":", "")
    allowed = THREE_DI + THREE_DI.lower() + UNKNOWN_STATES
    bad = next(((i, c) for i, c in enumerate(text) if c not in allowed), None)
    if bad is not None:
        raise InputError(f"{bad[1]!r} at position {bad[0] + 1} is not a 3Di letter (Foldseek's 20 states "
                         f"{THREE_DI.lower()}, either case, or # - ? . for unknown)", path=path, line=line,
                         record=record)
    return "".join(UNKNOWN if c in UNKNOWN_STATES else c for c in text.lower())


class StructureTokens(dict):
    """id -> 3Di string (lower case, `#` unknown), with the file's `path` as given (what errors
    name), its `name` (recorded in the output), `digest`, and each record's header `lines`."""

    path: str = ""
    name: str = ""
    digest: str = ""
    lines: dict


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int, size: int) -> StructureTokens:
    from protrans_cli.io.fasta import parse_fasta
    from protrans_cli.io.files import open_input

    digest = hashlib.blake2b(digest_size=16)
    tokens = StructureTokens()
    first: dict[str, int] = {}
    with open(path, "rb") as raw:
        for block in iter(lambda: raw.read(1 << 20), b""):
            digest.update(block)
    with open_input(path, name=path) as stream:  # (gzip too, as embed's input)
        for rec in parse_fasta(stream, path):
            raw = rec.sequence
            text = raw.decode("latin-1") if isinstance(raw, (bytes, bytearray)) else str(raw)
            states = clean_states(text, path=path, line=rec.line, record=rec.id)
            if rec.id in first:
                raise InputError(f"duplicate id (first seen on line {first[rec.id]})", path=path, line=rec.line,
                                 record=rec.id)
            first[rec.id] = rec.line
            tokens[rec.id] = states
    if not tokens:
        raise InputError("no FASTA records", path=path)
    tokens.path, tokens.name, tokens.digest, tokens.lines = path, Path(path).name, digest.hexdigest(), first
    return tokens


class SaProtFamily(EsmFamily):
    """The ESM family reading SaProt's paired tokens: one `Rs` token per residue."""

    structure_aware = True
    variant = "SaProt"
    # (a packed row goes through ResidueLayout's one-letter table, which has no paired tokens)
    packable = False
    description = "SaProt: ESM-2 whose tokens pair each residue with a Foldseek 3Di state"

    def __init__(self, tokenizer):
        vocab = tokenizer.get_vocab()
        self.residues = "".join(sorted(t[0] for t in vocab if len(t) == 2 and t[1] == UNKNOWN
                                       and t[0] != UNKNOWN and t[0].isupper()))
        self.states = "".join(sorted(t[1] for t in vocab if len(t) == 2 and t[0] == UNKNOWN
                                     and t[1] != UNKNOWN and t[1].islower()))
        self._ids = {token: i for token, i in vocab.items() if len(token) == 2}

    def vocabulary_problem(self) -> str | None:
        """What the vocabulary lacks to read every residue in every state (SaProt's holds each
        pair of its residues, `#` included, with its states, `#` included), or None."""
        pairs = [r + s for r in self.residues + UNKNOWN for s in self.states + UNKNOWN]
        missing = [t for t in pairs if t not in self._ids]
        if not missing:
            return None
        shown = ", ".join(repr(t) for t in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return (f"its vocabulary pairs residues with Foldseek 3Di states (SaProt's) but lacks {shown} (residue, "
                "then state): SaProt's pairs every residue with every state")

    def packing_problem(self, config, training):
        return "SaProt's residue-and-3Di tokens are not packed (its batches are padded)"

    def site_mask_id(self, tokenizer, char: str = UNKNOWN) -> int:
        """The token that masks the residue `char` (a letter, or a `pair_char` holding its 3Di
        state): `#s`, its residue half masked and its state `s` kept (`##` where the structure is
        unknown). SaProt's zero-shot code masks a site so and reads residue r from the logit of `rs`."""
        state = split_char(char)[1] if len(char) == 1 else UNKNOWN
        token = UNKNOWN + (state if state in self.states else UNKNOWN)
        if token not in self._ids:
            raise ModelError(f"the vocabulary has no {token!r} token (a masked residue"
                             + (" of unknown structure)" if token == UNKNOWN * 2 else f" in 3Di state {state!r})"))
        return self._ids[token]

    def token(self, char: str) -> str:
        """The vocabulary token of one character of a (normalised) sequence."""
        residue, state = split_char(char.upper() if len(char) == 1 and ord(char) < 128 else char)
        residue = residue if residue in self.residues else UNKNOWN
        state = state if state in self.states else UNKNOWN
        return residue + state

    def normalise(self, sequence: str) -> str:
        return "".join(c.upper() if ord(c) < 128 else c for c in sequence)

    def prepare(self, sequence: str) -> str:
        """SaProt's input text: every residue's two-letter token, back to back ("M#E#Vd...")."""
        return "".join(self.token(c) for c in self.normalise(sequence))

    def encode(self, tokenizer, sequences: list[str], multiple: int = 1):
        """As Family.encode, by table: `<cls>`, one paired token per residue, `<eos>`."""
        import numpy as np
        import torch

        lead, tail = _special_ids(tokenizer)
        rows = []
        for seq in sequences:
            tokens = [self.token(c) for c in self.normalise(seq)]
            if any(t not in self._ids for t in tokens):  # (load_model refuses such a vocabulary, naming the model)
                raise ModelError(self.vocabulary_problem())
            rows.append([self._ids[t] for t in tokens])
        width = max((len(r) for r in rows), default=0) + len(lead) + len(tail)
        width = -(-width // multiple) * multiple
        ids = np.full((len(rows), width), tokenizer.pad_token_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=bool)
        for i, r in enumerate(rows):
            ids[i, :len(r) + len(lead) + len(tail)] = lead + r + tail
            attention[i, :len(r) + len(lead) + len(tail)] = 1
            mask[i, len(lead):len(lead) + len(r)] = True
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention)}, \
            torch.from_numpy(mask)


def _special_ids(tokenizer) -> tuple[list[int], list[int]]:
    ids = tokenizer.build_inputs_with_special_tokens([-1])
    at = ids.index(-1)
    return list(ids[:at]), list(ids[at + 1:])


def family_for(family, tokenizer):
    """`family`, or the SaProt family where an ESM model's vocabulary is SaProt's."""
    if getattr(family, "name", None) == "esm" and not getattr(family, "structure_aware", False) \
            and structure_aware(tokenizer):
        return SaProtFamily(tokenizer)
    return family

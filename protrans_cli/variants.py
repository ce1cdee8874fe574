"""Zero-shot variant effects from masked language models (`protrans variants`).

A masked language model scores a substitution without any training on the protein: the log-odds
of the mutant against the wild-type residue at the mutated site (Meier et al. 2021, "Language
models enable zero-shot prediction of the effects of mutations on protein function"; what
fair-esm's examples/variant-prediction/predict.py computes for ESM-1v and ESM-2, and ProteinGym
reports for every masked model). The ways to read the model, `--scoring`:

    masked-marginals  mask the site alone in the wild type; log p(mt) - log p(wt) there.
                      The default, and the best of the three in Meier et al.: one forward
                      pass per distinct mutated site (predict.py makes one per residue).
    wt-marginals      the same log-odds from one pass over the unmasked wild type.
    pseudo-ppl        the pseudo-log-likelihood (every residue masked in turn, its log
                      probability summed) of the mutant sequence less that of the wild type:
                      one pass per residue of every distinct mutant (slow; it reads context
                      effects the marginals cannot).
    log-likelihood    a causal LM's log-likelihood of the mutant less the wild type's (each
                      residue given those before it): one pass per distinct mutant.

A variant of several substitutions scores the sum of its sites' log-odds under the marginals
(predict.py's additive rule). Log-probabilities are over the model's whole vocabulary, as
predict.py takes them, in float32 whatever the compute precision. A protein longer than the
model's trained length (`--max-length`: ESM's crops of 1,022 residues, a learned position table,
the crops `protrans train` recorded) is an error unless `--long-policy window`: each masked site
is then read in a window of that many residues centred on it, clipped to the protein's ends (as
ProteinGym scores long proteins), and the unmasked pass in overlapping windows, each site taken
from the window it is most central in.

    scorer = VariantScorer(load_model("esm2_t33_650M_UR50D", masked_lm=True))
    scorer.score("MKTAYIAKQR", [parse_variant("K2A", "MKTAYIAKQR")])   # array([...])

Families: those whose checkpoints carry a masked-LM head (`Family.masked_lm_class`: ESM, ProtBert,
ProtAlbert, RoBERTa-style BERT, the ELECTRA generator) and T5 with its decoder (ProtT5's objective:
a site masked by `<extra_id_0>` in the encoder's input, read from the decoder teacher-forced on the
wild type; no wt-marginals) and XLNet (ProtXLNet's permutation LM: the site hidden from every
position, predicted by the query stream at it; no wt-marginals); Transformer-XL, a causal LM,
takes `log-likelihood` alone (log p(mutant) - log p(wild type), each residue given those before it).

A complex (a wild type whose chains are joined by ':', `--chains`; score_wild_type): its mutations
are numbered over its residues across its chains; `linker` scores them in the chains joined by
`--linker-length` glycines (embed.model_text; the likelihoods over the chains' residues alone, as
perplexity reads a complex), `separate` each site in its own chain read alone, a variant over
several chains the sum of its chains' scores.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protrans_cli import console
from protrans_cli.choices import DEFAULT_LINKER_LENGTH
from protrans_cli.errors import (InputError, ModelError, RuntimeFailure, UsageError, at_least, expect_options, given,
                                 one_of, option, resume_option, whole_number)
from protrans_cli.heads.tasks import missing_number
from protrans_cli.placement import PlacementOptions
from protrans_cli.residues import residue_text

DEFAULT_MODEL = "esm2_t33_650M_UR50D"
STRATEGIES = ("masked-marginals", "wt-marginals", "pseudo-ppl", "log-likelihood")
CAUSAL_STRATEGIES = ("log-likelihood",)  # what a causal LM (Transformer-XL) reads; the rest need both sides
LONG_POLICIES = ("error", "window")
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
CPU_MAX_TOKENS, GPU_MAX_TOKENS = 4096, 16384  # tokens per forward pass (masked copies are never padded)

_THREE_LETTER = {"Ala": "A", "Arg": "R", "Asn": "N", "Asp": "D", "Cys": "C", "Gln": "Q", "Glu": "E", "Gly": "G",
                 "His": "H", "Ile": "I", "Leu": "L", "Lys": "K", "Met": "M", "Phe": "F", "Pro": "P", "Ser": "S",
                 "Thr": "T", "Trp": "W", "Tyr": "Y", "Val": "V", "Sec": "U", "Pyl": "O", "Xaa": "X", "Asx": "B",
                 "Glx": "Z", "Ter": "*"}
# what DMS tables write for the wild type itself or a synonymous (DNA-level) variant: scored 0
_UNCHANGED = {"wt", "_wt", "wildtype", "wild-type", "wild_type", "p.=", "p.(=)", "_sy", "syn", "synonymous"}
_ONE_LETTER = re.compile(r"([A-Za-z])(-?\d+)([A-Za-z*])")
_HGVS = re.compile(r"([A-Z][a-z]{2})(-?\d+)([A-Z][a-z]{2}|\*|=)")
_NOT_SUBSTITUTION = re.compile(r"(del|ins|dup|fs|ext|delins|_|-$|\?)", re.IGNORECASE)
_SEPARATORS = re.compile(r"[:;,+\s]+")


@dataclass(frozen=True)
class Mutation:
    """One substitution: `position` 0-based in the wild-type sequence; `mt` may be `*` (a stop)."""

    position: int
    wt: str
    mt: str

    def label(self, offset: int = 1) -> str:
        return f"{self.wt}{self.position + offset}{self.mt}"


Variant = tuple  # tuple[Mutation, ...]; () is the wild type itself


class VariantError(InputError, ValueError):
    """A variant text that names no substitution of the wild type: an InputError, as every
    library error is a ProtransError, and a ValueError, as parse_variant has raised (so code that
    catches ValueError still catches it)."""


def parse_variant(text: str, sequence: str, offset: int = 1) -> Variant:
    """The substitutions `text` names, checked against `sequence` (its first residue numbered
    `offset`; read as the scorer reads it: upper-case, gaps and a final `*` removed). Forms: `A24G`,
    several joined by `:` (ProteinGym), `;`, `,` or `+`; HGVS protein notation (`p.Ala24Gly`,
    `p.(Ala24Gly)`, `p.[Ala24Gly;Lys30Arg]`, `p.Ala24=`); the wild type or a synonymous variant
    (`WT`, `_wt`, `p.=`, `_sy`) is (). A complex (chains joined by ':') numbers its residues on
    across its chains, the ':'s not counted (score it with score_wild_type). A VariantError (an
    InputError and a ValueError) says what is wrong (an empty or NA text too)."""
    if not whole_number(offset):  # ("1": a TypeError from inside)
        raise UsageError(f"offset is the whole number of the sequence's first residue, got {type(offset).__name__} "
                         f"{offset!r:.40}")
    return _parse_variant(text, _wild_type(sequence), int(offset))


def is_missing(text: str) -> bool:
    """Whether a table's cell names no variant at all: an empty cell or a missing value (MaveDB's
    NA for a variant without a protein-level name, pandas' `<NA>`), the values fit's labels take
    for missing (`tasks.MISSING_NUMBERS`: one definition, so that a table the heads read passes
    here too); left without a score, never taken for the wild type."""
    return missing_number(text)


def _parse_variant(text: str, sequence: str, offset: int) -> Variant:
    """parse_variant against a wild type already normalised (a table's rows: once, not per row); a
    complex's (chains joined by ':'): positions count its residues from `offset` on across its
    chains, the ':'s not counted, and a wrong letter names the chain and its residue there."""
    chains = sequence.split(":") if ":" in sequence else None
    if chains is not None:
        sequence = "".join(chains)
    raw = str(text).strip()
    if is_missing(raw):
        raise VariantError(f"{raw!r}: names no variant (an empty or missing value)")
    if raw.lower() in _UNCHANGED:
        return ()
    body = raw[2:] if raw[:2] in ("p.", "P.") else raw
    body = body.strip("[]()")
    mutations: list[Mutation] = []
    seen: dict[int, str] = {}
    for word in (w for w in _SEPARATORS.split(body) if w):
        word = word.strip("()[]")
        word = word[2:].strip("()[]") if word[:2] in ("p.", "P.") else word
        match = _HGVS.fullmatch(word)
        if match:
            wt, number, mt = _THREE_LETTER.get(match[1]), int(match[2]), match[3]
            mt = wt if mt == "=" else _THREE_LETTER.get(mt, "*" if mt == "*" else None)
            if wt is None or mt is None:
                raise VariantError(f"{word}: not a three-letter amino acid code")
        elif (match := _ONE_LETTER.fullmatch(word)):
            wt, number, mt = match[1].upper(), int(match[2]), match[3].upper()
        elif _NOT_SUBSTITUTION.search(word):
            raise VariantError(f"{word}: an insertion, deletion or frameshift; masked-LM scores are for substitutions")
        else:
            raise VariantError(f"{word}: not a substitution such as A24G, A24G:K30R or p.Ala24Gly"
                               + (f" ({_COMPLEX_NUMBERING})" if chains is not None else ""))
        index = number - offset
        if not 0 <= index < len(sequence):
            if chains is not None:
                raise VariantError(f"{word}: position {number} is outside the complex (residues {offset}.."
                                   f"{len(sequence) + offset - 1} over its {len(chains)} chains: {_COMPLEX_NUMBERING})")
            raise VariantError(f"{word}: position {number} is outside the sequence (residues {offset}.."
                             f"{len(sequence) + offset - 1}; {option('--offset', 'offset')} gives the number of its "
                             "first residue)")
        if sequence[index] != wt:
            if chains is not None:
                chain, place = chain_place(index, chains)
                raise VariantError(f"{word}: residue {number} of the complex, residue {place} of its chain {chain}, "
                                   f"is {sequence[index]}, not {wt} ({_COMPLEX_NUMBERING})")
            raise VariantError(f"{word}: residue {number} of the wild type is {sequence[index]}, not {wt} (check "
                             f"{option('--offset', 'offset')}, the number of the sequence's first residue: {offset})")
        if mt not in AMINO_ACIDS and mt != "*":
            raise VariantError(f"{word}: {mt} is not one of the 20 amino acids ({AMINO_ACIDS}) or * (a stop)")
        if index in seen:
            raise VariantError(f"{raw}: position {number} is mutated twice")
        seen[index] = mt
        if mt != wt:  # (a synonymous site scores 0)
            mutations.append(Mutation(index, wt, mt))
    if not seen:
        raise VariantError(f"{raw!r}: names no substitution")
    return tuple(mutations)


# how a complex's mutations are numbered (said with every mistake in one)
_COMPLEX_NUMBERING = ("a complex's residues are numbered on across its chains, the ':'s not counted, as perplexity "
                      "--per-residue's position column: chain 2's first residue follows chain 1's last")


def chain_place(index: int, chains: list[str]) -> tuple[int, int]:
    """(chain, residue in it), both from 1, of the complex's residue `index` (0-based, across chains)."""
    for c, chain in enumerate(chains, 1):
        if index < len(chain):
            return c, index + 1
        index -= len(chain)
    raise IndexError(index)


def all_singles(sequence: str) -> list[Variant]:
    """Every single substitution of `sequence` to another of the 20 amino acids, site by site,
    read as parse_variant and the scorer read it (upper-case, gaps and a final `*` removed): the
    letters as given made "m1A" of "mkt", "-4A" of "MKT-A" and "*9A" of a final stop, which
    score() refused as no substitution of the wild type it scores."""
    # (a complex, chains joined by ':': every residue of every chain, numbered on across them)
    sequence = _wild_type(sequence).replace(":", "")
    return [(Mutation(i, wt, aa),) for i, wt in enumerate(sequence) for aa in AMINO_ACIDS if aa != wt]


def _wild_type(sequence) -> str:
    """A wild type as the scorer reads it (residues.normalise, rare letters kept); a complex's
    chains each so, joined by ':' (an empty chain named, as embed names it)."""
    from protrans_cli.embed import _normalise_record
    from protrans_cli.residues import normalise

    if isinstance(sequence, str) and ":" in sequence:
        return _normalise_record(sequence, None, "linker")
    return normalise(sequence, rare="keep")


def has_stop(variant: Variant) -> bool:
    return any(m.mt == "*" for m in variant)


def model_readings(config, family) -> tuple[bool, bool, bool]:
    """(causal, decoder, permutation): how the scorer reads a model of this config and family: a
    causal LM left to right (Transformer-XL), a T5 site from its decoder, an XLNet site hidden by
    its permutation mask. From the config alone, so that a scoring the model cannot read is
    refused before any model loads (check_scorings)."""
    return (bool(family.causal), bool(getattr(config, "is_encoder_decoder", False)),
            getattr(config, "model_type", "") == "xlnet")


def _unmasked_refusal(name: str, decoder: bool, permutation: bool) -> str | None:
    """Why a model reads no residue it is shown (wt-marginals), or None."""
    if decoder:
        return (f"{name}: wt-marginals read a residue the model sees; a T5 decoder rebuilding an unmasked protein "
                "copies it from the input (use masked-marginals or pseudo-ppl)")
    if permutation:
        return (f"{name}: wt-marginals read a residue the model sees; XLNet predicts a residue only from the others "
                "(use masked-marginals or pseudo-ppl)")
    return None


def scoring_refusal(name: str, strategy: str, readings: tuple[bool, bool, bool]) -> str | None:
    """The one line refusing `strategy` to a model read so (`model_readings`), or None."""
    causal, decoder, permutation = readings
    if causal != (strategy in CAUSAL_STRATEGIES):
        # (to a library call, the scoring by name: score() takes it as `strategy`, run_variants
        # from VariantOptions' `strategies`)
        if causal:
            return (f"{name}: a causal language model reads left to right: give "
                    + option("--scoring log-likelihood", "the scoring 'log-likelihood'"))
        return (f"{name}: {option(f'--scoring {strategy}', f'the scoring {strategy!r}')} is for causal language "
                "models (Transformer-XL); a masked LM reads both sides (pseudo-ppl is its likelihood)")
    return _unmasked_refusal(name, decoder, permutation) if strategy == "wt-marginals" else None


def check_scorings(models, strategies, revision=None) -> None:
    """UsageError, before any model loads, for a scoring one of `models` cannot read (a causal LM
    given a two-sided scoring, a masked LM log-likelihood, T5 or XLNet wt-marginals): each model's
    config read alone (an ensemble whose second model refused its scoring was refused only after
    the first had been loaded and had scored every variant)."""
    from protrans_cli.models import open_config

    for name in dict.fromkeys(models):
        source = open_config(name, revision=revision)
        readings = model_readings(source.config, source.family)
        for strategy in strategies:
            if (problem := scoring_refusal(name, strategy, readings)):
                raise UsageError(problem)


# --- the scorer ------------------------------------------------------------------------------

class VariantScorer:
    """Masked-LM scores over a model loaded with its head (`load_model(name, masked_lm=True)`).

    `max_length`: the longest protein read whole (None: the model's trained length, see the
    module docstring); `long_policy` "error" refuses a longer one, "window" reads windows of it.
    `max_tokens` bounds the tokens of one forward pass (copies of one length: no padding)."""

    def __init__(self, loaded, *, max_tokens: int | None = None, max_length: int | None = None,
                 long_policy: str = "error", progress: bool = True):
        import torch

        from protrans_cli.embedders import _count_special_tokens, _max_residues, _trained_residues

        from protrans_cli.models import LoadedModel

        if not isinstance(loaded, LoadedModel):  # (a model's name: "'str' object has no attribute 'model'")
            raise UsageError(f"VariantScorer takes a loaded model, load_model(name, masked_lm=True), got "
                             f"{type(loaded).__name__} {loaded!r:.60}")
        for name, value in (("max_tokens", max_tokens), ("max_length", max_length)):
            if value is not None and not whole_number(value):
                raise UsageError(f"{name} must be a whole number or None, got {type(value).__name__} {value!r:.40}")
        one_of(long_policy, LONG_POLICIES, "--long-policy", keyword="long_policy")
        if max_length is not None:
            at_least(max_length, 1, "--max-length", keyword="max_length")
        if max_tokens is not None:
            at_least(max_tokens, 1, "--max-tokens", keyword="max_tokens")
        model = loaded.model
        if type(model).__name__ != loaded.family.masked_lm_class:
            raise ModelError(f"{loaded.name}: loaded without its masked-LM head (load it with "
                             "load_model(..., masked_lm=True))")
        self.loaded, self.model, self.family, self.tokenizer = loaded, model, loaded.family, loaded.tokenizer
        # T5 (ProtT5's objective, protrans train's `t5`): a masked site of the encoder's input is
        # read from the decoder rebuilding the whole protein (teacher-forced on the wild type);
        # XLNet (ProtXLNet's permutation LM): the site hidden from every position by `perm_mask`,
        # predicted by the query stream at it (`target_mapping`) from all other residues
        self.causal, self.decoder, self.permutation = model_readings(model.config, self.family)
        self.mask_id = self.tokenizer.mask_token_id
        if getattr(self.family, "structure_aware", False):  # SaProt: `##`, not <mask> (models/saprot.py)
            self.mask_id = self.family.site_mask_id(self.tokenizer)
        if self.mask_id is None and self.decoder:
            sentinel = self.tokenizer.convert_tokens_to_ids("<extra_id_0>")
            self.mask_id = None if sentinel == self.tokenizer.unk_token_id else sentinel
        if self.mask_id is None and not self.causal:
            raise ModelError(f"{loaded.name}: its tokenizer has no mask token"
                             + (" and no <extra_id_0>" if self.decoder else ""))
        if self.decoder and self.family.prefix_ids(self.tokenizer):
            # ProstT5 reads amino acids after <AA2fold> and its decoder writes 3Di letters
            raise ModelError(f"{loaded.name}: its input starts with a translation prefix (ProstT5's <AA2fold>): its "
                             "decoder writes another alphabet, not the protein back; score with ProtT5")
        self.decoder_start = getattr(model.config, "decoder_start_token_id", None)
        if self.decoder and self.decoder_start is None:
            self.decoder_start = self.tokenizer.pad_token_id
        from protrans_cli.placement import model_device

        # (under a device map: its input device, where accelerate's hooks bring the logits back)
        self.device = model_device(model)
        self.device_map = dict(getattr(model, "hf_device_map", None) or {}) or None
        self.compute_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        specials = _count_special_tokens(self.family, self.tokenizer)
        table = _max_residues(model.base_model, specials)
        trained = _trained_residues(loaded, specials)
        self.model_limit = table  # what the position table holds (None: any length runs)
        known = [n for n in (table, trained[0] if trained else None) if n]
        if max_length is not None and table is not None and max_length > table:
            raise UsageError(f"{option('--max-length ', 'max_length=')}{max_length} is more than {loaded.name} accepts "
                             f"({table} residues, its learned positions)")
        self.own_length = min(known) if known else None  # the model's own limit (None: it reads any length)
        self.max_length = max_length or self.own_length
        self._max_length_given = max_length is not None  # (said so when a protein is over it)
        self.long_policy = long_policy
        cuda = self.device.type == "cuda"
        self.max_tokens = max_tokens or (GPU_MAX_TOKENS if cuda else CPU_MAX_TOKENS)
        self.progress = progress
        self._letter_ids: dict[str, int] = {}
        self._torch = torch

    def _mask_for(self, char: str) -> int:
        """The token masking residue `char` of a sequence: the mask token; SaProt's `#s` (the
        residue half masked, its 3Di state `s` kept: `##` for a plain letter, models/saprot.py)."""
        if getattr(self.family, "structure_aware", False):
            return self.family.site_mask_id(self.tokenizer, char)
        return self.mask_id

    # the token the model reads for one residue letter (its rare-residue rules applied; a
    # `residues.pair_char` holding a 3Di state: SaProt's residue-and-state token)
    def token_id(self, letter: str) -> int:
        if letter not in self._letter_ids:
            inputs, mask = self.family.encode(self.tokenizer, [letter])
            self._letter_ids[letter] = int(inputs["input_ids"][0][mask[0]][0])
        return self._letter_ids[letter]

    def check_length(self, sequence: str, what: str = "the sequence", *, path=None, record=None) -> None:
        """InputError for a protein longer than max_length under --long-policy error (`path`,
        `record`: the FASTA and record it came from, named as embed names them)."""
        if self.max_length is not None and len(sequence) > self.max_length and (
                self.long_policy == "error" or self.causal):
            window = option("--long-policy window", "long_policy='window'")
            way_out = ("a causal LM's likelihood is not read in windows" if self.causal else
                       f"{window} scores each site in a window of that many residues around it")
            raise InputError(f"{what} has {len(sequence):,} residues, {self._over_what()}; {way_out}",
                             path=path, record=record)

    def _over_what(self) -> str:
        """check_length's words for the limit a protein is over: --max-length where it was given
        (with the model's own limit beside it), else the model's own limit, not --max-length (it
        named the option the user had not given), with how --max-length raises it where it can."""
        name, own, table = self.loaded.name, self.own_length, self.model_limit
        if self._max_length_given:
            limit = option(f"--max-length {self.max_length:,}", f"max_length={self.max_length}")
            mine = ("none: it reads any length" if own is None else
                    f"{own:,} residues, what it was trained on or holds")
            return f"more than {limit} (the limit given; the model's own: {mine})"
        length = option("--max-length", "max_length")
        if table is not None and table <= own:
            raise_it = f"its learned positions hold no more, so {length} cannot raise it"
        else:
            raise_it = (f"a larger {length} reads more, past what it was trained on"
                        + (f", up to {table:,} (its learned positions)" if table is not None else ""))
        return f"more than the {own:,} residues {name} was trained on or holds (its own limit; {raise_it})"

    # -- forward passes ---------------------------------------------------------------------

    def site_log_probs(self, sequences: list[str], sites: list[tuple[int, int]], *, masked: bool = True,
                       bar=None) -> np.ndarray:
        """(len(sites), V) float32 log-probabilities over the vocabulary at each (sequence index,
        0-based position) site: with the site masked alone (`masked`), else from the unmasked
        sequence. Identical sites are computed once. `bar`: a progress bar to advance (one of its
        own otherwise)."""
        torch = self._torch
        self._refuse_reading(masked)
        sequences = _sequence_list(sequences, "site_log_probs")
        for i, seq in enumerate(sequences):
            # Sites are positions in the sequence as the scorer reads it: a gap, a final '*' or a
            # letter that is no residue was encoded as a token of its own (an unknown one), which
            # shifted or changed every site's log-probabilities without a word.
            clean = checked_sequence(seq, f"sequence {i}")
            if clean != seq.upper():
                raise UsageError(f"sequence {i} holds gaps, whitespace or a final '*': give it as the scorer reads "
                                 "it, checked_sequence(seq), with the sites numbered in that")
            self.check_length(seq)
        out: np.ndarray | None = None
        items = self._items(sequences, sites, masked)
        # the encoded window of the items in hand: items of one window are consecutive (one per
        # site of a windowed protein: a cache of them all held every window of a long protein)
        cached: tuple | None = None
        own_bar = bar is None
        if own_bar:
            total = sum(len(locals_) for _, _, locals_, _ in items)
            bar = console.progress(total=total, desc="scoring", unit="site") if self.progress and total > 1 else None
        try:
            for batch in self._batches(sequences, items):
                rows, row_of, token_of, where = [], [], [], []
                for b, (seq_index, start, locals_, targets) in enumerate(batch):
                    key = (seq_index, start)
                    if cached is None or cached[0] != key:
                        cached = (key, self._encode_window(sequences[seq_index], start))
                    ids, extra, token_at, logit_at = cached[1]
                    row = ids.clone()
                    if self.permutation:  # (the input as it is: no position sees the site's token)
                        rows.append((row, self._hidden_site(extra, int(token_at[locals_[0]]), len(ids))))
                    else:
                        if masked:
                            row[token_at[locals_[0]]] = self._mask_for(sequences[seq_index][start + locals_[0]])
                        rows.append((row, extra))
                    row_of.extend([b] * len(locals_))
                    token_of.append(logit_at[list(locals_)])
                    where.extend(targets)
                logits = self._forward(rows)  # (B, T, V)
                with torch.inference_mode():
                    # every site's row at once, one copy off the device a pass
                    picked = logits[torch.tensor(row_of, device=logits.device), torch.cat(token_of).to(logits.device)]
                    values = picked.float().log_softmax(-1).cpu().numpy()  # (sites, V)
                del logits, picked
                if out is None:
                    out = np.empty((len(sites), values.shape[-1]), dtype=np.float32)
                for row_values, targets in zip(values, where):
                    out[targets] = row_values
                if bar is not None:
                    bar.update(len(where))
        finally:
            if own_bar and bar is not None:
                bar.close()
        return out if out is not None else np.empty((0, 0), dtype=np.float32)

    def _items(self, sequences, sites, masked):
        """Work items (sequence index, window start, local positions, indices into `sites`)."""
        by_site: dict[tuple[int, int], list[int]] = {}
        for k, site in enumerate(sites):
            by_site.setdefault((int(site[0]), int(site[1])), []).append(k)
        for s, p in by_site:
            if not 0 <= s < len(sequences):  # (an IndexError traceback; -1 read the last sequence)
                raise UsageError(f"site ({s}, {p}) names sequence {s}, but {len(sequences)} sequence(s) are given "
                                 f"(numbered from 0)")
            if not 0 <= p < len(sequences[s]):
                raise UsageError(f"site {p} is outside sequence {s} ({len(sequences[s])} residues)")
        if masked:  # one item a site: its window, the site in it, and where its values go
            items = []
            for (s, p), targets in sorted(by_site.items()):
                start = window_start(p, len(sequences[s]), self._window(sequences[s]))
                items.append((s, start, (p - start,), [targets]))
            return items
        groups: dict[tuple[int, int], tuple[list[int], list[list[int]]]] = {}
        for (s, p), targets in sorted(by_site.items()):
            start = covering_window(p, len(sequences[s]), self._window(sequences[s]))
            local, target = groups.setdefault((s, start), ([], []))
            local.append(p - start)
            target.append(targets)
        return [(s, start, tuple(local), target) for (s, start), (local, target) in groups.items()]

    def _window(self, sequence: str) -> int:
        return len(sequence) if self.max_length is None else min(len(sequence), self.max_length)

    def _batches(self, sequences, items):
        """Items of one token length together, `max_tokens` tokens a pass at most (read again for
        each pass: a GPU out of memory lowers it for the passes after, see `_forward`)."""
        by_length: dict[int, list] = {}
        for item in items:
            by_length.setdefault(self._window(sequences[item[0]]), []).append(item)
        for length, group in sorted(by_length.items()):
            i = 0
            while i < len(group):
                per_pass = max(1, self.max_tokens // (length + 2))
                yield group[i:i + per_pass]
                i += per_pass

    def _encode_window(self, sequence: str, start: int):
        window = sequence[start:start + self._window(sequence)]
        inputs, mask = self.family.encode(self.tokenizer, [window])
        ids = inputs["input_ids"][0]
        extra = {k: v[0] for k, v in inputs.items() if k != "input_ids"}
        token_at = mask[0].nonzero().squeeze(1)  # token index of each residue
        if len(token_at) != len(window):
            raise RuntimeFailure(f"the {self.family.name} family produced {len(token_at)} residue tokens for "
                                 f"{len(window)} residues")
        if self.permutation:  # (one target a row: its logits are the row's only ones)
            return ids, extra, token_at, self._torch.zeros(len(window), dtype=self._torch.long)
        if not self.decoder:
            return ids, extra, token_at, token_at  # (the logits of a residue are at its token)
        # The decoder's input: its start token, then the wild type's residues (what it was trained
        # to write: the residues, then </s>); its output at position i is residue i's.
        torch = self._torch
        start = torch.tensor([self.decoder_start], dtype=ids.dtype)
        extra = {**extra, "decoder_input_ids": torch.cat([start, ids[token_at][:-1]])}
        return ids, extra, token_at, torch.arange(len(window))

    def _hidden_site(self, extra: dict, token: int, length: int) -> dict:
        """XLNet's inputs for predicting the residue at `token` from every other one: no position
        attends to it (perm_mask[:, token] = 1, the query stream at it included), and the query
        stream reads out there alone (target_mapping)."""
        torch = self._torch
        perm_mask = torch.zeros(length, length)
        perm_mask[:, token] = 1.0
        target_mapping = torch.zeros(1, length)
        target_mapping[0, token] = 1.0
        return {**extra, "perm_mask": perm_mask, "target_mapping": target_mapping}

    def _forward(self, rows):
        """Logits (B, T, V) of the stacked rows; a GPU out of memory halves `max_tokens` and runs
        the rows again in passes of that size, and the passes after keep it (each would run out
        of memory again first)."""
        torch = self._torch
        inputs = {"input_ids": torch.stack([r for r, _ in rows])}
        for key in rows[0][1]:
            inputs[key] = torch.stack([extra[key] for _, extra in rows])
        tokens = int(inputs["input_ids"].numel())
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        try:
            with torch.inference_mode():
                return self.model(**inputs).logits
        except RuntimeError as exc:  # (Apple's GPU says so in a plain RuntimeError, not torch.OutOfMemoryError)
            from protrans_cli.embed_retry import is_out_of_memory

            if not is_out_of_memory(exc):
                raise
        # (out of the except block: its traceback held the failed pass's frames, and with them its
        # activations, through the retry)
        del inputs
        if len(rows) == 1:
            raise RuntimeFailure(f"{self.loaded.name}: out of memory scoring one sequence of {tokens} tokens (give "
                                 "--max-length and --long-policy window for shorter windows)")
        from protrans_cli.embed_retry import _free_memory

        _free_memory()  # (the device's cached blocks too: CUDA's or MPS's)
        self.max_tokens = max(1, min(self.max_tokens, tokens // 2))
        width, parts, i = tokens // len(rows), [], 0
        while i < len(rows):  # (in passes of what max_tokens allows now: a pass may lower it again)
            per = max(1, self.max_tokens // width)
            parts.append(self._forward(rows[i:i + per]))
            i += per
        return torch.cat(parts)

    # -- scores -----------------------------------------------------------------------------

    def score(self, sequence: str, variants: list[Variant], strategy: str = "masked-marginals", *,
              store=None, linked: tuple | None = None, structure: str | None = None) -> np.ndarray:
        """One score per variant (float64; NaN for a variant with a stop, 0 for the wild type).
        `linked` (chain lengths, linker length): `sequence` is a complex's chains joined by that
        many residues between each two (embed.model_text, --chains linker; its variants' positions
        in it, none in a linker): the likelihoods (pseudo-ppl, log-likelihood) count the chains'
        residues alone, the linker read as context (score_wild_type maps a complex's variants).

        The work runs in units (`SITES_PER_UNIT` sites, `MUTANTS_PER_UNIT` mutants of pseudo-ppl),
        each through `store(key, compute, check)` when given: a unit's result is what `compute()`
        returns or what a store kept from an earlier run under the same key (`protrans variants
        --resume`) and `check(value)` accepts (the shape and dtype `compute()` gives).

        `structure`: the wild type's 3Di string (one Foldseek state a residue, `#` unknown) for a
        structure-aware model (SaProt): each site masked as `#s`, residue r scored by the token
        `rs`; the mutants keep the wild type's string."""
        one_of(strategy, STRATEGIES, "--scoring", keyword="strategy")
        sequence = checked_sequence(with_structure(sequence, structure, self))
        plain = residue_text(sequence)
        # (texts such as "K2A", or one Mutation not in a tuple: an AttributeError or TypeError
        # traceback from the loop below)
        if isinstance(variants, (str, bytes)):
            wrong = variants
        else:
            variants = list(variants)
            wrong = next((v for v in variants if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list))
                          or not all(isinstance(m, Mutation) for m in v)), None)
        if wrong is not None:
            raise UsageError(f"variants is a list of parse_variant(text, sequence) results (tuples of Mutation), got "
                             f"{type(wrong).__name__} {wrong!r:.40}: parse each text against the sequence first")
        for variant in variants:
            for m in variant:
                if not (0 <= m.position < len(plain) and plain[m.position] == m.wt):
                    found = plain[m.position] if 0 <= m.position < len(plain) else "outside the sequence"
                    raise UsageError(f"{m.label()}: not a substitution of this wild type (residue {m.position + 1} "
                                     f"of {len(sequence)}: {found}); parse variants against the sequence scored")
        store = store or _compute
        if (problem := scoring_refusal(self.loaded.name, strategy, (self.causal, self.decoder, self.permutation))):
            raise UsageError(problem)
        scores = np.full(len(variants), np.nan)
        scorable = [i for i, v in enumerate(variants) if not has_stop(v)]
        if strategy in ("pseudo-ppl", "log-likelihood"):
            return self._likelihood_scores(sequence, variants, scorable, scores, store, linked)
        masked = strategy == "masked-marginals"
        self._refuse_reading(masked)  # (before any unit: a resumed run refused as a fresh one)
        sites = sorted({m.position for i in scorable for m in variants[i]})
        bar = self._bar(len(sites))
        rows = []
        try:
            for chunk in _chunks(sites, SITES_PER_UNIT):
                key = _unit_key("masked" if masked else "unmasked", sequence, chunk)
                rows.append(_run_unit(store, key, lambda c=chunk: self.site_log_probs(
                    [sequence], [(0, p) for p in c], masked=masked, bar=bar), bar, len(chunk),
                    _log_probs_check(len(chunk), self._vocabulary_width())))
        finally:
            if bar is not None:
                bar.close()
        log_probs = np.concatenate(rows) if rows else np.empty((0, 0), dtype=np.float32)
        row_of = {p: k for k, p in enumerate(sites)}
        for i in scorable:
            scores[i] = sum(float(log_probs[row_of[m.position], self.token_id(_at_site(m.mt, sequence[m.position]))])
                            - float(log_probs[row_of[m.position], self.token_id(sequence[m.position])])
                            for m in variants[i])
        return scores

    def _refuse_reading(self, masked: bool) -> None:
        """UsageError for a site reading the model has none of: a causal LM reads no site from both
        sides; T5's decoder and XLNet read a site only masked."""
        if self.causal:
            raise UsageError(f"{self.loaded.name}: a causal LM reads no site from both sides (its scoring is "
                             "log-likelihood)")
        if not masked and (problem := _unmasked_refusal(self.loaded.name, self.decoder, self.permutation)):
            raise UsageError(problem)

    def pseudo_log_likelihood(self, sequences: list[str], *, bar=None, masked: bool = True) -> np.ndarray:
        """Sum over residues of log p(residue | the rest), each masked in turn (float64 per sequence).
        `masked` False: each residue's log-probability read from one unmasked pass (the wild-type
        marginals: fast, but the model sees the residue it predicts, so biased high; masked LMs
        without a T5 decoder or XLNet's permutation). The sums of `residue_log_probs`."""
        sequences = _sequence_list(sequences, "pseudo_log_likelihood")  # (refused under its own name)
        return site_sums(self.residue_log_probs(sequences, bar=bar, masked=masked))

    def residue_log_probs(self, sequences: list[str], *, bar=None, masked: bool = True,
                          positions: list | None = None) -> list[np.ndarray]:
        """Each sequence's (length,) float64 log p(residue | the rest), each residue masked in turn
        (`masked` False: read from one unmasked pass, see pseudo_log_likelihood). `positions`:
        for each sequence, the 0-based positions to read (in order; None: every one), and its
        array has one value per position (a complex joined by a linker: its chains' residues, the
        linker read as context only)."""
        self._refuse_reading(masked)
        sequences = [checked_sequence(s) for s in _sequence_list(sequences, "residue_log_probs")]
        if positions is not None and len(positions) != len(sequences):
            raise UsageError(f"positions holds {len(positions)} list(s) for {len(sequences)} sequence(s): one a sequence")
        out: list[np.ndarray] = []
        # (a few sequences at a time: every site's (V,) row of them all was held at once, 0.4 GB for
        # 10,000 mutants of 300 residues)
        for first in range(0, len(sequences), MUTANTS_PER_UNIT):
            part = sequences[first:first + MUTANTS_PER_UNIT]
            read = [range(len(seq)) if positions is None or positions[first + s] is None else positions[first + s]
                    for s, seq in enumerate(part)]
            sites = [(s, int(p)) for s, places in enumerate(read) for p in places]
            log_probs = self.site_log_probs(part, sites, masked=masked, bar=bar)
            ids = np.array([self.token_id(part[s][p]) for s, p in sites], dtype=np.int64)
            picked = log_probs[np.arange(len(sites)), ids].astype(np.float64) if sites else np.zeros(0)
            out.extend(np.split(picked, np.cumsum([len(places) for places in read])[:-1]))
        return out

    def log_likelihood(self, sequences: list[str], *, bar=None) -> np.ndarray:
        """A causal LM's log-likelihood of each sequence, sum over residues of log p(residue | those
        before it) (float64 per sequence): the sums of `causal_residue_log_probs`."""
        sequences = _sequence_list(sequences, "log_likelihood")  # (refused under its own name)
        return site_sums(self.causal_residue_log_probs(sequences, bar=bar))

    def causal_residue_log_probs(self, sequences: list[str], *, bar=None) -> list[np.ndarray]:
        """A causal LM's (length,) float64 log p(residue | those before it) of each sequence;
        sequences of one length share passes."""
        torch = self._torch
        sequences = [checked_sequence(s) for s in _sequence_list(sequences, "causal_residue_log_probs")]
        for seq in sequences:
            self.check_length(seq)  # (over --max-length: refused, a causal LM is not read in windows)
        out: list[np.ndarray | None] = [None] * len(sequences)
        for batch in self._batches(sequences, [(k,) for k in range(len(sequences))]):
            part = [k for k, in batch]
            encoded = [self._encode_window(sequences[k], 0) for k in part]
            logits = self._forward([(ids, extra) for ids, extra, _, _ in encoded])  # (B, T, V)
            with torch.inference_mode():
                for b, (ids, _, token_at, _) in enumerate(encoded):
                    # the logits before a token predict it
                    rows = logits[b, (token_at - 1).to(logits.device)].float().log_softmax(-1)
                    picked = rows.gather(1, ids[token_at].to(rows.device)[:, None])
                    # (float64 on the host: Apple's GPU (MPS) has no float64)
                    out[part[b]] = picked[:, 0].cpu().numpy().astype(np.float64)
            del logits
            if bar is not None:
                bar.update(sum(len(sequences[k]) for k in part))
        return out

    def _likelihood_scores(self, sequence, variants, scorable, scores, store, linked=None):
        """pseudo-ppl (a masked LM) or log-likelihood (a causal one): each distinct mutant's less the
        wild type's (`linked`: a joined complex's, its chains' residues alone, as perplexity reads it)."""
        mutants = {i: mutate(sequence, variants[i]) for i in scorable}
        distinct = sorted(set(mutants.values()) - {sequence})
        size = len(sequence) if linked is None else sum(linked[0])
        bar = self._bar(size * (1 + len(distinct)))
        pll: dict[str, float] = {}
        if linked is None:
            likelihood = self.log_likelihood if self.causal else self.pseudo_log_likelihood
        else:
            lengths, linker = tuple(int(n) for n in linked[0]), int(linked[1])
            method = "causal" if self.causal else "pseudo"

            def likelihood(texts, bar=None):
                return site_sums(work_log_probs(self, [_Work(t, t, lengths, linker) for t in texts], method, bar))
        try:
            for chunk in [[sequence]] + _chunks(distinct, MUTANTS_PER_UNIT):
                values = _run_unit(store, _unit_key("ll" if self.causal else "pll", sequence, chunk),
                                   lambda c=chunk: likelihood(c, bar=bar), bar, size * len(chunk),
                                   _totals_check(len(chunk)))
                pll.update(zip(chunk, values.tolist()))
        finally:
            if bar is not None:
                bar.close()
        for i, mutant in mutants.items():
            scores[i] = pll[mutant] - pll[sequence]
        return scores

    def _vocabulary_width(self) -> int | None:
        """The width of the masked-LM head's logits (its output layer's), None where unknown."""
        get_head = getattr(self.model, "get_output_embeddings", None)
        width = getattr(get_head(), "out_features", None) if callable(get_head) else None
        return int(width) if isinstance(width, int) else None

    def _bar(self, total: int):
        return console.progress(total=total, desc="scoring", unit="site") if self.progress and total > 1 else None


def score_wild_type(scorer: VariantScorer, sequence: str, variants: list[Variant], strategy: str = "masked-marginals",
                    *, chains: str = "error", linker_length: int = DEFAULT_LINKER_LENGTH, store=None,
                    structure: str | None = None) -> np.ndarray:
    """VariantScorer.score of one wild type, a complex's (chains joined by ':'; its variants'
    positions across its chains, as _parse_variant reads them) under `chains`: `linker` scores
    them in the chains joined by `linker_length` glycines (a site mapped past the linkers before
    it; the likelihoods count the chains' residues alone); `separate` scores each site in its own
    chain read alone, a variant over several chains the sum of its chains' scores (the chains it
    leaves alone add 0). Without ':', score() itself. `structure`: the wild type's 3Di string
    (its chains' states, any ':' left out; SaProt, `with_structure`)."""
    import hashlib

    from protrans_cli.embed import chain_lengths, model_text

    sequence = with_structure(sequence, structure, scorer)

    if ":" not in sequence:
        return scorer.score(sequence, variants, strategy, store=store)
    store = store or _compute
    parts = sequence.split(":")
    lengths = chain_lengths(sequence)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()  # (each chain's first residue, across chains)

    def chain_of(position: int) -> int:
        return int(np.searchsorted(np.cumsum(lengths), position, side="right"))

    if chains == "linker":
        joined = model_text(sequence, "linker", linker_length)
        moved = [tuple(Mutation(m.position + chain_of(m.position) * linker_length, m.wt, m.mt) for m in v)
                 for v in variants]
        # (units kept under the chains' lengths and the linker's: A:B joined is not the protein of the
        # same letters, whose likelihood counts the linker too, nor A:B under another linker)
        tag = hashlib.sha256(f"linker {linker_length} {' '.join(map(str, lengths))}".encode()).hexdigest()[:12]
        return scorer.score(joined, moved, strategy, linked=(tuple(lengths), linker_length),
                            store=lambda key, compute, check=None: store(f"complex-{tag}-{key}", compute, check))
    if chains != "separate":
        raise UsageError(f"a complex (chains joined by ':') is read under {option('--chains', 'chains')} linker or "
                         f"separate, not {chains!r}")
    scores = np.zeros(len(variants))
    scores[[i for i, v in enumerate(variants) if has_stop(v)]] = np.nan
    for c, chain in enumerate(parts):
        mine = [(i, tuple(Mutation(m.position - starts[c], m.wt, m.mt) for m in v if chain_of(m.position) == c))
                for i, v in enumerate(variants) if not has_stop(v)]
        mine = [(i, v) for i, v in mine if v]
        if mine:  # (a chain read alone is the protein of that sequence: its units are that protein's)
            scores[[i for i, _ in mine]] += scorer.score(chain, [v for _, v in mine], strategy, store=store)
    return scores


@dataclass(frozen=True)
class _Work:
    """One reading of the model: `text` (a sequence; a complex's chains joined by their linker),
    its values kept under `key` (the sequence; for a joined complex its chains, the linker and
    its length: `A:B` read whole is not `AB`, nor the same chains under another linker), and
    `chains` (a joined complex's chain lengths: only their residues are scored) with `linker`."""

    key: str
    text: str
    chains: tuple | None = None
    linker: int = 0

    @property
    def sites(self) -> list[int] | None:
        """The positions of `text` scored (None: every one): a joined complex's residues, not its linkers'."""
        from protrans_cli.embed import without_linker

        if self.chains is None:
            return None
        return without_linker(np.arange(len(self.text)), self.chains, self.linker, axes=(0,)).tolist()

    @property
    def size(self) -> int:
        return len(self.text) if self.chains is None else sum(self.chains)


def _works(sequence: str, chains: str, linker_length: int) -> list[_Work]:
    """What the model reads of a record's sequence: itself; a complex (`chains`) joined by its
    linker (linker) or each chain alone (separate: a chain is read as the protein of that sequence
    is, and shares its values)."""
    from protrans_cli.embed import chain_lengths, model_text

    if ":" not in sequence:
        return [_Work(sequence, sequence)]
    if chains == "separate":
        return [_Work(chain, chain) for chain in sequence.split(":")]
    return [_Work(f"{sequence} linker {linker_length}", model_text(sequence, "linker", linker_length),
                  tuple(chain_lengths(sequence)), linker_length)]


def work_log_probs(scorer, works: list[_Work], method: str, bar=None) -> list[np.ndarray]:
    """Each reading's (size,) float64 log-probabilities of its scored residues under `method`
    (pseudo: each masked in turn; wt-marginals: one unmasked pass; causal: each given those before
    it, one pass reading the linker as context, its values dropped): perplexity's readings, and
    the likelihoods of a complex's wild type and mutants under `protrans variants --chains linker`."""
    texts = [w.text for w in works]
    if method == "causal":
        got = scorer.causal_residue_log_probs(texts)
        got = [v if w.chains is None else v[w.sites] for v, w in zip(got, works)]
        if bar is not None:
            bar.update(sum(w.size for w in works))
        return got
    return scorer.residue_log_probs(texts, bar=bar, masked=method == "pseudo", positions=[w.sites for w in works])


SITES_PER_UNIT = 1024   # sites whose log-probabilities one unit of work computes (and --resume keeps)
MUTANTS_PER_UNIT = 64   # mutants whose pseudo-log-likelihoods one unit computes


def _compute(key, compute, check=None):
    return compute()


def site_sums(per_site: list[np.ndarray]) -> np.ndarray:
    """(len(per_site),) float64: each array's values added in order, left to right (the sums a
    likelihood's units keep, the same to the last bit however the values were grouped)."""
    return np.array([float(np.add.accumulate(values)[-1]) if len(values) else 0.0 for values in per_site],
                    dtype=np.float64)


def _log_probs_check(rows: int, width: int | None):
    """A kept unit of site log-probabilities: (rows, width) float32."""
    return lambda v: (v.dtype == np.float32 and v.ndim == 2 and v.shape[0] == rows
                      and (width is None or v.shape[1] == width))


def _totals_check(rows: int):
    """A kept unit of pseudo-log-likelihoods: (rows,) float64."""
    return lambda v: v.dtype == np.float64 and v.shape == (rows,)


def _run_unit(store, key: str, compute, bar, size: int, check):
    """A unit through `store`; a unit it kept from before advances the bar by its `size` at once,
    out of its rate (one computed now advanced it as it ran)."""
    ran = []

    def counted():
        ran.append(True)
        return compute()

    value = store(key, counted, check)
    if not ran and bar is not None:
        console.skip(bar, size)  # (not this run's work: out of a log line's rate)
    return value


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _unit_key(kind: str, sequence: str, chunk) -> str:
    """A unit's name: what it computes, of which wild type, over which sites or mutants."""
    import hashlib

    digest = hashlib.sha256(f"{kind}\n{sequence}\n".encode())
    for item in chunk:
        digest.update(f"{item}\n".encode())
    return f"{kind}-{digest.hexdigest()[:32]}"


def mutate(sequence: str, variant: Variant) -> str:
    """The mutant; a residue paired with its 3Di state (SaProt) keeps the state: a substitution
    does not change the wild type's structure string."""
    letters = list(sequence)
    for m in variant:
        letters[m.position] = _at_site(m.mt, letters[m.position])
    return "".join(letters)


def _at_site(letter: str, char: str) -> str:
    """Residue `letter` in the 3Di state of `char` (a `residues.pair_char`), else `letter` itself."""
    from protrans_cli.residues import PAIR_RESIDUES, pair_char, split_char

    residue, state = split_char(char)
    if residue == char or letter not in PAIR_RESIDUES:
        return letter
    return pair_char(letter, state)


def with_structure(sequence: str, structure: str | None, scorer=None, *, path: str = "structure",
                   record: str | None = None) -> str:
    """`sequence` with each residue paired with its state of the 3Di string `structure` (one
    Foldseek letter a residue, either case; `#` - ? . unknown; models/saprot.py), as the scorer
    reads it for a structure-aware model (SaProt); `sequence` itself for None. A scorer's model
    that is not structure-aware is a UsageError; a length mismatch an InputError."""
    if structure is None:
        return sequence
    from protrans_cli.models.saprot import clean_states, combine

    if scorer is not None:
        from protrans_cli.models.saprot import check_structure_aware

        check_structure_aware(scorer.loaded.name, scorer.family, "structure")
    if not isinstance(structure, str):
        raise UsageError(f"structure is a 3Di string, got {type(structure).__name__} {structure!r:.40}")
    states = clean_states(structure, path=path, record=record)
    return combine(sequence if ":" in sequence else checked_sequence(sequence), states, path, record)


def _sequence_list(sequences, method: str) -> list:
    """`sequences` as a list; one str (each of its letters was scored as a sequence of its own)
    or a dict (its ids were scored) is a UsageError."""
    from collections.abc import Mapping

    if isinstance(sequences, (str, bytes)):
        raise UsageError(f"{method} takes a list of sequences: put one in a list, [{sequences!r:.40}]")
    if isinstance(sequences, Mapping):
        raise UsageError(f"{method} takes a list of sequences, not a dict: give list(d.values()), the results come "
                         "back in that order")
    return list(sequences)


def checked_sequence(sequence: str, what: str = "the wild-type sequence") -> str:
    """The wild type as the scorer reads it: upper-case, gaps and a final `*` removed; an
    InputError for anything that is not a protein sequence (naming it as `what`). A sequence of
    residues paired with 3Di states (`with_structure`) is checked by its residues, and kept."""
    from protrans_cli.residues import SequenceRejected, normalise

    try:
        if isinstance(sequence, str) and residue_text(sequence) != sequence:
            plain = residue_text(sequence)
            if normalise(plain, rare="keep") != plain:
                raise UsageError(f"{what}: residues paired with 3Di states are given as with_structure() returns "
                                 "them (upper case, no gaps)")
            return sequence
        return normalise(sequence, rare="keep")
    except SequenceRejected as exc:
        raise InputError(f"{what}: {exc}") from None


def window_start(position: int, length: int, window: int) -> int:
    """Start of the `window`-residue window centred on `position`, clipped to the protein."""
    return min(max(position - window // 2, 0), length - window)


def covering_window(position: int, length: int, window: int) -> int:
    """Start of the window (of those every `window // 2` residues, and the last one) in which
    `position` lies farthest from an edge: the unmasked windows of a long protein."""
    if window >= length:
        return 0
    stride = max(1, window // 2)
    starts = sorted({*range(0, length - window, stride), length - window})
    return max((s for s in starts if s <= position < s + window), key=lambda s: min(position - s, s + window - 1 - position))


def check_scoring(options) -> None:
    """What variants' and perplexity's options share (UsageError): --max-length, --max-tokens,
    --device and --dtype."""
    from protrans_cli.embed import DTYPES
    from protrans_cli.embedders import check_device

    if options.max_length is not None:
        at_least(options.max_length, 1, "--max-length", keyword="max_length")
    if options.max_tokens is not None:
        at_least(options.max_tokens, 1, "--max-tokens", keyword="max_tokens")
    check_device(options.device)
    one_of(options.dtype, DTYPES, "--dtype", keyword="dtype")
    options.check_placement()


# --- the command -----------------------------------------------------------------------------

def structure_of(path):
    """The 3Di strings of a --structure-tokens FASTA by id (models/saprot.py's reader), or None."""
    if path is None:
        return None
    from protrans_cli.models.saprot import read_structure_tokens

    return read_structure_tokens(path)


def structure_hook(options, models) -> object:
    """load_model's `before_weights` for variants and perplexity (models/saprot.py's
    structure_checks): --structure-tokens refused for a model that is not structure-aware, a
    structure-aware one without them said. With the 3Di strings and several `models`, every
    model's tokenizer is read and checked here first: none is scored before one is refused."""
    from protrans_cli.models.saprot import check_before_loading, structure_checks

    given = options.structure_tokens is not None
    checks = structure_checks(given, option("--structure-tokens", "structure_tokens"))
    if given and len(models) > 1:
        check_before_loading(models, checks, revision=options.revision)
    return checks


def structure_said(tokens) -> str:
    """How a run's messages name its 3Di strings (the file and its digest), "" without."""
    return "" if tokens is None else f"; 3Di strings of {tokens.name} (blake2b:{tokens.digest})"


def _wild_type_structures(wild_types, options: VariantOptions, by_id: bool) -> list:
    """Each wild type's 3Di string (None without --structure-tokens), looked up by its id
    (`by_id`: a --fasta record's); --sequence, which has no id, takes the file's one record.
    Each checked against its wild type's length here, before any model loads."""
    tokens = options.structure()
    if tokens is None:
        return [None] * len(wild_types)
    flag = option("--structure-tokens", "structure_tokens")
    if not by_id:
        if len(tokens) != 1:
            raise UsageError(f"{flag} {tokens.name} holds {len(tokens)} 3Di strings; {option('--sequence', 'sequence')} "
                             f"has no id to pick one by: give a file of one record, or the wild type in "
                             f"{option('--fasta', 'fasta')} under the id of its 3Di string")
        found = list(tokens.values())
    else:
        found = []
        for ident, _ in wild_types:
            if ident not in tokens:
                raise InputError(f"no 3Di string for the wild type {ident!r} ({flag} needs one for every wild type "
                                 "scored, under its id in --fasta)", path=tokens.name, record=ident)
            found.append(tokens[ident])
    for (ident, seq), states in zip(wild_types, found):
        with_structure(seq, states, path=tokens.name, record=ident)  # (the lengths: an error before any work)
    return found


@dataclass
class VariantOptions(PlacementOptions):
    """Everything `protrans variants` can be asked for; the CLI fills it from its options."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    strategies: tuple[str, ...] = ("masked-marginals",)
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_tokens: int | None = None
    max_length: int | None = None
    long_policy: str = "error"
    mutation_column: str = "mutant"
    offset: int = 1
    truth_column: str | None = None
    id_column: str | None = None         # the table's column naming each row's wild type (a --fasta record)
    column: str | None = None
    all_singles: bool = False
    resume: bool = False                 # go on with OUTPUT.partial/, what an interrupted run kept
    plot: str | None = None              # --all-singles of one wild type: its landscape as a PNG heatmap
    threads: int | None = None
    chains: str = "error"                # a ':' in a wild type (a complex's chains): error | linker | separate
    linker_length: int = DEFAULT_LINKER_LENGTH  # glycines between the chains under chains='linker' (ESMFold's)
    # a model spread over devices (embed's --device-map, protrans_cli/placement.py): auto | balanced |
    # sequential, None for one device; the most each device holds; the folder for what fits nowhere
    device_map: str | None = None
    max_memory: str | dict | None = None
    offload_folder: str | None = None
    # a FASTA of 3Di strings under the wild types' ids (SaProt: each site masked as `#s`, models/saprot.py)
    structure_tokens: str | None = None

    def structure(self):
        """The --structure-tokens file's 3Di strings by id (models/saprot.py), or None."""
        return structure_of(self.structure_tokens)

    def validate(self) -> None:
        from protrans_cli.embed import check_chains
        from protrans_cli.threads import check_threads

        if isinstance(self.models, str) or isinstance(self.strategies, str):
            raise UsageError("models and strategies are tuples of names, not one str")
        if not self.models:
            raise UsageError("no model given")
        from protrans_cli.embedders import WEIGHTLESS, encoding_words

        # (embed's encodings, not models: they were looked for on the hub)
        if (name := next((m for m in WEIGHTLESS if m in self.models), None)) is not None:
            # (to a library call, the field it gave: `models`, a tuple, not embed's `model`)
            named = option(f"-m {name}", f"models: {name!r}")
            raise UsageError(f"{named} is embed's {encoding_words(name)}, not a language model: it gives no residue "
                             "probabilities to score variants with")
        if not self.strategies:
            raise UsageError(f"{option('--scoring', 'strategies')}: give one or more of {', '.join(STRATEGIES)}")
        for strategy in self.strategies:
            one_of(strategy, STRATEGIES, "--scoring", keyword="strategies")
        if len(set(self.strategies)) != len(self.strategies) or len(set(self.models)) != len(self.models):
            raise UsageError("a model or a scoring is given twice")
        one_of(self.long_policy, LONG_POLICIES, "--long-policy", keyword="long_policy")
        check_scoring(self)
        check_chains(self)
        if self.column is not None and len(self.models) * len(self.strategies) > 1:
            raise UsageError(f"{option('--column', 'column')} names the one score column of one model and one "
                             "scoring; with several, the columns are MODEL_SCORING")
        if self.revision is not None and len(self.models) > 1:
            raise UsageError(option("--revision applies to one model; with several -m",
                                    "revision applies to one model; with several models")
                             + ", name each by a directory or pin each in a local copy")
        all_singles = option("--all-singles", "all_singles=True")
        if self.plot is not None and not self.all_singles:
            raise UsageError(f"{option('--plot', 'plot')} draws the landscape of an {all_singles} scan (20 amino "
                             "acids x residues)")
        if self.all_singles and (self.truth_column or self.id_column):
            raise UsageError(f"{option('--truth-column and --id-column', 'truth_column and id_column')} read the "
                             f"variants table; {all_singles} has none")
        if self.all_singles and self.mutation_column != "mutant":  # (ignored without a word)
            raise UsageError(f"{given('--mutation-column', 'mutation_column', self.mutation_column)} reads the "
                             f"variants table; {all_singles} has none (its mutations are written in a column `mutant`)")
        if self.threads is not None:
            check_threads(self.threads)


@dataclass
class VariantTable:
    """A variants CSV/TSV as read: its header and rows (as text, written back unchanged)."""

    name: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    delimiter: str = ","
    variants: list = field(default_factory=list)
    owners: list = field(default_factory=list)  # each row's wild type: an index into the wild types


def read_variant_table(path, wild_types: list[tuple[str, str]], options: VariantOptions,
                       rejected: dict | None = None) -> VariantTable:
    """Read and check every row before any model is loaded: a one-line InputError naming the file,
    line and mutation for the first that does not fit its wild type (the one of `wild_types`, or
    the one its `id_column` names; `rejected`: why a record of the FASTA could not be read)."""
    from protrans_cli.io.fasta import decode_text
    from protrans_cli.io.files import binary_kind, display_name, header_delimiter, kind_refusal, open_input, utf16_text

    name = display_name(path)
    with open_input(path) as stream:
        data = stream.read()
    # (UTF-16, Excel's "Unicode Text" and PowerShell's `>`, holds NULs: read as such, not refused)
    wide = utf16_text(data, name)
    if wide is None and (kind := binary_kind(data)):
        raise InputError(kind_refusal(kind, "a variants table", "CSV or TSV with a mutant column"), path=name)
    # (a line that is not UTF-8 field by field, UTF-8 else latin-1, as label files and FASTA headers
    # are read: a latin-1 table was refused, "not UTF-8 text", though its --id-column's ids were those
    # a latin-1 FASTA's headers gave)
    text = wide if wide is not None else decode_text(data)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    first = next((line for line in text.split("\n") if line.strip()), None)
    if first is None:
        raise InputError("is empty", path=name)
    if first.lstrip("\ufeff \t").startswith(">"):  # (a pipe's: a file is told before the wild types are read)
        raise InputError(_FASTA_AS_TABLE, path=name)
    # (the label tables' rule: a header holding a comma beside its tabs was read as CSV)
    delimiter = header_delimiter(first)
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # (mutated_sequence columns of long proteins)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next((row for row in reader if any(f.strip() for f in row)), None)
    if header is None:  # (only delimiters, `,,,`, or a lone quote: a StopIteration's traceback)
        raise InputError("is empty: no line names a column", path=name)
    stripped = [h.strip() for h in header]
    column = options.mutation_column
    if column not in stripped:
        raise InputError(f"has no {column!r} column (columns: {', '.join(stripped)}; "
                         f"{option('--mutation-column', 'mutation_column')} names it)", path=name)
    for flag, wanted in ((option("--truth-column", "truth_column"), options.truth_column),
                         (option("--id-column", "id_column"), options.id_column)):
        if wanted is not None and wanted not in stripped:
            raise InputError(f"has no {wanted!r} column for {flag} (columns: {', '.join(stripped)})", path=name)
    at = stripped.index(column)
    by_id = {ident: k for k, (ident, _) in enumerate(wild_types)}
    id_at = stripped.index(options.id_column) if options.id_column is not None else None
    table = VariantTable(name, header, [], [], delimiter)
    try:
        while True:
            line = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                break
            if not any(f.strip() for f in row):
                continue
            if len(row) < len(header) or any(f.strip() for f in row[len(header):]):
                # (more fields than the header: an unquoted delimiter in a field; written back,
                # they were dropped without a word. Empty trailing fields are fine.)
                raise InputError(f"has {console.counted(len(row), 'field')}, the header has {len(header)}", path=name,
                                 line=line)
            owner = 0
            if id_at is not None:
                owner = by_id.get(row[id_at].strip())
                if owner is None and row[id_at].strip() in (rejected or {}):
                    raise InputError(f"{options.id_column} {row[id_at].strip()!r}: {rejected[row[id_at].strip()]}",
                                     path=name, line=line)
                if owner is None:
                    raise InputError(f"{options.id_column} {row[id_at].strip()!r}: no such record in the wild types' "
                                     "FASTA", path=name, line=line)
            if is_missing(row[at]):
                variant = None  # (no variant named: no score)
            else:
                try:
                    variant = _parse_variant(row[at], wild_types[owner][1], options.offset)
                except ValueError as exc:
                    raise InputError(str(exc), path=name, line=line) from None
            table.rows.append(row)
            table.lines.append(line)
            table.variants.append(variant)
            table.owners.append(owner)
    except csv.Error as exc:
        raise InputError(f"not a readable CSV: {exc}", path=name, line=reader.line_num) from None
    if not table.rows or all(v is None for v in table.variants):
        raise InputError("holds no variants", path=name)
    if options.truth_column is not None:
        # (a column of text, or of decimal commas, printed "rho nan over 0 variants" after the
        # whole scoring, exit 0: refused here, before any model is loaded)
        truth_at = stripped.index(options.truth_column)
        if not any(math.isfinite(_number(row[truth_at])) for row in table.rows):
            examples = ", ".join(repr(v) for v in list(dict.fromkeys(row[truth_at] for row in table.rows))[:3])
            truth = option(f"--truth-column {options.truth_column!r}", f"truth_column={options.truth_column!r}")
            raise InputError(f"its {truth} holds no numbers ({examples}); name the column of measured values",
                             path=name)
    return table


_FASTA_AS_TABLE = ("is a FASTA file, not a variants table (a CSV or TSV of substitutions): a wild type goes to "
                   "--fasta")


def _starts_like_fasta(path) -> bool:
    """Whether a file (compressed or not) begins, after blanks and a byte-order mark, with '>'. A
    pipe is not looked at (read_variant_table tells it from what it reads): `variants <(zcat
    dms.csv.gz)` lost these first bytes to this look, and the table was "is empty"."""
    from protrans_cli.embed import is_stream
    from protrans_cli.io.fasta import begins_fasta
    from protrans_cli.io.files import open_input

    if is_stream(path):
        return False
    try:
        with open_input(path) as stream:
            head = stream.read(4096)
    except (OSError, InputError, UsageError, EOFError):  # (unreadable: the table's reader says why)
        return False
    return begins_fasta(head)


def read_wild_types(sequence: str | None, fasta, record_id: str | None, many: bool, *,
                    rejected: dict | None = None, gapped: set | None = None,
                    chains: str = "error") -> list[tuple[str, str]]:
    """[(id, sequence)]: `--sequence`, or the FASTA's record(s); one unless `many` (--all-singles).
    `rejected` (--id-column, where only the records a table names are checked): a dict that takes
    each unreadable record's reason instead of an error, and the DNA warning is the caller's.
    `gapped`: a set that takes the ids of wild types that held gap characters, whose warning is
    then the caller's too. `chains` (linker, separate): a wild type holding ':' is a complex, its
    chains each read so and joined by ':' again; under error such a ':' is refused, naming them."""
    from protrans_cli.embed import _normalise_record
    from protrans_cli.io.fasta import NUL_HEADER, parse_fasta
    from protrans_cli.io.files import display_name, open_input
    from protrans_cli.residues import REASON_INVALID, SequenceRejected

    if (sequence is None) == (fasta is None):
        raise UsageError("give the wild type: " + option("--sequence SEQ or --fasta FILE", "sequence or fasta")
                         + " (one of them)")
    if sequence is not None:
        if record_id is not None:
            raise UsageError(option("--id picks a record of --fasta", "record_id picks a record of fasta"))
        try:
            found = [("sequence", _normalise_record(sequence, None, chains))]
        except SequenceRejected as exc:
            # (an option's value: a usage error, as generate's --template; a --fasta record's is bad input)
            raise UsageError(f"the wild-type sequence: {exc}") from None
        _warn_nucleotide(found, "--sequence")
        if _GAP_CHARACTERS.search(sequence):
            from protrans_cli import console

            console.warn("--sequence: the wild type held gap characters ('-', '.'), removed. Mutations are numbered "
                         "by its residues alone, not the alignment's columns")
        return found
    name = display_name(fasta)
    found = []
    held_gaps = gapped if gapped is not None else set()
    first_line: dict[str, int] = {}
    twice = None  # (id, line, first line): the first id given again
    damaged = None  # (line, id): a header --id did not match only for a NUL byte in its id
    # (a header with a NUL byte is a record's problem, as an invalid sequence is: read_fasta refused
    # the whole file for it, a record --id or --id-column did not ask for too)
    with open_input(fasta, name) as stream:
        for record in parse_fasta(stream, name, nul_headers=True):
            if record_id is not None and record.id != record_id:
                if damaged is None and record.id.split("\x00")[0] == record_id != record.id:
                    damaged = (record.line, record.id)
                continue
            if record.id not in first_line:
                first_line[record.id] = record.line
            elif twice is None:
                twice = (record.id, record.line, first_line[record.id])
            if _GAP_CHARACTERS.search(record.sequence):
                held_gaps.add(record.id)
            try:
                if "\x00" in record.description:
                    raise SequenceRejected(REASON_INVALID, NUL_HEADER)
                found.append((record.id, _normalise_record(record.sequence, None, chains)))
            except SequenceRejected as exc:
                if rejected is None:
                    raise InputError(str(exc), path=name, line=record.line, record=record.id) from None
                rejected[record.id] = str(InputError(str(exc), path=name, line=record.line, record=record.id))
    if not found and not rejected:
        if damaged is not None:  # (the record asked for, its header damaged: said as before, with why)
            raise InputError(f"holds no record {record_id!r}; the header at line {damaged[0]}, {damaged[1]!r}, "
                             f"holds a NUL byte (a damaged file?)", path=name)
        raise InputError(f"holds no record {record_id!r}" if record_id else "holds no sequence", path=name)
    if twice is not None:  # (before the count: two records of the --id asked for are this error)
        # (FILE:LINE, record 'ID' as embed says it; it was "FILE: the id 'a' is given twice")
        raise InputError(f"duplicate id (first seen on line {twice[2]})", path=name, line=twice[1], record=twice[0])
    if len(found) > 1 and not many:
        raise UsageError(f"{name} holds {len(found)} sequences; a variants table has one wild type: pick it with "
                         f"{option('--id', 'record_id')} (first ids: {', '.join(i for i, _ in found[:3])})")
    if rejected is None:
        _warn_nucleotide(found, name)
    if gapped is None:
        _warn_gapped([w for w in found if w[0] in held_gaps], name)
    return found


_GAP_CHARACTERS = re.compile(r"[-.]")


def _warn_gapped(gapped: list[tuple[str, str]], name: str) -> None:
    """A wild type given as an alignment's row (gaps and all) is read without its gaps, so the
    mutations are numbered by its residues, not the alignment's columns; a table numbered by
    columns scored other sites where the residues agreed, without a word (embed warns of such
    input too). Said once, with which."""
    from protrans_cli import console

    if gapped:
        shown = console.some_named(len(gapped), [ident for ident, _ in gapped[:console.NAMED]])
        console.warn(f"{name}: {len(gapped):,} wild type(s) held gap characters ('-', '.'), removed: {shown}. "
                     "Mutations are numbered by the residues alone, not the alignment's columns")


def _warn_nucleotide(found: list[tuple[str, str]], name: str) -> None:
    """A wild type of DNA or RNA (a gene's coding sequence given for its protein) was scored as a
    protein of alanine, cysteine, glycine and threonine without a word (embed and prep warn of
    such input): said once, with which."""
    from protrans_cli import console
    from protrans_cli.residues import NUCLEOTIDE_RULE, looks_nucleotide

    like = [ident for ident, seq in found if looks_nucleotide(seq)]
    if like:
        shown = console.some_named(len(like), like[:console.NAMED])
        console.warn(f"{name}: {len(like):,} of {len(found):,} wild type(s) {NUCLEOTIDE_RULE}: {shown}. Protein "
                     "models read them as amino acids; translate DNA or RNA to proteins first")


def model_label(name: str) -> str:
    """A column-friendly label of a model: its short name, a directory's or hub id's last part."""
    label = Path(str(name).rstrip("/")).name or str(name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def score_columns(options: VariantOptions) -> list[tuple[str, str, str]]:
    """[(column, model, strategy)] in the order written, plus ensemble means when several models."""
    if options.column is not None:
        return [(options.column, options.models[0], options.strategies[0])]
    labels = [model_label(m) for m in options.models]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two {option('-m models', 'models')} have the same name; give them distinct directory "
                         "names")
    return [(f"{label}_{strategy.replace('-', '_')}", model, strategy)
            for model, label in zip(options.models, labels) for strategy in options.strategies]


def _resume_beside() -> str:
    return option("--resume goes on with the work kept beside -o FILE",
                  "resume=True goes on with the work kept beside the output file")


def unit_output_lock(target, to_file: bool):
    """The lock on a UnitStore command's `-o FILE` (variants, perplexity, generate, translate;
    `target`: the file, through the user's link): another run on it is refused; none for stdout,
    a device or a pipe (`to_file` False), which keep no work."""
    from protrans_cli.io.files import output_lock

    if not to_file:
        return contextlib.nullcontext()
    return output_lock(target, "is the output of another protrans run that is running now: wait for it to end, "
                               f"or choose another {option('-o', 'output')}")


def resumable_output(output, resume: bool, inputs=(), models=()) -> str | None:
    """The checks of an output whose finished work is kept beside it for --resume (UnitStore:
    variants, perplexity, generate, translate), before any work: an input it would replace, a
    model directory of `models` it lies in (`refuse_inside_model`), its folder,
    and --resume for stdout or a special file (a device or pipe, `-o >(gzip > x.gz)`,
    /dev/stdout: its folder, /dev/fd or /dev, cannot hold FILE.partial/), which keep none.
    Returns io.files.special_output(output) (None for a regular file or stdout)."""
    from protrans_cli.embed import refuse_inside_model
    from protrans_cli.io.files import input_named_by, output_directory, special_output

    if output in (None, "-"):
        if resume:
            raise UsageError(f"{_resume_beside()}; stdout keeps none")
        return None
    if input_named_by(output, [p for p in inputs if p is not None]):
        raise UsageError(f"{output} is also an input: writing it would replace it (choose another "
                         f"{option('-o', 'output')})")
    refuse_inside_model(output, models, "-o", "output")
    output_directory(output)
    special = special_output(output)
    if special and resume:
        raise UsageError(f"{_resume_beside()}; {output} {special}, which keeps none")
    return special


def run_variants(output, options: VariantOptions, *, variants_file=None, sequence: str | None = None,
                 fasta=None, record_id: str | None = None) -> dict:
    """Score the variants of `variants_file` (or every single substitution, `all_singles`) and write
    the table with a score column per model and scoring to `output` (a path, `-`/None: stdout),
    atomically. Returns {column: Spearman rho} when `truth_column` is given, else {}."""
    from protrans_cli.embed import linker_length_ignored
    from protrans_cli.io.files import display_name, input_named_by, named_delimiter, output_directory

    options = options or VariantOptions()
    expect_options(options, VariantOptions, "options")
    options.validate()
    if (ignored := linker_length_ignored(options)) is not None:
        console.warn(ignored)
    if isinstance(variants_file, (str, Path)) and str(variants_file) != "-" and _starts_like_fasta(variants_file):
        # (the wild type given where the table goes: "has no 'mutant' column (columns: >wt ...)",
        # or with --all-singles "give a table or --all-singles, one of them", both given). A wrong
        # kind of file is bad input, exit 1, as a FASTA given to knn, fit or export as embeddings.
        raise InputError(_FASTA_AS_TABLE, path=str(variants_file))
    if options.all_singles == (variants_file is not None):
        raise UsageError("give a variants table (CSV or TSV with a mutant column) or "
                         f"{option('--all-singles', 'all_singles=True')}, one of them")
    if variants_file is not None and fasta is not None and str(variants_file) == str(fasta) == "-":
        raise UsageError(f"the variants table and {option('--fasta', 'fasta')} cannot both be read from stdin (-)")
    special = resumable_output(output, options.resume, (variants_file, fasta, options.structure_tokens), options.models)
    if options.id_column is not None and (fasta is None or record_id is not None):
        raise UsageError(option("--id-column names each row's wild type among the records of --fasta (without --id)",
                                "id_column names each row's wild type among the records of fasta (without record_id)"))
    # (--id-column: a record the table does not name is neither checked nor scored; one it names
    # that cannot be read is an error of that row)
    rejected = {} if options.id_column is not None else None
    gapped = set() if options.id_column is not None else None
    wild_types = read_wild_types(sequence, fasta, record_id, many=options.all_singles or options.id_column is not None,
                                 rejected=rejected, gapped=gapped, chains=options.chains)
    columns = score_columns(options)
    if options.plot is not None:
        if len(wild_types) > 1:
            raise UsageError(f"{option('--plot', 'plot')} draws one wild type's scan; {fasta} holds {len(wild_types)} "
                             f"(pick one with {option('--id', 'record_id')})")
        from protrans_cli.embed import refuse_inside_model
        from protrans_cli.io.files import names_stdout, refuse_special_output, same_file

        refuse_special_output(options.plot, "--plot", "the heatmap", keyword="plot")
        plot = option(f"--plot {options.plot}", f"plot {options.plot}")
        # (drawn over the wild types' FASTA or the table just written, without a word)
        if input_named_by(options.plot, [p for p in (variants_file, fasta) if p is not None]):
            raise UsageError(f"{plot} is also an input: drawing it would replace it (choose another "
                             f"{option('--plot', 'plot')})")
        refuse_inside_model(options.plot, options.models, "--plot", "plot")
        if output not in (None, "-") and same_file(options.plot, output):
            raise UsageError(f"{plot} is also {option('-o', 'the output')}: the heatmap would replace the table (give "
                             "it a .png of its own)")
        if output in (None, "-") and names_stdout(options.plot):  # (`--plot v.png > v.png`: the table was lost)
            raise UsageError(f"{plot} is where stdout goes, and the table goes to stdout too: the heatmap would "
                             f"replace it (give {option('-o', 'output')} a file)")
        output_directory(options.plot, "--plot", "plot")
    if options.all_singles:
        header = (["id"] if fasta is not None else []) + ["mutant"]
        # (no table to follow: the -o name's, as predict and export take it; `-o scan.tsv` was CSV)
        table = VariantTable("--all-singles", header, [], [], delimiter=named_delimiter(output) or ",")
        for k, (ident, seq) in enumerate(wild_types):
            for variant in all_singles(seq):
                table.rows.append(([ident] if fasta is not None else []) + [variant[0].label(options.offset)])
                table.variants.append(variant)
                table.owners.append(k)
        table.lines = list(range(len(table.rows)))
    else:
        table = read_variant_table(variants_file, wild_types, options, rejected)
        if options.id_column is not None:  # (only the wild types the table names are checked and scored)
            named = sorted(set(table.owners))
            renumber = {old: new for new, old in enumerate(named)}
            wild_types = [wild_types[k] for k in named]
            table.owners = [renumber[k] for k in table.owners]
            _warn_nucleotide(wild_types, display_name(fasta))
            _warn_gapped([w for w in wild_types if w[0] in gapped], display_name(fasta))
    if not options.all_singles and named_delimiter(output) not in (None, table.delimiter):
        console.warn(f"{output}: written {'tab' if table.delimiter == chr(9) else 'comma'}-separated, as "
                     f"{table.name} is, whatever the file's extension")
    ensemble_columns = ([f"ensemble_{strategy.replace('-', '_')}" for strategy in options.strategies]
                        if len(options.models) > 1 else [])
    taken = {h.strip() for h in table.header}
    for column in [c for c, _, _ in columns] + ensemble_columns:
        if column in taken:
            raise UsageError(f"{table.name} already has a column {column!r}; {option('--column', 'column')} names "
                             "the new one"
                             if len(columns) == 1 else f"{table.name} already has a column {column!r} (a table "
                             "scored before?): drop it, or rename the models' directories")
    stops = sum(has_stop(v) for v in table.variants if v is not None)
    if stops:
        console.warn(f"{console.counted(stops, 'variant')} with a stop (*) left without a score: a language model "
                     "has no residue for it")
    missing = sum(v is None for v in table.variants)
    if missing:
        console.warn(f"{console.counted(missing, 'row')} of {table.name} with no variant in "
                     f"{options.mutation_column!r} (empty or NA) left without a score")
    to_file = output not in (None, "-") and not special
    from protrans_cli.io.files import staged_outputs, through_link

    # (a file: locked against another run on it, its finished work kept beside it for --resume; the
    # user's own link as where it leads, which the table is written to, as embed takes it: a run on
    # the link and one on its target took two locks, and --resume of one missed the other's work.
    # A device or pipe keeps no work and takes no lock: /dev/.null.lock as root)
    target = through_link(Path(output)) if to_file else output
    structures = _wild_type_structures(wild_types, options, by_id=fasta is not None)
    with unit_output_lock(target, to_file):
        store = UnitStore(partial_folder(target), resume=options.resume) if to_file else None
        check_scorings(options.models, options.strategies, options.revision)  # (before any model loads)
        results = _score_all(table, wild_types, columns, options, store,
                             display_name(fasta) if fasta is not None else None, structures)
        written = _written(columns, ensemble_columns, results, options)
        # (written out first, then renamed together: a Ctrl-C while the heatmap was drawn left the
        # new table beside the old heatmap, and the --resume advice for a table already complete)
        with staged_outputs() as staged:
            _write_table(output, table, written, staged=staged)
            _plot(table, wild_types, written, options, staged=staged)
        if store is not None:
            store.remove()
    if output not in (None, "-"):  # (the table and its plot written: a signal from here on stops nothing)
        console.output_complete(str(output))
    return _report_truth(table, written, options) if options.truth_column else {}


def _written(columns, ensemble_columns, results, options) -> list[tuple[str, np.ndarray]]:
    ensemble = []
    for column, strategy in zip(ensemble_columns, options.strategies):
        ensemble.append((column, np.mean([results[c] for c, _, s in columns if s == strategy], axis=0)))
    return [(c, results[c]) for c, _, _ in columns] + ensemble


def _plot(table, wild_types, written, options, *, staged: list | None = None) -> None:
    if options.plot is None:
        return
    ident, sequence = wild_types[0]
    sequence = sequence.replace(":", "")  # (a complex: its chains' residues, numbered on across them)
    models = ", ".join(model_label(m) for m in options.models)
    save_scan_png(sequence, table.variants, written, options.plot,
                  offset=options.offset, title=f"every substitution of {ident} ({len(sequence)} residues): {models}",
                  staged=staged)
    console.info(f"variants: the landscape drawn in {options.plot}")


def _write_table(output, table, written, *, staged: list | None = None) -> None:
    from protrans_cli.io.files import atomic_output

    with atomic_output(output, "wb", follow_link=True, staged=staged) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        writer = csv.writer(text, delimiter=table.delimiter, lineterminator="\n")
        writer.writerow(table.header + [c for c, _ in written])
        for i, row in enumerate(table.rows):
            writer.writerow(row[:len(table.header)] + [_formatted(values[i]) for _, values in written])
        text.flush()
        text.detach()


def _score_all(table, wild_types, columns, options, store: "UnitStore | None", source: str | None = None,
               structures: list | None = None) -> dict[str, np.ndarray]:
    import gc

    from protrans_cli.embed import model_text
    from protrans_cli.models import load_model
    from protrans_cli.threads import torch_threads

    device, dtype, placing = options.loading(options.models)
    results: dict[str, np.ndarray] = {}
    # each wild type's rows that name a variant (grouped once: a scan of every record of a FASTA
    # looked through all rows once per record)
    rows_of: list[list[int]] = [[] for _ in wild_types]
    for i, owner in enumerate(table.owners):
        if table.variants[i] is not None:
            rows_of[owner].append(i)
    threads = torch_threads(options.threads) if options.threads else contextlib.nullcontext()
    names = list(dict.fromkeys(m for _, m, _ in columns))
    checks = structure_hook(options, names)
    with threads:
        for model_name in names:
            loaded = load_model(model_name, device=device, dtype=dtype, revision=options.revision, masked_lm=True,
                                before_weights=checks, **placing)
            scorer = VariantScorer(loaded, max_tokens=options.max_tokens, max_length=options.max_length,
                                   long_policy=options.long_policy, progress=console.progress_wanted())
            _say_map(options, loaded)
            for ident, seq in wild_types:
                where = {"path": source, "record": ident} if source is not None else {}
                # (a --fasta record: the file and record named, as embed names them; a complex: what
                # the model reads of it, its chains joined with their linkers or each chain alone)
                what = "the wild type" if source is not None else "the wild-type sequence"
                if ":" not in seq:
                    scorer.check_length(seq, what, **where)
                elif options.chains == "separate":
                    for chain in seq.split(":"):
                        scorer.check_length(chain, f"a chain of {what}", **where)
                else:
                    scorer.check_length(model_text(seq, "linker", options.linker_length),
                                        f"{what} (a complex) with its linkers", **where)
            units = store.for_model(loaded, scorer) if store is not None else None
            for column, name, strategy in columns:
                if name != model_name:
                    continue
                values = np.full(len(table.rows), np.nan)
                for k, (ident, seq) in enumerate(wild_types):
                    mine = rows_of[k]
                    values[mine] = score_wild_type(scorer, seq, [table.variants[i] for i in mine], strategy,
                                                   chains=options.chains, linker_length=options.linker_length,
                                                   store=units, structure=structures[k] if structures else None)
                results[column] = values
                console.info(f"variants: {column}: {console.counted(int(np.isfinite(values).sum()), 'variant')} scored with "
                             f"{loaded.name} ({strategy}, {scorer.compute_dtype} on {scorer.device}"
                             f"{structure_said(options.structure())})")
            del scorer, loaded
            gc.collect()
    return results


def _say_map(options, loaded) -> None:
    """Under --device-map: where each module of the model went, said on stderr (the tables of
    variants and perplexity carry no settings)."""
    if options.device_map is not None:
        from protrans_cli.placement import spread_line

        console.info(f"{loaded.name}: {spread_line(options.device_map, options.loaded_map(loaded))}")


def partial_folder(output) -> Path:
    """Where a run writing `output` keeps its finished units until it completes (`x.csv.partial/`)."""
    path = Path(output)
    return path.with_name(path.name + ".partial")


class UnitStore:
    """The finished units of work of a `protrans variants -o FILE` run, kept in FILE.partial/ (one
    .npy a unit, written through a temporary file and renamed) so that an interrupted run goes on
    with `--resume` where it stopped; removed when FILE is written. A unit's file is named by what
    its numbers depend on: the model (its hub id and commit, or its folder's path and model files'
    sizes and times, not its path), the device type and compute dtype, the window, what the unit computes of
    which wild type (`_unit_key`). A table changed between runs reuses what still applies; nothing
    computed under other settings is ever read, nor a damaged file (computed again)."""

    def __init__(self, folder: Path, *, resume: bool, command: str = "variants"):
        """`command`: the protrans command whose work the folder keeps (variants, perplexity): its
        marker file's name and the messages say it; another command's folder is refused."""
        from protrans_cli.io.files import link_to_nothing, odd_kind

        self.folder = Path(folder)
        self.command = command
        self.marker = f"protrans-{command}.json"  # (the file that says whose work the folder holds)
        if (nothing := link_to_nothing(self.folder)) is not None:
            # (was "cannot create FILE.partial: File exists", once the model had scored the first unit)
            raise UsageError(f"{self.folder} {nothing}, and is not the work of a protrans {command} run: move it "
                             f"away, or choose another {option('-o', 'output')}")
        if self.folder.exists():
            if not (self.folder / self.marker).is_file():
                raise UsageError(f"{self.folder} exists and is not the work of a protrans {command} run: move it "
                                 f"away, or choose another {option('-o', 'output')}")
            if not resume:
                raise UsageError(f"{self.folder} holds the work of an interrupted run: {resume_option()} goes on with "
                                 "it (delete it to start afresh)")
            for unit in self.folder.glob("[!.]*.npy"):  # (a unit's name; never a hidden temporary)
                # (np.load of a named pipe there waited for a writer for ever; a folder was counted as
                # kept, then "is a directory" once the model had computed the unit again)
                if (what := odd_kind(unit)) is not None:
                    raise InputError(f"is {what}, not a regular file: a run keeps a unit of its work under this "
                                     f"name, in {self.folder.name} (move it away, or delete {self.folder} to start "
                                     "afresh)", path=str(unit))
            self.kept = len(list(self.folder.glob("*.npy")))
            if self.kept:
                console.info(f"{command}: {resume_option()}: {console.counted(self.kept, 'unit')} of work kept in "
                             f"{self.folder}")
        else:
            if resume:
                console.info(f"{command}: {resume_option()}: no {self.folder}: nothing kept, everything computed")
            self.kept = 0

    def _create(self) -> None:
        """The folder, made with the first unit (a run that fails before any leaves nothing)."""
        import json

        if (self.folder / self.marker).is_file():
            return
        try:
            self.folder.mkdir(exist_ok=True)
            (self.folder / self.marker).write_text(json.dumps({"format": f"protrans-{self.command}-units"}) + "\n",
                                                   encoding="utf-8")
        except OSError as exc:
            raise RuntimeFailure(f"cannot create {self.folder}: {exc.strerror}") from None

    def for_model(self, loaded, scorer):
        """`store(key, compute, check)` for VariantScorer.score under this model and its settings."""
        import hashlib

        from protrans_cli.io.files import atomic_output

        # (a model directory has no commit: its files' sizes and times stand for it, so that one
        # trained again in place, or replaced, does not lend its old numbers to a --resume; the
        # device too, whose kernels give other last digits, as a dtype does)
        # A folder by its files alone, not its path: one moved (a project folder renamed, a run
        # copied to another cluster with its times, as mv, cp -a and rsync -a do) computed every
        # unit again after "N units of work kept"
        state = _directory_state(loaded.path_or_hub_id)
        rest = (loaded.commit or "", state, scorer.device.type, scorer.compute_dtype, scorer.max_length,
                scorer.long_policy)

        def prefix_of(path_or_hub_id: str) -> str:
            return hashlib.sha256("\n".join(map(str, (path_or_hub_id, *rest))).encode()).hexdigest()[:16]

        prefix = prefix_of("" if state else loaded.path_or_hub_id)
        # the name an earlier version gave a folder's units (its path as well): a run upgraded
        # between an interruption and its --resume reads them where the folder has not moved (they
        # were "N units of work kept", then every one computed again)
        earlier = prefix_of(loaded.path_or_hub_id) if state else None

        def store(key: str, compute, check=None):
            path = self.folder / f"{prefix}-{key}.npy"
            for name in (path, *([self.folder / f"{earlier}-{key}.npy"] if earlier else [])):
                # (a damaged file is computed again: an empty one, which a crash can leave, is numpy's
                # EOFError, which click took for a Ctrl-C, and every --resume ended "interrupted")
                with contextlib.suppress(OSError, ValueError, EOFError):
                    kept = np.load(name, allow_pickle=False)
                    if isinstance(kept, np.ndarray) and (check is None or check(kept)):
                        return kept
            value = np.asarray(compute())
            self._create()
            try:
                with atomic_output(path) as stream:  # (a temporary of its own, renamed into place)
                    np.save(stream, value, allow_pickle=False)
            except OSError as exc:
                raise RuntimeFailure(f"cannot write {path}: {exc.strerror}") from None
            return value

        return store

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


# what a model directory's numbers come from: weights, config and tokenizer files (not a log a
# training run appends to, metrics.jsonl, or its plots)
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".txt", ".model")


def _directory_state(path) -> str:
    """The name, size and modification time of each model file of a directory ("" for a hub id)."""
    import os

    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:  # a hub id (or no such folder: its model loaded from elsewhere)
        return ""
    state = []
    for entry in entries:
        if entry.name.endswith(_MODEL_FILE_SUFFIXES):
            with contextlib.suppress(OSError):
                info = entry.stat()
                state.append(f"{entry.name} {info.st_size} {info.st_mtime_ns}")
    return "\n".join(state)


def _formatted(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.6f}"


def _report_truth(table: VariantTable, written, options: VariantOptions) -> dict:
    """Spearman's rho of each score column against the measured `truth_column` (rows with a number)."""
    from protrans_cli.heads.metrics import spearman

    at = [h.strip() for h in table.header].index(options.truth_column)
    truth = np.array([_number(row[at]) for row in table.rows])
    out = {}
    for column, values in written:
        keep = np.isfinite(truth) & np.isfinite(values)
        rho = spearman(values[keep], truth[keep]) if keep.sum() > 1 else float("nan")
        out[column] = rho
        console.info(f"Spearman rho {column} vs {options.truth_column}: {rho:.4f} over "
                     f"{console.counted(int(keep.sum()), 'variant')}")
    return out


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return float("nan")
    return value


def save_scan_png(sequence: str, variants: list, columns: list[tuple[str, np.ndarray]], path, *,
                  offset: int = 1, title: str = "", staged: list | None = None) -> None:
    """The landscape of an `--all-singles` scan: per score column, a heatmap of the 20 amino acids
    (rows) at every residue (columns), coloured by score around 0 (blue: below the wild type,
    red: above), the wild-type residue's cell marked. Written atomically (a full disk leaves no
    truncated PNG; `staged`: atomic_output's)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    from protrans_cli.heads.metrics import _save_png

    length = len(sequence)
    row_of = {aa: i for i, aa in enumerate(AMINO_ACIDS)}
    width = min(40.0, max(6.0, 1.5 + 0.09 * length))
    fig = Figure(figsize=(width, 0.6 + 2.6 * len(columns)))
    axes = fig.subplots(len(columns), 1, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, columns):
        grid = np.full((len(AMINO_ACIDS), length), np.nan)
        for variant, value in zip(variants, values):
            if variant and len(variant) == 1 and variant[0].mt in row_of:
                grid[row_of[variant[0].mt], variant[0].position] = value
        finite = grid[np.isfinite(grid)]
        low = float(min(finite.min(), -1e-6)) if finite.size else -1.0
        high = float(max(finite.max(), 1e-6)) if finite.size else 1.0
        image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", interpolation="nearest",
                          norm=TwoSlopeNorm(vcenter=0.0, vmin=low, vmax=high))
        wild = [(i, row_of[c]) for i, c in enumerate(sequence) if c in row_of]
        if wild:
            ax.scatter([i for i, _ in wild], [r for _, r in wild], s=4, c="black", marker="o", linewidths=0)
        ax.set_yticks(range(len(AMINO_ACIDS)), list(AMINO_ACIDS), fontsize=6)
        step = max(1, round(length / 30 / 5) * 5) if length > 30 else 1
        ticks = [t for t in range(0, length, step)]
        ax.set_xticks(ticks, [str(t + offset) for t in ticks], fontsize=6)
        ax.set_xlabel("residue", fontsize=7)
        ax.set_title(name, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_png(fig, path, follow_link=True, staged=staged)

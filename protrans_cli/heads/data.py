"""Pair labels with embeddings, and feed them to a head without holding big files in RAM.

Matching: a label record finds its embedding by id (the HDF5 key is the escaped FASTA id); where
the id is not in the file and the record carries a sequence (NetSurfP, DeepLoc), by the sequence
checksum that `protrans embed` stores (of the sequence as read, or after the usual normalisation).
Every match is checked: the embedding's length must equal the number of per-residue labels, and
where both sides know the sequence the checksums must agree. Mismatches and missing embeddings
are one error listing the offending ids, or, with `on_mismatch="skip"`, dropped with a count;
`on_mismatch="missing"` drops only the records without an embedding (a head trained on part of
a label file), and a length or sequence that disagrees stays an error.

What is read follows the head (`tasks.input_kind`), what the targets are follows the task: a
Light Attention head of a per-protein task reads `ResidueData` with one target per protein.

Per-residue data is streamed: each batch reads its proteins' datasets from the HDF5 file (a
reader thread prefetches the next batches while the head trains on the current one), so a 1024-d
training set of 2.8 M residues (11 GB in float32) needs only a few batches in memory. When the
whole set fits under `cache_bytes` it is read once into one float32 array instead.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from itertools import islice
from typing import Iterator

import numpy as np

from protrans_cli import console
from protrans_cli.errors import InputError, located, option
from protrans_cli.heads.labels import LabelSet, by_accession, refuse_protein_labels, refuse_residue_labels, some_ids
from protrans_cli.heads.tasks import IGNORE, Task
from protrans_cli.io.h5 import (PER_PROTEIN, PER_RESIDUE, PLAIN_FLOAT_DTYPES, EmbeddingsReader, dataset_attrs,
                                dataset_id, h5_file, open_local, escape_key, read_array, sequence_checksum, stored_chains,
                                truncated_by, unescape_key)
from protrans_cli.residues import SequenceRejected, normalise

DEFAULT_CACHE_BYTES = 2 << 30


@dataclass
class Matched:
    id: str  # the label record's id
    key: str  # the dataset key in the embeddings file
    length: int  # residues
    targets: dict  # output -> (L,) int64 per residue, or int per protein
    checksum: str | None = None  # the sequence checksum embed stored with it (None: a file without)
    # the checksum of the label record's own sequence, where it gives one and `checksum` is None
    # (fit's folds and hold-out group identical sequences by it in a file that stores no checksums)
    label_checksum: str | None = None


@dataclass
class ChainRows(Matched):
    """One chain of a complex (embed --chains) read as a protein of its own: the rows
    [start, start + length) of the dataset `key`, which holds `whole` rows (every chain's)."""
    start: int = 0
    whole: int = 0


@dataclass
class MatchReport:
    matched: int = 0
    by_checksum: int = 0
    missing: list[str] = field(default_factory=list)
    wrong_length: list[str] = field(default_factory=list)
    wrong_sequence: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # embedded truncated (--long-policy truncate)
    truncated_used: list[str] = field(default_factory=list)  # the same, per protein: matched, with a note
    unlabelled: set[str] = field(default_factory=set)  # dataset keys no label record matched (a StackedKeys)
    key_ids: dict[str, str] = field(default_factory=dict)  # key -> id where the key is not the id's (bio_embeddings)
    extra_rows: list[int] = field(default_factory=list)  # embedding rows - labels, of wrong_length
    # of wrong_length, per residue: records whose own sequence has the embedding's rows, so their
    # labels do not count one per residue (not an embedding with extra rows): "id (N labels for M residues)"
    labels_off: list[str] = field(default_factory=list)
    # the embeddings file was written by protrans (embed, import-esm, merge), which writes one row
    # per residue: a label count off by one or two is the labels', not special-token rows
    rows_per_residue: bool = False
    no_label: list[str] = field(default_factory=list)  # records whose every label is empty, nan or masked
    # records whose protein embed left out and said why (the file's `failed` attribute: --long-policy
    # skip, a non-finite embedding): "id: why"
    left_out: list[str] = field(default_factory=list)
    # missing ids that an unmatched embedding's id equals but for case or Unicode normalisation
    near_misses: list[tuple[str, str]] = field(default_factory=list)
    # missing ids that are the accession of an unmatched embedding's UniProt id (sp|ACC|NAME)
    accession_misses: list[tuple[str, str]] = field(default_factory=list)
    # missing ids with `.` or `/` that an unmatched embedding's id equals with those written `_`
    # (the keys ProtTrans's prott5_embedder.py writes)
    rewritten_misses: list[tuple[str, str]] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return len(self.missing) + len(self.wrong_length) + len(self.wrong_sequence) + len(self.truncated)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} without an embedding ({some_ids(self.missing)})")
            # (label id, embedded id) pairs of three kinds of near miss: how the two ids relate, and
            # what to do about it
            for pairs, relation, remedy in (
                    (self.near_misses, "equal an embedded protein's id but for case or Unicode normalisation",
                     "ids are compared exactly"),
                    (self.accession_misses, "are the accession of an embedded protein's UniProt id",
                     "write the whole ids into the labels, or embed a FASTA whose ids are the accessions"),
                    (self.rewritten_misses, "equal an embedded protein's id with '.' and '/' written '_'",
                     "ProtTrans's embedding script writes its keys so, and as that can join two ids into one, "
                     "ids are not matched so; embed the FASTA with protrans, or write those ids into the "
                     "labels")):
                if pairs:
                    label, stored = pairs[0]
                    parts[-1] += f"; {len(pairs)} of them {relation} (label {label!r}, embedded {stored!r}): {remedy}"
        if self.wrong_length:
            parts.append(f"{len(self.wrong_length)} whose label length differs from the embedding's "
                         f"({some_ids(self.wrong_length)})")
            if self.labels_off:
                parts[-1] += (f"; {len(self.labels_off)} of them have one row per residue of the label file's own "
                              f"sequence, whose labels do not count one per residue "
                              f"({some_ids(self.labels_off, 3)})")
            if self.extra_rows and self.rows_per_residue:
                parts[-1] += ("; the embeddings were written by protrans, one row per residue: those labels do "
                              "not count one per residue")
            elif self.extra_rows and set(self.extra_rows) <= {1, 2}:  # a file that kept [CLS]/<s>, </s>/[SEP]
                more = " or ".join(map(str, sorted(set(self.extra_rows))))
                parts[-1] += (f"; each embedding has {more} row(s) more than its protein has residues, as if the "
                              "tool that wrote it kept the special-token rows ([CLS]/<s>, [SEP]/</s>); embed writes "
                              "one row per residue")
        if self.wrong_sequence:
            parts.append(f"{len(self.wrong_sequence)} whose sequence differs from the embedded one "
                         f"({some_ids(self.wrong_sequence)})")
        if self.truncated:
            parts.append(f"{len(self.truncated)} that embed truncated (--long-policy truncate; residues kept "
                         f"of all: {some_ids(self.truncated)})")
        return "; ".join(parts)


def _label_checksum(record) -> str | None:
    """The checksum of a label record's sequence as embed stores it (normalised, rare residues
    kept; as read where normalising refuses it), or None for a record without one."""
    if record.sequence is None:
        return None
    try:
        return sequence_checksum(normalise(record.sequence, rare="keep"))
    except SequenceRejected:
        return sequence_checksum(record.sequence)


def label_checksums(sequence: str) -> list[str]:
    """The checksums a label record's sequence may have been stored under, the closest first: as
    read, normalised with rare residues kept (embed's: a sequence with both gaps or a final '*'
    and a U/Z/O/B matched neither of the others), and normalised with them as X. In that order:
    a set's order (the hash seed's) matched a selenoprotein's label to the protein with X for
    its U in about half the runs, where the file held both."""
    sums = [sequence_checksum(sequence)]
    for rare in ("keep", "x"):
        try:
            sums.append(sequence_checksum(normalise(sequence, rare=rare)))
        except SequenceRejected:
            pass
    return list(dict.fromkeys(sums))


def _checksum_maps(reader: EmbeddingsReader, keys, source: str) -> tuple[dict, dict]:
    """The file's keys by sequence checksum: {checksum: keys} of the whole proteins, and
    {(checksum, full length, kept length): keys} of those embed truncated, whose checksum is their
    kept prefix's (a whole protein that happens to be that prefix is another protein)."""
    whole: dict[str, list[str]] = {}
    prefixes: dict[tuple, list[str]] = {}
    for k in sorted(keys):
        length, cut, checksum = reader.facts(k, source)
        if checksum is None:
            continue
        if cut is None or length is None:
            whole.setdefault(checksum, []).append(k)
        else:
            prefixes.setdefault((checksum, cut, length), []).append(k)
    return whole, prefixes


def _prefix_checksum(sequence: str, length: int) -> str | None:
    """The checksum embed's truncate policy stores for a protein: that of the first `length`
    residues of its normalised sequence, rare residues as they are (None: one embed refuses)."""
    try:
        return sequence_checksum(normalise(sequence, rare="keep")[:length])
    except SequenceRejected:
        return None


def _source_kind(reader: EmbeddingsReader, kind: str, task: Task | None = None) -> str:
    """The kind of embeddings to read for `kind` (what the head reads): per-protein falls back on
    mean-pooled per-residue. `task`: said in the error where it predicts per protein from
    per-residue rows (Light Attention), which a per-protein file cannot give."""
    if kind in reader.kinds:
        return kind
    if kind == PER_PROTEIN and PER_RESIDUE in reader.kinds:
        return PER_RESIDUE
    remedy = (option("embed without --per-protein (or with --per-residue too)", "embed with per_residue=True")
              if kind == PER_RESIDUE else
              option("embed with --per-protein (or without --per-residue)", "embed with per_protein=True"))
    if kind == PER_RESIDUE and task is not None and task.kind == PER_PROTEIN:
        remedy = f"a light-attention head reads every residue's row, not the mean: {remedy}"
    if reader.layout == "stacked":  # (it holds nothing else)
        remedy = "a stacked file holds per-protein vectors only: embed with --layout grouped for per-residue rows"
    raise InputError(f"has no {kind} embeddings (it holds {', '.join(reader.kinds)}): {remedy}", path=reader.path)


class StackedKeys:
    """The keys of a stacked file's proteins but `but` (keys): match_labels' keys of the file and
    its report's `unlabelled`, looked up in the file's index of its ids (StackedView.row_of), not a
    set of every key (fit on a labelled part of a file of 1,000,000 proteins held about 600 bytes
    a protein of them all). Usable once the file is closed (fit reports them after training)."""

    def __init__(self, view, but=frozenset(), rows: int | None = None):
        self.view, self.rows = view, len(view) if rows is None else rows
        view.index()  # (built while the file is open)
        self.but = frozenset(k for k in but if self._in_file(k))

    def _in_file(self, key) -> bool:
        return (key is not None and escape_key(ident := unescape_key(key)) == key
                and self.view.row_of(ident) is not None)

    def __contains__(self, key) -> bool:
        return key not in self.but and self._in_file(key)

    def ids(self) -> Iterator[str]:
        """The ids of the keys, sorted (as `sorted(unescape_key(k) for k in self)`)."""
        return (ident for ident in self.view.sorted_ids() if escape_key(ident) not in self.but)

    def __iter__(self) -> Iterator[str]:
        return (escape_key(ident) for ident in self.ids())

    def __len__(self) -> int:
        return self.rows - len(self.but)

    def __sub__(self, keys) -> StackedKeys:
        left = StackedKeys(self.view, keys, self.rows)
        left.but |= self.but
        return left

    def __and__(self, other):
        # (of one file: the keys neither leaves out; of a set, the set's keys among these)
        return self - other.but if isinstance(other, StackedKeys) else {k for k in other if k in self}

    __rand__ = __and__


class _SequenceKeys:
    """The keys of a file's proteins by sequence checksum, gathered on first use, and the key a
    label record whose id is not in the file finds by its sequence (match_labels' rule)."""

    def __init__(self, reader: EmbeddingsReader, keys: set, source: str):
        self.reader, self.keys, self.source = reader, keys, source
        self.by_checksum: dict[str, list[str]] | None = None
        self.by_prefix: dict[tuple, list[str]] = {}
        self.kept_lengths: list[int] = []  # by_prefix's kept lengths, and its keys by checksum alone (the fallback)
        self.prefix_keys: dict[str, list[str]] = {}

    def key(self, record, taken: set, by_id: set) -> str | None:
        """The key of `record`'s sequence: one not `taken` (matched already) nor named by a label
        record's id (`by_id`) while there is one; None where no protein has that sequence."""
        if self.by_checksum is None:
            self.by_checksum, self.by_prefix = _checksum_maps(self.reader, self.keys, self.source)
            # (once: gathered for each record, they took a pass over every truncated protein,
            # 8 s for 10,000 records, growing with the square)
            self.kept_lengths = sorted({kept for _, _, kept in self.by_prefix})
            for (c, _, _), found in self.by_prefix.items():
                self.prefix_keys.setdefault(c, []).extend(found)
        # Several proteins of one sequence: each label takes a key of its own while there are
        # any (the same rows all the same), so that none of them is said to have no label.
        candidates = [k for c in label_checksums(record.sequence) for k in self.by_checksum.get(c, ())]
        if not candidates and self.by_prefix:
            # a protein embed truncated: its checksum is its kept prefix's, and its full
            # length is recorded (a label file without ids, FLIP's, found no embedding for it)
            full = _residue_count(record)
            candidates = [k for kept in self.kept_lengths if full and full > kept
                          for k in self.by_prefix.get((_prefix_checksum(record.sequence, kept), full, kept), ())]
            if not candidates:  # the label file's sequence is the kept prefix itself (as before)
                candidates = [k for c in label_checksums(record.sequence) for k in self.prefix_keys.get(c, ())]
        return next((k for k in candidates if k not in taken and k not in by_id),
                    next((k for k in candidates if k not in taken), candidates[0] if candidates else None))


def embedding_ids(label_set: LabelSet, embeddings) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(label record id, id of the protein its labels go to) in the per-protein embeddings files
    `embeddings`, for commands that carry any label column without a task (knn, project), in two
    lists. First the records found by id under a key that names the protein otherwise: the
    ProtTrans script's whole header lines, which key_for finds by their first word (the protein
    `B9DFG5 Cell_membrane-M` of the record `B9DFG5`, as fit finds its embedding). Then the records
    whose id none of the files holds but whose sequence one does (match_labels' rule: a FLIP
    CSV's rows, keyed by sequence, beside embeddings made under accession ids). A protein a
    record names by id takes no other record's labels, nor does one matched already."""
    with_sequence = any(r.sequence for r in label_set.records)
    readers: list[EmbeddingsReader] = []
    renamed: list[tuple[str, str]] = []
    try:
        files = []
        named_somewhere: set[str] = set()  # record ids some file holds
        for path in embeddings:
            readers.append(reader := EmbeddingsReader(path))
            own = "layout" in reader.attrs  # embed's own file: every key is its id's
            if own and not with_sequence:  # (a table of ids: nothing to look up)
                continue
            source = _source_kind(reader, PER_PROTEIN)
            keys = set(reader.keys(source))
            # (embed's own file: every key is its id's, looked up in the set of keys; key_for reads
            # the file for each record, 0.2 ms, which a proteome's labels felt)
            key_of = (lambda ident: escape_key(ident)) if own else (lambda ident: reader.key_for(ident, source))
            named = {r.id: key for r in label_set.records if (key := key_of(r.id)) in keys}
            named_somewhere.update(named)
            if not own:
                # (knn and project name proteins by the file's ids: the label went to no protein)
                renamed += [(ident, protein) for ident, key in named.items()
                            if (protein := dataset_id(key, reader.dataset(ident, source).attrs)) != ident]
            files.append((reader, source, keys, set(named.values())))
        if not with_sequence:
            return renamed, []
        # (a record found by id in one file labels that protein only, not its sequence's elsewhere)
        unnamed = [r for r in label_set.records if r.sequence and r.id not in named_somewhere]
        found: list[tuple[str, str]] = []
        for reader, source, keys, by_id in files if unnamed else ():
            by_sequence = _SequenceKeys(reader, keys, source)
            key_ids = {key: ident for ident, key in reader.foreign_ids(source).items()}
            taken = set(by_id)
            for record in unnamed:
                key = by_sequence.key(record, taken, by_id)
                if key is not None and key not in taken:  # (one protein, one label: the first record's)
                    taken.add(key)
                    found.append((record.id, key_ids.get(key) or unescape_key(key)))
    finally:
        for reader in readers:
            reader.close()
    return renamed, found


class TrainingSet:
    """The training proteins' ids and stored sequence checksums (read when the labels were
    matched), to find evaluation proteins that are training proteins too (`overlap`)."""

    def __init__(self, items: list[Matched]):
        self.ids = {m.id for m in items}
        self.checksums = {m.checksum for m in items if m.checksum is not None}

    def overlap(self, eval_items: list[Matched]) -> tuple[list[str], list[str]]:
        """(same id, same sequence under another id). NetSurfP's sets share proteins (TS115 and
        CASP12 four), and a head validated or tested on proteins it was trained on reports scores
        that are not independent of training."""
        same_id = [m.id for m in eval_items if m.id in self.ids]
        return same_id, [m.id for m in eval_items if m.id not in self.ids and m.checksum in self.checksums]


def match_labels(label_set: LabelSet, reader: EmbeddingsReader, task: Task, *, kind: str | None = None,
                 on_mismatch: str = "error", evaluating: bool = False) -> tuple[list[Matched], MatchReport]:
    """Pair every label record with its embedding, checked; see the module docstring.
    `kind`: the embeddings the head reads (`tasks.input_kind`; default the task's kind).
    `evaluating`: the labels score a head (fit's --valid/--test, predict --labels), so an output
    they hold no labels for is left with nothing to evaluate rather than refused."""
    if task.kind != PER_RESIDUE:
        refuse_residue_labels(label_set, task.name)
    lookup = _Lookup.of(label_set, reader, task, kind)
    unlabelled = frozenset()
    if task.kind == PER_RESIDUE:
        unlabelled = _check_residue_labels(label_set, lookup, task, evaluating)
    report = MatchReport(rows_per_residue="protrans_version" in reader.attrs)
    matched: list[Matched] = []
    for record in label_set.records:
        item = _match_record(record, lookup, task, unlabelled, label_set.path, report)
        if item is not None:
            matched.append(item)
    report.matched = len(matched)
    report.unlabelled = _unlabelled_keys(lookup, matched, report)
    _say_left_out(report, label_set, reader)
    _find_near_misses(report, lookup)
    if report.problems:
        _refuse_or_say_mismatches(report, matched, label_set, reader, on_mismatch)
    if not matched:
        _refuse_nothing_matched(report, label_set, reader, on_mismatch)
    return matched, report


@dataclass
class _Lookup:
    """How match_labels finds a label record's embedding: the file's keys, by the record's id (or
    another tool's key for it), else by its sequence; and what the records matched so far took."""

    reader: EmbeddingsReader
    source: str  # the embeddings read: per_residue or per_protein
    keys: StackedKeys | set[str]
    other_ids: dict[str, str]  # another tool's keys (bio_embeddings' md5s, biotrainer's positions...)
    by_sequence: _SequenceKeys
    named: dict[str, str | None]  # record id -> the key it names
    # the keys that label records name by id: a record matched by sequence takes none of them
    # while there are others (it left another protein of that sequence "without a label")
    by_id: set[str]
    taken: set[str] = field(default_factory=set)  # keys matched so far
    # keys whose label records were refused, the protein being theirs
    passed_over: set[str] = field(default_factory=set)
    failed: dict[str, str] | None = None  # (the file's `failed` attribute, read when first needed)

    @classmethod
    def of(cls, label_set: LabelSet, reader: EmbeddingsReader, task: Task, kind: str | None) -> "_Lookup":
        source = _source_kind(reader, kind or task.kind, task)
        # (a stacked file's keys, every protein's, are looked up in the file, not held in a set)
        keys = StackedKeys(reader._stacked) if reader.layout == "stacked" else set(reader.keys(source))
        other_ids = reader.foreign_ids(source)
        by_sequence = _SequenceKeys(reader, keys, source)
        # (another tool's keys: by their attributes first; ids are unique in a label set)
        named = {r.id: reader.key_for(r.id, source) for r in label_set.records}
        by_id = {k for k in named.values() if k in keys}
        return cls(reader, source, keys, other_ids, by_sequence, named, by_id)


def _check_residue_labels(label_set: LabelSet, lookup: _Lookup, task: Task, evaluating: bool) -> frozenset:
    """Per-residue labels: refused where they are a protein's, checked against the task's states;
    returns the outputs they hold no labels for (scored without them)."""
    _refuse_protein_labels(label_set, lookup.reader, lookup.source, lookup.keys, lookup.named, task.name)
    unlabelled = task.check_label_states(label_set.records, label_set.path, evaluating=evaluating)
    if unlabelled:
        console.info(f"{label_set.path}: holds 3-state labels only: {', '.join(sorted(unlabelled))} has "
                     "nothing to evaluate, ss3 is scored")
    return unlabelled


def _match_record(record, lookup: _Lookup, task: Task, unlabelled: frozenset, path,
                  report: MatchReport) -> Matched | None:
    """A label record paired with its embedding, checked; or None, with why in `report` (no usable
    label, no embedding, another sequence or length, labels for residues cut off)."""
    record, label_chains, targets, label_length = _record_targets(record, task, unlabelled, path)
    if not has_label(targets):
        # (an empty or nan label, every residue masked: left out by the loss and the metrics,
        # it was counted among the proteins trained on and drawn into --valid-fraction)
        report.no_label.append(record.id)
        return None
    key, via_checksum = _embedding_key(record, lookup, report)
    if key is None:
        return None
    length, cut, stored = lookup.reader.facts(key, lookup.source)
    if cut is not None:  # its checksum is the kept prefix's: not another sequence
        return _truncated_match(record, key, targets, (length, cut, stored), lookup, task, report)
    if record.sequence is not None and not via_checksum and stored is not None:
        if stored not in label_checksums(record.sequence):
            report.wrong_sequence.append(record.id)
            return None
    if label_length is not None and length is not None and label_length != length:
        report.wrong_length.append(f"{record.id} ({label_length} vs {length})")
        if task.kind == PER_RESIDUE and record.sequence is not None and _residue_count(record) == length:
            # (the labels are off, not the embedding: it was said to have kept special-token rows)
            report.labels_off.append(f"{record.id} ({label_length} labels for {length} residues)")
        else:
            report.extra_rows.append(length - label_length)
        lookup.passed_over.add(key)
        return None
    if label_chains is not None:
        _check_chains(lookup.reader, lookup.source, key, label_chains, record, path)
    if length is None:
        length = label_length or 0
    report.by_checksum += via_checksum
    lookup.taken.add(key)
    return Matched(record.id, key, length, targets, stored, _label_checksum(record) if stored is None else None)


def _record_targets(record, task: Task, unlabelled: frozenset, path) -> tuple:
    """(the record, a complex's chain lengths or None, its targets, the residues they label or None);
    a per-residue record's `:`s between chains are taken out of it."""
    label_chains = None  # a complex's chain lengths, where its labels have ':'s between its chains
    with located(path):
        if task.kind == PER_RESIDUE:
            record, label_chains = _label_chains(record)
            targets = task.residue_targets(record, unlabelled)
            label_length = len(next(iter(targets.values())))
        else:
            targets = task.protein_targets(record)
            # the residues embed computes rows for (a final '*' and gaps dropped, as it drops them)
            label_length = _residue_count(record) if record.sequence is not None else None
    return record, label_chains, targets, label_length


def _embedding_key(record, lookup: _Lookup, report: MatchReport) -> tuple[str | None, bool]:
    """The key of a record's embedding, by its id or else its sequence (True: by sequence); None
    where it has none, with why in `report` (embed left it out, or none matches)."""
    key = lookup.named[record.id]
    via_checksum = False
    if key not in lookup.keys and record.sequence is not None:
        key = lookup.by_sequence.key(record, lookup.taken, lookup.by_id)
        via_checksum = key is not None
    if key is None or key not in lookup.keys:
        if lookup.failed is None:
            lookup.failed = lookup.reader.failed()
        if record.id in lookup.failed:  # embed left it out, and said why: not an id that matches nothing
            report.left_out.append(f"{record.id}: {lookup.failed[record.id]}")
        else:
            report.missing.append(record.id)
        return None, False
    return key, via_checksum


def _truncated_match(record, key: str, targets: dict, facts: tuple, lookup: _Lookup, task: Task,
                     report: MatchReport) -> Matched | None:
    """A record whose embedding embed truncated (`facts`: its length, the length cut from, its checksum)."""
    length, cut, stored = facts
    if task.kind == PER_RESIDUE:  # labels for residues that have no row
        report.truncated.append(f"{record.id} ({length} of {cut})")
        lookup.passed_over.add(key)
        return None
    # One label for the protein, and its embedding the mean of the residues kept: DeepLoc's
    # proteins over the model's limit were refused (13% of a set embedded with
    # --long-policy truncate --max-length 1000), though truncating them is the usual remedy.
    if record.sequence is not None and stored is not None and length is not None \
            and stored != _prefix_checksum(record.sequence, length):
        report.wrong_sequence.append(record.id)
        return None
    report.truncated_used.append(f"{record.id} ({length} of {cut})")
    lookup.taken.add(key)
    return Matched(record.id, key, length or 0, targets, stored, _label_checksum(record) if stored is None else None)


def _unlabelled_keys(lookup: _Lookup, matched: list[Matched], report: MatchReport) -> set[str]:
    """The proteins of the file that no label record matched."""
    # (the keys of records without a label are said so here, not again as "no label in FILE")
    # (a protein whose labels were refused as truncated or of another length has a label: it is
    # said so among the mismatches, not again as "no label")
    unlabelled = (lookup.keys - {m.key for m in matched} - {lookup.named[i] for i in report.no_label}
                  - lookup.passed_over)
    if lookup.reader.layout != "stacked":  # (a group among the proteins is no protein without a label)
        unlabelled = {k for k in unlabelled if lookup.reader._is_dataset(lookup.source, k)}
    return unlabelled


def _say_left_out(report: MatchReport, label_set: LabelSet, reader: EmbeddingsReader) -> None:
    """The records left out that are no mismatch: no usable label, or embed left them out; and
    the labelled proteins read truncated."""
    if report.no_label:
        console.info(f"{label_set.path}: {len(report.no_label)} record(s) give no usable label (empty or nan, "
                     "every residue masked, or a dual location under --dual skip) and are left out "
                     f"({some_ids(report.no_label)})")
    if report.truncated_used:
        console.info(f"{reader.path}: {len(report.truncated_used)} labelled protein(s) were truncated by "
                     f"{truncated_by(reader.attrs)}: the head reads the residues kept "
                     f"({some_ids(report.truncated_used, 3)})")
    if report.left_out:
        console.warn(f"{label_set.path} vs {reader.path}: {len(report.left_out)} label record(s) have no embedding "
                     f"because embed left them out ({some_ids(report.left_out, 3)}): left out")


def _find_near_misses(report: MatchReport, lookup: _Lookup) -> None:
    """The stored ids that the records without an embedding were probably meant to name."""
    report.key_ids = {key: ident for ident, key in lookup.other_ids.items()}
    if report.missing and report.unlabelled:
        embedded = [report.key_ids.get(key) or unescape_key(key) for key in sorted(report.unlabelled)]
        # (a group among the proteins named like a label record is no protein: no near miss)
        report.near_misses = [(ident, stored) for ident, stored in _near_misses(report.missing, embedded)
                              if lookup.reader.key_for(stored, lookup.source) is not None]
        report.accession_misses = _accession_misses(report.missing, embedded)
        report.rewritten_misses = _rewritten_misses(report.missing, embedded)


def _refuse_or_say_mismatches(report: MatchReport, matched: list[Matched], label_set: LabelSet,
                              reader: EmbeddingsReader, on_mismatch: str) -> None:
    """The records that do not match: refused, or left out as `on_mismatch` allows."""
    where = f"{label_set.path} vs {reader.path}"
    only_missing = report.problems == len(report.missing)
    if on_mismatch == "skip":
        console.warn(f"{where}: skipped {console.counted(report.problems, 'label record')}: {report.describe()}")
    elif on_mismatch == "missing" and only_missing:
        # (none matched: the error below or the caller's warning (fit's own validation and test
        # records) says it; an info line of "0 matched" came just before it, near-identical to
        # the training set's)
        if matched:
            console.info(f"{where}: {len(report.missing)} label record(s) without an embedding left out "
                         f"(--only-embedded; {len(matched)} matched)")
    else:
        how = ("--only-embedded (on_mismatch='missing') leaves out the records without an embedding, "
               "--skip-mismatched ('skip') every mismatch" if only_missing
               else "--skip-mismatched (on_mismatch='skip') leaves them out")
        verb = "does" if report.problems == 1 else "do"  # ("1 label records do not match")
        raise InputError(f"{console.counted(report.problems, 'label record')} {verb} not match the embeddings: "
                         f"{report.describe()} ({how})", path=where)


def _refuse_nothing_matched(report: MatchReport, label_set: LabelSet, reader: EmbeddingsReader,
                            on_mismatch: str) -> None:
    """No record matched: why, as precisely as the report says it."""
    if report.left_out and not report.problems:
        raise InputError(f"every labelled protein ({len(report.left_out)}) was left out by embed (its 'failed' "
                         "attribute, above): none has an embedding", path=f"{label_set.path} vs {reader.path}")
    if report.no_label and len(report.no_label) == len(label_set.records):
        # (they were never matched: "no label record matched an embedding" sent the user
        # looking at ids, where the labels were empty, nan or masked)
        raise InputError(f"none of its {len(report.no_label)} label record(s) gives a usable label (empty or "
                         "nan, every residue masked, or a dual location under --dual skip): nothing to train on "
                         "or score", path=label_set.path)
    why = ""
    if on_mismatch == "missing" and report.missing and report.problems == len(report.missing):
        why = (f": none of its {console.counted(len(report.missing), 'label record')} has one "
               f"({option('--only-embedded', 'on_mismatch=' + repr('missing'))} left them out)")
    raise NothingMatched(f"no label record matched an embedding{why}", path=f"{label_set.path} vs {reader.path}",
                         report=report)


class NothingMatched(InputError):
    """No label record of a set matched an embedding (match_labels): fit leaves out the label
    file's own validation or test records so under --only-embedded or --skip-mismatched, where
    none of them was embedded (or none matched). `report`: the MatchReport, what was left out."""

    def __init__(self, message: str, *, report=None, **where):
        super().__init__(message, **where)
        self.report = report


def _refuse_protein_labels(label_set: LabelSet, reader, source: str, keys, named: dict, task_name: str) -> None:
    """refuse_protein_labels, each protein's residues counted from its sequence where the label
    file has one (the rows embed makes of it), else its embedding's rows."""
    def residues_of(record):
        if record.sequence is not None:
            return _residue_count(record)
        if named.get(record.id) not in keys:
            return None
        try:
            return reader.facts(named[record.id], source)[0]
        except KeyError:
            return None

    refuse_protein_labels(label_set, task_name, residues_of)


def _label_chains(record) -> tuple:
    """(the record without ':'s in its per-residue labels, its chain lengths) where its labels have
    a ':' between a complex's chains (as predict writes a complex's states), else (record, None).
    Every label string must break at the same places; an empty chain is refused."""
    import dataclasses

    texts = {name: text for name, text in record.labels.items() if isinstance(text, str)}
    if not any(":" in text for text in texts.values()):
        return record, None
    lengths, first = None, None
    for name, text in texts.items():
        these = tuple(len(part) for part in text.split(":"))
        if lengths is None:
            lengths, first = these, name
        elif these != lengths:
            raise InputError(f"its {name} labels break into chains (':') otherwise than its {first} labels "
                             f"({', '.join(map(str, these))} vs {', '.join(map(str, lengths))} residues)",
                             record=record.id, line=record.line)
    if min(lengths) == 0:
        raise InputError("an empty chain in its labels (a ':' at the start or the end, or '::')",
                         record=record.id, line=record.line)
    # (a label string over several lines (FLIP's FASTA): its line map's offsets moved back by the
    # ':'s before them, so that a bad letter is named by its own line, not a later chain's)
    label_lines = getattr(record, "label_lines", ())
    if label_lines and isinstance(record.labels.get("label"), str):
        text = record.labels["label"]
        label_lines = tuple((start - text.count(":", 0, start), lineno) for start, lineno in label_lines)
    # (a mask read beside them has a position for each of their letters and ':'s (labels._mask_bits):
    # its positions at the ':'s go with them)
    text = texts[first]
    residues = np.array([c != ":" for c in text], dtype=bool)
    masks = {}
    if getattr(record, "mask", None) is not None and len(record.mask) == len(text):
        masks["mask"] = record.mask[residues]
    if getattr(record, "output_masks", None):
        masks["output_masks"] = {name: m[residues] if m is not None and len(m) == len(text) else m
                                 for name, m in record.output_masks.items()}
    return dataclasses.replace(record, labels={name: text.replace(":", "") if isinstance(text, str) else text
                                               for name, text in record.labels.items()},
                               **({"label_lines": label_lines} if label_lines else {}), **masks), lengths


def _check_chains(reader, source: str, key: str, lengths: tuple, record, path) -> None:
    """Labels with ':'s between a complex's chains (`lengths`) match its embedding's chains (its
    `chains` attribute, embed --chains'); a mismatch is an error naming the record."""
    attrs = dataset_attrs(reader._group(source), key)[0] if reader.layout != "stacked" else {}
    stored = stored_chains(attrs)
    if stored != tuple(lengths):
        shown = ", ".join(map(str, lengths))
        embedded = (f"its embedding's chains are of {', '.join(map(str, stored))}" if stored is not None else
                    f"its embedding in {reader.path} is of one chain (no chains attribute: embed it with "
                    f"{option('--chains linker', 'chains=linker')} or {option('--chains separate', 'chains=separate')})")
        raise InputError(f"its labels have chains of {shown} residues (':' between them), where {embedded}",
                         path=str(path), record=record.id, line=record.line)


def has_label(targets: dict) -> bool:
    """Whether any output of a record's targets has a label: a class index other than IGNORE,
    or a value other than NaN (per protein a number, per residue an array)."""
    for target in targets.values():
        values = np.asarray(target)
        if np.issubdtype(values.dtype, np.floating):
            if (~np.isnan(values)).any():
                return True
        elif (values != IGNORE).any():
            return True
    return False


def _near_misses(missing: list[str], embedded: list[str]) -> list[tuple[str, str]]:
    """(label id, embedded id) pairs that differ only in case or Unicode normalisation (an id
    typed `Q9Xé` with a combining accent in one file and a precomposed é in the other)."""
    from protrans_cli.io.files import caseless

    stored = {}
    for ident in embedded:
        stored.setdefault(caseless(ident), ident)
    return [(ident, stored[caseless(ident)]) for ident in missing if caseless(ident) in stored]


def _accession_misses(missing: list[str], embedded: list[str]) -> list[tuple[str, str]]:
    """(label id, embedded id) pairs where the label id is the accession of a UniProt FASTA id
    (`sp|P69905|HBA_HUMAN`, the id embed keeps whole), as tables keyed by accession have it."""
    accessions = by_accession(embedded)
    return [(ident, accessions[ident]) for ident in missing if ident in accessions]


_REWRITTEN = str.maketrans({".": "_", "/": "_"})


def _rewritten_misses(missing: list[str], embedded: list[str]) -> list[tuple[str, str]]:
    """(label id, embedded id) pairs where the embedded id is the label id with `.` and `/` written
    `_`, as ProtTrans's prott5_embedder.py writes its keys (`NP_000509.1` -> `NP_000509_1`)."""
    unmatched = set(embedded)
    return [(ident, ident.translate(_REWRITTEN)) for ident in missing
            if ident.translate(_REWRITTEN) != ident and ident.translate(_REWRITTEN) in unmatched]


def near_miss_note(missing: list[str], stored: list[str]) -> str:
    """"; N of them ..." for each way some of the `missing` ids relate to `stored` ids (case or
    Unicode normalisation, a UniProt id's accession, ProtTrans's script's '_' for '.' and '/'),
    with one example each; "" where none does (export --ids: ids such as NP_000509.1 given for
    the script's NP_000509_1 keys were "not in" the file without a word of why)."""
    notes = []
    for pairs, relation in (
            (_near_misses(missing, stored), "equal a stored id but for case or Unicode normalisation"),
            (_accession_misses(missing, stored), "are the accession of a stored UniProt id"),
            (_rewritten_misses(missing, stored), "equal a stored id with '.' and '/' written '_' (as ProtTrans's "
                                                 "embedding script writes its keys)")):
        if pairs:
            given, found = pairs[0]
            notes.append(f"; {len(pairs)} of them {relation} (given {given!r}, stored {found!r})")
    return "".join(notes)


def warn_unfinished(embeddings) -> None:
    """An `OUT.partial` of an interrupted or running embed holds only the proteins done so far:
    usable, but never silently taken for the whole set."""
    path = str(embeddings)
    if path.endswith(".partial"):
        console.warn(f"{path} is the unfinished output of an interrupted embed (its proteins so far only); "
                     "finish it with " + option("the same embed command and --resume",
                                                "the same embed call and resume=True"))


def report_unlabelled(embeddings, labels, reports: list[MatchReport], what: str, *,
                      set_aside: set[str] = frozenset()) -> None:
    """Say how many proteins of `embeddings` none of `reports` (the label sets read from it)
    matched: not an error (a file embedded once for several tasks), but never silent.
    `set_aside`: keys of labelled proteins left out on purpose (a split no step reads), said so
    where they are left out, not counted here as without a label."""
    if not reports:
        return
    left = reports[0].unlabelled
    for report in reports[1:]:
        left = left & report.unlabelled
    left = left - set(set_aside)
    if left:
        names = {k: v for r in reports for k, v in r.key_ids.items()}  # md5 keys: their original ids
        # (a stacked file's: the first few of its sorted ids, not all of them sorted)
        ids = islice(left.ids(), 5) if isinstance(left, StackedKeys) else sorted(
            names.get(k) or unescape_key(k) for k in left)
        console.info(f"{embeddings}: {len(left)} protein(s) have no label in {labels} and are {what} "
                     f"({some_ids(ids, count=len(left))})")


def recorded_layers(reader: EmbeddingsReader) -> tuple[list[int] | None, int | None]:
    """(layers, num_hidden_states) as embed records them (None where absent): the layers counted
    from the last (-1 the last), among that many hidden states."""
    stored, states = reader.attrs.get("layers"), reader.attrs.get("num_hidden_states")
    try:
        return (None if stored is None else [int(x) for x in np.atleast_1d(stored)],
                None if states is None else int(states))
    except (TypeError, ValueError):  # (another tool's attribute, or an edited one: a traceback)
        raise InputError(f"its `layers` ({str(stored)[:40]}) and `num_hidden_states` ({str(states)[:40]}) "
                         "attributes are not layer numbers (a damaged file, or not embed's)", path=reader.path) from None


def stored_layer_index(reader: EmbeddingsReader, layer: int, remedy: str | None = None, *, exact: bool = False) -> int:
    """Where model layer `layer` (as given to `embed --layer`) lies on the file's layer axis.
    `remedy` (None: choose one of those with --layer, or to a library call `layer`) ends the refusal.
    `exact`: -1 means the last layer only (a head that knows its layer), not also a file's lone layer.

    `embed --layer -1 --layer -2` stores layers in that order, so layer -1 is index 0: indexing
    the axis with the layer number itself picked the wrong layer.
    """
    if reader.attrs.get("layers") is None:  # a file written elsewhere: the number is an index into its layer axis
        return layer
    stored, states = recorded_layers(reader)
    # `embed --layer 0` is stored as -num_hidden_states: accept the number the user gave embed.
    wanted = layer - states if layer >= 0 and states is not None else layer
    if wanted in stored:
        return stored.index(wanted)
    if len(stored) == 1 and wanted == -1 and not exact:  # the default, with one layer stored (no layer axis)
        return 0
    counted = f" of {int(states)} hidden states, 0 = {-int(states)}" if states is not None else ""
    remedy = f"choose one of those with {option('--layer', 'layer')}" if remedy is None else remedy
    raise InputError(f"holds layer(s) {', '.join(map(str, stored))}{counted}, not layer {layer} ({remedy})",
                     path=reader.path)


def _residue_count(record) -> int | None:
    """The rows embed made of the record's sequence; None for one embed refuses (no embedding:
    reported as missing, or skipped with --skip-mismatched, as before)."""
    try:
        return len(normalise(record.sequence, rare="keep"))
    except SequenceRejected:
        return None


def read_rows(group, key: str, base_ndim: int, layer: int, expected: tuple, path: str, ident: str, *,
              layers_recorded: bool = True, obj=None) -> np.ndarray:
    """One dataset's rows at `layer` ((L, D) for base_ndim 2, (D,) for 1), its shape checked
    against `expected` ((L, D) or (D,); None where a size is not known) BEFORE anything is read.
    A dataset's shape is only a claim: a few KB of HDF5 (an unwritten or compressed dataset) can
    declare gigabytes or terabytes, and such a dataset was read whole into memory and refused
    only after (or the job was killed for memory first). Datasets written with several --layer
    have a leading layer axis ((n_layers, L, D) / (n_layers, D)): only the one used is read.
    The shape comes from h5py's low-level calls, and a one-layer float dataset is read through
    them too (`read_array`: h5py's dictionary interface cost about twice as much per protein).
    `layers_recorded`: the file says which layers it holds (embed's `layers` attribute); in another
    tool's file `layer` indexes the layer axis, and must exist there. `obj`: the key's low-level
    object, where the caller has opened it with `open_local(..., data=True)` (its attributes read)."""
    import h5py

    if obj is None:
        obj = open_local(group, key.encode("utf-8"), data=True)  # (values from other files refused)
    shape = tuple(obj.shape) if isinstance(obj, h5py.h5d.DatasetID) else ()
    if isinstance(obj, h5py.h5d.DatasetID) and obj.dtype.kind not in "fiub":
        # (text was converted where it held numbers, and was a traceback where it did not;
        # another tool's one-hot rows as integers or booleans are numbers)
        raise InputError(f"embedding holds {obj.dtype} values, not numbers (a damaged file, or not embeddings)",
                         path=path, record=ident)
    if not layers_recorded:
        _check_foreign_layer(shape, base_ndim, layer, path, ident)
    rows = shape[1:] if len(shape) == base_ndim + 1 else shape
    if len(rows) != base_ndim or any(want is not None and got != want for got, want in zip(rows, expected)):
        shown = "x".join(str(x) for x in expected) if None not in expected else f"{base_ndim} axes"
        raise InputError(f"embedding has shape {'x'.join(map(str, shape)) or 'scalar'}, expected {shown} "
                         "(a damaged file, or another protein's rows)", path=path, record=ident)
    return group[key][layer] if len(shape) == base_ndim + 1 else read_array(group, key, obj, shape)


def _check_foreign_layer(shape: tuple, base_ndim: int, layer: int, path: str, ident: str) -> None:
    """--layer against the array of a file that records no layers (another tool's): a leading
    layer axis must hold that index, an array without one holds one layer (-1 or 0); a 2-D array
    where per-protein (D,) vectors are read is no layer axis but another kind (the last residue's
    row was taken as the protein's vector)."""
    if len(shape) == base_ndim + 1 and base_ndim == 1:
        raise InputError(f"holds a {'x'.join(map(str, shape))} array where per-protein (D,) vectors are read, and "
                         "no `layers` attribute says its first axis is layers (a flat file mixing per-residue and "
                         "per-protein arrays?)", path=path, record=ident)
    if len(shape) == base_ndim + 1 and not -shape[0] <= layer < shape[0]:
        raise InputError(f"holds {shape[0]} layers on its first axis (the file records no layer numbers: a layer "
                         f"indexes that axis, {-shape[0]} to {shape[0] - 1}), not layer {layer}", path=path,
                         record=ident)
    if len(shape) == base_ndim and layer not in (-1, 0):
        # (predict has no --layer: there the layer is the head's, from fit's --layer)
        raise InputError(f"holds one layer (no layer axis, no layer numbers recorded), not layer {layer}: "
                         f"{_one_layer_remedy(layer)}", path=path, record=ident)


def _check_stacked_layer(shape: tuple, layer: int, path: str, layers_recorded: bool) -> None:
    """--layer (the stored index `stored_layer_index` gives, or in a file that records no layers
    the number itself) against a stacked file's (N, D) or (N, n_layers, D) array, as
    `_check_foreign_layer` checks a grouped file's datasets: an index past the layer axis was a
    traceback, and any --layer on a file of one layer and no layer numbers was taken silently."""
    if len(shape) == 3 and not -shape[1] <= layer < shape[1]:
        raise InputError(f"holds {shape[1]} layers on the layer axis of its per_protein array (a layer indexes that "
                         f"axis, {-shape[1]} to {shape[1] - 1}), not layer {layer}", path=path)
    if len(shape) == 2 and not layers_recorded and layer not in (-1, 0):
        raise InputError(f"holds one layer (no layer axis, no layer numbers recorded), not layer {layer}: "
                         f"{_one_layer_remedy(layer)}", path=path)


def embed_layer(layer: int) -> str:
    """How a message says to embed layer `layer`: embed's flag at the command line, EmbedOptions'
    field to a library call (whose `layers` is a tuple)."""
    return option(f"--layer {layer}", f"layers=({layer},)")


def _one_layer_remedy(layer: int) -> str:
    return f"fit a head on it with {option('--layer -1', 'layer=-1')} (the default), or embed with {embed_layer(layer)}"


@dataclass
class Batch:
    x: "object"  # torch.Tensor (B, L, D) per residue or (B, D) per protein, float32
    mask: "object"  # torch.Tensor (B, L) bool per residue, None per protein
    targets: dict  # output -> torch.Tensor (B, L) or (B,) int64, IGNORE where not counted
    index: np.ndarray  # (B,) positions of these proteins in the data's item list

    def to(self, device) -> "Batch":
        """The tensors on `device` (pinned and copied asynchronously to a GPU); self on the CPU."""
        if str(device) == "cpu":
            return self

        def move(t):
            return t.pin_memory().to(device, non_blocking=True) if str(device).startswith("cuda") else t.to(device)

        return Batch(move(self.x), None if self.mask is None else move(self.mask),
                     {k: move(v) for k, v in self.targets.items()}, self.index)


class ResidueData:
    """Per-residue embeddings + targets, streamed from HDF5 in residue-budget batches. The
    targets are per residue ((B, L) a batch), or per protein for a Light Attention head of a
    per-protein task ((B,) a batch; `targets` then holds them all, as ProteinData's)."""

    def __init__(self, path: str, items: list[Matched], *, layer: int = -1, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 pooled: bool = False):
        """`pooled`: the head pools each protein's rows into one prediction (Light Attention), so a
        protein of no residue is refused, naming it (it has nothing to pool: a softmax over no
        residue is NaN, which fit trained on and predict wrote as probabilities)."""
        self.path = str(path)
        self.items = items
        self.lengths = np.array([m.length for m in items], dtype=np.int64)
        if pooled and (empty := np.flatnonzero(self.lengths == 0)).size:
            others = f" ({len(empty)} proteins have none)" if len(empty) > 1 else ""
            raise InputError(f"embedding has no residue (an (0, D) array): a light-attention head has nothing to "
                             f"pool; leave the protein out{others}", path=self.path, record=items[empty[0]].id)
        self.targets = _protein_targets(items)
        with EmbeddingsReader(self.path) as reader:
            self.layer = stored_layer_index(reader, layer)
            self.layers_recorded = "layers" in reader.attrs
            self.kind_path = None if reader.layout == "flat" else PER_RESIDUE
            self.dim = reader.dim(PER_RESIDUE)
        self.cached: np.ndarray | None = None
        # where each item's residues start in the cache (when there is one)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        if self.nbytes <= cache_bytes:
            self._load_cache()

    @classmethod
    def in_memory(cls, arrays: list[np.ndarray], dim: int) -> "ResidueData":
        """(L, D) float32 arrays already in memory (checked by the caller), batched as a file's
        cached rows are (heads.arrays.predict_embeddings)."""
        data = cls.__new__(cls)
        data.path, data.dim = "<memory>", dim
        data.items = [Matched(str(i), str(i), len(a), {}) for i, a in enumerate(arrays)]
        data.lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        data.targets = None
        data.starts = np.concatenate([[0], np.cumsum(data.lengths)[:-1]]).astype(np.int64)
        data.cached = np.concatenate(arrays) if arrays else np.zeros((0, dim), np.float32)
        return data

    @property
    def residues(self) -> int:
        return int(self.lengths.sum())

    @property
    def nbytes(self) -> int:
        return self.residues * self.dim * 4

    def _open(self):
        handle = h5_file(self.path, "r")
        return handle, (handle if self.kind_path is None else handle[self.kind_path])

    def _read(self, group, item: Matched) -> np.ndarray:
        return read_rows(group, item.key, 2, self.layer, (item.length, self.dim), self.path, item.id,
                         layers_recorded=self.layers_recorded)  # (L, D)

    def _read_into(self, group, item: Matched, out: np.ndarray) -> None:
        """`out[...] = self._read(group, item)` for `out` of shape (item.length, dim), float32,
        C-contiguous, through h5py's low-level calls: an (L, D) float32 dataset is read straight
        into `out` (no array of its own, no second copy), a float16 or float64 one into an array of its own
        that numpy converts, as before (HDF5's own conversion is exact but was 1.7x slower); anything
        else (several layers, another shape or dtype) through `_read`, as before."""
        import h5py

        obj = open_local(group, item.key.encode("utf-8"), data=True)
        chain = isinstance(item, ChainRows)  # (a complex's chain: its rows [start, start + length) of `whole`)
        shape = (item.whole, out.shape[1]) if chain else out.shape
        if (isinstance(obj, h5py.h5d.DatasetID) and obj.shape == shape and obj.dtype in PLAIN_FLOAT_DTYPES
                and out.flags.c_contiguous and out.dtype == np.float32
                and (self.layers_recorded or self.layer in (-1, 0))):  # (else _read refuses the layer)
            if out.size:
                target = out if obj.dtype == out.dtype else np.empty(out.shape, dtype=obj.dtype)
                if chain:  # (its rows alone: each chain read its complex whole, a 2-chain complex twice)
                    space = obj.get_space()
                    space.select_hyperslab((item.start, 0), out.shape)
                    obj.read(h5py.h5s.create_simple(out.shape), space, target)
                else:
                    obj.read(h5py.h5s.ALL, h5py.h5s.ALL, target)
                if target is not out:
                    out[...] = target
            return
        if chain:  # (several layers, another dtype: the whole dataset read as _read reads it, the chain's rows kept)
            rows = np.empty((item.whole, out.shape[1]), dtype=np.float32)
            self._read_into(group, Matched(item.id, item.key, item.whole, {}), rows)
            out[...] = rows[item.start:item.start + item.length]
            return
        out[...] = self._read(group, item)

    def _load_cache(self) -> None:
        cache = np.empty((self.residues, self.dim), dtype=np.float32)
        handle, group = self._open()
        with handle:
            for i, item in enumerate(self.items):
                self._read_into(group, item, cache[self.starts[i]:self.starts[i] + item.length])
        refuse_non_finite(self.path, cache, self.items, self.starts)
        self.cached = cache

    def plan(self, max_residues: int, shuffle: bool, rng: np.random.Generator | None) -> list[np.ndarray]:
        """Groups of item positions whose padded size (count x longest) stays within max_residues.

        Shuffled: a random order, sorted by length inside windows of ~64 batches so that padding
        stays small, and the batches themselves shuffled. Not shuffled: sorted by length.
        """
        n = len(self.items)
        if shuffle:
            order = rng.permutation(n)
            window = max(1, int(64 * max_residues / max(1.0, self.lengths.mean())))
            order = np.concatenate([chunk[np.argsort(self.lengths[chunk], kind="stable")]
                                    for chunk in np.array_split(order, max(1, -(-n // window)))])
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches, current, longest = [], [], 0
        for i in order:
            length = int(self.lengths[i])
            if current and max(longest, length) * (len(current) + 1) > max_residues:
                batches.append(np.array(current))
                current, longest = [], 0
            current.append(i)
            longest = max(longest, length)
        if current:
            batches.append(np.array(current))
        if shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def batches(self, max_residues: int = 8192, shuffle: bool = False, rng=None, prefetch: int = 4) -> Iterator[Batch]:
        plan = self.plan(max_residues, shuffle, rng)
        if self.cached is not None:
            for index in plan:
                yield self._collate(index, [self.cached[self.starts[i]:self.starts[i] + self.lengths[i]]
                                            for i in index])
            return
        yield from _prefetched(self._stream(plan), prefetch)

    def _stream(self, plan):
        _fixed_mmap_threshold()
        handle, group = self._open()
        with handle:
            for index in plan:
                yield self._collate(index, group=group)

    def _collate(self, index: np.ndarray, arrays: list[np.ndarray] | None = None, group=None) -> Batch:
        """The batch of items `index`: their rows are `arrays`, or read from `group` into the batch."""
        import torch

        lengths = [int(self.lengths[i]) for i in index] if arrays is None else [a.shape[0] for a in arrays]
        longest = max(lengths)
        x = np.zeros((len(index), longest, self.dim), dtype=np.float32)  # (B, L, D)
        mask = np.zeros((len(index), longest), dtype=bool)  # (B, L)
        if self.targets is not None:  # one per protein: (B,)
            targets = {name: values[index] for name, values in self.targets.items()}
        else:  # one per residue: (B, L), IGNORE at padding
            targets = {name: np.full((len(index), longest), IGNORE, dtype=np.int64) for name in self.items[0].targets}
        for row, (i, length) in enumerate(zip(index, lengths)):
            if arrays is None:
                self._read_into(group, self.items[i], x[row, :length])
            else:
                x[row, :length] = arrays[row]
            mask[row, :length] = True
            if self.targets is None:
                for name, codes in self.items[i].targets.items():
                    targets[name][row, :length] = codes
        if self.cached is None:  # streamed: checked as read (the cache was checked once)
            refuse_non_finite(self.path, x.reshape(-1, self.dim), [self.items[i] for i in index],
                              np.arange(len(index)) * longest)
        return Batch(torch.from_numpy(x), torch.from_numpy(mask),
                     {k: torch.from_numpy(v) for k, v in targets.items()}, index)


def chains_of(embeddings, items: list[Matched]) -> dict:
    """The chain lengths of those of `items` that are complexes (embed --chains), by key."""
    chains: dict = {}
    with EmbeddingsReader(embeddings) as reader:
        if reader.layout == "stacked" or PER_RESIDUE not in reader.kinds:
            return chains
        group = reader._group(PER_RESIDUE)
        for item in items:
            lengths = stored_chains(dataset_attrs(group, item.key)[0])
            if lengths is not None and sum(lengths) == item.length:  # (one that does not add up: read whole, as before)
                chains[item.key] = lengths
    return chains


def by_chain(values, lengths) -> list:
    """A complex's rows (or states, labels) cut into its chains of `lengths`, in order; `values`
    whole in a list of one where `lengths` is None or empty (a protein of one chain)."""
    if not lengths:
        return [values]
    ends = np.cumsum([0, *lengths])
    return [values[a:b] for a, b in zip(ends[:-1], ends[1:])]


def chain_items(items: list[Matched], chains: dict) -> list[Matched]:
    """`items` with each complex (its chain lengths in `chains`, by key) replaced by its chains,
    each read as a protein of its own (ChainRows), in chain order."""
    if not chains:
        return items
    out: list[Matched] = []
    for item in items:
        start = 0
        for n in chains.get(item.key) or ():
            # (each chain its labels' slice, where scored: a chain without them was a KeyError in
            # the batches of `predict --labels` on a complex)
            targets = {name: codes[start:start + n] for name, codes in (item.targets or {}).items()}
            # (its checksums kept: the chains of a complex, and of its twins, stay on one side of
            # fit's hold-out and in one fold, grouped by sequence)
            out.append(ChainRows(item.id, item.key, n, targets, checksum=item.checksum,
                                 label_checksum=item.label_checksum, start=start, whole=item.length))
            start += n
        if item.key not in chains:
            out.append(item)
    return out


def joined_chains(probs: dict, items: list[Matched], chains: dict) -> dict:
    """predict_data's probabilities of `chain_items(items, chains)` with each complex's chains
    joined again in chain order: one (L, C) array an item of `items`."""
    if not chains:
        return probs
    joined = {}
    for name, values in probs.items():
        pieces, rows = iter(values), []
        for item in items:
            lengths = chains.get(item.key)
            rows.append(next(pieces) if lengths is None else np.concatenate([next(pieces) for _ in lengths]))
        joined[name] = rows
    return joined


def whole_items(items: list[Matched]) -> tuple[list[Matched], dict]:
    """`chain_items`' inverse: (the proteins, each complex's chains joined again with its targets
    in chain order; their chain lengths by key), where `items` hold each complex's chains one after
    another, as chain_items gives them (and `subset` keeps them: its positions sorted)."""
    if not any(isinstance(item, ChainRows) for item in items):
        return items, {}
    out: list[Matched] = []
    chains: dict = {}
    pieces: list[ChainRows] = []
    for item in items + [None]:
        if pieces and (item is None or not isinstance(item, ChainRows) or item.start == 0):
            first = pieces[0]
            targets = {name: np.concatenate([p.targets[name] for p in pieces]) for name in first.targets}
            out.append(Matched(first.id, first.key, first.whole, targets, checksum=first.checksum,
                               label_checksum=first.label_checksum))
            chains[first.key] = tuple(p.length for p in pieces)
            pieces = []
        if isinstance(item, ChainRows):
            pieces.append(item)
        elif item is not None:
            out.append(item)
    return out, chains


def refuse_non_finite(path: str, rows: np.ndarray, items: list[Matched], starts, per_residue: bool = True) -> None:
    """An InputError naming the first of `items` whose rows (item k's from starts[k]; one row
    per residue, or with `per_residue` False one per protein) hold NaN or infinity: they would make the loss NaN (fit)
    or a prediction from nothing (predict). One pass over float32 rows, about 0.25 ns per number."""
    if np.isfinite(rows).all():
        return
    for item, start in zip(items, starts):
        part = rows[start:start + (item.length if per_residue else 1)]
        if not np.isfinite(part).all():
            bad = int(part.size - np.isfinite(part).sum())
            raise InputError(f"embedding holds NaN or infinity ({bad} of its {part.size} numbers); leave the "
                             "protein out or embed it again", path=path, record=item.id)


def _fixed_mmap_threshold(threshold: int = 1 << 20) -> None:
    """glibc: serve arrays over 1 MB from mmap, returned to the OS when freed.

    Batches of streamed embeddings are tens of MB and allocated in two threads. glibc's default
    threshold rises to the largest freed block (up to 32 MB), after which such arrays come from
    heap arenas that keep their pages: measured on a 0.8 GB set, peak RSS 1,162 MB by default and
    686 MB with the threshold fixed, with the same speed. No effect on other C libraries.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _prefetched(iterator, depth: int):
    """Run `iterator` in a thread, `depth` items ahead; exceptions surface in the consumer."""
    if depth <= 0:
        yield from iterator
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                # Not `raise item`: the local would hold the error, whose traceback holds this
                # frame, a cycle that kept the caller's head, optimizer and arrays alive after a
                # failed fit until the garbage collector ran.
                error, item = item, None
                try:
                    raise error
                finally:
                    del error
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a put() so the thread can see `stop`
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class ProteinData:
    """Per-protein embeddings + targets, held in RAM ((N, D) is small even for 1024-d models)."""

    def __init__(self, path: str, items: list[Matched], *, layer: int = -1, rows=None):
        """`rows`: a stacked file's rows of `items`, where the caller knows them (predict's slices
        of a stacked file, in row order); else found by id (a dictionary of every id in the file)."""
        self.path = str(path)
        self.items = items
        with EmbeddingsReader(self.path) as reader:
            layer = stored_layer_index(reader, layer)
            recorded = "layers" in reader.attrs
            source = _source_kind(reader, PER_PROTEIN)
            if source != PER_PROTEIN:
                console.info(f"{self.path}: no per-protein embeddings; using the mean of the per-residue ones")
            stacked = reader.layout == "stacked"
            group = None if stacked else reader._group(source)
            dim = reader.dim(source) if items else None
            picked, rows = rows, []
            if stacked and items:  # one (N, D) array: the rows picked from it
                _check_stacked_layer(reader._stacked.data.shape, layer, self.path, recorded)
                if picked is None:
                    picked = [reader._stacked.row_of(unescape_key(item.key)) for item in items]
                rows = list(reader._stacked.take(picked, layer))
            for item in items if not stacked else ():
                if source == PER_RESIDUE:
                    length = item.length or None  # (0: not known)
                    array = read_rows(group, item.key, 2, layer, (length, dim), self.path, item.id,
                                      layers_recorded=recorded)
                    if not len(array):  # (its mean was NaN: refused as "holds NaN or infinity", after
                        # numpy's "Mean of empty slice" warnings)
                        raise InputError("embedding has no residue (an (0, D) array): it has no mean; leave the "
                                         "protein out", path=self.path, record=item.id)
                    rows.append(array.astype(np.float32).mean(axis=0))
                else:
                    rows.append(read_rows(group, item.key, 1, layer, (dim,), self.path, item.id,
                                          layers_recorded=recorded))
        self.x = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)  # (N, D)
        refuse_non_finite(self.path, self.x, items, np.arange(len(items)), per_residue=False)
        self.dim = int(self.x.shape[1])
        # Class indices (int64), or float32 for value outputs (NaN = not counted).
        self.targets = {name: _target_array([m.targets[name] for m in items]) for name in (items[0].targets if items else {})}
        self.lengths = np.array([m.length for m in items], dtype=np.int64)

    @classmethod
    def in_memory(cls, x: np.ndarray) -> "ProteinData":
        """(N, D) float32 vectors already in memory (checked by the caller: heads.arrays)."""
        data = cls.__new__(cls)
        data.path, data.x, data.dim = "<memory>", x, int(x.shape[1])
        data.items = [Matched(str(i), str(i), 0, {}) for i in range(len(x))]
        data.targets, data.lengths = {}, np.zeros(len(x), dtype=np.int64)
        return data

    def batches(self, batch_size: int = 64, shuffle: bool = False, rng=None, **_) -> Iterator[Batch]:
        import torch

        order = rng.permutation(len(self.items)) if shuffle else np.arange(len(self.items))
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            yield Batch(torch.from_numpy(self.x[index]), None,
                        {k: torch.from_numpy(v[index]) for k, v in self.targets.items()}, index)


def _protein_targets(items: list[Matched]) -> dict | None:
    """{output: (N,) targets} where `items` hold one target per protein (int64 class indices, or
    float32 values with NaN = not counted); None where they hold one per residue (arrays)."""
    if not items or not items[0].targets or any(np.ndim(v) for v in items[0].targets.values()):
        return None
    return {name: _target_array([m.targets[name] for m in items]) for name in items[0].targets}


def _target_array(values: list) -> np.ndarray:
    if any(isinstance(v, float) for v in values):
        return np.array(values, dtype=np.float32)
    return np.array(values, dtype=np.int64)


def load_data(embeddings, label_set: LabelSet, task: Task, *, kind: str | None = None, on_mismatch: str = "error",
              layer: int = -1, cache_bytes: int = DEFAULT_CACHE_BYTES, evaluating: bool = False):
    """Match labels to an embeddings file and return ResidueData or ProteinData, plus the report.
    `kind`: what the head reads (`tasks.input_kind`; default the task's kind). A per-residue head
    reads each chain of a complex (embed --chains) as a protein of its own, its labels' slice its
    targets, as predict reads it (a CNN slid across the chain break mixed the chains' residues);
    its chains follow one another in the items (ChainRows, with the complex's checksums)."""
    kind = kind or task.kind
    with EmbeddingsReader(embeddings) as reader:
        items, report = match_labels(label_set, reader, task, kind=kind, on_mismatch=on_mismatch,
                                     evaluating=evaluating)
    if task.kind == PER_RESIDUE and kind == PER_RESIDUE:
        items = chain_items(items, chains_of(embeddings, items))
    return head_data(embeddings, items, task, kind, layer=layer, cache_bytes=cache_bytes), report


def head_data(embeddings, items: list[Matched], task: Task, kind: str, *, layer: int = -1,
              cache_bytes: int = DEFAULT_CACHE_BYTES, rows=None):
    """`items`' embeddings as a head of `task` reads them: ResidueData where it reads per-residue
    rows (`kind`; pooled by the head itself where the task is per protein: Light Attention), else
    ProteinData (`rows`: a stacked file's rows of the items, where the caller knows them)."""
    if kind == PER_RESIDUE:
        return ResidueData(embeddings, items, layer=layer, cache_bytes=cache_bytes, pooled=task.kind != PER_RESIDUE)
    return ProteinData(embeddings, items, layer=layer, rows=rows)


def subset(data, positions: np.ndarray):
    """The same data restricted to some items (a held-out validation fraction): per residue it
    shares the cache (where there is one), per protein the rows are copied."""
    positions = np.sort(np.asarray(positions))
    if isinstance(data, ProteinData):
        new = object.__new__(ProteinData)
        new.path, new.dim = data.path, data.dim
        new.items = [data.items[i] for i in positions]
        new.x = data.x[positions]
        new.targets = {k: v[positions] for k, v in data.targets.items()}
        new.lengths = data.lengths[positions]
        return new
    new = object.__new__(ResidueData)
    new.path, new.layer, new.kind_path, new.dim = data.path, data.layer, data.kind_path, data.dim
    new.layers_recorded = data.layers_recorded
    new.items = [data.items[i] for i in positions]
    new.lengths = data.lengths[positions]
    new.starts = data.starts[positions]
    new.cached = data.cached  # shared, indexed through `starts`
    new.targets = None if data.targets is None else {k: v[positions] for k, v in data.targets.items()}
    return new

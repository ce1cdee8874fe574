"""Read label files as they are distributed, into one record type the heads understand.

Formats (detected from the content, or named with `fmt=`):

- `netsurfp`: NetSurfP-2.0 CSVs (Train_HHblits, CB513, TS115, CASP12, NEW364). Each field holds
  space-separated per-residue tokens; the header says `input` or `seq` for the sequence, with or
  without leading spaces; `disorder` (1.0 = observed, ordered residue) and `cb513_mask` are masks.
  The `disorder` column is also read as the labels `disorder` (the disorder task's): `O` for 1.0,
  `D` for 0.0 (`--mask-column cb513_mask` leaves CB513's other residues out, as for every task).
  These files carry no ids, so each record gets a stable id made from its sequence checksum,
  `seq-<first 12 hex of md5>`, with `-2`, `-3`, ... for repeats of the same sequence in file order
  (CB513 holds 79 repeated sequences).
- `flip`: FLIP / biotrainer FASTA: `>ID SET=train VALIDATION=False` followed by a line of
  per-residue labels; an optional mask FASTA (`0`/`1` per residue, same ids) is given separately.
- `biotrainer`: biotrainer's sequence FASTA (sequence_to_class/_value, residues_to_class, and
  residue_to_class with per-residue labels): `>ID TARGET=Glob SET=train VALIDATION=False` followed
  by the sequence; TARGET is the label, an optional `MASK=0110...` the per-residue mask, and
  `SET=pred` records (no label) are left out.
- `deeploc`: DeepLoc FASTA: `>ID Location-M|S|U [test]` followed by the sequence. The membrane
  code is split off at the *last* `-`, so the dual label `Cytoplasm-Nucleus-U` gives the location
  `Cytoplasm-Nucleus` (what a task does with it is the task's decision, see tasks.py).
- `pisces`: the PISCES-culled PDB secondary-structure table (Kaggle "protein-secondary-structure"):
  CSV with `pdb_id,chain_code,seq,sst8,sst3,...`, unspaced strings, one letter per residue. The id
  is `<pdb_id>_<chain_code>`; `*` (a non-standard residue there, not a stop) becomes `X`.
- `flip_csv`: FLIP's per-protein splits (GB1, AAV, meltome...): CSV with `sequence,target,set,
  validation`; ids made from the sequence checksum as for NetSurfP, `set`/`validation` the split.
- `table`: CSV or TSV of `id,label` (an optional header row; a third `set` column, as in the
  bio_embeddings DeepLoc annotations, is read as the split).
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from protrans_cli import console
from protrans_cli.choices import FORMATS
from protrans_cli.errors import InputError, UsageError, brief, one_of
from protrans_cli.heads.tasks import LOCATIONS, SS8
from protrans_cli.io.fasta import ASCII_SPACE, FastaRecord, decode_text, line_at, look_alike, parse_fasta
from protrans_cli.io.files import (binary_kind, display_name, header_delimiter, is_utf16, kind_refusal,
                                   open_input, utf16_codec, utf16_text)
from protrans_cli.io.h5 import sequence_checksum
from protrans_cli.residues import STANDARD, SequenceRejected, normalise


# Splits a record may declare for itself (FLIP's SET=/VALIDATION=, a table's set column).
TRAIN, VALID, TEST = "train", "valid", "test"
# How files name their splits (biotrainer writes SET=val, spreadsheets "validation"): any other
# name is an error, not a split that no step reads (its records were silently left out).
SPLIT_NAMES = {"train": TRAIN, "training": TRAIN, "valid": VALID, "validation": VALID, "val": VALID,
               "dev": VALID, "test": TEST}


def split_name(value: str, *, path: str, line: int | None = None, record: str | None = None) -> str | None:
    """A file's name for a split -> train, valid or test (None for an empty one)."""
    key = value.strip().lower()
    if not key:
        return None
    if key not in SPLIT_NAMES:
        raise InputError(f"unknown set {value.strip()!r}: train, valid or test (also read: "
                         f"{', '.join(k for k in SPLIT_NAMES if k not in (TRAIN, VALID, TEST))})",
                         path=path, line=line, record=record)
    return SPLIT_NAMES[key]


# FLIP's VALIDATION= / validation column: True or False (an empty cell, pandas' NaN, is False).
# Any other value was read as False: a file flagging its validation records 1/0 had them trained
# on, and early stopping chose by a random hold-out instead.
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no", "", "nan"}


def is_validation(value: str, *, path: str, line: int | None = None, record: str | None = None) -> bool:
    """A FLIP or biotrainer validation flag -> whether the record is a validation record."""
    key = value.strip().lower()
    if key in _TRUE | _FALSE:
        return key in _TRUE
    raise InputError(f"unknown validation flag {value.strip()!r}: True or False (also read: 1/0, yes/no, empty)",
                     path=path, line=line, record=record)

_DEEPLOC_LABEL = re.compile(r"^\S+-[MSU]$")


@dataclass
class LabelRecord:
    """One protein's labels. Per-residue labels are strings of one letter per residue."""

    id: str
    sequence: str | None  # None where the file carries no sequence (FLIP labels, tables)
    labels: dict[str, str]  # e.g. {"ss3": "CCHHE", "ss8": "CCGHE"} or {"loc": "Nucleus", "membrane": "S"}
    mask: np.ndarray | None = None  # (L,) bool, True = residue is labelled and evaluated
    split: str | None = None  # train / valid / test when the file says so
    line: int | None = None  # where the record starts, for messages
    id_from_sequence: bool = False  # the id was made from the sequence checksum
    # An output's own mask where it is not `mask` (tasks.mask_for; None: every residue): a NetSurfP
    # disorder column among the mask columns masks ss3/ss8, not the disorder output it labels
    output_masks: dict[str, np.ndarray | None] = field(default_factory=dict)
    # labels a column could not be read as, by output: the error, raised where they are used
    # (a bad value in NetSurfP's disorder column, read under `fit ss3 --mask-column cb513_mask`)
    unreadable: dict[str, Exception] = field(default_factory=dict)
    # Where the letters of a `label` string that spans lines are (FLIP's FASTA): (offset of a
    # line's first letter, its line number), so that a bad letter is named by its own line
    label_lines: tuple[tuple[int, int], ...] = ()

    def line_of(self, offset: int) -> int | None:
        """The line of label letter `offset` (the record's own line where the file has one line a record)."""
        return line_at(self.label_lines, offset, self.line)


def _by_descriptor(path) -> bool:
    """Whether `path` is a pipe's descriptor (`<(zcat x.gz)`: /dev/fd/63, a number the shell picked)."""
    return re.fullmatch(r"/(dev/fd|proc/(self|\d+)/fd)/\d+", str(path)) is not None


def name_of_test_set(path, name: str) -> str:
    """What a --test set of labels from `path` is called (its metrics files, metrics.json's key):
    `name`, from its file's name, or "test" for one with no name of its own: stdin, or a pipe
    (`--test <(zcat x.gz)`, /dev/fd/63, was "63": a number the shell picked, another each run)."""
    return "test" if str(path) in ("-", "<stdin>") or _by_descriptor(path) else name


@dataclass
class LabelSet:
    path: str
    format: str
    records: list[LabelRecord]
    notes: list[str] = field(default_factory=list)  # things a user should be told (ids made, masks used)

    @property
    def name(self) -> str:
        """A short name for reports: the file name without compression and format suffixes."""
        # (`--labels -` is read as "<stdin>": `predict --metrics DIR` wrote DIR/<stdin>.json, a name
        # a shell has to quote and Windows refuses; `--labels <(zcat x.gz)`, /dev/fd/63, wrote
        # DIR/63.json)
        if _by_descriptor(self.path):
            return "labels"
        name = Path(self.path).name.strip("<>")
        for suffix in (".gz", ".bz2", ".xz", ".zst", ".csv", ".tsv", ".txt", ".fasta", ".fa"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        return name or "labels"


def _companion_fasta(path) -> Iterator[FastaRecord]:
    """The records of a FASTA given beside a label file (FLIP's mask, `--sequences`), UTF-16
    read as the label file beside it is (it was refused as "not FASTA"). Only a UTF-16 file is
    read whole; any other is streamed, its start told apart by the same bytes."""
    import itertools

    name = display_name(path)
    with open_input(path) as stream:
        head = stream.read(1024)  # (what utf16_text looks at)
        if is_utf16(head):
            yield from parse_fasta(io.BytesIO(utf16_text(head + stream.read(), name).encode("utf-8")), name,
                                   line_map=True)
        else:  # (the line the head cut completed, then the rest line by line)
            yield from parse_fasta(itertools.chain(io.BytesIO(head + stream.readline()), stream), name, head=head,
                                   line_map=True)


def mask_column_names(columns, name: str = "mask_columns") -> tuple[str, ...]:
    """NetSurfP mask columns as a tuple of names: one name given as a str is that column
    (`mask_columns="cb513_mask"` was read letter by letter, "has no mask column c, b, 5, ...",
    and recorded so in a head's config.json); anything but names is a usage error."""
    if isinstance(columns, str):
        return (columns,)
    if columns is None or isinstance(columns, bytes) or not hasattr(columns, "__iter__"):
        raise UsageError(f"{name} must be a column name or a list of them, got {type(columns).__name__} "
                         f"{columns!r:.60}")
    columns = tuple(columns)
    if not all(isinstance(c, str) for c in columns):
        raise UsageError(f"{name} must be a column name or a list of them, got {columns!r:.60}")
    return columns


def read_labels(path, fmt: str = "auto", *, mask_path=None, mask_columns: tuple[str, ...] = ("disorder",),
                mask_optional: bool = False, mask_elsewhere: bool = False, all_columns: bool = False) -> LabelSet:
    """Read any supported label file; `mask_path` is a FLIP mask FASTA, `mask_columns` NetSurfP's.
    `mask_optional` (an evaluation set beside FLIP-style training labels): the mask applies where
    the file is FLIP-style and the mask holds its ids; a file in another format, or whose ids the
    mask holds none of, is read without it (one the mask holds some of is an error).
    `mask_elsewhere` (training labels beside evaluation files the mask may be meant for): a file
    in another format is read without it; a FLIP-style one takes it as without the flag.
    `all_columns` (a table with a header): every column after the id is a label named by its
    header (`id,family,tm`: `family` and `tm`), where the tasks read the second as `label`."""
    one_of(fmt, FORMATS, "--label-format", keyword="label_format")  # (as fit, predict, knn and project take it)
    mask_columns = mask_column_names(mask_columns)
    name = display_name(path)
    with open_input(path) as stream:
        data = stream.read()
    if utf16_codec(data) is None:
        _refuse_binary(data, name)
    text = utf16_text(data, name)
    if text is None:
        text = decode_text(data)  # (field by field where a line is not UTF-8, as a FASTA header is)
    # Any line ending (CRLF, and CR alone from old Mac files) as \n: label files are read whole.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if fmt == "auto":
        fmt = sniff_format(text, name)
        if all_columns and fmt == "flip_csv" and _first_header_field(text) in _ID_HEADERS:
            # (an annotation table `id,sequence,family,set` is no FLIP CSV, which has no ids: it was
            # read as one, "without a target column", or its ids made from the sequences)
            fmt = "table"
    readers = {"netsurfp": lambda: _read_netsurfp(text, name, mask_columns), "pisces": lambda: _read_pisces(text, name),
               "flip": lambda: _read_flip(text, name), "flip_csv": lambda: _read_flip_csv(text, name),
               "biotrainer": lambda: _read_biotrainer(text, name),
               "deeploc": lambda: _read_deeploc(text, name)}
    reader = readers.get(fmt, lambda: _read_table(text, name, all_columns))
    try:
        try:
            label_set = reader()
        except csv.Error as exc:
            if "field limit" not in str(exc):
                raise
            # A field holds a whole sequence (titin: 34,350 residues; gene-calling artefacts: over
            # 100,000), beyond csv's default limit of 131,072 characters. The limit is the csv
            # module's, for the whole process: raised only for a file that needs it (every read
            # raised it, a notebook's own csv reading changed by a label file), never lowered
            # again (a read in another thread may be relying on it).
            csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
            label_set = reader()
    except csv.Error as exc:  # e.g. a NUL byte, an unterminated quote
        raise InputError(f"not a readable {fmt} file: {exc}", path=name) from None
    if mask_path is not None:
        if fmt != "flip" and not mask_optional and not mask_elsewhere:
            raise UsageError(f"{name}: a mask file is only read with FLIP-style labels, not {fmt}")
        if fmt == "flip":
            _apply_flip_mask(label_set, mask_path, optional=mask_optional)
    if not label_set.records:
        raise InputError("holds no labelled records", path=name)
    _refuse_duplicate_ids(label_set)
    return label_set


def _refuse_binary(data: bytes, name: str) -> None:
    """An HDF5 file (the embeddings given for the labels), an archive or another binary file: one
    line saying so, where a table's reader said "expected 'id,label'" on line 1."""
    if kind := binary_kind(data):
        raise InputError(kind_refusal(kind, "a label file", "a NetSurfP or PISCES CSV, FLIP FASTA or CSV, "
                                      "DeepLoc FASTA, or an id,label table"), path=name)


def holds_residue_labels(label_set: LabelSet) -> bool:
    """Labels of one letter per residue in a format whose records read as a generic `label` (FLIP's
    FASTA; biotrainer's residue_to_class file: a MASK=, or every TARGET as long as its sequence),
    which a per-protein task would take whole: each protein's string became a class of its own."""
    if label_set.format == "flip":
        return True
    return label_set.format == "biotrainer" and bool(label_set.records) and (
        any(r.mask is not None for r in label_set.records)
        or all(r.sequence and len(r.labels.get("label", "")) == len(r.sequence) > 1 for r in label_set.records))


def holds_sequences(label_set: LabelSet) -> bool:
    """Whether FLIP-format "labels" are amino acids: a FASTA of sequences, such as `protrans labels`
    writes for embed, reads as FLIP's per-residue labels."""
    if label_set.format != "flip":
        return False
    letters = set().union(*(set(r.labels.get("label", "").upper()) for r in label_set.records[:100]))
    return letters <= set(_AMINO_ACIDS) and len(letters - set(SS8) - {"L"}) >= 2


def refuse_residue_labels(label_set: LabelSet, task_name: str) -> None:
    """A per-protein task given per-residue labels: one line saying so (exit 1). `fit protein` on
    FLIP's secondary-structure labels trained a classifier of one class a protein and exited 0;
    `fit value` printed a whole label string as "not a number"."""
    if not holds_residue_labels(label_set):
        return
    takes = (f"the {task_name} task takes one label a protein (an id,label table, a FLIP CSV, a biotrainer "
             "TARGET= file, a DeepLoc FASTA)")
    if holds_sequences(label_set):
        raise InputError(f"holds sequences, not labels: {takes}; if the file holds sequences, give it to embed, "
                         "and the labels to --labels", path=label_set.path)
    raise InputError(f"holds per-residue labels ({label_set.format}: one letter a residue); {takes}: per-residue "
                     "labels are for ss3, ss8, ss3+ss8 or residue", path=label_set.path)


# Formats whose labels may be one a protein (DeepLoc's always; a table, a FLIP CSV or a biotrainer
# file one a protein or a string of one a residue)
_PROTEIN_LABEL_FORMATS = ("table", "deeploc", "flip_csv", "biotrainer")


def refuse_protein_labels(label_set: LabelSet, task_name: str, residues_of, checked: int = 200) -> None:
    """A per-residue task given one label a protein (`id,value`, `id,class`, a DeepLoc FASTA): one
    line saying so and what task takes them (exit 1). Every record was reported as a length
    mismatch ("p1 (5 vs 38)"), or its digits and letters as "not ss3 classes". Told by the labels'
    lengths: where none of the (first `checked`) labelled proteins whose residues
    `residues_of(record)` counts (None: not known) has as many labels as residues, and the
    differences are no constant one or two rows (an embedding that kept its special tokens' rows,
    which the mismatch report tells), the labels are no per-residue ones."""
    if label_set.format not in _PROTEIN_LABEL_FORMATS:
        return
    sizes = []  # (record, labels, residues)
    for record in label_set.records:
        text = record.labels.get("label")
        if not isinstance(text, str) or not text:
            continue
        residues = residues_of(record)
        if residues:
            sizes.append((record, len(text.replace(":", "")), residues))
        if len(sizes) >= checked:
            break
    if label_set.format != "deeploc":
        if not sizes or any(labels == residues for _, labels, residues in sizes):
            return
        extra = {residues - labels for _, labels, residues in sizes}
        if len(extra) == 1 and extra <= {1, 2}:
            return
    numbers = all(_is_number(r.labels["label"]) for r in label_set.records if r.labels.get("label"))
    fits = ("the loc task (protrans fit loc), which takes DeepLoc's locations" if label_set.format == "deeploc"
            else "the value task (protrans fit value), which takes one number a protein" if numbers
            else "the protein task (protrans fit protein), which takes one class a protein")
    example = ""
    if sizes:
        record, _, residues = sizes[0]
        example = f" ({record.id}: {record.labels['label']!r:.40} for {residues} residues)"
    raise InputError(f"holds one label a protein{example}, not one a residue: the {task_name} task takes one label "
                     f"a residue; fit these with {fits}", path=label_set.path)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWYXUZOB*"


def unmasked_flip_warning(label_set: LabelSet, output_names) -> str | None:
    """FLIP's secondary-structure labels read without its mask (its published figures count the
    mask's residues only): what to tell the user, or None. Other per-residue FASTA labels
    (biotrainer's, a generic `residue` head) have no such mask: nothing to say."""
    if label_set.format != "flip" or not {"ss3", "ss8"} & set(output_names):
        return None
    if any(r.mask is not None for r in label_set.records):
        return None
    return ("FLIP labels without a mask: every residue is trained on and scored (FLIP's published "
            "figures count only the residues its mask.fasta marks 1: give it with --mask)")


def sniff_format(text: str, name: str = "<labels>") -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.startswith(">"):
        tokens = first[1:].split()
        # biotrainer: the label in the header (any header: a first record to predict, SET=pred,
        # has none)
        if any(t.startswith("TARGET=") for line in text.splitlines() if line.startswith(">")
               for t in line[1:].split()[1:]):
            return "biotrainer"
        # (a known location with a wrong membrane letter is DeepLoc too: its reader says what is wrong)
        if len(tokens) >= 2 and (_DEEPLOC_LABEL.match(tokens[1]) or tokens[1].rsplit("-", 1)[0] in LOCATIONS):
            return "deeploc"
        return "flip"
    # (a header quoted as R's write.csv and csv.QUOTE_ALL write it, `"input"," dssp3",...`, was
    # read as an id,label table: "has 5 fields, more than the 2 of 'id,label'")
    columns = [c.strip().strip('"').strip().lower() for c in re.split(r"[,\t]", first)]
    if "dssp3" in columns or "dssp8" in columns:
        return "netsurfp"
    if "sst3" in columns or "sst8" in columns:
        return "pisces"
    if "sequence" in columns and ("target" in columns or "set" in columns):  # FLIP, even without its target
        return "flip_csv"
    if not first:
        raise InputError("is empty", path=name)
    return "table"


def _first_header_field(text: str) -> str:
    """The first field of the first line that is not blank, lower-cased (a header's first column)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return re.split(r"[,\t]", first)[0].strip().strip('"').strip().lower()


def _csv_rows(text: str, name: str):
    """(lower-cased header, iterator of (line number, row), the header's line number) of a CSV with
    a header row: blank rows are skipped, and a row with fewer fields than the header is an error
    naming its line."""
    reader = csv.reader(io.StringIO(text))
    # (blank lines before the header too: the format was told by the first line that is not
    # blank, and the header read here was the empty one, "without a sequence column; header is ")
    header = None
    while header is None:
        start = reader.line_num + 1
        row = next(reader, None)
        if row is None:
            raise InputError("is empty", path=name)
        if any(f.strip() for f in row):
            # (a quote never closed took the whole file into the header, quoted in the message)
            _refuse_open_quote(row, name, start)
            header = [h.strip().lower() for h in row]
    header_line = reader.line_num

    def rows():
        while True:
            lineno = reader.line_num + 1  # where the row starts (a quoted field may span lines)
            row = next(reader, None)
            if row is None:
                return
            if not row or not any(f.strip() for f in row):
                continue
            _refuse_open_quote(row, name, lineno)  # (the rows after it were one field, or lost)
            # (more fields than the header: a comma in an unquoted field shifted the columns; empty
            # trailing fields, from a spreadsheet, are harmless)
            if len(row) < len(header) or any(f.strip() for f in row[len(header):]):
                raise InputError(f"has {console.counted(len(row), 'field')}, the header has {len(header)}", path=name,
                                 line=lineno)
            yield lineno, row

    return header, rows(), header_line


# --- NetSurfP-2.0 CSV ---------------------------------------------------------------------

_NSP_SEQUENCE = ("input", "seq", "sequence")


def _read_netsurfp(text: str, name: str, mask_columns: tuple[str, ...]) -> LabelSet:
    header, rows, header_line = _csv_rows(text, name)
    seq_col = next((header.index(c) for c in _NSP_SEQUENCE if c in header), None)
    if seq_col is None:
        raise InputError(f"NetSurfP CSV without a sequence column ({'/'.join(_NSP_SEQUENCE)}); "
                         f"header is {', '.join(header)}", path=name, line=header_line)
    label_cols = {c: header.index(c) for c in ("dssp3", "dssp8") if c in header}
    missing = [c for c in mask_columns if c not in header]
    if missing:
        raise InputError(f"has no mask column {', '.join(missing)} (header is {', '.join(header)})",
                         path=name, line=header_line)
    mask_cols = [header.index(c) for c in mask_columns]
    disorder_col = header.index("disorder") if "disorder" in header else None
    records: list[LabelRecord] = []
    seen: dict[str, int] = {}
    for lineno, row in rows:
        seq = "".join(row[seq_col].split()).upper()
        length = len(seq)
        # (the id the record gets, named by its errors: a CB513 row is known by it, not by its line)
        ident = _sequence_id(seq, seen)
        labels = {}
        for col, idx in label_cols.items():
            tokens = row[idx].split()
            if len(tokens) != length:
                raise InputError(f"{col} has {len(tokens)} labels for {length} residues", path=name, line=lineno,
                                 record=ident)
            joined = "".join(tokens)
            # (joined, "C HH" for two residues was three states, met later as a length mismatch;
            # told by the joined length: a check of each token was a fifth of `labels`'s time)
            if len(joined) != length:
                raise InputError(f"{col} holds {next(t for t in tokens if len(t) != 1)!r}: one state per residue, "
                                 "separated by spaces", path=name, line=lineno, record=ident)
            labels[col.replace("dssp", "ss")] = joined
        mask = np.ones(length, dtype=bool)
        others = None  # the mask columns other than disorder: the disorder output's mask (None: none)
        for col_name, idx in zip(mask_columns, mask_cols):
            tokens = row[idx].split()
            if len(tokens) != length:
                raise InputError(f"{col_name} has {len(tokens)} values for {length} residues",
                                 path=name, line=lineno, record=ident)
            try:
                column = _is_one(tokens)
                mask &= column
                if col_name != "disorder":
                    others = column if others is None else others & column
            except ValueError as exc:
                raise InputError(f"{col_name} holds {exc.args[0]!r}: a mask value is 1 (evaluated) or 0", path=name,
                                 line=lineno, record=ident) from None
        record = LabelRecord(ident, seq, labels, mask, None, lineno, id_from_sequence=True)
        if disorder_col is not None:  # (after the masks: a bad value of a mask column is named as the mask's)
            try:
                labels["disorder"] = _disorder_letters(row, disorder_col, length, name, lineno, ident)
            except InputError as exc:  # (refused where the disorder labels are read: Task._residue_letters)
                record.unreadable["disorder"] = exc
            if "disorder" in mask_columns:
                # the disorder output's mask: the other mask columns (its labels are this one)
                record.output_masks["disorder"] = others
        records.append(record)
    notes = ["NetSurfP CSVs carry no ids: ids are made from the sequence checksum (seq-<md5 prefix>)",
             f"residue mask: {' and '.join(mask_columns)} = 1.0 (the residues trained on and scored)" if mask_columns
             else "residue mask: none (every residue is trained on and scored)"]
    return LabelSet(name, "netsurfp", records, notes)


def _disorder_letters(row, disorder_col: int, length: int, name: str, lineno: int, ident: str) -> str:
    """A NetSurfP row's disorder column as letters: O (1.0, observed), D (0.0, missing from the
    structure)."""
    tokens = row[disorder_col].split()
    if len(tokens) != length:
        raise InputError(f"disorder has {len(tokens)} values for {length} residues", path=name, line=lineno,
                         record=ident)
    try:
        observed = _is_one(tokens)
    except ValueError as exc:
        raise InputError(f"disorder holds {exc.args[0]!r}: a value is 1 or 0", path=name, line=lineno,
                         record=ident) from None
    return np.where(observed, ord("O"), ord("D")).astype(np.uint8).tobytes().decode("ascii")


def _is_one(tokens: list[str]) -> np.ndarray:
    """`np.asarray(tokens, dtype=np.float32) == 1.0`, with each distinct token converted once: a
    mask column holds two spellings ("1.0", "0.0") of 2.8 M values in NetSurfP's training set,
    and numpy's conversion of every string was a third of `labels`'s time. ValueError(token) for
    a token that is not 0 or 1 (a number or not: 2.0 and nan were taken as 0, a damaged column
    evaluated on fewer residues without a word)."""
    distinct = list(set(tokens))
    for token in distinct:
        try:
            value = float(token)
        except ValueError:
            raise ValueError(token) from None
        if value not in (0.0, 1.0):
            raise ValueError(token)
    ones = (np.asarray(distinct, dtype=np.float32) == 1.0).tolist()
    if all(ones):
        return np.ones(len(tokens), dtype=bool)
    return np.fromiter(map(dict(zip(distinct, ones)).__getitem__, tokens), dtype=bool, count=len(tokens))


def _sequence_id(seq: str, seen: dict[str, int]) -> str:
    """`seq-<first 12 hex of md5>`, then `-2`, `-3`... for repeats (counted in `seen`): the stable
    id of a record whose file gives only its sequence."""
    base = "seq-" + sequence_checksum(seq).split(":", 1)[1][:12]
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base}-{seen[base]}"


# --- FLIP per-protein CSV ------------------------------------------------------------------


def _read_flip_csv(text: str, name: str) -> LabelSet:
    header, rows, header_line = _csv_rows(text, name)
    missing = [c for c in ("sequence", "target") if c not in header]
    if missing:
        raise InputError(f"FLIP CSV without a {' or '.join(missing)} column; header is {', '.join(header)}",
                         path=name, line=header_line)
    seq_col, target_col = header.index("sequence"), header.index("target")
    set_col = header.index("set") if "set" in header else None
    valid_col = header.index("validation") if "validation" in header else None
    records: list[LabelRecord] = []
    seen: dict[str, int] = {}
    for lineno, row in rows:
        seq = row[seq_col].strip().upper()
        split = split_name(row[set_col], path=name, line=lineno) if set_col is not None else None
        if valid_col is not None and is_validation(row[valid_col], path=name, line=lineno) and split == TRAIN:
            split = VALID
        records.append(LabelRecord(_sequence_id(seq, seen), seq, {"label": row[target_col].strip()}, None, split,
                                   lineno, id_from_sequence=True))
    notes = ["FLIP CSVs carry no ids: ids are made from the sequence checksum (seq-<md5 prefix>)"]
    return LabelSet(name, "flip_csv", records, notes)


# --- PISCES / Kaggle secondary-structure CSV -----------------------------------------------

_PISCES_LABELS = {"sst3": "ss3", "sst8": "ss8"}


def _read_pisces(text: str, name: str) -> LabelSet:
    header, rows, header_line = _csv_rows(text, name)
    if "seq" not in header:
        raise InputError(f"PISCES CSV without a seq column; header is {', '.join(header)}", path=name, line=header_line)
    seq_col = header.index("seq")
    label_cols = {task: header.index(col) for col, task in _PISCES_LABELS.items() if col in header}
    if not label_cols:
        raise InputError("PISCES CSV without an sst3 or sst8 column", path=name, line=header_line)
    id_cols = [header.index(c) for c in ("pdb_id", "chain_code") if c in header]
    records: list[LabelRecord] = []
    seen: dict[str, int] = {}
    stars = 0
    for lineno, row in rows:
        seq = row[seq_col].strip().upper()
        stars += seq.count("*")
        seq = seq.replace("*", "X")
        ident = "_".join(row[i].strip(ASCII_SPACE) for i in id_cols) if id_cols else _sequence_id(seq, seen)
        labels = {}
        for task, idx in label_cols.items():
            value = row[idx].strip()
            if len(value) != len(seq):
                raise InputError(f"{header[idx]} has {len(value)} labels for {len(seq)} residues",
                                 path=name, line=lineno, record=ident)
            labels[task] = value
        records.append(LabelRecord(ident, seq, labels, np.ones(len(seq), dtype=bool), None, lineno,
                                   id_from_sequence=not id_cols))
    notes = ["ids are <pdb_id>_<chain_code>" if id_cols else "ids are made from the sequence checksum"]
    if stars:
        notes.append(f"{stars} '*' (non-standard residues) read as X")
    return LabelSet(name, "pisces", records, notes)


# --- FLIP / biotrainer FASTA --------------------------------------------------------------


def _after_id(description: str) -> list[str]:
    """The words of a FASTA header after its id: the id ends at ASCII whitespace only, as the
    FASTA reader (and so embed's keys) end it (str.split() also split at a no-break space, so
    `>P1\xa0x Cytoplasm-S` was another id here than in the embeddings); the rest is split at
    any whitespace, as before (`SET=train\xa0VALIDATION=False` stays two words)."""
    words = re.split(f"[{ASCII_SPACE}]+", description.strip(ASCII_SPACE), maxsplit=1)
    return words[1].split() if len(words) > 1 else []


def _attrs(description: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in _after_id(description) if "=" in token)


def _split_of(attrs: dict[str, str], name: str, rec) -> str | None:
    """The split a FLIP or biotrainer header declares: SET=, with VALIDATION=True moving a
    training record to validation."""
    if "SET" not in attrs:
        return None
    split = split_name(attrs["SET"], path=name, line=rec.line, record=rec.id)
    if is_validation(attrs.get("VALIDATION", "False"), path=name, line=rec.line, record=rec.id) and split == TRAIN:
        split = VALID
    return split


def _read_flip(text: str, name: str) -> LabelSet:
    records = []
    for rec in parse_fasta(io.BytesIO(text.encode()), name, line_map=True):
        attrs = _attrs(rec.description)
        if "TARGET" in attrs:
            # (read as FLIP, its sequence was taken for per-residue labels: a head trained on
            # hundreds of "classes", each a sequence, and exited 0)
            raise InputError("has TARGET= in its header: a biotrainer sequence file, whose line below the header is "
                             "the sequence (read it with --label-format biotrainer, or auto)",
                             path=name, line=rec.line, record=rec.id)
        if not rec.sequence:
            raise InputError("has no label line", path=name, line=rec.line, record=rec.id)
        records.append(LabelRecord(rec.id, None, {"label": rec.sequence}, None, _split_of(attrs, name, rec),
                                   rec.line, label_lines=rec.lines))
    return LabelSet(name, "flip", records)


def _read_biotrainer(text: str, name: str) -> LabelSet:
    """biotrainer's sequence file: `>ID TARGET=label SET=train VALIDATION=False` + the sequence.
    Every record needs its TARGET (a record without one would be silently unlabelled)."""
    records = []
    to_predict = 0
    for rec in parse_fasta(io.BytesIO(text.encode()), name):
        attrs = _attrs(rec.description)
        if attrs.get("SET", "").lower() == "pred":  # biotrainer's records to predict: no label to learn
            to_predict += 1
            continue
        if "TARGET" not in attrs:
            raise InputError("biotrainer header without TARGET= (the label): expected '>ID TARGET=label SET=train'",
                             path=name, line=rec.line, record=rec.id)
        if not rec.sequence:
            raise InputError("has no sequence line", path=name, line=rec.line, record=rec.id)
        mask = None
        if "MASK" in attrs:  # per-residue: 1 = the residue is trained on and scored
            mask = _mask_bits(attrs["MASK"], attrs["TARGET"], "MASK=", "TARGET=", path=name, line=rec.line,
                              record=rec.id)
        records.append(LabelRecord(rec.id, rec.sequence.upper(), {"label": attrs["TARGET"]}, mask,
                                   _split_of(attrs, name, rec), rec.line))
    label_set = LabelSet(name, "biotrainer", records)
    if to_predict:
        label_set.notes.append(f"{to_predict} record(s) of SET=pred (to predict: no label) left out")
    if any(r.mask is not None for r in records):
        label_set.notes.append("per-residue masks from MASK= (1 = evaluated)")
    return label_set


def _apply_flip_mask(label_set: LabelSet, mask_path, *, optional: bool = False) -> None:
    name = display_name(mask_path)
    masks = {rec.id: rec for rec in _companion_fasta(mask_path)}
    missing = [r.id for r in label_set.records if r.id not in masks]
    if optional and len(missing) == len(label_set.records):
        label_set.notes.append(f"read without the mask {name}, which holds none of its ids")
        return
    if missing:
        raise InputError(f"no mask for {len(missing)} of the ids of {os.path.basename(label_set.path)}: "
                         f"{some_ids(missing)}",
                         path=name)
    for record in label_set.records:
        mask = masks[record.id]
        allowed = "01:" if ":" in record.labels["label"] else "01"
        bad = next((i for i, c in enumerate(mask.sequence) if c not in allowed), None)
        # (a bad character named by its own line, not the header's)
        record.mask = _mask_bits(mask.sequence, record.labels["label"], "mask", "the labels",
                                 path=name, line=mask.line if bad is None else mask.line_of(bad), record=record.id)
    label_set.notes.append(f"mask from {name} (1 = evaluated)")


def _mask_bits(raw: str, labels: str, mask_name: str, labels_name: str, **where) -> np.ndarray:
    """A per-residue mask of 0/1 characters as booleans (True = evaluated), one per position of
    the label string `labels`; anything else is an error naming `where` (path, line, record).
    Labels with a ':' between a complex's chains take a mask laid out like them (a ':' where they
    have one) or one digit per residue (no ':'); either way the mask returned has a position for
    each of the labels' (False at their ':'s, which data._label_chains drops with them)."""
    if set(raw) - {"0", "1", ":"}:
        raise InputError(f"{mask_name} holds characters other than 0 and 1", **where)
    breaks = [i for i, c in enumerate(labels) if c == ":"]
    if not breaks:
        if ":" in raw:
            raise InputError(f"{mask_name} has ':' (a chain break) where {labels_name} have none: one 0/1 "
                             f"per residue, {len(labels)}", **where)
        if len(raw) != len(labels):
            raise InputError(f"{mask_name} has {len(raw)} positions, {labels_name} {len(labels)}", **where)
        return np.frombuffer(raw.encode(), dtype=np.uint8) == ord("1")
    chains = [len(part) for part in labels.split(":")]
    digits = raw.replace(":", "")
    laid_out = ":" not in raw or [i for i, c in enumerate(raw) if c == ":"] == breaks
    if not laid_out or len(digits) != sum(chains):
        given = (f"chains of {', '.join(str(len(part)) for part in raw.split(':'))}" if ":" in raw
                 else f"{len(raw)} positions")
        raise InputError(f"{mask_name} has {given}, {labels_name} {sum(chains)} residues in chains of "
                         f"{', '.join(map(str, chains))} (':' between them): expected one 0/1 per residue, "
                         f"with ':' where {labels_name} have them or none", **where)
    bits = np.zeros(len(labels), dtype=bool)
    keep = np.ones(len(labels), dtype=bool)
    keep[breaks] = False
    bits[keep] = np.frombuffer(digits.encode(), dtype=np.uint8) == ord("1")
    return bits


# --- DeepLoc FASTA -------------------------------------------------------------------------


# DeepLoc writes "test" after the test proteins' label; Light Attention's setHARD "new_test_set".
_DEEPLOC_TEST = re.compile(r"(?:^|[_.-])test(?:$|[_.-])", re.IGNORECASE)


def _deeploc_split(tokens: list[str]) -> str | None:
    """The split the words after a DeepLoc header's label name: test (a word that is or holds
    "test" as a part: test, new_test_set), a split name (valid, val, train), else none."""
    for token in tokens:
        if token.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[token.lower()]
        if _DEEPLOC_TEST.search(token):
            return TEST
    return None


def _read_deeploc(text: str, name: str) -> LabelSet:
    records = []
    for rec in parse_fasta(io.BytesIO(text.encode()), name):
        tokens = [rec.id, *_after_id(rec.description)]  # (the id ends where the FASTA reader's does)
        if len(tokens) < 2 or not _DEEPLOC_LABEL.match(tokens[1]):
            raise InputError("DeepLoc header needs 'ID Location-M|S|U'", path=name, line=rec.line, record=rec.id)
        location, membrane = tokens[1].rsplit("-", 1)
        split = _deeploc_split(tokens[2:])
        records.append(LabelRecord(rec.id, rec.sequence.upper(), {"loc": location, "membrane": membrane},
                                   None, split, rec.line))
    return LabelSet(name, "deeploc", records)


# --- CSV / TSV id,label --------------------------------------------------------------------

_ID_HEADERS = {"id", "identifier", "name", "accession", "protein", "sequence_id", "key"}


def _refuse_open_quote(row: list[str], name: str, lineno: int) -> None:
    """A field of a label table (id,label; NetSurfP, PISCES, FLIP CSV) that runs over several
    lines: a quote that is never closed took the lines after it into one field (`P1,"cyto`
    swallowed every later row into P1's label, silently, exit 0). No id, sequence or label holds a
    line break; `lineno` is the line where the row starts."""
    if any("\n" in f for f in row):
        raise InputError("a quoted field runs over several lines (a '\"' that is not closed?): quote a whole "
                         "field, or none of it", path=name, line=lineno)


def _read_table(text: str, name: str, all_columns: bool = False) -> LabelSet:
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    delimiter = header_delimiter(first)
    rows = csv.reader(io.StringIO(text), delimiter=delimiter)
    records = []
    header_seen = False
    header: list[str] | None = None
    set_col = valid_col = None
    label_col = 1
    width = 2  # fields a row may fill: id and label, or the header's columns
    for lineno, row in enumerate(rows, 1):
        # (the id, first, ends at ASCII whitespace as a FASTA id does; a value loses any)
        _refuse_open_quote(row, name, lineno)
        row = [f.strip(ASCII_SPACE) if i == 0 else f.strip() for i, f in enumerate(row)]
        if not row or not any(row):
            continue
        if not header_seen:
            header_seen = True
            lowered = [f.lower() for f in row]
            if lowered[0] in _ID_HEADERS:
                set_col = lowered.index("set") if "set" in lowered else None
                # (FLIP's validation column beside the set, as a FLIP CSV has it: it was not read, and
                # the validation records were trained on)
                valid_col = lowered.index("validation") if "validation" in lowered else None
                # the first column after the id that is not the split's (`id,set,label`: the set
                # names were read as the labels, "the training labels hold 1 class(es)")
                label_col = next((i for i in range(1, len(row)) if i not in (set_col, valid_col)), 1)
                width = len(row)
                header = row
                if all_columns:
                    # (an annotation's `set` is a label like the others, not a split: `set,family` of
                    # gene sets, A and B, was refused as "unknown set 'A': train, valid or test")
                    set_col = valid_col = None
                    names = [column or f"column{i}" for i, column in enumerate(row[1:], 2)]
                    # (`id,family,family`: the second's values took the first's name, the first's lost)
                    twice = next((c for i, c in enumerate(names) if c in names[:i]), None)
                    if twice is not None:
                        columns = [i for i, c in enumerate(names, 2) if c == twice]
                        raise InputError(f"the header names {twice!r} twice (columns "
                                         f"{', '.join(map(str, columns))}): give each column its own name",
                                         path=name, line=lineno)
                continue
            if set(lowered) & (_ID_HEADERS | {"label", "set", "target"}):  # a header, ids not first
                raise InputError(f"the header {','.join(row)!r} does not start with the id column (the first "
                                 f"column is the protein id, named one of {', '.join(sorted(_ID_HEADERS))}; "
                                 "the second the label)", path=name, line=lineno)
        if len(row) < 2 or not row[0]:
            # (a PDB, GenBank, FASTQ, Stockholm file or a prep corpus given as the labels: its first
            # line said only "expected 'id,label'"; the FASTA readers' look-alikes tell what it is)
            hint = look_alike(first.encode("utf-8", "replace"), tables=False) if not records and header is None \
                else None
            raise InputError("expected 'id,label'" + (f"; {hint}" if hint else ""), path=name, line=lineno)
        if any(row[width:]):
            # "P1,membrane, peripheral": the label cut at its comma (or the rest read as the set)
            # ("more than 'id,label' (no header) 2" for a file whose header was id,label)
            columns = f"the header's {width} ({','.join(header)})" if header else "the 2 of 'id,label' (no header)"
            raise InputError(f"has {len(row)} fields, more than {columns}: a label holding a "
                             f"{'tab' if delimiter == chr(9) else 'comma'} must be quoted", path=name, line=lineno)
        # An empty label is kept: it is no label, and every task leaves that protein out (pandas'
        # to_csv writes a missing value as an empty field).
        split = None
        if set_col is not None and set_col < len(row):
            split = split_name(row[set_col], path=name, line=lineno)
        if valid_col is not None and valid_col < len(row) and is_validation(row[valid_col], path=name, line=lineno) \
                and split in (None, TRAIN):  # (an empty set is train)
            split = VALID
        if all_columns and header is not None:
            # (a row short of the header's columns: those are empty, no label; every row short of
            # `tm` left the column out of the map, and --color-by tm said "no such label column")
            labels = {column: row[i] if i < len(row) else "" for i, column in enumerate(names, 1)}
        else:
            labels = {"label": row[label_col] if label_col < len(row) else ""}
        records.append(LabelRecord(row[0], None, labels, None, split, lineno))
    return LabelSet(name, "table", records)


def _refuse_duplicate_ids(label_set: LabelSet) -> None:
    seen: dict[str, int | None] = {}  # id -> line of its first record
    dups = []
    for record in label_set.records:
        if record.id in seen:
            dups.append(record)
        else:
            seen[record.id] = record.line
    if dups:
        # (the line of the second record and of the first, as embed names a duplicate FASTA id:
        # "1 duplicate ids: a" left the user to search a proteome-sized file for them)
        first, more = dups[0], dups[1:]
        where = f" (first seen on line {seen[first.id]})" if seen[first.id] is not None else ""
        others = f"; {len(more)} more: {some_ids([r.id for r in more])}" if more else ""
        raise InputError(f"duplicate id{where}{others}", path=label_set.path, line=first.line, record=first.id)


def some_ids(items, n: int = 5, count: int | None = None) -> str:
    """`a, b, c and 12 more`: the first `n` ids (a long one shortened, `errors.brief`); `count`:
    how many there are, where `items` holds the first few only."""
    items = list(items)
    count = len(items) if count is None else count
    named = ", ".join(brief(item) for item in items[:n])
    return named + (f" and {count - n} more" if count > n else "")


def some_failed(failures, n: int = 3) -> str:
    """`a (skipped: empty sequence (--invalid-policy skip)), b (...) and 12 more`: the first `n` of
    (id, why) pairs, each protein that has no embedding with embed's reason (a long id shortened,
    `errors.brief`; the reason whole)."""
    failures = list(failures)
    named = ", ".join(f"{brief(ident)} ({why})" for ident, why in failures[:n])
    return named + (f" and {len(failures) - n} more" if len(failures) > n else "")


def read_sequences(path) -> dict[str, str]:
    """id -> sequence of a FASTA given beside labels that carry none (FLIP's sequences.fasta). An
    id given twice with different sequences, or an empty sequence, is an error naming the record."""
    name = display_name(path)
    seqs: dict[str, str] = {}
    lines: dict[str, int] = {}
    for rec in _companion_fasta(path):
        sequence = rec.sequence
        if not sequence:
            raise InputError("empty sequence", path=name, line=rec.line, record=rec.id)
        if rec.id in seqs and seqs[rec.id] != sequence:
            raise InputError(f"id given twice with different sequences (first at line {lines[rec.id]})",
                             path=name, line=rec.line, record=rec.id)
        seqs[rec.id] = sequence
        lines.setdefault(rec.id, rec.line)
    return seqs


_NOT_IN_AN_ID = re.compile(r"[\x00-\x20\x7f]")  # what FASTA headers split on or cannot hold (ASCII)
_UNIPROT_ID = re.compile(r"(?:sp|tr)\|([^|]+)\|")


def by_accession(ids) -> dict[str, str]:
    """UniProt FASTA ids (`sp|P69905|HBA_HUMAN`, the id embed keeps whole) by their accession
    (`P69905`), as tables keyed by accession name the proteins; the first id of an accession."""
    found = {}
    for ident in ids:
        if (match := _UNIPROT_ID.match(ident)) is not None:
            found.setdefault(match.group(1), ident)
    return found


def write_embed_fasta(label_set: LabelSet, stream, sequences: dict[str, str] | None = None, *,
                      sequences_name: str | None = None) -> int:
    """Write the FASTA `protrans embed` needs for these labels; returns the number of records.

    Files without sequences (FLIP labels, tables) need `sequences` (id -> sequence), e.g. from
    FLIP's sequences.fasta (`sequences_name` names it in errors). A record without a sequence is
    an error raised before anything is written (`-o -` gave a pipeline most of a FASTA).
    """
    from protrans_cli.io.fasta import write_fasta

    missing = [r.id for r in label_set.records if r.sequence is None and r.id not in (sequences or {})]
    # A table keyed by UniProt accession beside UniProt's FASTA (sp|P69905|HBA_HUMAN): found by the
    # accession, written under the label's id ("no sequence for 11156 ids" before)
    accessions = by_accession(sequences) if missing and sequences else {}
    aliases = {ident: accessions[ident] for ident in missing if ident in accessions}
    missing = [ident for ident in missing if ident not in aliases]
    if missing:
        if sequences is not None:
            hint = f"not in the --sequences FASTA {sequences_name}" if sequences_name else "not in the sequences given"
        else:
            hint = "give the sequences FASTA with --sequences"
            if label_set.format == "flip" and all(r.split is None for r in label_set.records):
                # No SET= anywhere: most often a FASTA of sequences, which needs no conversion.
                hint += "; if this is a FASTA of sequences, not labels, `protrans embed` reads it as it is"
        raise InputError(f"no sequence for {console.counted(len(missing), 'id')}: {some_ids(missing)} ({hint})",
                         path=label_set.path)
    # Every record is checked before the first is written: on stdout nothing can be taken back.
    checked = []
    for record in label_set.records:
        seq = record.sequence if record.sequence is not None else sequences[aliases.get(record.id, record.id)]
        if _NOT_IN_AN_ID.search(record.id):  # a FASTA header would cut it (or start another record)
            raise InputError("the id holds whitespace or a control character, which a FASTA header cannot keep "
                             "in an id", path=label_set.path, line=record.line, record=record.id[:60])
        # What embed makes of the sequence (gaps and a final '*' dropped), said here where the
        # record is known, not as embed's refusal of the written FASTA or as fit's length mismatch.
        try:
            residues = normalise(seq, rare="keep")
        except SequenceRejected as exc:
            raise InputError(exc.detail, path=label_set.path, line=record.line, record=record.id) from None
        residue_labels = record.labels.get("label") if label_set.format == "flip" else None
        if residue_labels is not None and len(residue_labels) != len(residues):
            raise InputError(f"{len(residue_labels)} per-residue labels for a sequence of {len(residues)} residues",
                             path=label_set.path, line=record.line, record=record.id)
        checked.append((record.id, seq))
    if label_set.format == "flip" and checked:
        # `labels sequences.fasta --sequences sampled.fasta`, the two files swapped: every count
        # agreed, and the DSSP strings were written as the proteins to embed (exit 0)
        seq_letters = set("".join(seq for _, seq in checked).upper())
        label_letters = set("".join(r.labels["label"] for r in label_set.records)) & set(STANDARD)
        if seq_letters <= set(SS8) and len(label_letters) >= 12:
            raise InputError(f"its labels read as protein sequences ({len(label_letters)} amino-acid letters) and the "
                             f"sequences given for them as secondary structure ({', '.join(sorted(seq_letters))}): "
                             "are the label file and --sequences swapped? (protrans labels LABELS --sequences "
                             "SEQUENCES)", path=label_set.path)
    for ident, seq in checked:
        write_fasta(stream, ident, seq)
    if aliases:
        first = next(iter(aliases))
        console.info(f"{console.counted(len(aliases), 'id')} of the labels found in "
                     f"{sequences_name or 'the sequences'} by UniProt accession ({first} as {aliases[first]}), "
                     "written under the labels' ids")
    return len(checked)

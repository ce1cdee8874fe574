"""The HDF5 embeddings file: layout, reversible key escaping, a streaming writer and a reader.

Layout (docs/formats.md is the user-facing description):

    /per_residue/<key>   float16|float32 (L, D), or (n_layers, L, D) with several --layer
    /per_protein/<key>   float16|float32 (D,),   or (n_layers, D)
  or, with layout="flat" (the files ProtTrans' script and bio_embeddings write):
    /<key>               one kind only, at the root
  or, with layout="stacked" (per-protein only; io/stacked.py), once the run completes:
    /per_protein         (N, D) or (N, n_layers, D), rows in key order; /ids, /headers, ... beside it

Each dataset has attributes `id` (the FASTA id), `header` (the whole header line), `length`
(residues) and `checksum` ("md5:<hex>" of the upper-cased sequence, see `sequence_checksum`);
in the flat layout also `original_id` (the FASTA id, where bio_embeddings' readers look).
The file's attributes describe the run (model, family, layers, pooling, dtypes, version,
command line, `failed` as JSON {id: reason}).

Keys are FASTA ids with `%`, `/`, control characters and the ids `.` and `..` percent-escaped, so
two ids never collapse into one key and `unescape_key(escape_key(x)) == x`.

`EmbeddingsWriter` streams into `<output>.partial` (a valid HDF5 file after every `flush()`), and
renames it to `<output>` only when the run completes; `resume=True` reopens the partial file (or
the finished output) and reports which ids are already present so that a rerun skips them.
Before each batch it asks io/disk.py whether the disk, the quota and `ulimit -f` have room for
it (a write that fails inside HDF5 leaves the file's metadata half written).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from protrans_cli.console import flush_standard_streams
from protrans_cli.errors import (InputError, RuntimeFailure, UsageError, again_with_resume, expect_path, first_line,
                                 force_option, one_of, option, resume_option)
from protrans_cli.io import disk
from protrans_cli.io.fasta import begins_fasta, decode_word, header_id
from protrans_cli.io.files import directory_kind, missing_file, output_directory, utf8_text
from protrans_cli.residues import THREE_DI_PREFIX

PER_RESIDUE = "per_residue"
PER_PROTEIN = "per_protein"
KINDS = (PER_RESIDUE, PER_PROTEIN)
# `protrans contacts`: (L, L) contact maps in a group of their own (written by EmbeddingsWriter,
# refused by EmbeddingsReader: they are not embeddings)
CONTACTS = "contacts"
LAYOUTS = ("grouped", "flat", "stacked")
STORAGE_DTYPES = ("float32", "float16")
COMPRESSIONS = ("none", "gzip", "lzf")
# embed flushes its file after a batch when the last flush is this old (EmbeddingsWriter.flush_due)
FLUSH_SECONDS = 1.0

# File attributes that must agree between a partial file and the run that resumes it (one
# missing from an older file is not compared).
RESUME_ATTRS = ("model", "revision", "commit", "family", "layers", "pooling", "layout", "kinds", "storage_dtype",
                "max_length", "long_policy", "chunk_overlap", "part", "weights_fingerprint", "chains",
                "linker_length", "structure_tokens")

# Settings a resumed run may change (RESUME_ATTRS may not): the file attributes hold the last
# run's; the `runs` attribute lists every run's, oldest first.
RUN_ATTRS = ("command_line", "protrans_version", "device", "compute_dtype", "packing", "compiled", "sdpa_kernels",
             "attention", "device_map")

_UNSAFE = re.compile(r"[%/\x00-\x1f\x7f]")


def escape_key(ident: str) -> str:
    """A reversible HDF5-safe name for a FASTA id."""
    if ident in (".", ".."):
        return ident.replace(".", "%2E")
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", ident)


def unescape_key(key: str) -> str:
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), key)


_MD5_KEY = re.compile(r"[0-9a-f]{32}")


def dataset_id(key: str, attrs) -> str:
    """A dataset's protein id: its `id` attribute (embed's files), else bio_embeddings'
    `original_id` up to its first whitespace (the FASTA id as embed takes it from the header),
    else the unescaped key (the ProtTrans script's: a whole header line such as `EX0029 Plastid-S`
    is that; `key_for` finds it by its first word too). `attrs`: the dataset's attributes."""
    return _attribute_id(attrs) or unescape_key(key)


def _attribute_id(attrs) -> str | None:
    """The id a dataset's attributes give it (`id`, else `original_id`'s first word), or None."""
    return _id_of(_plain(attrs["id"]) if "id" in attrs else None,
                  _plain(attrs["original_id"]) if "original_id" in attrs else None)


def _low_attribute_id(obj) -> str | None:
    """`_attribute_id` of a dataset opened through h5py's low-level calls."""
    return _id_of(_read_text_attr(obj, b"id"), _read_text_attr(obj, b"original_id"))


def _id_of(ident, original) -> str | None:
    """The id that `id` and `original_id` attribute values give: a string or an integer `id`,
    else `original_id`'s first word where it is a string. An array or a reference (another
    tool's file) names no protein: it was a traceback where the low-level readers (merge,
    `embed --resume`) hashed or escaped it."""
    if not isinstance(ident, (str, int)):
        ident = None
    if not ident and isinstance(original, str):
        ident = _original_id(original)
    return str(ident) if ident else None


def _key_id(key: str) -> str:
    """The id a key without attributes names: the unescaped key up to its first whitespace."""
    name = unescape_key(key)
    return header_id(name) or name


def _original_id(value) -> str | None:
    """The FASTA id in an `original_id` (Biopython's description: the header line)."""
    return (header_id(str(value)) or None) if value else None


def dataset_checksum(key: str, attrs) -> str | None:
    """A dataset's sequence checksum ("md5:<hex>"): its `checksum` attribute (embed's files), else
    its key where bio_embeddings made it the md5 of the sequence (32 hex digits, with an
    `original_id`); None when it has none."""
    if "checksum" in attrs:
        return str(_plain(attrs["checksum"]))
    if "original_id" in attrs and _MD5_KEY.fullmatch(key):
        return "md5:" + key
    return None


def sequence_checksum(sequence: str) -> str:
    """md5 of the upper-cased sequence without whitespace: how labels are matched without ids."""
    from protrans_cli.residues import residue_text

    # (embed --structure-tokens pairs residues with 3Di states in one character: the residues')
    clean = "".join(residue_text(sequence).split()).upper()
    return "md5:" + hashlib.md5(clean.encode("ascii", "replace")).hexdigest()


@dataclass
class _ForeignKeys:
    """How another tool's file names its proteins (EmbeddingsReader.key_for)."""

    declared: dict[str, str]   # id -> key, where an `id`/`original_id` attribute names another id than the key
    loose: dict[str, str]      # first word -> key, for keys that are whole header lines without attributes
    ambiguous: set[str] = field(default_factory=set)  # first words of several such keys


def _starts_like_fasta(path) -> bool:
    """Whether the file's first byte that is not blank is a FASTA header's '>'."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return begins_fasta(head)


def _packed_hint(path) -> str:
    """What a file HDF5 cannot open is where its first bytes say it holds one packed: empty (a
    copy that failed), compressed (`gzip out.h5` to send it) or an archive, or a PyTorch checkpoint;
    '' otherwise."""
    from protrans_cli.io.files import TORCH_KIND, sniff_compression, torch_file

    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return ""
    if not head:
        return "; the file is empty (0 bytes)"
    if kind := sniff_compression(head):
        tool = {"gzip": "gunzip", "bz2": "bunzip2", "xz": "unxz", "zstd": "unzstd"}[kind]
        return (f"; the file is {kind}-compressed, and an HDF5 file is read uncompressed: decompress it first "
                f"({tool} -k FILE)")
    if torch_file(head):  # (a zip too: Hugging Face's pytorch_model.bin, a .pth; nothing to extract)
        return f"; {TORCH_KIND}, not embeddings"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or head[257:262] == b"ustar":
        kind = "zip" if head.startswith(b"PK") else "tar"
        return f"; the file is a {kind} archive: extract the HDF5 file from it first"
    return ""


def _not_hdf5(path) -> str | None:
    """What a file is that holds no HDF5 signature ("the file is binary", "it begins 'id,label...'"),
    for a reader's refusal; None for an HDF5 file, damaged or not (HDF5's reason then says more),
    or one that cannot be read. (EmbeddingsReader says _packed_hint's more where it has one.)"""
    import h5py

    from protrans_cli.io.files import binary_kind, sniff_compression

    try:
        if h5py.is_hdf5(path):
            return None
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if not head:
        return "the file is empty: 0 bytes"
    if kind := sniff_compression(head):  # (binary_kind's sentence would say "compressed twice": once here)
        return f"the file is {kind}-compressed"
    # (as text, quoted as an id is, as refuse_replacing_other_file shows it)
    return binary_kind(head, sentence=True) or f"it begins {head[:16].decode('utf-8', 'replace')!r}"


# `--embeddings -` (fit, predict): refused before any work, a usage error
HDF5_FROM_STDIN = "an HDF5 file is read in place, not from stdin ('-'): give the embeddings as a file"


# File attributes embed writes as text, and every reader compares as text (`kind` is left out:
# another tool's flat file may hold anything there, and its kind is then guessed; `kinds` is
# checked where it is read, naming what it should name)
TEXT_ATTRS = ("model", "revision", "commit", "weights_fingerprint", "family", "pooling", "compute_dtype",
              "storage_dtype", "device", "layout", "long_policy", "input_prefix", "input_digest", "part",
              "attention", "sdpa_kernels", "imported_from", "structure_tokens", "structure_tokens_file")


def pooling_kind(text) -> str:
    """"cls" or "mean": how per-protein vectors were pooled, from a file's (or a head's recorded)
    `pooling` attribute; files written before --pooling, and import-esm's, say mean."""
    return "cls" if str(text or "").startswith("cls") else "mean"


def input_prefix_of(attrs) -> str:
    """The token embed put before every protein of a file with attributes `attrs` (the
    `input_prefix` attribute: ProstT5's <AA2fold>), '' for none, as in every file written before
    embed put one there, and in a run's attributes without one."""
    return str(_plain(attrs.get("input_prefix")) or "")


def prefix_words(prefix: str) -> str:
    """How embed fed the proteins, for messages: 'with <AA2fold> before every protein'."""
    return f"with {prefix} before every protein" if prefix else "with no token before the proteins"


def three_di_words(this: str, that: str) -> str | None:
    """For messages about two files' input prefixes that differ because one holds embeddings of
    3Di strings (embed --3di: <fold2AA>) and the other of amino acids: which is which, or None
    where neither is a 3Di file (the prefixes then differ by protrans version)."""
    if THREE_DI_PREFIX not in (this, that):
        return None
    return "3Di strings (embed --3di)" if this == THREE_DI_PREFIX else "amino acids (embed without --3di)"


class EmbeddingsReader:
    """Read an embeddings file of any layout.

        with EmbeddingsReader("x.h5") as r:
            r.kinds                   # ("per_residue", "per_protein") present
            r.ids(), r.get(ident)     # no kind given: the file's one kind (per_residue when it holds both)
            for ident in r.ids(PER_RESIDUE): r.get(ident, PER_RESIDUE)  # np.ndarray
            ids, X = r.matrix()       # per-protein vectors as one (N, D) array, rows in key order
    """

    def __init__(self, path):
        # (a list of files was read as its text: "['x.h5']: no such file")
        expect_path(path, "EmbeddingsReader: path", " (one embeddings file)", "; open a reader for each file")
        self.path = str(path)
        if os.path.isdir(self.path):
            # HDF5's own message for a directory runs to two lines of C struct fields.
            raise InputError("is a directory, expected an HDF5 file" + directory_kind(self.path), path=self.path)
        if self.path == "-" or (os.path.exists(self.path) and not os.path.isfile(self.path)):
            # ("-: no such file", or HDF5's "file read failed" for <(cat e.h5))
            raise InputError("an HDF5 file is read in place: give a regular file, not stdin or a pipe",
                             path="<stdin>" if self.path == "-" else self.path)
        try:
            self.file = h5_file(self.path, "r")
        except FileNotFoundError:
            raise InputError(missing_file(self.path), path=self.path) from None
        except BlockingIOError:  # a writer holds HDF5's lock on it (see h5_file): not a damaged file
            ours = self.path.endswith(".partial")
            raise InputError("another process has it open for writing (HDF5's file lock)" +
                             ("; protrans embed writes OUTPUT.partial and renames it OUTPUT once the run ends: "
                              "read that file when it is done" if ours else ": read it once that process is done"),
                             path=self.path) from None
        except OSError as exc:
            hint = ""
            if self.path.endswith(".pt"):  # esm-extract writes one torch file per protein
                hint = ("; esm-extract's .pt files are not read here: convert them with protrans import-esm "
                        "DIR -o OUT.h5, or embed the FASTA with protrans embed -m <the ESM model>")
            elif _starts_like_fasta(self.path):  # the sequences given where their embeddings go
                hint = "; it is a FASTA file: embed it first (protrans embed; predict and knn also take it as --fasta)"
            else:
                hint = _packed_hint(self.path)
            if (what := _not_hdf5(self.path)) is not None:
                # (HDF5's "Unable to synchronously open file (file signature not found)" said nothing of the file)
                raise InputError(f"not an HDF5 file{hint or f' ({what})'}", path=self.path) from None
            # (first line: HDF5's messages can span lines, and the error is one line)
            raise InputError(f"not a readable HDF5 file ({first_line(exc)}){hint}", path=self.path) from None
        # (the process that opened it, and the file it opened: see _check_open)
        self._opened_pid, self._opened_identity = os.getpid(), _file_identity(self.path)
        self.attrs = {k: _plain(v) for k, v in self.file.attrs.items()}
        # (an array or a number there, in a damaged or hand-made file, was a numpy traceback where
        # it was compared: "The truth value of an array ... is ambiguous")
        odd = next((k for k in TEXT_ATTRS if k in self.attrs and not isinstance(self.attrs[k], str)), None)
        if odd is not None and not isinstance(self.attrs.get("layout"), str):
            # Another tool's file (no `layout`: not embed's) may use these names for its own ends
            # (`revision` 3, `device` 0): read as absent, as protrans reads none of its attributes
            # (refusing them refused a file every reader took before)
            self.attrs = {k: v for k, v in self.attrs.items() if k not in TEXT_ATTRS or isinstance(v, str)}
        elif odd is not None:
            self.file.close()
            raise InputError(f"its `{odd}` attribute is {type(self.attrs[odd]).__name__} {self.attrs[odd]!r:.40}, "
                             "not text (a damaged file, or not written by protrans embed)", path=self.path)
        try:
            root = [name.decode("utf-8") for name in _link_names(self.file)]  # (links out of the file refused)
            self._stacked = _stacked_view(self.file, self.path)
        except BaseException:
            self.file.close()
            raise
        self.subgroups: list[str] = []
        self._not_datasets: list[str] = []  # the subgroups, and named datatypes (h5py's f["t"] = np.dtype(...))
        # {id: key} of proteins found by their sequence, not their id (export --ids FASTA, as fit finds
        # them): another tool's file keyed by sequence, bio_embeddings', holds one of several ids a sequence
        self.aliases: dict[str, str] = {}
        self._foreign_ids: dict[str, _ForeignKeys] = {}
        self._groups: dict = {}  # kind -> its group, looked up once (see _group)
        self._kind_guessed = False
        if self._stacked is not None:
            self.layout, self.kinds = "stacked", (PER_PROTEIN,)
            return
        present = set(root)
        # (a group by that name: a named datatype called per_protein, h5py's f["per_protein"] = np.dtype(...), is
        # none, and read as the kind's group it was an AttributeError traceback from h5py)
        groups = [k for k in KINDS if k in present and _is_group(self.file[k])]
        if not groups and CONTACTS in present and self.attrs.get("kinds") == CONTACTS:
            self.file.close()
            raise InputError("holds contact maps (protrans contacts), not embeddings: read them with h5py "
                             "(f['contacts'][id]); embeddings come from protrans embed", path=self.path)
        # A probabilities file (predict --probabilities: a group per output, its classes in
        # `classes_<output>`) read as a flat file of no protein: fit found "64 label records
        # without an embedding", knn "per-residue embeddings only", EmbeddingsReader no id.
        outputs = [k[len("classes_"):] for k in self.attrs if k.startswith("classes_")]
        if not groups and isinstance(self.attrs.get("task"), str) and outputs and all(o in present for o in outputs):
            self.file.close()
            raise InputError(f"holds the class probabilities of protrans predict --probabilities (task "
                             f"{self.attrs['task']}), not embeddings: read them with h5py (f['{outputs[0]}'][id]) or "
                             "protrans export; embeddings come from protrans embed", path=self.path)
        # Groups at the root of a flat file from another tool (h5py makes "a/b" a dataset b in a
        # group a): not proteins, and the datasets in them are not read (see `subgroups`).
        if groups:
            self.layout = "grouped"
            self.kinds = tuple(groups)
        else:
            self.layout = "flat"
            kind = self.attrs.get("kind")
            # (an array there, in another tool's file, was a numpy traceback: "truth value ... ambiguous")
            known = isinstance(kind, str) and kind in KINDS
            # A file from another tool (no `layout`: embed writes one in every file), its kind attribute
            # given or not (with one, its groups and named datatypes were counted as proteins by keys()
            # and info, though ids() and items() passed over them)
            if not known or "layout" not in self.attrs:
                # (what each member is, read from its object header in one low-level call: h5py's
                # get(k, getclass=True) cost 3x as much, paid by every reader of a file of a million
                # proteins, 4 in a fit; links out of the file are refused above)
                import h5py

                root_id = h5py.h5g.open(self.file.id, b"/")
                types = {k: h5py.h5o.get_info(root_id, k.encode("utf-8")).type for k in root}
                self._not_datasets = [k for k in root if types[k] != h5py.h5o.TYPE_DATASET]
                # (a named datatype is neither a protein nor a group of them: not said as a group)
                self.subgroups = [k for k in self._not_datasets if types[k] == h5py.h5o.TYPE_GROUP]
                if not known:  # guessed from the shapes
                    first = next((self.file[k] for k in root if types[k] == h5py.h5o.TYPE_DATASET), None)
                    kind = PER_PROTEIN if first is not None and first.ndim == 1 else PER_RESIDUE
                    self._kind_guessed = first is None
            self.kinds = (kind,)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # A reader sent to another process: a torch Dataset holding one, in DataLoader workers under
    # spawn (macOS's start method) or forkserver (Python 3.14's on Linux), or a multiprocessing
    # Pool's task. h5py objects cannot be pickled ("TypeError: h5py objects cannot be pickled"
    # in every worker), so the reader travels as its path and what it has learnt of the file, and
    # opens the file again where it lands, refusing a file that changed in between.
    _NOT_PICKLED = ("file", "_stacked", "_groups", "_opened_pid", "_opened_identity")

    def __getstate__(self) -> dict:
        self._check_open()
        state = {k: v for k, v in self.__dict__.items() if k not in self._NOT_PICKLED}
        state["_identity"] = _file_identity(self.path)
        return state

    def __setstate__(self, state: dict) -> None:
        identity = state.pop("_identity")
        self.__dict__.update(state)
        self._open_here(identity)

    def _open_here(self, identity: tuple, since: str = "was sent to this process") -> None:
        """Open the file in this process (an unpickled reader, or one forked from the process that
        opened it), refusing one that is no longer the file `identity` describes."""
        try:
            now = _file_identity(self.path)
            if now != identity:
                raise InputError(f"changed since the EmbeddingsReader {since} (written or replaced in between): "
                                 "open it again", path=self.path)
            f = h5_file(self.path, "r")
        except FileNotFoundError:
            raise InputError(missing_file(self.path) + f" (removed since the EmbeddingsReader {since})",
                             path=self.path) from None
        except OSError as exc:
            raise InputError(f"not a readable HDF5 file ({first_line(exc)})", path=self.path) from None
        try:
            stacked = _stacked_view(f, self.path) if self.layout == "stacked" else None
        except BaseException:
            f.close()
            raise
        self.file, self._stacked, self._groups = f, stacked, {}
        self._opened_pid, self._opened_identity = os.getpid(), identity

    def close(self):
        self.file.close()
        self._opened_pid = None  # (nothing to open again in a process forked from this one)

    def _default_kind(self, kind: str | None) -> str:
        """`kind` as given, or None: the file's one kind, per_residue when it holds both (a
        per-protein file's `r.ids()`, `r.get(ident)` and `r.dim()` said it "has no per_residue
        embeddings")."""
        self._check_open()
        if kind is not None:
            return kind
        return PER_RESIDUE if PER_RESIDUE in self.kinds or not self.kinds else self.kinds[0]

    def _check_open(self) -> None:
        """A reader used after its `with` block: h5py's bare "ValueError: Invalid location
        identifier" (the first method every public one calls: `_default_kind`, `_check_kind`). An open
        reader forked into another process opens the file there.

        A reader copied by fork (DataLoader workers under Linux's default start method before Python
        3.14, a multiprocessing Pool's under fork) held the parent's open HDF5 file, each process
        reading it through its own copy of HDF5's state and metadata cache. The copy's file is
        closed in the child first: HDF5 hands any open of a file it has open (same device and inode)
        the open one, so the new open was the inherited handle again. That close is the child's
        alone: read-only, HDF5 writes nothing, and it releases no lock (it closes the child's
        descriptor, and flock belongs to the open file description, which the parent's keeps)."""
        if self._opened_pid not in (None, os.getpid()):
            self.file.close()
            self._open_here(self._opened_identity, "was opened in the process this one was forked from")
        if not self.file:
            raise UsageError(f"{self.path}: this EmbeddingsReader is closed: use it inside its with block")

    def _check_kind(self, kind) -> None:
        self._check_open()
        if kind not in self.kinds:
            raise InputError(f"has no {kind} embeddings (it holds {', '.join(self.kinds)})", path=self.path)

    def _group(self, kind):
        self._check_kind(kind)
        if self._stacked is not None:  # (no dataset per protein: the callers that need one branch before)
            raise InputError("is in the stacked layout (one (N, D) array): it has no dataset per protein",
                             path=self.path)
        if self.layout == "flat":
            return self.file
        # Looked up once per kind: fit and predict --labels, export --ids and knn look up a group
        # for each protein, two or three times (`self.file[kind]`, h5py's dictionary interface, and
        # the link check: some 60 us each, a fifth of matching a label record to its dataset)
        group = self._groups.get(kind)
        if group is None:
            local_link(self.file, kind.encode("utf-8"))  # (a group linked in from another file)
            group = self._groups[kind] = self.file[kind]
        return group

    def ids(self, kind: str | None = None) -> list[str]:
        """The proteins' ids, each once: two datasets naming one protein (another tool's file
        whose `original_id`s share a first word, "P1 isoform a" and "P1 isoform b") are refused,
        as duplicate FASTA ids are: predict wrote both under one id, and a label went to either."""
        kind = self._default_kind(kind)
        if self._stacked is not None:
            self._check_kind(kind)
            return self._stacked.ids()
        ids = [ident for ident, _ in stored_proteins(self._group(kind), checksums=False)]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            twice = next(i for i in ids if i in seen or seen.add(i))
            group = self._group(kind)  # (the two datasets named: "two datasets name protein 'P1'" left them to find)
            keys = [k for k in self.keys(kind) if dataset_id(k, dataset_attrs(group, k)[0]) == twice][:2]
            raise one_protein_twice(self.path, twice, *keys)
        return ids

    def keys(self, kind: str | None = None) -> list[str]:
        """The dataset names of a kind (groups in a flat file from another tool left out; for a
        stacked file, the keys its ids have in the other layouts)."""
        kind = self._default_kind(kind)
        if self._stacked is not None:
            return [escape_key(ident) for ident in self.ids(kind)]
        keys = [name.decode("utf-8") for name in _link_names(self._group(kind))]
        if self._not_datasets:
            skip = set(self._not_datasets)
            keys = [k for k in keys if k not in skip]
        return keys

    def foreign_ids(self, kind: str | None = None) -> dict[str, str]:
        """id -> key of the datasets whose key is not their escaped id: those of a bio_embeddings
        file (md5 keys, the id in `original_id`), of biotrainer's (keys "0", "1", ... in input
        order) and of the ProtTrans script's (whole header lines: by their first word). {} for
        embed's files (every key is the id's)."""
        kind = self._default_kind(kind)
        keys = self._foreign(kind)
        return {**keys.loose, **keys.declared}

    def _foreign(self, kind: str) -> "_ForeignKeys":
        """How another tool's keys name proteins (see `key_for`), read once per kind through
        h5py's low-level calls (its dictionary interface cost 60 us a protein: 30 s for 500,000).
        A stacked file's ids are in its ids column, whoever wrote it (one without embed's
        `layout` attribute has no dataset per protein to read them from)."""
        if "layout" in self.attrs or self._stacked is not None:
            return _ForeignKeys({}, {})
        if kind not in self._foreign_ids:
            import h5py

            group, declared, loose, ambiguous = self._group(kind), {}, {}, set()
            skip = set(self._not_datasets)
            for name in _link_names(group):
                key = name.decode("utf-8")
                if key in skip:
                    continue
                obj = h5py.h5o.open(group.id, name)
                ident = _low_attribute_id(obj) if isinstance(obj, h5py.h5d.DatasetID) else None
                if ident:
                    if escape_key(ident) != key:
                        if declared.setdefault(ident, key) != key:  # two datasets name one protein
                            raise one_protein_twice(self.path, ident, declared[ident], key)
                else:
                    # a whole header line as the key (the ProtTrans script): its first word, and the
                    # line itself where escaping it spells another key (a tab or a control
                    # character in it: ids() lists the line, and get() of it found nothing)
                    for spelled in dict.fromkeys((_key_id(key), unescape_key(key))):
                        if escape_key(spelled) != key:
                            if loose.setdefault(spelled, key) != key:  # "P1 isoform a", "P1 isoform b"
                                ambiguous.add(spelled)
            self._foreign_ids[kind] = _ForeignKeys(declared, loose, ambiguous)
        return self._foreign_ids[kind]

    def key_for(self, ident: str, kind: str | None = None) -> str | None:
        """The key of protein `ident`'s dataset, None when the file has none: the dataset whose
        `id`/`original_id` attribute names it; else the key that spells it, unless an attribute
        says that dataset is another protein's (biotrainer's keys "0", "1", ...: protein "1" is
        not the dataset "1", the second protein, and it was read as such); else a key that is a
        whole header line starting with it (the ProtTrans script's, `EX0029 Plastid-S`)."""
        _expect_id(ident)
        kind = self._default_kind(kind)
        if self._stacked is not None:
            self._check_kind(kind)
            return escape_key(ident) if self._stacked.row_of(ident) is not None else None
        key = self._key_for(ident, kind)
        if key is not None and not self._is_dataset(kind, key):
            return None  # a group among the proteins is none (items() passes over it too)
        return key

    def _is_dataset(self, kind: str, key: str) -> bool:
        import h5py

        # (what the member is, from its object header, without opening it: fit and predict --labels ask it of
        # every protein of the file, labelled or not, and h5o.open cost 4x as much: a fifth of fit's time)
        group, name = self._group(kind), key.encode("utf-8")
        local_link(group, name)  # (links out of the file refused, as open_local refuses them)
        return h5py.h5o.get_info(group.id, name).type == h5py.h5o.TYPE_DATASET

    def _key_for(self, ident: str, kind: str) -> str | None:
        group, key = self._group(kind), escape_key(ident)
        if "layout" in self.attrs:  # embed's own file: every key is its id's
            return key if key in group else None
        if key in group:
            # the common case decided by this dataset alone (the map below reads every one)
            named = _attribute_id(dataset_attrs(group, key)[0])
            if named is None or named == ident:
                return key
        keys = self._foreign(kind)
        if ident in keys.declared:
            return keys.declared[ident]
        if ident in keys.ambiguous:  # the first word of several whole-header keys: whose label is it?
            raise one_protein_twice(self.path, ident, *sorted(k for k in self._group(kind) if _key_id(k) == ident)[:2])
        return keys.loose.get(ident, self.aliases.get(ident))

    def dataset(self, ident: str, kind: str | None = None):
        kind = self._default_kind(kind)
        key = self.key_for(ident, kind)
        if key is None:
            raise InputError(f"no {kind} embedding for this id", path=self.path, record=ident)
        group = self._group(kind)
        open_local(group, key.encode("utf-8"), data=True)
        return group[key]

    def get(self, ident: str, kind: str | None = None) -> np.ndarray:
        _expect_id(ident)
        kind = self._default_kind(kind)
        if self._stacked is not None:
            self._check_kind(kind)
            return self._stacked.get(ident)
        dataset = self.dataset(ident, kind)
        _refuse_hollow(dataset.id, self.path, ident)
        return dataset[()]

    def matrix(self, kind: str = PER_PROTEIN) -> tuple[list[str], np.ndarray]:
        """(ids, vectors): the per-protein vectors as one (N, D) array (N, n_layers, D with
        several layers), row i protein ids[i], in the order of their keys (escape_key, as bytes:
        a stacked file's order); from a stacked file in one read."""
        self._check_kind(kind)
        if kind != PER_PROTEIN:
            raise InputError("matrix() stacks per-protein vectors; per-residue arrays differ in length",
                             path=self.path)
        if self._stacked is not None:
            return self._stacked.listed_ids(), self._stacked.data[()]  # (no id -> row dict beside the array)
        if "layout" in self.attrs:  # embed's own file
            found = self._own_matrix(kind)
            if found is not None:
                return found
        ids, rows = [], []
        for ident, values, _ in self.items(kind):
            ids.append(ident)
            rows.append(values)
        order = sorted(range(len(ids)), key=lambda i: escape_key(ids[i]).encode("utf-8"))
        if not rows:  # (the shape and dtype a stacked file of no protein has)
            from protrans_cli.io.stacked import row_from_attributes

            shape, dtype = row_from_attributes(self.file.attrs)
            return [], np.empty((0, *shape), dtype=dtype)
        shape = rows[order[0]].shape
        odd = next((i for i in order if rows[i].shape != shape), None)
        if odd is not None:  # (another tool's file, or two files' vectors put in one: a ValueError traceback)
            raise InputError(f"per-protein vectors of different shapes: {ids[order[0]]!r} has {shape}, "
                             f"{ids[odd]!r} {rows[odd].shape} (a file holds the vectors of one model and layer)",
                             path=self.path)
        return [ids[i] for i in order], np.stack([rows[i] for i in order])

    def selected_matrix(self, idents: list[str], kind: str = PER_PROTEIN) -> tuple[list[str], np.ndarray]:
        """matrix() of the proteins `idents` names alone, row i the protein idents[i] (found by
        key_for), with its id as matrix() lists it: each of their datasets read, no other (knn
        --ids read the whole file's vectors to keep 10 of them; a stacked file, or no id: matrix()'s
        rows). `idents`: ids the file holds (export.selected_ids'); one it does not: InputError."""
        self._check_kind(kind)
        if kind != PER_PROTEIN:
            raise InputError("matrix() stacks per-protein vectors; per-residue arrays differ in length",
                             path=self.path)
        if self._stacked is not None or not idents:  # (knn takes a stacked file's rows itself: stacked.take)
            ids, matrix = self.matrix(kind)
            rows = [self.ids(kind).index(ident) if self._stacked is None else self._stacked.row_of(ident)
                    for ident in idents]
            return [ids[r] for r in rows], matrix[rows]
        group, own = self._group(kind), "layout" in self.attrs
        ids, rows = [], []
        for ident in idents:
            key = self.key_for(ident, kind)
            if key is None:
                raise InputError(f"no {kind} embedding for this id", path=self.path, record=ident)
            attrs, shape = dataset_attrs(group, key)
            if own:
                self.check_declared_width(key, shape)  # (before it is read: see check_declared_width)
            ids.append(unescape_key(key) if own else dataset_id(key, attrs))
            rows.append(read_array(group, key))
            if rows[-1].shape != rows[0].shape:  # (as matrix() refuses them)
                raise InputError(f"per-protein vectors of different shapes: {ids[0]!r} has {rows[0].shape}, "
                                 f"{ids[-1]!r} {rows[-1].shape} (a file holds the vectors of one model and layer)",
                                 path=self.path)
        return ids, np.stack(rows)

    def check_declared_width(self, key: str, shape) -> None:
        """Refuse a dataset of embed's own file whose last axis is not the file's `embedding_dim`,
        from its shape alone: a shape is only a claim (a few KB of HDF5 can declare a vector of
        10**10 values), and the first protein's was taken as the width and read whole before any
        other was compared (37 GiB allocated, or an out-of-memory error naming no file)."""
        dim = self.attrs.get("embedding_dim")
        if ("layout" not in self.attrs or not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0
                or not len(shape) or shape[-1] == dim):
            return
        raise InputError(f"embedding has shape {'x'.join(map(str, shape))}, where the file's embedding_dim is {dim} "
                         "(a damaged file, or not written by protrans embed)", path=self.path,
                         record=unescape_key(key))

    def _own_matrix(self, kind: str):
        """matrix() of embed's own grouped or flat file: every key is its id's, escaped (no
        attribute read), and the vectors read through h5py's low-level calls into one array
        (items() read every attribute too: 209 us a protein). None where a dataset is not a
        float vector of the first one's shape (another writer's): items() then reads them."""
        import h5py

        group = self._group(kind)
        names = _link_names(group)
        if not names:
            return None
        first = open_local(group, names[0], data=True)
        if not isinstance(first, h5py.h5d.DatasetID) or first.rank < 1 or first.dtype not in PLAIN_FLOAT_DTYPES:
            return None  # (a scalar too: h5py reads into an array, and out[i] was a numpy scalar)
        shape, dtype = tuple(first.shape), first.dtype
        self.check_declared_width(names[0].decode("utf-8"), shape)  # (before the (N, ...) array is allocated)
        out = np.empty((len(names), *shape), dtype=dtype)
        for i, name in enumerate(names):
            obj = open_local(group, name, data=True)
            if not isinstance(obj, h5py.h5d.DatasetID) or tuple(obj.shape) != shape or obj.dtype != dtype:
                return None
            if out[i].size:
                obj.read(h5py.h5s.ALL, h5py.h5s.ALL, out[i])
        # (listed by name, which is the keys' order: see _link_names)
        return [unescape_key(name.decode("utf-8")) for name in names], out

    def items(self, kind: str | None = None) -> Iterator[tuple[str, np.ndarray, dict]]:
        """(id, array, attributes) of every protein, through h5py's low-level calls: its
        dictionary interface cost about 3x a plain h5py loop (375 us a protein)."""
        kind = self._default_kind(kind)
        import h5py

        if self._stacked is not None:
            self._check_kind(kind)
            for rows, attrs in self._stacked.blocks():
                for row, record in zip(rows, attrs):
                    yield record["id"], row, record
                    self._check_open()  # (resumed after the with block: see below)
            return
        group = self._group(kind)
        for key in self.keys(kind):
            obj = open_local(group, key.encode("utf-8"), data=True)
            if not isinstance(obj, h5py.h5d.DatasetID):
                # a group among the proteins (another tool's, or "a/b" written by h5py): not a
                # protein, as ids() and a flat file's subgroups have it (it was a TypeError)
                continue
            names: list[bytes] = []
            h5py.h5a.iterate(obj, names.append)  # (None returned: on to the next)
            attrs = {name.decode("utf-8"): _plain(read_attr(obj, name.decode("utf-8"))) for name in names}
            yield dataset_id(key, attrs), read_array(group, key, obj), attrs
            # items() begun in a with block and resumed after it: h5py's bare "ValueError:
            # Invalid location identifier" at the next protein, not the closed reader's error
            self._check_open()

    def facts(self, key: str, kind: str | None = None) -> tuple[int | None, int | None, str | None]:
        """(length, truncated_from, checksum) of the protein at `key`, as `dataset_facts` gives them
        (a stacked file's from its columns, where "" and 0 are what stack_file writes for a
        checksum or length not recorded: None, as for a dataset without the attribute)."""
        kind = self._default_kind(kind)
        if self._stacked is not None:
            self._check_kind(kind)
            row = self._stacked.row_of(unescape_key(key))
            if row is None:
                raise KeyError(key)
            return self._stacked.facts(row)
        return dataset_facts(self._group(kind), key, per_residue=kind == PER_RESIDUE)

    def checksum_of(self, key: str, kind: str | None = None) -> str | None:
        """The sequence checksum of the protein at `key` (`dataset_checksum_of`)."""
        kind = self._default_kind(kind)
        if self._stacked is not None:
            return self.facts(key, kind)[2]
        return dataset_checksum_of(self._group(kind), key)

    def checksums_by_id(self, kind: str | None = None) -> dict[str, str]:
        """id -> sequence checksum of every protein that records one (`checksums` keeps one id of
        a sequence held under several)."""
        kind = self._default_kind(kind)
        if self._stacked is not None:
            self._check_kind(kind)
            return {i: c for i, c in zip(self._stacked.ids(), self._stacked.column("checksums")) if c}
        group, sums = self._group(kind), {}
        for key in self.keys(kind):
            attrs = dataset_attrs(group, key)[0]
            if checksum := dataset_checksum(key, attrs):  # ("": unrecorded)
                sums[dataset_id(key, attrs)] = checksum
        return sums

    def checksums(self, kind: str | None = None) -> dict[str, str]:
        """checksum -> id, for matching label files that carry only sequences (of a sequence held
        under several ids, the last; a protein without a checksum has none to match)."""
        return {checksum: ident for ident, checksum in self.checksums_by_id(kind).items()}

    def dim(self, kind: str | None = None) -> int:
        kind = self._default_kind(kind)
        import h5py

        if self._stacked is not None:
            self._check_kind(kind)
            return int(self._stacked.data.shape[-1])
        group, skip, found = self._group(kind), {name.encode("utf-8") for name in self._not_datasets}, []

        def dataset(name):  # (a group among them is no protein: see items)
            obj = h5py.h5o.open(group.id, name) if name not in skip else None
            if isinstance(obj, h5py.h5d.DatasetID):
                found.append((name, obj))  # (decoded once _link_names has refused a name not UTF-8)
                return True

        # The first dataset in the keys' order, the listing stopped there: listing every key (as
        # keys() does) took seconds on a file of millions of proteins, and predict asks twice a file.
        # (HDF5 still sorts every name of a large group in C to give the first by name, 12 ms for
        # 20,000 proteins where the listing took 29 ms: the first by creation would not, but in a
        # damaged file it is not the dataset whose width the callers have refused so far)
        _link_names(group, until=dataset)
        if found:
            name, obj = found[0]
            self.check_declared_width(name.decode("utf-8"), obj.shape)
            return width_of(obj.shape, self.path, name.decode("utf-8"))
        # (an empty file from another tool: no kind to name; its `kind` was a guess)
        raise InputError(f"holds no {'' if self._kind_guessed else kind + ' '}embeddings", path=self.path)

    def failed(self) -> dict[str, str]:
        return failed_attr(self.attrs.get("failed"), self.path)

    def runs(self) -> list[dict]:
        """The settings of every run that wrote the file, oldest first (the `runs` attribute)."""
        self._check_open()  # (h5py's KeyError "invalid identifier type to function" once closed)
        return recorded_runs(self.file)


def _file_identity(path: str) -> tuple:
    """What tells one state of a file from another: its device, inode, size and modification time."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _stacked_view(f, path: str):
    """The stacked layout's view of an open file (io/stacked.py), None for the other layouts."""
    from protrans_cli.io.stacked import StackedView, is_stacked

    return StackedView(f, path) if is_stacked(f) else None


def _expect_id(ident) -> None:
    """A protein id is a str: `get(0)` (an id read as a number, a list position) was a TypeError
    from inside the key escaping, "expected string or bytes-like object, got 'int'"."""
    if not isinstance(ident, str):
        hint = f" (str({int(ident)}) if that is its id)" if isinstance(ident, (int, np.integer)) else ""
        raise UsageError(f"a protein id is a str, got {type(ident).__name__} {ident!r:.60}{hint}")


def one_protein_twice(path: str, ident: str, *keys: str) -> InputError:
    """Two datasets of a file naming one protein (another tool's `original_id`s or whole-header
    keys sharing a first word, "P1 isoform a" and "P1 isoform b"), as duplicate FASTA ids are."""
    shown = f" ({keys[0]!r} and {keys[1]!r})" if len(keys) == 2 else ""
    return InputError(f"two datasets name protein {ident!r}{shown}: ids must be unique (each dataset's id "
                      "attribute's first word, or its key)", path=path)


def failed_attr(raw, path: str) -> dict[str, str]:
    """The `failed` file attribute (id -> why, as JSON) as embed writes it; anything else (not
    JSON, not an object of strings, nested without end, an array) is one line naming the file."""
    try:
        raw = _plain(raw) if raw is not None else None
        if raw is None or (isinstance(raw, str) and not raw):
            return {}
        value = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, TypeError, RecursionError):  # (not UTF-8: a UnicodeDecodeError, a ValueError)
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InputError("its 'failed' attribute is not what embed writes (a JSON object of id: reason)", path=path)
    return value


def truncated_attr(raw) -> dict[str, int]:
    """The `truncated` file attribute (id -> full length, as JSON): the proteins stored cut to their
    first residues (--long-policy truncate), whose own `truncated_from` says the same. It only
    reports: one that is not what embed writes (made by hand) reads as none, never stops a run."""
    try:
        raw = _plain(raw) if raw is not None else None
        value = json.loads(raw) if isinstance(raw, str) and raw else {}
    except (ValueError, TypeError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}


def _is_group(obj) -> bool:
    import h5py

    return isinstance(obj, h5py.Group)


def stored_proteins(group, checksums: bool = True, *, prefixes: bool = False) -> Iterator[tuple[str, str | None]]:
    """(id, sequence checksum) of every dataset in an output group (a kind's group, or the root
    of a flat file), through h5py's low-level calls: a resume or a torchrun merge of UniRef50
    meets tens of millions of them, and h5py's dictionary interface costs about 3x as much
    (docs/benchmarks.md, "HDF5 files of many proteins"). The id is the `id` attribute, else
    `original_id`'s first word (bio_embeddings' files), else the unescaped key; the checksum is
    None for a truncated protein (it describes the kept prefix; with `prefixes`, that checksum)
    or a dataset without one, and with `checksums=False`."""
    import h5py

    where = _label(group)
    for name in _link_names(group):
        _CRASH_GUARD.note("open", where, name)
        obj = h5py.h5o.open(group.id, name)
        if not isinstance(obj, h5py.h5d.DatasetID):
            continue
        ident = _low_attribute_id(obj) or unescape_key(name.decode("utf-8"))
        checksum = None
        if checksums and (prefixes or not h5py.h5a.exists(obj, b"truncated_from")):
            checksum = _read_text_attr(obj, b"checksum")
            if not isinstance(checksum, str):  # (an array, another writer's: a traceback where merge hashed it)
                checksum = None
        _CRASH_GUARD.settle()  # (the consumer's time between records is not HDF5's)
        yield ident, checksum
    _CRASH_GUARD.settle()  # (the last name was not a dataset)


def width_of(shape, path, key: str) -> int:
    """The width (last axis) of the first dataset of a kind, as `dim` and `info` take it; a 0-d one
    (a scalar: another tool's metadata among the proteins, or a damaged file) is refused naming
    it: it was an IndexError traceback ("tuple index out of range") from predict and info."""
    if not len(shape):
        raise InputError("holds a scalar where embeddings are read, so the file's width is unknown (a damaged file, "
                         "or not embeddings: leave it out of the file)", path=str(path), record=unescape_key(key))
    return int(shape[-1])


def _link_names(group, until=None) -> list[bytes]:
    """The names of a group's members, in the order they were made where the group records it
    (another tool's file written with track_order: biotrainer's positions in input order), else
    by name; each refused unless a hard link (`local_link`). embed's own files record creation
    order too (for their new-style groups), but that order is the order of computation (longest
    first, and another after a resume or a torchrun merge): they are listed by name, as before.
    `until(name)`: the listing stops at the first name it is true of, the last one returned (the
    members after it are neither listed nor checked)."""
    import h5py

    names: list[bytes] = []

    def take(name):  # (None: on to the next name; True: the listing stops here)
        names.append(name)
        return True if until is not None and until(name) else None

    gid = group.id if not isinstance(group.id, h5py.h5f.FileID) else h5py.h5g.open(group.id, b"/")
    tracked = gid.get_create_plist().get_link_creation_order() & h5py.h5p.CRT_ORDER_INDEXED
    if tracked and h5py.h5a.exists(group.file.id, b"layout"):  # (embed's own file: see EmbeddingsReader.key_for)
        tracked = False
    _CRASH_GUARD.note("iterate", _label(group))
    try:
        hard_links(group, take, idx_type=h5py.h5.INDEX_CRT_ORDER if tracked else h5py.h5.INDEX_NAME)
    finally:
        _CRASH_GUARD.settle()
    for name in names:
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:  # (another tool's file, bytes keys: every reader decodes names as UTF-8)
            raise InputError(f"a dataset name that is not UTF-8 ({name!r}): protrans reads the ids of an embeddings "
                             "file as UTF-8; rename the datasets (h5py's move) or write them with str keys",
                             path=group.file.filename) from None
    return names


def hard_links(group, take, **kwargs) -> None:
    """`take(name)` for each member of `group` stored in the file itself, in the order
    `kwargs` (idx_type, order) ask of h5py's iteration, until `take` returns other than None; a
    link to elsewhere (soft, external) met on the way is refused once the iteration is over
    (`_refuse_link`)."""
    import h5py

    outside: list[bytes] = []

    def add(name, info):  # (None returned: on to the next; an exception raised here reaches the caller as itself)
        if info.type == h5py.h5l.TYPE_HARD:
            return take(name)
        outside.append(name)

    iterate_links(group.id, add, info=True, **kwargs)
    if outside:
        _refuse_link(group, outside[0])


def iterate_links(gid, callback, **kwargs):
    """`gid.links.iterate(callback, **kwargs)`, an exception raised in `callback` raised as itself:
    h5py gives it as SystemError ("... returned a result with an exception set"), the real one its
    cause, so a Ctrl-C (or SIGTERM's or SIGHUP's KeyboardInterrupt) while a group of many proteins was listed
    reached a library caller as a SystemError."""
    try:
        return gid.links.iterate(callback, **kwargs)
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if cause is None:
            raise
        raise cause from None


def _refuse_external(group, name: bytes, what: str):
    raise InputError(f"is {what}: protrans reads only data stored in the file itself (a file from "
                     "elsewhere could make it read any file on this machine)", path=group.file.filename,
                     record=name.decode("utf-8", "replace"))


def _refuse_link(group, name: bytes):
    import h5py

    kind = group.id.links.get_info(name).type
    _refuse_external(group, name, "an external link to another file" if kind == h5py.h5l.TYPE_EXTERNAL
                     else "a link to another place (only the data itself is read: a soft link may lead out of "
                          "the file through an external link)")


def local_link(group, name: bytes) -> None:
    """Refuse `group`'s member `name` unless it is a hard link: an external link leads into
    whatever file it names, and a soft link can lead there through an external link on its way
    (h5py follows both, silently)."""
    import h5py

    try:
        kind = group.id.links.get_info(name).type
    except KeyError:
        return  # no such member: the caller's own lookup says so
    if kind != h5py.h5l.TYPE_HARD:
        _refuse_link(group, name)


def local_data(group, name: bytes, obj) -> None:
    """Refuse a dataset whose values live outside the file: raw data in external files
    (`external=`) or a virtual dataset mapping other files. Checked where values are read."""
    import h5py

    if not isinstance(obj, h5py.h5d.DatasetID):
        return
    plist = obj.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        _refuse_external(group, name, "a virtual dataset (its values are mapped from other files)")
    if plist.get_external_count():
        _refuse_external(group, name, "a dataset whose values are stored in external files")


def open_local(group, name: bytes, *, data: bool = False):
    """`h5py.h5o.open(group.id, name)` of a member stored in the file itself (`data`: its values
    too, for a caller that reads them)."""
    import h5py

    local_link(group, name)
    obj = h5py.h5o.open(group.id, name)
    if data:
        local_data(group, name, obj)
    return obj


def _read_text_attr(obj, name: bytes) -> str | None:
    """A scalar string attribute of a low-level object, None when it has none."""
    import h5py

    if not h5py.h5a.exists(obj, name):
        return None
    mtype, dtype = _text_type()
    attr = h5py.h5a.open(obj, name)
    kind = attr.get_type()
    if not (isinstance(kind, h5py.h5t.TypeStringID) and kind.is_variable_str() and attr.shape == ()):
        return _plain(h5py.Dataset(obj).attrs[name.decode("utf-8")])  # another writer's type
    out = np.empty((), dtype=dtype)
    attr.read(out, mtype=mtype)
    return _plain(out[()])


def _text_type():
    """(memory type, numpy dtype) that read a variable-length string attribute as str (made once)."""
    import h5py

    if "text" not in _ATTR_TYPES:
        dtype = h5py.string_dtype("utf-8")
        _ATTR_TYPES["text"] = (h5py.h5t.py_create(dtype), dtype)  # h5py converts to str objects
    return _ATTR_TYPES["text"]


def read_attr(obj, name: str):
    """`h5py.Dataset(obj).attrs.get(name)` of a low-level dataset id (None when absent), read
    through h5py's low-level calls for the types embed writes (a scalar integer, a scalar
    variable-length string); any other type through `attrs`, as before. Matching a label record
    to its dataset (`fit`, `predict --labels`) took about 160 us through h5py's dictionary
    interface, 105 this way (docs/benchmarks.md#heads)."""
    import h5py

    raw = name.encode("utf-8")
    if not h5py.h5a.exists(obj, raw):
        return None
    attr = h5py.h5a.open(obj, raw)
    kind = attr.get_type()
    if attr.shape == () and isinstance(kind, h5py.h5t.TypeIntegerID) and not isinstance(kind, h5py.h5t.TypeEnumID):
        out = np.empty((), dtype=attr.dtype)
        attr.read(out)
        return out[()]
    if attr.shape == () and isinstance(kind, h5py.h5t.TypeStringID) and kind.is_variable_str():
        mtype, dtype = _text_type()
        out = np.empty((), dtype=dtype)
        attr.read(out, mtype=mtype)
        return out[()]
    return h5py.Dataset(obj).attrs[name]


class _LowAttrs:
    """The attributes of a low-level dataset id as `h5py.Dataset(obj).attrs` gives them (`in`,
    `[]`), read through `read_attr`."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __contains__(self, name: str) -> bool:
        import h5py

        return bool(h5py.h5a.exists(self.obj, name.encode("utf-8")))

    def __getitem__(self, name: str):
        value = read_attr(self.obj, name)
        if value is None:
            raise KeyError(name)
        return value


def dataset_attrs(group, key: str):
    """(attributes, shape) of the dataset `key` of a group, as `group[key].attrs` and `.shape`
    give them, through h5py's low-level calls (see `read_attr`); shape None where `key` is a
    group (not a protein: callers pass over it, as `stored_proteins` does)."""
    import h5py

    obj = open_local(group, key.encode("utf-8"))
    if isinstance(obj, h5py.h5d.DatasetID):
        return _LowAttrs(obj), obj.shape
    return group[key].attrs, None  # (h5py's own view of it; a group has no shape)


# float datasets read through h5py's low-level calls (read_array; heads/data.py's _read_into)
PLAIN_FLOAT_DTYPES = (np.dtype("<f4"), np.dtype("<f2"), np.dtype("<f8"))


# A dataset declaring more than this, and over _HOLLOW_RATIO times what it stores, is refused
_HOLLOW_BYTES, _HOLLOW_RATIO = 1 << 30, 1000


def _refuse_hollow(obj, path, record: str) -> None:
    """A shape is only a claim: a few KB of HDF5 can declare a (10**9, 21) array whose chunks were
    never written, and reading it allocated 78 GiB ("out of memory", naming no file) or filled
    that much memory with the fill value. Embeddings are written whole and compress to no less
    than a few percent (a one-hot float16 array the least), so a dataset of over 1 GiB that
    stores under a thousandth of it is refused, naming it, before anything is allocated."""
    problem = _hollow(obj, obj.shape)
    if problem is not None:
        raise InputError(problem, path=path, record=record)


def _hollow(obj, shape: tuple) -> str | None:
    """_refuse_hollow's test of a dataset of shape `shape` (obj.shape, passed by a caller that
    has it: each obj.shape asks HDF5 for the dataspace anew); its message, None if sound."""
    declared = math.prod(shape) * obj.dtype.itemsize if shape else 0  # (Python ints: no overflow)
    if declared <= _HOLLOW_BYTES:
        return None
    stored = obj.get_storage_size()
    if stored * _HOLLOW_RATIO >= declared:
        return None
    return (f"embedding declares shape {'x'.join(map(str, shape))} ({declared / 2**30:,.1f} GiB) but "
            f"stores {stored:,} bytes (a damaged file, or not written by protrans embed)")


def read_array(group, key: str, obj=None, shape: tuple | None = None) -> np.ndarray:
    """`group[key][()]`: a little-endian float dataset through h5py's low-level calls (its bytes
    as stored, into an array of its dtype), anything else through h5py's dictionary interface,
    which costs about twice as much per dataset. `obj`: the key's low-level object, if open;
    `shape`: its obj.shape, if the caller has it (each asks HDF5 for the dataspace anew)."""
    import h5py

    if obj is None:  # (a caller's `obj` comes from open_local(..., data=True): checked there)
        obj = open_local(group, key.encode("utf-8"), data=True)
    if not isinstance(obj, h5py.h5d.DatasetID):
        return group[key][()]
    if shape is None:
        shape = obj.shape
    problem = _hollow(obj, shape)
    if problem is not None:  # (the file's name only then: group.file makes an h5py File, ~40 us a protein)
        raise InputError(problem, path=group.file.filename, record=unescape_key(key))
    if len(shape) >= 1 and obj.dtype in PLAIN_FLOAT_DTYPES:
        out = np.empty(shape, dtype=obj.dtype)
        if out.size:
            obj.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
        return out
    return group[key][()]


def stored_length(attrs, shape, per_residue: bool = True) -> int | None:
    """A dataset's residue count: per residue the rows of its (L, D) or (n_layers, L, D) array;
    per protein (a (D,) or (n_layers, D) vector) its `length` attribute; else None. (A per-residue
    array's attribute was taken over its rows: a file whose `length` said 10**12 made predict
    allocate 116 TiB.)"""
    if per_residue and shape is not None and len(shape) >= 2:
        return int(shape[-2])
    return _whole_number(attrs, "length")



def stored_chains(attrs) -> tuple[int, ...] | None:
    """A complex's chain lengths (its `chains` attribute, embed --chains linker or separate), None
    for a dataset without one (a protein of one chain)."""
    if "chains" not in attrs:
        return None
    return tuple(int(n) for n in np.atleast_1d(attrs["chains"]))


def _whole_number(attrs, name: str) -> int | None:
    """An attribute that holds a count (`length`, `truncated_from`), or None where it is missing
    or is not a whole number of at least 0 (a damaged or hostile file's: a traceback before)."""
    if name not in attrs:
        return None
    value = _plain(attrs[name])
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and value == int(value):
        return int(value)
    return None


def dataset_facts(group, key: str, per_residue: bool = True) -> tuple[int | None, int | None, str | None]:
    """(length, truncated_from, checksum) of the dataset `key` of a group: `length` as
    `stored_length` gives it (`per_residue`: the group holds per-residue arrays); `truncated_from`
    its attribute or None; `checksum` as `dataset_checksum` gives it (for a truncated protein its
    kept prefix's). Through h5py's low-level calls (see `read_attr`)."""
    attrs, shape = dataset_attrs(group, key)
    return stored_length(attrs, shape, per_residue), truncated_from(attrs), dataset_checksum(key, attrs)


def truncated_from(attrs) -> int | None:
    """A protein's full length where `embed --long-policy truncate` cut it short (its attribute),
    else None."""
    return _whole_number(attrs, "truncated_from")


def dataset_checksum_of(group, key: str) -> str | None:
    """`dataset_checksum(key, group[key].attrs)` through h5py's low-level calls (see `read_attr`)."""
    return dataset_checksum(key, dataset_attrs(group, key)[0])


def _plain(value):
    if isinstance(value, bytes):
        # UTF-8, else latin-1 (another tool's attribute: a UnicodeDecodeError at open was a traceback)
        return decode_word(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


# What h5py raises for a file whose structure is damaged (truncated, bytes overwritten): OSError
# on opening, KeyError/RuntimeError/ValueError from an object header it cannot read.
UNREADABLE = (OSError, KeyError, RuntimeError, ValueError)


class UnreadableFile(InputError):
    """An output that HDF5 cannot read back (see `repair_after_kill`)."""


def unreadable_on_resume(path, exc: BaseException) -> InputError:
    # (a stray file named OUTPUT.partial, or an empty one, was HDF5's "file signature not found")
    what = _not_hdf5(path)
    said = f"not an HDF5 file ({what})" if what is not None else f"not a readable HDF5 file ({first_line(exc)})"
    return UnreadableFile(f"cannot resume: {said}; delete it to start again", path=str(path))


class CrashGuard:
    """What a child process that reads a damaged file notes before each HDF5 call that can crash
    (a segmentation fault inside HDF5 on metadata a SIGKILL left half written), and what earlier
    children's crashes taught: records to leave alone (`skip`: (group, name)) and groups whose
    index is not to be iterated (`no_iterate`: read by name instead). See embed_resume._done_in."""

    def __init__(self, log_fd: int | None = None, skip=(), no_iterate=()):
        self.log_fd = log_fd
        self.skip = {(g, bytes(n)) for g, n in skip}
        self.no_iterate = set(no_iterate)

    # Seconds a child may spend after a note before it is taken for hung: HDF5 looped for good in
    # C on a global heap a failed write left damaged (reading a record's string attribute), where
    # no Python code runs again. The alarm's default action ends the child (SIGALRM), and the
    # record is left out as for a crash. Iterating a group reads all of its names at once.
    HANG_SECONDS = {"iterate": 3600}
    HANG_DEFAULT = 300

    def note(self, op: str, group: str, name: bytes = b"") -> None:
        if self.log_fd is not None:
            try:
                os.write(self.log_fd, json.dumps([op, group, name.hex()]).encode() + b"\n")
            except OSError:  # (a full disk: a later crash is then blamed on nothing, never the file itself)
                self.log_fd = None
                return
            if hasattr(signal, "alarm"):
                signal.alarm(self.HANG_SECONDS.get(op, self.HANG_DEFAULT))

    def settle(self) -> None:
        """The guarded HDF5 calls are over: the alarm stops, so that the Python work after them
        (sorting tens of millions of ids) is never taken for the last noted record hanging."""
        if self.log_fd is not None and hasattr(signal, "alarm"):
            signal.alarm(0)

    @staticmethod
    def last(log: bytes) -> tuple[str, str, bytes] | None:
        lines = [line for line in log.splitlines() if line.strip()]
        if not lines:
            return None
        op, group, name = json.loads(lines[-1])
        return op, group, bytes.fromhex(name)


_CRASH_GUARD = CrashGuard()  # inert in the parent: no log, nothing skipped


def _label(group) -> str:
    """A group as CrashGuard names it: `per_residue`, or `/` for a flat file's root."""
    return group.name.lstrip("/") or "/"


def repair_after_kill(path, kinds: Iterable[str], layout: str, run_attrs: dict | None = None,
                      candidates=None, *, force: bool = False) -> str | None:
    """Mend a partial file that a SIGKILL during HDF5's flush left unreadable; returns what was
    done, or None when this is not that damage (the file is then left as it was).

    HDF5 writes the superblock, which holds the end-of-file address (EOA), last in a flush. Killed
    in between, the file holds metadata written for objects beyond the EOA it records, and HDF5
    refuses to read it ("addr overflow"). As `h5clear --increment` does, the EOA is moved to the
    end of the file (the data there was written before the metadata that points to it). Some of
    what the flush had not written yet may still be missing: a record's object header, or the
    global heap that holds string attributes (a protein's id or header, the file's `failed`
    list), or part of a group's index. Such a record can be neither deleted nor moved (HDF5
    reads the header for both), so the readable proteins are then copied into a fresh file that
    replaces the partial one (always, once the EOA moved);
    --resume embeds the others again, and a file attribute that cannot be read is taken from
    `run_attrs` (this run's settings). When a group's own index lost a node, its records are
    found by name: `candidates()` gives the ids that may be there (the input's). Only the
    version-0 superblock h5py writes is handled. `force`: copy the readable proteins into a
    fresh file even where no damage is seen (HDF5 crashed reading this file: embed_resume._done_in)."""
    import struct

    import h5py

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            head = fh.read(48)
            if len(head) < 48 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] != 0 or head[13] != 8:
                return None
            (eoa,) = struct.unpack("<Q", head[40:48])
            moved = eoa < size  # (not after a repair killed half-way: its EOA move stays done)
            if moved:
                fh.seek(40)
                fh.write(struct.pack("<Q", size))
    except OSError:  # read-only, gone: nothing mended, the original error stands
        return None
    done = [f"the end-of-file address moved from {eoa} to {size} bytes"] if moved else []
    salvage = path.with_name(path.name + ".salvage")
    try:
        with h5_file(path, "r") as f:
            attrs, lost_attrs = {}, []
            for key in f.attrs.keys():
                try:
                    attrs[key] = f.attrs[key]
                except UNREADABLE:
                    lost_attrs.append(key)
            groups = {kind: f if layout == "flat" else f.get(kind) for kind in kinds}
            if any(group is not None and not isinstance(group, h5py.Group) for group in groups.values()):
                return None  # (a finished stacked file, written whole and renamed: not this damage)
            names, damaged_index = {}, False
            for kind, group in groups.items():
                if group is not None:
                    names[kind], broken = _findable_names(group, candidates)
                    damaged_index |= broken
            bad = {kind: _unreadable_records(groups[kind], found) for kind, found in names.items()}
            # A moved end-of-file address is copied too: the flush it cut short may have left a
            # group's checksummed index (new-style groups) half updated in a way reading passes
            # over and the next insertion does not ("incorrect metadata checksum" on resuming).
            if not lost_attrs and not damaged_index and not any(bad.values()) and not force and not moved:
                return None
            from protrans_cli.io.stacked import EXTENDS

            if EXTENDS in lost_attrs:  # (io/stacked.py: which finished file completes it is unknown)
                raise RuntimeFailure("a kill left the record of the finished file this partial file adds to "
                                     f"unreadable: remove {path.name} and {again_with_resume()} "
                                     "(what that run added is embedded again)", path=str(path))
            # (a write failing inside HDF5 can crash h5py: the room is checked first, without a
            # half-made copy that a crashed reader left: embed_resume._done_in)
            salvage.unlink(missing_ok=True)
            disk.ensure_room(salvage, size, f"free some space and {again_with_resume()}", shown=path,
                             what="a mended copy of this damaged file")
            # (creation order tracked, as the writer makes its groups: in old-style groups every
            # later flush rewrote every name, growing with the square of the proteins)
            with h5_file(salvage, "w", track_order=True) as out:
                for key in lost_attrs:
                    if key == "failed":
                        attrs[key] = "{}"  # what failed is tried again
                    elif run_attrs and run_attrs.get(key) is not None:
                        attrs[key] = _attr_value(run_attrs[key])
                for key, value in attrs.items():
                    out.attrs[key] = value
                for kind, group in groups.items():
                    if group is None:
                        continue
                    target = out if layout == "flat" else out.create_group(kind, track_order=True)
                    for name in names[kind]:
                        if name in bad[kind]:
                            continue
                        try:
                            _CRASH_GUARD.note("copy", _label(group), name)
                            h5py.h5o.copy(group.id, name, target.id, name)
                        except UNREADABLE:
                            bad[kind].add(name)
                        finally:
                            _CRASH_GUARD.settle()
    except UNREADABLE:  # damage it cannot read past: the EOA as it was, and the original error stands
        if moved:
            with open(path, "r+b") as fh:
                fh.seek(40)
                fh.write(struct.pack("<Q", eoa))
        salvage.unlink(missing_ok=True)
        return None
    try:
        with contextlib.suppress(OSError):  # the partial file's permissions, not the umask's
            os.chmod(salvage, os.stat(path).st_mode & 0o777)
        os.replace(salvage, path)
    except OSError:
        salvage.unlink(missing_ok=True)
        return None
    count = len(set().union(*bad.values()))
    done.append("the readable proteins copied into a fresh file")
    if count:
        done.append(f"{count} record(s) the kill cut off left out (embedded again)")
    if lost_attrs:
        done.append(f"file attribute(s) {', '.join(lost_attrs)} taken from this run")
    return "repaired the damaged file: " + "; ".join(done)


def _findable_names(group, candidates=None) -> tuple[list[bytes], bool]:
    """The names in a group, and whether its index is damaged: then the names iteration reached
    before the damage, and those of `candidates()` that a lookup by name still finds."""
    found: list[bytes] = []
    where = _label(group)
    try:
        if where in _CRASH_GUARD.no_iterate and candidates is not None:
            raise RuntimeError("its index crashed HDF5 when iterated")
        _CRASH_GUARD.note("iterate", where)
        group.id.links.iterate(found.append)
        return found, False
    except UNREADABLE:
        if candidates is None:
            raise
    finally:
        _CRASH_GUARD.settle()
    seen = set(found)
    for ident in candidates():
        name = escape_key(ident).encode("utf-8")
        if name in seen or (where, name) in _CRASH_GUARD.skip:
            continue
        try:
            _CRASH_GUARD.note("lookup", where, name)
            if group.id.links.exists(name):
                found.append(name)
                seen.add(name)
        except UNREADABLE:  # its node is the one lost
            pass
        finally:
            _CRASH_GUARD.settle()  # (the next candidate is read from the input first)
    return found, True


def _unreadable_records(group, names: list[bytes]) -> set[bytes]:
    """Names in a group whose object or attributes cannot be read."""
    import h5py

    bad = set()
    where = _label(group)
    for name in names:
        if (where, name) in _CRASH_GUARD.skip:
            bad.add(name)
            continue
        try:
            _CRASH_GUARD.note("open", where, name)
            obj = h5py.h5o.open(group.id, name)
            if isinstance(obj, h5py.h5d.DatasetID):
                attrs = h5py.Dataset(obj).attrs
                obj.shape, [attrs[key] for key in attrs.keys()]
        except UNREADABLE:
            bad.add(name)
        finally:
            _CRASH_GUARD.settle()
    return bad


# errno values of a file system that grants no locks: ENOSYS, EOPNOTSUPP/ENOTSUP, ENOLCK (NFS
# without a lock daemon), EINVAL (some FUSE mounts: flock of a valid descriptor is otherwise never
# invalid), 524 (Linux's ENOTSUPP: Lustre, some FUSE and GPFS mounts). HDF5 writes the host's
# number into its message, so they are taken by name: macOS numbers them otherwise (ENOLCK 77,
# EOPNOTSUPP 102, ENOTSUP 45; its 37 and 38 are EALREADY and ENOTSOCK).
_NO_LOCK_ERRNOS = {getattr(errno, name) for name in ("ENOSYS", "EOPNOTSUPP", "ENOTSUP", "ENOLCK", "EINVAL")
                   if hasattr(errno, name)} | ({524} if sys.platform.startswith("linux") else set())


def h5_file(path, mode: str = "r", **kwargs):
    """h5py.File, opened without HDF5's file lock where the file system grants none: HDF5 locks
    every file it opens and fails ("unable to lock file, errno = 37, 'No locks available'") on
    NFS without a lock daemon, Lustre and other cluster file systems, where the known way out is
    HDF5_USE_FILE_LOCKING=FALSE. A lock held by another process (BlockingIOError) still fails."""
    import h5py

    # HDF5 makes a new file before it locks it, and leaves it when the lock fails: the exclusive
    # open again met "File exists" (embed: "cannot create the output: File exists").
    new = mode in ("x", "w-", "a") and isinstance(path, (str, os.PathLike)) and not os.path.lexists(path)
    try:
        return h5py.File(path, mode, **kwargs)
    except BlockingIOError:
        raise
    except OSError as exc:
        found = re.search(r"unable to lock file, errno = (\d+)", str(exc))
        if not found or int(found.group(1)) not in _NO_LOCK_ERRNOS:
            raise
    if new:
        with contextlib.suppress(OSError):
            os.unlink(path)
    # (a reader, or a file under protrans's own lock, which went on without it there, or refused
    # such a file system under PROTRANS_FILE_LOCKING=TRUE: files.without_locks)
    from protrans_cli.io.files import warn_no_locks

    warn_no_locks(path)
    return h5py.File(path, mode, locking=False, **kwargs)


def refuse_non_file(path) -> None:
    """Where an output's HDF5 file is kept (OUTPUT.partial, a shard, OUTPUT): a directory, named
    pipe, socket or device there is refused before anything opens it. HDF5's open of a named pipe
    waited for a writer for ever (embed and contacts hung, --resume or not, with no word); a
    directory was "[Errno 21] Unable to synchronously open file (file read failed: time = ...)"
    under --resume, and under --force "Is a directory" of a hidden .creating file left behind.
    So are the side files a run keeps beside it (its ledger, its list of untrusted proteins, a
    stacked extension's .base): --resume read a named pipe called OUTPUT.partial.untrusted for ever."""
    import stat

    from protrans_cli.io.files import odd_kind
    from protrans_cli.io.stacked import base_path

    for side in (ledger_path(path), untrusted_path(path), base_path(path)):
        if (what := odd_kind(side)) is not None:
            raise InputError(f"is {what}, not a regular file: a run keeps a file of its own under this name, beside "
                             f"{Path(path).name} (move it away, or choose another {option('-o', 'output')})",
                             path=str(side))
    try:
        mode = os.stat(path).st_mode  # (through a link)
    except OSError:  # absent (or unreadable: the open says so)
        return
    if stat.S_ISDIR(mode):
        raise InputError("is a directory, expected an HDF5 file (move it away, or choose another "
                         f"{option('-o', 'output')})", path=str(path))
    if not stat.S_ISREG(mode):
        what = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise InputError(f"is {what}, not a regular file: an HDF5 file is read in place (move it away, or choose "
                         f"another {option('-o', 'output')})", path=str(path))


def refuse_if_in_use(path) -> None:
    """A file another process is writing (HDF5 holds its lock on it) is refused before anything
    touches it: h5py.File(path, "w") truncates a file before it meets the lock, so a second embed
    run on one output wiped the first run's work, and "delete it" was the wrong advice. So is one
    that is no file (refuse_non_file): opening a named pipe hung. Its advice names the output as
    its reader gives it (`option`): -o at the command line, output to embed(), predict_contacts(),
    merge() and import_esm() (every caller's keyword for it)."""
    refuse_non_file(path)
    if not os.path.exists(path):
        return
    try:
        with h5_file(path, "r"):
            pass
    except BlockingIOError:
        raise RuntimeFailure("is being written by another process (it holds the HDF5 file lock): wait for that "
                             f"run to end, or choose another {option('-o', 'output')}", path=str(path)) from None
    except OSError:  # not readable at all: what the caller does next says so
        pass


def refuse_if_open_here(path) -> None:
    """A file this process holds open (an EmbeddingsReader used outside a `with` block, an
    h5py.File not closed) is refused before a resumed run touches it: HDF5 cannot open it again
    for writing, and the run failed with h5py's "OSError: Unable to synchronously open file (file
    is already open for read-only)" after it had renamed the finished file OUTPUT.partial."""
    import h5py

    try:
        target = os.stat(path)
    except OSError:
        return
    for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:  # (HDF5 knows a file by its inode, whatever name or working directory opened it)
            held = os.fstat(fid.get_vfd_handle())
        except Exception:  # (a driver without a file descriptor: an in-memory or Python file object)
            continue
        if (held.st_dev, held.st_ino) == (target.st_dev, target.st_ino):
            raise UsageError("is open in this process (an EmbeddingsReader used outside a `with` block, or an "
                             "h5py.File not closed): close it before resuming into it", path=str(path))


def truncated_by(attrs) -> str:
    """Who cut a file's truncated proteins short, for messages: embed, or esm-extract (a file
    `import-esm` wrote)."""
    if attrs.get("imported_from") == "esm-extract":
        return "esm-extract (--truncation_seq_length)"
    return "embed (--long-policy truncate)"


def output_free(output: Path, force: bool, command: str) -> Path:
    """merge's and import-esm's rule for their -o, before any work: an existing file (or the
    .partial of a run that did not finish) needs --force, which replaces an HDF5 file only
    (refuse_replacing_other_file). Returns the .partial path. A named pipe, a folder (or a link to
    one) called OUTPUT.partial is refused whatever the flags: "exists: give --force" was said of
    it, and --force deleted a named pipe or link that no run of protrans had made. A file another
    process is writing (holding HDF5's lock: a notebook's h5py.File(..., "a"), another tool) is refused
    too, as embed refuses it (refuse_if_in_use): --force deleted such an OUTPUT.partial, and the
    merge's writer refused the output in use only once every part had been read."""
    partial = partial_path(output)
    refuse_non_file(partial)
    if output.exists() and not force:
        raise UsageError(f"exists: give {force_option()} to replace it", path=str(output))
    for busy in (partial, output):
        refuse_if_in_use(busy)
    if force and output.exists():
        refuse_replacing_other_file(output, command)
    if partial.exists() and not force:
        raise UsageError(f"{partial.name} exists (a run into this output that did not finish): give {force_option()} "
                         "to replace it", path=str(output))
    return partial


def refuse_replacing_other_file(path, command: str, resume: bool = False) -> None:
    """--force replaces an earlier output, an HDF5 file (damaged or not): a usage error (exit 2),
    before any work, for an existing file that is not one (`-o proteome.fa --force`, or an -o
    that is a link to a FASTA, replaced the FASTA with embeddings). An empty file is replaced.
    `resume`: the same for --resume, which said of a FASTA "not a readable HDF5 file ...; delete it
    to start again"."""
    target = Path(os.path.realpath(path))
    if not target.is_file() or target.stat().st_size == 0:
        return
    import h5py

    try:
        hdf5 = h5py.is_hdf5(str(target))
    except OSError:  # unreadable: the write says so
        return
    if not hdf5:
        with open(target, "rb") as stream:
            # (as text, quoted as an id is: Python's b'>sp|P1...' was shown)
            start = stream.read(16).decode("utf-8", "replace")
        shown = "" if target == Path(os.path.abspath(path)) else f" (the file {target} it links to)"
        if resume:
            raise UsageError(f"is not an HDF5 file{shown}, it begins {start!r}: not an output of {command} to "
                             f"resume (choose another {option('-o', 'output')})", path=str(path))
        raise UsageError(f"is not an HDF5 file{shown}, it begins {start!r}: {force_option()} replaces an earlier "
                         f"{command} output only (remove this file yourself, or choose another "
                         f"{option('-o', 'output')})", path=str(path))


def partial_path(path) -> Path:
    """Where a run writes until it completes (`out.h5` -> `out.h5.partial`)."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


# --- the ledger: what --resume knows of a partial file without opening its proteins ------------
#
# `out.h5.partial.ledger` lists the proteins of `out.h5.partial` that are complete (every kind
# written, flushed): 24 bytes each, the blake2b-128 digest of the id and the first 8 bytes of the
# sequence checksum (what a resume compares). A record is appended only after the HDF5 flush that
# holds its protein. When the writer closes a file that stays partial (the run failed, was
# stopped by Ctrl-C, SIGTERM or SIGHUP, or wrote a torchrun rank's shard) it seals the ledger: the file's
# size, mtime and a hash of both ends. A run that completes removes the ledger as the file takes
# its final name. --resume trusts a ledger whose seal matches the file as it is now, and reads
# the file's proteins one by one (~90 us each, with the crash guard) otherwise: after a SIGKILL,
# for a finished output that the run extends, or a file written by an earlier version or
# another tool. Reading a sealed ledger costs about 1 us a protein (a UniRef50 run stopped
# half-way: seconds rather than an hour).

LEDGER_MAGIC = b"protrans-ledger1"   # 16 bytes
_SEAL_MARK = b"\xff" * 16
_SEAL_BYTES = 16 + 8 + 8 + 32         # mark, size, mtime_ns, sha256 of both ends
_LEDGER_RECORD = np.dtype([("id", "S16"), ("sum", "<u8")])


def digest128(text: str) -> bytes:
    """16-byte digest of an id: where a collision would go unnoticed (resume, copies), 2^-128 is the risk."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def checksum64(checksum) -> int:
    """The first 8 bytes of an "md5:<hex>" checksum attribute; 0 when there is none to compare."""
    if not checksum or not str(checksum).startswith("md5:"):
        return 0
    return int(str(checksum)[4:20], 16)


def ledger_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".ledger")


def ledger_count(path) -> int | None:
    """How many complete proteins the ledger of the output file `path` records so far (a running
    run's, unsealed, or a stopped run's, sealed); None when there is no ledger of this format.
    For progress only: a sealed ledger's count is trusted by --resume only through read_ledger.
    Anything but a regular file under its name is none, and never opened: `protrans info` of an
    OUTPUT.partial beside a named pipe called OUTPUT.partial.ledger waited for its writer for ever."""
    from protrans_cli.io.files import odd_kind

    ledger = ledger_path(path)
    if odd_kind(ledger) is not None:
        return None
    try:
        with open(ledger, "rb") as f:
            if f.read(len(LEDGER_MAGIC)) != LEDGER_MAGIC:
                return None
            body = os.fstat(f.fileno()).st_size - len(LEDGER_MAGIC)
            if body >= _SEAL_BYTES and (body - _SEAL_BYTES) % _LEDGER_RECORD.itemsize == 0:
                f.seek(len(LEDGER_MAGIC) + body - _SEAL_BYTES)
                if f.read(len(_SEAL_MARK)) == _SEAL_MARK:
                    body -= _SEAL_BYTES
    except OSError:
        return None
    return body // _LEDGER_RECORD.itemsize  # (a record being appended not counted)


def _seal(path) -> bytes:
    """What a sealed ledger ends with for the HDF5 file at `path` as it is now."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        digest = hashlib.sha256(f.read(4096))
        if st.st_size > 4096:
            f.seek(max(4096, st.st_size - 65536))
            digest.update(f.read())
    return _SEAL_MARK + int(st.st_size).to_bytes(8, "little") + int(st.st_mtime_ns).to_bytes(8, "little") + digest.digest()


def _sealed_size(path) -> int | None:
    """The ledger's length without its seal when it is sealed for `path` as it is now, else None."""
    ledger = ledger_path(path)
    try:
        size = ledger.stat().st_size
        if size < len(LEDGER_MAGIC) + _SEAL_BYTES or (size - len(LEDGER_MAGIC) - _SEAL_BYTES) % _LEDGER_RECORD.itemsize:
            return None
        with open(ledger, "rb") as f:
            if f.read(len(LEDGER_MAGIC)) != LEDGER_MAGIC:
                return None
            f.seek(size - _SEAL_BYTES)
            if f.read() != _seal(path):
                return None
    except OSError:
        return None
    return size - _SEAL_BYTES


def read_ledger(path) -> tuple[np.ndarray, np.ndarray] | None:
    """(id digests (n,) S16, checksum digests (n,) uint64), one row per complete protein, from
    the sealed ledger of the output file `path`; None when it has none sealed for the file as
    it is now (then its proteins must be read from the file itself)."""
    end = _sealed_size(path)
    if end is None:
        return None
    try:
        with open(ledger_path(path), "rb") as f:
            f.seek(len(LEDGER_MAGIC))
            rows = np.fromfile(f, dtype=_LEDGER_RECORD, count=(end - len(LEDGER_MAGIC)) // _LEDGER_RECORD.itemsize)
    except OSError:
        return None
    # a protein written twice (once half-way before a kill, then whole) counts once, as last written
    _, last = np.unique(rows["id"][::-1], return_index=True)
    rows = rows[::-1][last]
    return rows["id"].copy(), rows["sum"].astype(np.uint64)


def write_ledger(path, ids: np.ndarray, sums: np.ndarray) -> None:
    """A sealed ledger of the complete proteins of the (closed) output `path`, read from the
    file itself: the next resume reads this instead. Best effort: a failure leaves none."""
    from protrans_cli.io.files import create_fresh

    ledger = ledger_path(path)
    tmp = ledger.with_name(ledger.name + ".tmp")
    try:
        rows = np.empty(len(ids), dtype=_LEDGER_RECORD)
        rows["id"], rows["sum"] = ids, sums
        with open(create_fresh(tmp, 0o644), "wb") as f:  # (never through a link planted under its name)
            f.write(LEDGER_MAGIC)
            f.write(rows.tobytes())
            f.write(_seal(path))
        os.replace(tmp, ledger)
    except OSError:
        with contextlib.suppress(OSError):
            ledger.unlink()
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def remove_ledger(path) -> None:
    with contextlib.suppress(OSError):
        ledger_path(path).unlink()
    with contextlib.suppress(OSError):
        untrusted_path(path).unlink()


def remove_partial(partial) -> None:
    """A partial file that is given up, with its side files: its ledger, its list of untrusted
    proteins and a stacked extension's link to the finished file (io/stacked.py: it keeps that
    file's space)."""
    from protrans_cli.io.stacked import base_path

    for path in (partial, base_path(partial)):
        with contextlib.suppress(OSError):
            Path(path).unlink()
    remove_ledger(partial)


def untrusted_path(path) -> Path:
    """`out.h5.partial.untrusted`: the 128-bit digests of the proteins a run wrote into `path`
    after its last flush, before a write failed inside HDF5: their records may be readable while
    their data never reached the disk, so --resume embeds them again (`untrusted_digests`)."""
    path = Path(path)
    return path.with_name(path.name + ".untrusted")


def untrusted_digests(path) -> np.ndarray:
    """The digests (S16) listed in `untrusted_path(path)`; empty without one."""
    try:
        raw = untrusted_path(path).read_bytes()
    except FileNotFoundError:
        return np.empty(0, dtype="S16")
    return np.frombuffer(raw[: len(raw) // 16 * 16], dtype="S16")


# Files a failed write left HDF5 unable to close (EmbeddingsWriter._abandon): the CLI ends the
# process without HDF5's teardown when there are any (protrans_cli.cli.main), which would crash.
_ABANDONED: list = []


def abandoned_files() -> bool:
    return bool(_ABANDONED)


def abandon(*objects) -> None:
    """Leave an HDF5 file whose write failed open for good: never flushed, closed or deallocated
    in this process (HDF5 2.0 crashed on the next flush or close: "Slist already enabled?", a
    segmentation fault). The process then ends without HDF5's teardown: the CLI's main, or, for
    a library caller, an exit handler (exit 1, not a crash)."""
    if not _ABANDONED:
        import atexit

        atexit.register(_exit_before_hdf5_teardown)
    _ABANDONED.append(objects)


def write_failure_reason(exc: BaseException) -> str:
    """"No space left on device" out of HDF5's message for a failed write (else its first line)."""
    why = re.search(r"error message = '([^']*)'", str(exc))
    return why.group(1) if why else first_line(exc)


def _exit_before_hdf5_teardown() -> None:
    flush_standard_streams()
    os._exit(1)


class _MarkerRoom:
    """Disk kept for `untrusted_path(partial)` while a writer runs: a write failing inside HDF5
    is mostly a full disk, where the list could not be written otherwise. On Linux, a file of no
    name (O_TMPFILE: a kill leaves nothing behind) with `SIZE` bytes allocated at the start; the
    list is written into it and the file given its name. Elsewhere the list is written as any
    file is."""

    SIZE = 1 << 20  # 65,536 ids
    SMALL = 4096  # 256 ids: what a nearly full disk still gives

    def __init__(self, partial: Path):
        self.partial = partial
        self.fd: int | None = None
        self.size = 0
        if disk.native_fallocate() is None:
            return
        try:
            # (not tempfile.TemporaryFile: it opens O_TMPFILE with O_EXCL, a file that can never
            # be given a name, so the list always fell back to a new file on the full disk)
            self.fd = os.open(partial.parent, os.O_TMPFILE | os.O_RDWR, 0o644)
        except (OSError, AttributeError):
            return
        # (a disk with less than SIZE free still keeps one block: a batch's ids fit in it, where
        # nothing kept left "it cannot be resumed" after the first failed write)
        for size in (self.SIZE, self.SMALL):
            try:
                disk.fallocate(self.fd, size)
                self.size = size
                return
            except OSError:
                continue
        self.release()

    def write(self, digests: bytes) -> None:
        """Add `digests` to the partial file's list (OSError when it cannot be written)."""
        target = untrusted_path(self.partial)
        try:
            payload = target.read_bytes() + digests  # (a resumed run's list goes on)
        except FileNotFoundError:
            payload = digests
        if self.fd is not None and len(payload) <= self.size:
            fd = self.fd
            staged = target.with_name(f".{target.name}.tmp")
            try:
                if os.pwrite(fd, payload, 0) == len(payload):
                    os.ftruncate(fd, len(payload))
                    disk.sync(fd, target)
                    with contextlib.suppress(FileNotFoundError):
                        staged.unlink()
                    disk.link_fd(fd, staged)  # (an O_TMPFILE file gets its name)
                    os.replace(staged, target)
                    return
            except OSError:
                pass
            finally:
                self.release()
        with open(target, "ab") as fh:
            fh.write(digests)

    def ids_kept(self) -> float:
        """How many ids written since the last flush make the next one due (`flush_due`): half of
        what the kept block holds, so that a batch more still fits it (a second of small batches
        on a nearly full disk was 1,000 ids or more, and the list, past the 256 of the small
        block, could not be written: "do not resume it"). No bound without a block kept."""
        return self.size // 32 if self.fd is not None else math.inf

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class _MetadataHold:
    """Keeps HDF5's metadata cache from writing anything between two flushes of a file being
    written, so that the file on disk is always the last flush's (plus data no index points to
    yet), which is what a SIGKILL leaves. The cache (2 MiB by default) wrote parts of a group's
    index whenever it overflowed, past some 5,000 proteins in a group, and a kill then left the
    index half-updated ("incorrect metadata checksum"): --resume found few or none of the
    proteins already embedded (tests/test_h5.py). Held, the cache grows by some 330 bytes a protein as HDF5
    counts it, and about 20 times that in memory (7 KB: a cache of 21 MiB was 444 MB more of the
    process): once it passes LIMIT, HDF5's own default size, the writer flushes (`written`, checked
    every CHECK_EVERY writes), and after a flush (everything in it clean) the cache is let shrink
    to SHRUNK at the next write, the clean entries least used going, and is held again. A merge of
    a million proteins, with no flush of its own, stays as bounded as a run that flushes."""

    LIMIT = 2 << 20
    SHRUNK = 1 << 20
    CHECK_EVERY = 256  # writes between two looks at the cache's size

    def __init__(self, file):
        self.file = file
        self.shrinking = False
        self.writes = 0
        self._set(hold=True)

    def _set(self, *, hold: bool) -> None:
        config = self.file.id.get_mdc_config()
        # (evictions can be turned off only with the cache's automatic resizing off)
        config.evictions_enabled = not hold
        config.incr_mode = config.flash_incr_mode = config.decr_mode = 0
        if not hold:
            config.set_initial_size = True
            config.initial_size = self.SHRUNK
        self.file.id.set_mdc_config(config)

    def flushed(self) -> None:
        """After a flush: past LIMIT, the next write shrinks the cache (`written`)."""
        if not self.shrinking and self.file.id.get_mdc_size()[2] > self.LIMIT:
            self._set(hold=False)
            self.shrinking = True

    def written(self) -> bool:
        """After a write (the first after a flush made room, evicting only clean entries):
        whether the cache has grown past LIMIT since the last flush, and wants one."""
        if self.shrinking:
            self._set(hold=True)
            self.shrinking = False
        self.writes += 1
        return self.writes % self.CHECK_EVERY == 0 and self.file.id.get_mdc_size()[2] > self.LIMIT

    @contextlib.contextmanager
    def reading(self):
        """Evictions on while the block reads the file, which must have been flushed (every
        entry clean: only clean ones go). Held, the cache kept every object read: `done_ids` of
        a resumed file of 100,000 proteins grew it to 118 MB as HDF5 counts it, 1.5 GB of memory."""
        self._set(hold=False)
        self.shrinking = False
        try:
            yield
        finally:
            self._set(hold=True)


def is_write_failure(exc: BaseException) -> bool:
    """Whether an h5py error is a write HDF5 could not make (its message: "file write failed")."""
    return "write failed" in str(exc)


class _Ledger:
    """The writer's side: records appended after each flush, the seal at a clean close. Any
    failure to write it (a full disk) removes it: it only saves time, never decides alone."""

    def __init__(self, partial: Path, *, fresh: bool, keep: int | None):
        """`fresh`: a new file, whose ledger starts empty. A resumed file's ledger goes on from
        `keep`, the length of its sealed ledger (the seal cut off: the file changes now); without
        one (None), the file has proteins no ledger lists, and it gets none."""
        self.path = ledger_path(partial)
        self.partial = partial
        self.pending: list[bytes] = []
        self.fd: int | None = None
        if not fresh and keep is None:
            self.drop()
            return
        from protrans_cli.io.files import create_fresh

        try:
            if fresh:
                self.fd = create_fresh(self.path, 0o644)  # (a link planted under its name is not followed)
                self._write(LEDGER_MAGIC)
            else:
                self.fd = os.open(self.path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
                os.ftruncate(self.fd, keep)
                os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.drop()

    def _write(self, data: bytes) -> None:
        if os.write(self.fd, data) != len(data):  # (a short write, on a full disk, would misalign the rest)
            raise OSError(errno.ENOSPC, "short write")

    def add(self, ident: str, checksum) -> None:
        if self.fd is not None:
            self.pending.append(digest128(ident) + checksum64(checksum).to_bytes(8, "little"))

    def flushed(self) -> None:
        """The file was flushed: what was written before is complete on disk."""
        if self.fd is None or not self.pending:
            return
        try:
            self._write(b"".join(self.pending))
            self.pending.clear()
        except OSError:
            self.drop()

    def seal(self) -> None:
        """The file was closed: seal the ledger for it as it is now."""
        if self.fd is None:
            return
        try:
            self._write(_seal(self.partial))
            os.close(self.fd)
            self.fd = None
        except OSError:
            self.drop()

    def abandon(self) -> None:
        """A write failed: the records of the flushes before stay, unsealed (as after a kill)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        self.pending.clear()

    def drop(self) -> None:
        """No ledger (proteins were copied in without records, or it could not be written). The
        file's list of untrusted proteins stays (`untrusted_path`): removed with the ledger, a
        run stopped before it had embedded them again left them counted as done at the next
        --resume. It goes when the file is complete (`EmbeddingsWriter.close`)."""
        self.abandon()
        with contextlib.suppress(OSError):
            self.path.unlink()


def run_attributes(attrs: dict | None, *, kinds: Iterable[str], layout: str, storage_dtype: str) -> dict:
    """The file attributes of a run: `attrs` and the writer's own settings (what resuming compares)."""
    kinds = tuple(kinds)
    run_attrs = dict(attrs or {})
    run_attrs.update(layout=layout, kinds=",".join(kinds), storage_dtype=storage_dtype)
    if layout == "flat":
        run_attrs["kind"] = kinds[0]
    return run_attrs


class EmbeddingsWriter:
    """Stream embeddings into an HDF5 file, one protein at a time, readable after every flush.

        with EmbeddingsWriter("out.h5", kinds=(PER_RESIDUE, PER_PROTEIN), attrs={...}) as w:
            done = w.done_ids()                     # non-empty only with resume=True
            w.write(ident, header, sequence, per_residue=arr_LD, per_protein=arr_D)
            w.record_failure(ident, "longer than --max-length 1000")
            w.flush()                               # after each batch
        # leaving the block normally renames out.h5.partial to out.h5; an exception leaves
        # out.h5.partial in place (readable, resumable; removed if it holds nothing) and re-raises.

    Arrays are cast to `storage_dtype`. A protein whose datasets are not all present (a run
    killed between two writes) is not counted as done and is overwritten on resume. Resuming
    refuses a file whose RESUME_ATTRS differ from `attrs`; `resume_equal` maps an attribute to
    its own test `f(old, new) -> bool` (see `_check_resumable`). `finished_proteins`: the
    (id digests, checksum digests) of the complete proteins of a finished `path` that a resumed
    run extends (what the caller read from it), the start of its ledger. `weights_unknown`: rows
    of unknown weights go in (embed --reuse of a file without `weights_fingerprint`): the file
    records none.
    """

    def __init__(self, path, *, kinds: Iterable[str] = (PER_RESIDUE,), layout: str = "grouped",
                 storage_dtype: str = "float32", compression: str | None = None,
                 attrs: dict | None = None, resume: bool = False, finalize: bool = True,
                 resume_equal: dict | None = None, finished_proteins: tuple | None = None,
                 weights_unknown: bool = False):
        self.kinds = tuple(kinds)
        if self.kinds != (CONTACTS,) and (not self.kinds or any(k not in KINDS for k in self.kinds)):
            raise UsageError(f"kinds must be a non-empty subset of {KINDS} (or ({CONTACTS!r},)), got {self.kinds}")
        if self.kinds == (CONTACTS,) and layout != "grouped":
            raise UsageError("contact maps are written in the grouped layout only")
        one_of(layout, LAYOUTS, "--layout", keyword="layout")
        if layout == "flat" and len(self.kinds) != 1:
            raise UsageError("the flat layout holds one kind only: " + option(
                "choose --per-residue or --per-protein", f"kinds=({PER_RESIDUE!r},) or ({PER_PROTEIN!r},)"))
        if layout == "stacked" and self.kinds != (PER_PROTEIN,):
            raise UsageError("the stacked layout holds per-protein vectors only: "
                             + option("choose --per-protein alone", f"kinds=({PER_PROTEIN!r},)"))
        one_of(storage_dtype, STORAGE_DTYPES, "--storage-dtype", keyword="storage_dtype")
        if compression is not None:
            one_of(compression, COMPRESSIONS, "--compression", keyword="compression")
        # called the moment the file takes its final name (close): the CLI marks its output
        # complete there, so a signal in the moments after is not reported as an interruption
        self.on_final = None
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.layout = layout
        self.storage_dtype = np.dtype(storage_dtype)
        self.compression = None if compression in (None, "none") else compression
        self.finalize = finalize
        self.failed: dict[str, str] = {}
        self._failed_written: str | None = None  # the `failed` attribute's text in the file, once written
        self._failed_changed = True  # `failed` changed since it was last written (serialised only then)
        self._failed_count = 0  # entries in the `failed` attribute as last written
        # id -> full length of the proteins stored truncated (`truncated_from`): the file's
        # `truncated` attribute, written at each close (embed adds an earlier run's: note_truncated)
        self.truncated: dict[str, int] = {}
        output_directory(self.path)

        run_attrs = run_attributes(attrs, kinds=self.kinds, layout=layout, storage_dtype=storage_dtype)
        for busy in (self.partial, self.path):
            refuse_if_in_use(busy)
            if resume:
                refuse_if_open_here(busy)
        resumed = renamed = False
        self._base = None  # the finished stacked file this run's proteins are merged with (io/stacked.py)
        if resume and not self.partial.exists() and self.path.exists():
            # A finished file extended by a resumed run: it becomes partial again until done.
            _check_resumable(self.path, run_attrs, resume_equal)
            if layout == "stacked":
                # (a partial file of the new proteins alone, merged with the finished file when
                # the run completes; written back whole in the grouped structure where they
                # cannot be merged. The finished file stays as it is until the run replaces it.)
                from protrans_cli.io.stacked import start_extension, unstack_file

                if not start_extension(self.path, self.partial):
                    unstack_file(self.path, self.partial)
            else:
                os.replace(self.path, self.partial)
                renamed = True
            if finished_proteins is not None:
                # Sealed for the file as renamed (size, mtime and contents unchanged): the run
                # goes on appending to it, so a stop and the next --resume need not read the
                # file's proteins again (they did, at ~100 us each, for the whole finished file).
                write_ledger(self.partial, *finished_proteins)
        # The attributes and groups written below need room too: a disk with a few KiB free
        # crashed h5py at the first flush (segmentation fault), before any batch's check.
        keep_ledger = None
        if resume and self.partial.exists():
            _check_resumable(self.partial, run_attrs, resume_equal)
            keep_ledger = _sealed_size(self.partial)  # (before this run changes the file)
            disk.ensure_room(self.partial, 0, f"what was computed is kept in {self.partial}; {again_with_resume()} "
                                              "once there is room", what="the run's attributes")
            try:
                self.file = h5_file(self.partial, "a")
            except BlockingIOError:
                # Another process reads it (a notebook's EmbeddingsReader): HDF5's shared lock let
                # refuse_if_in_use's read through, and the run ended in h5py's "unable to lock
                # file, errno = 11" naming no file, the finished file left renamed OUTPUT.partial.
                if renamed:
                    os.replace(self.partial, self.path)
                    remove_ledger(self.partial)
                raise RuntimeFailure("is open in another process (it holds the HDF5 file lock): close it there (an "
                                     "EmbeddingsReader or h5py.File), or wait for that process to end, and "
                                     + option("run the command again", "call again"),
                                     path=str(self.path if renamed else self.partial)) from None
            self.failed = failed_attr(self.file.attrs.get("failed"), str(self.partial))
            self.truncated = truncated_attr(self.file.attrs.get("truncated"))
            resumed = True
            from protrans_cli.io.stacked import extension_base

            try:
                self._base = extension_base(self.file, self.partial)
            except BaseException:
                self.file.close()
                raise
        else:
            # Made under a hidden name and renamed once its attributes and groups are flushed: a
            # kill in the first milliseconds left a 96-byte OUT.partial that --resume could not read.
            creating = self.partial.with_name(f".{self.partial.name}.creating")
            # A fixed name: HDF5's "w" truncated whatever a link planted there (a shared output
            # folder) pointed to and wrote the file into it. One left by a killed run (or such a
            # link) is removed, and the file created exclusively ("x": O_EXCL, never through a link).
            from protrans_cli.io.stacked import base_path

            for stale in (creating, base_path(self.partial)):  # (and a stacked extension's link: stacked.py)
                with contextlib.suppress(OSError):
                    stale.unlink()
            disk.ensure_room(creating, 0, "nothing was written; free some space and "
                             + option("run the command again", "call again"),
                             shown=self.path, what="a new output file")
            try:
                # Groups that track creation order are HDF5's new-style groups: in the default,
                # old-style ones every name sits in one heap that each flush (each batch) writes
                # whole, so a run wrote bytes growing with the square of its proteins (68 GiB for a
                # 145 MiB file of 200,000). (h5py then lists the proteins in the order they were
                # computed; protrans's readers list them by name: `_link_names`.)
                self.file = h5_file(creating, "x", track_order=True)
            except OSError as exc:  # named by the output the user chose, not by the hidden file
                raise RuntimeFailure(f"cannot create the output: {write_failure_reason(exc)}",
                                     path=str(self.path)) from None
        self._cache = _MetadataHold(self.file)
        self.resumed = resumed
        self.runs = recorded_runs(self.file) if resumed else []
        if weights_unknown or (resumed and "weights_fingerprint" not in self.file.attrs):
            # (a file from before the attribute, or `weights_unknown`: rows copied from one, embed
            # --reuse: the weights of its rows are not known, and this run's would have vouched
            # for them, as merge does not for such a part)
            run_attrs.pop("weights_fingerprint", None)
            if "weights_fingerprint" in self.file.attrs:
                del self.file.attrs["weights_fingerprint"]
        this_run = {k: run_attrs[k] for k in RUN_ATTRS if run_attrs.get(k) is not None}
        if this_run:
            self.runs.append(this_run)
        for key, value in run_attrs.items():
            if value is None:
                if key == "device_map" and key in self.file.attrs:  # (an earlier run's map, not this one's)
                    del self.file.attrs[key]
                continue
            self.file.attrs[key] = _attr_value(value)
        self.file.attrs["runs"] = json.dumps(self.runs, sort_keys=True)
        self._groups = {}
        for kind in self.kinds:
            self._groups[kind] = (self.file if layout == "flat" else self.file[kind] if kind in self.file
                                  else self.file.create_group(kind, track_order=True))
        if resumed and layout == "flat":
            self._add_original_ids()
        if resumed:
            # A protein embedded after it had failed is done: its entry went from the writer's
            # list, but the attribute is rewritten only when the list doubles or halves (or at a
            # clean stop), and a SIGKILL before then left the entry in the file.
            for ident in [i for i in self.failed if self._holds(i)]:
                del self.failed[ident]
        self._write_failed()
        self.file.flush()
        if not resumed:
            os.replace(creating, self.partial)  # the open file follows its inode
            with contextlib.suppress(OSError):
                untrusted_path(self.partial).unlink()  # (an earlier partial file's)
        self._ledger = _Ledger(self.partial, fresh=not resumed, keep=keep_ledger)
        self._unflushed: list[str] = []  # ids written since the last flush (what a failed write taints)
        self._flushed_at = -float("inf")  # time.monotonic() of the last flush (flush_due)
        self._merged = False  # shards copied in (copy_from): their records may be written again
        self._written = False  # a protein written or copied in (what a failed run keeps: __exit__)
        self._room_taken = (0, 0)  # (bytes the last reservation showed room for, the file's size then)
        self._marker_room = _MarkerRoom(self.partial)

    # --- state ------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        """Ids with a dataset in every requested kind (what --resume skips), and those of the
        finished file a stacked run extends."""
        self.flush()  # (everything clean: the read below may evict, `_MetadataHold.reading`)
        with self._cache.reading():
            per_kind = [{ident for ident, _ in stored_proteins(self._groups[kind], checksums=False)}
                        for kind in self.kinds]
        done = set.intersection(*per_kind) if per_kind else set()
        if self._base is not None:
            from protrans_cli.io.stacked import StackedView

            with h5_file(self._base, "r") as f:
                done.update(StackedView(f, str(self._base)).ids())
        return done

    # --- writing ----------------------------------------------------------------------
    def write(self, ident: str, header: str, sequence: str | None, *, per_residue=None, per_protein=None,
              contacts=None, extra_attrs: dict | None = None, length: int | None = None) -> None:
        """Write one protein's arrays (`per_residue` (L, D) or (n_layers, L, D); `per_protein`
        (D,) or (n_layers, D)); every requested kind must be given. `sequence` None: a protein
        whose sequence is not known (`import-esm` without --fasta): no `checksum` attribute, and
        `length` only where given."""
        arrays = {PER_RESIDUE: per_residue, PER_PROTEIN: per_protein, CONTACTS: contacts}
        for name, text in (("id", ident), ("header", header)):
            # (h5py's "VLEN strings do not support embedded NULLs" came after the dataset was made:
            # a record without its attributes stayed in the file for a caller that went on)
            if isinstance(text, str) and "\x00" in text:
                raise UsageError(f"protein {ident!r}: its {name} holds a NUL byte, which HDF5 cannot store as text")
        key = escape_key(ident)
        attrs = {"id": ident, "header": header}
        if sequence is not None:
            attrs.update(length=len(sequence), checksum=sequence_checksum(sequence))
        elif length is not None:
            attrs["length"] = int(length)
        attrs.update(extra_attrs or {})
        if self.layout == "flat":
            # The interop layout: biotrainer and code written for bio_embeddings' files map
            # datasets to proteins through `original_id` (`f[k].attrs["original_id"]`).
            attrs["original_id"] = ident
        for kind in self.kinds:
            if arrays[kind] is None:
                raise ValueError(f"{kind} array missing for {ident!r}")
            given = np.asarray(arrays[kind])
            with np.errstate(over="ignore"):
                arrays[kind] = given.astype(self.storage_dtype, copy=False)
            if arrays[kind] is not given and (np.isfinite(given) & ~np.isfinite(arrays[kind])).any():
                # (a library caller's float32 beyond float16's 65504 was stored as infinity with
                # numpy's warning alone; the commands check before they write, this is the same check)
                biggest = float(np.abs(given[np.isfinite(given)].astype(np.float64)).max())
                raise InputError(f"protein {ident!r}: {kind} values beyond {self.storage_dtype.name}'s range (largest "
                                 f"magnitude {biggest:.6g}) would be stored as infinity (storage_dtype='float32' "
                                 "keeps them)", path=str(self.path))
        self._unflushed.append(ident)
        self._written = True
        try:
            self._write_kinds(key, arrays, attrs)
        except (KeyError, RuntimeError, ValueError, OSError) as exc:
            if is_write_failure(exc):
                raise self._abandon(exc) from None
            if not self.resumed:
                raise
            # (HDF5 meeting damage a kill left that reading the file back passed over)
            raise RuntimeFailure(f"cannot add protein {ident!r} to this resumed file: {first_line(exc)}; the file is "
                                 "damaged: delete it to start again", path=str(self.partial)) from None
        if self.failed.pop(ident, None) is not None:
            self._failed_changed = True
        if attrs.get("truncated_from") is not None:
            self.truncated[ident] = int(attrs["truncated_from"])
        else:
            self.truncated.pop(ident, None)
        self._ledger.add(ident, attrs.get("checksum"))
        if self._cache.written():  # (a caller that never flushes: the cache bounded all the same)
            self.flush()

    def _write_kinds(self, key: str, arrays: dict, attrs: dict) -> None:
        for kind in self.kinds:
            data = arrays[kind]
            group = self._groups[kind]
            if (self.resumed or self._merged) and group.id.links.exists(link := key.encode("utf-8")):
                # left by a run killed half-way through this protein, or a merged shard's record
                # listed untrusted (a write failed after it), embedded again
                group.id.unlink(link)
            # (not per-protein vectors: each compressed dataset carries a chunk index of about 2 KB,
            # and a 100,000-protein per-protein file came out 4x larger with gzip than without)
            if self.compression is not None and data.size and kind != PER_PROTEIN:
                kwargs = {"compression": self.compression, "chunks": True}
                if self.compression == "gzip":
                    kwargs["compression_opts"] = 4
                ds = group.create_dataset(key, data=data, **kwargs).id
            else:
                ds = _create_dataset(group, key, data)
            for name, value in attrs.items():
                _set_attr(ds, name, _attr_value(value))
            # Closed here, not whenever Python drops it: HDF5 writes a small dataset's data as it
            # closes, and an error there (a full disk, a quota) was only printed by h5py
            # ("Exception ignored"), while the ledger recorded the protein as complete.
            ds.close()

    def ensure_room(self, nbytes: int, what: str = "the next batch") -> None:
        """Refuse a batch of about `nbytes` that would not fit (see `disk.ensure_room`); the file
        stays as it was after the last batch, resumable."""
        # The room is taken for real for 64 MiB of writes at a time: freeing it cost 2-3 ms a batch
        # (ext4 mounted with discard), 3% of a one-hot run of small batches. The writes since are
        # counted as the file grew, plus what HDF5 may hold unwritten (its metadata cache, held
        # to LIMIT and a few writes past it): counted as each batch's room_for, a MiB of metadata
        # a batch (for some 2 KB written), a one-hot E. coli run of 120 MB reserved 51 times, 3.4 GB.
        need = disk.room_for(nbytes)
        taken, then = self._room_taken
        try:
            now = os.stat(self.partial).st_size
        except OSError:  # (the file is open: not seen; reserved before every batch then)
            now = None
        left = 0 if now is None else taken - (now - then) - 2 * _MetadataHold.LIMIT
        reserve = 0 if need <= left else max(need, self.ROOM_AHEAD)
        taken = disk.ensure_room(self.partial, nbytes, f"what was computed is kept in {self.partial}; "
                                                       f"{again_with_resume()} once there is room", what=what,
                                 reserve=reserve)
        if reserve:
            self._room_taken = (taken if now is not None else 0, now or 0)

    ROOM_AHEAD = 64 << 20

    def record_failure(self, ident: str, reason: str) -> None:
        """A protein with no embedding: listed in the file's `failed` attribute, never dropped silently."""
        self.failed[ident] = reason
        self._failed_changed = True

    def note_truncated(self, ident: str, full_length: int) -> None:
        """A protein already in the file (an earlier run's) that is stored truncated: listed in the
        `truncated` attribute (a run killed before its close wrote none for its proteins)."""
        self.truncated[ident] = int(full_length)

    def copy_from(self, other_path, *, layout: str | None = None, skip: set[bytes] = frozenset(),
                  own: bool = False) -> int:
        """Merge another file into this one (a torchrun shard, a part of `protrans merge`);
        returns the proteins copied. `layout`: the other file's, grouped or flat (default: this
        file's structure); `skip`: keys (bytes) not to copy. `own`: a shard this writer's class
        wrote (a torchrun rank's), whose datasets are not opened to refuse values kept in other
        files (`local_data`: 40% of the merge's time a protein); a part from elsewhere is."""
        copied = set()
        self._merged = True
        self._written = True
        self._ledger.drop()  # (the copied proteins have no records: the next resume reads the file)
        with h5_file(other_path, "r") as src, self._abandoned_on_write_failure():
            self._copy_objects(src, copied, flat=(layout or self.layout) == "flat", skip=skip, own=own)
            self.failed.update(failed_attr(src.attrs.get("failed"), str(other_path)))
            self.truncated.update(truncated_attr(src.attrs.get("truncated")))
            # The shard's runs before this one (a torchrun run resumed in one process); its
            # ranks' own entries of this run differ from rank 0's by the device only.
            for run in recorded_runs(src):
                if not any(_same_run(run, known) for known in self.runs):
                    self.runs.insert(len(self.runs) - 1, run)
            self.file.attrs["runs"] = json.dumps(self.runs, sort_keys=True)
        # A protein that failed in one run (or rank) and was embedded in another is done.
        for ident in [i for i in self.failed if self._holds(i)]:
            del self.failed[ident]
        self._failed_changed = True
        return len(copied)

    def _copy_objects(self, src, copied: set, *, flat: bool, skip, own: bool = False) -> None:
        import h5py

        for kind in self.kinds:
            source = src if flat else src.get(kind)
            if source is None:
                continue
            group = self._groups[kind]
            # Object by object through the low-level calls: h5py's Group.copy and its
            # dictionary interface cost 3-8x as much (docs/benchmarks.md).
            for name in _link_names(source):
                if name in skip or h5py.h5o.get_info(source.id, name).type != h5py.h5o.TYPE_DATASET:
                    continue
                # (a copy keeps a virtual dataset's mapping and an external file list: the merged
                # file read whatever other file a part from elsewhere named)
                if not own:
                    local_data(source, name, h5py.h5o.open(source.id, name))
                if group.id.links.exists(name):  # a protein copied before a kill, or written twice
                    group.id.unlink(name)
                # (listed untrusted if a write fails before the next flush: the shard stays, and
                # --resume merges it again)
                self._unflushed.append(unescape_key(name.decode("utf-8")))
                h5py.h5o.copy(source.id, name, group.id, name)
                if flat or self.layout == "flat":
                    # (a part of another layout, `protrans merge`; or a flat one written before
                    # embed gave the flat layout `original_id`)
                    self._relabel_original_id(group, name)
                if self._cache.written():  # (a merge of many proteins: flushed on the way, the cache bounded)
                    self.flush()
                copied.add(name)

    def _add_original_ids(self) -> None:
        """A flat file written before embed gave every dataset `original_id` (2026-11-29): its
        datasets get one as this run's do, or the file resumed into would hold some proteins
        without it (biotrainer's `f[k].attrs["original_id"]` a KeyError on the older ones). A file
        whose first dataset has one is left as it is (every one then has it)."""
        import h5py

        names = [n for n in _link_names(self.file)
                 if h5py.h5o.get_info(self.file.id, n).type == h5py.h5o.TYPE_DATASET]
        if not names or h5py.h5a.exists(h5py.h5o.open(self.file.id, names[0]), b"original_id"):
            return
        for name in names:
            self._relabel_original_id(self.file, name)

    def _relabel_original_id(self, group, name: bytes) -> None:
        """A dataset copied from a file of the other structure carries the `original_id` that
        `write` gives this file's layout: the flat layout's (its id), none in the others."""
        import h5py

        obj = h5py.h5o.open(group.id, name)
        has = h5py.h5a.exists(obj, b"original_id")
        if self.layout == "flat" and not has:
            ident = _read_text_attr(obj, b"id")
            if ident is not None:
                _set_attr(obj, "original_id", ident)
        elif self.layout != "flat" and has:
            h5py.h5a.delete(obj, b"original_id")

    def _holds(self, ident: str) -> bool:
        """Whether every requested kind has a dataset for `ident`."""
        name = escape_key(ident).encode("utf-8")
        return all(self._groups[kind].id.links.exists(name) for kind in self.kinds)

    def flush(self, *, failures: bool = False) -> None:
        """Make what was written so far durable. `failures`: write the `failed` attribute
        whatever its growth (see _write_failed)."""
        with self._abandoned_on_write_failure():
            self._write_failed(force=failures)
            if failures:
                self._write_truncated()
            self.file.flush()
        self._cache.flushed()
        self._ledger.flushed()
        self._unflushed.clear()
        self._flushed_at = time.monotonic()

    def flush_due(self) -> None:
        """flush() unless the last one was less than FLUSH_SECONDS ago (the first is made at
        once): embed's per-batch call. A flush after each of many small batches (a small model,
        per protein) was a third of the writer's time; a SIGKILL now loses at most the proteins
        of the last second, embedded again by --resume (a clean stop closes the file whole).
        What waits for the next flush (the ledger's records, the ids a failed write taints) is
        a second's proteins at most, a few hundred bytes each."""
        if (time.monotonic() - self._flushed_at >= FLUSH_SECONDS
                or len(self._unflushed) >= self._marker_room.ids_kept()):
            self.flush()

    @contextlib.contextmanager
    def _abandoned_on_write_failure(self):
        """A write that fails inside HDF5 in the block (a flush, a close, a copy: HDF5 crashed at
        the next one) abandons the file (`_abandon`); other errors go on as they are."""
        try:
            yield
        except (RuntimeError, OSError) as exc:
            if is_write_failure(exc):
                raise self._abandon(exc) from None
            raise

    def _abandon(self, exc: BaseException) -> RuntimeFailure:
        """A write failed inside HDF5 (a full disk or quota the room check could not see, an
        I/O error): the error to raise. HDF5 cannot go on from there: a flush or close after it
        crashed the process (HDF5 2.0: "Slist already enabled?", a segmentation fault), so the
        file is never touched again in this process (see `abandoned_files`). What the last flush
        made durable stays; the proteins written since are listed in `untrusted_path` so that
        --resume embeds them again (their data may never have reached the disk)."""
        # (with the error: its traceback's frames hold the h5py objects of the failed write, and a
        # library caller that handled the error and went on crashed the process when they were freed)
        abandon(self.file, self._groups, exc)
        self.file = None
        self._ledger.abandon()
        reason = write_failure_reason(exc)
        try:
            self._marker_room.write(b"".join(digest128(ident) for ident in self._unflushed))
        except OSError as marker:
            return RuntimeFailure(f"cannot write to it: {reason}; do not resume it: the last proteins written may "
                                  f"not have reached the disk, and that could not be noted for {resume_option()} "
                                  f"({marker.strerror or marker}); delete it and "
                                  + option("run the command again", "call again"), path=str(self.partial))
        count = len(self._unflushed)
        # (a merge's proteins, torchrun's shards, are copied again from them, not embedded)
        redo = "copies again from the shards it keeps" if self._merged else "embeds again"
        again = (f", and {resume_option()} {redo} the {count} protein{'s' * (count != 1)} written since its last "
                 "flush" if count else "")
        return RuntimeFailure(f"cannot write to it: {reason}; the proteins written before are kept in it{again}: "
                              f"{again_with_resume()} once the problem is solved", path=str(self.partial))

    _FAILED_ALWAYS = 1024  # up to this many failures the attribute is kept current at every flush

    def _write_truncated(self) -> None:
        """The `truncated` attribute (at a close or a merge's flush; a run killed before it is mended
        by the next --resume, which notes the earlier proteins it finds truncated): in every file of
        --long-policy truncate, `{}` there saying none was, and in any other that holds one."""
        if self.truncated or _plain(self.file.attrs.get("long_policy", "")) == "truncate":
            text = json.dumps(self.truncated, sort_keys=True)
            if _plain(self.file.attrs.get("truncated", "")) != text:
                self.file.attrs["truncated"] = text

    def _write_failed(self, force: bool = False) -> None:
        # Rewritten only when it changed: embed flushes after every batch, and rewriting an
        # unchanged attribute (HDF5 deletes and recreates it) cost a one-hot run about 9% of
        # its time (docs/benchmarks.md#embed). Serialised only when something changed it:
        # serialised at every flush to compare, a run skipping 120,000 proteins spent 65 ms a
        # batch on it (batches x failures: 14x slower at 200,000 proteins).
        # Beyond _FAILED_ALWAYS entries, rewritten when they have doubled (or halved) since,
        # and at close: HDF5 does not reuse the space of the copy it replaces, and a run adding
        # failures window after window made the file grow with their square (100,000 proteins,
        # 80% skipped, 20 windows: 68 MB where 19 hold the data). A failure not yet in the file
        # when a SIGKILL ends the run is only a protein the resume tries again.
        if not self._failed_changed:
            return
        count = len(self.failed)
        if (not force and count > self._FAILED_ALWAYS
                and self._failed_count // 2 < count < 2 * self._failed_count):
            return
        self._failed_changed = False
        text = json.dumps(self.failed, sort_keys=True)
        if text != self._failed_written:
            self.file.attrs["failed"] = text
            self._failed_written = text
        self._failed_count = count

    # --- closing ----------------------------------------------------------------------
    def close(self, complete: bool = False) -> None:
        """Close the file; with `complete`, move it to its final name (when `finalize`)."""
        if self.file is None:
            return
        self.flush(failures=True)
        with self._abandoned_on_write_failure():
            self.file.close()
        self.file = None
        self._marker_room.release()
        if complete:  # (every protein it listed was written again and flushed)
            with contextlib.suppress(OSError):
                untrusted_path(self.partial).unlink()
        if complete and self.finalize and self.layout == "stacked":
            self._finish_stacked()
        elif complete and self.finalize:
            self._ledger.drop()  # (it belongs to the partial file)
            try:
                os.replace(self.partial, self.path)
            except FileNotFoundError:  # (it said the embeddings were in the file that was gone)
                raise RuntimeFailure(f"{self.partial.name} was removed during the run: the embeddings written "
                                     "there are lost; " + option("run the command again", "call again"),
                                     path=str(self.path)) from None
            except OSError as exc:  # it said only "OUT.partial: Operation not permitted"
                raise RuntimeFailure(f"cannot replace it with the finished {self.partial.name} "
                                     f"({exc.strerror or exc}); the finished embeddings are in {self.partial}",
                                     path=str(self.path)) from None
        else:
            self._ledger.seal()  # closed cleanly: the next --resume may trust the ledger
            return
        if self.on_final is not None:
            self.on_final()

    def _finish_stacked(self) -> None:
        """The complete partial file written out as the stacked file (io/stacked.py), then
        removed. Until the stacked file is whole the partial file stays, its ledger sealed: a
        stop or a full disk on the way leaves what --resume finishes without computing again."""
        from protrans_cli.io.stacked import stack_file, stacking_failure

        self._ledger.seal()
        kept = str(self.partial) + (f" and {self._base.name}" if self._base is not None else "")
        try:
            stack_file(self.partial, self.path, base=self._base,
                       then=f"every protein is in {kept}: {again_with_resume()} once there is room")
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise stacking_failure(exc, self.partial, kept) from None
        remove_ledger(self.partial)
        self.partial.unlink()
        if self._base is not None:  # (after the partial file: a kill in between leaves a link the next run removes)
            with contextlib.suppress(OSError):
                self._base.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        with contextlib.suppress(Exception) if exc_type else contextlib.nullcontext():
            nothing = exc_type is not None and self.file is not None and self._holds_nothing()
            self.close(complete=exc_type is None)
            if nothing:
                # A run stopped before its first protein (an error or Ctrl-C in the first batch)
                # leaves no file: an empty OUT.partial was refused by the same command run again
                # as "the work of an interrupted run", and it held none.
                remove_partial(self.partial)

    def _holds_nothing(self) -> bool:
        """A file this writer created and put no protein (nor a failure) into."""
        return not (self.resumed or self._written or self.failed)


_ATTR_TYPES = {}  # h5py low-level types, spaces and property lists, made once (per key) and reused


def _create_dataset(group, key: str, data: np.ndarray):
    """`group.create_dataset(key, data=data).id` (contiguous, no filters) through h5py's
    low-level calls: 37 instead of 92 us per dataset (h5py's high-level checks and property
    lists), which is most of what a per-protein array costs to write."""
    import h5py

    data = np.ascontiguousarray(data)
    if "dcpl" not in _ATTR_TYPES:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        # As h5py's: no timestamps (two runs' datasets do not differ by their write time; the file's
        # bytes still may, where HDF5 placed metadata by when the timed flushes came: stacked
        # files, written once at the end, are byte-identical)
        dcpl.set_obj_track_times(False)
        _ATTR_TYPES["dcpl"] = dcpl
    # The type and dataspace made once per dtype and shape (every per-protein vector of a run has
    # one shape): made for each dataset, with the memory type `write` made again, they were 4
    # h5py objects a dataset, each registered and released (about 6 us of 40).
    space = _SPACES.get(data.shape)
    if space is None:
        if len(_SPACES) >= 256:  # (per-residue arrays: a shape per length)
            _SPACES.clear()
        space = _SPACES[data.shape] = (h5py.h5s.create_simple(data.shape) if data.ndim
                                       else h5py.h5s.create(h5py.h5s.SCALAR))
    type_id = numpy_type(data.dtype)
    dataset = h5py.h5d.create(group.id, key.encode("utf-8"), type_id, space, dcpl=_ATTR_TYPES["dcpl"])
    if data.size:
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, data, mtype=type_id)
    return dataset


_SPACES: dict = {}      # shape -> h5py dataspace (_create_dataset)
_DATA_TYPES: dict = {}  # numpy dtype -> h5py type (numpy_type)


def numpy_type(dtype):
    """h5py's type for a numpy dtype (`h5py.h5t.py_create`), made once per dtype: the file type of
    the datasets and integer attributes embed writes, and the memory type of reading or writing
    them (h5py's `read`/`write` made it again from the array's dtype at every call)."""
    import h5py

    dtype = np.dtype(dtype)
    found = _DATA_TYPES.get(dtype)
    if found is None:
        found = _DATA_TYPES[dtype] = h5py.h5t.py_create(dtype)
    return found


def _set_attr(obj, name: str, value) -> None:
    """`obj.attrs[name] = value` for a new attribute of a dataset (or its low-level id), with the
    same type on disk as h5py gives it (a str: scalar variable-length UTF-8; an int: scalar
    int64), through h5py's low-level calls for those two: 4 attributes per dataset, 8 per
    protein, and h5py's dictionary interface costs more than the writing (about 40 of 50 us
    each). Anything else goes through `attrs`."""
    import h5py

    if isinstance(value, bool) or not isinstance(value, (str, int)):
        (obj if isinstance(obj, h5py.HLObject) else h5py.Dataset(obj)).attrs[name] = value
        return
    if str not in _ATTR_TYPES:
        # (file type, numpy dtype, memory type: what `write` makes from the array's dtype when
        # none is given, every time; for a str, h5py's Python-object type, not the file's)
        text = h5py.string_dtype("utf-8")
        _ATTR_TYPES[str] = (h5py.h5t.py_create(text, logical=True), text, h5py.h5t.py_create(text))
        _ATTR_TYPES[int] = (numpy_type(np.int64), np.dtype("int64"), numpy_type(np.int64))
        _ATTR_TYPES["scalar"] = h5py.h5s.create(h5py.h5s.SCALAR)
    kind = str if isinstance(value, str) else int
    type_id, dtype, memory_type = _ATTR_TYPES[kind]
    oid = obj.id if isinstance(obj, h5py.HLObject) else obj  # (a low-level id has an int `id`)
    attr = h5py.h5a.create(oid, name.encode("utf-8"), type_id, _ATTR_TYPES["scalar"])
    attr.write(np.array(value, dtype=dtype), mtype=memory_type)


def recorded_runs(file) -> list[dict]:
    """The `runs` attribute of an open embeddings file; for a file from before it existed (or
    whose attribute a repair lost), the one run its attributes describe."""
    raw = _plain(file.attrs.get("runs", ""))
    if raw:
        try:
            runs = json.loads(raw)
        except (ValueError, TypeError, RecursionError):
            runs = None
        # (a list of other things than runs, hand-made: merge compared them as runs, a traceback)
        if isinstance(runs, list) and all(isinstance(run, dict) for run in runs):
            return runs
    run = {}
    for key in RUN_ATTRS:
        if key in file.attrs:
            run[key] = _plain(file.attrs[key])
    return [run] if run else []


def _same_run(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "device"} == {k: v for k, v in b.items() if k != "device"}


def _attr_value(value):
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        return utf8_text(value)
    return value


def _comparable(value):
    value = _plain(value)
    if isinstance(value, np.ndarray):
        return [(_plain(v)) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return value


def weights_fingerprint_of(record) -> str | None:
    """The weights_fingerprint a record of a local model directory holds (a file's attributes, a
    head's "embedding", a run's attributes; or the value itself), as text; None where it records
    none (a hub model, a file from before it was recorded)."""
    found = record.get("weights_fingerprint") if hasattr(record, "get") else record
    found = found.decode() if isinstance(found, bytes) else found
    return str(found) if found else None


def same_weights(recorded, now) -> bool:
    """Whether two records of a local model directory hold the same weights_fingerprint: the
    directory moved or copied (a project folder renamed, a model copied to another cluster) is
    the same model, where it was refused as another ("model='OLD', this run uses model='NEW'")."""
    before = weights_fingerprint_of(recorded)
    return before is not None and before == weights_fingerprint_of(now)


def _check_resumable(path, run_attrs: dict, equal: dict | None = None, *, reuse: bool = False) -> None:
    """Refuse to resume into a file written with other settings (its rows would not match).
    `equal` maps an attribute to `f(old, new) -> bool` where equal text is not the test (the
    `model` attribute: a directory given by another relative path is the same model). `reuse`:
    the test of `embed --reuse FILE` (its rows copied into this run's output): the same settings
    but its layout, kinds and part, which the caller checks (embed_reuse.py), in its words."""
    lead = "cannot reuse its proteins" if reuse else "cannot resume"
    remedy_text = "leave out this --reuse" if reuse else "write to a new file"
    try:
        with h5_file(path, "r") as f:
            old = {k: f.attrs[k] for k in f.attrs.keys()}
    except UNREADABLE as exc:
        raise unreadable_on_resume(path, exc) from None
    # Every version of embed wrote `layout` and `kinds`: a file without them was written by
    # another tool (ProtTrans' script, bio_embeddings, h5py by hand), whose keys, attributes and
    # model are not this run's. Resuming added this run's datasets (or groups) beside its own and
    # relabelled it with this run's model.
    if "layout" not in old or "kinds" not in old:
        raise UsageError(f"{lead}: not an output of protrans embed (no 'layout' or 'kinds' attribute; "
                         f"a file from another tool?); it is left as it is: {remedy_text}", path=str(path))
    for key in RESUME_ATTRS:
        if reuse and key in ("layout", "kinds", "part"):
            continue
        if key in old and key in run_attrs and run_attrs[key] is not None:
            before, now = _comparable(old[key]), _comparable(_attr_value(run_attrs[key]))
            same = (equal or {}).get(key, lambda a, b: a == b)
            if key == "model" and not same(before, now) and same_weights(old, run_attrs):
                continue  # (one model directory moved or copied since: its weights at another path)
            if not same(before, now):
                shown = repr(now)
                states = run_attrs.get("num_hidden_states")
                if key == "layers" and states and isinstance(now, list):
                    # stored counted from the last (-1): `--layer 0` reads -3 on a 2-layer model
                    # (a library call's layers=(2,), as a layer counted from the first)
                    shown += " (" + ", ".join(option(f"--layer {int(v) + int(states)}", f"layer {int(v) + int(states)}")
                                              + f" = {int(v)}" for v in now) + ")"
                was = f"{key}={before!r}"
                if key == "weights_fingerprint":  # (a local model directory: the same path, other weights)
                    raise UsageError(f"{lead}: the model directory {_comparable(run_attrs.get('model'))} "
                                     f"holds other weights than the file was written with (weights_fingerprint "
                                     f"{before}, now {now}: retrained or replaced since?); its rows would mix two "
                                     f"models: use the same weights, or {remedy_text}", path=str(path))
                if key == "max_length" and before == 0:  # (stored 0: a model that takes any length)
                    was = "no max_length (the model takes any length)"
                elif key == "max_length" and now == 0:
                    shown = "none (the model takes any length)"
                raise UsageError(f"{lead}: the file was written with {was}, "
                                 f"this run uses {key}={shown} (use the same settings, or {remedy_text})",
                                 path=str(path))
    # A token before every protein (ProstT5's <AA2fold>) changes every row. It is recorded only
    # where there is one, and no file written before embed put one in records it: a missing
    # attribute is no prefix, on both sides (a file of such a model from before must not be
    # extended with prefixed rows, nor the reverse).
    before, now = input_prefix_of(old), input_prefix_of(run_attrs)
    if before != now:
        was = f"input_prefix={before!r}" if before else "no token before each protein (as every earlier file)"
        shown = f"{now!r} before every protein" if now else "none"
        held = three_di_words(before, now)
        remedy = (f"the file holds embeddings of {held}: give the same sequences as it, or {remedy_text}"
                  if held else remedy_text)
        raise UsageError(f"{lead}: the file was written with {was}, this run puts input_prefix={shown} "
                         f"(its rows would differ from the file's: {remedy})", path=str(path))

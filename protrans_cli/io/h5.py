"""The HDF5 embeddings file: layout, reversible key escaping, a streaming writer and a reader.

Layout (docs/formats.md is the user-facing description):

    /per_residue/<key>   float16|float32 (L, D), or (n_layers, L, D) with several --layer
    /per_protein/<key>   float16|float32 (D,),   or (n_layers, D)
  or, with layout="flat" (the files ProtTrans' script and bio_embeddings write):
    /<key>               one kind only, at the root

Each dataset has attributes `id` (the FASTA id), `header` (the whole header line), `length`
(residues) and `checksum` ("md5:<hex>" of the upper-cased sequence, see `sequence_checksum`).
The file's attributes describe the run (model, family, layers, pooling, dtypes, version,
command line, `failed` as JSON {id: reason}).

Keys are FASTA ids with `%`, `/`, control characters and a lone `.` percent-escaped, so two
ids never collapse into one key and `unescape_key(escape_key(x)) == x`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from protrans_cli.errors import InputError

PER_RESIDUE = "per_residue"
PER_PROTEIN = "per_protein"
KINDS = (PER_RESIDUE, PER_PROTEIN)

_UNSAFE = re.compile(r"[%/\x00-\x1f\x7f]")


def escape_key(ident: str) -> str:
    """A reversible HDF5-safe name for a FASTA id."""
    if ident in (".", ".."):
        return ident.replace(".", "%2E")
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", ident)


def unescape_key(key: str) -> str:
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), key)


def sequence_checksum(sequence: str) -> str:
    """md5 of the upper-cased sequence without whitespace: how labels are matched without ids."""
    clean = "".join(sequence.split()).upper()
    return "md5:" + hashlib.md5(clean.encode("ascii", "replace")).hexdigest()


class EmbeddingsReader:
    """Read an embeddings file of either layout.

        with EmbeddingsReader("x.h5") as r:
            r.kinds                   # ("per_residue", "per_protein") present
            for ident in r.ids(PER_RESIDUE): r.get(ident, PER_RESIDUE)  # np.ndarray
    """

    def __init__(self, path):
        import h5py

        self.path = str(path)
        try:
            self.file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise InputError("no such file", path=self.path) from None
        except OSError as exc:
            raise InputError(f"not a readable HDF5 file ({exc})", path=self.path) from None
        self.attrs = {k: _plain(v) for k, v in self.file.attrs.items()}
        groups = [k for k in KINDS if k in self.file and not _is_dataset(self.file[k])]
        if groups:
            self.layout = "grouped"
            self.kinds = tuple(groups)
        else:
            self.layout = "flat"
            kind = self.attrs.get("kind")
            if kind not in KINDS:  # a file from another tool: guess from the shapes
                first = next(iter(self.file.values()), None)
                kind = PER_PROTEIN if first is not None and first.ndim == 1 else PER_RESIDUE
            self.kinds = (kind,)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.file.close()

    def _group(self, kind):
        if kind not in self.kinds:
            raise InputError(f"has no {kind} embeddings (it holds {', '.join(self.kinds)})", path=self.path)
        return self.file if self.layout == "flat" else self.file[kind]

    def ids(self, kind: str = PER_RESIDUE) -> list[str]:
        group = self._group(kind)
        return [_plain(group[k].attrs.get("id", unescape_key(k))) for k in group.keys()]

    def keys(self, kind: str = PER_RESIDUE) -> list[str]:
        return list(self._group(kind).keys())

    def dataset(self, ident: str, kind: str = PER_RESIDUE):
        group = self._group(kind)
        key = escape_key(ident)
        if key not in group:
            raise InputError(f"no {kind} embedding for this id", path=self.path, record=ident)
        return group[key]

    def get(self, ident: str, kind: str = PER_RESIDUE) -> np.ndarray:
        return self.dataset(ident, kind)[()]

    def items(self, kind: str = PER_RESIDUE) -> Iterator[tuple[str, np.ndarray, dict]]:
        group = self._group(kind)
        for key in group.keys():
            ds = group[key]
            attrs = {k: _plain(v) for k, v in ds.attrs.items()}
            yield attrs.get("id", unescape_key(key)), ds[()], attrs

    def checksums(self, kind: str = PER_RESIDUE) -> dict[str, str]:
        """checksum -> id, for matching label files that carry only sequences."""
        group = self._group(kind)
        return {_plain(group[k].attrs["checksum"]): _plain(group[k].attrs.get("id", unescape_key(k)))
                for k in group.keys() if "checksum" in group[k].attrs}

    def dim(self, kind: str = PER_RESIDUE) -> int:
        group = self._group(kind)
        for key in group.keys():
            return int(group[key].shape[-1])
        raise InputError(f"holds no {kind} embeddings", path=self.path)

    def failed(self) -> dict[str, str]:
        raw = self.attrs.get("failed")
        return json.loads(raw) if raw else {}


def _is_dataset(obj) -> bool:
    import h5py

    return isinstance(obj, h5py.Dataset)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def existing_keys(path, kind: str) -> set[str]:
    """Keys already present in an output file (for --resume); empty when there is no file."""
    if not Path(path).exists():
        return set()
    with EmbeddingsReader(path) as reader:
        return set(reader.keys(kind)) if kind in reader.kinds else set()
